.scvir_state <- new.env(parent = emptyenv())

.onLoad <- function(libname, pkgname) {
  # libtorch's matrix products run on R's BLAS; see blas_info().
  .scvir_state$blas <- tryCatch(.rs_tune_blas(), error = function(e) conditionMessage(e))
}

#' Which BLAS runs scviR's matrix products
#'
#' Inside R, libtorch's matrix products use the BLAS R loaded (Debian: OpenBLAS). OpenBLAS 0.3.21
#' does not recognise some current CPUs and falls back to generic kernels several times slower;
#' when scviR loads and finds that (and `OPENBLAS_CORETYPE` is unset), it re-runs OpenBLAS's core
#' selection with the core the CPU supports (SkylakeX for AVX-512, Haswell for AVX2). This also
#' speeds up R's own matrix algebra. Set the environment variable `SCVIR_TUNE_BLAS=0` before
#' loading scviR to leave the BLAS alone.
#' @return A one-line description, invisibly; it is also printed.
#' @export
blas_info <- function() {
  msg <- .scvir_state$blas %||% "unknown"
  cat(msg, "\n")
  invisible(msg)
}
utils::globalVariables(".data")

# Matrix's namespace must be loaded with scviR: a model read back with readRDS() in a fresh
# session holds dgCMatrix counts, and base functions such as ncol() only know them once Matrix's
# methods are registered.
#' @importFrom Matrix sparseMatrix
NULL
