# scArches reference mapping: load_query_data(), train_model(), map_query().

# Weights of a model file by name, as R matrices (rows: output units) or vectors.
tensors <- function(fit) {
  lapply(scviR:::.rs_model_tensors(fit$model), function(v) {
    shape <- attr(v, "shape")
    attr(v, "shape") <- NULL
    if (length(shape) == 2) matrix(v, nrow = shape[1], ncol = shape[2], byrow = TRUE) else v
  })
}

# A reference on 60 pbmc_small cells in batches a / b with a latent library, gene-batch
# dispersion, two layers and BatchNorm, and its 20 other cells as a query in a new batch "c".
small_arches <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      counts <- pbmc_small_counts()
      ref <- scvi_model(counts[, 1:60], batch = rep(c("a", "b"), 30), use_observed_lib_size = FALSE,
                        dispersion = "gene-batch", n_layers = 2L, max_epochs = 10L, seed = 1L,
                        n_threads = 1L, verbose = FALSE)
      cache <<- list(counts = counts, ref = ref, query = counts[, 61:80])
    }
    cache
  }
})

# Query model trained for a few epochs with weight decay (frozen weights must not decay).
small_query <- function(...) {
  s <- small_arches()
  q <- load_query_data(s$query, s$ref, batch = rep("c", 20), seed = 2, n_threads = 1, ...)
  train_model(q, max_epochs = 4L, weight_decay = 1e-3, seed = 3, n_threads = 1, verbose = FALSE)
}

# Tensors whose values differ between the reference and the query model (on the reference's
# columns for resized ones), and the resized ones' new columns.
compare_weights <- function(ref, q) {
  a <- tensors(ref)
  b <- tensors(q)
  old_changed <- character()
  for (n in names(a)) {
    x <- a[[n]]
    y <- b[[n]]
    if (is.matrix(x) && !identical(dim(x), dim(y))) {
      if (nrow(x) == nrow(y)) y <- y[, seq_len(ncol(x)), drop = FALSE] else y <- y[seq_len(nrow(x)), , drop = FALSE]
    }
    if (!identical(x, y)) old_changed <- c(old_changed, n)
  }
  old_changed
}

test_that("a query model extends the reference by the new batch and starts untrained", {
  s <- small_arches()
  q <- load_query_data(s$query, s$ref, batch = rep("c", 20), seed = 2, n_threads = 1)
  expect_s3_class(q, "scvi_model")
  expect_false(q$is_trained)
  expect_equal(q$batches, c("a", "b", "c"))
  expect_identical(q$genes, s$ref$genes)
  expect_output(print(q), "not trained yet")
  # Before training, every reference weight is in the query model unchanged.
  expect_length(compare_weights(s$ref, q), 0)
  w <- tensors(q)
  expect_equal(dim(w[["px_r"]]), c(230L, 3L))
  expect_equal(dim(w[["decoder.px_decoder.layer_0.linear.weight"]]), c(128L, 13L))
})

test_that("default freezing trains only the new columns, the library encoder and decoder BatchNorm", {
  s <- small_arches()
  q <- small_query()
  expect_true(q$is_trained)
  changed <- compare_weights(s$ref, q)
  # frozen: the encoder (Linear, BatchNorm and its statistics), the z heads, the decoder's
  # Linear layers on the reference's columns, the scale head; bit-identical despite weight decay
  frozen <- c("z_encoder.encoder.layer_0.linear.weight", "z_encoder.encoder.layer_0.linear.bias",
              "z_encoder.encoder.layer_0.batch_norm.weight", "z_encoder.encoder.layer_0.batch_norm.running_mean",
              "z_encoder.mean_encoder.weight", "z_encoder.var_encoder.weight",
              "decoder.px_decoder.layer_0.linear.weight", "decoder.px_decoder.layer_1.linear.weight",
              "decoder.px_decoder.layer_0.linear.bias", "decoder.px_scale_decoder.weight", "px_r")
  expect_length(intersect(changed, frozen), 0)
  # free: the decoder's BatchNorm (freeze_batchnorm_decoder = FALSE) and the library encoder
  expect_true(all(c("decoder.px_decoder.layer_0.batch_norm.weight",
                    "decoder.px_decoder.layer_0.batch_norm.running_mean",
                    "l_encoder.encoder.layer_0.linear.weight", "l_encoder.mean_encoder.weight") %in% changed))
  # the new batch's columns moved from their initialisation
  before <- tensors(load_query_data(s$query, s$ref, batch = rep("c", 20), seed = 2, n_threads = 1))
  after <- tensors(q)
  for (n in c("decoder.px_decoder.layer_0.linear.weight", "decoder.px_decoder.layer_1.linear.weight")) {
    k <- ncol(after[[n]])
    expect_false(identical(before[[n]][, k], after[[n]][, k]), info = n)
  }
  expect_false(identical(before$px_r[, 3], after$px_r[, 3]))
})

