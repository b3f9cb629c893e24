//! Process-level settings that matter for speed: thread count and glibc's allocator thresholds.

use std::sync::Once;

static MALLOC_TUNING: Once = Once::new();

/// Raises glibc's mmap / trim thresholds so that the large per-step tensors are recycled instead
/// of being mapped and unmapped every minibatch (measured here: page faults 137k -> 30k per run
/// and 12-17% faster at 1 thread). Applies once per process.
pub fn tune_allocator() {
    MALLOC_TUNING.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    });
}

/// Process start-up for training and inference: allocator tuning and denormal flushing. Call it
/// before the first libtorch operation so that libtorch's worker threads inherit the flags.
pub fn init() {
    tune_allocator();
    flush_denormals();
}

/// Intra-op threads of libtorch; `None` or 0 keeps libtorch's choice (all cores).
pub fn set_threads(n: Option<usize>) {
    if let Some(n) = n.filter(|&n| n > 0) {
        tch::set_num_threads(n as i32);
    }
}

pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// Flushes denormal floats to zero on the calling thread (x86 FTZ and DAZ bits), as PyTorch's
/// `torch.set_flush_denormal(True)`. With thousands of genes the softmax produces proportions
/// whose gradients fall in the denormal range, where x86 arithmetic is ~100x slower.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Seeds libtorch's generator (initial weights, dropout, posterior samples). Call it before
/// building a model so that the initial weights are repeatable too; training seeds again.
pub fn seed_everything(seed: u64) {
    tch::manual_seed(seed as i64);
}
