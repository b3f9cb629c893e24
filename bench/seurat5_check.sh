#!/usr/bin/env bash
# Seurat v5 check: builds SeuratObject >= 5 and Seurat >= 5 (with the newer dependencies they
# need beyond Debian 12's R stack: Matrix 1.6-5, sctransform 0.4.1, scattermore 1.2,
# fastDummies) into a separate library, leaving the system's Seurat 4 untouched, then runs
# scviR's Seurat tests against it (test-seurat-v5.R: Assay5 layers, split layers as batches,
# IntegrateLayers(method = scvi_integration)).
#
#   SEURAT5_SRC=DIR bash bench/seurat5_check.sh
#
# DIR holds the source packages (directories or .tar.gz: Matrix, SeuratObject, sctransform,
# scattermore, fastDummies, Seurat); without SEURAT5_SRC they come from CRAN. Debian packages
# r-cran-spam, r-cran-dotcall64, r-cran-rspectra and r-cran-rcpphnsw are installed first.
# Checked with Matrix 1.6-5, SeuratObject 5.3.0, Seurat 5.0.3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
lib="${SCVIR_SEURAT5_LIB:-$HOME/.cache/scviR/seurat5-lib}"
mkdir -p "$lib"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q r-cran-spam r-cran-dotcall64 r-cran-rspectra r-cran-rcpphnsw >/dev/null
fi
export R_LIBS="$lib"
for p in Matrix SeuratObject sctransform scattermore fastDummies Seurat; do
  if Rscript -e "q(status = !('$p' %in% rownames(installed.packages('$lib'))))" 2>/dev/null; then
    continue
  fi
  if [ -n "${SEURAT5_SRC:-}" ]; then
    src=$(ls -d "$SEURAT5_SRC/$p" "$SEURAT5_SRC/${p}_"*.tar.gz 2>/dev/null | head -1)
    [ -n "$src" ] || { echo "no source of $p in $SEURAT5_SRC" >&2; exit 1; }
    R CMD INSTALL -l "$lib" "$src"
  else
    Rscript -e "install.packages('$p', lib = '$lib', repos = 'https://cloud.r-project.org')"
  fi
done
Rscript -e "cat('Seurat', format(packageVersion('Seurat')), 'SeuratObject', format(packageVersion('SeuratObject')), 'Matrix', format(packageVersion('Matrix')), '\n')"
NOT_CRAN=true Rscript -e '
library(testthat); suppressMessages(library(scviR))
r <- lapply(c("test-seurat-v5.R", "test-integration.R", "test-seurat.R", "test-wrapper.R"), function(f)
  as.data.frame(test_file(file.path("tests/testthat", f), package = "scviR", load_package = "installed",
                          reporter = "summary")))
r <- do.call(rbind, r)
cat(sprintf("%d passed, %d failed, %d skipped\n", sum(r$nb) - sum(r$failed), sum(r$failed), sum(r$skipped)))
quit(status = sum(r$failed) > 0 || any(r$error))'
