#!/usr/bin/env bash
# Check R/hvg.R's select_hvg_seurat_v3() against scanpy's seurat_v3 HVG selection
# on the shared PBMC 3k counts (without batches, and with a deterministic 2-level
# batch: cells alternate b0/b1). Developer-only; needs R with Matrix and the bench
# venv (bench/setup_venv.sh).
#
#   SCVIR_BENCH_VENV   bench venv (default: $HOME/.cache/scviR/bench-venv)
#   SCVIR_PBMC3K_H5AD  input (default: ../shared/data/pbmc3k.h5ad from the repo root)
#
# Exits non-zero if a top-2000 overlap is below 0.99.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
work="$(mktemp -d "${TMPDIR:-/tmp}/scvir-hvg-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT

"$venv/bin/python" "$repo/tools/hvg_scanpy_reference.py" "$work"
Rscript "$repo/tools/check_hvg_against_scanpy.R" "$work" "$repo"
