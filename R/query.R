# Queries on a trained model: latent representation and normalized expression.

# The model held by an object (an scvi_model, a Seurat or a SingleCellExperiment).
.fit_of <- function(x, which = "scvi") {
  if (inherits(x, "scvi_model")) return(x)
  fit <- NULL
  if (inherits(x, "Seurat")) fit <- x@misc[[which]]
  if (methods::is(x, "SingleCellExperiment")) fit <- S4Vectors::metadata(x)[[which]]
  if (is.null(fit)) {
    if (inherits(x, "Seurat") || methods::is(x, "SingleCellExperiment")) {
      scvir_abort(sprintf("this object holds no %s model; run %s() on it first",
                          if (which == "scanvi") "scANVI" else "scVI", which))
    }
    scvir_abort(sprintf("expected an scvi_model, a Seurat or a SingleCellExperiment object, not %s",
                        class(x)[1]))
  }
  fit
}

# Queries on a Seurat / SingleCellExperiment object run on the object's own cells.
.refuse_object_cells <- function(given, fun) {
  given <- intersect(c("newdata", "batch", "covariates"), given)
  if (length(given)) {
    scvir_abort(sprintf(paste("%s: the cells of an object are its own; for other cells call %s() on",
                              "the model (e.g. object@misc$scvi or metadata(sce)$scvi)"),
                        paste(given, collapse = ", "), fun), "scvir_config_error")
  }
}

# Counts (model genes, in model order) and 0-based batch codes for a query. A minified model
# without newdata answers from its stored latent posterior (the counts are then an empty matrix).
.query_data <- function(fit, newdata = NULL, batch = NULL, indices = NULL, covariates = NULL) {
  latent <- NULL
  if (is.null(newdata)) {
    if (!is.null(fit$minified)) {
      m <- fit$minified
      counts <- Matrix::sparseMatrix(i = integer(), j = integer(), x = numeric(),
                                     dims = c(length(fit$genes), length(m$cells)),
                                     dimnames = list(fit$genes, m$cells))
      latent <- list(mean = m$mean, var = m$var, library = as.double(m$library))
    } else if (is.null(fit$data) || is.null(fit$data$counts)) {
      scvir_abort("this model keeps no data (keep_data = FALSE or loaded without data); pass newdata")
    } else {
      counts <- fit$data$counts
    }
    batch <- fit$data$batch
    covariates <- covariates %||% fit$data$covariates
  } else if (.is_backed(newdata <- .as_backed_input(newdata))) {
    # Counts on disk: the model's genes are a view of the file; batch may name an obs column.
    missing <- setdiff(fit$genes, .gene_names(newdata))
    if (length(missing)) {
      scvir_abort(sprintf("newdata (%s) lacks %d of the model's %d genes (e.g. %s)", newdata$path,
                          length(missing), length(fit$genes),
                          paste0("\"", utils::head(missing, 3), "\"", collapse = ", ")))
    }
    counts <- newdata[fit$genes, ]
    batch <- .obs_or_values(counts, batch, "batch")
  } else {
    counts <- .check_counts(.as_dgc(newdata, "newdata"), "newdata")
    missing <- setdiff(fit$genes, rownames(counts))
    # A query model maps cells lacking some reference genes as zero counts (prepare_query()).
    filled <- intersect(missing, fit$zero_filled_genes)
    if (length(filled)) {
      counts <- suppressMessages(.prepare_counts(counts[intersect(rownames(counts), fit$genes), , drop = FALSE],
                                                 fit$genes, "newdata"))
      missing <- setdiff(missing, filled)
    }
    if (length(missing)) {
      scvir_abort(sprintf(paste("newdata lacks %d of the model's %d genes (e.g. %s); it must contain",
                                "every gene the model was trained on"),
                          length(missing), length(fit$genes),
                          paste0("\"", utils::head(missing, 3), "\"", collapse = ", ")))
    }
    if (!identical(rownames(counts), fit$genes)) counts <- counts[fit$genes, , drop = FALSE]
  }
  codes <- .batch_codes(fit, batch, ncol(counts))
  cov <- .encode_covariates(covariates, ncol(counts), fit)$engine
  cov$latent <- latent
  if (!is.null(indices)) {
    if (is.logical(indices)) {
      if (length(indices) != ncol(counts)) scvir_abort("a logical indices vector needs one value per cell")
      indices <- which(indices)
    }
    if (!is.numeric(indices) || anyNA(indices) || any(indices < 1 | indices > ncol(counts) | indices != round(indices))) {
      scvir_abort(sprintf("indices must be cell positions between 1 and %d", ncol(counts)))
    }
    if (!length(indices)) scvir_abort("indices selects no cells")
    counts <- counts[, indices, drop = FALSE]
    codes <- codes[indices]
    cov <- .subset_covariates(cov, indices)
  }
  list(counts = counts, codes = codes, cov = cov)
}

