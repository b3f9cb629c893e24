# Bad inputs, case by case: each ends in a classed scviR error (scvir_input_error for data and
# files, scvir_config_error for options) whose message names the problem, and the objects passed
# in are unchanged afterwards. Cases are rows of tables, one table per category: add a row with
# case(label, expression, class, regexp, unchanged = <names of objects to compare>, skip = ).
# The data are SeuratObject's pbmc_small; values are made up only where a case needs a defect
# that real data lack (marked "synthetic").

case <- function(label, expr, class, regexp, unchanged = character(), skip = NULL) {
  list(label = label, expr = substitute(expr), class = class, regexp = regexp,
       unchanged = unchanged, skip = skip)
}

check_cases <- function(category, cases, env) {
  for (k in cases) {
    test_that(sprintf("%s: %s", category, k$label), {
      if (!is.null(k$skip)) skip(k$skip)
      before <- mget(k$unchanged, envir = env)
      expect_error(eval(k$expr, env), regexp = k$regexp, class = k$class)
      for (n in k$unchanged) expect_identical(get(n, envir = env), before[[n]], label = n)
    })
  }
}

is_root <- function() identical(unname(Sys.info()["effective_user"]), "root")
root_skip <- function() if (is_root()) "root ignores file permissions"

fx <- new.env()
local({
  counts <- pbmc_small_counts()
  seu <- pbmc_small_seurat()
  sce <- pbmc_small_sce()
  groups <- as.character(seu$groups)
  clusters <- as.character(seu$RNA_snn_res.1)
  fit <- quick_fit(counts, max_epochs = 2L)
  fit_b <- quick_fit(counts, batch = groups, categorical_covariates = list(cluster = clusters),
                     max_epochs = 1L)
  seu_fit <- scvi(seu, max_epochs = 1L, seed = 1L, n_threads = 1L, verbose = FALSE)
  hidden <- clusters
  hidden[seq(1, 80, by = 4)] <- "Unknown"
  sfit <- scanvi(counts, labels = hidden, max_epochs = 1L, seed = 1L, n_threads = 1L,
                 verbose = FALSE)
  fit_latent_lib <- quick_fit(counts, use_observed_lib_size = FALSE, max_epochs = 1L)
  fit_min <- minify(fit, verbose = FALSE)

  # Counts with one defect each (synthetic names and values on real counts).
  pattern <- methods::as(counts, "nsparseMatrix")
  pattern_t <- methods::as(pattern, "TsparseMatrix")
  logical_sparse <- counts > 0
  logical_dense <- as.matrix(counts) > 0
  text_counts <- matrix(as.character(as.matrix(counts)), nrow(counts), dimnames = dimnames(counts))
  with_names <- function(x, rows = rownames(x), cols = colnames(x)) {
    dimnames(x) <- list(rows, cols)
    x
  }
  cells <- colnames(counts)
  genes <- rownames(counts)
  na_cell <- with_names(counts, cols = replace(cells, 3, NA))
  dup_cell <- with_names(counts, cols = replace(cells, 2, cells[1]))
  empty_cell <- with_names(counts, cols = replace(cells, 5, ""))
  na_gene <- with_names(counts, rows = replace(genes, 7, NA))
  dup_gene <- with_names(counts, rows = replace(genes, 4, genes[1]))
  empty_gene <- with_names(counts, rows = replace(genes, 9, ""))
  negative <- counts
  negative@x[7] <- -3
  fractional <- counts
  fractional@x[5] <- 2.5
  not_a_number <- counts
  not_a_number@x[1] <- NaN
  infinite <- counts
  infinite@x[2] <- Inf

  # Metadata with one defect each (synthetic).
  na_batch <- replace(groups, 10, NA)
  tiny_batch <- replace(groups, 1:2, "tiny")
  seu_na <- seu
  seu_na$na_batch <- na_batch
  typo <- replace(clusters, seq(1, 80, by = 4), "unknown")
  seu_typo <- seu
  seu_typo$masked <- typo
  sce_typo <- sce
  sce_typo$masked <- typo

  # Files.
  a_file <- tempfile("scvir-file-")
  writeLines("not a directory", a_file)
  model_dir <- tempfile("scvir-model-")
  save_model(fit, model_dir)
  ro_dir <- tempfile("scvir-readonly-")
  dir.create(ro_dir)
  Sys.chmod(ro_dir, "0555")
  empty_dir <- tempfile("scvir-empty-")
  dir.create(empty_dir)
  damaged_dir <- tempfile("scvir-damaged-")
  dir.create(damaged_dir)
  file.copy(file.path(model_dir, "model.scvir"), damaged_dir)
  writeLines("not an rds file", file.path(damaged_dir, "fit.rds"))
  mixed_dir <- tempfile("scvir-mixed-")
  save_model(fit, mixed_dir)
  other_dir <- tempfile("scvir-other-")
  save_model(fit_b, other_dir)
  file.copy(file.path(other_dir, "fit.rds"), mixed_dir, overwrite = TRUE)
  locked_dir <- tempfile("scvir-locked-")
  save_model(fit, locked_dir)
  Sys.chmod(file.path(locked_dir, "model.scvir"), "0000")
  locked_h5ad <- tempfile("scvir-locked-", fileext = ".h5ad")
  file.copy(pbmc3k_path(), locked_h5ad)
  Sys.chmod(locked_h5ad, "0000")
}, envir = fx)

