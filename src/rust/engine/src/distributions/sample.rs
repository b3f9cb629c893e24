//! Drawing counts from the likelihoods, as scvi-tools samples them: NB (and ZINB) through the
//! Gamma-Poisson mixture w ~ Gamma(theta, rate theta / mu), x ~ Poisson(min(w, 1e8)); ZINB then
//! zeroes each entry with probability sigmoid(pi); Poisson directly.

use tch::Tensor;

/// Gaussian draws mu + sd * eps for the normal likelihood (not counts; may be negative).
pub fn sample_normal(mu: &Tensor, sd: &Tensor) -> Tensor {
    tch::no_grad(|| mu + sd.expand_as(mu) * mu.randn_like())
}

/// Counts with the shape of `mu`; `theta` broadcasts against it; `zi_logits` only for ZINB.
pub fn sample_counts(mu: &Tensor, theta: Option<&Tensor>, zi_logits: Option<&Tensor>) -> Tensor {
    tch::no_grad(|| match theta {
        Some(theta) => {
            let theta = theta.expand_as(mu);
            let w = (theta.internal_standard_gamma() * mu / &theta).clamp_max(1e8);
            let x = w.poisson();
            match zi_logits {
                Some(pi) => x * pi.sigmoid().bernoulli().logical_not(),
                None => x,
            }
        }
        None => mu.poisson(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn moments(x: &Tensor) -> (f64, f64) {
        let x = x.to_kind(Kind::Double);
        (x.mean(Kind::Double).double_value(&[]), x.var(true).double_value(&[]))
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    #[test]
    fn sampling_moments_match_the_distributions() {
        let _turn = crate::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(11);
        let n = 400_000;
        let full = |v: f64| Tensor::full([n], v, (Kind::Float, Device::Cpu));
        let (mu, theta, pi) = (6.0, 1.5, -0.4);
        // Poisson: mean = variance = mu.
        let (m, v) = moments(&sample_counts(&full(mu), None, None));
        assert!(close(m, mu, 0.01) && close(v, mu, 0.02), "Poisson {m} {v}");
        // NB: mean mu, variance mu + mu^2 / theta.
        let (m, v) = moments(&sample_counts(&full(mu), Some(&full(theta)), None));
        assert!(close(m, mu, 0.01) && close(v, mu + mu * mu / theta, 0.03), "NB {m} {v}");
        // ZINB: mean (1 - p) mu, variance (1 - p) mu (mu + theta + p mu theta) / theta.
        let p = 1.0 / (1.0 + (-pi as f64).exp());
        let (m, v) = moments(&sample_counts(&full(mu), Some(&full(theta)), Some(&full(pi))));
        let want_v = (1.0 - p) * mu * (mu + theta + p * mu * theta) / theta;
        assert!(close(m, (1.0 - p) * mu, 0.01) && close(v, want_v, 0.03), "ZINB {m} {v} (want {want_v})");
    }
}
