//! Queries on a trained model: latent representation and normalized expression. All run in
//! evaluation mode (BatchNorm running statistics, no dropout) without gradients, in minibatches.

use crate::data::{CountSource, Covariates, Minibatch};
use crate::error::{Error, Result};
use crate::module::{Inference, Vae};
use tch::{Kind, Tensor};

fn check_batches(vae: &Vae, batch_codes: &[i32], cov: &Covariates<'_>, n: usize) -> Result<()> {
    cov.check(n, &vae.config)?;
    if batch_codes.len() != n {
        return Err(Error::InvalidInput("one batch code per cell is needed".into()));
    }
    if batch_codes.iter().any(|&b| b < 0 || b as i64 >= vae.config.n_batch) {
        return Err(Error::InvalidInput("a batch code is outside the model's batches".into()));
    }
    Ok(())
}

fn check_genes(vae: &Vae, counts: &CountSource<'_>) -> Result<()> {
    if counts.n_genes() as i64 != vae.config.n_genes {
        return Err(Error::InvalidInput(format!(
            "the data have {} genes but the model was fitted on {}",
            counts.n_genes(),
            vae.config.n_genes
        )));
    }
    Ok(())
}

/// `n_out` cells x genes matrices, as f32 here and f64 in R.
fn output_fits(n_out: usize, counts: &CountSource<'_>, what: &str) -> Result<()> {
    let values = n_out as u128 * counts.n_cells() as u128 * counts.n_genes() as u128;
    crate::runtime::ensure_memory(values, 12, what)
}

pub(crate) fn check_inputs(vae: &Vae, counts: &CountSource<'_>, batch_codes: &[i32], cov: &Covariates<'_>) -> Result<()> {
    check_genes(vae, counts)?;
    check_batches(vae, batch_codes, cov, counts.n_cells())
}

/// Runs `f` on consecutive minibatches of all cells (in order), in evaluation without gradients.
fn for_each_minibatch<'a>(
    vae: &Vae,
    counts: CountSource<'a>,
    batch_codes: &'a [i32],
    cov: &Covariates<'a>,
    batch_size: usize,
    mut f: impl FnMut(&Minibatch, &[usize]),
) -> Result<()> {
    let mut builder = counts.builder(batch_codes, cov, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    tch::no_grad(|| {
        counts.for_each(&mut builder, &cells, batch_size, |mb, chunk| {
            crate::runtime::check_interrupt()?;
            f(mb, chunk);
            Ok(())
        })?;
        // Sample loops inside `f` stop early when interrupted; their partial result is dropped.
        crate::runtime::check_interrupt()
    })
}

pub(crate) fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
    let mut out = vec![0f32; t.numel()];
    t.copy_data(&mut out, t.numel());
    out
}

/// What `latent_representation` returns.
#[derive(Clone, Copy, Debug)]
pub enum LatentQuery {
    /// Posterior mean: q's mean for a normal latent, a Monte Carlo average of `mc_samples`
    /// softmax-transformed samples for a logistic-normal one.
    Mean { mc_samples: usize },
    /// One posterior sample (transformed for a logistic-normal latent).
    Sample,
    /// The Gaussian posterior's mean and variance (two matrices).
    Distribution,
}

/// Cells x n_latent matrices, row-major (a second one, the variances, for `Distribution`).
pub fn latent_representation<'a>(
    vae: &Vae,
    counts: impl Into<CountSource<'a>>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    query: LatentQuery,
    batch_size: usize,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let counts: CountSource<'_> = counts.into();
    check_inputs(vae, &counts, batch_codes, cov)?;
    let n = counts.n_cells() * vae.config.n_latent as usize;
    let (mut first, mut second) = (Vec::with_capacity(n), Vec::new());
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, chunk| {
        let inf = vae.inference(&mb, false);
        match query {
            LatentQuery::Mean { .. } if !vae.config.logistic_normal() => first.extend(to_vec(&inf.qz.q_mean)),
            LatentQuery::Mean { mc_samples } => {
                // Samples x cells x latent, softmax over the latent, averaged over samples.
                let k = mc_samples.max(1) as i64;
                let sd = inf.qz.q_var.sqrt();
                let eps = Tensor::randn([k, chunk.len() as i64, vae.config.n_latent], (Kind::Float, vae.device()));
                let samples = (eps * sd.unsqueeze(0) + inf.qz.q_mean.unsqueeze(0)).softmax(-1, Kind::Float);
                first.extend(to_vec(&samples.mean_dim([0i64].as_slice(), false, Kind::Float)));
            }
            LatentQuery::Sample => first.extend(to_vec(&inf.z)),
            LatentQuery::Distribution => {
                first.extend(to_vec(&inf.qz.q_mean));
                second.extend(to_vec(&inf.qz.q_var));
            }
        }
    })?;
    Ok((first, matches!(query, LatentQuery::Distribution).then_some(second)))
}

