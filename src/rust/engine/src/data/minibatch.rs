//! Minibatches: the one place where counts become dense. Besides the dense block, a minibatch
//! carries its nonzero entries (positions and values) so that the likelihood can evaluate the
//! expensive count-dependent terms (lgamma, x log mu) on nonzeros only.
//!
//! A CPU minibatch collects its nonzeros once, as the encoders' host rows ([`HostRows`], each
//! cell's in gene order). The fused likelihood and the sparse first layer read those rows; the
//! nonzeros as tensors and the dense log1p counts, which only the tensor paths read, are formed
//! from them on first use.

use super::counts::Counts;
use super::covariates::Covariates;
use super::disk::{CellSummaries, RowBlock};
use crate::nn::sparse_input::HostRows;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Counts below this get ln(1 + k) from a table.
const LOG1P_TABLE: usize = 1024;

pub struct Minibatch {
    /// Dense counts, cells x genes, f32.
    pub x: Tensor,
    /// log1p of the dense counts (the encoder's input): formed from the host rows on first use
    /// when the minibatch has them, built with the minibatch otherwise.
    x_log1p: OnceLock<Tensor>,
    /// log of the observed library size, cells x 1.
    pub log_library: Tensor,
    /// Batch code of every cell (0-based), i64.
    pub batch_index: Tensor,
    /// The nonzero entries as tensors: formed like `x_log1p`.
    nonzeros: OnceLock<NonzeroTensors>,
    /// Sum over the cell's genes of lgamma(x + 1): a constant of the likelihood, per cell.
    pub lgamma_x1: Tensor,
    /// Label codes (zeros without labels), i64.
    pub labels: Tensor,
    /// Codes of each extra categorical covariate, i64.
    pub categorical: Vec<Tensor>,
    /// Continuous covariates, cells x k, f32.
    pub continuous: Option<Tensor>,
    /// log of the size factors, cells x 1.
    pub log_size_factor: Option<Tensor>,
    /// A minified model's stored q(z | x): means and variances, cells x n_latent.
    pub latent: Option<(Tensor, Tensor)>,
    pub n_cells: usize,
    /// The nonzeros on the host, each cell's in gene order: the encoders' sparse first layer and
    /// the fused likelihood read them (CPU minibatches whose cells list each gene at most once).
    rows: Option<HostRows>,
}

/// A minibatch's nonzero entries as tensors, in cell order, on the minibatch's device.
struct NonzeroTensors {
    /// Flat position (row * n_genes + gene), i64.
    flat: Tensor,
    /// Row within the minibatch, i64.
    row: Tensor,
    /// Gene, i64.
    gene: Tensor,
    /// Value, f32.
    x: Tensor,
}

impl NonzeroTensors {
    fn new(nz: &Nonzeros, device: Device) -> Self {
        NonzeroTensors {
            flat: Tensor::from_slice(&nz.flat).to_device(device),
            row: Tensor::from_slice(&nz.row).to_device(device),
            gene: Tensor::from_slice(&nz.gene).to_device(device),
            x: Tensor::from_slice(&nz.x).to_device(device),
        }
    }

    fn of_rows(rows: &HostRows) -> Self {
        let mut nz = Nonzeros::default();
        nz.extend_rows(&rows.row_ptr, &rows.gene, &rows.x, rows.n_genes);
        Self::new(&nz, Device::Cpu)
    }

    fn empty(device: Device) -> Self {
        let none = |kind| Tensor::zeros([0], (kind, device));
        NonzeroTensors { flat: none(Kind::Int64), row: none(Kind::Int64), gene: none(Kind::Int64), x: none(Kind::Float) }
    }
}

impl Minibatch {
    /// log1p of the dense counts, cells x genes, f32.
    pub fn x_log1p(&self) -> &Tensor {
        self.x_log1p.get_or_init(|| {
            let rows = self.rows.as_ref().expect("a minibatch without dense log1p counts has host rows");
            dense_rows(&rows.row_ptr, &rows.gene, &rows.log1p, rows.n_genes)
        })
    }

    /// The nonzeros on the host, each cell's in gene order (see [`HostRows`]).
    pub fn rows(&self) -> Option<&HostRows> {
        self.rows.as_ref()
    }

