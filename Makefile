# Two commands do everything on a fresh Debian 12 machine (each runs the set-up first, which is
# idempotent):
#   make demo   train scVI on the bundled PBMC 3k and write plots to out/
#   make test   run every test (Rust engine, the R package, R CMD check of the source tarball,
#               a non-root user of the site-wide install)
# `make install` builds the source tarball (vendored crates, built vignette) and installs it into
# R's site library; libtorch lives where every user can read it (see tools/setup.sh).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
# Developer cache for the Rust build, outside the clone and reused between installs and checks.
# Unset it (make ... SCVIR_CARGO_TARGET_DIR=) to build inside the package build tree instead.
export SCVIR_CARGO_TARGET_DIR ?= $(HOME)/.cache/scviR/cargo-target
OUT ?= out
BUILD := $(OUT)/build
VERSION := $(shell sed -n 's/^Version: *//p' DESCRIPTION)
TARBALL := $(BUILD)/scviR_$(VERSION).tar.gz

.PHONY: setup vendor tarball install demo test bench doc vignette check

setup:
	bash tools/setup.sh

vendor: setup
	Rscript tools/vendor.R

# The source tarball: what a user installs offline. R CMD build installs the package into a
# temporary library to knit the vignette.
tarball: vendor
	@mkdir -p $(BUILD)
	cd $(BUILD) && R CMD build --no-manual $(CURDIR) > build.log 2>&1 || { tail -n 60 build.log; exit 1; }
	@echo "[tarball] $(TARBALL)"

install: tarball
	R CMD INSTALL $(TARBALL) > $(BUILD)/install.log 2>&1 || { tail -n 60 $(BUILD)/install.log; exit 1; }
	@echo "[install] scviR installed into $$(Rscript -e 'cat(.libPaths()[1])') (log: $(BUILD)/install.log)"

demo: install
	Rscript inst/scripts/demo.R $(OUT)

test: install
	bash tools/run_tests.sh $(TARBALL)

# R CMD check of the source tarball, with the network cut (tools/check_tarball.sh).
check: tarball
	bash tools/check_tarball.sh $(TARBALL)

bench: install
	bash bench/run_bench.sh

vignette: install
	Rscript tools/build_vignette.R $(OUT)/vignette

doc:
	Rscript tools/document.R
