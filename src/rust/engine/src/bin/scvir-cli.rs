//! Command-line front end of the engine, for benchmarks and GPU runs without R:
//!
//!   scvir-cli train FILE.h5ad [--epochs N] [--seed S] [--threads T] [--batch-size B]
//!             [--likelihood zinb|nb|poisson] [--layers N] [--latent-library] [--batches N] [--encode-covariates] [--layer-norm] [--scanvi K] [--device cpu|cuda] [--unfused-rates] [--autograd-step] [--libtorch-products]
//!             [--profile] [--quiet]
//!
//! Prints one line per epoch and a final `RESULT {json}` line with timing and ELBO figures;
//! with `--profile`, also the milliseconds per training step spent in each phase of the step
//! (`step_ms`, see `train::profile`).

use scvir_engine::data::Registry;
use scvir_engine::distributions::GeneLikelihood;
use scvir_engine::io::h5ad;
use scvir_engine::module::{Vae, VaeConfig};
use scvir_engine::train::{self, EpochRecord, Phase, StepProfile, TrainConfig, TrainingObserver};
use std::time::Instant;

struct Printer {
    quiet: bool,
    profile: Option<StepProfile>,
}

impl TrainingObserver for Printer {
    fn profile_steps(&self) -> bool {
        self.profile.is_some()
    }
    fn on_step_profile(&mut self, profile: &StepProfile) {
        self.profile = Some(profile.clone());
    }
    fn on_epoch_end(&mut self, r: &EpochRecord, max_epochs: usize) {
        if !self.quiet {
            eprintln!(
                "epoch {:>4}/{max_epochs}  {:.3}s  elbo_train {:.2}  elbo_validation {}",
                r.epoch + 1,
                r.train_seconds,
                r.elbo_train,
                r.elbo_validation.map_or("-".into(), |v| format!("{v:.2}"))
            );
        }
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { 0.5 * (v[m - 1] + v[m]) }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("train") || args.len() < 2 {
        return Err("usage: scvir-cli train FILE.h5ad [--epochs N] [--seed S] [--threads T] [--batch-size B] \
                    [--likelihood zinb|nb|poisson] [--layers N] [--latent-library] [--batches N] [--encode-covariates] [--layer-norm] [--scanvi K] [--device cpu|cuda] [--unfused-rates] [--autograd-step] [--libtorch-products] [--profile] [--quiet]"
            .into());
    }
    let path = &args[1];
    let mut cfg = TrainConfig { max_epochs: Some(50), ..Default::default() };
    let mut threads = None;
    let mut likelihood = GeneLikelihood::Zinb;
    let mut latent_library = false;
    let mut layers = 1;
    let mut n_batch = 1usize;
    let mut encode_covariates = false;
    let mut layer_norm = false;
    let mut scanvi_labels = 0i64;
    let mut device = tch::Device::Cpu;
    let mut quiet = false;
    let mut fused_rates = true;
    let mut closed_form = true;
    let mut profile = false;
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--epochs" => cfg.max_epochs = Some(val()?.parse()?),
            "--seed" => cfg.seed = val()?.parse()?,
            "--threads" => threads = Some(val()?.parse()?),
            "--batch-size" => cfg.batch_size = val()?.parse()?,
            "--likelihood" => likelihood = GeneLikelihood::parse(&val()?)?,
            "--latent-library" => latent_library = true,
            "--layers" => layers = val()?.parse()?,
            "--batches" => n_batch = val()?.parse::<usize>()?.max(1),
            "--encode-covariates" => encode_covariates = true,
            // LayerNorm in place of BatchNorm in both networks (scArches' recommended reference).
            "--layer-norm" => layer_norm = true,
            // scANVI with K labels: cell i labelled i mod K when i is even, unlabelled otherwise
            // (stand-in labels for timing).
            "--scanvi" => scanvi_labels = val()?.parse()?,
            "--device" => {
                device = match val()?.as_str() {
                    "cpu" => tch::Device::Cpu,
                    "cuda" => tch::Device::Cuda(0),
                    d => return Err(format!("unknown device {d}").into()),
                }
            }
            "--quiet" => quiet = true,
            "--unfused-rates" => fused_rates = false,
            "--autograd-step" => closed_form = false,
            "--libtorch-products" => scvir_engine::gemm::use_libtorch(),
            "--profile" => profile = true,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let _session = scvir_engine::runtime::Session::enter(scvir_engine::runtime::SessionOptions {
        n_threads: threads,
        tune_blas: true,
        tune_allocator: true,
        interrupt: None,
    });
    let data = h5ad::read(path, None)?;
    let counts = data.counts.view()?;
    // With --batches N, cell i is in batch i mod N (a stand-in covariate for timing).
    let batch: Vec<i32> = (0..counts.n_cells()).map(|i| (i % n_batch) as i32).collect();
    let mut vae_cfg = VaeConfig::new(counts.n_genes() as i64, n_batch as i64);
    vae_cfg.encode_covariates = encode_covariates;
    if layer_norm {
        vae_cfg.use_layer_norm_encoder = true;
        vae_cfg.use_layer_norm_decoder = true;
        vae_cfg.use_batch_norm_encoder = false;
        vae_cfg.use_batch_norm_decoder = false;
    }
    vae_cfg.gene_likelihood = likelihood;
    vae_cfg.use_observed_lib_size = !latent_library;
    vae_cfg.n_layers = layers;
    let labels: Vec<i32> = (0..counts.n_cells()).map(|i| if i % 2 == 0 { (i / 2) as i32 % scanvi_labels.max(1) as i32 } else { scanvi_labels as i32 }).collect();
    if scanvi_labels > 0 {
        vae_cfg.scanvi = Some(scvir_engine::module::ScanviConfig { n_labels: scanvi_labels, ..Default::default() });
        // The unlabelled code K is a label category of its own, as scvi-tools registers it.
        vae_cfg.n_labels = scanvi_labels + 1;
    }
    let registry = Registry::with_library_prior(data.var.index.clone(), counts, &batch, n_batch);
    let prior = (registry.library_log_means.as_slice(), registry.library_log_vars.as_slice());
    scvir_engine::runtime::seed_everything(cfg.seed);
    let mut vae = Vae::new(vae_cfg, device, Some(prior))?;
    vae.fused_rates = fused_rates;
    vae.closed_form = closed_form;
    let mut printer = Printer { quiet, profile: profile.then(StepProfile::default) };
    let started = Instant::now();
    let mut covariates = scvir_engine::data::Covariates::default();
    if scanvi_labels > 0 {
        covariates.labels = Some(&labels);
    }
    let out = train::train(&mut vae, counts, &batch, &covariates, &cfg, &mut printer)?;
    let total = started.elapsed().as_secs_f64();
    let epochs = &out.history.epochs;
    let secs: Vec<f64> = epochs.iter().skip(2).map(|r| r.train_seconds).collect();
    let sec_per_epoch = median(if secs.is_empty() { epochs.iter().map(|r| r.train_seconds).collect() } else { secs });
    let last = epochs.last().ok_or("no epoch ran")?;
    let mut result = serde_json::json!({
        "tool": "scviR",
        "version": env!("CARGO_PKG_VERSION"),
        "threads": tch::get_num_threads(),
        "device": format!("{device:?}"),
        "epochs": epochs.len(),
        "n_train": out.split.train.len(),
        "n_parameters": vae.n_parameters(),
        "sec_per_epoch": sec_per_epoch,
        "cells_per_s": out.split.train.len() as f64 / sec_per_epoch,
        "total_train_s": total,
        "peak_rss_mb": peak_rss_mb(),
        "elbo_validation_final": last.elbo_validation,
        "elbo_train_final": last.elbo_train,
        "reconstruction_loss_validation_final": last.reconstruction_loss_validation,
    });
    if let Some(p) = &printer.profile {
        let per_step = |ph: Phase| 1e3 * p.seconds_in(ph) / p.steps.max(1) as f64;
        let phases: serde_json::Map<String, serde_json::Value> = Phase::ALL.iter().map(|&ph| (ph.name().to_string(), per_step(ph).into())).collect();
        result["step_ms"] = phases.into();
        result["steps"] = p.steps.into();
    }
    println!("RESULT {result}");
    Ok(())
}