check_cases("counts", list(
  case("a pattern matrix (ngCMatrix) is not counts", quick_fit(pattern),
       "scvir_input_error", "pattern matrix \\(ngCMatrix\\)", "pattern"),
  case("another pattern matrix (ngTMatrix) is not counts", quick_fit(pattern_t),
       "scvir_input_error", "pattern matrix \\(ngTMatrix\\)"),
  case("a logical sparse matrix is not counts", quick_fit(logical_sparse),
       "scvir_input_error", "logical matrix \\(lgCMatrix\\)"),
  case("a logical base matrix is not counts", quick_fit(logical_dense),
       "scvir_input_error", "logical matrix \\(matrix"),
  case("a character matrix is not counts", quick_fit(text_counts),
       "scvir_input_error", "must be numeric, not character"),
  case("a list is not a matrix", quick_fit(list(1, 2)),
       "scvir_input_error", "must be a matrix or sparse matrix"),
  case("an NA cell name is named by position", quick_fit(na_cell),
       "scvir_input_error", "1 missing \\(NA\\) cell name.*column 3", "na_cell"),
  case("duplicated cell names are named", quick_fit(dup_cell),
       "scvir_input_error", "duplicated cell names .*\"ATGCCAGAACGACT\"", "dup_cell"),
  case("an empty cell name is named by position", quick_fit(empty_cell),
       "scvir_input_error", "empty cell name.*column 5"),
  case("an NA gene name is named by position", quick_fit(na_gene),
       "scvir_input_error", "missing \\(NA\\) gene name.*row 7"),
  case("duplicated gene names are named", quick_fit(dup_gene),
       "scvir_input_error", "duplicated gene names .*\"MS4A1\""),
  case("an empty gene name is named by position", quick_fit(empty_gene),
       "scvir_input_error", "empty gene name.*row 9"),
  case("0 cells", quick_fit(counts[, 0]), "scvir_input_error", "0 cell"),
  case("0 genes", quick_fit(counts[0, ]), "scvir_input_error", "0 gene"),
  case("an empty base matrix", quick_fit(matrix(numeric(0), 0, 0)),
       "scvir_input_error", "empty \\(0 genes x 0 cells\\)"),
  case("negative counts", quick_fit(negative), "scvir_input_error", "negative value.*-3"),
  case("non-integer counts", quick_fit(fractional), "scvir_input_error", "non-integer value.*2.5"),
  case("NaN counts", quick_fit(not_a_number), "scvir_input_error", "NaN/NA or infinite"),
  case("infinite counts", quick_fit(infinite), "scvir_input_error", "NaN/NA or infinite"),
  case("newdata with duplicated cell names", get_latent_representation(fit, newdata = dup_cell),
       "scvir_input_error", "newdata has duplicated cell names", c("fit", "dup_cell")),
  case("scANVI counts with an NA cell name", scanvi(na_cell, labels = hidden, verbose = FALSE),
       "scvir_input_error", "missing \\(NA\\) cell name"),
  case("HVG selection on a pattern matrix", select_hvg_seurat_v3(pattern, n_top_genes = 10),
       "scvir_input_error", "pattern matrix"),
  case("HVG selection on negative counts", select_hvg_seurat_v3(negative, n_top_genes = 10),
       "scvir_input_error", "negative, NaN/NA or infinite")
), fx)

