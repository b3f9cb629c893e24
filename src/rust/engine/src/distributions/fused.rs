//! The NB / ZINB log-likelihood and its gradient in one pass (CPU).
//!
//! Over every entry (cell c, gene g), with A = theta (ln(theta + eps) - ln(theta + mu + eps)):
//!   NB:            v = A
//!   ZINB, x > 0:   v = A - softplus(pi)
//!   ZINB, x = 0:   v = softplus(A - pi) + pi - softplus(pi)
//! (the x-dependent terms live on the nonzeros: `likelihood_terms` adds them, gathered per cell,
//! see `sparse` for their form). One loop computes the per-cell sum
//! of v and dv/dmu, dv/dtheta, dv/dpi analytically:
//!   dA/dmu = -theta / (theta + mu + eps)
//!   dA/dtheta = ln(theta + eps) - ln(theta + mu + eps) + theta / (theta + eps) - theta / (theta + mu + eps)
//!   x = 0 (ZINB): dv/dA = sigmoid(A - pi), dv/dpi = 1 - sigmoid(A - pi) - sigmoid(pi)
//!   x > 0 (ZINB): dv/dA = 1, dv/dpi = -sigmoid(pi)
//! `attach` then gives autograd these gradients through a linear surrogate, so the rest of the
//! network trains as usual. This replaces a dozen full-size tensor operations and their backward.
//!
//! In training, mu = exp(l) softmax(h) (the decoder's logits h and the log library l) is formed
//! inside the same pass ([`Mean::Softmax`]), and the gradient is carried on to h and l:
//!   dv/dh_g = mu_g dv/dmu_g - p_g S,   dv/dl = S,   with p = softmax(h), S = sum_g mu_g dv/dmu_g
//! (softmax's and the library scaling's backward in closed form). The gene proportions and the
//! rates are then never written out, nor differentiated by autograd; with the decoder's linear
//! heads as [`Target::Linear`], autograd does not differentiate the logits either (they are
//! formed outside it), and with the engine's own products (`crate::gemm`) the heads' weight and
//! bias gradients are finished after backward, outside autograd too.

use super::fastmath::{exp_with, lgamma_digamma_with, ln_with, softplus_sigmoid_with, MulAdd};
use crate::data::Minibatch;
use crate::nn::sparse_input::HostRows;
use crate::simd::{self, Simd};
use super::EPS;
use tch::{Device, Kind, Tensor};

const EPS32: f32 = EPS as f32;

/// Minibatches of at least this many entries are split across libtorch's threads.
const PARALLEL_ENTRIES: usize = 1 << 16;

pub struct DenseTerms {
    /// Per-cell sum of the dense terms, cells.
    pub value: Tensor,
    /// Gradient for mu, or for the logits with [`Mean::Softmax`].
    pub grad_mu: Tensor,
    /// Gradient for the log library (cells), with [`Mean::Softmax`].
    pub grad_log_library: Option<Tensor>,
    pub grad_theta: Tensor,
    pub grad_pi: Option<Tensor>,
}

/// Whether the fused kernel applies: CPU float tensors.
pub fn supported(mu: &Tensor) -> bool {
    mu.device() == Device::Cpu && mu.kind() == Kind::Float
}

/// The NB mean the kernel reads.
#[derive(Clone, Copy)]
pub enum Mean<'a> {
    /// mu itself, cells x genes.
    Given(&'a Tensor),
    /// mu = exp(log_library) * softmax(logits) over genes, formed in the kernel; `logits` are
    /// cells x genes, `log_library` cells x 1. The gradients come for the logits (in `grad_mu`)
    /// and the log library.
    Softmax { logits: &'a Tensor, log_library: &'a Tensor },
}

impl Mean<'_> {
    /// Whether the fused kernel applies: CPU float tensors.
    pub fn supported(&self) -> bool {
        match self {
            Mean::Given(mu) => supported(mu),
            Mean::Softmax { logits, log_library } => supported(logits) && supported(log_library),
        }
    }

    /// mu, or the logits: cells x genes.
    fn input(&self) -> &Tensor {
        match self {
            Mean::Given(mu) => mu,
            Mean::Softmax { logits, .. } => logits,
        }
    }
}

