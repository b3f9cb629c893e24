# Differential expression on real counts: PBMC 3k for the biology, pbmc_small (its g1/g2 groups
# as batches) for batch correction and argument handling.

test_that("change-mode DE finds the B-cell markers on PBMC 3k", {
  sce <- pbmc3k_fit()
  de <- differential_expression(sce, groupby = "cell_type", group1 = "B", mode = "change",
                                seed = 1, silent = TRUE)
  expect_equal(nrow(de), 2000L)
  expect_equal(rownames(de), de$gene)
  expect_equal(unique(de$comparison), "B vs Rest")
  expect_true(all(c("proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "pseudocounts",
                    "delta", "lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max", "raw_mean1",
                    "raw_mean2", "non_zeros_proportion1", "non_zeros_proportion2",
                    "raw_normalized_mean1", "raw_normalized_mean2", "is_de_fdr_0.05", "comparison",
                    "group1", "group2") %in% names(de)))
  top <- head(de, 20)
  expect_true(all(c("MS4A1", "CD79A", "CD79B") %in% top$gene))
  expect_true(all(top[c("MS4A1", "CD79A", "CD79B"), "lfc_mean"] > 0))
  # Sorted by proba_de; probabilities and their complement are consistent.
  expect_false(is.unsorted(rev(de$proba_de)))
  expect_equal(de$proba_not_de, 1 - de$proba_de)
  expect_equal(de$bayes_factor, log(de$proba_de + 1e-8) - log(1 - de$proba_de + 1e-8))
  expect_true(all(de$lfc_min <= de$lfc_median & de$lfc_median <= de$lfc_max))
  expect_true(all(de$delta == 0.25))
  # Raw statistics: recompute the group means of two genes from the counts.
  counts <- SummarizedExperiment::assay(sce, "counts")
  b <- sce$cell_type == "B"
  for (g in c("MS4A1", de$gene[1000])) {
    expect_equal(de[g, "raw_mean1"], mean(counts[g, b]))
    expect_equal(de[g, "raw_mean2"], mean(counts[g, !b]))
    expect_equal(de[g, "non_zeros_proportion1"], mean(counts[g, b] > 0))
    expect_equal(de[g, "raw_normalized_mean1"], mean(counts[g, b] / Matrix::colSums(counts)[b] * 1e4))
  }
  # The FDR flag follows its definition: the largest prefix (by proba_de) whose mean error is
  # within the target.
  p <- sort(de$proba_de, decreasing = TRUE)
  d <- sum(cumsum(1 - p) / seq_along(p) <= 0.05)
  expect_equal(sum(de$is_de_fdr_0.05), d)
  expect_true(all(de$is_de_fdr_0.05[seq_len(d)]))
  expect_gt(d, 20)
})

test_that("lvm-DE (importance weights) finds the B-cell markers on PBMC 3k", {
  skip_on_cran()
  sce <- pbmc3k_fit()
  kw <- list(max_cells = 200, n_mc_samples = 30, truncation = TRUE)
  de <- differential_expression(sce, groupby = "cell_type", group1 = "B", weights = "importance",
                                importance_weighting_kwargs = kw, n_samples_overall = 1000,
                                seed = 1, silent = TRUE)
  top <- head(de, 20)
  expect_true(all(c("MS4A1", "CD79A", "CD79B") %in% top$gene))
  expect_true(all(top[c("MS4A1", "CD79A", "CD79B"), "lfc_mean"] > 0))
  again <- differential_expression(sce, groupby = "cell_type", group1 = "B", weights = "importance",
                                   importance_weighting_kwargs = kw, n_samples_overall = 1000,
                                   seed = 1, silent = TRUE)
  expect_identical(again, de)
  # get_normalized_expression(): n_samples_overall weighted draws, each a cell's proportions
  b <- which(sce$cell_type == "B")
  e <- get_normalized_expression(sce, indices = b[1:100], n_samples_overall = 300,
                                 weights = "importance", importance_weighting_kwargs = kw, seed = 2)
  expect_equal(dim(e), c(2000L, 300L))
  expect_true(all(colnames(e) %in% colnames(sce)[b[1:100]]))
  expect_equal(unname(colSums(e)), rep(1, 300), tolerance = 1e-4)
})