check_cases("covariates & metadata", list(
  case("an NA batch", quick_fit(counts, batch = na_batch),
       "scvir_input_error", "batch has 1 missing \\(NA\\)", "na_batch"),
  case("a batch of the wrong length", quick_fit(counts, batch = groups[1:10]),
       "scvir_input_error", "batch has length 10 but there are 80 cells"),
  case("a batch with fewer than 3 cells", quick_fit(counts, batch = tiny_batch),
       "scvir_input_error", "batch \"tiny\" has fewer than 3 cells"),
  case("NA labels", quick_fit(counts, labels = replace(clusters, 4, NA)),
       "scvir_input_error", "labels has 1 missing \\(NA\\) value.*cell 4"),
  case("an NA categorical covariate",
       quick_fit(counts, categorical_covariates = list(grp = na_batch)),
       "scvir_input_error", "categorical covariate \"grp\" has 1 missing \\(NA\\)"),
  case("an infinite continuous covariate (synthetic)",
       quick_fit(counts, continuous_covariates = list(depth = replace(seq_len(80), 6, Inf))),
       "scvir_input_error", "\"depth\" has 1 non-finite value.*Inf for cell 6"),
  case("a continuous covariate beyond float32 (synthetic)",
       quick_fit(counts, continuous_covariates = list(depth = replace(seq_len(80), 8, 1e39))),
       "scvir_input_error", "beyond the range of 32-bit floats.*1e\\+39 for cell 8"),
  case("a NaN continuous covariate (synthetic)",
       quick_fit(counts, continuous_covariates = list(depth = replace(as.numeric(1:80), 2, NaN))),
       "scvir_input_error", "\"depth\" has 1 missing \\(NA\\)"),
  case("a text continuous covariate", quick_fit(counts, continuous_covariates = list(g = groups)),
       "scvir_input_error", "\"g\" is not numeric"),
  case("a zero size factor (synthetic)", quick_fit(counts, size_factor = replace(rep(1, 80), 3, 0)),
       "scvir_input_error", "size factors must be positive.*cell 3 has 0"),
  case("a size factor beyond float32 (synthetic)",
       quick_fit(counts, size_factor = replace(rep(1, 80), 5, 1e39)),
       "scvir_input_error", "within 32-bit floats.*cell 5"),
  case("an NA batch_key column of a Seurat object",
       seu_na <- scvi(seu_na, batch_key = "na_batch", max_epochs = 1, verbose = FALSE),
       "scvir_input_error", "missing \\(NA\\)", "seu_na"),
  case("an unknown batch_key column", seu <- scvi(seu, batch_key = "nope", verbose = FALSE),
       "scvir_input_error", "batch_key \"nope\" is not a column", "seu"),
  case("batch given to an object instead of batch_key",
       seu <- scvi(seu, batch = groups, verbose = FALSE),
       "scvir_config_error", "`batch`: .*give .*batch_key", "seu"),
  case("unlabeled_category spelt differently from the labels (matrix)",
       scanvi(counts, labels = typo, max_epochs = 1, verbose = FALSE),
       "scvir_input_error", "no cell has unlabeled_category \"Unknown\", but labels has \"unknown\" \\(20",
       "typo"),
  case("unlabeled_category spelt differently from the labels (Seurat)",
       seu_typo <- scanvi(seu_typo, labels_key = "masked", max_epochs = 1, verbose = FALSE),
       "scvir_input_error", "set unlabeled_category = \"unknown\"", "seu_typo"),
  case("unlabeled_category spelt differently from the labels (SingleCellExperiment)",
       sce_typo <- scanvi(sce_typo, labels_key = "masked", unlabeled_category = "unlabelled",
                          max_epochs = 1, verbose = FALSE),
       "scvir_input_error", "no cell has unlabeled_category \"unlabelled\"", "sce_typo"),
  case("empty labels", scanvi(counts, labels = replace(hidden, 3, ""), verbose = FALSE),
       "scvir_input_error", "labels has 1 empty .*cell \"GAACCTGATGAACC\""),
  case("an NA unlabeled_category", scanvi(counts, labels = hidden, unlabeled_category = NA_character_),
       "scvir_config_error", "unlabeled_category must be a single string"),
  case("missing labels", scanvi(counts, max_epochs = 1), "scvir_input_error", "labels is missing"),
  case("missing labels_key", seu <- scanvi(seu, max_epochs = 1),
       "scvir_config_error", "labels_key is missing", "seu"),
  case("labels given to an object", seu <- scanvi(seu, labels = clusters, labels_key = "groups"),
       "scvir_config_error", "`labels`.*labels_key", "seu"),
  case("a query batch not seen in training",
       get_latent_representation(fit_b, newdata = counts, batch = replace(groups, 1, "g3"),
                                 covariates = list(categorical = list(cluster = clusters))),
       "scvir_input_error", "batch \"g3\" not seen in training", "fit_b"),
  case("an NA categorical covariate in a query",
       get_latent_representation(fit_b, newdata = counts, batch = groups,
                                 covariates = list(categorical = list(cluster = replace(clusters, 2, NA)))),
       "scvir_input_error", "\"cluster\" has 1 missing \\(NA\\)")
), fx)

