# Seurat v5's IntegrateLayers() contract: the method is called with the assay, the layer
# membership as `groups` and the variable features, and returns a named list of DimReducs.

test_that("scvi_integration() answers IntegrateLayers()'s call with a DimReduc", {
  skip_if_not_installed("SeuratObject")
  seu <- pbmc_small_seurat()
  expect_identical(attr(scvi_integration, "Seurat.method"), "integration")
  groups <- data.frame(group = seu$groups, row.names = colnames(seu))
  # the arguments IntegrateLayers() passes, as it passes them
  res <- scvi_integration(object = seu[["RNA"]], assay = "RNA", orig = NULL, layers = "counts",
                          scale.layer = "scale.data", features = rownames(seu), groups = groups,
                          new.reduction = "integrated.scvi", reduction.key = "integratedscvi_",
                          max_epochs = 3, seed = 1, n_threads = 1, verbose = FALSE)
  expect_named(res, "integrated.scvi")
  dr <- res[["integrated.scvi"]]
  expect_s4_class(dr, "DimReduc")
  emb <- SeuratObject::Embeddings(dr)
  expect_identical(rownames(emb), colnames(seu))
  expect_equal(ncol(emb), 10L)
  expect_identical(dr@misc$model$batches, c("g1", "g2"))
  # the cells' batches are the groups, in the object's cell order
  fit <- dr@misc$model
  expect_equal(unname(emb), unname(get_latent_representation(
    fit, newdata = scviR:::.assay_data(seu, "RNA", "counts"), batch = seu$groups)), tolerance = 1e-6)
  for (i in names(res)) seu[[i]] <- res[[i]]
  expect_true("integrated.scvi" %in% SeuratObject::Reductions(seu))
  expect_error(scvi_integration(seu[["RNA"]], features = rownames(seu)), "two batches",
               class = "scvir_config_error")
  expect_error(scvi_integration(seu), "must be a Seurat assay", class = "scvir_input_error")
})
