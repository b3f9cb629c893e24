# prepare_query(): a query's genes matched to a reference model (reordered, zero-filled,
# trimmed), for matrices, Seurat and SingleCellExperiment objects. pbmc_small, tiny trainings.

.pq_cache <- new.env()

# A reference model on the first 100 of pbmc_small's 230 genes (3 epochs), shared below.
pq_fit <- function() {
  if (is.null(.pq_cache$fit)) .pq_cache$fit <- quick_fit(pbmc_small_counts()[1:100, ], max_epochs = 3L)
  .pq_cache$fit
}

# Checks a prepared genes x cells matrix against the original counts: the model's genes in its
# order, the query's values for the genes it had and zeros for the others.
expect_prepared <- function(prepared, fit, original, kept) {
  expect_identical(rownames(prepared), fit$genes)
  expect_identical(colnames(prepared), colnames(original))
  filled <- setdiff(fit$genes, kept)
  expect_equal(as.matrix(prepared[kept, , drop = FALSE]), as.matrix(original[kept, , drop = FALSE]))
  if (length(filled)) expect_true(all(as.matrix(prepared[filled, , drop = FALSE]) == 0))
}

# The messages an expression emits (muffled), its value assigned as a side effect if wanted.
collect_messages <- function(expr) {
  msgs <- character()
  withCallingHandlers(expr, message = function(m) {
    msgs <<- c(msgs, conditionMessage(m))
    invokeRestart("muffleMessage")
  })
  msgs
}

test_that("prepare_query() reorders, zero-fills and trims a sparse matrix", {
  fit <- pq_fit()
  counts <- pbmc_small_counts()
  # 90 of the model's genes in reverse order, and 50 genes it does not know.
  query <- counts[c(rev(11:100), 101:150), ]
  expect_message(prepared <- prepare_query(query, fit), "10 of the reference model's 100 genes")
  expect_s4_class(prepared, "dgCMatrix")
  expect_equal(dim(prepared), c(100L, 80L))
  expect_prepared(prepared, fit, counts, rownames(counts)[11:100])
  # Filled genes are empty columns of the sparse structure: nothing stored for them.
  expect_equal(sum(Matrix::rowSums(prepared[1:10, ] != 0)), 0)
  expect_equal(length(prepared@x), length(counts[11:100, ]@x))
  z <- get_latent_representation(fit, newdata = prepared)
  expect_equal(dim(z), c(80L, 10L))
  expect_true(all(is.finite(z)))

  # A query that already matches comes back as it is, without a message.
  expect_silent(same <- prepare_query(counts[1:100, ], fit))
  expect_identical(same, counts[1:100, ])
  # The model's genes in another order: reordered, nothing filled, nothing said.
  expect_silent(shuffled <- prepare_query(counts[c(100:1, 150:200), ], fit))
  expect_identical(shuffled, counts[1:100, ])

  # A base matrix stays a base matrix (with its storage mode); other matrices become dgCMatrix.
  dense <- as.matrix(query)
  storage.mode(dense) <- "integer"
  prepared_dense <- suppressMessages(prepare_query(dense, fit))
  expect_true(is.matrix(prepared_dense))
  expect_identical(storage.mode(prepared_dense), "integer")
  expect_equal(unname(prepared_dense), unname(as.matrix(prepared)))
  expect_identical(dimnames(prepared_dense), dimnames(prepared))
  triplet <- suppressMessages(prepare_query(methods::as(query, "TsparseMatrix"), fit))
  expect_s4_class(triplet, "dgCMatrix")
  expect_equal(triplet, prepared)
})

test_that("low overlap warns, no overlap and duplicated genes are errors", {
  fit <- pq_fit()
  counts <- pbmc_small_counts()
  # 6 of the 100 genes: a classed warning naming the share and the filled genes.
  w <- expect_warning(low <- prepare_query(counts[95:150, ], fit),
                      class = "scvir_gene_overlap_warning")
  expect_match(conditionMessage(w), "6.0%", fixed = TRUE)
  expect_match(conditionMessage(w), "94 missing gene(s) were filled with zero counts", fixed = TRUE)
  expect_prepared(low, fit, counts, rownames(counts)[95:100])
  expect_equal(dim(get_latent_representation(fit, newdata = low)), c(80L, 10L))
  # 80% exactly is enough: a message, no warning.
  expect_message(prepare_query(counts[21:100, ], fit), "20 of the reference model's 100 genes")

  err <- expect_error(prepare_query(counts[101:230, ], fit), class = "scvir_input_error")
  expect_match(conditionMessage(err), "none of the reference model's 100 genes is in the query")
  expect_match(conditionMessage(err), "\"MS4A1\"", fixed = TRUE)
  expect_match(conditionMessage(err), rownames(counts)[101], fixed = TRUE)
  expect_match(conditionMessage(err), "Ensembl", fixed = TRUE)

  dup <- counts[1:100, ]
  rownames(dup)[2] <- rownames(dup)[1]
  err <- expect_error(prepare_query(dup, fit), class = "scvir_input_error")
  expect_match(conditionMessage(err), "duplicated gene names", fixed = TRUE)
  expect_match(conditionMessage(err), rownames(counts)[1], fixed = TRUE)

  unnamed <- counts[1:100, ]
  rownames(unnamed) <- NULL
  expect_error(prepare_query(unnamed, fit), "no gene \\(row\\) names", class = "scvir_input_error")
  expect_error(prepare_query(counts, fit, assay = "RNA"), "assay applies to",
               class = "scvir_config_error")
  expect_error(prepare_query(counts, fit, wich = "scvi"), "did you mean `which`",
               class = "scvir_config_error")
  expect_error(prepare_query(counts, 42), "reference must be", class = "scvir_input_error")
})

