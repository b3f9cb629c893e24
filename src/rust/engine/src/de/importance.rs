//! lvm-DE's importance-weighted expression samples (Boyeau et al. 2023; scvi-tools'
//! `get_importance_weights`). Posterior samples of a group of cells are reweighted so that
//! latent codes that explain many cells of the group count more than those that explain one:
//! for sample z_s and anchor cells a (at most `max_cells` of the group),
//!
//!   log w_s = log p(z_s) + logsumexp_a [log p(x_a | z_s) - log p(x_a)] - logsumexp_a log q(z_s | x_a)
//!
//! where p(x_a | z_s) is the sample's likelihood (its proportions scaled to the anchor's observed
//! library, its dispersion and zero-inflation) and log p(x_a) the anchor's importance-sampled
//! marginal log-likelihood. With `truncation` the log-weights are floored at their log-mean
//! (Ionides 2008, as scvi-tools writes it). `n_samples_overall` samples are then drawn with
//! replacement with probabilities proportional to w.
//!
//! Densities of z are evaluated at the Gaussian sample (for a logistic-normal latent scvi-tools
//! evaluates them at the softmax-transformed z, where they are not densities of z).

use crate::data::{Counts, Covariates, MinibatchBuilder};
use crate::distributions::dense;
use crate::distributions::GeneLikelihood;
use crate::error::{Error, Result};
use crate::infer::{marginal_ll_minibatch, normal_log_prob, to_vec};
use crate::module::Vae;
use rand::seq::index::sample as sample_indices;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// scvi-tools' `importance_weighting_kwargs` (its defaults).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportanceConfig {
    pub max_cells: usize,
    pub truncation: bool,
    pub n_mc_samples: usize,
}

impl Default for ImportanceConfig {
    fn default() -> Self {
        ImportanceConfig { max_cells: 1024, truncation: false, n_mc_samples: 500 }
    }
}

/// Scale applied to the drawn samples' proportions.
#[derive(Clone, Copy, Debug)]
pub enum SampleLibrary {
    Constant(f64),
    /// Each sample's own library (expected counts).
    Own,
}

/// Every posterior sample of the group (`n_samples_overall / n + 1` per cell), decoded.
struct GroupSamples {
    scale: Tensor,
    z: Tensor,
    theta: Option<Tensor>,
    dropout: Option<Tensor>,
    library: Tensor,
    cell: Vec<usize>,
}

fn decode_group(vae: &Vae, builder: &mut MinibatchBuilder<'_>, cells: &[usize], transform_batch: Option<usize>, per_cell: usize, batch_size: usize) -> Result<GroupSamples> {
    let (mut scale, mut z_all, mut theta, mut dropout, mut library, mut cell) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut gene_theta: Option<Tensor> = None;
    for (c, chunk) in cells.chunks(batch_size.max(1)).enumerate() {
        crate::runtime::check_interrupt()?;
        let mb = builder.build(chunk);
        let inf = vae.inference(&mb, false);
        let b = chunk.len() as i64;
        let rows = Tensor::arange(b, (Kind::Int64, vae.device())).repeat([per_cell as i64]);
        let mean = inf.qz.q_mean.index_select(0, &rows);
        let u = &mean + inf.qz.q_var.index_select(0, &rows).sqrt() * mean.randn_like();
        let z = vae.latent_for_decoder(&u);
        let sub = mb.covariate_rows(&rows);
        let batch = match transform_batch {
            Some(t) => sub.batch_index.full_like(t as i64),
            None => sub.batch_index.shallow_clone(),
        };
        let lib = inf.library.index_select(0, &rows);
        let gen = vae.generative(&z, &lib, &batch, &sub, false);
        match gen.theta {
            Some(t) if t.dim() == 2 => theta.push(t),
            Some(t) => gene_theta = Some(t),
            None => {}
        }
        dropout.extend(gen.px_dropout);
        scale.push(gen.px_scale);
        z_all.push(u);
        library.push(lib.exp().view([-1]));
        for d in 0..per_cell {
            cell.extend((0..chunk.len()).map(|i| (c * batch_size.max(1) + i, d)));
        }
    }
    // Rows in scvi-tools' (draw, cell) order are not needed: weights and draws are per sample.
    let cat = |v: Vec<Tensor>| Tensor::cat(&v, 0);
    Ok(GroupSamples {
        scale: cat(scale),
        z: cat(z_all),
        theta: if theta.is_empty() { gene_theta } else { Some(cat(theta)) },
        dropout: (!dropout.is_empty()).then(|| cat(dropout)),
        library: cat(library),
        cell: cell.into_iter().map(|(pos, _)| pos).collect(),
    })
}

