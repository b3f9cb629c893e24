# SingleCellExperiment input.

# `backed`: an HDF5Array or TENxMatrix assay stays on disk (training and queries read it from its file).
.sce_counts <- function(object, assay = "counts", backed = FALSE) {
  names <- SummarizedExperiment::assayNames(object)
  if (!assay %in% names) {
    scvir_abort(sprintf("assay \"%s\" not found (assays: %s)", assay,
                        if (length(names)) paste(names, collapse = ", ") else "none"))
  }
  a <- SummarizedExperiment::assay(object, assay, withDimnames = TRUE)
  if (backed && !is.null(h <- .delayed_backed(a, sprintf("assay \"%s\"", assay)))) return(h)
  m <- .as_dgc(a, sprintf("assay \"%s\"", assay))
  if (is.null(colnames(m))) colnames(m) <- paste0("cell", seq_len(ncol(m)))
  m
}

.sce_query_inputs <- function(object, which = "scvi") {
  fit <- .fit_of(object, which)
  if (!is.null(fit$minified)) return(.minified_inputs(fit, colnames(object)))
  m <- .sce_counts(object, fit$source$assay %||% "counts", backed = TRUE)
  cd <- as.data.frame(SummarizedExperiment::colData(object))
  batch <- .metadata_column(cd, fit$batch_key)
  list(fit = fit, counts = m, batch = batch, covariates = .source_covariates(cd, fit$source))
}
