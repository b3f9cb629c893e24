#' Select highly variable genes (Seurat v3 / scanpy "seurat_v3" flavour)
#'
#' Ranks genes by their variance after variance-stabilisation, following the
#' Seurat v3 procedure (Stuart et al. 2019) as implemented by scanpy's
#' `highly_variable_genes(flavor = "seurat_v3")`, and flags the top
#' `n_top_genes`. It works on raw counts.
#'
#' Within each batch, the mean and unbiased variance of every gene are computed;
#' a local quadratic regression (`stats::loess`, `degree = 2`) of `log10(variance)`
#' on `log10(mean)` is fitted over the genes that are not constant in that batch,
#' giving a regularised standard deviation `sd = sqrt(10^fitted)` (1 for constant
#' genes). Each count is clipped at `mean + sqrt(n_cells) * sd` and the variance of
#' the standardised, clipped values is the gene's normalised variance in that
#' batch. Genes are ranked per batch (0 = most variable); across batches a gene's
#' rank is the median of its ranks over the batches where it is among the top
#' `n_top_genes` (`NA` if there are none), and its number of batches is how many
#' batches that is. With `flavor = "seurat_v3"` (scanpy's default) genes are
#' ordered by median rank (ascending), ties broken by the number of batches
#' (descending); with `flavor = "seurat_v3_paper"` by the number of batches first
#' and then the median rank. Without `batch` both give the same result. Exactly
#' tied normalised variances (genes with identical counts) are ranked in gene
#' order, which may differ from scanpy's unstable sort. The matrix is never
#' densified: clipping only touches non-zero entries.
#'
#' @param counts A genes x cells matrix of raw counts, ideally a
#'   `Matrix::dgCMatrix` (a base matrix or another `Matrix` class is converted),
#'   with gene names as row names; or counts on disk: an `.h5ad` path or
#'   `read_h5ad(path, backed = TRUE)`, read in two passes without loading the matrix (there,
#'   `batch` may name an obs column).
#' @param ... Unused: it makes the later arguments match by their full names only; an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param n_top_genes Number of genes to flag as highly variable.
#' @param batch `NULL`, or a vector or factor with one entry per cell (column of
#'   `counts`) giving its batch; genes are then ranked within each batch and the
#'   ranks combined.
#' @param span The loess span (fraction of genes in each local fit).
#' @param flavor `"seurat_v3"` or `"seurat_v3_paper"`: how per-batch ranks are
#'   combined into the final order (see Details); only
#'   matters when `batch` is given.
#' @return A `data.frame` with one row per gene, in the order of `counts`, row
#'   names the gene names, and columns `means` and `variances` (over all cells),
#'   `variances_norm` (normalised variance, averaged over batches),
#'   `highly_variable_rank` (0-based median rank over the batches where the gene is
#'   in the top `n_top_genes`, `NA` where it never is; same convention as scanpy),
#'   `highly_variable_nbatches` (only when `batch` is given: in how many batches the
#'   gene is in the top `n_top_genes`) and `highly_variable` (logical).
#' @examples
#' set.seed(1)
#' m <- Matrix::rsparsematrix(200, 100, density = 0.2,
#'   rand.x = function(n) stats::rpois(n, 3) + 1)
#' rownames(m) <- paste0("g", seq_len(nrow(m)))
#' hvg <- select_hvg_seurat_v3(m, n_top_genes = 20)
#' head(hvg[order(hvg$highly_variable_rank), ])
#' @export
select_hvg_seurat_v3 <- function(counts, ..., n_top_genes = 2000L, batch = NULL, span = 0.3,
                                 flavor = c("seurat_v3", "seurat_v3_paper")) {
  .check_dots(list(...), formals(select_hvg_seurat_v3), after = "counts")
  flavor <- if (missing(flavor)) "seurat_v3" else .check_choice(flavor, c("seurat_v3", "seurat_v3_paper"), "flavor")
  n_top_genes <- .check_count_arg(n_top_genes, "n_top_genes")
  span <- .check_number(span, "span", lower = 0, open_lower = TRUE)
  counts <- .as_backed_input(counts)
  backed <- .is_backed(counts)
  if (!backed) counts <- .as_dgc(counts)
  if (!nrow(counts) || !ncol(counts)) {
    scvir_abort(sprintf("counts has %d genes x %d cells; at least one of each is needed",
                        nrow(counts), ncol(counts)))
  }
  .check_dimnames(.gene_names(counts), "counts", "gene")
  # Counts on disk are checked by the engine as it reads them (an error names the cell).
  bad <- if (backed) integer() else which(!is.finite(counts@x) | counts@x < 0)
  if (length(bad)) {
    scvir_abort(sprintf("counts contain %d negative, NaN/NA or infinite value(s) (first: %s); seurat_v3 needs raw counts",
                        length(bad), format(counts@x[bad[1]])))
  }
  n_genes <- nrow(counts)
  n_cells <- ncol(counts)
  genes <- .gene_names(counts)
  if (is.null(genes)) genes <- as.character(seq_len(n_genes))

  if (n_top_genes > n_genes) {
    warning("`n_top_genes` > number of genes; flagging all genes")
    n_top_genes <- n_genes
  }
  if (!backed && length(counts@x) && any(counts@x != round(counts@x))) {
    warning("`counts` does not look like integer counts; seurat_v3 expects raw counts")
  }

  if (backed) batch <- .obs_or_values(counts, batch, "batch")
  if (is.null(batch)) {
    batch_f <- factor(rep("1", n_cells))
  } else {
    if (length(batch) != n_cells) {
      scvir_abort(sprintf("batch has length %d but there are %d cells (columns of counts)",
                          length(batch), n_cells))
    }
    if (anyNA(batch)) {
      scvir_abort(sprintf("batch has %d missing (NA) value(s); give every cell a batch", sum(is.na(batch))))
    }
    batch_f <- droplevels(as.factor(batch))
  }

  batches <- levels(batch_f)
  if (backed) {
    st <- .hvg_backed_stats(counts, batch_f, span)
    stats_all <- st$stats_all
    norm_var <- st$norm_var
  } else {
    stats_all <- hvg_mean_var(counts)
    norm_var <- matrix(0, nrow = length(batches), ncol = n_genes)
    for (b in seq_along(batches)) {
      cols <- which(batch_f == batches[b])
      norm_var[b, ] <- hvg_norm_var_batch(counts[, cols, drop = FALSE], span = span)
    }
  }

  # 0-based ranks within each batch, highest normalised variance first.
  ranks <- matrix(NA_real_, nrow = length(batches), ncol = n_genes)
  for (b in seq_along(batches)) {
    ord <- order(-norm_var[b, ], method = "radix") # stable: ties in gene order
    r <- integer(n_genes)
    r[ord] <- seq_len(n_genes) - 1L
    ranks[b, ] <- r
  }
  in_top <- ranks < n_top_genes
  nbatches <- as.integer(colSums(in_top))
  ranks[!in_top] <- NA_real_
  if (length(batches) == 1L) {
    median_rank <- ranks[1L, ]
  } else {
    median_rank <- apply(ranks, 2L, function(r) {
      if (all(is.na(r))) NA_real_ else stats::median(r, na.rm = TRUE)
    })
  }

  out <- data.frame(
    means = stats_all$mean,
    variances = stats_all$var,
    variances_norm = colMeans(norm_var),
    highly_variable_rank = as.numeric(median_rank),
    row.names = genes,
    stringsAsFactors = FALSE
  )
  if (!is.null(batch)) out$highly_variable_nbatches <- nbatches

  sel <- if (flavor == "seurat_v3") {
    order(median_rank, -nbatches, na.last = TRUE)
  } else {
    order(-nbatches, median_rank, na.last = TRUE)
  }
  sel <- sel[seq_len(n_top_genes)]
  hv <- logical(n_genes)
  hv[sel] <- TRUE
  out$highly_variable <- hv
  out
}

