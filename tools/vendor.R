# Vendors the Rust crates the package needs into src/rust/vendor.tar.xz, so that the source
# tarball builds without network access (configure unpacks it and cargo then runs --offline).
# Developers run it (through `make tarball` / `make install`) before `R CMD build`; it needs
# crates.io or cargo's local cache. Run from the package root: Rscript tools/vendor.R
#
# Files no build uses are dropped to keep the tarball small (tch's bundled third-party data,
# examples and tests; the Windows import libraries), and each crate's .cargo-checksum.json is
# rewritten to list only the files that remain (its package checksum, which Cargo.lock pins,
# is unchanged).
rust <- file.path("src", "rust")
archive <- file.path(rust, "vendor.tar.xz")
lock <- file.path(rust, "Cargo.lock")
if (file.exists(archive) && file.mtime(archive) >= file.mtime(lock) &&
    !identical(Sys.getenv("SCVIR_REVENDOR"), "1")) {
  message("[vendor] ", archive, " is up to date with Cargo.lock")
  quit(status = 0)
}
cargo <- Sys.which("cargo")
if (!nzchar(cargo)) cargo <- file.path(Sys.getenv("HOME"), ".cargo", "bin", "cargo")
stage <- tempfile("vendor")
dir.create(stage)
dest <- file.path(stage, "vendor")
status <- system2(cargo, c("vendor", "--locked", "--versioned-dirs", "--manifest-path",
                           file.path(rust, "Cargo.toml"), shQuote(dest)), stdout = FALSE, stderr = FALSE)
if (status != 0) stop("cargo vendor failed (status ", status, ")")

drop <- c("^tch-[0-9.]+/(third_party|examples|tests)$", "^windows_[a-z0-9_]+-[0-9.]+/lib$",
          "^winapi-[a-z0-9_]+-pc-windows-gnu-[0-9.]+/lib$")
dirs <- list.dirs(dest, full.names = FALSE, recursive = TRUE)
for (d in dirs[Reduce(`|`, lapply(drop, grepl, x = dirs))]) unlink(file.path(dest, d), recursive = TRUE)
for (crate in list.dirs(dest, recursive = FALSE)) {
  sums_file <- file.path(crate, ".cargo-checksum.json")
  if (!file.exists(sums_file)) next
  sums <- jsonlite::fromJSON(sums_file, simplifyVector = FALSE)
  kept <- Filter(function(f) file.exists(file.path(crate, f)), names(sums$files))
  if (length(kept) == length(sums$files)) next
  sums$files <- if (length(kept)) sums$files[kept] else structure(list(), names = character())
  writeLines(jsonlite::toJSON(sums, auto_unbox = TRUE), sums_file)
}
old <- setwd(stage)
status <- system2("tar", c("-cJf", "vendor.tar.xz", "vendor"), env = "XZ_OPT=-6")
setwd(old)
if (status != 0) stop("tar failed")
invisible(file.copy(file.path(stage, "vendor.tar.xz"), archive, overwrite = TRUE))
unlink(stage, recursive = TRUE)
message(sprintf("[vendor] %s written (%.1f MB)", archive, file.size(archive) / 2^20))
