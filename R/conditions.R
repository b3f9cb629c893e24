# Errors as classed R conditions. Engine errors arrive tagged ("[scviR:input] ...") and are
# re-signalled with classes a caller can catch: scvir_input_error, scvir_interrupted, ...

scvir_abort <- function(message, class = "scvir_input_error", call = NULL) {
  stop(structure(class = c(class, "scvir_error", "error", "condition"),
                 list(message = message, call = call)))
}

# Runs an engine call and maps its tagged errors (and Rust panics) to classed conditions.
.engine <- function(expr) {
  if (!is.null(.scvir_state$routines)) {
    .rs_set_tuning(.tune_option("blas"), .tune_option("allocator"))
  }
  # A progress handler that left a training call (an interrupt, or the caller's exiting handler
  # or restart): the engine stopped and dropped its state; resume that exit from here, before
  # anything else handles the error that carried it.
  resume <- function(e) if (startsWith(conditionMessage(e), "[scviR:unwind]")) .rs_call("scvir_resume_unwind")
  tryCatch(withCallingHandlers(expr, error = resume), error = function(e) {
    # Arguments are evaluated lazily, inside this handler's reach: R-side checks pass through.
    if (inherits(e, "scvir_error")) stop(e)
    msg <- conditionMessage(e)
    m <- regmatches(msg, regexec("\\[scviR:([a-z]+)\\] ?(.*)", msg))[[1]]
    if (length(m) == 3) {
      kind <- m[2]
      text <- m[3]
      class <- switch(kind,
        input = "scvir_input_error", config = "scvir_config_error",
        interrupted = "scvir_interrupted", numerical = "scvir_numerical_error",
        model = "scvir_model_error", file = "scvir_input_error",
        resource = "scvir_resource_error", unwind = "scvir_engine_error", "scvir_engine_error")
      # libtorch's own allocation failures carry C++ detail; the engine's estimates are worded.
      if (kind == "resource" && grepl("can't allocate|out of memory|bad_alloc|Cannot allocate", text)) {
        text <- .resource_message(text)
      }
      if (kind == "interrupted") {
        text <- paste0(text, "; nothing was modified")
      }
      scvir_abort(text, class)
    }
    # libtorch reports a failed allocation as an exception (a panic of its Rust binding).
    if (grepl("can't allocate memory|out of memory|bad_alloc|Cannot allocate memory", msg)) {
      scvir_abort(.resource_message(msg), "scvir_resource_error")
    }
    # Every engine error is tagged; anything else is a caught Rust panic or a conversion bug.
    scvir_abort(paste0("internal error in the scviR engine: ", msg,
                       " (please report it; your R session and data are unaffected)"),
                "scvir_engine_error")
  })
}

# Opt-in process tuning: options(scviR.tune_blas / scviR.tune_allocator = TRUE), or the
# environment variables SCVIR_TUNE_BLAS / SCVIR_TUNE_ALLOCATOR = 1 (e.g. in Renviron.site).
.tune_option <- function(what) {
  isTRUE(getOption(paste0("scviR.tune_", what),
                   identical(Sys.getenv(paste0("SCVIR_TUNE_", toupper(what))), "1")))
}

# Out of memory: the size libtorch tried to allocate and what to do, without its C++ frames.
.resource_message <- function(msg) {
  bytes <- suppressWarnings(as.numeric(regmatches(msg, regexec("allocate ([0-9]+) bytes", msg))[[1]][2]))
  size <- if (is.finite(bytes)) sprintf(" (an allocation of %s)", format(structure(bytes, class = "object_size"), units = "auto")) else ""
  paste0("out of memory in scviR's engine", size,
         "; lower batch_size or n_samples, work on fewer cells or genes at a time, or free memory")
}
