#' Run scVI on a Seurat object, a SingleCellExperiment or a count matrix
#'
#' Trains an scVI model (see [scvi_model()] for the model, its defaults and every training
#' argument) on the raw counts of `object` and puts the results where each ecosystem expects
#' them:
#' * Seurat: a `DimReduc` named `"scvi"` (key `"scvi_"`) and the model in `object@misc$scvi`;
#' * SingleCellExperiment: `reducedDim(object, "scVI")` and the model in
#'   `metadata(object)$scvi`;
#' * a matrix: the fitted `scvi_model` itself.
#'
#' The model travels with the object, so [get_latent_representation()],
#' [get_normalized_expression()] and [history()] accept the object afterwards. If training
#' fails or is interrupted (Ctrl-C), the object is returned unchanged: nothing is modified
#' until training has finished.
#'
#' @param object A Seurat object (v4 assays or v5 layers; split layers `counts.<batch>` are
#'   joined), a SingleCellExperiment, or a genes x cells count matrix.
#' @param ... Model and training arguments passed to [scvi_model()] (`n_latent`,
#'   `gene_likelihood`, `max_epochs`, `seed`, `n_top_genes`, `features`, ...).
#' @return The object with results added (a `scvi_model` for matrix input).
#' @examples
#' \donttest{
#' data("pbmc_small", package = "SeuratObject")
#' pbmc_small <- scvi(pbmc_small, max_epochs = 20, seed = 1)
#' head(SeuratObject::Embeddings(pbmc_small, "scvi"))
#' }
#' @export
scvi <- function(object, ...) UseMethod("scvi")

#' @rdname scvi
#' @param assay Seurat assay (default: the default assay) or SingleCellExperiment assay
#'   (default `"counts"`) holding raw counts.
#' @param layer Seurat layer (v5) or slot (v4) holding raw counts.
#' @param batch_key Column of the cell metadata (`meta.data` / `colData`) naming each cell's batch.
#' @param labels_key Column of cell labels (used by `dispersion = "gene-label"`).
#' @param categorical_covariate_keys,continuous_covariate_keys Columns of extra categorical
#'   covariates (injected like the batch) and continuous covariates (concatenated to the
#'   decoder's input).
#' @param size_factor_key Column of positive size factors, used as the library size (gene
#'   proportions then use softplus, as scvi-tools).
#' @param reduction_name,reduction_key Name and key of the Seurat `DimReduc`.
#' @export
scvi.Seurat <- function(object, assay = NULL, layer = "counts", batch_key = NULL,
                        labels_key = NULL, categorical_covariate_keys = NULL,
                        continuous_covariate_keys = NULL, size_factor_key = NULL,
                        reduction_name = "scvi", reduction_key = "scvi_", ...) {
  .need("SeuratObject")
  input <- .seurat_counts(object, assay, layer)
  batch <- .metadata_column(object@meta.data, batch_key)
  keys <- list(labels_key = labels_key, categorical_covariate_keys = categorical_covariate_keys,
               continuous_covariate_keys = continuous_covariate_keys, size_factor_key = size_factor_key)
  cov <- do.call(.metadata_covariates, c(list(object@meta.data), keys))
  fit <- .fit_from_object(input$counts, batch, batch_key, cov, ...,
                          source = c(list(type = "Seurat", assay = input$assay, layer = layer), keys))
  z <- get_latent_representation(fit, newdata = input$counts[fit$genes, , drop = FALSE], batch = batch,
                                  covariates = cov)
  colnames(z) <- paste0(reduction_key, seq_len(ncol(z)))
  object[[reduction_name]] <- SeuratObject::CreateDimReducObject(
    embeddings = z, key = reduction_key, assay = input$assay, misc = list(model = "scVI"))
  object@misc$scvi <- fit
  object
}

#' @rdname scvi
#' @param reduced_dim_name Name of the SingleCellExperiment `reducedDim`.
#' @export
scvi.SingleCellExperiment <- function(object, assay = "counts", batch_key = NULL,
                                      labels_key = NULL, categorical_covariate_keys = NULL,
                                      continuous_covariate_keys = NULL, size_factor_key = NULL,
                                      reduced_dim_name = "scVI", ...) {
  .need("SingleCellExperiment")
  input <- .sce_counts(object, assay)
  cd <- as.data.frame(SummarizedExperiment::colData(object))
  batch <- .metadata_column(cd, batch_key)
  keys <- list(labels_key = labels_key, categorical_covariate_keys = categorical_covariate_keys,
               continuous_covariate_keys = continuous_covariate_keys, size_factor_key = size_factor_key)
  cov <- do.call(.metadata_covariates, c(list(cd), keys))
  fit <- .fit_from_object(input, batch, batch_key, cov, ...,
                          source = c(list(type = "SingleCellExperiment", assay = assay), keys))
  z <- get_latent_representation(fit, newdata = input[fit$genes, , drop = FALSE], batch = batch,
                                 covariates = cov)
  SingleCellExperiment::reducedDim(object, reduced_dim_name) <- z
  S4Vectors::metadata(object)$scvi <- fit
  object
}

#' @rdname scvi
#' @export
scvi.default <- function(object, ...) scvi_model(object, ...)

# Trains from an object's counts; the model does not duplicate the data the object holds.
.fit_from_object <- function(counts, batch, batch_key, cov, ..., source) {
  args <- list(...)
  if (!is.null(args$batch)) scvir_abort("give batch_key (a metadata column) instead of batch for objects")
  cov_args <- c("labels", "categorical_covariates", "continuous_covariates", "size_factor")
  if (any(cov_args %in% names(args))) scvir_abort("give metadata keys (labels_key, ...) for objects")
  args$labels <- cov$labels
  args$categorical_covariates <- cov$categorical
  args$continuous_covariates <- cov$continuous
  args$size_factor <- cov$size_factor
  args$keep_data <- FALSE
  counts <- .check_counts(counts)
  batch <- .check_batch(batch, ncol(counts), sprintf("batch_key \"%s\"", batch_key %||% ""))
  unknown <- setdiff(names(args), names(formals(scvi_model)))
  if (length(unknown)) {
    scvir_abort(sprintf("unknown argument(s): %s", paste(unknown, collapse = ", ")), "scvir_config_error")
  }
  fit <- do.call(scvi_model, c(list(counts = counts, batch = batch), args))
  fit$batch_key <- batch_key
  fit$source <- source
  fit
}

.need <- function(pkg) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    scvir_abort(sprintf("package %s is needed for this; install it first", pkg))
  }
}

.metadata_column <- function(df, key, what = "batch_key") {
  if (is.null(key)) return(NULL)
  if (!is.character(key) || length(key) != 1) scvir_abort(sprintf("%s must be a single column name", what))
  if (!key %in% colnames(df)) {
    scvir_abort(sprintf("%s \"%s\" is not a column of the cell metadata (columns: %s)",
                        what, key, paste(utils::head(colnames(df), 20), collapse = ", ")))
  }
  df[[key]]
}
