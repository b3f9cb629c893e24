# Counts left on disk (read_h5ad(backed = TRUE), .h5ad paths): the bundled PBMC 3k (real counts)
# read in blocks must give what the same counts in memory give.

pbmc3k_counts <- function() {
  if (is.null(.pbmc3k_cache$counts)) {
    .pbmc3k_cache$counts <- SingleCellExperiment::counts(read_h5ad(pbmc3k_path(), layers = FALSE))
  }
  .pbmc3k_cache$counts
}

test_that("a backed handle describes the file and reads cells on request", {
  skip_if_not_installed("SingleCellExperiment")
  h <- read_h5ad(pbmc3k_path(), backed = TRUE)
  x <- pbmc3k_counts()
  expect_s3_class(h, "scvir_h5ad")
  expect_equal(dim(h), dim(x))
  expect_identical(dimnames(h), dimnames(x))
  expect_output(print(h), "2638 cells x 2000 genes")
  genes <- rev(rownames(x)[c(3, 10, 500)])
  v <- h[genes, ]
  expect_s3_class(v, "scvir_h5ad")
  expect_equal(dim(v), c(3L, ncol(x)))
  expect_output(print(v), "of 2000 in the file")
  cells <- c(17L, 2L, 2638L, 17L)
  expect_identical(v[, cells], x[genes, cells])
  expect_error(h[, 5000], class = "scvir_input_error")
})

test_that("training from disk reaches the in-memory fit, and the latent is the same from either", {
  skip_if_not_installed("SingleCellExperiment")
  x <- pbmc3k_counts()
  fit2 <- function(counts) {
    scvi_model(counts, n_top_genes = NULL, max_epochs = 12L, seed = 1L, n_threads = 2L, verbose = FALSE)
  }
  fit_d <- fit2(pbmc3k_path())
  fit_m <- fit2(x)
  # The same split of cells; minibatches differ (blocks on disk), the objective does not.
  expect_identical(fit_d$validation_indices, fit_m$validation_indices)
  last <- function(f) utils::tail(f$history$elbo_validation, 1)
  expect_lt(abs(last(fit_d) - last(fit_m)) / last(fit_m), 0.01)
  expect_s3_class(fit_d$data$counts, "scvir_h5ad")
  # The model does not hold the file's cell names; queries read them.
  expect_null(fit_d$cells)
  expect_output(print(fit_d), "2000 genes x 2638 cells")
  z_disk <- get_latent_representation(fit_d)
  expect_identical(rownames(z_disk), colnames(x))
  expect_equal(z_disk, get_latent_representation(fit_d, newdata = x), tolerance = 0)
  # Cells picked by position are read into memory.
  # (a minibatch of 2 cells rounds differently from one of 128)
  expect_equal(get_latent_representation(fit_d, indices = c(5, 1)), z_disk[c(5, 1), ], tolerance = 1e-5)
  # A model keeps the handle, not the counts, and still finds the file after saveRDS().
  tmp <- tempfile(fileext = ".rds")
  on.exit(unlink(tmp))
  saveRDS(fit_d, tmp)
  expect_lt(as.numeric(utils::object.size(fit_d$data)), 1e6)
  expect_equal(get_latent_representation(readRDS(tmp)), z_disk, tolerance = 0)
})

