#' Run scVI on a Seurat object, a SingleCellExperiment or a count matrix
#'
#' Trains an scVI model (see [scvi_model()] for the model, its defaults and every training
#' argument) on the raw counts of `object` and puts the results where each ecosystem expects
#' them:
#' * Seurat: a `DimReduc` named `"scvi"` (key `"scvi_"`) and the model in `object@misc$scvi`;
#' * SingleCellExperiment: `reducedDim(object, "scVI")` and the model in
#'   `metadata(object)$scvi`;
#' * a matrix: the fitted `scvi_model` itself.
#'
#' The model travels with the object, so [get_latent_representation()],
#' [get_normalized_expression()] and [training_history()] accept the object afterwards. If training
#' fails or is interrupted (Ctrl-C), the object is returned unchanged: nothing is modified
#' until training has finished.
#'
#' @param object A Seurat object (v4 assays or v5 layers; split layers `counts.<batch>` are
#'   joined), a SingleCellExperiment, or a genes x cells count matrix.
#' @param ... Model and training arguments passed to [scvi_model()] (`n_latent`,
#'   `gene_likelihood`, `max_epochs`, `seed`, `n_top_genes`, `features`, ...).
#' @return The object with results added (a `scvi_model` for matrix input).
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' # Seurat: SeuratObject's pbmc_small (80 cells x 230 genes). It flags only 20 variable
#' # genes; train on all 230 instead. Real analyses train for hundreds of epochs.
#' data("pbmc_small", package = "SeuratObject")
#' pbmc_small <- scvi(pbmc_small, use_highly_variable_genes = FALSE, max_epochs = 5,
#'                    seed = 1, n_threads = 1, verbose = FALSE)
#' head(SeuratObject::Embeddings(pbmc_small, "scvi"))
#' training_history(pbmc_small)[, c("epoch", "elbo_train", "elbo_validation")]
#' @examplesIf requireNamespace("SingleCellExperiment", quietly = TRUE)
#' # SingleCellExperiment: 300 cells of the bundled PBMC 3k data (2,000 genes).
#' sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
#' sce <- scvi(sce[, 1:300], max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' dim(SingleCellExperiment::reducedDim(sce, "scVI"))
#' @export
scvi <- function(object, ...) UseMethod("scvi")

