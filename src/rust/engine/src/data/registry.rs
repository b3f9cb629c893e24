//! What a model was fitted on: gene names and covariate categories in their order. Every later
//! call checks new data against it.

use super::counts::Counts;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Registry {
    pub genes: Vec<String>,
    /// Batch categories; a single "0" category stands for "no batch key" as in scvi-tools.
    pub batches: Vec<String>,
    pub batch_key: Option<String>,
    /// Per-batch mean and variance of log library size (latent-library prior), in batch order.
    pub library_log_means: Vec<f64>,
    pub library_log_vars: Vec<f64>,
    pub n_cells_fitted: usize,
    /// Label categories (labels_key), extra categorical covariates (key and categories),
    /// continuous covariate keys and the size-factor key, in the order the model takes them.
    #[serde(default)]
    pub labels_key: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub categorical_covariates: Vec<(String, Vec<String>)>,
    #[serde(default)]
    pub continuous_covariates: Vec<String>,
    #[serde(default)]
    pub size_factor_key: Option<String>,
}

impl Registry {
    /// Sets the model sizes that follow from the registry (genes, batches, labels, covariate
    /// categories, continuous covariates), so that they are derived in one place, not passed in.
    pub fn apply_to(&self, cfg: &mut crate::module::VaeConfig) {
        cfg.n_genes = self.genes.len() as i64;
        cfg.n_batch = self.n_batch() as i64;
        cfg.n_labels = self.labels.len() as i64;
        cfg.n_cats_per_cov = self.categorical_covariates.iter().map(|(_, c)| c.len() as i64).collect();
        cfg.n_continuous_cov = self.continuous_covariates.len() as i64;
    }

    pub fn n_batch(&self) -> usize {
        self.batches.len().max(1)
    }

    pub fn batch_index(&self, name: &str) -> Option<usize> {
        self.batches.iter().position(|b| b == name)
    }

    /// A registry for `genes` and `n_batch` batches named "0", "1", ..., with the per-batch
    /// latent-library prior computed from the data.
    pub fn with_library_prior(genes: Vec<String>, counts: Counts<'_>, batch_codes: &[i32], n_batch: usize) -> Self {
        let (library_log_means, library_log_vars) = library_prior(counts, batch_codes, n_batch);
        Registry {
            genes,
            batches: (0..n_batch).map(|b| b.to_string()).collect(),
            batch_key: None,
            library_log_means,
            library_log_vars,
            n_cells_fitted: counts.n_cells(),
            ..Default::default()
        }
    }
}

/// scvi-tools' `_init_library_size`: per batch, mean and (population) variance of the log total
/// counts; empty cells count as log-library 0; a batch without cells gets (0, 1).
pub fn library_prior<'a>(counts: impl Into<super::CountSource<'a>>, batch_codes: &[i32], n_batch: usize) -> (Vec<f64>, Vec<f64>) {
    let lib = counts.into().library_sizes();
    let mut means = vec![0.0; n_batch];
    let mut vars = vec![1.0; n_batch];
    for b in 0..n_batch {
        let logs: Vec<f64> = lib
            .iter()
            .zip(batch_codes)
            .filter(|(_, &c)| c as usize == b)
            .map(|(&l, _)| if l > 0.0 { l.ln() } else { 0.0 })
            .collect();
        if logs.is_empty() {
            continue;
        }
        let m = logs.iter().sum::<f64>() / logs.len() as f64;
        means[b] = m;
        vars[b] = logs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / logs.len() as f64;
    }
    (means, vars)
}
