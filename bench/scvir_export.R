# scviR -> scvi-tools: SCVI, LDVAE and scANVI models trained by scviR on the bundled PBMC 3k,
# saved with save_model(format = "scvi-tools") into OUT/<model>/ with the latent means (and
# scANVI predictions) scviR computes, for bench/scvi_tools_load_check.py.
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
for (m in names(fits)) {
  dir <- file.path(out, m)
  save_model(fits[[m]], dir, format = "scvi-tools", overwrite = TRUE)
  z <- get_latent_representation(fits[[m]], newdata = counts, batch = batch)
  e <- as.data.frame(z)
  if (m == "SCANVI") e$prediction <- as.character(predict(fits[[m]], newdata = counts, batch = batch))
  utils::write.csv(e, file.path(dir, "expected.csv"))
}
cat(sprintf("RESULT exported %s (%d cells x %d genes, all cells with counts: %s)\n",
            paste(names(fits), collapse = ", "), n_cells, n_genes, all(keep)))
