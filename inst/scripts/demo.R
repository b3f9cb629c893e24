# scviR demo: scVI on the bundled PBMC 3k (10x Genomics, 2,638 cells, 2,000 highly variable
# genes), with scvi-tools' defaults. Writes a UMAP of the latent space coloured by cell type and
# the training history to the output directory (first argument, default "out").
#   Rscript inst/scripts/demo.R [OUT_DIR]
args <- commandArgs(trailingOnly = TRUE)
out_dir <- if (length(args)) args[1] else "out"
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)

suppressPackageStartupMessages({
  library(scviR)
  library(SingleCellExperiment)
  library(ggplot2)
})

path <- system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR")
sce <- read_h5ad(path)
cat(sprintf("Read %s: %d genes x %d cells, %d cell types\n", basename(path), nrow(sce), ncol(sce),
            nlevels(sce$cell_type)))

started <- Sys.time()
sce <- scvi(sce, seed = 0)
elapsed <- as.numeric(difftime(Sys.time(), started, units = "secs"))
fit <- metadata(sce)$scvi
print(fit)
h <- history(sce)
cat(sprintf("Trained %d epochs in %.1f s (%.0f cells/s over the training set)\n", nrow(h), elapsed,
            length(train_indices(fit)) * nrow(h) / sum(h$train_seconds)))

# How well does the latent space keep cell types together? 15-nearest-neighbour agreement.
z <- reducedDim(sce, "scVI")
labels <- as.character(sce$cell_type)
d <- as.matrix(dist(z)); diag(d) <- Inf
nn <- t(apply(d, 1, function(r) order(r)[1:15]))
cat(sprintf("15-NN cell-type agreement in the scVI latent space: %.3f\n",
            mean(labels[nn] == labels[row(nn)])))

# Denoised expression of classic markers, averaged per cell type (scaled to 10,000 counts).
markers <- c("MS4A1", "CD79A", "CD3E", "NKG7", "LYZ", "FCGR3A", "PPBP")
markers <- intersect(markers, rownames(sce))
ne <- get_normalized_expression(sce, library_size = 1e4, gene_list = markers)
cat("\nMean denoised expression (per 10k) of marker genes by cell type:\n")
print(round(t(apply(ne, 1, function(g) tapply(g, labels, mean))), 1))

set.seed(0)
umap <- uwot::umap(z, n_neighbors = 15, min_dist = 0.3, n_threads = 1)
reducedDim(sce, "UMAP") <- umap
df <- data.frame(UMAP1 = umap[, 1], UMAP2 = umap[, 2], cell_type = sce$cell_type)
p <- ggplot(df, aes(UMAP1, UMAP2, colour = cell_type)) +
  geom_point(size = 0.6, alpha = 0.8) +
  guides(colour = guide_legend(override.aes = list(size = 3, alpha = 1))) +
  labs(title = "PBMC 3k: UMAP of the scviR (scVI) latent space",
       subtitle = sprintf("%d cells, %d genes, %d epochs", ncol(sce), nrow(sce), nrow(h)),
       colour = "cell type") +
  theme_minimal(base_size = 12)
umap_png <- file.path(out_dir, "pbmc3k_scvi_umap.png")
ggsave(umap_png, p, width = 7.5, height = 6, dpi = 110, bg = "white")

hist_png <- file.path(out_dir, "pbmc3k_training_history.png")
png(hist_png, width = 800, height = 560, res = 110)
plot(fit)
invisible(dev.off())
cat(sprintf("\nWrote %s and %s\n", umap_png, hist_png))
