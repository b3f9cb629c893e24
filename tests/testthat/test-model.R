test_that("scvi_model() trains on a dgCMatrix with scvi-tools' default architecture and split", {
  fit <- quick_fit()
  expect_s3_class(fit, "scvi_model")
  expect_true(fit$is_trained)
  expect_equal(fit$config$n_latent, 10L)
  expect_equal(fit$config$n_hidden, 128L)
  expect_identical(fit$config$gene_likelihood, "zinb")
  expect_identical(fit$config$dispersion, "gene")
  # ceil(0.9 * 80) = 72 train, 8 validation, no test set.
  expect_length(train_indices(fit), 72L)
  expect_length(validation_indices(fit), 8L)
  expect_length(test_indices(fit), 0L)
  expect_setequal(c(train_indices(fit), validation_indices(fit)), 1:80)
  z <- get_latent_representation(fit)
  expect_equal(dim(z), c(80L, 10L))
  expect_true(all(is.finite(z)))
})

test_that("training_history() has the per-epoch series and the KL warm-up", {
  fit <- quick_fit(max_epochs = 12L)
  h <- training_history(fit)
  expect_equal(h$epoch, 1:12)
  expect_equal(h$kl_weight, (0:11) / 400)
  expect_equal(h$elbo_train, h$reconstruction_loss_train + h$kl_local_train, tolerance = 1e-9)
  expect_equal(h$elbo_validation, h$reconstruction_loss_validation + h$kl_local_validation,
               tolerance = 1e-9)
  expect_lt(h$elbo_train[12], h$elbo_train[1])
})

test_that("max_epochs defaults to scvi-tools' heuristic", {
  fit <- scvi_model(pbmc_small_counts(), seed = 1, n_threads = 1, verbose = FALSE)
  # min(round(20000 / 80 * 400), 400) = 400
  expect_equal(nrow(training_history(fit)), 400L)
  expect_equal(fit$train_config$max_epochs, 400L)
})

test_that("print(), summary() and plot() describe the model", {
  fit <- quick_fit(batch = pbmc_small_seurat()$groups)
  out <- capture.output(print(fit))
  expect_match(out[1], "SCVI model .* trained for 15 epochs")
  expect_true(any(grepl("230 genes x 80 cells", out)))
  expect_true(any(grepl("2 categories", out)))
  expect_silent(s <- summary(fit))
  expect_s3_class(s, "summary.scvi_model")
  expect_identical(s$batches, c("g1", "g2"))
  expect_equal(s$epochs_trained, 15L)
  expect_output(print(s), "230 genes x 80 cells")
  png_file <- tempfile(fileext = ".png")
  grDevices::png(png_file)
  expect_invisible(plot(fit))
  grDevices::dev.off()
  expect_gt(file.size(png_file), 1000)
})

test_that("likelihoods and dispersions train and change the parameters they should", {
  counts <- pbmc_small_counts()
  b <- pbmc_small_seurat()$groups
  for (lik in c("zinb", "nb", "poisson", "normal")) {
    fit <- quick_fit(counts, gene_likelihood = lik, max_epochs = 5L)
    expect_identical(fit$config$gene_likelihood, lik)
    expect_true(all(is.finite(training_history(fit)$elbo_train)))
  }
  fit_gb <- quick_fit(counts, batch = b, dispersion = "gene-batch", max_epochs = 5L)
  expect_identical(fit_gb$config$dispersion, "gene-batch")
  fit_gc <- quick_fit(counts, dispersion = "gene-cell", max_epochs = 5L)
  expect_true(all(is.finite(training_history(fit_gc)$elbo_train)))
  fit_g <- quick_fit(counts, batch = b, max_epochs = 5L)
  shapes <- function(fit) scviR:::.model_tensors(fit)
  expect_equal(shapes(fit_g)[["px_r"]], 230L)
  expect_equal(shapes(fit_gb)[["px_r"]], c(230L, 2L))
  expect_null(shapes(fit_gc)[["px_r"]])
  expect_equal(shapes(fit_gc)[["decoder.px_r_decoder.weight"]], c(230L, 128L))
  # Zero-inflation logits exist only for ZINB.
  expect_false(any(grepl("px_dropout", names(shapes(quick_fit(counts, gene_likelihood = "nb", max_epochs = 2L))))))
  expect_true(any(grepl("px_dropout", names(shapes(fit_g)))))
})

