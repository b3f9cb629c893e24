//! A stack of Linear -> BatchNorm -> LayerNorm -> ReLU -> Dropout blocks. Categorical covariates
//! enter as one-hot columns appended to the input of the first block, and of later blocks too when
//! `inject_covariates` (scvi-tools' `FCLayers`). Covariates with a single category are dropped.
//! LDVAE's linear decoder is one such block without bias and without activation.

use super::init;
use super::sparse_input::{self, SparseInput};
use tch::{nn, nn::ModuleT, Tensor};

#[derive(Clone, Debug)]
pub struct FcLayersConfig {
    pub n_in: i64,
    pub n_out: i64,
    /// Number of categories of each categorical covariate (one-hot width).
    pub n_cat_list: Vec<i64>,
    pub n_layers: i64,
    pub n_hidden: i64,
    pub dropout_rate: f64,
    pub use_batch_norm: bool,
    pub use_layer_norm: bool,
    pub inject_covariates: bool,
    /// ReLU after each block (false for LDVAE's linear decoder).
    pub use_activation: bool,
    /// Bias in the Linear layers (false for LDVAE's linear decoder).
    pub bias: bool,
    /// BatchNorm's running-statistics momentum: scvi-tools' 0.01, or 0 to keep the statistics
    /// as they are (scArches' frozen BatchNorm).
    pub batch_norm_momentum: f64,
    /// Blocks from this index on have frozen weights outside their covariate columns (a query
    /// model of reference mapping): in training their product is split so that no gradient of
    /// the frozen columns is computed.
    pub frozen_base_from: Option<usize>,
}

impl FcLayersConfig {
    /// A plain stack: ReLU, bias, no covariates, no normalisation, no dropout; callers override
    /// the rest with struct update syntax.
    pub fn plain(n_in: i64, n_out: i64, n_layers: i64, n_hidden: i64) -> Self {
        FcLayersConfig {
            n_in,
            n_out,
            n_cat_list: vec![],
            n_layers,
            n_hidden,
            dropout_rate: 0.0,
            use_batch_norm: false,
            use_layer_norm: false,
            inject_covariates: true,
            use_activation: true,
            bias: true,
            batch_norm_momentum: init::BATCH_NORM_MOMENTUM,
            frozen_base_from: None,
        }
    }
}

/// Where the covariate columns of one block's weight are: `base` input columns (the previous
/// layer or the data), then one segment per covariate of `widths[k]` columns (0 for a covariate
/// with a single category, which is dropped). Reference mapping uses it to extend a weight with
/// the columns of new categories.
#[derive(Clone, Debug)]
pub struct BlockLayout {
    /// Full name of the Linear weight in the model's variable store.
    pub weight: String,
    /// Full name of its bias, if any.
    pub bias: Option<String>,
    /// Block index within the stack (0: the first layer).
    pub index: usize,
    pub base: i64,
    /// Covariate segments, in input order; empty when the block takes no covariates.
    pub widths: Vec<i64>,
}

/// LayerNorm's epsilon (torch's default, which scvi-tools keeps).
pub(crate) const LAYER_NORM_EPS: f64 = 1e-5;

struct Block {
    linear: nn::Linear,
    batch_norm: Option<nn::BatchNorm>,
    batch_norm_momentum: f64,
    layer_norm_width: Option<i64>,
    takes_covariates: bool,
    frozen_base: bool,
}

/// A stack's parameters, block by block (see [`FcLayers::stack`]).
pub(crate) struct StackParts<'a> {
    pub blocks: Vec<BlockParts<'a>>,
    pub dropout_rate: f64,
    /// One-hot widths of the covariates appended to a block's input (0: a dropped covariate).
    pub cat_widths: Vec<i64>,
}

/// One Linear -> [BatchNorm] -> [LayerNorm] -> ReLU -> [Dropout] block's parameters.
pub(crate) struct BlockParts<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub batch_norm: Option<BatchNormParts<'a>>,
    /// A LayerNorm over the block's outputs, without affine parameters (as scvi-tools'), with
    /// [`LAYER_NORM_EPS`].
    pub layer_norm: bool,
    /// Whether the covariates' one-hot columns follow the block's input.
    pub takes_covariates: bool,
}

/// A BatchNorm layer's affine parameters, running statistics and settings.
pub(crate) struct BatchNormParts<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub momentum: f64,
    pub eps: f64,
}

