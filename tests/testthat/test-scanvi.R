# scANVI on real counts. PBMC 3k with half of the labels hidden (seeded) checks the annotation
# accuracy; pbmc_small checks the interface and errors.

test_that("scANVI from a trained scVI model recovers hidden PBMC 3k labels", {
  sce <- pbmc3k_fit()
  truth <- as.character(sce$cell_type)
  set.seed(42)
  hidden <- sample(ncol(sce), round(ncol(sce) / 2))
  masked <- truth
  masked[hidden] <- "Unknown"
  sce$masked <- masked
  out <- scanvi(sce, labels_key = "masked", unlabeled_category = "Unknown", scvi_fit = sce,
                seed = 0, n_threads = 2, verbose = FALSE)
  fit <- S4Vectors::metadata(out)$scanvi
  expect_s3_class(fit, "scanvi_model")
  expect_equal(fit$model_type, "SCANVI")
  # from_scvi_model's epoch rule: min(10, max(2, round(400 / 3))) = 10 for PBMC 3k.
  h <- training_history(fit)
  expect_equal(nrow(h), 10L)
  expect_true(all(c("classification_loss_train", "accuracy_train", "classification_loss_validation",
                    "accuracy_validation") %in% names(h)))
  expect_true(all(h$accuracy_validation > 0.8 & h$accuracy_validation <= 1))
  expect_lt(h$classification_loss_train[10], h$classification_loss_train[1])
  expect_false("accuracy_train" %in% names(training_history(S4Vectors::metadata(out)$scvi)))
  expect_equal(dim(SingleCellExperiment::reducedDim(out, "scANVI")), c(2638L, 10L))
  pred <- out$scanvi_predictions
  expect_s3_class(pred, "factor")
  expect_equal(levels(pred), sort(unique(truth)))
  accuracy <- mean(as.character(pred[hidden]) == truth[hidden])
  message(sprintf("scANVI held-out accuracy on PBMC 3k: %.3f", accuracy))
  expect_gte(accuracy, 0.93)
  soft <- predict_labels(out, soft = TRUE)
  expect_equal(dim(soft), c(2638L, 8L))
  expect_equal(unname(rowSums(soft)), rep(1, 2638), tolerance = 1e-5)
  expect_equal(as.character(predict_labels(out)), as.character(pred))
  # DE works on the scANVI model too.
  de <- differential_expression(out, model = "scanvi", groupby = "cell_type", group1 = "B",
                                mode = "change", seed = 1, silent = TRUE, n_samples_overall = 500)
  expect_true("MS4A1" %in% head(de$gene, 30))
  de2 <- differential_expression(fit, groupby = out$cell_type, group1 = "B", seed = 1,
                                 silent = TRUE, n_samples_overall = 200,
                                 newdata = SummarizedExperiment::assay(out, "counts"))
  expect_equal(nrow(de2), 2000L)
})

test_that("scANVI from scratch on a matrix, with label groups and a prior", {
  counts <- pbmc_small_counts()
  seu <- pbmc_small_seurat()
  labels <- as.character(seu$RNA_snn_res.1)
  labels[seq(1, 80, by = 3)] <- NA
  fit <- scanvi(counts, labels = labels, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE,
                n_latent = 4)
  expect_s3_class(fit, "scanvi_model")
  expect_equal(fit$config$n_latent, 4L)
  expect_equal(nrow(training_history(fit)), 5L)
  expect_equal(fit$known_labels, c("0", "1", "2"))
  # A posterior sample instead of the mean gives other, still normalised, probabilities.
  sampled <- predict(fit, soft = TRUE, use_posterior_mean = FALSE, seed = 3)
  expect_false(isTRUE(all.equal(sampled, predict(fit, soft = TRUE))))
  expect_equal(unname(rowSums(sampled)), rep(1, 80), tolerance = 1e-5)
  # Subsampling the labelled cells per label changes training.
  sub <- scanvi(counts, labels = labels, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE,
                n_latent = 4, n_samples_per_label = 3)
  expect_equal(sub$config$scanvi$n_samples_per_label, 3L)
  expect_false(isTRUE(all.equal(training_history(sub)$elbo_train, training_history(fit)$elbo_train)))
  p <- predict(fit, soft = TRUE)
  expect_equal(dim(p), c(80L, 3L))
  expect_equal(colnames(p), c("0", "1", "2"))
  grouped <- scanvi(counts, labels = labels, max_epochs = 3, seed = 1, n_threads = 1,
                    verbose = FALSE, use_labels_groups = TRUE,
                    labels_groups = c("0" = "a", "1" = "a", "2" = "b"),
                    y_prior = c("0" = 0.5, "1" = 0.3, "2" = 0.2), linear_classifier = TRUE)
  tensors <- names(scviR:::.model_tensors(grouped))
  expect_true(any(grepl("scanvi.classifier_groups", tensors)))
  expect_false(any(grepl("scanvi.classifier.fc", tensors)))
  expect_equal(unname(rowSums(predict(grouped, soft = TRUE))), rep(1, 80), tolerance = 1e-5)
  # A different prior changes the model (same seed).
  other <- scanvi(counts, labels = labels, max_epochs = 3, seed = 1, n_threads = 1,
                  verbose = FALSE, use_labels_groups = TRUE,
                  labels_groups = c("0" = "a", "1" = "a", "2" = "b"),
                  y_prior = c("0" = 0.1, "1" = 0.1, "2" = 0.8), linear_classifier = TRUE)
  expect_false(isTRUE(all.equal(predict(other, soft = TRUE), predict(grouped, soft = TRUE))))
})

