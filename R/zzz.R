.scvir_state <- new.env(parent = emptyenv())
.torch_version <- "2.11.0"

# libtorch is not in the shared library's run path: it is loaded from the first readable
# directory of these before scviR's own library, so that a site-wide install works for every
# user whatever account built it.
.libtorch_candidates <- function(libname = NULL, pkgname = "scviR") {
  # An explicit choice is the only candidate: a wrong one is reported, not silently replaced.
  if (nzchar(Sys.getenv("SCVIR_LIBTORCH"))) return(Sys.getenv("SCVIR_LIBTORCH"))
  recorded <- if (!is.null(libname)) file.path(libname, pkgname, "libtorch", "path") else
    system.file("libtorch", "path", package = pkgname)
  recorded <- if (nzchar(recorded) && file.exists(recorded)) readLines(recorded, n = 1L, warn = FALSE)
  sub <- file.path(paste0("libtorch-", .torch_version), "torch")
  unique(c(recorded,
           file.path(.libtorch_user_prefix(), sub), file.path(.libtorch_site_prefix(), sub)))
}

.libtorch_site_prefix <- function() "/usr/local/lib/scviR"

# tools::R_user_dir("scviR", "data") without creating it.
.libtorch_user_prefix <- function() tools::R_user_dir("scviR", "data")

.libtorch_usable <- function(dir) {
  nzchar(dir) && file.access(file.path(dir, "lib", "libtorch_cpu.so"), 4L) == 0L
}

# Loads libtorch and then scviR's library, and binds the registered routines for the wrappers.
# Returns NULL on success, else the reason (the package still loads; engine calls then fail with
# a scvir_setup_error that says how to install libtorch).
.load_engine <- function(libname, pkgname) {
  tried <- .libtorch_candidates(libname, pkgname)
  tried <- tried[nzchar(tried)]
  dir <- Find(.libtorch_usable, tried)
  if (is.null(dir)) {
    return(sprintf(paste0("libtorch %s was not found or is not readable (looked in: %s). ",
                          "Run scviR::install_libtorch(), or set the environment variable ",
                          "SCVIR_LIBTORCH to a libtorch %s directory before loading scviR."),
                   .torch_version, paste(tried, collapse = ", "), .torch_version))
  }
  err <- tryCatch({
    dyn.load(file.path(dir, "lib", "libc10.so"), local = TRUE, now = TRUE)
    blas <- .load_libtorch_cpu(file.path(dir, "lib", "libtorch_cpu.so"), libname, pkgname)
    # A CUDA libtorch (install-libtorch.sh with a GPU or SCVIR_CUDA=1): its CUDA libraries find
    # the nvidia-* runtime installed beside them through their own run paths.
    for (cuda in c("libc10_cuda.so", "libtorch_cuda.so")) {
      f <- file.path(dir, "lib", cuda)
      if (file.exists(f)) dyn.load(f, local = TRUE, now = TRUE)
    }
    dll <- library.dynam("scviR", pkgname, libname)
    .scvir_state$routines <- getDLLRegisteredRoutines(dll)[[".Call"]]
    NULL
  }, error = function(e) conditionMessage(e))
  if (!is.null(err)) {
    return(sprintf("scviR's engine could not be loaded with libtorch from %s: %s", dir, err))
  }
  .scvir_state$libtorch <- dir
  .scvir_state$blas <- blas
  NULL
}

