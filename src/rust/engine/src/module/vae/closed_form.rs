//! A training step of the standard scVI network with its gradients written out in closed form.
//!
//! For the networks most fits use (hidden layers of Linear -> BatchNorm or not -> LayerNorm or
//! not -> ReLU -> dropout, a Gaussian latent, the observed library or a latent one from its own
//! encoder, an NB or ZINB likelihood with one dispersion per gene, categorical covariates into
//! the decoder's layers (and the encoders' with `encode_covariates`) and continuous ones into
//! the decoder's first), the gradient of every parameter follows from the chain rule through a
//! dozen small matrices per layer.
//! Autograd reaches the same numbers through about forty recorded operations and their backward
//! nodes for one hidden layer, each costing microseconds of libtorch's bookkeeping on one
//! thread: at 128 cells that was the largest part of a step that a second thread could not
//! share. Here the forward pass runs outside autograd, keeps what the backward pass needs, and
//! the gradients are added into each parameter's `.grad` by hand; the random draws (the dropout
//! masks, the latent samples) come from libtorch's generator in the same order as in
//! `Vae::loss`, so both paths train the same model up to rounding (`cargo test` compares the
//! loss, every gradient and the BatchNorm statistics).
//!
//! Every other configuration, and a fresh model's first step (whose parameters have no `.grad`
//! yet), runs through autograd as before.
//!
//! Between its parallel parts (the sparse first layer, the heads' products, the likelihood) the
//! step has two serial stretches of small matrices: from the first layer's product to the heads
//! (BatchNorm, the posterior, the sample, the decoder's layers) and from the heads' gradients to
//! the first layer's weight gradient (the same layers backwards). With a second thread, the
//! trainer's [`SideWork`] runs beside them: the next minibatch's building (memory-bound) beside
//! the first, the optimiser's update of the heads (memory-bound, their gradients final by then)
//! beside the second.

use super::{LossOutput, Vae};
use crate::data::minibatch::one_hot;
use crate::data::Minibatch;
use crate::distributions::{fused, GeneLikelihood};
use crate::module::config::Dispersion;
use crate::nn::encoder::VAR_EPS;
use crate::nn::fc_layers::{dropout_mask, BatchNormParts, StackParts, LAYER_NORM_EPS};
use crate::nn::sparse_input::{self, DeferredHead, GeneOrder, SparseInput};
use tch::{nn, Device, Kind, Tensor};

/// What the step reads from the model, checked before anything is computed or drawn.
struct Plan<'a> {
    input: SparseInput<'a>,
    encoder: StackParts<'a>,
    mean: &'a nn::Linear,
    var: &'a nn::Linear,
    decoder: StackParts<'a>,
    scale: &'a nn::Linear,
    zero_inflation: Option<&'a nn::Linear>,
    px_r: &'a Tensor,
    /// The decoder's one-hot covariates (cells x width each), in input order; its layers take
    /// them as extra input columns.
    one_hots: Vec<Tensor>,
    /// The encoder's (with `encode_covariates`; empty otherwise), which its first layer takes
    /// after the genes.
    encoder_one_hots: Vec<Tensor>,
    /// The continuous covariates (cells x k), appended to z as the decoder's input.
    continuous: Option<Tensor>,
    /// The library encoder, when the library is latent.
    library: Option<LibraryPlan<'a>>,
}

/// A latent library's encoder (one output: the log library's mean and variance) and each cell's
/// prior, from its batch.
struct LibraryPlan<'a> {
    encoder: StackParts<'a>,
    /// Its one-hot covariates, as the z encoder's.
    one_hots: Vec<Tensor>,
    mean: &'a nn::Linear,
    var: &'a nn::Linear,
    prior_mean: Vec<f32>,
    prior_var: Vec<f32>,
}

/// Work a trainer offers a training step, to run on another of libtorch's threads beside the
/// step's serial stretches (see the module doc). The step takes a job by running it; what is
/// left afterwards (one thread, a step through autograd) did not run, and the trainer runs it
/// itself.
#[derive(Default)]
pub struct SideWork<'a> {
    /// Work that reads nothing the step writes (building the next minibatch).
    pub independent: Option<Box<dyn FnOnce() + Send + 'a>>,
    /// The optimiser's update of the given parameters, whose gradients are final when it is
    /// called (the decoder's heads and the dispersion); run only when the loss is finite.
    pub update: Option<Box<dyn FnOnce(Vec<Tensor>) + Send + 'a>>,
}

