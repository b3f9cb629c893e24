# Models trained and saved by scvi-tools, loaded by scviR: the largest absolute difference of the
# latent means (and scANVI predictions) on the same cells. Run by bench/run_interop_bench.sh.
# SCVI_covariates / SCVI_embedding: see bench/scvi_tools_fixtures.py.
#   Rscript bench/scvi_tools_interop.R DIR CELLS GENES
args <- commandArgs(TRUE)
dir <- args[1]; n_cells <- as.integer(args[2]); n_genes <- as.integer(args[3])
suppressMessages({library(scviR); library(SingleCellExperiment)})
sce <- read_h5ad(system.file("extdata", "pbmc3k_hvg2000.h5ad", package = "scviR"))
counts <- counts(sce)[seq_len(n_genes), seq_len(n_cells)]
batch <- ifelse(seq_len(n_cells) %% 2 == 1, "a", "b")
cat("| model | layout | cells x genes | max abs latent difference | scANVI predictions equal |\n|---|---|---|---|---|\n")
for (model in c("SCVI", "LinearSCVI", "SCANVI", "SCVI_covariates", "SCVI_embedding")) {
  expected <- utils::read.csv(file.path(dir, model, "expected.csv"), row.names = 1)
  layouts <- if (grepl("_", model)) "model.pt" else c("model.pt", "legacy")
  for (layout in layouts) {
    fit <- load_model(file.path(dir, if (layout == "legacy") paste0(model, "_legacy") else model))
    covs <- if (model == "SCVI_covariates") {
      list(categorical = expected["donor"], continuous = expected["log_counts"], size_factor = expected$size_factor)
    }
    z <- get_latent_representation(fit, newdata = counts, batch = batch, covariates = covs)
    diff <- max(abs(z - as.matrix(expected[, grep("^z", names(expected))])))
    same <- if (model == "SCANVI") {
      identical(as.character(predict(fit, newdata = counts, batch = batch)), expected$prediction)
    } else NA
    cat(sprintf("| %s | %s | %d x %d | %.2e | %s |\n", model, layout, n_cells, n_genes, diff,
                if (is.na(same)) "" else same))
  }
}