    /// Drops the host rows, so that every path takes the tensor forms (formed first).
    pub fn drop_host_rows(&mut self) {
        self.x_log1p();
        self.nonzeros();
        self.rows = None;
    }

    fn nonzeros(&self) -> &NonzeroTensors {
        self.nonzeros.get_or_init(|| NonzeroTensors::of_rows(self.rows.as_ref().expect("a minibatch without nonzero tensors has host rows")))
    }

    /// Flat position (row * n_genes + gene) of each nonzero entry, i64.
    pub fn nz_flat(&self) -> &Tensor {
        &self.nonzeros().flat
    }

    /// Row of each nonzero entry within the minibatch, i64.
    pub fn nz_row(&self) -> &Tensor {
        &self.nonzeros().row
    }

    /// Gene of each nonzero entry, i64.
    pub fn nz_gene(&self) -> &Tensor {
        &self.nonzeros().gene
    }

    /// Value of each nonzero entry, f32.
    pub fn nz_x(&self) -> &Tensor {
        &self.nonzeros().x
    }
}

/// A minibatch's nonzeros for [`HostRows`], each cell's in gene order (sorted here when the
/// source lists them otherwise, so that sums over them do not depend on the source's order).
struct SparseBuild {
    row_ptr: Vec<usize>,
    gene: Vec<u32>,
    x: Vec<f32>,
    log1p: Vec<f32>,
    repeated: bool,
}

impl SparseBuild {
    fn with_capacity(cells: usize) -> Self {
        let row_ptr = Vec::with_capacity(cells + 1);
        SparseBuild { row_ptr, gene: Vec::new(), x: Vec::new(), log1p: Vec::new(), repeated: false }
    }

    /// Appends one cell's nonzeros: `(gene, x, log1p)` for each of the row's `len` stored entries
    /// that `entry` does not skip (None: an explicit zero).
    #[inline(always)]
    fn push_cell(&mut self, len: usize, mut entry: impl FnMut(usize) -> Option<(u32, f32, f32)>) {
        let start = self.gene.len();
        self.row_ptr.push(start);
        for v in [&mut self.x, &mut self.log1p] {
            v.reserve(len);
        }
        self.gene.reserve(len);
        let (genes, xs, logs) = (self.gene.spare_capacity_mut(), self.x.spare_capacity_mut(), self.log1p.spare_capacity_mut());
        let mut n = 0;
        for i in 0..len {
            if let Some((g, x, l)) = entry(i) {
                genes[n].write(g);
                xs[n].write(x);
                logs[n].write(l);
                n += 1;
            }
        }
        // SAFETY: the first n spare elements of each vector were written above (n <= len, which
        // was reserved).
        unsafe {
            self.gene.set_len(start + n);
            self.x.set_len(start + n);
            self.log1p.set_len(start + n);
        }
        if self.gene[start..].windows(2).any(|w| w[0] >= w[1]) {
            self.sort_cell(start);
        }
    }

    fn sort_cell(&mut self, start: usize) {
        let mut order: Vec<usize> = (start..self.gene.len()).collect();
        order.sort_by_key(|&k| self.gene[k]);
        let (gene, x, log1p): (Vec<u32>, Vec<f32>, Vec<f32>) =
            (order.iter().map(|&k| self.gene[k]).collect(), order.iter().map(|&k| self.x[k]).collect(), order.iter().map(|&k| self.log1p[k]).collect());
        self.repeated |= gene.windows(2).any(|w| w[0] == w[1]);
        self.gene[start..].copy_from_slice(&gene);
        self.x[start..].copy_from_slice(&x);
        self.log1p[start..].copy_from_slice(&log1p);
    }

    /// Appends the cells of `other` (built for the cells that follow this one's).
    fn append(&mut self, other: SparseBuild) {
        let shift = self.gene.len();
        self.row_ptr.extend(other.row_ptr.iter().map(|&p| p + shift));
        self.gene.extend_from_slice(&other.gene);
        self.x.extend_from_slice(&other.x);
        self.log1p.extend_from_slice(&other.log1p);
        self.repeated |= other.repeated;
    }

