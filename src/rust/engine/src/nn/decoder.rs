//! scVI decoder: FC layers (no dropout) on [z, covariates], then softmax gene proportions,
//! zero-inflation logits and, for gene-cell dispersion, a per-cell dispersion head.

use super::fc_layers::{FcLayers, FcLayersConfig};
use super::init;
use tch::{nn, Kind, Tensor};

pub struct DecoderScvi {
    kind: DecoderKind,
}

enum DecoderKind {
    /// Hidden FC layers, then linear heads.
    Deep(DeepDecoder),
    /// LDVAE: gene proportions and zero-inflation logits are each one bias-free linear layer
    /// (with batch norm) of [z, covariates], so the latent factors have gene loadings.
    Linear { factor_regressor: FcLayers, px_dropout: FcLayers },
}

struct DeepDecoder {
    fc: FcLayers,
    /// softplus instead of softmax for the scale (with size factors, as scvi-tools).
    softplus_scale: bool,
    scale: nn::Linear,
    dropout: Option<nn::Linear>,
    r: Option<nn::Linear>,
}

pub struct DecoderOutput {
    /// Expected gene proportions: their logits (softmax over genes), or the proportions
    /// themselves (a softplus scale).
    pub px_scale: Scale,
    /// Zero-inflation logits (ZINB only).
    pub px_dropout: Option<Head>,
    /// Log dispersion per cell and gene (gene-cell dispersion only).
    pub px_r: Option<Tensor>,
}

/// The decoder's gene proportions, or the logits whose softmax they are. Training hands the
/// logits to the fused likelihood; everything else asks for the proportions.
pub enum Scale {
    Logits(Head),
    Proportions(Tensor),
}

impl Scale {
    pub fn proportions(self) -> Tensor {
        match self {
            Scale::Logits(h) => h.tensor().softmax(-1, Kind::Float),
            Scale::Proportions(p) => p,
        }
    }
}

/// A cells x genes output: computed, or a plain linear head's input and weights, not yet
/// applied. Training's fused likelihood takes the head's gradient in closed form from the latter
/// (`distributions::fused::Target::Linear`) instead of through a cells x genes product.
pub enum Head {
    Tensor(Tensor),
    Linear { input: Tensor, weight: Tensor, bias: Option<Tensor> },
}

impl Head {
    fn linear(input: &Tensor, layer: &nn::Linear) -> Head {
        Head::Linear { input: input.shallow_clone(), weight: layer.ws.shallow_clone(), bias: layer.bs.as_ref().map(Tensor::shallow_clone) }
    }

    /// The output, tracked by autograd (where autograd records operations).
    pub fn tensor(self) -> Tensor {
        match self {
            Head::Tensor(t) => t,
            Head::Linear { .. } if !super::sparse_input::grad_mode() => self.value(),
            Head::Linear { input, weight, bias } => input.linear(&weight, bias.as_ref()),
        }
    }

    /// The output's value, outside autograd: the engine's own product where it runs
    /// (`crate::gemm`), so that training, validation and queries form the same logits.
    pub fn value(&self) -> Tensor {
        match self {
            Head::Tensor(t) => t.detach(),
            Head::Linear { input, weight, bias } => crate::gemm::linear(input, weight, bias.as_ref())
                .unwrap_or_else(|| tch::no_grad(|| input.linear(weight, bias.as_ref()))),
        }
    }
}

impl DecoderScvi {
    pub fn new(path: nn::Path, fc: &FcLayersConfig, n_genes: i64, zero_inflated: bool, gene_cell_r: bool, softplus_scale: bool) -> Self {
        DecoderScvi {
            kind: DecoderKind::Deep(DeepDecoder {
                fc: FcLayers::new(&path / "px_decoder", fc),
                softplus_scale,
                scale: init::linear(&path / "px_scale_decoder", fc.n_out, n_genes, true),
                dropout: zero_inflated.then(|| init::linear(&path / "px_dropout_decoder", fc.n_out, n_genes, true)),
                r: gene_cell_r.then(|| init::linear(&path / "px_r_decoder", fc.n_out, n_genes, true)),
            }),
        }
    }

    /// LDVAE's decoder (scvi-tools' `LinearDecoderSCVI`): `fc` describes the input ([z,
    /// continuous covariates] and categorical covariates) and normalisation; its depth, hidden
    /// width, activation, bias and dropout are fixed here.
    pub fn new_linear(path: nn::Path, fc: &FcLayersConfig, n_genes: i64) -> Self {
        let linear = FcLayersConfig { n_out: n_genes, n_layers: 1, dropout_rate: 0.0, use_activation: false, bias: false, ..fc.clone() };
        DecoderScvi {
            kind: DecoderKind::Linear {
                factor_regressor: FcLayers::new(&path / "factor_regressor", &linear),
                px_dropout: FcLayers::new(&path / "px_dropout_decoder", &linear),
            },
        }
    }

    /// The hidden layers and the scale and zero-inflation heads of a deep decoder with softmax
    /// proportions and no per-cell dispersion head, for the hand-written training step
    /// (`module::vae::closed_form`); None otherwise.
    pub(crate) fn parts(&self) -> Option<(super::fc_layers::StackParts<'_>, &nn::Linear, Option<&nn::Linear>)> {
        match &self.kind {
            DecoderKind::Deep(d) if !d.softplus_scale && d.r.is_none() => Some((d.fc.stack()?, &d.scale, d.dropout.as_ref())),
            _ => None,
        }
    }

    /// The covariate layout of the FC layers' weights.
    pub fn fc_layouts(&self) -> Vec<super::fc_layers::BlockLayout> {
        match &self.kind {
            DecoderKind::Deep(d) => d.fc.layouts().to_vec(),
            DecoderKind::Linear { factor_regressor, px_dropout } => {
                factor_regressor.layouts().iter().chain(px_dropout.layouts()).cloned().collect()
            }
        }
    }

    pub fn forward(&self, z: &Tensor, cats: &[&Tensor], train: bool) -> DecoderOutput {
        match &self.kind {
            DecoderKind::Deep(d) => {
                let h = d.fc.forward(z, cats, train);
                DecoderOutput {
                    px_scale: if d.softplus_scale { Scale::Proportions(h.apply(&d.scale).softplus()) } else { Scale::Logits(Head::linear(&h, &d.scale)) },
                    px_dropout: d.dropout.as_ref().map(|l| Head::linear(&h, l)),
                    px_r: d.r.as_ref().map(|l| h.apply(l)),
                }
            }
            DecoderKind::Linear { factor_regressor, px_dropout } => DecoderOutput {
                px_scale: Scale::Logits(Head::Tensor(factor_regressor.forward(z, cats, train))),
                px_dropout: Some(Head::Tensor(px_dropout.forward(z, cats, train))),
                px_r: None,
            },
        }
    }
}
