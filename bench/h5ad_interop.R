# .h5ad interoperability with Python's anndata: scviR writes, anndata reads; anndata writes
# (layers, obsm, varm, raw, uns, scvi-tools' minified-data fields), scviR reads.
#   Rscript bench/h5ad_interop.R PYTHON
py <- commandArgs(TRUE)[1]
suppressMessages({library(scviR); library(SingleCellExperiment)})
here <- "bench"
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))[, 1:500]
sce <- scvi(sce, max_epochs = 5, seed = 1, n_threads = 2, verbose = FALSE)
out <- tempfile(fileext = ".h5ad")
write_h5ad(sce, out)
res <- system2(py, c(file.path(here, "h5ad_interop.py"), "write-check", out), stdout = TRUE)
cat("scviR -> anndata:", grep("^RESULT", res, value = TRUE), "\n")
cat("  counts sum in R:", sum(counts(sce)), "\n")
inp <- tempfile(fileext = ".h5ad")
res <- system2(py, c(file.path(here, "h5ad_interop.py"), "make", inp), stdout = TRUE)
back <- read_h5ad(inp)
cat("anndata -> scviR:", grep("^RESULT", res, value = TRUE), "\n")
cat(sprintf("  X sum %g; assays %s; reducedDims %s; rowData matrices %s; altExps %s; uns %s; obs %s\n",
            sum(counts(back)), paste(assayNames(back), collapse = ","),
            paste(reducedDimNames(back), collapse = ","),
            paste(names(Filter(function(c) !is.null(dim(c)), as.list(rowData(back)))), collapse = ","),
            paste(altExpNames(back), collapse = ","),
            paste(names(S4Vectors::metadata(back)$uns), collapse = ","),
            paste(names(colData(back)), collapse = ",")))
