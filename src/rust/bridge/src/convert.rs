//! Conversions between engine values and R objects.

use extendr_api::prelude::*;
use scvir_engine::io::h5ad::Column;

/// Engine error -> extendr error whose message carries a kind tag for the R side.
pub fn engine_error(e: scvir_engine::Error) -> Error {
    use scvir_engine::Error as E;
    let tag = match &e {
        E::InvalidInput(_) => "input",
        E::InvalidConfig(_) => "config",
        E::Interrupted { .. } => "interrupted",
        E::NumericalFailure(_) => "numerical",
        E::ModelFormat(_) => "model",
        _ => "engine",
    };
    Error::Other(format!("[scviR:{tag}] {e}"))
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
