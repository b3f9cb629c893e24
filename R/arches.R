# scArches reference mapping (Lotfollahi et al. 2022; scvi-tools' ArchesMixin): a query model is
# the reference model extended by the query's new batches and covariate categories, trained with
# everything but the new categories' weights frozen. The engine builds the query model, extends
# the registry and owns the freezing rules; this file adapts objects and formats results.

#' Reference mapping: a query model from a reference model (scArches)
#'
#' Builds the query model of scArches reference mapping, as scvi-tools'
#' `load_query_data()`: the reference model (SCVI, LDVAE or scANVI) with its batch and
#' categorical covariate inputs extended by the query's new categories. Every reference weight is
#' copied; the columns of the new categories in the one-hot inputs (or the new rows of a batch
#' embedding) start from a fresh initialisation. The model is returned untrained: train it with
#' [train_model()] (or use [map_query()], which does all three steps on objects).
#'
#' Training a query model updates only what the freeze options leave free, with scvi-tools'
#' defaults: the new categories' columns of every layer that takes covariates, the library
#' encoder (latent library size), and the decoder's BatchNorm. Frozen BatchNorm keeps its running
#' statistics. So reference cells keep their latent representation: the query model embeds them
#' exactly as the reference did, in one shared space.
#'
#' Differences from scvi-tools, by choice (each avoids a known trap):
#' * only the columns of *new* categories train; scvi-tools also trains the columns of categories
#'   the reference already had, which moves the reference's own cells when a query shares one;
#' * a frozen weight never changes: scvi-tools zeroes its gradient but L2 weight decay still
#'   shrinks it, which is why its users train queries with `weight_decay = 0` (still the usual
#'   setting, and [map_query()]'s default);
#' * a gene-batch dispersion's new batch columns and a batch embedding's new rows train
#'   (scvi-tools leaves them at their random initialisation);
#' * a frozen scANVI classifier also keeps its BatchNorm statistics.
#'
#' For scANVI references the query cells are unlabelled unless `labels` (or `labels_key`) gives
#' some; labels must be reference labels, the reference's unlabelled category or `NA`.
#'
#' @param query The query cells: raw counts (genes x cells; the reference's genes, in any order:
#'   see [prepare_query()] when some are missing), a Seurat object or a SingleCellExperiment; or
#'   counts on disk (an `.h5ad` path, `read_h5ad(path, backed = TRUE)` or an HDF5Array), which
#'   must hold every reference gene: the query model keeps the handle and [train_model()] reads
#'   the file in blocks, as [scvi_model()] does.
#' @param reference The reference model: an `scvi_model` / `scanvi_model`, a Seurat or
#'   SingleCellExperiment object holding one (its scANVI model when it has both), or a directory
#'   written by [save_model()].
#' @param ... Arguments of the methods; after `reference` every argument is matched by its full
#'   name only.
#' @param unfrozen Train every parameter (the other freeze options are then ignored).
#' @param freeze_dropout Switch dropout off while training the query.
#' @param freeze_expression Keep the encoder's first layer frozen except for the new covariate
#'   columns (`FALSE`: the whole first layer trains).
#' @param freeze_decoder_first_layer The same for the decoder's first layer.
#' @param freeze_batchnorm_encoder,freeze_batchnorm_decoder Keep the encoders' / decoders'
#'   BatchNorm (scale, shift and running statistics) as in the reference.
#' @param freeze_classifier scANVI: keep the classifier as in the reference.
#' @param seed Seed of the new columns' initialisation (`NULL`: drawn from R's generator).
#' @param n_threads CPU threads.
#' @return An untrained query model (`scvi_model`, or `scanvi_model` for scANVI references)
#'   holding the query data, for [train_model()].
#' @seealso [map_query()], [prepare_query()], [train_model()].
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' counts <- pbmc_small[["RNA"]]@counts
#' # a reference on the g1 group, a query from g2 as a new batch
#' g1 <- pbmc_small$groups == "g1"
#' ref <- scvi_model(counts[, g1], batch = rep("ref", sum(g1)), max_epochs = 5, seed = 1,
#'                   n_threads = 1, verbose = FALSE)
#' query <- load_query_data(counts[, !g1], ref, batch = rep("query", sum(!g1)), seed = 1,
#'                          n_threads = 1)
#' query <- train_model(query, max_epochs = 5, weight_decay = 0, seed = 1, n_threads = 1,
#'                      verbose = FALSE)
#' query$batches
#' head(get_latent_representation(query))
#' @export
load_query_data <- function(query, reference, ...) UseMethod("load_query_data")

