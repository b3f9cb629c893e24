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
#' @param reduction_name,reduction_key Name and key of the Seurat `DimReduc`.
#' @export
scvi.Seurat <- function(object, assay = NULL, layer = "counts", batch_key = NULL,
                        reduction_name = "scvi", reduction_key = "scvi_", ...) {
  .need("SeuratObject")
  input <- .seurat_counts(object, assay, layer)
  batch <- .metadata_column(object@meta.data, batch_key)
  fit <- .fit_from_object(input$counts, batch, batch_key, ...,
                          source = list(type = "Seurat", assay = input$assay, layer = layer))
  z <- get_latent_representation(fit, newdata = input$counts[fit$genes, , drop = FALSE], batch = batch)
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
                                      reduced_dim_name = "scVI", ...) {
  .need("SingleCellExperiment")
  input <- .sce_counts(object, assay)
  batch <- .metadata_column(as.data.frame(SummarizedExperiment::colData(object)), batch_key)
  fit <- .fit_from_object(input, batch, batch_key, ...,
                          source = list(type = "SingleCellExperiment", assay = assay))
  z <- get_latent_representation(fit, newdata = input[fit$genes, , drop = FALSE], batch = batch)
  SingleCellExperiment::reducedDim(object, reduced_dim_name) <- z
  S4Vectors::metadata(object)$scvi <- fit
  object
}

#' @rdname scvi
#' @export
scvi.default <- function(object, ...) scvi_model(object, ...)

# Trains from an object's counts; the model does not duplicate the data the object holds.
.fit_from_object <- function(counts, batch, batch_key, ..., source) {
  args <- list(...)
  if (!is.null(args$batch)) scvir_abort("give batch_key (a metadata column) instead of batch for objects")
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

.metadata_column <- function(df, key) {
  if (is.null(key)) return(NULL)
  if (!is.character(key) || length(key) != 1) scvir_abort("batch_key must be a single column name")
  if (!key %in% colnames(df)) {
    scvir_abort(sprintf("batch_key \"%s\" is not a column of the cell metadata (columns: %s)",
                        key, paste(utils::head(colnames(df), 20), collapse = ", ")))
  }
  df[[key]]
}
