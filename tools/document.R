# Regenerates NAMESPACE and man/ from the roxygen2 comments in R/, without compiling the package
# (R files are sourced). Run from the package root: Rscript tools/document.R
roxygen2::roxygenise(".", roclets = c("namespace", "rd"), load_code = roxygen2::load_source)
