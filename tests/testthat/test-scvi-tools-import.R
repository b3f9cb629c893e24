# Models saved by scvi-tools (fixtures made by bench/scvi_tools_fixtures.py on the bundled PBMC 3k:
# the first 300 cells and 100 genes, batches alternating a / b) load natively and give the latent
# means scvi-tools computed.

fixture <- function(...) test_path("fixtures", "scvi-tools", ...)

fixture_cells <- function() {
  sce <- read_h5ad(pbmc3k_path())
  list(counts = SingleCellExperiment::counts(sce)[1:100, 1:300],
       batch = ifelse(seq_len(300) %% 2 == 1, "a", "b"))
}

test_that("SCVI, LinearSCVI and SCANVI saves of scvi-tools give scvi-tools' latent means", {
  skip_if_not_installed("SingleCellExperiment")
  d <- fixture_cells()
  for (model in c("SCVI", "LinearSCVI", "SCANVI")) {
    for (dir in c(model, paste0(model, "_legacy"))) {
      fit <- load_model(fixture(dir))
      expect_s3_class(fit, "scvi_model")
      expect_identical(fit$genes, rownames(d$counts), info = dir)
      expect_identical(fit$batches, c("a", "b"), info = dir)
      expected <- utils::read.csv(fixture(model, "expected.csv"), row.names = 1)
      z <- get_latent_representation(fit, newdata = d$counts, batch = d$batch)
      expect_lt(max(abs(z - as.matrix(expected[, grep("^z", names(expected))]))), 1e-4)
      if (model == "SCANVI") {
        expect_s3_class(fit, "scanvi_model")
        expect_identical(as.character(predict(fit, newdata = d$counts, batch = d$batch)),
                         expected$prediction)
      }
      if (model == "LinearSCVI") expect_identical(fit$model_type, "LDVAE")
    }
  }
})

test_that("an imported model is saved in scviR's format and maps a query", {
  skip_if_not_installed("SingleCellExperiment")
  d <- fixture_cells()
  fit <- load_model(fixture("SCVI"))
  dir <- tempfile("imported_")
  on.exit(unlink(dir, recursive = TRUE))
  save_model(fit, dir)
  again <- load_model(dir)
  expect_identical(get_latent_representation(again, newdata = d$counts, batch = d$batch),
                   get_latent_representation(fit, newdata = d$counts, batch = d$batch))
  q <- load_query_data(d$counts[, 1:60], fit, batch = rep("new", 60), seed = 1, n_threads = 1)
  expect_identical(q$batches, c("a", "b", "new"))
})

test_that("directories that are not scvi-tools saves are refused with the path named", {
  dir <- tempfile("not_a_model_")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE))
  writeBin(as.raw(1:100), file.path(dir, "model.pt"))
  expect_error(load_model(dir), "zip", class = "scvir_model_error")
})

test_that("save_model(format = \"scvi-tools\") writes a model.pt that reads back the same", {
  fit <- quick_fit(max_epochs = 3L, batch = rep(c("a", "b"), 40))
  dir <- tempfile("to_scvi_tools_")
  on.exit(unlink(dir, recursive = TRUE))
  save_model(fit, dir, format = "scvi-tools")
  expect_true(file.exists(file.path(dir, "model.pt")))
  expect_length(list.files(dir, all.files = TRUE, no.. = TRUE), 1) # no temporary left
  back <- load_model(dir)
  expect_identical(back$batches, fit$batches)
  expect_equal(get_latent_representation(back, newdata = pbmc_small_counts(), batch = rep(c("a", "b"), 40)),
               get_latent_representation(fit), tolerance = 1e-6)
  expect_error(save_model(fit, dir, format = "scvi-tools"), "overwrite", class = "scvir_input_error")
  expect_error(save_model(fit, dir, format = "anndata"), class = "scvir_config_error")
  # A reference-mapping query model is written as the model it is: reference and query batches.
  q <- load_query_data(pbmc_small_counts(), fit, batch = rep("c", 80), seed = 1, n_threads = 1)
  qdir <- tempfile("query_")
  save_model(q, qdir, format = "scvi-tools")
  on.exit(unlink(qdir, recursive = TRUE), add = TRUE)
  expect_identical(load_model(qdir)$batches, c("a", "b", "c"))
  expect_equal(get_latent_representation(load_model(qdir), newdata = pbmc_small_counts(), batch = rep("c", 80)),
               get_latent_representation(q), tolerance = 1e-6)
})

