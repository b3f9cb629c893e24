//! Where cells come from: counts in memory (a borrowed CSR matrix) or on disk (an .h5ad file
//! read in blocks), behind one interface for training and queries.

use super::disk::CellSummaries;
use super::{Counts, Covariates, DiskCounts, Minibatch, MinibatchBuilder};
use crate::error::Result;
use tch::Device;

/// Where training and queries read cells from.
#[derive(Clone, Copy)]
pub enum CountSource<'a> {
    /// Counts in memory: minibatches of cells in a shuffled order.
    Memory(Counts<'a>),
    /// Counts on disk with their per-cell summaries: minibatches from shuffled blocks of cells,
    /// read on a background thread.
    Disk(&'a DiskCounts, &'a CellSummaries),
}

impl<'a> CountSource<'a> {
    pub fn n_cells(&self) -> usize {
        match self {
            CountSource::Memory(c) => c.n_cells(),
            CountSource::Disk(d, _) => d.n_cells(),
        }
    }

    pub fn n_genes(&self) -> usize {
        match self {
            CountSource::Memory(c) => c.n_genes(),
            CountSource::Disk(d, _) => d.n_genes(),
        }
    }

    /// The minibatch builder of these cells.
    pub fn builder<'b>(&self, batch_codes: &'b [i32], cov: &Covariates<'b>, device: Device) -> MinibatchBuilder<'b>
    where
        'a: 'b,
    {
        match *self {
            CountSource::Memory(counts) => MinibatchBuilder::new(counts, batch_codes, cov, device),
            CountSource::Disk(d, s) => MinibatchBuilder::from_summaries(d.n_genes(), s, batch_codes, cov, device),
        }
    }

    /// Total counts of every cell.
    pub fn library_sizes(&self) -> Vec<f64> {
        match self {
            CountSource::Memory(c) => c.library_sizes(),
            CountSource::Disk(_, s) => s.library.iter().map(|&l| l as f64).collect(),
        }
    }

    pub fn first_empty_cell(&self) -> Option<usize> {
        match self {
            CountSource::Memory(c) => c.empty_cells().first().copied(),
            CountSource::Disk(_, s) => s.library.iter().position(|&l| l <= 0.0),
        }
    }

    /// The minibatch of `cells` (random access: scANVI's labelled loader).
    pub fn build(&self, builder: &mut MinibatchBuilder<'_>, cells: &[usize]) -> Result<Minibatch> {
        match self {
            CountSource::Memory(_) => Ok(builder.build(cells)),
            CountSource::Disk(d, _) => Ok(builder.build_block(&d.read_cells(cells)?)),
        }
    }

    /// Consecutive minibatches of `cells` (no shuffling; on disk, in the file's order).
    /// `f` gets each minibatch and its cells; an error from `f` ends the pass.
    pub fn for_each(&self, builder: &mut MinibatchBuilder<'_>, cells: &[usize], batch_size: usize, mut f: impl FnMut(&Minibatch, &[usize]) -> Result<()>) -> Result<()> {
        let batch_size = batch_size.max(1);
        match self {
            CountSource::Memory(_) => {
                for chunk in cells.chunks(batch_size) {
                    let mb = builder.build(chunk);
                    f(&mb, chunk)?;
                }
                Ok(())
            }
            CountSource::Disk(d, _) => {
                let all = cells.len() == d.n_cells() && cells.iter().enumerate().all(|(i, &c)| i == c);
                let mask = (!all).then(|| membership(d.n_cells(), cells));
                d.for_each_sequential(mask.as_deref(), batch_size, |block| {
                    let mb = builder.build_block(block);
                    f(&mb, &block.cells)
                })
            }
        }
    }
}

pub fn membership(n: usize, cells: &[usize]) -> Vec<bool> {
    let mut mask = vec![false; n];
    for &c in cells {
        mask[c] = true;
    }
    mask
}


impl<'a> From<Counts<'a>> for CountSource<'a> {
    fn from(counts: Counts<'a>) -> Self {
        CountSource::Memory(counts)
    }
}