/// Values and gradients for x (cells x genes), mu (cells x genes), theta (genes, or cells x
/// genes) and pi (cells x genes, ZINB only).
pub fn dense_terms(x: &Tensor, mu: &Tensor, theta: &Tensor, pi: Option<&Tensor>) -> DenseTerms {
    dense_terms_at(Simd::detect(), x, mu, theta, pi)
}

/// [`dense_terms`] compiled for a given level of vector instructions (tests compare levels).
///
/// Panics if `level` is wider than what this CPU offers.
pub fn dense_terms_at(level: Simd, x: &Tensor, mu: &Tensor, theta: &Tensor, pi: Option<&Tensor>) -> DenseTerms {
    terms(level, x, Mean::Given(mu), theta, pi, None)
}

/// The whole NB / ZINB log-likelihood of a minibatch, less the constant -lgamma(x + 1): the dense
/// terms above plus, at the minibatch's nonzero entries,
///   x (ln(mu + eps) - ln(theta + mu + eps)) + lgamma(x + theta) - lgamma(theta),
/// whose gradients x / (mu + eps) - x / (theta + mu + eps) and
/// digamma(x + theta) - digamma(theta) - x / (theta + mu + eps) join the dense ones.
/// None when the minibatch's nonzeros are not in cell order, or the mean's tensors are not what
/// the kernel reads (the tensor path then applies).
pub fn likelihood_terms(mb: &Minibatch, mean: Mean<'_>, theta: &Tensor, pi: Option<&Tensor>) -> Option<DenseTerms> {
    let level = Simd::detect();
    let mu = mean.input();
    if !mean.supported() || mu.dim() != 2 {
        return None;
    }
    if let Mean::Softmax { log_library, .. } = mean {
        if log_library.size() != [mu.size()[0], 1] {
            return None;
        }
    }
    let b = mu.size()[0] as usize;
    let g = mu.size()[1] as usize;
    if mb.x.size() != mu.size() {
        return None;
    }
    // The host rows (checked when they were formed), or the nonzero tensors, checked here for
    // cell order and bounds in the pass that forms the cells' ranges.
    if let Some(rows) = mb.rows() {
        if rows.n_cells() != b || rows.n_genes != g {
            return None;
        }
        let nz = Nonzeros { row_ptr: &rows.row_ptr, gene: &rows.gene, x: &rows.x };
        return Some(terms(level, &mb.x, mean, theta, pi, Some(&nz)));
    }
    let rows = mb.nz_row().contiguous();
    let genes = mb.nz_gene().contiguous();
    let xs = mb.nz_x().contiguous();
    let n = rows.numel();
    if rows.kind() != Kind::Int64 || genes.kind() != Kind::Int64 || xs.kind() != Kind::Float || genes.numel() != n || xs.numel() != n {
        return None;
    }
    // SAFETY: contiguous CPU tensors of n elements of the kinds checked above.
    let (rows_s, genes_s, xs_s) = unsafe {
        (
            std::slice::from_raw_parts(rows.data_ptr() as *const i64, n),
            std::slice::from_raw_parts(genes.data_ptr() as *const i64, n),
            std::slice::from_raw_parts(xs.data_ptr() as *const f32, n),
        )
    };
    let mut row_ptr = vec![0usize; b + 1];
    let mut gene = Vec::with_capacity(n);
    let mut last = 0i64;
    for (&r, &j) in rows_s.iter().zip(genes_s) {
        if r < last || r as usize >= b || j < 0 || j as usize >= g {
            return None;
        }
        last = r;
        row_ptr[r as usize + 1] += 1;
        gene.push(j as u32);
    }
    for c in 0..b {
        row_ptr[c + 1] += row_ptr[c];
    }
    let nz = Nonzeros { row_ptr: &row_ptr, gene: &gene, x: xs_s };
    Some(terms(level, &mb.x, mean, theta, pi, Some(&nz)))
}

/// The minibatch's nonzero entries, in cell order: cell c's are `row_ptr[c]..row_ptr[c + 1]`.
struct Nonzeros<'a> {
    row_ptr: &'a [usize],
    gene: &'a [u32],
    x: &'a [f32],
}

