//! Single-precision matrix products with AVX-512, for the decoder heads (CPU).
//!
//! libtorch's CPU products run the MKL it carries, and MKL takes its AVX-512 kernels only on
//! Intel CPUs: on other CPUs with AVX-512 (AMD Zen 4 and 5) it runs its AVX2 kernels, at half
//! the width. The decoder heads' products (cells x hidden x genes, three per head and step) are
//! the largest of a training step, so on such CPUs the engine runs them here ([`available`]).
//!
//! Every entry of C is one sum over k in order, in one accumulator lane, within blocks of
//! [`KC`] k's added in order; how the work is split across threads never changes it, so a
//! result has the same bits at every thread count.

use crate::runtime::parallel_parts;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// A matrix in memory: entry (i, j) at `ptr + i * rs + j * cs` (floats).
#[derive(Clone, Copy)]
pub struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// What C starts from.
#[derive(Clone, Copy)]
pub enum Init {
    /// C = A B.
    Zero,
    /// C = A B + 1 bias^T (`bias` has one entry per column of C).
    Bias(*const f32),
    /// C += A B.
    Add,
}

/// Columns of C per kernel call (two vectors of 16).
const NR: usize = 32;
/// Rows of C per kernel call.
const MR: usize = 12;
/// k's per block: a 32-column panel of B (KC x 32 floats) stays in the first-level cache.
const KC: usize = 256;
/// Products with fewer multiply-adds than this run on one thread.
const PARALLEL_WORK: usize = 1 << 21;

/// Whether this process runs its decoder heads' products here: the CPU has AVX-512 and is not
/// Intel's (where libtorch's MKL already runs AVX-512), and [`use_libtorch`] was not called.
pub fn available() -> bool {
    static CAPABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAPABLE.get_or_init(|| crate::simd::Simd::detect() == crate::simd::Simd::Avx512 && !intel()) && !LIBTORCH.load(Ordering::Relaxed)
}

static LIBTORCH: AtomicBool = AtomicBool::new(false);

/// Runs the heads' products on libtorch from now on, for comparisons (the engine CLI's
/// `--libtorch-products`); call it before training.
pub fn use_libtorch() {
    LIBTORCH.store(true, Ordering::Relaxed);
}

#[cfg(target_arch = "x86_64")]
fn intel() -> bool {
    // cpuid leaf 0 (the vendor) exists on every x86-64 CPU.
    let r = std::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
    vendor[8..12].copy_from_slice(&r.ecx.to_le_bytes());
    &vendor == b"GenuineIntel"
}

#[cfg(not(target_arch = "x86_64"))]
fn intel() -> bool {
    false
}

/// C (m x n, rows `ldc` floats apart) from A (m x k) and B (k x n), split across libtorch's
/// threads when large.
///
/// # Safety
/// The CPU must have AVX-512 F ([`available`] or `Simd::detect()`); A, B and C must hold the
/// entries their strides address, C must not overlap A or B, and `Init::Bias` must point at n
/// floats.
pub unsafe fn gemm(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: *mut f32, ldc: usize, init: Init) {
    if m == 0 || n == 0 {
        return;
    }
    let (mb, nb) = (m.div_ceil(MR), n.div_ceil(NR));
    let parts = if m * n * k >= PARALLEL_WORK { crate::runtime::parts_for(mb.max(nb)) } else { 1 };
    // Plain integers cross into the parts (raw pointers are not Sync).
    let (ap, bp, cp) = (a.ptr as usize, b.ptr as usize, c as usize);
    let ((ars, acs), (brs, bcs)) = ((a.rs, a.cs), (b.rs, b.cs));
    let (mode, bias) = match init {
        Init::Zero => (0u8, 0usize),
        Init::Bias(p) => (1, p as usize),
        Init::Add => (2, 0),
    };
    let by_rows = mb >= nb;
    let part = |p: usize| {
        let blocks = if by_rows { mb } else { nb };
        let (first, end) = (blocks * p / parts, blocks * (p + 1) / parts);
        let a = MatRef { ptr: ap as *const f32, rs: ars, cs: acs };
        let b = MatRef { ptr: bp as *const f32, rs: brs, cs: bcs };
        let init = match mode {
            0 => Init::Zero,
            1 => Init::Bias(bias as *const f32),
            _ => Init::Add,
        };
        // SAFETY: each part writes its own rows (or columns) of C.
        unsafe {
            if by_rows {
                block((first * MR).min(m)..(end * MR).min(m), 0..n, k, a, b, cp as *mut f32, ldc, init);
            } else {
                block(0..m, (first * NR).min(n)..(end * NR).min(n), k, a, b, cp as *mut f32, ldc, init);
            }
        }
    };
    parallel_parts(parts, &part);
}