test_that("every freeze option frees what it names", {
  s <- small_arches()
  default <- compare_weights(s$ref, small_query())
  expect_true("z_encoder.encoder.layer_0.linear.weight" %in%
                compare_weights(s$ref, small_query(freeze_expression = FALSE)))
  expect_true("decoder.px_decoder.layer_0.linear.weight" %in%
                compare_weights(s$ref, small_query(freeze_decoder_first_layer = FALSE)))
  enc_bn <- compare_weights(s$ref, small_query(freeze_batchnorm_encoder = FALSE))
  expect_true(all(c("z_encoder.encoder.layer_0.batch_norm.weight",
                    "z_encoder.encoder.layer_0.batch_norm.running_mean") %in% enc_bn))
  dec_bn <- compare_weights(s$ref, small_query(freeze_batchnorm_decoder = TRUE))
  expect_false(any(c("decoder.px_decoder.layer_0.batch_norm.weight",
                     "decoder.px_decoder.layer_0.batch_norm.running_mean") %in% dec_bn))
  all_free <- compare_weights(s$ref, small_query(unfrozen = TRUE))
  expect_true(all(c("z_encoder.mean_encoder.weight", "decoder.px_scale_decoder.weight", "px_r") %in% all_free))
  # freeze_dropout: recorded, and the training differs (no dropout masks drawn in the encoder)
  nd <- small_query(freeze_dropout = TRUE)
  expect_true(isTRUE(nd$config$query$freeze_dropout))
  expect_false(identical(tensors(nd)[["l_encoder.mean_encoder.weight"]],
                         tensors(small_query())[["l_encoder.mean_encoder.weight"]]))
  expect_error(load_query_data(s$query, s$ref, batch = rep("c", 20), freeze_expression = NA),
               class = "scvir_config_error")
})

test_that("the query model embeds reference cells as the reference did, also after save and load", {
  s <- small_arches()
  q <- small_query()
  ref_cells <- s$counts[, 1:60]
  ref_batch <- rep(c("a", "b"), 30)
  z_ref <- get_latent_representation(s$ref)
  z_q <- get_latent_representation(q, newdata = ref_cells, batch = ref_batch)
  expect_equal(unname(z_q), unname(z_ref), tolerance = 1e-5)
  dir <- tempfile("query_")
  on.exit(unlink(dir, recursive = TRUE))
  save_model(q, dir)
  q2 <- load_model(dir)
  expect_identical(q2$config$query$new_entries, q$config$query$new_entries)
  # Trained again after loading, the frozen weights still do not move.
  q3 <- train_model(q2, max_epochs = 2L, weight_decay = 1e-3, seed = 4, n_threads = 1, verbose = FALSE)
  expect_false("z_encoder.mean_encoder.weight" %in% compare_weights(s$ref, q3))
})

test_that("train_model() trains a model further and refuses bad input", {
  fit <- quick_fit(max_epochs = 3L)
  more <- train_model(fit, max_epochs = 2L, seed = 2, n_threads = 1, verbose = FALSE)
  expect_equal(nrow(training_history(more)), 2)
  expect_false(identical(get_latent_representation(fit), get_latent_representation(more)))
  expect_error(train_model(fit, max_epoch = 2L), class = "scvir_config_error")
  expect_error(train_model(fit, lr = -1), class = "scvir_config_error")
  expect_error(train_model(list()), class = "scvir_input_error")
})

test_that("query input errors are classed and name the problem", {
  s <- small_arches()
  expect_error(load_query_data(s$query, s$ref), "batch", class = "scvir_config_error")
  expect_error(load_query_data(s$query[1:100, ], s$ref, batch = rep("c", 20)), "prepare_query",
               class = "scvir_input_error")
  expect_error(load_query_data(s$query, "/nonexistent/model", batch = rep("c", 20)),
               class = "scvir_input_error")
  no_batch <- quick_fit(max_epochs = 2L)
  expect_error(load_query_data(s$query, no_batch, batch = rep("c", 20)), "without a batch",
               class = "scvir_input_error")
})

test_that("map_query() maps a Seurat query with missing genes onto a Seurat reference", {
  skip_if_not_installed("SeuratObject")
  seu <- pbmc_small_seurat()
  seu$batch <- ifelse(seu$groups == "g1", "ref", "query")
  ref <- suppressWarnings(subset(seu, batch == "ref"))
  query <- suppressWarnings(subset(seu, batch == "query"))
  ref <- scvi(ref, batch_key = "batch", use_highly_variable_genes = FALSE, max_epochs = 5,
              seed = 1, n_threads = 1, verbose = FALSE)
  # the query lacks 10 of the 230 genes: zero-filled, with a message
  keep <- rownames(query)[-(1:10)]
  query <- suppressWarnings(subset(query, features = keep))
  before <- query
  expect_message(mapped <- map_query(query, ref, max_epochs = 3, seed = 1, n_threads = 1,
                                     verbose = FALSE), "filled with zero")
  expect_true("scvi" %in% SeuratObject::Reductions(mapped))
  z <- SeuratObject::Embeddings(mapped, "scvi")
  expect_equal(dim(z), c(ncol(query), 10L))
  expect_identical(mapped@misc$scvi$batches, c("ref", "query"))
  # queries on the object use the stored query model, the missing genes as zeros
  expect_equal(unname(get_latent_representation(mapped)), unname(z), tolerance = 1e-6)
  expect_identical(mapped@assays, before@assays)
})

