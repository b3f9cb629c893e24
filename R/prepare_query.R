# Query data shaped for a reference model (scvi-tools' `prepare_query_anndata`): the reference's
# genes in its order, genes the query lacks as zero counts, genes the reference lacks dropped.

#' Match a query's genes to a reference model
#'
#' scvi-tools' `prepare_query_anndata()`: returns the query with exactly the reference model's
#' genes, in the model's order. Genes the query lacks are added as zero counts (zero rows of a
#' sparse matrix: nothing dense is allocated); genes the model does not know are dropped. The
#' result can then be embedded with the reference model, e.g.
#' `get_latent_representation(fit, newdata = prepared)` for a matrix.
#'
#' Genes are matched by name, so both sides must use the same identifiers (gene symbols or
#' Ensembl IDs). When none of the reference's genes is in the query, that is a
#' `scvir_input_error`; when fewer than 80% are (scvi-tools' threshold), a warning of class
#' `scvir_gene_overlap_warning` says how many were filled with zeros, since the model then sees
#' cells that look as if those genes were not expressed; otherwise filled genes are reported
#' with a message.
#'
#' What comes back is of the query's kind:
#' * a base matrix stays a base matrix; any other matrix (`dgCMatrix`, other `Matrix` classes,
#'   `DelayedArray`) becomes a `dgCMatrix`;
#' * a Seurat object becomes a new Seurat object holding only the prepared counts (as assay
#'   `assay`), with the query's `meta.data`, identity classes and project name; its other
#'   assays, the other layers of `assay` and its dimensional reductions are not carried over
#'   (other assays and reductions are named in a message);
#' * a SingleCellExperiment becomes a new one holding the prepared counts (as assay `assay`),
#'   the query's `colData`, and its `rowData` for the genes it had (missing values for filled
#'   genes); its other assays, reduced dimensions and alternative experiments are dropped, with
#'   a message naming them.
#'
#' @param query Raw counts of the query cells, genes x cells: a matrix or sparse matrix, a Seurat
#'   object or a SingleCellExperiment.
#' @param reference The reference model: an `scvi_model`, a Seurat / SingleCellExperiment object
#'   holding one, or the path of a directory written by [save_model()] (only its gene list is
#'   read, see [load_registry()]).
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param which For a Seurat / SingleCellExperiment `reference`, which of its models to use:
#'   `"scvi"` (an object holding only a scANVI model falls back to it) or `"scanvi"`.
#' @param assay For a Seurat `query`, the assay whose counts are used (default: the default
#'   assay); for a SingleCellExperiment, the assay holding the counts (default `"counts"`). The
#'   prepared counts keep that name.
#' @return The query, of the same class, with the reference's genes in the reference's order.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' counts <- pbmc_small[["RNA"]]@counts
#' # a reference model on the first 100 genes
#' fit <- scvi_model(counts[1:100, ], max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' # a query with 90 of those genes in another order, and 50 genes the model does not know
#' query <- counts[c(rev(11:100), 101:150), ]
#' prepared <- prepare_query(query, fit)
#' dim(prepared)
#' identical(rownames(prepared), fit$genes)
#' head(get_latent_representation(fit, newdata = prepared))
#' # a query missing most of the reference's genes gets a warning
#' tryCatch(prepare_query(counts[95:150, ], fit),
#'          scvir_gene_overlap_warning = function(w) conditionMessage(w))
#' @export
prepare_query <- function(query, reference, ..., which = "scvi", assay = NULL) {
  .check_dots(list(...), formals(prepare_query), after = "reference")
  which <- .check_choice(which, c("scvi", "scanvi"), "which")
  if (!is.null(assay) && (!is.character(assay) || length(assay) != 1 || is.na(assay) || !nzchar(assay))) {
    scvir_abort(sprintf("assay must be NULL or a single assay name; got %s", .describe_value(assay)),
                "scvir_config_error")
  }
  genes <- .reference_genes(reference, which)
  if (inherits(query, "Seurat")) return(.prepare_seurat(query, genes, assay))
  if (methods::is(query, "SingleCellExperiment")) return(.prepare_sce(query, genes, assay %||% "counts"))
  if (!is.null(assay)) {
    scvir_abort("assay applies to Seurat and SingleCellExperiment queries only", "scvir_config_error")
  }
  .prepare_counts(query, genes, "query")
}

# The reference model's genes, in its order (a saved model's without loading its weights).
.reference_genes <- function(reference, which) {
  if (is.character(reference)) return(load_registry(reference)$genes)
  .reference_fit(reference, which)$genes
}