pub struct FcLayers {
    blocks: Vec<Block>,
    dropout_rate: f64,
    use_activation: bool,
    /// Widths of the covariates actually injected (single-category ones removed).
    n_cat_list: Vec<i64>,
    layouts: Vec<BlockLayout>,
}

impl FcLayers {
    pub fn new(path: nn::Path, cfg: &FcLayersConfig) -> Self {
        let n_cat_list: Vec<i64> = cfg.n_cat_list.iter().map(|&n| if n > 1 { n } else { 0 }).collect();
        let cat_width: i64 = n_cat_list.iter().sum();
        let mut dims = vec![cfg.n_in];
        dims.extend(std::iter::repeat(cfg.n_hidden).take((cfg.n_layers - 1).max(0) as usize));
        dims.push(cfg.n_out);
        let mut layouts = Vec::new();
        let blocks = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let takes_covariates = i == 0 || cfg.inject_covariates;
                let p = &path / format!("layer_{i}");
                let n_in = w[0] + if takes_covariates { cat_width } else { 0 };
                let lp = &p / "linear";
                layouts.push(BlockLayout {
                    weight: lp.path("weight"),
                    bias: cfg.bias.then(|| lp.path("bias")),
                    index: i,
                    base: w[0],
                    widths: if takes_covariates { n_cat_list.clone() } else { vec![] },
                });
                Block {
                    linear: init::linear(lp, n_in, w[1], cfg.bias),
                    batch_norm: cfg.use_batch_norm.then(|| init::batch_norm(&p / "batch_norm", w[1], cfg.batch_norm_momentum)),
                    batch_norm_momentum: cfg.batch_norm_momentum,
                    layer_norm_width: cfg.use_layer_norm.then_some(w[1]),
                    takes_covariates,
                    frozen_base: cfg.frozen_base_from.is_some_and(|k| i >= k),
                }
            })
            .collect();
        FcLayers { blocks, dropout_rate: cfg.dropout_rate, use_activation: cfg.use_activation, n_cat_list, layouts }
    }

    /// The covariate layout of each block's weight.
    pub fn layouts(&self) -> &[BlockLayout] {
        &self.layouts
    }

    /// The stack's parameters when its blocks are trainable Linear -> [BatchNorm] -> [LayerNorm]
    /// -> ReLU -> [Dropout] blocks, for a training step written out by hand
    /// (`module::vae::closed_form`); None for any other stack.
    pub(crate) fn stack(&self) -> Option<StackParts<'_>> {
        if !self.use_activation || self.blocks.is_empty() {
            return None;
        }
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                if b.frozen_base || b.layer_norm_width.is_some_and(|w| Some(w) != b.linear.ws.size().first().copied()) {
                    return None;
                }
                let batch_norm = match &b.batch_norm {
                    Some(bn) => Some(BatchNormParts {
                        weight: bn.ws.as_ref()?,
                        bias: bn.bs.as_ref()?,
                        running_mean: &bn.running_mean,
                        running_var: &bn.running_var,
                        momentum: b.batch_norm_momentum,
                        eps: init::BATCH_NORM_EPS,
                    }),
                    None => None,
                };
                Some(BlockParts {
                    weight: &b.linear.ws,
                    bias: b.linear.bs.as_ref(),
                    batch_norm,
                    layer_norm: b.layer_norm_width.is_some(),
                    takes_covariates: b.takes_covariates,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(StackParts { blocks, dropout_rate: self.dropout_rate, cat_widths: self.n_cat_list.clone() })
    }

    /// `cats` holds one tensor of category codes (i64, per cell) for each covariate.
    pub fn forward(&self, x: &Tensor, cats: &[&Tensor], train: bool) -> Tensor {
        self.forward_sparse(x, None, cats, train)
    }

    /// [`forward`](Self::forward) with the input also given as nonzeros (`x` is then their dense
    /// form): the first block's product runs over the nonzeros (see `sparse_input`), with its
    /// covariates' one-hot columns added as a product, unless its weight is frozen and it takes
    /// no covariates.
    pub fn forward_sparse(&self, x: &Tensor, sparse: Option<SparseInput<'_>>, cats: &[&Tensor], train: bool) -> Tensor {
        let one_hots: Vec<Tensor> = self
            .n_cat_list
            .iter()
            .zip(cats)
            .filter(|(&n, _)| n > 0)
            .map(|(&n, c)| crate::data::minibatch::one_hot(c, n))
            .collect();
        let mut h = x.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let covariates = block.takes_covariates && !one_hots.is_empty();
            let product = match sparse {
                Some(s) if i == 0 && !covariates && !block.frozen_base => sparse_input::linear(s, &block.linear.ws),
                // The genes' columns over the nonzeros and the covariates' one-hot columns as a
                // product; a frozen base's genes get no gradient, as below.
                Some(s) if i == 0 && covariates => sparse_input::linear_with_covariates(s, &block.linear.ws, &Tensor::cat(&one_hots, 1), block.frozen_base),
                _ => None,
            };
            let mut y = if let Some(p) = product {
                match &block.linear.bs {
                    Some(b) => p + b,
                    None => p,
                }
            } else if covariates && block.frozen_base && train {
                // [h, one-hots] W^T as h W_base^T + one-hots W_cov^T, the frozen base detached:
                // the same product without the gradient of the frozen columns.
                let cats = Tensor::cat(&one_hots, 1);
                let w = &block.linear.ws;
                let base = w.size()[1] - cats.size()[1];
                let y = h.matmul(&w.narrow(1, 0, base).detach().tr()) + cats.matmul(&w.narrow(1, base, w.size()[1] - base).tr());
                match &block.linear.bs {
                    Some(b) => y + b,
                    None => y,
                }
            } else {
                let input = if covariates {
                    let mut parts = vec![h.shallow_clone()];
                    parts.extend(one_hots.iter().map(|t| t.shallow_clone()));
                    Tensor::cat(&parts, 1)
                } else {
                    h
                };
                input.apply(&block.linear)
            };
            if let Some(bn) = &block.batch_norm {
                y = bn.forward_t(&y, train);
            }
            if let Some(w) = block.layer_norm_width {
                y = y.layer_norm([w], None::<&Tensor>, None::<&Tensor>, LAYER_NORM_EPS, false);
            }
            if self.use_activation {
                y = y.relu();
            }
            if self.dropout_rate > 0.0 {
                y = dropout(&y, self.dropout_rate, train);
            }
            h = y;
        }
        h
    }
}