/// Runs `here`, and `job` beside it on another thread when there is one.
fn beside_job(job: Option<Box<dyn FnOnce() + Send + '_>>, here: impl FnOnce()) {
    match job {
        Some(job) => crate::runtime::beside(here, job),
        None => here(),
    }
}

impl Vae {
    /// `loss(mb, true, kl_weight)` with the gradients already added into the parameters'
    /// `.grad` (the returned loss has no graph), or None where the step must run through
    /// autograd (see the module doc); `side` as in [`Vae::training_loss`].
    pub(super) fn closed_form_loss(&self, mb: &Minibatch, kl_weight: f64, side: &mut SideWork<'_>) -> Option<LossOutput> {
        let plan = self.closed_form_plan(mb)?;
        tch::no_grad(|| step(&plan, mb, kl_weight, side))
    }

    fn closed_form_plan<'a>(&'a self, mb: &'a Minibatch) -> Option<Plan<'a>> {
        let c = &self.config;
        let likelihood = matches!(c.gene_likelihood, GeneLikelihood::Nb | GeneLikelihood::Zinb);
        if !self.closed_form
            || !self.fused_rates
            || !likelihood
            || c.dispersion != Dispersion::Gene
            || self.device() != Device::Cpu
            || c.use_size_factor_key
            || c.logistic_normal()
            || self.scanvi.is_some()
            || self.batch_embedding.is_some()
            || mb.latent.is_some()
            || mb.n_cells < 2
            || !(0.0..1.0).contains(&c.effective_dropout())
            || !fused::supported(&mb.log_library)
            || !sparse_input::grad_mode()
        {
            return None;
        }
        let px_r = self.px_r.as_ref().filter(|r| r.dim() == 1)?;
        let input = self.sparse_input(mb)?;
        let (encoder, mean, var) = self.z_encoder.parts()?;
        let (decoder, scale, zero_inflation) = self.decoder.parts()?;
        if (c.gene_likelihood == GeneLikelihood::Zinb) != zero_inflation.is_some() {
            return None;
        }
        let cats = self.categoricals(&mb.batch_index, mb);
        // The one-hot covariates a stack takes, in input order (a dropped covariate has width 0).
        let one_hots_for = |stack: &StackParts<'_>| -> Vec<Tensor> {
            stack.cat_widths.iter().zip(&cats).filter(|(&w, _)| w > 0).map(|(&w, c)| one_hot(c, w)).collect()
        };
        // With covariates, the encoders' first block must take them (as FcLayers' first always does).
        let first_takes = |stack: &StackParts<'_>| stack.cat_widths.iter().all(|&w| w == 0) || stack.blocks.first().is_some_and(|b| b.takes_covariates);
        // ... and its weight must be the genes' columns followed by theirs.
        let genes_then_covariates =
            |stack: &StackParts<'_>| stack.blocks.first().is_some_and(|b| b.weight.size()[1] == (input.rows.n_genes as i64) + stack.cat_widths.iter().sum::<i64>());
        if !first_takes(&encoder) || !genes_then_covariates(&encoder) {
            return None;
        }
        let library = match &self.l_encoder {
            Some(l) => {
                let (encoder, mean, var) = l.parts()?;
                let (prior_mean, prior_var) = self.library_prior(&mb.batch_index)?;
                let per_cell = |t: Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).ok();
                if encoder.blocks.is_empty() || !first_takes(&encoder) || !genes_then_covariates(&encoder) {
                    return None;
                }
                let one_hots = one_hots_for(&encoder);
                Some(LibraryPlan { encoder, one_hots, mean, var, prior_mean: per_cell(prior_mean)?, prior_var: per_cell(prior_var)? })
            }
            None => None,
        };
        // Every parameter must be trainable and have a `.grad` to add into.
        let mut params: Vec<&Tensor> = vec![px_r, &mean.ws, &var.ws, &scale.ws];
        params.extend(mean.bs.as_ref().into_iter().chain(var.bs.as_ref()).chain(scale.bs.as_ref()));
        if let Some(z) = zero_inflation {
            params.push(&z.ws);
            params.extend(z.bs.as_ref());
        }
        if let Some(l) = &library {
            params.extend([&l.mean.ws, &l.var.ws]);
            params.extend(l.mean.bs.as_ref().into_iter().chain(l.var.bs.as_ref()));
        }
        let library_blocks = library.iter().flat_map(|l| &l.encoder.blocks);
        for b in encoder.blocks.iter().chain(&decoder.blocks).chain(library_blocks) {
            params.push(b.weight);
            params.extend(b.bias);
            if let Some(bn) = &b.batch_norm {
                params.extend([bn.weight, bn.bias]);
            }
        }
        let ready = |t: &Tensor| t.requires_grad() && t.kind() == Kind::Float && t.grad().defined();
        if !params.into_iter().all(ready) {
            return None;
        }
        let one_hots = one_hots_for(&decoder);
        let encoder_one_hots = one_hots_for(&encoder);
        let continuous = mb.continuous.as_ref().map(|c| c.to_kind(Kind::Float));
        Some(Plan { input, encoder, mean, var, decoder, scale, zero_inflation, px_r, one_hots, encoder_one_hots, continuous, library })
    }
}