fn terms(level: Simd, x: &Tensor, mean: Mean<'_>, theta: &Tensor, pi: Option<&Tensor>, nonzeros: Option<&Nonzeros<'_>>) -> DenseTerms {
    assert!(level.runs_here(), "this CPU cannot run {level:?} instructions");
    let mu = mean.input();
    assert!(mu.dim() == 2 && x.size() == mu.size() && pi.map_or(true, |p| p.size() == mu.size()), "x, mu and pi must be cells x genes");
    assert!(theta.size() == mu.size() || theta.size() == [mu.size()[1]], "theta must be genes or cells x genes");
    let (b, g) = (mu.size()[0] as usize, mu.size()[1] as usize);
    let x = x.detach().contiguous();
    let mu = mu.detach().contiguous();
    let theta = theta.detach().contiguous();
    let pi = pi.map(|p| p.detach().contiguous());
    let log_library = match mean {
        Mean::Softmax { log_library, .. } => Some(log_library.detach().contiguous()),
        Mean::Given(_) => None,
    };
    let opts = (Kind::Float, Device::Cpu);
    let value = Tensor::zeros([b as i64], opts);
    let grad_mu = Tensor::empty([b as i64, g as i64], opts);
    let grad_theta = Tensor::empty([b as i64, g as i64], opts);
    let grad_pi = pi.as_ref().map(|_| Tensor::empty([b as i64, g as i64], opts));
    let grad_log_library = log_library.as_ref().map(|_| Tensor::empty([b as i64], opts));
    let per_cell_theta = theta.dim() == 2;
    // Raw addresses, so that parts of the minibatch (disjoint ranges of cells) can run on
    // libtorch's threads.
    let ptr = |t: &Tensor| t.data_ptr() as usize;
    let (xp, mp, tp) = (ptr(&x), ptr(&mu), ptr(&theta));
    let pp = pi.as_ref().map(ptr);
    let lp = log_library.as_ref().map(ptr);
    let (vp, gmp, gtp) = (ptr(&value), ptr(&grad_mu), ptr(&grad_theta));
    let gpp = grad_pi.as_ref().map(ptr);
    let glp = grad_log_library.as_ref().map(ptr);
    let parts = if b * g >= PARALLEL_ENTRIES { crate::runtime::parts_for(b) } else { 1 };
    let part = |k: usize| {
        let (c0, c1) = (b * k / parts, b * (k + 1) / parts);
        let (e0, n) = (c0 * g, (c1 - c0) * g);
        // SAFETY: all tensors are contiguous f32 CPU buffers of the sizes used here (b x g; b for
        // the value and the log library; g for a per-gene theta); the outputs are freshly
        // allocated, and each part writes only its own cells. `level` was checked against the
        // CPU above.
        unsafe {
            let at = |p: usize, from: usize, len: usize| std::slice::from_raw_parts((p as *const f32).add(from), len);
            let at_mut = |p: usize, from: usize, len: usize| std::slice::from_raw_parts_mut((p as *mut f32).add(from), len);
            let inputs = Inputs {
                n_genes: g,
                first_cell: c0,
                per_cell_theta,
                nonzeros,
                x: at(xp, e0, n),
                mu: at(mp, e0, n),
                theta: if per_cell_theta { at(tp, e0, n) } else { at(tp, 0, g) },
                pi: pp.map(|p| at(p, e0, n)),
                log_library: lp.map(|p| at(p, c0, c1 - c0)),
            };
            let outputs = Outputs {
                value: at_mut(vp, c0, c1 - c0),
                grad_mu: at_mut(gmp, e0, n),
                grad_theta: at_mut(gtp, e0, n),
                grad_pi: gpp.map(|p| at_mut(p, e0, n)),
                grad_log_library: glp.map(|p| at_mut(p, c0, c1 - c0)),
            };
            simd::run(level, Cells { inputs: &inputs, outputs });
        }
    };
    crate::runtime::parallel_parts(parts, &part);
    DenseTerms { value, grad_mu, grad_log_library, grad_theta, grad_pi }
}