check_cases("options", list(
  case("n_epochs is not max_epochs (no partial matching)", quick_fit(counts, n_epochs = 3),
       "scvir_config_error",
       "unknown argument `n_epochs`; did you mean `max_epochs` or `n_epochs_kl_warmup`\\?"),
  case("batch_size = 1 cannot train BatchNorm", quick_fit(counts, batch_size = 1),
       "scvir_config_error", "BatchNorm|batch_size"),
  case("lr = Inf", quick_fit(counts, lr = Inf), "scvir_config_error",
       "lr must be a single finite number >= 0; got Inf"),
  case("lr = NA", quick_fit(counts, lr = NA_real_), "scvir_config_error", "lr .*missing value"),
  case("lr = NaN", quick_fit(counts, lr = NaN), "scvir_config_error", "lr .*not a number"),
  case("lr as text", quick_fit(counts, lr = "0.001"), "scvir_config_error", "lr .*got \"0.001\""),
  case("lr as a vector", quick_fit(counts, lr = c(1e-3, 1e-2)), "scvir_config_error",
       "lr .*double vector of length 2"),
  case("max_epochs beyond an integer", quick_fit(counts, max_epochs = 3e9),
       "scvir_config_error", "max_epochs .*too large for an integer"),
  case("a fractional max_epochs", quick_fit(counts, max_epochs = 2.5),
       "scvir_config_error", "max_epochs .*not a whole number"),
  case("an infinite max_epochs", quick_fit(counts, max_epochs = Inf),
       "scvir_config_error", "max_epochs .*not finite"),
  case("a negative n_latent", quick_fit(counts, n_latent = -1),
       "scvir_config_error", "n_latent must be a single integer >= 1; got -1"),
  case("dropout_rate out of range", quick_fit(counts, dropout_rate = 1.5),
       "scvir_config_error", "dropout_rate .*\\[0, 0.999\\]; got 1.5"),
  case("train_size = NaN", quick_fit(counts, train_size = NaN),
       "scvir_config_error", "train_size .*not a number"),
  case("a negative lr_factor", quick_fit(counts, lr_factor = -0.1),
       "scvir_config_error", "lr_factor .*got -0.1"),
  case("an NA early_stopping_patience", quick_fit(counts, early_stopping_patience = NA),
       "scvir_config_error", "early_stopping_patience .*missing value"),
  case("an infinite max_kl_weight", quick_fit(counts, max_kl_weight = Inf),
       "scvir_config_error", "max_kl_weight .*not finite"),
  case("a negative seed", quick_fit(counts, seed = -1), "scvir_config_error", "seed must be .*>= 0"),
  case("a seed beyond an integer", quick_fit(counts, seed = 2^31),
       "scvir_config_error", "seed .*too large for an integer"),
  case("n_threads = 0", scvi_model(counts, n_threads = 0, max_epochs = 1, verbose = FALSE),
       "scvir_config_error", "n_threads must be a single integer >= 1"),
  case("n_threads beyond an integer", scvi_model(counts, n_threads = 1e10, max_epochs = 1, verbose = FALSE),
       "scvir_config_error", "n_threads .*too large"),
  case("n_top_genes = 1", quick_fit(counts, n_top_genes = 1),
       "scvir_config_error", "n_top_genes must be a single integer >= 2"),
  case("an NA feature", quick_fit(counts, features = c("MS4A1", NA)),
       "scvir_config_error", "features has 1 missing \\(NA\\) or empty"),
  case("verbose as text", scvi_model(counts, max_epochs = 1, verbose = "yes"),
       "scvir_config_error", "verbose must be TRUE or FALSE; got \"yes\""),
  case("an unnamed argument after the counts", quick_fit(counts, groups),
       "scvir_config_error", "argument 1 after `counts` has no name"),
  case("an abbreviated argument", quick_fit(counts, n_lat = 5),
       "scvir_config_error", "unknown argument `n_lat`; did you mean `n_latent`\\?"),
  case("a misspelt argument", quick_fit(counts, gene_likelyhood = "nb"),
       "scvir_config_error", "did you mean `gene_likelihood`\\?"),
  case("an unknown wrapper argument (Seurat)", seu <- scvi(seu, n_epoch = 2, verbose = FALSE),
       "scvir_config_error", "unknown argument `n_epoch`; did you mean `n_epochs`", "seu"),
  case("an unknown wrapper argument leaves copy = FALSE's variable alone",
       scvi(seu, copy = FALSE, n_epoch = 2, verbose = FALSE),
       "scvir_config_error", "unknown argument `n_epoch`", "seu"),
  case("an unknown wrapper argument (SingleCellExperiment)",
       sce <- scvi(sce, use_hvg = FALSE, verbose = FALSE),
       "scvir_config_error", "did you mean `use_highly_variable_genes`", "sce"),
  case("a non-training trainer_kwargs entry", seu <- scvi(seu, trainer_kwargs = list(n_latent = 3)),
       "scvir_config_error", "trainer_kwargs has non-training argument", "seu"),
  case("an unknown scANVI argument",
       scanvi(counts, labels = hidden, classification_ration = 5, verbose = FALSE),
       "scvir_config_error", "did you mean `classification_ratio`"),
  case("an infinite scANVI y_prior",
       scanvi(counts, labels = hidden, y_prior = c(1, Inf, 1), verbose = FALSE),
       "scvir_config_error", "y_prior needs 3 positive numbers"),
  case("an NA n_samples_per_label",
       scanvi(counts, labels = hidden, n_samples_per_label = NA, verbose = FALSE),
       "scvir_config_error", "n_samples_per_label .*missing value"),
  case("an unknown LDVAE argument", ldvae(counts, n_latents = 3),
       "scvir_config_error", "did you mean `n_latent`"),
  case("HVG: n_top_genes = 0", select_hvg_seurat_v3(counts, n_top_genes = 0),
       "scvir_config_error", "n_top_genes must be a single integer >= 1"),
  case("HVG: an infinite span", select_hvg_seurat_v3(counts, span = Inf),
       "scvir_config_error", "span .*not finite"),
  case("HVG: an unknown flavor", select_hvg_seurat_v3(counts, flavor = "seurat"),
       "scvir_config_error", "flavor must be one of"),
  case("HVG: a positional n_top_genes", select_hvg_seurat_v3(counts, 100),
       "scvir_config_error", "argument 1 after `counts` has no name .*`n_top_genes = ...`"),
  case("HVG: an NA batch", select_hvg_seurat_v3(counts, n_top_genes = 10, batch = na_batch),
       "scvir_input_error", "batch has 1 missing \\(NA\\)")
), fx)

