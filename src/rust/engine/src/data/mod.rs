//! Data layer: sparse counts, the registry of categories, train/validation/test splits and
//! minibatches (the only place counts are densified).

pub mod counts;
pub mod covariates;
pub mod disk;
pub mod minibatch;
pub mod numpy_rng;
pub mod registry;
pub mod source;
pub mod split;

pub use counts::Counts;
pub use covariates::{Covariates, LatentPosterior};
pub use disk::{DiskCounts, RowBlock};
pub use minibatch::{Minibatch, MinibatchBuilder};
pub use registry::Registry;
pub use source::CountSource;
pub use split::DataSplit;
