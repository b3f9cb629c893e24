#' scviR: native scVI for R
#'
#' Deep generative models of single-cell counts (scvi-tools' SCVI) trained natively in Rust on
#' libtorch, with no Python at run time. Start with [scvi()] on a Seurat object, a
#' SingleCellExperiment or a count matrix.
#'
#' @keywords internal
#' @useDynLib scviR, .registration = TRUE
"_PACKAGE"