    /// The host rows, or the build back when a cell lists a gene twice (the dense paths then
    /// apply: [`SparseBuild::into_tensor_form`]).
    fn finish(mut self, n_genes: usize) -> Result<HostRows, SparseBuild> {
        self.row_ptr.push(self.gene.len());
        if self.repeated {
            return Err(self);
        }
        Ok(HostRows::new(n_genes, self.row_ptr, self.gene, self.x, self.log1p))
    }

    /// A finished build's nonzeros in cell order and its dense log1p counts (cells x `n_genes`),
    /// a repeated gene's last value in the dense block as the dense counts have it.
    fn into_tensor_form(self, n_genes: usize) -> (Nonzeros, Tensor) {
        let mut nz = Nonzeros::default();
        nz.extend_rows(&self.row_ptr, &self.gene, &self.x, n_genes);
        (nz, dense_rows(&self.row_ptr, &self.gene, &self.log1p, n_genes))
    }
}

/// The cells x `n_genes` f32 block of rows given as CSR, entries written in order (a repeated
/// gene keeps its last value).
fn dense_rows(row_ptr: &[usize], gene: &[u32], values: &[f32], n_genes: usize) -> Tensor {
    let cells = row_ptr.len() - 1;
    let mut dense = vec![0f32; cells * n_genes];
    for c in 0..cells {
        for k in row_ptr[c]..row_ptr[c + 1] {
            dense[c * n_genes + gene[k] as usize] = values[k];
        }
    }
    Tensor::from_slice(&dense).view([cells as i64, n_genes as i64])
}

/// Builds minibatches from CSR counts; per-cell constants are computed once.
pub struct MinibatchBuilder<'a> {
    /// In-memory counts; None when rows arrive as blocks read from disk.
    counts: Option<Counts<'a>>,
    n_genes: usize,
    batch_codes: &'a [i32],
    covariates: Covariates<'a>,
    device: Device,
    lgamma_x1: Vec<f32>,
    log_library: Vec<f32>,
    /// ln(1 + k) for the small integer counts k that make up almost every nonzero.
    log1p_small: Vec<f32>,
    /// Reused host buffers for the nonzero tensors of minibatches without host rows (the host
    /// rows a CPU minibatch carries are its own, allocated per minibatch).
    nz: Nonzeros,
}

/// A minibatch's nonzero entries as the tensor paths read them (host buffers).
#[derive(Default)]
struct Nonzeros {
    flat: Vec<i64>,
    row: Vec<i64>,
    gene: Vec<i64>,
    x: Vec<f32>,
}

impl Nonzeros {
    fn clear(&mut self) {
        self.flat.clear();
        self.row.clear();
        self.gene.clear();
        self.x.clear();
    }

    fn append(&mut self, other: &Nonzeros) {
        self.flat.extend_from_slice(&other.flat);
        self.row.extend_from_slice(&other.row);
        self.gene.extend_from_slice(&other.gene);
        self.x.extend_from_slice(&other.x);
    }

    /// Appends rows given as CSR (`row_ptr` over `gene` and `x`), numbered from 0.
    fn extend_rows(&mut self, row_ptr: &[usize], gene: &[u32], x: &[f32], n_genes: usize) {
        for c in 0..row_ptr.len() - 1 {
            let r = row_ptr[c]..row_ptr[c + 1];
            self.flat.extend(gene[r.clone()].iter().map(|&j| (c * n_genes + j as usize) as i64));
            self.row.extend(std::iter::repeat(c as i64).take(r.len()));
            self.gene.extend(gene[r.clone()].iter().map(|&j| j as i64));
            self.x.extend_from_slice(&x[r]);
        }
    }
}

/// Minibatches are built in parts of at least this many cells on libtorch's threads, each part
/// filling its own range of cells.
const CELLS_PER_PART: usize = 32;