# The arguments every load_query_data() method takes besides the data.
.freeze_args <- c("unfrozen", "freeze_dropout", "freeze_expression", "freeze_decoder_first_layer",
                  "freeze_batchnorm_encoder", "freeze_batchnorm_decoder", "freeze_classifier")

#' @rdname load_query_data
#' @param batch Batch of each query cell (matrix input; needed when the reference has a batch
#'   key; for counts on disk, also the name of an obs column). New batches extend the model.
#' @param labels scANVI: label of each query cell (`NA` or the unlabelled category for unknown);
#'   `NULL`: all unlabelled. SCVI with `dispersion = "gene-label"`: the cells' labels.
#' @param categorical_covariates,continuous_covariates,size_factor The query cells' covariates, as
#'   the reference was trained with them (see [scvi_model()]); new categorical values extend the
#'   model.
#' @export
load_query_data.default <- function(query, reference, ..., batch = NULL, labels = NULL,
                                    categorical_covariates = NULL, continuous_covariates = NULL,
                                    size_factor = NULL, unfrozen = FALSE, freeze_dropout = FALSE,
                                    freeze_expression = TRUE, freeze_decoder_first_layer = TRUE,
                                    freeze_batchnorm_encoder = TRUE, freeze_batchnorm_decoder = FALSE,
                                    freeze_classifier = TRUE, seed = NULL, n_threads = NULL) {
  .check_dots(list(...), formals(load_query_data.default), after = "reference")
  ref <- .reference_fit(reference)
  query <- .as_backed_input(query)
  if (.is_backed(query)) {
    # Counts on disk: batch and labels may name obs columns of the file.
    batch <- .obs_or_values(query, batch, "batch")
    labels <- .obs_or_values(query, labels, "labels")
  } else {
    query <- .as_dgc(query, "query")
  }
  cov <- list(labels = if (!inherits(ref, "scanvi_model")) labels,
              categorical = categorical_covariates, continuous = continuous_covariates,
              size_factor = size_factor)
  .load_query_core(query, batch, labels, cov, ref,
                   mget(.freeze_args), seed, n_threads, source = NULL)
}

#' @rdname load_query_data
#' @param batch_key Query metadata column with the cells' batch (default: the reference's
#'   batch key).
#' @param labels_key Query metadata column with labels (scANVI: known labels of some query
#'   cells; default none).
#' @param assay,layer Where the query object's raw counts are (as in [scvi()]).
#' @export
load_query_data.Seurat <- function(query, reference, ..., batch_key = NULL, labels_key = NULL,
                                   assay = NULL, layer = "counts", unfrozen = FALSE,
                                   freeze_dropout = FALSE, freeze_expression = TRUE,
                                   freeze_decoder_first_layer = TRUE,
                                   freeze_batchnorm_encoder = TRUE,
                                   freeze_batchnorm_decoder = FALSE, freeze_classifier = TRUE,
                                   seed = NULL, n_threads = NULL) {
  .need("SeuratObject")
  .check_dots(list(...), formals(load_query_data.Seurat), after = "reference")
  ref <- .reference_fit(reference)
  input <- .seurat_counts(query, assay, layer)
  d <- .object_query_inputs(query@meta.data, ref, batch_key, labels_key)
  .load_query_core(input$counts, d$batch, d$labels, d$cov, ref, mget(.freeze_args), seed,
                   n_threads, source = c(list(type = "Seurat", assay = input$assay, layer = layer), d$keys))
}

