# scviR leaves the R session as it found it: floating-point flags, OpenMP / OpenBLAS / libtorch
# threads and OpenBLAS's kernels are set for the duration of an engine call and restored after
# it, on success, on error and when forked children use the engine. Progress goes through the
# condition system. libtorch is found at load time, and its absence is a classed error.

test_that("training and queries leave denormals, threads and BLAS as they were", {
  tiny <- 2^-1070
  expect_gt(tiny, 0)
  before <- scviR:::.rs_process_state()
  fit <- scvi_model(pbmc_small_counts(), max_epochs = 2, seed = 1, n_threads = 2, verbose = FALSE)
  expect_identical(2^-1070, tiny)
  expect_identical(scviR:::.rs_process_state(), before)
  z <- get_latent_representation(fit, n_threads = 2)
  expect_identical(scviR:::.rs_process_state(), before)
  expect_gt(2^-1070, 0)
  # An engine error half-way through a call restores them too.
  bad <- pbmc_small_counts()[1:10, ]
  expect_error(get_latent_representation(fit, newdata = bad, n_threads = 2), class = "scvir_error")
  expect_identical(scviR:::.rs_process_state(), before)
})

test_that("BLAS kernel selection is opt-in and restored after each call", {
  before <- scviR:::.rs_process_state()
  skip_if(is.null(before$openblas_core), "R does not run on OpenBLAS here")
  old <- options(scviR.tune_blas = TRUE)
  on.exit(options(old))
  fit <- scvi_model(pbmc_small_counts(), max_epochs = 1, seed = 1, n_threads = 1, verbose = FALSE)
  expect_identical(scviR:::.rs_process_state(), before)
  expect_identical(libtorch_info()$blas_core, before$openblas_core)
})