#' @rdname scvi
#' @param assay Seurat assay (default: the default assay) or SingleCellExperiment assay
#'   (default `"counts"`) holding raw counts.
#' @param layer Seurat layer (v5) or slot (v4) holding raw counts.
#' @param batch_key Column of the cell metadata (`meta.data` / `colData`) naming each cell's batch.
#' @param labels_key Column of cell labels (used by `dispersion = "gene-label"`).
#' @param categorical_covariate_keys,continuous_covariate_keys Columns of extra categorical
#'   covariates (injected like the batch) and continuous covariates (concatenated to the
#'   decoder's input).
#' @param size_factor_key Column of positive size factors, used as the library size (gene
#'   proportions then use softplus, as scvi-tools).
#' @param n_epochs The scanpy wrapper's name for `max_epochs`.
#' @param use_highly_variable_genes Train on the genes the object already flags as highly
#'   variable (Seurat `VariableFeatures()`, SingleCellExperiment `rowData()$highly_variable`)
#'   when it has such flags; otherwise genes are selected by `n_top_genes` (see [scvi_model()]).
#' @param subset_genes Genes to train on (the wrapper's name for `features`).
#' @param linear_decoder Train LDVAE ([ldvae()]) and also store its gene loadings (`loadings` of
#'   the DimReduc; `metadata(sce)$ldvae_loadings` and the `rotation` attribute of the
#'   `reducedDim`).
#' @param copy `TRUE` (R's usual semantics): return the updated object and leave the caller's
#'   variable alone. `FALSE` (the scanpy wrapper's default): also update the variable passed as
#'   `object` in the caller's environment, so `scvi(seu, copy = FALSE)` works without assignment.
#' @param return_posterior Also return the model: a list with `object` and `model`.
#' @param model_kwargs,trainer_kwargs Lists of [scvi_model()] model and training arguments (the
#'   wrapper's way of passing them; the same as giving them in `...`).
#' @param store_expression Add the wrapper's two expression outputs for the model's genes: the
#'   denoised normalized expression (`scvi_denoised`: proportions per cell, scvi-tools'
#'   `X_scvi_denoised`) and the expected counts (`scvi_sample_rate`: library x proportions,
#'   `X_scvi_sample_rate`), as Seurat assays or SingleCellExperiment assays (in
#'   `altExp(sce, "scvi")` when the model uses a subset of the genes). They are dense, 8 bytes
#'   per gene and cell each, so the default `FALSE` leaves them out (they can be computed at any
#'   time with [get_normalized_expression()]); `TRUE` stores them, as the scanpy wrapper does;
#'   `NULL` stores them up to 50 million genes x cells (400 MB each) and otherwise says it
#'   skipped them.
#' @param reduction_name,reduction_key Name and key of the Seurat `DimReduc`.
#' @param reduction.name,reduction.key Seurat-style spellings of `reduction_name` and
#'   `reduction_key` (give one spelling or the other).
#' @export
scvi.Seurat <- function(object, ..., assay = NULL, layer = "counts", batch_key = NULL,
                        labels_key = NULL, categorical_covariate_keys = NULL,
                        continuous_covariate_keys = NULL, size_factor_key = NULL,
                        n_epochs = NULL, use_highly_variable_genes = TRUE, subset_genes = NULL,
                        linear_decoder = FALSE, copy = TRUE, return_posterior = FALSE,
                        model_kwargs = list(), trainer_kwargs = list(), store_expression = FALSE,
                        reduction_name = "scvi", reduction_key = "scvi_",
                        reduction.name = NULL, reduction.key = NULL) {
  .need("SeuratObject")
  .check_wrapper_dots(list(...), scvi.Seurat)
  call <- match.call()
  target <- substitute(object)
  caller <- parent.frame()
  reduction_name <- .dot_alias(reduction_name, reduction.name, "reduction_name", !missing(reduction_name))
  reduction_key <- .dot_alias(reduction_key, reduction.key, "reduction_key", !missing(reduction_key))
  if (identical(copy, FALSE) && !is.name(target)) {
    scvir_abort("copy = FALSE needs a variable as object, to update it in place")
  }
  input <- .seurat_counts(object, assay, layer)
  batch <- .metadata_column(object@meta.data, batch_key)
  if (is.null(batch_key) && !is.null(input$layer_batch)) {
    # Split layers without a batch_key: each cell's layer is its batch, recorded as a metadata
    # column so that later queries find it.
    batch <- input$layer_batch
    batch_key <- "scvi_batch"
    object@meta.data[[batch_key]] <- batch
    message(sprintf(paste("scvi(): no batch_key; the %d split \"%s\" layers of assay \"%s\" are the",
                          "batches (%s), recorded in meta.data$scvi_batch"),
                    nlevels(batch), layer, input$assay, paste(utils::head(levels(batch), 5), collapse = ", ")))
  }
  keys <- list(labels_key = labels_key, categorical_covariate_keys = categorical_covariate_keys,
               continuous_covariate_keys = continuous_covariate_keys, size_factor_key = size_factor_key)
  cov <- do.call(.metadata_covariates, c(list(object@meta.data), keys))
  hvg <- if (isTRUE(use_highly_variable_genes)) SeuratObject::VariableFeatures(object, assay = input$assay)
  args <- .wrapper_args(list(...), n_epochs, hvg, subset_genes, linear_decoder, model_kwargs,
                        trainer_kwargs, use_highly_variable_genes)
  fit <- do.call(.fit_from_object, c(list(input$counts, batch, batch_key, cov), args,
                                     list(source = c(list(type = "Seurat", assay = input$assay, layer = layer), keys))))
  newdata <- input$counts[fit$genes, , drop = FALSE]
  z <- get_latent_representation(fit, newdata = newdata, batch = batch, covariates = cov)
  colnames(z) <- paste0(reduction_key, seq_len(ncol(z)))
  loadings <- if (isTRUE(linear_decoder)) {
    l <- get_loadings(fit)
    colnames(l) <- colnames(z)
    l
  } else {
    methods::new(methods::getClass("matrix"))
  }
  object[[reduction_name]] <- SeuratObject::CreateDimReducObject(
    embeddings = z, loadings = loadings, key = reduction_key, assay = input$assay,
    misc = list(model = fit$model_type))
  if (.store_expression(store_expression, newdata)) {
    e <- .wrapper_expression(fit, newdata, batch, cov)
    object <- .add_assay(object, "scvi_denoised", .expression_assay(e$denoised, "scvidenoised_"))
    object <- .add_assay(object, "scvi_sample_rate", .expression_assay(e$sample_rate, "scvisamplerate_"))
  }
  object@misc$scvi <- fit
  params <- .command_params(scvi.Seurat, environment(), list(...),
                            drop = c("reduction.name", "reduction.key"))
  params$assay <- input$assay
  object <- .log_seurat_command(object, paste0("scvi.", input$assay), input$assay, call, params)
  .wrapper_return(object, fit, copy, return_posterior, target, caller)
}

