# Writing AnnData .h5ad files natively (the engine's HDF5 writer), for scanpy / scvi-tools users.

#' Write an AnnData .h5ad file
#'
#' Writes a Seurat object, a SingleCellExperiment or a count matrix as an `.h5ad` file that
#' Python's anndata / scanpy read, natively (no Python):
#' * `X`: the raw counts (or `assay` / `layer`), as a CSR float32 matrix, cells x genes;
#' * `layers`: the other assays of a SingleCellExperiment, or the `data` layer of a Seurat
#'   assay (the normalised expression) when it differs from the counts;
#' * `obs` / `var`: the cell and gene tables (numeric, logical, character and factor columns;
#'   factors and columns with missing values become categoricals; other columns are skipped
#'   with a message); Seurat's variable features as `var$highly_variable`;
#' * `obsm`: every reduction, as `X_<name>` (the scVI latent space as `X_scVI`, scANVI's as
#'   `X_scANVI`, as scvi-tools' tutorials name them);
#' * `varm`: loadings (Seurat's reduction loadings, `PCs` for PCA; LDVAE loadings), genes
#'   without a loading filled with 0;
#' * `uns`: the keys an scvi-tools user sets the data up with (`scvi_batch_key`,
#'   `scvi_labels_key`) when the object holds a model.
#'
#' The file is written to a temporary file next to `path` and renamed into place, so a failed
#' write leaves no partial file. [read_h5ad()] reads it back.
#'
#' @param x A Seurat object, a SingleCellExperiment, or a genes x cells count matrix.
#' @param path File to write.
#' @param ... Arguments of the methods; after `path` every argument is matched by its full name.
#' @param overwrite Replace an existing file.
#' @return `path`, invisibly.
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
#' sce <- scvi(sce[, 1:300], max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' path <- tempfile(fileext = ".h5ad")
#' write_h5ad(sce, path)
#' back <- read_h5ad(path)
#' SingleCellExperiment::reducedDimNames(back)
#' unlink(path)
#' @export
write_h5ad <- function(x, path, ...) UseMethod("write_h5ad")

#' @rdname write_h5ad
#' @export
write_h5ad.default <- function(x, path, ..., overwrite = FALSE) {
  .check_dots(list(...), formals(write_h5ad.default), after = "path")
  counts <- .check_counts(.as_dgc(x, "x"), "x")
  .write_h5ad_parts(path, overwrite, counts, layers = list(),
                    obs = data.frame(row.names = colnames(counts)),
                    var = data.frame(row.names = rownames(counts)))
}

#' @rdname write_h5ad
#' @param assay SingleCellExperiment assay written as `X` (default `"counts"`); Seurat assay
#'   (default: the default assay).
#' @export
write_h5ad.SingleCellExperiment <- function(x, path, ..., assay = "counts", overwrite = FALSE) {
  .check_dots(list(...), formals(write_h5ad.SingleCellExperiment), after = "path")
  counts <- .sce_counts(x, assay)
  others <- setdiff(SummarizedExperiment::assayNames(x), assay)
  layers <- lapply(stats::setNames(others, others), function(a) {
    .as_dgc(SummarizedExperiment::assay(x, a, withDimnames = TRUE), sprintf("assay \"%s\"", a))
  })
  rd <- SummarizedExperiment::rowData(x)
  is_matrix <- vapply(as.list(rd), function(c) !is.null(dim(c)), TRUE)
  varm <- lapply(as.list(rd)[is_matrix], as.matrix)
  obsm <- lapply(SingleCellExperiment::reducedDims(x), as.matrix)
  for (nm in names(obsm)) {
    rot <- attr(SingleCellExperiment::reducedDim(x, nm), "rotation")
    if (!is.null(rot)) varm[[paste0(nm, "_loadings")]] <- .full_loadings(rot, rownames(x))
  }
  if (length(obsm)) names(obsm) <- paste0("X_", names(obsm))
  meta <- S4Vectors::metadata(x)
  .write_h5ad_parts(path, overwrite, counts, layers,
                    obs = as.data.frame(SummarizedExperiment::colData(x), optional = TRUE),
                    var = as.data.frame(rd[, !is_matrix, drop = FALSE], optional = TRUE),
                    obsm = obsm, varm = varm, uns = .setup_keys(meta$scanvi %||% meta$scvi))
}