check_cases("queries", list(
  case("library_size = Inf", get_normalized_expression(fit, library_size = Inf),
       "scvir_config_error", "library_size .*got Inf \\(not finite\\)", "fit"),
  case("library_size = 0", get_normalized_expression(fit, library_size = 0),
       "scvir_config_error", "library_size .*\\(0, "),
  case("library_size beyond float32", get_normalized_expression(fit, library_size = 1e39),
       "scvir_config_error", "library_size .*got 1e\\+39"),
  case("library_size as an unknown word", get_normalized_expression(fit, library_size = "observed"),
       "scvir_config_error", "library_size must be a positive number or \"latent\""),
  case("n_samples = 0", get_normalized_expression(fit, n_samples = 0),
       "scvir_config_error", "n_samples must be a single integer >= 1"),
  case("n_samples_overall beyond an integer", get_normalized_expression(fit, n_samples_overall = 1e10),
       "scvir_config_error", "n_samples_overall .*too large"),
  case("an abbreviated n_samples", get_normalized_expression(fit, n_sample = 5),
       "scvir_config_error", "unknown argument `n_sample`; did you mean `n_samples`"),
  case("return_mean = NA", get_normalized_expression(fit, return_mean = NA),
       "scvir_config_error", "return_mean must be TRUE or FALSE"),
  case("mc_samples = Inf", get_latent_representation(fit, mc_samples = Inf),
       "scvir_config_error", "mc_samples .*not finite"),
  case("batch_size = 0 in a query", get_latent_representation(fit, batch_size = 0),
       "scvir_config_error", "batch_size must be a single integer >= 1"),
  case("give_mean as text", get_latent_representation(fit, give_mean = "no"),
       "scvir_config_error", "give_mean must be TRUE or FALSE; got \"no\""),
  case("a fractional query seed", get_latent_representation(fit, give_mean = FALSE, seed = 1.5),
       "scvir_config_error", "seed .*not a whole number"),
  case("indices outside the cells", get_latent_representation(fit, indices = 0),
       "scvir_input_error", "indices must be cell positions between 1 and 80"),
  case("newdata given with an object", get_latent_representation(seu_fit, newdata = counts),
       "scvir_config_error", "the cells of an object are its own", "seu_fit"),
  case("return_mean as text (ELBO)", get_elbo(fit, return_mean = "yes"),
       "scvir_config_error", "return_mean must be TRUE or FALSE"),
  case("n_mc_samples = 0", get_marginal_ll(fit, n_mc_samples = 0),
       "scvir_config_error", "n_mc_samples must be a single integer >= 1"),
  case("an infinite rna_size_factor", get_feature_correlation_matrix(fit, rna_size_factor = Inf),
       "scvir_config_error", "rna_size_factor .*not finite"),
  case("negative posterior samples", posterior_predictive_sample(fit, n_samples = -1),
       "scvir_config_error", "n_samples must be a single integer >= 1; got -1"),
  case("likelihood samples beyond an integer", get_likelihood_parameters(fit, n_samples = 3e9),
       "scvir_config_error", "n_samples .*too large"),
  case("give_mean = NA (library size)", get_latent_library_size(fit, give_mean = NA),
       "scvir_config_error", "give_mean must be TRUE or FALSE"),
  case("DE: delta = Inf", differential_expression(fit, groupby = clusters, delta = Inf),
       "scvir_config_error", "delta .*not finite"),
  case("DE: fdr_target above 1", differential_expression(fit, groupby = clusters, fdr_target = 2),
       "scvir_config_error", "fdr_target .*\\[0, 1\\]; got 2"),
  case("DE: NaN pseudocounts", differential_expression(fit, groupby = clusters, pseudocounts = NaN),
       "scvir_config_error", "pseudocounts .*not a number"),
  case("DE: n_samples_overall = 0", differential_expression(fit, groupby = clusters, n_samples_overall = 0),
       "scvir_config_error", "n_samples_overall must be a single integer >= 1"),
  case("DE: a negative threshold_counts",
       differential_expression(fit, groupby = clusters, threshold_counts = -1),
       "scvir_config_error", "threshold_counts .*>= 0; got -1"),
  case("DE: batch_size = 0", differential_expression(fit, groupby = clusters, batch_size = 0),
       "scvir_config_error", "batch_size must be a single integer >= 1"),
  case("DE: n_samples is not n_samples_overall",
       differential_expression(fit, groupby = clusters, n_samples = 100),
       "scvir_config_error", "unknown argument `n_samples`; did you mean `n_samples_overall`"),
  case("DE: an abbreviated groupby", differential_expression(fit, group = clusters),
       "scvir_config_error", "unknown argument `group`; did you mean .*`groupby`"),
  case("predict: soft = NA", predict(sfit, soft = NA), "scvir_config_error",
       "soft must be TRUE or FALSE", "sfit"),
  case("predict: an abbreviated argument", predict(sfit, sof = TRUE),
       "scvir_config_error", "unknown argument `sof`; did you mean `soft`"),
  case("predict: a seed beyond an integer", predict(sfit, use_posterior_mean = FALSE, seed = 1e10),
       "scvir_config_error", "seed .*too large"),
  case("an argument given to training_history()", training_history(fit, "elbo"),
       "scvir_config_error", "argument 1 after `x` has no name \\(\"elbo\"\\); this function takes no arguments after `x`"),
  case("a negative n_labels for plot_de()", plot_de(NULL, n_labels = -1),
       "scvir_config_error", "n_labels must be a single integer >= 0")
), fx)

