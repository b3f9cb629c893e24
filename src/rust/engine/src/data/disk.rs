//! Counts that stay on disk: the CSR matrix of an `.h5ad` file (X or a layer), or a dense 2-D
//! HDF5 dataset whose rows are cells (a dense `.h5ad` X, or R's HDF5Array, which stores a genes x
//! cells matrix with the cells as the dataset's rows), read in row ranges with HDF5 hyperslab
//! reads. Training and queries hold only per-cell summaries (library size,
//! the likelihood's lgamma constant) and per-gene statistics; minibatches are assembled from
//! shuffled blocks of consecutive cells on a background thread while the model trains.
//!
//! The same matrix can also be read once into memory ([`LoadedMatrix`]: its compressed rows in 4
//! to 8 bytes per nonzero) and then served the same way, block by block, without reading the file
//! again.

use super::counts::MAX_COUNT;
use crate::error::{Error, Result};
use hdf5::{Dataset, File};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

/// Consecutive cells read per HDF5 request when blocks are shuffled (training).
pub const SHUFFLE_BLOCK_CELLS: usize = 64;
/// Blocks pooled (and their cells shuffled together) before minibatches are cut from the pool.
pub const SHUFFLE_POOL_BLOCKS: usize = 256;
/// Nonzero entries per HDF5 request for sequential passes.
const SEQUENTIAL_NNZ: usize = 1 << 22;
/// Minibatches prepared ahead of the consumer.
const PREFETCH: usize = 4;

/// Rows of some cells, restricted to the model's genes (gene positions are the model's).
#[derive(Default, Debug, Clone)]
pub struct RowBlock {
    /// Cell indices (0-based, of the file) of the rows.
    pub cells: Vec<usize>,
    indptr: Vec<usize>,
    genes: Vec<i32>,
    values: Vec<f32>,
}

impl RowBlock {
    fn new() -> Self {
        RowBlock { indptr: vec![0], ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Model-gene positions and counts of the `i`-th row.
    pub fn row(&self, i: usize) -> (&[i32], &[f32]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.genes[a..b], &self.values[a..b])
    }

    /// Row pointers, gene positions and counts (as R's integers and doubles).
    pub fn to_csr(&self) -> (Vec<i32>, Vec<i32>, Vec<f64>) {
        (self.indptr.iter().map(|&p| p as i32).collect(), self.genes.clone(), self.values.iter().map(|&v| v as f64).collect())
    }

    fn push_row(&mut self, cell: usize, genes: impl Iterator<Item = (i32, f32)>) {
        for (g, v) in genes {
            self.genes.push(g);
            self.values.push(v);
        }
        self.cells.push(cell);
        self.indptr.push(self.genes.len());
    }

    fn push_from(&mut self, other: &RowBlock, i: usize) {
        let (g, v) = other.row(i);
        self.genes.extend_from_slice(g);
        self.values.extend_from_slice(v);
        self.cells.push(other.cells[i]);
        self.indptr.push(self.genes.len());
    }
}

/// Per-cell constants of the likelihood and the library, over the model's genes.
pub struct CellSummaries {
    pub lgamma_x1: Vec<f32>,
    pub library: Vec<f32>,
}

/// A count matrix on disk, seen through a gene selection: an `.h5ad` CSR group or dense
/// dataset, or a Cell Ranger HDF5 matrix group.
pub struct DiskCounts {
    path: String,
    /// "X" or "layers/<name>".
    location: String,
    /// Row pointers of the stored entries (for a dense dataset: `cell * n_file_genes`).
    indptr: Vec<u64>,
    /// A dense dataset rather than a CSR group.
    dense: bool,
    /// Consecutive cells per read when blocks are shuffled: 64, or for a chunked dense dataset
    /// its chunk's rows, so that each chunk is decompressed once per pass.
    block_cells: usize,
    n_file_genes: usize,
    /// File gene -> model gene position, or -1 when the gene is not used.
    gene_map: Vec<i32>,
    n_genes: usize,
    /// The matrix read into memory, served instead of the file.
    memory: Option<Arc<LoadedMatrix>>,
    /// [`DiskCounts::fingerprint`] of the file as opened.
    fingerprint: u64,
}

/// A count matrix read once from a file into memory: its cells' compressed rows, zeros left out,
/// every value checked as the file's are when read in blocks. Gene positions take 16 bits when
/// the file has at most 65,536 genes and counts take 16 bits while every count is below 65,536
/// (else 32 bits each), so a nonzero takes 4 to 8 bytes. [`DiskCounts::in_memory`] serves it with
/// the same blocks, in the same order, as the file.
pub struct LoadedMatrix {
    path: String,
    location: String,
    indptr: Vec<u64>,
    /// File gene position of each stored value.
    genes: Column<i32>,
    values: Column<f32>,
    n_file_genes: usize,
    /// The file's [`DiskCounts::fingerprint`] when it was read.
    fingerprint: u64,
}

/// Numbers kept in 16 bits when they fit, else at full width.
enum Column<W> {
    Narrow(Vec<u16>),
    Wide(Vec<W>),
}

impl<W: Copy> Column<W> {
    fn len(&self) -> usize {
        match self {
            Column::Narrow(v) => v.len(),
            Column::Wide(v) => v.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Column::Narrow(v) => v.len() * 2,
            Column::Wide(v) => v.len() * std::mem::size_of::<W>(),
        }
    }

