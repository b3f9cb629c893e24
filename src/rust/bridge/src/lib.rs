//! extendr bridge between R and scvir-engine. Thin by design: R vectors in, engine calls, R
//! vectors out. Engine errors become R errors whose message starts with a tag naming their kind
//! ("[scviR:input]", "[scviR:interrupted]", ...), which the R side turns into condition classes.
#![allow(non_snake_case)]

mod args;
mod convert;
mod observer;

use args::{DataArgs, Opts};
use convert::{column_to_robj, engine_error, row_major_to_matrix};
use extendr_api::prelude::*;
use extendr_api::Result;
use observer::RObserver;
use scvir_engine::data::Registry;
use scvir_engine::io::{h5ad, model_file};
use scvir_engine::module::{Vae, VaeConfig};
use scvir_engine::train::{self, TrainConfig};
use scvir_engine::runtime::{Session, SessionOptions};
use scvir_engine::{de, infer, runtime};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Device;


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
            if let Some(why) = runtime::gpu_unavailable_reason() {
                return Err(Error::Other(format!(
                    "[scviR:config] accelerator = \"gpu\" needs a CUDA device, but {why}; or use \"cpu\" or \"auto\""
                )));
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

/// Opt-in process tuning, set from R's options before each engine call.
static TUNE_BLAS: AtomicBool = AtomicBool::new(false);
static TUNE_ALLOCATOR: AtomicBool = AtomicBool::new(false);

/// Enters an engine session: threads, floating-point flags and the opt-in tuning apply until the
/// returned guard is dropped, which restores the R session's settings (also on error).
fn prepare(n_threads: i32) -> Session {
    quiet_panics();
    Session::enter(SessionOptions {
        n_threads: (n_threads > 0).then_some(n_threads as usize),
        tune_blas: TUNE_BLAS.load(Ordering::Relaxed),
        tune_allocator: TUNE_ALLOCATOR.load(Ordering::Relaxed),
        interrupt: Some(observer::r_interrupt_pending),
    })
}

/// Sets the opt-in tuning of engine calls (R options scviR.tune_blas / scviR.tune_allocator).
/// @noRd
#[extendr]
fn scvir_set_tuning(tune_blas: bool, tune_allocator: bool) {
    quiet_panics();
    TUNE_BLAS.store(tune_blas, Ordering::Relaxed);
    TUNE_ALLOCATOR.store(tune_allocator, Ordering::Relaxed);
}

/// OpenBLAS's kernel set in this process and the better one this CPU supports, if any.
/// @noRd
#[extendr]
fn scvir_blas_info() -> List {
    quiet_panics();
    let core = runtime::openblas_core();
    let better = runtime::better_openblas_core();
    list!(core = core.map_or(().into_robj(), |c| c.into_robj()), better = better.map_or(().into_robj(), |c| c.into_robj()))
}

/// The settings an engine session changes and restores, as they are now (tests compare them
/// before and after engine calls).
/// @noRd
#[extendr]
fn scvir_process_state() -> List {
    let s = runtime::process_state();
    let int = |v: Option<i32>| v.map_or(Rint::na(), Rint::from);
    list!(
        mxcsr = int(s.mxcsr.map(|v| v as i32)),
        omp_max_threads = int(s.omp_max_threads),
        openblas_threads = int(s.openblas_threads),
        openblas_core = s.openblas_core.map_or(().into_robj(), |c| c.into_robj()),
        torch_threads = s.torch_threads
    )
}

/// scvi-tools' default number of epochs for `n_cells` cells (the engine's rule).
/// @noRd
#[extendr]
fn scvir_default_max_epochs(n_cells: f64) -> i32 {
    train::default_max_epochs(n_cells.max(1.0) as usize) as i32
}

/// CPUs this process may use (affinity, cgroup quota, OMP_NUM_THREADS, SLURM_CPUS_PER_TASK).
/// @noRd
#[extendr]
fn scvir_available_cores() -> i32 {
    runtime::available_cores() as i32
}

/// Parses the argument bundles, enters a session, loads the model on its device and seeds
/// libtorch. The session must outlive every libtorch call of the query.
fn open_query(model: &Raw, data: &List, opts: &List) -> Result<(Session, Vae, DataArgs, Opts)> {
    let o = Opts::from_list(opts)?;
    let session = prepare(o.n_threads);
    let (vae, _) = model_file::from_bytes(model.as_slice(), device(&o.accelerator, o.device_index)?).map_err(engine_error)?;
    let d = DataArgs::from_list(data)?;
    tch::manual_seed(o.seed as i64);
    Ok((session, vae, d, o))
}

fn doubles(m: Vec<f32>) -> Vec<f64> {
    m.into_iter().map(f64::from).collect()
}

/// Trains a model on `data` (see `args`) and returns its bytes and the training record. A new
/// SCVI / LDVAE / scANVI model is built from the registry and the options; with `resume`,
/// `init_model` is the model itself (a query model of reference mapping, or a trained model to
/// train further), whose architecture, registry and freezing rules are kept. Otherwise
/// `init_model`, if given, lends its matching weights (scANVI from an SCVI model).
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn scvir_train(
    data: List,
    genes: Vec<String>,
    batches: Vec<String>,
    batch_key: &str,
    registry_json: &str,
    model_json: &str,
    train_json: &str,
    n_threads: i32,
    progress: Robj,
    accelerator: &str,
    device_index: i32,
    init_model: Robj,
    resume: bool,
) -> Result<List> {
    let _session = prepare(n_threads);
    let dev = device(accelerator, device_index)?;
    let d = DataArgs::from_list(&data)?;
    let (x, batch_codes, cov) = (d.source()?, d.batch_codes()?, d.covariates());
    let config_error = |e: serde_json::Error| Error::Other(format!("[scviR:config] {e}"));
    let train_cfg: TrainConfig = serde_json::from_str(train_json).map_err(config_error)?;
    let (mut vae, registry) = if resume {
        let bytes = init_model.as_raw().ok_or_else(|| Error::Other("[scviR:engine] resume needs the model".into()))?;
        let (vae, meta) = model_file::from_bytes(bytes.as_slice(), dev).map_err(engine_error)?;
        if vae.config.n_genes as usize != d.n_genes() {
            return Err(Error::Other(format!("[scviR:input] the data have {} genes, the model {}", d.n_genes(), vae.config.n_genes)));
        }
        (vae, Registry { n_cells_fitted: d.n_cells(), ..meta.registry })
    } else {
        let mut vae_cfg: VaeConfig = serde_json::from_str(model_json).map_err(config_error)?;
        let extra: Registry = serde_json::from_str(registry_json).map_err(config_error)?;
        let registry = Registry {
            batches: batches.clone(),
            batch_key: (!batch_key.is_empty()).then(|| batch_key.to_string()),
            ..Registry { genes, ..extra }
        };
        let prior = scvir_engine::data::registry::library_prior(x, batch_codes, batches.len().max(1));
        let registry = Registry { library_log_means: prior.0.clone(), library_log_vars: prior.1.clone(), n_cells_fitted: d.n_cells(), ..registry };
        // The model's sizes follow from the registry and the data, whatever the R side sent.
        registry.apply_to(&mut vae_cfg);
        vae_cfg.use_size_factor_key = cov.size_factor.is_some();
        if vae_cfg.n_genes as usize != d.n_genes() {
            return Err(Error::Other(format!("[scviR:input] {} gene names for {} genes", vae_cfg.n_genes, d.n_genes())));
        }
        runtime::seed_everything(train_cfg.seed);
        let mut vae = Vae::new(vae_cfg, dev, Some((&prior.0, &prior.1))).map_err(engine_error)?;
        // Pretrained weights (SCANVI from an SCVI model): every matching tensor is copied.
        if let Some(bytes) = init_model.as_raw() {
            let (pretrained, _) = model_file::from_bytes(bytes.as_slice(), dev).map_err(engine_error)?;
            if pretrained.config.n_genes != vae.config.n_genes {
                return Err(Error::Other("[scviR:input] the pretrained model has different genes".into()));
            }
            vae.copy_matching_weights(&pretrained);
        }
        (vae, registry)
    };
    let mut obs = RObserver::new(progress.as_function());
    let result = train::train_on(&mut vae, x, batch_codes, &cov, &train_cfg, &mut obs);
    if obs.unwind_pending {
        // Everything Rust holds is dropped on the way out; the R side then resumes the exit.
        return Err(Error::Other("[scviR:unwind] a progress handler left the call".into()));
    }
    let outcome = result.map_err(engine_error)?;
    let meta = model_file::ModelMeta {
        model: model_name(&vae.config).into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        vae: vae.config.clone(),
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

fn model_name(cfg: &VaeConfig) -> &'static str {
    if cfg.scanvi.is_some() {
        "SCANVI"
    } else if cfg.linear_decoder {
        "LDVAE"
    } else {
        "SCVI"
    }
}

/// The registry of a query model: the reference's, extended by the query's batches and
/// categorical covariate values (`categorical_json`: `[[key, [values]], ...]`), as JSON.
/// @noRd
#[extendr]
fn scvir_query_registry(reference: Raw, batches: Vec<String>, categorical_json: &str) -> Result<String> {
    quiet_panics();
    let (meta, _) = model_file::read_meta(reference.as_slice()).map_err(engine_error)?;
    let categorical: Vec<(String, Vec<String>)> =
        serde_json::from_str(categorical_json).map_err(|e| Error::Other(format!("[scviR:engine] {e}")))?;
    let registry = scvir_engine::module::arches::extend_registry(&meta.registry, &batches, &categorical, meta.vae.scanvi.as_ref().map(|s| s.n_labels))
        .map_err(engine_error)?;
    serde_json::to_string(&registry).map_err(|e| Error::Other(e.to_string()))
}

/// Builds the untrained query model of scArches reference mapping from the reference model, the
/// extended registry, the query's data (coded against that registry) and the freeze options
/// (`options_json`, the engine's `QueryConfig`). Returns the model bytes.
/// @noRd
#[extendr]
fn scvir_load_query(reference: Raw, registry_json: &str, data: List, options_json: &str, seed: f64, n_threads: i32) -> Result<Robj> {
    let _session = prepare(n_threads);
    let config_error = |e: serde_json::Error| Error::Other(format!("[scviR:config] {e}"));
    let (reference_vae, ref_meta) = model_file::from_bytes(reference.as_slice(), Device::Cpu).map_err(engine_error)?;
    let mut registry: Registry = serde_json::from_str(registry_json).map_err(config_error)?;
    let mut options: scvir_engine::module::arches::QueryConfig = serde_json::from_str(options_json).map_err(config_error)?;
    options.reference_batches = ref_meta.registry.batches.clone();
    options.reference_n_cells = ref_meta.registry.n_cells_fitted;
    let d = DataArgs::from_list(&data)?;
    runtime::seed_everything(seed.max(0.0) as u64);
    let vae = scvir_engine::module::arches::query_model(&reference_vae, &mut registry, d.source()?, d.batch_codes()?, options, Device::Cpu)
        .map_err(engine_error)?;
    let meta = model_file::ModelMeta {
        model: ref_meta.model.clone(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        vae: vae.config.clone(),
        train: ref_meta.train.clone(),
        registry: Registry { n_cells_fitted: d.n_cells(), ..registry },
        history: Default::default(),
        split: Default::default(),
        tensors: vec![],
    };
    let bytes = model_file::to_bytes(&vae, &meta).map_err(engine_error)?;
    Ok(Raw::from_bytes(&bytes).into_robj())
}

/// The model's header (config, registry, history, split) as JSON.
/// @noRd
#[extendr]
fn scvir_model_meta(model: Raw) -> Result<String> {
    let (mut meta, _) = model_file::read_meta(model.as_slice()).map_err(engine_error)?;
    // The split (one index per cell: millions for an atlas) comes as integer vectors from
    // scvir_model_split, not through R's JSON parser.
    meta.split = Default::default();
    serde_json::to_string(&meta).map_err(|e| Error::Other(e.to_string()))
}

/// The model's train / validation / test cells, 1-based.
/// @noRd
#[extendr]
fn scvir_model_split(model: Raw) -> Result<List> {
    quiet_panics();
    let (meta, _) = model_file::read_meta(model.as_slice()).map_err(engine_error)?;
    let one_based = |v: &[usize]| v.iter().map(|&i| (i + 1) as i32).collect::<Vec<i32>>();
    List::from_names_and_values(
        ["train", "validation", "test"],
        [one_based(&meta.split.train).into_robj(), one_based(&meta.split.validation).into_robj(), one_based(&meta.split.test).into_robj()],
    )
}

/// Cells x n_latent posterior means ("mean"), samples ("sample"), or the Gaussian posterior's
/// means and variances ("dist").
/// @noRd
#[extendr]
fn scvir_latent(model: Raw, data: List, opts: List, what: &str, mc_samples: i32) -> Result<List> {
    let (_session, vae, d, o) = open_query(&model, &data, &opts)?;
    let query = match what {
        "mean" => infer::LatentQuery::Mean { mc_samples: mc_samples.max(1) as usize },
        "sample" => infer::LatentQuery::Sample,
        "dist" => infer::LatentQuery::Distribution,
        other => return Err(Error::Other(format!("[scviR:config] unknown latent query \"{other}\""))),
    };
    let (a, b) = infer::latent_representation(&vae, d.source()?, d.batch_codes()?, &d.covariates(), query, o.batch_size)
        .map_err(engine_error)?;
    let (n, k) = (d.n_cells(), vae.config.n_latent as usize);
    let second = b.map_or(().into_robj(), |v| row_major_to_matrix(&v, n, k).into_robj());
    List::from_names_and_values(["z", "var"], [row_major_to_matrix(&a, n, k).into_robj(), second])
}

/// Normalized expression, one row-major cells x genes vector per output sample.
/// `transform_batches` holds 0-based batch codes (empty: each cell's own batch);
/// `library_size` < 0 means the model's own library ("latent").
/// @noRd
#[extendr]
fn scvir_normalized_expression(
    model: Raw,
    data: List,
    opts: List,
    transform_batches: &[i32],
    library_size: f64,
    n_samples: i32,
    return_mean: bool,
) -> Result<List> {
    let (_session, vae, d, o) = open_query(&model, &data, &opts)?;
    let tb: Vec<usize> = transform_batches.iter().map(|&b| b.max(0) as usize).collect();
    let lib = if library_size < 0.0 { infer::LibrarySize::Latent } else { infer::LibrarySize::Constant(library_size) };
    let e = infer::normalized_expression(
        &vae, d.source()?, d.batch_codes()?, &d.covariates(), &tb, lib, n_samples.max(1) as usize, return_mean, o.batch_size,
    )
    .map_err(engine_error)?;
    Ok(List::from_values(e.into_iter().map(doubles)))
}

/// Per-cell evaluation of a trained model: `what` is "losses" (list of reconstruction and
/// kl_local), "marginal_ll" (`n` importance samples), "library_size" (`give_mean`),
/// "likelihood_parameters" (`n` samples, `give_mean`) or "posterior_predictive" (`n` samples);
/// matrices come back as row-major cells x genes vectors.
/// @noRd
#[extendr]
fn scvir_evaluate(model: Raw, data: List, opts: List, what: &str, n: i32, give_mean: bool) -> Result<Robj> {
    let (_session, vae, d, o) = open_query(&model, &data, &opts)?;
    let (x, codes, cov, bs) = (d.source()?, d.batch_codes()?, d.covariates(), o.batch_size);
    let n = n.max(0) as usize;
    match what {
        "losses" => {
            let l = infer::cell_losses(&vae, x, codes, &cov, bs).map_err(engine_error)?;
            Ok(List::from_names_and_values(["reconstruction", "kl_local"], [l.reconstruction, l.kl_local])?.into_robj())
        }
        "marginal_ll" => Ok(infer::marginal_ll(&vae, x, codes, &cov, n, bs).map_err(engine_error)?.into_robj()),
        "library_size" => Ok(infer::latent_library_size(&vae, x, codes, &cov, give_mean, bs).map_err(engine_error)?.into_robj()),
        "likelihood_parameters" => {
            let p = infer::likelihood_parameters(&vae, x, codes, &cov, n.max(1), give_mean, bs).map_err(engine_error)?;
            let as_list = |v: Option<Vec<Vec<f32>>>| -> Robj {
                v.map_or(().into_robj(), |v| List::from_values(v.into_iter().map(doubles)).into_robj())
            };
            Ok(List::from_names_and_values(["mean", "dispersions", "dropout"], [as_list(Some(p.mean)), as_list(p.dispersions), as_list(p.dropout)])?
                .into_robj())
        }
        "posterior_predictive" => {
            let samples = infer::posterior_predictive_sample(&vae, x, codes, &cov, n.max(1), bs).map_err(engine_error)?;
            Ok(List::from_values(samples.into_iter().map(doubles)).into_robj())
        }
        other => Err(Error::Other(format!("[scviR:config] unknown evaluation \"{other}\""))),
    }
}

/// Denoised Gamma samples (rows: cell x sample, row-major over genes) for gene correlations;
/// `transform_batch` is a 0-based code or -1.
/// @noRd
#[extendr]
fn scvir_denoised_samples(model: Raw, data: List, opts: List, transform_batch: i32, n_samples: i32, rna_size_factor: f64) -> Result<Vec<f64>> {
    let (_session, vae, d, o) = open_query(&model, &data, &opts)?;
    let tb = (transform_batch >= 0).then_some(transform_batch as usize);
    let v = infer::denoised_samples(&vae, d.source()?, d.batch_codes()?, &d.covariates(), tb, n_samples.max(1) as usize, rna_size_factor, o.batch_size)
        .map_err(engine_error)?;
    Ok(doubles(v))
}

/// One differential expression comparison. `cells1` / `cells2` are 0-based cell indices;
/// `batches1` / `batches2` are 0-based batch codes to decode in, empty for the observed batches;
/// `delta` / `pseudocounts` NaN mean "estimate". Returns named per-gene columns.
/// @noRd
#[extendr]
#[allow(clippy::too_many_arguments)]
fn scvir_de_compare(
    model: Raw,
    data: List,
    opts: List,
    cells1: &[i32],
    cells2: &[i32],
    batches1: &[i32],
    batches2: &[i32],
    mode: &str,
    delta: f64,
    pseudocounts: f64,
    n_samples_overall: i32,
    threshold_counts: f64,
    test_mode: &str,
    importance_json: &str,
) -> Result<List> {
    let (_session, vae, d, o) = open_query(&model, &data, &opts)?;
    let importance = importance_config(importance_json)?;
    let mode = match mode {
        "vanilla" => de::Mode::Vanilla,
        "change" => de::Mode::Change,
        other => return Err(Error::Other(format!("[scviR:config] mode must be \"vanilla\" or \"change\"; got \"{other}\""))),
    };
    let two_sided = match test_mode {
        "two" => true,
        "three" => false,
        other => return Err(Error::Other(format!("[scviR:config] test_mode must be \"two\" or \"three\"; got \"{other}\""))),
    };
    let idx = |v: &[i32]| v.iter().map(|&c| c.max(0) as usize).collect::<Vec<usize>>();
    let policy = |b: &[i32]| if b.is_empty() { de::BatchPolicy::Observed } else { de::BatchPolicy::Transform(idx(b)) };
    let finite = |x: f64| x.is_finite().then_some(x);
    let cfg = de::DeConfig {
        mode,
        delta: finite(delta),
        pseudocounts: finite(pseudocounts),
        n_samples_overall: n_samples_overall.max(0) as usize,
        threshold_counts,
        two_sided,
        batch_size: o.batch_size,
        seed: o.seed as u64,
        n_threads: o.n_threads.max(1) as usize,
        importance,
    };
    let r = de::compare(&vae, d.counts()?, d.batch_codes()?, &d.covariates(), &idx(cells1), &idx(cells2), &policy(batches1), &policy(batches2), &cfg)
        .map_err(engine_error)?;
    let names: Vec<&str> = r.columns.iter().map(|(n, _)| n.as_str()).collect();
    List::from_names_and_values(names, r.columns.iter().map(|(_, v)| v.clone()))
}

/// lvm-DE's importance-weighting options (JSON, the engine's `ImportanceConfig`); "" for none.
fn importance_config(json: &str) -> Result<Option<de::importance::ImportanceConfig>> {
    if json.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(json).map(Some).map_err(|e| Error::Other(format!("[scviR:config] importance_weighting_kwargs: {e}")))
}

/// `n_samples_overall` importance-weighted expression samples over all cells (lvm-DE's
/// `get_normalized_expression(weights = "importance")`): a row-major samples x genes vector and
/// the 0-based cell each sample came from. `library_size` < 0: each sample's own library.
/// @noRd
#[extendr]
fn scvir_weighted_expression(
    model: Raw,
    data: List,
    opts: List,
    transform_batch: i32,
    n_samples_overall: i32,
    library_size: f64,
    importance_json: &str,
) -> Result<List> {
    let (_session, vae, d, o) = open_query(&model, &data, &opts)?;
    let cfg = importance_config(importance_json)?.unwrap_or_default();
    let lib = if library_size < 0.0 { de::importance::SampleLibrary::Own } else { de::importance::SampleLibrary::Constant(library_size) };
    let tb = (transform_batch >= 0).then_some(transform_batch as usize);
    let (rows, cells) = de::importance::weighted_expression(
        &vae, d.counts()?, d.batch_codes()?, &d.covariates(), tb, n_samples_overall.max(1) as usize, lib, &cfg, o.batch_size, o.seed as u64,
    )
    .map_err(engine_error)?;
    List::from_names_and_values(["values", "cells"], [doubles(rows).into_robj(), cells.iter().map(|&c| c as i32).collect::<Vec<i32>>().into_robj()])
}

/// scANVI label probabilities, a cells x labels matrix.
/// @noRd
#[extendr]
fn scvir_predict(model: Raw, data: List, opts: List, use_posterior_mean: bool) -> Result<Robj> {
    let (_session, vae, d, o) = open_query(&model, &data, &opts)?;
    let p = infer::label_probabilities(&vae, d.source()?, d.batch_codes()?, &d.covariates(), use_posterior_mean, o.batch_size)
        .map_err(engine_error)?;
    let k = vae.scanvi.as_ref().map_or(1, |h| h.config.n_labels as usize);
    Ok(row_major_to_matrix(&p, d.n_cells(), k).into_robj())
}

/// Every tensor of a model file by name (values flattened row-major), without building the model:
/// for inspecting weights (tests of reference mapping's freezing rules).
/// @noRd
#[extendr]
fn scvir_model_tensors(model: Raw) -> Result<List> {
    quiet_panics();
    let bytes = model.as_slice();
    let (meta, mut offset) = model_file::read_meta(bytes).map_err(engine_error)?;
    let mut names = Vec::new();
    let mut values = Vec::new();
    for t in &meta.tensors {
        let n: usize = t.shape.iter().product::<i64>() as usize;
        let v: Vec<f64> = bytes[offset..offset + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
        offset += 4 * n;
        let mut r = v.into_robj();
        let dims: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
        r.set_attrib("shape", dims).map_err(|e| Error::Other(e.to_string()))?;
        names.push(t.name.clone());
        values.push(r);
    }
    List::from_names_and_values(names, values)
}

/// Fixed properties of a trained model computed by the engine: "loadings" (LDVAE, genes x
/// n_latent) or "batch_embedding" (batches x dim), as a matrix.
/// @noRd
#[extendr]
fn scvir_model_values(model: Raw, what: &str) -> Result<Robj> {
    let _session = prepare(1);
    let (vae, _) = model_file::from_bytes(model.as_slice(), Device::Cpu).map_err(engine_error)?;
    let (values, ncol) = match what {
        "loadings" => (infer::loadings(&vae), vae.config.n_latent as usize),
        "batch_embedding" => (infer::batch_embedding(&vae), vae.config.batch_embedding_dim as usize),
        other => return Err(Error::Other(format!("[scviR:config] unknown model value \"{other}\""))),
    };
    let values = values.map_err(engine_error)?;
    let nrow = values.len() / ncol.max(1);
    Ok(row_major_to_matrix(&values, nrow, ncol).into_robj())
}

/// Reads an .h5ad file: CSR counts (cells x genes) and the obs / var data frames.
/// @noRd
#[extendr]
fn scvir_read_h5ad(path: &str, layer: &str) -> Result<List> {
    quiet_panics();
    // CSR counts (anndata's usual X) go straight into R's vectors: no second copy of the matrix.
    let location = if layer.is_empty() { "X".to_string() } else { format!("layers/{layer}") };
    if let Ok(Some((n_cells, n_genes, nnz))) = h5ad::csr_shape(path, &location) {
        if nnz <= i32::MAX as usize {
            let (obs, var) = h5ad::read_frames(path).map_err(|e| h5ad_error(path, e)).map_err(engine_error)?;
            if (obs.index.len(), var.index.len()) != (n_cells, n_genes) {
                return Err(engine_error(scvir_engine::Error::InvalidInput(format!(
                    "{path}: {location}: its shape attribute [{n_cells}, {n_genes}] contradicts obs and var ({} cells x {} genes)",
                    obs.index.len(),
                    var.index.len()
                ))));
            }
            let mut indptr: Robj = Integers::new(n_cells + 1).into();
            let mut indices: Robj = Integers::new(nnz).into();
            let mut values: Robj = Doubles::new(nnz).into();
            let slices = (indptr.as_integer_slice_mut(), indices.as_integer_slice_mut(), values.as_real_slice_mut());
            let (Some(p), Some(i), Some(x)) = slices else {
                return Err(Error::Other("[scviR:engine] could not allocate the count vectors".into()));
            };
            h5ad::read_csr_into(path, &location, p, i, x).map_err(|e| h5ad_error(path, e)).map_err(engine_error)?;
            return List::from_names_and_values(
                ["indptr", "indices", "values", "n_cells", "n_genes", "obs", "var"],
                [indptr, indices, values, (n_cells as i32).into_robj(), (n_genes as i32).into_robj(), frame_to_list(&obs)?.into_robj(), frame_to_list(&var)?.into_robj()],
            );
        }
    }
    let data = h5ad::read(path, (!layer.is_empty()).then_some(layer))
        .map_err(|e| match e {
            // HDF5 and I/O errors do not name the file.
            scvir_engine::Error::Hdf5(h) => scvir_engine::Error::InvalidInput(format!("{path}: cannot be read as an .h5ad file ({h})")),
            scvir_engine::Error::Io(io) => scvir_engine::Error::InvalidInput(format!("{path}: {io}")),
            other => other,
        })
        .map_err(engine_error)?;
    let h5ad::H5ad { counts: c, obs, var } = data;
    List::from_names_and_values(
        ["indptr", "indices", "values", "n_cells", "n_genes", "obs", "var"],
        [
            c.indptr.into_robj(),
            c.indices.into_robj(),
            c.data.into_robj(),
            (c.n_cells as i32).into_robj(),
            (c.n_genes as i32).into_robj(),
            frame_to_list(&obs)?.into_robj(),
            frame_to_list(&var)?.into_robj(),
        ],
    )
}

/// A model directory saved by scvi-tools (model.pt, or the legacy files), converted to this
/// engine's model bytes.
/// @noRd
#[extendr]
fn scvir_import_scvi_tools(dir: &str) -> Result<Robj> {
    let _session = prepare(1);
    let imp = scvir_engine::io::scvi_tools::load_dir(std::path::Path::new(dir), Device::Cpu).map_err(engine_error)?;
    let meta = model_file::ModelMeta {
        model: model_name(&imp.config).into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        vae: imp.config.clone(),
        train: TrainConfig::default(),
        registry: imp.registry,
        history: Default::default(),
        split: Default::default(),
        tensors: vec![],
    };
    let bytes = model_file::to_bytes(&imp.vae, &meta).map_err(engine_error)?;
    let mut r = Raw::from_bytes(&bytes).into_robj();
    r.set_attrib("scvi_tools_model", imp.model).map_err(|e| Error::Other(e.to_string()))?;
    r.set_attrib("scvi_tools_version", imp.scvi_version).map_err(|e| Error::Other(e.to_string()))?;
    Ok(r)
}

/// Writes `dir/model.pt` in scvi-tools' save format for this engine's model bytes.
/// @noRd
#[extendr]
fn scvir_save_scvi_tools(model: Raw, dir: &str) -> Result<()> {
    let _session = prepare(1);
    let (vae, meta) = model_file::from_bytes(model.as_slice(), Device::Cpu).map_err(engine_error)?;
    scvir_engine::io::scvi_tools_write::save_dir(std::path::Path::new(dir), &meta.model, &vae, &meta.registry, "1.4.2")
        .map_err(engine_error)
}

/// The extras of an .h5ad file: layers (CSR lists), dense obsm / varm (matrices), raw (CSR and
/// var frame), uns scalars and the entries skipped.
/// @noRd
#[extendr]
fn scvir_read_h5ad_extras(path: &str, n_cells: i32, n_genes: i32, layers: bool, obsm: bool, raw: bool) -> Result<List> {
    quiet_panics();
    let e = h5ad::read_extras(path, n_cells.max(0) as usize, n_genes.max(0) as usize, layers, obsm, raw)
        .map_err(|e| h5ad_error(path, e))
        .map_err(engine_error)?;
    let csr = |c: &scvir_engine::data::counts::OwnedCounts| -> Result<Robj> {
        Ok(List::from_names_and_values(
            ["indptr", "indices", "values", "n_cells", "n_genes"],
            [c.indptr.clone().into_robj(), c.indices.clone().into_robj(), c.data.clone().into_robj(), (c.n_cells as i32).into_robj(), (c.n_genes as i32).into_robj()],
        )?
        .into_robj())
    };
    let dense = |list: &[(String, scvir_engine::io::h5ad_write::DenseOut)]| -> Result<Robj> {
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        let mats: Vec<Robj> = list
            .iter()
            .map(|(_, m)| RMatrix::new_matrix(m.n_rows, m.n_cols, |r, c| m.values[r * m.n_cols + c]).into_robj())
            .collect();
        Ok(List::from_names_and_values(names, mats)?.into_robj())
    };
    let layer_names: Vec<&str> = e.layers.iter().map(|(n, _)| n.as_str()).collect();
    let layer_values = e.layers.iter().map(|(_, m)| csr(m)).collect::<Result<Vec<Robj>>>()?;
    let raw = match &e.raw {
        Some((m, var)) => List::from_names_and_values(["x", "var"], [csr(m)?, frame_to_list(var)?.into_robj()])?.into_robj(),
        None => ().into_robj(),
    };
    let uns_names: Vec<&str> = e.uns.iter().map(|(n, _)| n.as_str()).collect();
    let uns_values: Vec<String> = e.uns.iter().map(|(_, v)| v.clone()).collect();
    List::from_names_and_values(
        ["layers", "obsm", "varm", "raw", "uns", "skipped"],
        [
            List::from_names_and_values(layer_names, layer_values)?.into_robj(),
            dense(&e.obsm)?,
            dense(&e.varm)?,
            raw,
            List::from_names_and_values(uns_names, uns_values.into_iter().map(|v| v.into_robj()))?.into_robj(),
            e.skipped.clone().into_robj(),
        ],
    )
}

/// An R data-frame description as the writer takes it: `list(index = , columns = list(name =
/// list(kind, values, categories, ordered)))` with kind "numeric", "bool", "string" or
/// "categorical" (0-based codes, -1 missing).
fn frame_from_list(l: &List, what: &str) -> Result<h5ad::Frame> {
    let bad = |m: String| Error::Other(format!("[scviR:engine] {what}: {m}"));
    let map: std::collections::HashMap<&str, Robj> = l.iter().collect();
    let index: Vec<String> = map
        .get("index")
        .and_then(|i| i.as_string_vector())
        .ok_or_else(|| bad("index must be character".into()))?;
    let cols = map.get("columns").and_then(|c| c.as_list()).ok_or_else(|| bad("columns must be a list".into()))?;
    let mut columns = Vec::new();
    for (name, c) in cols.iter() {
        let c = c.as_list().ok_or_else(|| bad(format!("column {name} is not a list")))?;
        let f: std::collections::HashMap<&str, Robj> = c.iter().collect();
        let kind = f.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let values = f.get("values").ok_or_else(|| bad(format!("column {name} has no values")))?;
        let col = match kind {
            "numeric" => h5ad::Column::Numeric(values.as_real_vector().ok_or_else(|| bad(format!("column {name}: numeric values")))?),
            "bool" => h5ad::Column::Boolean(
                values.as_logical_vector().ok_or_else(|| bad(format!("column {name}: logical values")))?.iter().map(|b| b.is_true()).collect(),
            ),
            "string" => h5ad::Column::Strings(values.as_string_vector().ok_or_else(|| bad(format!("column {name}: strings")))?),
            "categorical" => h5ad::Column::Categorical {
                codes: values.as_integer_vector().ok_or_else(|| bad(format!("column {name}: integer codes")))?,
                categories: f.get("categories").and_then(|c| c.as_string_vector()).unwrap_or_default(),
                ordered: f.get("ordered").and_then(|o| o.as_bool()).unwrap_or(false),
            },
            other => return Err(bad(format!("column {name} has unknown kind \"{other}\""))),
        };
        columns.push((name.to_string(), col));
    }
    Ok(h5ad::Frame { index, columns, skipped: vec![] })
}

fn frame_to_list(f: &h5ad::Frame) -> Result<List> {
    let names: Vec<&str> = f.columns.iter().map(|(n, _)| n.as_str()).collect();
    let cols: Vec<Robj> = f.columns.iter().map(|(_, c)| column_to_robj(c)).collect();
    let columns = List::from_names_and_values(names, cols)?;
    List::from_names_and_values(["index", "columns", "skipped"], [f.index.clone().into_robj(), columns.into_robj(), f.skipped.clone().into_robj()])
}

/// `list(indptr, indices, values, n_rows, n_cols)` (a dgCMatrix's slots read as compressed rows).
fn csr_from_list(l: &List, what: &str) -> Result<scvir_engine::io::h5ad_write::CsrOut> {
    let bad = |m: &str| Error::Other(format!("[scviR:engine] {what}: {m}"));
    let map: std::collections::HashMap<&str, Robj> = l.iter().collect();
    let ints = |k: &str| map.get(k).and_then(|v| v.as_integer_slice()).ok_or_else(|| bad(k));
    let values = map.get("values").and_then(|v| v.as_real_slice()).ok_or_else(|| bad("values"))?;
    if let Some(v) = values.iter().find(|v| !v.is_finite() || v.abs() > f32::MAX as f64) {
        return Err(Error::Other(format!("[scviR:input] {what} holds {v}, which a float32 .h5ad matrix cannot store")));
    }
    let n = |k: &str| map.get(k).and_then(|v| v.as_integer().or_else(|| v.as_real().map(|x| x as i32))).ok_or_else(|| bad(k));
    Ok(scvir_engine::io::h5ad_write::CsrOut {
        n_rows: n("n_rows")?.max(0) as usize,
        n_cols: n("n_cols")?.max(0) as usize,
        indptr: ints("indptr")?.iter().map(|&x| x as i64).collect(),
        indices: ints("indices")?.to_vec(),
        data: values.iter().map(|&v| v as f32).collect(),
    })
}

fn dense_list(l: &List, what: &str) -> Result<Vec<(String, scvir_engine::io::h5ad_write::DenseOut)>> {
    let mut out = Vec::new();
    for (name, m) in l.iter() {
        let values = m.as_real_slice().ok_or_else(|| Error::Other(format!("[scviR:engine] {what} {name} must be a double matrix")))?;
        let dim = m.dim().ok_or_else(|| Error::Other(format!("[scviR:engine] {what} {name} must be a matrix")))?;
        let (nr, nc) = (dim.elt(0).0 as usize, dim.elt(1).0 as usize);
        let mut v = vec![0.0; nr * nc];
        for r in 0..nr {
            for c in 0..nc {
                v[r * nc + c] = values[c * nr + r];
            }
        }
        out.push((name.to_string(), scvir_engine::io::h5ad_write::DenseOut { n_rows: nr, n_cols: nc, values: v }));
    }
    Ok(out)
}

/// Writes an .h5ad file from R's pieces (see `frame_from_list`, `csr_from_list`).
/// @noRd
#[extendr]
fn scvir_write_h5ad(path: &str, x: List, layers: List, obs: List, var: List, obsm: List, varm: List, uns: List) -> Result<()> {
    quiet_panics();
    let layers = layers.iter().map(|(n, m)| Ok((n.to_string(), csr_from_list(&m.as_list().unwrap_or_default(), n)?))).collect::<Result<Vec<_>>>()?;
    let uns = uns.iter().map(|(n, v)| (n.to_string(), v.as_str().unwrap_or("").to_string())).collect();
    let d = scvir_engine::io::h5ad_write::H5adOut {
        x: csr_from_list(&x, "X")?,
        layers,
        obs: frame_from_list(&obs, "obs")?,
        var: frame_from_list(&var, "var")?,
        obsm: dense_list(&obsm, "obsm")?,
        varm: dense_list(&varm, "varm")?,
        uns,
    };
    scvir_engine::io::h5ad_write::write(path, &d).map_err(|e| h5ad_error(path, e)).map_err(engine_error)
}

/// HDF5 and I/O errors do not name the file.
/// Counts, first positions (1-based, NA when none) of non-finite, negative and non-integer
/// values of a count vector.
/// @noRd
#[extendr]
fn scvir_count_problems(values: &[f64]) -> List {
    quiet_panics();
    let p = scvir_engine::data::counts::value_problems(values);
    let first = |f: Option<usize>| f.map_or(Rfloat::na(), |k| Rfloat::from((k + 1) as f64));
    list!(
        n = p.iter().map(|e| e.0 as f64).collect::<Vec<f64>>(),
        first = p.iter().map(|e| first(e.1)).collect::<Doubles>()
    )
}

/// A file opened for reading its counts from disk: matrix location, encoding and shape, var,
/// obs's column names.
/// @noRd
#[extendr]
fn scvir_h5ad_backed(path: &str, layer: &str) -> Result<List> {
    quiet_panics();
    let info = h5ad::backed_info(path, (!layer.is_empty()).then_some(layer)).map_err(|e| h5ad_error(path, e)).map_err(engine_error)?;
    List::from_names_and_values(
        ["location", "encoding", "n_cells", "n_genes", "var", "obs_columns", "fingerprint"],
        [
            info.location.into_robj(),
            info.encoding.into_robj(),
            (info.n_cells as f64).into_robj(),
            (info.n_genes as f64).into_robj(),
            frame_to_list(&info.var)?.into_robj(),
            info.obs_columns.into_robj(),
            info.fingerprint.into_robj(),
        ],
    )
}

/// obs columns (and the cell names when `index`) of a file.
/// @noRd
#[extendr]
fn scvir_h5ad_obs(path: &str, columns: Vec<String>, index: bool) -> Result<List> {
    quiet_panics();
    let f = h5ad::read_frame_part(path, "obs", index, &columns).map_err(|e| h5ad_error(path, e)).map_err(engine_error)?;
    frame_to_list(&f)
}

/// Cells, genes and layout of a count matrix on disk (a CSR group or a dense dataset).
/// @noRd
#[extendr]
fn scvir_disk_shape(path: &str, location: &str) -> Result<List> {
    quiet_panics();
    let disk = open_disk(path, location, &[])?;
    List::from_names_and_values(
        ["n_cells", "n_genes", "dense", "fingerprint"],
        [(disk.n_cells() as f64).into_robj(), (disk.n_file_genes() as f64).into_robj(), disk.is_dense().into_robj(), disk.fingerprint().into_robj()],
    )
}

fn open_disk(path: &str, location: &str, genes: &[i32]) -> Result<scvir_engine::data::DiskCounts> {
    let genes: Vec<usize> = genes.iter().map(|&g| g.max(0) as usize).collect();
    scvir_engine::data::DiskCounts::open(path, location, &genes).map_err(|e| h5ad_error(path, e)).map_err(engine_error)
}

/// Reads the count matrix at `location` of a file into memory once, for a handle to serve
/// (`read_h5ad(path, backed = "memory")`): the matrix as an external pointer, its stored values,
/// its size in bytes and its shape.
/// @noRd
#[extendr]
fn scvir_h5ad_load(path: &str, location: &str) -> Result<List> {
    let _session = prepare(1);
    let m = scvir_engine::data::disk::LoadedMatrix::load(path, location).map_err(|e| h5ad_error(path, e)).map_err(engine_error)?;
    let (nnz, bytes, n_cells, n_genes) = (m.nnz() as f64, m.bytes() as f64, m.n_cells() as f64, m.n_file_genes() as f64);
    let fingerprint = m.fingerprint();
    let ptr = ExternalPtr::new(std::sync::Arc::new(m));
    List::from_names_and_values(
        ["memory", "nnz", "bytes", "n_cells", "n_genes", "fingerprint"],
        [Robj::from(ptr), nnz.into_robj(), bytes.into_robj(), n_cells.into_robj(), n_genes.into_robj(), fingerprint.into_robj()],
    )
}

/// Bytes held by a matrix read into memory; NA when `memory` no longer holds one (a handle saved
/// and loaded again).
/// @noRd
#[extendr]
fn scvir_h5ad_memory_bytes(memory: Robj) -> Robj {
    match crate::convert::loaded_matrix(&memory) {
        Some(m) => (m.bytes() as f64).into_robj(),
        None => Robj::from(Rfloat::na()),
    }
}

/// Per batch and gene, sums and sums of squares of the counts of a file (each clipped at
/// `clip[batch, gene]` when `clip` is a batches x genes matrix), in one pass: the statistics
/// of seurat_v3 gene selection.
/// @noRd
#[extendr]
fn scvir_h5ad_gene_sums(handle: List, batch_codes: &[i32], n_batches: i32, clip: Robj) -> Result<List> {
    let _session = prepare(1);
    let disk = crate::args::open_handle(&handle)?;
    let path = disk.path().to_string();
    // R's batches x genes matrix is column-major; the engine wants batch-major rows.
    let clip: Option<Vec<f64>> = clip.as_real_slice().map(|c| {
        let (nb, g) = (n_batches.max(1) as usize, disk.n_genes());
        let mut out = vec![0.0; nb * g];
        for b in 0..nb {
            for j in 0..g {
                out[b * g + j] = c[j * nb + b];
            }
        }
        out
    });
    let (sum, sq) = disk.gene_sums(batch_codes, n_batches.max(1) as usize, clip.as_deref()).map_err(|e| h5ad_error(&path, e)).map_err(engine_error)?;
    List::from_names_and_values(["sum", "sq"], [sum.into_robj(), sq.into_robj()])
}

/// The counts of some cells (1-based) of a file, restricted to `genes`, as compressed rows.
/// @noRd
#[extendr]
fn scvir_h5ad_read_cells(handle: List, cells: &[i32]) -> Result<List> {
    let _session = prepare(1);
    let disk = crate::args::open_handle(&handle)?;
    let cells: Vec<usize> = cells.iter().map(|&c| (c.max(1) - 1) as usize).collect();
    let block = disk.read_cells(&cells).map_err(|e| h5ad_error(disk.path(), e)).map_err(engine_error)?;
    let (indptr, indices, values) = block.to_csr();
    List::from_names_and_values(
        ["indptr", "indices", "values", "n_cells", "n_genes"],
        [indptr.into_robj(), indices.into_robj(), values.into_robj(), (cells.len() as i32).into_robj(), (disk.n_genes() as i32).into_robj()],
    )
}

pub(crate) fn h5ad_error(path: &str, e: scvir_engine::Error) -> scvir_engine::Error {
    match e {
        scvir_engine::Error::Hdf5(h) => scvir_engine::Error::InvalidInput(format!("{path}: {h}")),
        scvir_engine::Error::Io(io) => scvir_engine::Error::InvalidInput(format!("{path}: {io}")),
        other => other,
    }
}

extern "C" {
    /// Defined in src/r_helpers.c.
    fn scvir_continue_unwind();
}

/// Resumes the non-local exit an R progress callback started (see observer.rs). Called by the
/// R side's handler of the "[scviR:unwind]" error, once no Rust frame of the training call is
/// left; does not return.
/// @noRd
#[extendr]
fn scvir_resume_unwind() {
    unsafe { scvir_continue_unwind() }
}

/// Whether the linked libtorch can run on a CUDA device here.
/// @noRd
#[extendr]
fn scvir_cuda_available() -> bool {
    runtime::cuda_available()
}

/// Whether the loaded libtorch carries CUDA, and how many CUDA devices it sees.
/// @noRd
#[extendr]
fn scvir_cuda_info() -> List {
    quiet_panics();
    let s = runtime::cuda_state();
    list!(built = s.built, devices = s.devices as i32)
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
    fn scvir_query_registry;
    fn scvir_load_query;
    fn scvir_model_meta;
    fn scvir_model_split;
    fn scvir_latent;
    fn scvir_normalized_expression;
    fn scvir_evaluate;
    fn scvir_denoised_samples;
    fn scvir_de_compare;
    fn scvir_weighted_expression;
    fn scvir_predict;
    fn scvir_read_h5ad;
    fn scvir_read_h5ad_extras;
    fn scvir_h5ad_backed;
    fn scvir_count_problems;
    fn scvir_h5ad_obs;
    fn scvir_h5ad_gene_sums;
    fn scvir_h5ad_read_cells;
    fn scvir_h5ad_load;
    fn scvir_h5ad_memory_bytes;
    fn scvir_disk_shape;
    fn scvir_import_scvi_tools;
    fn scvir_save_scvi_tools;
    fn scvir_write_h5ad;
    fn scvir_cuda_available;
    fn scvir_cuda_info;
    fn scvir_set_tuning;
    fn scvir_blas_info;
    fn scvir_available_cores;
    fn scvir_process_state;
    fn scvir_resume_unwind;
    fn scvir_model_values;
    fn scvir_model_tensors;
    fn scvir_default_max_epochs;
    fn scvir_debug_panic;
}