/// How expression is scaled in `normalized_expression`.
#[derive(Clone, Copy, Debug)]
pub enum LibrarySize {
    /// Proportions times this constant.
    Constant(f64),
    /// The model's own library (observed, or sampled from q(l | x)): the mean mu in counts.
    Latent,
}

/// Expected expression per cell and gene, one cells x genes row-major matrix per posterior sample
/// (or one averaged over `n_samples` when `return_mean`). scvi-tools samples z even for a single
/// sample. With `transform_batches`, every cell is decoded as if from each of those batches and
/// the results are averaged; empty means each cell's own batch.
pub fn normalized_expression<'a>(
    vae: &Vae,
    counts: impl Into<CountSource<'a>>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    transform_batches: &[usize],
    library_size: LibrarySize,
    n_samples: usize,
    return_mean: bool,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let counts: CountSource<'_> = counts.into();
    check_inputs(vae, &counts, batch_codes, cov)?;
    if transform_batches.iter().any(|&b| b as i64 >= vae.config.n_batch) {
        return Err(Error::InvalidInput("transform_batch is outside the model's batches".into()));
    }
    let n_samples = n_samples.max(1);
    let n_out = if return_mean { 1 } else { n_samples };
    output_fits(n_out, &counts, "the normalized expression")?;
    let mut out = vec![Vec::new(); n_out];
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, chunk| {
        let decode_batches: Vec<Tensor> = if transform_batches.is_empty() {
            vec![mb.batch_index.shallow_clone()]
        } else {
            transform_batches.iter().map(|&b| mb.batch_index.full_like(b as i64)).collect()
        };
        let mut acc = Tensor::zeros([chunk.len() as i64, vae.config.n_genes], (Kind::Float, vae.device()));
        for s in 0..n_samples {
            if crate::runtime::cancelled() {
                break;
            }
            let inf = vae.inference(&mb, false);
            let mut sample = Tensor::zeros_like(&acc);
            for b in &decode_batches {
                let gen = vae.generative(&inf.z, &inf.library, b, &mb, false);
                sample += match library_size {
                    LibrarySize::Constant(c) => gen.px_scale * c,
                    LibrarySize::Latent => gen.px_rate,
                };
            }
            let sample = sample / decode_batches.len() as f64;
            if return_mean {
                acc += sample;
            } else {
                out[s].extend(to_vec(&sample));
            }
        }
        if return_mean {
            out[0].extend(to_vec(&(acc / n_samples as f64)));
        }
    })?;
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

/// Refuses a query that evaluates the likelihood of the counts on a minified model's cells.
fn needs_counts(cov: &Covariates<'_>, what: &str) -> Result<()> {
    if cov.latent.is_some() {
        return Err(Error::InvalidInput(format!("{what} needs the counts, which a minified model does not keep; use the full model")));
    }
    Ok(())
}

pub fn cell_losses<'a>(vae: &Vae, counts: impl Into<CountSource<'a>>, batch_codes: &[i32], cov: &Covariates<'_>, batch_size: usize) -> Result<CellLosses> {
    let counts: CountSource<'_> = counts.into();
    needs_counts(cov, "the ELBO / reconstruction error")?;
    check_inputs(vae, &counts, batch_codes, cov)?;
    let mut out = CellLosses { reconstruction: Vec::new(), kl_local: Vec::new() };
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, _| {
        let l = vae.loss(&mb, false, 1.0);
        out.reconstruction.extend(to_f64(&l.reconstruction));
        out.kl_local.extend(to_f64(&(&l.kl_z + &l.kl_library)));
    })?;
    Ok(out)
}

/// Gaussian log density, summed over the last dimension.
pub(crate) fn normal_log_prob(x: &Tensor, mean: &Tensor, var: &Tensor) -> Tensor {
    ((x - mean).square() / var + var.log() + (2.0 * std::f64::consts::PI).ln())
        .sum_dim_intlist(-1, false, Kind::Float)
        * -0.5
}

