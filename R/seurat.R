# Seurat input: counts from v4 assays (slots) or v5 layers, joining split layers.

.seurat_counts <- function(object, assay = NULL, layer = "counts") {
  assay <- assay %||% SeuratObject::DefaultAssay(object)
  if (!assay %in% names(object@assays)) {
    scvir_abort(sprintf("assay \"%s\" not found (assays: %s)", assay,
                        paste(names(object@assays), collapse = ", ")))
  }
  a <- object[[assay]]
  if (inherits(a, "Assay5")) {
    found <- .v5_layers(a, layer)
    if (!length(found)) {
      scvir_abort(sprintf("layer \"%s\" not found in assay \"%s\" (layers: %s)", layer, assay,
                          paste(.seurat_v5_fn("Layers")(a), collapse = ", ")))
    }
    layer_batch <- NULL
    if (length(found) > 1) {
      # Split layers (counts.<batch>): join them for training, cells back in object order; the
      # layer of each cell is its batch unless a batch_key says otherwise.
      cells <- lapply(found, function(l) colnames(.seurat_v5_fn("LayerData")(a, layer = l)))
      layer_batch <- stats::setNames(rep(sub(paste0("^", layer, "\\."), "", found), lengths(cells)),
                                     unlist(cells))
      a <- .seurat_v5_fn("JoinLayers")(a, layers = layer)
    }
    m <- .seurat_v5_fn("LayerData")(a, layer = layer)
  } else {
    if (!layer %in% c("counts", "data", "scale.data")) {
      scvir_abort(sprintf("layer \"%s\" not found in assay \"%s\" (a v4 assay has counts, data, scale.data)",
                          layer, assay))
    }
    m <- .assay_data(object, assay, layer)
  }
  if (!nrow(m) || !ncol(m)) scvir_abort(sprintf("layer \"%s\" of assay \"%s\" is empty", layer, assay))
  m <- .as_dgc(m, sprintf("layer \"%s\" of assay \"%s\"", layer, assay))
  if (!identical(colnames(m), colnames(object))) m <- m[, colnames(object), drop = FALSE]
  list(counts = m, assay = assay,
       layer_batch = if (inherits(a, "Assay5") && !is.null(layer_batch)) factor(unname(layer_batch[colnames(object)])))
}

.seurat_query_inputs <- function(object, which = "scvi") {
  fit <- .fit_of(object, which)
  if (!is.null(fit$minified)) return(.minified_inputs(fit, colnames(object)))
  src <- fit$source %||% list()
  input <- .seurat_counts(object, src$assay, src$layer %||% "counts")
  list(fit = fit, counts = input$counts, batch = .metadata_column(object@meta.data, fit$batch_key),
       covariates = .source_covariates(object@meta.data, src))
}

# GetAssayData() of a v3/v4 Assay: SeuratObject 5 made its `slot` argument defunct in favour of
# `layer`, which SeuratObject 4 lacks.
.assay_data <- function(object, assay, layer) {
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    SeuratObject::GetAssayData(object, assay = assay, layer = layer)
  } else {
    SeuratObject::GetAssayData(object, assay = assay, slot = layer)
  }
}

# The layers of a v5 assay that hold `layer`: itself, or its split parts (`counts.<batch>`).
# Matched here: Layers(search = ) warns when nothing matches, and a missing layer is not a
# problem for every caller.
.v5_layers <- function(a, layer) {
  all <- .seurat_v5_fn("Layers")(a)
  all[all == layer | startsWith(all, paste0(layer, "."))]
}

# A function that only SeuratObject >= 5 exports (Layers, LayerData, JoinLayers), looked up when
# called: it is only reached for v5 assays, and SeuratObject 4 installations lack it.
.seurat_v5_fn <- function(name) {
  if (!name %in% getNamespaceExports("SeuratObject")) {
    scvir_abort(sprintf("SeuratObject::%s() is needed for Seurat v5 assays; install SeuratObject >= 5", name))
  }
  getExportedValue("SeuratObject", name)
}

# Seurat's dot-style argument names (reduction.name) as aliases of scviR's (reduction_name).
.dot_alias <- function(value, alias, name, given) {
  if (is.null(alias)) return(value)
  dotted <- gsub("_", ".", name, fixed = TRUE)
  if (given && !identical(value, alias)) {
    scvir_abort(sprintf("%s and %s are two spellings of one argument and disagree; give one of them",
                        name, dotted), "scvir_config_error")
  }
  if (!is.character(alias) || length(alias) != 1 || is.na(alias) || !nzchar(alias)) {
    scvir_abort(sprintf("%s must be a single string", dotted), "scvir_config_error")
  }
  alias
}

# The arguments of a call as Seurat's command log keeps them: every argument but the object(s),
# with `...` spelled out and NULLs left out.
.command_params <- function(fun, env, dots, drop = character()) {
  names <- setdiff(names(formals(fun)), c("object", "...", drop))
  params <- c(mget(names, envir = env), dots)
  is_object <- function(v) {
    is.null(v) || inherits(v, c("Seurat", "scvi_model")) || methods::is(v, "SingleCellExperiment")
  }
  params[!vapply(params, is_object, TRUE)]
}

# Records a run in object@commands as Seurat's own functions do (a SeuratCommand named
# "<function>.<assay>"). Objects and long vectors passed as values (do.call) are shown by class
# in the call string.
.log_seurat_command <- function(object, name, assay, call, params) {
  call[[1]] <- as.name(sub("\\..*$", "", name))  # the generic, not the method or a closure
  for (i in seq_along(call)[-1]) {
    a <- call[[i]]
    if (!is.null(a) && !is.name(a) && !is.call(a) && (is.object(a) || length(a) > 20)) {
      call[[i]] <- as.name(sprintf("<%s>", class(a)[1]))
    }
  }
  cmd <- methods::new("SeuratCommand", name = name, time.stamp = Sys.time(), assay.used = assay,
                      call.string = deparse(call), params = params)
  object@commands[[name]] <- cmd
  object
}
