//! The LFC threshold `delta` estimated from the data when the user leaves it unset, as in
//! scvi-tools' `estimate_delta`: fit a three-component 1-D Gaussian mixture to the genes' mean
//! LFCs and take `max(min_thres, coef * mean(|lowest mean|, |highest mean|))`.
//!
//! The mixture is fitted by EM (variance floor 1e-6, tolerance 1e-3 on the mean log-likelihood,
//! at most 100 iterations, as scikit-learn's defaults) from a k-means start. scikit-learn seeds
//! k-means randomly; here k-means starts from the 1/6, 1/2 and 5/6 quantiles, so the estimate
//! is deterministic.

const COMPONENTS: usize = 3;
const REG_VAR: f64 = 1e-6;
const TOL: f64 = 1e-3;
const MAX_ITER: usize = 100;

/// Means of a three-component Gaussian mixture fitted to `x`, sorted ascending.
pub fn gmm_means(x: &[f64]) -> [f64; COMPONENTS] {
    let n = x.len();
    let mut sorted = x.to_vec();
    sorted.sort_by(f64::total_cmp);
    if n < COMPONENTS || sorted[0] == sorted[n - 1] {
        return [sorted.first().copied().unwrap_or(0.0); COMPONENTS];
    }
    let q = |p: f64| sorted[((n - 1) as f64 * p).round() as usize];
    let mut means = [q(1.0 / 6.0), q(0.5), q(5.0 / 6.0)];
    // k-means (Lloyd) on sorted 1-D data.
    let mut assign = vec![0usize; n];
    for _ in 0..300 {
        let mut changed = false;
        for (i, &v) in sorted.iter().enumerate() {
            let k = (0..COMPONENTS).min_by(|&a, &b| (v - means[a]).abs().total_cmp(&(v - means[b]).abs())).unwrap();
            changed |= assign[i] != k;
            assign[i] = k;
        }
        for (k, m) in means.iter_mut().enumerate() {
            let (s, c) = sorted.iter().zip(&assign).filter(|(_, &a)| a == k).fold((0.0, 0usize), |(s, c), (&v, _)| (s + v, c + 1));
            if c > 0 {
                *m = s / c as f64;
            }
        }
        if !changed {
            break;
        }
    }
    // Initial responsibilities from the hard assignment.
    let mut resp = vec![[0.0f64; COMPONENTS]; n];
    for (r, &a) in resp.iter_mut().zip(&assign) {
        r[a] = 1.0;
    }
    let mut weights = [0.0; COMPONENTS];
    let mut vars = [0.0; COMPONENTS];
    let m_step = |resp: &[[f64; COMPONENTS]], weights: &mut [f64; COMPONENTS], means: &mut [f64; COMPONENTS], vars: &mut [f64; COMPONENTS]| {
        for k in 0..COMPONENTS {
            let nk: f64 = resp.iter().map(|r| r[k]).sum::<f64>() + 10.0 * f64::EPSILON;
            let mk = resp.iter().zip(&sorted).map(|(r, &v)| r[k] * v).sum::<f64>() / nk;
            let vk = resp.iter().zip(&sorted).map(|(r, &v)| r[k] * (v - mk) * (v - mk)).sum::<f64>() / nk + REG_VAR;
            weights[k] = nk / n as f64;
            means[k] = mk;
            vars[k] = vk;
        }
    };
    m_step(&resp, &mut weights, &mut means, &mut vars);
    let mut last_ll = f64::NEG_INFINITY;
    for _ in 0..MAX_ITER {
        // E step, with the mean log-likelihood for the convergence test.
        let mut ll = 0.0;
        for (r, &v) in resp.iter_mut().zip(&sorted) {
            let mut logp = [0.0; COMPONENTS];
            for k in 0..COMPONENTS {
                logp[k] = weights[k].ln() - 0.5 * ((2.0 * std::f64::consts::PI * vars[k]).ln() + (v - means[k]).powi(2) / vars[k]);
            }
            let mx = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + logp.iter().map(|l| (l - mx).exp()).sum::<f64>().ln();
            ll += lse;
            for k in 0..COMPONENTS {
                r[k] = (logp[k] - lse).exp();
            }
        }
        ll /= n as f64;
        m_step(&resp, &mut weights, &mut means, &mut vars);
        if (ll - last_ll).abs() < TOL {
            break;
        }
        last_ll = ll;
    }
    means.sort_by(f64::total_cmp);
    means
}

/// scvi-tools' `estimate_delta(lfc_means, coef = 0.6, min_thres = 0.1)`.
pub fn estimate_delta(lfc_means: &[f64]) -> f64 {
    let m = gmm_means(lfc_means);
    (0.6 * (m[0].abs() + m[COMPONENTS - 1].abs()) / 2.0).max(0.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn recovers_three_separated_components() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut x = Vec::new();
        for (mean, n) in [(-3.0, 200), (0.0, 1500), (2.0, 300)] {
            for _ in 0..n {
                // Sum of uniforms: roughly normal with sd 0.2.
                let u: f64 = (0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0;
                x.push(mean + 0.2 * u);
            }
        }
        let m = gmm_means(&x);
        assert!((m[0] + 3.0).abs() < 0.05 && m[1].abs() < 0.05 && (m[2] - 2.0).abs() < 0.05, "{m:?}");
        assert!((estimate_delta(&x) - 0.6 * 2.5).abs() < 0.05);
    }

    #[test]
    fn small_effects_floor_at_min_threshold() {
        let x: Vec<f64> = (0..100).map(|i| (i as f64 - 50.0) * 1e-4).collect();
        assert_eq!(estimate_delta(&x), 0.1);
    }
}