#' @rdname scvi
#' @param reduced_dim_name Name of the SingleCellExperiment `reducedDim`.
#' @export
scvi.SingleCellExperiment <- function(object, ..., assay = "counts", batch_key = NULL,
                                      labels_key = NULL, categorical_covariate_keys = NULL,
                                      continuous_covariate_keys = NULL, size_factor_key = NULL,
                                      n_epochs = NULL, use_highly_variable_genes = TRUE,
                                      subset_genes = NULL, linear_decoder = FALSE, copy = TRUE,
                                      return_posterior = FALSE, model_kwargs = list(),
                                      trainer_kwargs = list(), store_expression = FALSE,
                                      reduced_dim_name = "scVI") {
  .need("SingleCellExperiment")
  .check_wrapper_dots(list(...), scvi.SingleCellExperiment)
  target <- substitute(object)
  caller <- parent.frame()
  if (identical(copy, FALSE) && !is.name(target)) {
    scvir_abort("copy = FALSE needs a variable as object, to update it in place")
  }
  input <- .sce_counts(object, assay, backed = TRUE)
  cd <- as.data.frame(SummarizedExperiment::colData(object))
  batch <- .metadata_column(cd, batch_key)
  keys <- list(labels_key = labels_key, categorical_covariate_keys = categorical_covariate_keys,
               continuous_covariate_keys = continuous_covariate_keys, size_factor_key = size_factor_key)
  cov <- do.call(.metadata_covariates, c(list(cd), keys))
  flags <- SummarizedExperiment::rowData(object)$highly_variable
  hvg <- if (isTRUE(use_highly_variable_genes) && is.logical(flags)) rownames(object)[flags %in% TRUE]
  args <- .wrapper_args(list(...), n_epochs, hvg, subset_genes, linear_decoder, model_kwargs,
                        trainer_kwargs, use_highly_variable_genes)
  fit <- do.call(.fit_from_object, c(list(input, batch, batch_key, cov), args,
                                     list(source = c(list(type = "SingleCellExperiment", assay = assay), keys))))
  newdata <- input[fit$genes, , drop = FALSE]
  z <- get_latent_representation(fit, newdata = newdata, batch = batch, covariates = cov)
  if (isTRUE(linear_decoder)) {
    attr(z, "rotation") <- get_loadings(fit)
    S4Vectors::metadata(object)$ldvae_loadings <- get_loadings(fit)
  }
  SingleCellExperiment::reducedDim(object, reduced_dim_name) <- z
  if (.store_expression(store_expression, newdata)) {
    e <- .wrapper_expression(fit, newdata, batch, cov)
    if (identical(rownames(object), fit$genes)) {
      SummarizedExperiment::assay(object, "scvi_denoised") <- e$denoised
      SummarizedExperiment::assay(object, "scvi_sample_rate") <- e$sample_rate
    } else {
      SingleCellExperiment::altExp(object, "scvi") <- SummarizedExperiment::SummarizedExperiment(
        assays = list(scvi_denoised = e$denoised, scvi_sample_rate = e$sample_rate))
    }
  }
  S4Vectors::metadata(object)$scvi <- fit
  .wrapper_return(object, fit, copy, return_posterior, target, caller)
}

