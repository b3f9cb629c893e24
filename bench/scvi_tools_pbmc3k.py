#!/usr/bin/env python3
"""Reference benchmark: scvi-tools SCVI on the bundled PBMC 3k (2000 HVG) example.

Developer-only; run with the venv from bench/setup_venv.sh:

  $SCVIR_BENCH_VENV/bin/python bench/scvi_tools_pbmc3k.py --threads 1 --epochs 50

Model: SCVI defaults (gene_likelihood="zinb", dispersion="gene", n_latent=10,
no batch), scvi.settings.seed = 0, batch_size 128, validation every epoch,
CPU only. Only the training part of each epoch is timed (validation, which
Lightning runs inside the training epoch, is subtracted).

Prints exactly one machine-readable line, prefixed with "RESULT ", holding a JSON
object; everything else (warnings, logs) may go to stdout/stderr as well.
"""

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--likelihood", default="zinb", choices=["zinb", "nb", "poisson"])
    p.add_argument("--latent-library", action="store_true",
                   help="use_observed_lib_size=False (per-batch log-normal library prior)")
    p.add_argument("--marginal-ll-samples", type=int, default=0,
                   help="if > 0, also report the validation cells' marginal LL with this many samples")
    p.add_argument(
        "--input",
        default=os.environ.get(
            "SCVIR_EXAMPLE_H5AD", str(REPO / "inst" / "extdata" / "pbmc3k_hvg2000.h5ad")
        ),
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()
    # Limit every thread pool before numpy/torch are imported.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import json
    import resource
    import statistics
    import time
    from importlib.metadata import version

    import anndata as ad
    import numpy as np
    import torch
    from lightning.pytorch.callbacks import Callback
    import scvi

    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed

    class EpochTimer(Callback):
        """Wall time of the training part of each epoch (validation excluded)."""

        def __init__(self):
            self.train_s = []
            self.val_s = []
            self._t0 = None
            self._v0 = None
            self._val_in_epoch = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._val_in_epoch = 0.0
            self._t0 = time.perf_counter()

        def on_validation_epoch_start(self, trainer, pl_module):
            self._v0 = time.perf_counter()

        def on_validation_epoch_end(self, trainer, pl_module):
            dt = time.perf_counter() - self._v0
            self.val_s.append(dt)
            if self._t0 is not None:  # validation nested inside a training epoch
                self._val_in_epoch += dt

        def on_train_epoch_end(self, trainer, pl_module):
            total = time.perf_counter() - self._t0
            self.train_s.append(total - self._val_in_epoch)
            self._t0 = None

    adata = ad.read_h5ad(args.input)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(  # defaults: n_latent=10, zinb, gene dispersion
        adata, gene_likelihood=args.likelihood, use_observed_lib_size=not args.latent_library
    )

    load_start = os.getloadavg()[0]
    timer = EpochTimer()
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        check_val_every_n_epoch=1,
        accelerator="cpu",
        devices=1,
        callbacks=[timer],
        enable_progress_bar=False,
    )
    total_train_s = time.perf_counter() - t0

    n_train = int(len(model.train_indices))
    steady = timer.train_s[2:] if len(timer.train_s) > 2 else timer.train_s
    sec_per_epoch = statistics.median(steady)
    hist = model.history

    def last(key):
        return float(hist[key].iloc[-1, 0]) if key in hist else None

    result = {
        "tool": "scvi-tools",
        "version": version("scvi-tools"),
        "torch_version": torch.__version__,
        "threads": args.threads,
        "epochs": len(timer.train_s),
        "n_train": n_train,
        "n_validation": int(len(model.validation_indices)),
        "batch_size": args.batch_size,
        "sec_per_epoch": round(sec_per_epoch, 5),
        "cells_per_s": round(n_train / sec_per_epoch, 1),
        # min epoch and the 1-min load average help spot runs disturbed by other
        # processes (then total_train_s >> epochs * (sec_per_epoch + val_sec_per_epoch)).
        "sec_per_epoch_min": round(min(steady), 5),
        "loadavg_1m_start": round(load_start, 2),
        "val_sec_per_epoch": round(statistics.median(timer.val_s[2:] or timer.val_s), 5),
        "total_train_s": round(total_train_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "elbo_validation_final": last("elbo_validation"),
        "elbo_train_final": last("elbo_train"),
        "reconstruction_loss_validation_final": last("reconstruction_loss_validation"),
        "likelihood": args.likelihood,
        "library": "latent" if args.latent_library else "observed",
    }
    if args.marginal_ll_samples > 0:
        # Mean over the validation cells. scvi-tools' return_mean=True averages per-minibatch
        # means instead, which gives the last, short minibatch (7 of 263 cells here) a third of
        # the weight; that figure is kept as marginal_ll_validation_batch_mean.
        torch.manual_seed(args.seed)
        per_cell = model.get_marginal_ll(
            indices=model.validation_indices, n_mc_samples=args.marginal_ll_samples, return_mean=False
        )
        per_cell = np.asarray(per_cell.detach().cpu() if hasattr(per_cell, "detach") else per_cell, dtype=float)
        result["marginal_ll_validation"] = float(per_cell.mean())
        chunks = [per_cell[i : i + args.batch_size].mean() for i in range(0, len(per_cell), args.batch_size)]
        result["marginal_ll_validation_batch_mean"] = float(np.mean(chunks))
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