test_that("DE is reproducible for a seed and changes with the seed", {
  sce <- pbmc3k_fit()
  run <- function(seed) differential_expression(sce, groupby = "cell_type", group1 = "NK",
                                                mode = "change", seed = seed, silent = TRUE,
                                                n_samples_overall = 1000)
  a <- run(3)
  expect_identical(a, run(3))
  expect_false(identical(a$lfc_mean, run(4)[rownames(a), "lfc_mean"]))
})

test_that("all groups vs rest, group2, idx expressions and vanilla mode", {
  sce <- pbmc3k_fit()
  all <- differential_expression(sce, groupby = "cell_type", mode = "change", seed = 1,
                                 silent = TRUE, n_samples_overall = 500, fdr_target = 0.1)
  groups <- sort(unique(as.character(sce$cell_type)))
  expect_equal(unique(all$group1), groups)
  expect_true(all(all$group2 == "Rest"))
  expect_equal(nrow(all), 2000L * length(groups))
  expect_true("is_de_fdr_0.1" %in% names(all))
  # Each comparison is sorted on its own.
  for (g in groups) expect_false(is.unsorted(rev(all$proba_de[all$group1 == g])))

  nk <- differential_expression(sce, groupby = "cell_type", group1 = "B", group2 = "NK",
                                mode = "change", seed = 1, silent = TRUE, n_samples_overall = 1000)
  expect_equal(unique(nk$comparison), "B vs NK")
  expect_equal(nk["MS4A1", "raw_mean2"],
               mean(SummarizedExperiment::assay(sce, "counts")["MS4A1", sce$cell_type == "NK"]))
  by_idx <- differential_expression(sce, idx1 = sce$cell_type == "B", idx2 = "cell_type == 'NK'",
                                    mode = "change", seed = 1, silent = TRUE,
                                    n_samples_overall = 1000)
  expect_equal(by_idx$raw_mean1, nk$raw_mean1[match(by_idx$gene, nk$gene)])
  expect_equal(unique(by_idx$comparison), "idx1 vs idx2")
  by_pos <- differential_expression(sce, idx1 = which(sce$cell_type == "B"), mode = "vanilla",
                                    seed = 1, silent = TRUE, n_samples_overall = 1000)
  expect_equal(unique(by_pos$group2), "Rest")
  expect_true(all(c("proba_m1", "proba_m2", "bayes_factor", "scale1", "scale2") %in% names(by_pos)))
  expect_false("proba_de" %in% names(by_pos))
  expect_false(is.unsorted(rev(by_pos$bayes_factor)))
  expect_true("MS4A1" %in% head(by_pos$gene, 20))
  expect_equal(by_pos$proba_m2, 1 - by_pos$proba_m1)

  # delta = NULL estimates a threshold >= 0.1; all_stats = FALSE drops the count statistics.
  est <- differential_expression(sce, groupby = "cell_type", group1 = "B", mode = "change",
                                 delta = NULL, all_stats = FALSE, seed = 1, silent = TRUE,
                                 n_samples_overall = 1000)
  expect_gte(est$delta[1], 0.1)
  expect_false(any(grepl("^raw_|non_zeros", names(est))))
  # A given pseudocount is used as is; test_mode "two" adds both tails.
  two <- differential_expression(sce, groupby = "cell_type", group1 = "B", mode = "change",
                                 pseudocounts = 1e-4, test_mode = "two", seed = 1, silent = TRUE,
                                 n_samples_overall = 1000)
  expect_true(all(two$pseudocounts == 1e-4))
})

test_that("DE from a Seurat object with batch correction (pbmc_small, groups as batches)", {
  seu <- scvi(pbmc_small_seurat(), batch_key = "groups", max_epochs = 15, seed = 1,
              n_threads = 1, verbose = FALSE)
  plain <- differential_expression(seu, groupby = "RNA_snn_res.1", group1 = "0", mode = "change",
                                   seed = 2, silent = TRUE, n_samples_overall = 400)
  corrected <- differential_expression(seu, groupby = "RNA_snn_res.1", group1 = "0",
                                       mode = "change", batch_correction = TRUE, seed = 2,
                                       silent = TRUE, n_samples_overall = 400)
  expect_equal(nrow(corrected), nrow(plain))
  expect_false(isTRUE(all.equal(corrected$scale1, plain$scale1[match(corrected$gene, plain$gene)])))
  one_batch <- differential_expression(seu, groupby = "RNA_snn_res.1", group1 = "0",
                                       mode = "change", batch_correction = TRUE,
                                       batchid1 = "g1", batchid2 = "g1", seed = 2, silent = TRUE,
                                       n_samples_overall = 400)
  expect_equal(nrow(one_batch), nrow(plain))
  expect_error(differential_expression(seu, groupby = "RNA_snn_res.1", batchid1 = "g1",
                                       silent = TRUE), "batch_correction = TRUE")
  expect_error(differential_expression(seu, groupby = "RNA_snn_res.1", batch_correction = TRUE,
                                       batchid1 = "g9", silent = TRUE), "g9.*not a batch")
  # Outlier filtering drops cells but still yields every gene.
  filtered <- differential_expression(seu, groupby = "RNA_snn_res.1", group1 = "0",
                                      filter_outlier_cells = TRUE, seed = 2, silent = TRUE,
                                      n_samples_overall = 400)
  expect_equal(nrow(filtered), nrow(plain))
  expect_false(isTRUE(all.equal(filtered$raw_mean1, plain$raw_mean1[match(filtered$gene, plain$gene)])))
})