# A Seurat assay holding a dense expression matrix, with a valid key. A v3/v4 Assay also in
# SeuratObject 5: an Assay5 would convert the dense matrix to a (fully dense) sparse one.
.expression_assay <- function(m, key) {
  a <- SeuratObject::CreateAssayObject(data = m)
  SeuratObject::Key(a) <- key
  a
}

# Adds an assay. SeuratObject 5 warns that an assay holding only a data layer has no counts
# layer (it counts features and UMIs per cell on adding it); that is expected here.
.add_assay <- function(object, name, assay) {
  withCallingHandlers(
    object[[name]] <- assay,
    warning = function(w) {
      if (grepl("Layer counts isn't present", conditionMessage(w), fixed = TRUE)) invokeRestart("muffleWarning")
    })
  object
}

# `...` of the object wrappers holds scvi_model() arguments (all but the data it takes from the
# object): anything else is refused, with the closest argument of either function suggested.
.check_wrapper_dots <- function(dots, method) {
  per_cell <- .refuse_per_cell_args(dots)
  known <- c(setdiff(names(formals(scvi_model)), c(per_cell, "...")), names(formals(method)))
  .check_dots(dots, known, after = "object")
}

# scvi_model()'s per-cell data arguments, which objects take from their own data and metadata:
# refused when given to an object's method; returns their names.
.refuse_per_cell_args <- function(dots) {
  per_cell <- c("counts", "labels", "batch", "categorical_covariates", "continuous_covariates",
                "size_factor", "keep_data")
  given <- intersect(names(dots), per_cell)
  if (length(given)) {
    scvir_abort(sprintf(paste("%s: an object's cells take their counts, labels, batch and covariates",
                              "from the object; give labels_key, batch_key, categorical_covariate_keys,",
                              "continuous_covariate_keys or size_factor_key (metadata columns) instead"),
                        paste0("`", given, "`", collapse = ", ")), "scvir_config_error")
  }
  per_cell
}

# The scanpy wrapper's arguments (seed 001) turned into scvi_model() arguments.
.wrapper_args <- function(dots, n_epochs, hvg, subset_genes, linear_decoder, model_kwargs,
                          trainer_kwargs, use_hvg) {
  .check_flag(use_hvg, "use_highly_variable_genes")
  for (nm in c("model_kwargs", "trainer_kwargs")) {
    x <- get(nm)
    if (!is.list(x) || (length(x) && (is.null(names(x)) || any(names(x) == "")))) {
      scvir_abort(sprintf("%s must be a named list", nm), "scvir_config_error")
    }
  }
  model_args <- c("n_hidden", "n_latent", "n_layers", "dropout_rate", "dispersion",
                  "gene_likelihood", "use_observed_lib_size", "log_variational",
                  "encode_covariates", "deeply_inject_covariates", "use_batch_norm",
                  "use_layer_norm", "var_activation", "latent_distribution",
                  "batch_representation", "batch_embedding_dim")
  bad <- setdiff(names(model_kwargs), model_args)
  if (length(bad)) scvir_abort(sprintf("model_kwargs has non-model argument(s): %s", paste(bad, collapse = ", ")), "scvir_config_error")
  train_args <- setdiff(names(formals(scvi_model)), c(model_args, "counts", "...", "batch", "labels",
                                                      "categorical_covariates", "continuous_covariates",
                                                      "size_factor", "n_top_genes", "features",
                                                      "linear_decoder", "keep_data", ".scanvi", ".init_model"))
  bad <- setdiff(names(trainer_kwargs), train_args)
  if (length(bad)) scvir_abort(sprintf("trainer_kwargs has non-training argument(s): %s", paste(bad, collapse = ", ")), "scvir_config_error")
  extra <- c(model_kwargs, trainer_kwargs)
  if (!is.null(n_epochs)) extra$max_epochs <- n_epochs
  if (!is.null(subset_genes)) extra$features <- subset_genes
  dup <- intersect(names(extra), names(dots))
  if (!is.null(n_epochs) && "max_epochs" %in% names(dots)) dup <- union(dup, "max_epochs (n_epochs)")
  if (length(dup)) scvir_abort(sprintf("argument(s) given twice: %s", paste(dup, collapse = ", ")), "scvir_config_error")
  args <- c(dots, extra)
  if (length(hvg) && is.null(args$features)) args$features <- hvg
  if (isTRUE(.check_flag(linear_decoder, "linear_decoder"))) args$linear_decoder <- TRUE
  args
}

