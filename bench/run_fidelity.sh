#!/usr/bin/env bash
# Fidelity of scviR against scvi-tools for each likelihood and library treatment: PBMC 3k,
# 50 epochs, seeds BENCH_SEEDS (default 0; same validation cells in both tools for a seed), validation ELBO and the validation
# cells' marginal log-likelihood (100 importance samples). Needs an installed scviR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
epochs="${BENCH_EPOCHS:-50}"
seeds="${BENCH_SEEDS:-0}"
venv="${SCVIR_BENCH_VENV:-$HOME/.cache/scviR/bench-venv}"
bash "$here/setup_venv.sh" > /dev/null
printf "%-8s %-9s %4s %14s %14s %8s %14s %14s %8s\n" likelihood library seed "ELBO scviR" "ELBO scvi-tools" "diff" "LL scviR" "LL scvi-tools" "diff"
for seed in $seeds; do
for lik in zinb nb poisson; do
  for lib in observed latent; do
    flag=""; [ "$lib" = latent ] && flag="--latent-library"
    ours=$(Rscript "$here/fidelity.R" "$lik" "$lib" "$epochs" "$seed" 2>/dev/null | grep '^RESULT' | sed 's/^RESULT //')
    theirs=$("$venv/bin/python" "$here/scvi_tools_pbmc3k.py" --threads 2 --epochs "$epochs" \
      --likelihood "$lik" $flag --marginal-ll-samples 100 --seed "$seed" 2>/dev/null | grep '^RESULT' | sed 's/^RESULT //')
    Rscript -e 'a <- jsonlite::fromJSON(commandArgs(TRUE)[1]); b <- jsonlite::fromJSON(commandArgs(TRUE)[2])
      pct <- function(x, y) 100 * (x - y) / abs(y)
      cat(sprintf("%-8s %-9s %4d %14.2f %14.2f %+7.2f%% %14.2f %14.2f %+7.2f%%\n", a$likelihood, a$library, a$seed,
        a$elbo_validation_final, b$elbo_validation_final, pct(a$elbo_validation_final, b$elbo_validation_final),
        a$marginal_ll_validation, b$marginal_ll_validation, pct(a$marginal_ll_validation, b$marginal_ll_validation)))' "$ours" "$theirs"
  done
done
done
