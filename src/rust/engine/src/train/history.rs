//! Per-epoch training history, in the per-cell units scvi-tools logs (sums over cells divided
//! by the number of cells of the set).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub kl_weight: f64,
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
    /// Wall-clock seconds of the training part of the epoch (not validation).
    pub train_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
}
