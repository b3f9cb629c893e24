test_that("scvi() on a Seurat object adds an 'scvi' DimReduc and keeps the model", {
  seu <- suppressMessages(scvi(pbmc_small_seurat(), max_epochs = 10, seed = 2, n_threads = 1, verbose = FALSE))
  expect_true("scvi" %in% SeuratObject::Reductions(seu))
  emb <- SeuratObject::Embeddings(seu, "scvi")
  expect_equal(dim(emb), c(80L, 10L))
  expect_identical(rownames(emb), colnames(seu))
  expect_identical(SeuratObject::Key(seu[["scvi"]]), "scvi_")
  expect_identical(colnames(emb), paste0("scvi_", 1:10))
  expect_s3_class(seu@misc$scvi, "scvi_model")
  expect_null(seu@misc$scvi$data)  # the object holds the counts; the model does not copy them
  # Queries take the object.
  expect_equal(get_latent_representation(seu), emb, ignore_attr = TRUE, tolerance = 1e-6)
  h <- training_history(seu)
  expect_equal(nrow(h), 10L)
  expect_true(all(c("elbo_train", "elbo_validation", "reconstruction_loss_train",
                    "kl_local_train", "kl_weight") %in% names(h)))
  ne <- get_normalized_expression(seu, library_size = 1e4)
  expect_equal(dim(ne), c(230L, 80L))
  expect_equal(unname(colSums(ne)), rep(1e4, 80), tolerance = 1e-4)
})

test_that("scvi() on Seurat uses a metadata column as batch", {
  seu <- scvi(pbmc_small_seurat(), batch_key = "groups", max_epochs = 5, seed = 2, n_threads = 1,
              verbose = FALSE)
  fit <- seu@misc$scvi
  expect_identical(fit$batches, c("g1", "g2"))
  expect_identical(fit$batch_key, "groups")
  expect_equal(dim(SeuratObject::Embeddings(seu, "scvi")), c(80L, 10L))
})

test_that("a custom reduction name and key are honoured", {
  seu <- scvi(pbmc_small_seurat(), reduction_name = "scvi2", reduction_key = "SCVI2_",
              max_epochs = 3, seed = 1, n_threads = 1, verbose = FALSE)
  expect_true("scvi2" %in% SeuratObject::Reductions(seu))
  expect_identical(colnames(SeuratObject::Embeddings(seu, "scvi2"))[1], "SCVI2_1")
})
