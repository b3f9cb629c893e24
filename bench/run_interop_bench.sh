#!/usr/bin/env bash
# scvi-tools -> scviR model fidelity on the full bundled PBMC 3k (2,638 cells x 2,000 genes,
# 128 hidden units, 10 latent dimensions, 20 epochs): SCVI, LinearSCVI and SCANVI saved by
# scvi-tools (model.pt and the legacy layout), loaded by scviR's load_model().
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
bash "$here/setup_venv.sh"
out=$(mktemp -d)
"$venv/bin/python" "$here/scvi_tools_fixtures.py" "$out" --cells 2638 --genes 2000 --hidden 128 \
  --latent 10 --epochs 20 2>&1 | grep '^RESULT'
Rscript "$here/scvi_tools_interop.R" "$out" 2638 2000
# scviR -> scvi-tools: models saved with save_model(format = "scvi-tools"), loaded by scvi-tools.
exp=$(mktemp -d)
Rscript "$here/scvir_export.R" "$exp" 2638 2000 20 2>&1 | grep '^RESULT'
"$venv/bin/python" "$here/scvi_tools_load_check.py" "$exp" 2638 2000 2>&1 | grep '^|'