    fn shrink_to_fit(&mut self) {
        match self {
            Column::Narrow(v) => v.shrink_to_fit(),
            Column::Wide(v) => v.shrink_to_fit(),
        }
    }
}

/// Appends `src` to `col`, widening it first when a value does not fit in 16 bits.
fn extend_column<W: Copy + From<u16>>(col: &mut Column<W>, src: &[W], fits: impl Fn(W) -> Option<u16>) {
    if let Column::Narrow(v) = col {
        if src.iter().all(|&x| fits(x).is_some()) {
            v.extend(src.iter().map(|&x| fits(x).unwrap_or_default()));
            return;
        }
        let mut wide: Vec<W> = Vec::with_capacity(v.capacity());
        wide.extend(v.iter().map(|&x| W::from(x)));
        *col = Column::Wide(wide);
    }
    if let Column::Wide(v) = col {
        v.extend_from_slice(src);
    }
}

/// Calls `f(gene, value)` for the stored entries `lo..hi`.
fn for_each_entry(genes: &Column<i32>, values: &Column<f32>, lo: usize, hi: usize, mut f: impl FnMut(i32, f32)) {
    use Column::{Narrow, Wide};
    match (genes, values) {
        (Narrow(g), Narrow(v)) => g[lo..hi].iter().zip(&v[lo..hi]).for_each(|(&g, &v)| f(g as i32, v as f32)),
        (Narrow(g), Wide(v)) => g[lo..hi].iter().zip(&v[lo..hi]).for_each(|(&g, &v)| f(g as i32, v)),
        (Wide(g), Narrow(v)) => g[lo..hi].iter().zip(&v[lo..hi]).for_each(|(&g, &v)| f(g, v as f32)),
        (Wide(g), Wide(v)) => g[lo..hi].iter().zip(&v[lo..hi]).for_each(|(&g, &v)| f(g, v)),
    }
}

impl LoadedMatrix {
    /// Reads the whole matrix at `location` of `path` (any matrix [`DiskCounts::open`] reads),
    /// first checking that it fits in the memory available.
    pub fn load(path: &str, location: &str) -> Result<Self> {
        let mut disk = DiskCounts::open(path, location, &[])?;
        let n_file_genes = disk.n_file_genes;
        disk.gene_map = (0..n_file_genes as i32).collect();
        disk.n_genes = n_file_genes;
        // A CSR matrix's stored entries bound the values kept; a dense one's zeros are left out.
        let bound = if disk.dense { None } else { Some(disk.nnz()) };
        let narrow_genes = n_file_genes <= 1 << 16;
        let need = bound.unwrap_or(0) as u128 * if narrow_genes { 4 } else { 6 } + disk.indptr.len() as u128 * 8;
        if let Some(avail) = crate::runtime::available_memory() {
            if need > avail as u128 {
                return Err(Error::Resource(format!(
                    "{path}: reading {location} into memory needs about {:.1} GB, but only {:.1} GB is available; \
                     leave it on disk with read_h5ad(path, backed = TRUE)",
                    need as f64 / 1e9,
                    avail as f64 / 1e9
                )));
            }
        }
        let cap = usize::try_from(bound.unwrap_or(0)).map_err(|_| Error::Resource(format!("{path}: {location} is too large to hold in memory")))?;
        let mut out = LoadedMatrix {
            path: path.to_string(),
            location: location.to_string(),
            indptr: Vec::with_capacity(disk.n_cells() + 1),
            genes: if narrow_genes { Column::Narrow(Vec::with_capacity(cap)) } else { Column::Wide(Vec::with_capacity(cap)) },
            values: Column::Narrow(Vec::with_capacity(cap)),
            n_file_genes,
            fingerprint: disk.fingerprint,
        };
        out.indptr.push(0);
        let narrow = |x: i32| u16::try_from(x).ok();
        // counts were checked to be integers in 0..=2^24 as they were read
        let narrow_count = |x: f32| (x < 65536.0).then_some(x as u16);
        disk.for_each_sequential(None, 4096, |b| {
            for i in 0..b.len() {
                let (g, v) = b.row(i);
                extend_column(&mut out.genes, g, narrow);
                extend_column(&mut out.values, v, narrow_count);
                out.indptr.push(out.genes.len() as u64);
            }
            crate::runtime::check_interrupt()
        })?;
        out.genes.shrink_to_fit();
        out.values.shrink_to_fit();
        Ok(out)
    }

