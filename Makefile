# Two commands do everything on a fresh Debian 12 machine (each runs the set-up first, which is
# idempotent):
#   make demo   train scVI on the bundled PBMC 3k and write plots to out/
#   make test   run every test (Rust engine, the R package, and a build of the vignette)
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
SCVIR_HOME ?= $(HOME)/.local/share/scviR
export LIBTORCH ?= $(SCVIR_HOME)/libtorch-2.11.0/torch
export SCVIR_CARGO_TARGET_DIR ?= $(HOME)/.cache/scviR/cargo-target
export CARGO_TARGET_DIR := $(SCVIR_CARGO_TARGET_DIR)
OUT ?= out

.PHONY: setup install demo test test-rust test-r bench doc vignette

setup:
	bash tools/setup.sh

install: setup
	R CMD INSTALL --no-test-load . > $(SCVIR_HOME)/install.log 2>&1 || { tail -n 60 $(SCVIR_HOME)/install.log; exit 1; }
	@echo "[install] scviR installed (log: $(SCVIR_HOME)/install.log)"

demo: install
	Rscript inst/scripts/demo.R $(OUT)

test: install
	bash tools/run_tests.sh

bench: install
	bash bench/run_bench.sh

vignette: install
	Rscript tools/build_vignette.R $(OUT)/vignette

doc:
	Rscript tools/document.R
