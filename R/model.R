#' Train an scVI model on a count matrix
#'
#' Fits scvi-tools' SCVI model (a variational autoencoder over raw UMI counts; Lopez et al. 2018)
#' natively, with scvi-tools' defaults: encoder on log1p counts, 128 hidden units, 10 latent
#' dimensions, one layer, dropout 0.1 in the encoder, BatchNorm, zero-inflated negative binomial
#' likelihood with per-gene dispersion and the observed library size. Training uses Adam
#' (lr 1e-3, eps 0.01, weight decay 1e-6), minibatches of 128 cells, a KL warm-up over 400
#' epochs and a 90/10 train/validation split.
#'
#' Differences from scvi-tools, by choice: the validation set is evaluated every epoch
#' (`check_val_every_n_epoch = 1`) so that [training_history()] always holds `elbo_validation`;
#' scvi-tools' seed-less default draws a random seed, here `seed = NULL` draws it from R's
#' random number generator, so [set.seed()] makes runs repeatable too.
#'
#' @param counts Raw UMI counts, genes x cells: a `dgCMatrix` (used without copying), any
#'   `Matrix`, or a base matrix. Gene names are row names, cell names column names. Or counts
#'   left on disk: an `.h5ad` path or a handle from `read_h5ad(path, backed = TRUE)` (X or a
#'   layer, CSR or dense), or an HDF5Array `DelayedMatrix` with no pending operations: one
#'   HDF5 dataset (as `HDF5Array::writeHDF5Array()` or `saveHDF5SummarizedExperiment()` leave
#'   it) or a Cell Ranger HDF5 matrix (`HDF5Array::TENxMatrix()`,
#'   `DropletUtils::read10xCounts(type = "HDF5")`); other DelayedArrays are read into memory.
#'   Training then reads the file in shuffled blocks of cells on a background thread and
#'   holds only per-cell summaries (library size, a likelihood constant) in memory; gene
#'   selection reads it in two passes; `batch` and `labels` may name obs columns; the model keeps
#'   the handle (not the counts), so queries read the file again. Minibatches mix cells of 256
#'   random blocks of 64 consecutive cells (a chunked dense dataset: blocks of one chunk's
#'   rows, as many as make about 16,384 cells), not of the whole data set as in memory: the
#'   same objective, a slightly different sequence of steps.
#' @param ... Unused: every argument after `counts` is given by its full name (partial matching
#'   could change the meaning: `n_epochs` would have set `n_epochs_kl_warmup`); an unknown or
#'   abbreviated name is a `scvir_config_error` that names the closest arguments.
#' @param batch Optional batch of each cell (vector or factor, one per cell).
#' @param labels Optional label of each cell (needed for `dispersion = "gene-label"`).
#' @param categorical_covariates Optional extra categorical covariates: a named list or data
#'   frame of per-cell vectors, injected into the networks like the batch.
#' @param continuous_covariates Optional continuous covariates: a named list, data frame or
#'   matrix (cells in rows), concatenated to the decoder's input (and the encoders' with
#'   `encode_covariates`).
#' @param size_factor Optional positive size factor of each cell, used as the library size
#'   (gene proportions then use softplus instead of softmax, as in scvi-tools).
#' @param n_top_genes Number of highly variable genes to train on, selected with the
#'   `seurat_v3` method on the counts (per batch when `batch` is given). Used only when the
#'   input has more genes; `NULL` uses all genes.
#' @param features Explicit genes to train on (overrides `n_top_genes`).
#' @param n_hidden,n_latent,n_layers,dropout_rate Architecture, as in scvi-tools.
#' @param dispersion `"gene"`, `"gene-batch"`, `"gene-label"` or `"gene-cell"`.
#' @param gene_likelihood `"zinb"`, `"nb"`, `"poisson"` or `"normal"` (scvi-tools' experimental
#'   Gaussian: mean library x proportion, standard deviation exp(px_r) per gene; the input must
#'   still be counts, as the encoder and library use them).
#' @param use_observed_lib_size `TRUE` uses the observed library size; `FALSE` learns it
#'   with a per-batch log-normal prior.
#' @param log_variational Encode log1p(counts) (`TRUE`, scvi-tools' default) or raw counts.
#' @param encode_covariates Give the encoders the batch too (scvi-tools: `FALSE`).
#' @param deeply_inject_covariates Inject the batch into every hidden layer, not just the first.
#' @param use_batch_norm,use_layer_norm Where to normalise hidden layers: `"both"`,
#'   `"encoder"`, `"decoder"` or `"none"` (scvi-tools: BatchNorm `"both"`, LayerNorm `"none"`).
#' @param var_activation Variance activation of the encoders, `"exp"` or `"softplus"`.
#' @param latent_distribution `"normal"` or `"ln"` (logistic normal: the decoder sees the
#'   softmax of the Gaussian sample).
#' @param batch_representation `"one-hot"` (scvi-tools' default) or `"embedding"`: a learnt
#'   vector of `batch_embedding_dim` numbers per batch, appended to the decoder's input (and the
#'   encoders' with `encode_covariates`); see [get_batch_representation()].
#' @param batch_embedding_dim Size of the batch embedding (scvi-tools: 5).
#' @param linear_decoder Fit LDVAE (scvi-tools' `LinearSCVI`): a linear decoder whose weights
#'   are gene loadings of the latent factors ([get_loadings()]). Unless given, `gene_likelihood`
#'   then defaults to `"nb"` and `use_observed_lib_size` to `FALSE`, LinearSCVI's defaults.
#' @param max_epochs Number of epochs; `NULL` uses scvi-tools' rule
#'   `min(round(20000 / n_cells * 400), 400)`.
#' @param batch_size Minibatch size.
#' @param train_size,validation_size Fractions of cells for training and validation (`NULL`:
#'   0.9 and the rest).
#' @param shuffle_set_split Draw the split at random (`FALSE`: validation cells first, in order).
#' @param lr,weight_decay,eps Optimiser settings.
#' @param optimizer `"Adam"` (L2 weight decay, scvi-tools' default) or `"AdamW"` (decoupled).
#' @param n_epochs_kl_warmup Epochs of linear KL warm-up from `min_kl_weight` to
#'   `max_kl_weight`; `NULL` or 0 switches to `n_steps_kl_warmup`.
#' @param n_steps_kl_warmup Minibatch steps of KL warm-up when `n_epochs_kl_warmup` is unset.
#' @param max_kl_weight,min_kl_weight End points of the KL warm-up.
#' @param check_val_every_n_epoch Validation frequency in epochs (`NULL`: never).
#' @param early_stopping Stop when `early_stopping_monitor` has not improved by more than
#'   `early_stopping_min_delta` for `early_stopping_patience` validation epochs (validation then
#'   runs every epoch).
#' @param early_stopping_monitor `"elbo_validation"`, `"reconstruction_loss_validation"`,
#'   `"kl_local_validation"` or `"validation_loss"`.
#' @param early_stopping_patience,early_stopping_min_delta,early_stopping_mode,early_stopping_warmup_epochs
#'   Early-stopping rule (Lightning's, with scvi-tools' defaults 45, 0, `"min"`, 0).
#' @param reduce_lr_on_plateau Multiply the learning rate by `lr_factor` after more than
#'   `lr_patience` validation epochs without an improvement larger than `lr_threshold` of
#'   `lr_scheduler_metric` (PyTorch's ReduceLROnPlateau), never below `lr_min`.
#' @param lr_factor,lr_patience,lr_threshold,lr_min,lr_scheduler_metric Plateau rule
#'   (scvi-tools' defaults 0.6, 30, 0, 0, `"elbo_validation"`).
#' @param seed Integer seed for the split, the minibatch order and libtorch; `NULL` draws one
#'   from R's random number generator.
#' @param n_threads CPU threads for libtorch (default: all cores, or option `scviR.threads`).
#' @param accelerator `"auto"` (a CUDA GPU when the libtorch scviR was built against has one,
#'   else the CPU), `"cpu"` or `"gpu"`.
#' @param device CUDA device index (0-based) for `"gpu"`/`"auto"`; `"auto"` means 0.
#' @param verbose Print training progress (about ten lines per run).
#' @param .scanvi,.init_model Internal: scANVI settings and pretrained weights, set by [scanvi()].
#' @param keep_data Keep the (gene-selected) counts inside the model so that queries need no
#'   `newdata`.
#' @return An object of class `scvi_model`: use [get_latent_representation()],
#'   [get_normalized_expression()], [training_history()], `plot()`, [save_model()].
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' counts <- pbmc_small[["RNA"]]@counts # 230 genes x 80 cells
#' # 5 epochs keep the example fast; real analyses train for hundreds (max_epochs = NULL).
#' fit <- scvi_model(counts, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' fit
#' head(get_latent_representation(fit))
#' # the g1 / g2 groups as batches, a negative binomial likelihood and 5 latent dimensions
#' fit_nb <- scvi_model(counts, batch = pbmc_small$groups, gene_likelihood = "nb",
#'                      n_latent = 5, max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' fit_nb$batches
#' @export
scvi_model <- function(counts, ..., batch = NULL, labels = NULL, categorical_covariates = NULL,
                       continuous_covariates = NULL, size_factor = NULL,
                       n_top_genes = 2000L, features = NULL,
                       n_hidden = 128L, n_latent = 10L, n_layers = 1L, dropout_rate = 0.1,
                       dispersion = "gene", gene_likelihood = "zinb",
                       use_observed_lib_size = TRUE, log_variational = TRUE,
                       encode_covariates = FALSE, deeply_inject_covariates = TRUE,
                       use_batch_norm = "both", use_layer_norm = "none", var_activation = "exp",
                       latent_distribution = "normal", batch_representation = "one-hot",
                       batch_embedding_dim = 5L, linear_decoder = FALSE,
                       max_epochs = NULL, batch_size = 128L,
                       train_size = NULL, validation_size = NULL, shuffle_set_split = TRUE,
                       lr = 1e-3, weight_decay = 1e-6, eps = 0.01, optimizer = "Adam",
                       n_epochs_kl_warmup = 400L, n_steps_kl_warmup = NULL,
                       max_kl_weight = 1, min_kl_weight = 0, check_val_every_n_epoch = 1L,
                       early_stopping = FALSE, early_stopping_monitor = "elbo_validation",
                       early_stopping_patience = 45L, early_stopping_min_delta = 0,
                       early_stopping_mode = "min", early_stopping_warmup_epochs = 0L,
                       reduce_lr_on_plateau = FALSE, lr_factor = 0.6, lr_patience = 30L,
                       lr_threshold = 0, lr_min = 0, lr_scheduler_metric = "elbo_validation",
                       seed = NULL, n_threads = NULL, accelerator = "auto", device = "auto",
                       verbose = TRUE, keep_data = TRUE, .scanvi = NULL, .init_model = NULL) {
  .check_dots(list(...), formals(scvi_model), after = "counts")
  if (isTRUE(.check_flag(linear_decoder, "linear_decoder"))) {
    if (missing(gene_likelihood)) gene_likelihood <- "nb"
    if (missing(use_observed_lib_size)) use_observed_lib_size <- FALSE
  }
  norm_where <- c("both", "encoder", "decoder", "none")
  bn <- .check_choice(use_batch_norm, norm_where, "use_batch_norm")
  ln <- .check_choice(use_layer_norm, norm_where, "use_layer_norm")
  counts <- .as_backed_input(counts)
  if (.is_backed(counts)) {
    # On disk: batch and labels may name obs columns of the file.
    batch <- .obs_or_values(counts, batch, "batch")
    labels <- .obs_or_values(counts, labels, "labels")
  } else {
    counts <- .check_counts(.as_dgc(counts))
  }
  batch <- .check_batch(batch, ncol(counts))
  covariates <- list(labels = labels, categorical = categorical_covariates,
                     continuous = continuous_covariates, size_factor = size_factor)
  .scvi_fit(counts, batch, batch_key = NULL, covariates = covariates,
            n_top_genes = .check_count_arg(n_top_genes, "n_top_genes", min = 2, null_ok = TRUE),
            features = .check_features(features),
            model = list(n_hidden = .check_count_arg(n_hidden, "n_hidden"),
                         n_latent = .check_count_arg(n_latent, "n_latent"),
                         n_layers = .check_count_arg(n_layers, "n_layers"),
                         dropout_rate = .check_number(dropout_rate, "dropout_rate", 0, 0.999),
                         dispersion = .check_choice(dispersion, c("gene", "gene-batch", "gene-label", "gene-cell"), "dispersion"),
                         gene_likelihood = .check_choice(gene_likelihood, c("zinb", "nb", "poisson", "normal"), "gene_likelihood"),
                         use_observed_lib_size = .check_flag(use_observed_lib_size, "use_observed_lib_size"),
                         log_variational = .check_flag(log_variational, "log_variational"),
                         encode_covariates = .check_flag(encode_covariates, "encode_covariates"),
                         deeply_inject_covariates = .check_flag(deeply_inject_covariates, "deeply_inject_covariates"),
                         use_batch_norm_encoder = bn %in% c("both", "encoder"),
                         use_batch_norm_decoder = bn %in% c("both", "decoder"),
                         use_layer_norm_encoder = ln %in% c("both", "encoder"),
                         use_layer_norm_decoder = ln %in% c("both", "decoder"),
                         var_activation = .check_choice(var_activation, c("exp", "softplus"), "var_activation"),
                         latent_distribution = .check_choice(latent_distribution, c("normal", "ln"), "latent_distribution"),
                         batch_representation = .check_choice(batch_representation, c("one-hot", "embedding"), "batch_representation"),
                         batch_embedding_dim = .check_count_arg(batch_embedding_dim, "batch_embedding_dim"),
                         linear_decoder = linear_decoder, scanvi = .scanvi),
            train = do.call(.train_config, mget(names(formals(.train_config)))),
            seed = seed, n_threads = n_threads, verbose = .check_flag(verbose, "verbose"),
            keep_data = .check_flag(keep_data, "keep_data"),
            accelerator = .check_choice(accelerator, c("auto", "cpu", "gpu"), "accelerator"),
            device_index = if (identical(device, "auto")) 0L else .check_count_arg(device, "device", min = 0),
            init_model = .init_model)
}

