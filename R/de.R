# Differential expression (scvi-tools' `differential_expression`): groups are resolved here,
# each comparison runs in the engine, and the per-gene results become one data frame.

#' Differential expression between groups of cells
#'
#' scvi-tools' `differential_expression()`: for each comparison, posterior samples of the
#' normalized expression (gene proportions, library size 1) of both groups are compared gene by
#' gene. `mode = "vanilla"` (Lopez et al. 2018) reports the probability that group 1's expression
#' is larger (`proba_m1`) and its log odds (`bayes_factor`); `mode = "change"` (Boyeau et al.
#' 2019) works on the log2 fold change (LFC) and reports the probability that `|LFC|` exceeds
#' `delta` (`proba_de`), its log odds, LFC summaries, and a posterior expected FDR flag.
#'
#' Groups come from `groupby` (each group of `group1`, default all, against `group2` or the rest)
#' or from `idx1` / `idx2`. Both read the cell metadata: Seurat `meta.data`, SingleCellExperiment
#' `colData`, or `metadata` for a model fitted on a matrix.
#'
#' The procedure and its defaults are scvi-tools' (`mode = "change"` as in the released
#' `SCVI.differential_expression()`, `n_samples_overall = 5000` samples per group,
#' pseudocounts estimated from barely expressed genes, `delta = NULL` estimated with a
#' three-component Gaussian mixture, FDR by cumulative posterior error). Samples are paired
#' element-wise (`use_permutation = FALSE`, scvi-tools' default). Choices that differ:
#' * Only the chosen posterior samples are decoded (scvi-tools decodes `n_samples_overall /
#'   n_cells + 1` samples of every cell, then keeps `n_samples_overall` of them at random): same
#'   distribution, fewer decoder passes.
#' * `filter_outlier_cells` uses a minimum covariance determinant fit from `MASS::cov.rob` (the
#'   role of scikit-learn's `EllipticEnvelope`) and drops the 10% of cells farthest from it.
#' * `delta = NULL` fits the mixture from a deterministic k-means start.
#' * Rows with equal `proba_de` (`bayes_factor` in vanilla mode) are ordered by decreasing
#'   `|lfc_mean|` (`|log(scale1 / scale2)|`); pandas leaves their order unspecified.
#' * Overlapping `idx1` / `idx2`, unknown groups and empty groups are errors.
#' * `weights = "importance"` (lvm-DE) is not available yet and gives an error.
#' * `comparison`, `group1` and `group2` are filled for `idx1` / `idx2` too ("idx1 vs idx2" or
#'   "idx1 vs Rest"); scvi-tools leaves them out there.
#'
#' Memory: one comparison at a time, about `2 x n_samples_overall x n_genes x 8` bytes (80 MB at
#' the defaults for 2,000 genes), whatever the number of cells or comparisons.
#'
#' @param object An `scvi_model`, or a Seurat / SingleCellExperiment object that `scvi()` was run on.
#' @param groupby Column of the cell metadata (or a vector with one value per cell) defining the
#'   groups.
#'   For a Seurat object, `NULL` (with no `idx1`) uses the identity classes, `Idents(object)`.
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param group1 Groups to test, each against `group2` (default: all groups).
#' @param group2 Reference group; `NULL` compares with all other cells ("Rest").
#' @param idx1,idx2 Cells of group 1 / group 2 instead of `groupby`: a logical vector, 1-based
#'   positions, or an R expression as a string evaluated in the cell metadata (e.g.
#'   `"cell_type == 'NK'"`). Without `idx2`, group 2 is all other cells.
#' @param mode `"change"` (the default, as in scvi-tools' released
#'   `SCVI.differential_expression()`) or `"vanilla"` (Lopez et al. 2018's test). scvi-tools'
#'   development branch lists `"vanilla"` as its default; give `mode = "vanilla"` explicitly for
#'   that test.
#' @param delta LFC threshold of change mode (`NULL`: estimated from the data).
#' @param batch_size Cells per minibatch.
#' @param all_stats Add raw count statistics (means, nonzero proportions, normalized means).
#' @param batch_correction Decode both groups in every batch (or `batchid1` / `batchid2`) and
#'   compare within batch, instead of in each cell's own batch.
#' @param batchid1,batchid2 Batches to decode group 1 / group 2 in (`batch_correction` only).
#' @param fdr_target Target posterior expected FDR of the `is_de_fdr_<target>` flag (change mode).
#' @param silent Do not report progress.
#' @param weights `"uniform"`, or `"importance"` for lvm-DE (Boyeau et al. 2023): each group's
#'   posterior samples are drawn with importance weights that favour latent codes explaining many
#'   of the group's cells (scvi-tools' `get_importance_weights`; see
#'   `importance_weighting_kwargs`). It needs the counts, so not on minified models.
#' @param importance_weighting_kwargs lvm-DE options, scvi-tools' names and defaults:
#'   `max_cells = 1024` (anchor cells per group), `truncation = FALSE` (floor the log-weights at
#'   their log-mean), `n_mc_samples = 500` (importance samples of each anchor's marginal
#'   likelihood); `n_mc_samples_per_pass` is accepted and has no effect (the engine bounds memory
#'   itself).
#' @param filter_outlier_cells Drop outlying cells of each group in latent space first.
#' @param n_samples_overall Posterior samples per group.
#' @param pseudocounts Pseudocount of the LFC (`NULL`: estimated).
#' @param threshold_counts Mean count below which a gene counts as unexpressed in a group, for the
#'   pseudocount estimate.
#' @param test_mode `"three"` (max of the one-sided probabilities) or `"two"` (`P(|LFC| > delta)`).
#' @param seed Random seed (`NULL`: drawn from R's RNG, so `set.seed()` applies).
#' @param metadata Cell metadata for `groupby` / `idx` expressions when `object` is a model.
#' @param newdata,batch,covariates Other cells to test (as in [get_normalized_expression()]).
#' @param n_threads Threads (`NULL`: the model's setting).
#' @param model For Seurat / SingleCellExperiment objects, which of their models to use:
#'   `"scvi"` or `"scanvi"` (an `scvi_model` or `scanvi_model` given directly is used as is).
#' @return A data frame with one row per gene per comparison: a `gene` column, scvi-tools'
#'   columns (see Details) and `comparison`, `group1`, `group2`. Within a comparison rows are
#'   sorted by `proba_de` (change) or `bayes_factor` (vanilla), decreasing. Row names are the
#'   genes when there is one comparison.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' pbmc_small <- scvi(pbmc_small, use_highly_variable_genes = FALSE, max_epochs = 5,
#'                    seed = 1, n_threads = 1, verbose = FALSE)
#' # cluster 0 against all other cells, in change mode
#' de <- differential_expression(pbmc_small, groupby = "RNA_snn_res.1", group1 = "0",
#'                               mode = "change", n_samples_overall = 1000, seed = 1,
#'                               silent = TRUE)
#' head(de[, c("gene", "proba_de", "lfc_mean", "is_de_fdr_0.05")])
#' # every cluster against the rest (change mode, the default)
#' de_all <- differential_expression(pbmc_small, groupby = "RNA_snn_res.1",
#'                                   n_samples_overall = 1000, seed = 1, silent = TRUE)
#' table(de_all$comparison)
#' # groups given as cells: group "g1" against group "g2", vanilla mode
#' de_g <- differential_expression(pbmc_small, idx1 = "groups == 'g1'", idx2 = "groups == 'g2'",
#'                                 mode = "vanilla", n_samples_overall = 1000, seed = 1,
#'                                 silent = TRUE)
#' head(de_g[, c("gene", "proba_m1", "bayes_factor")])
#' @export
differential_expression <- function(object, ..., groupby = NULL, group1 = NULL, group2 = NULL,
                                    idx1 = NULL, idx2 = NULL, mode = "change", delta = 0.25,
                                    batch_size = 128L, all_stats = TRUE, batch_correction = FALSE,
                                    batchid1 = NULL, batchid2 = NULL, fdr_target = 0.05,
                                    silent = FALSE, weights = "uniform",
                                    filter_outlier_cells = FALSE, n_samples_overall = 5000L,
                                    pseudocounts = NULL, threshold_counts = 0.01,
                                    test_mode = "three", seed = NULL, metadata = NULL,
                                    newdata = NULL, batch = NULL, covariates = NULL,
                                    n_threads = NULL, model = "scvi",
                                    importance_weighting_kwargs = list()) {
  .check_dots(list(...), formals(differential_expression), after = "object")
  model <- .check_choice(model, c("scvi", "scanvi"), "model")
  fit <- .fit_of(object, model)
  mode <- .check_choice(mode, c("vanilla", "change"), "mode")
  test_mode <- .check_choice(test_mode, c("three", "two"), "test_mode")
  weights <- .check_choice(weights %||% "uniform", c("uniform", "importance"), "weights")
  importance <- .importance_json(weights, importance_weighting_kwargs)
  delta <- .check_number(delta, "delta", 0, null_ok = TRUE)
  pseudocounts <- .check_number(pseudocounts, "pseudocounts", 0, null_ok = TRUE)
  fdr_target <- .check_number(fdr_target, "fdr_target", 0, 1)
  threshold_counts <- .check_number(threshold_counts, "threshold_counts", 0)
  n_samples_overall <- .check_count_arg(n_samples_overall, "n_samples_overall")
  batch_size <- .check_count_arg(batch_size, "batch_size")
  for (f in c("all_stats", "batch_correction", "silent", "filter_outlier_cells")) {
    .check_flag(get(f), f)
  }

  inputs <- .object_inputs(object, newdata, batch, covariates, model)
  d <- .query_data(fit, inputs$newdata, inputs$batch, NULL, inputs$covariates)
  if (nzchar(importance) && !is.null(d$cov$latent)) .refuse_minified(fit, "weights = \"importance\" (lvm-DE)")
  n_cells <- ncol(d$counts)
  meta <- .de_metadata(object, metadata, newdata, n_cells)
  # Seurat's convention (FindAllMarkers): without a grouping, the cells' identity classes.
  if (is.null(groupby) && is.null(idx1) && is.null(idx2) && is.null(newdata) &&
      inherits(object, "Seurat")) {
    groupby <- SeuratObject::Idents(object)
  }
  comparisons <- .de_comparisons(meta, n_cells, groupby, group1, group2, idx1, idx2)

  b1 <- .de_batches(fit, batchid1, batch_correction, "batchid1")
  b2 <- .de_batches(fit, batchid2, batch_correction, "batchid2")
  seed <- as.numeric(.resolve_seed(seed)) # numeric: seed + k must not overflow an integer
  opts <- .opts_arg(fit, seed, batch_size, n_threads)
  data <- .data_arg(d$counts, d$codes, d$cov)
  latent <- if (filter_outlier_cells) .engine(.rs_latent(fit$model, data, opts, "mean", 5000L))$z

  results <- vector("list", length(comparisons))
  for (k in seq_along(comparisons)) {
    cmp <- comparisons[[k]]
    if (!silent) message(sprintf("DE %d/%d: %s", k, length(comparisons), cmp$label))
    cells1 <- cmp$cells1
    cells2 <- cmp$cells2
    if (filter_outlier_cells) {
      cells1 <- .de_inlier_cells(latent, cells1, seed + k)
      cells2 <- .de_inlier_cells(latent, cells2, seed + k)
    }
    opts$seed <- as.numeric((seed + k - 1) %% .Machine$integer.max)
    data_k <- data
    if (.is_backed(d$counts)) {
      # Counts on disk: the comparison's cells are read into memory (the engine samples them at
      # random).
      u <- sort(unique(c(cells1, cells2)))
      data_k <- .data_arg(d$counts[, u], d$codes[u], .subset_covariates(d$cov, u))
      cells1 <- match(cells1, u)
      cells2 <- match(cells2, u)
    }
    cols <- .engine(.rs_de_compare(fit$model, data_k, opts, cells1 - 1L, cells2 - 1L, b1, b2, mode,
                                   delta %||% NaN, pseudocounts %||% NaN, n_samples_overall,
                                   threshold_counts, test_mode, importance))
    res <- data.frame(gene = fit$genes, cols, check.names = FALSE, stringsAsFactors = FALSE)
    raw <- c("raw_mean1", "raw_mean2", "non_zeros_proportion1", "non_zeros_proportion2",
             "raw_normalized_mean1", "raw_normalized_mean2")
    # A minified model has no counts to summarise.
    if (!is.null(d$cov$latent)) res[intersect(raw, names(res))] <- NA_real_
    if (!all_stats) {
      res <- res[, setdiff(names(res), c("raw_mean1", "raw_mean2", "non_zeros_proportion1",
                                         "non_zeros_proportion2", "raw_normalized_mean1",
                                         "raw_normalized_mean2")), drop = FALSE]
    }
    # Ties (common at proba_de = 1) are broken by effect size, then gene order.
    if (mode == "change") {
      res <- res[order(-res$proba_de, -abs(res$lfc_mean), seq_len(nrow(res))), , drop = FALSE]
    } else {
      res <- res[order(-res$bayes_factor, -abs(log(res$scale1 / res$scale2)), seq_len(nrow(res))), , drop = FALSE]
    }
    if (mode == "change") {
      res[[paste0("is_de_fdr_", format(fdr_target))]] <- .fdr_de_prediction(res$proba_de, fdr_target)
    }
    res$comparison <- cmp$label
    res$group1 <- cmp$group1
    res$group2 <- cmp$group2
    results[[k]] <- res
  }
  out <- do.call(rbind, results)
  rownames(out) <- if (length(results) == 1) out$gene else NULL
  out
}

