//! extendr bridge between R and scvir-engine. Thin by design: R vectors in, engine calls, R
//! vectors out. Engine errors become R errors whose message starts with a tag naming their kind
//! ("[scviR:input]", "[scviR:interrupted]", ...), which the R side turns into condition classes.
#![allow(non_snake_case)]

mod blas;
mod convert;
mod observer;

use convert::{column_to_robj, engine_error, row_major_to_matrix, OwnedCovariates};
use extendr_api::prelude::*;
use extendr_api::Result;
use observer::RObserver;
use scvir_engine::data::{Counts, Registry};
use scvir_engine::io::{h5ad, model_file};
use scvir_engine::module::{Vae, VaeConfig};
use scvir_engine::train::{self, TrainConfig};
use scvir_engine::{infer, runtime};
use tch::Device;

fn counts<'a>(n_cells: i32, n_genes: i32, indptr: &'a [i32], indices: &'a [i32], values: &'a [f64]) -> Result<Counts<'a>> {
    Counts::from_csr(n_cells as usize, n_genes as usize, indptr, indices, values).map_err(engine_error)
}

/// Rust's default panic hook prints a backtrace to stderr; the panic message already reaches R
/// as an error (extendr catches the unwind), so the hook stays silent.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// "cpu", "gpu"/"cuda" (device index `index`) or "auto" (the first CUDA device when the linked
/// libtorch has one, else the CPU).
fn device(accelerator: &str, index: i32) -> Result<Device> {
    match accelerator {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if runtime::cuda_available() { Device::Cuda(index.max(0) as usize) } else { Device::Cpu }),
        "gpu" | "cuda" => {
            if !runtime::cuda_available() {
                return Err(Error::Other(
                    "[scviR:config] accelerator = \"gpu\" needs CUDA, but no CUDA device is available to the libtorch scviR was built with (a CPU-only libtorch, or no GPU); use \"cpu\" or \"auto\"".into(),
                ));
            }
            let n = tch::Cuda::device_count();
            if index < 0 || index as i64 >= n {
                return Err(Error::Other(format!("[scviR:config] device {index} does not exist ({n} CUDA device(s))")));
            }
            Ok(Device::Cuda(index as usize))
        }
        other => Err(Error::Other(format!("[scviR:config] accelerator must be \"auto\", \"cpu\" or \"gpu\"; got \"{other}\""))),
    }
}

fn prepare(n_threads: i32) {
    quiet_panics();
    runtime::init();
    if n_threads > 0 {
        runtime::set_threads(Some(n_threads as usize));
        blas::set_openblas_threads(n_threads as usize);
    }
}

/// Called from .onLoad: picks OpenBLAS kernels that fit the CPU when it fell back to generic ones.
/// @noRd
#[extendr]
fn scvir_tune_blas() -> String {
    quiet_panics();
    blas::tune_openblas()
}