impl<'a> MinibatchBuilder<'a> {
    pub fn new(counts: Counts<'a>, batch_codes: &'a [i32], covariates: &Covariates<'a>, device: Device) -> Self {
        let n = counts.n_cells();
        let mut lgamma_x1 = Vec::with_capacity(n);
        let mut log_library = Vec::with_capacity(n);
        for c in 0..n {
            let (_, vals) = counts.cell(c);
            lgamma_x1.push(vals.iter().map(|&v| super::lgamma_x1(v)).sum::<f64>() as f32);
            // A minified model's cells carry their observed library size instead of counts.
            let library = covariates.latent.map_or_else(|| vals.iter().sum::<f64>(), |p| p.library[c]);
            log_library.push(library.ln() as f32);
        }
        Self::with_constants(Some(counts), counts.n_genes(), batch_codes, covariates, device, lgamma_x1, log_library)
    }

    /// A builder for rows that arrive as blocks (counts on disk), from the per-cell summaries
    /// computed in one pass over the file.
    pub fn from_summaries(n_genes: usize, summaries: &CellSummaries, batch_codes: &'a [i32], covariates: &Covariates<'a>, device: Device) -> Self {
        let log_library = summaries.library.iter().map(|&l| l.ln()).collect();
        Self::with_constants(None, n_genes, batch_codes, covariates, device, summaries.lgamma_x1.clone(), log_library)
    }

    fn with_constants(
        counts: Option<Counts<'a>>,
        n_genes: usize,
        batch_codes: &'a [i32],
        covariates: &Covariates<'a>,
        device: Device,
        lgamma_x1: Vec<f32>,
        log_library: Vec<f32>,
    ) -> Self {
        MinibatchBuilder {
            counts,
            n_genes,
            batch_codes,
            covariates: covariates.clone(),
            device,
            lgamma_x1,
            log_library,
            log1p_small: (0..LOG1P_TABLE).map(|k| (k as f64).ln_1p() as f32).collect(),
            nz: Nonzeros::default(),
        }
    }

    pub fn n_genes(&self) -> usize {
        self.n_genes
    }

    /// The minibatch of `cells` (in-memory counts).
    pub fn build(&mut self, cells: &[usize]) -> Minibatch {
        let counts = self.counts.expect("a builder over in-memory counts");
        self.build_rows(cells, |i| counts.cell(cells[i]))
    }

    /// The minibatch of a block of rows read from disk.
    pub fn build_block(&mut self, block: &RowBlock) -> Minibatch {
        self.build_rows(&block.cells, |i| block.row(i))
    }

