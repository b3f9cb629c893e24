//! Native writer for AnnData `.h5ad` files in anndata's current on-disk encoding (root
//! "anndata" 0.1.0; dataframes 0.2.0, csr_matrix 0.1.0, categorical 0.2.0, string-array 0.2.0,
//! dict 0.1.0): X and layers as CSR float32, obs / var data frames with numeric, boolean, string
//! and categorical columns, obsm / varm dense matrices, and string entries of uns.

use super::h5ad::{Column, Frame};
use crate::error::{Error, Result};
use hdf5::types::VarLenUnicode;
use hdf5::{File, Group, Location};

/// A cells x genes (or genes x genes) matrix in compressed sparse rows.
#[derive(Clone, Debug)]
pub struct CsrOut {
    pub n_rows: usize,
    pub n_cols: usize,
    pub indptr: Vec<i64>,
    pub indices: Vec<i32>,
    pub data: Vec<f32>,
}

/// A dense row-major matrix (obsm, varm).
#[derive(Clone, Debug)]
pub struct DenseOut {
    pub n_rows: usize,
    pub n_cols: usize,
    pub values: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct H5adOut {
    pub x: CsrOut,
    pub layers: Vec<(String, CsrOut)>,
    pub obs: Frame,
    pub var: Frame,
    pub obsm: Vec<(String, DenseOut)>,
    pub varm: Vec<(String, DenseOut)>,
    pub uns: Vec<(String, String)>,
}

fn unicode(s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>().map_err(|_| Error::InvalidInput(format!("the string {s:?} cannot be written (it holds a NUL character)")))
}

fn unicode_vec(v: &[String]) -> Result<Vec<VarLenUnicode>> {
    v.iter().map(|s| unicode(s)).collect()
}

fn str_attr(loc: &Location, name: &str, value: &str) -> Result<()> {
    loc.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&unicode(value)?)?;
    Ok(())
}

fn encoding(loc: &Location, kind: &str, version: &str) -> Result<()> {
    str_attr(loc, "encoding-type", kind)?;
    str_attr(loc, "encoding-version", version)
}

fn string_array(g: &Group, name: &str, values: &[String]) -> Result<()> {
    let ds = g.new_dataset::<VarLenUnicode>().shape(values.len()).create(name)?;
    if !values.is_empty() {
        ds.write_raw(&unicode_vec(values)?)?;
    }
    encoding(&ds, "string-array", "0.2.0")
}

fn check_frame(f: &Frame, what: &str) -> Result<()> {
    let n = f.index.len();
    for (name, col) in &f.columns {
        let len = match col {
            Column::Numeric(v) => v.len(),
            Column::Boolean(v) => v.len(),
            Column::Strings(v) => v.len(),
            Column::Categorical { codes, categories, .. } => {
                if codes.iter().any(|&c| c < -1 || c >= categories.len() as i32) {
                    return Err(Error::InvalidInput(format!("{what} column \"{name}\" has codes outside its categories")));
                }
                codes.len()
            }
        };
        if len != n {
            return Err(Error::InvalidInput(format!("{what} column \"{name}\" has {len} values for {n} rows")));
        }
        if name == "_index" {
            return Err(Error::InvalidInput(format!("{what} has a column named \"_index\", which anndata reserves")));
        }
    }
    Ok(())
}

fn write_frame(parent: &Group, name: &str, f: &Frame) -> Result<()> {
    let g = parent.create_group(name)?;
    encoding(&g, "dataframe", "0.2.0")?;
    str_attr(&g, "_index", "_index")?;
    let order: Vec<String> = f.columns.iter().map(|(n, _)| n.clone()).collect();
    let attr = g.new_attr::<VarLenUnicode>().shape(order.len()).create("column-order")?;
    if !order.is_empty() {
        attr.write_raw(&unicode_vec(&order)?)?;
    }
    string_array(&g, "_index", &f.index)?;
    for (col_name, col) in &f.columns {
        match col {
            Column::Numeric(v) => {
                let ds = g.new_dataset::<f64>().shape(v.len()).create(col_name.as_str())?;
                ds.write_raw(v)?;
                encoding(&ds, "array", "0.2.0")?;
            }
            Column::Boolean(v) => {
                let ds = g.new_dataset::<bool>().shape(v.len()).create(col_name.as_str())?;
                ds.write_raw(v)?;
                encoding(&ds, "array", "0.2.0")?;
            }
            Column::Strings(v) => string_array(&g, col_name, v)?,
            Column::Categorical { codes, categories, ordered } => {
                let c = g.create_group(col_name)?;
                encoding(&c, "categorical", "0.2.0")?;
                c.new_attr::<bool>().create("ordered")?.write_scalar(ordered)?;
                let ds = c.new_dataset::<i32>().shape(codes.len()).create("codes")?;
                ds.write_raw(codes)?;
                encoding(&ds, "array", "0.2.0")?;
                string_array(&c, "categories", categories)?;
            }
        }
    }
    Ok(())
}

fn write_csr(parent: &Group, name: &str, m: &CsrOut) -> Result<()> {
    if m.indptr.len() != m.n_rows + 1 || m.indices.len() != m.data.len() || m.indptr.last().copied() != Some(m.data.len() as i64) {
        return Err(Error::InvalidInput(format!("matrix {name}: inconsistent compressed storage")));
    }
    let g = parent.create_group(name)?;
    encoding(&g, "csr_matrix", "0.1.0")?;
    g.new_attr::<i64>().shape(2).create("shape")?.write_raw(&[m.n_rows as i64, m.n_cols as i64])?;
    g.new_dataset::<f32>().shape(m.data.len()).create("data")?.write_raw(&m.data)?;
    g.new_dataset::<i32>().shape(m.indices.len()).create("indices")?.write_raw(&m.indices)?;
    g.new_dataset::<i64>().shape(m.indptr.len()).create("indptr")?.write_raw(&m.indptr)?;
    Ok(())
}

