# write_h5ad() / read_h5ad() round trips on real data.

test_that("a SingleCellExperiment round-trips through write_h5ad() and read_h5ad()", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_h5ad(pbmc3k_path())[, 1:300]
  SummarizedExperiment::assay(sce, "logcounts") <- log1p(SingleCellExperiment::counts(sce))
  SummarizedExperiment::rowData(sce)$mean <- Matrix::rowMeans(SingleCellExperiment::counts(sce))
  sce$qc_pass <- Matrix::colSums(SingleCellExperiment::counts(sce)) > 1000
  sce$note <- ifelse(seq_len(300) %% 2 == 0, "even", NA)
  set.seed(1)
  SingleCellExperiment::reducedDim(sce, "scVI") <- matrix(stats::rnorm(3000), 300, 10)
  path <- tempfile(fileext = ".h5ad")
  on.exit(unlink(path))
  expect_identical(write_h5ad(sce, path), path)
  back <- read_h5ad(path)
  expect_identical(SingleCellExperiment::counts(back), SingleCellExperiment::counts(sce))
  expect_equal(as.matrix(SummarizedExperiment::assay(back, "logcounts")),
               as.matrix(SummarizedExperiment::assay(sce, "logcounts")), tolerance = 1e-6)
  expect_identical(SingleCellExperiment::reducedDimNames(back), "scVI")
  expect_equal(unname(SingleCellExperiment::reducedDim(back, "scVI")),
               unname(SingleCellExperiment::reducedDim(sce, "scVI")))
  expect_identical(back$cell_type, sce$cell_type)
  expect_identical(back$qc_pass, unname(sce$qc_pass))
  expect_identical(as.character(back$note), sce$note) # NA-holding strings: a categorical
  expect_equal(SummarizedExperiment::rowData(back)$mean, unname(SummarizedExperiment::rowData(sce)$mean))
  # refuses to replace a file unless asked, and leaves no temporary file behind
  expect_error(write_h5ad(sce, path), "overwrite = TRUE", class = "scvir_input_error")
  expect_silent(write_h5ad(sce, path, overwrite = TRUE))
  expect_length(list.files(dirname(path), pattern = "^\\.scvir-"), 0)
  expect_error(write_h5ad(sce, file.path(tempfile(), "x.h5ad")), "does not exist",
               class = "scvir_input_error")
  # layers and obsm can be skipped when reading
  lean <- read_h5ad(path, layers = FALSE, obsm = FALSE)
  expect_identical(SummarizedExperiment::assayNames(lean), "counts")
  expect_length(SingleCellExperiment::reducedDimNames(lean), 0)
})

test_that("a Seurat object is written with its reductions, loadings and setup keys", {
  skip_if_not_installed("SeuratObject")
  skip_if_not_installed("SingleCellExperiment")
  seu <- pbmc_small_seurat(variable_features = TRUE)
  seu <- scvi(seu, batch_key = "groups", use_highly_variable_genes = FALSE, max_epochs = 2,
              seed = 1, n_threads = 1, verbose = FALSE)
  path <- tempfile(fileext = ".h5ad")
  on.exit(unlink(path))
  write_h5ad(seu, path)
  back <- read_h5ad(path)
  expect_identical(SingleCellExperiment::counts(back), scviR:::.assay_data(seu, "RNA", "counts"))
  expect_true(all(c("scVI", "pca", "tsne") %in% SingleCellExperiment::reducedDimNames(back)))
  expect_equal(unname(SingleCellExperiment::reducedDim(back, "scVI")),
               unname(SeuratObject::Embeddings(seu, "scvi")))
  pcs <- SummarizedExperiment::rowData(back)$PCs
  expect_equal(dim(pcs), c(230L, ncol(SeuratObject::Loadings(seu, "pca"))))
  expect_identical(sum(SummarizedExperiment::rowData(back)$highly_variable),
                   length(SeuratObject::VariableFeatures(seu)))
  expect_identical(S4Vectors::metadata(back)$uns$scvi_batch_key, "groups")
  expect_identical(as.character(back$groups), unname(seu$groups))
  expect_true("data" %in% SummarizedExperiment::assayNames(back))
})

test_that("a count matrix is written as X with its names", {
  counts <- pbmc_small_counts()
  path <- tempfile(fileext = ".h5ad")
  on.exit(unlink(path))
  write_h5ad(counts, path)
  back <- read_h5ad(path)
  expect_identical(SingleCellExperiment::counts(back), counts)
  expect_error(write_h5ad(counts, path, overwrite = NA), class = "scvir_config_error")
})
