#!/bin/sh
# Installs the CPU libtorch scviR is built against (2.11.0), taken from the PyPI `torch` wheel,
# into a directory every user of the R library can read. Idempotent.
#
#   sh install-libtorch.sh [PREFIX]
#
# PREFIX defaults to the location scviR looks in (see `?install_libtorch` in R):
#   root:       /usr/local/lib/scviR
#   other user: ${R_USER_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}}/R/scviR
# The libraries land in PREFIX/libtorch-2.11.0/torch (lib/, include/, share/), next to the two
# small nvidia runtime libraries that libtorch_cpu.so still names at load time.
#
# Offline: set SCVIR_TORCH_WHEEL_DIR to a directory holding the three wheels
# (torch-2.11.0-*.whl, nvidia_cuda_runtime-13.0.96-*.whl, nvidia_cuda_cupti-13.0.85-*.whl).
#
# GPU: with an NVIDIA GPU (nvidia-smi lists one) or SCVIR_CUDA=1, the CUDA libraries of the same
# wheel are kept and the nvidia-* wheels it depends on (cuBLAS, cuDNN, ...; about 3 GB) are
# installed beside them, where the wheel's libraries look for them. SCVIR_CUDA=0 forces the CPU
# build. A CPU install is replaced when CUDA is asked for. Then rebuild scviR (make install):
# configure links libtorch_cuda when it is there.
set -eu

TORCH_VERSION=2.11.0
if [ "$#" -ge 1 ] && [ -n "$1" ]; then
  PREFIX=$1
elif [ "$(id -u)" -eq 0 ]; then
  PREFIX=/usr/local/lib/scviR
else
  PREFIX="${R_USER_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}}/R/scviR"
fi
DEST="$PREFIX/libtorch-$TORCH_VERSION"
log() { printf '[libtorch] %s\n' "$*"; }

CUDA=${SCVIR_CUDA:-}
if [ -z "$CUDA" ]; then
  CUDA=0
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then CUDA=1; fi
fi

if [ -f "$DEST/torch/lib/libtorch_cpu.so" ] && [ -f "$DEST/.complete" ] &&
   { [ "$CUDA" != 1 ] || [ -f "$DEST/torch/lib/libtorch_cuda.so" ]; }; then
  log "libtorch $TORCH_VERSION present at $DEST/torch$( [ -f "$DEST/torch/lib/libtorch_cuda.so" ] && echo ' (CUDA)')"
  exit 0
fi

umask 022
mkdir -p "$PREFIX"
work=$(mktemp -d "$PREFIX/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

if [ -n "${SCVIR_TORCH_WHEEL_DIR:-}" ]; then
  wheels=$SCVIR_TORCH_WHEEL_DIR
  log "using the wheels in $wheels"
else
  command -v python3 >/dev/null 2>&1 || {
    echo "install-libtorch: python3 with pip is needed to fetch the torch wheel from PyPI" >&2
    echo "  (or set SCVIR_TORCH_WHEEL_DIR to a directory holding the wheels)" >&2
    exit 1
  }
  wheels="$work/wheels"
  if [ "$CUDA" = 1 ]; then
    log "fetching torch==$TORCH_VERSION and its CUDA libraries from PyPI (about 4 GB)"
    python3 -m pip download -q -d "$wheels" "torch==$TORCH_VERSION"
  else
    log "fetching torch==$TORCH_VERSION from PyPI (about 900 MB; only the CPU libraries are kept)"
    python3 -m pip download -q --no-deps -d "$wheels" "torch==$TORCH_VERSION" \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  fi
fi
command -v unzip >/dev/null 2>&1 || { echo "install-libtorch: unzip is needed" >&2; exit 1; }

stage="$work/libtorch-$TORCH_VERSION"
mkdir -p "$stage"
for pattern in "torch-$TORCH_VERSION-*.whl" "nvidia_cuda_runtime-13.0.96-*.whl" \
               "nvidia_cuda_cupti-13.0.85-*.whl"; do
  found=
  for whl in "$wheels"/$pattern; do
    [ -f "$whl" ] || continue
    found=1
    unzip -q -o "$whl" 'torch/lib/*' 'torch/include/*' 'torch/share/*' 'nvidia/*' -d "$stage" \
      2>/dev/null || [ $? -eq 11 ]  # 11: some patterns match nothing in this wheel
  done
  [ -n "$found" ] || { echo "install-libtorch: no wheel matching $pattern in $wheels" >&2; exit 1; }
done
if [ "$CUDA" = 1 ]; then
  # Every nvidia-* wheel torch depends on, unpacked as in site-packages: the CUDA libraries'
  # run paths ($ORIGIN/../../nvidia/<pkg>/lib) find them there.
  for whl in "$wheels"/nvidia_*.whl; do
    [ -f "$whl" ] || continue
    unzip -q -o "$whl" 'nvidia/*' -d "$stage" 2>/dev/null || [ $? -eq 11 ]
  done
fi

lib="$stage/torch/lib"
# The wheel is a CUDA build: without CUDA, keep the CPU libraries only.
rm -f "$lib"/libtorch_python.so
if [ "$CUDA" != 1 ]; then
  rm -f "$lib"/libtorch_cuda*.so "$lib"/libc10_cuda.so "$lib"/libtorch_nvshmem.so \
        "$lib"/libcaffe2_nvrtc.so "$lib"/libtorch.so
  ln -s libtorch_cpu.so "$lib/libtorch.so"
fi
chmod -R a+rX "$stage"
touch "$stage/.complete"
rm -rf "$DEST"
mv "$stage" "$DEST"
log "libtorch $TORCH_VERSION installed at $DEST/torch"
