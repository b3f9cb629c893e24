# Model evaluation on cells: ELBO, reconstruction error, marginal log-likelihood, library size.
# Signs follow scvi-tools: get_elbo() and get_marginal_ll() are log-likelihood bounds/estimates
# (higher is better); get_reconstruction_error() is a loss (-log p(x | z), lower is better).

.evaluate <- function(object, what, newdata, batch, indices, n = 0L, give_mean = FALSE,
                      batch_size = 128L, seed = NULL, n_threads = NULL, covariates = NULL) {
  give_mean <- .check_flag(give_mean, "give_mean")
  seed <- .check_seed(seed)
  d <- .query_data(object, newdata, batch, indices, covariates)
  if (!is.null(d$cov$latent) && what %in% c("losses", "marginal_ll")) {
    .refuse_minified(object, if (what == "losses") "the ELBO / reconstruction error" else "the marginal log-likelihood")
  }
  res <- .engine(.rs_evaluate(object$model, .data_arg(d$counts, d$codes, d$cov),
                              .opts_arg(object, seed, batch_size, n_threads), what, as.integer(n),
                              isTRUE(give_mean)))
  list(values = res, cells = colnames(d$counts))
}

#' Evidence lower bound, reconstruction error and marginal log-likelihood
#'
#' Evaluate a trained model on cells (the training data by default), in evaluation mode, with
#' scvi-tools' sign conventions:
#' * `get_elbo()`: the ELBO, `-(reconstruction loss + KL)` per cell (higher is better); note that
#'   `training_history()`'s `elbo_*` columns are the training objective, its negative.
#' * `get_reconstruction_error()`: `list(reconstruction_loss = )`, the mean of `-log p(x | z)`
#'   (lower is better), as scvi-tools' dictionary.
#' * `get_marginal_ll()`: an importance-sampling estimate of `log p(x)` with `n_mc_samples`
#'   samples of the encoder's posterior as proposal (higher is better; on average at least the
#'   ELBO).
#'
#' With `return_mean = TRUE`, `get_marginal_ll()` averages the means of minibatches of
#' `batch_size` cells, as scvi-tools does; the other two average over cells. A short last
#' minibatch then weighs as much as a full one (7 cells of 263 get a third of the weight for
#' PBMC 3k's validation set), so for comparing models prefer
#' `mean(get_marginal_ll(..., return_mean = FALSE))`, the mean over cells.
#'
#' @inheritParams get_latent_representation
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param return_mean Return the mean over cells (`TRUE`) or one value per cell.
#' @param n_mc_samples Importance samples per cell.
#' @return A number, or a named vector with one value per cell.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' get_elbo(fit)
#' get_reconstruction_error(fit)
#' get_marginal_ll(fit, n_mc_samples = 20)
#' # one value per cell, for the validation cells
#' get_elbo(fit, indices = validation_indices(fit), return_mean = FALSE)
#' @name evaluation
NULL

.per_cell_or_mean <- function(v, cells, return_mean) {
  if (.check_flag(return_mean, "return_mean")) return(mean(v))
  stats::setNames(v, cells)
}

#' @rdname evaluation
#' @export
get_elbo <- function(object, ..., newdata = NULL, batch = NULL, indices = NULL, batch_size = 128L,
                     return_mean = TRUE, seed = NULL, n_threads = NULL, covariates = NULL) {
  .check_dots(list(...), formals(get_elbo), after = "object")
  .check_flag(return_mean, "return_mean")
  fit <- .fit_of(object)
  d <- .object_inputs(object, newdata, batch, covariates)
  r <- .evaluate(fit, "losses", d$newdata, d$batch, indices, batch_size = batch_size, seed = seed,
                 n_threads = n_threads, covariates = d$covariates)
  .per_cell_or_mean(-(r$values$reconstruction + r$values$kl_local), r$cells, return_mean)
}

#' @rdname evaluation
#' @export
get_reconstruction_error <- function(object, ..., newdata = NULL, batch = NULL, indices = NULL,
                                     batch_size = 128L, return_mean = TRUE, seed = NULL,
                                     n_threads = NULL, covariates = NULL) {
  .check_dots(list(...), formals(get_reconstruction_error), after = "object")
  .check_flag(return_mean, "return_mean")
  fit <- .fit_of(object)
  d <- .object_inputs(object, newdata, batch, covariates)
  r <- .evaluate(fit, "losses", d$newdata, d$batch, indices, batch_size = batch_size, seed = seed,
                 n_threads = n_threads, covariates = d$covariates)
  list(reconstruction_loss = .per_cell_or_mean(r$values$reconstruction, r$cells, return_mean))
}

