# R's conventions: nothing masked on attach, no methods for other packages' generics on other
# packages' classes, summary objects, graphical parameters, Seurat idioms. On pbmc_small with
# tiny trainings.

.conv_cache <- new.env()

# One Seurat object with an scVI model (3 epochs), shared by the tests below.
conv_seurat <- function() {
  if (is.null(.conv_cache$seu)) {
    .conv_cache$seu <- scvi(pbmc_small_seurat(), max_epochs = 3, seed = 1, n_threads = 1,
                            verbose = FALSE)
  }
  .conv_cache$seu
}

test_that("attaching scviR masks nothing", {
  exported <- getNamespaceExports("scviR")
  expect_false("history" %in% exported)
  base_names <- ls(baseenv(), all.names = TRUE)
  for (pkg in c("stats", "graphics", "grDevices", "utils", "datasets", "methods")) {
    base_names <- c(base_names, getNamespaceExports(pkg))
  }
  expect_identical(intersect(exported, base_names), character(0))
  # S3 methods only for scviR's generics or scviR's classes.
  s3 <- getNamespaceInfo(asNamespace("scviR"), "S3methods")
  own_classes <- c("scvi_model", "scanvi_model", "summary.scvi_model", "scvir_libtorch_info",
                   "scvir_setup_args", "scvir_h5ad")
  foreign <- s3[!(s3[, 1] %in% exported | s3[, 2] %in% own_classes), , drop = FALSE]
  expect_equal(nrow(foreign), 0L, info = paste(foreign[, 3], collapse = ", "))
  expect_true("predict_labels" %in% exported)
  skip_on_cran()
  rscript <- file.path(R.home("bin"), "Rscript")
  out <- suppressWarnings(system2(rscript, c("-e", shQuote("library(scviR)")),
                                  stdout = TRUE, stderr = TRUE))
  expect_null(attr(out, "status"))
  expect_false(any(grepl("masked", out)), info = paste(out, collapse = "\n"))
})

test_that("training_history() works on models and the objects holding them", {
  fit <- quick_fit(max_epochs = 3L)
  h <- training_history(fit)
  expect_s3_class(h, "data.frame")
  expect_equal(h$epoch, 1:3)
  expect_true(all(c("elbo_train", "elbo_validation") %in% names(h)))
  seu <- conv_seurat()
  expect_identical(training_history(seu), seu@misc$scvi$history)
  sce <- scvi(pbmc_small_sce(), max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE)
  expect_equal(nrow(training_history(sce)), 2L)
  expect_error(training_history(pbmc_small_seurat()), "no scVI model")
})

test_that("summary() returns a summary.scvi_model that prints only when printed", {
  fit <- quick_fit(batch = pbmc_small_seurat()$groups, max_epochs = 3L)
  expect_silent(s <- summary(fit))
  expect_s3_class(s, "summary.scvi_model")
  expect_identical(s$model_type, "SCVI")
  expect_equal(c(s$n_genes, s$n_cells, s$n_batches, s$n_labels), c(230, 80, 2, 0))
  expect_equal(s$epochs_trained, 3L)
  expect_equal(s$max_epochs, 3L)
  expect_equal(s$architecture$n_latent, 10L)
  expect_equal(s$training$batch_size, 128L)
  expect_equal(s$elbo_train, tail(training_history(fit)$elbo_train, 1))
  expect_equal(s$elbo_validation, tail(training_history(fit)$elbo_validation, 1))
  expect_false(s$stopped_early)
  expect_true(is.numeric(s$train_seconds) && s$train_seconds >= 0)
  out <- capture.output(res <- print(s))
  expect_identical(res, s)
  expect_match(out[1], "SCVI model")
  expect_true(any(grepl("230 genes x 80 cells", out)))
  expect_true(any(grepl("3 trained of 3", out)))
  expect_true(any(grepl("elbo_train", out)))
})

test_that("plot() takes graphical parameters; autoplot() returns a ggplot", {
  fit <- quick_fit(max_epochs = 4L)
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off(), add = TRUE)
  expect_invisible(plot(fit))
  expect_silent(plot(fit, main = "x", lwd = 3))
  expect_silent(plot(fit, main = "x", col = c("black", "red"), lwd = 1, type = "b", pch = 19,
                     xlab = "epochs", ylab = "loss", ylim = c(0, 1e4), las = 1))
  expect_silent(plot(fit, metrics = "elbo_train", legend = FALSE))
  expect_silent(plot(fit, log = "y"))
  expect_silent(plot(fit, metrics = c("reconstruction_loss_train", "kl_local_train", "kl_weight")))
  expect_error(plot(fit, metrics = "accuracy"), "not in the training history")
  expect_error(plot(fit, "red"), NA)  # y is ignored
  skip_if_not_installed("ggplot2")
  p <- ggplot2::autoplot(fit)
  expect_s3_class(p, "ggplot")
  expect_setequal(as.character(unique(p$data$metric)), c("elbo_train", "elbo_validation"))
  expect_equal(nrow(p$data), 8L)
  expect_s3_class(ggplot2::autoplot(fit, metrics = "kl_weight"), "ggplot")
})

