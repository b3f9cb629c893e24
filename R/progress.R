# Training progress through R's condition system.
#
# About ten times per run (first epoch, every tenth of the run, last epoch) a message condition
# of class `scvir_progress` is signalled with the epoch, the losses, the elapsed time and an
# estimate of the time left. Handlers see it like any message: suppressMessages() and knitr's
# `message = FALSE` muffle it. When nobody muffles it, an interactive console (a dynamic
# terminal) shows a cli progress bar updated every epoch; elsewhere the line is written to
# stderr, as message() would. `verbose = FALSE` and options(scviR.verbose = FALSE) signal nothing.

.verbose <- function(verbose) isTRUE(verbose) && !isFALSE(getOption("scviR.verbose"))

.format_seconds <- function(s) {
  if (!is.finite(s)) return("?")
  s <- round(s)
  if (s < 60) return(sprintf("%ds", s))
  if (s < 3600) return(sprintf("%dm %02ds", s %/% 60, s %% 60))
  sprintf("%dh %02dm", s %/% 3600, (s %% 3600) %/% 60)
}

# Signals `text` as an scvir_progress message; returns TRUE when no handler muffled it (and then
# writes it to stderr unless `quiet_default`).
.signal_progress <- function(text, data = list(), quiet_default = FALSE) {
  cond <- structure(class = c("scvir_progress", "message", "condition"),
                    c(list(message = paste0(text, "\n"), call = NULL), data))
  withRestarts({
    signalCondition(cond)
    if (!quiet_default) cat(conditionMessage(cond), file = stderr())
    TRUE
  }, muffleMessage = function() FALSE)
}

# A progress reporter for one training run: `$callback` is handed to the engine (called after
# every epoch with the epoch, max_epochs, elbo_train and elbo_validation), `$done()` closes the
# bar. NULL when not verbose.
.progress_reporter <- function(verbose, title) {
  if (!.verbose(verbose)) return(NULL)
  state <- new.env(parent = baseenv())  # cli evaluates the bar format (cli::pb_*) here
  state$started <- proc.time()[["elapsed"]]
  state$shown <- .signal_progress(title)
  state$bar <- NULL
  use_bar <- requireNamespace("cli", quietly = TRUE) && cli::is_dynamic_tty()
  callback <- function(epoch, max_epochs, elbo_train, elbo_validation) {
    tryCatch({
      elapsed <- proc.time()[["elapsed"]] - state$started
      eta <- elapsed / epoch * (max_epochs - epoch)
      every <- max(1L, as.integer(ceiling(max_epochs / 10)))
      val <- if (is.finite(elbo_validation)) sprintf(", elbo_validation %.2f", elbo_validation) else ""
      if (epoch == 1L || epoch %% every == 0L || epoch == max_epochs) {
        text <- sprintf("Epoch %d/%d: elbo_train %.2f%s, elapsed %s, ETA %s", epoch, max_epochs,
                        elbo_train, val, .format_seconds(elapsed), .format_seconds(eta))
        state$shown <- .signal_progress(text, list(epoch = epoch, max_epochs = max_epochs,
                                                   elbo_train = elbo_train,
                                                   elbo_validation = elbo_validation,
                                                   elapsed = elapsed, eta = eta),
                                        quiet_default = use_bar)
      }
      if (use_bar && state$shown) {
        state$elbo <- sprintf("%.2f", elbo_train)
        if (is.null(state$bar)) {
          state$bar <- cli::cli_progress_bar(
            total = max_epochs, clear = FALSE, .envir = state,
            format = paste("{cli::pb_bar} epoch {cli::pb_current}/{cli::pb_total}",
                           "| elbo_train {elbo} | {cli::pb_elapsed} elapsed | ETA {cli::pb_eta}"))
        }
        cli::cli_progress_update(id = state$bar, set = epoch, .envir = state)
      }
    }, error = function(e) NULL)
    invisible(NULL)
  }
  list(callback = callback, done = function() {
    if (!is.null(state$bar)) try(cli::cli_progress_done(id = state$bar, .envir = state), silent = TRUE)
  })
}
