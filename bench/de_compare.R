# Compares the two DE tables written by de_scvir.R and de_scvi_tools.py: per cell type, the
# overlap of the top-50 genes and the Spearman correlation of lfc_mean, plus the wall times.
#   Rscript bench/de_compare.R <out_dir>
out <- commandArgs(trailingOnly = TRUE)[1]
ours <- utils::read.csv(file.path(out, "de_scvir.csv"), check.names = FALSE)
theirs <- utils::read.csv(file.path(out, "de_scvi_tools.csv"), check.names = FALSE)
# Both rankings use the same rule: proba_de, ties by |lfc_mean| (pandas leaves ties unordered).
top <- function(d, n = 50) {
  d <- d[order(-d$proba_de, -abs(d$lfc_mean)), ]
  head(d$gene, n)
}
groups <- sort(unique(ours$group1))
rows <- lapply(groups, function(g) {
  a <- ours[ours$group1 == g, ]
  b <- theirs[theirs$group1 == g, ]
  b <- b[match(a$gene, b$gene), ]
  up <- function(d) top(d[d$lfc_mean > 0, ])
  data.frame(group = g, n_cells = NA,
             top50_overlap = length(intersect(top(a), top(b))) / 50,
             top50_up_overlap = length(intersect(up(a), up(b))) / 50,
             spearman_lfc_mean = stats::cor(a$lfc_mean, b$lfc_mean, method = "spearman"),
             spearman_proba_de = stats::cor(a$proba_de, b$proba_de, method = "spearman"),
             de_fdr05_ours = sum(a[["is_de_fdr_0.05"]] %in% c(TRUE, "True", "TRUE")),
             de_fdr05_theirs = sum(b[["is_de_fdr_0.05"]] %in% c(TRUE, "True", "TRUE")))
})
tab <- do.call(rbind, rows)
tab$n_cells <- NULL
print(tab, digits = 3, row.names = FALSE)
cat(sprintf("\nmedian top-50 overlap %.2f (up-regulated only %.2f); median Spearman of lfc_mean %.3f\n",
            stats::median(tab$top50_overlap), stats::median(tab$top50_up_overlap),
            stats::median(tab$spearman_lfc_mean)))
