//! Per-gene Bayesian decision statistics from paired posterior samples of two groups'
//! normalized expression (scvi-tools' `get_bayes_factors`), computed gene by gene in parallel.
//!
//! Samples arrive gene-major (`genes x n`, sample i of group 1 paired with sample i of group 2).
//! Log-fold changes are evaluated in f32 with a vectorisable logarithm and accumulated in f64.

use crate::distributions::fastmath;
use rayon::prelude::*;

/// scvi-tools' guard in the Bayes factor's logarithms.
const EPS: f64 = 1e-8;
/// scvi-tools' reported LFC summaries use this fraction of the pseudocount.
const SUMMARY_PSEUDOCOUNT_FRACTION: f32 = 1e-3;

fn log_odds(p: f64) -> f64 {
    (p + EPS).ln() - (1.0 - p + EPS).ln()
}

/// Mean of each gene's samples.
pub fn gene_means(samples: &[f32], n: usize) -> Vec<f64> {
    samples.par_chunks(n).map(|s| s.iter().map(|&v| v as f64).sum::<f64>() / n as f64).collect()
}

/// Largest sample of each gene.
pub fn gene_max(samples: &[f32], n: usize) -> Vec<f64> {
    samples.par_chunks(n).map(|s| s.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64).collect()
}

fn lfc_into(out: &mut [f32], a: &[f32], b: &[f32], pseudocount: f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = (fastmath::ln(x + pseudocount) - fastmath::ln(y + pseudocount)) * std::f32::consts::LOG2_E;
    }
}

/// Vanilla mode: P(scale1 > scale2) per gene and its Bayes factor.
pub struct Vanilla {
    pub proba_m1: Vec<f64>,
    pub bayes_factor: Vec<f64>,
}

pub fn vanilla(s1: &[f32], s2: &[f32], n: usize) -> Vanilla {
    let proba_m1: Vec<f64> = s1
        .par_chunks(n)
        .zip(s2.par_chunks(n))
        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x > y).count() as f64 / n as f64)
        .collect();
    let bayes_factor = proba_m1.iter().map(|&p| log_odds(p)).collect();
    Vanilla { proba_m1, bayes_factor }
}

/// Mean LFC per gene with pseudocount `pc` (what `delta` is estimated from).
pub fn lfc_means(s1: &[f32], s2: &[f32], n: usize, pc: f32) -> Vec<f64> {
    s1.par_chunks(n)
        .zip(s2.par_chunks(n))
        .map_init(
            || vec![0f32; n],
            |buf, (a, b)| {
                lfc_into(buf, a, b, pc);
                buf.iter().map(|&v| v as f64).sum::<f64>() / n as f64
            },
        )
        .collect()
}

/// Change mode results, one entry per gene.
#[derive(Default)]
pub struct Change {
    pub proba_de: Vec<f64>,
    pub bayes_factor: Vec<f64>,
    pub lfc_mean: Vec<f64>,
    pub lfc_median: Vec<f64>,
    pub lfc_std: Vec<f64>,
    pub lfc_min: Vec<f64>,
    pub lfc_max: Vec<f64>,
}

/// `two_sided`: P(|lfc| > delta) ("two") instead of max(P(lfc >= delta), P(lfc < -delta)).
pub fn change(s1: &[f32], s2: &[f32], n: usize, pc: f32, delta: f64, two_sided: bool) -> Change {
    let per_gene: Vec<[f64; 6]> = s1
        .par_chunks(n)
        .zip(s2.par_chunks(n))
        .map_init(
            || vec![0f32; n],
            |buf, (a, b)| {
                lfc_into(buf, a, b, pc);
                let plus = buf.iter().filter(|&&v| v as f64 >= delta).count() as f64 / n as f64;
                let minus = buf.iter().filter(|&&v| (v as f64) < -delta).count() as f64 / n as f64;
                let p = if two_sided { plus + minus } else { plus.max(minus) };
                lfc_into(buf, a, b, pc * SUMMARY_PSEUDOCOUNT_FRACTION);
                let mean = buf.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                let var = buf.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                let (lo, hi) = buf.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                [p, mean, median(buf), var.sqrt(), lo as f64, hi as f64]
            },
        )
        .collect();
    let mut out = Change::default();
    for r in per_gene {
        out.proba_de.push(r[0]);
        out.bayes_factor.push(log_odds(r[0]));
        out.lfc_mean.push(r[1]);
        out.lfc_median.push(r[2]);
        out.lfc_std.push(r[3]);
        out.lfc_min.push(r[4]);
        out.lfc_max.push(r[5]);
    }
    out
}

/// numpy's median (mean of the two middle values for an even count); reorders `v`.
fn median(v: &mut [f32]) -> f64 {
    let n = v.len();
    let (lower, mid, _) = v.select_nth_unstable_by(n / 2, f32::total_cmp);
    let mid = *mid as f64;
    if n % 2 == 1 {
        mid
    } else {
        let below = lower.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        (below + mid) / 2.0
    }
}

/// scvi-tools' `estimate_pseudocounts_offset`: the 90th percentile of the per-gene maximal
/// sampled scale over genes that a group barely expresses (mean count below the threshold),
/// the larger of the two groups', divided by the number of genes, floored at 1e-10.
pub fn pseudocounts_offset(max1: &[f64], max2: &[f64], unexpressed1: &[bool], unexpressed2: &[bool]) -> f64 {
    let q90 = |max: &[f64], mask: &[bool]| {
        let mut v: Vec<f64> = max.iter().zip(mask).filter(|(_, &m)| m).map(|(&x, _)| x).collect();
        if v.is_empty() {
            return 1e-10;
        }
        v.sort_by(f64::total_cmp);
        // numpy's default (linear) quantile.
        let pos = 0.9 * (v.len() - 1) as f64;
        let (i, frac) = (pos.floor() as usize, pos - pos.floor());
        if i + 1 < v.len() { v[i] + frac * (v[i + 1] - v[i]) } else { v[i] }
    };
    let eps = q90(max1, unexpressed1).max(q90(max2, unexpressed2));
    (eps / max1.len() as f64).max(1e-10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_matches_numpy() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn change_mode_on_known_fold_change() {
        // Gene 0: group 1 is 4x group 2 in every sample (LFC 2); gene 1: equal.
        let n = 8;
        let s1: Vec<f32> = [vec![0.04f32; n], vec![0.01; n]].concat();
        let s2: Vec<f32> = [vec![0.01f32; n], vec![0.01; n]].concat();
        let c = change(&s1, &s2, n, 1e-10, 0.25, false);
        assert!((c.lfc_mean[0] - 2.0).abs() < 1e-4 && c.lfc_mean[1].abs() < 1e-4);
        assert_eq!(c.proba_de, vec![1.0, 0.0]);
        assert!(c.bayes_factor[0] > 18.0 && c.bayes_factor[1] < -18.0);
        let v = vanilla(&s1, &s2, n);
        assert_eq!(v.proba_m1, vec![1.0, 0.0]);
    }

    #[test]
    fn pseudocount_is_a_quantile_over_unexpressed_genes() {
        let max: Vec<f64> = (1..=11).map(|i| i as f64).collect();
        let all = vec![true; 11];
        let none = vec![false; 11];
        // 90th percentile of 1..=11 is 10; divided by 11 genes.
        assert!((pseudocounts_offset(&max, &max, &all, &none) - 10.0 / 11.0).abs() < 1e-12);
        assert_eq!(pseudocounts_offset(&max, &max, &none, &none), 1e-10);
    }
}
