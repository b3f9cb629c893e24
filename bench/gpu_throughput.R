# scviR training throughput on a GPU (bench/run_gpu_bench.sh): cells/s over epochs 2..E (the
# first warms up), counts in memory, no gene selection.
#   Rscript bench/gpu_throughput.R FILE.h5ad BATCH_SIZE EPOCHS
args <- commandArgs(TRUE)
suppressMessages(library(scviR))
x <- SingleCellExperiment::counts(read_h5ad(args[[1]], layers = FALSE, obsm = FALSE, raw = FALSE))
bs <- as.integer(args[[2]]); epochs <- as.integer(args[[3]])
fit <- scvi_model(x, n_top_genes = NULL, batch_size = bs, max_epochs = epochs, seed = 0,
                  accelerator = "gpu", verbose = FALSE)
s <- fit$history$train_seconds[-1]
cat(sprintf("RESULT\tscviR\t%s\t%d\t%.0f\t%s\n", basename(args[[1]]), bs,
            length(fit$train_indices) * length(s) / sum(s), fit$device))