/// Rows `rows` and columns `cols` of C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block(rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, k: usize, a: MatRef, b: MatRef, c: *mut f32, ldc: usize, init: Init) {
    use std::arch::x86_64::*;
    if k == 0 {
        // C = bias or 0 (or unchanged).
        for i in rows.clone() {
            for j in cols.clone() {
                let v = c.add(i * ldc + j);
                match init {
                    Init::Zero => *v = 0.0,
                    Init::Bias(p) => *v = *p.add(j),
                    Init::Add => {}
                }
            }
        }
        return;
    }
    // A's rows for one block of k's, MR at a time (kc rows of MR entries each), copied unless
    // A's MR entries at one k are already contiguous; B's panels (kc x NR) copied unless B's rows
    // are contiguous. The kernel then reads both in order.
    let pack_a = a.rs != 1;
    let m_tiles = rows.len().div_ceil(MR);
    let n_panels = cols.len().div_ceil(NR);
    // A copied: it is revisited cheaply, so each panel of B is used for all of A's tiles while
    // it is in the first-level cache (B streams once). A read in place: each tile of A is used
    // for all of B's panels, B (copied whole if need be) staying in the second-level cache (A
    // streams once).
    let b_outer = pack_a;
    let mut apack = if pack_a { vec![0f32; m_tiles * KC * MR] } else { Vec::new() };
    let packed_panels = if b.cs == 1 { 0 } else if b_outer { 1 } else { n_panels };
    let mut bpack = vec![0f32; packed_panels * KC * NR];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let first = k0 == 0;
        if pack_a {
            for t in 0..m_tiles {
                let i0 = rows.start + t * MR;
                let mr = MR.min(rows.end - i0);
                let tile = &mut apack[t * KC * MR..(t + 1) * KC * MR];
                // With A's rows contiguous, 16 k's at a time are transposed in registers.
                let (mut kk0, row0) = (0, a.ptr.offset(i0 as isize * a.rs + k0 as isize * a.cs));
                if a.cs == 1 && a.rs > 0 {
                    while kk0 + 16 <= kc {
                        transpose16(row0.add(kk0), a.rs as usize, mr, tile.as_mut_ptr().add(kk0 * MR), MR, (1 << MR) - 1);
                        kk0 += 16;
                    }
                }
                for r in 0..mr {
                    let src = row0.offset(r as isize * a.rs);
                    for kk in kk0..kc {
                        tile[kk * MR + r] = *src.offset(kk as isize * a.cs);
                    }
                }
            }
        }
        // Panel q of B for this block of k's: copied into `slot` of bpack when B's rows are not
        // contiguous.
        let panel = |q: usize, slot: usize, bpack: &mut [f32]| -> (*const f32, isize) {
            let j0 = cols.start + q * NR;
            if b.cs == 1 {
                return (b.ptr.offset(k0 as isize * b.rs + j0 as isize), b.rs);
            }
            let nr = NR.min(cols.end - j0);
            let dst = &mut bpack[slot * KC * NR..(slot + 1) * KC * NR];
            // With B's columns contiguous, blocks of 16 k's x 16 columns are transposed in
            // registers (columns beyond the panel's as zeros).
            let col0 = b.ptr.offset(k0 as isize * b.rs + j0 as isize * b.cs);
            let mut kk0 = 0;
            if b.rs == 1 && b.cs > 0 {
                while kk0 + 16 <= kc {
                    for jj in (0..nr).step_by(16) {
                        let src = col0.add(kk0 + jj * b.cs as usize);
                        transpose16(src, b.cs as usize, (nr - jj).min(16), dst.as_mut_ptr().add(kk0 * NR + jj), NR, 0xffff);
                    }
                    kk0 += 16;
                }
            }
            for j in 0..nr {
                let src = col0.offset(j as isize * b.cs);
                for kk in kk0..kc {
                    dst[kk * NR + j] = *src.offset(kk as isize * b.rs);
                }
            }
            (dst.as_ptr(), NR as isize)
        };
        let tile = |t: usize, q: usize, (bptr, rsb): (*const f32, isize)| {
            let (i0, j0) = (rows.start + t * MR, cols.start + q * NR);
            let (mr, nr) = (MR.min(rows.end - i0), NR.min(cols.end - j0));
            let mask = |from: usize| -> __mmask16 {
                let live = nr.saturating_sub(from).min(16);
                if live == 16 { 0xffff } else { ((1u32 << live) - 1) as __mmask16 }
            };
            let bias = match init {
                Init::Bias(p) if first => Some(p.add(j0)),
                _ => None,
            };
            let add = !first || matches!(init, Init::Add);
            let (aptr, rsa) = if pack_a {
                (apack.as_ptr().add(t * KC * MR), MR as isize)
            } else {
                (a.ptr.offset(i0 as isize + k0 as isize * a.cs), a.cs)
            };
            let t = Tile { kc, a: aptr, rsa, b: bptr, rsb, c: c.add(i0 * ldc + j0), ldc, m0: mask(0), m1: mask(16), bias, add };
            match mr {
                12 => kernel::<12>(t),
                11 => kernel::<11>(t),
                10 => kernel::<10>(t),
                9 => kernel::<9>(t),
                8 => kernel::<8>(t),
                7 => kernel::<7>(t),
                6 => kernel::<6>(t),
                5 => kernel::<5>(t),
                4 => kernel::<4>(t),
                3 => kernel::<3>(t),
                2 => kernel::<2>(t),
                _ => kernel::<1>(t),
            }
        };
        if b_outer {
            for q in 0..n_panels {
                let p = panel(q, 0, &mut bpack);
                for t in 0..m_tiles {
                    tile(t, q, p);
                }
            }
        } else {
            let panels: Vec<_> = (0..n_panels).map(|q| panel(q, q, &mut bpack)).collect();
            for t in 0..m_tiles {
                for (q, &p) in panels.iter().enumerate() {
                    tile(t, q, p);
                }
            }
        }
        k0 += kc;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_: std::ops::Range<usize>, _: std::ops::Range<usize>, _: usize, _: MatRef, _: MatRef, _: *mut f32, _: usize, _: Init) {
    unreachable!("the engine's matrix products need AVX-512")
}