    pub fn n_cells(&self) -> usize {
        self.indptr.len() - 1
    }

    pub fn n_file_genes(&self) -> usize {
        self.n_file_genes
    }

    /// Values kept (the nonzero counts).
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The file's fingerprint when it was read ([`DiskCounts::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }

    /// Bytes the matrix holds.
    pub fn bytes(&self) -> usize {
        self.indptr.len() * 8 + self.genes.bytes() + self.values.bytes()
    }

    /// Whether gene positions and counts are each held in 16 bits.
    pub fn narrow(&self) -> (bool, bool) {
        (matches!(self.genes, Column::Narrow(_)), matches!(self.values, Column::Narrow(_)))
    }
}

/// File gene -> model gene position (-1 when unused) for the file positions `genes`.
fn gene_map(n_file_genes: usize, genes: &[usize]) -> Result<Vec<i32>> {
    let mut gene_map = vec![-1i32; n_file_genes];
    for (pos, &gene) in genes.iter().enumerate() {
        if gene >= n_file_genes {
            return Err(Error::InvalidInput(format!("gene position {} is outside the file's {n_file_genes} genes", gene + 1)));
        }
        if gene_map[gene] >= 0 {
            return Err(Error::InvalidInput(format!("gene position {} is selected twice", gene + 1)));
        }
        gene_map[gene] = pos as i32;
    }
    Ok(gene_map)
}

/// A 64-bit hash of a matrix's shape, layout and row pointers (FNV-1a's constants, taken a
/// 64-bit word at a time): fixed, so that fingerprints saved with a handle or a model compare
/// equal under any later build.
fn layout_hash(n_file_genes: usize, dense: bool, indptr: &[u64]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |w: u64| h = (h ^ w).wrapping_mul(PRIME).rotate_left(23);
    eat(n_file_genes as u64);
    eat(dense as u64);
    eat(indptr.len() as u64);
    for &w in indptr {
        eat(w);
    }
    h
}

fn err(path: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{path}: {what}"))
}

fn open_matrix(path: &str, location: &str) -> Result<(File, Matrix)> {
    let file = super::super::io::h5ad::open(path)?;
    if let Ok(ds) = file.dataset(location) {
        return Ok((file, Matrix::Dense(ds)));
    }
    let g = file.group(location).map_err(|_| err(path, format!("no matrix {location}")))?;
    let indices = g.dataset("indices").map_err(|_| err(path, format!("{location} has no indices")))?;
    let data = g.dataset("data").map_err(|_| err(path, format!("{location} has no data")))?;
    Ok((file, Matrix::Sparse { group: g, indices, data }))
}

/// The stored matrix: a CSR group's entries, or a dense dataset, or the matrix read into memory.
enum Matrix {
    Sparse { group: hdf5::Group, indices: Dataset, data: Dataset },
    Dense(Dataset),
    Memory(Arc<LoadedMatrix>),
}

impl DiskCounts {
    /// Opens the matrix at `location` ("X" or "layers/<name>" of an `.h5ad`, or a Cell Ranger
    /// file's "matrix" group) and reads its row pointers.
    /// `genes` lists the file's gene positions (0-based) the model uses, in the model's order.
    pub fn open(path: &str, location: &str, genes: &[usize]) -> Result<Self> {
        let (_file, matrix) = open_matrix(path, location)?;
        let mut block_cells = SHUFFLE_BLOCK_CELLS;
        let (indptr, n_file_genes, dense) = match &matrix {
            Matrix::Dense(ds) => {
                let shape = ds.shape();
                if shape.len() != 2 {
                    return Err(err(path, format!("{location} is a {}-dimensional dataset; counts need a matrix", shape.len())));
                }
                let (n_cells, g) = (shape[0], shape[1]);
                if let Some(rows) = ds.chunk().and_then(|c| c.first().copied()) {
                    block_cells = rows.clamp(1, 4096);
                }
                ((0..=n_cells as u64).map(|i| i * g as u64).collect::<Vec<u64>>(), g, true)
            }
            Matrix::Sparse { group: g, indices, data } => {
                let enc = g
                    .attr("encoding-type")
                    .ok()
                    .and_then(|a| a.read_scalar::<hdf5::types::VarLenUnicode>().ok().map(|s| s.as_str().to_string()))
                    .or_else(|| {
                        g.attr("h5sparse_format")
                            .ok()
                            .and_then(|a| a.read_scalar::<hdf5::types::VarLenUnicode>().ok().map(|s| format!("{}_matrix", s.as_str())))
                    })
                    .unwrap_or_default();
                // Cell Ranger's HDF5 matrix (what HDF5Array's TENxMatrix reads): genes x cells in
                // CSC form, that is cells x genes in CSR form, with its shape as a dataset.
                let tenx = enc.is_empty() && g.dataset("barcodes").is_ok() && g.dataset("shape").is_ok();
                if enc != "csr_matrix" && !tenx {
                    return Err(err(
                        path,
                        format!(
                            "{location} is stored as {}; training from disk reads cells as rows and needs a csr_matrix (convert it in Python with adata.X = scipy.sparse.csr_matrix(adata.X), or read it into memory with read_h5ad())",
                            if enc.is_empty() { "an unknown encoding" } else { enc.as_str() }
                        ),
                    ));
                }
                let shape: Vec<i64> = if tenx {
                    g.dataset("shape").and_then(|d| d.read_raw::<i64>()).map_err(|_| err(path, format!("{location}/shape cannot be read")))?
                } else {
                    g.attr("shape").and_then(|a| a.read_raw::<i64>()).map_err(|_| err(path, format!("{location} has no shape attribute")))?
                };
                if shape.len() != 2 || shape[0] < 0 || shape[1] < 0 {
                    return Err(err(path, format!("{location} has a malformed shape {shape:?}")));
                }
                let (n_cells, n_file_genes) = if tenx { (shape[1] as usize, shape[0] as usize) } else { (shape[0] as usize, shape[1] as usize) };
                let indptr: Vec<u64> = g
                    .dataset("indptr")
                    .and_then(|d| d.read_raw::<i64>())
                    .map_err(|e| err(path, format!("{location}/indptr cannot be read ({e})")))?
                    .into_iter()
                    .map(|v| v.max(0) as u64)
                    .collect();
                if indptr.len() != n_cells + 1 || indptr[0] != 0 || indptr.windows(2).any(|w| w[1] < w[0]) {
                    return Err(err(path, format!("{location}/indptr is malformed: it must start at 0, never decrease and hold one entry per cell plus one")));
                }
                if data.size() != indices.size() || indptr[n_cells] as usize != data.size() {
                    return Err(err(path, format!("{location}: indptr, indices and data disagree in length")));
                }
                (indptr, n_file_genes, false)
            }
            // open_matrix() reads files only; a matrix in memory is served by in_memory()
            Matrix::Memory(m) => (m.indptr.clone(), m.n_file_genes, false),
        };
        let gene_map = gene_map(n_file_genes, genes)?;
        let fingerprint = layout_hash(n_file_genes, dense, &indptr);
        Ok(DiskCounts { path: path.to_string(), location: location.to_string(), indptr, dense, block_cells, n_file_genes, gene_map, n_genes: genes.len(), memory: None, fingerprint })
    }

