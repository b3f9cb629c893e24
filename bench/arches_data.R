# Reference / query split of the bundled PBMC 3k for the scArches benchmark: every third cell is a
# query cell, and the query gets a synthetic batch effect (a log-normal factor per gene, sd 0.5,
# then Poisson resampling; seed 7). Writes the indices and the query counts (Matrix Market,
# genes x cells) so that scviR and scvi-tools map exactly the same data.
#   Rscript bench/arches_data.R OUTDIR
out <- commandArgs(TRUE)[1]
suppressMessages(library(scviR))
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
is_query <- seq_len(ncol(sce)) %% 3 == 0
set.seed(7)
m <- as.matrix(SingleCellExperiment::counts(sce)[, is_query])
m <- m * exp(stats::rnorm(nrow(m), 0, 0.5))
m <- matrix(stats::rpois(length(m), m), nrow(m), dimnames = dimnames(m))
dir.create(out, showWarnings = FALSE, recursive = TRUE)
writeLines(as.character(which(!is_query)), file.path(out, "ref_idx.txt"))
writeLines(as.character(which(is_query)), file.path(out, "query_idx.txt"))
invisible(Matrix::writeMM(methods::as(m, "CsparseMatrix"), file.path(out, "query_counts.mtx")))
