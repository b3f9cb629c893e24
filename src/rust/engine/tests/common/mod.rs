//! The bundled PBMC 3k (real counts, 2,000 genes), shared by the integration tests.
#![allow(dead_code)]

use scvir_engine::data::Counts;
use scvir_engine::io::h5ad;

pub fn pbmc() -> h5ad::H5ad {
    // The package's bundled file; SCVIR_TEST_H5AD names it when the crates are built elsewhere.
    let path = std::env::var("SCVIR_TEST_H5AD")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../inst/extdata/pbmc3k_hvg2000.h5ad").into());
    h5ad::read(&path, None).expect("bundled PBMC 3k")
}

/// All cells, as a CSR view over the file's buffers.
pub fn counts(d: &h5ad::H5ad) -> Counts<'_> {
    let c = &d.counts;
    Counts::from_csr(c.n_cells, c.n_genes, &c.indptr, &c.indices, &c.data).unwrap()
}
