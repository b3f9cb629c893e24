# What a second thread adds to scviR's training, measured in matched pairs:
#   Rscript bench/thread_scaling.R [PAIRS] [EPOCHS]
# Trains scVI on the bundled PBMC 3k (2,000 HVG, batch 128, seed 0) at 1 and then at 2 threads,
# PAIRS times in one R process (in alternating order), and prints each pair's cells/s and their
# ratio, then the median ratio. Each pair runs within seconds, so the ratio is robust to the
# minute-to-minute drift of a shared machine's speed, which moves whole runs by up to 2x.
# cells/s = training cells / median epoch time after the first epoch (validation excluded).
# Before and after each pair, bench/core_check.c (built here with the C compiler, when there is
# one) times a compute-bound loop on one and on two threads at once: what the machine's second
# CPU gives at that moment (2.00 for two whole cores). The lower of the two checks around a pair
# is printed beside it as "machine".
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
core_check <- local({
  exe <- file.path(tempdir(), "core_check")
  src <- file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "core_check.c")
  ok <- nzchar(Sys.which("cc")) && file.exists(src) &&
    system2("cc", c("-O2", "-march=native", "-pthread", shQuote(src), "-o", shQuote(exe))) == 0
  if (!ok) function() NA_real_ else function() {
    out <- system2(exe, "100", stdout = TRUE)
    as.numeric(sub("^CORES ([0-9.]+).*", "\\1", out[grepl("^CORES", out)]))
  }
})
invisible(speed(2))  # warm-up
info <- libtorch_info()
cat(sprintf("libtorch's BLAS: %s; %d pairs of %d epochs\n", info$blas, pairs, epochs))
ratios <- machine <- numeric(pairs)
before <- core_check()
for (i in seq_len(pairs)) {
  order <- if (i %% 2 == 1) c(1L, 2L) else c(2L, 1L)
  s <- stats::setNames(vapply(order, speed, 0), order)
  ratios[i] <- s[["2"]] / s[["1"]]
  after <- core_check()
  machine[i] <- min(before, after)  # the lower of the checks just before and just after the pair
  before <- after
  cat(sprintf("pair %2d: 1 thread %6.0f cells/s, 2 threads %6.0f cells/s, ratio %.2f (machine %.2f)\n",
              i, s[["1"]], s[["2"]], ratios[i], machine[i]))
}
cat(sprintf("RESULT median 2-thread / 1-thread ratio %.2f (range %.2f-%.2f) over %d pairs\n",
            stats::median(ratios), min(ratios), max(ratios), pairs))
if (!anyNA(machine)) {
  whole <- machine >= 1.9
  cat(sprintf("RESULT machine's second CPU: median %.2f (range %.2f-%.2f); in the %d pairs where it gave >= 1.9: median ratio %s\n",
              stats::median(machine), min(machine), max(machine), sum(whole),
              if (any(whole)) sprintf("%.2f", stats::median(ratios[whole])) else "-"))
}
