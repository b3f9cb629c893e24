# Minified models (scvi-tools' minify_adata, type "latent_posterior_parameters"): each cell's
# posterior q(z | x) and observed library size replace its counts.

#' Minify a model or an object: keep the latent posterior, drop the counts
#'
#' As scvi-tools' `minify_adata()` (type `"latent_posterior_parameters"`): the model keeps each
#' cell's posterior means and variances of z and its observed library size, and answers from
#' them without the counts. For a Seurat object or a SingleCellExperiment the counts (and, for
#' Seurat, the normalised data) of the model's assay are then replaced by an empty sparse matrix
#' of the same shape, as scvi-tools empties `X` and the layers; the other assays stay.
#'
#' Queries that work on a minified model draw z from the stored posterior and use the stored
#' library size: [get_latent_representation()], [get_normalized_expression()],
#' [differential_expression()], [predict()][predict.scanvi_model] for scANVI,
#' [posterior_predictive_sample()], [get_likelihood_parameters()], [get_latent_library_size()]
#' and [get_feature_correlation_matrix()]. Those that evaluate the counts say so with a
#' `scvir_minified_error`: [get_elbo()], [get_reconstruction_error()], [get_marginal_ll()],
#' [train_model()], `weights = "importance"` in differential expression. In differential
#' expression the raw-count columns (`raw_mean1`, ...) are `NA`, and change mode's pseudocount
#' rule, which looks for genes without counts, treats every gene as such (as scvi-tools does
#' with an emptied `X`); give `pseudocounts` to fix it.
#'
#' As in scvi-tools, only models with the observed library size (`use_observed_lib_size =
#' TRUE`) can be minified.
#'
#' @param object An `scvi_model` (holding its data, or with `newdata`), or a Seurat /
#'   SingleCellExperiment object holding one.
#' @param ... Arguments of the methods; every argument after `object` is matched by its full name.
#' @param newdata,batch,covariates For a model that keeps no data: the cells to minify on (as in
#'   [get_latent_representation()]).
#' @param batch_size,n_threads Minibatch size and CPU threads of the encoder pass.
#' @param which For objects: the model to minify (`"scvi"` or `"scanvi"`).
#' @param drop_counts For objects: empty the counts of the model's assay (`FALSE` keeps them and
#'   only minifies the model).
#' @param verbose Report the memory saved.
#' @return The minified model or object.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' small <- minify(fit)
#' dim(get_latent_representation(small))
#' # the ELBO needs the counts
#' try(get_elbo(small))
#' @export
minify <- function(object, ...) UseMethod("minify")

#' @rdname minify
#' @export
minify.scvi_model <- function(object, ..., newdata = NULL, batch = NULL, covariates = NULL,
                              batch_size = 128L, n_threads = NULL, verbose = TRUE) {
  .check_dots(list(...), formals(minify.scvi_model), after = "object")
  verbose <- .check_flag(verbose, "verbose")
  if (!is.null(object$minified) && is.null(newdata)) return(object)
  if (!isTRUE(object$config$use_observed_lib_size)) {
    scvir_abort(paste("minify() needs a model with the observed library size (use_observed_lib_size = TRUE),",
                      "as in scvi-tools: a latent library size is encoded from the counts"),
                "scvir_config_error")
  }
  before <- utils::object.size(object)
  d <- .query_data(object, newdata, batch, NULL, covariates)
  res <- .engine(.rs_latent(object$model, .data_arg(d$counts, d$codes, d$cov),
                            .opts_arg(object, NULL, batch_size, n_threads), "dist", 1L))
  dimnames(res$z) <- dimnames(res$var) <- list(colnames(d$counts), .latent_colnames(ncol(res$z)))
  data <- if (is.null(newdata)) object$data else list(batch = batch, covariates = covariates)
  data$counts <- NULL
  object$minified <- list(type = "latent_posterior_parameters", mean = res$z, var = res$var,
                          library = Matrix::colSums(d$counts), cells = colnames(d$counts))
  object$data <- data
  object$cells <- colnames(d$counts)
  if (verbose) {
    message(sprintf("minify(): the model keeps the latent posterior of %d cells (%d dimensions); %s -> %s",
                    ncol(d$counts), ncol(res$z), format(before, units = "auto"),
                    format(utils::object.size(object), units = "auto")))
  }
  object
}