#' @rdname evaluation
#' @export
get_marginal_ll <- function(object, ..., newdata = NULL, batch = NULL, indices = NULL,
                            n_mc_samples = 1000L, batch_size = 128L, return_mean = TRUE,
                            seed = NULL, n_threads = NULL, covariates = NULL) {
  .check_dots(list(...), formals(get_marginal_ll), after = "object")
  .check_flag(return_mean, "return_mean")
  n_mc_samples <- .check_count_arg(n_mc_samples, "n_mc_samples")
  fit <- .fit_of(object)
  d <- .object_inputs(object, newdata, batch, covariates)
  bs <- .check_count_arg(batch_size, "batch_size")
  r <- .evaluate(fit, "marginal_ll", d$newdata, d$batch, indices,
                 n = .check_count_arg(n_mc_samples, "n_mc_samples"), batch_size = bs, seed = seed,
                 n_threads = n_threads, covariates = d$covariates)
  if (isTRUE(return_mean)) {
    chunk <- (seq_along(r$values) - 1L) %/% bs
    return(mean(tapply(r$values, chunk, mean)))
  }
  stats::setNames(r$values, r$cells)
}

#' Library size of each cell
#'
#' As scvi-tools' `get_latent_library_size()`: with `give_mean = TRUE` the mean of the posterior
#' of the library size (log-normal; models with `use_observed_lib_size = FALSE` only), otherwise
#' the library size used by the model (the observed total counts, or a posterior sample).
#'
#' @inheritParams get_latent_representation
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param give_mean Posterior mean (`TRUE`) or the library the model uses (`FALSE`).
#' @return A named vector with one value per cell.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' # a model that learns the library size
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, use_observed_lib_size = FALSE,
#'                   max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' head(get_latent_library_size(fit))
#' head(Matrix::colSums(pbmc_small[["RNA"]]@counts)) # observed library sizes
#' @export
get_latent_library_size <- function(object, ..., newdata = NULL, batch = NULL, indices = NULL,
                                    give_mean = TRUE, batch_size = 128L, seed = NULL,
                                    n_threads = NULL, covariates = NULL) {
  .check_dots(list(...), formals(get_latent_library_size), after = "object")
  fit <- .fit_of(object)
  d <- .object_inputs(object, newdata, batch, covariates)
  r <- .evaluate(fit, "library_size", d$newdata, d$batch, indices, give_mean = give_mean,
                 batch_size = batch_size, seed = seed, n_threads = n_threads, covariates = d$covariates)
  stats::setNames(r$values, r$cells)
}

# For Seurat / SCE objects the data come from the object unless newdata is given.
.object_inputs <- function(object, newdata, batch, covariates = NULL, which = "scvi") {
  if (!is.null(newdata) || inherits(object, "scvi_model")) {
    return(list(newdata = newdata, batch = batch, covariates = covariates))
  }
  d <- if (inherits(object, "Seurat")) .seurat_query_inputs(object, which) else .sce_query_inputs(object, which)
  list(newdata = d$counts, batch = d$batch, covariates = d$covariates)
}

# Row-major cells x genes vector -> genes x cells matrix.
.genes_by_cells <- function(v, genes, cells) {
  matrix(v, nrow = length(genes), ncol = length(cells), dimnames = list(genes, cells))
}

#' Parameters of the likelihood for each cell
#'
#' As scvi-tools' `get_likelihood_parameters()`: for each of `n_samples` posterior samples of z,
#' the mean `mean` (mu, in counts), the dispersion `dispersions` (theta; NB and ZINB) and the
#' zero-inflation probability `dropout` (ZINB), averaged over the samples when `give_mean`.
#' Matrices are genes x cells (the R convention); with several samples and `give_mean = FALSE`,
#' arrays genes x cells x samples.
#'
#' @inheritParams get_latent_representation
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param n_samples Posterior samples of z.
#' @param give_mean Average over the samples.
#' @return A list with `mean` and, where the likelihood has them, `dispersions` and `dropout`.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' params <- get_likelihood_parameters(fit)
#' names(params)
#' params$mean[1:5, 1:3]
#' @export
get_likelihood_parameters <- function(object, ..., newdata = NULL, batch = NULL, indices = NULL,
                                      n_samples = 1L, give_mean = FALSE, batch_size = 128L,
                                      seed = NULL, n_threads = NULL, covariates = NULL) {
  .check_dots(list(...), formals(get_likelihood_parameters), after = "object")
  fit <- .fit_of(object)
  d <- .object_inputs(object, newdata, batch, covariates)
  n_samples <- .check_count_arg(n_samples, "n_samples")
  r <- .evaluate(fit, "likelihood_parameters", d$newdata, d$batch, indices, n = n_samples,
                 give_mean = give_mean, batch_size = batch_size, seed = seed, n_threads = n_threads, covariates = d$covariates)
  shape <- function(samples) {
    if (is.null(samples)) return(NULL)
    mats <- lapply(samples, .genes_by_cells, fit$genes, r$cells)
    if (length(mats) == 1) return(mats[[1]])
    array(unlist(mats), dim = c(length(fit$genes), length(r$cells), length(mats)),
          dimnames = list(fit$genes, r$cells, NULL))
  }
  Filter(Negate(is.null), lapply(r$values, shape))
}