#' @rdname load_query_data
#' @export
load_query_data.SingleCellExperiment <- function(query, reference, ..., batch_key = NULL,
                                                 labels_key = NULL, assay = "counts",
                                                 unfrozen = FALSE, freeze_dropout = FALSE,
                                                 freeze_expression = TRUE,
                                                 freeze_decoder_first_layer = TRUE,
                                                 freeze_batchnorm_encoder = TRUE,
                                                 freeze_batchnorm_decoder = FALSE,
                                                 freeze_classifier = TRUE, seed = NULL,
                                                 n_threads = NULL) {
  .need("SingleCellExperiment")
  .check_dots(list(...), formals(load_query_data.SingleCellExperiment), after = "reference")
  ref <- .reference_fit(reference)
  counts <- .sce_counts(query, assay)
  cd <- as.data.frame(SummarizedExperiment::colData(query))
  d <- .object_query_inputs(cd, ref, batch_key, labels_key)
  .load_query_core(counts, d$batch, d$labels, d$cov, ref, mget(.freeze_args), seed, n_threads,
                   source = c(list(type = "SingleCellExperiment", assay = assay), d$keys))
}

# The reference model: an scvi_model, an object holding one (`which`; NULL: its scANVI model
# when it has one, else its scVI model), or a saved model.
.reference_fit <- function(reference, which = NULL) {
  if (is.character(reference) && length(reference) == 1) return(load_model(reference))
  if (inherits(reference, "scvi_model")) return(reference)
  held <- if (inherits(reference, "Seurat")) reference@misc else
    if (methods::is(reference, "SingleCellExperiment")) S4Vectors::metadata(reference)
  if (!is.null(held)) {
    fit <- if (is.null(which)) held$scanvi %||% held$scvi else held[[which]] %||% held$scanvi
    if (is.null(fit)) {
      scvir_abort("reference holds no scVI or scANVI model; run scvi() or scanvi() on it first, or give a model or a directory written by save_model()")
    }
    return(fit)
  }
  scvir_abort(sprintf(paste("reference must be an scvi_model, a Seurat / SingleCellExperiment",
                            "object holding one, or a directory written by save_model(); got %s"),
                      .describe_value(reference)))
}

# Batch, labels and covariates of a query object's cells, under the reference's keys.
.object_query_inputs <- function(meta, ref, batch_key, labels_key) {
  src <- ref$source %||% list()
  batch_key <- batch_key %||% ref$batch_key
  keys <- list(batch_key = batch_key,
               categorical_covariate_keys = src$categorical_covariate_keys %||% names(ref$categorical_covariates),
               continuous_covariate_keys = src$continuous_covariate_keys %||% ref$continuous_covariates,
               size_factor_key = src$size_factor_key,
               labels_key = if (!inherits(ref, "scanvi_model")) src$labels_key)
  if (isTRUE(ref$uses_size_factor) && is.null(keys$size_factor_key)) {
    scvir_abort("the reference was trained with size factors but does not record their metadata column; use the matrix method with size_factor")
  }
  cov <- .metadata_covariates(meta, keys$labels_key, keys$categorical_covariate_keys,
                              keys$continuous_covariate_keys, keys$size_factor_key)
  labels <- if (inherits(ref, "scanvi_model")) {
    if (!is.null(labels_key)) .metadata_column(meta, labels_key, "labels_key")
  } else cov$labels
  if (inherits(ref, "scanvi_model")) keys$scanvi_labels_key <- labels_key
  list(batch = .metadata_column(meta, batch_key), labels = labels, cov = cov, keys = keys)
}

