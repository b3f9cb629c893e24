//! Native reader for AnnData `.h5ad` files (anndata's on-disk encoding 0.1/0.2): the count
//! matrix (X or a layer; CSR, CSC or dense) as cells x genes CSR, plus obs / var data frames with
//! numeric, boolean, string and categorical columns.

use crate::data::counts::OwnedCounts;
use crate::error::{Error, Result};
use hdf5::types::{VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Group};

#[derive(Clone, Debug)]
pub enum Column {
    Numeric(Vec<f64>),
    Boolean(Vec<bool>),
    Strings(Vec<String>),
    Categorical { codes: Vec<i32>, categories: Vec<String>, ordered: bool },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub index: Vec<String>,
    pub columns: Vec<(String, Column)>,
    /// Columns present but in an encoding this reader does not understand.
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct H5ad {
    pub counts: OwnedCounts,
    pub obs: Frame,
    pub var: Frame,
}

fn fmt_err(path: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{path}: {what}"))
}

fn string_attr(loc: &hdf5::Location, name: &str) -> Option<String> {
    let a = loc.attr(name).ok()?;
    a.read_scalar::<VarLenUnicode>()
        .map(|s| s.as_str().to_string())
        .or_else(|_| a.read_scalar::<VarLenAscii>().map(|s| s.as_str().to_string()))
        .ok()
}

fn string_list_attr(loc: &hdf5::Location, name: &str) -> Option<Vec<String>> {
    let a = loc.attr(name).ok()?;
    if let Ok(v) = a.read_raw::<VarLenUnicode>() {
        return Some(v.iter().map(|s| s.as_str().to_string()).collect());
    }
    a.read_raw::<VarLenAscii>().ok().map(|v| v.iter().map(|s| s.as_str().to_string()).collect())
}

fn read_strings(ds: &Dataset) -> Result<Vec<String>> {
    if let Ok(v) = ds.read_raw::<VarLenUnicode>() {
        return Ok(v.iter().map(|s| s.as_str().to_string()).collect());
    }
    Ok(ds.read_raw::<VarLenAscii>()?.iter().map(|s| s.as_str().to_string()).collect())
}

fn is_string_dataset(ds: &Dataset) -> bool {
    ds.dtype().map(|t| t.is::<VarLenUnicode>() || t.is::<VarLenAscii>()).unwrap_or(false)
}

fn read_i64(ds: &Dataset) -> Result<Vec<i64>> {
    Ok(ds.read_raw::<i64>()?)
}

/// Opens a file for reading with a clear error when it is missing or not HDF5.
pub fn open(path: &str) -> Result<File> {
    if !std::path::Path::new(path).exists() {
        return Err(fmt_err(path, "file not found"));
    }
    File::open(path).map_err(|e| fmt_err(path, format!("not a readable HDF5/h5ad file ({e})")))
}

pub fn read(path: &str, layer: Option<&str>) -> Result<H5ad> {
    let file = open(path)?;
    let obs = read_frame(&file.group("obs").map_err(|_| fmt_err(path, "no obs group"))?)?;
    let var = read_frame(&file.group("var").map_err(|_| fmt_err(path, "no var group"))?)?;
    let (n_cells, n_genes) = (obs.index.len(), var.index.len());
    let counts = match layer {
        None => read_matrix(&file, "X", n_cells, n_genes, path)?,
        Some(l) => {
            let layers = file.group("layers").map_err(|_| fmt_err(path, "no layers group"))?;
            if layers.link_exists(l) {
                read_matrix(&layers, l, n_cells, n_genes, path)?
            } else {
                let names = layers.member_names().unwrap_or_default();
                return Err(fmt_err(path, format!("layer \"{l}\" not found (layers: {})", names.join(", "))));
            }
        }
    };
    Ok(H5ad { counts, obs, var })
}

fn read_matrix(parent: &Group, name: &str, n_cells: usize, n_genes: usize, path: &str) -> Result<OwnedCounts> {
    if let Ok(ds) = parent.dataset(name) {
        // Dense matrix, cells x genes.
        let shape = ds.shape();
        if shape != [n_cells, n_genes] {
            return Err(fmt_err(path, format!("{name} has shape {shape:?}, expected [{n_cells}, {n_genes}]")));
        }
        let values = ds.read_raw::<f64>()?;
        let mut m = OwnedCounts { n_cells, n_genes, indptr: vec![0], ..Default::default() };
        for row in values.chunks(n_genes.max(1)) {
            for (g, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    m.indices.push(g as i32);
                    m.data.push(v);
                }
            }
            m.indptr.push(m.data.len() as i32);
        }
        return Ok(m);
    }
    let g = parent.group(name).map_err(|_| fmt_err(path, format!("no matrix {name}")))?;
    let enc = string_attr(&g, "encoding-type")
        .or_else(|| string_attr(&g, "h5sparse_format").map(|f| format!("{f}_matrix")))
        .unwrap_or_default();
    let data = g.dataset("data")?.read_raw::<f64>()?;
    let indices = read_i64(&g.dataset("indices")?)?;
    let indptr = read_i64(&g.dataset("indptr")?)?;
    if data.len() > i32::MAX as usize {
        return Err(fmt_err(path, "more than 2^31 nonzero entries are not supported"));
    }
    if let Some(shape) = g.attr("shape").ok().and_then(|a| a.read_raw::<i64>().ok()) {
        if shape != [n_cells as i64, n_genes as i64] {
            return Err(fmt_err(path, format!(
                "{name}: its shape attribute {shape:?} contradicts obs and var ({n_cells} cells x {n_genes} genes)"
            )));
        }
    }
    let to_i32 = |v: Vec<i64>| v.into_iter().map(|x| x as i32).collect::<Vec<i32>>();
    match enc.as_str() {
        "csr_matrix" => {
            let (mut indices, mut data) = (indices, data);
            check_compressed(path, name, &indptr, &mut indices, &mut data, n_cells, n_genes, "cell", "gene")?;
            Ok(OwnedCounts { n_cells, n_genes, indptr: to_i32(indptr), indices: to_i32(indices), data })
        }
        "csc_matrix" => {
            let (mut indices, mut data) = (indices, data);
            check_compressed(path, name, &indptr, &mut indices, &mut data, n_genes, n_cells, "gene", "cell")?;
            Ok(csc_to_csr(n_cells, n_genes, &indptr, &indices, &data))
        }
        other => Err(fmt_err(path, format!("{name} has an unsupported encoding \"{other}\""))),
    }
}