/// Transposes a block of up to 16 x 16 floats: row i < `rows` of `src` (16 floats at
/// `src + i * src_stride`) becomes column i of `dst`'s 16 rows (`dst + k * dst_stride`), whose
/// lanes in `lanes` are stored (columns `rows..16` as zeros). Per 128-bit lane, pairs of rows
/// are interleaved, then groups of four rows, then the lanes are gathered across groups in two
/// rounds of lane shuffles.
///
/// # Safety
/// AVX-512 F must be available; `src` must be valid for `rows` (at most 16) rows of 16 floats,
/// and `dst` for 16 rows with the lanes in `lanes`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose16(src: *const f32, src_stride: usize, rows: usize, dst: *mut f32, dst_stride: usize, lanes: std::arch::x86_64::__mmask16) {
    use std::arch::x86_64::*;
    // Rows past `rows` are masked loads of nothing (no access, so no fault): the loop has a
    // fixed count and the rows stay in registers.
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        let live: __mmask16 = if i < rows { 0xffff } else { 0 };
        *v = _mm512_maskz_loadu_ps(live, src.wrapping_add(i * src_stride));
    }
    // t[2p], t[2p + 1]: rows 2p and 2p + 1 interleaved (columns 4L, 4L + 1 and 4L + 2, 4L + 3 of
    // lane L).
    let mut t = [_mm512_setzero_ps(); 16];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    // u[4q + k], lane L: column 4L + k of rows 4q..4q + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        u[4 * q] = _mm512_shuffle_ps::<0x44>(t[4 * q], t[4 * q + 2]);
        u[4 * q + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * q], t[4 * q + 2]);
        u[4 * q + 2] = _mm512_shuffle_ps::<0x44>(t[4 * q + 1], t[4 * q + 3]);
        u[4 * q + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * q + 1], t[4 * q + 3]);
    }
    // Column 4L + k is lane L of u[k], u[4 + k], u[8 + k] and u[12 + k].
    for k in 0..4 {
        let even_lo = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
        let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
        let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[k], u[4 + k]);
        let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + k], u[12 + k]);
        _mm512_mask_storeu_ps(dst.add(k * dst_stride), lanes, _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi));
        _mm512_mask_storeu_ps(dst.add((8 + k) * dst_stride), lanes, _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi));
        _mm512_mask_storeu_ps(dst.add((4 + k) * dst_stride), lanes, _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi));
        _mm512_mask_storeu_ps(dst.add((12 + k) * dst_stride), lanes, _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi));
    }
}

