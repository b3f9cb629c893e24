//! Network blocks of scVI: fully connected layers with covariate injection, the Gaussian
//! encoder and the scVI decoder.

pub mod decoder;
pub mod encoder;
pub mod fc_layers;
pub mod init;
pub mod sparse_input;

pub use decoder::DecoderScvi;
pub use encoder::{Encoder, EncoderOutput};
pub use fc_layers::{BlockLayout, FcLayers, FcLayersConfig};