# Whether to store the dense expression outputs: always / never when told, else (NULL) up to a size.
.store_expression <- function(store_expression, counts, max_entries = 5e7) {
  if (!is.null(store_expression)) return(.check_flag(store_expression, "store_expression"))
  n <- as.numeric(nrow(counts)) * ncol(counts)
  if (n <= max_entries) return(TRUE)
  message(sprintf(paste("scvi(): not storing scvi_denoised / scvi_sample_rate (%d genes x %d cells,",
                        "%.1f GB each); pass store_expression = TRUE to store them"),
                  nrow(counts), ncol(counts), n * 8 / 1e9))
  FALSE
}

# X_scvi_denoised (proportions) and X_scvi_sample_rate (expected counts), genes x cells.
.wrapper_expression <- function(fit, newdata, batch, cov) {
  list(denoised = get_normalized_expression(fit, newdata = newdata, batch = batch, covariates = cov),
       sample_rate = get_normalized_expression(fit, newdata = newdata, batch = batch, covariates = cov,
                                               library_size = "latent"))
}

.wrapper_return <- function(object, fit, copy, return_posterior, target, caller) {
  if (!isTRUE(.check_flag(copy, "copy"))) {
    if (!is.name(target)) scvir_abort("copy = FALSE needs a variable as object, to update it in place")
    assign(as.character(target), object, envir = caller)
  }
  if (isTRUE(.check_flag(return_posterior, "return_posterior"))) return(list(object = object, model = fit))
  object
}

#' @rdname scvi
#' @export
scvi.default <- function(object, ...) scvi_model(object, ...)

# Trains from an object's counts; the model does not duplicate the data the object holds.
.fit_from_object <- function(counts, batch, batch_key, cov, ..., source) {
  args <- list(...)
  if ("batch" %in% names(args)) {
    scvir_abort("give batch_key (a metadata column) instead of batch for objects", "scvir_config_error")
  }
  cov_args <- c("labels", "categorical_covariates", "continuous_covariates", "size_factor")
  if (any(cov_args %in% names(args))) {
    scvir_abort(sprintf("%s: give metadata keys (labels_key, categorical_covariate_keys, ...) for objects",
                        paste(intersect(cov_args, names(args)), collapse = ", ")), "scvir_config_error")
  }
  args$labels <- cov$labels
  args$categorical_covariates <- cov$categorical
  args$continuous_covariates <- cov$continuous
  args$size_factor <- cov$size_factor
  args$keep_data <- FALSE
  # Counts on disk are checked by the engine as it reads them.
  if (!.is_backed(counts)) counts <- .check_counts(counts)
  batch <- .check_batch(batch, ncol(counts), sprintf("batch_key \"%s\"", batch_key %||% ""))
  .check_dots(args, formals(scvi_model), after = "object")
  fit <- do.call(scvi_model, c(list(counts = counts, batch = batch), args))
  fit$batch_key <- batch_key
  fit$source <- source
  fit
}

.need <- function(pkg) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    scvir_abort(sprintf("package %s is needed for this; install it first", pkg))
  }
}

.metadata_column <- function(df, key, what = "batch_key") {
  if (is.null(key)) return(NULL)
  if (!is.character(key) || length(key) != 1) scvir_abort(sprintf("%s must be a single column name", what))
  if (!key %in% colnames(df)) {
    scvir_abort(sprintf("%s \"%s\" is not a column of the cell metadata (columns: %s)",
                        what, key, paste(utils::head(colnames(df), 20), collapse = ", ")))
  }
  df[[key]]
}