    fn build_rows<'r, V: Copy + Into<f64> + Sync + 'r>(&mut self, cells: &[usize], row_of: impl Fn(usize) -> (&'r [i32], &'r [V]) + Sync) -> Minibatch {
        let g = self.n_genes;
        let b = cells.len();
        // The dense blocks are written in place in zeroed CPU tensors (no host copy to transfer).
        // A CPU minibatch collects its nonzeros as host rows only, and the dense log1p counts are
        // formed from them when a tensor path asks; other minibatches build both now.
        let cpu = (Kind::Float, Device::Cpu);
        let host = self.device == Device::Cpu;
        let x = Tensor::zeros([b as i64, g as i64], cpu);
        let x_log1p = (!host).then(|| Tensor::zeros([b as i64, g as i64], cpu));
        let dense = DenseTargets { x: x.data_ptr() as usize, log1p: x_log1p.as_ref().map(|t| t.data_ptr() as usize), n_genes: g };
        self.nz.clear();
        let parts = crate::runtime::parts_for(b / CELLS_PER_PART);
        let table = &self.log1p_small;
        let sparse = if parts == 1 {
            let mut sparse = host.then(|| SparseBuild::with_capacity(b));
            // SAFETY: x (and x_log1p) are fresh contiguous b x g f32 tensors; all rows are this
            // part's.
            unsafe { fill_rows(0..b, &row_of, &dense, table, &mut self.nz, sparse.as_mut()) };
            sparse
        } else {
            // Each part fills its own cells' dense rows and collects their nonzeros, joined
            // below in cell order: the same minibatch as one part builds.
            let slots: Vec<std::sync::Mutex<Option<(Nonzeros, Option<SparseBuild>)>>> = (0..parts).map(|_| Default::default()).collect();
            let part = |k: usize| {
                let rows = b * k / parts..b * (k + 1) / parts;
                let mut nz = Nonzeros::default();
                let mut sparse = host.then(|| SparseBuild::with_capacity(rows.len()));
                // SAFETY: as above; the parts' ranges of rows are disjoint.
                unsafe { fill_rows(rows, &row_of, &dense, table, &mut nz, sparse.as_mut()) };
                *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = Some((nz, sparse));
            };
            crate::runtime::parallel_parts(parts, &part);
            let mut sparse = host.then(|| SparseBuild::with_capacity(b));
            for slot in slots {
                let (nz, part_sparse) = slot.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every part ran");
                self.nz.append(&nz);
                if let (Some(s), Some(p)) = (sparse.as_mut(), part_sparse) {
                    s.append(p);
                }
            }
            sparse
        };
        let dev = self.device;
        let (host_rows, nonzeros, x_log1p) = match sparse.map(|s| s.finish(g)) {
            Some(Ok(rows)) => (Some(rows), OnceLock::new(), OnceLock::new()),
            Some(Err(repeated)) => {
                let (nz, log1p) = repeated.into_tensor_form(g);
                (None, OnceLock::from(NonzeroTensors::new(&nz, dev)), OnceLock::from(log1p))
            }
            None => (None, OnceLock::from(NonzeroTensors::new(&self.nz, dev)), OnceLock::from(x_log1p.expect("built without host rows").to_device(dev))),
        };
        let lg: Vec<f32> = cells.iter().map(|&c| self.lgamma_x1[c]).collect();
        let ll: Vec<f32> = cells.iter().map(|&c| self.log_library[c]).collect();
        let bi: Vec<i64> = cells.iter().map(|&c| self.batch_codes[c] as i64).collect();
        let cov = &self.covariates;
        let pick_i = |codes: &[i32]| Tensor::from_slice(&cells.iter().map(|&c| codes[c] as i64).collect::<Vec<i64>>()).to_device(dev);
        let labels = match cov.labels {
            Some(l) => pick_i(l),
            None => Tensor::zeros([b as i64], (tch::Kind::Int64, dev)),
        };
        let categorical = cov.categorical.iter().map(|c| pick_i(c)).collect();
        let continuous = (!cov.continuous.is_empty()).then(|| {
            let k = cov.continuous.len();
            let mut v = Vec::with_capacity(b * k);
            for &c in cells {
                v.extend(cov.continuous.iter().map(|col| col[c] as f32));
            }
            Tensor::from_slice(&v).view([b as i64, k as i64]).to_device(dev)
        });
        let log_size_factor = cov.size_factor.map(|s| {
            let v: Vec<f32> = cells.iter().map(|&c| s[c].ln() as f32).collect();
            Tensor::from_slice(&v).view([b as i64, 1]).to_device(dev)
        });
        let latent = cov.latent.map(|p| {
            let k = p.n_latent;
            let rows = |v: &[f64]| {
                let mut out = Vec::with_capacity(b * k);
                for &c in cells {
                    out.extend(v[c * k..(c + 1) * k].iter().map(|&x| x as f32));
                }
                Tensor::from_slice(&out).view([b as i64, k as i64]).to_device(dev)
            };
            (rows(p.mean), rows(p.var))
        });
        Minibatch {
            labels,
            categorical,
            continuous,
            log_size_factor,
            latent,
            x: x.to_device(dev),
            x_log1p,
            log_library: Tensor::from_slice(&ll).view([b as i64, 1]).to_device(dev),
            batch_index: Tensor::from_slice(&bi).to_device(dev),
            nonzeros,
            lgamma_x1: Tensor::from_slice(&lg).to_device(dev),
            n_cells: b,
            rows: host_rows,
        }
    }
}

/// Where a minibatch's dense counts and log1p counts are written: the data of contiguous
/// cells x genes f32 tensors (no log1p block when the nonzeros go to host rows).
struct DenseTargets {
    x: usize,
    log1p: Option<usize>,
    n_genes: usize,
}

/// ln(1 + v) in f32, from the table for small integer counts.
#[inline(always)]
fn log1p_count(v: f64, table: &[f32]) -> f32 {
    // A saturating conversion: negative, fractional, large and NaN values take ln_1p.
    let k = v as i32;
    if k >= 0 && (k as usize) < table.len() && k as f64 == v {
        table[k as usize]
    } else {
        v.ln_1p() as f32
    }
}