#[cfg(target_arch = "x86_64")]
struct Tile {
    kc: usize,
    /// A's tile: the MR' entries for one k contiguous, `rsa` apart from one k to the next.
    a: *const f32,
    rsa: isize,
    /// kc rows of at least NR floats, `rsb` apart (masked beyond the tile's columns).
    b: *const f32,
    rsb: isize,
    c: *mut f32,
    ldc: usize,
    m0: std::arch::x86_64::__mmask16,
    m1: std::arch::x86_64::__mmask16,
    bias: Option<*const f32>,
    add: bool,
}

/// One MR' x NR tile of C: sums over the block's k's in order, then stored, added, or started
/// from the bias.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel<const R: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    let (mut ap, mut bp) = (t.a, t.b);
    for _ in 0..t.kc {
        let b0 = _mm512_maskz_loadu_ps(t.m0, bp);
        let b1 = _mm512_maskz_loadu_ps(t.m1, bp.add(16));
        for r in 0..R {
            let av = _mm512_set1_ps(*ap.add(r));
            acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
        }
        ap = ap.offset(t.rsa);
        bp = bp.offset(t.rsb);
    }
    let (bias0, bias1) = match t.bias {
        Some(p) => (_mm512_maskz_loadu_ps(t.m0, p), _mm512_maskz_loadu_ps(t.m1, p.add(16))),
        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    };
    for r in 0..R {
        let row = t.c.add(r * t.ldc);
        let (mut v0, mut v1) = (acc0[r], acc1[r]);
        if t.add {
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(t.m0, row), v0);
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(t.m1, row.add(16)), v1);
        } else if t.bias.is_some() {
            v0 = _mm512_add_ps(bias0, v0);
            v1 = _mm512_add_ps(bias1, v1);
        }
        _mm512_mask_storeu_ps(row, t.m0, v0);
        _mm512_mask_storeu_ps(row.add(16), t.m1, v1);
    }
}

// --- on tensors -----------------------------------------------------------------------------------

/// A CPU float matrix's data as a [`MatRef`] (None for other tensors), or its transpose.
fn view(t: &Tensor, transposed: bool) -> Option<MatRef> {
    if t.device() != Device::Cpu || t.kind() != Kind::Float || t.dim() != 2 {
        return None;
    }
    let st = t.stride();
    let (rs, cs) = (st[0] as isize, st[1] as isize);
    let (rs, cs) = if transposed { (cs, rs) } else { (rs, cs) };
    Some(MatRef { ptr: t.data_ptr() as *const f32, rs, cs })
}