test_that("a latent library size adds a library KL term", {
  fit <- quick_fit(use_observed_lib_size = FALSE, max_epochs = 5L)
  h <- training_history(fit)
  fit_obs <- quick_fit(max_epochs = 5L)
  # Epoch 1 has KL weight 0: kl_local then differs only by the (unweighted) library KL.
  expect_gt(h$train_loss_epoch[1] - h$reconstruction_loss_train[1], 0)
  expect_equal(training_history(fit_obs)$train_loss_epoch[1], training_history(fit_obs)$reconstruction_loss_train[1],
               tolerance = 1e-6)
})

test_that("the same seed gives the identical latent; another seed does not", {
  a <- get_latent_representation(quick_fit(seed = 11L))
  b <- get_latent_representation(quick_fit(seed = 11L))
  c <- get_latent_representation(quick_fit(seed = 12L))
  expect_identical(a, b)
  expect_false(isTRUE(all.equal(a, c)))
  set.seed(5); d <- get_latent_representation(quick_fit(seed = NULL))
  set.seed(5); e <- get_latent_representation(quick_fit(seed = NULL))
  expect_identical(d, e)
})

test_that("normalized expression sums to library_size and transform_batch changes it", {
  b <- pbmc_small_seurat()$groups
  fit <- quick_fit(batch = b, max_epochs = 10L)
  e1 <- get_normalized_expression(fit, library_size = 1e4)
  expect_equal(dim(e1), c(230L, 80L))
  expect_equal(unname(colSums(e1)), rep(1e4, 80), tolerance = 1e-4)
  e2 <- get_normalized_expression(fit, library_size = 1e4, transform_batch = "g2")
  expect_false(isTRUE(all.equal(e1, e2)))
  expect_identical(get_normalized_expression(fit), get_normalized_expression(fit))
  e3 <- get_normalized_expression(fit, gene_list = c("MS4A1", "CD79A"))
  expect_identical(rownames(e3), c("MS4A1", "CD79A"))
  expect_error(get_normalized_expression(fit, transform_batch = "g9"), "not a batch of the model")
  expect_error(get_normalized_expression(fit, gene_list = "NOPE"), "does not know")
})

test_that("newdata must carry the model's genes, in any order", {
  counts <- pbmc_small_counts()
  fit <- quick_fit(counts)
  z <- get_latent_representation(fit)
  shuffled <- counts[rev(rownames(counts)), ]
  expect_equal(get_latent_representation(fit, newdata = shuffled), z)
  expect_error(get_latent_representation(fit, newdata = counts[1:100, ]), "lacks 130 of the model's 230 genes")
})

test_that("highly variable genes are selected when the input has more than n_top_genes", {
  fit <- quick_fit(n_top_genes = 100L, max_epochs = 3L)
  expect_length(fit$genes, 100L)
  expect_equal(sum(fit$hvg$highly_variable), 100L)
  counts <- pbmc_small_counts()
  chosen <- rownames(counts)[order(-Matrix::rowSums(counts))][1:20]
  fit2 <- quick_fit(counts, features = rev(chosen), max_epochs = 3L)
  expect_setequal(fit2$genes, chosen)
})

test_that("normalized expression: several transform batches, latent library, samples", {
  counts <- pbmc_small_counts()
  b <- pbmc_small_seurat()$groups
  fit <- quick_fit(counts, batch = b, max_epochs = 10L)
  g1 <- get_normalized_expression(fit, transform_batch = "g1", seed = 5)
  g2 <- get_normalized_expression(fit, transform_batch = "g2", seed = 5)
  both <- get_normalized_expression(fit, transform_batch = c("g1", "g2"), seed = 5)
  expect_equal(both, (g1 + g2) / 2, tolerance = 1e-5)
  mu <- get_normalized_expression(fit, library_size = "latent")
  expect_equal(unname(colSums(mu)), unname(Matrix::colSums(counts)), tolerance = 1e-4)
  arr <- get_normalized_expression(fit, n_samples = 4L, return_mean = FALSE, seed = 6)
  expect_equal(dim(arr), c(230L, 80L, 4L))
  expect_equal(get_normalized_expression(fit, n_samples = 4L, seed = 6), apply(arr, c(1, 2), mean),
               tolerance = 1e-5)
  over <- get_normalized_expression(fit, n_samples_overall = 200L, gene_list = c("LYZ", "CD79A"))
  expect_equal(dim(over), c(2L, 200L))
  expect_true(all(colnames(over) %in% colnames(counts)))
  set.seed(1); r1 <- runif(1)
  set.seed(1); invisible(get_normalized_expression(fit, n_samples_overall = 10L)); r2 <- runif(1)
  expect_identical(r1, r2)  # the user's random stream is left alone
  expect_error(get_normalized_expression(fit, n_samples = 2L, n_samples_overall = 10L), "needs n_samples = 1")
})
