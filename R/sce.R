# SingleCellExperiment input.

.sce_counts <- function(object, assay = "counts") {
  names <- SummarizedExperiment::assayNames(object)
  if (!assay %in% names) {
    scvir_abort(sprintf("assay \"%s\" not found (assays: %s)", assay,
                        if (length(names)) paste(names, collapse = ", ") else "none"))
  }
  m <- .as_dgc(SummarizedExperiment::assay(object, assay, withDimnames = TRUE),
               sprintf("assay \"%s\"", assay))
  if (is.null(colnames(m))) colnames(m) <- paste0("cell", seq_len(ncol(m)))
  m
}

.sce_query_inputs <- function(object, which = "scvi") {
  fit <- .fit_of(object, which)
  if (!is.null(fit$minified)) return(.minified_inputs(fit, colnames(object)))
  m <- .sce_counts(object, fit$source$assay %||% "counts")
  cd <- as.data.frame(SummarizedExperiment::colData(object))
  batch <- .metadata_column(cd, fit$batch_key)
  list(fit = fit, counts = m, batch = batch, covariates = .source_covariates(cd, fit$source))
}