/// Importance-sampled log p(x) per cell with q as proposal (scvi-tools' `marginal_ll`):
/// logsumexp_k [log p(z_k) + log p(x | z_k, l_k) - log q(z_k | x) (+ log p(l_k) - log q(l_k | x))]
/// - log K.
pub fn marginal_ll<'a>(vae: &Vae, counts: impl Into<CountSource<'a>>, batch_codes: &[i32], cov: &Covariates<'_>, n_mc_samples: usize, batch_size: usize) -> Result<Vec<f64>> {
    let counts: CountSource<'_> = counts.into();
    needs_counts(cov, "the marginal log-likelihood")?;
    check_inputs(vae, &counts, batch_codes, cov)?;
    if n_mc_samples == 0 {
        return Err(Error::InvalidInput("n_mc_samples must be at least 1".into()));
    }
    let mut out = Vec::with_capacity(counts.n_cells());
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, _| {
        out.extend(to_f64(&marginal_ll_minibatch(vae, mb, n_mc_samples)));
    })?;
    Ok(out)
}

/// The importance-sampled log p(x) of a minibatch's cells (see `marginal_ll`), cells.
pub(crate) fn marginal_ll_minibatch(vae: &Vae, mb: &Minibatch, n_mc_samples: usize) -> Tensor {
    let mut terms = Vec::with_capacity(n_mc_samples);
    // The encoders run for the first sample only; the others are drawn from its posteriors.
    let mut posteriors: Option<Inference> = None;
    for _ in 0..n_mc_samples {
        if crate::runtime::cancelled() {
            break;
        }
        let inf = match &posteriors {
            Some(p) => vae.resample(p),
            None => vae.inference(mb, false),
        };
        let gen = vae.generative(&inf.z, &inf.library, &mb.batch_index, mb, false);
        let log_p_x = -vae.reconstruction_loss(mb, &gen);
        // Densities of the Gaussian sample (for a logistic-normal latent this is where the
        // prior and q live; scvi-tools evaluates them at the softmax-transformed z).
        let u = &inf.z_untransformed;
        let log_p_z = normal_log_prob(u, &u.zeros_like(), &u.ones_like());
        let log_q_z = normal_log_prob(u, &inf.qz.q_mean, &inf.qz.q_var);
        let mut t = log_p_z + log_p_x - log_q_z;
        if let (Some(ql), Some((prior_mean, prior_var))) = (&inf.ql, vae.library_prior(&mb.batch_index)) {
            t = t + normal_log_prob(&inf.library, &prior_mean, &prior_var)
                - normal_log_prob(&inf.library, &ql.q_mean, &ql.q_var);
        }
        terms.push(t);
        if posteriors.is_none() {
            posteriors = Some(inf);
        }
    }
    if terms.is_empty() {
        return Tensor::zeros([mb.n_cells as i64], (Kind::Float, vae.device()));
    }
    let n = terms.len();
    Tensor::stack(&terms, 0).logsumexp([0], false) - (n as f64).ln()
}

/// Library size per cell: exp of the observed log library (`give_mean = false`), or the mean of
/// the log-normal posterior q(l | x), exp(m + v / 2), when the library is latent.
pub fn latent_library_size<'a>(vae: &Vae, counts: impl Into<CountSource<'a>>, batch_codes: &[i32], cov: &Covariates<'_>, give_mean: bool, batch_size: usize) -> Result<Vec<f64>> {
    let counts: CountSource<'_> = counts.into();
    check_inputs(vae, &counts, batch_codes, cov)?;
    if give_mean && vae.config.use_observed_lib_size {
        return Err(Error::InvalidInput(
            "this model uses the observed library size and has no posterior for it; use give_mean = FALSE".into(),
        ));
    }
    let mut out = Vec::with_capacity(counts.n_cells());
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, _| {
        let inf = vae.inference(&mb, false);
        let lib = match (&inf.ql, give_mean) {
            (Some(ql), true) => (&ql.q_mean + &ql.q_var * 0.5).exp(),
            _ => inf.library.exp(),
        };
        out.extend(to_f64(&lib.reshape([-1])));
    })?;
    Ok(out)
}

/// Likelihood parameters per posterior sample (or averaged over samples): each field holds one
/// cells x genes row-major matrix per output sample.
pub struct LikelihoodParameters {
    pub mean: Vec<Vec<f32>>,
    pub dispersions: Option<Vec<Vec<f32>>>,
    /// Zero-inflation probabilities (ZINB only).
    pub dropout: Option<Vec<Vec<f32>>>,
}