# Per-gene mean and unbiased variance of a genes x cells dgCMatrix.
hvg_mean_var <- function(m) {
  n <- ncol(m)
  mu <- Matrix::rowSums(m) / n
  sq <- m
  sq@x <- sq@x^2
  mean_sq <- Matrix::rowSums(sq) / n
  v <- if (n > 1L) (mean_sq - mu^2) * (n / (n - 1)) else rep(0, length(mu))
  v[v < 0] <- 0 # rounding
  list(mean = mu, var = v)
}

# Normalised (clipped, standardised) variance of every gene within one batch.
hvg_norm_var_batch <- function(m, span) {
  n <- ncol(m)
  mv <- hvg_mean_var(m)
  mu <- mv$mean
  reg_std <- hvg_reg_std(mu, mv$var, span)
  # Clip each (non-zero) count at mean + sqrt(n) * reg_std; zeros stay zero.
  clip_val <- reg_std * sqrt(n) + mu
  row <- m@i + 1L
  m@x <- pmin(m@x, clip_val[row])
  s1 <- Matrix::rowSums(m)
  m@x <- m@x^2
  s2 <- Matrix::rowSums(m)
  hvg_norm_var_from(n, mu, reg_std, s1, s2)
}

# The loess fit of log10 variance on log10 mean (non-constant genes), as a standard deviation.
hvg_reg_std <- function(mu, v, span) {
  non_const <- v > 0
  fitted_log10_var <- numeric(length(mu))
  if (any(non_const)) {
    x <- log10(mu[non_const])
    y <- log10(v[non_const])
    fit <- stats::loess(y ~ x, span = span, degree = 2)
    fitted_log10_var[non_const] <- stats::fitted(fit)
  }
  sqrt(10^fitted_log10_var)
}

# sum_j (x_ij - mu_i)^2 over the clipped values (their sums s1 and sums of squares s2),
# standardised by reg_std.
hvg_norm_var_from <- function(n, mu, reg_std, s1, s2) {
  if (n > 1L) {
    (n * mu^2 + s2 - 2 * s1 * mu) / ((n - 1) * reg_std^2)
  } else {
    numeric(length(mu))
  }
}
