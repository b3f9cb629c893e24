# Prints the side-by-side table of bench/run_bench.sh from the RESULT lines in the given files.
files <- commandArgs(trailingOnly = TRUE)
rows <- do.call(rbind, lapply(files, function(f) {
  line <- grep("^RESULT ", readLines(f, warn = FALSE), value = TRUE)
  if (!length(line)) return(NULL)
  r <- jsonlite::fromJSON(sub("^RESULT ", "", line[length(line)]))
  data.frame(tool = r$tool, threads = r$threads, epochs = r$epochs,
             sec_per_epoch = r$sec_per_epoch, cells_per_s = r$cells_per_s,
             peak_rss_mb = r$peak_rss_mb, elbo_validation = r$elbo_validation_final)
}))
agg <- aggregate(cbind(sec_per_epoch, cells_per_s, peak_rss_mb, elbo_validation) ~ tool + threads + epochs,
                 data = rows, FUN = median)
agg <- agg[order(agg$threads, agg$tool != "scviR"), ]
cat(sprintf("\n%-11s %7s %6s %13s %11s %12s %16s\n", "tool", "threads", "epochs", "sec/epoch",
            "cells/s", "peak RSS MB", "elbo_validation"))
for (i in seq_len(nrow(agg))) {
  a <- agg[i, ]
  cat(sprintf("%-11s %7d %6d %13.3f %11.0f %12.0f %16.2f\n", a$tool, a$threads, a$epochs,
              a$sec_per_epoch, a$cells_per_s, a$peak_rss_mb, a$elbo_validation))
}
cat(sprintf("(medians over %d run(s) per row)\n\n", max(table(paste(rows$tool, rows$threads)))))
for (t in sort(unique(agg$threads))) {
  s <- agg[agg$threads == t & agg$tool == "scviR", ]
  p <- agg[agg$threads == t & agg$tool == "scvi-tools", ]
  if (nrow(s) && nrow(p)) {
    cat(sprintf("%d thread(s): scviR / scvi-tools speed %.2fx; validation ELBO %+.2f%% (scviR %.2f vs %.2f)\n",
                t, s$cells_per_s / p$cells_per_s,
                100 * (s$elbo_validation - p$elbo_validation) / p$elbo_validation,
                s$elbo_validation, p$elbo_validation))
  }
}
