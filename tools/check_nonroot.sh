#!/usr/bin/env bash
# As root: the user `nobody` (no home directory, no write access to the R library or to
# libtorch's directory) loads the site-wide scviR, trains and queries a model, saves and loads it.
# Exit status 0 when it works, 1 when it fails, 2 (skipped) when not run as root.
set -uo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "[nonroot] skipped: needs root to run as another user"
  exit 2
fi
script=$(mktemp /tmp/scvir-nonroot-XXXXXX.R)
trap 'rm -f "$script"' EXIT
cat > "$script" <<'RSCRIPT'
suppressPackageStartupMessages(library(scviR))
info <- libtorch_info()
stopifnot(is.null(info$load_error))
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
counts <- SummarizedExperiment::assay(sce, "counts")[, 1:300]
fit <- scvi_model(counts, max_epochs = 3, seed = 1, n_threads = 2, verbose = FALSE)
z <- get_latent_representation(fit)
stopifnot(identical(dim(z), c(300L, 10L)), all(is.finite(z)))
dir <- tempfile("model")
save_model(fit, dir)
stopifnot(isTRUE(all.equal(get_latent_representation(load_model(dir)), z)))
stopifnot(2^-1070 > 0)
cat(sprintf("[nonroot] user %s: libtorch from %s, model trained and queried\n",
            Sys.info()[["effective_user"]], info$libtorch))
RSCRIPT
chmod 644 "$script"
su nobody -s /bin/sh -c "cd /tmp && Rscript '$script'" 2>&1 | grep -v -e '^Warning message:$' -e 'normalizePath("~")'; exit "${PIPESTATUS[0]}"