    /// The matrix's layout as it was opened, hashed: its shape, whether it is dense, and the
    /// stored entries of every cell (its row pointers). A handle keeps the fingerprint its file
    /// had when it was opened and every later use compares it ([`DiskCounts::check_fingerprint`]),
    /// so a file rewritten or replaced under a handle, or under a model trained from one, is
    /// refused rather than read as if it held the cells it had. The same for a matrix read into
    /// memory as for its file; 16 hex digits, the same on every platform and build.
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }

    /// Opens the file again for a handle made earlier (or a model trained from one), whose
    /// fingerprint was `expected`: a missing or rewritten file is an error that says where the
    /// counts came from and what to do.
    pub fn reopen(path: &str, location: &str, genes: &[usize], expected: &str) -> Result<Self> {
        if !std::path::Path::new(path).exists() {
            return Err(err(
                path,
                "file not found: the handle, or the model trained from it, reads its counts from this file. \
                 Put the file back, or open the counts again (read_h5ad()) and give them as newdata",
            ));
        }
        let disk = DiskCounts::open(path, location, genes)?;
        disk.check_fingerprint(expected)?;
        Ok(disk)
    }

    /// An error naming the file when its fingerprint is not `expected` (no check when `expected`
    /// is empty: a handle saved before fingerprints were kept).
    pub fn check_fingerprint(&self, expected: &str) -> Result<()> {
        if expected.is_empty() || expected == self.fingerprint() {
            return Ok(());
        }
        Err(err(
            &self.path,
            format!(
                "{} changed since it was opened (it now holds {} cells x {} genes, {} stored values, laid out otherwise): \
                 the handle, or the model trained from it, no longer describes this file. Open the file again with \
                 read_h5ad() (and give it as newdata to a model's queries), or put back the file it was made from",
                self.location,
                self.n_cells(),
                self.n_file_genes,
                self.nnz()
            ),
        ))
    }

