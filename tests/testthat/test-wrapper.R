# The scanpy-style scvi() call (scanpy.external.pp.scvi): each wrapper argument and output, on
# pbmc_small (real counts; its 20 VariableFeatures serve as precomputed HVG flags).

wrap <- function(object, ...) scvi(object, max_epochs = 3, seed = 1, n_threads = 1, verbose = FALSE, ...)

test_that("use_highly_variable_genes and subset_genes choose the genes", {
  seu <- pbmc_small_seurat(variable_features = TRUE)
  # The 20 flagged genes leave some cells empty; keep the cells with counts in them.
  hvg <- SeuratObject::VariableFeatures(seu)
  seu <- seu[, Matrix::colSums(scviR:::.assay_data(seu, "RNA", "counts")[hvg, ]) > 0]
  hvg <- SeuratObject::VariableFeatures(seu)
  expect_equal(sort(wrap(seu)@misc$scvi$genes), sort(hvg))
  expect_equal(length(wrap(seu, use_highly_variable_genes = FALSE)@misc$scvi$genes), 230L)
  expect_error(wrap(pbmc_small_seurat(variable_features = TRUE)), "zero counts in the 20 selected genes")
  counts <- scviR:::.assay_data(seu, "RNA", "counts")
  genes <- rownames(counts)[order(-Matrix::rowSums(counts))][1:50]
  expect_equal(sort(wrap(seu, subset_genes = genes)@misc$scvi$genes), sort(genes))
  sce <- pbmc_small_sce()[, colnames(seu)]
  SummarizedExperiment::rowData(sce)$highly_variable <- rownames(sce) %in% hvg
  expect_equal(sort(S4Vectors::metadata(wrap(sce))$scvi$genes), sort(hvg))
})

test_that("n_epochs, lr, train_size, model_kwargs and trainer_kwargs reach the model", {
  seu <- pbmc_small_seurat()
  fit <- scvi(seu, n_epochs = 4, lr = 5e-3, train_size = 0.5, seed = 1, n_threads = 1,
              verbose = FALSE, model_kwargs = list(n_latent = 3, gene_likelihood = "nb"),
              trainer_kwargs = list(batch_size = 32, n_epochs_kl_warmup = 2))@misc$scvi
  expect_equal(nrow(training_history(fit)), 4L)
  expect_equal(fit$train_config$lr, 5e-3)
  expect_equal(length(train_indices(fit)), 40L)
  expect_equal(fit$config$n_latent, 3L)
  expect_equal(fit$config$gene_likelihood, "nb")
  expect_equal(fit$train_config$batch_size, 32L)
  expect_equal(training_history(fit)$kl_weight[4], 1)
  expect_error(wrap(seu, model_kwargs = list(lr = 1)), "non-model argument")
  expect_error(wrap(seu, trainer_kwargs = list(n_latent = 2)), "non-training argument")
  expect_error(scvi(seu, n_epochs = 2, max_epochs = 3, verbose = FALSE), "given twice")
})

test_that("the wrapper's outputs: latent, denoised expression, sample rate, loadings", {
  seu <- wrap(pbmc_small_seurat(), batch_key = "groups", store_expression = TRUE)
  fit <- seu@misc$scvi
  expect_equal(fit$batch_key, "groups")
  den <- scviR:::.assay_data(seu, "scvi_denoised", "data")
  rate <- scviR:::.assay_data(seu, "scvi_sample_rate", "data")
  expect_equal(dim(den), c(230L, 80L))
  expect_equal(unname(Matrix::colSums(den)), rep(1, 80), tolerance = 1e-4)
  # Sample rate = observed library (the model's genes) x proportions.
  lib <- Matrix::colSums(scviR:::.assay_data(seu, "RNA", "counts")[fit$genes, ])
  expect_equal(unname(Matrix::colSums(rate)), unname(lib), tolerance = 1e-3)
  expect_false("scvi_denoised" %in% names(wrap(pbmc_small_seurat())@assays))
  # By default large outputs are skipped with a message (here with a tiny limit).
  expect_message(expect_false(scviR:::.store_expression(NULL, den, max_entries = 100)), "not storing")
  expect_true(scviR:::.store_expression(TRUE, den, max_entries = 100))

  ld <- wrap(pbmc_small_seurat(), linear_decoder = TRUE)
  expect_equal(ld@misc$scvi$model_type, "LDVAE")
  load <- SeuratObject::Loadings(ld, "scvi")
  expect_equal(dim(load), c(230L, 10L))
  expect_equal(unname(load), unname(get_loadings(ld)))

  sce <- wrap(pbmc_small_sce(), linear_decoder = TRUE, use_highly_variable_genes = FALSE,
              store_expression = TRUE)
  expect_equal(dim(S4Vectors::metadata(sce)$ldvae_loadings), c(230L, 10L))
  expect_equal(dim(attr(SingleCellExperiment::reducedDim(sce, "scVI"), "rotation")), c(230L, 10L))
  expect_true(all(c("scvi_denoised", "scvi_sample_rate") %in% SummarizedExperiment::assayNames(sce)))
  counts <- SummarizedExperiment::assay(sce, "counts")
  sub <- wrap(pbmc_small_sce(), subset_genes = rownames(counts)[order(-Matrix::rowSums(counts))][1:30],
              store_expression = TRUE)
  expect_equal(dim(SummarizedExperiment::assay(SingleCellExperiment::altExp(sub, "scvi"), "scvi_denoised")),
               c(30L, 80L))
})

test_that("copy = FALSE updates the caller's variable; return_posterior returns the model", {
  seu <- pbmc_small_seurat()
  scvi(seu, copy = FALSE, store_expression = FALSE, max_epochs = 2, seed = 1, n_threads = 1,
       verbose = FALSE)
  expect_true("scvi" %in% names(seu@reductions))
  untouched <- pbmc_small_seurat()
  res <- scvi(untouched, store_expression = FALSE, max_epochs = 2, seed = 1, n_threads = 1,
              verbose = FALSE)
  expect_false("scvi" %in% names(untouched@reductions))
  expect_true("scvi" %in% names(res@reductions))
  both <- wrap(pbmc_small_seurat(), return_posterior = TRUE, store_expression = FALSE)
  expect_named(both, c("object", "model"))
  expect_s3_class(both$model, "scvi_model")
  expect_error(scvi(pbmc_small_seurat(), copy = FALSE), "needs a variable")
})
