# get_elbo(), get_reconstruction_error(), get_marginal_ll(), get_latent_library_size() and the
# indices argument, with scvi-tools' sign conventions.

test_that("the ELBO, reconstruction error and marginal LL are consistent", {
  fit <- quick_fit(max_epochs = 60L)
  elbo <- get_elbo(fit)
  rec <- get_reconstruction_error(fit)
  expect_named(rec, "reconstruction_loss")
  expect_lt(elbo, 0)                                    # a log-likelihood bound
  expect_gt(rec$reconstruction_loss, 0)                 # a loss
  expect_lt(rec$reconstruction_loss, -elbo)             # the KL term is positive
  # The validation ELBO of the history is the negative bound on the validation cells.
  val <- get_elbo(fit, indices = validation_indices(fit))
  expect_equal(-val, tail(training_history(fit)$elbo_validation, 1), tolerance = 0.03)
  # Importance sampling: log p(x) is at least the ELBO on average.
  per_cell_elbo <- get_elbo(fit, return_mean = FALSE)
  per_cell_mll <- get_marginal_ll(fit, n_mc_samples = 50L, return_mean = FALSE)
  expect_length(per_cell_mll, 80L)
  expect_identical(names(per_cell_mll), colnames(pbmc_small_counts()))
  expect_gt(mean(per_cell_mll), mean(per_cell_elbo))
  expect_gte(mean(per_cell_mll > per_cell_elbo), 0.75) # per cell, with a one-sample ELBO
  # return_mean averages minibatch means (one minibatch of 80 cells here, two of 40 below).
  expect_equal(get_marginal_ll(fit, n_mc_samples = 50L, seed = 3),
               mean(get_marginal_ll(fit, n_mc_samples = 50L, seed = 3, return_mean = FALSE)))
  v40 <- get_marginal_ll(fit, n_mc_samples = 20L, batch_size = 40L, seed = 4, return_mean = FALSE)
  expect_equal(get_marginal_ll(fit, n_mc_samples = 20L, batch_size = 40L, seed = 4),
               mean(c(mean(v40[1:40]), mean(v40[41:80]))))
})

test_that("library sizes: observed, or the posterior mean of a latent library", {
  counts <- pbmc_small_counts()
  fit <- quick_fit(counts)
  lib <- get_latent_library_size(fit, give_mean = FALSE)
  expect_equal(unname(lib), unname(Matrix::colSums(counts)), tolerance = 1e-5)
  expect_error(get_latent_library_size(fit), "observed library size")
  latent <- quick_fit(counts, use_observed_lib_size = FALSE, max_epochs = 5L)
  m <- get_latent_library_size(latent)
  expect_length(m, 80L)
  expect_true(all(m > 0 & is.finite(m)))
  expect_false(isTRUE(all.equal(unname(m), unname(get_latent_library_size(latent, give_mean = FALSE)))))
})

test_that("indices select cells in every query", {
  fit <- quick_fit()
  z <- get_latent_representation(fit)
  # float32 products over 2 rows and over 80 rows round differently in the last bits.
  expect_equal(get_latent_representation(fit, indices = c(5, 2)), z[c(5, 2), ], tolerance = 1e-5)
  mask <- rep(c(TRUE, FALSE), 40)
  expect_equal(get_latent_representation(fit, indices = mask), z[mask, ], tolerance = 1e-5)
  expect_equal(dim(get_normalized_expression(fit, indices = 1:3)), c(230L, 3L))
  expect_length(get_elbo(fit, indices = 1:10, return_mean = FALSE), 10L)
  expect_error(get_latent_representation(fit, indices = 0), "indices must be cell positions")
  expect_error(get_latent_representation(fit, indices = integer()), "selects no cells")
})