    /// The matrix `m` read into memory, seen through the gene selection `genes` (as in
    /// [`DiskCounts::open`]). Passes over it give the same blocks in the same order as passes over
    /// the file of a CSR matrix.
    pub fn in_memory(m: Arc<LoadedMatrix>, genes: &[usize]) -> Result<Self> {
        let gene_map = gene_map(m.n_file_genes, genes)?;
        Ok(DiskCounts {
            path: m.path.clone(),
            location: m.location.clone(),
            indptr: m.indptr.clone(),
            dense: false,
            block_cells: SHUFFLE_BLOCK_CELLS,
            n_file_genes: m.n_file_genes,
            gene_map,
            n_genes: genes.len(),
            fingerprint: m.fingerprint,
            memory: Some(m),
        })
    }

    /// Whether the matrix is served from memory.
    pub fn is_in_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub fn n_cells(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Genes the model sees.
    pub fn n_genes(&self) -> usize {
        self.n_genes
    }

    pub fn n_file_genes(&self) -> usize {
        self.n_file_genes
    }

    pub fn nnz(&self) -> u64 {
        self.indptr[self.n_cells()]
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the counts are a dense dataset (stored entries = cells x genes).
    pub fn is_dense(&self) -> bool {
        self.dense
    }

    fn reader(&self) -> Result<Reader<'_>> {
        if let Some(m) = &self.memory {
            return Ok(Reader { disk: self, _file: None, matrix: Matrix::Memory(m.clone()) });
        }
        let (file, matrix) = open_matrix(&self.path, &self.location)?;
        if matches!(matrix, Matrix::Dense(_)) != self.dense {
            return Err(err(&self.path, format!("{} changed since it was opened", self.location)));
        }
        Ok(Reader { disk: self, _file: Some(file), matrix })
    }

    /// Visits every cell in order, in row blocks of about 4M stored entries (all cells when
    /// `selected` is None).
    pub fn for_each_sequential(&self, selected: Option<&[bool]>, batch_size: usize, mut f: impl FnMut(&RowBlock) -> Result<()>) -> Result<()> {
        let n = self.n_cells();
        let bs = batch_size.max(1);
        self.produce(
            move |reader, send| {
                let mut out = RowBlock::new();
                let mut start = 0;
                while start < n {
                    let mut end = start + 1;
                    if self.dense {
                        // whole chunks of rows, as many as fit in one request
                        let step = self.block_cells;
                        let per = (SEQUENTIAL_NNZ / (step * self.n_file_genes.max(1))).max(1) * step;
                        end = ((start / step) * step + per).min(n);
                    } else {
                        while end < n && (self.indptr[end + 1] - self.indptr[start]) as usize <= SEQUENTIAL_NNZ {
                            end += 1;
                        }
                    }
                    let block = reader.read(start, end, selected)?;
                    for i in 0..block.len() {
                        out.push_from(&block, i);
                        if out.len() == bs && !send(std::mem::replace(&mut out, RowBlock::new())) {
                            return Ok(());
                        }
                    }
                    start = end;
                }
                if !out.is_empty() {
                    send(out);
                }
                Ok(())
            },
            &mut f,
        )
    }

    /// Visits the `selected` cells once in a shuffled order: blocks of consecutive cells in a
    /// random order, pooled and shuffled together, then cut into minibatches of `batch_size`
    /// (the remainder of a pool is carried into the next, so only the last minibatch is short).
    pub fn for_each_shuffled(&self, selected: &[bool], batch_size: usize, seed: u64, mut f: impl FnMut(&RowBlock) -> Result<()>) -> Result<()> {
        let n = self.n_cells();
        let bs = batch_size.max(1);
        self.produce(
            move |reader, send| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let size = self.block_cells;
                // pools of about the same number of cells whatever the block size
                let pool_blocks = (SHUFFLE_POOL_BLOCKS * SHUFFLE_BLOCK_CELLS / size).max(1);
                let mut blocks: Vec<usize> = (0..n.div_ceil(size)).collect();
                blocks.shuffle(&mut rng);
                let mut carry = RowBlock::new();
                for group in blocks.chunks(pool_blocks) {
                    let mut pool = RowBlock::new();
                    for &b in group {
                        let start = b * size;
                        let block = reader.read(start, (start + size).min(n), Some(selected))?;
                        for i in 0..block.len() {
                            pool.push_from(&block, i);
                        }
                    }
                    let mut order: Vec<usize> = (0..pool.len()).collect();
                    order.shuffle(&mut rng);
                    for i in order {
                        carry.push_from(&pool, i);
                        if carry.len() == bs && !send(std::mem::replace(&mut carry, RowBlock::new())) {
                            return Ok(());
                        }
                    }
                }
                if !carry.is_empty() {
                    send(carry);
                }
                Ok(())
            },
            &mut f,
        )
    }

