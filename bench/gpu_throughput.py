"""scvi-tools training throughput on a GPU (bench/run_gpu_bench.sh): cells/s over epochs 2..E.

    python bench/gpu_throughput.py FILE.h5ad BATCH_SIZE EPOCHS
"""

import sys
import time

import anndata
import scvi
from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    def __init__(self):
        self.times = []

    def on_train_epoch_start(self, trainer, module):
        self.start = time.time()

    def on_train_epoch_end(self, trainer, module):
        self.times.append(time.time() - self.start)


path, bs, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
scvi.settings.seed = 0
adata = anndata.read_h5ad(path)
scvi.model.SCVI.setup_anndata(adata)
model = scvi.model.SCVI(adata)
timer = EpochTimer()
model.train(max_epochs=epochs, accelerator="gpu", batch_size=bs, enable_progress_bar=False, callbacks=[timer])
n_train = len(model.train_indices)
s = timer.times[1:]
print(f"RESULT\tscvi-tools 1.4.2\t{path.split('/')[-1]}\t{bs}\t{n_train * len(s) / sum(s):.0f}\tcuda")
