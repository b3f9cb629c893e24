//! Early stopping and learning-rate reduction on a plateau, as scvi-tools gets them from
//! Lightning's `EarlyStopping` and PyTorch's `ReduceLROnPlateau`. Both watch a validation metric
//! once per validation epoch.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Min,
    Max,
}

impl Mode {
    /// The metric as "lower is better".
    fn oriented(self, v: f64) -> f64 {
        match self {
            Mode::Min => v,
            Mode::Max => -v,
        }
    }
}

/// Lightning's rule: an epoch improves when it beats the best so far by more than `min_delta`
/// (for "min": current + min_delta < best); training stops once `patience` validation epochs in a row have
/// not improved. Epochs before `warmup_epochs` are not counted.
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
    pub mode: Mode,
    pub warmup_epochs: usize,
    best: Option<f64>,
    wait: usize,
}

impl EarlyStopping {
    pub fn new(patience: usize, min_delta: f64, mode: Mode, warmup_epochs: usize) -> Self {
        EarlyStopping { patience, min_delta: min_delta.abs(), mode, warmup_epochs, best: None, wait: 0 }
    }

    /// Records the metric of a validation epoch (0-based); true means stop now.
    pub fn update(&mut self, epoch: usize, metric: f64) -> bool {
        if epoch < self.warmup_epochs {
            return false;
        }
        let current = self.mode.oriented(metric);
        match self.best {
            Some(best) if current + self.min_delta >= best => {
                self.wait += 1;
            }
            _ => {
                self.best = Some(current);
                self.wait = 0;
            }
        }
        self.wait >= self.patience
    }
}

/// PyTorch's ReduceLROnPlateau with `threshold_mode = "abs"` and no cooldown: an epoch is bad
/// unless the metric beats the best by more than `threshold`; after more than `patience` bad epochs
/// in a row the learning rate is multiplied by `factor` (not below `min_lr`).
#[derive(Clone, Debug)]
pub struct ReduceLrOnPlateau {
    pub factor: f64,
    pub patience: usize,
    pub threshold: f64,
    pub min_lr: f64,
    pub mode: Mode,
    best: Option<f64>,
    bad_epochs: usize,
}

impl ReduceLrOnPlateau {
    pub fn new(factor: f64, patience: usize, threshold: f64, min_lr: f64, mode: Mode) -> Self {
        ReduceLrOnPlateau { factor, patience, threshold, min_lr, mode, best: None, bad_epochs: 0 }
    }

    /// Records the metric and returns the learning rate to use from now on.
    pub fn step(&mut self, metric: f64, lr: f64) -> f64 {
        let current = self.mode.oriented(metric);
        match self.best {
            Some(best) if current >= best - self.threshold => self.bad_epochs += 1,
            _ => {
                self.best = Some(current);
                self.bad_epochs = 0;
            }
        }
        if self.bad_epochs > self.patience {
            self.bad_epochs = 0;
            let new_lr = (lr * self.factor).max(self.min_lr);
            if lr - new_lr > 1e-8 {
                return new_lr;
            }
        }
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_waits_patience_epochs_without_improvement() {
        let mut es = EarlyStopping::new(3, 0.0, Mode::Min, 0);
        assert!(!es.update(0, 10.0));
        assert!(!es.update(1, 9.0)); // improved
        assert!(!es.update(2, 9.0)); // equal is no improvement: wait 1
        assert!(!es.update(3, 9.5)); // wait 2
        assert!(es.update(4, 9.2)); // wait 3 -> stop
    }

    #[test]
    fn min_delta_and_max_mode() {
        let mut es = EarlyStopping::new(2, 0.5, Mode::Min, 0);
        es.update(0, 10.0);
        assert!(!es.update(1, 9.7)); // better by less than min_delta: wait 1
        assert!(!es.update(2, 9.4)); // better by 0.6 than 10: reset
        assert!(!es.update(3, 9.3));
        assert!(es.update(4, 9.0)); // 9.4 - 9.0 = 0.4 < 0.5
        let mut up = EarlyStopping::new(1, 0.0, Mode::Max, 0);
        up.update(0, 1.0);
        assert!(!up.update(1, 2.0));
        assert!(up.update(2, 1.5));
    }

    #[test]
    fn warmup_epochs_are_ignored() {
        let mut es = EarlyStopping::new(1, 0.0, Mode::Min, 3);
        for e in 0..3 {
            assert!(!es.update(e, 5.0 + e as f64));
        }
        assert!(!es.update(3, 4.0));
        assert!(es.update(4, 4.0));
    }

    #[test]
    fn plateau_reduces_after_more_than_patience_bad_epochs() {
        let mut s = ReduceLrOnPlateau::new(0.6, 2, 0.0, 0.0, Mode::Min);
        let mut lr = 1e-3;
        lr = s.step(5.0, lr);
        for _ in 0..2 {
            lr = s.step(5.0, lr); // bad epochs 1, 2: not yet more than patience
            assert_eq!(lr, 1e-3);
        }
        lr = s.step(5.1, lr); // 3 > 2: reduce
        assert!((lr - 6e-4).abs() < 1e-15);
        lr = s.step(4.0, lr); // improvement
        assert!((lr - 6e-4).abs() < 1e-15);
        let mut floor = ReduceLrOnPlateau::new(0.1, 0, 0.0, 5e-4, Mode::Min);
        floor.step(1.0, 1e-3);
        assert_eq!(floor.step(1.0, 1e-3), 5e-4);
    }
}