# The query's counts with the reference's genes in its order: missing genes are an error here
# (prepare_query() zero-fills them), extra genes are dropped.
.align_query_genes <- function(counts, genes, filled = character()) {
  if (identical(rownames(counts), genes)) return(counts)
  missing <- setdiff(genes, rownames(counts))
  if (length(missing)) {
    scvir_abort(sprintf(paste("the query lacks %d of the reference's %d genes (e.g. %s); prepare_query()",
                              "adds them as zeros (map_query() does it for you)"),
                        length(missing), length(genes),
                        paste0("\"", utils::head(missing, 3), "\"", collapse = ", ")))
  }
  counts[genes, , drop = FALSE]
}

.load_query_core <- function(counts, batch, labels, covariates, ref, freeze, seed, n_threads,
                             source, filled = character()) {
  for (nm in names(freeze)) .check_flag(freeze[[nm]], nm)
  if (.is_backed(counts)) {
    # Counts on disk: the reference's genes become a view of the file, in the reference's order;
    # genes the file lacks cannot be zero-filled there.
    absent <- setdiff(ref$genes, counts$file_genes)
    if (length(absent)) {
      scvir_abort(sprintf(paste("the query file %s lacks %d of the reference's %d genes (e.g. \"%s\"); counts",
                                "on disk cannot be zero-filled: read the query into memory (read_h5ad(path))",
                                "and use prepare_query(), or write a file with every reference gene"),
                          counts$path, length(absent), length(ref$genes), absent[1]), "scvir_input_error")
    }
    counts$gene_index <- match(ref$genes, counts$file_genes)
  } else {
    counts <- .check_counts(counts, "query")
    counts <- .align_query_genes(counts, ref$genes)
  }
  .check_no_empty_cells(counts, sprintf("in the reference's %d genes", nrow(counts)))
  n <- ncol(counts)
  if (!is.null(ref$batch_key) || length(ref$batches) > 1) {
    if (is.null(batch)) {
      scvir_abort(sprintf(paste("the reference was trained with batches (%s); give the query cells'",
                                "batch (batch, or batch_key for objects): new batches extend the model"),
                          paste(utils::head(ref$batches, 5), collapse = ", ")), "scvir_config_error")
    }
    batch <- .check_batch(batch, n)
  } else if (!is.null(batch)) {
    batch <- .check_batch(batch, n)
  }
  levels <- if (is.null(batch)) character() else levels(batch)
  cat_keys <- names(ref$categorical_covariates)
  cats <- if (length(cat_keys)) {
    given <- as.list(as.data.frame(covariates$categorical %||% list(), stringsAsFactors = FALSE, optional = TRUE))
    missing <- setdiff(cat_keys, names(given))
    if (length(missing)) {
      scvir_abort(sprintf("the reference was trained with categorical covariate \"%s\"; give it for the query cells", missing[1]))
    }
    lapply(cat_keys, function(k) {
      v <- given[[k]]
      if (anyNA(v)) scvir_abort(sprintf("categorical covariate \"%s\" has missing (NA) values", k))
      list(k, I(if (is.factor(v)) levels(droplevels(v)) else sort(unique(as.character(v)))))
    })
  } else list()
  reg_json <- .engine(.rs_query_registry(ref$model, levels, .to_json(cats)))
  reg <- jsonlite::fromJSON(reg_json, simplifyVector = FALSE)
  extended <- structure(list(
    labels = unlist(reg$labels), batches = unlist(reg$batches),
    categorical_covariates = stats::setNames(lapply(reg$categorical_covariates, function(x) unlist(x[[2]])),
                                             vapply(reg$categorical_covariates, function(x) x[[1]], "")),
    continuous_covariates = unlist(reg$continuous_covariates),
    uses_size_factor = ref$uses_size_factor), class = class(ref))
  codes <- if (is.null(batch)) integer(n) else match(as.character(batch), extended$batches) - 1L
  cov <- .encode_covariates(covariates, n, extended)$engine
  if (inherits(ref, "scanvi_model")) {
    cov$labels <- .scanvi_label_codes(ref, labels, n)
    covariates$labels <- labels
  }
  seed <- .resolve_seed(seed)
  n_threads <- .default_threads(n_threads)
  options <- c(freeze, list(new_entries = I(list())))
  bytes <- .engine(.rs_load_query(ref$model, reg_json, .data_arg(counts, codes, cov),
                                  .to_json(options), seed, n_threads))
  fit <- .new_fit(bytes, cells = colnames(counts),
                  data = list(counts = counts, batch = batch, covariates = covariates),
                  seed = seed, n_threads = n_threads, hvg = NULL, source = source %||% ref$source)
  fit$batch_key <- source$batch_key %||% ref$batch_key
  fit$is_trained <- FALSE
  fit$zero_filled_genes <- filled
  fit$reference <- list(model_type = ref$model_type, batches = ref$batches, n_cells = .fit_n_cells(ref))
  fit$accelerator <- ref$accelerator %||% "auto"
  fit$device_index <- ref$device_index %||% 0L
  fit
}

