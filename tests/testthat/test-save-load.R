test_that("save_model() / load_model() round-trip gives the identical latent", {
  fit <- quick_fit()
  dir <- file.path(tempdir(), "scvir-model-roundtrip")
  unlink(dir, recursive = TRUE)
  save_model(fit, dir)
  expect_true(file.exists(file.path(dir, "model.scvir")))
  fit2 <- load_model(dir)
  expect_s3_class(fit2, "scvi_model")
  expect_identical(get_latent_representation(fit2), get_latent_representation(fit))
  expect_identical(get_normalized_expression(fit2), get_normalized_expression(fit))
  expect_equal(training_history(fit2), training_history(fit))
  expect_error(save_model(fit, dir), "overwrite = TRUE", class = "scvir_input_error")
  save_model(fit, dir, overwrite = TRUE, save_data = FALSE)
  fit3 <- load_model(dir)
  expect_error(get_latent_representation(fit3), "pass newdata")
  expect_identical(get_latent_representation(fit3, newdata = pbmc_small_counts()),
                   get_latent_representation(fit))
  expect_error(load_model(file.path(tempdir(), "no-such-model")), "no model found")
})

test_that("models survive saveRDS / readRDS alone and inside a Seurat object", {
  fit <- quick_fit()
  f <- tempfile(fileext = ".rds")
  saveRDS(fit, f)
  expect_identical(get_latent_representation(readRDS(f)), get_latent_representation(fit))
  seu <- scvi(pbmc_small_seurat(), max_epochs = 3, seed = 1, n_threads = 1, verbose = FALSE)
  saveRDS(seu, f)
  seu2 <- readRDS(f)
  expect_identical(get_latent_representation(seu2), get_latent_representation(seu))
})

test_that("a corrupted model file is a clear error", {
  fit <- quick_fit(max_epochs = 2L)
  fit$model <- fit$model[1:50]
  expect_error(get_latent_representation(fit), class = "scvir_model_error")
})

test_that("a model read back with readRDS() works in a fresh R session", {
  fit <- quick_fit(max_epochs = 2)
  path <- tempfile(fileext = ".rds")
  saveRDS(fit, path)
  script <- tempfile(fileext = ".R")
  writeLines(c("suppressMessages(library(scviR))",
               sprintf("fit <- readRDS('%s')", path),
               "cat('DIM', dim(get_latent_representation(fit)), get_elbo(fit) < 0, '\\n')"), script)
  out <- system2(file.path(R.home("bin"), "Rscript"), script, stdout = TRUE, stderr = TRUE)
  expect_true(any(grepl("^DIM 80 10 TRUE", out)), info = paste(out, collapse = "\n"))
})
