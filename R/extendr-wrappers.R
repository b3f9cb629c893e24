# Thin R wrappers over the Rust routines registered by the extendr module `scviR`.
# Internal: user-facing functions validate their inputs before calling these. Data-taking
# routines receive two bundles, built by .data_arg() and .opts_arg().

# Counts (genes x cells dgCMatrix; its slots are the cells x genes CSR the engine reads in
# place), 0-based batch codes and encoded covariates.
.data_arg <- function(counts, codes, cov = NULL) {
  list(indptr = counts@p, indices = counts@i, values = counts@x, n_cells = ncol(counts),
       n_genes = nrow(counts), batch_codes = as.integer(codes), covariates = cov)
}

# Query options: seed, minibatch size, threads and where to run.
.opts_arg <- function(fit, seed = NULL, batch_size = 128L, n_threads = NULL) {
  list(seed = as.numeric(seed %||% fit$seed), batch_size = .check_count_arg(batch_size, "batch_size"),
       n_threads = .default_threads(n_threads %||% fit$n_threads),
       accelerator = .query_accelerator(fit), device_index = as.integer(fit$device_index %||% 0L))
}

.rs_train <- function(data, genes, batches, batch_key, registry_json, model_json, train_json,
                      n_threads, progress_every, accelerator, device_index, init_model = NULL) {
  .Call(wrap__scvir_train, data, genes, batches, batch_key, registry_json, model_json, train_json,
        n_threads, progress_every, accelerator, device_index, init_model)
}
.rs_model_meta <- function(model) .Call(wrap__scvir_model_meta, model)
.rs_latent <- function(model, data, opts, what, mc_samples) {
  .Call(wrap__scvir_latent, model, data, opts, what, mc_samples)
}
.rs_normalized_expression <- function(model, data, opts, transform_batches, library_size,
                                      n_samples, return_mean) {
  .Call(wrap__scvir_normalized_expression, model, data, opts, transform_batches, library_size,
        n_samples, return_mean)
}
.rs_evaluate <- function(model, data, opts, what, n, give_mean) {
  .Call(wrap__scvir_evaluate, model, data, opts, what, n, give_mean)
}
.rs_denoised_samples <- function(model, data, opts, transform_batch, n_samples, rna_size_factor) {
  .Call(wrap__scvir_denoised_samples, model, data, opts, transform_batch, n_samples, rna_size_factor)
}
.rs_read_h5ad <- function(path, layer) .Call(wrap__scvir_read_h5ad, path, layer)
.rs_cuda_available <- function() .Call(wrap__scvir_cuda_available)
.rs_debug_panic <- function() .Call(wrap__scvir_debug_panic)
.rs_tune_blas <- function() .Call(wrap__scvir_tune_blas)
.rs_de_compare <- function(model, data, opts, cells1, cells2, batches1, batches2, mode, delta,
                           pseudocounts, n_samples_overall, threshold_counts, test_mode) {
  .Call(wrap__scvir_de_compare, model, data, opts, as.integer(cells1), as.integer(cells2),
        as.integer(batches1), as.integer(batches2), mode, as.numeric(delta), as.numeric(pseudocounts),
        as.integer(n_samples_overall), as.numeric(threshold_counts), test_mode)
}
.rs_predict <- function(model, data, opts, use_posterior_mean) {
  .Call(wrap__scvir_predict, model, data, opts, use_posterior_mean)
}
