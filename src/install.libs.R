# Installs the package's two shared libraries: scviR (the engine) and scviR_loader (which loads
# libtorch before it; see src/loader/scviR_loader.c).
files <- c(paste0("scviR", SHLIB_EXT), "scviR_loader.so")
dest <- file.path(R_PACKAGE_DIR, paste0("libs", R_ARCH))
dir.create(dest, recursive = TRUE, showWarnings = FALSE)
stopifnot(all(file.copy(files, dest, overwrite = TRUE)))
if (file.exists("symbols.rds")) file.copy("symbols.rds", dest, overwrite = TRUE)