/// input W^T + bias (cells x out, outside autograd) for a Linear layer's weight (out x in), or
/// None where the engine's product does not run (see [`available`]; CPU float tensors only).
pub fn linear(input: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    if !available() || input.dim() != 2 || weight.dim() != 2 || input.size()[1] != weight.size()[1] {
        return None;
    }
    let (x, w) = (input.detach(), weight.detach());
    let b = match bias {
        Some(b) if b.device() == Device::Cpu && b.kind() == Kind::Float && b.size() == [w.size()[0]] => Some(b.detach().contiguous()),
        Some(_) => return None,
        None => None,
    };
    let (xv, wv) = (view(&x, false)?, view(&w, true)?);
    let (m, k, n) = (x.size()[0] as usize, x.size()[1] as usize, w.size()[0] as usize);
    let out = Tensor::empty([m as i64, n as i64], (Kind::Float, Device::Cpu));
    let init = match &b {
        Some(b) => Init::Bias(b.data_ptr() as *const f32),
        None => Init::Zero,
    };
    // SAFETY: available() checked AVX-512; the views address the tensors' own entries, kept
    // alive here; `out` is fresh (m x n, contiguous) and `b` holds n floats.
    unsafe { gemm(m, n, k, xv, wv, out.data_ptr() as *mut f32, n, init) };
    Some(out)
}

/// a b (outside autograd) for 2-D CPU float tensors, or None where the engine's product does
/// not run.
pub fn matmul(a: &Tensor, b: &Tensor) -> Option<Tensor> {
    if !available() || a.dim() != 2 || b.dim() != 2 || a.size()[1] != b.size()[0] {
        return None;
    }
    let (a, b) = (a.detach(), b.detach());
    let (av, bv) = (view(&a, false)?, view(&b, false)?);
    let (m, k, n) = (a.size()[0] as usize, a.size()[1] as usize, b.size()[1] as usize);
    let out = Tensor::empty([m as i64, n as i64], (Kind::Float, Device::Cpu));
    // SAFETY: as in `linear`.
    unsafe { gemm(m, n, k, av, bv, out.data_ptr() as *mut f32, n, Init::Zero) };
    Some(out)
}

/// c += a b in place (a: m x k, b: k x n, c: m x n contiguous), outside autograd; false (c
/// untouched) where the engine's product does not run.
pub fn add_product(c: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    add_into(c, a, false, b)
}

/// c += a^T b in place (a: k x m, b: k x n, c: m x n contiguous), outside autograd; false (c
/// untouched) where the engine's product does not run.
pub fn add_transposed_product(c: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    add_into(c, a, true, b)
}

