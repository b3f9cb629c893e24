# scviR demo: scVI on the bundled PBMC 3k (10x Genomics, 2,638 cells, 2,000 highly variable
# genes), with scvi-tools' defaults, then differential expression (B cells vs the rest) and scANVI
# label transfer from half of the annotations. Writes a UMAP of the latent space coloured by cell
# type, the training history, a volcano plot and a UMAP of the scANVI predictions to the output
# directory (first argument, default "out").
#   Rscript inst/scripts/demo.R [OUT_DIR]
args <- commandArgs(trailingOnly = TRUE)
out_dir <- if (length(args)) args[1] else "out"
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)

suppressPackageStartupMessages({
  library(scviR)
  library(SingleCellExperiment)
  library(ggplot2)
})
# Opt in to glibc's larger allocation thresholds, during scviR's calls only (see ?libtorch_info).
options(scviR.tune_allocator = TRUE)

path <- system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR")
sce <- read_h5ad(path)
cat(sprintf("Read %s: %d genes x %d cells, %d cell types\n", basename(path), nrow(sce), ncol(sce),
            nlevels(sce$cell_type)))

started <- Sys.time()
sce <- scvi(sce, seed = 0)
elapsed <- as.numeric(difftime(Sys.time(), started, units = "secs"))
fit <- metadata(sce)$scvi
print(fit)
h <- training_history(sce)
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

# Differential expression, change mode: B cells against every other cell.
started <- Sys.time()
de <- differential_expression(sce, groupby = "cell_type", group1 = "B", mode = "change", seed = 0,
                              silent = TRUE)
cat(sprintf("\nDE B vs rest (change mode) in %.1f s: %d genes DE at FDR 0.05; top up-regulated:\n",
            as.numeric(difftime(Sys.time(), started, units = "secs")), sum(de$is_de_fdr_0.05)))
print(head(de[de$lfc_mean > 0, c("proba_de", "lfc_mean", "raw_mean1", "raw_mean2")], 8), digits = 3)
volcano_png <- file.path(out_dir, "pbmc3k_de_B_volcano.png")
ggsave(volcano_png, plot_de(de, n_labels = 12) + ggtitle("PBMC 3k: B cells vs rest (scviR DE)"),
       width = 7.5, height = 5.5, dpi = 110, bg = "white")

# scANVI: hide half of the labels, annotate them from the scVI model.
set.seed(42)
hidden <- sample(ncol(sce), round(ncol(sce) / 2))
masked <- labels
masked[hidden] <- "Unknown"
sce$masked <- masked
sce <- scanvi(sce, labels_key = "masked", unlabeled_category = "Unknown", scvi_fit = sce, seed = 0,
              verbose = FALSE)
accuracy <- mean(as.character(sce$scanvi_predictions[hidden]) == labels[hidden])
cat(sprintf("\nscANVI label transfer: accuracy %.3f on the %d cells whose label was hidden\n",
            accuracy, length(hidden)))
df$predicted <- sce$scanvi_predictions
df$hidden <- seq_len(ncol(sce)) %in% hidden
p2 <- ggplot(df[df$hidden, ], aes(UMAP1, UMAP2, colour = predicted)) +
  geom_point(size = 0.6, alpha = 0.8) +
  guides(colour = guide_legend(override.aes = list(size = 3, alpha = 1))) +
  labs(title = "PBMC 3k: scANVI predictions for the cells whose label was hidden",
       subtitle = sprintf("accuracy %.3f on %d cells", accuracy, length(hidden)),
       colour = "predicted") +
  theme_minimal(base_size = 12)
scanvi_png <- file.path(out_dir, "pbmc3k_scanvi_predictions.png")
ggsave(scanvi_png, p2, width = 7.5, height = 6, dpi = 110, bg = "white")

cat(sprintf("\nWrote %s, %s, %s and %s\n", umap_png, hist_png, volcano_png, scanvi_png))