# Threads: the argument, else options(scviR.threads), else the CPUs this process may use (its
# affinity mask and cgroup quota, OMP_NUM_THREADS, SLURM_CPUS_PER_TASK).
.default_threads <- function(n_threads = NULL) {
  n <- n_threads %||% getOption("scviR.threads") %||% .rs_available_cores()
  n <- .check_count_arg(n, "n_threads")
  if (n > 1024L) scvir_abort("n_threads must be at most 1024", "scvir_config_error")
  n
}

`%||%` <- function(a, b) if (is.null(a)) b else a

# "1 epoch", "12 epochs".
.counted <- function(n, word) sprintf("%d %s%s", as.integer(n), word, if (n == 1) "" else "s")

# scvi-tools' rule min(round(20000 / n_cells * 400), 400), as the engine applies it.
.default_max_epochs <- function(n_cells) .rs_call("scvir_default_max_epochs", as.numeric(n_cells))

.resolve_seed <- function(seed) {
  if (is.null(seed)) return(sample.int(.Machine$integer.max, 1L) - 1L)
  .check_count_arg(seed, "seed", min = 0)
}

.to_json <- function(x) jsonlite::toJSON(x, auto_unbox = TRUE, null = "null", digits = NA)

# Gene selection, checks, engine call, model object.
.scvi_fit <- function(counts, batch, batch_key, covariates, n_top_genes, features, model, train, seed,
                      n_threads, verbose, keep_data, accelerator = "auto", device_index = 0L,
                      source = NULL, init_model = NULL) {
  hvg <- NULL
  if (!is.null(features)) {
    features <- unique(as.character(features))
    missing <- setdiff(features, .gene_names(counts))
    if (length(missing)) {
      scvir_abort(sprintf("%d of the requested features are not genes of the data (e.g. %s)",
                          length(missing), paste0("\"", utils::head(missing, 3), "\"", collapse = ", ")))
    }
    counts <- counts[.gene_names(counts) %in% features, , drop = FALSE]
  } else if (!is.null(n_top_genes)) {
    n_top_genes <- .check_count_arg(n_top_genes, "n_top_genes", min = 2)
    if (nrow(counts) > n_top_genes) {
      hvg <- select_hvg_seurat_v3(counts, n_top_genes = n_top_genes, batch = batch)
      counts <- counts[hvg$highly_variable, , drop = FALSE]
    }
  }
  if (nrow(counts) < 2) scvir_abort("fewer than 2 genes are left after gene selection")
  .check_no_empty_cells(counts, sprintf("in the %d selected genes", nrow(counts)))
  cov <- .encode_covariates(covariates, ncol(counts))
  # Model sizes (labels, covariate categories, size factors) and the option combinations the
  # model cannot take are the engine's: it derives the first from the registry and refuses the
  # second before training.
  registry <- list(labels = I(cov$registry$labels),
                   categorical_covariates = unname(Map(function(k, l) list(k, I(l)),
                                                       names(cov$registry$categorical), cov$registry$categorical)),
                   continuous_covariates = I(cov$registry$continuous))
  batches <- if (is.null(batch)) "0" else levels(batch)
  codes <- if (is.null(batch)) integer(ncol(counts)) else as.integer(batch) - 1L
  seed <- .resolve_seed(seed)
  n_threads <- .default_threads(n_threads)
  train$seed <- seed
  max_epochs <- train$max_epochs %||% .default_max_epochs(ncol(counts))
  name <- if (!is.null(model$scanvi)) "scANVI" else if (isTRUE(model$linear_decoder)) "LDVAE" else "scVI"
  progress <- .progress_reporter(verbose, sprintf(
    "Training %s on %d cells x %d genes for %s (%s, seed %d)", name, ncol(counts),
    nrow(counts), .counted(max_epochs, "epoch"), .counted(n_threads, "thread"), seed))
  if (!is.null(progress)) on.exit(progress$done(), add = TRUE)
  started <- proc.time()[["elapsed"]]
  res <- .engine(.rs_train(.data_arg(counts, codes, cov$engine), .gene_names(counts), batches,
                           batch_key %||% "", .to_json(registry), .to_json(model),
                           .to_json(train), n_threads, progress$callback, accelerator,
                           as.integer(device_index), init_model))
  elapsed <- proc.time()[["elapsed"]] - started
  # Counts on disk: cell names stay in the file (millions of strings) until a query needs them.
  fit <- .new_fit(res$model, cells = if (.is_backed(counts)) NULL else colnames(counts),
                  data = if (isTRUE(keep_data)) list(counts = counts, batch = batch, covariates = covariates) else NULL,
                  seed = seed, n_threads = n_threads, hvg = hvg, source = source)
  fit$train_seconds <- elapsed
  if (.is_backed(counts)) fit$n_cells <- ncol(counts)
  fit$accelerator <- accelerator
  fit$device_index <- as.integer(device_index)
  fit$device <- res$device
  fit
}