test_that("store_expression defaults to FALSE", {
  seu <- conv_seurat()
  expect_false(any(c("scvi_denoised", "scvi_sample_rate") %in% names(seu@assays)))
  sce <- scvi(pbmc_small_sce(), max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE)
  expect_false(any(c("scvi_denoised", "scvi_sample_rate") %in% SummarizedExperiment::assayNames(sce)))
  expect_identical(formals(scviR:::scvi.Seurat)$store_expression, FALSE)
  expect_identical(formals(scviR:::scvi.SingleCellExperiment)$store_expression, FALSE)
})

test_that("predict_labels() works on Seurat objects and scANVI models", {
  skip_on_cran()
  seu <- conv_seurat()
  seu$partial <- ifelse(seq_len(80) %% 2 == 0, "Unknown", as.character(seu$RNA_snn_res.1))
  seu <- scanvi(seu, labels_key = "partial", scvi_fit = seu, max_epochs = 2, seed = 1,
                n_threads = 1, verbose = FALSE)
  pred <- predict_labels(seu)
  expect_s3_class(pred, "factor")
  expect_equal(length(pred), 80L)
  expect_equal(as.character(pred), as.character(seu$scanvi_predictions))
  soft <- predict_labels(seu, soft = TRUE)
  expect_equal(dim(soft), c(80L, nlevels(pred)))
  expect_equal(unname(rowSums(soft)), rep(1, 80), tolerance = 1e-5)
  # A model stored in an object keeps no counts: give them as newdata.
  counts <- pbmc_small_counts()[seu@misc$scanvi$genes, ]
  expect_equal(predict_labels(seu@misc$scanvi, newdata = counts, soft = TRUE),
               predict(seu@misc$scanvi, newdata = counts, soft = TRUE))
  expect_error(predict_labels(seu, newdata = pbmc_small_counts()), "cells of an object")
  expect_error(predict_labels(seu@misc$scvi), "needs a scANVI model")
  expect_error(predict_labels(1:3), "expected a scanvi_model")
  # The scANVI run is logged too.
  expect_true("scanvi.RNA" %in% names(seu@commands))
  expect_identical(seu@commands[["scanvi.RNA"]]@params$labels_key, "partial")
})

test_that("differential_expression() on a Seurat object defaults to its identity classes", {
  seu <- conv_seurat()
  idents <- SeuratObject::Idents(seu)
  de <- differential_expression(seu, seed = 1, silent = TRUE, n_samples_overall = 100)
  expect_identical(unique(de$group1), levels(idents))
  expect_true(all(de$group2 == "Rest"))
  expect_equal(nrow(de), 230L * nlevels(idents))
  same <- differential_expression(seu, groupby = idents, seed = 1, silent = TRUE,
                                  n_samples_overall = 100)
  expect_identical(de, same)
  one <- differential_expression(seu, group1 = levels(idents)[1], seed = 1, silent = TRUE,
                                 n_samples_overall = 100)
  expect_equal(unique(one$comparison), paste(levels(idents)[1], "vs Rest"))
  # Other inputs still need a grouping.
  expect_error(differential_expression(seu@misc$scvi, silent = TRUE,
                                       newdata = pbmc_small_counts()), "give groupby")
})

test_that("Seurat-style reduction.name / reduction.key and the command log", {
  seu <- scvi(pbmc_small_seurat(), reduction.name = "scVI", reduction.key = "scVI_",
              max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE)
  expect_true("scVI" %in% SeuratObject::Reductions(seu))
  expect_identical(SeuratObject::Key(seu[["scVI"]]), "scVI_")
  expect_false("scvi" %in% SeuratObject::Reductions(seu))
  expect_error(scvi(pbmc_small_seurat(), reduction_name = "a", reduction.name = "b", max_epochs = 1,
                    verbose = FALSE), "reduction_name and reduction.name")
  cmd <- seu@commands[["scvi.RNA"]]
  expect_true(methods::is(cmd, "SeuratCommand"))
  expect_identical(cmd@name, "scvi.RNA")
  expect_identical(cmd@assay.used, "RNA")
  expect_s3_class(cmd@time.stamp, "POSIXct")
  expect_match(paste(cmd@call.string, collapse = ""), "^scvi\\(")
  expect_equal(cmd@params$max_epochs, 2)
  expect_identical(cmd@params$reduction_name, "scVI")
  expect_identical(cmd@params$assay, "RNA")
  expect_false("object" %in% names(cmd@params))
})
