# Ctrl-C during training: a real SIGINT sent to a separate R process that is training. The
# process must catch a classed condition, keep running and leave its data untouched.

# Starts `train` (R code using `counts`) in another R process, interrupts it, returns its output.
interrupted_run <- function(train) {
  dir <- tempfile("scvir-interrupt-")
  dir.create(dir)
  pid_file <- file.path(dir, "pid")
  out_file <- file.path(dir, "out.txt")
  script <- file.path(dir, "train.R")
  writeLines(c(
    "suppressMessages(library(scviR))",
    "e <- new.env(); utils::data('pbmc_small', package = 'SeuratObject', envir = e)",
    "counts <- scviR:::.assay_data(e$pbmc_small, 'RNA', 'counts')",
    "before <- counts",
    sprintf("writeLines(as.character(Sys.getpid()), '%s')", pid_file),
    sprintf("res <- tryCatch(%s,", train),
    "  scvir_interrupted = function(e) { cat('CAUGHT:', conditionMessage(e), '\\n'); 'interrupted' })",
    "cat('ALIVE', identical(res, 'interrupted'), identical(counts, before), '\\n')"
  ), script)
  rscript <- file.path(R.home("bin"), "Rscript")
  system2(rscript, script, stdout = out_file, stderr = out_file, wait = FALSE)
  deadline <- Sys.time() + 60
  while (!file.exists(pid_file) && Sys.time() < deadline) Sys.sleep(0.2)
  expect_true(file.exists(pid_file))
  Sys.sleep(3)  # let training start
  pid <- as.integer(readLines(pid_file))
  tools::pskill(pid, tools::SIGINT)
  deadline <- Sys.time() + 60
  out <- character()
  while (Sys.time() < deadline) {
    out <- if (file.exists(out_file)) readLines(out_file, warn = FALSE) else character()
    if (any(grepl("^ALIVE", out))) break
    Sys.sleep(0.2)
  }
  if (!any(grepl("^ALIVE", out))) tools::pskill(pid, tools::SIGKILL)
  out
}

test_that("an interrupt stops training cleanly and R goes on", {
  skip_on_os("windows")
  out <- interrupted_run("scvi_model(counts, max_epochs = 1e6, seed = 1, n_threads = 1, verbose = FALSE)")
  expect_true(any(grepl("CAUGHT: training interrupted by the user at epoch [0-9]+ of 1000000; nothing was modified", out)),
              info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^ALIVE TRUE TRUE", out)), info = paste(out, collapse = "\n"))
})

test_that("an interrupt stops scANVI training cleanly too", {
  skip_on_os("windows")
  out <- interrupted_run(paste("scanvi(counts, labels = rep(c('a', 'b', 'Unknown'), length.out = ncol(counts)),",
                               "max_epochs = 1e6, seed = 1, n_threads = 1, verbose = FALSE)"))
  expect_true(any(grepl("CAUGHT: training interrupted by the user", out)), info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^ALIVE TRUE TRUE", out)), info = paste(out, collapse = "\n"))
})
