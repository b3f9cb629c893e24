#!/usr/bin/env python3
"""scArches benchmark, scvi-tools side: the same protocol as bench/arches_scvir.R (SCVI reference
with the community scArches settings, SCANVI.from_scvi_model, SCANVI.load_query_data + train with
plan_kwargs = dict(weight_decay = 0.0)) on the split written by bench/arches_data.R.

  $SCVIR_BENCH_VENV/bin/python bench/arches_scvi_tools.py --threads 2 --dir OUTDIR --seed 0
"""

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--input", default=str(REPO / "inst" / "extdata" / "pbmc3k_hvg2000.h5ad"))
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import json
    import time

    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.io
    import scipy.sparse
    import torch
    import scvi

    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    out = Path(args.dir)
    adata = ad.read_h5ad(args.input)
    ref_idx = np.loadtxt(out / "ref_idx.txt", dtype=int) - 1
    query_idx = np.loadtxt(out / "query_idx.txt", dtype=int) - 1
    ref = adata[ref_idx].copy()
    query = adata[query_idx].copy()
    query.X = scipy.sparse.csr_matrix(scipy.io.mmread(out / "query_counts.mtx").T.astype(np.float32))
    ref.obs["batch"] = "reference"
    query.obs["batch"] = "query"
    truth = query.obs["cell_type"].astype(str).to_numpy()
    query.obs["cell_type"] = "Unknown"
    train_kw = dict(accelerator="cpu", devices=1, enable_progress_bar=False, batch_size=128)
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
    vae = scvi.model.SCVI(ref, use_layer_norm="both", use_batch_norm="none", encode_covariates=True,
                          dropout_rate=0.2, n_layers=2)
    vae.train(max_epochs=100, **train_kw)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown", labels_key="cell_type")
    lvae.train(max_epochs=20, **train_kw)
    q = scvi.model.SCANVI.load_query_data(query, lvae)
    t0 = time.perf_counter()
    q.train(max_epochs=100, plan_kwargs=dict(weight_decay=0.0), **train_kw)
    train_s = time.perf_counter() - t0
    pred = q.predict()
    full = ad.concat([ref, query])
    z = q.get_latent_representation(full)
    pd.DataFrame(z, index=full.obs_names).to_csv(out / f"latent_scvi-tools_{args.seed}.csv")
    pd.DataFrame({"cell": query.obs_names, "pred": pred, "truth": truth}).to_csv(
        out / f"pred_scvi-tools_{args.seed}.csv", index=False)
    print("RESULT " + json.dumps({"tool": "scvi-tools", "seed": args.seed, "query_train_seconds": train_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
