#!/usr/bin/env bash
# Installs everything scviR needs on a fresh Debian 12 machine, idempotently:
#   1. Debian's R stack (R 4.2, Seurat, SingleCellExperiment, testthat, ...) and OpenBLAS,
#   2. the CPU libtorch 2.11.0 taken from the PyPI torch wheel, unpacked at $SCVIR_LIBTORCH_HOME,
#   3. nothing else: the package itself is built by `make install`.
# Re-running it does nothing that is already done.
set -euo pipefail

SCVIR_HOME="${SCVIR_HOME:-$HOME/.local/share/scviR}"
TORCH_VERSION=2.11.0
LIBTORCH_HOME="${SCVIR_LIBTORCH_HOME:-$SCVIR_HOME/libtorch-$TORCH_VERSION}"

log() { printf '[setup] %s\n' "$*"; }

# --- 1. Debian packages -----------------------------------------------------------------------
# libopenblas0-openmp matters: without it libtorch's BLAS calls resolve to R's reference BLAS
# inside the R process and matrix products run ~15x slower.
DEB_PACKAGES=(
  r-base-dev r-cran-testthat r-cran-matrix r-cran-seurat r-cran-seuratobject
  r-bioc-singlecellexperiment r-cran-pkgbuild r-cran-uwot r-cran-ggplot2 r-cran-roxygen2
  r-cran-knitr r-cran-rmarkdown r-bioc-biocstyle r-cran-jsonlite r-cran-mass pandoc
  libhdf5-dev pkg-config libopenblas0-openmp python3-pip unzip
)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# --- 2. Rust toolchain -------------------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# --- 3. libtorch 2.11.0 (CPU) from the PyPI wheel ---------------------------------------------
# The PyPI wheel is a CUDA build; we keep its CPU libraries only (about 540 MB). The two nvidia
# wheels provide libraries libtorch_cpu still names at load time.
if [ -f "$LIBTORCH_HOME/torch/lib/libtorch_cpu.so" ] && [ -f "$LIBTORCH_HOME/.complete" ]; then
  log "libtorch $TORCH_VERSION present at $LIBTORCH_HOME/torch"
else
  log "fetching torch==$TORCH_VERSION from PyPI into $LIBTORCH_HOME"
  dl="$SCVIR_HOME/dl"; mkdir -p "$dl"
  python3 -m pip download -q --no-deps -d "$dl" "torch==$TORCH_VERSION" \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  rm -rf "$LIBTORCH_HOME.tmp"; mkdir -p "$LIBTORCH_HOME.tmp"
  for whl in "$dl"/torch-"$TORCH_VERSION"-*.whl "$dl"/nvidia_cuda_runtime-13.0.96-*.whl \
             "$dl"/nvidia_cuda_cupti-13.0.85-*.whl; do
    unzip -q -o "$whl" -d "$LIBTORCH_HOME.tmp"
  done
  lib="$LIBTORCH_HOME.tmp/torch/lib"
  rm -f "$lib"/libtorch_cuda*.so "$lib"/libc10_cuda.so "$lib"/libtorch_nvshmem.so \
        "$lib"/libcaffe2_nvrtc.so "$lib"/libtorch_python.so "$lib"/libtorch.so
  ln -s libtorch_cpu.so "$lib/libtorch.so"
  rm -rf "$LIBTORCH_HOME"; mv "$LIBTORCH_HOME.tmp" "$LIBTORCH_HOME"
  touch "$LIBTORCH_HOME/.complete"
  log "libtorch ready at $LIBTORCH_HOME/torch"
fi