/// The shape and number of stored values of a CSR matrix ("X" or "layers/<name>"), or None
/// when it is stored otherwise (CSC, dense).
pub fn csr_shape(path: &str, location: &str) -> Result<Option<(usize, usize, usize)>> {
    let file = open(path)?;
    let Ok(g) = file.group(location) else { return Ok(None) };
    let enc = string_attr(&g, "encoding-type").or_else(|| string_attr(&g, "h5sparse_format").map(|f| format!("{f}_matrix")));
    if enc.as_deref() != Some("csr_matrix") {
        return Ok(None);
    }
    let shape: Vec<i64> = g.attr("shape").and_then(|a| a.read_raw::<i64>()).map_err(|_| fmt_err(path, format!("{location} has no shape attribute")))?;
    if shape.len() != 2 || shape.iter().any(|&s| s < 0) {
        return Err(fmt_err(path, format!("{location} has a malformed shape attribute {shape:?}")));
    }
    let nnz = g.dataset("data").map_err(|_| fmt_err(path, format!("{location} has no data")))?.size();
    Ok(Some((shape[0] as usize, shape[1] as usize, nnz)))
}

/// Reads a CSR matrix straight into the caller's buffers (R's vectors: no second copy of the
/// counts), in blocks, then validates it in place as `read` does. `indptr` has n_cells + 1
/// entries; `indices` and `data` one per stored value (fewer than 2^31).
pub fn read_csr_into(path: &str, location: &str, indptr: &mut [i32], indices: &mut [i32], data: &mut [f64]) -> Result<()> {
    let file = open(path)?;
    let g = file.group(location).map_err(|_| fmt_err(path, format!("no matrix {location}")))?;
    let nnz = data.len();
    if nnz > i32::MAX as usize {
        return Err(fmt_err(path, "more than 2^31 nonzero entries do not fit a dgCMatrix; read the file with backed = TRUE"));
    }
    let wide = read_i64(&g.dataset("indptr")?)?;
    let n_genes = csr_shape(path, location)?.map_or(0, |s| s.1);
    let (ds_i, ds_x) = (g.dataset("indices")?, g.dataset("data")?);
    if ds_i.size() != nnz || indices.len() != nnz {
        return Err(fmt_err(path, format!("{location}: indices has {} entries but data has {nnz}; the file is malformed", ds_i.size())));
    }
    const BLOCK: usize = 1 << 22;
    let mut start = 0;
    while start < nnz {
        let end = (start + BLOCK).min(nnz);
        let i = ds_i.read_slice_1d::<i32, _>(start..end)?;
        indices[start..end].copy_from_slice(i.as_slice().expect("contiguous"));
        let x = ds_x.read_slice_1d::<f64, _>(start..end)?;
        data[start..end].copy_from_slice(x.as_slice().expect("contiguous"));
        start = end;
    }
    check_compressed(path, location, &wide, indices, data, indptr.len().saturating_sub(1), n_genes, "cell", "gene")?;
    for (o, &v) in indptr.iter_mut().zip(&wide) {
        *o = v as i32;
    }
    Ok(())
}

