# Thin R wrappers over the Rust routines registered by the extendr module `scviR`.
# Internal: user-facing functions validate their inputs before calling these.

.rs_train <- function(indptr, indices, values, n_cells, n_genes, batch_codes, covariates, genes, batches,
                      batch_key, registry_json, model_json, train_json, n_threads, progress_every,
                      accelerator, device_index) {
  .Call(wrap__scvir_train, indptr, indices, values, n_cells, n_genes, batch_codes, covariates, genes, batches,
        batch_key, registry_json, model_json, train_json, n_threads, progress_every, accelerator, device_index)
}
.rs_model_meta <- function(model) .Call(wrap__scvir_model_meta, model)
.rs_latent <- function(model, indptr, indices, values, n_cells, n_genes, batch_codes, covariates, what,
                       mc_samples, seed, batch_size, n_threads, accelerator, device_index) {
  .Call(wrap__scvir_latent, model, indptr, indices, values, n_cells, n_genes, batch_codes, covariates,
        what, mc_samples, seed, batch_size, n_threads, accelerator, device_index)
}
.rs_normalized_expression <- function(model, indptr, indices, values, n_cells, n_genes, batch_codes, covariates,
                                      transform_batches, library_size, n_samples, return_mean,
                                      seed, batch_size, n_threads, accelerator, device_index) {
  .Call(wrap__scvir_normalized_expression, model, indptr, indices, values, n_cells, n_genes,
        batch_codes, covariates, transform_batches, library_size, n_samples, return_mean, seed, batch_size,
        n_threads, accelerator, device_index)
}
.rs_read_h5ad <- function(path, layer) .Call(wrap__scvir_read_h5ad, path, layer)
.rs_cuda_available <- function() .Call(wrap__scvir_cuda_available)
.rs_debug_panic <- function() .Call(wrap__scvir_debug_panic)
.rs_tune_blas <- function() .Call(wrap__scvir_tune_blas)
.rs_evaluate <- function(model, indptr, indices, values, n_cells, n_genes, batch_codes, covariates, what, n,
                         give_mean, seed, batch_size, n_threads, accelerator, device_index) {
  .Call(wrap__scvir_evaluate, model, indptr, indices, values, n_cells, n_genes, batch_codes, covariates, what,
        n, give_mean, seed, batch_size, n_threads, accelerator, device_index)
}
.rs_denoised_samples <- function(model, indptr, indices, values, n_cells, n_genes, batch_codes, covariates,
                                 transform_batch, n_samples, rna_size_factor, seed, batch_size,
                                 n_threads, accelerator, device_index) {
  .Call(wrap__scvir_denoised_samples, model, indptr, indices, values, n_cells, n_genes,
        batch_codes, covariates, transform_batch, n_samples, rna_size_factor, seed, batch_size, n_threads,
        accelerator, device_index)
}
