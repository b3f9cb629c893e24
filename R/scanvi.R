# scANVI (Xu et al. 2021; scvi-tools' SCANVI): semi-supervised cell-type annotation on top of
# scVI. Cells whose label is the unlabelled category get one from the classifier.

#' Semi-supervised cell annotation with scANVI
#'
#' Trains scvi-tools' SCANVI model: scVI's generative model with a label layer, a classifier
#' q(y | z) and a second latent layer. Every cell's label is marginalised in the ELBO, and cells
#' with a known label also train the classifier (cross-entropy on the posterior mean of z,
#' weighted by `classification_ratio`). Cells whose label is `unlabeled_category` (or `NA`) are
#' annotated by [predict()][predict.scanvi_model].
#'
#' With `scvi_fit`, the model starts from a trained scVI model, as `SCANVI.from_scvi_model()`: its
#' architecture, genes, batches and covariates are reused, its weights copied, and `max_epochs`
#' defaults to `min(10, max(2, round(h / 3)))` where `h` is scVI's epoch rule. Without it, scANVI
#' trains from scratch with scVI's defaults (`max_epochs = h`); architecture and training options
#' go in `...` as for [scvi_model()].
#'
#' [training_history()] of a scANVI model adds the classifier's cross-entropy and accuracy on the
#' labelled training minibatches (`classification_loss_train`, `accuracy_train`, means over the
#' epoch's steps) and on the labelled validation cells (`classification_loss_validation`,
#' `accuracy_validation`).
#'
#' Differences by choice: with `labels_groups`, label probabilities are p(group) x p(label |
#' group), each a softmax; scvi-tools' code divides the classifier's logits as if they were
#' probabilities there. The labelled cells' loader is reshuffled at each pass.
#'
#' @param object Raw counts (genes x cells), a Seurat object or a SingleCellExperiment; or
#'   counts on disk (an `.h5ad` path or `read_h5ad(path, backed = TRUE)`), where `labels` and
#'   `batch` may name obs columns.
#' @param ... For matrices and objects: [scvi_model()] options (architecture only without
#'   `scvi_fit`; training options always). For objects: also `assay`, `layer`, `batch_key` and
#'   covariate keys as in [scvi()] when training from scratch.
#' @return For a matrix, a `scanvi_model` (also an `scvi_model`: every query works on it). For a
#'   Seurat object, the object with a `scanvi` DimReduc (key `scanvi_`), the predicted labels in
#'   the metadata column `prediction_key` and the model in `@misc$scanvi`; for a
#'   SingleCellExperiment, `reducedDim(sce, "scANVI")`, a `colData` column and
#'   `metadata(sce)$scanvi`.
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' # 330 cells of the bundled PBMC 3k data, with their published cell types
#' sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
#' sce <- sce[, seq(1, ncol(sce), by = 8)]
#' # hide the cell type of every third cell; scANVI annotates them
#' hidden <- seq(1, ncol(sce), by = 3)
#' masked <- as.character(sce$cell_type)
#' masked[hidden] <- "Unknown"
#' sce$masked <- masked
#' sce <- scvi(sce, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' sce <- scanvi(sce, labels_key = "masked", scvi_fit = sce, max_epochs = 5, seed = 1,
#'               n_threads = 1, verbose = FALSE)
#' table(truth = sce$cell_type[hidden], predicted = sce$scanvi_predictions[hidden])
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' # a count matrix, trained from scratch: pbmc_small's clusters as labels, ten of them hidden
#' data("pbmc_small", package = "SeuratObject")
#' labels <- as.character(pbmc_small$RNA_snn_res.1)
#' hidden <- seq(1, 80, by = 8)
#' labels[hidden] <- "Unknown"
#' fit <- scanvi(pbmc_small[["RNA"]]@counts, labels = labels, max_epochs = 5, seed = 1,
#'               n_threads = 1, verbose = FALSE)
#' table(truth = pbmc_small$RNA_snn_res.1[hidden], predicted = predict(fit)[hidden])
#' @export
scanvi <- function(object, ...) UseMethod("scanvi")

