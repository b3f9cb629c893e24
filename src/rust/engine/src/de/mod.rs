//! Differential expression between two groups of cells (scvi-tools' `differential_expression`,
//! Lopez et al. 2018 "vanilla" and Boyeau et al. 2019 "change" modes).
//!
//! One comparison at a time: posterior samples of both groups' normalized expression are drawn
//! (`scale_sampler`), paired, and summarised per gene (`bayes`). Memory is bounded by the
//! samples of one comparison, 2 x n_samples_overall x n_genes f32 (80 MB for 5,000 samples of
//! 2,000 genes) plus their gene-major copy, whatever the number of cells or groups.

pub mod bayes;
pub mod count_stats;
pub mod delta;
pub mod importance;
pub mod scale_sampler;

use crate::data::{Counts, Covariates, MinibatchBuilder};
use crate::error::{Error, Result};
use crate::module::Vae;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Vanilla,
    Change,
}

/// Which batches a group's cells are decoded in.
#[derive(Clone, Debug)]
pub enum BatchPolicy {
    /// Each cell's own batch (`batch_correction = FALSE`).
    Observed,
    /// Every listed batch in turn, `n_samples_overall / len` samples each.
    Transform(Vec<usize>),
}

#[derive(Clone, Debug)]
pub struct DeConfig {
    pub mode: Mode,
    /// `None`: estimated from the LFC distribution (change mode).
    pub delta: Option<f64>,
    /// `None`: estimated from barely expressed genes (change mode).
    pub pseudocounts: Option<f64>,
    pub n_samples_overall: usize,
    /// Group mean count below which a gene counts as unexpressed for the pseudocount.
    pub threshold_counts: f64,
    /// "two" test mode: P(|LFC| > delta) instead of the larger one-sided probability.
    pub two_sided: bool,
    pub batch_size: usize,
    pub seed: u64,
    pub n_threads: usize,
    /// lvm-DE: importance-weighted samples (`weights = "importance"`); None: uniform.
    pub importance: Option<importance::ImportanceConfig>,
}

/// Per-gene results of one comparison; vectors have one entry per gene (in the model's order).
#[derive(Default)]
pub struct DeResult {
    /// Column name and values, in scvi-tools' column order.
    pub columns: Vec<(String, Vec<f64>)>,
    /// The delta and pseudocount used (change mode).
    pub delta: Option<f64>,
    pub pseudocounts: Option<f64>,
}

/// Both groups' samples, gene-major, paired sample by sample, and their unpaired means.
struct PairedScales {
    s1: Vec<f32>,
    s2: Vec<f32>,
    n: usize,
    scale1: Vec<f64>,
    scale2: Vec<f64>,
}

fn transpose(rows: &[f32], n_rows: usize, n_cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.len()];
    const B: usize = 64;
    for r0 in (0..n_rows).step_by(B) {
        for c0 in (0..n_cols).step_by(B) {
            for r in r0..(r0 + B).min(n_rows) {
                for c in c0..(c0 + B).min(n_cols) {
                    out[c * n_rows + r] = rows[r * n_cols + c];
                }
            }
        }
    }
    out
}