# Loads libtorch_cpu.so so that its matrix products run on the BLAS it carries (MKL in the PyPI
# build) and not on R's, which was loaded first and would otherwise win: see
# src/loader/scviR_loader.c. R's own BLAS is left as it is. Not done when the environment
# variable SCVIR_LIBTORCH_BLAS is "R", nor under a preloaded library (LD_PRELOAD, e.g. another
# allocator: libtorch would bind glibc's malloc instead), nor where the platform cannot; libtorch
# then runs on R's BLAS. Returns whose BLAS libtorch uses: "libtorch" or "R".
.load_libtorch_cpu <- function(file, libname, pkgname) {
  choice <- Sys.getenv("SCVIR_LIBTORCH_BLAS")
  .scvir_state$blas_note <- if (nzchar(choice) && !toupper(choice) %in% c("R", "LIBTORCH")) {
    sprintf("SCVIR_LIBTORCH_BLAS is '%s', which is neither 'R' nor 'libtorch'; using libtorch's own BLAS.", choice)
  }
  own <- !identical(toupper(choice), "R") && !nzchar(Sys.getenv("LD_PRELOAD"))
  if (own) {
    libs <- if (nzchar(.Platform$r_arch)) file.path("libs", .Platform$r_arch) else "libs"
    loader <- file.path(libname, pkgname, libs, "scviR_loader.so")
    failed <- tryCatch({
      dll <- dyn.load(loader, local = TRUE, now = TRUE)
      .Call(getNativeSymbolInfo("scvir_load_own_symbols", dll), file)
    }, error = function(e) conditionMessage(e))
    if (is.null(failed)) return("libtorch")
    .scvir_state$blas_note <- sprintf(
      "libtorch could not be loaded with its own BLAS (%s); it runs on R's BLAS.", failed)
  }
  dyn.load(file, local = TRUE, now = TRUE)
  "R"
}

.onLoad <- function(libname, pkgname) {
  .scvir_state$load_error <- .load_engine(libname, pkgname)
}

.onAttach <- function(libname, pkgname) {
  if (!is.null(.scvir_state$blas_note)) packageStartupMessage("scviR: ", .scvir_state$blas_note)
  if (!is.null(.scvir_state$load_error)) {
    packageStartupMessage("scviR: ", .scvir_state$load_error)
  } else if (identical(.scvir_state$blas, "R") && !.tune_option("blas")) {
    better <- tryCatch(.rs_blas_info()$better, error = function(e) NULL)
    if (!is.null(better)) {
      packageStartupMessage(sprintf(paste(
        "scviR: R's OpenBLAS runs generic kernels on this CPU, which supports %s kernels;",
        "options(scviR.tune_blas = TRUE) selects them during scviR's calls (about 2x faster",
        "training; see ?libtorch_info)."), better))
    }
  }
}

.onUnload <- function(libpath) {
  if (!is.null(.scvir_state$routines)) library.dynam.unload("scviR", libpath)
}

