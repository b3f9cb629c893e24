#!/usr/bin/env bash
# Where a training step's time goes at 1 and at 2 threads, phase by phase:
#   bash bench/step_profile.sh [PAIRS] [EPOCHS]      (after make install; defaults 5 and 15)
# Builds the engine's CLI against the libtorch scviR uses, then trains scVI on the bundled PBMC 3k
# (2,000 HVG, batch 128, seed 0) PAIRS times at 1 and 2 threads, alternating which goes first,
# with `scvir-cli train --profile`. Prints the median milliseconds per step of each phase at each
# thread count and their ratio (what the second thread gives that phase), then the cells/s.
# STEP_PROFILE_FLAGS adds options of `scvir-cli train`, e.g. "--autograd-step" to time the step
# through autograd instead of in closed form.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
pairs="${1:-5}"
epochs="${2:-15}"
LIBTORCH="$(Rscript -e 'cat(scviR::libtorch_info()$libtorch)')"
export LIBTORCH LIBTORCH_BYPASS_VERSION_CHECK=1
target="${SCVIR_CARGO_TARGET_DIR:-$HOME/.cache/scviR/cargo-target}"
(cd src/rust && cargo build --quiet --release --locked -p scvir-engine --bin scvir-cli --target-dir "$target")
cli="$target/release/scvir-cli"
out=$(mktemp)
for i in $(seq "$pairs"); do
  if [ $((i % 2)) -eq 1 ]; then order="1 2"; else order="2 1"; fi
  for t in $order; do
    LD_LIBRARY_PATH="$LIBTORCH/lib" "$cli" train inst/extdata/pbmc3k_hvg2000.h5ad --epochs "$epochs" \
      --threads "$t" --quiet --profile ${STEP_PROFILE_FLAGS:-} | grep '^RESULT' | cut -c8- >> "$out"
  done
done
Rscript - "$out" <<'EOF'
rows <- lapply(readLines(commandArgs(TRUE)[1]), jsonlite::fromJSON)
threads <- vapply(rows, `[[`, 0, "threads")
phases <- c("minibatch", "forward", "backward", "finish_backward", "optimizer", "bookkeeping")
phases <- c(intersect(phases, names(rows[[1]]$step_ms)), setdiff(names(rows[[1]]$step_ms), phases))
med <- function(t, f) stats::median(vapply(rows[threads == t], f, 0))
ms <- function(t) c(vapply(phases, function(p) med(t, function(r) r$step_ms[[p]]), 0),
                    step = med(t, function(r) sum(unlist(r$step_ms))))
tab <- data.frame(phase = c(phases, "whole step"), ms_1_thread = ms(1), ms_2_threads = ms(2))
tab$gain <- tab$ms_1_thread / tab$ms_2_threads
cat(sprintf("%d pairs of %d epochs; median milliseconds per training step (128 cells)\n",
            sum(threads == 1), rows[[1]]$epochs))
print(format(tab, digits = 3), row.names = FALSE)
cps <- c(med(1, function(r) r$cells_per_s), med(2, function(r) r$cells_per_s))
cat(sprintf("RESULT cells/s %.0f (1 thread) %.0f (2 threads), ratio %.2f\n", cps[1], cps[2], cps[2] / cps[1]))
EOF
rm -f "$out"
