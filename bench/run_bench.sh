#!/usr/bin/env bash
# scviR vs scvi-tools on PBMC 3k (2,000 HVG), 50 epochs, seed 0, batch 128, at 1 and 2 threads.
# Installs scvi-tools into a throwaway venv outside the repository (bench/setup_venv.sh), then runs
# each configuration in a fresh process, alternating the two tools, and prints a side-by-side
# table with the speed ratio and the ELBO difference.
#   BENCH_EPOCHS (50)  BENCH_REPS (1)  BENCH_THREADS ("1 2")
# Needs an installed scviR (make install). Numbers are only meaningful on an otherwise idle machine.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
epochs="${BENCH_EPOCHS:-50}"; reps="${BENCH_REPS:-1}"; threads="${BENCH_THREADS:-1 2}"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
bash "$here/setup_venv.sh"
out=$(mktemp -d)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$reps"); do
  for t in $threads; do
    echo "run $rep, $t thread(s): scviR"
    Rscript "$here/scvir_pbmc3k.R" "$t" "$epochs" > "$out/scvir_${t}_$rep.txt" 2>&1 || cat "$out/scvir_${t}_$rep.txt"
    echo "run $rep, $t thread(s): scvi-tools"
    "$venv/bin/python" "$here/scvi_tools_pbmc3k.py" --threads "$t" --epochs "$epochs" \
      > "$out/scvitools_${t}_$rep.txt" 2>&1 || tail -n 20 "$out/scvitools_${t}_$rep.txt"
  done
done
Rscript "$here/compare.R" "$out"/*.txt
