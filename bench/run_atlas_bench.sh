#!/usr/bin/env bash
# Atlas scale, side by side: scviR in memory (a dgCMatrix, and a handle holding the file's compact
# rows), scviR from disk and scvi-tools 1.4.2 on real PBMC 3k
# cells resampled to 1,000,000 cells x 2,000 genes (two conditions; bench/make_atlas_h5ad.py;
# also 100,000 cells for the scaling of epoch time), one epoch at batch 128 and 2 threads each,
# every run in a fresh process (scviR also on the same cells as a dense HDF5Array dataset, when
# HDF5Array is installed); then scviR from disk on 10,000,000 cells (one epoch over a 10%
# training split and 1% validation: all 10M cells' summaries and split are held, the latent covers
# all of them; ATLAS_10M_TRAIN=0.9 trains on 90%). Prints one table: read, train (with set-up),
# latent, peak RSS during training and in all, epoch time, validation ELBO.
#   ATLAS_DIR (~/.cache/scviR/atlas)  ATLAS_THREADS (2)  ATLAS_10M (1: include the 10M-cell run)
#   ATLAS_TIMEOUT (2700: seconds before a scvi-tools run is stopped)
# Needs an installed scviR (make install); the files are written once (1.4 GB and 14 GB).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
dir="${ATLAS_DIR:-$HOME/.cache/scviR/atlas}"; threads="${ATLAS_THREADS:-2}"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
bash "$here/setup_venv.sh" > /dev/null
mkdir -p "$dir"
make_file() { [ -f "$dir/$2" ] || "$venv/bin/python" "$here/make_atlas_h5ad.py" "$1" "$dir/$2" > /dev/null; }
make_file 100000 pbmc_100k.h5ad
make_file 1000000 pbmc_1m.h5ad
out=$(mktemp)
run() { "$@" 2>&1 | tee -a "$out.log" | grep '^RESULT' >> "$out" || { echo "failed: $*"; tail -n 20 "$out.log"; }; }
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
run Rscript "$here/atlas_scvir.R" disk "$dir/pbmc_100k.h5ad" "$threads"
run Rscript "$here/atlas_scvir.R" memory "$dir/pbmc_1m.h5ad" "$threads"
run Rscript "$here/atlas_scvir.R" handle "$dir/pbmc_1m.h5ad" "$threads"
run Rscript "$here/atlas_scvir.R" disk "$dir/pbmc_1m.h5ad" "$threads"
if Rscript -e 'quit(status = !requireNamespace("HDF5Array", quietly = TRUE))'; then
  # the same cells as a dense HDF5Array dataset (what an HDF5-backed SingleCellExperiment holds)
  [ -f "$dir/pbmc_1m_dense.h5" ] || "$venv/bin/python" "$here/make_dense_h5.py" "$dir/pbmc_1m.h5ad" "$dir/pbmc_1m_dense.h5"
  run Rscript "$here/atlas_scvir.R" hdf5array "$dir/pbmc_1m_dense.h5" "$threads"
fi
# scvi-tools is stopped after ATLAS_TIMEOUT seconds (2700); its row then gives the high-water
# mark read from /proc while it ran.
scvi_tools() {
  local file=$1 cells=$2 start=$SECONDS hwm=0 h
  "$venv/bin/python" "$here/atlas_scvi_tools.py" "$file" "$threads" > "$out.py" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    h=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ "${h:-0}" -gt "$hwm" ] && hwm=$h
    if [ $((SECONDS - start)) -ge "${ATLAS_TIMEOUT:-2700}" ]; then kill "$pid"; break; fi
    sleep 5
  done
  wait "$pid" 2>/dev/null || true
  cat "$out.py" >> "$out.log"
  if grep -q '^RESULT' "$out.py"; then
    grep '^RESULT' "$out.py" >> "$out"
  else
    awk -v s=$((SECONDS - start)) -v c="$cells" -v t="$threads" -v k="$hwm" 'BEGIN {
      printf "RESULT\tscvi-tools 1.4.2 (stopped after %d s, epoch unfinished)\t%s\t%s\t\t\t\t>= %.2f\t>= %.2f\t\t\n", s, c, t, k / 1048576, k / 1048576 }' >> "$out"
  fi
}
scvi_tools "$dir/pbmc_100k.h5ad" 100000
scvi_tools "$dir/pbmc_1m.h5ad" 1000000
if [ "${ATLAS_10M:-1}" = 1 ]; then
  make_file 10000000 pbmc_10m.h5ad
  run Rscript "$here/atlas_scvir.R" disk "$dir/pbmc_10m.h5ad" "$threads" 1 "${ATLAS_10M_TRAIN:-0.1}"
fi
printf "| run | cells | threads | read (s) | train incl. set-up (s) | latent (s) | peak RSS in training (GB) | peak RSS in all (GB) | epoch (s) | validation ELBO |\n|---|---|---|---|---|---|---|---|---|---|\n"
cut -f2- "$out" | sed 's/\t/ | /g; s/^/| /; s/$/ |/'
