#' scviR: single-cell variational inference (scVI) natively in R
#'
#' scviR fits the deep generative models of scvi-tools to raw single-cell RNA-seq counts
#' without Python: the models are reimplemented in Rust on libtorch and called from R. They
#' follow scvi-tools' definitions, defaults and parameter names, and work on Seurat objects (v4
#' assays and v5 layers), SingleCellExperiment objects, sparse or dense count matrices and
#' AnnData `.h5ad` files.
#'
#' @section Models:
#' * **scVI** (Lopez et al. 2018): a variational autoencoder of UMI counts with a
#'   zero-inflated negative binomial (or negative binomial, Poisson) likelihood that corrects for
#'   library size and batch; it gives a low-dimensional latent representation of each cell,
#'   denoised and batch-corrected expression, and more. See [scvi_model()] (all options) and
#'   [scvi()] (Seurat and SingleCellExperiment objects).
#' * **LDVAE** (Svensson et al. 2020): scVI with a linear decoder, whose gene loadings make the
#'   latent factors interpretable. See [ldvae()] and [get_loadings()].
#' * **scANVI** (Xu et al. 2021): semi-supervised scVI with a cell-type classifier, for
#'   annotating unlabelled cells from labelled ones (label transfer). See [scanvi()].
#' * **Differential expression** (Lopez et al. 2018; Boyeau et al. 2019): Bayesian comparison
#'   of groups of cells from posterior samples of the model's normalized expression, with a
#'   posterior expected false discovery rate. See [differential_expression()] and [plot_de()].
#'
#' @section Where to start:
#' * [scvi()] trains scVI on a Seurat object or a SingleCellExperiment and stores the latent
#'   representation and the model in it; [scvi_model()] does the same from a genes x cells
#'   count matrix and returns the model, an `scvi_model` object.
#' * [get_latent_representation()] and [get_normalized_expression()] query a trained model;
#'   [training_history()] and `plot()` show how training went.
#' * [differential_expression()] finds genes that differ between groups of cells.
#' * [scanvi()] annotates cells, starting from a trained scVI model or from scratch.
#' * [read_h5ad()] reads an AnnData file into a SingleCellExperiment.
#' * [save_model()] and [load_model()] store a model on disk and read it back; models also
#'   survive [saveRDS()].
#'
#' The vignette runs a complete analysis on the PBMC 3k data bundled with the package:
#' `vignette("scviR", package = "scviR")`.
#'
#' @section Installation of libtorch:
#' scviR's engine runs on libtorch, which is loaded with the package. If it is missing, the
#' package still loads and says so; [install_libtorch()] installs it, and [libtorch_info()]
#' reports which libtorch and BLAS are in use.
#'
#' @section Options and environment variables:
#' * `options(scviR.threads = n)`: number of CPU threads used for training and queries when
#'   `n_threads` is not given (default: all cores).
#' * `options(scviR.verbose = FALSE)`: no training progress, whatever the `verbose` argument
#'   says.
#' * `options(scviR.tune_blas = TRUE)`, `options(scviR.tune_allocator = TRUE)`: faster BLAS
#'   kernels (when libtorch runs on R's BLAS) and memory allocation during engine calls (see
#'   [libtorch_info()]).
#' * `SCVIR_LIBTORCH_BLAS=R`: environment variable, read when the package is loaded, that puts
#'   libtorch's matrix products on R's BLAS instead of libtorch's own (see [libtorch_info()]).
#' * `SCVIR_LIBTORCH`: environment variable naming the libtorch directory to load when the
#'   package is loaded; it takes precedence over the directory found at installation and the
#'   default places [install_libtorch()] installs into.
#'
#' @references
#' Lopez R, Regier J, Cole MB, Jordan MI, Yosef N (2018). Deep generative modeling for
#' single-cell transcriptomics. *Nature Methods* 15, 1053-1058.
#' \doi{10.1038/s41592-018-0229-2}
#'
#' Xu C, Lopez R, Mehlman E, Regier J, Jordan MI, Yosef N (2021). Probabilistic harmonization
#' and annotation of single-cell transcriptomics data with deep generative models. *Molecular
#' Systems Biology* 17, e9620. \doi{10.15252/msb.20209620}
#'
#' Boyeau P, Lopez R, Regier J, Gayoso A, Jordan MI, Yosef N (2019). Deep generative models for
#' detecting differential expression in single cells. *bioRxiv* 794289.
#' \doi{10.1101/794289}
#'
#' Svensson V, Gayoso A, Yosef N, Pachter L (2020). Interpretable factor models of single-cell
#' RNA-seq via variational autoencoders. *Bioinformatics* 36, 3418-3421.
#' \doi{10.1093/bioinformatics/btaa169}
#'
#' Gayoso A, Lopez R, Xing G, Boyeau P, et al. (2022). A Python library for probabilistic
#' analysis of single-cell omics data. *Nature Biotechnology* 40, 163-166.
#' \doi{10.1038/s41587-021-01206-w}
#'
#' @seealso The scvi-tools documentation, <https://docs.scvi-tools.org>, for the models'
#'   background.
"_PACKAGE"