# Builds the R model object around the engine's bytes; everything else is read from them.
.new_fit <- function(bytes, cells, data, seed, n_threads, hvg = NULL, source = NULL) {
  header <- .engine(.rs_model_meta(bytes))
  meta <- jsonlite::fromJSON(header, simplifyVector = TRUE)
  # The registry's nested lists (covariate categories) keep their shape unsimplified.
  reg <- jsonlite::fromJSON(header, simplifyVector = FALSE)$registry
  history <- meta$history$epochs
  if (is.data.frame(history) && nrow(history)) {
    history$epoch <- history$epoch + 1L
    # Classifier metrics exist for scANVI only.
    cls <- grep("^(classification_loss|accuracy)_", names(history), value = TRUE)
    empty <- cls[vapply(cls, function(k) all(is.na(history[[k]])), TRUE)]
    history <- history[setdiff(names(history), empty)]
  }
  split <- .engine(.rs_model_split(bytes))
  fit <- structure(list(
    stopped_early_at = meta$history$stopped_early_at,
    model = bytes,
    model_type = meta$model,
    config = meta$vae,
    train_config = meta$train,
    genes = meta$registry$genes,
    batches = meta$registry$batches,
    batch_key = meta$registry$batch_key,
    labels = unlist(reg$labels),
    categorical_covariates = stats::setNames(lapply(reg$categorical_covariates, function(x) unlist(x[[2]])),
                                             vapply(reg$categorical_covariates, function(x) x[[1]], "")),
    continuous_covariates = unlist(reg$continuous_covariates),
    uses_size_factor = isTRUE(meta$vae$use_size_factor_key),
    cells = cells,
    history = history,
    train_indices = split$train,
    validation_indices = split$validation,
    test_indices = split$test,
    seed = seed,
    n_threads = n_threads,
    hvg = hvg,
    source = source,
    data = data,
    engine_version = meta$engine_version,
    is_trained = is.data.frame(history) && nrow(history) > 0
  ), class = if (identical(meta$model, "SCANVI")) c("scanvi_model", "scvi_model") else "scvi_model")
  if (inherits(fit, "scanvi_model")) {
    # Label codes 0..n-1 are the known labels; the unlabelled category, if any cell had it, follows.
    n_known <- meta$vae$scanvi$n_labels
    fit$known_labels <- fit$labels[seq_len(n_known)]
    fit$unlabeled_category <- if (length(fit$labels) > n_known) fit$labels[n_known + 1L] else NA_character_
  }
  fit
}