#' @rdname scanvi
#' @param labels Label of each cell (matrix input); `unlabeled_category` or `NA` for unknown.
#' @param unlabeled_category The value marking cells without a label. If no cell has it (nor
#'   `NA`), every cell is labelled: scANVI trains the classifier on all of them and says so in a
#'   message. Labels that look like an unlabelled marker spelt differently (`"unknown"` for
#'   `"Unknown"`, `"unlabelled"`, `"NA"`) are then an error, as they would become a cell type.
#' @param scvi_fit A trained scVI model to start from (an `scvi_model`, or a Seurat /
#'   SingleCellExperiment object holding one), or `NULL` to train from scratch.
#' @param batch Batch of each cell (matrix input, from scratch; with `scvi_fit`, the batches must
#'   be the model's).
#' @param classification_ratio Weight of the labelled cells' cross-entropy (scvi-tools: 50).
#' @param y_prior Prior probability of each known label (named or in label order); `NULL` is
#'   uniform.
#' @param labels_groups Group of each known label (a named vector, names the labels), used with
#'   `use_labels_groups`.
#' @param use_labels_groups Classify hierarchically: label group, then label within the group.
#' @param linear_classifier A linear classifier instead of one hidden layer.
#' @param n_samples_per_label Labelled cells per label given to the classifier, drawn anew each
#'   epoch (`NULL`: all labelled cells), as scvi-tools' `n_samples_per_label`.
#' @param max_epochs Epochs (`NULL`: the rule above).
#' @param seed,n_threads,verbose As in [scvi_model()].
#' @export
scanvi.default <- function(object, labels, ..., unlabeled_category = "Unknown", scvi_fit = NULL,
                           batch = NULL, classification_ratio = 50, y_prior = NULL,
                           labels_groups = NULL, use_labels_groups = FALSE,
                           linear_classifier = FALSE, n_samples_per_label = NULL,
                           max_epochs = NULL, seed = NULL, n_threads = NULL, verbose = TRUE) {
  .check_dots(list(...), c(names(formals(scvi_model)), names(formals(scanvi.default))), after = "labels")
  if (missing(labels)) {
    scvir_abort("labels is missing: give the label of each cell (unlabeled_category or NA for unknown)")
  }
  counts <- .as_backed_input(object)
  if (.is_backed(counts)) {
    # On disk: labels and batch may name obs columns of the file.
    labels <- .obs_or_values(counts, labels, "labels")
    batch <- .obs_or_values(counts, batch, "batch")
  } else {
    counts <- .check_counts(.as_dgc(object))
  }
  .scanvi_core(counts, labels = labels, batch = batch, batch_key = NULL, covariates = list(),
               unlabeled_category = unlabeled_category, scvi_fit = scvi_fit,
               classification_ratio = classification_ratio, y_prior = y_prior,
               labels_groups = labels_groups, use_labels_groups = use_labels_groups,
               linear_classifier = linear_classifier, n_samples_per_label = n_samples_per_label,
               max_epochs = max_epochs, seed = seed, n_threads = n_threads, verbose = verbose,
               dots = list(...), source = NULL)
}

#' @rdname scanvi
#' @param labels_key Metadata column holding the labels (objects).
#' @param prediction_key Metadata column receiving the predicted labels (objects).
#' @param reduction_name,reduction_key Name and key of the Seurat `DimReduc`.
#' @param reduction.name,reduction.key Seurat-style spellings of `reduction_name` and
#'   `reduction_key` (give one spelling or the other).
#' @export
scanvi.Seurat <- function(object, ..., labels_key, unlabeled_category = "Unknown", scvi_fit = NULL,
                          classification_ratio = 50, y_prior = NULL, labels_groups = NULL,
                          use_labels_groups = FALSE, linear_classifier = FALSE,
                          n_samples_per_label = NULL, max_epochs = NULL, seed = NULL,
                          n_threads = NULL, verbose = TRUE,
                          prediction_key = "scanvi_predictions", reduction_name = "scanvi",
                          reduction_key = "scanvi_", reduction.name = NULL, reduction.key = NULL) {
  .need("SeuratObject")
  .check_scanvi_object_dots(list(...), scanvi.Seurat, c("assay", "layer"))
  if (missing(labels_key)) .missing_labels_key()
  call <- match.call()
  reduction_name <- .dot_alias(reduction_name, reduction.name, "reduction_name", !missing(reduction_name))
  reduction_key <- .dot_alias(reduction_key, reduction.key, "reduction_key", !missing(reduction_key))
  meta <- object@meta.data
  args <- .scanvi_object_args(meta, scvi_fit, list(...))
  input <- .seurat_counts(object, args$source$assay %||% args$dots$assay,
                          args$source$layer %||% args$dots$layer %||% "counts")
  args$source$type <- "Seurat"
  args$source$assay <- input$assay
  args$source$layer <- args$source$layer %||% args$dots$layer %||% "counts"
  args$dots$assay <- NULL
  args$dots$layer <- NULL
  fit <- .scanvi_object_fit(input$counts, meta, labels_key, args, mget(.scanvi_options))
  newdata <- input$counts[fit$genes, , drop = FALSE]
  z <- get_latent_representation(fit, newdata = newdata, batch = args$batch, covariates = args$cov)
  colnames(z) <- paste0(reduction_key, seq_len(ncol(z)))
  object[[reduction_name]] <- SeuratObject::CreateDimReducObject(
    embeddings = z, key = reduction_key, assay = input$assay, misc = list(model = "scANVI"))
  object@meta.data[[prediction_key]] <- predict(fit, newdata = newdata, batch = args$batch,
                                                covariates = args$cov)
  object@misc$scanvi <- fit
  params <- .command_params(scanvi.Seurat, environment(), list(...),
                            drop = c("reduction.name", "reduction.key"))
  params$assay <- input$assay
  .log_seurat_command(object, paste0("scanvi.", input$assay), input$assay, call, params)
}

