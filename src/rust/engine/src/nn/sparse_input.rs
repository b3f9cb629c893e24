//! The encoders' first Linear layer as a sparse product (CPU).
//!
//! The encoders read a minibatch's log1p counts, about 10% of whose entries are nonzero in
//! single-cell data; as a dense product the first layer (genes -> hidden) and its weight
//! gradient were the largest matrix products of a training step. Here the product runs over the
//! nonzeros only: y[c, :] = sum over cell c's nonzeros (g, v) of v W[:, g].
//!
//! libtorch cannot be given a backward function from Rust, so the weight gradient is finished
//! by hand: the product enters the graph as a leaf that requires a gradient, and after
//! `backward()` the trainer calls [`finish_backward`], which adds dL/dW = (dL/dy)^T X, again over
//! the nonzeros, into the weight's `.grad`. That needs `.grad` to exist already, so the first
//! training step of a fresh model takes the dense path; products without gradient tracking
//! (inference, validation) are always sparse, so a model gives the same bits before and after
//! saving.
//!
//! The decoder's linear heads use the same hand-off when the engine runs their products
//! (`distributions::fused::Target::Linear`): a minibatch's rows carry both kinds of pending
//! gradient, and the trainer finishes them together.

use crate::distributions::fastmath::MulAdd;
use crate::simd::{self, Simd};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Minibatches with at least this many output entries (cells x hidden) are split across
/// libtorch's threads.
const PARALLEL_OUTPUTS: usize = 1 << 13;

/// A CPU minibatch's nonzero counts, in cell order: cell c's are `row_ptr[c]..row_ptr[c + 1]`.
pub struct HostRows {
    pub n_genes: usize,
    pub row_ptr: Vec<usize>,
    pub gene: Vec<u32>,
    pub x: Vec<f32>,
    pub log1p: Vec<f32>,
    /// Products whose weight gradient is still to be added after backward.
    deferred: Mutex<Vec<Deferred>>,
}

enum Deferred {
    /// A sparse first layer: its output leaf, weight and input values.
    Sparse { leaf: Tensor, weight: Tensor, log1p: bool },
    /// Decoder heads with one input (`distributions::fused::Target::Linear`): dL/dW = grad^T
    /// (u input) and dL/db = grad^T u, with u the gradient of the per-cell zero leaf `probe`.
    Heads { probe: Tensor, input: Tensor, heads: Vec<DeferredHead> },
}

/// A decoder head's cells x genes gradient and its parameters, for [`finish_backward`].
pub(crate) struct DeferredHead {
    pub grad: Tensor,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// The encoders' input as nonzeros: `log1p` picks ln(1 + x) (scvi-tools' `log_variational`)
/// instead of the counts.
#[derive(Clone, Copy)]
pub struct SparseInput<'a> {
    pub rows: &'a HostRows,
    pub log1p: bool,
}

impl HostRows {
    /// Rows from cell-ordered nonzeros; `row_ptr` has one more entry than there are cells.
    pub fn new(n_genes: usize, row_ptr: Vec<usize>, gene: Vec<u32>, x: Vec<f32>, log1p: Vec<f32>) -> HostRows {
        assert!(!row_ptr.is_empty() && row_ptr[0] == 0 && row_ptr.windows(2).all(|w| w[0] <= w[1]), "row_ptr must rise from 0");
        let n = *row_ptr.last().unwrap();
        assert!(gene.len() == n && x.len() == n && log1p.len() == n, "one gene and value per nonzero");
        assert!(gene.iter().all(|&g| (g as usize) < n_genes), "genes in range");
        HostRows { n_genes, row_ptr, gene, x, log1p, deferred: Mutex::new(Vec::new()) }
    }

    pub fn n_cells(&self) -> usize {
        self.row_ptr.len() - 1
    }

    /// Registers decoder heads' gradients for [`finish_backward`]: `probe` (one zero per cell,
    /// added to the heads' surrogate) gives u.
    pub(crate) fn defer_heads(&self, probe: &Tensor, input: &Tensor, heads: Vec<DeferredHead>) {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner()).push(Deferred::Heads { probe: probe.shallow_clone(), input: input.detach(), heads });
    }

    fn values(&self, log1p: bool) -> &[f32] {
        if log1p { &self.log1p } else { &self.x }
    }
}

/// x W^T over the nonzeros (cells x out), for a weight (out x genes): None when the dense path
/// must run instead (not a CPU float weight of this width, or gradients are tracked for a weight
/// that has no `.grad` yet). When gradients are tracked for the weight, the result is a leaf
/// whose gradient [`finish_backward`] turns into the weight's.
pub fn linear(input: SparseInput<'_>, weight: &Tensor) -> Option<Tensor> {
    if weight.size().get(1).copied() != Some(input.rows.n_genes as i64) {
        return None;
    }
    genes_product(input, weight)
}

