#!/usr/bin/env python3
"""Export counts and scanpy seurat_v3 HVG results for tools/check_hvg_against_scanpy.sh.

Developer-only; run with the bench venv (bench/setup_venv.sh). Writes into OUTDIR:
  counts.mtx        genes x cells Matrix Market (integer counts)
  genes.txt         gene symbols (rows of counts.mtx)
  batch.txt         deterministic 2-level batch per cell: b0/b1 alternating
  scanpy_nobatch.csv, scanpy_batch.csv, scanpy_batch_paper.csv
                    scanpy's per-gene HVG tables (flavor seurat_v3 without and
                    with batch_key, and seurat_v3_paper with batch_key)
"""

import argparse
import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.io
import scipy.sparse as sp

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("outdir")
    p.add_argument(
        "--input",
        default=os.environ.get(
            "SCVIR_PBMC3K_H5AD", str(REPO.parent / "shared" / "data" / "pbmc3k.h5ad")
        ),
    )
    p.add_argument("--n-top-genes", type=int, default=2000)
    args = p.parse_args()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)

    a = ad.read_h5ad(args.input)
    X = sp.csr_matrix(a.X, dtype=np.float32)
    base = ad.AnnData(X=X, obs=pd.DataFrame(index=a.obs_names), var=pd.DataFrame(index=a.var_names))
    base.obs["batch"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2 == 0, "b0", "b1"))

    scipy.io.mmwrite(str(out / "counts.mtx"), sp.csc_matrix(X).T.tocoo().astype(np.int64), field="integer")
    (out / "genes.txt").write_text("\n".join(a.var_names) + "\n")
    (out / "batch.txt").write_text("\n".join(base.obs["batch"].astype(str)) + "\n")

    runs = (
        ("nobatch", None, "seurat_v3"),
        ("batch", "batch", "seurat_v3"),
        ("batch_paper", "batch", "seurat_v3_paper"),
    )
    for name, key, flavor in runs:
        df = sc.pp.highly_variable_genes(
            base.copy(), flavor=flavor, n_top_genes=args.n_top_genes,
            batch_key=key, inplace=False,
        )
        df.index = a.var_names
        df.index.name = "gene"
        df.to_csv(out / f"scanpy_{name}.csv")
    print(f"wrote reference files to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