/// Trains an SCVI model. Counts come as a cells x genes CSR matrix (the slots of R's genes x cells
/// dgCMatrix, passed without copying). Returns the model bytes and the training record.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn scvir_train(
    indptr: &[i32],
    indices: &[i32],
    values: &[f64],
    n_cells: i32,
    n_genes: i32,
    batch_codes: &[i32],
    covariates: List,
    genes: Vec<String>,
    batches: Vec<String>,
    batch_key: &str,
    registry_json: &str,
    model_json: &str,
    train_json: &str,
    n_threads: i32,
    progress_every: i32,
    accelerator: &str,
    device_index: i32,
) -> Result<List> {
    prepare(n_threads);
    let dev = device(accelerator, device_index)?;
    let x = counts(n_cells, n_genes, indptr, indices, values)?;
    let cov_owned = OwnedCovariates::from_list(&covariates)?;
    let cov = cov_owned.view();
    let mut vae_cfg: VaeConfig = serde_json::from_str(model_json).map_err(|e| Error::Other(format!("[scviR:config] {e}")))?;
    vae_cfg.n_genes = n_genes as i64;
    vae_cfg.n_batch = batches.len().max(1) as i64;
    let train_cfg: TrainConfig = serde_json::from_str(train_json).map_err(|e| Error::Other(format!("[scviR:config] {e}")))?;
    let mut registry = Registry::with_library_prior(genes, x, batch_codes, batches.len().max(1));
    registry.batches = batches;
    registry.batch_key = (!batch_key.is_empty()).then(|| batch_key.to_string());
    let extra: Registry = serde_json::from_str(registry_json).map_err(|e| Error::Other(format!("[scviR:config] {e}")))?;
    registry.labels_key = extra.labels_key;
    registry.labels = extra.labels;
    registry.categorical_covariates = extra.categorical_covariates;
    registry.continuous_covariates = extra.continuous_covariates;
    registry.size_factor_key = extra.size_factor_key;
    let prior = (registry.library_log_means.clone(), registry.library_log_vars.clone());
    runtime::seed_everything(train_cfg.seed);
    let mut vae = Vae::new(vae_cfg.clone(), dev, Some((&prior.0, &prior.1))).map_err(engine_error)?;
    let mut obs = RObserver::new(progress_every.max(0) as usize);
    let outcome = train::train(&mut vae, x, batch_codes, &cov, &train_cfg, &mut obs).map_err(engine_error)?;
    let meta = model_file::ModelMeta {
        model: "SCVI".into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        vae: vae_cfg,
        train: TrainConfig { max_epochs: Some(outcome.max_epochs), ..train_cfg },
        registry,
        history: outcome.history.clone(),
        split: outcome.split.clone(),
        tensors: vec![],
    };
    let bytes = model_file::to_bytes(&vae, &meta).map_err(engine_error)?;
    let one_based = |v: &[usize]| v.iter().map(|&i| (i + 1) as i32).collect::<Vec<i32>>();
    List::from_names_and_values(
        ["model", "history_json", "train", "validation", "test", "max_epochs", "n_parameters", "device"],
        [
            Raw::from_bytes(&bytes).into_robj(),
            serde_json::to_string(&outcome.history).unwrap_or_default().into_robj(),
            one_based(&outcome.split.train).into_robj(),
            one_based(&outcome.split.validation).into_robj(),
            one_based(&outcome.split.test).into_robj(),
            (outcome.max_epochs as i32).into_robj(),
            (vae.n_parameters() as f64).into_robj(),
            format!("{dev:?}").into_robj(),
        ],
    )
}

fn load(model: &Raw, accelerator: &str, device_index: i32) -> Result<(Vae, model_file::ModelMeta)> {
    model_file::from_bytes(model.as_slice(), device(accelerator, device_index)?).map_err(engine_error)
}

/// The model's header (config, registry, history, split) as JSON.
/// @noRd
#[extendr]
fn scvir_model_meta(model: Raw) -> Result<String> {
    let (meta, _) = model_file::read_meta(model.as_slice()).map_err(engine_error)?;
    serde_json::to_string(&meta).map_err(|e| Error::Other(e.to_string()))
}

/// Cells x n_latent posterior means, samples, or the Gaussian posterior's means and variances.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn scvir_latent(
    model: Raw,
    indptr: &[i32],
    indices: &[i32],
    values: &[f64],
    n_cells: i32,
    n_genes: i32,
    batch_codes: &[i32],
    covariates: List,
    what: &str,
    mc_samples: i32,
    seed: f64,
    batch_size: i32,
    n_threads: i32,
    accelerator: &str,
    device_index: i32,
) -> Result<List> {
    prepare(n_threads);
    let (vae, _) = load(&model, accelerator, device_index)?;
    let x = counts(n_cells, n_genes, indptr, indices, values)?;
    let cov_owned = OwnedCovariates::from_list(&covariates)?;
    let cov = cov_owned.view();
    tch::manual_seed(seed as i64);
    let query = match what {
        "mean" => infer::LatentQuery::Mean { mc_samples: mc_samples.max(1) as usize },
        "sample" => infer::LatentQuery::Sample,
        "dist" => infer::LatentQuery::Distribution,
        other => return Err(Error::Other(format!("[scviR:config] unknown latent query \"{other}\""))),
    };
    let (a, b) = infer::latent_representation(&vae, x, batch_codes, &cov, query, batch_size.max(1) as usize).map_err(engine_error)?;
    let k = vae.config.n_latent as usize;
    let second = b.map_or(().into_robj(), |v| row_major_to_matrix(&v, n_cells as usize, k).into_robj());
    List::from_names_and_values(["z", "var"], [row_major_to_matrix(&a, n_cells as usize, k).into_robj(), second])
}

