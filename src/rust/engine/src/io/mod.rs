//! Model files and AnnData (.h5ad) input.

pub mod h5ad;
pub mod model_file;
