# LDVAE (Svensson et al. 2020; scvi-tools' LinearSCVI): scVI with a linear decoder, whose weights
# say how much each latent factor moves each gene.

#' Train an LDVAE (linear-decoder scVI) model
#'
#' scvi-tools' `LinearSCVI`: the encoder is scVI's, the decoder a single bias-free linear layer
#' with batch norm from the latent factors (and the batch) to the genes, so that
#' [get_loadings()] gives interpretable gene loadings. LinearSCVI's defaults apply: negative
#' binomial likelihood and a learnt (latent) library size. The same as
#' `scvi_model(counts, linear_decoder = TRUE, ...)`.
#'
#' @param counts Raw counts, genes x cells (see [scvi_model()]).
#' @param ... Any argument of [scvi_model()].
#' @return An `scvi_model` whose `model_type` is `"LDVAE"`.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- ldvae(pbmc_small[["RNA"]]@counts, n_latent = 5, max_epochs = 5, seed = 1,
#'              n_threads = 1, verbose = FALSE)
#' fit
#' head(get_loadings(fit))
#' @export
ldvae <- function(counts, ...) scvi_model(counts, linear_decoder = TRUE, ...)

#' Gene loadings of an LDVAE model
#'
#' As scvi-tools' `LinearSCVI.get_loadings()`: the decoder's weights of the latent factors,
#' scaled by its batch normalisation (`gamma / sqrt(running_var + eps)`) so that they act on the
#' gene proportions' logits as the model uses them.
#'
#' @param object An LDVAE model (or a Seurat / SingleCellExperiment object holding one).
#' @return A genes x latent matrix, columns `Z_0`, `Z_1`, ... as in scvi-tools.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- ldvae(pbmc_small[["RNA"]]@counts, n_latent = 5, max_epochs = 5, seed = 1,
#'              n_threads = 1, verbose = FALSE)
#' loadings <- get_loadings(fit)
#' dim(loadings)
#' # the genes with the largest loadings on the first factor
#' head(loadings[order(-abs(loadings[, "Z_0"])), ])
#' @export
get_loadings <- function(object) {
  fit <- .fit_of(object)
  w <- .engine(.rs_model_values(fit$model, "loadings"))
  dimnames(w) <- list(fit$genes, paste0("Z_", seq_len(ncol(w)) - 1L))
  w
}