/// Normalized expression, one row-major cells x genes vector per output sample.
/// `transform_batches` holds 0-based batch codes (empty: each cell's own batch);
/// `library_size` < 0 means the model's own library ("latent").
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn scvir_normalized_expression(
    model: Raw,
    indptr: &[i32],
    indices: &[i32],
    values: &[f64],
    n_cells: i32,
    n_genes: i32,
    batch_codes: &[i32],
    covariates: List,
    transform_batches: &[i32],
    library_size: f64,
    n_samples: i32,
    return_mean: bool,
    seed: f64,
    batch_size: i32,
    n_threads: i32,
    accelerator: &str,
    device_index: i32,
) -> Result<List> {
    prepare(n_threads);
    let (vae, _) = load(&model, accelerator, device_index)?;
    let x = counts(n_cells, n_genes, indptr, indices, values)?;
    let cov_owned = OwnedCovariates::from_list(&covariates)?;
    let cov = cov_owned.view();
    tch::manual_seed(seed as i64);
    let tb: Vec<usize> = transform_batches.iter().map(|&b| b.max(0) as usize).collect();
    let lib = if library_size < 0.0 { infer::LibrarySize::Latent } else { infer::LibrarySize::Constant(library_size) };
    let e = infer::normalized_expression(&vae, x, batch_codes, &cov, &tb, lib, n_samples.max(1) as usize, return_mean, batch_size.max(1) as usize)
        .map_err(engine_error)?;
    Ok(List::from_values(e.into_iter().map(|m| m.into_iter().map(f64::from).collect::<Vec<f64>>())))
}

/// Per-cell evaluation of a trained model: `what` is "losses" (list of reconstruction and
/// kl_local), "marginal_ll" (`n` importance samples), "library_size" (`give_mean`),
/// "likelihood_parameters" (`n` samples, `give_mean`) or "posterior_predictive" (`n` samples);
/// matrices come back as row-major cells x genes vectors.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn scvir_evaluate(
    model: Raw,
    indptr: &[i32],
    indices: &[i32],
    values: &[f64],
    n_cells: i32,
    n_genes: i32,
    batch_codes: &[i32],
    covariates: List,
    what: &str,
    n: i32,
    give_mean: bool,
    seed: f64,
    batch_size: i32,
    n_threads: i32,
    accelerator: &str,
    device_index: i32,
) -> Result<Robj> {
    prepare(n_threads);
    let (vae, _) = load(&model, accelerator, device_index)?;
    let x = counts(n_cells, n_genes, indptr, indices, values)?;
    let cov_owned = OwnedCovariates::from_list(&covariates)?;
    let cov = cov_owned.view();
    tch::manual_seed(seed as i64);
    let bs = batch_size.max(1) as usize;
    match what {
        "losses" => {
            let l = infer::cell_losses(&vae, x, batch_codes, &cov, bs).map_err(engine_error)?;
            Ok(List::from_names_and_values(["reconstruction", "kl_local"], [l.reconstruction, l.kl_local])?.into_robj())
        }
        "marginal_ll" => Ok(infer::marginal_ll(&vae, x, batch_codes, &cov, n.max(0) as usize, bs).map_err(engine_error)?.into_robj()),
        "library_size" => Ok(infer::latent_library_size(&vae, x, batch_codes, &cov, give_mean, bs).map_err(engine_error)?.into_robj()),
        "likelihood_parameters" => {
            let p = infer::likelihood_parameters(&vae, x, batch_codes, &cov, n.max(1) as usize, give_mean, bs).map_err(engine_error)?;
            let as_list = |v: Option<Vec<Vec<f32>>>| -> Robj {
                v.map_or(().into_robj(), |v| List::from_values(v.into_iter().map(|m| m.into_iter().map(f64::from).collect::<Vec<f64>>())).into_robj())
            };
            Ok(List::from_names_and_values(["mean", "dispersions", "dropout"], [as_list(Some(p.mean)), as_list(p.dispersions), as_list(p.dropout)])?.into_robj())
        }
        "posterior_predictive" => {
            let samples = infer::posterior_predictive_sample(&vae, x, batch_codes, &cov, n.max(1) as usize, bs).map_err(engine_error)?;
            Ok(List::from_values(samples.into_iter().map(|m| m.into_iter().map(f64::from).collect::<Vec<f64>>())).into_robj())
        }
        other => Err(Error::Other(format!("[scviR:config] unknown evaluation \"{other}\""))),
    }
}

