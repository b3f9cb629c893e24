# What a model was set up with (scvi-tools' `view_setup_args()` / `view_anndata_setup()`):
# genes, batch, labels and covariates with their categories, read from a model, an object
# holding one, or a saved model directory without building the model.

#' What a model was set up with
#'
#' scvi-tools' `view_setup_args()` and `view_anndata_setup()`: the genes (in the model's order),
#' the batch, label and covariate keys with their categories, and where the data came from.
#' A new query must match them: the same genes (see [prepare_query()]), batches and covariate
#' categories seen in training.
#'
#' `load_registry()` reads the same from a directory written by [save_model()] without building
#' the model: only the header of `model.scvir` is parsed. It needs no `fit.rds`; when that file is
#' there (and belongs to the same save), the keys recorded on the R side (`source`, the batch key
#' of an object's model, scANVI's `unlabeled_category`) are read from it too.
#'
#' @param object An `scvi_model`, a Seurat / SingleCellExperiment object holding one, or the
#'   path of a directory written by [save_model()].
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param which For Seurat / SingleCellExperiment objects, which of their models to describe:
#'   `"scvi"` or `"scanvi"`.
#' @param dir Directory written by [save_model()].
#' @param x A `scvir_setup_args` object.
#' @return `setup_args()` and `load_registry()`: an object of class `scvir_setup_args`, a list
#'   with `model_type` (`"SCVI"`, `"LDVAE"` or `"SCANVI"`), `genes`, `batch_key` (`NULL` when the
#'   batch was given as a vector, or there is none), `batches` (a single `"0"` without batches, as
#'   in scvi-tools), `labels_key`, `labels` (every label category, for scANVI the known ones
#'   followed by the unlabelled category when cells had it), `unlabeled_category` (scANVI only,
#'   else `NULL`), `categorical_covariates` (a named list: key -> categories),
#'   `continuous_covariates`, `size_factor_key`, `source` (where an object's model read its
#'   data: type, assay, layer and metadata keys; `NULL` for a model fitted on a matrix),
#'   `n_cells_fitted` and `engine_version`. `print()`: `x`, invisibly.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, batch = pbmc_small$groups, max_epochs = 5,
#'                   seed = 1, n_threads = 1, verbose = FALSE)
#' args <- setup_args(fit)
#' args
#' head(args$genes)
#' # the same from a saved model, without loading it
#' dir <- tempfile("scvi_model_")
#' save_model(fit, dir)
#' load_registry(dir)
#' identical(load_registry(dir)$genes, fit$genes)
#' unlink(dir, recursive = TRUE)
#' @export
setup_args <- function(object, ...) UseMethod("setup_args")

#' @rdname setup_args
#' @export
setup_args.scvi_model <- function(object, ...) {
  .check_dots(list(...), character(), after = "object")
  .setup_args_of_fit(object)
}

#' @rdname setup_args
#' @export
setup_args.Seurat <- function(object, ..., which = "scvi") {
  .check_dots(list(...), formals(setup_args.Seurat), after = "object")
  which <- .check_choice(which, c("scvi", "scanvi"), "which")
  .setup_args_of_fit(.fit_of(object, which))
}

#' @rdname setup_args
#' @export
setup_args.SingleCellExperiment <- function(object, ..., which = "scvi") {
  .check_dots(list(...), formals(setup_args.SingleCellExperiment), after = "object")
  which <- .check_choice(which, c("scvi", "scanvi"), "which")
  .setup_args_of_fit(.fit_of(object, which))
}

#' @rdname setup_args
#' @export
setup_args.character <- function(object, ...) {
  .check_dots(list(...), character(), after = "object")
  load_registry(object)
}

#' @rdname setup_args
#' @export
setup_args.default <- function(object, ...) {
  scvir_abort(sprintf(paste("setup_args() needs an scvi_model, a Seurat or SingleCellExperiment",
                            "object holding one, or a directory written by save_model(); got %s"),
                      .describe_value(object)))
}