#' Print a model
#'
#' A short description of a model: its type, the data it was trained on (genes, cells and the
#' training / validation / test split), batches, labels and covariates, its architecture and
#' likelihood, and the last logged ELBO. [summary()][summary.scvi_model] gives more.
#'
#' @param x An `scvi_model`.
#' @param ... Unused.
#' @return The model, invisibly.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' print(fit)
#' @method print scvi_model
#' @export
print.scvi_model <- function(x, ...) {
  cfg <- x$config
  h <- x$history
  if (identical(x$source$type, "scvi-tools")) {
    cat(sprintf("%s model imported from scvi-tools %s (%s)\n", x$model_type, x$source$version %||% "",
                x$source$model %||% x$model_type))
  } else {
    cat(sprintf("%s model (scviR %s), trained for %s%s\n", x$model_type, x$engine_version,
                .counted(if (is.data.frame(h)) nrow(h) else 0L, "epoch"),
                if (!is.null(x$stopped_early_at)) " (stopped early)" else ""))
  }
  cat(sprintf("  data:     %d genes x %d cells (train %d, validation %d, test %d)\n",
              length(x$genes), .fit_n_cells(x), length(x$train_indices),
              length(x$validation_indices), length(x$test_indices)))
  if (length(x$batches) > 1) {
    cat(sprintf("  batch:    \"%s\" with %d categories (%s)\n", x$batch_key %||% "batch",
                length(x$batches), paste(utils::head(x$batches, 5), collapse = ", ")))
  } else {
    cat("  batch:    none\n")
  }
  if (length(x$labels)) cat(sprintf("  labels:   %d categories (%s)\n", length(x$labels), paste(utils::head(x$labels, 5), collapse = ", ")))
  for (k in names(x$categorical_covariates)) {
    cat(sprintf("  covariate \"%s\" (categorical): %d categories\n", k, length(x$categorical_covariates[[k]])))
  }
  if (length(x$continuous_covariates)) {
    cat(sprintf("  continuous covariates: %s\n", paste(x$continuous_covariates, collapse = ", ")))
  }
  if (isTRUE(x$uses_size_factor)) cat("  size factors: yes (library = log size factor)\n")
  if (!is.null(x$config$query)) {
    q <- x$config$query
    ref_batches <- unlist(q$reference_batches)
    cat(sprintf("  query:    mapped onto a %s reference (%d cells); %d new batch(es)%s\n",
                x$reference$model_type %||% x$model_type, q$reference_n_cells,
                length(setdiff(x$batches, ref_batches)),
                if (isTRUE(q$unfrozen)) ", all weights trained" else ", reference weights frozen"))
    if (!isTRUE(x$is_trained)) cat("            not trained yet: train_model()\n")
  }
  if (!is.null(x$minified)) {
    cat(sprintf("  minified: latent posterior of %d cells, no counts\n", length(x$minified$cells)))
  }
  cat(sprintf("  model:    n_hidden %d, n_latent %d, n_layers %d, dropout %.2f\n",
              cfg$n_hidden, cfg$n_latent, cfg$n_layers, cfg$dropout_rate))
  cat(sprintf("            %s likelihood, %s dispersion, %s library size, %s latent, batch %s\n",
              cfg$gene_likelihood, cfg$dispersion,
              if (isTRUE(cfg$use_observed_lib_size)) "observed" else "latent",
              cfg$latent_distribution %||% "normal", cfg$batch_representation %||% "one-hot"))
  if (is.data.frame(h) && nrow(h)) {
    last <- h[nrow(h), ]
    cat(sprintf("  final:    elbo_train %.2f%s\n", last$elbo_train,
                if (!is.null(last$elbo_validation) && !is.na(last$elbo_validation))
                  sprintf(", elbo_validation %.2f", last$elbo_validation) else ""))
  }
  invisible(x)
}

