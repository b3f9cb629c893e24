# Counts left on disk: an .h5ad file opened with read_h5ad(path, backed = TRUE). The handle holds
# the file's path, the matrix's location, var and the genes in use; cells are read in blocks by
# the engine while it trains or answers queries, so memory holds per-cell summaries only.
# With backed = "memory" the engine reads the matrix into memory once (16-bit gene positions and
# counts where they fit) and serves the same blocks from there; the handle keeps it in its cache
# as an external pointer (shared by gene views of the handle), and reads it again when it was
# saved and loaded.

.h5ad_backed <- function(path, layer = NULL, in_memory = FALSE) {
  info <- .engine(.rs_h5ad_backed(path, layer %||% ""))
  if (!info$encoding %in% c("csr_matrix", "array")) {
    scvir_abort(sprintf(paste("%s: %s is stored as %s; reading counts from disk needs a CSR matrix (cells as",
                              "rows). Convert it in Python with adata.X = scipy.sparse.csr_matrix(adata.X) and",
                              "write it again, or read it into memory with read_h5ad(path)"),
                        path, info$location, if (nzchar(info$encoding)) info$encoding else "an unknown encoding"),
                "scvir_input_error")
  }
  genes <- info$var$index
  .check_dimnames(genes, "the file's var", "gene")
  h <- structure(list(path = path, layer = layer, location = info$location,
                      n_cells = as.integer(info$n_cells), file_genes = genes,
                      gene_index = seq_along(genes), var = .frame_to_df(info$var),
                      obs_columns = info$obs_columns, in_memory = in_memory,
                      fingerprint = info$fingerprint,
                      cache = new.env(parent = emptyenv())),
                 class = "scvir_h5ad")
  if (in_memory) {
    .h5ad_memory(h)
    # the cell names with the counts, so that both come from the file as it was read
    .h5ad_cells(h)
  }
  h
}

# The matrix a backed = "memory" handle holds (read now when the handle has none: first use, or
# saved and loaded again); NULL for a handle on disk.
.h5ad_memory <- function(x) {
  if (!isTRUE(x$in_memory)) return(NULL)
  m <- x$cache$memory
  if (is.null(m) || is.na(.engine(.rs_h5ad_memory_bytes(m)))) {
    if (!is.null(m)) {
      .signal_progress(sprintf("Reading the counts of %s into memory again (the handle was saved and loaded)", x$path))
    }
    loaded <- .engine(.rs_h5ad_load(x$path, x$location))
    if (loaded$n_cells != x$n_cells || loaded$n_genes != length(x$file_genes) ||
        !.same_fingerprint(x, loaded$fingerprint)) {
      scvir_abort(sprintf(paste("%s: %s now holds %g cells x %g genes (the handle: %d x %d), laid out otherwise:",
                                "the file changed since it was opened; open it again with read_h5ad()"),
                          x$path, x$location, loaded$n_cells, loaded$n_genes, x$n_cells, length(x$file_genes)),
                  "scvir_input_error")
    }
    x$cache$memory <- loaded$memory
  }
  x$cache$memory
}

# Whether a file's fingerprint is the one the handle was opened with (a handle saved before
# fingerprints were kept has none, and is not checked).
.same_fingerprint <- function(x, fingerprint) {
  !nzchar(x$fingerprint %||% "") || identical(x$fingerprint, fingerprint)
}

.is_backed <- function(x) inherits(x, "scvir_h5ad")

# Gene names without reading anything else (rownames() of a handle would read the cell names).
.gene_names <- function(x) if (.is_backed(x)) x$file_genes[x$gene_index] else rownames(x)

# A path ending in .h5ad given where counts are expected opens the file on disk; an
# HDF5Array-backed DelayedMatrix is read from its file too.
.as_backed_input <- function(x) {
  if (!is.null(h <- .delayed_backed(x))) return(h)
  if (is.character(x) && length(x) == 1L && !is.na(x) && grepl("\\.h5ad$", x, ignore.case = TRUE)) {
    path <- .check_path(x, "counts")
    .check_readable(path)
    return(.h5ad_backed(path))
  }
  x
}