#' @rdname setup_args
#' @export
load_registry <- function(dir) {
  dir <- .check_path(dir, "dir")
  if (!dir.exists(dir)) {
    scvir_abort(sprintf("no saved model in %s: %s; give a directory written by save_model()", dir,
                        if (file.exists(dir)) "it is a file, not a directory" else "no such directory"))
  }
  path <- file.path(dir, "model.scvir")
  if (!file.exists(path)) {
    scvir_abort(sprintf("no saved model in %s: %s does not exist; give a directory written by save_model()",
                        dir, path))
  }
  bytes <- .read_bytes(path)
  header <- .engine(.rs_model_meta(bytes))
  # Unsimplified, as .new_fit() reads it: covariate categories are [key, [categories]] pairs.
  meta <- jsonlite::fromJSON(header, simplifyVector = FALSE)
  reg <- meta$registry %||% list()
  r_side <- .registry_record(dir, bytes)
  labels <- .as_names(reg$labels)
  unlabeled <- NULL
  if (identical(meta$model, "SCANVI")) {
    # Label codes 0..n-1 are the known labels; the unlabelled category, if any cell had it, follows.
    n_known <- as.integer(meta$vae$scanvi$n_labels %||% length(labels))
    unlabeled <- r_side$unlabeled_category %||%
      if (length(labels) > n_known) labels[n_known + 1L] else NA_character_
  }
  source <- r_side$source
  out <- .new_setup_args(
    model_type = meta$model,
    genes = reg$genes,
    batch_key = r_side$batch_key %||% source$batch_key %||% reg$batch_key,
    batches = reg$batches,
    labels_key = .source_labels_key(source) %||% reg$labels_key,
    labels = labels,
    unlabeled_category = unlabeled,
    categorical_covariates = stats::setNames(
      lapply(reg$categorical_covariates, function(x) .as_names(x[[2]])),
      vapply(reg$categorical_covariates, function(x) as.character(x[[1]]), "")),
    continuous_covariates = reg$continuous_covariates,
    size_factor_key = source$size_factor_key %||% reg$size_factor_key,
    source = source,
    n_cells_fitted = reg$n_cells_fitted %||% NA_integer_,
    engine_version = meta$engine_version)
  if (!length(r_side)) attr(out, "no_record") <- TRUE
  out
}

# The setup of an scvi_model.
.setup_args_of_fit <- function(fit) {
  src <- fit$source
  .new_setup_args(
    model_type = fit$model_type,
    genes = fit$genes,
    batch_key = fit$batch_key,
    batches = fit$batches,
    labels_key = .source_labels_key(src),
    labels = fit$labels,
    unlabeled_category = if (inherits(fit, "scanvi_model")) fit$unlabeled_category %||% NA_character_,
    categorical_covariates = fit$categorical_covariates,
    continuous_covariates = fit$continuous_covariates,
    size_factor_key = src$size_factor_key,
    source = src,
    n_cells_fitted = .fit_n_cells(fit),
    engine_version = fit$engine_version)
}

# One shape whatever the origin: character vectors (possibly empty), NULL for absent keys.
.new_setup_args <- function(model_type, genes, batch_key, batches, labels_key, labels,
                            unlabeled_category, categorical_covariates, continuous_covariates,
                            size_factor_key, source, n_cells_fitted, engine_version) {
  key <- function(k) {
    k <- unlist(k)
    if (is.null(k) || !length(k) || is.na(k[1]) || !nzchar(k[1])) NULL else as.character(k[1])
  }
  cats <- categorical_covariates %||% list()
  cats <- stats::setNames(lapply(cats, .as_names), names(cats) %||% character(length(cats)))
  structure(list(
    model_type = as.character(unlist(model_type) %||% NA_character_),
    genes = .as_names(genes),
    batch_key = key(batch_key),
    batches = .as_names(batches),
    labels_key = key(labels_key),
    labels = .as_names(labels),
    unlabeled_category = if (!is.null(unlabeled_category)) as.character(unlabeled_category),
    categorical_covariates = cats,
    continuous_covariates = .as_names(continuous_covariates),
    size_factor_key = key(size_factor_key),
    source = source,
    n_cells_fitted = as.integer(unlist(n_cells_fitted) %||% NA_integer_),
    engine_version = as.character(unlist(engine_version) %||% NA_character_)
  ), class = "scvir_setup_args")
}

