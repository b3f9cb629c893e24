# scArches benchmark, scviR side: scVI reference (scArches settings) -> scANVI reference ->
# load_query_data + train_model on the batch-shifted query (weight_decay = 0). Writes the query
# model's latent of all cells and its query predictions; prints a RESULT line with the query
# training time.   Rscript bench/arches_scvir.R THREADS OUTDIR SEED
args <- commandArgs(TRUE)
threads <- as.integer(args[1]); out <- args[2]; seed <- as.integer(args[3])
suppressMessages({library(scviR); library(SingleCellExperiment)})
options(scviR.tune_blas = TRUE)
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
ref_idx <- as.integer(readLines(file.path(out, "ref_idx.txt")))
query_idx <- as.integer(readLines(file.path(out, "query_idx.txt")))
ref <- sce[, ref_idx]
query <- sce[, query_idx]
qc <- Matrix::readMM(file.path(out, "query_counts.mtx"))
dimnames(qc) <- dimnames(query)
counts(query) <- methods::as(qc, "CsparseMatrix")
ref$batch <- "reference"
query$batch <- "query"
arches <- list(use_layer_norm = "both", use_batch_norm = "none", encode_covariates = TRUE,
               dropout_rate = 0.2, n_layers = 2L)
ref <- do.call(scvi, c(list(ref, batch_key = "batch", max_epochs = 100, seed = seed,
                            n_threads = threads, verbose = FALSE, check_val_every_n_epoch = NULL), arches))
ref <- suppressMessages(scanvi(ref, labels_key = "cell_type", scvi_fit = ref, max_epochs = 20,
                               seed = seed, n_threads = threads, verbose = FALSE,
                               check_val_every_n_epoch = NULL))
q <- load_query_data(query, ref, batch_key = "batch", seed = seed, n_threads = threads)
t0 <- proc.time()[["elapsed"]]
q <- train_model(q, max_epochs = 100, weight_decay = 0, seed = seed, n_threads = threads,
                 verbose = FALSE, check_val_every_n_epoch = NULL)
train_s <- proc.time()[["elapsed"]] - t0
pred <- predict(q)
z <- rbind(get_latent_representation(q, newdata = counts(ref), batch = ref$batch),
           get_latent_representation(q))
utils::write.csv(z, file.path(out, sprintf("latent_scviR_%d.csv", seed)))
utils::write.csv(data.frame(cell = colnames(query), pred = pred, truth = query$cell_type),
                 file.path(out, sprintf("pred_scviR_%d.csv", seed)), row.names = FALSE)
cat(sprintf('RESULT {"tool": "scviR", "seed": %d, "query_train_seconds": %.2f}\n', seed, train_s))