# A DelayedMatrix that is an HDF5 matrix and nothing else, as counts on disk: HDF5Array's
# HDF5ArraySeed (written by writeHDF5Array() or saveHDF5SummarizedExperiment(): the genes x cells
# matrix is stored with the cells as the dataset's rows) or TENxMatrixSeed (Cell Ranger's HDF5
# matrix, as TENxMatrix() and DropletUtils' read10xCounts(type = "HDF5") open it). NULL for
# anything else, such as a DelayedMatrix with pending operations, which callers read into memory.
.delayed_backed <- function(x, what = "counts") {
  if (!methods::is(x, "DelayedMatrix") || !requireNamespace("DelayedArray", quietly = TRUE)) return(NULL)
  dn <- dimnames(x)
  # Names set on the object (as SingleCellExperiment sets them) are the only delayed operation
  # allowed: with them removed, or as they are, the matrix must be its seed.
  y <- x
  dimnames(y) <- NULL
  if (!DelayedArray::isPristine(x) && !DelayedArray::isPristine(y)) return(NULL)
  seed <- DelayedArray::seed(x)
  tenx <- methods::is(seed, "TENxMatrixSeed")
  if (tenx) {
    if (methods::.hasSlot(seed, "subdata") && !is.null(seed@subdata)) return(NULL)
    path <- seed@filepath
    location <- seed@group
  } else if (methods::is(seed, "HDF5ArraySeed")) {
    path <- seed@filepath
    location <- seed@name
  } else {
    return(NULL)
  }
  shape <- .engine(.rs_disk_shape(path, location))
  if (!identical(isTRUE(shape$dense), !tenx) || shape$n_cells != ncol(x) || shape$n_genes != nrow(x)) {
    scvir_abort(sprintf("%s: the matrix %s of %s holds %g x %g values, not the %d genes x %d cells of the %s",
                        what, location, path, shape$n_genes, shape$n_cells, nrow(x), ncol(x),
                        if (tenx) "TENxMatrix" else "HDF5Array"), "scvir_input_error")
  }
  genes <- dn[[1]]
  if (is.null(genes)) {
    scvir_abort(sprintf("%s has no gene names (rownames); set them on the object", what), "scvir_input_error")
  }
  .check_dimnames(genes, what, "gene")
  h <- structure(list(path = path, layer = NULL, location = location, n_cells = ncol(x),
                      file_genes = genes, gene_index = seq_along(genes),
                      var = data.frame(row.names = genes), obs_columns = character(),
                      fingerprint = shape$fingerprint, cache = new.env(parent = emptyenv())),
                 class = "scvir_h5ad")
  h$cache$cells <- dn[[2]] %||% paste0("cell", seq_len(ncol(x)))
  h
}

#' @export
dim.scvir_h5ad <- function(x) c(length(x$gene_index), x$n_cells)

#' @export
dimnames.scvir_h5ad <- function(x) list(x$file_genes[x$gene_index], .h5ad_cells(x))

# Cell names, read once per handle.
.h5ad_cells <- function(x) {
  if (is.null(x$cache$cells)) {
    obs <- .engine(.rs_h5ad_obs(x$path, character(), TRUE))
    x$cache$cells <- obs$index
  }
  x$cache$cells
}

# One obs column, as read_h5ad() would give it (categoricals as factors).
.h5ad_obs_column <- function(x, name, what) {
  if (!name %in% x$obs_columns) {
    scvir_abort(sprintf("%s: obs of %s has no column \"%s\" (columns: %s)", what, x$path, name,
                        paste(utils::head(x$obs_columns, 20), collapse = ", ")), "scvir_input_error")
  }
  obs <- .engine(.rs_h5ad_obs(x$path, name, FALSE))
  df <- .frame_to_df(list(index = NULL, columns = obs$columns, skipped = obs$skipped))
  if (!name %in% names(df)) {
    scvir_abort(sprintf("%s: obs column \"%s\" of %s is in an encoding scviR does not read", what, name, x$path),
                "scvir_input_error")
  }
  df[[name]]
}

# Genes select a view of the file (no reading); cells read those cells into memory as a
# genes x cells dgCMatrix.
#' @export
`[.scvir_h5ad` <- function(x, i, j, ..., drop = FALSE) {
  genes <- x$file_genes[x$gene_index]
  if (!missing(i)) {
    pos <- if (is.character(i)) match(i, genes) else seq_along(genes)[i]
    if (anyNA(pos)) scvir_abort("some of the selected genes are not in the file", "scvir_input_error")
    x$gene_index <- x$gene_index[pos]
  }
  if (missing(j)) {
    x$cache <- x$cache # the cell names stay shared
    return(x)
  }
  cells <- seq_len(x$n_cells)[j]
  if (anyNA(cells)) scvir_abort(sprintf("cell positions must be between 1 and %d", x$n_cells), "scvir_input_error")
  .h5ad_read_cells(x, cells)
}

