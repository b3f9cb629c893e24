#!/usr/bin/env python3
"""Checks .h5ad interoperability with Python's anndata (developer-only; bench/README.md):

  write-check FILE   reads a file written by scviR's write_h5ad() and prints what it holds
  make FILE          writes a file with X, layers, obsm, varm, raw and uns for read_h5ad()
"""

import json
import sys

import anndata as ad
import numpy as np
import scipy.sparse as sp


def write_check(path: str) -> None:
    a = ad.read_h5ad(path)
    out = {
        "shape": list(a.shape),
        "x_type": type(a.X).__name__,
        "x_dtype": str(a.X.dtype),
        "x_sum": float(a.X.sum()),
        "layers": sorted(a.layers.keys()),
        "obsm": {k: list(v.shape) for k, v in a.obsm.items()},
        "varm": {k: list(v.shape) for k, v in a.varm.items()},
        "obs": {k: str(v.dtype) for k, v in a.obs.items()},
        "uns": {k: str(v) for k, v in a.uns.items()},
    }
    print("RESULT " + json.dumps(out))


def make(path: str) -> None:
    rng = np.random.default_rng(0)
    x = sp.random(50, 20, density=0.3, format="csr", random_state=1, dtype=np.float32)
    x.data = np.round(x.data * 10) + 1
    a = ad.AnnData(X=x)
    a.obs_names = [f"cell{i}" for i in range(50)]
    a.var_names = [f"gene{i}" for i in range(20)]
    a.obs["batch"] = ["a", "b"] * 25
    a.obs["batch"] = a.obs["batch"].astype("category")
    a.obs["_scvi_observed_lib_size"] = np.asarray(x.sum(1)).ravel()
    a.layers["counts"] = x.copy()
    a.obsm["X_scVI"] = rng.normal(size=(50, 10))
    a.obsm["_scvi_latent_qzm"] = rng.normal(size=(50, 10))
    a.obsm["_scvi_latent_qzv"] = np.exp(rng.normal(size=(50, 10)))
    a.varm["PCs"] = rng.normal(size=(20, 3))
    a.uns["_scvi_adata_minify_type"] = "latent_posterior_parameters"
    a.raw = a
    a.write_h5ad(path)
    print("RESULT " + json.dumps({"written": path, "x_sum": float(x.sum())}))


if __name__ == "__main__":
    {"write-check": write_check, "make": make}[sys.argv[1]](sys.argv[2])