.batch_codes <- function(fit, batch, n_cells) {
  if (length(fit$batches) <= 1) return(integer(n_cells))
  if (is.null(batch)) {
    scvir_abort(sprintf("the model was trained with %d batches; give the batch of each cell",
                        length(fit$batches)))
  }
  if (length(batch) != n_cells) scvir_abort("batch must have one value per cell")
  codes <- match(as.character(batch), fit$batches)
  if (anyNA(codes)) {
    unknown <- unique(as.character(batch)[is.na(codes)])
    scvir_abort(sprintf("batch %s not seen in training (known: %s)",
                        paste0("\"", utils::head(unknown, 3), "\"", collapse = ", "),
                        paste(utils::head(fit$batches, 10), collapse = ", ")))
  }
  codes - 1L
}

# Queries run where training ran when possible: on the CPU when the model was trained there by
# request, else wherever "auto" finds (so a GPU-trained model still answers on a CPU machine).
.query_accelerator <- function(fit) if (identical(fit$accelerator, "cpu")) "cpu" else "auto"

.latent_colnames <- function(n) paste0("scvi_", seq_len(n))

#' Latent representation of cells
#'
#' The posterior mean (or one sample) of each cell's latent variable z, as scvi-tools'
#' `get_latent_representation()`. For a logistic-normal latent (`latent_distribution = "ln"`)
#' the mean is a Monte Carlo average of `mc_samples` softmax-transformed samples.
#'
#' @param object An `scvi_model`, or a Seurat / SingleCellExperiment object on which [scvi()] ran.
#' @param newdata Optional counts (genes x cells) to embed instead of the training data; must
#'   contain every gene of the model.
#' @param batch Batch of each cell of `newdata` (needed when the model has batches).
#' @param give_mean `TRUE` for the posterior mean, `FALSE` for one posterior sample.
#' @param mc_samples Samples for the logistic-normal mean.
#' @param return_dist Return the Gaussian posterior itself: `list(mean = , var = )`, both
#'   cells x n_latent (untransformed for a logistic-normal latent).
#' @param batch_size Cells per minibatch.
#' @param seed Seed for the sample when `give_mean = FALSE` (default: the model's seed).
#' @param n_threads CPU threads (default: the model's).
#' @param indices Cells to use (positions or a logical vector over the data's cells).
#' @param covariates For `newdata` of a model trained with covariates: `list(labels = ,
#'   categorical = , continuous = , size_factor = )` with the cells' values (as given to
#'   [scvi_model()]); objects supply them from their metadata.
#' @param ... For Seurat and SingleCellExperiment objects, arguments of the `scvi_model` method
#'   (all but `newdata`, `batch` and `covariates`: an object's cells are its own). Arguments after
#'   `object` match by their full names only; an unknown or abbreviated name is a
#'   `scvir_config_error` that names the closest arguments.
#' @return A cells x n_latent matrix (row names: cells).
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' z <- get_latent_representation(fit)
#' dim(z)
#' # one posterior sample instead of the mean, for the first five cells
#' get_latent_representation(fit, give_mean = FALSE, indices = 1:5)
#' # new cells: here the training cells themselves, given as counts
#' head(get_latent_representation(fit, newdata = pbmc_small[["RNA"]]@counts))
#' @export
get_latent_representation <- function(object, ...) UseMethod("get_latent_representation")

#' @rdname get_latent_representation
#' @export
get_latent_representation.scvi_model <- function(object, ..., newdata = NULL, batch = NULL,
                                                 give_mean = TRUE, mc_samples = 5000L,
                                                 return_dist = FALSE, batch_size = 128L,
                                                 seed = NULL, n_threads = NULL, indices = NULL,
                                                 covariates = NULL) {
  .check_dots(list(...), formals(get_latent_representation.scvi_model), after = "object")
  give_mean <- .check_flag(give_mean, "give_mean")
  return_dist <- .check_flag(return_dist, "return_dist")
  mc_samples <- .check_count_arg(mc_samples, "mc_samples")
  seed <- .check_seed(seed)
  d <- .query_data(object, newdata, batch, indices, covariates)
  what <- if (isTRUE(return_dist)) "dist" else if (isTRUE(give_mean)) "mean" else "sample"
  res <- .engine(.rs_latent(object$model, .data_arg(d$counts, d$codes, d$cov),
                            .opts_arg(object, seed, batch_size, n_threads), what,
                            .check_count_arg(mc_samples, "mc_samples")))
  names <- list(colnames(d$counts), .latent_colnames(ncol(res$z)))
  dimnames(res$z) <- names
  if (isTRUE(return_dist)) {
    dimnames(res$var) <- names
    return(list(mean = res$z, var = res$var))
  }
  res$z
}

