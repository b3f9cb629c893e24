//! Models as scvi-tools' modules: `inference` (q(z|x), library) -> `generative` (p(x|z)) -> `loss`.

pub mod arches;
pub mod config;
pub mod scanvi;
pub mod vae;

pub use config::{Dispersion, VaeConfig};
pub use scanvi::ScanviConfig;
pub use vae::{Inference, LossOutput, Vae};
