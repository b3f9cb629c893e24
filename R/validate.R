# Input checks on R objects, with messages that name the problem. They run before anything is
# modified, so a failed call leaves the user's object untouched.

# Any supported matrix -> genes x cells dgCMatrix.
.as_dgc <- function(x, what = "counts") {
  if (inherits(x, "dgCMatrix")) return(x)
  if (is.data.frame(x)) x <- as.matrix(x)
  if (is.matrix(x) || inherits(x, "Matrix") || methods::is(x, "DelayedArray")) {
    if (!is.numeric(x[0, 0, drop = FALSE]) && !inherits(x, "Matrix")) {
      scvir_abort(sprintf("%s must be numeric", what))
    }
    out <- tryCatch(methods::as(methods::as(methods::as(x, "CsparseMatrix"), "generalMatrix"),
                                "dMatrix"),
                    error = function(e) scvir_abort(sprintf("%s cannot be converted to a sparse matrix: %s",
                                                            what, conditionMessage(e))))
    return(out)
  }
  scvir_abort(sprintf("%s must be a matrix or sparse matrix (genes x cells), not %s",
                      what, class(x)[1]))
}

# Checks that counts are raw UMI counts and shaped for modelling.
.check_counts <- function(counts, what = "counts") {
  if (is.null(rownames(counts))) rownames(counts) <- paste0("gene", seq_len(nrow(counts)))
  if (is.null(colnames(counts))) colnames(counts) <- paste0("cell", seq_len(ncol(counts)))
  if (anyDuplicated(rownames(counts))) {
    d <- rownames(counts)[anyDuplicated(rownames(counts))]
    scvir_abort(sprintf("%s has duplicated gene names (e.g. \"%s\"); make them unique first", what, d))
  }
  if (nrow(counts) < 2) scvir_abort(sprintf("%s has %d gene(s); at least 2 are needed", what, nrow(counts)))
  if (ncol(counts) < 2) scvir_abort(sprintf("%s has %d cell(s); at least 2 are needed", what, ncol(counts)))
  v <- counts@x
  where <- function(k) {
    cell <- findInterval(k - 1, counts@p, rightmost.closed = FALSE)
    sprintf("gene \"%s\", cell \"%s\"", rownames(counts)[counts@i[k] + 1], colnames(counts)[cell])
  }
  bad <- which(!is.finite(v))
  if (length(bad)) {
    scvir_abort(sprintf("%s contain %d NaN/NA or infinite value(s) (first at %s); scVI needs raw UMI counts",
                        what, length(bad), where(bad[1])))
  }
  bad <- which(v < 0)
  if (length(bad)) {
    scvir_abort(sprintf("%s contain %d negative value(s) (first: %g at %s); scVI needs raw UMI counts",
                        what, length(bad), v[bad[1]], where(bad[1])))
  }
  bad <- which(v != round(v))
  if (length(bad)) {
    scvir_abort(sprintf(paste("%s contain %d non-integer value(s) (first: %g at %s); scVI models raw UMI",
                              "counts, not normalized or log-transformed data (use the counts layer/assay)"),
                        what, length(bad), v[bad[1]], where(bad[1])))
  }
  counts
}

.check_no_empty_cells <- function(counts, context) {
  libs <- Matrix::colSums(counts)
  empty <- which(libs == 0)
  if (length(empty)) {
    scvir_abort(sprintf(paste("%d cell(s) have zero counts %s (e.g. %s); remove them before training,",
                              "e.g. subset to cells with counts > 0"),
                        length(empty), context,
                        paste0("\"", utils::head(colnames(counts)[empty], 3), "\"", collapse = ", ")))
  }
  invisible(TRUE)
}

# A per-cell batch vector -> factor, with checks (no NA, at least 3 cells per batch).
.check_batch <- function(batch, n_cells, name = "batch") {
  if (is.null(batch)) return(NULL)
  if (length(batch) != n_cells) {
    scvir_abort(sprintf("%s has length %d but there are %d cells", name, length(batch), n_cells))
  }
  if (anyNA(batch)) {
    scvir_abort(sprintf("%s has %d missing (NA) value(s); give every cell a batch", name, sum(is.na(batch))))
  }
  f <- droplevels(as.factor(batch))
  small <- table(f)
  small <- small[small < 3]
  if (length(small)) {
    scvir_abort(sprintf(paste("batch %s has fewer than 3 cells (%s); merge or drop it (scVI's BatchNorm",
                              "and per-batch library prior need at least 3)"),
                        paste0("\"", names(small), "\"", collapse = ", "),
                        paste(as.integer(small), collapse = ", ")))
  }
  f
}

.check_choice <- function(value, choices, name) {
  if (!is.character(value) || length(value) != 1 || !(value %in% choices)) {
    scvir_abort(sprintf("%s must be one of %s; got %s", name,
                        paste0("\"", choices, "\"", collapse = ", "),
                        paste(format(value), collapse = " ")), "scvir_config_error")
  }
  value
}

.check_count_arg <- function(value, name, min = 1, null_ok = FALSE) {
  if (is.null(value) && null_ok) return(NULL)
  if (!is.numeric(value) || length(value) != 1 || is.na(value) || value != round(value) || value < min) {
    scvir_abort(sprintf("%s must be a single integer >= %d", name, min), "scvir_config_error")
  }
  as.integer(value)
}

.check_number <- function(value, name, lower = -Inf, upper = Inf, null_ok = FALSE) {
  if (is.null(value) && null_ok) return(NULL)
  if (!is.numeric(value) || length(value) != 1 || is.na(value) || value < lower || value > upper) {
    scvir_abort(sprintf("%s must be a single number in [%g, %g]", name, lower, upper), "scvir_config_error")
  }
  as.numeric(value)
}

.check_flag <- function(value, name) {
  if (!is.logical(value) || length(value) != 1 || is.na(value)) {
    scvir_abort(sprintf("%s must be TRUE or FALSE", name), "scvir_config_error")
  }
  value
}
