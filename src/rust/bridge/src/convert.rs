//! Conversions between engine values and R objects.

use extendr_api::prelude::*;
use extendr_api::Result;
use scvir_engine::io::h5ad::Column;

/// Engine error -> extendr error whose message carries a kind tag for the R side.
pub fn engine_error(e: scvir_engine::Error) -> Error {
    use scvir_engine::Error as E;
    let tag = match &e {
        E::InvalidInput(_) => "input",
        E::InvalidConfig(_) => "config",
        E::Interrupted { .. } | E::Cancelled => "interrupted",
        E::NumericalFailure(_) => "numerical",
        E::ModelFormat(_) => "model",
        E::Io(_) | E::Hdf5(_) => "file",
        E::Resource(_) => "resource",
        E::Torch(t) if is_out_of_memory(&t.to_string()) => "resource",
        _ => "engine",
    };
    Error::Other(format!("[scviR:{tag}] {e}"))
}

/// libtorch's words for a failed allocation (CPU and CUDA).
pub fn is_out_of_memory(msg: &str) -> bool {
    ["can't allocate memory", "out of memory", "bad_alloc", "Cannot allocate memory"].iter().any(|p| msg.contains(p))
}

/// Row-major cells x k values -> R's column-major double matrix.
pub fn row_major_to_matrix(v: &[f32], nrow: usize, ncol: usize) -> RMatrix<f64> {
    RMatrix::new_matrix(nrow, ncol, |r, c| v[r * ncol + c] as f64)
}

pub fn column_to_robj(c: &Column) -> Robj {
    match c {
        Column::Numeric(v) => v.clone().into_robj(),
        Column::Boolean(v) => v.iter().map(|&b| Rbool::from(b)).collect::<Logicals>().into_robj(),
        Column::Strings(v) => v.clone().into_robj(),
        Column::Categorical { codes, categories, ordered } => {
            // 1-based codes with NA for anndata's -1 (missing).
            let codes: Integers = codes.iter().map(|&c| if c < 0 { Rint::na() } else { Rint::from(c + 1) }).collect();
            List::from_names_and_values(
                ["codes", "levels", "ordered"],
                [codes.into_robj(), categories.clone().into_robj(), ordered.into_robj()],
            )
            .map(|l| l.into_robj())
            .unwrap_or_else(|_| ().into_robj())
        }
    }
}

/// Covariates as R sends them: list(labels = integer | NULL, categorical = list of integer,
/// continuous = list of double, size_factor = double | NULL), codes 0-based.
#[derive(Default)]
pub struct OwnedCovariates {
    labels: Option<Vec<i32>>,
    categorical: Vec<Vec<i32>>,
    continuous: Vec<Vec<f64>>,
    size_factor: Option<Vec<f64>>,
    latent: Option<OwnedLatent>,
}

/// A minified model's stored posterior: R's cells x n_latent matrices made row-major.
struct OwnedLatent {
    mean: Vec<f64>,
    var: Vec<f64>,
    n_latent: usize,
    library: Vec<f64>,
}

impl OwnedLatent {
    /// `list(mean = , var = , library = )`, the first two cells x n_latent double matrices.
    fn from_list(list: &List) -> Result<Self> {
        let bad = |m: &str| Error::Other(format!("[scviR:input] latent posterior: {m}"));
        let map: std::collections::HashMap<&str, Robj> = list.iter().collect();
        if let Some(k) = map.keys().find(|k| !["mean", "var", "library"].contains(k)) {
            return Err(bad(&format!("unknown field {k}")));
        }
        let matrix = |name: &str| -> Result<(Vec<f64>, usize)> {
            let m = map.get(name).ok_or_else(|| bad(&format!("{name} is missing")))?;
            let values = m.as_real_slice().ok_or_else(|| bad(&format!("{name} must be a double matrix")))?;
            let dim = m.dim().ok_or_else(|| bad(&format!("{name} must be a matrix")))?;
            let (nrow, ncol) = (dim.elt(0).0 as usize, dim.elt(1).0 as usize);
            let mut out = vec![0.0; nrow * ncol];
            for r in 0..nrow {
                for c in 0..ncol {
                    out[r * ncol + c] = values[c * nrow + r];
                }
            }
            Ok((out, ncol))
        };
        let (mean, n_latent) = matrix("mean")?;
        let (var, k2) = matrix("var")?;
        if k2 != n_latent {
            return Err(bad("mean and var differ in shape"));
        }
        let library = map.get("library").and_then(|l| l.as_real_slice()).ok_or_else(|| bad("library must be double"))?.to_vec();
        Ok(OwnedLatent { mean, var, n_latent, library })
    }
}