check_cases("reference mapping & minified models", list(
  case("a query batch for a reference without batches", load_query_data(counts, fit, batch = groups),
       "scvir_input_error", "trained without a batch key", c("fit", "counts")),
  case("no query batch for a reference with batches", load_query_data(counts, fit_b),
       "scvir_config_error", "give the query cells' batch", "fit_b"),
  case("a query missing the covariate the reference was trained with",
       load_query_data(counts, fit_b, batch = rep("new", 80)), "scvir_input_error",
       "categorical covariate \"cluster\""),
  case("a query without the reference's genes", load_query_data(counts[1:50, ], fit),
       "scvir_input_error", "lacks 180 of the reference's 230 genes.*prepare_query"),
  case("a freeze option as text", load_query_data(counts, fit, freeze_expression = "yes"),
       "scvir_config_error", "freeze_expression must be TRUE or FALSE"),
  case("a misspelt freeze option", load_query_data(counts, fit, freeze_encoder = TRUE),
       "scvir_config_error", "unknown argument `freeze_encoder`"),
  case("a reference that is not a model", load_query_data(counts, counts), "scvir_input_error",
       "reference must be an scvi_model"),
  case("an object without a model as reference", load_query_data(counts, seu), "scvir_input_error",
       "holds no scVI or scANVI model", "seu"),
  case("scANVI query labels unknown to the reference", load_query_data(counts, sfit, labels = groups),
       "scvir_input_error", "not labels of the scANVI model.*\"g[12]\"", "sfit"),
  case("no gene in common with the reference",
       prepare_query(with_names(counts, rows = paste0("ENSG", seq_along(genes))), fit),
       "scvir_input_error", "none of the reference model's 230 genes"),
  case("train_model() on something else", train_model(counts), "scvir_input_error",
       "model must be an scvi_model"),
  case("train_model() with a misspelt option", train_model(fit, max_epoch = 1),
       "scvir_config_error", "unknown argument `max_epoch`", "fit"),
  case("minify() of a latent-library model", minify(fit_latent_lib), "scvir_config_error",
       "use_observed_lib_size", "fit_latent_lib"),
  case("the ELBO of a minified model", get_elbo(fit_min), "scvir_minified_error",
       "needs the counts", "fit_min"),
  case("training a minified model", train_model(fit_min, max_epochs = 1), "scvir_minified_error",
       "needs the counts", "fit_min"),
  case("lvm-DE on a minified model",
       differential_expression(fit_min, groupby = groups, weights = "importance", silent = TRUE),
       "scvir_minified_error", "needs the counts"),
  case("lvm-DE options that do not exist",
       differential_expression(fit, groupby = groups, weights = "importance", silent = TRUE,
                               importance_weighting_kwargs = list(n_anchors = 5)),
       "scvir_config_error", "unknown option\\(s\\) n_anchors"),
  case("importance weights over several transform batches",
       get_normalized_expression(fit_b, n_samples_overall = 10, weights = "importance",
                                 transform_batch = c("g1", "g2")),
       "scvir_config_error", "several transform_batch")
), fx)

