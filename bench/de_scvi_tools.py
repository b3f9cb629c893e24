#!/usr/bin/env python3
"""Reference DE benchmark: scvi-tools SCVI (50 epochs, seed 0) on the bundled PBMC 3k, then
`differential_expression(groupby="cell_type", mode="change")` (each cell type vs the rest).

Developer-only; run with the venv from bench/setup_venv.sh:

  $SCVIR_BENCH_VENV/bin/python bench/de_scvi_tools.py --threads 2 --out DIR

Writes DIR/de_scvi_tools.csv (gene, group1, proba_de, lfc_mean, ...) and prints one line
"RESULT {json}" with the DE wall time.
"""

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--input", default=str(REPO / "inst" / "extdata" / "pbmc3k_hvg2000.h5ad"))
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import json
    import time

    import anndata as ad
    import torch
    import scvi

    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    adata = ad.read_h5ad(args.input)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=args.epochs, batch_size=128, check_val_every_n_epoch=1,
                accelerator="cpu", devices=1, enable_progress_bar=False)
    t0 = time.perf_counter()
    de = model.differential_expression(groupby="cell_type", mode="change", silent=True)
    de_s = time.perf_counter() - t0
    de.index.name = "gene"
    de.reset_index().to_csv(Path(args.out) / "de_scvi_tools.csv", index=False)
    print("RESULT " + json.dumps({"tool": "scvi-tools", "threads": args.threads, "de_seconds": de_s,
                                  "n_rows": int(de.shape[0])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