test_that("libtorch's matrix products run on its own BLAS and R keeps its own", {
  skip_if(nzchar(Sys.getenv("LD_PRELOAD")), "a preloaded library keeps libtorch on R's BLAS")
  skip_if(!nzchar(Sys.which("grep")), "needs grep")
  expect_identical(libtorch_info()$blas, "libtorch")
  # Which definition the dynamic linker bound each caller's sgemm_ / dgemm_ to, in a fresh R.
  show_blas <- "cat('BLAS', libtorch_info()$blas, '\\n')"
  bindings <- function(env) {
    log <- tempfile("ld")
    on.exit(unlink(Sys.glob(paste0(log, "*"))))
    out <- run_r(c("suppressMessages(library(scviR))", show_blas),
                 env = c(env, "LD_DEBUG=bindings", paste0("LD_DEBUG_OUTPUT=", log)))
    expect_equal(attr(out, "status"), 0L, info = paste(out, collapse = "\n"))
    lines <- suppressWarnings(system2("grep", c("-h", shQuote("normal symbol `[sd]gemm_'"),
                                                Sys.glob(paste0(log, "*"))), stdout = TRUE))
    from <- sub(".*binding file ([^ ]+) .*", "\\1", lines)
    to <- sub(".* to ([^ ]+) .*", "\\1", lines)
    list(blas = sub("^BLAS ([A-Za-z]+).*", "\\1", grep("^BLAS ", out, value = TRUE)),
         torch = unique(basename(to[basename(from) == "libtorch_cpu.so"])),
         r = unique(basename(to[grepl("^libR\\.so|^liblapack", basename(from))])))
  }
  own <- bindings(character())
  expect_identical(own$blas, "libtorch")
  expect_identical(own$torch, "libtorch_cpu.so")
  expect_true(length(own$r) > 0 && !any(own$r == "libtorch_cpu.so"), info = paste(own$r, collapse = " "))
  # Opting out: libtorch binds R's BLAS, as any library loaded after it would.
  rs <- bindings("SCVIR_LIBTORCH_BLAS=R")
  expect_identical(rs$blas, "R")
  expect_true(length(rs$torch) == 1 && rs$torch != "libtorch_cpu.so", info = paste(rs$torch, collapse = " "))
  expect_identical(rs$r, own$r)
  # A value that is neither is said on attach, not silently taken.
  out <- run_r(c("library(scviR)", show_blas), env = "SCVIR_LIBTORCH_BLAS=openblas")
  expect_true(any(grepl("SCVIR_LIBTORCH_BLAS is 'openblas', which is neither 'R' nor 'libtorch'", out)),
              info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^BLAS libtorch", out)), info = paste(out, collapse = "\n"))
  # Under a preloaded library, libtorch stays on R's BLAS (its own symbols first would bypass it).
  out <- run_r(c("suppressMessages(library(scviR))", show_blas), env = "LD_PRELOAD=libm.so.6")
  expect_true(any(grepl("^BLAS R", out)), info = paste(out, collapse = "\n"))
})

test_that("a model trained on libtorch's BLAS or on R's is the same up to rounding", {
  skip_if(nzchar(Sys.getenv("LD_PRELOAD")), "a preloaded library keeps libtorch on R's BLAS")
  fit <- scvi_model(pbmc_small_counts(), max_epochs = 3, seed = 1, n_threads = 1, verbose = FALSE)
  z <- get_latent_representation(fit, n_threads = 1)
  file <- tempfile(fileext = ".rds")
  on.exit(unlink(file))
  out <- run_r(c(
    "suppressMessages(library(scviR))",
    "e <- new.env(); utils::data('pbmc_small', package = 'SeuratObject', envir = e)",
    "counts <- scviR:::.assay_data(e$pbmc_small, 'RNA', 'counts')",
    "fit <- scvi_model(counts, max_epochs = 3, seed = 1, n_threads = 1, verbose = FALSE)",
    "saveRDS(list(blas = libtorch_info()$blas, z = get_latent_representation(fit, n_threads = 1),",
    sprintf("             elbo = tail(training_history(fit)$elbo_train, 1)), '%s')", file)
  ), env = "SCVIR_LIBTORCH_BLAS=R", timeout = 180)
  expect_equal(attr(out, "status"), 0L, info = paste(out, collapse = "\n"))
  other <- readRDS(file)
  expect_identical(other$blas, "R")
  expect_equal(other$z, z, tolerance = 1e-3)
  expect_equal(other$elbo, tail(training_history(fit)$elbo_train, 1), tolerance = 1e-4)
})

test_that("mclapply() after a multi-threaded fit completes in the children", {
  skip_on_os("windows")
  out <- run_r(c(
    "suppressMessages(library(scviR))",
    "e <- new.env(); utils::data('pbmc_small', package = 'SeuratObject', envir = e)",
    "counts <- scviR:::.assay_data(e$pbmc_small, 'RNA', 'counts')",
    "fit <- scvi_model(counts, max_epochs = 3, seed = 1, n_threads = 2, verbose = FALSE)",
    "z <- get_latent_representation(fit, n_threads = 2)",
    "m <- matrix(seq_len(250000) / 250000, 500); invisible(m %*% m)",
    "res <- parallel::mclapply(1:2, function(i) {",
    "  zc <- get_latent_representation(fit, n_threads = 2)",
    "  c(max(abs(zc - z)), sum(m %*% m))",
    "}, mc.cores = 2)",
    "cat('CHILDREN', vapply(res, function(r) r[1] < 1e-4 && r[2] > 0, TRUE), '\\n')"
  ), timeout = 180)
  expect_equal(attr(out, "status"), 0L, info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^CHILDREN TRUE TRUE", out)), info = paste(out, collapse = "\n"))
})

test_that("progress is a condition that suppressMessages() and scviR.verbose silence", {
  counts <- pbmc_small_counts()
  seen <- list()
  fit <- withCallingHandlers(
    scvi_model(counts, max_epochs = 4, seed = 1, n_threads = 1),
    scvir_progress = function(c) {
      seen[[length(seen) + 1]] <<- c
      invokeRestart("muffleMessage")
    })
  expect_true(length(seen) >= 5)
  expect_match(conditionMessage(seen[[1]]), "Training scVI on 80 cells")
  last <- seen[[length(seen)]]
  expect_s3_class(last, "message")
  expect_identical(last$epoch, 4L)
  expect_match(conditionMessage(last), "Epoch 4/4: elbo_train [0-9.]+, elbo_validation [0-9.]+, elapsed .*, ETA")
  expect_silent(suppressMessages(scvi_model(counts, max_epochs = 2, seed = 1, n_threads = 1)))
  old <- options(scviR.verbose = FALSE)
  on.exit(options(old))
  n <- 0L
  withCallingHandlers(scvi_model(counts, max_epochs = 2, seed = 1, n_threads = 1),
                      message = function(c) n <<- n + 1L)
  expect_identical(n, 0L)
})

test_that("n_threads defaults to the CPUs this process may use", {
  cores <- scviR:::.rs_available_cores()
  expect_true(cores >= 1L)
  expect_identical(scviR:::.default_threads(), as.integer(getOption("scviR.threads", cores)))
  withr_opt <- options(scviR.threads = 1L)
  on.exit(options(withr_opt))
  expect_identical(scviR:::.default_threads(), 1L)
  out <- run_r("cat('CORES', scviR:::.default_threads(), '\\n')", env = "OMP_NUM_THREADS=1")
  expect_true(any(grepl("^CORES 1 $", out)), info = paste(out, collapse = "\n"))
  expect_error(scviR:::.default_threads(5000L), class = "scvir_config_error")
})

test_that("libtorch is found at load time, and a missing one is a classed error", {
  info <- libtorch_info()
  expect_null(info$load_error)
  expect_true(file.exists(file.path(info$libtorch, "lib", "libtorch_cpu.so")))
  # The engine's view of CUDA agrees with the libraries in the loaded directory.
  expect_identical(info$cuda, file.exists(file.path(info$libtorch, "lib", "libtorch_cuda.so")))
  expect_type(info$gpus, "integer")
  expect_true(info$gpus >= 0L && (info$cuda || info$gpus == 0L))
  shown <- capture.output(print(info))
  expect_true(any(grepl(if (info$cuda) "^CUDA: yes, [0-9]+ GPU" else "^CUDA: no, the CPU build", shown)),
              info = paste(shown, collapse = "\n"))
  expect_error(install_libtorch(prefix = tempfile(), cuda = "yes"), "cuda must be TRUE, FALSE or NA",
               class = "scvir_config_error")
  # The shared library has no run path into anybody's home directory (or anywhere).
  so <- system.file("libs", "scviR.so", package = "scviR")
  readelf <- Sys.which("readelf")
  if (nzchar(readelf)) {
    dyn <- system2(readelf, c("-d", shQuote(so)), stdout = TRUE)
    expect_false(any(grepl("RUNPATH|RPATH", dyn)), info = paste(grep("PATH", dyn, value = TRUE), collapse = "\n"))
  }
  out <- run_r(c(
    "library(scviR)",
    "r <- tryCatch(read_h5ad(system.file('extdata', 'pbmc3k_hvg2000.h5ad', package = 'scviR')),",
    "              scvir_setup_error = function(e) paste('SETUP', conditionMessage(e)))",
    "cat(r, '\\n')"
  ), env = "SCVIR_LIBTORCH=/nonexistent/libtorch")
  expect_equal(attr(out, "status"), 0L, info = paste(out, collapse = "\n"))
  expect_true(any(grepl("libtorch 2.11.0 was not found", out)))  # the startup message
  expect_true(any(grepl("^SETUP .*install_libtorch\\(\\)", out)), info = paste(out, collapse = "\n"))
})

test_that("a handler that exits on a progress condition leaves training cleanly", {
  counts <- pbmc_small_counts()
  before <- scviR:::.rs_process_state()
  res <- tryCatch(scvi_model(counts, max_epochs = 50, seed = 1, n_threads = 2),
                  scvir_progress = function(c) if (is.null(c$epoch)) "title" else c$epoch)
  expect_identical(res, "title")
  # Leaving at the first epoch's progress, while the engine runs (the exiting handler is the
  # caller's, outside the calling handler that raises the condition).
  res <- tryCatch(
    withCallingHandlers(scvi_model(counts, max_epochs = 50, seed = 1, n_threads = 2),
                        scvir_progress = function(c) {
                          if (!is.null(c$epoch)) {
                            stop(structure(class = c("custom_stop", "condition"),
                                           list(message = "stop", call = NULL, epoch = c$epoch)))
                          }
                          invokeRestart("muffleMessage")
                        }),
    custom_stop = function(c) paste("left at epoch", c$epoch))
  expect_identical(res, "left at epoch 1")
  expect_identical(scviR:::.rs_process_state(), before)
  expect_gt(2^-1070, 0)
  # The engine is usable afterwards.
  fit <- scvi_model(counts, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE)
  expect_s3_class(fit, "scvi_model")
})

test_that("a dynamic terminal shows a cli progress bar with the epoch, loss, elapsed time and ETA", {
  skip_on_cran()
  out <- run_r(c(
    "options(cli.dynamic = TRUE, cli.progress_show_after = 0, cli.width = 200)",
    "suppressMessages(library(scviR))",
    "e <- new.env(); utils::data('pbmc_small', package = 'SeuratObject', envir = e)",
    "counts <- scviR:::.assay_data(e$pbmc_small, 'RNA', 'counts')",
    "fit <- scvi_model(counts, max_epochs = 4, seed = 1, n_threads = 1)"))
  text <- paste(out, collapse = "\n")
  expect_match(text, "epoch 4/4 \\| elbo_train [0-9.]+ \\| .* elapsed \\| ETA")
  # The bar replaces the per-epoch lines.
  expect_false(grepl("Epoch 4/4: elbo_train", text))
})