# lvm-DE's options as the engine takes them ("" for uniform weights).
.importance_json <- function(weights, kwargs) {
  if (!is.list(kwargs) || (length(kwargs) && (is.null(names(kwargs)) || any(names(kwargs) == "")))) {
    scvir_abort("importance_weighting_kwargs must be a named list", "scvir_config_error")
  }
  known <- c("max_cells", "truncation", "n_mc_samples", "n_mc_samples_per_pass")
  bad <- setdiff(names(kwargs), known)
  if (length(bad)) {
    scvir_abort(sprintf("importance_weighting_kwargs: unknown option(s) %s (known: %s)",
                        paste(bad, collapse = ", "), paste(known, collapse = ", ")), "scvir_config_error")
  }
  if (weights != "importance") {
    if (length(kwargs)) scvir_abort("importance_weighting_kwargs apply to weights = \"importance\" only", "scvir_config_error")
    return("")
  }
  opts <- list(max_cells = .check_count_arg(kwargs$max_cells %||% 1024L, "max_cells"),
               truncation = .check_flag(kwargs$truncation %||% FALSE, "truncation"),
               n_mc_samples = .check_count_arg(kwargs$n_mc_samples %||% 500L, "n_mc_samples"))
  .check_count_arg(kwargs$n_mc_samples_per_pass %||% 250L, "n_mc_samples_per_pass")
  .to_json(opts)
}

