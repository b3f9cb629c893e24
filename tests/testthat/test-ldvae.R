# LDVAE on real counts: pbmc_small for the model's shape and defaults, PBMC 3k for biology.

# One tensor of a model's bytes, read independently of the engine from the documented format
# (README, "Model files"): magic, u32 version, u64 header length, JSON header, f32 tensors.
read_model_tensor <- function(bytes, name) {
  header_len <- readBin(bytes[13:16], "integer", size = 4, endian = "little")
  header <- jsonlite::fromJSON(rawToChar(bytes[20 + seq_len(header_len)]), simplifyVector = FALSE)
  offset <- 20 + header_len
  for (t in header$tensors) {
    n <- prod(unlist(t$shape))
    if (identical(t$name, name)) {
      return(readBin(bytes[offset + seq_len(4 * n)], "numeric", size = 4, n = n, endian = "little"))
    }
    offset <- offset + 4 * n
  }
  stop("no tensor ", name)
}

test_that("ldvae() uses LinearSCVI's defaults and returns genes x latent loadings", {
  fit <- ldvae(pbmc_small_counts(), n_latent = 5, max_epochs = 10, seed = 1, n_threads = 1,
               verbose = FALSE)
  expect_equal(fit$model_type, "LDVAE")
  expect_equal(fit$config$gene_likelihood, "nb")
  expect_false(fit$config$use_observed_lib_size)
  tensors <- names(scviR:::.model_tensors(fit))
  expect_true("decoder.factor_regressor.layer_0.linear.weight" %in% tensors)
  expect_false("decoder.factor_regressor.layer_0.linear.bias" %in% tensors)
  l <- get_loadings(fit)
  expect_equal(dim(l), c(230L, 5L))
  expect_equal(rownames(l), fit$genes)
  expect_equal(colnames(l), paste0("Z_", 0:4))
  # Loadings are the BN-scaled decoder weights: recompute them from the tensors.
  w <- matrix(read_model_tensor(fit$model, "decoder.factor_regressor.layer_0.linear.weight"),
              nrow = 230, byrow = TRUE)[, 1:5]
  g <- read_model_tensor(fit$model, "decoder.factor_regressor.layer_0.batch_norm.weight")
  v <- read_model_tensor(fit$model, "decoder.factor_regressor.layer_0.batch_norm.running_var")
  expect_equal(unname(l), w * g / sqrt(v + 1e-3), tolerance = 1e-6)  # float32 in the engine
  # An explicit likelihood overrides the LDVAE default; queries work as for scVI.
  zinb <- ldvae(pbmc_small_counts(), gene_likelihood = "zinb", max_epochs = 2, seed = 1,
                n_threads = 1, verbose = FALSE)
  expect_equal(zinb$config$gene_likelihood, "zinb")
  expect_equal(dim(get_normalized_expression(zinb)), c(230L, 80L))
  expect_error(get_loadings(quick_fit(max_epochs = 2)), "only for a linear decoder")
  expect_error(ldvae(pbmc_small_counts(), dispersion = "gene-cell", max_epochs = 1, verbose = FALSE),
               "per-cell dispersion", class = "scvir_config_error")
})

test_that("LDVAE factors on PBMC 3k load on lineage markers", {
  sce <- read_h5ad(pbmc3k_path())
  fit <- ldvae(SummarizedExperiment::assay(sce, "counts"), max_epochs = 40, seed = 0,
               n_threads = 2, verbose = FALSE)
  l <- get_loadings(fit)
  expect_equal(dim(l), c(2000L, 10L))
  # Top 10 genes of each factor, either sign.
  tops <- unlist(lapply(seq_len(ncol(l)), function(k) {
    c(head(rownames(l)[order(-l[, k])], 10), head(rownames(l)[order(l[, k])], 10))
  }))
  markers <- c("GNLY", "NKG7", "GZMB", "CD79A", "CD79B", "MS4A1", "LYZ", "S100A8", "PPBP", "PF4",
               "FCGR3A", "HLA-DRA", "CCL5", "IL7R")
  expect_gte(length(intersect(markers, tops)), 5)
})