# scANVI label codes of query cells: a reference label's code, else the unlabelled code.
.scanvi_label_codes <- function(fit, labels, n) {
  known <- fit$known_labels
  if (is.null(labels)) return(rep(length(known), n))
  if (length(labels) != n) scvir_abort(sprintf("labels has length %d but there are %d cells", length(labels), n))
  labels <- as.character(labels)
  codes <- match(labels, known) - 1L
  bad <- is.na(codes) & !is.na(labels) & !(labels %in% fit$unlabeled_category)
  if (any(bad)) {
    scvir_abort(sprintf(paste("labels has value(s) that are not labels of the scANVI model (e.g. \"%s\";",
                              "known: %s); give a known label, \"%s\" or NA for unknown cells"),
                        labels[bad][1], paste(utils::head(known, 10), collapse = ", "),
                        fit$unlabeled_category %|NA|% "NA"))
  }
  codes[is.na(codes)] <- length(known)
  as.integer(codes)
}

`%|NA|%` <- function(a, b) if (is.null(a) || is.na(a)) b else a

#' Train a model (again)
#'
#' Trains a query model from [load_query_data()], or trains an existing model further, as calling
#' scvi-tools' `train()` again: the architecture, genes, batches and (for query models) the
#' freezing rules are the model's; a new optimiser starts, the KL warm-up starts again, the data
#' are split anew, and [training_history()] then holds this run's epochs (scvi-tools' history is
#' replaced the same way). scArches queries are usually trained with `weight_decay = 0` (frozen
#' weights never change here whatever the weight decay; see [load_query_data()]).
#'
#' @param model An `scvi_model` (or `scanvi_model`).
#' @param ... Training arguments of [scvi_model()] (`max_epochs`, `lr`, `weight_decay`,
#'   `batch_size`, `early_stopping`, ...), by their full names. `max_epochs = NULL` applies
#'   scvi-tools' rule to the number of cells trained on.
#' @param newdata Counts to train on instead of the data the model holds (the model's genes).
#' @param batch,covariates The cells' batch and covariates for `newdata` (as in
#'   [get_latent_representation()]).
#' @param labels scANVI: labels of the cells (`NA` or the unlabelled category for unknown);
#'   default: those the model holds, or none.
#' @param seed,n_threads,accelerator,device,verbose As in [scvi_model()].
#' @return The trained model.
#' @seealso [load_query_data()], [map_query()].
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' fit <- train_model(fit, max_epochs = 5, seed = 2, n_threads = 1, verbose = FALSE)
#' nrow(training_history(fit))
#' @export
train_model <- function(model, ..., newdata = NULL, batch = NULL, labels = NULL,
                        covariates = NULL, seed = NULL, n_threads = NULL, accelerator = "auto",
                        device = "auto", verbose = TRUE) {
  dots <- list(...)
  .check_dots(dots, c(names(formals(train_model)), names(formals(.train_config))), after = "model")
  if (!inherits(model, "scvi_model")) {
    scvir_abort(sprintf("model must be an scvi_model (e.g. from load_query_data()); got %s", .describe_value(model)))
  }
  .refuse_minified(model, "train_model()")
  train <- do.call(.train_config, dots)
  verbose <- .check_flag(verbose, "verbose")
  accelerator <- .check_choice(accelerator, c("auto", "cpu", "gpu"), "accelerator")
  device_index <- if (identical(device, "auto")) 0L else .check_count_arg(device, "device", min = 0)
  d <- .query_data(model, newdata, batch, NULL, covariates)
  if (inherits(model, "scanvi_model")) {
    if (is.null(labels) && is.null(newdata)) labels <- model$data$covariates$labels
    d$cov$labels <- .scanvi_label_codes(model, labels, ncol(d$counts))
  }
  .check_no_empty_cells(d$counts, sprintf("in the model's %d genes", nrow(d$counts)))
  seed <- .resolve_seed(seed)
  n_threads <- .default_threads(n_threads)
  train$seed <- seed
  max_epochs <- train$max_epochs %||% .default_max_epochs(ncol(d$counts))
  what <- if (isTRUE(model$is_trained)) "Training further" else "Training query"
  progress <- .progress_reporter(verbose, sprintf(
    "%s %s model on %d cells x %d genes for %s (%s, seed %d)", what,
    model$model_type, ncol(d$counts), nrow(d$counts), .counted(max_epochs, "epoch"),
    .counted(n_threads, "thread"), seed))
  if (!is.null(progress)) on.exit(progress$done(), add = TRUE)
  started <- proc.time()[["elapsed"]]
  res <- .engine(.rs_train(.data_arg(d$counts, d$codes, d$cov), model$genes, model$batches, "",
                           "{}", "{}", .to_json(train), n_threads, progress$callback, accelerator,
                           as.integer(device_index), model$model, resume = TRUE))
  data <- if (is.null(newdata)) model$data else if (!is.null(model$data)) {
    list(counts = d$counts, batch = batch, covariates = c(covariates, list(labels = labels)))
  }
  fit <- .new_fit(res$model, cells = colnames(d$counts), data = data, seed = seed,
                  n_threads = n_threads, hvg = model$hvg, source = model$source)
  for (k in c("batch_key", "zero_filled_genes", "reference")) fit[k] <- list(model[[k]])
  fit$train_seconds <- proc.time()[["elapsed"]] - started
  fit$accelerator <- accelerator
  fit$device_index <- as.integer(device_index)
  fit$device <- res$device
  fit
}

