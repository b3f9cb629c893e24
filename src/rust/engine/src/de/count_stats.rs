//! Per-gene statistics of the raw counts of a group of cells (scvi-tools'
//! `scrna_raw_counts_properties`): mean count, fraction of cells with a nonzero count, and mean
//! of the counts scaled to 10,000 per cell.

use crate::data::Counts;

pub struct GroupCountStats {
    pub raw_mean: Vec<f64>,
    pub non_zeros_proportion: Vec<f64>,
    pub raw_normalized_mean: Vec<f64>,
}

pub fn group_count_stats(counts: &Counts<'_>, cells: &[usize]) -> GroupCountStats {
    let g = counts.n_genes();
    let mut sum = vec![0.0; g];
    let mut nonzero = vec![0.0; g];
    let mut normalized = vec![0.0; g];
    for &c in cells {
        let (genes, vals) = counts.cell(c);
        let scale = 1e4 / vals.iter().sum::<f64>();
        for (&gene, &v) in genes.iter().zip(vals) {
            if v != 0.0 {
                let gi = gene as usize;
                sum[gi] += v;
                nonzero[gi] += 1.0;
                normalized[gi] += v * scale;
            }
        }
    }
    let n = cells.len().max(1) as f64;
    let mean = |v: Vec<f64>| v.into_iter().map(|s| s / n).collect();
    GroupCountStats { raw_mean: mean(sum), non_zeros_proportion: mean(nonzero), raw_normalized_mean: mean(normalized) }
}
