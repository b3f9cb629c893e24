#!/usr/bin/env python3
"""A dense HDF5 copy of an atlas .h5ad's counts, laid out as R's HDF5Array writes a genes x cells
matrix (a cells x genes dataset "counts", int32, chunks of 512 cells x all genes, gzip level 6 as
HDF5Array's default), plus the gene names ("genes"), for bench/atlas_scvir.R's hdf5array mode.

  python bench/make_dense_h5.py IN.h5ad OUT.h5
"""

import sys

import h5py
import numpy as np


def main() -> int:
    src, dst = sys.argv[1], sys.argv[2]
    with h5py.File(src, "r") as f, h5py.File(dst + ".tmp", "w") as out:
        x = f["X"]
        n_cells, n_genes = (int(v) for v in x.attrs["shape"])
        indptr = x["indptr"][:]
        var = f["var"]
        genes = var[var.attrs["_index"]][:]
        out.create_dataset("genes", data=genes)
        d = out.create_dataset("counts", shape=(n_cells, n_genes), dtype="i4",
                               chunks=(512, n_genes), compression="gzip", compression_opts=6)
        step = 8192
        for a in range(0, n_cells, step):
            b = min(a + step, n_cells)
            lo, hi = int(indptr[a]), int(indptr[b])
            idx = x["indices"][lo:hi]
            val = x["data"][lo:hi]
            block = np.zeros((b - a, n_genes), dtype=np.int32)
            rows = np.repeat(np.arange(b - a), np.diff(indptr[a:b + 1]))
            block[rows, idx] = val.astype(np.int32)
            d[a:b, :] = block
    import os
    os.replace(dst + ".tmp", dst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
