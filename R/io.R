#' Save and load a model
#'
#' `save_model()` writes a directory with `model.scvir` (the engine's model file: weights,
#' architecture, training options, registry of genes and batches, training history and split;
#' a versioned binary format described in the package README) and `fit.rds` (the R-side
#' record: cell names, seed, selected-gene table and, when `save_data = TRUE`, the counts the
#' model was trained on). `load_model()` reads it back; queries on the loaded model give the
#' same numbers as on the original.
#'
#' Saving is atomic per file: both files are written to temporary files in `dir` and renamed into
#' place once complete, so a failed save (no space, no permission) is an error that leaves the
#' previous model intact; `fit.rds` records a checksum of its `model.scvir`, and `load_model()`
#' refuses a pair from two different saves. File-system failures are `scvir_input_error`s that
#' name the path and the cause.
#'
#' Models also survive [saveRDS()] / [readRDS()] as they are, alone or inside a Seurat or
#' SingleCellExperiment object: the model's bytes are plain R data.
#'
#' `load_model()` also reads directories saved by scvi-tools' `model.save()`: `model.pt`
#' (scvi-tools >= 0.15) or the legacy `model_params.pt` / `var_names.csv` / `attr.pkl`, for
#' SCVI, LinearSCVI (returned as LDVAE) and SCANVI, natively (zip archive, pickle and tensor
#' storages parsed by the engine; no Python). The architecture, genes, batches, labels and
#' covariate categories come from the save; a class or option scviR does not implement is an
#' error naming it. Such a model holds no cells (give `newdata`), answers every query, maps
#' queries ([load_query_data()]) and is saved again by `save_model()` in scviR's format.
#'
#' @param object An `scvi_model`, or a Seurat / SingleCellExperiment object holding one.
#' @param dir Directory to write (created if needed).
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param overwrite Replace an existing model in `dir`.
#' @param save_data Also save the training counts (so that the loaded model needs no `newdata`).
#' @param format `"scviR"` (this package's format), or `"scvi-tools"`: a directory with
#'   `model.pt` that scvi-tools' `SCVI.load(dir, adata = )` (`LinearSCVI` for LDVAE, `SCANVI`)
#'   reads, without the data. The AnnData given to it needs the model's genes and, in `obs`, the
#'   batch column named by the model's batch key (`"batch"` for models trained on a batch
#'   vector) and, for scANVI, the labels column (`"labels"` unless the model records one).
#'   Extra categorical and continuous covariates (`obs` columns named as the model's covariates),
#'   size factors (`obs` column `"size_factor"` for models trained on a size-factor vector),
#'   softplus variances, batch embeddings and label priors are written too. A reference-mapping
#'   query model is written with its reference and query categories; its freezing rules only
#'   apply to training it here. scANVI with label groups is refused: scviR's label-group
#'   classifier differs from scvi-tools' (see [scanvi()]), so scvi-tools would predict
#'   differently with the same weights.
#' @return `save_model()`: `dir`, invisibly. `load_model()`: an `scvi_model`.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' dir <- tempfile("scvi_model_")
#' save_model(fit, dir)
#' list.files(dir)
#' fit2 <- load_model(dir)
#' all.equal(get_latent_representation(fit), get_latent_representation(fit2))
#' unlink(dir, recursive = TRUE)
#' @export
save_model <- function(object, dir, ..., overwrite = FALSE, save_data = TRUE, format = "scviR") {
  .check_dots(list(...), formals(save_model), after = "dir")
  overwrite <- .check_flag(overwrite, "overwrite")
  save_data <- .check_flag(save_data, "save_data")
  format <- .check_choice(format, c("scviR", "scvi-tools"), "format")
  fit <- .fit_of(object)
  dir <- .check_path(dir, "dir")
  if (format == "scvi-tools") return(.save_scvi_tools(fit, dir, overwrite))
  path <- file.path(dir, "model.scvir")
  r_path <- file.path(dir, "fit.rds")
  if (file.exists(path) && !overwrite) {
    scvir_abort(sprintf("%s exists; use overwrite = TRUE to replace it", path))
  }
  if (file.exists(dir) && !dir.exists(dir)) {
    scvir_abort(sprintf("cannot save the model in %s: it is a file, not a directory", dir))
  }
  if (!dir.exists(dir)) {
    .fs_step(dir.create(dir, recursive = TRUE), "create the directory", dir)
  }
  # Both files are written next to their final place and renamed into it only once complete, so
  # that a failed save leaves the previous model as it was and a reader never sees half a file.
  tmp_model <- tempfile(".model.scvir.", tmpdir = dir)
  tmp_fit <- tempfile(".fit.rds.", tmpdir = dir)
  on.exit(unlink(c(tmp_model, tmp_fit)), add = TRUE)
  .write_bytes(fit$model, tmp_model, path)
  r_side <- fit
  r_side$model <- NULL
  if (!save_data) r_side$data <- NULL
  # Ties fit.rds to its model.scvir: load_model() refuses a pair from different saves.
  r_side$model_md5 <- unname(tools::md5sum(tmp_model))
  .write_rds(unclass(r_side), tmp_fit, r_path)
  .fs_step(file.rename(tmp_fit, r_path), "replace", r_path)
  .fs_step(file.rename(tmp_model, path), "replace", path)
  invisible(dir)
}

