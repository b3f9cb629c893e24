# Knits the vignette (vignettes/scviR.Rmd) against the installed scviR into the directory given as
# the first argument (default out/vignette); intermediate files stay in a temporary directory.
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else file.path("out", "vignette")
dir.create(out, recursive = TRUE, showWarnings = FALSE)
work <- tempfile("vignette")
dir.create(work)
file.copy("vignettes/scviR.Rmd", work)
started <- proc.time()[["elapsed"]]
html <- rmarkdown::render(file.path(work, "scviR.Rmd"), output_dir = normalizePath(out),
                          intermediates_dir = work, quiet = TRUE, envir = new.env())
cat(sprintf("vignette written to %s (%.0f s)\n", html, proc.time()[["elapsed"]] - started))