/// Writes the minibatch rows `rows` (row i holds `row_of(i)`) into the dense targets and appends
/// their nonzeros, in row order, to `sparse` (the host rows) when given, else to `nz` (and the
/// dense log1p block).
///
/// # Safety
/// The targets must be contiguous f32 buffers of at least `rows.end * n_genes` elements, zeroed,
/// and no other thread may touch these rows while this runs.
unsafe fn fill_rows<'r, V: Copy + Into<f64> + 'r>(
    rows: std::ops::Range<usize>,
    row_of: &impl Fn(usize) -> (&'r [i32], &'r [V]),
    dense: &DenseTargets,
    log1p_small: &[f32],
    nz: &mut Nonzeros,
    sparse: Option<&mut SparseBuild>,
) {
    let g = dense.n_genes;
    let span = (rows.end - rows.start) * g;
    let x = std::slice::from_raw_parts_mut((dense.x as *mut f32).add(rows.start * g), span);
    match sparse {
        Some(s) => {
            for row in rows.clone() {
                let (genes, vals) = row_of(row);
                let x_row = &mut x[(row - rows.start) * g..(row - rows.start + 1) * g];
                s.push_cell(genes.len().min(vals.len()), |i| {
                    let v: f64 = vals[i].into();
                    if v == 0.0 {
                        return None; // explicit zeros stored in the sparse matrix
                    }
                    let gene = genes[i] as usize;
                    x_row[gene] = v as f32;
                    Some((gene as u32, v as f32, log1p_count(v, log1p_small)))
                });
            }
        }
        None => {
            let x_log1p = std::slice::from_raw_parts_mut((dense.log1p.expect("a dense log1p block") as *mut f32).add(rows.start * g), span);
            for row in rows.clone() {
                let (genes, vals) = row_of(row);
                for (&gene, &v) in genes.iter().zip(vals) {
                    let v: f64 = v.into();
                    if v == 0.0 {
                        continue;
                    }
                    let flat = row * g + gene as usize;
                    let local = flat - rows.start * g;
                    x[local] = v as f32;
                    x_log1p[local] = log1p_count(v, log1p_small);
                    nz.flat.push(flat as i64);
                    nz.row.push(row as i64);
                    nz.gene.push(gene as i64);
                    nz.x.push(v as f32);
                }
            }
        }
    }
}

impl Minibatch {
    /// The covariates (batch, labels, categorical, continuous) of the rows `rows` (repeats
    /// allowed), for decoding posterior samples of those cells. The count fields are left empty:
    /// the result must not reach a likelihood.
    pub fn covariate_rows(&self, rows: &Tensor) -> Minibatch {
        let empty = || Tensor::zeros([0], (Kind::Float, self.x.device()));
        Minibatch {
            x: empty(),
            x_log1p: OnceLock::from(empty()),
            log_library: self.log_library.index_select(0, rows),
            batch_index: self.batch_index.index_select(0, rows),
            nonzeros: OnceLock::from(NonzeroTensors::empty(self.x.device())),
            lgamma_x1: empty(),
            labels: self.labels.index_select(0, rows),
            categorical: self.categorical.iter().map(|c| c.index_select(0, rows)).collect(),
            continuous: self.continuous.as_ref().map(|c| c.index_select(0, rows)),
            log_size_factor: self.log_size_factor.as_ref().map(|s| s.index_select(0, rows)),
            latent: self.latent.as_ref().map(|(m, v)| (m.index_select(0, rows), v.index_select(0, rows))),
            n_cells: rows.size()[0] as usize,
            rows: None,
        }
    }
}

