# scviR -> scvi-tools: SCVI, LDVAE and scANVI models trained by scviR on the bundled PBMC 3k,
# saved with save_model(format = "scvi-tools") into OUT/<model>/ with the latent means (and
# scANVI predictions) scviR computes, for bench/scvi_tools_load_check.py. Beyond the defaults:
# SCVI_covariates (a categorical and a continuous covariate, size factors, softplus variances,
# covariates encoded; "donor" is synthetic: cells in turn d1, d2, d3), SCVI_embedding (a batch
# embedding), SCANVI_prior (a non-uniform label prior) and SCVI_query (a reference-mapping query
# model: batch "q" added to the SCVI model).
#   Rscript bench/scvir_export.R OUT CELLS GENES EPOCHS
args <- commandArgs(TRUE)
out <- args[1]; n_cells <- as.integer(args[2]); n_genes <- as.integer(args[3]); epochs <- as.integer(args[4])
suppressMessages({library(scviR); library(SingleCellExperiment)})
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
counts <- counts(sce)[seq_len(n_genes), seq_len(n_cells)]
keep <- Matrix::colSums(counts) > 0
batch <- ifelse(seq_len(n_cells) %% 2 == 1, "a", "b")
labels <- as.character(sce$cell_type[seq_len(n_cells)])
labels[seq(2, n_cells, by = 2)] <- "Unknown"
fits <- list()
fits$SCVI <- scvi_model(counts, batch = batch, max_epochs = epochs, seed = 1, n_threads = 2, verbose = FALSE, n_top_genes = NULL)
fits$LinearSCVI <- ldvae(counts, batch = batch, max_epochs = epochs, seed = 1, n_threads = 2, verbose = FALSE, n_top_genes = NULL)
fits$SCANVI <- scanvi(counts, labels = labels, scvi_fit = fits$SCVI, batch = batch, max_epochs = 3,
                      seed = 1, n_threads = 2, verbose = FALSE)
total <- Matrix::colSums(counts(sce))[seq_len(n_cells)]
cov <- list(categorical = data.frame(donor = c("d1", "d2", "d3")[(seq_len(n_cells) - 1) %% 3 + 1]),
            continuous = data.frame(log_counts = log(total)), size_factor = total / stats::median(total))
fits$SCVI_covariates <- scvi_model(counts, batch = batch, categorical_covariates = cov$categorical,
                                   continuous_covariates = cov$continuous, size_factor = cov$size_factor,
                                   var_activation = "softplus", encode_covariates = TRUE,
                                   max_epochs = epochs, seed = 1, n_threads = 2, verbose = FALSE, n_top_genes = NULL)
fits$SCVI_embedding <- scvi_model(counts, batch = batch, batch_representation = "embedding",
                                  encode_covariates = TRUE, max_epochs = epochs, seed = 1, n_threads = 2,
                                  verbose = FALSE, n_top_genes = NULL)
known <- sort(unique(labels[labels != "Unknown"]))
prior <- as.numeric(table(factor(labels[labels != "Unknown"], levels = known)))
fits$SCANVI_prior <- scanvi(counts, labels = labels, scvi_fit = fits$SCVI, batch = batch, max_epochs = 3,
                            y_prior = stats::setNames(prior / sum(prior), known), seed = 1, n_threads = 2,
                            verbose = FALSE)
fits$SCVI_query <- train_model(load_query_data(counts, fits$SCVI, batch = rep("q", n_cells)),
                               max_epochs = 3, seed = 1, n_threads = 2, verbose = FALSE)
query_batch <- function(m) if (m == "SCVI_query") rep("q", n_cells) else batch
for (m in names(fits)) {
  dir <- file.path(out, m)
  save_model(fits[[m]], dir, format = "scvi-tools", overwrite = TRUE)
  covs <- if (m == "SCVI_covariates") cov
  z <- get_latent_representation(fits[[m]], newdata = counts, batch = query_batch(m), covariates = covs)
  e <- as.data.frame(z)
  if (startsWith(m, "SCANVI")) e$prediction <- as.character(predict(fits[[m]], newdata = counts, batch = batch))
  if (m == "SCVI_covariates") e <- cbind(e, cov$categorical, cov$continuous, size_factor = cov$size_factor)
  utils::write.csv(e, file.path(dir, "expected.csv"))
  if (m == "SCANVI_prior") utils::write.csv(data.frame(label = known, y_prior = prior / sum(prior)),
                                            file.path(dir, "y_prior.csv"), row.names = FALSE)
}
cat(sprintf("RESULT exported %s (%d cells x %d genes, all cells with counts: %s)\n",
            paste(names(fits), collapse = ", "), n_cells, n_genes, all(keep)))