/// c += op(a) b, op transposing a or not.
fn add_into(c: &Tensor, a: &Tensor, transpose_a: bool, b: &Tensor) -> bool {
    if !available() || a.dim() != 2 || b.dim() != 2 || !c.is_contiguous() {
        return false;
    }
    let (sa, sb) = (a.size(), b.size());
    let (m, k) = if transpose_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    if k != sb[0] || c.size() != [m, sb[1]] {
        return false;
    }
    let (a, b) = (a.detach(), b.detach());
    let (Some(av), Some(bv), Some(_)) = (view(&a, transpose_a), view(&b, false), view(c, false)) else {
        return false;
    };
    let (m, k, n) = (m as usize, k as usize, sb[1] as usize);
    // SAFETY: as in `linear`; c is contiguous (m x n) and is neither a nor b.
    unsafe { gemm(m, n, k, av, bv, c.data_ptr() as *mut f32, n, Init::Add) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RNG's turn, seeded, on a CPU that runs the kernel; elsewhere, checks that the tensor
    /// helpers hand the products back to libtorch (None).
    fn kernel_turn(seed: i64) -> Option<std::sync::MutexGuard<'static, ()>> {
        if crate::simd::Simd::detect() != crate::simd::Simd::Avx512 {
            let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
            assert!(!available() && linear(&x, &x, None).is_none() && matmul(&x, &x.tr()).is_none());
            return None;
        }
        let guard = crate::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        Some(guard)
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).abs().max().double_value(&[]);
        d / b.abs().max().double_value(&[]).max(1e-30)
    }

    /// Products in the three layouts the heads use, with ragged edges, against libtorch's.
    #[test]
    fn products_match_libtorch() {
        let Some(_turn) = kernel_turn(3) else { return };
        let cpu = (Kind::Float, Device::Cpu);
        for &(m, k, n) in &[(128usize, 128usize, 2000usize), (37, 300, 45), (1, 1, 1), (13, 700, 129), (128, 2000, 128)] {
            let a = Tensor::randn([m as i64, k as i64], cpu);
            let w = Tensor::randn([n as i64, k as i64], cpu); // B^T, as a Linear weight
            let bias = Tensor::randn([n as i64], cpu);
            // C = A W^T + bias (the head's logits).
            let c = Tensor::empty([m as i64, n as i64], cpu);
            unsafe {
                gemm(m, n, k, MatRef { ptr: a.data_ptr() as *const f32, rs: k as isize, cs: 1 },
                    MatRef { ptr: w.data_ptr() as *const f32, rs: 1, cs: k as isize },
                    c.data_ptr() as *mut f32, n, Init::Bias(bias.data_ptr() as *const f32));
            }
            assert!(rel_err(&c, &(a.matmul(&w.tr()) + &bias)) < 1e-5, "A W^T + b at {m} x {k} x {n}");
            if available() {
                // The tensor helpers, on a non-contiguous input too.
                assert!(linear(&a, &w, Some(&bias)).expect("the engine's product").equal(&c));
                let at = a.tr().contiguous().tr();
                assert!(linear(&at, &w, Some(&bias)).expect("the engine's product").equal(&c));
            }
            // C = G W (G: m x n, W: n x k).
            let g = Tensor::randn([m as i64, n as i64], cpu);
            let p = Tensor::empty([m as i64, k as i64], cpu);
            unsafe {
                gemm(m, k, n, MatRef { ptr: g.data_ptr() as *const f32, rs: n as isize, cs: 1 },
                    MatRef { ptr: w.data_ptr() as *const f32, rs: k as isize, cs: 1 },
                    p.data_ptr() as *mut f32, k, Init::Zero);
            }
            assert!(rel_err(&p, &g.matmul(&w)) < 1e-5, "G W at {m} x {n} x {k}");
            if available() {
                assert!(matmul(&g, &w).expect("the engine's product").equal(&p));
                let twice = p.copy();
                assert!(add_product(&twice, &g, &w) && rel_err(&twice, &(&p * 2.0)) < 1e-6);
            }
            // C += G^T A (the weight's gradient, added).
            let start = Tensor::randn([n as i64, k as i64], cpu);
            let dw = start.copy();
            unsafe {
                gemm(n, k, m, MatRef { ptr: g.data_ptr() as *const f32, rs: 1, cs: n as isize },
                    MatRef { ptr: a.data_ptr() as *const f32, rs: k as isize, cs: 1 },
                    dw.data_ptr() as *mut f32, k, Init::Add);
            }
            assert!(rel_err(&dw, &(&start + g.tr().matmul(&a))) < 1e-5, "W + G^T A at {n} x {m} x {k}");
            if available() {
                let again = start.copy();
                assert!(add_transposed_product(&again, &g, &a) && again.equal(&dw));
            }
        }
    }

    /// The same bits at 1 and 2 threads.
    #[test]
    fn threads_do_not_change_bits() {
        let Some(_turn) = kernel_turn(4) else { return };
        let cpu = (Kind::Float, Device::Cpu);
        let (m, k, n) = (128usize, 128usize, 2000usize);
        let a = Tensor::randn([m as i64, k as i64], cpu);
        let w = Tensor::randn([n as i64, k as i64], cpu);
        let run = |threads: i32| {
            let before = tch::get_num_threads();
            tch::set_num_threads(threads);
            let c = Tensor::empty([m as i64, n as i64], cpu);
            unsafe {
                gemm(m, n, k, MatRef { ptr: a.data_ptr() as *const f32, rs: k as isize, cs: 1 },
                    MatRef { ptr: w.data_ptr() as *const f32, rs: 1, cs: k as isize },
                    c.data_ptr() as *mut f32, n, Init::Zero);
            }
            tch::set_num_threads(before);
            c
        };
        assert!(run(1).equal(&run(2)));
    }

    /// Timings against libtorch's products at the heads' shapes (`cargo test --release -- --ignored
    /// --nocapture gemm_speed`).
    #[test]
    #[ignore]
    fn gemm_speed() {
        if crate::simd::Simd::detect() != crate::simd::Simd::Avx512 {
            return;
        }
        let cpu = (Kind::Float, Device::Cpu);
        let threads: i32 = std::env::var("GEMM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        tch::set_num_threads(threads);
        println!("{threads} thread(s)");
        let (m, h, g) = (128usize, 128usize, 2000usize);
        let x = Tensor::randn([m as i64, h as i64], cpu);
        let w = Tensor::randn([g as i64, h as i64], cpu);
        let gr = Tensor::randn([m as i64, g as i64], cpu);
        let out = Tensor::empty([m as i64, g as i64], cpu);
        let p = Tensor::empty([m as i64, h as i64], cpu);
        let dw = Tensor::zeros([g as i64, h as i64], cpu);
        let time = |f: &dyn Fn()| {
            for _ in 0..20 {
                f();
            }
            let t = std::time::Instant::now();
            for _ in 0..200 {
                f();
            }
            t.elapsed().as_secs_f64() / 200.0 * 1e6
        };
        let flops = 2.0 * (m * h * g) as f64;
        let report = |name: &str, us: f64| println!("{name}: {us:.0} us, {:.0} GFLOP/s", flops / us / 1e3);
        // The core's peak: 24 independent multiply-add chains, at each width.
        #[target_feature(enable = "avx512f")]
        unsafe fn peak(wide: bool) -> f64 {
            use std::arch::x86_64::*;
            let n = 20_000_000usize / 24;
            let t = std::time::Instant::now();
            // 24 chains of one width's multiply-adds; the number of lanes.
            macro_rules! chains {
                ($set1:ident, $fmadd:ident, $lanes:expr) => {{
                    let (b, c) = ($set1(1.0000001), $set1(1e-8));
                    let mut acc = [$set1(1.0); 24];
                    for _ in 0..n {
                        for a in acc.iter_mut() {
                            *a = $fmadd(*a, b, c);
                        }
                    }
                    std::hint::black_box(acc);
                    $lanes
                }};
            }
            let lanes: f64 = if wide { chains!(_mm512_set1_ps, _mm512_fmadd_ps, 16.0) } else { chains!(_mm256_set1_ps, _mm256_fmadd_ps, 8.0) };
            (n * 24) as f64 * lanes * 2.0 / t.elapsed().as_secs_f64() / 1e9
        }
        println!("peak multiply-adds: {:.0} GFLOP/s with AVX-512, {:.0} with AVX2", unsafe { peak(true) }, unsafe { peak(false) });
        report("torch x W^T", time(&|| { let _ = x.matmul(&w.tr()); }));
        report("own   x W^T", time(&|| unsafe {
            gemm(m, g, h, MatRef { ptr: x.data_ptr() as *const f32, rs: h as isize, cs: 1 },
                MatRef { ptr: w.data_ptr() as *const f32, rs: 1, cs: h as isize }, out.data_ptr() as *mut f32, g, Init::Zero)
        }));
        report("torch G W", time(&|| { let _ = gr.matmul(&w); }));
        report("own   G W", time(&|| unsafe {
            gemm(m, h, g, MatRef { ptr: gr.data_ptr() as *const f32, rs: g as isize, cs: 1 },
                MatRef { ptr: w.data_ptr() as *const f32, rs: h as isize, cs: 1 }, p.data_ptr() as *mut f32, h, Init::Zero)
        }));
        report("torch G^T x", time(&|| { let _ = gr.tr().matmul(&x); }));
        report("own   G^T x", time(&|| unsafe {
            gemm(g, h, m, MatRef { ptr: gr.data_ptr() as *const f32, rs: 1, cs: g as isize },
                MatRef { ptr: x.data_ptr() as *const f32, rs: h as isize, cs: 1 }, dw.data_ptr() as *mut f32, h, Init::Add)
        }));
    }
}