#' @rdname get_latent_representation
#' @export
get_latent_representation.Seurat <- function(object, ...) {
  .refuse_object_cells(...names(), "get_latent_representation")
  d <- .seurat_query_inputs(object)
  get_latent_representation(d$fit, newdata = d$counts, batch = d$batch, covariates = d$covariates, ...)
}

#' @rdname get_latent_representation
#' @export
get_latent_representation.SingleCellExperiment <- function(object, ...) {
  .refuse_object_cells(...names(), "get_latent_representation")
  d <- .sce_query_inputs(object)
  get_latent_representation(d$fit, newdata = d$counts, batch = d$batch, covariates = d$covariates, ...)
}

#' Normalized (denoised) expression
#'
#' Expected expression of each gene in each cell under the model, `px_scale * library_size`,
#' from posterior samples of z (as scvi-tools, even a single sample is a draw from the
#' posterior, so `seed` fixes it). Note the orientation: genes x cells, the R convention
#' (scvi-tools returns cells x genes).
#'
#' @inheritParams get_latent_representation
#' @param transform_batch Decode every cell as if it came from this batch, or from each of
#'   several batches with the results averaged; `NULL` uses each cell's own batch.
#' @param gene_list Genes to return (default: all model genes).
#' @param library_size Library size the proportions are scaled to (1 gives proportions), or
#'   `"latent"` for the model's own library (the expected counts).
#' @param n_samples Posterior samples per cell.
#' @param n_samples_overall Instead of per-cell values, this many draws, each the expression of
#'   a cell chosen at random (with replacement) in one posterior sample; columns are named by
#'   the cell drawn. Needs `n_samples = 1`.
#' @param return_mean Average over the `n_samples` samples (`FALSE`: an array genes x cells x
#'   samples).
#' @param weights With `n_samples_overall`: draw the samples uniformly (`"uniform"`) or with
#'   lvm-DE's importance weights (`"importance"`, see [differential_expression()]); a single
#'   `transform_batch` at most, as in scvi-tools. With counts on disk, importance weighting
#'   reads the cells into memory (sparse, the model's genes): less than the dense samples it
#'   returns.
#' @param importance_weighting_kwargs lvm-DE options (see [differential_expression()]).
#' @return A genes x cells matrix (see `return_mean` and `n_samples_overall` for the others).
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' # expected counts per 10,000 (genes x cells)
#' expr <- get_normalized_expression(fit, library_size = 1e4)
#' expr[c("MS4A1", "CD79A", "GNLY"), 1:4]
#' # the mean of 10 posterior samples, for two genes
#' get_normalized_expression(fit, gene_list = c("MS4A1", "GNLY"), n_samples = 10)[, 1:4]
#' @export
get_normalized_expression <- function(object, ...) UseMethod("get_normalized_expression")

