# Training options: each one changes what it should.

test_that("early stopping stops on a plateau, before max_epochs, by Lightning's rule", {
  fit <- quick_fit(max_epochs = 400L, early_stopping = TRUE, early_stopping_patience = 5L)
  h <- training_history(fit)
  n <- nrow(h)
  expect_lt(n, 400L)
  expect_identical(fit$stopped_early_at, n)
  expect_match(capture.output(print(fit))[1], "stopped early")
  # The last 5 validation epochs did not beat the best before them.
  expect_gte(min(h$elbo_validation[(n - 4):n]), min(h$elbo_validation[1:(n - 5)]))
  # Without early stopping the same run goes on.
  expect_equal(nrow(training_history(quick_fit(max_epochs = n + 10L))), n + 10L)
})

test_that("reduce_lr_on_plateau multiplies the learning rate by lr_factor", {
  fit <- quick_fit(max_epochs = 120L, reduce_lr_on_plateau = TRUE, lr_patience = 2L, lr_factor = 0.5)
  lr <- training_history(fit)$lr
  expect_equal(lr[1], 1e-3)
  expect_lt(min(lr), 1e-3)
  steps <- log(lr / 1e-3, base = 0.5)
  expect_equal(steps, round(steps), tolerance = 1e-9)  # only powers of the factor
  expect_true(all(diff(lr) <= 0))
  expect_true(all(training_history(quick_fit(max_epochs = 20L))$lr == 1e-3))
})

test_that("KL warm-up by steps, and its end points", {
  h <- training_history(quick_fit(max_epochs = 14L, n_epochs_kl_warmup = NULL, n_steps_kl_warmup = 10L))
  # pbmc_small trains in one minibatch per epoch: step = epoch - 1.
  expect_equal(h$kl_weight, pmin((0:13) / 10, 1))
  h2 <- training_history(quick_fit(max_epochs = 3L, min_kl_weight = 0.2, max_kl_weight = 0.6))
  expect_equal(h2$kl_weight, 0.2 + 0.4 * (0:2) / 400)
})

test_that("AdamW and Adam give different models", {
  a <- get_latent_representation(quick_fit(weight_decay = 0.5))
  w <- get_latent_representation(quick_fit(weight_decay = 0.5, optimizer = "AdamW"))
  expect_false(isTRUE(all.equal(a, w)))
  expect_error(quick_fit(optimizer = "SGD"), "optimizer must be one of")
})

test_that("split options: no shuffling, explicit sizes and a test set", {
  fit <- quick_fit(shuffle_set_split = FALSE)
  expect_identical(validation_indices(fit), 1:8)
  fit2 <- quick_fit(train_size = 0.8, validation_size = 0.1)
  expect_length(train_indices(fit2), 64L)
  expect_length(validation_indices(fit2), 8L)
  expect_length(test_indices(fit2), 8L)
  expect_length(unique(c(train_indices(fit2), validation_indices(fit2), test_indices(fit2))), 80L)
  expect_error(quick_fit(train_size = 1, early_stopping = TRUE), "validation set, which is empty")
})

test_that("architecture options reach the networks", {
  counts <- pbmc_small_counts()
  b <- pbmc_small_seurat()$groups
  shapes <- function(...) scviR:::.model_tensors(quick_fit(counts, ..., max_epochs = 2L))
  plain <- shapes(batch = b)
  expect_equal(plain[["z_encoder.encoder.layer_0.linear.weight"]], c(128L, 230L))
  # encode_covariates: the encoder's first layer also sees the batch one-hot.
  enc <- shapes(batch = b, encode_covariates = TRUE)
  expect_equal(enc[["z_encoder.encoder.layer_0.linear.weight"]], c(128L, 232L))
  # The decoder always sees it.
  expect_equal(plain[["decoder.px_decoder.layer_0.linear.weight"]], c(128L, 12L))
  # deeply_inject_covariates: deeper layers get it too.
  deep <- shapes(batch = b, n_layers = 2L)
  expect_equal(deep[["decoder.px_decoder.layer_1.linear.weight"]], c(128L, 130L))
  shallow <- shapes(batch = b, n_layers = 2L, deeply_inject_covariates = FALSE)
  expect_equal(shallow[["decoder.px_decoder.layer_1.linear.weight"]], c(128L, 128L))
  # Normalisation placement.
  expect_false(any(grepl("batch_norm", names(shapes(use_batch_norm = "none")))))
  enc_only <- names(shapes(use_batch_norm = "encoder"))
  expect_true(any(grepl("z_encoder.*batch_norm", enc_only)))
  expect_false(any(grepl("decoder.*batch_norm", enc_only)))
})