#' Map query cells onto a reference (scArches), in one call
#'
#' [prepare_query()] + [load_query_data()] + [train_model()] on a Seurat object, a
#' SingleCellExperiment or a count matrix, writing into the query object what [scvi()] /
#' [scanvi()] write: the latent representation under the reference's name (`"scvi"` /
#' `"scanvi"` reductions for Seurat, `"scVI"` / `"scANVI"` for SingleCellExperiment) and, for
#' scANVI references, the predicted labels (`prediction_key`), their probability
#' (`<prediction_key>_probability`) and the cells x labels probabilities (in `@misc` /
#' `metadata()` as `scanvi_probabilities`). The query model is stored like any other
#' (`@misc$scvi` / `@misc$scanvi`, `metadata(sce)$scvi` / `$scanvi`), so every query function
#' works on the object afterwards; genes the query lacked are treated as zero counts by them.
#'
#' The reference and the query share one latent space: the query model embeds reference cells
#' exactly as the reference model does (see [load_query_data()]).
#'
#' @inheritParams load_query_data
#' @param ... Training arguments of [scvi_model()] (`max_epochs`, `lr`, ...), by full name.
#' @param weight_decay Weight decay of the query training: 0, the scArches setting (scvi-tools'
#'   tutorials train queries with `plan_kwargs = list(weight_decay = 0)`).
#' @param max_epochs Query training epochs (`NULL`: scvi-tools' rule on the query's size).
#' @param verbose Print training progress.
#' @param reduction_name,reduction_key Seurat `DimReduc` name and key (default: the reference's
#'   kind, `"scvi"` or `"scanvi"`).
#' @param reduced_dim_name SingleCellExperiment `reducedDim` name (default `"scVI"` / `"scANVI"`).
#' @param prediction_key Metadata column receiving scANVI's predicted labels.
#' @return The query object with the results added; for a matrix, the trained query model.
#' @seealso [load_query_data()], [prepare_query()].
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' ref <- subset(pbmc_small, groups == "g1")
#' query <- subset(pbmc_small, groups == "g2")
#' ref$batch <- "reference"
#' query$batch <- "query"
#' ref <- scvi(ref, batch_key = "batch", use_highly_variable_genes = FALSE, max_epochs = 5,
#'             seed = 1, n_threads = 1, verbose = FALSE)
#' query <- map_query(query, ref, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' SeuratObject::Reductions(query)
#' query@misc$scvi$batches
#' @export
map_query <- function(query, reference, ...) UseMethod("map_query")

