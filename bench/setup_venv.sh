#!/usr/bin/env bash
# Create (or bring up to date) the developer-only Python venv used for reference
# benchmarks against scvi-tools and for regenerating example data.
#
# Idempotent: re-running it when the venv already matches the pinned requirements
# does nothing beyond a quick stamp check.
#
#   SCVIR_BENCH_VENV  where the venv lives   (default: $HOME/.cache/scviR/bench-venv)
#   SCVIR_DL_DIR      optional folder of already downloaded wheels, e.g. a torch
#                     wheel, used as an extra --find-links source
#                     (default: $HOME/.local/share/scviR/dl)
#   PYTHON            interpreter used to create the venv (default: python3, >= 3.10)
#
# Note: torch on PyPI for Linux x86_64 is the CUDA build and depends on the
# nvidia-* / cuda-toolkit wheels (several GB). A `--no-deps` torch install does
# not import without them (libtorch_cuda.so needs libcudart/libcublas at load
# time), so they are installed too; everything here runs on the CPU only.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
dl_dir="${SCVIR_DL_DIR:-$HOME/.local/share/scviR/dl}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"
con="$here/constraints.txt"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating venv at $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

stamp="$venv/.scvir-bench-stamp"
want="$(cat "$req" "$con" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "venv at $venv is up to date"
  exit 0
fi

find_links=()
if [ -d "$dl_dir" ]; then
  find_links=(--find-links "$dl_dir")
fi

"$venv/bin/python" -m pip install "${find_links[@]}" -r "$req" -c "$con"
"$venv/bin/python" -c 'import torch, scvi, scanpy, anndata, h5py, skmisc; print("torch", torch.__version__, "| scvi-tools", scvi.__version__)'
echo "$want" > "$stamp"
echo "venv ready: $venv"