/// The product of a layer whose input is the genes followed by covariates' one-hot columns
/// (`cats`, cells x k; the encoders' first layer with `encode_covariates`): x W_genes^T over the
/// nonzeros plus cats W_cov^T, for a weight (out x (genes + k)). The genes' part is
/// [`linear`]'s (its weight gradient left to [`finish_backward`]); the covariates' part is an
/// ordinary product, whose gradient autograd gives. With `frozen_genes` (a query model's
/// frozen first layer), the genes' columns get no gradient. None as for [`linear`].
pub fn linear_with_covariates(input: SparseInput<'_>, weight: &Tensor, cats: &Tensor, frozen_genes: bool) -> Option<Tensor> {
    let (g, k) = (input.rows.n_genes as i64, cats.size().get(1).copied()?);
    if weight.size().get(1).copied() != Some(g + k) || cats.size()[0] != input.rows.n_cells() as i64 {
        return None;
    }
    let genes = if frozen_genes { genes_product(input, &weight.detach())? } else { genes_product(input, weight)? };
    Some(genes + cats.to_kind(Kind::Float).matmul(&weight.narrow(1, g, k).tr()))
}

/// x W_genes^T over the nonzeros, W_genes being the first `n_genes` columns of the weight (out x
/// columns, columns >= genes; the caller adds what the other columns give); see [`linear`].
pub(crate) fn genes_product(input: SparseInput<'_>, weight: &Tensor) -> Option<Tensor> {
    let rows = input.rows;
    let size = weight.size();
    let tracked = needs_grad(weight);
    let usable = weight.device() == Device::Cpu
        && weight.kind() == Kind::Float
        && size.len() == 2
        && size[1] as usize >= rows.n_genes
        && (!tracked || weight.grad().defined());
    if !usable {
        return None;
    }
    let (b, h, g, stride) = (rows.n_cells(), size[0] as usize, rows.n_genes, size[1] as usize);
    let weight_c = weight.detach().contiguous();
    let cpu = (Kind::Float, Device::Cpu);
    // W^T (genes x out), every entry written below: each nonzero then reads one contiguous row.
    let wt = Tensor::empty([g as i64, h as i64], cpu);
    let out = Tensor::zeros([b as i64, h as i64], cpu);
    let (wp, tp, op) = (weight_c.data_ptr() as usize, wt.data_ptr() as usize, out.data_ptr() as usize);
    let values = rows.values(input.log1p);
    let level = Simd::detect();
    let parts = if g * h >= PARALLEL_OUTPUTS * 8 { crate::runtime::parts_for(g.div_ceil(TILE)) } else { 1 };
    let transpose = |k: usize| {
        let (t0, t1) = (g.div_ceil(TILE) * k / parts, g.div_ceil(TILE) * (k + 1) / parts);
        let (g0, g1) = (t0 * TILE, (t1 * TILE).min(g));
        // SAFETY: the weight holds h x stride floats, wt g x h; each part writes its own genes'
        // rows.
        unsafe {
            let w = std::slice::from_raw_parts(wp as *const f32, h * stride);
            let t = std::slice::from_raw_parts_mut((tp as *mut f32).add(g0 * h), (g1 - g0) * h);
            transpose_genes(level, w, h, stride, g, g0, g1, t);
        }
    };
    crate::runtime::parallel_parts(parts, &transpose);
    let parts = if b * h >= PARALLEL_OUTPUTS { crate::runtime::parts_for(b) } else { 1 };
    let part = |k: usize| {
        let (c0, c1) = (b * k / parts, b * (k + 1) / parts);
        // SAFETY: wt holds genes x h floats, out b x h; each part writes its own cells' rows.
        unsafe {
            let w = std::slice::from_raw_parts(tp as *const f32, g * h);
            let o = std::slice::from_raw_parts_mut((op as *mut f32).add(c0 * h), (c1 - c0) * h);
            simd::run(level, Forward { rows, values, first_cell: c0, w, out: o, h });
        }
    };
    crate::runtime::parallel_parts(parts, &part);
    if tracked {
        let leaf = out.set_requires_grad(true);
        rows.deferred.lock().unwrap_or_else(|e| e.into_inner()).push(Deferred::Sparse {
            leaf: leaf.shallow_clone(),
            weight: weight.shallow_clone(),
            log1p: input.log1p,
        });
        Some(leaf)
    } else {
        Some(out)
    }
}