#' @rdname scanvi
#' @param reduced_dim_name Name of the SingleCellExperiment `reducedDim`.
#' @export
scanvi.SingleCellExperiment <- function(object, ..., labels_key, unlabeled_category = "Unknown",
                                        scvi_fit = NULL, classification_ratio = 50,
                                        y_prior = NULL, labels_groups = NULL,
                                        use_labels_groups = FALSE, linear_classifier = FALSE,
                                        n_samples_per_label = NULL, max_epochs = NULL,
                                        seed = NULL, n_threads = NULL,
                                        verbose = TRUE, prediction_key = "scanvi_predictions",
                                        reduced_dim_name = "scANVI") {
  .need("SingleCellExperiment")
  .check_scanvi_object_dots(list(...), scanvi.SingleCellExperiment, "assay")
  if (missing(labels_key)) .missing_labels_key()
  meta <- as.data.frame(SummarizedExperiment::colData(object))
  args <- .scanvi_object_args(meta, scvi_fit, list(...))
  assay <- args$source$assay %||% args$dots$assay %||% "counts"
  args$dots$assay <- NULL
  counts <- .sce_counts(object, assay, backed = TRUE)
  args$source$type <- "SingleCellExperiment"
  args$source$assay <- assay
  fit <- .scanvi_object_fit(counts, meta, labels_key, args, mget(.scanvi_options))
  newdata <- counts[fit$genes, , drop = FALSE]
  SingleCellExperiment::reducedDim(object, reduced_dim_name) <-
    get_latent_representation(fit, newdata = newdata, batch = args$batch, covariates = args$cov)
  SummarizedExperiment::colData(object)[[prediction_key]] <-
    predict(fit, newdata = newdata, batch = args$batch, covariates = args$cov)
  S4Vectors::metadata(object)$scanvi <- fit
  object
}

# `...` of scanvi() for objects: scvi_model() options, the metadata keys and the assay / layer
# (not the per-cell data, which come from the object's metadata).
.check_scanvi_object_dots <- function(dots, method, where) {
  per_cell <- .refuse_per_cell_args(dots)
  keys <- c("batch_key", "categorical_covariate_keys", "continuous_covariate_keys", "size_factor_key")
  .check_dots(dots, c(setdiff(names(formals(scvi_model)), per_cell), names(formals(method)), keys, where),
              after = "object")
}

.missing_labels_key <- function() {
  scvir_abort("labels_key is missing: give the metadata column holding the cell labels",
              "scvir_config_error")
}

# The scanvi() arguments that objects pass on to .scanvi_core() unchanged.
.scanvi_options <- c("unlabeled_category", "classification_ratio", "y_prior", "labels_groups",
                     "use_labels_groups", "linear_classifier", "n_samples_per_label", "max_epochs",
                     "seed", "n_threads", "verbose")