test_that("evaluation works on objects holding a model", {
  seu <- scvi(pbmc_small_seurat(), max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
  expect_lt(get_elbo(seu), 0)
  expect_length(get_marginal_ll(seu, n_mc_samples = 5L, return_mean = FALSE), 80L)
})

test_that("a logistic-normal latent: simplex means by Monte Carlo, Gaussian posterior on request", {
  fit <- quick_fit(latent_distribution = "ln", max_epochs = 10L)
  expect_identical(fit$config$latent_distribution, "ln")
  z <- get_latent_representation(fit, mc_samples = 200L)
  expect_equal(unname(rowSums(z)), rep(1, 80), tolerance = 1e-5)
  expect_true(all(z > 0))
  d <- get_latent_representation(fit, return_dist = TRUE)
  expect_named(d, c("mean", "var"))
  expect_true(all(d$var > 0))
  expect_false(isTRUE(all.equal(d$mean, z)))
  # More samples, a better average: two seeds agree more closely with 2000 samples than with 20.
  gap <- function(k) max(abs(get_latent_representation(fit, mc_samples = k, seed = 1) -
                             get_latent_representation(fit, mc_samples = k, seed = 2)))
  expect_lt(gap(2000L), gap(20L))
  normal <- quick_fit(max_epochs = 3L)
  d2 <- get_latent_representation(normal, return_dist = TRUE)
  expect_equal(d2$mean, get_latent_representation(normal))
  expect_gt(get_marginal_ll(fit, n_mc_samples = 20L), get_elbo(fit))
})

test_that("likelihood parameters have the model's shapes and meaning", {
  counts <- pbmc_small_counts()
  fit <- quick_fit(counts, max_epochs = 10L)
  p <- get_likelihood_parameters(fit)
  expect_named(p, c("mean", "dispersions", "dropout"))
  expect_equal(dim(p$mean), c(230L, 80L))
  # mu = library * proportions: columns sum to the observed library size.
  expect_equal(unname(colSums(p$mean)), unname(Matrix::colSums(counts)), tolerance = 1e-4)
  # Gene dispersion: the same theta in every cell.
  expect_equal(p$dispersions[, 1], p$dispersions[, 80])
  expect_true(all(p$dropout > 0 & p$dropout < 1))
  three <- get_likelihood_parameters(fit, n_samples = 3L)
  expect_equal(dim(three$mean), c(230L, 80L, 3L))
  avg <- get_likelihood_parameters(fit, n_samples = 3L, give_mean = TRUE, seed = 9)
  all3 <- get_likelihood_parameters(fit, n_samples = 3L, seed = 9)
  expect_equal(avg$mean, apply(all3$mean, c(1, 2), mean), tolerance = 1e-5)
  nb <- get_likelihood_parameters(quick_fit(counts, gene_likelihood = "nb", max_epochs = 3L))
  expect_named(nb, c("mean", "dispersions"))
  expect_named(get_likelihood_parameters(quick_fit(counts, gene_likelihood = "poisson", max_epochs = 3L)), "mean")
  normal <- quick_fit(counts, gene_likelihood = "normal", max_epochs = 5L)
  expect_named(get_likelihood_parameters(normal), c("mean", "dispersions"))
  expect_true(all(is.finite(training_history(normal)$elbo_train)))
  expect_s4_class(posterior_predictive_sample(normal), "dgCMatrix")
})

test_that("posterior predictive samples are sparse counts that track the data", {
  counts <- pbmc_small_counts()
  fit <- quick_fit(counts, max_epochs = 60L)
  x <- posterior_predictive_sample(fit)
  expect_s4_class(x, "dgCMatrix")
  expect_equal(dim(x), c(230L, 80L))
  expect_true(all(x@x == round(x@x) & x@x > 0))
  xs <- posterior_predictive_sample(fit, n_samples = 5L, gene_list = c("LYZ", "MS4A1"), seed = 2)
  expect_length(xs, 5L)
  expect_identical(rownames(xs[[1]]), c("LYZ", "MS4A1"))
  # Sampled library sizes follow the observed ones.
  sampled <- Reduce(`+`, posterior_predictive_sample(fit, n_samples = 20L, seed = 3)) / 20
  expect_gt(cor(Matrix::colSums(sampled), Matrix::colSums(counts)), 0.8)
  # Gene means follow the data.
  expect_gt(cor(log1p(Matrix::rowMeans(sampled)), log1p(Matrix::rowMeans(counts))), 0.8)
})

test_that("gene-gene correlations under the model", {
  counts <- pbmc_small_counts()
  b <- pbmc_small_seurat()$groups
  fit <- quick_fit(counts, batch = b, max_epochs = 60L)
  genes <- rownames(counts)
  cm <- get_feature_correlation_matrix(fit, n_samples = 5L)
  expect_equal(dim(cm), c(230L, 230L))
  expect_identical(rownames(cm), fit$genes)
  expect_equal(unname(diag(cm)), rep(1, 230))
  expect_true(isSymmetric(unname(cm)))
  # Genes that co-vary in the data co-vary under the model: the B-cell markers MS4A1 and CD79A
  # are in the top 10% of gene pairs, and above a B / monocyte pair.
  pairs <- cm[upper.tri(cm)]
  expect_gt(cm["MS4A1", "CD79A"], stats::quantile(pairs, 0.9))
  expect_gt(cm["MS4A1", "CD79A"], cm["MS4A1", "LYZ"])
  p <- get_feature_correlation_matrix(fit, n_samples = 2L, correlation_type = "pearson",
                                      transform_batch = c("g1", "g2"))
  expect_false(isTRUE(all.equal(p, cm)))
  expect_error(get_feature_correlation_matrix(fit, correlation_type = "kendall"), "must be one of")
})