/// Whether autograd would record a product with this weight: it requires a gradient and
/// gradients are being tracked (probed with an operation on a one-element tensor).
fn needs_grad(weight: &Tensor) -> bool {
    weight.requires_grad() && grad_mode()
}

/// Whether libtorch records operations for autograd on this thread (off inside `tch::no_grad`),
/// probed with an operation on a one-element tensor: tch does not expose the flag.
pub(crate) fn grad_mode() -> bool {
    thread_local! {
        static PROBE: Tensor = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    }
    PROBE.with(|p| p.g_add_scalar(0.0).requires_grad())
}

/// Adds the weight gradients of this minibatch's sparse products and deferred decoder heads, once
/// `backward()` has given their outputs' gradients. Products that did not reach the loss are
/// skipped.
pub fn finish_backward(rows: &HostRows) {
    let pending = std::mem::take(&mut *rows.deferred.lock().unwrap_or_else(|e| e.into_inner()));
    // Each part's gene-ordered nonzeros, kept for the next product when its genes and values are
    // the same (the z and library encoders read the same input).
    let mut cache = GeneOrder::default();
    for d in pending {
        let d = match d {
            Deferred::Sparse { leaf, weight, log1p } => SparseProduct { leaf, weight, log1p },
            Deferred::Heads { probe, input, heads } => {
                finish_heads(&probe, &input, &heads);
                continue;
            }
        };
        let gy = d.leaf.grad();
        if gy.defined() {
            add_weight_gradient(SparseInput { rows, log1p: d.log1p }, &gy, &d.weight, &mut cache);
        }
    }
}

/// Each parallel part's gene-ordered nonzeros (first gene, end, log1p, nonzeros), reused by the
/// next weight gradient over the same genes and values.
#[derive(Default)]
pub(crate) struct GeneOrder(Vec<Mutex<Option<(usize, usize, bool, ByGene)>>>);

/// Adds dL/dW = gy^T X, over the nonzeros of `input`, into the `.grad` of `weight` (out x
/// genes, or out x columns whose first are the genes': only those get this gradient), for the
/// gradient `gy` (cells x out) of the product x W^T; nothing when the weight has no `.grad`.
pub(crate) fn add_weight_gradient(input: SparseInput<'_>, gy: &Tensor, weight: &Tensor, cache: &mut GeneOrder) {
    let (rows, log1p) = (input.rows, input.log1p);
    let gw = weight.grad();
    if !gw.defined() {
        return;
    }
    let gy = gy.to_kind(Kind::Float).contiguous();
    let (b, h, g) = (rows.n_cells(), gy.size()[1] as usize, rows.n_genes);
    let stride = gw.size().get(1).copied().unwrap_or(0) as usize;
    assert!(gy.size() == [b as i64, h as i64] && gw.size()[0] == h as i64 && stride >= g, "gradient shapes");
    // Written in place: the weight's own `.grad` (contiguous, as the optimiser keeps it) or a
    // contiguous copy added back.
    let target = if gw.is_contiguous() && gw.kind() == Kind::Float { gw.shallow_clone() } else { gw.to_kind(Kind::Float).contiguous() };
    let values = rows.values(log1p);
    let (yp, wp) = (gy.data_ptr() as usize, target.data_ptr() as usize);
    let level = Simd::detect();
    let tiles = g.div_ceil(TILE);
    let parts = if g * h >= PARALLEL_OUTPUTS * 8 { crate::runtime::parts_for(tiles) } else { 1 };
    if cache.0.len() < parts {
        cache.0.resize_with(parts, Default::default);
    }
    let cache = &cache.0;
    let part = |k: usize| {
        let (t0, t1) = (tiles * k / parts, tiles * (k + 1) / parts);
        let (first, end) = (t0 * TILE, (t1 * TILE).min(g));
        // Each part orders by gene only the nonzeros of its own genes.
        let mut slot = cache[k].lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(&*slot, Some((f, e, l, _)) if (*f, *e, *l) == (first, end, log1p)) {
            *slot = Some((first, end, log1p, ByGene::new(rows, values, first, end)));
        }
        let cols = &slot.as_ref().expect("filled above").3;
        // SAFETY: gy holds b x h floats and the target h x stride; each part writes only the
        // columns of its own tiles of genes.
        unsafe {
            let y = std::slice::from_raw_parts(yp as *const f32, b * h);
            let w = std::slice::from_raw_parts_mut(wp as *mut f32, h * stride);
            simd::run(level, Backward { cols, gy: y, gw: w, h, stride, g, tiles: (t0, t1) });
        }
    };
    crate::runtime::parallel_parts(parts, &part);
    if target.data_ptr() != gw.data_ptr() {
        let mut gw = gw;
        tch::no_grad(|| {
            let _ = gw.copy_(&target);
        });
    }
}