.h5ad_read_cells <- function(x, cells) {
  m <- .engine(.rs_h5ad_read_cells(.backed_arg(x), cells))
  methods::new("dgCMatrix", i = m$indices, p = m$indptr, x = m$values,
               Dim = c(length(x$gene_index), length(cells)),
               Dimnames = list(x$file_genes[x$gene_index], .h5ad_cells(x)[cells]))
}

# The engine's description of the counts: the file, the matrix, the genes in use, the matrix
# in memory (backed = "memory") and the file's fingerprint when the handle was opened, which the
# engine compares with the file's now.
.backed_arg <- function(x) {
  list(path = x$path, location = x$location, genes = as.integer(x$gene_index - 1L),
       memory = .h5ad_memory(x), fingerprint = x$fingerprint %||% "")
}

#' @method print scvir_h5ad
#' @export
print.scvir_h5ad <- function(x, ...) {
  if (isTRUE(x$in_memory)) {
    bytes <- if (is.null(x$cache$memory)) NA_real_ else .engine(.rs_h5ad_memory_bytes(x$cache$memory))
    cat(sprintf("Counts in memory%s, read from %s (%s)\n",
                if (is.na(bytes)) " (read again at first use)" else sprintf(" (%.1f MB)", bytes / 1e6),
                x$path, x$location))
  } else {
    cat(sprintf("Counts on disk: %s (%s)\n", x$path, x$location))
  }
  cat(sprintf("  %d cells x %d genes%s\n", x$n_cells, length(x$gene_index),
              if (length(x$gene_index) < length(x$file_genes)) sprintf(" (of %d in the file)", length(x$file_genes)) else ""))
  if (length(x$obs_columns)) {
    cat(sprintf("  obs: %s\n", paste(utils::head(x$obs_columns, 10), collapse = ", ")))
  }
  invisible(x)
}

# seurat_v3 gene selection on counts on disk: two passes over the file (per batch and gene, the
# sums and sums of squares; then the same of the clipped counts), the loess fit in between.
# Every figure equals the in-memory computation's.
.hvg_backed_stats <- function(x, batch_f, span) {
  codes <- as.integer(batch_f) - 1L
  nb <- nlevels(batch_f)
  g <- length(x$gene_index)
  handle <- .backed_arg(x)
  first <- .engine(.rs_h5ad_gene_sums(handle, codes, nb, NULL))
  sums <- matrix(first$sum, nrow = nb, ncol = g, byrow = TRUE)
  sqs <- matrix(first$sq, nrow = nb, ncol = g, byrow = TRUE)
  n_b <- as.numeric(tabulate(codes + 1L, nbins = nb))
  moments <- function(s, q, n) {
    mu <- s / n
    v <- if (n > 1) ((q / n) - mu^2) * (n / (n - 1)) else rep(0, length(mu))
    v[v < 0] <- 0
    list(mean = mu, var = v)
  }
  all <- moments(colSums(sums), colSums(sqs), sum(n_b))
  clip <- matrix(0, nrow = nb, ncol = g)
  per <- vector("list", nb)
  for (b in seq_len(nb)) {
    mv <- moments(sums[b, ], sqs[b, ], n_b[b])
    reg_std <- hvg_reg_std(mv$mean, mv$var, span)
    per[[b]] <- list(mean = mv$mean, reg_std = reg_std, n = n_b[b])
    clip[b, ] <- reg_std * sqrt(n_b[b]) + mv$mean
  }
  second <- .engine(.rs_h5ad_gene_sums(handle, codes, nb, clip))
  s1 <- matrix(second$sum, nrow = nb, ncol = g, byrow = TRUE)
  s2 <- matrix(second$sq, nrow = nb, ncol = g, byrow = TRUE)
  norm_var <- matrix(0, nrow = nb, ncol = g)
  for (b in seq_len(nb)) {
    p <- per[[b]]
    norm_var[b, ] <- hvg_norm_var_from(p$n, p$mean, p$reg_std, s1[b, ], s2[b, ])
  }
  list(stats_all = all, norm_var = norm_var)
}

# A single string naming an obs column of the file, or the values themselves.
.obs_or_values <- function(x, value, what) {
  if (is.character(value) && length(value) == 1L && !is.na(value) && x$n_cells != 1L) {
    return(.h5ad_obs_column(x, value, what))
  }
  value
}