check_cases("files", list(
  case("save below a regular file", save_model(fit, file.path(a_file, "sub")),
       "scvir_input_error", "cannot create the directory .*sub: Not a directory", "fit"),
  case("save into a regular file", save_model(fit, a_file),
       "scvir_input_error", "cannot save the model in .*: it is a file, not a directory"),
  case("save into a read-only directory", save_model(fit, ro_dir),
       "scvir_input_error", "cannot write .*model.scvir: Permission denied", skip = root_skip()),
  case("save over a model without overwrite", save_model(fit, model_dir),
       "scvir_input_error", "model.scvir exists; use overwrite = TRUE"),
  case("save to an NA directory", save_model(fit, NA_character_),
       "scvir_config_error", "dir must be a single path"),
  case("save with overwrite as text", save_model(fit, tempfile(), overwrite = "yes"),
       "scvir_config_error", "overwrite must be TRUE or FALSE"),
  case("save with an abbreviated argument", save_model(fit, tempfile(), overwrit = TRUE),
       "scvir_config_error", "unknown argument `overwrit`; did you mean `overwrite`"),
  case("load from a missing directory", load_model(file.path(tempdir(), "no-such-scvir-model")),
       "scvir_input_error", "no model found in .*no-such-scvir-model: no such directory"),
  case("load from a regular file", load_model(a_file),
       "scvir_input_error", "it is a file, not a directory"),
  case("load from a directory without a model", load_model(empty_dir),
       "scvir_input_error", "no model found: .*model.scvir does not exist"),
  case("load a damaged fit.rds", load_model(damaged_dir),
       "scvir_input_error", "cannot read .*fit.rds: .*damaged or was not written by save_model"),
  case("load files of two different saves", load_model(mixed_dir),
       "scvir_input_error", "come from different saves"),
  case("load an unreadable model file", load_model(locked_dir),
       "scvir_input_error", "cannot read .*model.scvir: Permission denied", skip = root_skip()),
  case("load from an NA path", load_model(NA_character_), "scvir_config_error", "dir must be a single path"),
  case("read a missing .h5ad", read_h5ad(file.path(tempdir(), "missing.h5ad")),
       "scvir_input_error", "cannot read .*missing.h5ad: file not found"),
  case("read a directory as .h5ad", read_h5ad(tempdir()),
       "scvir_input_error", "it is a directory, not a file"),
  case("read an .h5ad below a regular file", read_h5ad(file.path(a_file, "x.h5ad")),
       "scvir_input_error", "is a file, not a directory"),
  case("read an unreadable .h5ad", read_h5ad(locked_h5ad),
       "scvir_input_error", "cannot read .*Permission denied", skip = root_skip()),
  case("read an NA path", read_h5ad(NA_character_), "scvir_config_error", "path must be a single path"),
  case("read with an abbreviated argument", read_h5ad(pbmc3k_path(), lay = "counts"),
       "scvir_config_error", "unknown argument `lay`; did you mean `layer`"),
  case("read an NA layer", read_h5ad(pbmc3k_path(), layer = NA_character_),
       "scvir_config_error", "layer must be NULL or a single layer name"),
  case("a model file write that stops short (full device)",
       scviR:::.write_bytes(as.raw(1:200), "/dev/full"),
       "scvir_input_error", "only 0 of 200 bytes were written \\(is the disk full\\?\\)",
       skip = if (!file.exists("/dev/full")) "no /dev/full"),
  case("an .rds write that stops short (full device)",
       scviR:::.write_rds(list(a = 1:1000), "/dev/full"),
       "scvir_input_error", "the file is incomplete \\(is the disk full\\?\\)",
       skip = if (!file.exists("/dev/full")) "no /dev/full")
), fx)