pbmc3k_arches <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      sce <- read_h5ad(pbmc3k_path())
      is_query <- seq_len(ncol(sce)) %% 3 == 0
      ref <- sce[, !is_query]
      query <- sce[, is_query]
      # Synthetic batch effect on the real query counts: a log-normal factor per gene (sd 0.5)
      # and Poisson resampling.
      set.seed(7)
      m <- as.matrix(SingleCellExperiment::counts(query))
      m <- m * exp(stats::rnorm(nrow(m), 0, 0.5))
      m <- matrix(stats::rpois(length(m), m), nrow(m), dimnames = dimnames(query))
      SingleCellExperiment::counts(query) <- methods::as(m, "CsparseMatrix")
      ref$batch <- "reference"
      query$batch <- "query"
      ref <- scvi(ref, batch_key = "batch", max_epochs = 30, seed = 1, n_threads = 2, verbose = FALSE,
                  use_layer_norm = "both", use_batch_norm = "none", encode_covariates = TRUE,
                  dropout_rate = 0.2, n_layers = 2)
      ref <- suppressMessages(scanvi(ref, labels_key = "cell_type", scvi_fit = ref, max_epochs = 10,
                                     seed = 1, n_threads = 2, verbose = FALSE))
      cache <<- list(ref = ref, query = query)
    }
    cache
  }
})

test_that("a scANVI reference transfers labels to a batch-shifted PBMC 3k query", {
  skip_on_cran()
  skip_if_not_installed("SingleCellExperiment")
  a <- pbmc3k_arches()
  mapped <- map_query(a$query, a$ref, max_epochs = 30, seed = 1, n_threads = 2, verbose = FALSE)
  acc <- mean(mapped$scanvi_predictions == as.character(mapped$cell_type))
  expect_gte(acc, 0.9)
  expect_true(all(mapped$scanvi_predictions_probability > 0 & mapped$scanvi_predictions_probability <= 1))
  p <- S4Vectors::metadata(mapped)$scanvi_probabilities
  expect_equal(unname(rowSums(p)), rep(1, ncol(mapped)), tolerance = 1e-5)
  fit <- S4Vectors::metadata(mapped)$scanvi
  expect_s3_class(fit, "scanvi_model")
  # one latent space: reference cells through the query model land where the reference put them
  ref_fit <- S4Vectors::metadata(a$ref)$scanvi
  z_ref <- SingleCellExperiment::reducedDim(a$ref, "scANVI")
  z_q <- get_latent_representation(fit, newdata = SingleCellExperiment::counts(a$ref), batch = a$ref$batch)
  expect_equal(unname(z_q), unname(z_ref), tolerance = 1e-5)
  # frozen: every reference weight on the reference's columns, the classifier included
  expect_length(compare_weights(ref_fit, fit), 0)
  # the new batch's input column of the encoder's first layer was trained
  w <- tensors(fit)[["z_encoder.encoder.layer_0.linear.weight"]]
  expect_gt(max(abs(w[, ncol(w)])), 0)
  expect_true(all(w[, ncol(w) - 1] == 0)) # the reference's single batch: no contribution
  # freeze_classifier = FALSE trains the classifier
  q2 <- load_query_data(a$query, ref_fit, batch_key = "batch", freeze_classifier = FALSE, seed = 1,
                        n_threads = 2)
  q2 <- train_model(q2, max_epochs = 2, weight_decay = 0, seed = 1, n_threads = 2, verbose = FALSE)
  expect_true(any(grepl("^scanvi\\.classifier", compare_weights(ref_fit, q2))))
  # scANVI query labels must be reference labels
  expect_error(load_query_data(a$query, ref_fit, batch_key = "batch", labels_key = "batch"),
               "not labels of the scANVI model", class = "scvir_input_error")
})

test_that("an LDVAE reference maps a query: only the new batch's decoder columns train", {
  s <- small_arches()
  ref <- ldvae(s$counts[, 1:60], batch = rep(c("a", "b"), 30), max_epochs = 5L, seed = 1L,
               n_threads = 1L, verbose = FALSE)
  q <- load_query_data(s$query, ref, batch = rep("c", 20), seed = 2, n_threads = 1)
  q <- train_model(q, max_epochs = 3L, weight_decay = 1e-3, seed = 3, n_threads = 1, verbose = FALSE)
  expect_identical(q$model_type, "LDVAE")
  changed <- compare_weights(ref, q)
  expect_false(any(c("decoder.factor_regressor.layer_0.linear.weight", "z_encoder.mean_encoder.weight") %in% changed))
  expect_equal(dim(get_loadings(q)), dim(get_loadings(ref)))
  w <- tensors(q)[["decoder.factor_regressor.layer_0.linear.weight"]]
  expect_gt(max(abs(w[, ncol(w)] - tensors(load_query_data(s$query, ref, batch = rep("c", 20), seed = 2,
                                                              n_threads = 1))[["decoder.factor_regressor.layer_0.linear.weight"]][, ncol(w)])), 0)
})