# Counts (base matrix or any matrix) with the reference's genes in its order; signals the
# overlap (error, warning or message).
.prepare_counts <- function(m, genes, what) {
  dense <- is.matrix(m) && is.numeric(m)
  if (!dense) m <- .as_dgc(m, what)
  if (is.null(rownames(m))) {
    scvir_abort(sprintf("%s has no gene (row) names; genes are matched to the reference's by name", what))
  }
  .check_dimnames(rownames(m), what, "gene")
  if (identical(rownames(m), genes)) return(m)
  idx <- match(genes, rownames(m))
  present <- !is.na(idx)
  .signal_overlap(genes, rownames(m), present, what)
  if (dense) {
    out <- m[rep(1L, length(genes)), , drop = FALSE]
    out[] <- 0L  # keeps the storage mode (integer or double)
    out[present, ] <- m[idx[present], , drop = FALSE]
  } else {
    # Row j of the result is row idx[j] of the query, or empty: one sparse product with a 0/1
    # selection matrix moves the stored counts without ever making a dense row.
    pick <- Matrix::sparseMatrix(i = which(present), j = idx[present], x = 1,
                                 dims = c(length(genes), nrow(m)))
    out <- methods::as(pick %*% m, "CsparseMatrix")
  }
  dimnames(out) <- list(genes, colnames(m))
  out
}

# How much of the reference the query covers: none is an error, under 80% a classed warning,
# else filled genes are reported by a message.
.signal_overlap <- function(genes, query_genes, present, what) {
  n <- length(genes)
  n_present <- sum(present)
  n_filled <- n - n_present
  if (!n_present) {
    scvir_abort(sprintf(paste("none of the reference model's %d genes is in the %s (reference genes e.g.",
                              "%s; %s genes e.g. %s); check that both use the same gene identifiers",
                              "(gene symbols vs Ensembl IDs)"),
                        n, what, paste0("\"", utils::head(genes, 3), "\"", collapse = ", "), what,
                        paste0("\"", utils::head(query_genes, 3), "\"", collapse = ", ")))
  }
  n_dropped <- sum(!query_genes %in% genes)
  dropped <- if (n_dropped) {
    sprintf("; %d %s gene(s) the model does not know were dropped", n_dropped, what)
  } else ""
  if (n_present / n < 0.8) {
    msg <- sprintf(paste("only %.1f%% of the reference model's genes are in the %s (%d of %d): the",
                         "%d missing gene(s) were filled with zero counts, so the model sees these",
                         "cells as not expressing them; check that both use the same gene identifiers%s"),
                   100 * n_present / n, what, n_present, n, n_filled, dropped)
    warning(structure(class = c("scvir_gene_overlap_warning", "warning", "condition"),
                      list(message = msg, call = NULL)))
  } else if (n_filled) {
    message(sprintf(paste("prepare_query(): %d of the reference model's %d genes are missing from",
                          "the %s and were filled with zero counts%s"),
                    n_filled, n, what, dropped))
  }
  invisible(n_present)
}

.prepare_seurat <- function(query, genes, assay) {
  .need("SeuratObject")
  input <- .seurat_counts(query, assay, "counts")
  assay <- input$assay
  counts <- .prepare_counts(input$counts, genes, "query")
  others <- c(setdiff(names(query@assays), assay), names(query@reductions))
  if (length(others)) {
    message(sprintf("prepare_query(): the prepared Seurat object holds assay \"%s\" only; not carried over: %s",
                    assay, paste0("\"", others, "\"", collapse = ", ")))
  }
  out <- SeuratObject::CreateSeuratObject(counts = counts, assay = assay,
                                          project = query@project.name, meta.data = query@meta.data)
  SeuratObject::Idents(out) <- SeuratObject::Idents(query)
  out
}

.prepare_sce <- function(query, genes, assay) {
  .need("SingleCellExperiment")
  m <- .sce_counts(query, assay)
  counts <- .prepare_counts(m, genes, "query")
  # Per-gene annotations follow their gene; filled genes have none (NA). Columns that cannot
  # hold a missing value are left out.
  rd <- SummarizedExperiment::rowData(query)
  idx <- match(genes, rownames(m))
  cols <- lapply(as.list(rd), function(col) tryCatch(col[idx], error = function(e) NULL))
  lost_cols <- names(cols)[vapply(cols, is.null, TRUE)]
  cols <- cols[!vapply(cols, is.null, TRUE)]
  new_rd <- S4Vectors::DataFrame(cols, check.names = FALSE, row.names = genes)
  if (!length(cols)) new_rd <- S4Vectors::DataFrame(row.names = genes)
  dropped <- c(
    sprintf("assay \"%s\"", setdiff(SummarizedExperiment::assayNames(query), assay)),
    sprintf("reducedDim \"%s\"", SingleCellExperiment::reducedDimNames(query)),
    sprintf("altExp \"%s\"", SingleCellExperiment::altExpNames(query)),
    sprintf("rowData column \"%s\"", lost_cols))
  if (length(dropped)) {
    message(sprintf("prepare_query(): the prepared SingleCellExperiment holds assay \"%s\" only; dropped: %s",
                    assay, paste(dropped, collapse = ", ")))
  }
  SingleCellExperiment::SingleCellExperiment(
    assays = stats::setNames(list(counts), assay),
    colData = SummarizedExperiment::colData(query), rowData = new_rd)
}