/// Inverted dropout as torch's: in training each entry is zeroed with probability `p` and the
/// others scaled by 1 / (1 - p). On the CPU the mask comes from ChaCha8 seeded by one draw of
/// libtorch's generator (so `manual_seed` still fixes it), instead of libtorch's serial
/// per-entry Bernoulli sampler, which costs several percent of a training step.
pub fn dropout(y: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return y.shallow_clone();
    }
    if y.device() != tch::Device::Cpu || p >= 1.0 {
        return y.dropout(p, train);
    }
    let mask = dropout_mask(y.numel(), p);
    y * Tensor::from_slice(&mask).view(y.size().as_slice())
}

/// The factors [`dropout`] multiplies `n` entries by on the CPU in training (0 or 1 / (1 - p)),
/// drawing from libtorch's generator as it does; 0 < p < 1.
pub(crate) fn dropout_mask(n: usize, p: f64) -> Vec<f32> {
    use rand::{RngCore, SeedableRng};
    let seed = Tensor::randint(i64::MAX, [1], (tch::Kind::Int64, tch::Device::Cpu)).int64_value(&[0]) as u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut bits = vec![0u32; n];
    rng.fill_bytes(bytemuck_u32(&mut bits));
    // Zero when a uniform 32-bit draw falls below p * 2^32.
    let cut = (p * 4_294_967_296.0) as u64;
    let keep = (1.0 / (1.0 - p)) as f32;
    bits.iter().map(|&b| if (b as u64) < cut { 0.0 } else { keep }).collect()
}

/// The bytes of a u32 buffer, for filling it from a byte-oriented generator.
fn bytemuck_u32(v: &mut [u32]) -> &mut [u8] {
    // SAFETY: u32 has no invalid bit patterns and u8 has alignment 1; the slice covers exactly
    // the buffer's bytes.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::dropout;
    use tch::{Kind, Tensor};

    #[test]
    fn dropout_keeps_the_expectation_and_follows_the_seed() {
        let _turn = crate::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let x = Tensor::ones([400, 500], (Kind::Float, tch::Device::Cpu));
        tch::manual_seed(3);
        let a = dropout(&x, 0.2, true);
        tch::manual_seed(3);
        let b = dropout(&x, 0.2, true);
        assert!(a.equal(&b));
        let zeros = a.eq(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!((zeros - 0.2).abs() < 0.005, "dropped fraction {zeros}");
        let mean = a.mean(Kind::Double).double_value(&[]);
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!(dropout(&x, 0.2, false).equal(&x));
    }
}