struct Inputs<'a> {
    n_genes: usize,
    /// The first cell of this part of the minibatch (the nonzeros are indexed by whole-minibatch
    /// cells).
    first_cell: usize,
    per_cell_theta: bool,
    nonzeros: Option<&'a Nonzeros<'a>>,
    x: &'a [f32],
    /// mu, or the logits when `log_library` is given.
    mu: &'a [f32],
    theta: &'a [f32],
    pi: Option<&'a [f32]>,
    /// This part's cells' log library ([`Mean::Softmax`]).
    log_library: Option<&'a [f32]>,
}

struct Outputs<'a> {
    value: &'a mut [f32],
    grad_mu: &'a mut [f32],
    grad_theta: &'a mut [f32],
    grad_pi: Option<&'a mut [f32]>,
    grad_log_library: Option<&'a mut [f32]>,
}

/// The loop over cells.
struct Cells<'a, 'b> {
    inputs: &'b Inputs<'a>,
    outputs: Outputs<'a>,
}

impl simd::Kernel for Cells<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<M: MulAdd>(self) {
        cells::<M>(self.inputs, self.outputs)
    }
}

#[inline(always)]
fn cells<M: MulAdd>(inp: &Inputs<'_>, out: Outputs<'_>) {
    let g = inp.n_genes;
    let per_cell_theta = inp.per_cell_theta;
    let mut log_theta: Vec<f32> = vec![0.0; g];
    // Gathered inputs and per-entry results of one cell's nonzeros.
    let mut nz_scratch = inp.nonzeros.map(|_| [(); 6].map(|_| vec![0f32; g]));
    let mut theta_ratio: Vec<f32> = vec![0.0; g];
    let mut values = vec![0f32; g];
    // With the logits: one cell's gene proportions and rates.
    let mut rates = inp.log_library.map(|_| (vec![0f32; g], vec![0f32; g]));
    let per_gene = |th: &[f32], l: &mut [f32], q: &mut [f32]| {
        for j in 0..th.len() {
            l[j] = ln_with::<M>(th[j] + EPS32);
            q[j] = th[j] / (th[j] + EPS32);
        }
    };
    if !per_cell_theta {
        per_gene(inp.theta, &mut log_theta, &mut theta_ratio);
    }
    let Outputs { value, grad_mu, grad_theta, mut grad_pi, mut grad_log_library } = out;
    for (c, v) in value.iter_mut().enumerate() {
        let r = c * g..(c + 1) * g;
        let th = if per_cell_theta { &inp.theta[r.clone()] } else { inp.theta };
        if per_cell_theta {
            per_gene(th, &mut log_theta, &mut theta_ratio);
        }
        let mu_row: &[f32] = match (inp.log_library, rates.as_mut()) {
            (Some(l), Some((p, m))) => {
                softmax_rates::<M>(&inp.mu[r.clone()], l[c], p, m);
                m
            }
            _ => &inp.mu[r.clone()],
        };
        let row = Row { x: &inp.x[r.clone()], mu: mu_row, theta: th, log_theta: &log_theta, theta_ratio: &theta_ratio };
        match (inp.pi, grad_pi.as_mut()) {
            (Some(p), Some(gp)) => {
                zinb_loop::<M>(&row, &p[r.clone()], &mut values, &mut grad_mu[r.clone()], &mut grad_theta[r.clone()], &mut gp[r.clone()])
            }
            _ => nb_loop::<M>(&row, &mut values, &mut grad_mu[r.clone()], &mut grad_theta[r.clone()]),
        }
        *v = simd::sum(&values);
        if let (Some(nz), Some([xs, ms, ts, vs, dm, dt])) = (inp.nonzeros, nz_scratch.as_mut()) {
            let cell = inp.first_cell + c;
            let (genes, counts) = (&nz.gene[nz.row_ptr[cell]..nz.row_ptr[cell + 1]], &nz.x[nz.row_ptr[cell]..nz.row_ptr[cell + 1]]);
            let n = genes.len();
            for (k, &j) in genes.iter().enumerate() {
                xs[k] = counts[k];
                ms[k] = mu_row[j as usize];
                ts[k] = th[j as usize];
            }
            nonzero_loop::<M>(&xs[..n], &ms[..n], &ts[..n], &mut vs[..n], &mut dm[..n], &mut dt[..n]);
            let (gm_row, gt_row) = (&mut grad_mu[r.clone()], &mut grad_theta[r.clone()]);
            for (k, &j) in genes.iter().enumerate() {
                gm_row[j as usize] += dm[k];
                gt_row[j as usize] += dt[k];
            }
            *v += simd::sum(&vs[..n]);
        }
        if let (Some((p, m)), Some(gl)) = (rates.as_ref(), grad_log_library.as_mut()) {
            gl[c] = softmax_backward(p, m, &mut grad_mu[r.clone()], &mut values);
        }
    }
}

