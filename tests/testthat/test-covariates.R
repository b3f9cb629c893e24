# Labels, extra categorical and continuous covariates, size factors: they reach the networks
# where scvi-tools puts them, travel with the model, and bad values are clear errors.

pbmc_meta <- function() pbmc_small_seurat()@meta.data

test_that("labels drive gene-label dispersion", {
  meta <- pbmc_meta()
  fit <- quick_fit(labels = meta$groups, dispersion = "gene-label", max_epochs = 5L)
  expect_identical(fit$labels, c("g1", "g2"))
  expect_equal(scviR:::.model_tensors(fit)[["px_r"]], c(230L, 2L))
  expect_true(all(is.finite(training_history(fit)$elbo_train)))
  p <- get_likelihood_parameters(fit)
  g1 <- which(meta$groups == "g1")[1]; g2 <- which(meta$groups == "g2")[1]
  expect_false(isTRUE(all.equal(p$dispersions[, g1], p$dispersions[, g2])))
  expect_equal(p$dispersions[, g1], p$dispersions[, which(meta$groups == "g1")[2]])
})

test_that("categorical and continuous covariates reach decoder and, on request, encoder", {
  meta <- pbmc_meta()
  cats <- data.frame(letters = meta$letter.idents)
  conts <- data.frame(genes = meta$nFeature_RNA / 100)
  k <- nlevels(factor(meta$letter.idents))
  shapes <- function(...) scviR:::.model_tensors(quick_fit(..., max_epochs = 3L))
  s <- shapes(categorical_covariates = cats, continuous_covariates = conts)
  expect_equal(s[["decoder.px_decoder.layer_0.linear.weight"]], c(128L, 10L + 1L + k))
  expect_equal(s[["z_encoder.encoder.layer_0.linear.weight"]], c(128L, 230L))
  e <- shapes(categorical_covariates = cats, continuous_covariates = conts, encode_covariates = TRUE)
  expect_equal(e[["z_encoder.encoder.layer_0.linear.weight"]], c(128L, 230L + 1L + k))
  fit <- quick_fit(categorical_covariates = cats, continuous_covariates = conts)
  expect_identical(names(fit$categorical_covariates), "letters")
  expect_identical(fit$continuous_covariates, "genes")
  out <- capture.output(print(fit))
  expect_true(any(grepl("covariate \"letters\" \\(categorical\\)", out)))
  expect_true(any(grepl("continuous covariates: genes", out)))
  z <- get_latent_representation(fit)
  expect_equal(dim(z), c(80L, 10L))
  # New data need the covariates; given them, the same cells give the same latent.
  counts <- pbmc_small_counts()
  expect_error(get_latent_representation(fit, newdata = counts), "trained with categorical")
  same <- get_latent_representation(fit, newdata = counts,
                                    covariates = list(categorical = cats, continuous = conts))
  expect_equal(same, z, tolerance = 1e-6)
  # Decoding depends on the continuous covariate.
  shifted <- get_normalized_expression(fit, newdata = counts, seed = 1,
                                       covariates = list(categorical = cats, continuous = conts * 3))
  expect_false(isTRUE(all.equal(shifted, get_normalized_expression(fit, seed = 1))))
  bad <- cats; bad$letters <- as.character(bad$letters); bad$letters[1] <- "Z"
  expect_error(get_latent_representation(fit, newdata = counts, covariates = list(categorical = bad, continuous = conts)),
               "not seen in training \\(e.g. \"Z\"")
})

test_that("size factors replace the library size", {
  sf <- Matrix::colSums(pbmc_small_counts()) / 100
  fit <- quick_fit(size_factor = sf, max_epochs = 5L)
  expect_true(fit$uses_size_factor)
  expect_equal(unname(get_latent_library_size(fit, give_mean = FALSE)), unname(sf), tolerance = 1e-5)
  expect_error(quick_fit(size_factor = -sf), "positive finite")
})

test_that("bad covariates are clear errors", {
  meta <- pbmc_meta()
  expect_error(quick_fit(continuous_covariates = data.frame(x = meta$letter.idents)), "is not numeric")
  na <- meta$groups; na[2] <- NA
  expect_error(quick_fit(categorical_covariates = data.frame(g = na)), "missing \\(NA\\)")
  expect_error(quick_fit(labels = meta$groups[1:10]), "labels has length 10")
  expect_error(quick_fit(categorical_covariates = list(meta$groups)), "need names")
})

test_that("covariates from Seurat and SCE metadata travel with the object and its model", {
  seu <- scvi(pbmc_small_seurat(), categorical_covariate_keys = "letter.idents",
              continuous_covariate_keys = "nFeature_RNA", labels_key = "groups",
              dispersion = "gene-label", max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
  emb <- SeuratObject::Embeddings(seu, "scvi")
  expect_equal(get_latent_representation(seu), emb, ignore_attr = TRUE, tolerance = 1e-6)
  expect_lt(get_elbo(seu), 0)
  expect_error(scvi(pbmc_small_seurat(), continuous_covariate_keys = "nope", verbose = FALSE),
               "continuous_covariate_keys \"nope\" is not a column")
  sce <- scvi(pbmc_small_sce(), categorical_covariate_keys = "letter.idents", max_epochs = 3,
              seed = 1, n_threads = 1, verbose = FALSE)
  expect_equal(get_latent_representation(sce), SingleCellExperiment::reducedDim(sce, "scVI"), tolerance = 1e-6)
  # save / load keeps the covariates with the data.
  fit <- quick_fit(categorical_covariates = data.frame(l = pbmc_meta()$letter.idents), max_epochs = 3L)
  dir <- file.path(tempdir(), "scvir-cov-model"); unlink(dir, recursive = TRUE)
  save_model(fit, dir)
  expect_identical(get_latent_representation(load_model(dir)), get_latent_representation(fit))
})