test_that("layer norm, raw-count encoding and softplus variances train", {
  for (args in list(list(use_layer_norm = "both", use_batch_norm = "none"),
                    list(log_variational = FALSE), list(var_activation = "softplus"),
                    list(n_layers = 3L, dropout_rate = 0.2))) {
    fit <- do.call(quick_fit, c(args, max_epochs = 5L))
    h <- training_history(fit)
    expect_true(all(is.finite(h$elbo_train)), info = paste(names(args), collapse = ","))
    expect_lt(h$elbo_train[5], h$elbo_train[1])
  }
  a <- get_latent_representation(quick_fit(max_epochs = 5L))
  s <- get_latent_representation(quick_fit(max_epochs = 5L, var_activation = "softplus"))
  expect_false(isTRUE(all.equal(a, s)))
  expect_error(quick_fit(use_batch_norm = "sometimes"), "use_batch_norm must be one of")
  expect_error(quick_fit(var_activation = "relu"), "var_activation must be one of")
  expect_error(quick_fit(early_stopping = "yes"), "early_stopping must be TRUE or FALSE")
})

test_that("accelerator: the CPU on request, a clear error for an unavailable GPU", {
  fit <- quick_fit(accelerator = "cpu", max_epochs = 2L)
  expect_identical(fit$device, "Cpu")
  if (!scviR:::.rs_cuda_available()) {
    # The error says why: a CPU build of libtorch (install the CUDA one) or no device visible.
    why <- if (isTRUE(libtorch_info()$cuda)) "sees no CUDA device.*nvidia-smi" else
      "CPU build.*install_libtorch\\(cuda = TRUE\\)"
    expect_error(quick_fit(accelerator = "gpu"), paste0("needs a CUDA device, but .*", why),
                 class = "scvir_config_error")
    expect_identical(quick_fit(accelerator = "auto", max_epochs = 2L)$device, "Cpu")
  }
  expect_error(quick_fit(accelerator = "tpu"), "accelerator must be one of")
})

test_that("a batch embedding replaces the one-hot batch", {
  b <- pbmc_small_seurat()$groups
  fit <- quick_fit(batch = b, batch_representation = "embedding", max_epochs = 5L)
  s <- scviR:::.model_tensors(fit)
  expect_equal(s[["batch_embedding"]], c(2L, 5L))
  # The decoder sees z (10) + the embedding (5) and no one-hot columns.
  expect_equal(s[["decoder.px_decoder.layer_0.linear.weight"]], c(128L, 15L))
  e <- get_batch_representation(fit)
  expect_equal(dim(e), c(2L, 5L))
  expect_identical(rownames(e), c("g1", "g2"))
  enc <- scviR:::.model_tensors(quick_fit(batch = b, batch_representation = "embedding",
                                          encode_covariates = TRUE, batch_embedding_dim = 3L, max_epochs = 2L))
  expect_equal(enc[["z_encoder.encoder.layer_0.linear.weight"]], c(128L, 233L))
  # transform_batch decodes through the other batch's vector.
  expect_false(isTRUE(all.equal(get_normalized_expression(fit, transform_batch = "g1", seed = 1),
                                get_normalized_expression(fit, transform_batch = "g2", seed = 1))))
  expect_error(get_batch_representation(quick_fit(batch = b, max_epochs = 2L)), "one-hot")
})
