# Covariates besides the batch: labels (for gene-label dispersion), extra categorical and
# continuous covariates, size factors. At training time they are encoded and their categories
# recorded in the model; later calls map new values onto those categories.

# Raw per-cell covariates -> what the engine takes (0-based codes, doubles) and the registry.
# `fit` NULL: training (categories are learnt); else values are mapped onto fit's categories.
.encode_covariates <- function(cov, n_cells, fit = NULL) {
  cov <- cov %||% list()
  unknown <- setdiff(names(cov), c("labels", "categorical", "continuous", "size_factor"))
  if (length(unknown)) scvir_abort(sprintf("unknown covariate field(s): %s", paste(unknown, collapse = ", ")))
  training <- is.null(fit)
  need <- function(what, present) {
    if (!training && present && is.null(cov[[what]])) {
      scvir_abort(sprintf("the model was trained with %s; give them for these cells (covariates = list(%s = ...))",
                          what, what))
    }
  }
  # scANVI uses labels only to train; queries ignore them (new cells are unlabelled).
  if (inherits(fit, "scanvi_model")) cov$labels <- NULL
  need("labels", length(fit$labels) > 0 && !inherits(fit, "scanvi_model"))
  need("categorical", length(fit$categorical_covariates) > 0)
  need("continuous", length(fit$continuous_covariates) > 0)
  need("size_factor", isTRUE(fit$uses_size_factor))
  per_cell <- function(x, what) {
    if (length(x) != n_cells) scvir_abort(sprintf("%s has length %d but there are %d cells", what, length(x), n_cells))
    if (anyNA(x)) {
      scvir_abort(sprintf("%s has %d missing (NA) value(s) (first for cell %d); give every cell a value",
                          what, sum(is.na(x)), which(is.na(x))[1]))
    }
    x
  }
  codes_for <- function(x, levels, what) {
    x <- as.character(per_cell(x, what))
    codes <- match(x, levels)
    if (anyNA(codes)) {
      scvir_abort(sprintf("%s has value(s) not seen in training (e.g. \"%s\"; known: %s)", what,
                          x[is.na(codes)][1], paste(utils::head(levels, 10), collapse = ", ")))
    }
    codes - 1L
  }
  out <- list(engine = list(labels = NULL, categorical = list(), continuous = list(), size_factor = NULL),
              registry = list(labels = character(), categorical = list(), continuous = character(),
                              size_factor = FALSE))
  if (!is.null(cov$labels) && (training || length(fit$labels))) {
    levels <- if (training) levels(droplevels(as.factor(per_cell(cov$labels, "labels")))) else fit$labels
    out$engine$labels <- codes_for(cov$labels, levels, "labels")
    out$registry$labels <- levels
  }
  named <- function(x) {
    n <- if (is.matrix(x)) colnames(x) else names(x)
    !is.null(n) && all(n != "")
  }
  if (!is.null(cov$categorical)) {
    if (!named(cov$categorical)) scvir_abort("categorical covariates need names")
    cats <- as.list(as.data.frame(cov$categorical, stringsAsFactors = FALSE, optional = TRUE))
    keys <- if (training) names(cats) else names(fit$categorical_covariates)
    missing <- setdiff(keys, names(cats))
    if (length(missing)) scvir_abort(sprintf("categorical covariate \"%s\" is missing", missing[1]))
    for (k in keys) {
      levels <- if (training) levels(droplevels(as.factor(per_cell(cats[[k]], sprintf("categorical covariate \"%s\"", k))))) else fit$categorical_covariates[[k]]
      out$engine$categorical[[k]] <- codes_for(cats[[k]], levels, sprintf("categorical covariate \"%s\"", k))
      out$registry$categorical[[k]] <- levels
    }
  }
  if (!is.null(cov$continuous)) {
    if (!named(cov$continuous)) scvir_abort("continuous covariates need names")
    conts <- as.list(as.data.frame(cov$continuous, optional = TRUE))
    keys <- if (training) names(conts) else fit$continuous_covariates
    missing <- setdiff(keys, names(conts))
    if (length(missing)) scvir_abort(sprintf("continuous covariate \"%s\" is missing", missing[1]))
    for (k in keys) {
      v <- per_cell(conts[[k]], sprintf("continuous covariate \"%s\"", k))
      if (!is.numeric(v)) scvir_abort(sprintf("continuous covariate \"%s\" is not numeric (%s)", k, class(v)[1]))
      bad <- which(!is.finite(v))
      if (length(bad)) {
        scvir_abort(sprintf("continuous covariate \"%s\" has %d non-finite value(s) (first: %s for cell %d)",
                            k, length(bad), format(v[bad[1]]), bad[1]))
      }
      bad <- which(abs(v) > .float32_max)
      if (length(bad)) {
        scvir_abort(sprintf(paste("continuous covariate \"%s\" has %d value(s) beyond the range of 32-bit",
                                  "floats (+/-3.4e38; first: %s for cell %d); rescale it"),
                            k, length(bad), format(v[bad[1]]), bad[1]))
      }
      out$engine$continuous[[k]] <- as.double(v)
    }
    out$registry$continuous <- keys
  }
  if (!is.null(cov$size_factor) && (training || isTRUE(fit$uses_size_factor))) {
    s <- per_cell(cov$size_factor, "size_factor")
    if (!is.numeric(s) || any(!is.finite(s) | s <= 0 | s > .float32_max)) {
      bad <- if (is.numeric(s)) which(!is.finite(s) | s <= 0 | s > .float32_max)[1]
      scvir_abort(sprintf("size factors must be positive finite numbers within 32-bit floats (at most 3.4e38)%s",
                          if (length(bad)) sprintf("; cell %d has %s", bad, format(s[bad])) else
                            sprintf("; got %s", class(s)[1])))
    }
    out$engine$size_factor <- as.double(s)
    out$registry$size_factor <- TRUE
  }
  out$engine$categorical <- unname(out$engine$categorical)
  out$engine$continuous <- unname(out$engine$continuous)
  out
}

