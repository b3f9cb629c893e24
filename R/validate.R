# Input checks on R objects, with messages that name the problem. They run before anything is
# modified, so a failed call leaves the user's object untouched.

# Any supported matrix -> genes x cells dgCMatrix.
.as_dgc <- function(x, what = "counts") {
  if (inherits(x, "dgCMatrix")) return(x)
  if (is.data.frame(x)) x <- as.matrix(x)
  if (is.matrix(x) || inherits(x, "Matrix") || methods::is(x, "DelayedArray")) {
    if (any(dim(x) == 0)) {
      scvir_abort(sprintf("%s is empty (%d genes x %d cells); at least 2 genes and 2 cells are needed",
                          what, nrow(x), ncol(x)))
    }
    # Pattern (n*Matrix) and logical matrices would become 0/1 counts: refuse them.
    if (methods::is(x, "nMatrix")) {
      scvir_abort(sprintf(paste("%s is a pattern matrix (%s): it records only where entries are",
                                "non-zero, not the counts; give the raw UMI counts (e.g. a dgCMatrix)"),
                          what, class(x)[1]))
    }
    type <- if (methods::is(x, "DelayedArray")) {
      getExportedValue("DelayedArray", "type")(x)
    } else if (inherits(x, "Matrix")) {
      if (methods::is(x, "lMatrix")) "logical" else "double"
    } else {
      typeof(x)
    }
    if (identical(type, "logical")) {
      scvir_abort(sprintf("%s is a logical matrix (%s): TRUE/FALSE values are not counts; give the raw UMI counts",
                          what, class(x)[1]))
    }
    if (!type %in% c("double", "integer")) {
      scvir_abort(sprintf("%s must be numeric, not %s (%s)", what, type, class(x)[1]))
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
  if (nrow(counts) < 2) scvir_abort(sprintf("%s has %d gene(s); at least 2 are needed", what, nrow(counts)))
  if (ncol(counts) < 2) scvir_abort(sprintf("%s has %d cell(s); at least 2 are needed", what, ncol(counts)))
  .check_dimnames(rownames(counts), what, "gene")
  .check_dimnames(colnames(counts), what, "cell")
  if (is.null(rownames(counts))) rownames(counts) <- paste0("gene", seq_len(nrow(counts)))
  if (is.null(colnames(counts))) colnames(counts) <- paste0("cell", seq_len(ncol(counts)))
  v <- counts@x
  where <- function(k) {
    cell <- findInterval(k - 1, counts@p, rightmost.closed = FALSE)
    sprintf("gene \"%s\", cell \"%s\"", rownames(counts)[counts@i[k] + 1], colnames(counts)[cell])
  }
  # One pass in the engine: no temporary vectors the size of the matrix.
  p <- .rs_call("scvir_count_problems", v)
  if (p$n[1]) {
    scvir_abort(sprintf("%s contain %d NaN/NA or infinite value(s) (first at %s); scVI needs raw UMI counts",
                        what, p$n[1], where(p$first[1])))
  }
  if (p$n[2]) {
    scvir_abort(sprintf("%s contain %d negative value(s) (first: %g at %s); scVI needs raw UMI counts",
                        what, p$n[2], v[p$first[2]], where(p$first[2])))
  }
  if (p$n[3]) {
    scvir_abort(sprintf(paste("%s contain %d non-integer value(s) (first: %g at %s); scVI models raw UMI",
                              "counts, not normalized or log-transformed data (use the counts layer/assay)"),
                        what, p$n[3], v[p$first[3]], where(p$first[3])))
  }
  counts
}

# Genes to train on: a character vector (or factor) without NA or empty names.
.check_features <- function(features) {
  if (is.null(features)) return(NULL)
  if (is.factor(features)) features <- as.character(features)
  if (!is.character(features) || !length(features)) {
    scvir_abort(sprintf("features must be a character vector of gene names; got %s",
                        .describe_value(features)), "scvir_config_error")
  }
  if (anyNA(features) || any(!nzchar(features))) {
    scvir_abort(sprintf("features has %d missing (NA) or empty gene name(s)",
                        sum(is.na(features) | !nzchar(features))), "scvir_config_error")
  }
  features
}

.check_no_empty_cells <- function(counts, context) {
  # Counts on disk: the engine finds empty cells in its first pass over the file.
  if (.is_backed(counts)) return(invisible(TRUE))
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
  if (!is.character(value) || length(value) != 1 || is.na(value) || !(value %in% choices)) {
    scvir_abort(sprintf("%s must be one of %s; got %s", name,
                        paste0("\"", choices, "\"", collapse = ", "),
                        .describe_value(value)), "scvir_config_error")
  }
  value
}

# The largest finite float32: the engine computes in single precision.
.float32_max <- 3.4028234663852886e38

# A short description of a value for error messages: `3`, `NA`, `Inf`, `"a"`, `a numeric vector
# of length 2`, `NULL`, `a list`.
.describe_value <- function(value) {
  if (is.null(value)) return("NULL")
  if (is.atomic(value) && length(value) == 1 && is.null(dim(value))) {
    if (is.character(value) && !is.na(value)) return(sprintf("\"%s\"", value))
    return(format(value))
  }
  if (is.atomic(value) && is.null(dim(value))) {
    return(sprintf("a %s vector of length %d", typeof(value), length(value)))
  }
  sprintf("an object of class %s", class(value)[1])
}

# A whole number (an integer option): type, NA, finiteness, range and integer overflow.
.check_count_arg <- function(value, name, min = 1, null_ok = FALSE, max = .Machine$integer.max) {
  if (is.null(value) && null_ok) return(NULL)
  range <- if (max >= .Machine$integer.max) sprintf(">= %d", as.integer(min)) else
    sprintf("between %d and %d", as.integer(min), as.integer(max))
  fail <- function(why) {
    scvir_abort(sprintf("%s must be a single integer %s%s; got %s%s", name, range,
                        if (null_ok) " (or NULL)" else "", .describe_value(value), why),
                "scvir_config_error")
  }
  if (is.atomic(value) && length(value) == 1 && is.na(value)) {
    fail(if (is.nan(value)) " (not a number)" else " (a missing value)")
  }
  if (!is.numeric(value) || length(value) != 1) fail("")
  if (!is.finite(value)) fail(" (not finite)")
  if (value != round(value)) fail(" (not a whole number)")
  if (value < min) fail("")
  if (value > max) {
    fail(if (value > .Machine$integer.max) " (too large for an integer)" else "")
  }
  as.integer(value)
}

# A real number: type, NA/NaN, finiteness (Inf is refused even when a bound is infinite) and
# range; `open_lower` excludes `lower` itself.
.check_number <- function(value, name, lower = -Inf, upper = Inf, null_ok = FALSE,
                          open_lower = FALSE) {
  if (is.null(value) && null_ok) return(NULL)
  range <- if (is.finite(upper)) {
    sprintf("in %s%g, %g]", if (open_lower) "(" else "[", lower, upper)
  } else if (is.finite(lower)) {
    sprintf("%s %g", if (open_lower) ">" else ">=", lower)
  } else ""
  fail <- function(why) {
    scvir_abort(sprintf("%s must be a single finite number%s%s; got %s%s", name,
                        if (nzchar(range)) " " else "", range, .describe_value(value), why),
                "scvir_config_error")
  }
  if (is.atomic(value) && length(value) == 1 && is.na(value)) {
    fail(if (is.nan(value)) " (not a number)" else " (a missing value)")
  }
  if (!is.numeric(value) || length(value) != 1) fail("")
  if (!is.finite(value)) fail(" (not finite)")
  if (value < lower || value > upper || (open_lower && value == lower)) fail("")
  as.numeric(value)
}

# A seed: NULL (drawn or the model's) or a whole number in [0, 2147483647].
.check_seed <- function(seed) .check_count_arg(seed, "seed", min = 0, null_ok = TRUE)

# A positive scale factor the engine multiplies float32 values by (library sizes).
.check_scale <- function(value, name) {
  .check_number(value, name, lower = 0, upper = .float32_max, open_lower = TRUE)
}

.check_flag <- function(value, name) {
  if (!is.logical(value) || length(value) != 1 || is.na(value)) {
    scvir_abort(sprintf("%s must be TRUE or FALSE; got %s", name, .describe_value(value)),
                "scvir_config_error")
  }
  value
}

# Arguments that landed in `...` of a function whose `...` takes nothing, or only the names in
# `fun_formals` (a function's formals, or a character vector of names; `...` itself never
# counts). With `...` placed right after a function's data arguments, later arguments match only
# by their exact names; anything else ends here, refused with the closest real argument names.
.check_dots <- function(dots, fun_formals, after = NULL) {
  if (!length(dots)) return(invisible(character()))
  known <- if (is.character(fun_formals)) fun_formals else names(fun_formals)
  known <- setdiff(known, "...")
  given <- names(dots) %||% rep("", length(dots))
  unnamed <- which(!nzchar(given))
  if (length(unnamed)) {
    lead <- if (is.null(after)) "the data" else sprintf("`%s`", after)
    example <- setdiff(known[!startsWith(known, ".")], after)
    scvir_abort(sprintf("argument %d after %s has no name (%s); %s", unnamed[1], lead,
                        .describe_value(dots[[unnamed[1]]]),
                        if (length(example)) {
                          sprintf("give every argument after %s by name, e.g. `%s = ...`", lead, example[1])
                        } else {
                          sprintf("this function takes no arguments after %s", lead)
                        }), "scvir_config_error")
  }
  unknown <- setdiff(unique(given), known)
  if (!length(unknown)) return(invisible(given))
  public <- known[!startsWith(known, ".")]
  parts <- vapply(unknown, function(u) {
    close <- .closest_names(u, public)
    sprintf("`%s`%s", u, if (length(close)) {
      sprintf("; did you mean %s?", paste0("`", close, "`", collapse = " or "))
    } else "")
  }, "")
  scvir_abort(sprintf("unknown argument%s %s", if (length(unknown) > 1) "s" else "",
                      paste(parts, collapse = ", ")), "scvir_config_error")
}

# Candidate argument names for a misspelt one: those it abbreviates (what partial matching would
# have picked) and those within a few edits, nearest first, at most three.
.closest_names <- function(name, candidates) {
  if (!length(candidates)) return(character())
  d <- drop(utils::adist(name, candidates, ignore.case = TRUE))
  limit <- max(2, ceiling(nchar(name) / 3))
  prefix <- startsWith(candidates, name)
  pick <- which(d <= limit | prefix)
  if (!length(pick) && nchar(name) >= 3) {
    # An abbreviation by dropped letters (use_hvg for use_highly_variable_genes).
    chars <- strsplit(name, "")[[1]]
    pattern <- paste0("^", paste(gsub("([.])", "\\\\\\1", chars), collapse = ".*"))
    pick <- which(grepl(pattern, candidates))
  }
  pick <- pick[order(d[pick], candidates[pick])]
  utils::head(candidates[pick], 3)
}

# Row (gene) or column (cell) names: no NA, empty or duplicated ones.
.check_dimnames <- function(names, what, kind) {
  if (is.null(names)) return(invisible(TRUE))
  show <- function(i, values) {
    paste(sprintf("%s (%s %d)", values, if (kind == "gene") "row" else "column", i)[seq_len(min(3, length(i)))],
          collapse = ", ")
  }
  bad <- which(is.na(names))
  if (length(bad)) {
    scvir_abort(sprintf("%s has %d missing (NA) %s name(s): %s; every %s needs a unique name",
                        what, length(bad), kind, show(bad, rep("NA", length(bad))), kind))
  }
  bad <- which(!nzchar(names))
  if (length(bad)) {
    scvir_abort(sprintf("%s has %d empty %s name(s): %s; every %s needs a unique name",
                        what, length(bad), kind, show(bad, rep("\"\"", length(bad))), kind))
  }
  dup <- which(duplicated(names))
  if (length(dup)) {
    first <- unique(names[dup])
    scvir_abort(sprintf("%s has duplicated %s names (%d duplicate(s), e.g. %s); make them unique first (e.g. with make.unique())",
                        what, kind, length(dup),
                        paste0("\"", utils::head(first, 3), "\"", collapse = ", ")))
  }
  invisible(TRUE)
}
