//! Model files and AnnData (.h5ad) input and output.

pub mod h5ad;
pub mod h5ad_write;
pub mod model_file;
pub mod pickle;
pub mod scvi_tools;
pub mod scvi_tools_write;