# Subsets encoded covariates to cells.
.subset_covariates <- function(engine_cov, idx) {
  list(labels = if (!is.null(engine_cov$labels)) engine_cov$labels[idx],
       categorical = lapply(engine_cov$categorical, `[`, idx),
       continuous = lapply(engine_cov$continuous, `[`, idx),
       size_factor = if (!is.null(engine_cov$size_factor)) engine_cov$size_factor[idx],
       latent = if (!is.null(engine_cov$latent)) {
         l <- engine_cov$latent
         list(mean = l$mean[idx, , drop = FALSE], var = l$var[idx, , drop = FALSE], library = l$library[idx])
       })
}

# Covariates of an object's cells from its metadata columns.
.metadata_covariates <- function(df, labels_key = NULL, categorical_covariate_keys = NULL,
                                 continuous_covariate_keys = NULL, size_factor_key = NULL) {
  cols <- function(keys, what) stats::setNames(lapply(keys, .metadata_column, df = df, what = what), keys)
  list(labels = if (!is.null(labels_key)) .metadata_column(df, labels_key, "labels_key"),
       categorical = if (length(categorical_covariate_keys)) cols(categorical_covariate_keys, "categorical_covariate_keys"),
       continuous = if (length(continuous_covariate_keys)) cols(continuous_covariate_keys, "continuous_covariate_keys"),
       size_factor = if (!is.null(size_factor_key)) .metadata_column(df, size_factor_key, "size_factor_key"))
}

# Covariates of an object's cells for the keys its model was trained with.
.source_covariates <- function(df, src) {
  src <- src %||% list()
  .metadata_covariates(df, src$labels_key, src$categorical_covariate_keys,
                       src$continuous_covariate_keys, src$size_factor_key)
}