test_that("scANVI with every cell labelled trains, and says so", {
  labels <- fx$clusters
  expect_message(sfit <- scanvi(fx$counts, labels = labels, max_epochs = 1, seed = 1, n_threads = 1,
                                verbose = FALSE),
                 "no cell has unlabeled_category \"Unknown\" \\(or NA\\): all 80 cells are labelled")
  expect_s3_class(sfit, "scanvi_model")
  expect_equal(sfit$known_labels, c("0", "1", "2"))
  expect_length(predict(sfit), 80L)
})

test_that("a failed overwrite leaves the previous model and no temporary files", {
  dir <- tempfile("scvir-atomic-")
  save_model(fx$fit, dir)
  before <- tools::md5sum(file.path(dir, "model.scvir"))
  # fit.rds's place taken by a directory: the new files cannot be renamed into place.
  unlink(file.path(dir, "fit.rds"))
  dir.create(file.path(dir, "fit.rds", "blocker"), recursive = TRUE)
  expect_error(save_model(fx$fit_b, dir, overwrite = TRUE), "cannot replace .*fit.rds",
               class = "scvir_input_error")
  expect_identical(tools::md5sum(file.path(dir, "model.scvir")), before)
  expect_setequal(list.files(dir, all.files = TRUE, no.. = TRUE), c("model.scvir", "fit.rds"))
})

test_that("a failed overwrite in a read-only directory keeps the old model loadable", {
  skip_if(is_root(), "root ignores file permissions")
  dir <- tempfile("scvir-atomic-ro-")
  save_model(fx$fit, dir)
  Sys.chmod(dir, "0555")
  on.exit(Sys.chmod(dir, "0755"), add = TRUE)
  expect_error(save_model(fx$fit_b, dir, overwrite = TRUE), "Permission denied",
               class = "scvir_input_error")
  expect_identical(get_latent_representation(load_model(dir)), get_latent_representation(fx$fit))
})

test_that("an overwrite replaces both files together", {
  dir <- tempfile("scvir-replace-")
  save_model(fx$fit, dir)
  save_model(fx$fit_b, dir, overwrite = TRUE)
  back <- load_model(dir)
  expect_equal(back$batches, fx$fit_b$batches)
  expect_setequal(list.files(dir, all.files = TRUE, no.. = TRUE), c("model.scvir", "fit.rds"))
})

# Leave the temporary files deletable.
Sys.chmod(fx$ro_dir, "0755")
Sys.chmod(c(file.path(fx$locked_dir, "model.scvir"), fx$locked_h5ad), "0644")
