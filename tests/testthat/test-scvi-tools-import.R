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
  # what scvi-tools' format cannot hold is refused, naming it
  q <- load_query_data(pbmc_small_counts(), fit, batch = rep("c", 80), seed = 1, n_threads = 1)
  expect_error(save_model(q, tempfile(), format = "scvi-tools"), "query model", class = "scvir_input_error")
  emb <- quick_fit(max_epochs = 1L, batch = rep(c("a", "b"), 40), batch_representation = "embedding")
  expect_error(save_model(emb, tempfile(), format = "scvi-tools"), "batch embedding",
               class = "scvir_input_error")
})