/// `n_samples_overall` importance-weighted samples of the group's expression, cells x genes
/// row-major, and the group position of the cell each came from.
#[allow(clippy::too_many_arguments)]
pub fn sample_group_weighted(
    vae: &Vae,
    builder: &mut MinibatchBuilder<'_>,
    cells: &[usize],
    transform_batch: Option<usize>,
    n_samples_overall: usize,
    batch_size: usize,
    rng: &mut ChaCha8Rng,
    cfg: &ImportanceConfig,
    out_library: SampleLibrary,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let n = cells.len();
    if n == 0 || n_samples_overall == 0 {
        return Err(Error::InvalidInput("importance weighting needs cells and samples".into()));
    }
    if cfg.max_cells == 0 || cfg.n_mc_samples == 0 {
        return Err(Error::InvalidConfig("max_cells and n_mc_samples must be positive".into()));
    }
    let per_cell = n_samples_overall / n + 1;
    let g = vae.config.n_genes;
    crate::runtime::ensure_memory((per_cell * n) as u128 * g as u128, 12, "importance-weighted expression samples")?;
    tch::no_grad(|| -> Result<(Vec<f32>, Vec<usize>)> {
        let s = decode_group(vae, builder, cells, transform_batch, per_cell, batch_size)?;
        // Anchor cells and their marginal log-likelihoods, posteriors, counts and libraries.
        let anchors: Vec<usize> = if n > cfg.max_cells { sample_indices(rng, n, cfg.max_cells).into_vec() } else { (0..n).collect() };
        let (mut log_px, mut x, mut lib, mut qm, mut qv) = (vec![], vec![], vec![], vec![], vec![]);
        for chunk in anchors.chunks(batch_size.max(1)) {
            crate::runtime::check_interrupt()?;
            let globals: Vec<usize> = chunk.iter().map(|&p| cells[p]).collect();
            let mb = builder.build(&globals);
            log_px.push(marginal_ll_minibatch(vae, &mb, cfg.n_mc_samples));
            let inf = vae.inference(&mb, false);
            qm.push(inf.qz.q_mean);
            qv.push(inf.qz.q_var);
            lib.push(mb.log_library.exp().view([-1]));
            x.push(mb.x);
        }
        crate::runtime::check_interrupt()?;
        let log_px = Tensor::cat(&log_px, 0).view([1, -1]);
        let x = Tensor::cat(&x, 0).unsqueeze(0);
        let lib = Tensor::cat(&lib, 0).view([1, -1, 1]);
        let qm = Tensor::cat(&qm, 0).unsqueeze(0);
        let qv = Tensor::cat(&qv, 0).unsqueeze(0);
        let n_anchor = anchors.len() as i64;
        let total = s.scale.size()[0];
        // Samples per pass: bounds the samples x anchors x genes temporaries (~16M values).
        let step = ((1i64 << 24) / (n_anchor * g).max(1)).max(1);
        let mut log_w = Vec::new();
        let mut start = 0;
        while start < total {
            crate::runtime::check_interrupt()?;
            let len = step.min(total - start);
            let scale = s.scale.narrow(0, start, len).unsqueeze(1);
            let mu = &scale * &lib;
            let per_sample = |t: &Option<Tensor>| t.as_ref().map(|t| if t.dim() == 2 { t.narrow(0, start, len).unsqueeze(1) } else { t.shallow_clone() });
            let theta = per_sample(&s.theta);
            let pi = per_sample(&s.dropout);
            let ll = match vae.config.gene_likelihood {
                GeneLikelihood::Poisson => dense::log_poisson(&x, &mu),
                GeneLikelihood::Nb => dense::log_nb(&x, &mu, theta.as_ref().unwrap()),
                GeneLikelihood::Zinb => dense::log_zinb(&x, &mu, theta.as_ref().unwrap(), pi.as_ref().unwrap()),
                GeneLikelihood::Normal => dense::log_normal(&x, &mu, theta.as_ref().unwrap()),
            }
            .sum_dim_intlist(-1, false, Kind::Float);
            let z = s.z.narrow(0, start, len);
            let log_qz = normal_log_prob(&z.unsqueeze(1), &qm, &qv);
            let log_pz = normal_log_prob(&z, &z.zeros_like(), &z.ones_like());
            let w = log_pz + (ll - &log_px).logsumexp([1], false) - log_qz.logsumexp([1], false);
            log_w.push(w);
            start += len;
        }
        let mut w = Tensor::cat(&log_w, 0).to_kind(Kind::Double);
        if cfg.truncation {
            let tau = w.logsumexp([0], false) - (total as f64).ln();
            w = w.maximum(&tau);
        }
        let p: Vec<f64> = w.softmax(0, Kind::Double).to_device(tch::Device::Cpu).try_into().map_err(|e| Error::InvalidInput(format!("{e}")))?;
        if p.iter().any(|v| !v.is_finite()) {
            return Err(Error::NumericalFailure("the importance weights are not finite; use weights = \"uniform\"".into()));
        }
        // Draws with replacement by inverting the cumulative weights.
        let mut cum = Vec::with_capacity(p.len());
        let mut acc = 0.0;
        for v in &p {
            acc += v;
            cum.push(acc);
        }
        let picks: Vec<i64> = (0..n_samples_overall)
            .map(|_| {
                let u = rng.gen::<f64>() * acc;
                cum.partition_point(|&c| c < u).min(p.len() - 1) as i64
            })
            .collect();
        let idx = Tensor::from_slice(&picks).to_device(vae.device());
        let rows = s.scale.index_select(0, &idx);
        let rows = match out_library {
            SampleLibrary::Constant(c) => rows * c,
            SampleLibrary::Own => rows * s.library.index_select(0, &idx).unsqueeze(1),
        };
        Ok((to_vec(&rows), picks.iter().map(|&i| s.cell[i as usize]).collect()))
    })
}

/// `get_normalized_expression(weights = "importance", n_samples_overall)` over all cells: the
/// drawn samples (row-major, n_samples_overall x genes) and the cell each came from.
#[allow(clippy::too_many_arguments)]
pub fn weighted_expression(
    vae: &Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    transform_batch: Option<usize>,
    n_samples_overall: usize,
    library: SampleLibrary,
    cfg: &ImportanceConfig,
    batch_size: usize,
    seed: u64,
) -> Result<(Vec<f32>, Vec<usize>)> {
    crate::infer::check_inputs(vae, &counts.into(), batch_codes, cov)?;
    if cov.latent.is_some() {
        return Err(Error::InvalidInput("importance weights need the counts, which a minified model does not keep".into()));
    }
    if transform_batch.is_some_and(|b| b as i64 >= vae.config.n_batch) {
        return Err(Error::InvalidInput("transform_batch is outside the model's batches".into()));
    }
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let mut builder = MinibatchBuilder::new(counts, batch_codes, cov, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    sample_group_weighted(vae, &mut builder, &cells, transform_batch, n_samples_overall, batch_size, &mut rng, cfg, library)
}
