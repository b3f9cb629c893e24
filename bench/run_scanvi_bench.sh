#!/usr/bin/env bash
# scANVI label transfer: scviR vs scvi-tools on PBMC 3k with half of the labels hidden (the same
# cells for both, drawn with R's set.seed(42)), after 50 SCVI epochs (seed 0). Prints held-out
# accuracy and scANVI training time for both.   BENCH_THREADS (2)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
threads="${BENCH_THREADS:-2}"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
bash "$here/setup_venv.sh"
out=$(mktemp -d)
Rscript -e 'set.seed(42); writeLines(as.character(sample(2638, 1319)), commandArgs(TRUE)[1])' "$out/hidden.txt"
Rscript "$here/scanvi_scvir.R" "$threads" "$out/hidden.txt" 2>&1 | grep '^RESULT'
"$venv/bin/python" "$here/scanvi_scvi_tools.py" --threads "$threads" --hidden "$out/hidden.txt" 2>&1 | grep '^RESULT'
