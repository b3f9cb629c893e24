//! scVI decoder: FC layers (no dropout) on [z, covariates], then softmax gene proportions,
//! zero-inflation logits and, for gene-cell dispersion, a per-cell dispersion head.

use super::fc_layers::{FcLayers, FcLayersConfig};
use super::init;
use tch::{nn, Kind, Tensor};

pub struct DecoderScvi {
    fc: FcLayers,
    /// softplus instead of softmax for the scale (with size factors, as scvi-tools).
    softplus_scale: bool,
    scale: nn::Linear,
    dropout: Option<nn::Linear>,
    r: Option<nn::Linear>,
}

pub struct DecoderOutput {
    /// Expected gene proportions (rows sum to 1).
    pub px_scale: Tensor,
    /// Zero-inflation logits (ZINB only).
    pub px_dropout: Option<Tensor>,
    /// Log dispersion per cell and gene (gene-cell dispersion only).
    pub px_r: Option<Tensor>,
}

impl DecoderScvi {
    pub fn new(path: nn::Path, fc: &FcLayersConfig, n_genes: i64, zero_inflated: bool, gene_cell_r: bool, softplus_scale: bool) -> Self {
        DecoderScvi {
            fc: FcLayers::new(&path / "px_decoder", fc),
            softplus_scale,
            scale: init::linear(&path / "px_scale_decoder", fc.n_out, n_genes, true),
            dropout: zero_inflated.then(|| init::linear(&path / "px_dropout_decoder", fc.n_out, n_genes, true)),
            r: gene_cell_r.then(|| init::linear(&path / "px_r_decoder", fc.n_out, n_genes, true)),
        }
    }

    pub fn forward(&self, z: &Tensor, cats: &[&Tensor], train: bool) -> DecoderOutput {
        let h = self.fc.forward(z, cats, train);
        DecoderOutput {
            px_scale: if self.softplus_scale { h.apply(&self.scale).softplus() } else { h.apply(&self.scale).softmax(-1, Kind::Float) },
            px_dropout: self.dropout.as_ref().map(|l| h.apply(l)),
            px_r: self.r.as_ref().map(|l| h.apply(l)),
        }
    }
}
