//! scvir-engine: scvi-tools' models (SCVI first) reimplemented on libtorch, with no R inside.
//!
//! Layers follow scvi-tools' proven separation: `data` (counts, splits, minibatches, registry),
//! `distributions` (count likelihoods), `nn` (fully connected blocks, encoder, decoder),
//! `module` (inference -> generative -> loss), `train` (optimiser, schedules, history),
//! `infer` (queries on a trained model) and `io` (model files, h5ad).

pub mod data;
pub mod de;
pub mod distributions;
pub mod error;
pub mod gemm;
pub mod infer;
pub mod io;
pub mod module;
pub mod nn;
pub mod runtime;
pub mod simd;
pub mod train;

pub use error::{Error, Result};

/// libtorch's random generator is global to the process: unit tests that seed it take turns.
#[cfg(test)]
pub(crate) static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