test_that("scvi-tools saves with covariates, size factors, softplus variances or a batch embedding load", {
  skip_if_not_installed("SingleCellExperiment")
  d <- fixture_cells()
  e <- utils::read.csv(fixture("SCVI_covariates", "expected.csv"), row.names = 1)
  fit <- load_model(fixture("SCVI_covariates"))
  expect_identical(fit$categorical_covariates, list(donor = c("d1", "d2", "d3")))
  expect_identical(fit$continuous_covariates, "log_counts")
  expect_true(fit$uses_size_factor)
  expect_identical(fit$config$var_activation, "softplus")
  covs <- list(categorical = e["donor"], continuous = e["log_counts"], size_factor = e$size_factor)
  z <- get_latent_representation(fit, newdata = d$counts, batch = d$batch, covariates = covs)
  expect_lt(max(abs(z - as.matrix(e[, grep("^z", names(e))]))), 1e-4)
  # The covariates are required for new cells, and checked against the saved categories.
  expect_error(get_latent_representation(fit, newdata = d$counts, batch = d$batch), "covariates",
               class = "scvir_input_error")
  covs$categorical$donor[1] <- "d9"
  expect_error(get_latent_representation(fit, newdata = d$counts, batch = d$batch, covariates = covs),
               "d9", class = "scvir_input_error")

  e <- utils::read.csv(fixture("SCVI_embedding", "expected.csv"), row.names = 1)
  fit <- load_model(fixture("SCVI_embedding"))
  expect_identical(fit$config$batch_representation, "embedding")
  z <- get_latent_representation(fit, newdata = d$counts, batch = d$batch)
  expect_lt(max(abs(z - as.matrix(e[, grep("^z", names(e))]))), 1e-4)
})

test_that("models with covariates, size factors, softplus, batch embeddings and label priors round-trip", {
  counts <- pbmc_small_counts()
  batch <- rep(c("a", "b"), 40)
  total <- Matrix::colSums(counts)
  # "donor" is synthetic (cells in turn d1, d2, d3); the rest comes from the counts.
  covs <- list(categorical = data.frame(donor = rep_len(c("d1", "d2", "d3"), 80)),
               continuous = data.frame(log_counts = log(total)), size_factor = total / stats::median(total))
  roundtrip <- function(fit, ...) {
    dir <- tempfile("to_scvi_tools_")
    save_model(fit, dir, format = "scvi-tools")
    back <- load_model(dir)
    unlink(dir, recursive = TRUE)
    expect_equal(get_latent_representation(back, newdata = counts, batch = batch, ...),
                 get_latent_representation(fit, newdata = counts, batch = batch, ...), tolerance = 1e-6)
    back
  }
  cov_fit <- quick_fit(max_epochs = 2L, batch = batch, categorical_covariates = covs$categorical,
                       continuous_covariates = covs$continuous, size_factor = covs$size_factor,
                       var_activation = "softplus", encode_covariates = TRUE)
  back <- roundtrip(cov_fit, covariates = covs)
  expect_identical(back$categorical_covariates, cov_fit$categorical_covariates)
  expect_identical(back$config$var_activation, "softplus")
  expect_true(back$uses_size_factor)
  emb <- quick_fit(max_epochs = 2L, batch = batch, batch_representation = "embedding", batch_embedding_dim = 3L)
  back <- roundtrip(emb)
  expect_identical(back$config$batch_embedding_dim, 3L)
  labels <- as.character(pbmc_small_seurat()$RNA_snn_res.1)
  labels[seq(2, 80, by = 4)] <- "Unknown"
  prior <- c("0" = 0.5, "1" = 0.3, "2" = 0.2)
  sc <- scanvi(counts, labels = labels, batch = batch, max_epochs = 2, seed = 1, n_threads = 1,
               verbose = FALSE, y_prior = prior, n_latent = 4)
  back <- roundtrip(sc)
  expect_equal(back$config$scanvi$y_prior, unname(prior), tolerance = 1e-6)
  expect_identical(predict(back, newdata = counts, batch = batch), predict(sc))
  # Label groups are classified differently here than in scvi-tools: refused, saying why.
  grouped <- scanvi(counts, labels = labels, batch = batch, max_epochs = 1, seed = 1, n_threads = 1,
                    verbose = FALSE, use_labels_groups = TRUE, n_latent = 4,
                    labels_groups = c("0" = "a", "1" = "a", "2" = "b"))
  expect_error(save_model(grouped, tempfile(), format = "scvi-tools"), "label-group classifier differs",
               class = "scvir_input_error")
})
