# Training and queries on a CUDA GPU: skipped where the linked libtorch has no CUDA device (CI).
# bench/run_gpu_bench.sh runs these on a GPU machine and measures the speed.

test_that("accelerator = 'gpu' trains and answers every query, as on the CPU", {
  skip_if_not(scviR:::.rs_cuda_available(), "no CUDA device")
  x <- pbmc_small_counts()
  fit <- quick_fit(x, accelerator = "gpu", max_epochs = 20L)
  expect_match(fit$device, "Cuda")
  z <- get_latent_representation(fit)
  expect_equal(dim(z), c(ncol(x), 10L))
  expect_true(all(is.finite(z)))
  # The same model queried on the CPU gives the same latent (float32 on both).
  cpu <- fit
  cpu$accelerator <- "cpu"
  expect_equal(get_latent_representation(cpu), z, tolerance = 1e-4)
  ne <- get_normalized_expression(fit, n_samples = 2, seed = 1)
  expect_true(all(is.finite(ne)) && all(ne >= 0))
  g <- SeuratObject::pbmc_small$groups
  de <- differential_expression(fit, groupby = g, group1 = "g1", seed = 1, silent = TRUE)
  expect_true(all(de$proba_de >= 0 & de$proba_de <= 1))
  expect_true(all(is.finite(get_elbo(fit, return_mean = FALSE))))
})
