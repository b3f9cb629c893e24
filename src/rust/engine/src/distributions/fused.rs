//! The dense part of the NB / ZINB log-likelihood and its gradient in one pass.
//!
//! Over every entry (cell c, gene g), with A = theta (ln(theta + eps) - ln(theta + mu + eps)):
//!   NB:            v = A
//!   ZINB, x > 0:   v = A - softplus(pi)
//!   ZINB, x = 0:   v = softplus(A - pi) + pi - softplus(pi)
//! (the x-dependent terms live on the nonzeros, see `sparse`). One loop computes the per-cell sum
//! of v and dv/dmu, dv/dtheta, dv/dpi analytically:
//!   dA/dmu = -theta / (theta + mu + eps)
//!   dA/dtheta = ln(theta + eps) - ln(theta + mu + eps) + theta / (theta + eps) - theta / (theta + mu + eps)
//!   x = 0 (ZINB): dv/dA = sigmoid(A - pi), dv/dpi = 1 - sigmoid(A - pi) - sigmoid(pi)
//!   x > 0 (ZINB): dv/dA = 1, dv/dpi = -sigmoid(pi)
//! `attach` then gives autograd these gradients through a linear surrogate, so the rest of the
//! network trains as usual. This replaces a dozen full-size tensor operations and their backward.

use super::fastmath::{ln, softplus_sigmoid};
use super::EPS;
use tch::{Device, Kind, Tensor};

const EPS32: f32 = EPS as f32;

pub struct DenseTerms {
    /// Per-cell sum of the dense terms, cells.
    pub value: Tensor,
    pub grad_mu: Tensor,
    pub grad_theta: Tensor,
    pub grad_pi: Option<Tensor>,
}

/// Whether the fused kernel applies: CPU float tensors.
pub fn supported(mu: &Tensor) -> bool {
    mu.device() == Device::Cpu && mu.kind() == Kind::Float
}

unsafe fn slice<'a>(t: &'a Tensor) -> &'a [f32] {
    std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel())
}

unsafe fn slice_mut<'a>(t: &'a mut Tensor) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel())
}

