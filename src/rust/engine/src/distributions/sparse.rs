//! Per-cell log-likelihood for training, split into dense cheap terms and nonzero-only terms.
//!
//! For ZINB with logits pi, A = theta (log(theta + eps) - log(theta + mu + eps)) and
//! s = softplus(-pi) (= softplus(pi) - pi), scvi-tools' density is
//!   x = 0: softplus(A - pi) - s
//!   x > 0: A - pi - s + x (log(mu + eps) - log(theta + mu + eps)) + lgamma(x + theta)
//!          - lgamma(theta) - lgamma(x + 1).
//! The first line and the first three terms of the second are dense element-wise work; the rest
//! depends on x and is gathered at the nonzero entries only. Summing both parts per cell gives the
//! same number as the dense formula (tests check it), at a fraction of the lgamma/digamma cost.

use super::{GeneLikelihood, EPS};
use crate::data::Minibatch;
use tch::{Kind, Tensor};

/// Values of a cells x genes (or genes-only) tensor at the minibatch's nonzero entries.
fn at_nonzeros(t: &Tensor, mb: &Minibatch) -> Tensor {
    if t.dim() == 1 {
        t.index_select(0, mb.nz_gene())
    } else {
        t.reshape([-1]).index_select(0, mb.nz_flat())
    }
}

/// Sums per-entry values of the nonzeros into one value per cell.
fn per_cell(values: &Tensor, mb: &Minibatch) -> Tensor {
    Tensor::zeros([mb.n_cells as i64], (Kind::Float, values.device())).index_add(0, mb.nz_row(), values)
}

/// Per-cell log p(x | mu, theta, pi), summed over genes; includes the -lgamma(x + 1) constant so
/// that numbers match scvi-tools' reconstruction loss.
pub fn log_likelihood(
    kind: GeneLikelihood,
    mb: &Minibatch,
    mu: &Tensor,
    theta: Option<&Tensor>,
    zi_logits: Option<&Tensor>,
) -> Tensor {
    match kind {
        GeneLikelihood::Normal => {
            let sd = theta.expect("the normal likelihood needs a standard deviation");
            super::dense::log_normal(&mb.x, mu, sd).sum_dim_intlist(1, false, Kind::Float)
        }
        GeneLikelihood::Poisson => {
            // x log mu - mu - lgamma(x + 1); x log mu vanishes on zeros.
            let nz = mb.nz_x() * at_nonzeros(mu, mb).log();
            per_cell(&nz, mb) - mu.sum_dim_intlist(1, false, Kind::Float) - &mb.lgamma_x1
        }
        GeneLikelihood::Nb | GeneLikelihood::Zinb => {
            let theta = theta.expect("NB-type likelihoods need a dispersion");
            let pi = if kind == GeneLikelihood::Zinb { zi_logits } else { None };
            // On CPU one fused pass computes every term and its gradient.
            let mean = super::fused::Mean::Given(mu);
            if let Some(terms) = super::fused::likelihood_terms(mb, mean, theta, pi) {
                return super::fused::attach(&terms, mean, theta, pi) - &mb.lgamma_x1;
            }
            let x = mb.nz_x();
            let theta_nz = at_nonzeros(theta, mb);
            let mu_nz = at_nonzeros(mu, mb);
            // Count-dependent terms, on the nonzeros only.
            let nz = x * ((&mu_nz + EPS).log() - (&theta_nz + &mu_nz + EPS).log()) + (x + &theta_nz).lgamma()
                - at_nonzeros(&theta.lgamma(), mb);
            dense_terms_by_tensor_ops(&mb.x, mu, theta, pi) + per_cell(&nz, mb) - &mb.lgamma_x1
        }
    }
}

/// The dense terms with libtorch operations (other devices, and the reference in tests).
pub fn dense_terms_by_tensor_ops(x: &Tensor, mu: &Tensor, theta: &Tensor, pi: Option<&Tensor>) -> Tensor {
    let a = theta * ((theta + EPS).log() - (theta + mu + EPS).log());
    let dense = match pi {
        Some(pi) => {
            // With softplus(-pi) = softplus(pi) - pi the two cases share -softplus(pi):
            //   x = 0: softplus(A - pi) + pi - softplus(pi);  x > 0: A - softplus(pi).
            let zero_case = (&a - pi).softplus() + pi;
            a.where_self(&x.gt(EPS), &zero_case) - pi.softplus()
        }
        None => a,
    };
    dense.sum_dim_intlist(1, false, Kind::Float)
}