# Training arguments map_query() passes on, checked by train_model().
.map_query_train <- function(dots, weight_decay, max_epochs, seed, n_threads, verbose) {
  c(dots, list(weight_decay = weight_decay, max_epochs = max_epochs, seed = seed,
               n_threads = n_threads, verbose = verbose))
}

.map_query_fit <- function(counts, batch, labels, cov, ref, freeze, train_args, source) {
  prep <- .fill_missing_genes(counts, ref$genes)
  qfit <- .load_query_core(prep$counts, batch, labels, cov, ref, freeze, train_args$seed,
                           train_args$n_threads, source = source, filled = prep$filled)
  qfit <- do.call(train_model, c(list(qfit), train_args))
  list(fit = qfit, counts = prep$counts)
}

#' @rdname map_query
#' @export
map_query.default <- function(query, reference, ..., batch = NULL, labels = NULL,
                              categorical_covariates = NULL, continuous_covariates = NULL,
                              size_factor = NULL, unfrozen = FALSE, freeze_dropout = FALSE,
                              freeze_expression = TRUE, freeze_decoder_first_layer = TRUE,
                              freeze_batchnorm_encoder = TRUE, freeze_batchnorm_decoder = FALSE,
                              freeze_classifier = TRUE, weight_decay = 0, max_epochs = NULL,
                              seed = NULL, n_threads = NULL, verbose = TRUE) {
  .check_dots(list(...), c(names(formals(map_query.default)), names(formals(.train_config))), after = "reference")
  ref <- .reference_fit(reference)
  cov <- list(labels = if (!inherits(ref, "scanvi_model")) labels, categorical = categorical_covariates,
              continuous = continuous_covariates, size_factor = size_factor)
  counts <- .check_counts(.as_dgc(query, "query"), "query")
  .map_query_fit(counts, batch, labels, cov, ref, mget(.freeze_args),
                 .map_query_train(list(...), weight_decay, max_epochs, seed, n_threads, verbose),
                 source = NULL)$fit
}

