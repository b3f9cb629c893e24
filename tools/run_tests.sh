#!/usr/bin/env bash
# Runs every test: the Rust engine's `cargo test`, the R package's testthat suite against the
# installed package, and a build of the vignette (counted as one check). Prints one combined line "N passed, N failed" last and exits non-zero when
# anything failed. Expects LIBTORCH and CARGO_TARGET_DIR (the Makefile sets both).
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir=$(mktemp -d)

echo "== Rust engine: cargo test"
(cd src/rust && cargo test --release -p scvir-engine 2>&1) | tee "$log_dir/cargo.log"
cargo_status=${PIPESTATUS[0]}
sum_field() {  # sums "N <word>" over cargo's "test result:" lines
  grep -E '^test result:' "$log_dir/cargo.log" | grep -oE "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'
}
rust_passed=$(sum_field passed)
rust_failed=$(sum_field failed)
rust_passed=${rust_passed:-0}; rust_failed=${rust_failed:-0}
if [ "$cargo_status" -ne 0 ] && [ "$rust_failed" -eq 0 ]; then rust_failed=1; fi  # build failure

echo "== R package: testthat"
Rscript tools/run_testthat.R "$log_dir/r_counts.txt"
r_status=$?
read -r r_passed r_failed < "$log_dir/r_counts.txt" 2>/dev/null || { r_passed=0; r_failed=1; }
if [ "$r_status" -ne 0 ] && [ "$r_failed" -eq 0 ]; then r_failed=1; fi

echo "== Vignette: knit vignettes/scviR.Rmd"
if Rscript tools/build_vignette.R "$log_dir/vignette" > "$log_dir/vignette.log" 2>&1; then
  v_passed=1; v_failed=0; echo "vignette built"
else
  v_passed=0; v_failed=1; tail -n 40 "$log_dir/vignette.log"
fi

passed=$((rust_passed + r_passed + v_passed)); failed=$((rust_failed + r_failed + v_failed))
echo "Rust: $rust_passed passed, $rust_failed failed; R: $r_passed passed, $r_failed failed; vignette: $v_passed passed, $v_failed failed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