/// Values and gradients for x (cells x genes), mu (cells x genes), theta (genes, or cells x
/// genes) and pi (cells x genes, ZINB only).
pub fn dense_terms(x: &Tensor, mu: &Tensor, theta: &Tensor, pi: Option<&Tensor>) -> DenseTerms {
    let (b, g) = (mu.size()[0] as usize, mu.size()[1] as usize);
    let x = x.detach().contiguous();
    let mu = mu.detach().contiguous();
    let theta = theta.detach().contiguous();
    let pi = pi.map(|p| p.detach().contiguous());
    let opts = (Kind::Float, Device::Cpu);
    let mut value = Tensor::zeros([b as i64], opts);
    let mut grad_mu = Tensor::empty([b as i64, g as i64], opts);
    let mut grad_theta = Tensor::empty([b as i64, g as i64], opts);
    let mut grad_pi = pi.as_ref().map(|_| Tensor::empty([b as i64, g as i64], opts));
    let per_cell_theta = theta.dim() == 2;
    // SAFETY: all tensors are contiguous f32 CPU buffers of the sizes used below; the outputs are
    // freshly allocated and not aliased.
    unsafe {
        let (xs, ms, ts) = (slice(&x), slice(&mu), slice(&theta));
        let ps = pi.as_ref().map(|p| slice(p));
        let vs = slice_mut(&mut value);
        let gm = slice_mut(&mut grad_mu);
        let gt = slice_mut(&mut grad_theta);
        let mut gp = grad_pi.as_mut().map(|t| slice_mut(t));
        let mut log_theta: Vec<f32> = vec![0.0; g];
        let mut theta_ratio: Vec<f32> = vec![0.0; g];
        let mut values = vec![0f32; g];
        let per_gene = |th: &[f32], l: &mut [f32], q: &mut [f32]| {
            for j in 0..th.len() {
                l[j] = ln(th[j] + EPS32);
                q[j] = th[j] / (th[j] + EPS32);
            }
        };
        if !per_cell_theta {
            per_gene(ts, &mut log_theta, &mut theta_ratio);
        }
        for c in 0..b {
            let r = c * g..(c + 1) * g;
            let th = if per_cell_theta { &ts[r.clone()] } else { ts };
            if per_cell_theta {
                per_gene(th, &mut log_theta, &mut theta_ratio);
            }
            let rows = Row { x: &xs[r.clone()], mu: &ms[r.clone()], theta: th, log_theta: &log_theta, theta_ratio: &theta_ratio };
            match (ps, gp.as_mut()) {
                (Some(p), Some(gp)) => rows.zinb(&p[r.clone()], &mut values, &mut gm[r.clone()], &mut gt[r.clone()], &mut gp[r.clone()]),
                _ => rows.nb(&mut values, &mut gm[r.clone()], &mut gt[r.clone()]),
            }
            vs[c] = values.iter().sum();
        }
    }
    DenseTerms { value, grad_mu, grad_theta, grad_pi }
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

impl Row<'_> {
    fn zinb(&self, pi: &[f32], v: &mut [f32], gm: &mut [f32], gt: &mut [f32], gp: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { zinb_avx2(self, pi, v, gm, gt, gp) };
            }
        }
        zinb_loop(self, pi, v, gm, gt, gp)
    }

    fn nb(&self, v: &mut [f32], gm: &mut [f32], gt: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { nb_avx2(self, v, gm, gt) };
            }
        }
        nb_loop(self, v, gm, gt)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn zinb_avx2(r: &Row<'_>, pi: &[f32], v: &mut [f32], gm: &mut [f32], gt: &mut [f32], gp: &mut [f32]) {
    zinb_loop(r, pi, v, gm, gt, gp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nb_avx2(r: &Row<'_>, v: &mut [f32], gm: &mut [f32], gt: &mut [f32]) {
    nb_loop(r, v, gm, gt)
}

/// Branch-free per-entry work (selects, no early exits) so that it vectorises.
#[inline(always)]
fn zinb_loop(r: &Row<'_>, pi: &[f32], v: &mut [f32], gm: &mut [f32], gt: &mut [f32], gp: &mut [f32]) {
    let n = r.x.len();
    let (x, mu, theta, lt, q) = (&r.x[..n], &r.mu[..n], &r.theta[..n], &r.log_theta[..n], &r.theta_ratio[..n]);
    let (pi, v, gm, gt, gp) = (&pi[..n], &mut v[..n], &mut gm[..n], &mut gt[..n], &mut gp[..n]);
    for j in 0..n {
        let t = theta[j];
        let tme = t + mu[j] + EPS32;
        let ltm = ln(tme);
        let inv_tme = 1.0 / tme;
        let a = t * (lt[j] - ltm);
        let da_dmu = -t * inv_tme;
        let da_dt = lt[j] - ltm + q[j] - t * inv_tme;
        let p = pi[j];
        let (sp_p, sig_p) = softplus_sigmoid(p);
        let (sp_u, sig_u) = softplus_sigmoid(a - p);
        let nonzero = x[j] > EPS32;
        v[j] = if nonzero { a - sp_p } else { sp_u + p - sp_p };
        let dv_da = if nonzero { 1.0 } else { sig_u };
        gp[j] = if nonzero { -sig_p } else { 1.0 - sig_u - sig_p };
        gm[j] = dv_da * da_dmu;
        gt[j] = dv_da * da_dt;
    }
}

#[inline(always)]
fn nb_loop(r: &Row<'_>, v: &mut [f32], gm: &mut [f32], gt: &mut [f32]) {
    let n = r.x.len();
    let (mu, theta, lt, q) = (&r.mu[..n], &r.theta[..n], &r.log_theta[..n], &r.theta_ratio[..n]);
    let (v, gm, gt) = (&mut v[..n], &mut gm[..n], &mut gt[..n]);
    for j in 0..n {
        let t = theta[j];
        let tme = t + mu[j] + EPS32;
        let ltm = ln(tme);
        let inv_tme = 1.0 / tme;
        v[j] = t * (lt[j] - ltm);
        gm[j] = -t * inv_tme;
        gt[j] = lt[j] - ltm + q[j] - t * inv_tme;
    }
}

/// Per-cell dense terms as a tensor whose value is `terms.value` and whose gradient with respect
/// to mu, theta and pi is given by the analytic gradients: value + s - s.detach(), with
/// s = sum_g(mu * dmu + theta * dtheta + pi * dpi) per cell.
pub fn attach(terms: &DenseTerms, mu: &Tensor, theta: &Tensor, pi: Option<&Tensor>) -> Tensor {
    let mut s = (mu * &terms.grad_mu).sum_dim_intlist(1, false, Kind::Float);
    s = s + (theta * &terms.grad_theta).sum_dim_intlist(1, false, Kind::Float);
    if let (Some(p), Some(gp)) = (pi, &terms.grad_pi) {
        s = s + (p * gp).sum_dim_intlist(1, false, Kind::Float);
    }
    &terms.value + &s - s.detach()
}
