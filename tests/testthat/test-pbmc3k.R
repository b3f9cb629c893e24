# The bundled PBMC 3k (real counts, 2,000 highly variable genes): a short fit already separates
# the annotated cell types in the latent space.

test_that("scvi() on the bundled PBMC 3k separates cell types", {
  sce <- read_h5ad(pbmc3k_path())
  sce <- scvi(sce, max_epochs = 25, seed = 0, n_threads = 2, verbose = FALSE)
  z <- SingleCellExperiment::reducedDim(sce, "scVI")
  expect_equal(dim(z), c(2638L, 10L))
  labels <- as.character(SummarizedExperiment::colData(sce)$cell_type)
  # 10-nearest-neighbour label agreement in the latent space.
  d <- as.matrix(stats::dist(z))
  diag(d) <- Inf
  nn <- t(apply(d, 1, function(r) order(r)[1:10]))
  agreement <- mean(labels[nn] == labels[row(nn)])
  expect_gt(agreement, 0.8)
  h <- training_history(sce)
  expect_equal(nrow(h), 25L)
  expect_lt(h$elbo_validation[25], h$elbo_validation[1])
})
