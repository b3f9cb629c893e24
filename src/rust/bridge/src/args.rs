//! The two argument bundles every data-taking routine receives from R:
//! `data = list(indptr, indices, values, n_cells, n_genes, batch_codes, covariates)` (the CSR
//! slots of the genes x cells dgCMatrix, borrowed without copying) and
//! `opts = list(seed, batch_size, n_threads, accelerator, device_index)`.

use crate::convert::{engine_error, OwnedCovariates};
use extendr_api::prelude::*;
use extendr_api::Result;
use scvir_engine::data::disk::CellSummaries;
use scvir_engine::data::{CountSource, Counts, Covariates, DiskCounts};
use std::collections::HashMap;

/// The bundle's fields by name; a name outside `allowed` is refused (a renamed or misspelt field
/// must not silently become a default).
fn fields(list: &List, what: &str, allowed: &[&str]) -> Result<HashMap<String, Robj>> {
    let map: HashMap<String, Robj> = list.iter().map(|(k, v)| (k.to_string(), v)).collect();
    if map.is_empty() {
        return Err(Error::Other(format!("[scviR:engine] empty {what} list")));
    }
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::Other(format!("[scviR:engine] unknown field {k} in the {what} list (known: {})", allowed.join(", "))));
    }
    Ok(map)
}

fn field<'a>(map: &'a HashMap<String, Robj>, name: &str) -> Result<&'a Robj> {
    map.get(name).ok_or_else(|| Error::Other(format!("[scviR:engine] missing field {name}")))
}

fn int(map: &HashMap<String, Robj>, name: &str) -> Result<i32> {
    field(map, name)?.as_integer().or_else(|| field(map, name).ok()?.as_real().map(|v| v as i32))
        .ok_or_else(|| Error::Other(format!("[scviR:engine] field {name} is not a number")))
}

/// The counts of an `.h5ad` handle, `list(path, location, genes, memory, fingerprint)`: the
/// file, "X" or "layers/<name>", the 0-based file positions of the model's genes, the matrix when
/// it was read into memory, and the file's fingerprint when the handle was opened (checked here,
/// so that every use of a handle refuses a file that changed under it).
pub fn open_handle(h: &List) -> Result<DiskCounts> {
    let h = fields(h, "h5ad", &["path", "location", "genes", "memory", "fingerprint"])?;
    let text = |k: &str| field(&h, k).map(|v| v.as_str().unwrap_or("").to_string());
    let genes: Vec<usize> = field(&h, "genes")?
        .as_integer_slice()
        .ok_or_else(|| Error::Other("[scviR:engine] h5ad genes must be integer".into()))?
        .iter()
        .map(|&g| g.max(0) as usize)
        .collect();
    let path = text("path")?;
    let fingerprint = h.get("fingerprint").and_then(|f| f.as_str()).unwrap_or("");
    crate::convert::handle_counts(&path, &text("location")?, &genes, h.get("memory"), fingerprint)
        .map_err(|e| crate::h5ad_error(&path, e))
        .map_err(engine_error)
}

pub struct DataArgs {
    map: HashMap<String, Robj>,
    n_cells: usize,
    n_genes: usize,
    covariates: OwnedCovariates,
    /// Counts left in an .h5ad file, with their per-cell summaries.
    disk: Option<(DiskCounts, CellSummaries)>,
}

impl DataArgs {
    pub fn from_list(list: &List) -> Result<Self> {
        let map = fields(list, "data", &["indptr", "indices", "values", "n_cells", "n_genes", "batch_codes", "covariates", "h5ad"])?;
        let covariates = match map.get("covariates").and_then(|c| c.as_list()) {
            Some(l) => OwnedCovariates::from_list(&l)?,
            None => OwnedCovariates::default(),
        };
        if let Some(h) = map.get("h5ad").and_then(|h| h.as_list()) {
            let disk = open_handle(&h)?;
            let summaries = disk.summaries().map_err(engine_error)?;
            let (n_cells, n_genes) = (disk.n_cells(), disk.n_genes());
            return Ok(DataArgs { map, n_cells, n_genes, covariates, disk: Some((disk, summaries)) });
        }
        let n_cells = int(&map, "n_cells")?.max(0) as usize;
        let n_genes = int(&map, "n_genes")?.max(0) as usize;
        Ok(DataArgs { map, n_cells, n_genes, covariates, disk: None })
    }

    /// The cells, in memory or on disk.
    pub fn source(&self) -> Result<CountSource<'_>> {
        match &self.disk {
            Some((d, s)) => Ok(CountSource::Disk(d, s)),
            None => Ok(CountSource::Memory(self.counts()?)),
        }
    }

    fn ints(&self, name: &str) -> Result<&[i32]> {
        field(&self.map, name)?.as_integer_slice().ok_or_else(|| Error::Other(format!("[scviR:engine] {name} must be integer")))
    }

    pub fn n_cells(&self) -> usize {
        self.n_cells
    }

    pub fn n_genes(&self) -> usize {
        self.n_genes
    }

    /// The counts in memory (queries that pick cells at random need them).
    pub fn counts(&self) -> Result<Counts<'_>> {
        if self.disk.is_some() {
            return Err(Error::Other("[scviR:input] this computation needs the counts in memory; the data given are an .h5ad file on disk".into()));
        }
        let values = field(&self.map, "values")?
            .as_real_slice()
            .ok_or_else(|| Error::Other("[scviR:engine] values must be double".into()))?;
        Counts::from_csr(self.n_cells, self.n_genes, self.ints("indptr")?, self.ints("indices")?, values).map_err(engine_error)
    }

    pub fn batch_codes(&self) -> Result<&[i32]> {
        self.ints("batch_codes")
    }

    pub fn covariates(&self) -> Covariates<'_> {
        self.covariates.view()
    }
}

pub struct Opts {
    pub seed: f64,
    pub batch_size: usize,
    pub n_threads: i32,
    pub accelerator: String,
    pub device_index: i32,
}

impl Opts {
    pub fn from_list(list: &List) -> Result<Self> {
        let map = fields(list, "opts", &["seed", "batch_size", "n_threads", "accelerator", "device_index"])?;
        Ok(Opts {
            seed: field(&map, "seed")?.as_real().unwrap_or(0.0),
            batch_size: int(&map, "batch_size")?.max(1) as usize,
            n_threads: int(&map, "n_threads")?,
            accelerator: field(&map, "accelerator")?.as_str().unwrap_or("auto").to_string(),
            device_index: int(&map, "device_index")?,
        })
    }
}
