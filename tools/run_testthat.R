# Runs tests/testthat against the installed scviR and writes "passed failed" (expectation
# counts) to the file named by the first argument. Exit status 1 when anything failed.
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else tempfile()
library(testthat)
library(scviR)
res <- testthat::test_dir("tests/testthat", package = "scviR", load_package = "installed",
                          reporter = testthat::ProgressReporter$new(show_praise = FALSE),
                          stop_on_failure = FALSE, stop_on_warning = FALSE)
df <- as.data.frame(res)
passed <- sum(df$passed)
failed <- sum(df$failed) + sum(df$error)
writeLines(paste(passed, failed), out)
cat(sprintf("testthat: %d expectations passed, %d failed or errored, %d skipped\n",
            passed, failed, sum(df$skipped)))
quit(status = if (failed > 0) 1 else 0)
