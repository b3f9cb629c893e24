//! Minibatches: the one place where counts become dense. Besides the dense block, a minibatch
//! carries its nonzero entries (positions and values) so that the likelihood can evaluate the
//! expensive count-dependent terms (lgamma, x log mu) on nonzeros only.

use super::counts::Counts;
use super::covariates::Covariates;
use super::disk::{CellSummaries, RowBlock};
use crate::nn::sparse_input::HostRows;
use tch::{Device, Kind, Tensor};

/// Counts below this get ln(1 + k) from a table.
const LOG1P_TABLE: usize = 1024;

pub struct Minibatch {
    /// Dense counts, cells x genes, f32.
    pub x: Tensor,
    /// log1p of the dense counts (the encoder's input), built on the host from the nonzeros.
    pub x_log1p: Tensor,
    /// log of the observed library size, cells x 1.
    pub log_library: Tensor,
    /// Batch code of every cell (0-based), i64.
    pub batch_index: Tensor,
    /// Flat position (row * n_genes + gene) of each nonzero entry, i64.
    pub nz_flat: Tensor,
    /// Row of each nonzero entry within the minibatch, i64.
    pub nz_row: Tensor,
    /// Gene of each nonzero entry, i64.
    pub nz_gene: Tensor,
    /// Value of each nonzero entry, f32.
    pub nz_x: Tensor,
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
    /// The nonzeros on the host, for the encoders' sparse first layer (CPU minibatches whose
    /// cells list each gene at most once).
    pub rows: Option<HostRows>,
}

/// A minibatch's nonzeros for [`HostRows`], each cell's in gene order (sorted here when the
/// source lists them otherwise, so that sums over them do not depend on the source's order).
struct SparseBuild {
    row_ptr: Vec<usize>,
    gene: Vec<u32>,
    x: Vec<f32>,
    log1p: Vec<f32>,
    sorted: bool,
    repeated: bool,
}

impl SparseBuild {
    fn with_capacity(cells: usize) -> Self {
        let row_ptr = Vec::with_capacity(cells + 1);
        SparseBuild { row_ptr, gene: Vec::new(), x: Vec::new(), log1p: Vec::new(), sorted: true, repeated: false }
    }

    fn start_cell(&mut self) {
        self.row_ptr.push(self.gene.len());
        self.sorted = true;
    }

    fn push(&mut self, gene: u32, x: f32, log1p: f32) {
        let start = *self.row_ptr.last().unwrap();
        if self.gene.len() > start && self.gene[self.gene.len() - 1] >= gene {
            self.sorted = false;
        }
        self.gene.push(gene);
        self.x.push(x);
        self.log1p.push(log1p);
    }

    fn end_cell(&mut self) {
        if self.sorted {
            return;
        }
        let start = *self.row_ptr.last().unwrap();
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

    /// None when a cell lists a gene twice (the dense path then applies).
    fn finish(mut self, n_genes: usize) -> Option<HostRows> {
        self.row_ptr.push(self.gene.len());
        (!self.repeated).then(|| HostRows::new(n_genes, self.row_ptr, self.gene, self.x, self.log1p))
    }
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
    // Reused host buffers for the nonzero tensors (the host rows a CPU minibatch carries for the
    // sparse first layer are its own, allocated per minibatch).
    /// ln(1 + k) for the small integer counts k that make up almost every nonzero.
    log1p_small: Vec<f32>,
    nz: Nonzeros,
}

/// A minibatch's nonzero entries as the likelihood reads them (host buffers).
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
        let cpu = (Kind::Float, Device::Cpu);
        let x = Tensor::zeros([b as i64, g as i64], cpu);
        let x_log1p = Tensor::zeros([b as i64, g as i64], cpu);
        let dense = DenseTargets { x: x.data_ptr() as usize, log1p: x_log1p.data_ptr() as usize, n_genes: g };
        let host = self.device == Device::Cpu;
        self.nz.clear();
        let parts = crate::runtime::parts_for(b / CELLS_PER_PART);
        let table = &self.log1p_small;
        let sparse = if parts == 1 {
            let mut sparse = host.then(|| SparseBuild::with_capacity(b));
            // SAFETY: x and x_log1p are fresh contiguous b x g f32 tensors; all rows are this part's.
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
        let lg: Vec<f32> = cells.iter().map(|&c| self.lgamma_x1[c]).collect();
        let ll: Vec<f32> = cells.iter().map(|&c| self.log_library[c]).collect();
        let bi: Vec<i64> = cells.iter().map(|&c| self.batch_codes[c] as i64).collect();
        let host_rows = sparse.and_then(|s| s.finish(g));
        let dev = self.device;
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
            x_log1p: x_log1p.to_device(dev),
            log_library: Tensor::from_slice(&ll).view([b as i64, 1]).to_device(dev),
            batch_index: Tensor::from_slice(&bi).to_device(dev),
            nz_flat: Tensor::from_slice(&self.nz.flat).to_device(dev),
            nz_row: Tensor::from_slice(&self.nz.row).to_device(dev),
            nz_gene: Tensor::from_slice(&self.nz.gene).to_device(dev),
            nz_x: Tensor::from_slice(&self.nz.x).to_device(dev),
            lgamma_x1: Tensor::from_slice(&lg).to_device(dev),
            n_cells: b,
            rows: host_rows,
        }
    }
}

