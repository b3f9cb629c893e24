#!/usr/bin/env Rscript
# Compare select_hvg_seurat_v3() (R/hvg.R) with scanpy's seurat_v3 HVG selection.
# Usage: Rscript tools/check_hvg_against_scanpy.R DATADIR REPO_ROOT
# DATADIR holds the files written by tools/hvg_scanpy_reference.py.
# Exits non-zero if an overlap is below 0.99.
suppressPackageStartupMessages(library(Matrix))
args <- commandArgs(trailingOnly = TRUE)
dir <- args[[1]]
repo <- if (length(args) >= 2) args[[2]] else "."
source(file.path(repo, "R", "hvg.R"))

counts <- as(readMM(file.path(dir, "counts.mtx")), "CsparseMatrix")
counts <- as(as(counts, "generalMatrix"), "dMatrix")
rownames(counts) <- readLines(file.path(dir, "genes.txt"))
batch <- readLines(file.path(dir, "batch.txt"))
cat(sprintf("counts: %d genes x %d cells, class %s\n", nrow(counts), ncol(counts), class(counts)))
ref_genes <- readLines(file.path(repo, "bench", "reference", "pbmc3k_hvg2000_genes.txt"))

ok <- TRUE
compare <- function(label, r, py, n = 2000L) {
  r_top <- rownames(r)[r$highly_variable]
  py_top <- py$gene[py$highly_variable == "True"]
  ov <- length(intersect(r_top, py_top)) / n
  rel <- function(a, b) max(abs(a - b) / pmax(abs(b), 1e-12))
  both <- !is.na(r$highly_variable_rank) & !is.na(py$highly_variable_rank)
  cat(sprintf("[%s] top-%d overlap with scanpy: %.4f (%d/%d)\n", label, n, ov,
              length(intersect(r_top, py_top)), n))
  cat(sprintf("[%s] max rel diff: means %.2e, variances %.2e, variances_norm %.2e\n", label,
              rel(r$means, py$means), rel(r$variances, py$variances),
              rel(r$variances_norm, py$variances_norm)))
  cat(sprintf("[%s] rank: %d genes ranked by both, %d identical, max |diff| %g; Spearman(variances_norm) %.6f\n",
              label, sum(both), sum(r$highly_variable_rank[both] == py$highly_variable_rank[both]),
              max(abs(r$highly_variable_rank[both] - py$highly_variable_rank[both])),
              cor(r$variances_norm, py$variances_norm, method = "spearman")))
  if (is.null(r$highly_variable_nbatches)) {
    # Without batches, any rank difference should come from exactly tied normalised
    # variances (genes with identical counts), which numpy's unstable argsort
    # orders arbitrarily.
    d <- which(both & r$highly_variable_rank != py$highly_variable_rank)
    nv <- r$variances_norm
    tied <- vapply(d, function(g) sum(abs(nv - nv[g]) <= 1e-9 * abs(nv[g])) > 1L, logical(1))
    cat(sprintf("[%s] %d rank differences, %d of them between exactly tied genes\n",
                label, length(d), sum(tied)))
    odd <- setdiff(union(r_top, py_top), intersect(r_top, py_top))
    cat(sprintf("[%s] genes in only one top set: %s (variances_norm %s)\n", label,
                paste(odd, collapse = ", "),
                paste(format(nv[match(odd, rownames(r))], digits = 15), collapse = ", ")))
  } else {
    cat(sprintf("[%s] nbatches identical for %.4f of genes\n", label,
                mean(r$highly_variable_nbatches == py$highly_variable_nbatches)))
  }
  if (ov < 0.99) ok <<- FALSE
  invisible(ov)
}

py0 <- read.csv(file.path(dir, "scanpy_nobatch.csv"), stringsAsFactors = FALSE)
py1 <- read.csv(file.path(dir, "scanpy_batch.csv"), stringsAsFactors = FALSE)
py2 <- read.csv(file.path(dir, "scanpy_batch_paper.csv"), stringsAsFactors = FALSE)
stopifnot(identical(py0$gene, rownames(counts)), identical(py1$gene, rownames(counts)),
          identical(py2$gene, rownames(counts)))

t0 <- proc.time()[["elapsed"]]
r0 <- select_hvg_seurat_v3(counts, n_top_genes = 2000L)
t1 <- proc.time()[["elapsed"]]
r1 <- select_hvg_seurat_v3(counts, n_top_genes = 2000L, batch = batch)
t2 <- proc.time()[["elapsed"]]
r2 <- select_hvg_seurat_v3(counts, n_top_genes = 2000L, batch = batch, flavor = "seurat_v3_paper")
cat(sprintf("R timings: no batch %.2fs, 2 batches %.2fs\n", t1 - t0, t2 - t1))

compare("no batch", r0, py0)
r0_ranked <- rownames(r0)[order(r0$highly_variable_rank)][seq_len(2000)]
ov_ref <- length(intersect(rownames(r0)[r0$highly_variable], ref_genes)) / 2000
cat(sprintf("[no batch] overlap with bench/reference/pbmc3k_hvg2000_genes.txt: %.4f; same rank order: %s\n",
            ov_ref, identical(r0_ranked, ref_genes)))
if (ov_ref < 0.99) ok <- FALSE
compare("batch b0/b1, seurat_v3", r1, py1)
compare("batch b0/b1, seurat_v3_paper", r2, py2)

if (!ok) {
  cat("FAIL: overlap below 0.99\n")
  quit(status = 1)
}
cat("OK\n")
