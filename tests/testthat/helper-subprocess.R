# Runs R code in a separate process and interrupts it with a real SIGINT (tests of Ctrl-C).

# Starts `train` (R code using `counts`) in another R process, interrupts it, returns its output;
# `after` (lines of R code) runs in the same process once the interrupt was caught.
interrupted_run <- function(train, after = character()) {
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
    "cat('ALIVE', identical(res, 'interrupted'), identical(counts, before), '\\n')",
    after
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
    if (any(grepl(if (length(after)) "^DONE" else "^ALIVE", out))) break
    Sys.sleep(0.2)
  }
  if (!any(grepl(if (length(after)) "^DONE" else "^ALIVE", out))) tools::pskill(pid, tools::SIGKILL)
  out
}

rscript <- function() file.path(R.home("bin"), "Rscript")

# Runs R code in a fresh process; returns its output lines with the exit status as attribute.
run_r <- function(code, env = character(), timeout = 120) {
  script <- tempfile(fileext = ".R")
  writeLines(code, script)
  timeout_bin <- Sys.which("timeout")
  cmd <- if (nzchar(timeout_bin)) timeout_bin else rscript()
  args <- if (nzchar(timeout_bin)) c(timeout, rscript(), script) else script
  out <- suppressWarnings(system2(cmd, args, stdout = TRUE, stderr = TRUE, env = env))
  attr(out, "status") <- attr(out, "status") %||% 0L
  out
}
`%||%` <- function(a, b) if (is.null(a)) b else a