impl OwnedCovariates {
    pub fn from_list(list: &List) -> Result<Self> {
        let mut out = OwnedCovariates::default();
        let bad = |what: &str| Error::Other(format!("[scviR:input] covariates: {what} has the wrong type"));
        for (name, value) in list.iter() {
            if value.is_null() {
                continue;
            }
            match name {
                "labels" => out.labels = Some(value.as_integer_slice().ok_or_else(|| bad("labels"))?.to_vec()),
                "size_factor" => out.size_factor = Some(value.as_real_slice().ok_or_else(|| bad("size_factor"))?.to_vec()),
                "categorical" => {
                    for v in value.as_list().ok_or_else(|| bad("categorical"))?.values() {
                        out.categorical.push(v.as_integer_slice().ok_or_else(|| bad("categorical"))?.to_vec());
                    }
                }
                "continuous" => {
                    for v in value.as_list().ok_or_else(|| bad("continuous"))?.values() {
                        out.continuous.push(v.as_real_slice().ok_or_else(|| bad("continuous"))?.to_vec());
                    }
                }
                "latent" => out.latent = Some(OwnedLatent::from_list(&value.as_list().ok_or_else(|| bad("latent"))?)?),
                other => return Err(Error::Other(format!("[scviR:input] unknown covariate field \"{other}\""))),
            }
        }
        Ok(out)
    }

    pub fn view(&self) -> scvir_engine::data::Covariates<'_> {
        scvir_engine::data::Covariates {
            labels: self.labels.as_deref(),
            categorical: self.categorical.iter().map(|v| v.as_slice()).collect(),
            continuous: self.continuous.iter().map(|v| v.as_slice()).collect(),
            size_factor: self.size_factor.as_deref(),
            latent: self.latent.as_ref().map(|l| scvir_engine::data::LatentPosterior {
                mean: &l.mean,
                var: &l.var,
                n_latent: l.n_latent,
                library: &l.library,
            }),
        }
    }
}

/// The matrix an `.h5ad` handle read into memory (`scvir_h5ad_load`), when `robj` is its live
/// external pointer (not NULL, and not emptied by saving and reloading the handle).
pub fn loaded_matrix(robj: &Robj) -> Option<std::sync::Arc<scvir_engine::data::disk::LoadedMatrix>> {
    let p: &ExternalPtr<std::sync::Arc<scvir_engine::data::disk::LoadedMatrix>> = robj.try_into().ok()?;
    p.try_addr().ok().cloned()
}

/// A handle's counts: the matrix it read into memory when `memory` holds one, else the file,
/// either checked against the handle's `fingerprint`.
pub fn handle_counts(path: &str, location: &str, genes: &[usize], memory: Option<&Robj>, fingerprint: &str) -> scvir_engine::Result<scvir_engine::data::DiskCounts> {
    use scvir_engine::data::DiskCounts;
    match memory.and_then(loaded_matrix) {
        Some(m) => DiskCounts::in_memory(m, genes).and_then(|d| d.check_fingerprint(fingerprint).map(|()| d)),
        None => DiskCounts::reopen(path, location, genes, fingerprint),
    }
}