#' @rdname save_model
#' @export
load_model <- function(dir) {
  dir <- .check_path(dir, "dir")
  if (!dir.exists(dir)) {
    scvir_abort(sprintf("no model found in %s: %s", dir,
                        if (file.exists(dir)) "it is a file, not a directory" else "no such directory"))
  }
  path <- file.path(dir, "model.scvir")
  if (!file.exists(path)) {
    if (any(file.exists(file.path(dir, c("model.pt", "model_params.pt"))))) return(.import_scvi_tools(dir))
    scvir_abort(sprintf("no model found: %s does not exist (nor a scvi-tools model.pt)", path))
  }
  bytes <- .read_bytes(path)
  r_path <- file.path(dir, "fit.rds")
  r_side <- if (file.exists(r_path)) {
    .fs_step(readRDS(r_path), "read", r_path,
             hint = "the file is damaged or was not written by save_model()")
  } else {
    list()
  }
  if (!is.list(r_side)) {
    scvir_abort(sprintf("cannot read %s: it does not hold a model record (not written by save_model())", r_path))
  }
  # The engine checks the model file itself (a damaged one is a scvir_model_error) ...
  fit <- .new_fit(bytes, cells = r_side$cells, data = r_side$data, seed = r_side$seed %||% 0L,
                  n_threads = r_side$n_threads %||% .default_threads(), hvg = r_side$hvg,
                  source = r_side$source)
  # ... and fit.rds must belong to it (older saves carry no checksum).
  if (!is.null(r_side$model_md5) && !identical(.bytes_md5(bytes), r_side$model_md5)) {
    scvir_abort(sprintf(paste("%s and %s come from different saves (a save was interrupted or is",
                              "under way); save the model again"), path, r_path))
  }
  fit$batch_key <- r_side$batch_key %||% fit$batch_key
  fit$train_seconds <- r_side$train_seconds
  fit$accelerator <- r_side$accelerator %||% "auto"
  fit$device_index <- r_side$device_index %||% 0L
  fit$device <- r_side$device
  fit$n_cells <- r_side$n_cells
  if (inherits(fit, "scanvi_model")) {
    fit$unlabeled_category <- r_side$unlabeled_category %||% fit$unlabeled_category
    fit$pretrained <- r_side$pretrained
  }
  fit
}

# scvi-tools' format: dir/model.pt, written atomically by the engine.
.save_scvi_tools <- function(fit, dir, overwrite) {
  path <- file.path(dir, "model.pt")
  if (file.exists(path) && !overwrite) scvir_abort(sprintf("%s exists; use overwrite = TRUE to replace it", path))
  if (file.exists(dir) && !dir.exists(dir)) {
    scvir_abort(sprintf("cannot save the model in %s: it is a file, not a directory", dir))
  }
  if (!dir.exists(dir)) .fs_step(dir.create(dir, recursive = TRUE), "create the directory", dir)
  tmp <- tempfile(".scvi-tools-", tmpdir = dir)
  on.exit(unlink(tmp, recursive = TRUE), add = TRUE)
  .engine(.rs_save_scvi_tools(fit$model, tmp))
  .fs_step(file.rename(file.path(tmp, "model.pt"), path), "write", path)
  invisible(dir)
}