#' Install the libtorch library scviR runs on
#'
#' scviR's engine runs on libtorch 2.11.0 (its CPU build, or its CUDA build for NVIDIA GPUs),
#' loaded when the package loads from the directory in the environment variable
#' `SCVIR_LIBTORCH` when it is set, else the first usable
#' of: the directory the package was built against, the per-user directory `tools::R_user_dir("scviR", "data")`, and
#' the site-wide `/usr/local/lib/scviR`. A site-wide install (as root, what `make install` does)
#' serves every user of the R library. `install_libtorch()` installs it into `prefix` by running
#' the script shipped with the package (`system.file("libtorch", "install-libtorch.sh",
#' package = "scviR")`), which takes the CPU libraries from the PyPI `torch` wheel (pip and
#' network access, or `wheel_dir`), then loads scviR's engine so that it can be used at once.
#'
#' With `cuda = TRUE` (or, by default, when `nvidia-smi` lists an NVIDIA GPU) it installs the
#' CUDA build from the same wheel instead, with the nvidia-* libraries it needs beside it (about
#' 4 GB; a CPU build already in `prefix` is replaced). scviR loads the CUDA libraries with
#' libtorch when they are in the directory it loads libtorch from (`libtorch_info()$libtorch`;
#' the environment variable `SCVIR_LIBTORCH` selects another), so after restarting R the
#' installed package can train on the GPU (`accelerator = "gpu"`) without being rebuilt;
#' [libtorch_info()] shows what it sees. An engine already loaded in this R session keeps the
#' libtorch it loaded.
#'
#' @param prefix Directory to install into; libtorch goes to
#'   `<prefix>/libtorch-2.11.0/torch`. The default is the per-user data directory (the
#'   site-wide directory when run as root).
#' @param wheel_dir Optional directory holding the downloaded wheels (`torch-2.11.0-*.whl` and
#'   the two small `nvidia_cuda_runtime` / `nvidia_cuda_cupti` wheels it names; for the CUDA
#'   build, every `nvidia_*` wheel torch depends on), for machines without network access.
#' @param cuda `TRUE` for the CUDA build, `FALSE` for the CPU build, `NA` (default) for the CUDA
#'   build when `nvidia-smi` lists a GPU.
#' @return The libtorch directory, invisibly.
#' @examples
#' # Where scviR looks for libtorch, and which one it loaded:
#' libtorch_info()
#' \dontrun{
#' install_libtorch()
#' }
#' @export
install_libtorch <- function(prefix = NULL, wheel_dir = NULL, cuda = NA) {
  if (!is.logical(cuda) || length(cuda) != 1L) {
    scvir_abort("cuda must be TRUE, FALSE or NA (the CUDA build when nvidia-smi lists a GPU)",
                "scvir_config_error")
  }
  if (is.null(prefix)) {
    root <- identical(unname(Sys.info()[["effective_user"]]), "root")
    prefix <- if (root) .libtorch_site_prefix() else .libtorch_user_prefix()
  }
  if (!is.character(prefix) || length(prefix) != 1L || is.na(prefix) || !nzchar(prefix)) {
    scvir_abort("prefix must be one directory path", "scvir_config_error")
  }
  script <- system.file("libtorch", "install-libtorch.sh", package = "scviR")
  env <- c(if (!is.null(wheel_dir)) paste0("SCVIR_TORCH_WHEEL_DIR=", normalizePath(wheel_dir, mustWork = TRUE)),
           if (!is.na(cuda)) paste0("SCVIR_CUDA=", as.integer(cuda)))
  status <- system2("sh", c(shQuote(script), shQuote(prefix)), env = env)
  if (!identical(status, 0L)) {
    scvir_abort(sprintf("installing libtorch into %s failed (status %s); see the messages above",
                        prefix, status), "scvir_setup_error")
  }
  dir <- file.path(prefix, paste0("libtorch-", .torch_version), "torch")
  if (is.null(.scvir_state$routines)) {
    Sys.setenv(SCVIR_LIBTORCH = dir)
    .scvir_state$load_error <- .load_engine(dirname(system.file(package = "scviR")), "scviR")
    if (!is.null(.scvir_state$load_error)) scvir_abort(.scvir_state$load_error, "scvir_setup_error")
  }
  invisible(dir)
}

