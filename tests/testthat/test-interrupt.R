# Ctrl-C during training: a real SIGINT sent to a separate R process that is training. The
# process must catch a classed condition, keep running and leave its data untouched.

test_that("an interrupt stops training cleanly and R goes on", {
  skip_on_os("windows")
  out <- interrupted_run("scvi_model(counts, max_epochs = 1e6, seed = 1, n_threads = 1, verbose = FALSE)")
  expect_true(any(grepl("CAUGHT: training interrupted by the user at epoch [0-9]+ of 1000000; nothing was modified", out)),
              info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^ALIVE TRUE TRUE", out)), info = paste(out, collapse = "\n"))
})

test_that("an interrupt stops scANVI training cleanly too", {
  skip_on_os("windows")
  out <- interrupted_run(paste("scanvi(counts, labels = rep(c('a', 'b', 'Unknown'), length.out = ncol(counts)),",
                               "max_epochs = 1e6, seed = 1, n_threads = 1, verbose = FALSE)"))
  expect_true(any(grepl("CAUGHT: training interrupted by the user", out)), info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^ALIVE TRUE TRUE", out)), info = paste(out, collapse = "\n"))
})

test_that("an interrupt stops training from disk, and the same file trains again in that process", {
  skip_on_os("windows")
  # The bundled PBMC 3k .h5ad, read in blocks by a background thread while training.
  path <- "system.file('extdata', 'pbmc3k_hvg2000.h5ad', package = 'scviR')"
  fit <- function(epochs) {
    sprintf("scvi_model(read_h5ad(%s, backed = TRUE), n_top_genes = NULL, max_epochs = %s, seed = 1, n_threads = 2, verbose = FALSE)",
            path, epochs)
  }
  out <- interrupted_run(fit("1e6"), after = c(
    sprintf("fit <- %s", fit(2)),
    "z <- get_latent_representation(fit)",
    "cat('DONE', nrow(z), all(is.finite(z)), training_history(fit)$epoch[2], '\\n')"
  ))
  expect_true(any(grepl("CAUGHT: training interrupted by the user", out)), info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^ALIVE TRUE TRUE", out)), info = paste(out, collapse = "\n"))
  expect_true(any(grepl("^DONE 2638 TRUE 2", out)), info = paste(out, collapse = "\n"))
})