/// One cell's gene proportions p = softmax(h) and rates mu = exp(l) p.
#[inline(always)]
fn softmax_rates<M: MulAdd>(h: &[f32], log_library: f32, p: &mut [f32], mu: &mut [f32]) {
    let n = h.len();
    let (p, mu) = (&mut p[..n], &mut mu[..n]);
    let top = simd::max(h);
    for j in 0..n {
        p[j] = exp_with::<M>(h[j] - top);
    }
    let inv_total = 1.0 / simd::sum(p);
    let library = log_library.exp();
    for j in 0..n {
        p[j] *= inv_total;
        mu[j] = p[j] * library;
    }
}

/// Turns one cell's gradient for the rates into the gradient for the logits (in place), and
/// returns the gradient for the log library: S = sum_g mu_g d_g, then d_g <- mu_g d_g - p_g S.
#[inline(always)]
fn softmax_backward(p: &[f32], mu: &[f32], d: &mut [f32], scratch: &mut [f32]) -> f32 {
    let n = d.len();
    let (p, mu, scratch) = (&p[..n], &mu[..n], &mut scratch[..n]);
    for j in 0..n {
        scratch[j] = mu[j] * d[j];
    }
    let total = simd::sum(scratch);
    for j in 0..n {
        d[j] = scratch[j] - p[j] * total;
    }
    total
}

/// The count-dependent terms at one cell's nonzeros (gathered x, mu, theta), and their gradients.
#[inline(always)]
fn nonzero_loop<M: MulAdd>(x: &[f32], mu: &[f32], theta: &[f32], v: &mut [f32], gm: &mut [f32], gt: &mut [f32]) {
    let n = x.len();
    let (mu, theta, v, gm, gt) = (&mu[..n], &theta[..n], &mut v[..n], &mut gm[..n], &mut gt[..n]);
    for k in 0..n {
        let (xk, m, t) = (x[k], mu[k], theta[k]);
        let me = m + EPS32;
        let tme = t + m + EPS32;
        let (lg_xt, dg_xt) = lgamma_digamma_with::<M>(xk + t);
        let (lg_t, dg_t) = lgamma_digamma_with::<M>(t);
        v[k] = xk * (ln_with::<M>(me) - ln_with::<M>(tme)) + (lg_xt - lg_t);
        let x_tme = xk / tme;
        gm[k] = xk / me - x_tme;
        gt[k] = (dg_xt - dg_t) - x_tme;
    }
}

/// One cell's inputs.
struct Row<'a> {
    x: &'a [f32],
    mu: &'a [f32],
    theta: &'a [f32],
    /// ln(theta + eps) and theta / (theta + eps): per gene, computed once per minibatch.
    log_theta: &'a [f32],
    theta_ratio: &'a [f32],
}

/// Branch-free per-entry work (selects, no early exits) so that it vectorises.
#[inline(always)]
fn zinb_loop<M: MulAdd>(r: &Row<'_>, pi: &[f32], v: &mut [f32], gm: &mut [f32], gt: &mut [f32], gp: &mut [f32]) {
    let n = r.x.len();
    let (x, mu, theta, lt, q) = (&r.x[..n], &r.mu[..n], &r.theta[..n], &r.log_theta[..n], &r.theta_ratio[..n]);
    let (pi, v, gm, gt, gp) = (&pi[..n], &mut v[..n], &mut gm[..n], &mut gt[..n], &mut gp[..n]);
    for j in 0..n {
        let t = theta[j];
        let tme = t + mu[j] + EPS32;
        let ltm = ln_with::<M>(tme);
        let inv_tme = 1.0 / tme;
        let a = t * (lt[j] - ltm);
        let da_dmu = -t * inv_tme;
        let da_dt = lt[j] - ltm + q[j] - t * inv_tme;
        let p = pi[j];
        let (sp_p, sig_p) = softplus_sigmoid_with::<M>(p);
        let (sp_u, sig_u) = softplus_sigmoid_with::<M>(a - p);
        let nonzero = x[j] > EPS32;
        v[j] = if nonzero { a - sp_p } else { sp_u + p - sp_p };
        let dv_da = if nonzero { 1.0 } else { sig_u };
        gp[j] = if nonzero { -sig_p } else { 1.0 - sig_u - sig_p };
        gm[j] = dv_da * da_dmu;
        gt[j] = dv_da * da_dt;
    }
}

