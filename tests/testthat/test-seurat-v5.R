# Seurat v5 assays (layers, split layers joined for training) and IntegrateLayers(). Debian 12
# ships SeuratObject 4.1.3 and Seurat 4.3, which have no Assay5: there this file skips. With
# SeuratObject / Seurat >= 5 it runs: `bash bench/seurat5_check.sh` builds them into a separate
# library and runs it (SeuratObject 5.3.0 and Seurat 5.0.3).

# pbmc_small's counts as a v5 object whose counts are split by its "groups" into counts.g1 / .g2.
split_v5 <- function(counts = pbmc_small_counts()) {
  seu <- SeuratObject::CreateSeuratObject(counts = counts)
  seu$groups <- pbmc_small_seurat()$groups
  seu[["RNA"]] <- split(seu[["RNA"]], f = seu$groups)
  seu
}

test_that("scvi() on a Seurat v5 object with split counts layers", {
  skip_if(utils::packageVersion("SeuratObject") < "5.0.0",
          "SeuratObject >= 5 (Assay5 layers) is not installed")
  counts <- pbmc_small_counts()
  groups <- pbmc_small_seurat()$groups
  seu <- split_v5(counts)
  expect_true(all(c("counts.g1", "counts.g2") %in% SeuratObject::Layers(seu[["RNA"]])))
  expect_silent(seu <- scvi(seu, batch_key = "groups", max_epochs = 5, seed = 1, n_threads = 1,
                            verbose = FALSE, store_expression = TRUE))
  emb <- SeuratObject::Embeddings(seu, "scvi")
  expect_equal(dim(emb), c(80L, 10L))
  expect_identical(rownames(emb), colnames(seu))
  # Joined for training in the object's cell order: the same as training on the joined matrix.
  fit <- scvi_model(counts, batch = groups, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
  expect_equal(unname(emb), unname(get_latent_representation(fit)), tolerance = 1e-5)
  # The wrapper's expression outputs are readable as the data layer.
  den <- SeuratObject::LayerData(seu[["scvi_denoised"]], layer = "data")
  expect_equal(dim(den), c(230L, 80L))
  # Queries read the joined layers back from the object; DE groups come from meta.data.
  expect_equal(dim(get_normalized_expression(seu)), c(230L, 80L))
  de <- differential_expression(seu, groupby = "groups", group1 = "g1", seed = 1, silent = TRUE,
                                n_samples_overall = 200)
  expect_equal(nrow(de), 230L)
  # Without batch_key, split counts layers are the batches, and scvi() says so.
  expect_message(byl <- scvi(seu, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE,
                             store_expression = FALSE), "split \"counts\" layers .* are the batches \\(g1, g2\\)")
  expect_identical(byl@misc$scvi$batches, c("g1", "g2"))
  # A v5 object with a single (unsplit) counts layer.
  one <- SeuratObject::CreateSeuratObject(counts = counts)
  one <- scvi(one, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE, store_expression = FALSE)
  expect_equal(dim(SeuratObject::Embeddings(one, "scvi")), c(80L, 10L))
})

test_that("Seurat v5's IntegrateLayers() runs scvi_integration on split layers", {
  skip_if(!requireNamespace("Seurat", quietly = TRUE) || utils::packageVersion("Seurat") < "5.0.0",
          "Seurat >= 5 (IntegrateLayers) is not installed")
  seu <- split_v5()
  seu <- suppressWarnings(Seurat::NormalizeData(seu, verbose = FALSE))
  seu <- Seurat::FindVariableFeatures(seu, nfeatures = 100, verbose = FALSE)
  seu <- Seurat::ScaleData(seu, verbose = FALSE)
  seu <- Seurat::RunPCA(seu, npcs = 10, verbose = FALSE)
  seu <- Seurat::IntegrateLayers(seu, method = scvi_integration, new.reduction = "integrated.scvi",
                                 max_epochs = 3, seed = 1, n_threads = 1, verbose = FALSE)
  expect_true("integrated.scvi" %in% SeuratObject::Reductions(seu))
  emb <- SeuratObject::Embeddings(seu, "integrated.scvi")
  expect_identical(rownames(emb), colnames(seu))
  expect_equal(ncol(emb), 10L)
  fit <- seu[["integrated.scvi"]]@misc$model
  expect_identical(fit$batches, c("g1", "g2"))
  expect_setequal(fit$genes, SeuratObject::VariableFeatures(seu))
  # the layers are still split: IntegrateLayers() leaves the assay as it was
  expect_true(all(c("counts.g1", "counts.g2") %in% SeuratObject::Layers(seu[["RNA"]])))
  # the usual downstream step works on the new reduction
  seu <- Seurat::FindNeighbors(seu, reduction = "integrated.scvi", dims = 1:10, verbose = FALSE)
  expect_true(length(SeuratObject::Graphs(seu)) > 0)
})