test_that("prepare_query() takes the reference from an object or a saved directory", {
  fit <- pq_fit()
  counts <- pbmc_small_counts()
  query <- counts[c(rev(11:100), 101:150), ]
  expected <- suppressMessages(prepare_query(query, fit))
  dir <- tempfile("scvir-pq-")
  save_model(fit, dir)
  expect_identical(suppressMessages(prepare_query(query, dir)), expected)
  unlink(file.path(dir, "fit.rds"))
  expect_identical(suppressMessages(prepare_query(query, dir)), expected)
  unlink(dir, recursive = TRUE)
  expect_error(prepare_query(query, dir), "save_model()", fixed = TRUE, class = "scvir_input_error")

  seu <- scvi(pbmc_small_seurat(), subset_genes = rownames(counts)[1:100], max_epochs = 2, seed = 1,
              n_threads = 1, verbose = FALSE, use_highly_variable_genes = FALSE)
  from_seurat <- suppressMessages(prepare_query(query, seu))
  expect_identical(rownames(from_seurat), seu@misc$scvi$genes)
  expect_error(prepare_query(query, pbmc_small_seurat()), "holds no scVI or scANVI model",
               class = "scvir_input_error")
})

test_that("prepare_query() keeps a Seurat query a Seurat object", {
  skip_if_not_installed("SeuratObject")
  fit <- pq_fit()
  counts <- pbmc_small_counts()
  seu <- pbmc_small_seurat()
  keep <- rownames(counts)[c(rev(11:100), 101:150)]
  query <- subset(seu, features = keep)
  prepared <- suppressMessages(prepare_query(query, fit))
  expect_s4_class(prepared, "Seurat")
  expect_identical(rownames(prepared), fit$genes)
  expect_identical(colnames(prepared), colnames(query))
  expect_identical(prepared$groups, query$groups)
  expect_identical(prepared$RNA_snn_res.1, query$RNA_snn_res.1)
  expect_identical(SeuratObject::Idents(prepared), SeuratObject::Idents(query))
  m <- scviR:::.assay_data(prepared, "RNA", "counts")
  expect_s4_class(m, "dgCMatrix")
  expect_prepared(m, fit, counts, rownames(counts)[11:100])
  expect_equal(dim(get_latent_representation(fit, newdata = m)), c(80L, 10L))
  # Other assays and reductions are named as they are left behind.
  msgs <- collect_messages(prepare_query(query, fit))
  expect_true(any(grepl("not carried over: .*\"pca\"", msgs)))
})

test_that("prepare_query() keeps a SingleCellExperiment query a SingleCellExperiment", {
  skip_if_not_installed("SingleCellExperiment")
  fit <- pq_fit()
  counts <- pbmc_small_counts()
  rows <- c(rev(11:100), 101:150)
  sce <- pbmc_small_sce()[rows, ]
  SummarizedExperiment::assay(sce, "logcounts") <- log1p(SummarizedExperiment::assay(sce, "counts"))
  SummarizedExperiment::rowData(sce)$symbol <- paste0("sym_", rownames(sce))
  msgs <- collect_messages(prepared <- prepare_query(sce, fit))
  expect_true(any(grepl("dropped: assay \"logcounts\"", msgs, fixed = TRUE)))
  expect_s4_class(prepared, "SingleCellExperiment")
  expect_identical(SummarizedExperiment::assayNames(prepared), "counts")
  expect_identical(rownames(prepared), fit$genes)
  expect_identical(SummarizedExperiment::colData(prepared), SummarizedExperiment::colData(sce))
  m <- SummarizedExperiment::assay(prepared, "counts")
  expect_s4_class(m, "dgCMatrix")
  expect_prepared(m, fit, counts, rownames(counts)[11:100])
  # rowData follows the genes kept; filled genes have none.
  rd <- SummarizedExperiment::rowData(prepared)
  expect_identical(rd[rownames(counts)[11:100], "symbol"], paste0("sym_", rownames(counts)[11:100]))
  expect_true(all(is.na(rd[rownames(counts)[1:10], "symbol"])))
  expect_equal(dim(get_latent_representation(fit, newdata = m)), c(80L, 10L))
})
