//! Queries on a trained model: latent representation and normalized expression. All run in
//! evaluation mode (BatchNorm running statistics, no dropout) without gradients, in minibatches.

use crate::data::{Counts, MinibatchBuilder};
use crate::error::{Error, Result};
use crate::module::Vae;
use tch::{Kind, Tensor};

fn check_batches(vae: &Vae, batch_codes: &[i32], n: usize) -> Result<()> {
    if batch_codes.len() != n {
        return Err(Error::InvalidInput("one batch code per cell is needed".into()));
    }
    if batch_codes.iter().any(|&b| b < 0 || b as i64 >= vae.config.n_batch) {
        return Err(Error::InvalidInput("a batch code is outside the model's batches".into()));
    }
    Ok(())
}

fn check_genes(vae: &Vae, counts: &Counts<'_>) -> Result<()> {
    if counts.n_genes() as i64 != vae.config.n_genes {
        return Err(Error::InvalidInput(format!(
            "the data have {} genes but the model was fitted on {}",
            counts.n_genes(),
            vae.config.n_genes
        )));
    }
    Ok(())
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
    let mut out = vec![0f32; t.numel()];
    t.copy_data(&mut out, t.numel());
    out
}

/// Cells x n_latent, row-major: the posterior mean (`give_mean`) or one posterior sample.
pub fn latent_representation(
    vae: &Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    give_mean: bool,
    batch_size: usize,
) -> Result<Vec<f32>> {
    check_genes(vae, &counts)?;
    check_batches(vae, batch_codes, counts.n_cells())?;
    let mut builder = MinibatchBuilder::new(counts, batch_codes, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    let mut out = Vec::with_capacity(counts.n_cells() * vae.config.n_latent as usize);
    tch::no_grad(|| {
        for chunk in cells.chunks(batch_size.max(1)) {
            let mb = builder.build(chunk);
            let inf = vae.inference(&mb, false);
            out.extend(to_vec(if give_mean { &inf.qz.q_mean } else { &inf.z }));
        }
    });
    Ok(out)
}

/// Cells x genes, row-major: expected expression px_scale * library_size, averaged over
/// `n_samples` posterior samples of z (scvi-tools samples z even for one sample). With
/// `transform_batch`, every cell is decoded as if it came from that batch.
pub fn normalized_expression(
    vae: &Vae,
    counts: Counts<'_>,
    batch_codes: &[i32],
    transform_batch: Option<usize>,
    library_size: f64,
    n_samples: usize,
    batch_size: usize,
) -> Result<Vec<f32>> {
    check_genes(vae, &counts)?;
    check_batches(vae, batch_codes, counts.n_cells())?;
    if let Some(b) = transform_batch {
        if b as i64 >= vae.config.n_batch {
            return Err(Error::InvalidInput("transform_batch is outside the model's batches".into()));
        }
    }
    let n_samples = n_samples.max(1);
    let mut builder = MinibatchBuilder::new(counts, batch_codes, vae.device());
    let cells: Vec<usize> = (0..counts.n_cells()).collect();
    let mut out = Vec::with_capacity(counts.n_cells() * counts.n_genes());
    tch::no_grad(|| {
        for chunk in cells.chunks(batch_size.max(1)) {
            let mb = builder.build(chunk);
            let decode_batch = match transform_batch {
                Some(b) => mb.batch_index.full_like(b as i64),
                None => mb.batch_index.shallow_clone(),
            };
            let mut acc = Tensor::zeros([chunk.len() as i64, vae.config.n_genes], (Kind::Float, vae.device()));
            for _ in 0..n_samples {
                let inf = vae.inference(&mb, false);
                let gen = vae.generative(&inf.z, &inf.library, &decode_batch, false);
                acc += gen.px_scale;
            }
            out.extend(to_vec(&(acc * (library_size / n_samples as f64))));
        }
    });
    Ok(out)
}