#' Summarise a model
#'
#' Collects what a model was trained on, how, and how training went. `summary()` prints
#' nothing; printing its result (or autoprinting it) shows the summary.
#'
#' @param object An `scvi_model`.
#' @param x A `summary.scvi_model`.
#' @param ... Unused.
#' @return `summary()`: an object of class `summary.scvi_model`, a list with `model_type`,
#'   `engine_version`, `n_genes`, `n_cells`, `n_train`, `n_validation`, `n_test`, `n_batches`,
#'   `batch_key`, `batches`, `n_labels`, `labels`, `categorical_covariates` (names),
#'   `continuous_covariates`, `architecture` (the model's configuration), `training` (the
#'   training options), `max_epochs`, `epochs_trained`, `elbo_train` and `elbo_validation` (last
#'   logged values), `stopped_early`, `stopped_early_at`, `train_seconds`, `device` and `seed`;
#'   for scANVI models also `known_labels`, `unlabeled_category` and `accuracy_validation`.
#'   `print()`: `x`, invisibly.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' s <- summary(fit)
#' s$epochs_trained
#' s
#' @method summary scvi_model
#' @export
summary.scvi_model <- function(object, ...) {
  h <- object$history
  has_h <- is.data.frame(h) && nrow(h) > 0
  last <- function(col) {
    v <- if (has_h) h[[col]]
    v <- v[!is.na(v)]
    if (length(v)) v[length(v)] else NA_real_
  }
  out <- list(
    model_type = object$model_type,
    engine_version = object$engine_version,
    n_genes = length(object$genes),
    n_cells = .fit_n_cells(object),
    n_train = length(object$train_indices),
    n_validation = length(object$validation_indices),
    n_test = length(object$test_indices),
    n_batches = length(object$batches),
    batch_key = object$batch_key,
    batches = object$batches,
    n_labels = length(object$labels),
    labels = object$labels,
    categorical_covariates = names(object$categorical_covariates),
    continuous_covariates = object$continuous_covariates,
    architecture = object$config,
    training = object$train_config,
    max_epochs = object$train_config$max_epochs,
    epochs_trained = if (has_h) nrow(h) else 0L,
    elbo_train = last("elbo_train"),
    elbo_validation = last("elbo_validation"),
    stopped_early = !is.null(object$stopped_early_at),
    stopped_early_at = object$stopped_early_at,
    train_seconds = object$train_seconds %||% NA_real_,
    device = object$device,
    seed = object$seed
  )
  if (inherits(object, "scanvi_model")) {
    out$known_labels <- object$known_labels
    out$unlabeled_category <- object$unlabeled_category
    out$accuracy_validation <- last("accuracy_validation")
  }
  structure(out, class = "summary.scvi_model")
}