/// Where a minibatch's dense counts and log1p counts are written: the data of two contiguous
/// cells x genes f32 tensors.
struct DenseTargets {
    x: usize,
    log1p: usize,
    n_genes: usize,
}

/// Writes the minibatch rows `rows` (row i holds `row_of(i)`) into the dense targets and appends
/// their nonzeros to `nz` (and to `sparse`, the encoders' host rows), in row order.
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
    mut sparse: Option<&mut SparseBuild>,
) {
    let g = dense.n_genes;
    let span = (rows.end - rows.start) * g;
    let (x, x_log1p) = (
        std::slice::from_raw_parts_mut((dense.x as *mut f32).add(rows.start * g), span),
        std::slice::from_raw_parts_mut((dense.log1p as *mut f32).add(rows.start * g), span),
    );
    for row in rows.clone() {
        let (genes, vals) = row_of(row);
        if let Some(s) = sparse.as_deref_mut() {
            s.start_cell();
        }
        for (&gene, &v) in genes.iter().zip(vals) {
            let v: f64 = v.into();
            if v == 0.0 {
                continue; // explicit zeros stored in the sparse matrix
            }
            let flat = row * g + gene as usize;
            let local = flat - rows.start * g;
            x[local] = v as f32;
            let k = v as usize;
            let l = if k as f64 == v && k < LOG1P_TABLE { log1p_small[k] } else { v.ln_1p() as f32 };
            x_log1p[local] = l;
            if let Some(s) = sparse.as_deref_mut() {
                s.push(gene as u32, v as f32, l);
            }
            nz.flat.push(flat as i64);
            nz.row.push(row as i64);
            nz.gene.push(gene as i64);
            nz.x.push(v as f32);
        }
        if let Some(s) = sparse.as_deref_mut() {
            s.end_cell();
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
            x_log1p: empty(),
            log_library: self.log_library.index_select(0, rows),
            batch_index: self.batch_index.index_select(0, rows),
            nz_flat: empty(),
            nz_row: empty(),
            nz_gene: empty(),
            nz_x: empty(),
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

    /// Cells listed out of gene order (as rows read from disk in another gene order arrive) are
    /// put in gene order with their values; a repeated gene leaves the minibatch to the dense path.
    #[test]
    fn host_rows_are_in_gene_order_and_refuse_repeated_genes() {
        let mut s = SparseBuild::with_capacity(2);
        s.start_cell();
        for (g, x) in [(5u32, 1.0f32), (2, 3.0), (9, 2.0)] {
            s.push(g, x, x.ln_1p());
        }
        s.end_cell();
        s.start_cell();
        s.push(0, 4.0, 4f32.ln_1p());
        s.end_cell();
        let rows = s.finish(10).expect("no repeated gene");
        assert_eq!(rows.row_ptr, [0, 3, 4]);
        assert_eq!(rows.gene, [2, 5, 9, 0]);
        assert_eq!(rows.x, [3.0, 1.0, 2.0, 4.0]);
        assert_eq!(rows.log1p, [3f32.ln_1p(), 1f32.ln_1p(), 2f32.ln_1p(), 4f32.ln_1p()]);

        let mut s = SparseBuild::with_capacity(1);
        s.start_cell();
        for g in [3u32, 1, 3] {
            s.push(g, 1.0, 1f32.ln_1p());
        }
        s.end_cell();
        assert!(s.finish(10).is_none());
    }

    /// Parts built for consecutive cells join into the rows one build gives, and a repeated gene
    /// in any part still sends the minibatch to the dense path.
    #[test]
    fn parts_join_in_cell_order() {
        let cell = |s: &mut SparseBuild, genes: &[u32]| {
            s.start_cell();
            for &g in genes {
                s.push(g, (g + 1) as f32, ((g + 1) as f32).ln_1p());
            }
            s.end_cell();
        };
        let (mut whole, mut first, mut second) = (SparseBuild::with_capacity(3), SparseBuild::with_capacity(1), SparseBuild::with_capacity(2));
        for (i, genes) in [&[1u32, 4][..], &[7, 2], &[0]].into_iter().enumerate() {
            cell(&mut whole, genes);
            cell(if i == 0 { &mut first } else { &mut second }, genes);
        }
        first.append(second);
        let (a, b) = (whole.finish(8).unwrap(), first.finish(8).unwrap());
        assert_eq!((&a.row_ptr, &a.gene, &a.x, &a.log1p), (&b.row_ptr, &b.gene, &b.x, &b.log1p));
        assert_eq!(b.row_ptr, [0, 2, 4, 5]);

        let (mut first, mut second) = (SparseBuild::with_capacity(1), SparseBuild::with_capacity(1));
        cell(&mut first, &[1, 2]);
        cell(&mut second, &[5, 3, 5]);
        first.append(second);
        assert!(first.finish(8).is_none());
    }
}