# scvi-tools' `_fdr_de_prediction`: with probabilities sorted decreasingly, the expected FDR of
# calling the first k genes is mean(1 - p[1:k]); flag the d genes with expected FDR <= target.
.fdr_de_prediction <- function(p, fdr) {
  o <- order(p, decreasing = TRUE)
  cum_fdr <- cumsum(1 - p[o]) / seq_along(o)
  d <- sum(cum_fdr <= fdr)
  flag <- logical(length(p))
  flag[o[seq_len(d)]] <- TRUE
  flag
}

# Cell metadata the groups are read from.
.de_metadata <- function(object, metadata, newdata, n_cells) {
  meta <- metadata
  if (is.null(meta) && is.null(newdata)) {
    if (inherits(object, "Seurat")) meta <- object@meta.data
    if (methods::is(object, "SingleCellExperiment")) {
      meta <- as.data.frame(SummarizedExperiment::colData(object))
    }
  }
  if (!is.null(meta)) {
    meta <- as.data.frame(meta)
    if (nrow(meta) != n_cells) {
      scvir_abort(sprintf("metadata has %d rows but there are %d cells", nrow(meta), n_cells))
    }
  }
  meta
}

# A grouping vector from a metadata column name or the values themselves.
.de_groupby <- function(meta, groupby, n_cells) {
  if (is.character(groupby) && length(groupby) == 1 && n_cells != 1) {
    if (is.null(meta)) {
      scvir_abort(sprintf(paste("groupby = \"%s\" names a metadata column, but there is no cell",
                                "metadata: pass `metadata`, or groupby as one value per cell"), groupby))
    }
    groupby <- .metadata_column(meta, groupby, "groupby")
  }
  if (length(groupby) != n_cells) {
    scvir_abort(sprintf("groupby has %d values but there are %d cells", length(groupby), n_cells))
  }
  if (anyNA(groupby)) scvir_abort("groupby has missing values (NA)")
  droplevels(as.factor(groupby))
}

