#!/usr/bin/env bash
# scArches reference mapping: scviR vs scvi-tools on the same PBMC 3k reference / query split
# (bench/arches_data.R), over seeds. Prints per-run figures and a summary table.
#   BENCH_THREADS (2)  BENCH_SEEDS ("0 1 2")
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
threads="${BENCH_THREADS:-2}"
seeds="${BENCH_SEEDS:-0 1 2}"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
bash "$here/setup_venv.sh"
out=$(mktemp -d)
Rscript "$here/arches_data.R" "$out"
for s in $seeds; do
  Rscript "$here/arches_scvir.R" "$threads" "$out" "$s" 2>&1 | grep '^RESULT' | tee -a "$out/results.txt"
  "$venv/bin/python" "$here/arches_scvi_tools.py" --threads "$threads" --dir "$out" --seed "$s" 2>&1 \
    | grep '^RESULT' | tee -a "$out/results.txt"
done
Rscript "$here/arches_compare.R" "$out" "$out/results.txt"
