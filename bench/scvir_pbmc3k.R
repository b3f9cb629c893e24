# scviR side of the PBMC 3k benchmark (run in a fresh process per configuration):
#   Rscript bench/scvir_pbmc3k.R THREADS EPOCHS
# Trains scVI with scvi-tools' defaults on the bundled PBMC 3k (2,000 HVG), seed 0, batch 128,
# validation every epoch, and prints one "RESULT {json}" line with the same keys as
# bench/scvi_tools_pbmc3k.py. Epoch times cover the training part only (validation excluded).
args <- commandArgs(trailingOnly = TRUE)
threads <- as.integer(if (length(args) >= 1) args[1] else 1)
epochs <- as.integer(if (length(args) >= 2) args[2] else 50)
suppressPackageStartupMessages(library(scviR))
options(scviR.tune_blas = TRUE, scviR.tune_allocator = TRUE)  # the tuned setup, opt-in
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
counts <- SummarizedExperiment::assay(sce, "counts")
started <- proc.time()[["elapsed"]]
fit <- scvi_model(counts, max_epochs = epochs, seed = 0, batch_size = 128, n_threads = threads,
                  verbose = FALSE)
total <- proc.time()[["elapsed"]] - started
h <- training_history(fit)
spe <- median(h$train_seconds[-(1:2)])
status <- readLines("/proc/self/status")
hwm_kb <- as.numeric(sub("^VmHWM:\\s+([0-9]+).*", "\\1", status[grepl("^VmHWM:", status)]))
res <- list(tool = "scviR", version = as.character(utils::packageVersion("scviR")), threads = threads,
            epochs = nrow(h), n_train = length(train_indices(fit)), sec_per_epoch = spe,
            sec_per_epoch_min = min(h$train_seconds[-(1:2)]),
            cells_per_s = length(train_indices(fit)) / spe, total_train_s = total,
            peak_rss_mb = hwm_kb / 1024, elbo_validation_final = tail(h$elbo_validation, 1),
            elbo_train_final = tail(h$elbo_train, 1),
            reconstruction_loss_validation_final = tail(h$reconstruction_loss_validation, 1),
            blas = scviR:::.scvir_state$blas)
cat("RESULT", jsonlite::toJSON(res, auto_unbox = TRUE, digits = NA), "\n")