fn write_dense(parent: &Group, name: &str, m: &DenseOut) -> Result<()> {
    if m.values.len() != m.n_rows * m.n_cols {
        return Err(Error::InvalidInput(format!("matrix {name}: {} values for {} x {}", m.values.len(), m.n_rows, m.n_cols)));
    }
    let ds = parent.new_dataset::<f64>().shape((m.n_rows, m.n_cols)).create(name)?;
    ds.write_raw(&m.values)?;
    encoding(&ds, "array", "0.2.0")
}

fn dict(parent: &Group, name: &str) -> Result<Group> {
    let g = parent.create_group(name)?;
    encoding(&g, "dict", "0.1.0")?;
    Ok(g)
}

/// Writes `d` to a new file at `path` (replacing it).
pub fn write(path: &str, d: &H5adOut) -> Result<()> {
    let (n_obs, n_var) = (d.obs.index.len(), d.var.index.len());
    check_frame(&d.obs, "obs")?;
    check_frame(&d.var, "var")?;
    for (name, m) in std::iter::once(("X", &d.x)).chain(d.layers.iter().map(|(n, m)| (n.as_str(), m))) {
        if (m.n_rows, m.n_cols) != (n_obs, n_var) {
            return Err(Error::InvalidInput(format!("{name} is {} x {} but obs x var is {n_obs} x {n_var}", m.n_rows, m.n_cols)));
        }
    }
    for (what, list, n) in [("obsm", &d.obsm, n_obs), ("varm", &d.varm, n_var)] {
        if let Some((name, m)) = list.iter().find(|(_, m)| m.n_rows != n) {
            return Err(Error::InvalidInput(format!("{what} \"{name}\" has {} rows, expected {n}", m.n_rows)));
        }
    }
    let file = File::create(path).map_err(|e| Error::InvalidInput(format!("{path}: cannot be created ({e})")))?;
    let root = file.group("/")?;
    encoding(&root, "anndata", "0.1.0")?;
    write_csr(&root, "X", &d.x)?;
    write_frame(&root, "obs", &d.obs)?;
    write_frame(&root, "var", &d.var)?;
    let layers = dict(&root, "layers")?;
    for (name, m) in &d.layers {
        write_csr(&layers, name, m)?;
    }
    let obsm = dict(&root, "obsm")?;
    for (name, m) in &d.obsm {
        write_dense(&obsm, name, m)?;
    }
    let varm = dict(&root, "varm")?;
    for (name, m) in &d.varm {
        write_dense(&varm, name, m)?;
    }
    dict(&root, "obsp")?;
    dict(&root, "varp")?;
    let uns = dict(&root, "uns")?;
    for (key, value) in &d.uns {
        let ds = uns.new_dataset::<VarLenUnicode>().create(key.as_str())?;
        ds.write_scalar(&unicode(value)?)?;
        encoding(&ds, "string", "0.2.0")?;
    }
    file.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::h5ad;

    #[test]
    fn written_files_read_back() {
        let dir = std::env::temp_dir().join(format!("scvir-h5ad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.h5ad");
        let path = path.to_str().unwrap();
        // 3 cells x 2 genes: [[1, 0], [0, 2], [3, 4]]
        let x = CsrOut { n_rows: 3, n_cols: 2, indptr: vec![0, 1, 2, 4], indices: vec![0, 1, 0, 1], data: vec![1.0, 2.0, 3.0, 4.0] };
        let obs = Frame {
            index: vec!["c1".into(), "c2".into(), "c3".into()],
            columns: vec![
                ("n".into(), Column::Numeric(vec![1.5, 2.0, -3.0])),
                ("flag".into(), Column::Boolean(vec![true, false, true])),
                ("type".into(), Column::Categorical { codes: vec![1, 0, -1], categories: vec!["B".into(), "T".into()], ordered: false }),
                ("note".into(), Column::Strings(vec!["a".into(), "é".into(), "".into()])),
            ],
            skipped: vec![],
        };
        let var = Frame { index: vec!["g1".into(), "g2".into()], columns: vec![], skipped: vec![] };
        let d = H5adOut {
            x: x.clone(),
            layers: vec![("counts".into(), x)],
            obs,
            var,
            obsm: vec![("X_scVI".into(), DenseOut { n_rows: 3, n_cols: 2, values: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6] })],
            varm: vec![],
            uns: vec![("note".into(), "hello".into())],
        };
        write(path, &d).unwrap();
        let back = h5ad::read(path, None).unwrap();
        assert_eq!(back.counts.indptr, vec![0, 1, 2, 4]);
        assert_eq!(back.counts.data, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(back.obs.index, vec!["c1", "c2", "c3"]);
        assert_eq!(back.obs.columns.len(), 4);
        match &back.obs.columns[2].1 {
            Column::Categorical { codes, categories, .. } => {
                assert_eq!(codes, &vec![1, 0, -1]);
                assert_eq!(categories, &vec!["B".to_string(), "T".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let extras = h5ad::read_extras(path, 3, 2, true, true, true).unwrap();
        assert_eq!(extras.layers.len(), 1);
        assert_eq!(extras.obsm[0].0, "X_scVI");
        assert_eq!(extras.obsm[0].1.values, vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        assert_eq!(extras.uns, vec![("note".to_string(), "hello".to_string())]);
        // A frame whose column is too short is refused before anything is written.
        let mut bad = d.clone();
        bad.obs.columns.push(("short".into(), Column::Numeric(vec![1.0])));
        assert!(write(path, &bad).unwrap_err().to_string().contains("obs column \"short\" has 1 values for 3 rows"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
