#!/usr/bin/env python3
"""Reference scANVI benchmark: scvi-tools SCVI (50 epochs, seed 0) on the bundled PBMC 3k, then
SCANVI.from_scvi_model with the labels of the cells listed in --hidden replaced by "Unknown",
trained with scvi-tools' default epochs; prints held-out accuracy and SCANVI training time.

  $SCVIR_BENCH_VENV/bin/python bench/scanvi_scvi_tools.py --threads 2 --hidden FILE
"""

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", required=True, help="file with 1-based indices of cells to hide")
    p.add_argument("--input", default=str(REPO / "inst" / "extdata" / "pbmc3k_hvg2000.h5ad"))
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import json
    import time

    import anndata as ad
    import numpy as np
    import torch
    import scvi

    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    adata = ad.read_h5ad(args.input)
    hidden = np.loadtxt(args.hidden, dtype=int) - 1
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    truth = labels.copy()
    labels[hidden] = "Unknown"
    adata.obs["masked"] = labels
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=50, batch_size=128, check_val_every_n_epoch=1, accelerator="cpu",
                devices=1, enable_progress_bar=False)
    scanvi = scvi.model.SCANVI.from_scvi_model(model, unlabeled_category="Unknown", labels_key="masked")
    t0 = time.perf_counter()
    scanvi.train(accelerator="cpu", devices=1, enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    pred = scanvi.predict()
    acc = float(np.mean(pred[hidden] == truth[hidden]))
    print("RESULT " + json.dumps({"tool": "scvi-tools", "accuracy": acc, "scanvi_train_seconds": train_s,
                                  "epochs": int(scanvi.history["elbo_train"].shape[0])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