#' @rdname minify
#' @export
minify.Seurat <- function(object, ..., which = "scvi", drop_counts = TRUE, batch_size = 128L,
                          n_threads = NULL, verbose = TRUE) {
  .check_dots(list(...), formals(minify.Seurat), after = "object")
  .minify_object(object, .seurat_query_inputs, which, drop_counts, batch_size, n_threads, verbose,
                 empty = function(object, fit) {
                   src <- fit$source %||% list()
                   .empty_seurat_counts(object, .seurat_counts(object, src$assay, src$layer %||% "counts")$assay)
                 },
                 store = function(object, which, fit) {
                   object@misc[[which]] <- fit
                   object
                 })
}

#' @rdname minify
#' @export
minify.SingleCellExperiment <- function(object, ..., which = "scvi", drop_counts = TRUE,
                                        batch_size = 128L, n_threads = NULL, verbose = TRUE) {
  .check_dots(list(...), formals(minify.SingleCellExperiment), after = "object")
  .minify_object(object, .sce_query_inputs, which, drop_counts, batch_size, n_threads, verbose,
                 empty = function(object, fit) {
                   assay <- fit$source$assay %||% "counts"
                   old <- SummarizedExperiment::assay(object, assay, withDimnames = TRUE)
                   SummarizedExperiment::assay(object, assay, withDimnames = FALSE) <- .empty_like(old)
                   object
                 },
                 store = function(object, which, fit) {
                   S4Vectors::metadata(object)[[which]] <- fit
                   object
                 })
}

# An object's model minified on the object's cells; `empty` drops the counts, `store` puts the
# model back where the object keeps it.
.minify_object <- function(object, inputs, which, drop_counts, batch_size, n_threads, verbose,
                           empty, store) {
  which <- .check_choice(which, c("scvi", "scanvi"), "which")
  drop_counts <- .check_flag(drop_counts, "drop_counts")
  verbose <- .check_flag(verbose, "verbose")
  d <- inputs(object, which)
  if (is.null(d$counts)) return(object)
  before <- utils::object.size(object)
  fit <- minify(d$fit, newdata = d$counts, batch = d$batch, covariates = d$covariates,
                batch_size = batch_size, n_threads = n_threads, verbose = FALSE)
  if (drop_counts) object <- empty(object, d$fit)
  object <- store(object, which, fit)
  if (verbose) .report_minified(before, object, ncol(d$counts), drop_counts)
  object
}

.report_minified <- function(before, object, n_cells, dropped) {
  message(sprintf("minify(): latent posterior of %d cells kept%s; object %s -> %s", n_cells,
                  if (dropped) ", counts dropped" else "", format(before, units = "auto"),
                  format(utils::object.size(object), units = "auto")))
}

# An all-zero sparse matrix with the dimensions and names of m.
.empty_like <- function(m) {
  Matrix::sparseMatrix(i = integer(), j = integer(), x = numeric(), dims = dim(m),
                       dimnames = dimnames(m))
}

# Empties the counts and data layers of a Seurat assay (v3/v4 Assay or v5 Assay5).
.empty_seurat_counts <- function(object, assay) {
  a <- object[[assay]]
  if (inherits(a, "Assay5")) {
    set <- .seurat_v5_fn("LayerData<-")
    for (layer in .seurat_v5_fn("Layers")(a)) {
      a <- set(a, layer = layer, value = .empty_like(.seurat_v5_fn("LayerData")(a, layer = layer)))
    }
  } else {
    empty <- .empty_like(.assay_data(object, assay, "counts"))
    a@counts <- empty
    a@data <- empty
  }
  object[[assay]] <- a
  object
}

# Queries that evaluate the counts refuse a minified model's stored cells.
.refuse_minified <- function(fit, what) {
  if (!is.null(fit$minified)) {
    scvir_abort(sprintf(paste("%s needs the counts, which a minified model does not keep; use the full",
                              "model (or train a new one)"), what),
                c("scvir_minified_error", "scvir_input_error"))
  }
}

# An object holding a minified model answers from the model's stored cells, which must be the
# object's own.
.minified_inputs <- function(fit, cells) {
  if (!identical(as.character(cells), as.character(fit$minified$cells))) {
    scvir_abort(paste("the object's cells differ from those its model was minified on (the object was",
                      "subset or reordered since minify()); subset the model's results instead, or",
                      "minify again from the full data"), c("scvir_minified_error", "scvir_input_error"))
  }
  list(fit = fit, counts = NULL, batch = NULL, covariates = NULL)
}