/// A cells x columns matrix on the host, row-major.
struct Mat {
    v: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn of(t: &Tensor) -> Mat {
        let s = t.size();
        let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).expect("a float matrix");
        Mat { v, rows: s[0] as usize, cols: s[1] as usize }
    }

    fn tensor(&self) -> Tensor {
        Tensor::from_slice(&self.v).view([self.rows as i64, self.cols as i64])
    }

    /// Column sums, as a tensor (a bias's gradient).
    fn column_sums(&self) -> Tensor {
        let mut s = vec![0f32; self.cols];
        for row in self.v.chunks_exact(self.cols) {
            for (a, &x) in s.iter_mut().zip(row) {
                *a += x;
            }
        }
        Tensor::from_slice(&s)
    }
}

/// What BatchNorm's backward pass needs from its forward pass.
struct NormCache {
    xhat: Vec<f32>,
    invstd: Vec<f32>,
    /// The running statistics to store once the step has gone through.
    running: (Vec<f32>, Vec<f32>),
}

/// BatchNorm in training, in place (x becomes its output): each column normalised by its mean
/// and biased variance over the cells, then scaled and shifted. The running statistics move by
/// `momentum` towards the mean and the unbiased variance, as libtorch's do.
fn norm_forward(x: &mut Mat, bn: &BatchNormParts<'_>) -> NormCache {
    let (n, h) = (x.rows, x.cols);
    let mut mean = vec![0f64; h];
    for row in x.v.chunks_exact(h) {
        for (m, &a) in mean.iter_mut().zip(row) {
            *m += a as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0f64; h];
    for row in x.v.chunks_exact(h) {
        for ((s, &a), &m) in var.iter_mut().zip(row).zip(&mean) {
            let d = a as f64 - m;
            *s += d * d;
        }
    }
    var.iter_mut().for_each(|s| *s /= n as f64);
    let invstd: Vec<f32> = var.iter().map(|&s| (1.0 / (s + bn.eps).sqrt()) as f32).collect();
    let (gamma, beta) = (Vec::<f32>::try_from(bn.weight).expect("gamma"), Vec::<f32>::try_from(bn.bias).expect("beta"));
    let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let mut xhat = vec![0f32; n * h];
    for (row, out) in x.v.chunks_exact_mut(h).zip(xhat.chunks_exact_mut(h)) {
        for j in 0..h {
            let t = (row[j] - mean32[j]) * invstd[j];
            out[j] = t;
            row[j] = t * gamma[j] + beta[j];
        }
    }
    let m = bn.momentum;
    let rm = Vec::<f64>::try_from(bn.running_mean.to_kind(Kind::Double)).expect("running mean");
    let rv = Vec::<f64>::try_from(bn.running_var.to_kind(Kind::Double)).expect("running variance");
    let unbiased = n as f64 / (n as f64 - 1.0);
    let running = (
        rm.iter().zip(&mean).map(|(&r, &x)| ((1.0 - m) * r + m * x) as f32).collect(),
        rv.iter().zip(&var).map(|(&r, &x)| ((1.0 - m) * r + m * x * unbiased) as f32).collect(),
    );
    NormCache { xhat, invstd, running }
}

/// BatchNorm's backward pass: the input's gradient (in place of `dy`), and gamma's and beta's.
fn norm_backward(dy: &mut Mat, cache: &NormCache, gamma: &Tensor) -> (Tensor, Tensor) {
    let (n, h) = (dy.rows, dy.cols);
    let gamma = Vec::<f32>::try_from(gamma).expect("gamma");
    let (mut sum_dy, mut sum_dy_xhat) = (vec![0f64; h], vec![0f64; h]);
    for (row, xr) in dy.v.chunks_exact(h).zip(cache.xhat.chunks_exact(h)) {
        for j in 0..h {
            sum_dy[j] += row[j] as f64;
            sum_dy_xhat[j] += (row[j] * xr[j]) as f64;
        }
    }
    let k: Vec<f32> = (0..h).map(|j| gamma[j] * cache.invstd[j] / n as f32).collect();
    let (a, b): (Vec<f32>, Vec<f32>) = (sum_dy.iter().map(|&s| s as f32).collect(), sum_dy_xhat.iter().map(|&s| s as f32).collect());
    for (row, xr) in dy.v.chunks_exact_mut(h).zip(cache.xhat.chunks_exact(h)) {
        for j in 0..h {
            row[j] = k[j] * (n as f32 * row[j] - a[j] - xr[j] * b[j]);
        }
    }
    (Tensor::from_slice(&b), Tensor::from_slice(&a))
}

/// What LayerNorm's backward pass needs from its forward pass: the normalised values and each
/// row's 1 / sqrt(variance + eps).
struct LayerCache {
    xhat: Vec<f32>,
    invstd: Vec<f32>,
}

/// LayerNorm without affine parameters, in place: each row normalised by its mean and biased
/// variance over its columns (as `torch.nn.LayerNorm(width, elementwise_affine = False)`).
fn layer_norm_forward(x: &mut Mat) -> LayerCache {
    let h = x.cols;
    let mut invstd = Vec::with_capacity(x.rows);
    for row in x.v.chunks_exact_mut(h) {
        let mean = row.iter().map(|&a| a as f64).sum::<f64>() / h as f64;
        let var = row.iter().map(|&a| (a as f64 - mean) * (a as f64 - mean)).sum::<f64>() / h as f64;
        let r = 1.0 / (var + LAYER_NORM_EPS).sqrt();
        for a in row.iter_mut() {
            *a = ((*a as f64 - mean) * r) as f32;
        }
        invstd.push(r as f32);
    }
    LayerCache { xhat: x.v.clone(), invstd }
}

/// LayerNorm's backward pass, in place of `dy`: dx = (dy - mean(dy) - xhat mean(dy xhat)) / sd,
/// the means over each row's columns.
fn layer_norm_backward(dy: &mut Mat, cache: &LayerCache) {
    let h = dy.cols;
    for ((row, xr), &r) in dy.v.chunks_exact_mut(h).zip(cache.xhat.chunks_exact(h)).zip(&cache.invstd) {
        let mean_dy = row.iter().map(|&a| a as f64).sum::<f64>() / h as f64;
        let mean_dy_xhat = row.iter().zip(xr).map(|(&a, &x)| a as f64 * x as f64).sum::<f64>() / h as f64;
        for (g, &x) in row.iter_mut().zip(xr) {
            *g = ((*g as f64 - mean_dy - x as f64 * mean_dy_xhat) * r as f64) as f32;
        }
    }
}

/// Adds `g` into the `.grad` of `param`.
fn add_grad(param: &Tensor, g: &Tensor) {
    let _ = param.grad().g_add_(&g.view(param.size().as_slice()));
}

/// A linear head's output (cells x out) on the engine's product where it runs.
fn head(input: &Tensor, layer: &nn::Linear) -> Tensor {
    crate::gemm::linear(input, &layer.ws, layer.bs.as_ref()).unwrap_or_else(|| input.linear(&layer.ws, layer.bs.as_ref()))
}

/// a b added into c (a: cells x genes, b: genes x hidden), on the engine's product where it runs.
fn add_product(c: &mut Option<Tensor>, a: &Tensor, b: &Tensor) {
    match c {
        Some(c) if crate::gemm::add_product(c, a, b) => {}
        Some(c) => {
            let _ = c.g_add_(&a.matmul(b));
        }
        None => *c = Some(crate::gemm::matmul(a, b).unwrap_or_else(|| a.matmul(b))),
    }
}

/// What a block's backward pass needs from its forward pass.
struct BlockCache {
    /// The block's input with its covariate columns (None: the encoder's sparse first block).
    input: Option<Tensor>,
    /// Columns of the input before the covariates'.
    base: i64,
    /// The sparse first block's one-hot covariates (cells x k), which its weight's columns after
    /// the genes' multiply.
    covariates: Option<Tensor>,
    norm: Option<NormCache>,
    layer: Option<LayerCache>,
    relu: Vec<bool>,
    mask: Option<Vec<f32>>,
}

/// A stack's first input: the first layer's product with the counts (the encoder's sparse
/// first layer, bias not added) or a dense matrix (the decoder).
enum First {
    SparseProduct(Tensor),
    Dense(Tensor),
}

/// A stack's forward pass in training: each block's output and what its backward pass needs.
/// Dropout masks are drawn block by block, as `FcLayers::forward_sparse` draws them.
fn stack_forward(stack: &StackParts<'_>, first: First, one_hots: &[Tensor]) -> (Mat, Vec<BlockCache>) {
    let mut caches = Vec::with_capacity(stack.blocks.len());
    let mut x = first;
    let mut out = None;
    for block in &stack.blocks {
        let mut covariates = None;
        let (y, input, base) = match x {
            First::SparseProduct(product) => {
                // The genes' product, plus the covariates' columns of the weight for each cell.
                let product = if block.takes_covariates && !one_hots.is_empty() {
                    let cats = Tensor::cat(one_hots, 1);
                    let (width, k) = (block.weight.size()[1], cats.size()[1]);
                    let y = product + cats.matmul(&block.weight.narrow(1, width - k, k).tr());
                    covariates = Some(cats);
                    y
                } else {
                    product
                };
                (block.bias.map_or_else(|| product.shallow_clone(), |b| &product + b), None, 0)
            }
            First::Dense(h) => {
                let base = h.size()[1];
                let input = if block.takes_covariates && !one_hots.is_empty() {
                    let mut parts = vec![h];
                    parts.extend(one_hots.iter().map(Tensor::shallow_clone));
                    Tensor::cat(&parts, 1)
                } else {
                    h
                };
                (input.linear(block.weight, block.bias), Some(input), base)
            }
        };
        let mut y = Mat::of(&y);
        let norm = block.batch_norm.as_ref().map(|bn| norm_forward(&mut y, bn));
        let layer = block.layer_norm.then(|| layer_norm_forward(&mut y));
        let relu: Vec<bool> = y.v.iter().map(|&a| a > 0.0).collect();
        y.v.iter_mut().for_each(|a| *a = a.max(0.0));
        let mask = (stack.dropout_rate > 0.0).then(|| dropout_mask(y.v.len(), stack.dropout_rate));
        if let Some(m) = &mask {
            y.v.iter_mut().zip(m).for_each(|(a, &k)| *a *= k);
        }
        caches.push(BlockCache { input, base, covariates, norm, layer, relu, mask });
        x = First::Dense(y.tensor());
        out = Some(y);
    }
    (out.expect("a stack has a block"), caches)
}

/// What a stack's backward pass returns.
enum Back {
    /// The gradient for the first block's input without its covariate columns (the decoder's,
    /// for z).
    Input(Mat),
    /// The gradient of the sparse first layer's output (pre-activation): its weight gradient is
    /// left to the caller, outside the serial stretch.
    SparseOutput(Tensor),
}

/// A stack's backward pass from the gradient of its output: adds every block's parameter
/// gradients but the sparse first layer's weight gradient (see [`Back`]).
fn stack_backward(stack: &StackParts<'_>, caches: &[BlockCache], mut d: Mat) -> Back {
    for (block, cache) in stack.blocks.iter().zip(caches).rev() {
        for (k, g) in d.v.iter_mut().enumerate() {
            let keep = cache.mask.as_ref().map_or(1.0, |m| m[k]);
            *g = if cache.relu[k] { *g * keep } else { 0.0 };
        }
        if let Some(layer) = &cache.layer {
            layer_norm_backward(&mut d, layer);
        }
        if let (Some(bn), Some(norm)) = (&block.batch_norm, &cache.norm) {
            let (dgamma, dbeta) = norm_backward(&mut d, norm, bn.weight);
            add_grad(bn.weight, &dgamma);
            add_grad(bn.bias, &dbeta);
        }
        if let Some(b) = block.bias {
            add_grad(b, &d.column_sums());
        }
        let d_t = d.tensor();
        match &cache.input {
            Some(x) => add_grad(block.weight, &d_t.tr().matmul(x)),
            None => {
                // The covariates' columns here; the genes' are the caller's (see `Back`).
                if let Some(cats) = &cache.covariates {
                    let (width, k) = (block.weight.size()[1], cats.size()[1]);
                    let _ = block.weight.grad().narrow(1, width - k, k).g_add_(&d_t.tr().matmul(cats));
                }
                return Back::SparseOutput(d_t);
            }
        }
        d = Mat::of(&d_t.matmul(&block.weight.narrow(1, 0, cache.base)));
    }
    Back::Input(d)
}

/// The forward pass from the first layer's product to the decoder's last hidden layer, with what
/// the backward pass needs.
struct Middle {
    encoder: Vec<BlockCache>,
    /// q(z | x) and z.
    z: Posterior,
    /// The latent library's encoder pass and sample.
    library: Option<LibraryMiddle>,
    decoder: Vec<BlockCache>,
    hd: Tensor,
}

/// A Gaussian posterior's heads and its sample: mean and variance from the encoder's last
/// hidden layer `h`, variance = exp(v) + eps, sample = mean + sqrt(variance) eps.
struct Posterior {
    h: Tensor,
    mean: Mat,
    /// exp of the variance head's output.
    ev: Mat,
    var: Vec<f32>,
    sd: Vec<f32>,
    eps: Mat,
    sample: Vec<f32>,
}

impl Posterior {
    /// The heads on `h`, and a sample drawn as `EncoderOutput::rsample` draws it.
    fn new(h: Tensor, mean: &nn::Linear, var: &nn::Linear) -> Posterior {
        let q_mean = Mat::of(&h.linear(&mean.ws, mean.bs.as_ref()));
        let ev = Mat::of(&h.linear(&var.ws, var.bs.as_ref()).exp());
        let (n, l) = (q_mean.rows, q_mean.cols);
        let q_var: Vec<f32> = ev.v.iter().map(|&e| e + VAR_EPS as f32).collect();
        let sd: Vec<f32> = q_var.iter().map(|v| v.sqrt()).collect();
        let eps = Mat::of(&Tensor::randn([n as i64, l as i64], (Kind::Float, Device::Cpu)));
        let sample = (0..n * l).map(|k| q_mean.v[k] + sd[k] * eps.v[k]).collect();
        Posterior { h, mean: q_mean, ev, var: q_var, sd, eps, sample }
    }

    /// Adds the heads' weight and bias gradients for the gradients `dmean` and `dvar` of the
    /// posterior's mean and variance, and returns the gradient for `h`.
    fn backward(&self, mean: &nn::Linear, var: &nn::Linear, dmean: Mat, dvar: &[f32]) -> Mat {
        let dv = Mat { v: dvar.iter().zip(&self.ev.v).map(|(&d, &e)| d * e).collect(), rows: dmean.rows, cols: dmean.cols };
        let (dmean_t, dv_t) = (dmean.tensor(), dv.tensor());
        add_grad(&mean.ws, &dmean_t.tr().matmul(&self.h));
        add_grad(&var.ws, &dv_t.tr().matmul(&self.h));
        if let Some(b) = &mean.bs {
            add_grad(b, &dmean.column_sums());
        }
        if let Some(b) = &var.bs {
            add_grad(b, &dv.column_sums());
        }
        Mat::of(&(dmean_t.matmul(&mean.ws) + dv_t.matmul(&var.ws)))
    }
}

/// The library encoder's blocks and its posterior.
struct LibraryMiddle {
    blocks: Vec<BlockCache>,
    posterior: Posterior,
}

/// The first serial stretch: the encoder's blocks after the first layer's product, the
/// posterior, the sample, the library encoder's blocks, posterior and sample (a latent
/// library: `library_product` is its first layer's product) and the decoder's blocks.
fn middle(p: &Plan<'_>, product: Tensor, library_product: Option<Tensor>) -> Middle {
    let (h1, encoder) = stack_forward(&p.encoder, First::SparseProduct(product), &p.encoder_one_hots);
    let z = Posterior::new(h1.tensor(), p.mean, p.var);
    // The library encoder runs after z's sample is drawn, as `Vae::inference` runs it.
    let library = p.library.as_ref().zip(library_product).map(|(lp, product)| {
        let (h, blocks) = stack_forward(&lp.encoder, First::SparseProduct(product), &lp.one_hots);
        LibraryMiddle { blocks, posterior: Posterior::new(h.tensor(), lp.mean, lp.var) }
    });
    // Decoder: [z, continuous covariates] (with the one-hot covariates) through its blocks.
    let (n, l) = (z.mean.rows, z.mean.cols);
    let z_t = Tensor::from_slice(&z.sample).view([n as i64, l as i64]);
    let z_in = match &p.continuous {
        Some(c) => Tensor::cat(&[z_t, c.shallow_clone()], 1),
        None => z_t,
    };
    let (hd, decoder) = stack_forward(&p.decoder, First::Dense(z_in), &p.one_hots);
    Middle { encoder, z, library, decoder, hd: hd.tensor() }
}

/// The second serial stretch: from the gradient of the decoder's last hidden layer back through
/// the decoder, the sample, the KL and the posterior's heads to the gradient of the encoder's
/// first layer's output (its weight gradient excluded); with a latent library, from the
/// likelihood's gradient for each cell's log library (`d_library`, already scaled as the loss
/// takes it) back through its sample, its KL and its encoder, to the gradient of that
/// encoder's first layer's output.
fn middle_backward(p: &Plan<'_>, m: &Middle, d_hd: Mat, kl_scale: f32, d_library: Option<&[f32]>) -> (Tensor, Option<Tensor>) {
    let Back::Input(d_in) = stack_backward(&p.decoder, &m.decoder, d_hd) else { unreachable!("the decoder's input gradient") };
    // z's columns of the decoder's input (the continuous covariates' follow).
    let q = &m.z;
    let (n, l) = (q.mean.rows, q.mean.cols);
    let dz = if d_in.cols == l { d_in } else { Mat { v: d_in.v.chunks_exact(d_in.cols).flat_map(|row| &row[..l]).copied().collect(), rows: n, cols: l } };
    // Through the sample z = mean + sqrt(var) eps and the KL, to the posterior's heads.
    let mut dmean = Mat { v: vec![0.0; n * l], rows: n, cols: l };
    let mut dvar = vec![0.0; n * l];
    for k in 0..n * l {
        dmean.v[k] = dz.v[k] + kl_scale * q.mean.v[k];
        dvar[k] = dz.v[k] * q.eps.v[k] / (2.0 * q.sd[k]) + kl_scale * 0.5 * (1.0 - 1.0 / q.var[k]);
    }
    let d1 = q.backward(p.mean, p.var, dmean, &dvar);
    let Back::SparseOutput(d_first) = stack_backward(&p.encoder, &m.encoder, d1) else { unreachable!("the encoder starts with its sparse layer") };
    // The library: l = mean + sqrt(var) eps, and its KL against the batch's prior (weight 1, as
    // `Vae::loss` takes it), d KL / d mean = (mean - prior mean) / prior var and
    // d KL / d var = (1 / prior var - 1 / var) / 2, each over the n cells of the mean loss.
    let d_library_first = p.library.as_ref().zip(m.library.as_ref()).zip(d_library).map(|((lp, lm), dl)| {
        let q = &lm.posterior;
        let inv_n = 1.0 / n as f32;
        let mut dmean = Mat { v: vec![0.0; n], rows: n, cols: 1 };
        let mut dvar = vec![0.0; n];
        for c in 0..n {
            dmean.v[c] = dl[c] + inv_n * (q.mean.v[c] - lp.prior_mean[c]) / lp.prior_var[c];
            dvar[c] = dl[c] * q.eps.v[c] / (2.0 * q.sd[c]) + inv_n * 0.5 * (1.0 / lp.prior_var[c] - 1.0 / q.var[c]);
        }
        let d1 = q.backward(lp.mean, lp.var, dmean, &dvar);
        let Back::SparseOutput(d) = stack_backward(&lp.encoder, &lm.blocks, d1) else { unreachable!("the library encoder starts with its sparse layer") };
        d
    });
    (d_first, d_library_first)
}

/// One step: the loss, with every gradient added (inside `tch::no_grad`), and the work in `side`
/// taken as it fits (see [`SideWork`]).
fn step(p: &Plan<'_>, mb: &Minibatch, kl_weight: f64, side: &mut SideWork<'_>) -> Option<LossOutput> {
    let n = mb.n_cells;
    // The encoders' sparse first layers (parallel), checked before anything is drawn.
    let first = &p.encoder.blocks[0];
    let product = sparse_input::genes_product(p.input, first.weight)?;
    let library_product = match &p.library {
        Some(lp) => Some(sparse_input::genes_product(p.input, lp.encoder.blocks[0].weight)?),
        None => None,
    };
    let mut m = None;
    beside_job(side.independent.take(), || m = Some(middle(p, product, library_product)));
    let m = m.expect("the forward pass ran");
    // The fused likelihood on the heads' logits.
    let theta = p.px_r.exp();
    let logits = head(&m.hd, p.scale);
    let pi = p.zero_inflation.map(|z| head(&m.hd, z));
    // The plan checked what the kernel needs; were it to decline, autograd's step would run
    // instead with fresh draws, the running statistics untouched (they are stored last).
    let log_library = match &m.library {
        Some(lm) => Tensor::from_slice(&lm.posterior.sample).view([n as i64, 1]),
        None => mb.log_library.shallow_clone(),
    };
    let terms = fused::likelihood_terms(mb, fused::Mean::Softmax { logits: &logits, log_library: &log_library }, &theta, pi.as_ref())?;
    let reconstruction = &mb.lgamma_x1 - &terms.value;
    let (q, l) = (&m.z, m.z.mean.cols);
    let kl: Vec<f32> = (0..n).map(|c| (c * l..(c + 1) * l).map(|k| (q.var[k] + q.mean.v[k] * q.mean.v[k] - 1.0 - q.var[k].ln()) * 0.5).sum()).collect();
    let kl_z = Tensor::from_slice(&kl);
    // The library's KL against its batch's prior, as `kl_normal_normal` forms it.
    let kl_library = match (&p.library, &m.library) {
        (Some(lp), Some(lm)) => {
            let q = &lm.posterior;
            let kl: Vec<f32> = (0..n)
                .map(|c| {
                    let (mean, var, prior_mean, prior_var) = (q.mean.v[c], q.var[c], lp.prior_mean[c], lp.prior_var[c]);
                    ((prior_var.ln() - var.ln()) + (var + (mean - prior_mean) * (mean - prior_mean)) / prior_var - 1.0) * 0.5
                })
                .collect();
            Tensor::from_slice(&kl)
        }
        _ => kl_z.zeros_like(),
    };
    let loss = (&reconstruction + &kl_z * kl_weight + &kl_library).mean(Kind::Float);

    // Backward. d loss / d (per-cell log-likelihood) = -1/n; d loss / d (per-cell KL) = w / n.
    let u = -1.0 / n as f64;
    let kl_scale = (kl_weight / n as f64) as f32;
    // The heads: their weights' and biases' gradients, and the gradient for their input.
    let mut heads = vec![DeferredHead { grad: terms.grad_mu.shallow_clone(), weight: p.scale.ws.shallow_clone(), bias: p.scale.bs.as_ref().map(Tensor::shallow_clone) }];
    let mut grad_hd = None;
    add_product(&mut grad_hd, &terms.grad_mu, &p.scale.ws);
    if let (Some(z), Some(g)) = (p.zero_inflation, &terms.grad_pi) {
        heads.push(DeferredHead { grad: g.shallow_clone(), weight: z.ws.shallow_clone(), bias: z.bs.as_ref().map(Tensor::shallow_clone) });
        add_product(&mut grad_hd, g, &z.ws);
    }
    sparse_input::add_head_gradients(&m.hd, &Tensor::full([n as i64], u, (Kind::Float, Device::Cpu)), &heads);
    add_grad(p.px_r, &(terms.grad_theta.sum_dim_intlist(0, false, Kind::Float) * u * &theta));
    let d_hd = Mat::of(&(grad_hd.expect("the scale head's product") * u));
    // The heads' and the dispersion's gradients are final: the optimiser may update them beside
    // the second serial stretch, unless the loss is not finite (the trainer then stops before
    // any update).
    let update = side.update.take_if(|_| f64::try_from(&loss).map_or(false, f64::is_finite));
    let update = update.map(|f| {
        let mut params = vec![p.px_r.shallow_clone()];
        for h in &heads {
            params.push(h.weight.shallow_clone());
            params.extend(h.bias.as_ref().map(Tensor::shallow_clone));
        }
        Box::new(move || f(params)) as Box<dyn FnOnce() + Send + '_>
    });
    // The likelihood's gradient for each cell's log library, as the loss takes it.
    let d_library = match (&m.library, &terms.grad_log_library) {
        (Some(_), Some(g)) => Some(Vec::<f32>::try_from(g * u).expect("the log library's gradient")),
        (Some(_), None) => unreachable!("the fused likelihood gives the log library's gradient"),
        _ => None,
    };
    let mut back = None;
    beside_job(update, || back = Some(middle_backward(p, &m, d_hd, kl_scale, d_library.as_deref())));
    let (d_first, d_library_first) = back.expect("the backward pass ran");
    // Both encoders read the same nonzeros: the gene order formed for the first is reused.
    let mut order = GeneOrder::default();
    sparse_input::add_weight_gradient(p.input, &d_first, first.weight, &mut order);
    if let (Some(lp), Some(d)) = (&p.library, &d_library_first) {
        sparse_input::add_weight_gradient(p.input, d, lp.encoder.blocks[0].weight, &mut order);
    }
    // The step went through: the BatchNorm layers' running statistics move.
    let library_blocks = p.library.iter().flat_map(|lp| &lp.encoder.blocks).zip(m.library.iter().flat_map(|lm| &lm.blocks));
    let blocks = p.encoder.blocks.iter().zip(&m.encoder).chain(p.decoder.blocks.iter().zip(&m.decoder)).chain(library_blocks);
    for (block, cache) in blocks {
        if let (Some(bn), Some(norm)) = (&block.batch_norm, &cache.norm) {
            let _ = bn.running_mean.shallow_clone().copy_(&Tensor::from_slice(&norm.running.0));
            let _ = bn.running_var.shallow_clone().copy_(&Tensor::from_slice(&norm.running.1));
        }
    }
    Some(LossOutput { loss, reconstruction, kl_library, kl_z })
}
