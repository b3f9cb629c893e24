//! Which vector instructions the hand-written CPU kernels (the fused likelihood and Adam) are
//! compiled for. Each kernel is one generic loop, instantiated inside functions
//! compiled for AVX-512, for AVX2 + FMA and for the baseline; the widest level this CPU offers is
//! chosen at run time. Lane-wise results are the same at every width; levels with FMA round
//! polynomial steps once instead of twice.

use crate::distributions::fastmath::{Fused, MulAdd, Plain};

/// A level of vector instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// AVX-512 F + DQ with AVX2 and FMA: 16 floats per instruction.
    Avx512,
    /// AVX2 with FMA: 8 floats per instruction.
    Avx2,
    /// What the target guarantees (SSE2 on x86-64).
    Baseline,
}

impl Simd {
    /// The widest level this CPU offers.
    pub fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if fma && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
                return Simd::Avx512;
            }
            if fma {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
    }

    /// Whether this CPU can run this level (the detected one or a narrower one).
    pub fn runs_here(self) -> bool {
        let width = |l: Simd| match l {
            Simd::Avx512 => 2,
            Simd::Avx2 => 1,
            Simd::Baseline => 0,
        };
        width(self) <= width(Simd::detect())
    }

    /// The levels this CPU can run, widest first (tests compare them).
    pub fn available() -> Vec<Simd> {
        match Simd::detect() {
            Simd::Avx512 => vec![Simd::Avx512, Simd::Avx2, Simd::Baseline],
            Simd::Avx2 => vec![Simd::Avx2, Simd::Baseline],
            Simd::Baseline => vec![Simd::Baseline],
        }
    }
}

/// A loop to compile at several levels. `run` must be `#[inline(always)]` so that it is compiled
/// inside each level's wrapper, with that level's instructions; `M` says how polynomial steps
/// round (one FMA at the AVX levels).
pub trait Kernel {
    type Output;
    fn run<M: MulAdd>(self) -> Self::Output;
}

/// Runs `kernel` compiled for `level`.
/// # Safety
/// `level` must be one that `Simd::detect()` reports or a narrower one.
pub unsafe fn run<K: Kernel>(level: Simd, kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
        unsafe fn avx512<K: Kernel>(k: K) -> K::Output {
            k.run::<Fused>()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<K: Kernel>(k: K) -> K::Output {
            k.run::<Fused>()
        }
        match level {
            Simd::Avx512 => return avx512(kernel),
            Simd::Avx2 => return avx2(kernel),
            Simd::Baseline => {}
        }
    }
    let _ = level;
    kernel.run::<Plain>()
}

/// Largest element of a non-empty slice, in 16 interleaved partial maxima (vectorises).
#[inline(always)]
pub fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..16 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    acc.into_iter().chain(rest.iter().copied()).fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of a slice in 16 interleaved partial sums (vectorises; the order is fixed, so the result
/// does not depend on the level).
#[inline(always)]
pub fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..16 {
            acc[k] += c[k];
        }
    }
    let mut total = 0f32;
    for a in acc {
        total += a;
    }
    for &r in rest {
        total += r;
    }
    total
}
