# Real counts for the tests: SeuratObject's pbmc_small (230 genes x 80 cells, raw UMI counts;
# its `groups` column g1/g2 serves as a batch) and the bundled PBMC 3k (2,000 genes x 2,638 cells).

# pbmc_small flags only 20 variable genes, which leave some cells without counts; most tests
# train on all 230 genes, so the flags are dropped unless `variable_features`.
pbmc_small_seurat <- function(variable_features = FALSE) {
  e <- new.env()
  utils::data("pbmc_small", package = "SeuratObject", envir = e)
  # SeuratObject 5 warns while updating the bundled v3 object's command logs.
  seu <- suppressWarnings(suppressMessages(SeuratObject::UpdateSeuratObject(e$pbmc_small)))
  if (!variable_features) SeuratObject::VariableFeatures(seu) <- character(0)
  seu
}

pbmc_small_counts <- function() {
  scviR:::.assay_data(pbmc_small_seurat(), "RNA", "counts")
}

pbmc_small_sce <- function() {
  seu <- pbmc_small_seurat()
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = scviR:::.assay_data(seu, "RNA", "counts")),
    colData = S4Vectors::DataFrame(seu@meta.data))
}

pbmc3k_path <- function() system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR")

# Short, single-threaded, seeded fits keep the suite fast and repeatable.
quick_fit <- function(counts = pbmc_small_counts(), ..., max_epochs = 15L, seed = 1L) {
  scvi_model(counts, ..., max_epochs = max_epochs, seed = seed, n_threads = 1L, verbose = FALSE)
}

# One PBMC 3k fit (SingleCellExperiment with the model), trained once per test run and shared by
# the tests that need a model of realistic size (DE, SCANVI).
.pbmc3k_cache <- new.env()
pbmc3k_fit <- function() {
  if (is.null(.pbmc3k_cache$sce)) {
    sce <- read_h5ad(pbmc3k_path())
    .pbmc3k_cache$sce <- scvi(sce, max_epochs = 30, seed = 0, n_threads = 2, verbose = FALSE)
  }
  .pbmc3k_cache$sce
}