test_that("a handle holding the counts in memory trains and answers as the file does, and outlives the file", {
  skip_if_not_installed("SingleCellExperiment")
  dir <- tempfile("scvir-memory-")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE))
  p <- file.path(dir, "pbmc3k.h5ad")
  file.copy(pbmc3k_path(), p)
  h <- read_h5ad(p, backed = "memory")
  d <- read_h5ad(p, backed = TRUE)
  expect_s3_class(h, "scvir_h5ad")
  expect_identical(dimnames(h), dimnames(d))
  expect_output(print(h), "Counts in memory \\([0-9.]+ MB\\), read from")
  genes <- dimnames(d)[[1]][c(40, 2, 1999)]
  expect_identical(h[genes, c(3L, 2638L, 3L)], d[genes, c(3L, 2638L, 3L)])
  expect_identical(select_hvg_seurat_v3(h, n_top_genes = 300L), select_hvg_seurat_v3(d, n_top_genes = 300L))
  fit2 <- function(x) scvi_model(x, n_top_genes = NULL, max_epochs = 3L, seed = 4L, n_threads = 1L, verbose = FALSE)
  fit_h <- fit2(h)
  fit_d <- fit2(d)
  # The same blocks of cells in the same order: the same model.
  hist <- function(f) f$history[setdiff(names(f$history), "train_seconds")]
  expect_identical(hist(fit_h), hist(fit_d))
  z <- get_latent_representation(fit_d)
  expect_identical(get_latent_representation(fit_h), z)
  # Read once: the file can go, the handle and its model still answer.
  rds <- file.path(dir, "handle.rds")
  saveRDS(h, rds)
  unlink(p)
  expect_identical(get_latent_representation(fit_h), z)
  # A handle saved and loaded again reads the file again at its first use: here it is gone.
  h2 <- readRDS(rds)
  expect_output(print(h2), "read again at first use")
  suppressMessages(expect_error(get_latent_representation(fit_h, newdata = h2), "pbmc3k.h5ad",
                                class = "scvir_input_error"))
  file.copy(pbmc3k_path(), p)
  expect_message(z2 <- get_latent_representation(fit_h, newdata = h2), "into memory again",
                 class = "scvir_progress")
  expect_identical(z2, z)
  expect_error(read_h5ad(p, backed = "mem"), "TRUE, FALSE or \"memory\"", class = "scvir_config_error")
})

test_that("obs columns name batches and labels; scANVI trains from disk", {
  skip_if_not_installed("SingleCellExperiment")
  h <- read_h5ad(pbmc3k_path(), backed = TRUE)
  sce <- read_h5ad(pbmc3k_path(), layers = FALSE)
  fit <- quick_fit(h, batch = "cell_type", n_top_genes = NULL, max_epochs = 3L)
  expect_identical(fit$batches, levels(factor(sce$cell_type)))
  expect_error(quick_fit(h, batch = "donor", max_epochs = 1L), "no column \"donor\"", class = "scvir_input_error")
  labels <- as.character(sce$cell_type)
  labels[seq(1, length(labels), by = 3)] <- "Unknown"
  sc <- scanvi(h, labels = labels, n_top_genes = NULL, max_epochs = 3L, seed = 1, n_threads = 1L,
               verbose = FALSE)
  expect_s3_class(sc, "scanvi_model")
  pred <- predict(sc)
  expect_length(pred, ncol(sce))
  # Trained for 3 epochs only: better than chance is what is checked.
  known <- labels != "Unknown"
  expect_gt(mean(pred[known] == labels[known]), 0.5)
})

test_that("gene selection on disk equals seurat_v3 in memory", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_h5ad(pbmc3k_path(), layers = FALSE)
  # loess warns on the smallest cell types (a few cells), in memory as on disk.
  on_disk <- suppressWarnings(select_hvg_seurat_v3(pbmc3k_path(), n_top_genes = 400L, batch = "cell_type"))
  in_memory <- suppressWarnings(select_hvg_seurat_v3(SingleCellExperiment::counts(sce), n_top_genes = 400L,
                                                     batch = sce$cell_type))
  expect_equal(on_disk, in_memory, tolerance = 1e-10)
  expect_identical(on_disk$highly_variable, in_memory$highly_variable)
})

test_that("DE of a model trained from disk reads only the compared cells, with the in-memory result", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- read_h5ad(pbmc3k_path(), layers = FALSE)
  fit <- quick_fit(pbmc3k_path(), n_top_genes = NULL, max_epochs = 5L)
  g <- as.character(sce$cell_type)
  de_disk <- differential_expression(fit, groupby = g, group1 = "B", group2 = "CD14 Mono",
                                     seed = 3, silent = TRUE)
  de_mem <- differential_expression(fit, newdata = SingleCellExperiment::counts(sce), groupby = g,
                                    group1 = "B", group2 = "CD14 Mono", seed = 3, silent = TRUE)
  expect_equal(de_disk, de_mem, tolerance = 1e-6)
  expect_gt(nrow(de_disk), 1000)
  # importance-weighted expression samples read the cells from the file: the in-memory draws
  w_disk <- get_normalized_expression(fit, weights = "importance", n_samples_overall = 100, seed = 2,
                                      importance_weighting_kwargs = list(max_cells = 30, n_mc_samples = 10))
  w_mem <- get_normalized_expression(fit, newdata = SingleCellExperiment::counts(sce), weights = "importance",
                                     n_samples_overall = 100, seed = 2,
                                     importance_weighting_kwargs = list(max_cells = 30, n_mc_samples = 10))
  expect_equal(dim(w_disk), c(2000L, 100L))
  expect_true(all(colnames(w_disk) %in% colnames(sce)))
  expect_equal(w_disk, w_mem, tolerance = 1e-6)
})

