"""One scvi-tools run on an atlas-sized .h5ad for bench/run_atlas_bench.sh: read, train one epoch
(batch 128, CPU), latent; phase times and the process's peak resident memory.

    python bench/atlas_scvi_tools.py FILE THREADS [EPOCHS]
"""

import resource
import sys
import time

import torch

path, threads = sys.argv[1], int(sys.argv[2])
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
torch.set_num_threads(threads)

import anndata  # noqa: E402
import scvi  # noqa: E402

scvi.settings.seed = 0
scvi.settings.dl_num_workers = 0
t0 = time.time()
adata = anndata.read_h5ad(path)
t1 = time.time()
scvi.model.SCVI.setup_anndata(adata)
model = scvi.model.SCVI(adata)
model.train(max_epochs=epochs, accelerator="cpu", batch_size=128, enable_progress_bar=False, check_val_every_n_epoch=1)
t2 = time.time()
peak_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
z = model.get_latent_representation()
t3 = time.time()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
hist = model.history
elbo = float(hist["elbo_validation"].iloc[-1, 0]) if "elbo_validation" in hist else float("nan")
epoch_s = t2 - t1
print(f"RESULT\tscvi-tools 1.4.2\t{adata.n_obs}\t{threads}\t{t1 - t0:.1f}\t{t2 - t1:.1f}\t{t3 - t2:.1f}\t{peak_train:.2f}\t{peak:.2f}\t{epoch_s:.1f}\t{elbo:.3f}")
