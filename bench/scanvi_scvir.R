# scviR side of the scANVI benchmark (see scanvi_scvi_tools.py): same data, same hidden cells.
#   Rscript bench/scanvi_scvir.R <threads> <hidden_file>
args <- commandArgs(trailingOnly = TRUE)
threads <- as.integer(args[1])
hidden <- scan(args[2], quiet = TRUE)
suppressMessages(library(scviR))
options(scviR.tune_blas = TRUE, scviR.tune_allocator = TRUE)  # the tuned setup, opt-in
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
truth <- as.character(sce$cell_type)
masked <- truth
masked[hidden] <- "Unknown"
sce$masked <- masked
sce <- scvi(sce, max_epochs = 50, seed = 0, n_threads = threads, verbose = FALSE,
            store_expression = FALSE)
t0 <- proc.time()[["elapsed"]]
sce <- scanvi(sce, labels_key = "masked", scvi_fit = sce, seed = 0, n_threads = threads,
              verbose = FALSE)
train_s <- proc.time()[["elapsed"]] - t0
acc <- mean(as.character(sce$scanvi_predictions[hidden]) == truth[hidden])
cat(sprintf("RESULT {\"tool\": \"scviR\", \"accuracy\": %.4f, \"scanvi_seconds_incl_outputs\": %.2f, \"epochs\": %d}\n",
            acc, train_s, nrow(training_history(S4Vectors::metadata(sce)$scanvi))))
