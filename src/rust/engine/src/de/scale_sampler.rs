//! Posterior samples of the normalized expression (px_scale, library size 1) of a group of cells,
//! as scvi-tools' `scale_sampler` draws them for differential expression.
//!
//! scvi-tools draws `n_samples_overall / n_cells + 1` posterior samples for *every* cell of the
//! group and then keeps `n_samples_overall` of them, chosen uniformly with replacement. Only the
//! kept samples matter, so here the choice is made first and only the chosen (cell, draw) pairs
//! are decoded: the result has the same distribution with fewer decoder passes. The encoder runs
//! once per cell (q(z | x) is deterministic in evaluation mode); each chosen pair gets its own z.

use crate::data::MinibatchBuilder;
use crate::error::Result;
use crate::infer::to_vec;
use crate::module::Vae;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

/// Largest number of (cell, draw) pairs decoded at once: bounds the decoder's activations.
const DECODE_CHUNK: usize = 1024;

/// `n_samples_overall` x genes, row-major, in the order scvi-tools' random choice returns them.
pub fn sample_group_scales(
    vae: &Vae,
    builder: &mut MinibatchBuilder<'_>,
    cells: &[usize],
    transform_batch: Option<usize>,
    n_samples_overall: usize,
    batch_size: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    let n = cells.len();
    let g = vae.config.n_genes as usize;
    let per_cell = n_samples_overall / n + 1;
    // Row r of scvi-tools' (draw, cell) stack is draw r / n of cell r % n.
    let mut picks: Vec<(usize, usize, usize)> = (0..n_samples_overall)
        .map(|out_row| {
            let r = rng.gen_range(0..per_cell * n);
            (r % n, r / n, out_row)
        })
        .collect();
    picks.sort_unstable();

    // Distinct (cell position, draw) pairs in cell order, each with the output rows it fills.
    let mut pairs: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut last: Option<(usize, usize)> = None;
    for &(pos, draw, out_row) in &picks {
        if last == Some((pos, draw)) {
            pairs.last_mut().unwrap().1.push(out_row);
        } else {
            pairs.push((pos, vec![out_row]));
            last = Some((pos, draw));
        }
    }

    let mut out = vec![0f32; n_samples_overall * g];
    let mut start = 0;
    tch::no_grad(|| -> Result<()> {
        while start < pairs.len() {
            crate::runtime::check_interrupt()?;
            // Up to `batch_size` distinct cells, and all of their pairs.
            let mut chunk_cells: Vec<usize> = Vec::new();
            let mut end = start;
            while end < pairs.len() {
                let pos = pairs[end].0;
                if chunk_cells.last() != Some(&pos) {
                    if chunk_cells.len() == batch_size.max(1) {
                        break;
                    }
                    chunk_cells.push(pos);
                }
                end += 1;
            }
            let globals: Vec<usize> = chunk_cells.iter().map(|&p| cells[p]).collect();
            let mb = builder.build(&globals);
            let inf = vae.inference(&mb, false);
            let sd = inf.qz.q_var.sqrt();
            // Row of each pair inside this minibatch.
            let mut row_of = Vec::with_capacity(end - start);
            let mut row = 0usize;
            for i in start..end {
                if i > start && pairs[i].0 != pairs[i - 1].0 {
                    row += 1;
                }
                row_of.push(row as i64);
            }
            for (k, sub) in row_of.chunks(DECODE_CHUNK).enumerate() {
                let rows = Tensor::from_slice(sub).to_device(vae.device());
                let mean = inf.qz.q_mean.index_select(0, &rows);
                let z = &mean + sd.index_select(0, &rows) * mean.randn_like();
                let z = vae.latent_for_decoder(&z);
                let sub_mb = mb.covariate_rows(&rows);
                let batch = match transform_batch {
                    Some(b) => sub_mb.batch_index.full_like(b as i64),
                    None => sub_mb.batch_index.shallow_clone(),
                };
                let gen = vae.generative(&z, &sub_mb.log_library, &batch, &sub_mb, false);
                let scale = to_vec(&gen.px_scale);
                let first = start + k * DECODE_CHUNK;
                for (j, values) in scale.chunks(g).enumerate() {
                    for &out_row in &pairs[first + j].1 {
                        out[out_row * g..(out_row + 1) * g].copy_from_slice(values);
                    }
                }
            }
            start = end;
        }
        Ok(())
    })?;
    Ok(out)
}
