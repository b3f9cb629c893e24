#!/usr/bin/env bash
# The GPU in one command, on a machine with an NVIDIA GPU: installs the CUDA libtorch (same PyPI
# wheel, its nvidia-* libraries beside it) and rebuilds scviR against it, runs the GPU tests, then
# measures training cells/s of scviR and scvi-tools 1.4.2 side by side on the same GPU at batch
# 128 and 1024, on PBMC 3k (2,000 genes) and on the 1M-cell file of bench/run_atlas_bench.sh.
#   GPU_EPOCHS (20 on PBMC 3k; 2 on 1M cells)  ATLAS_DIR (~/.cache/scviR/atlas)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
dir="${ATLAS_DIR:-$HOME/.cache/scviR/atlas}"
nvidia-smi -L || { echo "no NVIDIA GPU here"; exit 1; }
SCVIR_CUDA=1 make install
NOT_CRAN=true Rscript -e 'testthat::test_file("tests/testthat/test-gpu.R", package = "scviR", load_package = "installed")'
bash "$here/setup_venv.sh" > /dev/null
mkdir -p "$dir"
[ -f "$dir/pbmc_1m.h5ad" ] || "$venv/bin/python" "$here/make_atlas_h5ad.py" 1000000 "$dir/pbmc_1m.h5ad" > /dev/null
out=$(mktemp)
for f in "inst/extdata/pbmc3k_hvg2000.h5ad:${GPU_EPOCHS:-20}" "$dir/pbmc_1m.h5ad:2"; do
  file=${f%%:*}; epochs=${f##*:}
  for bs in 128 1024; do
    Rscript "$here/gpu_throughput.R" "$file" "$bs" "$epochs" 2>&1 | grep '^RESULT' >> "$out" || echo "scviR failed: $file $bs"
    "$venv/bin/python" "$here/gpu_throughput.py" "$file" "$bs" "$epochs" 2>&1 | grep '^RESULT' >> "$out" || echo "scvi-tools failed: $file $bs"
  done
done
printf "| tool | data | batch | cells/s | device |\n|---|---|---|---|---|\n"
cut -f2- "$out" | sed 's/\t/ | /g; s/^/| /; s/$/ |/'