# Cells selected by a logical mask, 1-based positions or a metadata expression.
.de_index <- function(idx, meta, n_cells, name) {
  if (is.character(idx)) {
    if (length(idx) != 1) scvir_abort(sprintf("%s as a string must be one expression", name))
    if (is.null(meta)) scvir_abort(sprintf("%s is an expression but there is no cell metadata", name))
    sel <- tryCatch(eval(str2lang(idx), meta, baseenv()), error = function(e) {
      scvir_abort(sprintf("%s = \"%s\" could not be evaluated on the cell metadata: %s",
                          name, idx, conditionMessage(e)))
    })
    idx <- sel
  }
  if (is.logical(idx)) {
    if (length(idx) != n_cells) {
      scvir_abort(sprintf("%s is a logical vector of length %d; it needs one value per cell (%d)",
                          name, length(idx), n_cells))
    }
    idx <- which(idx %in% TRUE)
  } else if (is.numeric(idx)) {
    if (anyNA(idx) || any(idx != round(idx) | idx < 1 | idx > n_cells)) {
      scvir_abort(sprintf("%s must hold cell positions between 1 and %d", name, n_cells))
    }
    idx <- unique(as.integer(idx))
  } else {
    scvir_abort(sprintf("%s must be a logical vector, cell positions or an expression string", name))
  }
  if (!length(idx)) scvir_abort(sprintf("%s selects no cells", name))
  idx
}

