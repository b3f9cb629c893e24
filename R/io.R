#' Save and load a model
#'
#' `save_model()` writes a directory with `model.scvir` (the engine's model file: weights,
#' architecture, training options, registry of genes and batches, training history and split;
#' a versioned binary format described in the package README) and `fit.rds` (the R-side
#' record: cell names, seed, selected-gene table and, when `save_data = TRUE`, the counts the
#' model was trained on). `load_model()` reads it back; queries on the loaded model give the
#' same numbers as on the original.
#'
#' Models also survive [saveRDS()] / [readRDS()] as they are, alone or inside a Seurat or
#' SingleCellExperiment object: the model's bytes are plain R data.
#'
#' @param object An `scvi_model`, or a Seurat / SingleCellExperiment object holding one.
#' @param dir Directory to write (created if needed).
#' @param overwrite Replace an existing model in `dir`.
#' @param save_data Also save the training counts (so that the loaded model needs no `newdata`).
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
save_model <- function(object, dir, overwrite = FALSE, save_data = TRUE) {
  fit <- .fit_of(object)
  path <- file.path(dir, "model.scvir")
  if (file.exists(path) && !isTRUE(overwrite)) {
    scvir_abort(sprintf("%s exists; use overwrite = TRUE to replace it", path))
  }
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  writeBin(fit$model, path)
  r_side <- fit
  r_side$model <- NULL
  if (!isTRUE(save_data)) r_side$data <- NULL
  saveRDS(unclass(r_side), file.path(dir, "fit.rds"))
  invisible(dir)
}

#' @rdname save_model
#' @export
load_model <- function(dir) {
  path <- file.path(dir, "model.scvir")
  if (!file.exists(path)) scvir_abort(sprintf("no model found: %s does not exist", path))
  bytes <- readBin(path, "raw", file.info(path)$size)
  r_path <- file.path(dir, "fit.rds")
  r_side <- if (file.exists(r_path)) readRDS(r_path) else list()
  fit <- .new_fit(bytes, cells = r_side$cells, data = r_side$data, seed = r_side$seed %||% 0L,
                  n_threads = r_side$n_threads %||% .default_threads(), hvg = r_side$hvg,
                  source = r_side$source)
  fit$batch_key <- r_side$batch_key %||% fit$batch_key
  fit$train_seconds <- r_side$train_seconds
  fit$accelerator <- r_side$accelerator %||% "auto"
  fit$device_index <- r_side$device_index %||% 0L
  fit$device <- r_side$device
  if (inherits(fit, "scanvi_model")) {
    fit$unlabeled_category <- r_side$unlabeled_category %||% fit$unlabeled_category
    fit$pretrained <- r_side$pretrained
  }
  fit
}

#' Read an AnnData .h5ad file
#'
#' Reads the count matrix (`X` or a layer; CSR, CSC or dense) and the cell and gene tables of
#' an `.h5ad` file natively (no Python), into a SingleCellExperiment whose `counts` assay is a
#' genes x cells `dgCMatrix`. Categorical columns become factors.
#'
#' @param path File path.
#' @param layer Layer to read as counts instead of `X`.
#' @return A SingleCellExperiment.
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' # PBMC 3k (10x Genomics), 2,000 highly variable genes, with published cell types
#' path <- system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR")
#' sce <- read_h5ad(path)
#' sce
#' table(sce$cell_type)
#' @export
read_h5ad <- function(path, layer = NULL) {
  .need("SingleCellExperiment")
  if (!is.character(path) || length(path) != 1) scvir_abort("path must be a single file path")
  raw <- .engine(.rs_read_h5ad(path.expand(path), layer %||% ""))
  # Cells x genes CSR is exactly genes x cells CSC: no transpose needed.
  counts <- methods::new("dgCMatrix", i = raw$indices, p = raw$indptr, x = raw$values,
                         Dim = c(raw$n_genes, raw$n_cells),
                         Dimnames = list(raw$var$index, raw$obs$index))
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = counts),
    colData = .frame_to_df(raw$obs), rowData = .frame_to_df(raw$var))
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
