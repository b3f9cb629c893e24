//! Queries on a trained model: latent representation and normalized expression. All run in
//! evaluation mode (BatchNorm running statistics, no dropout) without gradients, in minibatches.

use crate::data::{Counts, MinibatchBuilder};
use crate::error::{Error, Result};
use crate::module::Vae;
use tch::{Kind, Tensor};

fn check_batches(vae: &Vae, batch_codes: &[i32], n: usize) -> Result<()> {
    if batch_codes.len() != n {
        return Err(Error::InvalidInput("one batch code per cell is needed".into()));
    }
    if batch_codes.iter().any(|&b| b < 0 || b as i64 >= vae.config.n_batch) {
        return Err(Error::InvalidInput("a batch code is outside the model's batches".into()));
    }
    Ok(())
}

fn check_genes(vae: &Vae, counts: &Counts<'_>) -> Result<()> {
    if counts.n_genes() as i64 != vae.config.n_genes {
        return Err(Error::InvalidInput(format!(
            "the data have {} genes but the model was fitted on {}",
            counts.n_genes(),
            vae.config.n_genes
        )));
    }
    Ok(())
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
    let mut out = vec![0f32; t.numel()];
    t.copy_data(&mut out, t.numel());
    out
}

/// Cells x n_latent, row-major: the posterior mean (`give_mean`) or one posterior sample.
pub fn latent_representation(
    vae: &Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    give_mean: bool,
    batch_size: usize,
) -> Result<Vec<f32>> {
    check_genes(vae, &counts)?;
    check_batches(vae, batch_codes, counts.n_cells())?;
    let mut builder = MinibatchBuilder::new(counts, batch_codes, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    let mut out = Vec::with_capacity(counts.n_cells() * vae.config.n_latent as usize);
    tch::no_grad(|| {
        for chunk in cells.chunks(batch_size.max(1)) {
            let mb = builder.build(chunk);
            let inf = vae.inference(&mb, false);
            out.extend(to_vec(if give_mean { &inf.qz.q_mean } else { &inf.z }));
        }
    });
    Ok(out)
}

/// Cells x genes, row-major: expected expression px_scale * library_size, averaged over
/// `n_samples` posterior samples of z (scvi-tools samples z even for one sample). With
/// `transform_batch`, every cell is decoded as if it came from that batch.
pub fn normalized_expression(
    vae: &Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    transform_batch: Option<usize>,
    library_size: f64,
    n_samples: usize,
    batch_size: usize,
) -> Result<Vec<f32>> {
    check_genes(vae, &counts)?;
    check_batches(vae, batch_codes, counts.n_cells())?;
    if let Some(b) = transform_batch {
        if b as i64 >= vae.config.n_batch {
            return Err(Error::InvalidInput("transform_batch is outside the model's batches".into()));
        }
    }
    let n_samples = n_samples.max(1);
    let mut builder = MinibatchBuilder::new(counts, batch_codes, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    let mut out = Vec::with_capacity(counts.n_cells() * counts.n_genes());
    tch::no_grad(|| {
        for chunk in cells.chunks(batch_size.max(1)) {
            let mb = builder.build(chunk);
            let decode_batch = match transform_batch {
                Some(b) => mb.batch_index.full_like(b as i64),
                None => mb.batch_index.shallow_clone(),
            };
            let mut acc = Tensor::zeros([chunk.len() as i64, vae.config.n_genes], (Kind::Float, vae.device()));
            for _ in 0..n_samples {
                let inf = vae.inference(&mb, false);
                let gen = vae.generative(&inf.z, &inf.library, &decode_batch, false);
                acc += gen.px_scale;
            }
            out.extend(to_vec(&(acc * (library_size / n_samples as f64))));
        }
    });
    Ok(out)
}

/// Per-cell reconstruction loss (-log p(x | z, l), one posterior sample) and local KL
/// (KL(q(z|x) || p(z)) + KL(q(l|x) || p(l)) when the library is latent), in evaluation mode.
pub struct CellLosses {
    pub reconstruction: Vec<f64>,
    pub kl_local: Vec<f64>,
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    to_vec(t).into_iter().map(f64::from).collect()
}

pub fn cell_losses(vae: &Vae, counts: Counts<'_>, batch_codes: &[i32], batch_size: usize) -> Result<CellLosses> {
    check_genes(vae, &counts)?;
    check_batches(vae, batch_codes, counts.n_cells())?;
    let mut builder = MinibatchBuilder::new(counts, batch_codes, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    let mut out = CellLosses { reconstruction: Vec::new(), kl_local: Vec::new() };
    tch::no_grad(|| {
        for chunk in cells.chunks(batch_size.max(1)) {
            let mb = builder.build(chunk);
            let l = vae.loss(&mb, false, 1.0);
            out.reconstruction.extend(to_f64(&l.reconstruction));
            out.kl_local.extend(to_f64(&(&l.kl_z + &l.kl_library)));
        }
    });
    Ok(out)
}

/// Gaussian log density, summed over the last dimension.
fn normal_log_prob(x: &Tensor, mean: &Tensor, var: &Tensor) -> Tensor {
    ((x - mean).square() / var + var.log() + (2.0 * std::f64::consts::PI).ln())
        .sum_dim_intlist(-1, false, Kind::Float)
        * -0.5
}

/// Importance-sampled log p(x) per cell with q as proposal (scvi-tools' `marginal_ll`):
/// logsumexp_k [log p(z_k) + log p(x | z_k, l_k) - log q(z_k | x) (+ log p(l_k) - log q(l_k | x))]
/// - log K.
pub fn marginal_ll(vae: &Vae, counts: Counts<'_>, batch_codes: &[i32], n_mc_samples: usize, batch_size: usize) -> Result<Vec<f64>> {
    check_genes(vae, &counts)?;
    check_batches(vae, batch_codes, counts.n_cells())?;
    if n_mc_samples == 0 {
        return Err(Error::InvalidInput("n_mc_samples must be at least 1".into()));
    }
    let mut builder = MinibatchBuilder::new(counts, batch_codes, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    let mut out = Vec::with_capacity(counts.n_cells());
    tch::no_grad(|| {
        for chunk in cells.chunks(batch_size.max(1)) {
            let mb = builder.build(chunk);
            let mut terms = Vec::with_capacity(n_mc_samples);
            for _ in 0..n_mc_samples {
                let inf = vae.inference(&mb, false);
                let gen = vae.generative(&inf.z, &inf.library, &mb.batch_index, false);
                let log_p_x = -vae.reconstruction_loss(&mb, &gen);
                let log_p_z = normal_log_prob(&inf.z, &inf.z.zeros_like(), &inf.z.ones_like());
                let log_q_z = normal_log_prob(&inf.z, &inf.qz.q_mean, &inf.qz.q_var);
                let mut t = log_p_z + log_p_x - log_q_z;
                if let (Some(ql), Some((prior_mean, prior_var))) = (&inf.ql, vae.library_prior(&mb.batch_index)) {
                    t = t + normal_log_prob(&inf.library, &prior_mean, &prior_var)
                        - normal_log_prob(&inf.library, &ql.q_mean, &ql.q_var);
                }
                terms.push(t);
            }
            let stacked = Tensor::stack(&terms, 0);
            let ll = stacked.logsumexp([0], false) - (n_mc_samples as f64).ln();
            out.extend(to_f64(&ll));
        }
    });
    Ok(out)
}

/// Library size per cell: exp of the observed log library (`give_mean = false`), or the mean of
/// the log-normal posterior q(l | x), exp(m + v / 2), when the library is latent.
pub fn latent_library_size(vae: &Vae, counts: Counts<'_>, batch_codes: &[i32], give_mean: bool, batch_size: usize) -> Result<Vec<f64>> {
    check_genes(vae, &counts)?;
    check_batches(vae, batch_codes, counts.n_cells())?;
    if give_mean && vae.config.use_observed_lib_size {
        return Err(Error::InvalidInput(
            "this model uses the observed library size and has no posterior for it; use give_mean = FALSE".into(),
        ));
    }
    let mut builder = MinibatchBuilder::new(counts, batch_codes, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    let mut out = Vec::with_capacity(counts.n_cells());
    tch::no_grad(|| {
        for chunk in cells.chunks(batch_size.max(1)) {
            let mb = builder.build(chunk);
            let inf = vae.inference(&mb, false);
            let lib = match (&inf.ql, give_mean) {
                (Some(ql), true) => (&ql.q_mean + &ql.q_var * 0.5).exp(),
                _ => inf.library.exp(),
            };
            out.extend(to_f64(&lib.reshape([-1])));
        }
    });
    Ok(out)
}