test_that("bad files on disk give classed errors naming the file and the cell", {
  skip_if_not_installed("SingleCellExperiment")
  dir <- tempfile("scvir-backed-")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE))
  x <- pbmc_small_counts()
  # Normalised (non-integer) values: a layer of log-normalised expression.
  # (an object without reductions: write_h5ad() once failed on it)
  sce <- SingleCellExperiment::SingleCellExperiment(list(counts = x, logcounts = log1p(x)))
  p <- file.path(dir, "normalised.h5ad")
  write_h5ad(sce, p)
  h <- read_h5ad(p, backed = TRUE, layer = "logcounts")
  e <- expect_error(quick_fit(h, n_top_genes = NULL, max_epochs = 1L), class = "scvir_input_error")
  expect_match(conditionMessage(e), "normalised.h5ad")
  expect_match(conditionMessage(e), "raw UMI counts")
  # A cell without counts.
  z <- x
  z[, 7] <- 0
  z <- methods::as(z, "CsparseMatrix")
  p2 <- file.path(dir, "empty.h5ad")
  write_h5ad(z, p2)
  expect_error(quick_fit(p2, n_top_genes = NULL, max_epochs = 1L), "cell 7 has no counts", class = "scvir_input_error")
  # Not a file, a missing file.
  expect_error(read_h5ad(file.path(dir, "none.h5ad"), backed = TRUE), "none.h5ad")
  expect_error(quick_fit(file.path(dir, "none.h5ad")), "none.h5ad")
  # A model trained on disk whose file is gone says so, naming it.
  p3 <- file.path(dir, "gone.h5ad")
  write_h5ad(x, p3)
  fit <- quick_fit(p3, n_top_genes = NULL, max_epochs = 1L)
  unlink(p3)
  expect_error(get_latent_representation(fit), "gone.h5ad", class = "scvir_input_error")
})

test_that("a file rewritten under a handle, or under a model trained from it, is refused", {
  skip_if_not_installed("SingleCellExperiment")
  dir <- tempfile("scvir-rewritten-")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE))
  x <- pbmc_small_counts()
  p <- file.path(dir, "cells.h5ad")
  write_h5ad(x, p)
  h <- read_h5ad(p, backed = TRUE)
  m <- read_h5ad(p, backed = "memory")
  fit <- quick_fit(h, n_top_genes = NULL, max_epochs = 1L)
  z <- get_latent_representation(fit)
  saved_m <- tempfile(fileext = ".rds", tmpdir = dir)
  saveRDS(m, saved_m)
  # The same genes and as many cells, in another order: without the check, the model's queries
  # would read the new cells under the names read before.
  swapped <- x[, c(2, 1, 3:ncol(x))]
  write_h5ad(swapped, p, overwrite = TRUE)
  rewritten <- "cells.h5ad: X changed since it was opened"
  expect_error(get_latent_representation(fit), rewritten, class = "scvir_input_error")
  expect_error(h[, 1:2], rewritten, class = "scvir_input_error")
  expect_error(quick_fit(h, n_top_genes = 50L, max_epochs = 1L), rewritten, class = "scvir_input_error")
  # A handle in memory serves what it read; saved and loaded, it reads the file again and refuses it.
  expect_identical(m[, 1:2], x[, 1:2])
  expect_error(readRDS(saved_m)[, 1:2], "changed since it was opened", class = "scvir_input_error")
  # The handle and the model were left as they were: the file opened again answers, and with the
  # original file back the model gives its latent again.
  z2 <- get_latent_representation(fit, newdata = read_h5ad(p, backed = TRUE))
  expect_identical(rownames(z2)[1:2], colnames(x)[2:1])
  expect_equal(z2[colnames(x), ], z, tolerance = 1e-5)
  write_h5ad(x, p, overwrite = TRUE)
  expect_equal(get_latent_representation(fit), z, tolerance = 0)
})

