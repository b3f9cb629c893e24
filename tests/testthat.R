library(testthat)
library(scviR)
test_check("scviR")
