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

/// Counts below this take lgamma(k + 1) from a table.
const LGAMMA_TABLE: usize = 1024;

/// lgamma(v + 1), the count term of the likelihood's constant. Whole counts below 1024 (almost
/// every entry of UMI data) are read from a table of the same libm values, so sums over the
/// nonzeros do not change; other values are computed.
#[inline]
pub fn lgamma_x1(v: f64) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let k = v as usize;
    if k as f64 == v && k < LGAMMA_TABLE {
        TABLE.get_or_init(|| (0..LGAMMA_TABLE).map(|k| libm::lgamma(k as f64 + 1.0)).collect())[k]
    } else {
        libm::lgamma(v + 1.0)
    }
}

#[cfg(test)]
mod tests {
    /// The table gives libm's own values, and values off the table are still computed.
    #[test]
    fn lgamma_table_matches_libm() {
        for v in [0.0, 1.0, 2.0, 7.0, 1023.0, 1024.0, 5000.0, 2.5, 0.25] {
            assert_eq!(super::lgamma_x1(v).to_bits(), libm::lgamma(v + 1.0).to_bits(), "v = {v}");
        }
    }
}
