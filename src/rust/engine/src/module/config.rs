//! Architecture options of the VAE, with scvi-tools' defaults. Serialised into model files.

use crate::distributions::GeneLikelihood;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dispersion {
    #[serde(rename = "gene")]
    Gene,
    #[serde(rename = "gene-batch")]
    GeneBatch,
    #[serde(rename = "gene-cell")]
    GeneCell,
    #[serde(rename = "gene-label")]
    GeneLabel,
}

impl Dispersion {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gene" => Ok(Self::Gene),
            "gene-batch" => Ok(Self::GeneBatch),
            "gene-cell" => Ok(Self::GeneCell),
            "gene-label" => Ok(Self::GeneLabel),
            other => Err(Error::InvalidConfig(format!(
                "dispersion must be one of \"gene\", \"gene-batch\", \"gene-label\", \"gene-cell\"; got \"{other}\""
            ))),
        }
    }
}

/// Activation giving the encoders' variances.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum VarActivation {
    #[serde(rename = "exp")]
    Exp,
    #[serde(rename = "softplus")]
    Softplus,
}

/// Distribution of the latent variable z.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum LatentDistribution {
    /// z Gaussian.
    #[serde(rename = "normal")]
    Normal,
    /// Logistic normal: z = softmax of a Gaussian sample.
    #[serde(rename = "ln")]
    LogisticNormal,
}

/// How batches enter the networks.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum BatchRepresentation {
    /// Injected one-hot like other categorical covariates.
    #[serde(rename = "one-hot")]
    OneHot,
    /// A learnt vector per batch concatenated to the decoder's (and with `encode_covariates`
    /// the encoders') input.
    #[serde(rename = "embedding")]
    Embedding,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VaeConfig {
    pub n_genes: i64,
    pub n_batch: i64,
    /// Number of label categories (0: no labels).
    pub n_labels: i64,
    /// Categories of each extra categorical covariate.
    pub n_cats_per_cov: Vec<i64>,
    pub n_continuous_cov: i64,
    /// The library is log(size factor) and gene proportions use softplus instead of softmax.
    pub use_size_factor_key: bool,
    pub n_hidden: i64,
    pub n_latent: i64,
    pub n_layers: i64,
    pub dropout_rate: f64,
    pub dispersion: Dispersion,
    pub gene_likelihood: GeneLikelihood,
    pub log_variational: bool,
    pub use_observed_lib_size: bool,
    pub encode_covariates: bool,
    pub deeply_inject_covariates: bool,
    pub use_batch_norm_encoder: bool,
    pub use_batch_norm_decoder: bool,
    pub use_layer_norm_encoder: bool,
    pub use_layer_norm_decoder: bool,
    /// "exp" (scvi-tools' default) or "softplus".
    pub var_activation: VarActivation,
    pub latent_distribution: LatentDistribution,
    pub batch_representation: BatchRepresentation,
    pub batch_embedding_dim: i64,
    /// LDVAE: a linear decoder (gene loadings per latent factor) instead of the deep one.
    pub linear_decoder: bool,
    /// scANVI: the semi-supervised heads (classifier, z2 layer) on top of the VAE.
    pub scanvi: Option<super::scanvi::ScanviConfig>,
    /// A query model of scArches reference mapping: what stays frozen when it trains.
    pub query: Option<super::arches::QueryConfig>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig::new(2, 1)
    }
}

impl VaeConfig {
    /// scvi-tools' `SCVI` defaults for `n_genes` genes and `n_batch` batches.
    pub fn new(n_genes: i64, n_batch: i64) -> Self {
        VaeConfig {
            n_genes,
            n_batch: n_batch.max(1),
            n_labels: 0,
            n_cats_per_cov: Vec::new(),
            n_continuous_cov: 0,
            use_size_factor_key: false,
            n_hidden: 128,
            n_latent: 10,
            n_layers: 1,
            dropout_rate: 0.1,
            dispersion: Dispersion::Gene,
            gene_likelihood: GeneLikelihood::Zinb,
            log_variational: true,
            use_observed_lib_size: true,
            encode_covariates: false,
            deeply_inject_covariates: true,
            use_batch_norm_encoder: true,
            use_batch_norm_decoder: true,
            use_layer_norm_encoder: false,
            use_layer_norm_decoder: false,
            var_activation: VarActivation::Exp,
            latent_distribution: LatentDistribution::Normal,
            batch_representation: BatchRepresentation::OneHot,
            batch_embedding_dim: 5,
            linear_decoder: false,
            scanvi: None,
            query: None,
        }
    }

    /// The freezing rules of a query model, unless it was loaded `unfrozen`.
    pub fn frozen(&self) -> Option<&super::arches::QueryConfig> {
        self.query.as_ref().filter(|q| !q.unfrozen)
    }

    /// Dropout rate in the networks: 0 for a query model with `freeze_dropout`.
    pub fn effective_dropout(&self) -> f64 {
        if self.frozen().is_some_and(|q| q.freeze_dropout) { 0.0 } else { self.dropout_rate }
    }

    /// BatchNorm momentum of the encoders (`encoder = true`) or decoders: 0 (running statistics
    /// kept) for a query model that freezes them.
    pub fn batch_norm_momentum(&self, encoder: bool) -> f64 {
        let frozen = self.frozen().is_some_and(|q| if encoder { q.freeze_batchnorm_encoder } else { q.freeze_batchnorm_decoder });
        if frozen { 0.0 } else { crate::nn::init::BATCH_NORM_MOMENTUM }
    }

    pub fn batch_embedding(&self) -> bool {
        self.batch_representation == BatchRepresentation::Embedding
    }

    pub fn logistic_normal(&self) -> bool {
        self.latent_distribution == LatentDistribution::LogisticNormal
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.n_genes < 2 {
            return bad(format!("at least 2 genes are needed, got {}", self.n_genes));
        }
        if self.n_hidden < 1 || self.n_latent < 1 || self.n_layers < 1 {
            return bad("n_hidden, n_latent and n_layers must be positive integers".into());
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return bad(format!("dropout_rate must be in [0, 1), got {}", self.dropout_rate));
        }
        if self.dispersion == Dispersion::GeneLabel && self.n_labels < 1 {
            return bad("dispersion = \"gene-label\" needs labels (labels_key)".into());
        }
        if self.batch_embedding_dim < 1 {
            return bad("batch_embedding_dim must be a positive integer".into());
        }
        if self.gene_likelihood == GeneLikelihood::Poisson && self.dispersion != Dispersion::Gene {
            // Poisson has no dispersion; scvi-tools ignores the option, we accept only the default.
            return bad("dispersion has no meaning with gene_likelihood = \"poisson\"; leave it at \"gene\"".into());
        }
        if self.scanvi.is_some() && self.dispersion == Dispersion::GeneLabel {
            return bad("dispersion = \"gene-label\" is not available for scANVI (its labels are partly unknown)".into());
        }
        if self.linear_decoder && self.dispersion == Dispersion::GeneCell {
            return bad("linear_decoder = TRUE has no per-cell dispersion; use dispersion \"gene\", \"gene-batch\" or \"gene-label\"".into());
        }
        if self.linear_decoder && self.use_size_factor_key {
            return bad("the linear decoder (LDVAE) does not take size factors, as in scvi-tools' LinearSCVI".into());
        }
        Ok(())
    }
}