# A list or vector of names (JSON arrays arrive as lists) as a character vector.
.as_names <- function(x) as.character(unlist(x) %||% character())

# The labels' metadata column: scVI's labels_key, or the column scANVI read its labels from.
.source_labels_key <- function(src) src$labels_key %||% src$scanvi_labels_key

# The R-side record of a saved model (fit.rds), when it is there, readable and written by the
# same save as the model file; otherwise an empty list (the model file alone is enough).
.registry_record <- function(dir, bytes) {
  r_path <- file.path(dir, "fit.rds")
  if (!file.exists(r_path)) return(list())
  r_side <- tryCatch(readRDS(r_path), error = function(e) NULL, warning = function(w) NULL)
  if (!is.list(r_side)) return(list())
  if (!is.null(r_side$model_md5) && !identical(.bytes_md5(bytes), r_side$model_md5)) {
    warning(sprintf("%s comes from a different save than %s; its record is ignored", r_path,
                    file.path(dir, "model.scvir")), call. = FALSE)
    return(list())
  }
  r_side
}

#' @rdname setup_args
#' @method print scvir_setup_args
#' @export
print.scvir_setup_args <- function(x, ...) {
  some <- function(v, n = 5) {
    v <- as.character(v)
    paste0(paste(utils::head(v, n), collapse = ", "), if (length(v) > n) ", ..." else "")
  }
  keyed <- function(k) if (is.null(k)) "" else sprintf("\"%s\" with ", k)
  cat(sprintf("%s model setup (scviR %s), fitted on %s cells\n", x$model_type, x$engine_version,
              if (is.na(x$n_cells_fitted)) "an unknown number of" else format(x$n_cells_fitted)))
  cat(sprintf("  genes:       %d (%s)\n", length(x$genes), some(x$genes)))
  if (length(x$batches) > 1 || !is.null(x$batch_key)) {
    cat(sprintf("  batch:       %s%d categories (%s)\n", keyed(x$batch_key),
                length(x$batches), some(x$batches)))
  } else {
    cat("  batch:       none\n")
  }
  if (length(x$labels)) {
    cat(sprintf("  labels:      %s%d categories (%s)\n", keyed(x$labels_key),
                length(x$labels), some(x$labels)))
  } else {
    cat("  labels:      none\n")
  }
  if (!is.null(x$unlabeled_category)) {
    cat(sprintf("  unlabelled:  \"%s\"\n", x$unlabeled_category))
  }
  for (k in names(x$categorical_covariates)) {
    v <- x$categorical_covariates[[k]]
    cat(sprintf("  categorical covariate \"%s\": %d categories (%s)\n", k, length(v), some(v)))
  }
  if (length(x$continuous_covariates)) {
    cat(sprintf("  continuous covariates: %s\n", some(x$continuous_covariates, 10)))
  }
  if (!is.null(x$size_factor_key)) cat(sprintf("  size factor: \"%s\"\n", x$size_factor_key))
  src <- x$source
  where <- if (isTRUE(attr(x, "no_record"))) {
    "unknown (the saved model has no fit.rds, the R-side record of its keys)"
  } else if (is.null(src$type)) {
    "a count matrix (scvi_model())"
  } else {
    paste0(src$type, " object",
           if (!is.null(src$assay)) sprintf(", assay \"%s\"", src$assay) else "",
           if (!is.null(src$layer)) sprintf(", layer \"%s\"", src$layer) else "")
  }
  cat(sprintf("  set up from: %s\n", where))
  invisible(x)
}