test_that("scANVI on Seurat writes a DimReduc and predictions", {
  seu <- scvi(pbmc_small_seurat(), max_epochs = 10, seed = 1, n_threads = 1, verbose = FALSE,
              use_highly_variable_genes = FALSE, store_expression = FALSE)
  seu$partial <- ifelse(seq_len(80) %% 2 == 0, "Unknown", as.character(seu$RNA_snn_res.1))
  seu <- scanvi(seu, labels_key = "partial", scvi_fit = seu, max_epochs = 3, seed = 1,
                n_threads = 1, verbose = FALSE)
  expect_true("scanvi" %in% names(seu@reductions))
  expect_equal(dim(SeuratObject::Embeddings(seu, "scanvi")), c(80L, 10L))
  expect_equal(colnames(SeuratObject::Embeddings(seu, "scanvi"))[1], "scanvi_1")
  expect_s3_class(seu$scanvi_predictions, "factor")
  expect_equal(length(predict_labels(seu)), 80L)
  expect_true(seu@misc$scanvi$pretrained)
})

test_that("bad scANVI inputs give clear errors", {
  counts <- pbmc_small_counts()
  labels <- as.character(pbmc_small_seurat()$RNA_snn_res.1)
  fit <- quick_fit(max_epochs = 2)
  sc <- function(...) scanvi(counts, max_epochs = 1, verbose = FALSE, n_threads = 1, ...)
  expect_error(sc(labels = rep("Unknown", 80)), "at least 2 known labels")
  expect_error(sc(labels = labels[1:10]), "length 10")
  expect_error(sc(labels = labels, use_labels_groups = TRUE), "needs labels_groups")
  expect_error(sc(labels = labels, use_labels_groups = TRUE, labels_groups = c("0" = "a", "1" = "a")),
               "must name each known label")
  expect_error(sc(labels = labels, labels_groups = c("0" = "a", "1" = "a", "2" = "b")),
               "needs use_labels_groups")
  expect_error(sc(labels = labels, y_prior = c(1, 2)), "y_prior needs 3")
  # Labels absent from training are named in the error.
  expect_error(sc(labels = labels, y_prior = c("0" = 1, "1" = 1, "7" = 1)),
               "label \"7\", which no cell has in training", class = "scvir_config_error")
  expect_error(sc(labels = labels, use_labels_groups = TRUE,
                  labels_groups = c("0" = "a", "1" = "a", "B cell" = "b")),
               "label \"B cell\", which no cell has in training")
  expect_error(sc(labels = labels, scvi_fit = fit, n_latent = 3), "architecture comes from scvi_fit")
  expect_error(sc(labels = labels, scvi_fit = ldvae(counts, max_epochs = 1, verbose = FALSE)),
               "must be an SCVI model")
  expect_error(sc(labels = labels, dispersion = "gene-label"), "gene-label")
  expect_error(predict(fit), "scvi_model")
  # A saved scANVI model keeps its labels.
  dir <- tempfile()
  save_model(sfit <- sc(labels = labels), dir)
  back <- load_model(dir)
  expect_s3_class(back, "scanvi_model")
  expect_equal(back$known_labels, c("0", "1", "2"))
  expect_equal(predict(back, soft = TRUE), predict(sfit, soft = TRUE))
  expect_error(predict(sfit, newdata = counts[1:100, ]), "lacks")
  expect_error(predict_labels(pbmc_small_seurat()), "no scANVI model")
  expect_error(predict_labels(fit), "needs a scANVI model")
})