# The list of comparisons: cells of both groups (1-based) and their labels.
.de_comparisons <- function(meta, n_cells, groupby, group1, group2, idx1, idx2) {
  if (!is.null(idx1)) {
    if (!is.null(groupby) || !is.null(group1) || !is.null(group2)) {
      scvir_abort("give either groupby (with group1 / group2) or idx1 / idx2, not both")
    }
    c1 <- .de_index(idx1, meta, n_cells, "idx1")
    c2 <- if (is.null(idx2)) setdiff(seq_len(n_cells), c1) else .de_index(idx2, meta, n_cells, "idx2")
    if (length(intersect(c1, c2))) {
      scvir_abort(sprintf("idx1 and idx2 overlap (%d cells in both); a cell can be in one group only",
                          length(intersect(c1, c2))))
    }
    if (!length(c2)) scvir_abort("idx1 selects every cell; the rest is empty")
    g2 <- if (is.null(idx2)) "Rest" else "idx2"
    return(list(list(cells1 = c1, cells2 = c2, group1 = "idx1", group2 = g2,
                     label = paste("idx1 vs", g2))))
  }
  if (!is.null(idx2)) scvir_abort("idx2 needs idx1")
  if (is.null(groupby)) scvir_abort("give groupby (a metadata column) or idx1")
  g <- .de_groupby(meta, groupby, n_cells)
  groups <- levels(g)
  if (is.null(group1)) {
    if (length(groups) < 2) scvir_abort("groupby has a single group; DE needs two")
    group1 <- groups
  }
  group1 <- as.character(group1)
  for (x in c(group1, if (!is.null(group2)) as.character(group2))) {
    if (!x %in% groups) {
      scvir_abort(sprintf("group \"%s\" is not a value of groupby (groups: %s)", x,
                          paste(utils::head(groups, 20), collapse = ", ")))
    }
  }
  if (!is.null(group2) && length(group2) != 1) scvir_abort("group2 must be a single group")
  lapply(group1, function(x) {
    c1 <- which(g == x)
    c2 <- if (is.null(group2)) which(g != x) else which(g == group2)
    if (!is.null(group2) && identical(as.character(group2), x)) {
      scvir_abort(sprintf("group1 and group2 are both \"%s\"", x))
    }
    if (!length(c2)) scvir_abort(sprintf("no cells to compare group \"%s\" with", x))
    g2 <- if (is.null(group2)) "Rest" else as.character(group2)
    list(cells1 = c1, cells2 = c2, group1 = x, group2 = g2, label = paste(x, "vs", g2))
  })
}

