//! Per-epoch training history, in the per-cell units scvi-tools logs (sums over cells divided
//! by the number of cells of the set).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub kl_weight: f64,
    /// Learning rate used in the epoch.
    pub lr: f64,
    /// Mean of the minibatch objectives (with the KL weight) over the epoch.
    pub train_loss_epoch: f64,
    pub elbo_train: f64,
    pub reconstruction_loss_train: f64,
    pub kl_local_train: f64,
    pub kl_global_train: f64,
    pub validation_loss: Option<f64>,
    pub elbo_validation: Option<f64>,
    pub reconstruction_loss_validation: Option<f64>,
    pub kl_local_validation: Option<f64>,
    pub kl_global_validation: Option<f64>,
    /// scANVI: mean over the epoch's steps of the labelled minibatch's cross-entropy and
    /// accuracy (the classifier on the posterior mean).
    pub classification_loss_train: Option<f64>,
    pub accuracy_train: Option<f64>,
    /// scANVI: the same over the labelled validation cells.
    pub classification_loss_validation: Option<f64>,
    pub accuracy_validation: Option<f64>,
    /// Wall-clock seconds of the training part of the epoch (not validation).
    pub train_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
    /// Epoch (1-based) at which early stopping ended training, if it did.
    #[serde(default)]
    pub stopped_early_at: Option<usize>,
}

impl EpochRecord {
    /// A validation metric by its scvi-tools name.
    pub fn validation_metric(&self, monitor: super::config::Monitor) -> Option<f64> {
        use super::config::Monitor as M;
        match monitor {
            M::ElboValidation => self.elbo_validation,
            M::ReconstructionLossValidation => self.reconstruction_loss_validation,
            M::KlLocalValidation => self.kl_local_validation,
            M::ValidationLoss => self.validation_loss,
        }
    }
}