#' Sample counts from the posterior predictive distribution
#'
#' Draws z from the encoder's posterior and counts from the model's likelihood given z, as
#' scvi-tools' `posterior_predictive_sample()` (NB/ZINB through the Gamma-Poisson mixture).
#' The result is sparse: a genes x cells `dgCMatrix` for one sample, a list of them for several.
#'
#' @inheritParams get_latent_representation
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param n_samples Number of samples.
#' @param gene_list Genes to return (default: all model genes).
#' @return A `dgCMatrix` (genes x cells), or a list of `n_samples` of them.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' x <- posterior_predictive_sample(fit)
#' x[1:5, 1:5]
#' # three samples of two genes
#' samples <- posterior_predictive_sample(fit, n_samples = 3, gene_list = c("MS4A1", "CD79A"))
#' length(samples)
#' @export
posterior_predictive_sample <- function(object, ..., newdata = NULL, batch = NULL, indices = NULL,
                                        n_samples = 1L, gene_list = NULL, batch_size = 128L,
                                        seed = NULL, n_threads = NULL, covariates = NULL) {
  .check_dots(list(...), formals(posterior_predictive_sample), after = "object")
  fit <- .fit_of(object)
  d <- .object_inputs(object, newdata, batch, covariates)
  if (!is.null(gene_list) && length(setdiff(gene_list, fit$genes))) {
    scvir_abort(sprintf("gene_list has gene(s) the model does not know (e.g. \"%s\")",
                        setdiff(gene_list, fit$genes)[1]))
  }
  r <- .evaluate(fit, "posterior_predictive", d$newdata, d$batch, indices,
                 n = .check_count_arg(n_samples, "n_samples"), batch_size = batch_size,
                 seed = seed, n_threads = n_threads, covariates = d$covariates)
  out <- lapply(r$values, function(v) {
    m <- methods::as(.genes_by_cells(v, fit$genes, r$cells), "CsparseMatrix")
    if (!is.null(gene_list)) m <- m[gene_list, , drop = FALSE]
    m
  })
  if (length(out) == 1) out[[1]] else out
}

#' Gene-gene correlation under the model
#'
#' As scvi-tools' `get_feature_correlation_matrix()`: for each cell, `n_samples` posterior samples
#' of z; for each, a draw of the Gamma part of the Gamma-Poisson likelihood with mean
#' `rna_size_factor * px_scale` (denoised expression with sampling noise of the biological
#' variation only); genes are then correlated across all (cell, sample) rows. With several
#' `transform_batch` values the correlation matrices are averaged. For a Poisson model, which has
#' no Gamma part, the scaled expression itself is used.
#'
#' @inheritParams get_latent_representation
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param n_samples Posterior samples per cell.
#' @param rna_size_factor Library size the expression is scaled to before sampling.
#' @param transform_batch Batch names to condition on (`NULL`: each cell's own batch).
#' @param correlation_type `"spearman"` or `"pearson"`.
#' @return A genes x genes correlation matrix.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' cm <- get_feature_correlation_matrix(fit, n_samples = 5)
#' genes <- c("MS4A1", "CD79A", "CD3E", "GNLY", "NKG7")
#' round(cm[genes, genes], 2)
#' @export
get_feature_correlation_matrix <- function(object, ..., newdata = NULL, batch = NULL,
                                           indices = NULL, n_samples = 10L, batch_size = 64L,
                                           rna_size_factor = 1000, transform_batch = NULL,
                                           correlation_type = "spearman", seed = NULL,
                                           n_threads = NULL, covariates = NULL) {
  .check_dots(list(...), formals(get_feature_correlation_matrix), after = "object")
  fit <- .fit_of(object)
  correlation_type <- .check_choice(correlation_type, c("spearman", "pearson"), "correlation_type")
  n_samples <- .check_count_arg(n_samples, "n_samples")
  rna_size_factor <- .check_scale(rna_size_factor, "rna_size_factor")
  seed <- .check_seed(seed)
  d0 <- .object_inputs(object, newdata, batch, covariates)
  d <- .query_data(fit, d0$newdata, d0$batch, indices, d0$covariates)
  codes <- -1L
  if (!is.null(transform_batch)) {
    codes <- match(as.character(transform_batch), fit$batches) - 1L
    if (anyNA(codes)) {
      scvir_abort(sprintf("transform_batch \"%s\" is not a batch of the model",
                          as.character(transform_batch)[is.na(codes)][1]))
    }
  }
  mats <- lapply(codes, function(b) {
    v <- .engine(.rs_denoised_samples(fit$model, .data_arg(d$counts, d$codes, d$cov),
                                      .opts_arg(fit, seed, batch_size, n_threads), b,
                                      n_samples, rna_size_factor))
    x <- matrix(v, ncol = length(fit$genes), byrow = TRUE)
    stats::cor(x, method = correlation_type)
  })
  out <- Reduce(`+`, mats) / length(mats)
  dimnames(out) <- list(fit$genes, fit$genes)
  out
}