.scanvi_object_fit <- function(counts, meta, labels_key, args, options) {
  do.call(.scanvi_core, c(list(counts, labels = .metadata_column(meta, labels_key, "labels_key"),
                               batch = args$batch, batch_key = args$batch_key,
                               covariates = args$cov, scvi_fit = args$scvi_fit, dots = args$dots,
                               source = c(args$source, list(scanvi_labels_key = labels_key)),
                               keep_data = FALSE), options))
}

# Batch, covariates and their keys for an object: the scVI model's when starting from one,
# else the keys given in `...`.
.scanvi_object_args <- function(meta, scvi_fit, dots) {
  keys <- c("batch_key", "categorical_covariate_keys", "continuous_covariate_keys", "size_factor_key")
  if (!is.null(scvi_fit)) {
    scvi_fit <- .fit_of(scvi_fit)
    given <- intersect(c(keys, "labels_key", "assay", "layer"), names(dots))
    if (length(given)) {
      scvir_abort(sprintf("%s come(s) from scvi_fit; do not give them", paste(given, collapse = ", ")),
                  "scvir_config_error")
    }
    src <- scvi_fit$source %||% list()
    batch_key <- scvi_fit$batch_key
    src_keys <- src[c("categorical_covariate_keys", "continuous_covariate_keys", "size_factor_key")]
    source <- src[intersect(c("assay", "layer"), names(src))]
  } else {
    batch_key <- dots$batch_key
    src_keys <- dots[intersect(keys[-1], names(dots))]
    source <- list()
  }
  dots[intersect(keys, names(dots))] <- NULL
  cov <- .metadata_covariates(meta, NULL, src_keys$categorical_covariate_keys,
                              src_keys$continuous_covariate_keys, src_keys$size_factor_key)
  list(scvi_fit = scvi_fit, batch = .metadata_column(meta, batch_key), batch_key = batch_key,
       cov = cov, dots = dots, source = c(source, list(batch_key = batch_key), src_keys))
}

# scvi_model() arguments reproducing a trained model's architecture.
.architecture_args <- function(config) {
  where <- function(enc, dec) {
    if (enc && dec) "both" else if (enc) "encoder" else if (dec) "decoder" else "none"
  }
  list(n_hidden = config$n_hidden, n_latent = config$n_latent, n_layers = config$n_layers,
       dropout_rate = config$dropout_rate, dispersion = config$dispersion,
       gene_likelihood = config$gene_likelihood,
       use_observed_lib_size = config$use_observed_lib_size,
       log_variational = config$log_variational, encode_covariates = config$encode_covariates,
       deeply_inject_covariates = config$deeply_inject_covariates,
       use_batch_norm = where(config$use_batch_norm_encoder, config$use_batch_norm_decoder),
       use_layer_norm = where(config$use_layer_norm_encoder, config$use_layer_norm_decoder),
       var_activation = config$var_activation, latent_distribution = config$latent_distribution,
       batch_representation = config$batch_representation,
       batch_embedding_dim = config$batch_embedding_dim)
}