/// obs and var of a file.
pub fn read_frames(path: &str) -> Result<(Frame, Frame)> {
    let file = open(path)?;
    let obs = read_frame(&file.group("obs").map_err(|_| fmt_err(path, "no obs group"))?)?;
    let var = read_frame(&file.group("var").map_err(|_| fmt_err(path, "no var group"))?)?;
    Ok((obs, var))
}

/// Validates compressed sparse storage read from a file (`n_major` rows of a CSR matrix, or
/// columns of a CSC one): indptr starts at 0, never decreases and ends at the number of values;
/// every index is in range; no index repeats within a row. Rows whose indices are not sorted are
/// sorted (scipy allows that). Errors name the file, the matrix and what is wrong.
#[allow(clippy::too_many_arguments)]
fn check_compressed<I: Copy + Ord + Into<i64>>(
    path: &str,
    name: &str,
    indptr: &[i64],
    indices: &mut [I],
    data: &mut [f64],
    n_major: usize,
    n_minor: usize,
    major: &str,
    minor: &str,
) -> Result<()> {
    let bad = |what: String| Err(fmt_err(path, format!("{name}: {what}; the file is malformed")));
    if indptr.len() != n_major + 1 {
        return bad(format!("indptr has {} entries, expected {} ({n_major} {major}s + 1)", indptr.len(), n_major + 1));
    }
    if indices.len() != data.len() {
        return bad(format!("indices has {} entries but data has {}", indices.len(), data.len()));
    }
    if indptr[0] != 0 || indptr[n_major] as usize != data.len() || indptr[n_major] < 0 {
        return bad(format!("indptr must run from 0 to the number of values ({}); it runs from {} to {}", data.len(), indptr[0], indptr[n_major]));
    }
    if let Some(i) = indptr.windows(2).position(|w| w[1] < w[0]) {
        return bad(format!("indptr decreases at {major} {}", i + 1));
    }
    if let Some(v) = indices.iter().map(|&v| v.into()).find(|&v: &i64| v < 0 || v as usize >= n_minor) {
        return bad(format!("index {v} is outside the {n_minor} {minor}s"));
    }
    for r in 0..n_major {
        let (a, b) = (indptr[r] as usize, indptr[r + 1] as usize);
        if indices[a..b].windows(2).all(|w| w[0] < w[1]) {
            continue;
        }
        let mut pairs: Vec<(I, f64)> = indices[a..b].iter().copied().zip(data[a..b].iter().copied()).collect();
        pairs.sort_by_key(|p| p.0);
        if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
            return bad(format!("{major} {} lists the same {minor} twice", r + 1));
        }
        for (k, (i, v)) in pairs.into_iter().enumerate() {
            indices[a + k] = i;
            data[a + k] = v;
        }
    }
    Ok(())
}