/// scvi-tools' `get_likelihood_parameters`: for each of `n_samples` posterior samples of z, the
/// mean mu, the dispersion theta (broadcast to cells) and the zero probability; averaged over
/// samples when `give_mean`.
pub fn likelihood_parameters<'a>(
    vae: &Vae,
    counts: impl Into<CountSource<'a>>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    n_samples: usize,
    give_mean: bool,
    batch_size: usize,
) -> Result<LikelihoodParameters> {
    let counts: CountSource<'_> = counts.into();
    check_inputs(vae, &counts, batch_codes, cov)?;
    let n_samples = n_samples.max(1);
    let n_out = if give_mean { 1 } else { n_samples };
    output_fits(3 * n_out, &counts, "the likelihood parameters")?;
    let lik = vae.config.gene_likelihood;
    let mut out = LikelihoodParameters {
        mean: vec![Vec::new(); n_out],
        dispersions: lik.has_dispersion().then(|| vec![Vec::new(); n_out]),
        dropout: lik.has_zero_inflation().then(|| vec![Vec::new(); n_out]),
    };
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, chunk| {
        let shape = [chunk.len() as i64, vae.config.n_genes];
        let mut acc: [Option<Tensor>; 3] = [None, None, None];
        for s in 0..n_samples {
            if crate::runtime::cancelled() {
                break;
            }
            let inf = vae.inference(&mb, false);
            let gen = vae.generative(&inf.z, &inf.library, &mb.batch_index, &mb, false);
            let values = [
                Some(gen.px_rate.shallow_clone()),
                gen.theta.as_ref().map(|t| t.expand(shape, false)),
                gen.px_dropout.as_ref().map(|p| p.sigmoid()),
            ];
            if give_mean {
                for (a, v) in acc.iter_mut().zip(values) {
                    if let Some(v) = v {
                        *a = Some(match a.take() {
                            Some(prev) => prev + v,
                            None => v,
                        });
                    }
                }
            } else {
                push_sample(&mut out, s, values);
            }
        }
        if give_mean {
            let values = acc.map(|a| a.map(|t| t / n_samples as f64));
            push_sample(&mut out, 0, values);
        }
    })?;
    Ok(out)
}

fn push_sample(out: &mut LikelihoodParameters, s: usize, values: [Option<Tensor>; 3]) {
    let [mean, disp, drop] = values;
    if let Some(m) = mean {
        out.mean[s].extend(to_vec(&m));
    }
    if let (Some(d), Some(o)) = (disp, out.dispersions.as_mut()) {
        o[s].extend(to_vec(&d));
    }
    if let (Some(d), Some(o)) = (drop, out.dropout.as_mut()) {
        o[s].extend(to_vec(&d));
    }
}

/// Counts drawn from the posterior predictive distribution, `n_samples` cells x genes row-major
/// matrices: z ~ q(z | x), then x ~ p(x | z). NB and ZINB sample as scvi-tools does, through the
/// Gamma-Poisson mixture (w ~ Gamma(theta, theta / mu), x ~ Poisson(w), w capped at 1e8),
/// ZINB then zeroes entries with the zero-inflation probability.
pub fn posterior_predictive_sample<'a>(
    vae: &Vae,
    counts: impl Into<CountSource<'a>>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    n_samples: usize,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let counts: CountSource<'_> = counts.into();
    check_inputs(vae, &counts, batch_codes, cov)?;
    let n_samples = n_samples.max(1);
    output_fits(n_samples, &counts, "the posterior predictive samples")?;
    let mut out = vec![Vec::new(); n_samples];
    let lik = vae.config.gene_likelihood;
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, _| {
        for sample in out.iter_mut() {
            if crate::runtime::cancelled() {
                break;
            }
            let inf = vae.inference(&mb, false);
            let gen = vae.generative(&inf.z, &inf.library, &mb.batch_index, &mb, false);
            let x = match (lik, &gen.theta) {
                (crate::distributions::GeneLikelihood::Normal, Some(sd)) => {
                    crate::distributions::sample::sample_normal(&gen.px_rate, sd)
                }
                _ => crate::distributions::sample::sample_counts(
                    &gen.px_rate,
                    gen.theta.as_ref().filter(|_| lik.has_dispersion()),
                    gen.px_dropout.as_ref(),
                ),
            };
            sample.extend(to_vec(&x));
        }
    })?;
    Ok(out)
}

