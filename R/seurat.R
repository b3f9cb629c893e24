# Seurat input: counts from v4 assays (slots) or v5 layers, joining split layers.

.seurat_counts <- function(object, assay = NULL, layer = "counts") {
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  if (!assay %in% names(object@assays)) {
    scvir_abort(sprintf("assay \"%s\" not found (assays: %s)", assay,
                        paste(names(object@assays), collapse = ", ")))
  }
  a <- object[[assay]]
  if (inherits(a, "Assay5")) {
    found <- SeuratObject::Layers(a, search = layer)
    if (!length(found)) {
      scvir_abort(sprintf("layer \"%s\" not found in assay \"%s\" (layers: %s)", layer, assay,
                          paste(SeuratObject::Layers(a), collapse = ", ")))
    }
    if (length(found) > 1) {
      # Split layers (counts.<batch>): join them for training, cells back in object order.
      a <- SeuratObject::JoinLayers(a, layers = layer)
    }
    m <- SeuratObject::LayerData(a, layer = layer)
  } else {
    if (!layer %in% c("counts", "data", "scale.data")) {
      scvir_abort(sprintf("layer \"%s\" not found in assay \"%s\" (a v4 assay has counts, data, scale.data)",
                          layer, assay))
    }
    m <- .assay_data(object, assay, layer)
  }
  if (!nrow(m) || !ncol(m)) scvir_abort(sprintf("layer \"%s\" of assay \"%s\" is empty", layer, assay))
  m <- .as_dgc(m, sprintf("layer \"%s\" of assay \"%s\"", layer, assay))
  if (!identical(colnames(m), colnames(object))) m <- m[, colnames(object), drop = FALSE]
  list(counts = m, assay = assay)
}

.seurat_query_inputs <- function(object, which = "scvi") {
  fit <- .fit_of(object, which)
  src <- fit$source %||% list()
  input <- .seurat_counts(object, src$assay, src$layer %||% "counts")
  list(fit = fit, counts = input$counts, batch = .metadata_column(object@meta.data, fit$batch_key),
       covariates = .source_covariates(object@meta.data, src))
}

# GetAssayData() of a v3/v4 Assay: SeuratObject 5 made its `slot` argument defunct in favour of
# `layer`, which SeuratObject 4 lacks.
.assay_data <- function(object, assay, layer) {
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    SeuratObject::GetAssayData(object, assay = assay, layer = layer)
  } else {
    SeuratObject::GetAssayData(object, assay = assay, slot = layer)
  }
}
