# The engine's own guards: settings that cannot train, values that overflow the model's 32-bit
# floats, corrupted or truncated models, and queries stopped by Ctrl-C. Counts are pbmc_small's;
# the few synthetic values (a huge count, a huge covariate) are there because the property
# needs them.

test_that("settings BatchNorm cannot train on are refused, not turned into NaN", {
  counts <- pbmc_small_counts()
  expect_error(scvi_model(counts, batch_size = 1, max_epochs = 1, verbose = FALSE),
               class = "scvir_config_error", regexp = "batch_size must be at least 2 with BatchNorm")
  expect_error(scvi_model(counts[, 1:2], max_epochs = 1, verbose = FALSE, n_top_genes = NULL),
               class = "scvir_error", regexp = "training set has 1 cell|at least 2")
  # Without BatchNorm, one-cell minibatches are fine.
  fit <- scvi_model(counts, batch_size = 1, use_batch_norm = "none", max_epochs = 1, seed = 1,
                    n_threads = 1, verbose = FALSE)
  expect_true(all(is.finite(get_latent_representation(fit))))
})

test_that("counts and covariates beyond 32-bit floats are refused", {
  counts <- pbmc_small_counts()
  before <- counts
  big <- counts
  big@x[1] <- 1e30
  expect_error(scvi_model(big, max_epochs = 1, verbose = FALSE, n_top_genes = NULL),
               class = "scvir_input_error", regexp = "above 2\\^24")
  expect_identical(counts, before)
  cov <- data.frame(x = c(1e39, rep(1, ncol(counts) - 1)))
  expect_error(scvi_model(counts, continuous_covariates = cov, max_epochs = 1, verbose = FALSE),
               class = "scvir_input_error", regexp = "32-bit")
})

test_that("corrupted or truncated models are refused when loaded or used", {
  fit <- quick_fit(max_epochs = 2L)
  bad <- fit
  mid <- length(bad$model) %/% 2
  bad$model[mid] <- as.raw(bitwXor(as.integer(bad$model[mid]), 1L))
  expect_error(get_latent_representation(bad), class = "scvir_model_error", regexp = "checksum")
  dir <- tempfile("model")
  save_model(fit, dir)
  path <- file.path(dir, "model.scvir")
  bytes <- readBin(path, "raw", file.size(path))
  writeBin(bytes[seq_len(length(bytes) - 100)], path)
  expect_error(load_model(dir), class = "scvir_model_error", regexp = "corrupted or truncated|truncated")
  writeBin(bytes, path)
  expect_s3_class(load_model(dir), "scvi_model")
})

test_that("Ctrl-C stops a long query with scvir_interrupted", {
  skip_on_os("windows")
  skip_on_cran()
  out <- interrupted_run(paste(
    "{fit <- scvi_model(counts, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE);",
    "get_normalized_expression(fit, n_samples = 5e4, library_size = 1e4, n_threads = 1)}"))
  expect_true(any(grepl("CAUGHT: the computation was interrupted .*; nothing was modified", out)),
              info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^ALIVE TRUE TRUE", out)), info = paste(out, collapse = "\n"))
})

test_that("setTimeLimit() stops a long query with scvir_interrupted", {
  skip_on_cran()
  out <- run_r(c(
    "suppressMessages(library(scviR))",
    "e <- new.env(); utils::data('pbmc_small', package = 'SeuratObject', envir = e)",
    "counts <- scviR:::.assay_data(e$pbmc_small, 'RNA', 'counts')",
    "fit <- scvi_model(counts, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE)",
    "started <- proc.time()[['elapsed']]",
    "r <- tryCatch({ setTimeLimit(elapsed = 2, transient = TRUE)",
    "  get_normalized_expression(fit, n_samples = 5e4, library_size = 1e4, n_threads = 1) },",
    "  scvir_interrupted = function(e) 'STOPPED')",
    "cat(r, round(proc.time()[['elapsed']] - started), '\\n')"))
  line <- grep("^STOPPED", out, value = TRUE)
  expect_length(line, 1L)
  expect_lt(as.numeric(strsplit(line, " ")[[1]][2]), 10)
})

test_that("results larger than the free memory are refused up front as scvir_resource_error", {
  fit <- quick_fit(max_epochs = 2L)
  # 1e9 samples of 80 cells x 230 genes would need about 220 TB.
  expect_error(get_normalized_expression(fit, n_samples = 1e9, return_mean = FALSE),
               class = "scvir_resource_error", regexp = "would need about [0-9.]+ GB")
  expect_error(posterior_predictive_sample(fit, n_samples = 1e9),
               class = "scvir_resource_error", regexp = "posterior predictive samples would need")
  # The engine is usable afterwards.
  expect_equal(dim(get_latent_representation(fit)), c(80L, 10L))
})

test_that("a model read while another process saves over it is the old or the new one, never a mix", {
  skip_on_cran()
  skip_on_os("windows")
  a <- quick_fit(max_epochs = 2L, seed = 1L)
  b <- quick_fit(max_epochs = 2L, seed = 2L)
  dir <- tempfile("model")
  save_model(a, dir)
  fits <- tempfile(fileext = ".rds")
  saveRDS(list(a = a, b = b), fits)
  stop_file <- tempfile()
  writer <- tempfile(fileext = ".R")
  writeLines(c(
    "suppressMessages(library(scviR))",
    sprintf("f <- readRDS('%s')", fits),
    "i <- 0",
    sprintf("while (!file.exists('%s') && i < 2000) {", stop_file),
    "  i <- i + 1",
    sprintf("  save_model(if (i %%%% 2) f$b else f$a, '%s', overwrite = TRUE)", dir),
    "}"), writer)
  system2(file.path(R.home("bin"), "Rscript"), writer, wait = FALSE, stdout = FALSE, stderr = FALSE)
  on.exit(file.create(stop_file), add = TRUE)
  outcomes <- character()
  deadline <- Sys.time() + 6
  while (Sys.time() < deadline) {
    outcomes <- c(outcomes, tryCatch({
      m <- load_model(dir)
      if (identical(m$model, a$model)) "a" else if (identical(m$model, b$model)) "b" else "mixed"
    }, scvir_error = function(e) paste0("error:", class(e)[1])))
  }
  file.create(stop_file)
  expect_false("mixed" %in% outcomes)
  expect_true(any(outcomes %in% c("a", "b")))
  # A reader caught between the two renames gets a classed error, not a model.
  expect_true(all(outcomes %in% c("a", "b", "error:scvir_input_error", "error:scvir_model_error")),
              info = paste(unique(outcomes), collapse = ", "))
})