.scanvi_core <- function(counts, labels, batch, batch_key, covariates, unlabeled_category,
                         scvi_fit, classification_ratio, y_prior, labels_groups,
                         use_labels_groups, linear_classifier, n_samples_per_label, max_epochs,
                         seed, n_threads, verbose, dots, source, keep_data = TRUE) {
  if (!is.character(unlabeled_category) || length(unlabeled_category) != 1 || is.na(unlabeled_category)) {
    scvir_abort(sprintf("unlabeled_category must be a single string; got %s",
                        .describe_value(unlabeled_category)), "scvir_config_error")
  }
  if (is.null(labels) || !is.null(dim(labels)) || !(is.atomic(labels) || is.factor(labels))) {
    scvir_abort(sprintf("labels must be a vector or factor with one label per cell; got %s",
                        .describe_value(labels)))
  }
  if (length(labels) != ncol(counts)) {
    scvir_abort(sprintf("labels has length %d but there are %d cells", length(labels), ncol(counts)))
  }
  labels <- as.character(labels)
  all_labelled <- .check_unlabeled_category(labels, unlabeled_category, colnames(counts))
  labels[is.na(labels)] <- unlabeled_category
  known <- sort(unique(labels[labels != unlabeled_category]))
  if (length(known) < 2) {
    scvir_abort(sprintf("scANVI needs at least 2 known labels besides \"%s\"; found %d",
                        unlabeled_category, length(known)))
  }
  scanvi_cfg <- list(n_labels = length(known),
                     linear_classifier = .check_flag(linear_classifier, "linear_classifier"),
                     y_prior = I(.scanvi_prior(y_prior, known)),
                     labels_groups = I(.scanvi_groups(labels_groups, known, use_labels_groups)),
                     use_labels_groups = .check_flag(use_labels_groups, "use_labels_groups"),
                     classification_ratio = .check_number(classification_ratio, "classification_ratio", 0),
                     n_samples_per_label = .check_count_arg(n_samples_per_label, "n_samples_per_label", null_ok = TRUE))
  args <- list(counts = counts, batch = batch, seed = seed, n_threads = n_threads,
               verbose = verbose, keep_data = keep_data,
               labels = factor(labels, levels = c(known, unlabeled_category)),
               categorical_covariates = covariates$categorical,
               continuous_covariates = covariates$continuous, size_factor = covariates$size_factor)
  init <- NULL
  n_cells <- ncol(counts)
  if (!is.null(scvi_fit)) {
    scvi_fit <- .fit_of(scvi_fit)
    if (!identical(scvi_fit$model_type, "SCVI")) {
      scvir_abort(sprintf("scvi_fit must be an SCVI model, not %s", scvi_fit$model_type))
    }
    arch <- intersect(c("n_hidden", "n_latent", "n_layers", "dropout_rate", "dispersion",
                        "gene_likelihood", "use_observed_lib_size", "log_variational",
                        "encode_covariates", "deeply_inject_covariates", "use_batch_norm",
                        "use_layer_norm", "var_activation", "latent_distribution",
                        "batch_representation", "batch_embedding_dim", "linear_decoder",
                        "n_top_genes", "features"), names(dots))
    if (length(arch)) {
      scvir_abort(sprintf("the architecture comes from scvi_fit; do not give %s", paste(arch, collapse = ", ")),
                  "scvir_config_error")
    }
    missing <- setdiff(scvi_fit$genes, .gene_names(counts))
    if (length(missing)) {
      scvir_abort(sprintf("the data lack %d of scvi_fit's genes (e.g. \"%s\")", length(missing), missing[1]))
    }
    if (length(scvi_fit$batches) > 1) {
      if (is.null(batch)) scvir_abort("scvi_fit was trained with batches; give the batch of each cell")
      unknown <- setdiff(unique(as.character(batch)), scvi_fit$batches)
      if (length(unknown)) scvir_abort(sprintf("batch \"%s\" is not a batch of scvi_fit", unknown[1]))
      args$batch <- factor(as.character(batch), levels = scvi_fit$batches)
    }
    args$counts <- counts[scvi_fit$genes, , drop = FALSE]
    args <- c(args, .architecture_args(scvi_fit$config), list(features = scvi_fit$genes))
    h <- .default_max_epochs(n_cells)
    max_epochs <- max_epochs %||% min(10L, max(2L, as.integer(round(h / 3))))
    init <- scvi_fit$model
  }
  args$max_epochs <- max_epochs
  clash <- intersect(names(dots), c(names(args), ".scanvi", ".init_model"))
  if (length(clash)) {
    scvir_abort(sprintf("%s cannot be given to scanvi() here: it is set from scanvi()'s own arguments or the object",
                        paste0("`", clash, "`", collapse = ", ")), "scvir_config_error")
  }
  .check_dots(dots, setdiff(names(formals(scvi_model)), c(".scanvi", ".init_model")), after = "object")
  if (all_labelled) {
    message(sprintf(paste("scanvi(): no cell has unlabeled_category \"%s\" (or NA): all %d cells are",
                          "labelled (%d labels), so every cell trains the classifier and predict()",
                          "re-predicts the label of every cell"),
                    unlabeled_category, n_cells, length(known)))
  }
  args <- c(args, dots)
  fit <- do.call(scvi_model, c(args, list(.scanvi = scanvi_cfg, .init_model = init)))
  stopifnot(identical(fit$known_labels, known))
  fit$unlabeled_category <- unlabeled_category
  fit$pretrained <- !is.null(scvi_fit)
  fit$batch_key <- batch_key
  if (!is.null(source)) fit$source <- source
  fit
}

