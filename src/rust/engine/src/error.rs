//! One error type for the engine; the bridge turns each variant into an R error message.

use thiserror::Error as ThisError;

#[derive(Debug, ThisError)]
pub enum Error {
    /// The caller handed us data that cannot be modelled (bad counts, shapes, keys).
    #[error("{0}")]
    InvalidInput(String),
    /// An option value outside what the model supports.
    #[error("{0}")]
    InvalidConfig(String),
    /// Training diverged; the message names the epoch and a remedy.
    #[error("{0}")]
    NumericalFailure(String),
    /// The user asked training to stop (Ctrl-C in R).
    #[error("training interrupted by the user at epoch {epoch} of {max_epochs}")]
    Interrupted { epoch: usize, max_epochs: usize },
    /// A query or DE stopped by the host's interrupt check (Ctrl-C, a time limit).
    #[error("the computation was interrupted (Ctrl-C or a time limit)")]
    Cancelled,
    /// A result or working set larger than the memory this machine has free.
    #[error("{0}")]
    Resource(String),
    /// A model file that is not ours or from an incompatible format version.
    #[error("model file: {0}")]
    ModelFormat(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("HDF5: {0}")]
    Hdf5(#[from] hdf5::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidInput(msg.into()))
}