struct SparseProduct {
    leaf: Tensor,
    weight: Tensor,
    log1p: bool,
}

/// Decoder heads' weight and bias gradients, grad^T (u input) and grad^T u, added into their
/// `.grad` (skipped when the heads did not reach the loss).
fn finish_heads(probe: &Tensor, input: &Tensor, heads: &[DeferredHead]) {
    let u = probe.grad();
    if u.defined() {
        add_head_gradients(input, &u, heads);
    }
}

/// Adds the decoder heads' weight and bias gradients grad^T (u input) and grad^T u into their
/// `.grad`, for heads reading `input` (cells x hidden) whose outputs' gradients are u (cells)
/// times each head's `grad` (cells x genes).
pub(crate) fn add_head_gradients(input: &Tensor, u: &Tensor, heads: &[DeferredHead]) {
    tch::no_grad(|| {
        let scaled = input * u.unsqueeze(1);
        for h in heads {
            let gw = h.weight.grad();
            if gw.defined() {
                let target = if gw.is_contiguous() && gw.kind() == Kind::Float { gw.shallow_clone() } else { gw.to_kind(Kind::Float).contiguous() };
                if !crate::gemm::add_transposed_product(&target, &h.grad, &scaled) {
                    let _ = target.shallow_clone().addmm_(&h.grad.tr(), &scaled);
                }
                if target.data_ptr() != gw.data_ptr() {
                    let _ = gw.shallow_clone().copy_(&target);
                }
            }
            if let Some(gb) = h.bias.as_ref().map(Tensor::grad).filter(Tensor::defined) {
                let _ = gb.shallow_clone().g_add_(&h.grad.tr().mv(&u));
            }
        }
    });
}

/// Genes per tile of the transpositions.
const TILE: usize = 16;

/// Rows g0..g1 of W^T (genes x h) from the genes' columns of W (h rows of `stride` >= g floats,
/// the genes' first), in blocks of 16 genes x 16 outputs: each
/// block's 16 lines of W are read before any is written out, so that many cache lines are in
/// flight at once (W usually comes from the last-level cache, just updated by the optimiser),
/// and the block is transposed in registers with AVX-512 where the CPU has it.
fn transpose_genes(level: Simd, w: &[f32], h: usize, stride: usize, g: usize, g0: usize, g1: usize, out: &mut [f32]) {
    assert!(g0 <= g1 && g1 <= g && g <= stride && w.len() >= h * stride && out.len() >= (g1 - g0) * h, "transpose bounds");
    let mut block = [[0f32; TILE]; TILE];
    for t0 in (g0..g1).step_by(TILE) {
        let gw = (g1 - t0).min(TILE);
        for o0 in (0..h).step_by(TILE) {
            let ow = (h - o0).min(TILE);
            #[cfg(target_arch = "x86_64")]
            if level == Simd::Avx512 && gw == TILE && ow == TILE {
                // SAFETY: `level` was detected on this CPU; the block's 16 rows of 16 genes of W
                // and 16 rows of 16 outputs of `out` are in bounds (asserted above).
                unsafe { crate::gemm::transpose16(w.as_ptr().add(o0 * stride + t0), stride, TILE, out.as_mut_ptr().add((t0 - g0) * h + o0), h, 0xffff) };
                continue;
            }
            for (r, row) in block.iter_mut().enumerate().take(ow) {
                row[..gw].copy_from_slice(&w[(o0 + r) * stride + t0..(o0 + r) * stride + t0 + gw]);
            }
            for j in 0..gw {
                let dst = &mut out[(t0 - g0 + j) * h + o0..(t0 - g0 + j) * h + o0 + ow];
                for (r, v) in dst.iter_mut().enumerate() {
                    *v = block[r][j];
                }
            }
        }
    }
}

/// The nonzeros of genes `first..end`, ordered by gene (cells in order within a gene): gene j's
/// are `col_ptr[j - first]..col_ptr[j - first + 1]`.
struct ByGene {
    first: usize,
    col_ptr: Vec<usize>,
    cell: Vec<u32>,
    value: Vec<f32>,
}

