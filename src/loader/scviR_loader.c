/* A second, tiny shared library of the package: it loads libtorch_cpu.so so that libtorch's own
 * references resolve to its own definitions first (RTLD_DEEPBIND).
 *
 * Why: libtorch_cpu.so carries and exports the BLAS it was built with (MKL's sgemm_, dgemm_, ...).
 * R has already loaded its own BLAS (libblas.so.3: Debian's OpenBLAS, the reference BLAS, ...)
 * into the global scope, and a library loaded normally binds its BLAS calls to the first
 * definition in that scope: R's. libtorch's matrix products would then run on R's BLAS, which on
 * a CPU an old OpenBLAS does not know runs generic kernels (2.6-3.2x slower training measured,
 * bench/README.md). Loaded with RTLD_DEEPBIND, libtorch keeps its own BLAS and R keeps its own:
 * nothing R sees changes.
 *
 * The library must be loaded before scviR.so, which links libtorch_cpu.so: R/zzz.R does that.
 * The handle is never closed (libtorch cannot be unloaded). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <R.h>
#include <Rinternals.h>
#include <R_ext/Rdynload.h>

/* Loads the library at `path` (a character string) with its own symbols first. Returns NULL on
 * success, else the loader's message as a character string (R then loads it the usual way). */
static SEXP scvir_load_own_symbols(SEXP path) {
    if (TYPEOF(path) != STRSXP || XLENGTH(path) != 1 || STRING_ELT(path, 0) == NA_STRING) {
        return mkString("path must be one string");
    }
#ifdef RTLD_DEEPBIND
    void *h = dlopen(CHAR(STRING_ELT(path, 0)), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (h == NULL) {
        const char *msg = dlerror();
        return mkString(msg ? msg : "dlopen failed");
    }
    return R_NilValue;
#else
    return mkString("this platform's loader has no RTLD_DEEPBIND");
#endif
}

static const R_CallMethodDef call_methods[] = {
    {"scvir_load_own_symbols", (DL_FUNC) &scvir_load_own_symbols, 1},
    {NULL, NULL, 0}
};

void R_init_scviR_loader(DllInfo *dll) {
    R_registerRoutines(dll, NULL, call_methods, NULL, NULL);
    R_useDynamicSymbols(dll, FALSE);
    R_forceSymbols(dll, TRUE);
}