# 0-based codes of the batches to decode in: none (observed batches) without batch correction.
.de_batches <- function(fit, batchid, batch_correction, name) {
  if (!batch_correction) {
    if (!is.null(batchid)) scvir_abort(sprintf("%s needs batch_correction = TRUE", name), "scvir_config_error")
    return(integer())
  }
  if (is.null(batchid)) return(seq_along(fit$batches) - 1L)
  codes <- match(as.character(batchid), fit$batches)
  if (anyNA(codes)) {
    scvir_abort(sprintf("%s \"%s\" is not a batch of the model (batches: %s)", name,
                        as.character(batchid)[is.na(codes)][1], paste(fit$batches, collapse = ", ")))
  }
  unique(codes - 1L)
}

# Cells of a group without latent-space outliers: the 10% farthest from a minimum covariance
# determinant fit, as scikit-learn's EllipticEnvelope(contamination = 0.1).
.de_inlier_cells <- function(latent, cells, seed) {
  x <- latent[cells, , drop = FALSE]
  .need("MASS")
  fit <- tryCatch(.with_seed(seed, MASS::cov.rob(x, method = "mcd")), error = function(e) NULL)
  if (is.null(fit)) return(cells)
  d2 <- tryCatch(stats::mahalanobis(x, fit$center, fit$cov), error = function(e) NULL)
  if (is.null(d2)) return(cells)
  cells[d2 <= stats::quantile(d2, 0.9)]
}

