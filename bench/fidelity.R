# scviR side of the fidelity benchmark: Rscript bench/fidelity.R LIKELIHOOD LIBRARY EPOCHS [SEED]
# (LIBRARY: observed | latent). Prints one RESULT line: final validation ELBO (the training
# objective per cell) and the validation cells' marginal log-likelihood with 100 samples.
args <- commandArgs(trailingOnly = TRUE)
lik <- args[1]; lib <- args[2]; epochs <- as.integer(args[3])
seed <- if (length(args) >= 4) as.integer(args[4]) else 0L
suppressPackageStartupMessages(library(scviR))
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
fit <- scvi_model(SummarizedExperiment::assay(sce, "counts"), gene_likelihood = lik,
                  use_observed_lib_size = lib == "observed", max_epochs = epochs, seed = seed,
                  verbose = FALSE)
h <- history(fit)
res <- list(tool = "scviR", likelihood = lik, library = lib, seed = seed, epochs = nrow(h),
            elbo_validation_final = tail(h$elbo_validation, 1),
            marginal_ll_validation = get_marginal_ll(fit, indices = validation_indices(fit),
                                                     n_mc_samples = 100L, seed = seed))
cat("RESULT", jsonlite::toJSON(res, auto_unbox = TRUE, digits = NA), "\n")
