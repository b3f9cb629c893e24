#!/usr/bin/env bash
# Runs every test and prints one combined line "N passed, N failed" last; exits non-zero when
# anything failed. Expects the package installed from the source tarball given as the first
# argument (`make test` does both):
#   1. the Rust engine's cargo test;
#   2. the R package's whole testthat suite against the installed package (NOT_CRAN=true);
#   3. the vignette: built into the tarball by R CMD build, and listed after installation;
#   4. R CMD check of the tarball with the network cut (tools/check_tarball.sh): 0 ERROR,
#      0 WARNING, no NOTE but the installed size;
#   5. a non-root user (nobody) trains and queries a model from the site-wide install
#      (tools/check_nonroot.sh; skipped unless run as root).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tarball=${1:-}
log_dir=$(mktemp -d)
passed=0; failed=0; skipped=0
record() {  # record NAME STATUS(0 pass, 1 fail, 2 skip)
  case "$2" in
    0) passed=$((passed + 1)); echo "[ok]   $1" ;;
    2) skipped=$((skipped + 1)); echo "[skip] $1" ;;
    *) failed=$((failed + 1)); echo "[FAIL] $1" ;;
  esac
}

echo "== Rust engine: cargo test"
# Built where the package's own build is cached (the same sources, synced by configure), so the
# crates compile once; the tests read the bundled PBMC 3k from the checkout.
crate_dir=src/rust
if [ -n "${SCVIR_CARGO_TARGET_DIR:-}" ] && [ -f "$SCVIR_CARGO_TARGET_DIR/src/Cargo.toml" ]; then
  crate_dir=$SCVIR_CARGO_TARGET_DIR/src
  rsync -r --checksum --delete --exclude /target --exclude /vendor --exclude /.cargo --exclude /vendor.stamp src/rust/ "$crate_dir/"
fi
libtorch=$(Rscript -e 'cat(scviR::libtorch_info()$libtorch)' 2>/dev/null)
(cd "$crate_dir" && LIBTORCH="$libtorch" SCVIR_TEST_H5AD="$root/inst/extdata/pbmc3k_hvg2000.h5ad" \
   cargo test --release --locked -p scvir-engine ${SCVIR_CARGO_TARGET_DIR:+--target-dir "$SCVIR_CARGO_TARGET_DIR"} 2>&1) \
  | tee "$log_dir/cargo.log"
cargo_status=${PIPESTATUS[0]}
sum_field() {  # sums "N <word>" over cargo's "test result:" lines
  grep -E '^test result:' "$log_dir/cargo.log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'
}
rust_passed=$(sum_field passed); rust_failed=$(sum_field failed)
if [ "$cargo_status" -ne 0 ] && [ "$rust_failed" -eq 0 ]; then rust_failed=1; fi  # build failure
passed=$((passed + rust_passed)); failed=$((failed + rust_failed))

echo "== R package: testthat (whole suite)"
NOT_CRAN=true Rscript tools/run_testthat.R "$log_dir/r_counts.txt"
r_status=$?
read -r r_passed r_failed < "$log_dir/r_counts.txt" 2>/dev/null || { r_passed=0; r_failed=1; }
if [ "$r_status" -ne 0 ] && [ "$r_failed" -eq 0 ]; then r_failed=1; fi
passed=$((passed + r_passed)); failed=$((failed + r_failed))

echo "== Vignette: built into the tarball and installed"
if [ -n "$tarball" ] && tar -tzf "$tarball" > "$log_dir/tarball.txt" && grep -qx 'scviR/inst/doc/scviR.html' "$log_dir/tarball.txt" && \
   Rscript -e 'v <- vignette(package = "scviR")$results; stopifnot("scviR" %in% v[, "Item"])'; then
  record "vignette built and listed by vignette(package = \"scviR\")" 0
else
  record "vignette built and listed by vignette(package = \"scviR\")" 1
fi

echo "== R CMD check of the source tarball, offline"
if [ -z "$tarball" ]; then
  record "R CMD check (no tarball given)" 2
else
  bash tools/check_tarball.sh "$tarball"; s=$?; record "R CMD check of $(basename "$tarball")" "$s"
fi

echo "== A non-root user of the site-wide install"
bash tools/check_nonroot.sh; s=$?; record "non-root user trains and queries a model" $s

echo "Rust: $rust_passed passed, $rust_failed failed; R: $r_passed passed, $r_failed failed; other checks and skips above"
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