#' @rdname get_normalized_expression
#' @export
get_normalized_expression.scvi_model <- function(object, ..., newdata = NULL, batch = NULL,
                                                 transform_batch = NULL, gene_list = NULL,
                                                 library_size = 1, n_samples = 1L,
                                                 n_samples_overall = NULL, return_mean = TRUE,
                                                 batch_size = 128L, seed = NULL,
                                                 n_threads = NULL, indices = NULL,
                                                 covariates = NULL, weights = "uniform",
                                                 importance_weighting_kwargs = list()) {
  .check_dots(list(...), formals(get_normalized_expression.scvi_model), after = "object")
  weights <- .check_choice(weights %||% "uniform", c("uniform", "importance"), "weights")
  importance <- .importance_json(weights, importance_weighting_kwargs)
  return_mean <- .check_flag(return_mean, "return_mean")
  seed <- .check_seed(seed)
  lib <- if (identical(library_size, "latent")) -1 else {
    if (is.character(library_size)) {
      scvir_abort(sprintf("library_size must be a positive number or \"latent\"; got %s",
                          .describe_value(library_size)), "scvir_config_error")
    }
    .check_scale(library_size, "library_size")
  }
  n_samples <- .check_count_arg(n_samples, "n_samples")
  n_samples_overall <- .check_count_arg(n_samples_overall, "n_samples_overall", null_ok = TRUE)
  d <- .query_data(object, newdata, batch, indices, covariates)
  tb <- integer()
  if (!is.null(transform_batch)) {
    tb <- match(as.character(transform_batch), object$batches) - 1L
    if (anyNA(tb)) {
      scvir_abort(sprintf("transform_batch \"%s\" is not a batch of the model (batches: %s)",
                          as.character(transform_batch)[is.na(tb)][1],
                          paste(object$batches, collapse = ", ")))
    }
  }
  if (!is.null(gene_list)) {
    unknown <- setdiff(gene_list, object$genes)
    if (length(unknown)) {
      scvir_abort(sprintf("gene_list has %d gene(s) the model does not know (e.g. \"%s\")",
                          length(unknown), unknown[1]))
    }
  }
  opts <- .opts_arg(object, seed, batch_size, n_threads)
  if (nzchar(importance)) {
    if (is.null(n_samples_overall)) {
      scvir_abort("weights = \"importance\" weighs the draws of n_samples_overall; give n_samples_overall",
                  "scvir_config_error")
    }
    if (length(tb) > 1) {
      scvir_abort("importance weights cannot be computed when expression is averaged over several transform_batch values (as in scvi-tools)",
                  "scvir_config_error")
    }
    if (!is.null(d$cov$latent)) .refuse_minified(object, "weights = \"importance\"")
    if (.is_backed(d$counts)) {
      # Counts on disk: the cells are read into memory (as the model's genes, sparse), no more
      # than the n_samples_overall x genes samples this returns; the engine draws from them.
      d$counts <- d$counts[, seq_len(ncol(d$counts))]
    }
    r <- .engine(.rs_weighted_expression(object$model, .data_arg(d$counts, d$codes, d$cov), opts,
                                         if (length(tb)) tb else -1L, n_samples_overall, lib, importance))
    genes <- object$genes
    m <- matrix(r$values, nrow = length(genes), dimnames = list(genes, colnames(d$counts)[r$cells + 1L]))
    keep <- if (is.null(gene_list)) seq_along(genes) else match(gene_list, genes)
    return(m[keep, , drop = FALSE])
  }
  if (!is.null(n_samples_overall)) {
    if (n_samples != 1) scvir_abort("n_samples_overall needs n_samples = 1")
    n_samples <- n_samples_overall %/% ncol(d$counts) + 1L
    return_mean <- FALSE
  }
  e <- .engine(.rs_normalized_expression(object$model, .data_arg(d$counts, d$codes, d$cov), opts,
                                         tb, lib, n_samples, isTRUE(return_mean)))
  genes <- object$genes
  keep <- if (is.null(gene_list)) seq_along(genes) else match(gene_list, genes)
  mats <- lapply(e, function(v) {
    m <- matrix(v, nrow = length(genes), dimnames = list(genes, colnames(d$counts)))
    m[keep, , drop = FALSE]
  })
  if (!is.null(n_samples_overall)) {
    all <- do.call(cbind, mats)
    pick <- .with_seed(opts$seed, sample.int(ncol(all), n_samples_overall, replace = TRUE))
    return(all[, pick, drop = FALSE])
  }
  if (length(mats) == 1) return(mats[[1]])
  array(unlist(mats), dim = c(length(keep), ncol(d$counts), length(mats)),
        dimnames = list(genes[keep], colnames(d$counts), NULL))
}

# Evaluates expr with R's RNG seeded, leaving the user's RNG state as it was.
.with_seed <- function(seed, expr) {
  old <- if (exists(".Random.seed", globalenv())) get(".Random.seed", globalenv()) else NULL
  on.exit(if (is.null(old)) rm(".Random.seed", envir = globalenv()) else assign(".Random.seed", old, globalenv()))
  set.seed(seed %% .Machine$integer.max)
  expr
}

#' @rdname get_normalized_expression
#' @export
get_normalized_expression.Seurat <- function(object, ...) {
  .refuse_object_cells(...names(), "get_normalized_expression")
  d <- .seurat_query_inputs(object)
  get_normalized_expression(d$fit, newdata = d$counts, batch = d$batch, covariates = d$covariates, ...)
}

#' @rdname get_normalized_expression
#' @export
get_normalized_expression.SingleCellExperiment <- function(object, ...) {
  .refuse_object_cells(...names(), "get_normalized_expression")
  d <- .sce_query_inputs(object)
  get_normalized_expression(d$fit, newdata = d$counts, batch = d$batch, covariates = d$covariates, ...)
}
