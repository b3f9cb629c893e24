//! KL warm-up weight, as scvi-tools' `_compute_kl_weight`: linear from `min` to `max` over
//! `n_epochs` epochs (epoch 0 gets `min`), else over `n_steps` steps, else constant `max`.
//! A warm-up length of 0 counts as "not set", as in scvi-tools.

pub fn kl_weight(
    epoch: usize,
    step: usize,
    n_epochs_warmup: Option<usize>,
    n_steps_warmup: Option<usize>,
    max_kl_weight: f64,
    min_kl_weight: f64,
) -> f64 {
    let slope = max_kl_weight - min_kl_weight;
    match (n_epochs_warmup.filter(|&n| n > 0), n_steps_warmup.filter(|&n| n > 0)) {
        (Some(n), _) => {
            if epoch < n {
                slope * epoch as f64 / n as f64 + min_kl_weight
            } else {
                max_kl_weight
            }
        }
        (None, Some(n)) if step < n => slope * step as f64 / n as f64 + min_kl_weight,
        _ => max_kl_weight,
    }
}

#[cfg(test)]
mod tests {
    use super::kl_weight;

    #[test]
    fn epoch_warmup_is_linear_from_zero() {
        assert_eq!(kl_weight(0, 0, Some(400), None, 1.0, 0.0), 0.0);
        assert!((kl_weight(49, 999, Some(400), None, 1.0, 0.0) - 49.0 / 400.0).abs() < 1e-15);
        assert_eq!(kl_weight(400, 0, Some(400), None, 1.0, 0.0), 1.0);
        assert_eq!(kl_weight(1000, 0, Some(400), None, 1.0, 0.0), 1.0);
    }

    #[test]
    fn min_and_max_shift_the_line() {
        assert!((kl_weight(100, 0, Some(400), None, 0.5, 0.1) - (0.4 * 0.25 + 0.1)).abs() < 1e-15);
    }

    #[test]
    fn step_warmup_applies_when_epochs_unset() {
        assert_eq!(kl_weight(3, 50, None, Some(100), 1.0, 0.0), 0.5);
        assert_eq!(kl_weight(3, 150, None, Some(100), 1.0, 0.0), 1.0);
        // A zero epoch warm-up falls through to steps, as Python's truthiness test does.
        assert_eq!(kl_weight(3, 50, Some(0), Some(100), 1.0, 0.0), 0.5);
        assert_eq!(kl_weight(3, 50, None, None, 1.0, 0.0), 1.0);
    }
}
