# Summarises the scArches benchmark: per tool, over seeds, the query's label-transfer accuracy,
# batch mixing in the shared latent space and query training time.
#   Rscript bench/arches_compare.R OUTDIR RESULTS_FILE
# Batch mixing: for every cell of reference + query, the entropy (bits) of the batch labels of
# its 50 nearest neighbours in the query model's latent space, averaged over cells, divided by
# the entropy of the overall batch proportions (1 = as mixed as the proportions allow).
args <- commandArgs(TRUE)
out <- args[1]
results <- lapply(grep("^RESULT ", readLines(args[2]), value = TRUE),
                  function(l) jsonlite::fromJSON(sub("^RESULT ", "", l)))
n_ref <- length(readLines(file.path(out, "ref_idx.txt")))
mixing <- function(z, batch, k = 50) {
  d <- as.matrix(stats::dist(z))
  diag(d) <- Inf
  h <- function(p) { p <- p[p > 0]; -sum(p * log2(p)) }
  e <- apply(d, 1, function(r) h(table(batch[order(r)[seq_len(k)]]) / k))
  mean(e) / h(table(batch) / length(batch))
}
rows <- lapply(results, function(r) {
  z <- as.matrix(utils::read.csv(file.path(out, sprintf("latent_%s_%d.csv", r$tool, r$seed)), row.names = 1))
  batch <- rep(c("reference", "query"), c(n_ref, nrow(z) - n_ref))
  p <- utils::read.csv(file.path(out, sprintf("pred_%s_%d.csv", r$tool, r$seed)))
  data.frame(tool = r$tool, seed = r$seed, accuracy = mean(p$pred == p$truth),
             mixing = mixing(z, batch), query_train_seconds = r$query_train_seconds)
})
tab <- do.call(rbind, rows)
print(tab, row.names = FALSE)
agg <- do.call(rbind, lapply(split(tab, tab$tool), function(t) data.frame(
  tool = t$tool[1], seeds = nrow(t),
  accuracy = sprintf("%.3f +/- %.3f", mean(t$accuracy), stats::sd(t$accuracy)),
  mixing = sprintf("%.3f +/- %.3f", mean(t$mixing), stats::sd(t$mixing)),
  query_train_s = sprintf("%.1f +/- %.1f", mean(t$query_train_seconds), stats::sd(t$query_train_seconds)))))
cat("\n| tool | seeds | query accuracy | batch mixing | query training (s) |\n|---|---|---|---|---|\n")
for (i in seq_len(nrow(agg))) cat(sprintf("| %s | %d | %s | %s | %s |\n", agg$tool[i], agg$seeds[i],
                                          agg$accuracy[i], agg$mixing[i], agg$query_train_s[i]))