impl ByGene {
    /// From the rows' nonzeros and their values (`values[k]` is nonzero k's).
    fn new(rows: &HostRows, values: &[f32], first: usize, end: usize) -> ByGene {
        let mut col_ptr = vec![0usize; end - first + 1];
        for &j in &rows.gene {
            let j = j as usize;
            if (first..end).contains(&j) {
                col_ptr[j - first + 1] += 1;
            }
        }
        for j in 0..end - first {
            col_ptr[j + 1] += col_ptr[j];
        }
        let n = col_ptr[end - first];
        let mut next = col_ptr.clone();
        let (mut cell, mut value) = (vec![0u32; n], vec![0f32; n]);
        for c in 0..rows.n_cells() {
            for k in rows.row_ptr[c]..rows.row_ptr[c + 1] {
                let j = rows.gene[k] as usize;
                if (first..end).contains(&j) {
                    let p = &mut next[j - first];
                    (cell[*p], value[*p]) = (c as u32, values[k]);
                    *p += 1;
                }
            }
        }
        ByGene { first, col_ptr, cell, value }
    }
}

struct Forward<'a> {
    rows: &'a HostRows,
    values: &'a [f32],
    first_cell: usize,
    w: &'a [f32],
    out: &'a mut [f32],
    h: usize,
}

impl simd::Kernel for Forward<'_> {
    type Output = ();

    #[inline(always)]
    fn run<M: MulAdd>(self) {
        let h = self.h;
        for (i, row) in self.out.chunks_exact_mut(h).enumerate() {
            let c = self.first_cell + i;
            for k in self.rows.row_ptr[c]..self.rows.row_ptr[c + 1] {
                let (g, v) = (self.rows.gene[k] as usize, self.values[k]);
                let w = &self.w[g * h..(g + 1) * h];
                for (o, &wj) in row.iter_mut().zip(w) {
                    *o = M::mul_add(v, wj, *o);
                }
            }
        }
    }
}

struct Backward<'a> {
    /// The nonzeros of this part's genes.
    cols: &'a ByGene,
    gy: &'a [f32],
    /// dL/dW (h rows of `stride` floats, the genes' columns first), added to.
    gw: &'a mut [f32],
    h: usize,
    stride: usize,
    g: usize,
    /// The range of tiles of genes this part writes.
    tiles: (usize, usize),
}

impl simd::Kernel for Backward<'_> {
    type Output = ();

    #[inline(always)]
    fn run<M: MulAdd>(self) {
        let (h, g, stride) = (self.h, self.g, self.stride);
        // One tile of dL/dW^T (TILE genes x h), summed over the tile's nonzeros in cell order,
        // then added into dL/dW column-wise.
        let mut tile = vec![0f32; TILE * h];
        for t in self.tiles.0..self.tiles.1 {
            let (t0, t1) = (t * TILE, ((t + 1) * TILE).min(g));
            tile.fill(0.0);
            for j in t0..t1 {
                let acc = &mut tile[(j - t0) * h..(j - t0 + 1) * h];
                let local = j - self.cols.first;
                for p in self.cols.col_ptr[local]..self.cols.col_ptr[local + 1] {
                    let (c, v) = (self.cols.cell[p] as usize, self.cols.value[p]);
                    for (a, &y) in acc.iter_mut().zip(&self.gy[c * h..(c + 1) * h]) {
                        *a = M::mul_add(v, y, *a);
                    }
                }
            }
            for o in 0..h {
                for (j, w) in self.gw[o * stride + t0..o * stride + t1].iter_mut().enumerate() {
                    *w += tile[j * h + o];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{transpose_genes, TILE};
    use crate::simd::Simd;

    /// W^T's rows g0..g1 at every level this CPU runs, for shapes with and without partial blocks,
    /// and for weights whose rows go on past the genes (covariates' columns: `stride` > g). The
    /// values are their own positions, so any misplaced entry shows.
    #[test]
    fn transposes_match_the_definition() {
        for (h, g, g0, g1) in [(128, 2000, 0, 2000), (128, 2000, 992, 2000), (16, 16, 0, 16), (37, 53, 16, 50), (5, 3, 0, 3), (48, 40, 32, 40)] {
            for stride in [g, g + 3, g + 16] {
                let w: Vec<f32> = (0..h * stride).map(|i| i as f32).collect();
                for level in [Simd::Avx512, Simd::Avx2, Simd::Baseline].into_iter().filter(|l| l.runs_here()) {
                    let mut out = vec![f32::NAN; (g1 - g0) * h];
                    transpose_genes(level, &w, h, stride, g, g0, g1, &mut out);
                    for j in g0..g1 {
                        for o in 0..h {
                            assert_eq!(out[(j - g0) * h + o], w[o * stride + j], "{level:?}, {h} x {g} (stride {stride}), genes {g0}..{g1}: W[{o}, {j}]");
                        }
                    }
                }
            }
        }
        assert_eq!(TILE, 16, "the AVX-512 block is 16 x 16");
    }
}