# A directory saved by scvi-tools' model.save() (model.pt, or the pre-0.15 model_params.pt,
# var_names.csv and attr.pkl), read by the engine without Python. The saved model holds no cells
# (scvi-tools saves the AnnData only on request): queries take newdata.
.import_scvi_tools <- function(dir) {
  bytes <- .engine(.rs_import_scvi_tools(dir))
  fit <- .new_fit(as.raw(bytes), cells = character(), data = NULL, seed = 0L,
                  n_threads = .default_threads())
  fit$is_trained <- TRUE
  fit$source <- list(type = "scvi-tools", model = attr(bytes, "scvi_tools_model"),
                     version = attr(bytes, "scvi_tools_version"), dir = dir)
  fit$accelerator <- "auto"
  fit$device_index <- 0L
  fit
}

# A single, non-empty path, with `~` expanded.
.check_path <- function(path, name) {
  if (!is.character(path) || length(path) != 1 || is.na(path) || !nzchar(path)) {
    scvir_abort(sprintf("%s must be a single path; got %s", name, .describe_value(path)),
                "scvir_config_error")
  }
  path.expand(path)
}

# Runs one file-system step. R reports the cause of a failure (permission denied, not a
# directory, no space left) in a warning and then fails with a generic error ("cannot open the
# connection") or returns FALSE: either becomes a scvir_input_error naming the path and the cause.
.fs_step <- function(expr, action, path, hint = NULL) {
  cause <- NULL
  fail <- function(why) {
    scvir_abort(sprintf("cannot %s %s: %s%s", action, path, why,
                        if (is.null(hint)) "" else paste0(" (", hint, ")")))
  }
  value <- withCallingHandlers(
    tryCatch(expr, error = function(e) {
      if (inherits(e, "scvir_error")) stop(e)
      fail(paste(unique(c(cause, .fs_cause(conditionMessage(e)))), collapse = "; "))
    }),
    warning = function(w) {
      cause <<- c(cause, .fs_cause(conditionMessage(w)))
      invokeRestart("muffleWarning")
    })
  if (isFALSE(value)) fail(if (length(cause)) paste(unique(cause), collapse = "; ") else "failed")
  value
}

# The operating system's reason in one of R's file warnings.
.fs_cause <- function(msg) {
  reason <- regmatches(msg, regexec("reason '([^']*)'", msg))[[1]]
  if (length(reason) == 2) return(reason[2])
  after <- regmatches(msg, regexec("': (.+)$", msg))[[1]]
  if (length(after) == 2) return(after[2])
  trimws(sub("^Problem closing connection: *", "", msg))
}

# Writes bytes to `tmp` (the temporary file of `target`) and checks that all of them arrived.
.write_bytes <- function(bytes, tmp, target = tmp) {
  con <- .fs_step(file(tmp, "wb"), "write", target)
  .fs_step(tryCatch(writeBin(bytes, con), finally = close(con)), "write", target)
  size <- file.size(tmp)
  if (is.na(size) || size != length(bytes)) {
    scvir_abort(sprintf("cannot write %s: only %s of %s bytes were written (is the disk full?)",
                        target, format(size %||% 0), format(length(bytes))))
  }
  invisible(TRUE)
}

# saveRDS() that checks the result: R does not report every failed write (a full disk), so the
# gzip trailer's length of the serialized data is compared with what was written.
.write_rds <- function(object, tmp, target = tmp) {
  bytes <- serialize(object, NULL)
  con <- .fs_step(gzfile(tmp, "wb"), "write", target)
  .fs_step(tryCatch(writeBin(bytes, con), finally = close(con)), "write", target)
  size <- file.size(tmp)
  isize <- if (!is.na(size) && size >= 18) {
    con <- file(tmp, "rb")
    on.exit(close(con), add = TRUE)
    seek(con, size - 4)
    v <- readBin(con, "integer", size = 4, endian = "little")
    if (length(v)) if (v < 0) v + 2^32 else v
  }
  if (!length(isize) || isize != length(bytes) %% 2^32) {
    scvir_abort(sprintf("cannot write %s: the file is incomplete (is the disk full?)", target))
  }
  invisible(TRUE)
}

