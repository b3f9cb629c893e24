# setup_args() / load_registry(): what a model was set up with, from the model, the objects
# holding it, and saved directories (with and without fit.rds). On pbmc_small, tiny trainings.

# The fields that the model file alone records.
registry_fields <- c("model_type", "genes", "batches", "labels", "categorical_covariates",
                     "continuous_covariates", "n_cells_fitted", "engine_version")

test_that("setup_args() of a model fitted on a matrix reports the model's registry", {
  seu <- pbmc_small_seurat()
  fit <- quick_fit(batch = seu$groups,
                   categorical_covariates = list(cluster = seu$RNA_snn_res.1),
                   continuous_covariates = list(depth = log(seu$nCount_RNA)),
                   max_epochs = 3L)
  a <- setup_args(fit)
  expect_s3_class(a, "scvir_setup_args")
  expect_identical(a$model_type, "SCVI")
  expect_identical(a$genes, fit$genes)
  expect_identical(a$genes, rownames(pbmc_small_counts()))
  expect_identical(a$batches, c("g1", "g2"))
  expect_null(a$batch_key)  # given as a vector
  expect_identical(a$categorical_covariates, list(cluster = levels(seu$RNA_snn_res.1)))
  expect_identical(a$continuous_covariates, "depth")
  expect_identical(a$labels, character())
  expect_null(a$labels_key)
  expect_null(a$unlabeled_category)
  expect_null(a$size_factor_key)
  expect_null(a$source)
  expect_identical(a$n_cells_fitted, 80L)
  expect_identical(a$engine_version, fit$engine_version)
  out <- capture.output(res <- print(a))
  expect_identical(res, a)
  expect_true(any(grepl("230 \\(MS4A1", out)))
  expect_true(any(grepl("2 categories \\(g1, g2\\)", out)))
  expect_true(any(grepl("categorical covariate \"cluster\": 3 categories", out)))
  expect_true(any(grepl("continuous covariates: depth", out)))
  expect_true(any(grepl("a count matrix", out)))

  # The saved directory gives the same registry, with or without fit.rds.
  dir <- tempfile("scvir-setup-")
  save_model(fit, dir)
  b <- load_registry(dir)
  expect_s3_class(b, "scvir_setup_args")
  expect_identical(unclass(b)[registry_fields], unclass(a)[registry_fields])
  expect_identical(setup_args(dir), b)
  unlink(file.path(dir, "fit.rds"))
  expect_false(file.exists(file.path(dir, "fit.rds")))
  bare <- load_registry(dir)
  expect_identical(unclass(bare)[registry_fields], unclass(a)[registry_fields])
  expect_true(any(grepl("set up from: unknown", capture.output(print(bare)))))
  unlink(dir, recursive = TRUE)
})

test_that("setup_args() of Seurat and SingleCellExperiment objects records their keys", {
  seu <- scvi(pbmc_small_seurat(), batch_key = "groups", continuous_covariate_keys = "nCount_RNA",
              use_highly_variable_genes = FALSE, max_epochs = 3, seed = 1, n_threads = 1,
              verbose = FALSE)
  a <- setup_args(seu)
  expect_identical(a$genes, seu@misc$scvi$genes)
  expect_identical(a$batch_key, "groups")
  expect_identical(a$batches, c("g1", "g2"))
  expect_identical(a$continuous_covariates, "nCount_RNA")
  expect_identical(a$source$type, "Seurat")
  expect_identical(a$source$assay, "RNA")
  expect_identical(a$source$layer, "counts")
  expect_true(any(grepl("Seurat object, assay \"RNA\", layer \"counts\"", capture.output(print(a)))))
  expect_error(setup_args(seu, which = "scanvi"), "no scANVI model", class = "scvir_input_error")
  expect_error(setup_args(seu, whihc = "scvi"), "did you mean `which`", class = "scvir_config_error")

  # Saved: the batch key and source come back from fit.rds.
  dir <- tempfile("scvir-setup-")
  save_model(seu, dir)
  b <- load_registry(dir)
  expect_identical(unclass(b)[registry_fields], unclass(a)[registry_fields])
  expect_identical(b$batch_key, "groups")
  expect_identical(b$source, a$source)
  unlink(dir, recursive = TRUE)

  skip_if_not_installed("SingleCellExperiment")
  sce <- scvi(pbmc_small_sce(), use_highly_variable_genes = FALSE, max_epochs = 2, seed = 1,
              n_threads = 1, verbose = FALSE)
  s <- setup_args(sce)
  expect_identical(s$genes, S4Vectors::metadata(sce)$scvi$genes)
  expect_identical(s$source$type, "SingleCellExperiment")
  expect_identical(s$source$assay, "counts")
  expect_identical(s$batches, "0")
  expect_null(s$batch_key)
})

test_that("setup_args() of a scANVI model reports its labels and unlabelled category", {
  labels <- as.character(pbmc_small_seurat()$RNA_snn_res.1)
  labels[seq(1, 80, by = 3)] <- NA
  fit <- scanvi(pbmc_small_counts(), labels = labels, max_epochs = 2, seed = 1, n_threads = 1,
                verbose = FALSE)
  a <- setup_args(fit)
  expect_identical(a$model_type, "SCANVI")
  expect_identical(a$labels, fit$labels)
  expect_identical(a$labels, c("0", "1", "2", "Unknown"))
  expect_identical(a$unlabeled_category, "Unknown")
  dir <- tempfile("scvir-setup-")
  save_model(fit, dir)
  unlink(file.path(dir, "fit.rds"))
  # Without fit.rds the unlabelled category is the label after the known ones.
  b <- load_registry(dir)
  expect_identical(b$labels, a$labels)
  expect_identical(b$unlabeled_category, "Unknown")
  unlink(dir, recursive = TRUE)
})

test_that("load_registry() names the path it cannot read", {
  missing_dir <- file.path(tempdir(), "scvir-no-such-model")
  unlink(missing_dir, recursive = TRUE)
  err <- expect_error(load_registry(missing_dir), class = "scvir_input_error")
  expect_true(grepl(missing_dir, conditionMessage(err), fixed = TRUE))
  expect_match(conditionMessage(err), "save_model()", fixed = TRUE)
  empty <- tempfile("scvir-empty-")
  dir.create(empty)
  err <- expect_error(setup_args(empty), class = "scvir_input_error")
  expect_true(grepl(file.path(empty, "model.scvir"), conditionMessage(err), fixed = TRUE))
  unlink(empty, recursive = TRUE)
  expect_error(load_registry(NA_character_), "dir must be a single path", class = "scvir_config_error")
  expect_error(setup_args(1:3), "needs an scvi_model", class = "scvir_input_error")
})
