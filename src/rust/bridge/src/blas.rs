//! The BLAS that libtorch's matrix products run on inside R.
//!
//! libtorch's `sgemm_` binds to the BLAS already in R's global symbol scope (Debian: OpenBLAS)
//! rather than to its own copy. OpenBLAS 0.3.21 does not recognise some current (virtualised)
//! CPUs and falls back to its generic "Prescott" kernels: 3-4x slower GEMM on an AVX-512 machine.
//! When that happened and the user did not choose a core (OPENBLAS_CORETYPE), we redo OpenBLAS's
//! own core selection with the core the CPU supports. Set SCVIR_TUNE_BLAS=0 to leave it alone.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};

unsafe fn symbol(name: &str) -> *mut libc::c_void {
    let c = CString::new(name).unwrap();
    libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr())
}

/// OpenBLAS's core name, if OpenBLAS is loaded in this process.
pub fn openblas_core() -> Option<String> {
    unsafe {
        let f = symbol("openblas_get_corename");
        if f.is_null() {
            return None;
        }
        let f: extern "C" fn() -> *const c_char = std::mem::transmute(f);
        let p = f();
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

fn best_core() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512cd")
        {
            return Some("SkylakeX");
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// Re-selects OpenBLAS's kernels when it fell back to a generic core. Returns a description of
/// what was done (for `scviR:::blas_info()`).
pub fn tune_openblas() -> String {
    let Some(core) = openblas_core() else { return "no OpenBLAS in this process".into() };
    if std::env::var("SCVIR_TUNE_BLAS").map_or(false, |v| v == "0") {
        return format!("OpenBLAS core {core} (left alone: SCVIR_TUNE_BLAS=0)");
    }
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return format!("OpenBLAS core {core} (chosen by OPENBLAS_CORETYPE)");
    }
    let generic = ["Prescott", "Katmai", "Coppermine", "Northwood", "Banias", "Core2", "Penryn", "Unknown"];
    let Some(target) = best_core() else { return format!("OpenBLAS core {core}") };
    if !generic.iter().any(|g| core.eq_ignore_ascii_case(g)) {
        return format!("OpenBLAS core {core}");
    }
    unsafe {
        let (init, quit) = (symbol("gotoblas_dynamic_init"), symbol("gotoblas_dynamic_quit"));
        if init.is_null() || quit.is_null() {
            return format!("OpenBLAS core {core} (cannot be changed: not a dynamic-arch build)");
        }
        let init: extern "C" fn() = std::mem::transmute(init);
        let quit: extern "C" fn() = std::mem::transmute(quit);
        std::env::set_var("OPENBLAS_CORETYPE", target);
        quit();
        init();
        std::env::remove_var("OPENBLAS_CORETYPE");
    }
    format!("OpenBLAS core {} (was the generic {core}; this CPU supports {target})", openblas_core().unwrap_or_default())
}

/// OpenBLAS's own thread count follows scviR's n_threads (its OpenMP build ignores libtorch's).
pub fn set_openblas_threads(n: usize) {
    unsafe {
        let f = symbol("openblas_set_num_threads");
        if !f.is_null() {
            let f: extern "C" fn(c_int) = std::mem::transmute(f);
            f(n as c_int);
        }
    }
}
