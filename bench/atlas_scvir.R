# One scviR run on an atlas-sized .h5ad for bench/run_atlas_bench.sh: read, train one epoch (no
# gene selection), latent; phase times and the process's peak resident memory (VmHWM).
# hdf5array: FILE is a dense HDF5 file from bench/make_dense_h5.py, opened with
# HDF5Array::HDF5Array() as a genes x cells DelayedMatrix (what an HDF5-backed
# SingleCellExperiment holds), which scviR reads from its file.
# handle: read_h5ad(path, backed = "memory"), the counts read into memory once (16-bit gene positions
# and counts where they fit).
#   Rscript bench/atlas_scvir.R memory|handle|disk|hdf5array FILE THREADS [EPOCHS] [TRAIN_SIZE]
args <- commandArgs(TRUE)
mode <- args[[1]]; path <- args[[2]]; threads <- as.integer(args[[3]])
epochs <- if (length(args) > 3) as.integer(args[[4]]) else 1L
train_size <- if (length(args) > 4) as.numeric(args[[5]]) else NULL
validation_size <- if (is.null(train_size)) NULL else min(train_size / 10, 1 - train_size)
suppressMessages(library(scviR))
options(scviR.tune_blas = TRUE, scviR.tune_allocator = TRUE)  # the tuned setup, opt-in
peak_gb <- function() {
  l <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", l)) / 1024^2
}
t0 <- proc.time()[["elapsed"]]
if (mode == "memory") {
  sce <- read_h5ad(path, layers = FALSE, obsm = FALSE, raw = FALSE)
  x <- SingleCellExperiment::counts(sce)
  rm(sce)
} else if (mode == "hdf5array") {
  x <- HDF5Array::HDF5Array(path, "counts")
  rownames(x) <- as.character(rhdf5::h5read(path, "genes"))
  colnames(x) <- paste0("cell", seq_len(ncol(x)))
} else if (mode == "handle") {
  x <- read_h5ad(path, backed = "memory")
} else {
  x <- read_h5ad(path, backed = TRUE)
}
t1 <- proc.time()[["elapsed"]]
fit <- scvi_model(x, n_top_genes = NULL, keep_data = mode != "memory", max_epochs = epochs,
                  train_size = train_size, validation_size = validation_size,
                  seed = 0, n_threads = threads, verbose = FALSE)
t2 <- proc.time()[["elapsed"]]
peak_train <- peak_gb()
z <- if (mode == "memory") get_latent_representation(fit, newdata = x) else get_latent_representation(fit)
t3 <- proc.time()[["elapsed"]]
h <- fit$history
cat(sprintf("RESULT\tscviR %s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%.1f\t%.3f\n",
            paste(switch(mode, memory = "(in memory)", handle = "(in memory, backed = \"memory\")", hdf5array = "(HDF5Array, from disk)", "(from disk)"),
                  if (is.null(train_size)) "" else sprintf("train_size %g", train_size)),
            ncol(x), threads,
            t1 - t0, t2 - t1, t3 - t2, peak_train, peak_gb(),
            sum(h$train_seconds), tail(h$elbo_validation, 1)))