/// Transposes compressed-column storage into compressed-row storage (counting sort by row).
fn csc_to_csr(n_cells: usize, n_genes: usize, indptr: &[i64], rows: &[i64], data: &[f64]) -> OwnedCounts {
    let mut counts = vec![0i32; n_cells + 1];
    for &r in rows {
        counts[r as usize + 1] += 1;
    }
    for i in 0..n_cells {
        counts[i + 1] += counts[i];
    }
    let indptr_out = counts.clone();
    let mut next = counts;
    let mut indices = vec![0i32; data.len()];
    let mut values = vec![0f64; data.len()];
    for gene in 0..n_genes {
        for k in indptr[gene] as usize..indptr[gene + 1] as usize {
            let r = rows[k] as usize;
            let dst = next[r] as usize;
            indices[dst] = gene as i32;
            values[dst] = data[k];
            next[r] += 1;
        }
    }
    OwnedCounts { n_cells, n_genes, indptr: indptr_out, indices, data: values }
}

fn read_frame(g: &Group) -> Result<Frame> {
    let index_name = string_attr(g, "_index").unwrap_or_else(|| "_index".to_string());
    let index = read_strings(&g.dataset(&index_name)?)?;
    let order = string_list_attr(g, "column-order")
        .unwrap_or_else(|| g.member_names().unwrap_or_default().into_iter().filter(|n| *n != index_name).collect());
    let mut columns = Vec::new();
    let mut skipped = Vec::new();
    for name in order {
        match read_column(g, &name)? {
            Some(col) => columns.push((name, col)),
            None => skipped.push(name),
        }
    }
    Ok(Frame { index, columns, skipped })
}

/// A frame's column names, in its column order, without reading them.
fn column_names(g: &Group) -> Vec<String> {
    let index_name = string_attr(g, "_index").unwrap_or_else(|| "_index".to_string());
    string_list_attr(g, "column-order")
        .unwrap_or_else(|| g.member_names().unwrap_or_default().into_iter().filter(|n| *n != index_name).collect())
}

/// Part of obs or var: the index when asked (else empty) and the named columns. A name that is
/// not a column is an error naming the columns there are.
pub fn read_frame_part(path: &str, group: &str, index: bool, columns: &[String]) -> Result<Frame> {
    let file = open(path)?;
    let g = file.group(group).map_err(|_| fmt_err(path, format!("no {group} group")))?;
    let names = column_names(&g);
    let mut out = Frame { index: Vec::new(), columns: Vec::new(), skipped: Vec::new() };
    if index {
        let index_name = string_attr(&g, "_index").unwrap_or_else(|| "_index".to_string());
        out.index = read_strings(&g.dataset(&index_name)?)?;
    }
    for name in columns {
        if !names.contains(name) {
            return Err(fmt_err(path, format!("{group} has no column \"{name}\" (columns: {})", names.join(", "))));
        }
        match read_column(&g, name)? {
            Some(col) => out.columns.push((name.clone(), col)),
            None => out.skipped.push(name.clone()),
        }
    }
    Ok(out)
}

/// What reading a file's counts from disk needs to know up front.
pub struct BackedInfo {
    /// "X" or "layers/<name>".
    pub location: String,
    pub encoding: String,
    pub n_cells: usize,
    pub n_genes: usize,
    pub var: Frame,
    pub obs_columns: Vec<String>,
    /// The matrix's [`crate::data::DiskCounts::fingerprint`] (empty for an encoding that is
    /// not read from disk).
    pub fingerprint: String,
}

