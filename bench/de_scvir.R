# scviR side of the DE benchmark: the same training as bench/de_scvi_tools.py (BENCH_EPOCHS = 50
# epochs, BENCH_TRAIN_SEED = 0 also seeding DE,
# PBMC 3k), then differential_expression(groupby = "cell_type", mode = "change").
#   Rscript bench/de_scvir.R <threads> <out_dir>
args <- commandArgs(trailingOnly = TRUE)
threads <- as.integer(args[1])
out <- args[2]
suppressMessages(library(scviR))
options(scviR.tune_blas = TRUE, scviR.tune_allocator = TRUE)  # the tuned setup, opt-in
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
train_seed <- as.integer(Sys.getenv("BENCH_TRAIN_SEED", "0"))
epochs <- as.integer(Sys.getenv("BENCH_EPOCHS", "50"))
sce <- scvi(sce, max_epochs = epochs, seed = train_seed, n_threads = threads, verbose = FALSE)
t0 <- proc.time()[["elapsed"]]
de <- differential_expression(sce, groupby = "cell_type", mode = "change", seed = train_seed, silent = TRUE,
                              n_threads = threads)
de_s <- proc.time()[["elapsed"]] - t0
utils::write.csv(de, file.path(out, "de_scvir.csv"), row.names = FALSE)
cat(sprintf("RESULT {\"tool\": \"scviR\", \"threads\": %d, \"de_seconds\": %.3f, \"n_rows\": %d}\n",
            threads, de_s, nrow(de)))