#' @rdname summary.scvi_model
#' @method print summary.scvi_model
#' @export
print.summary.scvi_model <- function(x, ...) {
  line <- function(label, items) {
    if (!length(items)) return(invisible())
    text <- strwrap(paste(items, collapse = ", "), width = max(40L, getOption("width") - 17L))
    cat(sprintf("  %-14s %s\n", c(label, rep("", length(text) - 1L)), text), sep = "")
  }
  settings <- function(cfg) {
    cfg <- cfg[!vapply(cfg, is.list, TRUE)]
    vals <- vapply(cfg, function(v) if (!length(v)) "NULL" else paste(format(v), collapse = ","), "")
    if (length(cfg)) paste(names(cfg), vals, sep = " = ") else character()
  }
  cat(sprintf("Summary of a %s model (scviR %s)\n", x$model_type, x$engine_version %||% "?"))
  line("data:", sprintf("%d genes x %d cells (train %d, validation %d, test %d)", x$n_genes,
                        x$n_cells, x$n_train, x$n_validation, x$n_test))
  line("batches:", if (x$n_batches > 1) {
    sprintf("%d (\"%s\": %s)", x$n_batches, x$batch_key %||% "batch",
            paste(utils::head(x$batches, 5), collapse = ", "))
  } else "none")
  line("labels:", if (x$n_labels) {
    sprintf("%d (%s%s)", x$n_labels, paste(utils::head(x$labels, 5), collapse = ", "),
            if (x$n_labels > 5) ", ..." else "")
  } else "none")
  line("covariates:", c(x$categorical_covariates, x$continuous_covariates))
  line("architecture:", settings(x$architecture[setdiff(names(x$architecture), "scanvi")]))
  if (is.list(x$architecture$scanvi)) line("scANVI:", settings(x$architecture$scanvi))
  line("training:", settings(x$training))
  line("epochs:", sprintf("%d trained of %s%s", x$epochs_trained, format(x$max_epochs %||% NA),
                          if (isTRUE(x$stopped_early)) {
                            sprintf(" (stopped early at epoch %s)", format(x$stopped_early_at))
                          } else ""))
  line("final:", c(sprintf("elbo_train %.4g", x$elbo_train),
                   if (!is.na(x$elbo_validation)) sprintf("elbo_validation %.4g", x$elbo_validation),
                   if (!is.null(x$accuracy_validation) && !is.na(x$accuracy_validation)) {
                     sprintf("accuracy_validation %.3f", x$accuracy_validation)
                   }))
  line("train time:", if (length(x$train_seconds) && !is.na(x$train_seconds)) {
    sprintf("%.1f s%s", x$train_seconds, if (length(x$device)) paste(" on", x$device) else "")
  } else "unknown")
  invisible(x)
}

#' Training history of a model
#'
#' Per-epoch series logged during training, in scvi-tools' names and per-cell units:
#' `elbo_train`, `reconstruction_loss_train`, `kl_local_train`, `kl_global_train`,
#' `train_loss_epoch`, `kl_weight` and, on validation epochs, `elbo_validation`,
#' `reconstruction_loss_validation`, `kl_local_validation`, `kl_global_validation`,
#' `validation_loss`; plus `train_seconds` (wall time of the epoch's training part).
#'
#' @param x An `scvi_model`, or a Seurat / SingleCellExperiment object holding one.
#' @param ... Unused; anything given there is a `scvir_config_error`.
#' @return A data.frame with one row per epoch (`epoch` starts at 1).
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' h <- training_history(fit)
#' h[, c("epoch", "elbo_train", "elbo_validation")]
#' @export
training_history <- function(x, ...) UseMethod("training_history")

#' @rdname training_history
#' @export
training_history.scvi_model <- function(x, ...) {
  .check_dots(list(...), character(), after = "x")
  x$history
}

#' @rdname training_history
#' @export
training_history.Seurat <- function(x, ...) training_history(.fit_of(x), ...)

#' @rdname training_history
#' @export
training_history.SingleCellExperiment <- function(x, ...) training_history(.fit_of(x), ...)