# Whether every cell is labelled. Labels that look like the unlabelled marker spelt differently
# ("unknown" for "Unknown") would silently become a cell type: refused, as are empty labels.
.check_unlabeled_category <- function(labels, unlabeled_category, cells) {
  empty <- which(!is.na(labels) & !nzchar(labels))
  if (length(empty) && nzchar(unlabeled_category)) {
    scvir_abort(sprintf(paste("labels has %d empty (\"\") value(s) (e.g. cell \"%s\"); mark unlabelled",
                              "cells with NA or unlabeled_category (\"%s\")"),
                        length(empty), cells[empty[1]], unlabeled_category))
  }
  if (anyNA(labels) || unlabeled_category %in% labels) return(FALSE)
  norm <- function(x) tolower(gsub("[^[:alnum:]]", "", x))
  values <- unique(labels)
  markers <- c("unknown", "unlabeled", "unlabelled", "unassigned", "unannotated", "na", "nan",
               "none", "null", "missing", "")
  alike <- values[norm(values) == norm(unlabeled_category) | norm(values) %in% markers]
  if (length(alike)) {
    scvir_abort(sprintf(paste("no cell has unlabeled_category \"%s\", but labels has %s (%d cell(s)),",
                              "which would become a cell type of its own; set unlabeled_category =",
                              "\"%s\" if these cells are unlabelled"),
                        unlabeled_category, paste0("\"", alike, "\"", collapse = ", "),
                        sum(labels %in% alike), alike[1]))
  }
  TRUE
}

.scanvi_prior <- function(y_prior, known) {
  if (is.null(y_prior)) return(numeric())
  if (!is.numeric(y_prior) || length(y_prior) != length(known) || anyNA(y_prior) ||
      any(!is.finite(y_prior)) || any(y_prior <= 0)) {
    scvir_abort(sprintf("y_prior needs %d positive numbers, one per known label", length(known)),
                "scvir_config_error")
  }
  if (!is.null(names(y_prior))) {
    absent <- setdiff(names(y_prior), known)
    if (length(absent)) {
      scvir_abort(sprintf("y_prior names label \"%s\", which no cell has in training (labels: %s)",
                          absent[1], paste(known, collapse = ", ")), "scvir_config_error")
    }
    y_prior <- y_prior[known]
  }
  as.numeric(y_prior / sum(y_prior))
}

.scanvi_groups <- function(labels_groups, known, use) {
  if (!isTRUE(use)) {
    if (!is.null(labels_groups)) scvir_abort("labels_groups needs use_labels_groups = TRUE", "scvir_config_error")
    return(integer())
  }
  if (is.null(labels_groups)) scvir_abort("use_labels_groups = TRUE needs labels_groups", "scvir_config_error")
  absent <- setdiff(names(labels_groups), known)
  if (length(absent)) {
    scvir_abort(sprintf("labels_groups names label \"%s\", which no cell has in training (labels: %s)",
                        absent[1], paste(known, collapse = ", ")), "scvir_config_error")
  }
  if (is.null(names(labels_groups)) || !setequal(names(labels_groups), known) ||
      length(labels_groups) != length(known) || anyNA(labels_groups)) {
    scvir_abort(sprintf("labels_groups must name each known label once (labels: %s)",
                        paste(known, collapse = ", ")), "scvir_config_error")
  }
  groups <- as.character(labels_groups[known])
  as.integer(factor(groups, levels = unique(groups))) - 1L
}

