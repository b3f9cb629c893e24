//! Element-wise log densities over every entry, written exactly as scvi-tools writes them
//! (`distributions/_negative_binomial.py`). Shapes broadcast: x and mu are cells x genes, theta is
//! genes or cells x genes, pi (zero-inflation logits) cells x genes.

use super::EPS;
use tch::Tensor;

fn softplus(t: &Tensor) -> Tensor {
    t.softplus()
}

/// log NB(x; mu, theta).
pub fn log_nb(x: &Tensor, mu: &Tensor, theta: &Tensor) -> Tensor {
    let log_theta_mu_eps = (theta + mu + EPS).log();
    theta * ((theta + EPS).log() - &log_theta_mu_eps)
        + x * ((mu + EPS).log() - &log_theta_mu_eps)
        + (x + theta).lgamma()
        - theta.lgamma()
        - (x + 1.0).lgamma()
}

/// log ZINB(x; mu, theta, pi) with pi the zero-inflation logits.
pub fn log_zinb(x: &Tensor, mu: &Tensor, theta: &Tensor, pi: &Tensor) -> Tensor {
    let softplus_pi = softplus(&(-pi));
    let log_theta_eps = (theta + EPS).log();
    let log_theta_mu_eps = (theta + mu + EPS).log();
    let pi_theta_log = -pi + theta * (&log_theta_eps - &log_theta_mu_eps);
    let case_zero = softplus(&pi_theta_log) - &softplus_pi;
    let mul_case_zero = x.lt(EPS).to_kind(tch::Kind::Float) * case_zero;
    let case_non_zero = -&softplus_pi
        + &pi_theta_log
        + x * ((mu + EPS).log() - &log_theta_mu_eps)
        + (x + theta).lgamma()
        - theta.lgamma()
        - (x + 1.0).lgamma();
    let mul_case_non_zero = x.gt(EPS).to_kind(tch::Kind::Float) * case_non_zero;
    mul_case_zero + mul_case_non_zero
}

/// log Poisson(x; mu) as torch's Poisson.log_prob: x log mu - mu - lgamma(x + 1), with 0 log 0 = 0.
pub fn log_poisson(x: &Tensor, mu: &Tensor) -> Tensor {
    x.xlogy(mu) - mu - (x + 1.0).lgamma()
}

/// log Normal(x; mu, sd).
pub fn log_normal(x: &Tensor, mu: &Tensor, sd: &Tensor) -> Tensor {
    -(x - mu).square() / (sd.square() * 2.0) - sd.log() - 0.5 * (2.0 * std::f64::consts::PI).ln()
}