#' Plot the training history of a model
#'
#' Draws per-epoch series of the training history by epoch: by default the ELBO per cell on the
#' training set and, where evaluated, on the validation set. `plot()` uses base graphics;
#' `autoplot()` (with ggplot2 installed) returns the same plot as a ggplot object.
#'
#' Graphical parameters given in `...` replace the defaults (`main`, `xlab`, `ylab`, `xlim`,
#' `ylim`); `col`, `lty`, `lwd`, `type` and `pch` apply per series (recycled), everything else
#' goes to [graphics::plot()] for the frame.
#'
#' @param x,object An `scvi_model`.
#' @param y Unused.
#' @param metrics Columns of [training_history()] to draw; those never evaluated are left out.
#' @param legend Position of the legend (see [graphics::legend()]), or `FALSE` for none.
#' @param ... `plot()`: graphical parameters. `autoplot()`: unused.
#' @return `plot()`: `x`, invisibly. `autoplot()`: a ggplot object.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 10, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' plot(fit)
#' plot(fit, main = "pbmc_small", col = c("black", "red"), lwd = 1, log = "y")
#' if (requireNamespace("ggplot2", quietly = TRUE)) ggplot2::autoplot(fit)
#' @export
plot.scvi_model <- function(x, y, metrics = c("elbo_train", "elbo_validation"),
                            legend = "topright", ...) {
  series <- .history_series(x, metrics)
  h <- series$history
  metrics <- series$metrics
  n <- length(metrics)
  dots <- list(...)
  if (length(dots) && (is.null(names(dots)) || any(names(dots) == ""))) {
    scvir_abort("graphical parameters must be named (e.g. main = \"...\")")
  }
  values <- unlist(h[metrics], use.names = FALSE)
  frame <- list(xlim = range(h$epoch), ylim = range(values, finite = TRUE), xlab = "epoch",
                ylab = .history_ylab(metrics),
                main = sprintf("%s training history", .fit_of(x)$model_type))
  per_series <- c("col", "lty", "lwd", "type", "pch")
  style <- list(col = .history_colours(n), lty = 1, lwd = 2, type = "l", pch = 1)
  given <- intersect(names(dots), per_series)
  style[given] <- dots[given]
  style <- lapply(style, function(v) rep_len(v, n))
  dots[given] <- NULL
  frame[names(dots)] <- NULL
  do.call(graphics::plot, c(list(x = NULL), frame, dots))
  for (i in seq_len(n)) {
    v <- h[[metrics[i]]]
    ok <- !is.na(v)
    graphics::lines(h$epoch[ok], v[ok], col = style$col[i], lty = style$lty[i],
                    lwd = style$lwd[i], type = style$type[i], pch = style$pch[i])
  }
  if (!isFALSE(legend)) {
    points <- style$type %in% c("p", "b", "o")
    graphics::legend(legend, legend = metrics, col = style$col,
                     lty = ifelse(style$type == "p", 0, style$lty), lwd = style$lwd,
                     pch = ifelse(points, style$pch, NA), bty = "n")
  }
  invisible(x)
}

#' @rdname plot.scvi_model
#' @method autoplot scvi_model
#' @exportS3Method ggplot2::autoplot scvi_model
autoplot.scvi_model <- function(object, metrics = c("elbo_train", "elbo_validation"), ...) {
  .need("ggplot2")
  series <- .history_series(object, metrics)
  h <- series$history
  metrics <- series$metrics
  long <- do.call(rbind, lapply(metrics, function(m) {
    ok <- !is.na(h[[m]])
    data.frame(epoch = h$epoch[ok], value = h[[m]][ok], metric = m, stringsAsFactors = FALSE)
  }))
  long$metric <- factor(long$metric, levels = metrics)
  ggplot2::ggplot(long, ggplot2::aes(x = .data$epoch, y = .data$value, colour = .data$metric)) +
    ggplot2::geom_line(linewidth = 0.8) +
    ggplot2::scale_colour_manual(values = stats::setNames(.history_colours(length(metrics)), metrics)) +
    ggplot2::labs(x = "epoch", y = .history_ylab(metrics), colour = NULL,
                  title = sprintf("%s training history", .fit_of(object)$model_type)) +
    ggplot2::theme_bw()
}

# The training history and the requested metrics of it that hold values.
.history_series <- function(x, metrics) {
  h <- .fit_of(x)$history
  if (!is.data.frame(h) || !nrow(h)) scvir_abort("this model has no training history")
  if (!is.character(metrics) || !length(metrics)) {
    scvir_abort("metrics must name columns of training_history()", "scvir_config_error")
  }
  unknown <- setdiff(metrics, setdiff(names(h), "epoch"))
  if (length(unknown)) {
    scvir_abort(sprintf("metric \"%s\" is not in the training history (columns: %s)", unknown[1],
                        paste(setdiff(names(h), "epoch"), collapse = ", ")), "scvir_config_error")
  }
  metrics <- unique(metrics[vapply(metrics, function(m) any(!is.na(h[[m]])), TRUE)])
  if (!length(metrics)) scvir_abort("none of the metrics was evaluated during training")
  list(history = h, metrics = metrics)
}

.history_ylab <- function(metrics) {
  if (all(startsWith(metrics, "elbo_"))) "negative ELBO per cell (lower is better)" else "value"
}

.history_colours <- function(n) {
  rep_len(c("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"), n)
}

#' Cells used for training, validation and testing
#'
#' Before training, the cells are split into a training set, a validation set (monitored by
#' [training_history()], early stopping and learning-rate reduction) and an optional test set,
#' as scvi-tools splits them (`train_size`, `validation_size` and `shuffle_set_split` of
#' [scvi_model()]). These functions give the cells of each set, for example to evaluate a model
#' on held-out cells with `indices =` in [get_elbo()] or [get_marginal_ll()].
#'
#' @param x An `scvi_model`, or a Seurat / SingleCellExperiment object holding one.
#' @return Integer positions (1-based) of the cells, in the order of the data the model was
#'   fitted on.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, max_epochs = 5, seed = 1, n_threads = 1,
#'                   verbose = FALSE)
#' length(train_indices(fit))
#' validation_indices(fit)
#' test_indices(fit) # empty: by default the cells not used for training validate
#' # a test set: 80% training, 10% validation, the rest for testing
#' fit2 <- scvi_model(pbmc_small[["RNA"]]@counts, train_size = 0.8, validation_size = 0.1,
#'                    max_epochs = 5, seed = 1, n_threads = 1, verbose = FALSE)
#' test_indices(fit2)
#' @name split_indices
NULL

#' @rdname split_indices
#' @export
train_indices <- function(x) .fit_of(x)$train_indices

