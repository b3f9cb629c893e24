#!/usr/bin/env python3
"""Loads the models bench/scvir_export.R saved in scvi-tools' format with scvi-tools itself and
prints the largest absolute difference of the latent means (and whether scANVI's predictions
agree) against scviR's.   python bench/scvi_tools_load_check.py OUT CELLS GENES"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    out, n_cells, n_genes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scvi

    a = ad.read_h5ad(REPO / "inst" / "extdata" / "pbmc3k_hvg2000.h5ad")[:n_cells, :n_genes].copy()
    a.obs["batch"] = np.where(np.arange(n_cells) % 2 == 0, "a", "b")
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    labels[1::2] = "Unknown"
    a.obs["labels"] = labels
    print("| model | max abs latent difference | scANVI predictions equal |\n|---|---|---|")
    models = [("SCVI", scvi.model.SCVI), ("LinearSCVI", scvi.model.LinearSCVI), ("SCANVI", scvi.model.SCANVI),
              ("SCVI_covariates", scvi.model.SCVI), ("SCVI_embedding", scvi.model.SCVI),
              ("SCANVI_prior", scvi.model.SCANVI), ("SCVI_query", scvi.model.SCVI)]
    for name, cls in models:
        e = pd.read_csv(out / name / "expected.csv", index_col=0)
        b = a.copy()
        if name == "SCVI_covariates":
            for k in ["donor", "log_counts", "size_factor"]:
                b.obs[k] = e[k].to_numpy()
        if name == "SCVI_query":
            b.obs["batch"] = "q"
        m = cls.load(str(out / name), adata=b)
        z = m.get_latent_representation()
        zcols = [c for c in e.columns if c.startswith("z") or c.startswith("scvi_") or c.startswith("scanvi_")]
        diff = float(np.abs(z - e[zcols].to_numpy()).max())
        same = ""
        if name.startswith("SCANVI"):
            same = str(bool(np.all(m.predict() == e["prediction"].to_numpy())))
            prior_file = out / name / "y_prior.csv"
            if prior_file.exists():
                want = pd.read_csv(prior_file)["y_prior"].to_numpy()
                got = m.module.y_prior.detach().cpu().numpy().ravel()
                same += f" (y_prior max abs difference {float(np.abs(got - want).max()):.1e})"
        print(f"| {name} | {diff:.2e} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
