//! Training options with scvi-tools' defaults (TrainingPlan, Trainer, DataSplitter).

use serde::{Deserialize, Serialize};

/// The optimiser: Adam with coupled L2 weight decay (scvi-tools' default) or AdamW (decoupled).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Optimizer {
    Adam,
    AdamW,
}

/// A validation metric that early stopping and the learning-rate scheduler can monitor.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    ElboValidation,
    ReconstructionLossValidation,
    KlLocalValidation,
    ValidationLoss,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// None: scvi-tools' heuristic min(round(20000 / n_cells * 400), 400).
    pub max_epochs: Option<usize>,
    pub train_size: Option<f64>,
    pub validation_size: Option<f64>,
    pub shuffle_set_split: bool,
    pub batch_size: usize,
    pub lr: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub optimizer: Optimizer,
    pub n_epochs_kl_warmup: Option<usize>,
    pub n_steps_kl_warmup: Option<usize>,
    pub max_kl_weight: f64,
    pub min_kl_weight: f64,
    /// Evaluate the validation set every this many epochs (None: never). scviR defaults to 1 so
    /// that `history()` always has elbo_validation; scvi-tools defaults to never.
    pub check_val_every_n_epoch: Option<usize>,
    pub seed: u64,
    /// Stop when `early_stopping_monitor` has not improved for `early_stopping_patience`
    /// validation epochs (validation then runs every epoch, as in scvi-tools).
    pub early_stopping: bool,
    pub early_stopping_monitor: Monitor,
    pub early_stopping_patience: usize,
    pub early_stopping_min_delta: f64,
    pub early_stopping_mode: super::callbacks::Mode,
    pub early_stopping_warmup_epochs: usize,
    pub reduce_lr_on_plateau: bool,
    pub lr_factor: f64,
    pub lr_patience: usize,
    pub lr_threshold: f64,
    pub lr_min: f64,
    pub lr_scheduler_metric: Monitor,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_epochs: None,
            train_size: None,
            validation_size: None,
            shuffle_set_split: true,
            batch_size: 128,
            lr: 1e-3,
            eps: 0.01,
            weight_decay: 1e-6,
            optimizer: Optimizer::Adam,
            n_epochs_kl_warmup: Some(400),
            n_steps_kl_warmup: None,
            max_kl_weight: 1.0,
            min_kl_weight: 0.0,
            check_val_every_n_epoch: Some(1),
            seed: 0,
            early_stopping: false,
            early_stopping_monitor: Monitor::ElboValidation,
            early_stopping_patience: 45,
            early_stopping_min_delta: 0.0,
            early_stopping_mode: super::callbacks::Mode::Min,
            early_stopping_warmup_epochs: 0,
            reduce_lr_on_plateau: false,
            lr_factor: 0.6,
            lr_patience: 30,
            lr_threshold: 0.0,
            lr_min: 0.0,
            lr_scheduler_metric: Monitor::ElboValidation,
        }
    }
}

/// scvi-tools' default number of epochs: max(min(round(20000 / n_cells * 400), 400), 1), with
/// Python's round-half-to-even.
pub fn default_max_epochs(n_cells: usize) -> usize {
    let e = (20000.0 / n_cells as f64 * 400.0).round_ties_even();
    e.clamp(1.0, 400.0) as usize
}

#[cfg(test)]
mod tests {
    use super::default_max_epochs;

    #[test]
    fn heuristic_matches_scvi_tools() {
        assert_eq!(default_max_epochs(2638), 400); // PBMC 3k
        assert_eq!(default_max_epochs(20000), 400);
        assert_eq!(default_max_epochs(40000), 200);
        assert_eq!(default_max_epochs(100000), 80);
        assert_eq!(default_max_epochs(1_000_000), 8);
        assert_eq!(default_max_epochs(64_000_000), 1); // round(0.125) = 0 -> floor at 1
        // 20000 * 400 / 3_200_000 = 2.5 rounds to even 2, not 3.
        assert_eq!(default_max_epochs(3_200_000), 2);
    }
}