    /// Runs `producer` on a background thread (its own HDF5 handles) and `consume` on this one;
    /// minibatches cross a bounded channel. An error of either side ends both.
    fn produce<P>(&self, producer: P, consume: &mut dyn FnMut(&RowBlock) -> Result<()>) -> Result<()>
    where
        P: FnOnce(&Reader<'_>, &mut dyn FnMut(RowBlock) -> bool) -> Result<()> + Send,
    {
        let (tx, rx) = sync_channel::<RowBlock>(PREFETCH);
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || -> Result<()> {
                let reader = self.reader()?;
                let mut send = |b: RowBlock| tx.send(b).is_ok();
                producer(&reader, &mut send)
            });
            let mut consumer_result = Ok(());
            for block in rx.iter() {
                if let Err(e) = consume(&block) {
                    consumer_result = Err(e);
                    break;
                }
            }
            drop(rx); // a producer blocked on a full channel sees the receiver gone and stops
            let producer_result = handle.join().unwrap_or_else(|_| Err(Error::Resource("the thread reading the .h5ad file stopped unexpectedly".into())));
            consumer_result.and(producer_result)
        })
    }

    /// Library sizes and lgamma(x + 1) sums over the model's genes, and a check of every stored
    /// value (finite, non-negative integers below 2^24), in one sequential pass.
    pub fn summaries(&self) -> Result<CellSummaries> {
        let n = self.n_cells();
        let mut s = CellSummaries { lgamma_x1: Vec::with_capacity(n), library: Vec::with_capacity(n) };
        self.for_each_sequential(None, 4096, |b| {
            for i in 0..b.len() {
                let (_, vals) = b.row(i);
                let mut lib = 0f64;
                let mut lg = 0f64;
                for &v in vals {
                    lib += v as f64;
                    lg += super::lgamma_x1(v as f64);
                }
                s.library.push(lib as f32);
                s.lgamma_x1.push(lg as f32);
            }
            crate::runtime::check_interrupt()
        })?;
        Ok(s)
    }

    /// Per batch and gene (model genes), the sum and the sum of squares of the counts, each
    /// count first clipped at `clip[batch * n_genes + gene]` when given (seurat_v3's second pass).
    pub fn gene_sums(&self, batch_codes: &[i32], n_batches: usize, clip: Option<&[f64]>) -> Result<(Vec<f64>, Vec<f64>)> {
        let g = self.n_genes;
        if batch_codes.len() != self.n_cells() {
            return Err(Error::InvalidInput("one batch code per cell is needed".into()));
        }
        if batch_codes.iter().any(|&b| b < 0 || b as usize >= n_batches) {
            return Err(Error::InvalidInput("a batch code is outside the batches".into()));
        }
        if clip.is_some_and(|c| c.len() != n_batches * g) {
            return Err(Error::InvalidInput("one clipping value per batch and gene is needed".into()));
        }
        let mut sum = vec![0f64; n_batches * g];
        let mut sq = vec![0f64; n_batches * g];
        self.for_each_sequential(None, 4096, |b| {
            for i in 0..b.len() {
                let off = batch_codes[b.cells[i]] as usize * g;
                let (genes, vals) = b.row(i);
                for (&gene, &v) in genes.iter().zip(vals) {
                    let k = off + gene as usize;
                    let v = match clip {
                        Some(c) => (v as f64).min(c[k]),
                        None => v as f64,
                    };
                    sum[k] += v;
                    sq[k] += v * v;
                }
            }
            crate::runtime::check_interrupt()
        })?;
        Ok((sum, sq))
    }

    /// The rows of `cells` (any order; repeats allowed), as a genes-in-model CSR block.
    pub fn read_cells(&self, cells: &[usize]) -> Result<RowBlock> {
        let n = self.n_cells();
        if let Some(&c) = cells.iter().find(|&&c| c >= n) {
            return Err(Error::InvalidInput(format!("cell {} is outside the file's {n} cells", c + 1)));
        }
        let reader = self.reader()?;
        let mut sorted: Vec<usize> = cells.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        // Runs of nearby cells are read in one request.
        let mut rows: std::collections::HashMap<usize, usize> = Default::default();
        let mut all = RowBlock::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            while j < sorted.len() && sorted[j] - sorted[j - 1] <= 8 && sorted[j] - sorted[i] < 4096 {
                j += 1;
            }
            let (start, end) = (sorted[i], sorted[j - 1] + 1);
            let block = reader.read(start, end, None)?;
            for &c in &sorted[i..j] {
                let k = c - start;
                rows.insert(c, all.len());
                all.push_from(&block, k);
            }
            i = j;
        }
        let mut out = RowBlock::new();
        for &c in cells {
            out.push_from(&all, rows[&c]);
        }
        Ok(out)
    }
}

