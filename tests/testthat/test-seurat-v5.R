# Seurat v5 assays (layers, split layers joined for training). Debian 12 ships SeuratObject
# 4.1.3, which has no Assay5: there this file skips; with SeuratObject >= 5 it runs (checked with
# SeuratObject 5.4.0).

test_that("scvi() on a Seurat v5 object with split counts layers", {
  skip_if(utils::packageVersion("SeuratObject") < "5.0.0",
          "SeuratObject >= 5 (Assay5 layers) is not installed")
  counts <- pbmc_small_counts()
  groups <- pbmc_small_seurat()$groups
  seu <- SeuratObject::CreateSeuratObject(counts = counts)
  seu$groups <- groups
  seu[["RNA"]] <- split(seu[["RNA"]], f = seu$groups)
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
  # A v5 object with a single (unsplit) counts layer.
  one <- SeuratObject::CreateSeuratObject(counts = counts)
  one <- scvi(one, max_epochs = 2, seed = 1, n_threads = 1, verbose = FALSE, store_expression = FALSE)
  expect_equal(dim(SeuratObject::Embeddings(one, "scvi")), c(80L, 10L))
})
