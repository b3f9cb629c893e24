//! Training: optimiser, KL warm-up, data split, per-epoch history and the loop itself.

pub mod adam;
pub mod callbacks;
pub mod config;
pub mod history;
pub mod kl_schedule;
pub mod profile;
pub mod trainer;

pub use config::{default_max_epochs, TrainConfig};
pub use history::{EpochRecord, History};
pub use profile::{Phase, StepProfile};
pub use trainer::{train, train_on, NoObserver, TrainOutcome, TrainingObserver};