/// Opens a file for reading from disk: the matrix's shape and encoding, var in full, obs's
/// column names (the obs frame itself is read column by column, on request).
pub fn backed_info(path: &str, layer: Option<&str>) -> Result<BackedInfo> {
    let file = open(path)?;
    let var = read_frame(&file.group("var").map_err(|_| fmt_err(path, "no var group"))?)?;
    let obs = file.group("obs").map_err(|_| fmt_err(path, "no obs group"))?;
    let index_name = string_attr(&obs, "_index").unwrap_or_else(|| "_index".to_string());
    let n_cells = obs.dataset(&index_name).map(|d| d.size()).map_err(|_| fmt_err(path, "obs has no index"))?;
    let location = match layer {
        None => "X".to_string(),
        Some(l) => {
            let layers = file.group("layers").map_err(|_| fmt_err(path, "no layers group"))?;
            if !layers.link_exists(l) {
                let names = layers.member_names().unwrap_or_default();
                return Err(fmt_err(path, format!("layer \"{l}\" not found (layers: {})", names.join(", "))));
            }
            format!("layers/{l}")
        }
    };
    let encoding = match file.group(&location) {
        Ok(g) => string_attr(&g, "encoding-type")
            .or_else(|| string_attr(&g, "h5sparse_format").map(|f| format!("{f}_matrix")))
            .unwrap_or_default(),
        Err(_) if file.dataset(&location).is_ok() => "array".to_string(),
        Err(_) => return Err(fmt_err(path, format!("no matrix {location}"))),
    };
    let n_genes = var.index.len();
    let mut fingerprint = String::new();
    if encoding == "csr_matrix" || encoding == "array" {
        let disk = crate::data::DiskCounts::open(path, &location, &[])?;
        if disk.n_cells() != n_cells || disk.n_file_genes() != n_genes {
            return Err(fmt_err(
                path,
                format!(
                    "{location} holds {} cells x {} genes, but obs has {n_cells} cells and var {n_genes} genes; the file is damaged: write it again",
                    disk.n_cells(),
                    disk.n_file_genes()
                ),
            ));
        }
        fingerprint = disk.fingerprint();
    }
    Ok(BackedInfo { location, encoding, n_cells, n_genes, var, obs_columns: column_names(&obs), fingerprint })
}

fn read_column(g: &Group, name: &str) -> Result<Option<Column>> {
    if let Ok(sub) = g.group(name) {
        let enc = string_attr(&sub, "encoding-type").unwrap_or_default();
        if enc == "categorical" {
            let categories = read_strings(&sub.dataset("categories")?)?;
            let codes: Vec<i32> = sub.dataset("codes")?.read_raw::<i32>()?;
            let ordered = sub.attr("ordered").and_then(|a| a.read_scalar::<bool>()).unwrap_or(false);
            return Ok(Some(Column::Categorical { codes, categories, ordered }));
        }
        return Ok(None);
    }
    let ds = g.dataset(name)?;
    if is_string_dataset(&ds) {
        return Ok(Some(Column::Strings(read_strings(&ds)?)));
    }
    if ds.dtype().map(|t| t.is::<bool>()).unwrap_or(false) {
        return Ok(Some(Column::Boolean(ds.read_raw::<bool>()?)));
    }
    match ds.read_raw::<f64>() {
        Ok(v) => Ok(Some(Column::Numeric(v))),
        Err(_) => Ok(None),
    }
}

/// What an .h5ad file holds besides X, obs and var.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub layers: Vec<(String, OwnedCounts)>,
    /// Dense obsm / varm matrices (row-major); sparse or data-frame entries are listed in
    /// `skipped`.
    pub obsm: Vec<(String, super::h5ad_write::DenseOut)>,
    pub varm: Vec<(String, super::h5ad_write::DenseOut)>,
    /// `raw`: its X (cells x raw genes) and var.
    pub raw: Option<(OwnedCounts, Frame)>,
    /// Scalar entries of uns (strings and numbers, as text).
    pub uns: Vec<(String, String)>,
    pub skipped: Vec<String>,
}

fn read_dense_group(g: &Group, what: &str, n_rows: usize, out: &mut Vec<(String, super::h5ad_write::DenseOut)>, skipped: &mut Vec<String>) {
    for name in g.member_names().unwrap_or_default() {
        match g.dataset(&name) {
            Ok(ds) if ds.ndim() == 2 && ds.shape()[0] == n_rows => match ds.read_raw::<f64>() {
                Ok(values) => out.push((name, super::h5ad_write::DenseOut { n_rows, n_cols: ds.shape()[1], values })),
                Err(_) => skipped.push(format!("{what}/{name}")),
            },
            _ => skipped.push(format!("{what}/{name}")),
        }
    }
}

