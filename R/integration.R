# Seurat v5's integration interface: IntegrateLayers(object, method = scvi_integration, ...).

#' scVI as a Seurat v5 integration method
#'
#' An integration method function for Seurat v5's `IntegrateLayers()`:
#' `IntegrateLayers(obj, method = scvi_integration, new.reduction = "integrated.scvi")` trains
#' scVI on the raw counts of the assay's split `counts.<batch>` layers with each cell's layer
#' (or `groups`) as its batch, and returns the latent space as a DimReduc, as Seurat's own
#' methods (`CCAIntegration`, `HarmonyIntegration`) do. The trained model is kept in the
#' DimReduc's `misc$model`.
#'
#' Called by `IntegrateLayers()`, `object` is the assay (an `Assay5`), `groups` a data frame with
#' each cell's layer and `features` the variable features; called directly, `object` may also be
#' a v3/v4 `Assay` with `groups` giving the batches.
#'
#' @param object The assay to integrate (`Assay5`, or a v3/v4 `Assay` with `groups`).
#' @param orig Ignored: scVI integrates the counts, not another reduction.
#' @param groups A data frame with one row per cell and the cells' batch in its first column
#'   (`IntegrateLayers()` passes the layer membership); `NULL` uses the `counts.<batch>` layers.
#' @param features Genes to train on (`NULL`: the assay's variable features if it has them, else
#'   scviR's `n_top_genes` rule).
#' @param layers Ignored beyond its default: scVI reads the raw counts (`"counts"` layers).
#' @param new.reduction,reduction.key Name and key of the returned DimReduc.
#' @param assay,scale.layer,normalization.method Passed by `IntegrateLayers()`; not used.
#' @param ... Further arguments to [scvi_model()] (`max_epochs`, `n_latent`, `seed`, ...).
#' @return A named list holding the DimReduc (cells x `n_latent`), as `IntegrateLayers()`
#'   expects.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' # called as IntegrateLayers() calls it, here on a v3/v4 assay with the groups as batches
#' res <- scvi_integration(pbmc_small[["RNA"]], groups = data.frame(group = pbmc_small$groups),
#'                         features = rownames(pbmc_small), max_epochs = 5, seed = 1,
#'                         n_threads = 1, verbose = FALSE)
#' dim(SeuratObject::Embeddings(res$integrated.scvi))
#' @export
scvi_integration <- function(object, orig = NULL, groups = NULL, features = NULL, layers = "counts",
                             new.reduction = "integrated.scvi", reduction.key = "integratedscvi_",
                             assay = NULL, scale.layer = NULL, normalization.method = NULL, ...) {
  .need("SeuratObject")
  if (!inherits(object, c("Assay5", "Assay"))) {
    scvir_abort(sprintf("object must be a Seurat assay (IntegrateLayers() passes object[[assay]]); got %s",
                        .describe_value(object)))
  }
  for (nm in c("new.reduction", "reduction.key")) {
    v <- get(nm)
    if (!is.character(v) || length(v) != 1 || is.na(v) || !nzchar(v)) {
      scvir_abort(sprintf("%s must be a single string", nm), "scvir_config_error")
    }
  }
  if (inherits(object, "Assay5")) {
    found <- .v5_layers(object, "counts")
    if (!length(found)) scvir_abort("the assay has no counts layer; scVI integrates raw counts")
    per_layer <- lapply(found, function(l) .seurat_v5_fn("LayerData")(object, layer = l))
    counts <- if (length(per_layer) > 1) do.call(cbind, per_layer) else per_layer[[1]]
    layer_batch <- rep(sub("^counts\\.", "", found), vapply(per_layer, ncol, 1L))
    names(layer_batch) <- colnames(counts)
    cells <- colnames(object)
    counts <- counts[, cells, drop = FALSE]
    layer_batch <- layer_batch[cells]
  } else {
    counts <- methods::slot(object, "counts")
    if (!length(counts)) scvir_abort("the assay has no counts; scVI integrates raw counts")
    cells <- colnames(counts)
    layer_batch <- NULL
  }
  batch <- if (!is.null(groups)) {
    if (!is.data.frame(groups) || nrow(groups) != length(cells)) {
      scvir_abort(sprintf("groups must be a data frame with one row per cell (%d); got %s",
                          length(cells), .describe_value(groups)))
    }
    g <- groups[[1]]
    if (!is.null(rownames(groups)) && all(cells %in% rownames(groups))) g <- groups[cells, 1]
    g
  } else layer_batch
  if (is.null(batch) || length(unique(batch)) < 2) {
    scvir_abort("scvi_integration() needs at least two batches: split counts layers or groups",
                "scvir_config_error")
  }
  features <- features %||% (if (length(SeuratObject::VariableFeatures(object))) SeuratObject::VariableFeatures(object))
  args <- list(...)
  if (!is.null(features)) args$features <- intersect(features, rownames(counts))
  fit <- do.call(scvi_model, c(list(.as_dgc(counts, "the assay's counts"), batch = as.character(batch)), args))
  z <- get_latent_representation(fit)
  colnames(z) <- paste0(reduction.key, seq_len(ncol(z)))
  fit$data <- NULL
  dr <- if (is.null(assay)) {
    # Called outside IntegrateLayers(): SeuratObject warns that it assumes the default assay.
    withCallingHandlers(
      SeuratObject::CreateDimReducObject(embeddings = z, key = reduction.key, misc = list(model = fit)),
      warning = function(w) if (grepl("No assay specified", conditionMessage(w))) invokeRestart("muffleWarning"))
  } else {
    SeuratObject::CreateDimReducObject(embeddings = z, key = reduction.key, assay = assay, misc = list(model = fit))
  }
  stats::setNames(list(dr), new.reduction)
}
attr(scvi_integration, "Seurat.method") <- "integration"