test_that("DE on a model fitted to a matrix reads groups from a vector or metadata", {
  fit <- quick_fit()
  seu <- pbmc_small_seurat()
  clusters <- seu$RNA_snn_res.1
  a <- differential_expression(fit, groupby = clusters, group1 = "1", seed = 1, silent = TRUE,
                               n_samples_overall = 300)
  b <- differential_expression(fit, groupby = "RNA_snn_res.1", group1 = "1", seed = 1,
                               silent = TRUE, n_samples_overall = 300, metadata = seu@meta.data)
  expect_identical(a, b)
  expect_error(differential_expression(fit, groupby = "RNA_snn_res.1", silent = TRUE),
               "no cell\\s+metadata")
})

test_that("bad DE inputs give clear errors", {
  fit <- quick_fit()
  meta <- pbmc_small_seurat()@meta.data
  de <- function(...) differential_expression(fit, metadata = meta, silent = TRUE,
                                              n_samples_overall = 100, ...)
  expect_error(de(groupby = "RNA_snn_res.1", group1 = "7"), "group \"7\" is not a value of groupby")
  expect_error(de(groupby = "missing_column"), "groupby \"missing_column\" is not a column")
  expect_error(de(idx1 = rep(FALSE, 80)), "idx1 selects no cells", class = "scvir_input_error")
  expect_error(de(idx1 = 1:10, idx2 = 5:20), "idx1 and idx2 overlap")
  expect_error(de(idx1 = "no_such_column == 1"), "could not be evaluated")
  expect_error(de(idx1 = rep(TRUE, 3)), "one value per cell")
  expect_error(de(idx1 = 0:3), "positions between 1 and 80")
  expect_error(de(groupby = "RNA_snn_res.1", group1 = "0", group2 = "0"), "both \"0\"")
  expect_error(de(groupby = "RNA_snn_res.1", mode = "fast"), "mode must be one of",
               class = "scvir_config_error")
  expect_error(de(groupby = "RNA_snn_res.1", weights = "importance",
                  importance_weighting_kwargs = list(max_cell = 10)), "unknown option",
               class = "scvir_config_error")
  expect_error(de(groupby = "RNA_snn_res.1", importance_weighting_kwargs = list(max_cells = 10)),
               "weights = \"importance\" only", class = "scvir_config_error")
  expect_error(get_normalized_expression(fit, weights = "importance"), "n_samples_overall",
               class = "scvir_config_error")
  expect_error(de(groupby = "RNA_snn_res.1", delta = -1), "delta")
  expect_error(de(groupby = rep("a", 80)), "single group")
  expect_error(de(), "give groupby")
})

test_that("plot_de draws a volcano plot", {
  skip_if_not_installed("ggplot2")
  sce <- pbmc3k_fit()
  de <- differential_expression(sce, groupby = "cell_type", group1 = c("B", "NK"), mode = "change",
                                seed = 1, silent = TRUE, n_samples_overall = 500)
  p <- plot_de(de, n_labels = 5)
  expect_s3_class(p, "ggplot")
  built <- ggplot2::ggplot_build(p)
  expect_equal(nrow(built$data[[1]]), nrow(de))
  expect_equal(nrow(built$data[[4]]), 10L)  # the labels layer
  expect_true(any(built$data[[4]]$x < 0) && any(built$data[[4]]$x > 0))
  expect_error(plot_de(data.frame(x = 1)), "returned by differential_expression")
  expect_error(plot_de(de, comparisons = "CD4 T vs Rest"), "not in de")
})