#' Where scviR's libtorch and BLAS come from
#'
#' Reports the libtorch directory the engine was loaded from, the BLAS libtorch's matrix
#' products run on, R's own BLAS, and the threads scviR uses by default.
#'
#' libtorch carries its own BLAS (MKL, in the PyPI build scviR installs). scviR loads libtorch
#' so that its matrix products run on that BLAS, as they do in Python, and leaves R's own BLAS
#' (Debian: OpenBLAS) as it is for everything else in the session. The environment variable
#' `SCVIR_LIBTORCH_BLAS=R`, set before the package loads, makes libtorch use R's BLAS instead
#' (`SCVIR_LIBTORCH_BLAS=libtorch` is the default; any other value is reported on attach);
#' so does a library preloaded with `LD_PRELOAD` (such as another memory allocator), with which
#' libtorch could not keep its own symbols safely.
#'
#' On R's BLAS, libtorch's matrix products are slower, above all when Debian's OpenBLAS 0.3.21
#' does not recognise the CPU and falls back to generic kernels; attaching the package then says
#' so. `options(scviR.tune_blas = TRUE)` (or the environment variable `SCVIR_TUNE_BLAS=1`) makes
#' each engine call select the kernels this CPU supports for its duration and restore R's choice
#' after; it only matters when libtorch runs on R's BLAS. `options(scviR.tune_allocator = TRUE)`
#' (`SCVIR_TUNE_ALLOCATOR=1`) raises glibc's allocation thresholds during engine calls (fewer
#' page faults when training; set back to glibc's defaults after).
#'
#' `cuda` says whether the loaded libtorch is the CUDA build (installed by `SCVIR_CUDA=1 make
#' install`, by `install_libtorch(cuda = TRUE)`, or at set-up on a machine with an NVIDIA GPU)
#' and `gpus` how many CUDA devices it sees: `accelerator = "gpu"` needs both.
#' @return A list with `libtorch`, `load_error`, `blas` (`"libtorch"`: libtorch's own BLAS, or
#'   `"R"`: R's), `blas_core` (the kernel set of R's OpenBLAS, if R runs on OpenBLAS),
#'   `blas_core_available` (the better kernel set, if OpenBLAS fell back to a generic one),
#'   `tune_blas`, `threads`, `cuda` (logical) and `gpus` (integer); printed.
#' @examples
#' libtorch_info()
#' @export
libtorch_info <- function() {
  loaded <- !is.null(.scvir_state$routines)
  blas <- if (loaded) .rs_blas_info() else list(core = NULL, better = NULL)
  cuda <- if (loaded) .rs_cuda_info() else list(built = NA, devices = NA_integer_)
  info <- structure(list(
    libtorch = .scvir_state$libtorch, load_error = .scvir_state$load_error,
    torch_version = .torch_version, blas = .scvir_state$blas,
    blas_core = blas$core, blas_core_available = blas$better,
    tune_blas = .tune_option("blas"),
    threads = if (loaded) .default_threads() else NA_integer_,
    cuda = cuda$built, gpus = cuda$devices),
    class = "scvir_libtorch_info")
  info
}

#' @method print scvir_libtorch_info
#' @export
print.scvir_libtorch_info <- function(x, ...) {
  cat(sprintf("libtorch %s: %s\n", x$torch_version,
              x$libtorch %||% paste("not loaded -", x$load_error)))
  r_blas <- if (is.null(x$blas_core)) "not OpenBLAS" else paste("OpenBLAS, kernels", x$blas_core)
  if (identical(x$blas, "libtorch")) {
    cat(sprintf("BLAS: libtorch's own for scviR; R's (%s) for the rest of R\n", r_blas))
  } else if (identical(x$blas, "R")) {
    cat(sprintf("BLAS: R's, for scviR too: %s%s\n", r_blas,
                if (!is.null(x$blas_core_available))
                  sprintf(" (this CPU supports %s: options(scviR.tune_blas = TRUE)%s)", x$blas_core_available,
                          if (x$tune_blas) " is on" else "") else ""))
  }
  cat(sprintf("threads: %s\n", x$threads))
  if (isTRUE(x$cuda)) {
    cat(sprintf("CUDA: yes, %d GPU(s) visible%s\n", x$gpus,
                if (identical(x$gpus, 0L)) " (check nvidia-smi and CUDA_VISIBLE_DEVICES)" else ""))
  } else if (isFALSE(x$cuda)) {
    cat("CUDA: no, the CPU build (install_libtorch(cuda = TRUE) installs the CUDA build)\n")
  }
  invisible(x)
}

#' @rdname libtorch_info
#' @export
blas_info <- function() libtorch_info()

utils::globalVariables(".data")

# Matrix's namespace must be loaded with scviR: a model read back with readRDS() in a fresh
# session holds dgCMatrix counts, and base functions such as ncol() only know them once Matrix's
# methods are registered.
#' @importFrom Matrix sparseMatrix
NULL
