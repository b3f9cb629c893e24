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
        }
    }
}
