# Thin R wrappers over the Rust routines registered by the extendr module `scviR`, bound when the
# package loads (R/zzz.R).
# Internal: user-facing functions validate their inputs before calling these. Data-taking
# routines receive two bundles, built by .data_arg() and .opts_arg().

# Counts (genes x cells dgCMatrix; its slots are the cells x genes CSR the engine reads in
# place), 0-based batch codes and encoded covariates.
.data_arg <- function(counts, codes, cov = NULL) {
  if (.is_backed(counts)) {
    return(list(h5ad = .backed_arg(counts), batch_codes = as.integer(codes), covariates = cov))
  }
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
                      n_threads, progress, accelerator, device_index, init_model = NULL,
                      resume = FALSE) {
  .rs_call("scvir_train", data, genes, batches, batch_key, registry_json, model_json, train_json,
        n_threads, progress, accelerator, device_index, init_model, resume)
}
.rs_query_registry <- function(reference, batches, categorical_json) {
  .rs_call("scvir_query_registry", reference, as.character(batches), categorical_json)
}
.rs_load_query <- function(reference, registry_json, data, options_json, seed, n_threads) {
  .rs_call("scvir_load_query", reference, registry_json, data, options_json, as.numeric(seed),
           as.integer(n_threads))
}
.rs_model_meta <- function(model) .rs_call("scvir_model_meta", model)
.rs_model_split <- function(model) .rs_call("scvir_model_split", model)
.rs_latent <- function(model, data, opts, what, mc_samples) {
  .rs_call("scvir_latent", model, data, opts, what, mc_samples)
}
.rs_normalized_expression <- function(model, data, opts, transform_batches, library_size,
                                      n_samples, return_mean) {
  .rs_call("scvir_normalized_expression", model, data, opts, transform_batches, library_size,
        n_samples, return_mean)
}
.rs_evaluate <- function(model, data, opts, what, n, give_mean) {
  .rs_call("scvir_evaluate", model, data, opts, what, n, give_mean)
}
.rs_denoised_samples <- function(model, data, opts, transform_batch, n_samples, rna_size_factor) {
  .rs_call("scvir_denoised_samples", model, data, opts, transform_batch, n_samples, rna_size_factor)
}
.rs_read_h5ad <- function(path, layer) .rs_call("scvir_read_h5ad", path, layer)
.rs_h5ad_backed <- function(path, layer) .rs_call("scvir_h5ad_backed", path, layer)
.rs_h5ad_obs <- function(path, columns, index) .rs_call("scvir_h5ad_obs", path, as.character(columns), index)
.rs_h5ad_gene_sums <- function(handle, codes, n_batches, clip) {
  .rs_call("scvir_h5ad_gene_sums", handle, as.integer(codes), as.integer(n_batches),
           if (is.null(clip)) NULL else as.double(clip))
}
.rs_h5ad_read_cells <- function(handle, cells) .rs_call("scvir_h5ad_read_cells", handle, as.integer(cells))
.rs_h5ad_load <- function(path, location) .rs_call("scvir_h5ad_load", path, location)
.rs_h5ad_memory_bytes <- function(memory) .rs_call("scvir_h5ad_memory_bytes", memory)
.rs_disk_shape <- function(path, location) .rs_call("scvir_disk_shape", path, location)
.rs_save_scvi_tools <- function(model, dir) .rs_call("scvir_save_scvi_tools", model, dir)
.rs_import_scvi_tools <- function(dir) .rs_call("scvir_import_scvi_tools", dir)
.rs_read_h5ad_extras <- function(path, n_cells, n_genes, layers, obsm, raw) {
  .rs_call("scvir_read_h5ad_extras", path, as.integer(n_cells), as.integer(n_genes), layers, obsm, raw)
}
.rs_write_h5ad <- function(path, x, layers, obs, var, obsm, varm, uns) {
  .rs_call("scvir_write_h5ad", path, x, layers, obs, var, obsm, varm, uns)
}
.rs_cuda_available <- function() .rs_call("scvir_cuda_available")
.rs_cuda_info <- function() .rs_call("scvir_cuda_info")
.rs_debug_panic <- function() .rs_call("scvir_debug_panic")
.rs_blas_info <- function() .rs_call("scvir_blas_info")
.rs_de_compare <- function(model, data, opts, cells1, cells2, batches1, batches2, mode, delta,
                           pseudocounts, n_samples_overall, threshold_counts, test_mode,
                           importance = "") {
  .rs_call("scvir_de_compare", model, data, opts, as.integer(cells1), as.integer(cells2),
        as.integer(batches1), as.integer(batches2), mode, as.numeric(delta), as.numeric(pseudocounts),
        as.integer(n_samples_overall), as.numeric(threshold_counts), test_mode, importance)
}
.rs_weighted_expression <- function(model, data, opts, transform_batch, n_samples_overall,
                                    library_size, importance) {
  .rs_call("scvir_weighted_expression", model, data, opts, as.integer(transform_batch),
           as.integer(n_samples_overall), as.numeric(library_size), importance)
}
.rs_predict <- function(model, data, opts, use_posterior_mean) {
  .rs_call("scvir_predict", model, data, opts, use_posterior_mean)
}
.rs_available_cores <- function() .rs_call("scvir_available_cores")
.rs_set_tuning <- function(tune_blas, tune_allocator) {
  .rs_call("scvir_set_tuning", tune_blas, tune_allocator)
}

# Calls a registered routine; without the engine (libtorch missing) a classed error says why.
.rs_call <- function(name, ...) {
  routine <- .scvir_state$routines[[paste0("wrap__", name)]]
  if (is.null(routine)) {
    scvir_abort(.scvir_state$load_error %||% sprintf("scviR's engine has no routine %s", name),
                "scvir_setup_error")
  }
  .Call(routine, ...)
}
.rs_process_state <- function() .rs_call("scvir_process_state")
.rs_model_values <- function(model, what) .rs_call("scvir_model_values", model, what)
.rs_model_tensors <- function(model) .rs_call("scvir_model_tensors", model)