/// HDF5 handles of one thread (none for a matrix in memory).
struct Reader<'a> {
    disk: &'a DiskCounts,
    _file: Option<File>,
    matrix: Matrix,
}

impl Reader<'_> {
    /// Cells `start..end` (those `selected`, when given), genes mapped to the model's, values
    /// checked.
    fn read(&self, start: usize, end: usize, selected: Option<&[bool]>) -> Result<RowBlock> {
        let d = self.disk;
        let ctx = |e: hdf5::Error| err(&d.path, format!("{} cannot be read ({e})", d.location));
        let check = |cell: usize, v: f32| -> Result<()> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && (v as f64) <= MAX_COUNT {
                return Ok(());
            }
            Err(err(
                &d.path,
                format!("{}: cell {} holds the value {v}; scVI models raw UMI counts (finite, non-negative integers up to 2^24)", d.location, cell + 1),
            ))
        };
        let mut out = RowBlock::new();
        match &self.matrix {
            Matrix::Sparse { indices, data, .. } => {
                let (a, b) = (d.indptr[start] as usize, d.indptr[end] as usize);
                let idx = indices.read_slice_1d::<i64, _>(a..b).map_err(ctx)?.into_raw_vec_and_offset().0;
                let val = data.read_slice_1d::<f32, _>(a..b).map_err(ctx)?.into_raw_vec_and_offset().0;
                for cell in start..end {
                    if selected.is_some_and(|s| !s[cell]) {
                        continue;
                    }
                    let (lo, hi) = (d.indptr[cell] as usize - a, d.indptr[cell + 1] as usize - a);
                    for k in lo..hi {
                        let g = idx[k];
                        if g < 0 || g as usize >= d.n_file_genes {
                            return Err(err(&d.path, format!("{}: cell {} has a gene index ({g}) outside its {} genes", d.location, cell + 1, d.n_file_genes)));
                        }
                        check(cell, val[k])?;
                    }
                    out.push_row(
                        cell,
                        (lo..hi).filter_map(|k| {
                            let m = d.gene_map[idx[k] as usize];
                            (m >= 0 && val[k] != 0.0).then_some((m, val[k]))
                        }),
                    );
                }
            }
            Matrix::Memory(m) => {
                // checked and stripped of zeros when read into memory
                for cell in start..end {
                    if selected.is_some_and(|s| !s[cell]) {
                        continue;
                    }
                    let (lo, hi) = (m.indptr[cell] as usize, m.indptr[cell + 1] as usize);
                    for_each_entry(&m.genes, &m.values, lo, hi, |g, v| {
                        let g = d.gene_map[g as usize];
                        if g >= 0 {
                            out.genes.push(g);
                            out.values.push(v);
                        }
                    });
                    out.cells.push(cell);
                    out.indptr.push(out.genes.len());
                }
            }
            Matrix::Dense(ds) => {
                let val = ds.read_slice_2d::<f32, _>((start..end, ..)).map_err(ctx)?.into_raw_vec_and_offset().0;
                let g = d.n_file_genes;
                for cell in start..end {
                    if selected.is_some_and(|s| !s[cell]) {
                        continue;
                    }
                    let row = &val[(cell - start) * g..(cell - start + 1) * g];
                    for &v in row {
                        if v != 0.0 {
                            check(cell, v)?;
                        }
                    }
                    out.push_row(
                        cell,
                        row.iter().enumerate().filter_map(|(j, &v)| {
                            let m = d.gene_map[j];
                            (m >= 0 && v != 0.0).then_some((m, v))
                        }),
                    );
                }
            }
        }
        Ok(out)
    }
}