# MD5 of bytes in memory (tools::md5sum() hashes files only): those read, not the file now.
.bytes_md5 <- function(bytes) {
  tmp <- tempfile("scvir-md5-")
  on.exit(unlink(tmp))
  writeBin(bytes, tmp)
  unname(tools::md5sum(tmp))
}

# Reads a whole file, naming the path and the cause when that fails.
.read_bytes <- function(path) {
  size <- file.size(path)
  bytes <- .fs_step(readBin(path, "raw", size), "read", path)
  if (length(bytes) != size) {
    scvir_abort(sprintf("cannot read %s: got %d of %s bytes", path, length(bytes), format(size)))
  }
  bytes
}

#' Read an AnnData .h5ad file
#'
#' Reads an `.h5ad` file natively (no Python) into a SingleCellExperiment: the count matrix (`X`
#' or a layer; CSR, CSC or dense) as the `counts` assay (a genes x cells `dgCMatrix`), the cell
#' and gene tables as `colData` / `rowData` (categorical columns become factors), every other
#' layer as an assay of that name, dense `obsm` matrices as `reducedDims` (`X_umap` becomes
#' `umap`, `X_scVI` becomes `scVI`), dense `varm` matrices as matrix columns of `rowData`, `raw`
#' as the alternative experiment `"raw"`, and the scalar entries of `uns` in
#' `metadata(sce)$uns`. The fields of scvi-tools' minified data (`_scvi_latent_qzm`,
#' `_scvi_latent_qzv` in obsm, `_scvi_observed_lib_size` in obs, `_scvi_adata_minify_type` in
#' uns) arrive as such. Entries in encodings it does not read (sparse obsm, data frames) are
#' listed in `metadata(sce)$skipped`.
#'
#' @param path File path.
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param layer Layer to read as counts instead of `X` (`X` then becomes the assay `"X"`).
#' @param layers,obsm,raw Read the other layers, obsm / varm and raw (`FALSE` skips them, e.g.
#'   to save memory on large files).
#' @param backed `TRUE` leaves the counts on disk: the result is a handle (class `scvir_h5ad`:
#'   the path, the matrix, var and the names of obs's columns) that [scvi_model()],
#'   [scanvi()], [select_hvg_seurat_v3()] and the queries read in blocks, so memory holds
#'   per-cell summaries rather than the matrix. The counts must be stored as CSR (anndata's
#'   default for sparse X) or dense (cells as rows, anndata's dense encoding); CSC is refused. `h[genes, ]` selects genes without reading; `h[, cells]` reads those
#'   cells into a `dgCMatrix`. An `.h5ad` path given as counts is opened this way.
#'   `"memory"` returns the same handle with the counts read into memory once, compactly: gene
#'   positions and counts take 16 bits each when they fit (at most 65,536 genes; counts below
#'   65,536), else 32, so a nonzero takes 4 to 8 bytes (12 in a `dgCMatrix`, 8 in anndata's
#'   float32 CSR). Training and queries then read nothing more from disk. Cells arrive in the
#'   same shuffled blocks as from the file, so the model trained on the handle is the one
#'   trained from disk (which differs from one trained on a `dgCMatrix` only by the order of
#'   the minibatches). A handle saved with `saveRDS()` and loaded again reads the file again at
#'   its first use.
#'
#'   A handle keeps a fingerprint of the matrix as it was opened (its shape and the number of
#'   stored values of every cell). Every later use of the file, by the handle or by a model
#'   trained from it, compares it and refuses a file rewritten since with a
#'   `scvir_input_error`, rather than reading other cells under the names read before: open the
#'   file again and give the new handle as `newdata`.
#' @return A SingleCellExperiment, or with `backed = TRUE` or `"memory"` an `scvir_h5ad` handle.
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' # PBMC 3k (10x Genomics), 2,000 highly variable genes, with published cell types
#' path <- system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR")
#' sce <- read_h5ad(path)
#' sce
#' table(sce$cell_type)
#' @export
read_h5ad <- function(path, ..., layer = NULL, layers = TRUE, obsm = TRUE, raw = TRUE, backed = FALSE) {
  .check_dots(list(...), formals(read_h5ad), after = "path")
  path <- .check_path(path, "path")
  if (!is.null(layer) && (!is.character(layer) || length(layer) != 1 || is.na(layer) || !nzchar(layer))) {
    scvir_abort(sprintf("layer must be NULL or a single layer name; got %s", .describe_value(layer)),
                "scvir_config_error")
  }
  for (nm in c("layers", "obsm", "raw")) .check_flag(get(nm), nm)
  if (!identical(backed, "memory")) {
    if (!is.logical(backed) || length(backed) != 1 || is.na(backed)) {
      scvir_abort(sprintf("backed must be TRUE, FALSE or \"memory\"; got %s", .describe_value(backed)),
                  "scvir_config_error")
    }
  }
  .check_readable(path)
  if (!isFALSE(backed)) return(.h5ad_backed(normalizePath(path), layer, in_memory = identical(backed, "memory")))
  .need("SingleCellExperiment")
  main <- .engine(.rs_read_h5ad(path, layer %||% ""))
  cells <- main$obs$index
  genes <- main$var$index
  # Cells x genes CSR is exactly genes x cells CSC: no transpose needed.
  as_dgc <- function(m, rows = genes) {
    methods::new("dgCMatrix", i = m$indices, p = m$indptr, x = m$values,
                 Dim = c(m$n_genes, m$n_cells), Dimnames = list(rows, cells))
  }
  extras <- .engine(.rs_read_h5ad_extras(path, length(cells), length(genes), layers, obsm, raw))
  assays <- list(counts = as_dgc(main))
  for (nm in names(extras$layers)) {
    if (identical(nm, layer)) next
    assays[[if (nm == "counts") "counts_layer" else nm]] <- as_dgc(extras$layers[[nm]])
  }
  if (!is.null(layer) && isTRUE(layers)) {
    x <- .engine(.rs_read_h5ad(path, ""))
    assays$X <- as_dgc(x)
  }
  row_data <- .frame_to_df(main$var)
  for (nm in names(extras$varm)) {
    m <- extras$varm[[nm]]
    rownames(m) <- genes
    row_data[[nm]] <- m
  }
  reduced <- lapply(extras$obsm, function(m) {
    rownames(m) <- cells
    m
  })
  names(reduced) <- sub("^X_", "", names(reduced))
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = assays, colData = .frame_to_df(main$obs), rowData = row_data,
    reducedDims = reduced)
  if (!is.null(extras$raw)) {
    raw_genes <- extras$raw$var$index
    SingleCellExperiment::altExp(sce, "raw") <- SummarizedExperiment::SummarizedExperiment(
      assays = list(counts = as_dgc(extras$raw$x, raw_genes)), rowData = .frame_to_df(extras$raw$var))
  }
  if (length(extras$uns)) S4Vectors::metadata(sce)$uns <- extras$uns
  if (length(extras$skipped)) S4Vectors::metadata(sce)$skipped <- extras$skipped
  sce
}

# A file to read: it exists, is a file and can be opened (the cause of a failure is named).
.check_readable <- function(path) {
  if (!file.exists(path)) {
    parent <- dirname(path)
    why <- if (file.exists(parent) && !dir.exists(parent)) {
      sprintf("%s is a file, not a directory", parent)
    } else "file not found"
    scvir_abort(sprintf("cannot read %s: %s", path, why))
  }
  if (dir.exists(path)) scvir_abort(sprintf("cannot read %s: it is a directory, not a file", path))
  con <- .fs_step(file(path, "rb", raw = TRUE), "read", path)
  close(con)
  invisible(TRUE)
}

.frame_to_df <- function(f) {
  cols <- lapply(f$columns, function(c) {
    if (is.list(c) && !is.null(c$levels)) {
      factor(c$levels[c$codes], levels = c$levels, ordered = isTRUE(c$ordered))
    } else {
      c
    }
  })
  df <- S4Vectors::DataFrame(cols, check.names = FALSE, row.names = f$index)
  df
}