#' @rdname split_indices
#' @export
validation_indices <- function(x) .fit_of(x)$validation_indices

#' @rdname split_indices
#' @export
test_indices <- function(x) .fit_of(x)$test_indices

# Names and shapes of the model's tensors (parameters and BatchNorm statistics).
.model_tensors <- function(fit) {
  meta <- jsonlite::fromJSON(.engine(.rs_model_meta(.fit_of(fit)$model)), simplifyVector = FALSE)
  stats::setNames(lapply(meta$tensors, function(t) as.integer(unlist(t$shape))),
                  vapply(meta$tensors, function(t) t$name, ""))
}

#' Batch embedding of a model
#'
#' For models trained with `batch_representation = "embedding"`, the learnt vector of each batch
#' (scvi-tools' `get_batch_representation()`).
#' @param object An `scvi_model`, or an object holding one.
#' @return A batches x `batch_embedding_dim` matrix.
#' @examplesIf requireNamespace("SeuratObject", quietly = TRUE)
#' data("pbmc_small", package = "SeuratObject")
#' # pbmc_small's g1 / g2 groups as batches, each represented by a learnt vector
#' fit <- scvi_model(pbmc_small[["RNA"]]@counts, batch = pbmc_small$groups,
#'                   batch_representation = "embedding", max_epochs = 5, seed = 1,
#'                   n_threads = 1, verbose = FALSE)
#' get_batch_representation(fit)
#' @export
get_batch_representation <- function(object) {
  fit <- .fit_of(object)
  m <- .engine(.rs_model_values(fit$model, "batch_embedding"))
  dimnames(m) <- list(fit$batches, paste0("dim_", seq_len(ncol(m))))
  m
}

# Training options (scvi-tools' TrainingPlan / Trainer / DataSplitter), validated once here for
# scvi_model() and train_model(); the engine's TrainConfig refuses unknown fields.
.train_config <- function(max_epochs = NULL, batch_size = 128L, train_size = NULL,
                          validation_size = NULL, shuffle_set_split = TRUE, lr = 1e-3,
                          weight_decay = 1e-6, eps = 0.01, optimizer = "Adam",
                          n_epochs_kl_warmup = 400L, n_steps_kl_warmup = NULL, max_kl_weight = 1,
                          min_kl_weight = 0, check_val_every_n_epoch = 1L, early_stopping = FALSE,
                          early_stopping_monitor = "elbo_validation", early_stopping_patience = 45L,
                          early_stopping_min_delta = 0, early_stopping_mode = "min",
                          early_stopping_warmup_epochs = 0L, reduce_lr_on_plateau = FALSE,
                          lr_factor = 0.6, lr_patience = 30L, lr_threshold = 0, lr_min = 0,
                          lr_scheduler_metric = "elbo_validation") {
  monitors <- c("elbo_validation", "reconstruction_loss_validation", "kl_local_validation",
                "validation_loss")
  list(max_epochs = .check_count_arg(max_epochs, "max_epochs", null_ok = TRUE),
       batch_size = .check_count_arg(batch_size, "batch_size"),
       train_size = .check_number(train_size, "train_size", 0, 1, null_ok = TRUE),
       validation_size = .check_number(validation_size, "validation_size", 0, 1, null_ok = TRUE),
       shuffle_set_split = .check_flag(shuffle_set_split, "shuffle_set_split"),
       lr = .check_number(lr, "lr", 0),
       weight_decay = .check_number(weight_decay, "weight_decay", 0),
       eps = .check_number(eps, "eps", 0),
       optimizer = .check_choice(optimizer, c("Adam", "AdamW"), "optimizer"),
       n_epochs_kl_warmup = .check_count_arg(n_epochs_kl_warmup, "n_epochs_kl_warmup", 0, null_ok = TRUE),
       n_steps_kl_warmup = .check_count_arg(n_steps_kl_warmup, "n_steps_kl_warmup", 0, null_ok = TRUE),
       max_kl_weight = .check_number(max_kl_weight, "max_kl_weight", 0),
       min_kl_weight = .check_number(min_kl_weight, "min_kl_weight", 0),
       check_val_every_n_epoch = .check_count_arg(check_val_every_n_epoch, "check_val_every_n_epoch", null_ok = TRUE),
       early_stopping = .check_flag(early_stopping, "early_stopping"),
       early_stopping_monitor = .check_choice(early_stopping_monitor, monitors, "early_stopping_monitor"),
       early_stopping_patience = .check_count_arg(early_stopping_patience, "early_stopping_patience"),
       early_stopping_min_delta = .check_number(early_stopping_min_delta, "early_stopping_min_delta", 0),
       early_stopping_mode = .check_choice(early_stopping_mode, c("min", "max"), "early_stopping_mode"),
       early_stopping_warmup_epochs = .check_count_arg(early_stopping_warmup_epochs, "early_stopping_warmup_epochs", 0),
       reduce_lr_on_plateau = .check_flag(reduce_lr_on_plateau, "reduce_lr_on_plateau"),
       lr_factor = .check_number(lr_factor, "lr_factor", 0, 1),
       lr_patience = .check_count_arg(lr_patience, "lr_patience", 0),
       lr_threshold = .check_number(lr_threshold, "lr_threshold", 0),
       lr_min = .check_number(lr_min, "lr_min", 0),
       lr_scheduler_metric = .check_choice(lr_scheduler_metric, monitors, "lr_scheduler_metric"))
}

# Cells a model was trained on (its names are not held for counts on disk).
.fit_n_cells <- function(fit) fit$n_cells %||% length(fit$cells)