/// One-hot encoding of codes (cells) into `n` columns, f32.
pub fn one_hot(codes: &Tensor, n: i64) -> Tensor {
    codes.one_hot(n).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::SparseBuild;

    /// ln(1 + x), computed at run time.
    fn l(x: f32) -> f32 {
        std::hint::black_box(x).ln_1p()
    }

    /// One cell's entries (gene, x; zero x for an explicit zero) into the build.
    fn cell(s: &mut SparseBuild, entries: &[(u32, f32)]) {
        s.push_cell(entries.len(), |i| {
            let (g, x) = entries[i];
            (x != 0.0).then(|| (g, x, l(x)))
        });
    }

    /// Cells listed out of gene order (as rows read from disk in another gene order arrive) are
    /// put in gene order with their values, and explicit zeros are left out; a repeated gene
    /// leaves the minibatch to the tensor paths, with the nonzeros in cell order and the dense
    /// log1p block holding the repeated gene's last value, as the dense counts do.
    #[test]
    fn host_rows_are_in_gene_order_and_refuse_repeated_genes() {
        let mut s = SparseBuild::with_capacity(2);
        cell(&mut s, &[(5, 1.0), (2, 3.0), (7, 0.0), (9, 2.0)]);
        cell(&mut s, &[(0, 4.0)]);
        let rows = s.finish(10).ok().expect("no repeated gene");
        assert_eq!(rows.row_ptr, [0, 3, 4]);
        assert_eq!(rows.gene, [2, 5, 9, 0]);
        assert_eq!(rows.x, [3.0, 1.0, 2.0, 4.0]);
        assert_eq!(rows.log1p, [l(3.0), l(1.0), l(2.0), l(4.0)]);

        let mut s = SparseBuild::with_capacity(2);
        cell(&mut s, &[(1, 2.0)]);
        cell(&mut s, &[(3, 1.0), (1, 5.0), (3, 6.0)]);
        let (nz, log1p) = s.finish(4).err().expect("a repeated gene").into_tensor_form(4);
        assert_eq!(nz.flat, [1, 5, 7, 7]);
        assert_eq!(nz.row, [0, 1, 1, 1]);
        assert_eq!(nz.gene, [1, 1, 3, 3]);
        assert_eq!(nz.x, [2.0, 5.0, 1.0, 6.0]);
        let dense: Vec<f32> = Vec::try_from(&log1p.reshape([-1])).unwrap();
        assert_eq!(dense, [0.0, l(2.0), 0.0, 0.0, 0.0, l(5.0), 0.0, l(6.0)]);
    }

    /// Parts built for consecutive cells join into the rows one build gives, and a repeated gene
    /// in any part still sends the minibatch to the tensor paths.
    #[test]
    fn parts_join_in_cell_order() {
        let genes = |g: &[u32]| g.iter().map(|&g| (g, (g + 1) as f32)).collect::<Vec<_>>();
        let (mut whole, mut first, mut second) = (SparseBuild::with_capacity(3), SparseBuild::with_capacity(1), SparseBuild::with_capacity(2));
        for (i, g) in [&[1u32, 4][..], &[7, 2], &[0]].into_iter().enumerate() {
            cell(&mut whole, &genes(g));
            cell(if i == 0 { &mut first } else { &mut second }, &genes(g));
        }
        first.append(second);
        let (a, b) = (whole.finish(8).ok().unwrap(), first.finish(8).ok().unwrap());
        assert_eq!((&a.row_ptr, &a.gene, &a.x, &a.log1p), (&b.row_ptr, &b.gene, &b.x, &b.log1p));
        assert_eq!(b.row_ptr, [0, 2, 4, 5]);

        let (mut first, mut second) = (SparseBuild::with_capacity(1), SparseBuild::with_capacity(1));
        cell(&mut first, &genes(&[1, 2]));
        cell(&mut second, &genes(&[5, 3, 5]));
        first.append(second);
        assert!(first.finish(8).is_err());
    }

    /// ln(1 + v) from the table for small whole counts, computed otherwise.
    #[test]
    fn log1p_of_counts() {
        let table: Vec<f32> = (0..super::LOG1P_TABLE).map(|k| (k as f64).ln_1p() as f32).collect();
        for v in [1.0, 2.0, 1023.0, 1024.0, 1e6, 2.5, 0.25, -0.5, 3e9, 1e300] {
            assert_eq!(super::log1p_count(v, &table), (v as f64).ln_1p() as f32, "at {v}");
        }
        assert!(super::log1p_count(f64::NAN, &table).is_nan());
    }
}