/// scvi-tools' "denoised samples" behind `get_feature_correlation_matrix`: per posterior sample
/// of z, a draw of the Gamma part of the Gamma-Poisson mixture, Gamma(theta, theta / mu'), with
/// mu' = `rna_size_factor` * px_scale (for Poisson, which has no theta, mu' itself). Rows are
/// (cell, sample) pairs, row-major with genes as columns. `transform_batch` decodes as that batch.
pub fn denoised_samples<'a>(
    vae: &Vae,
    counts: impl Into<CountSource<'a>>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    transform_batch: Option<usize>,
    n_samples: usize,
    rna_size_factor: f64,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let counts: CountSource<'_> = counts.into();
    check_inputs(vae, &counts, batch_codes, cov)?;
    if transform_batch.is_some_and(|b| b as i64 >= vae.config.n_batch) {
        return Err(Error::InvalidInput("transform_batch is outside the model's batches".into()));
    }
    output_fits(n_samples.max(1), &counts, "the denoised samples")?;
    let mut out = Vec::with_capacity(counts.n_cells() * n_samples.max(1) * counts.n_genes());
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, _| {
        let decode_batch = match transform_batch {
            Some(b) => mb.batch_index.full_like(b as i64),
            None => mb.batch_index.shallow_clone(),
        };
        for _ in 0..n_samples.max(1) {
            if crate::runtime::cancelled() {
                break;
            }
            let inf = vae.inference(&mb, false);
            let gen = vae.generative(&inf.z, &inf.library, &decode_batch, &mb, false);
            let rate = &gen.px_scale * rna_size_factor;
            let draw = match &gen.theta {
                Some(theta) if vae.config.gene_likelihood != crate::distributions::GeneLikelihood::Normal => {
                    let theta = theta.expand_as(&rate);
                    theta.internal_standard_gamma() * &rate / &theta
                }
                _ => rate,
            };
            out.extend(to_vec(&draw));
        }
    })?;
    Ok(out)
}

/// scANVI label probabilities, cells x labels row-major, from the classifier on the posterior
/// mean of z (or on one posterior sample), in evaluation mode, as scvi-tools'
/// `predict(soft = True, use_posterior_mean)`.
pub fn label_probabilities<'a>(vae: &Vae, counts: impl Into<CountSource<'a>>, batch_codes: &[i32], cov: &Covariates<'_>, use_posterior_mean: bool, batch_size: usize) -> Result<Vec<f32>> {
    let counts: CountSource<'_> = counts.into();
    check_inputs(vae, &counts, batch_codes, cov)?;
    if vae.scanvi.is_none() {
        return Err(Error::InvalidInput("label predictions need a scANVI model".into()));
    }
    let mut out = Vec::new();
    for_each_minibatch(vae, counts, batch_codes, cov, batch_size, |mb, _| {
        let logits = if use_posterior_mean {
            vae.classify(mb, false)
        } else {
            let z = vae.inference(mb, false).z;
            vae.scanvi.as_ref().expect("checked above").classify_z(&z, false)
        };
        out.extend(to_vec(&logits.softmax(-1, Kind::Float)));
    })?;
    Ok(out)
}

/// One of the model's tensors (parameter or BatchNorm statistic) by name, on the CPU.
fn named_tensor(vae: &Vae, name: &str) -> Result<Tensor> {
    vae.vs
        .variables()
        .remove(name)
        .map(|t| t.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu))
        .ok_or_else(|| Error::InvalidInput(format!("the model has no tensor {name}")))
}

/// LDVAE's gene loadings (scvi-tools' `LinearSCVI.get_loadings()`): the linear decoder's weights
/// of the latent factors, scaled by its BatchNorm (`gamma / sqrt(running_var + eps)`) when it has
/// one. Row-major genes x n_latent.
pub fn loadings(vae: &Vae) -> Result<Vec<f32>> {
    if !vae.config.linear_decoder {
        return Err(Error::InvalidInput(
            "loadings exist only for a linear decoder; train with ldvae() or linear_decoder = TRUE".into(),
        ));
    }
    let prefix = "decoder.factor_regressor.layer_0.";
    let n_latent = vae.config.n_latent;
    // The weight's columns are the latent factors, then any injected covariates.
    let mut w = named_tensor(vae, &format!("{prefix}linear.weight"))?.narrow(1, 0, n_latent);
    if vae.config.use_batch_norm_decoder {
        let gamma = named_tensor(vae, &format!("{prefix}batch_norm.weight"))?;
        let var = named_tensor(vae, &format!("{prefix}batch_norm.running_var"))?;
        w = w * (gamma / (var + crate::nn::init::BATCH_NORM_EPS).sqrt()).unsqueeze(1);
    }
    Ok(to_vec(&w))
}

/// The learnt batch vectors (row-major n_batch x batch_embedding_dim) of a model trained with
/// `batch_representation = "embedding"`.
pub fn batch_embedding(vae: &Vae) -> Result<Vec<f32>> {
    if !vae.config.batch_embedding() {
        return Err(Error::InvalidInput(
            "this model represents batches one-hot; train with batch_representation = \"embedding\"".into(),
        ));
    }
    Ok(to_vec(&named_tensor(vae, "batch_embedding")?))
}