# scVI on a SingleCellExperiment whose counts stay in their file, against the same counts `x` in
# memory.
expect_trains_from_file <- function(sce, x) {
  out <- scvi(sce, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE, n_top_genes = 500,
              store_expression = FALSE)
  fit <- S4Vectors::metadata(out)$scvi
  mem <- scvi_model(x, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE, n_top_genes = 500)
  # the same genes (HVG selection streamed from the file), the same data: ELBO within 2%
  expect_identical(fit$genes, mem$genes)
  elbo <- function(f) utils::tail(training_history(f)$elbo_validation, 1)
  expect_lt(abs(elbo(fit) / elbo(mem) - 1), 0.02)
  # the object's counts stay a DelayedMatrix; the latent read again from the file is the one stored
  expect_s4_class(SingleCellExperiment::counts(out), "DelayedMatrix")
  expect_equal(get_latent_representation(out), SingleCellExperiment::reducedDim(out, "scVI"), tolerance = 1e-6)
  # and equals the latent of the same model on the counts in memory
  expect_equal(get_latent_representation(fit, newdata = x[fit$genes, ]),
               SingleCellExperiment::reducedDim(out, "scVI"), tolerance = 1e-5, ignore_attr = TRUE)
}

test_that("HDF5Array-backed SingleCellExperiment counts train and answer queries from their file", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("HDF5Array")
  x <- pbmc3k_counts()[, 1:600]
  path <- tempfile(fileext = ".h5")
  on.exit(unlink(path))
  d <- HDF5Array::writeHDF5Array(as.matrix(x), path, name = "counts", verbose = FALSE)
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = d))
  expect_error(scvi(sce, max_epochs = 1, verbose = FALSE), "no gene names", class = "scvir_input_error")
  dimnames(sce) <- dimnames(x)
  h <- scviR:::.delayed_backed(SingleCellExperiment::counts(sce))
  expect_s3_class(h, "scvir_h5ad")
  expect_identical(dimnames(h), dimnames(x))
  expect_identical(h[, c(5L, 1L, 600L)], x[, c(5L, 1L, 600L)])
  expect_trains_from_file(sce, x)
  # A DelayedMatrix with pending operations is read into memory and gives the same model input.
  ops <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = d[, 1:300] * 1L))
  dimnames(ops) <- dimnames(x[, 1:300])
  expect_null(scviR:::.delayed_backed(SingleCellExperiment::counts(ops)))
  expect_equal(dim(SingleCellExperiment::reducedDim(
    scvi(ops, max_epochs = 1, seed = 1, n_threads = 1, verbose = FALSE, n_top_genes = NULL,
         store_expression = FALSE), "scVI")), c(300L, 10L))
})

# Cell Ranger's HDF5 layout (genes x cells in CSC form under "matrix"), written with rhdf5 and
# opened with HDF5Array::TENxMatrix() in another R process: Debian's rhdf5 2.42 fails on the
# second TENxMatrix() (or other failed H5Dopen) of a session, so this session's later tests stay
# clear of it. Returns the TENxMatrix, which refers to the file.
tenx_matrix <- function(x, dir) {
  saveRDS(x, file.path(dir, "x.rds"))
  script <- file.path(dir, "write.R")
  writeLines(c(
    "suppressMessages(library(Matrix)); a <- commandArgs(TRUE); x <- readRDS(a[1]); path <- a[2]",
    "rhdf5::h5createFile(path)",
    "rhdf5::h5createGroup(path, 'matrix')",
    "rhdf5::h5createGroup(path, 'matrix/features')",
    "rhdf5::h5write(as.integer(x@x), path, 'matrix/data')",
    "rhdf5::h5write(x@i, path, 'matrix/indices')",
    "rhdf5::h5write(x@p, path, 'matrix/indptr')",
    "rhdf5::h5write(dim(x), path, 'matrix/shape')",
    "rhdf5::h5write(x@Dimnames[[2]], path, 'matrix/barcodes')",
    "rhdf5::h5write(x@Dimnames[[1]], path, 'matrix/features/id')",
    "rhdf5::h5write(x@Dimnames[[1]], path, 'matrix/features/name')",
    "rhdf5::h5write(rep('Gene Expression', nrow(x)), path, 'matrix/features/feature_type')",
    "rhdf5::h5closeAll()",
    "saveRDS(HDF5Array::TENxMatrix(path, 'matrix'), a[3])"
  ), script)
  out <- system2(rscript(), c(script, file.path(dir, "x.rds"), file.path(dir, "counts.h5"), file.path(dir, "d.rds")),
                 stdout = TRUE, stderr = TRUE)
  expect_true(file.exists(file.path(dir, "d.rds")), info = paste(out, collapse = "\n"))
  readRDS(file.path(dir, "d.rds"))
}

