//! Count likelihoods of scVI (scvi-tools' parameterisation, eps = 1e-8).
//!
//! `log_likelihood` is what training uses: entries that are zero in the data only need cheap
//! element-wise terms, while lgamma(x + theta) and x * log(mu) are evaluated on the nonzero entries
//! alone (about 10% of a minibatch). `dense` holds the same densities written over every entry,
//! as scvi-tools states them; tests check that both agree.

pub mod dense;
pub mod fastmath;
pub mod fused;
pub mod sample;
pub mod sparse;

use serde::{Deserialize, Serialize};

/// scvi-tools' numerical guard inside logarithms.
pub const EPS: f64 = 1e-8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneLikelihood {
    Zinb,
    Nb,
    Poisson,
    /// Gaussian with mean mu and standard deviation theta (scvi-tools' experimental "normal").
    Normal,
}

impl GeneLikelihood {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "zinb" => Ok(Self::Zinb),
            "nb" => Ok(Self::Nb),
            "poisson" => Ok(Self::Poisson),
            "normal" => Ok(Self::Normal),
            other => Err(crate::Error::InvalidConfig(format!(
                "gene_likelihood must be one of \"zinb\", \"nb\", \"poisson\", \"normal\"; got \"{other}\""
            ))),
        }
    }

    pub fn has_dispersion(self) -> bool {
        !matches!(self, Self::Poisson)
    }

    pub fn has_zero_inflation(self) -> bool {
        matches!(self, Self::Zinb)
    }
}

pub use sparse::log_likelihood;
