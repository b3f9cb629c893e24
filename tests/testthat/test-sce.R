test_that("scvi() on a SingleCellExperiment fills reducedDim 'scVI' and metadata", {
  sce <- scvi(pbmc_small_sce(), batch_key = "groups", max_epochs = 8, seed = 3, n_threads = 1,
              verbose = FALSE)
  z <- SingleCellExperiment::reducedDim(sce, "scVI")
  expect_equal(dim(z), c(80L, 10L))
  expect_identical(rownames(z), colnames(sce))
  fit <- S4Vectors::metadata(sce)$scvi
  expect_s3_class(fit, "scvi_model")
  expect_identical(fit$batches, c("g1", "g2"))
  expect_equal(get_latent_representation(sce), z, tolerance = 1e-6)
  expect_equal(nrow(training_history(sce)), 8L)
})

test_that("read_h5ad() reads the bundled PBMC 3k into a SingleCellExperiment", {
  sce <- read_h5ad(pbmc3k_path())
  expect_s4_class(sce, "SingleCellExperiment")
  expect_equal(dim(sce), c(2000L, 2638L))
  counts <- SummarizedExperiment::assay(sce, "counts")
  expect_s4_class(counts, "dgCMatrix")
  expect_true(all(counts@x == round(counts@x)) && all(counts@x > 0))
  ct <- SummarizedExperiment::colData(sce)$cell_type
  expect_true(is.factor(ct))
  expect_equal(nlevels(ct), 8L)
  expect_true(all(c("B", "NK", "CD14 Mono") %in% levels(ct)))
  expect_true("MS4A1" %in% rownames(sce))
})

test_that("read_h5ad() errors clearly on a missing file or layer", {
  expect_error(read_h5ad(tempfile(fileext = ".h5ad")), "file not found", class = "scvir_input_error")
  expect_error(read_h5ad(pbmc3k_path(), layer = "nope"), "layer \"nope\" not found")
})
