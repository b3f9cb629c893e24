#!/usr/bin/env python3
"""Models saved by scvi-tools for scviR's import tests and fidelity bench (developer-only; run in
the bench venv, see bench/README.md).

For SCVI, LinearSCVI and SCANVI trained on the first CELLS cells and GENES genes of the bundled
PBMC 3k (a "batch" column alternating a / b; SCANVI with the cell types of every other cell),
writes OUT/<model>/model.pt (scvi-tools' own save, without the data), OUT/<model>_legacy/
(the pre-0.15 layout: model_params.pt, var_names.csv, attr.pkl) and OUT/<model>/expected.csv
(the latent means of those cells, and scANVI's predictions). Two more SCVI saves cover options
beyond the defaults: OUT/SCVI_covariates/ (a categorical and a continuous covariate, size factors,
softplus variances, covariates encoded) and OUT/SCVI_embedding/ (a batch embedding); their
expected.csv also holds the cells' covariate values. The categorical covariate "donor" (cells in
turn d1, d2, d3) is synthetic; log_counts and size_factor come from the cells' total counts.

  python bench/scvi_tools_fixtures.py OUT [--cells 300 --genes 100 --hidden 16 --latent 4]
"""

import argparse
import os
import pickle
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--cells", type=int, default=300)
    p.add_argument("--genes", type=int, default=100)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--latent", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = 0
    a = ad.read_h5ad(REPO / "inst" / "extdata" / "pbmc3k_hvg2000.h5ad")
    total = np.asarray(a.X.sum(axis=1)).ravel()
    a.obs["donor"] = np.array(["d1", "d2", "d3"])[np.arange(a.n_obs) % 3]
    a.obs["log_counts"] = np.log(total)
    a.obs["size_factor"] = total / np.median(total)
    a = a[: args.cells, : args.genes].copy()
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2 == 0, "a", "b")
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    labels[1::2] = "Unknown"
    a.obs["masked"] = labels
    out = Path(args.out)
    kw = dict(n_hidden=args.hidden, n_latent=args.latent)
    train = dict(max_epochs=args.epochs, accelerator="cpu", enable_progress_bar=False)
    scvi.model.SCVI.setup_anndata(a, batch_key="batch")
    models = {}
    m = scvi.model.SCVI(a, **kw)
    m.train(**train)
    models["SCVI"] = m
    scvi.model.LinearSCVI.setup_anndata(a, batch_key="batch")
    ld = scvi.model.LinearSCVI(a, **kw)
    ld.train(**train)
    models["LinearSCVI"] = ld
    sc = scvi.model.SCANVI.from_scvi_model(m, unlabeled_category="Unknown", labels_key="masked")
    sc.train(max_epochs=args.epochs, accelerator="cpu", enable_progress_bar=False)
    models["SCANVI"] = sc
    cov = a.copy()
    scvi.model.SCVI.setup_anndata(cov, batch_key="batch", categorical_covariate_keys=["donor"],
                                  continuous_covariate_keys=["log_counts"], size_factor_key="size_factor")
    mc = scvi.model.SCVI(cov, var_activation=torch.nn.functional.softplus, encode_covariates=True, **kw)
    mc.train(**train)
    models["SCVI_covariates"] = mc
    emb = a.copy()
    scvi.model.SCVI.setup_anndata(emb, batch_key="batch")
    me = scvi.model.SCVI(emb, batch_representation="embedding", encode_covariates=True, **kw)
    me.train(**train)
    models["SCVI_embedding"] = me
    for name, model in models.items():
        d = out / name
        model.save(str(d), overwrite=True)
        z = model.get_latent_representation()
        exp = pd.DataFrame(z, index=a.obs_names, columns=[f"z{i + 1}" for i in range(z.shape[1])])
        if name == "SCANVI":
            exp["prediction"] = model.predict()
        if name == "SCVI_covariates":
            for k in ["donor", "log_counts", "size_factor"]:
                exp[k] = a.obs[k].to_numpy()
        exp.to_csv(d / "expected.csv", float_format="%.9g")
        if name.startswith("SCVI_"):
            continue
        # The pre-0.15 layout, from the same save.
        saved = torch.load(d / "model.pt", weights_only=False)
        legacy = out / f"{name}_legacy"
        legacy.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in saved["model_state_dict"].items() if isinstance(v, torch.Tensor)}
        torch.save(state, legacy / "model_params.pt")
        pd.Series(saved["var_names"]).to_csv(legacy / "var_names.csv", index=False, header=False)
        with open(legacy / "attr.pkl", "wb") as f:
            pickle.dump(saved["attr_dict"], f)
    print(f"RESULT wrote {', '.join(models)} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