test_that("a Cell Ranger HDF5 matrix (TENxMatrix) trains and answers queries from its file", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("HDF5Array")
  skip_if_not_installed("rhdf5")
  x <- pbmc3k_counts()[, 1:600]
  dir <- tempfile("scvir-tenx-")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE))
  d <- tenx_matrix(x, dir)
  expect_s4_class(DelayedArray::seed(d), "TENxMatrixSeed")
  expect_identical(dimnames(d), dimnames(x))
  h <- scviR:::.delayed_backed(d)
  expect_s3_class(h, "scvir_h5ad")
  expect_identical(h[, c(5L, 1L, 600L)], x[, c(5L, 1L, 600L)])
  expect_trains_from_file(SingleCellExperiment::SingleCellExperiment(assays = list(counts = d)), x)
  # a subset is a pending operation: read into memory
  expect_null(scviR:::.delayed_backed(d[, 1:10]))
})

test_that("a dense X is read from disk as a CSR X is", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("rhdf5")
  x <- pbmc3k_counts()[1:300, 1:400]
  path <- tempfile(fileext = ".h5ad")
  on.exit(unlink(path))
  write_h5ad(x, path)
  # anndata's dense encoding: a cells x genes dataset (R writes its genes x cells matrix so)
  rhdf5::h5delete(path, "X")
  rhdf5::h5write(as.matrix(x), path, "X")
  fid <- rhdf5::H5Fopen(path)
  did <- rhdf5::H5Dopen(fid, "X")
  rhdf5::h5writeAttribute("array", did, "encoding-type", asScalar = TRUE)
  rhdf5::h5writeAttribute("0.2.0", did, "encoding-version", asScalar = TRUE)
  rhdf5::H5Dclose(did)
  rhdf5::H5Fclose(fid)
  h <- read_h5ad(path, backed = TRUE)
  expect_identical(h[, c(3L, 1L, 400L)], x[, c(3L, 1L, 400L)])
  fit <- scvi_model(h, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE, n_top_genes = NULL)
  expect_equal(dim(get_latent_representation(fit)), c(400L, 10L))
  mem <- scvi_model(x, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE, n_top_genes = NULL)
  elbo <- function(f) utils::tail(training_history(f)$elbo_validation, 1)
  expect_lt(abs(elbo(fit) / elbo(mem) - 1), 0.02) # same data, other minibatch order
  expect_identical(SingleCellExperiment::counts(read_h5ad(path)), x)
})

test_that("a query on disk is mapped onto a reference and trained from its file", {
  skip_if_not_installed("SingleCellExperiment")
  x <- pbmc3k_counts()
  ref <- scvi_model(x[, 1:1500], batch = rep(c("a", "b"), 750), max_epochs = 3, seed = 1,
                    n_threads = 1, verbose = FALSE, n_top_genes = 500, use_observed_lib_size = FALSE)
  path <- tempfile(fileext = ".h5ad")
  on.exit(unlink(path))
  q <- x[, 1501:2638]
  write_h5ad(q, path)
  on_disk <- load_query_data(path, ref, batch = rep("q", ncol(q)), seed = 4, n_threads = 1)
  in_mem <- load_query_data(q, ref, batch = rep("q", ncol(q)), seed = 4, n_threads = 1)
  expect_identical(on_disk$batches, c("a", "b", "q"))
  expect_s3_class(on_disk$data$counts, "scvir_h5ad")
  # the same query model: new columns seeded alike, the new batch's library prior from the file
  expect_equal(scviR:::.model_tensors(on_disk), scviR:::.model_tensors(in_mem), tolerance = 1e-6)
  expect_equal(get_latent_representation(on_disk), get_latent_representation(in_mem), tolerance = 1e-6)
  trained <- train_model(on_disk, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE)
  expect_equal(nrow(training_history(trained)), 2L)
  expect_equal(dim(get_latent_representation(trained)), c(ncol(q), 10L))
  # a file without every reference gene cannot be zero-filled on disk
  short <- tempfile(fileext = ".h5ad")
  on.exit(unlink(short), add = TRUE)
  write_h5ad(q[setdiff(rownames(q), ref$genes[1:3]), ], short)
  expect_error(load_query_data(short, ref, batch = rep("q", ncol(q))), "lacks 3 of the reference",
               class = "scvir_input_error")
})
