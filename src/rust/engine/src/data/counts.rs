//! Cells x genes counts in CSR form, borrowed when possible.
//!
//! A genes x cells `dgCMatrix` (slots `p`, `i`, `x`) is exactly a cells x genes CSR matrix, so R's
//! slots are viewed in place: no transpose and no dense copy of the whole matrix.

use crate::error::{invalid, Result};
use sprs::CsMatViewI;

/// Read-only cells x genes count matrix (CSR; row = cell, column = gene).
#[derive(Clone, Copy)]
pub struct Counts<'a> {
    mat: CsMatViewI<'a, f64, i32>,
    indptr: &'a [i32],
    indices: &'a [i32],
    data: &'a [f64],
}

impl<'a> Counts<'a> {
    /// Wraps CSR slices (`indptr` has n_cells + 1 entries) after checking their structure and that
    /// every value is a finite, non-negative integer.
    pub fn from_csr(
        n_cells: usize,
        n_genes: usize,
        indptr: &'a [i32],
        indices: &'a [i32],
        data: &'a [f64],
    ) -> Result<Self> {
        if indptr.len() != n_cells + 1 {
            return invalid(format!(
                "counts: expected {} column pointers for {} cells, got {}",
                n_cells + 1,
                n_cells,
                indptr.len()
            ));
        }
        if indices.len() != data.len() || indptr[n_cells] as usize != data.len() {
            return invalid("counts: index and value arrays disagree in length");
        }
        validate_values(data)?;
        let mat = CsMatViewI::try_new((n_cells, n_genes), indptr, indices, data)
            .map_err(|e| crate::Error::InvalidInput(format!("counts: malformed sparse matrix ({})", e.3)))?;
        Ok(Counts { mat, indptr, indices, data })
    }

    pub fn n_cells(&self) -> usize {
        self.mat.rows()
    }

    pub fn n_genes(&self) -> usize {
        self.mat.cols()
    }

    pub fn nnz(&self) -> usize {
        self.mat.nnz()
    }

    /// Gene indices and counts of one cell.
    pub fn cell(&self, cell: usize) -> (&'a [i32], &'a [f64]) {
        let (start, end) = (self.indptr[cell] as usize, self.indptr[cell + 1] as usize);
        (&self.indices[start..end], &self.data[start..end])
    }

    /// Total counts of every cell.
    pub fn library_sizes(&self) -> Vec<f64> {
        (0..self.n_cells()).map(|c| self.cell(c).1.iter().sum()).collect()
    }

    /// Cells whose counts are all zero (1-based positions are the caller's business).
    pub fn empty_cells(&self) -> Vec<usize> {
        (0..self.n_cells()).filter(|&c| self.cell(c).1.iter().all(|&v| v == 0.0)).collect()
    }
}

fn validate_values(data: &[f64]) -> Result<()> {
    for &v in data {
        if !v.is_finite() {
            return invalid("counts contain NaN or infinite values; scVI models raw UMI counts");
        }
        if v < 0.0 {
            return invalid("counts contain negative values; scVI models raw UMI counts");
        }
        if v.fract() != 0.0 {
            return invalid(format!(
                "counts contain non-integer values (e.g. {v}); scVI models raw UMI counts, \
                 not normalized or log-transformed data"
            ));
        }
        if v > MAX_COUNT {
            return invalid(format!(
                "counts contain values above 2^24 = 16,777,216 (e.g. {v}), which the model's 32-bit \
                 floats cannot hold exactly; scVI models raw UMI counts"
            ));
        }
    }
    Ok(())
}

/// How many values are non-finite, negative (finite) and non-integer (finite), each with the
/// position of its first: the checks R runs on a matrix before anything else, without the
/// temporary vectors R would allocate for them.
pub fn value_problems(data: &[f64]) -> [(usize, Option<usize>); 3] {
    let mut out = [(0usize, None); 3];
    for (k, &v) in data.iter().enumerate() {
        let kind = if !v.is_finite() {
            0
        } else if v < 0.0 {
            1
        } else if v.fract() != 0.0 {
            2
        } else {
            continue;
        };
        out[kind].0 += 1;
        out[kind].1.get_or_insert(k);
    }
    // A negative non-integer counts as negative only, as R's checks in that order report it.
    out
}

/// The largest count the engine accepts: every integer up to it is exact in f32.
pub const MAX_COUNT: f64 = 16_777_216.0;

/// Owned CSR storage, for data read from files (the CLI, h5ad).
#[derive(Clone, Debug, Default)]
pub struct OwnedCounts {
    pub n_cells: usize,
    pub n_genes: usize,
    pub indptr: Vec<i32>,
    pub indices: Vec<i32>,
    pub data: Vec<f64>,
}

impl OwnedCounts {
    pub fn view(&self) -> Result<Counts<'_>> {
        Counts::from_csr(self.n_cells, self.n_genes, &self.indptr, &self.indices, &self.data)
    }
}