/// Reads layers, obsm, varm, raw and uns scalars (each on request).
pub fn read_extras(path: &str, n_cells: usize, n_genes: usize, layers: bool, obsm: bool, raw: bool) -> Result<Extras> {
    let file = open(path)?;
    let mut out = Extras::default();
    if layers {
        if let Ok(g) = file.group("layers") {
            for name in g.member_names().unwrap_or_default() {
                match read_matrix(&g, &name, n_cells, n_genes, path) {
                    Ok(m) => out.layers.push((name, m)),
                    Err(_) => out.skipped.push(format!("layers/{name}")),
                }
            }
        }
    }
    if obsm {
        if let Ok(g) = file.group("obsm") {
            read_dense_group(&g, "obsm", n_cells, &mut out.obsm, &mut out.skipped);
        }
        if let Ok(g) = file.group("varm") {
            read_dense_group(&g, "varm", n_genes, &mut out.varm, &mut out.skipped);
        }
    }
    if raw {
        if let Ok(g) = file.group("raw") {
            let var = read_frame(&g.group("var").map_err(|_| fmt_err(path, "raw has no var"))?)?;
            let m = read_matrix(&g, "X", n_cells, var.index.len(), path)?;
            out.raw = Some((m, var));
        }
    }
    if let Ok(g) = file.group("uns") {
        for name in g.member_names().unwrap_or_default() {
            let Ok(ds) = g.dataset(&name) else { continue };
            if ds.ndim() != 0 {
                continue;
            }
            let value = if is_string_dataset(&ds) {
                ds.read_scalar::<VarLenUnicode>()
                    .map(|s| s.as_str().to_string())
                    .or_else(|_| ds.read_scalar::<VarLenAscii>().map(|s| s.as_str().to_string()))
                    .ok()
            } else {
                ds.read_scalar::<f64>().ok().map(|v| v.to_string())
            };
            if let Some(v) = value {
                out.uns.push((name, v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::csc_to_csr;

    #[test]
    fn malformed_compressed_storage_is_refused_and_unsorted_rows_sorted() {
        use super::check_compressed;
        let ok = |indptr: &[i64], mut idx: Vec<i64>, mut data: Vec<f64>| {
            check_compressed("f.h5ad", "X", indptr, &mut idx, &mut data, 2, 3, "cell", "gene").map(|_| (idx, data))
        };
        // Unsorted within a row: sorted with the values.
        let (i, d) = ok(&[0, 2, 3], vec![2, 0, 1], vec![5.0, 6.0, 7.0]).unwrap();
        assert_eq!(i, vec![0, 2, 1]);
        assert_eq!(d, vec![6.0, 5.0, 7.0]);
        let msg = |r: crate::Result<(Vec<i64>, Vec<f64>)>| r.unwrap_err().to_string();
        assert!(msg(ok(&[0, 2, 1], vec![0, 1, 2], vec![1.0; 3])).contains("indptr"));
        assert!(msg(ok(&[0, 3, 2], vec![0, 1, 2], vec![1.0; 2])).contains("indices has 3 entries"));
        assert!(msg(ok(&[0, 2, 1, 3], vec![0, 1, 2], vec![1.0; 3])).contains("indptr has 4 entries"));
        assert!(msg(ok(&[0, 1, 3], vec![0, 1, 7], vec![1.0; 3])).contains("index 7 is outside the 3 genes"));
        assert!(msg(ok(&[0, 2, 3], vec![1, 1, 0], vec![1.0; 3])).contains("cell 1 lists the same gene twice"));
        assert!(msg(ok(&[0, 2, 3], vec![1, 1, 0], vec![1.0; 3])).starts_with("f.h5ad: X:"));
    }

    #[test]
    fn csc_transposes_to_csr() {
        // 2 cells x 3 genes: [[1, 0, 2], [0, 3, 4]] in CSC.
        let m = csc_to_csr(2, 3, &[0, 1, 2, 4], &[0, 1, 0, 1], &[1.0, 3.0, 2.0, 4.0]);
        assert_eq!(m.indptr, vec![0, 2, 4]);
        assert_eq!(m.indices, vec![0, 2, 1, 2]);
        assert_eq!(m.data, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