#' @rdname map_query
#' @export
map_query.Seurat <- function(query, reference, ..., batch_key = NULL, labels_key = NULL,
                             assay = NULL, layer = "counts", unfrozen = FALSE,
                             freeze_dropout = FALSE, freeze_expression = TRUE,
                             freeze_decoder_first_layer = TRUE, freeze_batchnorm_encoder = TRUE,
                             freeze_batchnorm_decoder = FALSE, freeze_classifier = TRUE,
                             weight_decay = 0, max_epochs = NULL, seed = NULL, n_threads = NULL,
                             verbose = TRUE, reduction_name = NULL, reduction_key = NULL,
                             prediction_key = "scanvi_predictions") {
  .need("SeuratObject")
  .check_dots(list(...), c(names(formals(map_query.Seurat)), names(formals(.train_config))), after = "reference")
  ref <- .reference_fit(reference)
  input <- .seurat_counts(query, assay, layer)
  d <- .object_query_inputs(query@meta.data, ref, batch_key, labels_key)
  m <- .map_query_fit(input$counts, d$batch, d$labels, d$cov, ref, mget(.freeze_args),
                      .map_query_train(list(...), weight_decay, max_epochs, seed, n_threads, verbose),
                      source = c(list(type = "Seurat", assay = input$assay, layer = layer), d$keys))
  fit <- m$fit
  kind <- if (inherits(fit, "scanvi_model")) "scanvi" else "scvi"
  reduction_name <- reduction_name %||% kind
  reduction_key <- reduction_key %||% paste0(kind, "_")
  z <- get_latent_representation(fit)
  colnames(z) <- paste0(reduction_key, seq_len(ncol(z)))
  query[[reduction_name]] <- SeuratObject::CreateDimReducObject(
    embeddings = z, key = reduction_key, assay = input$assay, misc = list(model = fit$model_type))
  if (kind == "scanvi") {
    p <- predict(fit, soft = TRUE)
    query[[prediction_key]] <- colnames(p)[max.col(p, ties.method = "first")]
    query[[paste0(prediction_key, "_probability")]] <- apply(p, 1, max)
    query@misc$scanvi_probabilities <- p
  }
  fit$data <- NULL
  query@misc[[kind]] <- fit
  query
}

#' @rdname map_query
#' @export
map_query.SingleCellExperiment <- function(query, reference, ..., batch_key = NULL,
                                           labels_key = NULL, assay = "counts", unfrozen = FALSE,
                                           freeze_dropout = FALSE, freeze_expression = TRUE,
                                           freeze_decoder_first_layer = TRUE,
                                           freeze_batchnorm_encoder = TRUE,
                                           freeze_batchnorm_decoder = FALSE,
                                           freeze_classifier = TRUE, weight_decay = 0,
                                           max_epochs = NULL, seed = NULL, n_threads = NULL,
                                           verbose = TRUE, reduced_dim_name = NULL,
                                           prediction_key = "scanvi_predictions") {
  .need("SingleCellExperiment")
  .check_dots(list(...), c(names(formals(map_query.SingleCellExperiment)), names(formals(.train_config))),
              after = "reference")
  ref <- .reference_fit(reference)
  counts <- .sce_counts(query, assay)
  cd <- as.data.frame(SummarizedExperiment::colData(query))
  d <- .object_query_inputs(cd, ref, batch_key, labels_key)
  m <- .map_query_fit(counts, d$batch, d$labels, d$cov, ref, mget(.freeze_args),
                      .map_query_train(list(...), weight_decay, max_epochs, seed, n_threads, verbose),
                      source = c(list(type = "SingleCellExperiment", assay = assay), d$keys))
  fit <- m$fit
  kind <- if (inherits(fit, "scanvi_model")) "scanvi" else "scvi"
  reduced_dim_name <- reduced_dim_name %||% (if (kind == "scanvi") "scANVI" else "scVI")
  SingleCellExperiment::reducedDim(query, reduced_dim_name) <- get_latent_representation(fit)
  if (kind == "scanvi") {
    p <- predict(fit, soft = TRUE)
    SummarizedExperiment::colData(query)[[prediction_key]] <- colnames(p)[max.col(p, ties.method = "first")]
    SummarizedExperiment::colData(query)[[paste0(prediction_key, "_probability")]] <- apply(p, 1, max)
    S4Vectors::metadata(query)$scanvi_probabilities <- p
  }
  fit$data <- NULL
  S4Vectors::metadata(query)[[kind]] <- fit
  query
}

# The query's counts with every reference gene, in the reference's order (prepare_query()'s
# rule: missing genes become zero rows, with its warning below 80% overlap), and which were filled.
.fill_missing_genes <- function(counts, genes) {
  list(counts = .prepare_counts(counts, genes, "query"), filled = setdiff(genes, rownames(counts)))
}
