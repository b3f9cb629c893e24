#!/usr/bin/env python3
"""Build the small example data set shipped in inst/extdata (developer-only tool).

Reads the shared PBMC 3k counts (2638 cells x 13714 genes), selects 2000 highly
variable genes with scanpy's seurat_v3 flavour on the raw counts, and writes

  inst/extdata/pbmc3k_hvg2000.h5ad
      X    CSR float32 integer counts (cells x 2000 genes, original gene order)
      obs  index = cell barcodes, cell_type (categorical)
      var  index = gene symbols, gene_ids (Ensembl ids)
      (no uns / obsm / layers content; anndata writes its empty default groups)
  bench/reference/pbmc3k_hvg2000_genes.txt
      the 2000 gene symbols in order of scanpy's highly_variable_rank

Run with the bench venv (bench/setup_venv.sh):

  $SCVIR_BENCH_VENV/bin/python tools/make_example_data.py [--input PATH]

The input defaults to $SCVIR_PBMC3K_H5AD or ../shared/data/pbmc3k.h5ad relative
to the repository root.
"""

import argparse
import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    default_in = os.environ.get(
        "SCVIR_PBMC3K_H5AD", str(REPO.parent / "shared" / "data" / "pbmc3k.h5ad")
    )
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=default_in)
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--out", default=str(REPO / "inst" / "extdata" / "pbmc3k_hvg2000.h5ad"))
    p.add_argument(
        "--genes-out",
        default=str(REPO / "bench" / "reference" / "pbmc3k_hvg2000_genes.txt"),
    )
    args = p.parse_args()

    full = ad.read_h5ad(args.input)
    X = sp.csr_matrix(full.X, dtype=np.float32)
    if not np.array_equal(X.data, np.round(X.data)):
        raise SystemExit("X does not hold integer counts")

    # HVG selection on the raw counts (seurat_v3 works on counts, no normalisation).
    hv_in = ad.AnnData(X=X.copy(), obs=pd.DataFrame(index=full.obs_names), var=pd.DataFrame(index=full.var_names))
    hv = sc.pp.highly_variable_genes(
        hv_in, flavor="seurat_v3", n_top_genes=args.n_top_genes, inplace=False
    )
    hv.index = full.var_names
    top = hv[hv["highly_variable"]].sort_values("highly_variable_rank")
    assert len(top) == args.n_top_genes
    ranked_genes = list(top.index)

    keep = np.asarray(hv["highly_variable"].values, dtype=bool)  # original gene order
    Xs = X[:, keep].tocsr()
    Xs.sort_indices()
    Xs = sp.csr_matrix(Xs, dtype=np.float32)

    obs = pd.DataFrame(index=pd.Index(np.asarray(full.obs_names, dtype=object), name=None))
    obs["cell_type"] = pd.Categorical(
        full.obs["cell_type"].astype(str).values,
        categories=list(full.obs["cell_type"].cat.categories),
    )
    var_names = np.asarray(full.var_names[keep], dtype=object)
    var = pd.DataFrame(index=pd.Index(var_names, name=None))
    var["gene_ids"] = np.asarray(full.var["gene_ids"].values[keep], dtype=object)

    out = ad.AnnData(X=Xs, obs=obs, var=var)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.write_h5ad(args.out, compression="gzip", compression_opts=9)

    Path(args.genes_out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.genes_out, "w") as fh:
        fh.write("\n".join(ranked_genes) + "\n")

    size_mb = os.path.getsize(args.out) / 1e6
    print(
        f"wrote {args.out}: {out.n_obs} cells x {out.n_vars} genes, nnz={Xs.nnz}, {size_mb:.2f} MB",
        file=sys.stderr,
    )
    print(f"wrote {args.genes_out}: {len(ranked_genes)} genes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