#' Predict cell labels with a scANVI model
#'
#' scvi-tools' `predict()`: the classifier applied to the posterior mean of each cell's latent
#' representation.
#'
#' @param object A `scanvi_model`, or a Seurat / SingleCellExperiment object that [scanvi()] was
#'   run on.
#' @param newdata,batch,covariates,indices Other cells (as in [get_latent_representation()]).
#' @param soft Return the probability of every label instead of the most probable one.
#' @param use_posterior_mean Classify the posterior mean of z (scvi-tools' default) rather than
#'   one posterior sample.
#' @param batch_size Cells per minibatch.
#' @param n_threads Threads (`NULL`: the model's setting).
#' @param seed Seed of the posterior sample when `use_posterior_mean = FALSE`.
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @return A factor of labels (levels: the known labels), or with `soft = TRUE` a cells x labels
#'   matrix whose rows sum to 1.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' counts <- pbmc_small[["RNA"]]@counts
#' # pbmc_small's clusters as labels, ten of them hidden
#' labels <- as.character(pbmc_small$RNA_snn_res.1)
#' hidden <- seq(1, 80, by = 8)
#' labels[hidden] <- "Unknown"
#' fit <- scanvi(counts, labels = labels, max_epochs = 5, seed = 1, n_threads = 1,
#'               verbose = FALSE)
#' predict(fit, indices = hidden)
#' round(predict(fit, indices = hidden, soft = TRUE), 3)
#' # other cells, given as counts (here the same cells)
#' table(predict(fit, newdata = counts))
#' @export
predict.scanvi_model <- function(object, ..., newdata = NULL, batch = NULL, covariates = NULL,
                                 soft = FALSE, batch_size = 128L, indices = NULL,
                                 n_threads = NULL, use_posterior_mean = TRUE, seed = NULL) {
  .check_dots(list(...), formals(predict.scanvi_model), after = "object")
  .check_flag(soft, "soft")
  seed <- .check_seed(seed)
  d <- .query_data(object, newdata, batch, indices, covariates)
  p <- .engine(.rs_predict(object$model, .data_arg(d$counts, d$codes, d$cov),
                           .opts_arg(object, seed, batch_size, n_threads),
                           .check_flag(use_posterior_mean, "use_posterior_mean")))
  dimnames(p) <- list(colnames(d$counts), object$known_labels)
  if (soft) return(p)
  factor(object$known_labels[max.col(p, ties.method = "first")], levels = object$known_labels)
}

#' Predict cell labels with scANVI, from a model or an annotated object
#'
#' The labels (or label probabilities) that a scANVI model's classifier gives cells. For a
#' `scanvi_model` this is [predict()][predict.scanvi_model]. For a Seurat or SingleCellExperiment
#' object that [scanvi()] was run on, the object's cells are classified: their counts, batches and
#' covariates are read from the object as in training.
#'
#' @param object A `scanvi_model`, or a Seurat / SingleCellExperiment object that [scanvi()] was
#'   run on.
#' @param ... Passed to [predict.scanvi_model()]: `soft`, `use_posterior_mean`, `batch_size`,
#'   `n_threads`, `seed`, and for a model also `newdata`, `batch`, `covariates`, `indices`.
#' @return A factor of labels with one value per cell (levels: the known labels), or with
#'   `soft = TRUE` a cells x labels matrix of probabilities whose rows sum to 1.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' # pbmc_small's clusters as labels, ten of them hidden
#' masked <- as.character(pbmc_small$RNA_snn_res.1)
#' masked[seq(1, 80, by = 8)] <- "Unknown"
#' pbmc_small$masked <- masked
#' pbmc_small <- scvi(pbmc_small, use_highly_variable_genes = FALSE, max_epochs = 5,
#'                    seed = 1, n_threads = 1, verbose = FALSE)
#' pbmc_small <- scanvi(pbmc_small, labels_key = "masked", scvi_fit = pbmc_small,
#'                      max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' table(predict_labels(pbmc_small))
#' probs <- predict_labels(pbmc_small, soft = TRUE)
#' head(round(probs, 3))
#' # the confidence of each cell's annotation
#' pbmc_small$scanvi_confidence <- apply(probs, 1, max)
#' summary(pbmc_small$scanvi_confidence)
#' @importFrom stats predict
#' @export
predict_labels <- function(object, ...) {
  if (inherits(object, "scanvi_model")) return(predict(object, ...))
  if (inherits(object, "scvi_model")) {
    scvir_abort(sprintf("predict_labels() needs a scANVI model (scanvi_model), not an %s model (scvi_model)",
                        object$model_type %||% "SCVI"))
  }
  d <- if (inherits(object, "Seurat")) {
    .seurat_query_inputs(object, "scanvi")
  } else if (methods::is(object, "SingleCellExperiment")) {
    .sce_query_inputs(object, "scanvi")
  } else {
    scvir_abort(sprintf("expected a scanvi_model, a Seurat or a SingleCellExperiment object, not %s",
                        class(object)[1]))
  }
  given <- intersect(c("newdata", "batch", "covariates", "indices"), ...names())
  if (length(given)) {
    scvir_abort(sprintf(paste("%s: the cells of an object are its own; for other cells call",
                              "predict_labels() on the model (e.g. object@misc$scanvi)"),
                        paste(given, collapse = ", ")), "scvir_config_error")
  }
  predict(d$fit, newdata = d$counts[d$fit$genes, , drop = FALSE], batch = d$batch,
          covariates = d$covariates, ...)
}