/// Denoised Gamma samples (rows: cell x sample, row-major over genes) for gene correlations.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn scvir_denoised_samples(
    model: Raw,
    indptr: &[i32],
    indices: &[i32],
    values: &[f64],
    n_cells: i32,
    n_genes: i32,
    batch_codes: &[i32],
    covariates: List,
    transform_batch: i32,
    n_samples: i32,
    rna_size_factor: f64,
    seed: f64,
    batch_size: i32,
    n_threads: i32,
    accelerator: &str,
    device_index: i32,
) -> Result<Vec<f64>> {
    prepare(n_threads);
    let (vae, _) = load(&model, accelerator, device_index)?;
    let x = counts(n_cells, n_genes, indptr, indices, values)?;
    let cov_owned = OwnedCovariates::from_list(&covariates)?;
    let cov = cov_owned.view();
    tch::manual_seed(seed as i64);
    let tb = (transform_batch >= 0).then_some(transform_batch as usize);
    let v = infer::denoised_samples(&vae, x, batch_codes, &cov, tb, n_samples.max(1) as usize, rna_size_factor, batch_size.max(1) as usize)
        .map_err(engine_error)?;
    Ok(v.into_iter().map(f64::from).collect())
}

/// Reads an .h5ad file: CSR counts (cells x genes) and the obs / var data frames.
/// @noRd
#[extendr]
fn scvir_read_h5ad(path: &str, layer: &str) -> Result<List> {
    let data = h5ad::read(path, (!layer.is_empty()).then_some(layer)).map_err(engine_error)?;
    let frame = |f: &h5ad::Frame| -> Result<List> {
        let names: Vec<&str> = f.columns.iter().map(|(n, _)| n.as_str()).collect();
        let cols: Vec<Robj> = f.columns.iter().map(|(_, c)| column_to_robj(c)).collect();
        let columns = List::from_names_and_values(names, cols)?;
        List::from_names_and_values(
            ["index", "columns", "skipped"],
            [f.index.clone().into_robj(), columns.into_robj(), f.skipped.clone().into_robj()],
        )
    };
    let c = &data.counts;
    List::from_names_and_values(
        ["indptr", "indices", "values", "n_cells", "n_genes", "obs", "var"],
        [
            c.indptr.clone().into_robj(),
            c.indices.clone().into_robj(),
            c.data.clone().into_robj(),
            (c.n_cells as i32).into_robj(),
            (c.n_genes as i32).into_robj(),
            frame(&data.obs)?.into_robj(),
            frame(&data.var)?.into_robj(),
        ],
    )
}

/// Whether the linked libtorch can run on a CUDA device here.
/// @noRd
#[extendr]
fn scvir_cuda_available() -> bool {
    runtime::cuda_available()
}

/// Panics on purpose, so tests can check that a Rust panic surfaces as an R error.
/// @noRd
#[extendr]
fn scvir_debug_panic() {
    quiet_panics();
    panic!("deliberate panic for testing");
}

extendr_module! {
    mod scviR;
    fn scvir_train;
    fn scvir_model_meta;
    fn scvir_latent;
    fn scvir_normalized_expression;
    fn scvir_evaluate;
    fn scvir_denoised_samples;
    fn scvir_read_h5ad;
    fn scvir_cuda_available;
    fn scvir_tune_blas;
    fn scvir_debug_panic;
}