#[inline(always)]
fn nb_loop<M: MulAdd>(r: &Row<'_>, v: &mut [f32], gm: &mut [f32], gt: &mut [f32]) {
    let n = r.x.len();
    let (mu, theta, lt, q) = (&r.mu[..n], &r.theta[..n], &r.log_theta[..n], &r.theta_ratio[..n]);
    let (v, gm, gt) = (&mut v[..n], &mut gm[..n], &mut gt[..n]);
    for j in 0..n {
        let t = theta[j];
        let tme = t + mu[j] + EPS32;
        let ltm = ln_with::<M>(tme);
        let inv_tme = 1.0 / tme;
        v[j] = t * (lt[j] - ltm);
        gm[j] = -t * inv_tme;
        gt[j] = lt[j] - ltm + q[j] - t * inv_tme;
    }
}

/// Per-cell dense terms as a tensor whose value is `terms.value` and whose gradient with respect
/// to mu (or the logits and log library), theta and pi is given by the analytic gradients:
/// value + s - s.detach(), with s = sum_g(mu * dmu + theta * dtheta + pi * dpi) per cell.
pub fn attach(terms: &DenseTerms, mean: Mean<'_>, theta: &Tensor, pi: Option<&Tensor>) -> Tensor {
    let log_library = match mean {
        Mean::Softmax { log_library, .. } => Some(log_library),
        Mean::Given(_) => None,
    };
    attach_to(terms, Target::Tensor(mean.input()), log_library, theta, pi.map(Target::Tensor))
}

/// Where a cells x genes gradient enters autograd.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// The tensor itself: s = sum_g t * grad.
    Tensor(&'a Tensor),
    /// A linear head t = input W^T + b, by its input and weights:
    /// s = sum_k input_k (grad W)_k + grad . b, whose gradients for input, W and b are the head's
    /// backward. No cells x genes tensor is formed or differentiated; the matrix product grad W is
    /// the one the head's backward would run.
    ///
    /// With `defer` (a CPU minibatch's rows) and the engine's own products (`crate::gemm`),
    /// grad W is formed outside autograd, summed over the heads that share the input, and s
    /// gains one zero leaf per cell; after `backward()`, `sparse_input::finish_backward` turns
    /// that leaf's gradient u into the weights' and biases', dL/dW = grad^T (u input) and
    /// dL/db = grad^T u, so that libtorch runs none of the heads' products ([`attach_to`]).
    Linear { input: &'a Tensor, weight: &'a Tensor, bias: Option<&'a Tensor>, defer: Option<&'a HostRows> },
}

impl<'a> Target<'a> {
    /// The surrogate with the gradient entering through autograd.
    fn surrogate(self, grad: &Tensor) -> Tensor {
        match self {
            Target::Tensor(t) => row_dot(t, grad),
            Target::Linear { input, weight, bias, .. } => {
                // A frozen weight needs no gradient: grad W is a constant, formed outside autograd.
                let p = if weight.requires_grad() { None } else { crate::gemm::matmul(grad, weight) };
                let s = row_dot(input, &p.unwrap_or_else(|| grad.matmul(weight)));
                match bias {
                    Some(b) => s + grad.mv(b),
                    None => s,
                }
            }
        }
    }

