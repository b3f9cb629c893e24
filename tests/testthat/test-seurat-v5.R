# Seurat v5 assays (layers, split layers joined for training). Debian 12 ships SeuratObject
# 4.1.3, which has no Assay5: there this file skips; with SeuratObject >= 5 it runs.

test_that("scvi() on a Seurat v5 object with split counts layers", {
  skip_if(utils::packageVersion("SeuratObject") < "5.0.0",
          "SeuratObject >= 5 (Assay5 layers) is not installed")
  counts <- pbmc_small_counts()
  groups <- pbmc_small_seurat()$groups
  seu <- SeuratObject::CreateSeuratObject(counts = counts)
  seu$groups <- groups
  seu[["RNA"]] <- split(seu[["RNA"]], f = seu$groups)
  expect_true(all(c("counts.g1", "counts.g2") %in% SeuratObject::Layers(seu[["RNA"]])))
  seu <- scvi(seu, batch_key = "groups", max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
  emb <- SeuratObject::Embeddings(seu, "scvi")
  expect_equal(dim(emb), c(80L, 10L))
  expect_identical(rownames(emb), colnames(seu))
  # Joined for training in the object's cell order: the same as training on the joined matrix.
  fit <- scvi_model(counts, batch = groups, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
  expect_equal(unname(emb), unname(get_latent_representation(fit)), tolerance = 1e-5)
})