#' Volcano plot of a differential expression result
#'
#' Change mode: mean LFC against `proba_de`; vanilla mode: log2 ratio of the mean scales against
#' the Bayes factor. Genes flagged by the FDR column (change mode) or with `|bayes_factor| > 3`
#' (vanilla) are coloured. Per comparison, `n_labels` genes are named, half up- and half
#' down-regulated where possible: significant genes first, ranked by effect size times
#' log(1 + expression per 10,000). Several comparisons are drawn as facets.
#'
#' @param de A data frame from [differential_expression()].
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param n_labels Genes to label per comparison.
#' @param comparisons Comparisons to draw (default: all).
#' @return A ggplot object.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE) && requireNamespace("ggplot2", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' de <- differential_expression(fit, groupby = pbmc_small$RNA_snn_res.1, group1 = "1",
#'                               mode = "change", n_samples_overall = 1000, seed = 1,
#'                               silent = TRUE)
#' plot_de(de, n_labels = 6)
#' @export
plot_de <- function(de, ..., n_labels = 10L, comparisons = NULL) {
  .check_dots(list(...), formals(plot_de), after = "de")
  n_labels <- .check_count_arg(n_labels, "n_labels", min = 0)
  .need("ggplot2")
  if (!is.data.frame(de) || !"gene" %in% names(de) || !"bayes_factor" %in% names(de)) {
    scvir_abort("de must be a data frame returned by differential_expression()")
  }
  if (!is.null(comparisons)) {
    unknown <- setdiff(comparisons, de$comparison)
    if (length(unknown)) scvir_abort(sprintf("comparison \"%s\" is not in de", unknown[1]))
    de <- de[de$comparison %in% comparisons, , drop = FALSE]
  }
  change <- "lfc_mean" %in% names(de)
  fdr_col <- grep("^is_de_fdr_", names(de), value = TRUE)[1]
  de$x <- if (change) de$lfc_mean else log2(de$scale1 / de$scale2)
  de$y <- if (change) de$proba_de else de$bayes_factor
  de$significant <- if (change && !is.na(fdr_col)) de[[fdr_col]] else abs(de$bayes_factor) > 3
  # Labels go to significant genes with large effects that are also well expressed: without the
  # expression term, barely detected genes with extreme LFCs would take every label.
  expression <- log1p(1e4 * pmax(de$scale1, de$scale2))
  rank_key <- de$significant * 1e6 + abs(de$x) * expression
  # Label both sides: the most significant up- and down-regulated genes of each comparison.
  gap <- 0.035 * diff(range(de$y))
  top <- do.call(rbind, lapply(split(seq_len(nrow(de)), de$comparison), function(rows) {
    up <- rows[de$x[rows] > 0]
    down <- rows[de$x[rows] <= 0]
    n_up <- min(length(up), max(n_labels - min(length(down), n_labels %/% 2), 0))
    n_down <- min(length(down), n_labels - n_up)
    sides <- list(up[order(-rank_key[up])][seq_len(n_up)], down[order(-rank_key[down])][seq_len(n_down)])
    do.call(rbind, lapply(sides, function(pick) .stack_labels(de[pick, , drop = FALSE], gap)))
  }))
  p <- ggplot2::ggplot(de, ggplot2::aes(x = .data$x, y = .data$y, colour = .data$significant)) +
    ggplot2::geom_point(size = 0.6, alpha = 0.6) +
    ggplot2::geom_point(data = top, size = 1.2, colour = "black") +
    ggplot2::geom_segment(data = top, ggplot2::aes(xend = .data$x, yend = .data$label_y),
                          colour = "grey40", linewidth = 0.2) +
    ggplot2::geom_text(data = top, ggplot2::aes(y = .data$label_y, label = .data$gene), size = 2.4,
                       vjust = 0.5, hjust = "inward", colour = "black") +
    ggplot2::scale_colour_manual(values = c(`FALSE` = "grey60", `TRUE` = "firebrick"),
                                 name = if (change) paste("DE at", sub("is_de_fdr_", "FDR ", fdr_col)) else "|BF| > 3") +
    ggplot2::labs(x = if (change) "mean log2 fold change" else "log2(scale1 / scale2)",
                  y = if (change) "P(DE)" else "Bayes factor") +
    ggplot2::theme_bw()
  if (length(unique(de$comparison)) > 1) p <- p + ggplot2::facet_wrap(~comparison)
  p
}

# Label heights for one side of a volcano plot: from the highest point down, each label at its
# point or at least `gap` below the previous label, so that labels do not overlap.
.stack_labels <- function(d, gap) {
  if (!nrow(d)) return(cbind(d, label_y = numeric()))
  d <- d[order(-d$y), , drop = FALSE]
  d$label_y <- d$y
  for (i in seq_len(nrow(d))[-1]) d$label_y[i] <- min(d$y[i], d$label_y[i - 1] - gap)
  d
}
