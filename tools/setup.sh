#!/usr/bin/env bash
# Installs everything scviR needs on a fresh Debian 12 machine, idempotently:
#   1. Debian's R stack (R 4.2, Seurat, SingleCellExperiment, testthat, ...) and OpenBLAS,
#   2. the CPU libtorch 2.11.0 taken from the PyPI torch wheel (inst/libtorch/install-libtorch.sh),
#   3. nothing else: the package itself is built by `make install`.
# Re-running it does nothing that is already done.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }

# --- 1. Debian packages -----------------------------------------------------------------------
# libopenblas0-openmp matters: without it libtorch's BLAS calls resolve to R's reference BLAS
# inside the R process and matrix products run ~15x slower.
DEB_PACKAGES=(
  r-base-dev r-cran-testthat r-cran-matrix r-cran-seurat r-cran-seuratobject
  r-bioc-singlecellexperiment r-cran-pkgbuild r-cran-uwot r-cran-ggplot2 r-cran-roxygen2
  r-cran-knitr r-cran-rmarkdown r-bioc-biocstyle r-cran-jsonlite r-cran-mass r-cran-cli pandoc
  r-bioc-hdf5array
  libhdf5-dev pkg-config libopenblas0-openmp python3-pip unzip rsync xz-utils util-linux
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
# Installed by the script the package ships, where every user of the R library can read it:
# /usr/local/lib/scviR as root, else the per-user R data directory (see ?install_libtorch).
# SCVIR_LIBTORCH_PREFIX chooses another place (then pass SCVIR_LIBTORCH to the build).
sh inst/libtorch/install-libtorch.sh "${SCVIR_LIBTORCH_PREFIX:-}"
