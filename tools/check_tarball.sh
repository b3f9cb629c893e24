#!/usr/bin/env bash
# R CMD check of the source tarball (the first argument), with the network cut when the machine
# allows it (unshare -n: root, or unprivileged user namespaces), so that it also proves the
# tarball builds offline from its vendored crates. Passes when the check has no ERROR, no WARNING
# and no NOTE other than the installed size. Prints the check's summary lines.
# SCVIR_CHECK_COLD=1 builds the Rust code inside the check's build tree (no developer cache), as a
# user installing the tarball would.
set -uo pipefail
tarball=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
out=$(mktemp -d)
cd "$out" || exit 1
[ "${SCVIR_CHECK_COLD:-0}" = 1 ] && unset SCVIR_CARGO_TARGET_DIR
offline=()
if unshare -n true 2>/dev/null; then
  offline=(unshare -n)
  echo "[check] network cut for the check (unshare -n)"
else
  echo "[check] unshare -n is not available here: checking with the network"
fi
export _R_CHECK_FORCE_SUGGESTS_=false
"${offline[@]}" R CMD check --no-manual --ignore-vignettes "$tarball" > check.log 2>&1
status=$?
dir=$out/scviR.Rcheck
summary=$(sed -n '/^Status:/p' check.log)
grep -E '^\* checking .*\.\.\. (WARNING|ERROR|NOTE)' -A12 check.log | head -n 80
echo "[check] $summary"
echo "[check] log: $out/check.log"
notes=$(grep -cE '^\* checking .*\.\.\. NOTE' check.log)
size_notes=$(grep -cE '^\* checking installed package size \.\.\. NOTE' check.log)
if [ "$status" -ne 0 ] || grep -qE '^\* checking .*\.\.\. (WARNING|ERROR)' check.log || \
   [ "$notes" -ne "$size_notes" ] || [ -z "$summary" ]; then
  [ -f "$dir/tests/testthat.Rout.fail" ] && tail -n 40 "$dir/tests/testthat.Rout.fail"
  echo "[check] FAILED"
  exit 1
fi
grep -E 'checking tests|Running .testthat' check.log | head -n 3
echo "[check] passed"
