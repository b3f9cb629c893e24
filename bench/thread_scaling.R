# What a second thread adds to scviR's training, measured in matched pairs:
#   Rscript bench/thread_scaling.R [PAIRS] [EPOCHS]
# Trains scVI on the bundled PBMC 3k (2,000 HVG, batch 128, seed 0) at 1 and then at 2 threads,
# PAIRS times in one R process (in alternating order), and prints each pair's cells/s and their
# ratio, then the median ratio. Each pair runs within seconds, so the ratio is robust to the
# minute-to-minute drift of a shared machine's speed, which moves whole runs by up to 2x.
# cells/s = training cells / median epoch time after the first epoch (validation excluded).
args <- commandArgs(trailingOnly = TRUE)
pairs <- as.integer(if (length(args) >= 1) args[1] else 10)
epochs <- as.integer(if (length(args) >= 2) args[2] else 5)
suppressPackageStartupMessages(library(scviR))
options(scviR.tune_blas = TRUE, scviR.tune_allocator = TRUE)  # as the other benchmarks
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
counts <- SummarizedExperiment::assay(sce, "counts")
speed <- function(threads) {
  fit <- scvi_model(counts, max_epochs = epochs, seed = 0, batch_size = 128, n_threads = threads,
                    verbose = FALSE)
  h <- training_history(fit)
  length(train_indices(fit)) / stats::median(h$train_seconds[-1])
}
invisible(speed(2))  # warm-up
info <- libtorch_info()
cat(sprintf("libtorch's BLAS: %s; %d pairs of %d epochs\n", info$blas, pairs, epochs))
ratios <- numeric(pairs)
for (i in seq_len(pairs)) {
  order <- if (i %% 2 == 1) c(1L, 2L) else c(2L, 1L)
  s <- stats::setNames(vapply(order, speed, 0), order)
  ratios[i] <- s[["2"]] / s[["1"]]
  cat(sprintf("pair %2d: 1 thread %6.0f cells/s, 2 threads %6.0f cells/s, ratio %.2f\n",
              i, s[["1"]], s[["2"]], ratios[i]))
}
cat(sprintf("RESULT median 2-thread / 1-thread ratio %.2f (range %.2f-%.2f) over %d pairs\n",
            stats::median(ratios), min(ratios), max(ratios), pairs))