#' @rdname write_h5ad
#' @param layer Seurat layer (slot) written as `X`.
#' @export
write_h5ad.Seurat <- function(x, path, ..., assay = NULL, layer = "counts", overwrite = FALSE) {
  .check_dots(list(...), formals(write_h5ad.Seurat), after = "path")
  input <- .seurat_counts(x, assay, layer)
  assay <- input$assay
  counts <- input$counts
  layers <- list()
  data <- tryCatch(.seurat_counts(x, assay, "data")$counts, error = function(e) NULL)
  if (!is.null(data) && !identical(data, counts)) layers$data <- data
  a <- x[[assay]]
  var <- if (!inherits(a, "Assay5") && nrow(a@meta.features) == nrow(counts)) {
    a@meta.features[rownames(counts), , drop = FALSE]
  } else data.frame(row.names = rownames(counts))
  hvg <- SeuratObject::VariableFeatures(x, assay = assay)
  if (length(hvg)) var$highly_variable <- rownames(counts) %in% hvg
  obsm <- list()
  varm <- list()
  for (nm in SeuratObject::Reductions(x)) {
    dr <- x[[nm]]
    emb <- SeuratObject::Embeddings(dr)[colnames(counts), , drop = FALSE]
    key <- switch(tolower(nm), scvi = "X_scVI", scanvi = "X_scANVI", paste0("X_", nm))
    obsm[[key]] <- emb
    load <- SeuratObject::Loadings(dr)
    if (length(load) && nrow(load)) {
      varm[[if (tolower(nm) == "pca") "PCs" else paste0(nm, "_loadings")]] <- .full_loadings(load, rownames(counts))
    }
  }
  .write_h5ad_parts(path, overwrite, counts, layers, obs = x@meta.data, var = var, obsm = obsm,
                    varm = varm, uns = .setup_keys(x@misc$scanvi %||% x@misc$scvi))
}

# Loadings over every gene (genes without one get 0), as varm needs one row per gene.
.full_loadings <- function(load, genes) {
  out <- matrix(0, length(genes), ncol(load), dimnames = list(genes, colnames(load)))
  keep <- intersect(rownames(load), genes)
  out[keep, ] <- load[keep, , drop = FALSE]
  out
}

# The setup keys of an object's model, for scvi-tools users.
.setup_keys <- function(fit) {
  if (is.null(fit)) return(character())
  src <- fit$source %||% list()
  keys <- c(scvi_batch_key = fit$batch_key %||% NA_character_,
            scvi_labels_key = src$scanvi_labels_key %||% src$labels_key %||% NA_character_)
  keys[!is.na(keys)]
}

# A data frame as the engine's writer takes it: each column tagged with its anndata kind.
.frame_arg <- function(df, index, what) {
  cols <- list()
  skipped <- character()
  for (nm in names(df)) {
    v <- df[[nm]]
    col <- if (is.factor(v)) {
      list(kind = "categorical", values = ifelse(is.na(v), -1L, as.integer(v) - 1L),
           categories = levels(v), ordered = is.ordered(v))
    } else if (is.logical(v) && !anyNA(v)) {
      list(kind = "bool", values = v)
    } else if (is.numeric(v) && is.null(dim(v))) {
      list(kind = "numeric", values = as.double(v))
    } else if (is.character(v) || is.logical(v)) {
      if (anyNA(v)) {
        lv <- sort(unique(as.character(v[!is.na(v)])))
        list(kind = "categorical", values = ifelse(is.na(v), -1L, match(as.character(v), lv) - 1L),
             categories = lv, ordered = FALSE)
      } else list(kind = "string", values = v)
    }
    if (is.null(col) || nm == "_index") skipped <- c(skipped, nm) else cols[[nm]] <- col
  }
  if (length(skipped)) {
    message(sprintf("write_h5ad(): %s column(s) %s not written (not numeric, logical, character or factor)",
                    what, paste0("\"", skipped, "\"", collapse = ", ")))
  }
  list(index = as.character(index), columns = cols)
}

.write_h5ad_parts <- function(path, overwrite, counts, layers, obs, var, obsm = list(),
                              varm = list(), uns = character()) {
  path <- .check_path(path, "path")
  .check_flag(overwrite, "overwrite")
  if (file.exists(path) && !isTRUE(overwrite)) {
    scvir_abort(sprintf("%s exists; give overwrite = TRUE to replace it", path), "scvir_input_error")
  }
  if (dir.exists(path)) scvir_abort(sprintf("cannot write %s: it is a directory", path))
  dir <- dirname(path)
  if (!dir.exists(dir)) scvir_abort(sprintf("cannot write %s: directory %s does not exist", path, dir))
  csr <- function(m) list(indptr = m@p, indices = m@i, values = m@x, n_rows = ncol(m), n_cols = nrow(m))
  genes <- rownames(counts)
  cells <- colnames(counts)
  layers <- lapply(layers, function(m) {
    m <- .as_dgc(m, "a layer")
    csr(m[genes, cells, drop = FALSE])
  })
  dense <- function(l) lapply(l, function(m) {
    m <- as.matrix(m)
    storage.mode(m) <- "double"
    m
  })
  tmp <- tempfile(".scvir-", tmpdir = dir, fileext = ".h5ad")
  on.exit(unlink(tmp), add = TRUE)
  .engine(.rs_write_h5ad(tmp, csr(counts), layers, .frame_arg(obs, cells, "obs"),
                         .frame_arg(var, genes, "var"), dense(obsm), dense(varm),
                         as.list(uns)))
  .fs_step(file.rename(tmp, path), "write", path)
  invisible(path)
}