fn group_samples(
    vae: &Vae,
    builder: &mut MinibatchBuilder<'_>,
    cells: &[usize],
    policy: &BatchPolicy,
    cfg: &DeConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    let sample = |builder: &mut MinibatchBuilder<'_>, rng: &mut ChaCha8Rng, batch: Option<usize>, n: usize| match &cfg.importance {
        None => scale_sampler::sample_group_scales(vae, builder, cells, batch, n, cfg.batch_size, rng),
        Some(iw) => importance::sample_group_weighted(vae, builder, cells, batch, n, cfg.batch_size, rng, iw, importance::SampleLibrary::Constant(1.0))
            .map(|(rows, _)| rows),
    };
    match policy {
        BatchPolicy::Observed => sample(builder, rng, None, cfg.n_samples_overall),
        BatchPolicy::Transform(batches) => {
            // scvi-tools: int(n_samples_overall / n_batches) per batch, at least 2.
            let per_batch = match cfg.n_samples_overall / batches.len() {
                0 => 2,
                k => k,
            };
            let mut all = Vec::new();
            for &b in batches {
                all.extend(sample(builder, rng, Some(b), per_batch)?);
            }
            Ok(all)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn paired_scales(
    vae: &Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    cells: [&[usize]; 2],
    policies: [&BatchPolicy; 2],
    cfg: &DeConfig,
) -> Result<PairedScales> {
    let g = vae.config.n_genes as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    // One builder for both groups: its per-cell constants cost a pass over all nonzeros.
    let mut builder = MinibatchBuilder::new(counts, batch_codes, cov, vae.device());
    let r1 = group_samples(vae, &mut builder, cells[0], policies[0], cfg, &mut rng)?;
    let r2 = group_samples(vae, &mut builder, cells[1], policies[1], cfg, &mut rng)?;
    let (n1, n2) = (r1.len() / g, r2.len() / g);
    let s1 = transpose(&r1, n1, g);
    let s2 = transpose(&r2, n2, g);
    drop((r1, r2));
    let scale1 = bayes::gene_means(&s1, n1);
    let scale2 = bayes::gene_means(&s2, n2);
    // Samples are compared element-wise. With the same batches on both sides the blocks line up
    // batch by batch; otherwise the longer side is cut to the shorter (scvi-tools would fail).
    let n = n1.min(n2);
    let cut = |s: Vec<f32>, len: usize| if len == n { s } else { s.chunks(len).flat_map(|c| c[..n].to_vec()).collect() };
    Ok(PairedScales { s1: cut(s1, n1), s2: cut(s2, n2), n, scale1, scale2 })
}

/// Runs one comparison, group 1 (`cells1`) against group 2 (`cells2`).
#[allow(clippy::too_many_arguments)]
pub fn compare(
    vae: &Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    cov: &Covariates<'_>,
    cells1: &[usize],
    cells2: &[usize],
    batches1: &BatchPolicy,
    batches2: &BatchPolicy,
    cfg: &DeConfig,
) -> Result<DeResult> {
    crate::infer::check_inputs(vae, &counts.into(), batch_codes, cov)?;
    if cfg.importance.is_some() && cov.latent.is_some() {
        return Err(Error::InvalidInput(
            "importance weights (lvm-DE) need the counts, which a minified model does not keep; use weights = \"uniform\" or the full model".into(),
        ));
    }
    if cells1.is_empty() || cells2.is_empty() {
        return Err(Error::InvalidInput("a group of the comparison has no cells".into()));
    }
    if cells1.iter().chain(cells2).any(|&c| c >= counts.n_cells()) {
        return Err(Error::InvalidInput("a cell index is outside the data".into()));
    }
    for p in [batches1, batches2] {
        if let BatchPolicy::Transform(b) = p {
            if b.is_empty() || b.iter().any(|&x| x as i64 >= vae.config.n_batch) {
                return Err(Error::InvalidInput("batch ids must name the model's batches".into()));
            }
        }
    }
    if cfg.n_samples_overall == 0 {
        return Err(Error::InvalidInput("n_samples_overall must be positive".into()));
    }
    // Two groups' posterior scale samples, n_samples_overall x genes each, and their statistics.
    crate::runtime::ensure_memory(
        4 * cfg.n_samples_overall as u128 * vae.config.n_genes as u128,
        8,
        "differential expression with this n_samples_overall",
    )?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.n_threads.max(1))
        .build()
        .map_err(|e| Error::InvalidInput(format!("thread pool: {e}")))?;
    let paired = paired_scales(vae, counts, batch_codes, cov, [cells1, cells2], [batches1, batches2], cfg)?;
    let stats1 = count_stats::group_count_stats(&counts, cells1);
    let stats2 = count_stats::group_count_stats(&counts, cells2);
    let PairedScales { s1, s2, n, scale1, scale2 } = paired;
    let mut res = DeResult::default();
    let mut col = |name: &str, v: Vec<f64>| res.columns.push((name.to_string(), v));
    let g = scale1.len();
    match cfg.mode {
        Mode::Vanilla => {
            let v = pool.install(|| bayes::vanilla(&s1, &s2, n));
            let proba_m2 = v.proba_m1.iter().map(|p| 1.0 - p).collect();
            col("proba_m1", v.proba_m1);
            col("proba_m2", proba_m2);
            col("bayes_factor", v.bayes_factor);
            col("scale1", scale1);
            col("scale2", scale2);
        }
        Mode::Change => {
            let pc = match cfg.pseudocounts {
                Some(p) => p,
                None => {
                    let (max1, max2) = pool.install(|| (bayes::gene_max(&s1, n), bayes::gene_max(&s2, n)));
                    let low = |m: &[f64]| m.iter().map(|&x| x < cfg.threshold_counts).collect::<Vec<bool>>();
                    bayes::pseudocounts_offset(&max1, &max2, &low(&stats1.raw_mean), &low(&stats2.raw_mean))
                }
            };
            let delta = match cfg.delta {
                Some(d) => d,
                None => delta::estimate_delta(&pool.install(|| bayes::lfc_means(&s1, &s2, n, pc as f32))),
            };
            let c = pool.install(|| bayes::change(&s1, &s2, n, pc as f32, delta, cfg.two_sided));
            col("proba_de", c.proba_de.clone());
            col("proba_not_de", c.proba_de.iter().map(|p| 1.0 - p).collect());
            col("bayes_factor", c.bayes_factor);
            col("scale1", scale1);
            col("scale2", scale2);
            col("pseudocounts", vec![pc; g]);
            col("delta", vec![delta; g]);
            col("lfc_mean", c.lfc_mean);
            col("lfc_median", c.lfc_median);
            col("lfc_std", c.lfc_std);
            col("lfc_min", c.lfc_min);
            col("lfc_max", c.lfc_max);
            res.delta = Some(delta);
            res.pseudocounts = Some(pc);
        }
    }
    res.columns.push(("raw_mean1".into(), stats1.raw_mean));
    res.columns.push(("raw_mean2".into(), stats2.raw_mean));
    res.columns.push(("non_zeros_proportion1".into(), stats1.non_zeros_proportion));
    res.columns.push(("non_zeros_proportion2".into(), stats2.non_zeros_proportion));
    res.columns.push(("raw_normalized_mean1".into(), stats1.raw_normalized_mean));
    res.columns.push(("raw_normalized_mean2".into(), stats2.raw_normalized_mean));
    Ok(res)
}
