//! Per-cell covariates besides the batch, as scvi-tools registers them: labels (for gene-label
//! dispersion), extra categorical covariates (one-hot, injected like the batch), continuous
//! covariates (concatenated to the decoder's input, and the encoders' with `encode_covariates`)
//! and size factors (replacing the library size).

use crate::error::{Error, Result};
use crate::module::VaeConfig;

#[derive(Clone, Debug, Default)]
pub struct Covariates<'a> {
    /// 0-based label codes.
    pub labels: Option<&'a [i32]>,
    /// 0-based codes, one slice per categorical covariate.
    pub categorical: Vec<&'a [i32]>,
    /// Values, one slice per continuous covariate.
    pub continuous: Vec<&'a [f64]>,
    /// Positive size factors (the library is log(size factor)).
    pub size_factor: Option<&'a [f64]>,
    /// A minified model's stored posterior of z and observed library size, used instead of
    /// encoding the counts.
    pub latent: Option<LatentPosterior<'a>>,
}

/// Each cell's Gaussian posterior q(z | x) (means and variances, cells x n_latent row-major) and
/// observed library size, as scvi-tools' minified data keep them ("latent_posterior_parameters").
#[derive(Clone, Copy, Debug)]
pub struct LatentPosterior<'a> {
    pub mean: &'a [f64],
    pub var: &'a [f64],
    pub n_latent: usize,
    pub library: &'a [f64],
}

impl Covariates<'_> {
    /// Checks the covariates against the model's configuration and the number of cells.
    pub fn check(&self, n_cells: usize, cfg: &VaeConfig) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.categorical.len() != cfg.n_cats_per_cov.len() {
            return bad(format!("the model has {} categorical covariate(s), {} given", cfg.n_cats_per_cov.len(), self.categorical.len()));
        }
        if self.continuous.len() as i64 != cfg.n_continuous_cov {
            return bad(format!("the model has {} continuous covariate(s), {} given", cfg.n_continuous_cov, self.continuous.len()));
        }
        if cfg.use_size_factor_key != self.size_factor.is_some() {
            return bad("size factors are needed exactly when the model was trained with them".into());
        }
        for (k, (codes, &n)) in self.categorical.iter().zip(&cfg.n_cats_per_cov).enumerate() {
            if codes.len() != n_cells || codes.iter().any(|&c| c < 0 || c as i64 >= n) {
                return bad(format!("categorical covariate {} needs one code in [0, {n}) per cell", k + 1));
            }
        }
        for (k, v) in self.continuous.iter().enumerate() {
            if v.len() != n_cells || v.iter().any(|x| !x.is_finite()) {
                return bad(format!("continuous covariate {} needs one finite value per cell", k + 1));
            }
            if let Some(x) = v.iter().find(|x| x.abs() > f32::MAX as f64) {
                return bad(format!(
                    "continuous covariate {} has a value ({x:e}) beyond the range of the model's 32-bit floats; rescale it",
                    k + 1
                ));
            }
        }
        if let Some(s) = self.size_factor {
            if s.len() != n_cells || s.iter().any(|x| !(x.is_finite() && *x > 0.0 && *x < f32::MAX as f64 && *x > f32::MIN_POSITIVE as f64)) {
                return bad("size factors must be positive and finite in 32-bit floats, one per cell".into());
            }
        }
        if let Some(p) = &self.latent {
            if !cfg.use_observed_lib_size {
                return bad("a minified model needs the observed library size (use_observed_lib_size = TRUE), as in scvi-tools".into());
            }
            let n = n_cells * cfg.n_latent as usize;
            if p.n_latent != cfg.n_latent as usize || p.mean.len() != n || p.var.len() != n || p.library.len() != n_cells {
                return bad(format!("the stored latent posterior needs {n_cells} cells x {} latent dimensions and one library size per cell", cfg.n_latent));
            }
            if p.mean.iter().any(|x| !x.is_finite()) || p.var.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return bad("the stored latent posterior needs finite means and positive finite variances".into());
            }
            if p.library.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return bad("the stored observed library sizes must be positive and finite".into());
            }
        }
        if let Some(l) = self.labels {
            if l.len() != n_cells || l.iter().any(|&c| c < 0 || c as i64 >= cfg.n_labels.max(1)) {
                return bad(format!("labels need one code in [0, {}) per cell", cfg.n_labels.max(1)));
            }
        }
        Ok(())
    }
}
