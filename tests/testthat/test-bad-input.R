# Each bad input gives a clear R error naming the problem, leaves the object untouched and the
# session alive.

test_that("non-integer, negative and non-finite counts are rejected with their location", {
  counts <- pbmc_small_counts()
  bad <- counts; bad@x[5] <- 2.5
  expect_error(quick_fit(bad), "non-integer value.*2.5 at gene", class = "scvir_input_error")
  bad <- counts; bad@x[7] <- -3
  expect_error(quick_fit(bad), "negative value", class = "scvir_input_error")
  bad <- counts; bad@x[1] <- NaN
  expect_error(quick_fit(bad), "NaN/NA or infinite", class = "scvir_input_error")
  bad <- counts; bad@x[2] <- Inf
  expect_error(quick_fit(bad), "NaN/NA or infinite", class = "scvir_input_error")
  expect_error(quick_fit(log1p(as.matrix(counts))), "non-integer")
})

test_that("cells with zero counts after gene selection are rejected", {
  counts <- pbmc_small_counts()
  genes <- c("MS4A1", "CD79A")
  expect_gt(sum(Matrix::colSums(counts[genes, ]) == 0), 0)
  expect_error(quick_fit(counts, features = genes), "zero counts in the 2 selected genes",
               class = "scvir_input_error")
})

test_that("too few genes or cells are rejected", {
  counts <- pbmc_small_counts()
  expect_error(quick_fit(counts[1, , drop = FALSE]), "at least 2 are needed")
  expect_error(quick_fit(counts[, 1, drop = FALSE]), "at least 2 are needed")
  expect_error(quick_fit(counts, features = "MS4A1"), "fewer than 2 genes")
  expect_error(quick_fit(counts, features = c("MS4A1", "NOT_A_GENE")), "not genes of the data")
})

test_that("a batch with fewer than 3 cells is named in the error", {
  counts <- pbmc_small_counts()
  b <- rep(c("a", "b"), 40); b[1:2] <- "tiny"
  expect_error(quick_fit(counts, batch = b), "batch \"tiny\" has fewer than 3 cells")
  b2 <- rep("a", 80); b2[3] <- NA
  expect_error(quick_fit(counts, batch = b2), "missing \\(NA\\)")
})

test_that("unknown keys, layers and assays are errors and leave the object untouched", {
  seu <- pbmc_small_seurat()
  before <- seu
  expect_error(seu <- scvi(seu, batch_key = "nope", verbose = FALSE), "batch_key \"nope\" is not a column")
  expect_error(seu <- scvi(seu, assay = "ADT", verbose = FALSE), "assay \"ADT\" not found")
  expect_error(seu <- scvi(seu, layer = "spliced", verbose = FALSE), "layer \"spliced\" not found")
  expect_error(seu <- scvi(seu, layer = "data", verbose = FALSE), "non-integer")
  expect_identical(seu, before)
  expect_false("scvi" %in% SeuratObject::Reductions(seu))
  sce <- pbmc_small_sce()
  expect_error(scvi(sce, assay = "logcounts", verbose = FALSE), "assay \"logcounts\" not found")
  expect_error(scvi(sce, batch_key = "nope", verbose = FALSE), "is not a column")
  expect_error(get_latent_representation(sce), "holds no scVI model")
})

test_that("unknown option values are errors", {
  expect_error(quick_fit(gene_likelihood = "gaussian"), "gene_likelihood must be one of",
               class = "scvir_config_error")
  expect_error(quick_fit(dispersion = "gene-labels"), "dispersion must be one of")
  expect_error(quick_fit(dispersion = "gene-label"), "needs labels")
  expect_error(quick_fit(n_latent = 0), "n_latent must be a single integer")
  expect_error(quick_fit(train_size = 2), "train_size must be")
  expect_error(scvi(pbmc_small_seurat(), not_an_argument = 1, verbose = FALSE), "unknown argument")
})

test_that("a Rust panic becomes an R error and the session goes on", {
  expect_error(scviR:::.engine(scviR:::.rs_debug_panic()), "internal error in the scviR engine",
               class = "scvir_engine_error")
  expect_s3_class(quick_fit(max_epochs = 2L), "scvi_model")
})
