# Minified models answer from the stored latent posterior; queries needing counts refuse.

test_that("a minified model answers like the full model and refuses what needs counts", {
  fit <- quick_fit(max_epochs = 10L, batch = rep(c("a", "b"), 40))
  expect_message(small <- minify(fit), "latent posterior of 80 cells")
  expect_null(small$data$counts)
  expect_lt(as.numeric(utils::object.size(small)), as.numeric(utils::object.size(fit)))
  expect_output(print(small), "minified")
  # posterior means are the stored ones
  expect_identical(get_latent_representation(small), get_latent_representation(fit))
  # sampled quantities: the same draws (same seed, same posterior, same library)
  expect_equal(get_normalized_expression(small, seed = 3), get_normalized_expression(fit, seed = 3),
               tolerance = 1e-6)
  e_full <- get_normalized_expression(fit, n_samples = 200, seed = 1)
  e_small <- get_normalized_expression(small, n_samples = 200, seed = 2)
  expect_lt(max(abs(e_full - e_small) / (e_full + 1e-3)), 0.2)
  expect_equal(get_latent_library_size(small, give_mean = FALSE), get_latent_library_size(fit, give_mean = FALSE))
  pp <- posterior_predictive_sample(small, n_samples = 1, seed = 1)
  expect_equal(dim(pp), c(230L, 80L))
  de_full <- differential_expression(fit, groupby = rep(c("x", "y"), each = 40), group1 = "x", mode = "vanilla",
                                     n_samples_overall = 2000, seed = 1, silent = TRUE)
  de_small <- differential_expression(small, groupby = rep(c("x", "y"), each = 40), group1 = "x", mode = "vanilla",
                                      n_samples_overall = 2000, seed = 1, silent = TRUE)
  expect_equal(de_small[de_full$gene, "proba_m1"], de_full$proba_m1, tolerance = 1e-6)
  expect_true(all(is.na(de_small$raw_mean1)))
  # needs counts
  expect_error(get_elbo(small), class = "scvir_minified_error")
  expect_error(get_marginal_ll(small, n_mc_samples = 5), class = "scvir_minified_error")
  expect_error(get_reconstruction_error(small), class = "scvir_minified_error")
  expect_error(train_model(small, max_epochs = 1), class = "scvir_minified_error")
  expect_error(differential_expression(small, groupby = rep(c("x", "y"), each = 40),
                                       weights = "importance", silent = TRUE),
               class = "scvir_minified_error")
  # but new counts can still be given
  expect_equal(get_elbo(small, newdata = pbmc_small_counts(), batch = rep(c("a", "b"), 40)),
               get_elbo(fit), tolerance = 1e-6)
})

test_that("minify() needs the observed library size", {
  fit <- quick_fit(max_epochs = 2L, use_observed_lib_size = FALSE)
  expect_error(minify(fit), "use_observed_lib_size", class = "scvir_config_error")
})

test_that("minifying an object empties the counts and keeps every query working", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- pbmc3k_fit()
  sce <- sce[, 1:400]
  z <- get_latent_representation(sce)
  expect_message(small <- minify(sce), "counts dropped")
  expect_equal(sum(SingleCellExperiment::counts(small)), 0)
  expect_equal(dim(SingleCellExperiment::counts(small)), dim(sce))
  expect_identical(get_latent_representation(small), z)
  expect_equal(dim(get_normalized_expression(small, gene_list = c("MS4A1", "GNLY"))), c(2L, 400L))
  expect_error(get_elbo(small), class = "scvir_minified_error")
  expect_error(get_latent_representation(small[, 1:10]), class = "scvir_minified_error")
  skip_if_not_installed("SeuratObject")
  seu <- scvi(pbmc_small_seurat(), use_highly_variable_genes = FALSE, max_epochs = 3, seed = 1,
              n_threads = 1, verbose = FALSE)
  z <- get_latent_representation(seu)
  small <- minify(seu, verbose = FALSE)
  expect_equal(sum(scviR:::.assay_data(small, "RNA", "counts")), 0)
  expect_identical(get_latent_representation(small), z)
})

test_that("scANVI predictions of a minified model equal the full model's", {
  skip_on_cran()
  skip_if_not_installed("SingleCellExperiment")
  sce <- pbmc3k_fit()[, 1:600]
  labels <- as.character(sce$cell_type)
  labels[seq(1, 600, by = 3)] <- "Unknown"
  fit <- scanvi(SingleCellExperiment::counts(sce)[S4Vectors::metadata(sce)$scvi$genes, ], labels = labels,
                scvi_fit = S4Vectors::metadata(sce)$scvi, max_epochs = 3, seed = 1, n_threads = 2,
                verbose = FALSE)
  small <- minify(fit, verbose = FALSE)
  expect_identical(predict(small), predict(fit))
  expect_equal(predict(small, soft = TRUE), predict(fit, soft = TRUE), tolerance = 1e-6)
})
