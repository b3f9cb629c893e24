#!/usr/bin/env bash
# DE fidelity and speed: scviR vs scvi-tools, PBMC 3k, each cell type vs the rest, change mode,
# after the same 50-epoch training (seed 0). Prints both wall times and the per-group agreement.
#   BENCH_THREADS (2)
# Needs an installed scviR (make install) and the venv from bench/setup_venv.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
threads="${BENCH_THREADS:-2}"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
bash "$here/setup_venv.sh"
out=$(mktemp -d)
Rscript "$here/de_scvir.R" "$threads" "$out" 2>&1 | grep '^RESULT'
"$venv/bin/python" "$here/de_scvi_tools.py" --threads "$threads" --out "$out" 2>&1 | grep '^RESULT'
Rscript "$here/de_compare.R" "$out"