    /// The head's input, weight, bias and rows when its gradients can be finished after
    /// backward: the engine runs the products, and every trainable weight and bias already has
    /// a `.grad` to add into (a fresh model's first step runs through autograd).
    fn deferrable(self) -> Option<(&'a Tensor, &'a Tensor, Option<&'a Tensor>, &'a HostRows)> {
        match self {
            Target::Linear { input, weight, bias, defer: Some(rows) } => {
                let ready = |t: &Tensor| t.requires_grad() && t.grad().defined();
                let ok = crate::gemm::available() && ready(weight) && bias.map_or(true, |b| !b.requires_grad() || ready(b));
                ok.then_some((input, weight, bias, rows))
            }
            _ => None,
        }
    }
}

/// The surrogates of the cells x genes gradients `parts` (target, gradient). Deferrable linear
/// heads with the same input enter together: s = sum_k input_k (sum over heads of grad W)_k plus
/// a zero leaf per cell, their gradients finished after backward.
fn surrogates(parts: &[(Target<'_>, &Tensor)]) -> Option<Tensor> {
    let mut s: Option<Tensor> = None;
    let mut add = |t: Tensor| s = Some(match s.take() { Some(a) => a + t, None => t });
    // (input, rows, sum of grad W, heads)
    let mut groups: Vec<(&Tensor, &HostRows, Tensor, Vec<crate::nn::sparse_input::DeferredHead>)> = Vec::new();
    for &(target, grad) in parts {
        let Some((input, weight, bias, rows)) = target.deferrable() else {
            add(target.surrogate(grad));
            continue;
        };
        let head = crate::nn::sparse_input::DeferredHead { grad: grad.detach(), weight: weight.shallow_clone(), bias: bias.map(Tensor::shallow_clone) };
        match groups.iter_mut().find(|g| same_input(g.0, input)) {
            Some(g) if crate::gemm::add_product(&g.2, grad, weight) => g.3.push(head),
            Some(_) => add(target.surrogate(grad)),
            None => match crate::gemm::matmul(grad, weight) {
                Some(p) => groups.push((input, rows, p, vec![head])),
                None => add(target.surrogate(grad)),
            },
        }
    }
    for (input, rows, p, heads) in groups {
        let probe = Tensor::zeros([p.size()[0]], (Kind::Float, p.device())).set_requires_grad(true);
        rows.defer_heads(&probe, input, heads);
        add(row_dot(input, &p) + probe);
    }
    s
}

/// Whether two heads read one input: the same entries (memory, shape, strides) seen by autograd
/// alike (the decoder hands each head a handle of its one hidden output; a detached copy, which
/// shares the memory, does not require a gradient).
fn same_input(a: &Tensor, b: &Tensor) -> bool {
    a.data_ptr() == b.data_ptr() && a.size() == b.size() && a.stride() == b.stride() && a.requires_grad() == b.requires_grad()
}

fn row_dot(a: &Tensor, b: &Tensor) -> Tensor {
    (a * b).sum_dim_intlist(1, false, Kind::Float)
}

/// [`attach`] with the mean's input (mu or the logits) and pi as [`Target`]s, and the log library
/// (cells x 1) when the mean was [`Mean::Softmax`]. Where autograd records nothing (inside
/// `tch::no_grad`: validation and queries), the value itself.
pub fn attach_to(terms: &DenseTerms, mean: Target<'_>, log_library: Option<&Tensor>, theta: &Tensor, pi: Option<Target<'_>>) -> Tensor {
    if !crate::nn::sparse_input::grad_mode() {
        // No backward will run (validation, queries): the surrogate adds only zero to the value,
        // and its products (two per linear head) would be wasted.
        return terms.value.shallow_clone();
    }
    let mut targets = vec![(mean, &terms.grad_mu)];
    if let (Some(p), Some(gp)) = (pi, &terms.grad_pi) {
        targets.push((p, gp));
    }
    let mut s = surrogates(&targets).expect("the mean's surrogate");
    if let (Some(l), Some(gl)) = (log_library, &terms.grad_log_library) {
        if l.requires_grad() {
            s = s + l.reshape([-1]) * gl;
        }
    }
    // A per-gene theta: one matrix-vector product, whose backward is one more (instead of a
    // broadcast product, a sum, and their backward).
    s = s + if theta.dim() == 1 { terms.grad_theta.mv(theta) } else { row_dot(theta, &terms.grad_theta) };
    &terms.value + &s - s.detach()
}
