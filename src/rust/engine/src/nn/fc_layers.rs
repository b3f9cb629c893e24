//! A stack of Linear -> BatchNorm -> LayerNorm -> ReLU -> Dropout blocks. Categorical covariates
//! enter as one-hot columns appended to the input of the first block, and of later blocks too when
//! `inject_covariates` (scvi-tools' `FCLayers`). Covariates with a single category are dropped.
//! LDVAE's linear decoder is one such block without bias and without activation.

use super::init;
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

struct Block {
    linear: nn::Linear,
    batch_norm: Option<nn::BatchNorm>,
    layer_norm_width: Option<i64>,
    takes_covariates: bool,
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
                    layer_norm_width: cfg.use_layer_norm.then_some(w[1]),
                    takes_covariates,
                }
            })
            .collect();
        FcLayers { blocks, dropout_rate: cfg.dropout_rate, use_activation: cfg.use_activation, n_cat_list, layouts }
    }

    /// The covariate layout of each block's weight.
    pub fn layouts(&self) -> &[BlockLayout] {
        &self.layouts
    }

    /// `cats` holds one tensor of category codes (i64, per cell) for each covariate.
    pub fn forward(&self, x: &Tensor, cats: &[&Tensor], train: bool) -> Tensor {
        let one_hots: Vec<Tensor> = self
            .n_cat_list
            .iter()
            .zip(cats)
            .filter(|(&n, _)| n > 0)
            .map(|(&n, c)| crate::data::minibatch::one_hot(c, n))
            .collect();
        let mut h = x.shallow_clone();
        for block in &self.blocks {
            let input = if block.takes_covariates && !one_hots.is_empty() {
                let mut parts = vec![h.shallow_clone()];
                parts.extend(one_hots.iter().map(|t| t.shallow_clone()));
                Tensor::cat(&parts, 1)
            } else {
                h
            };
            let mut y = input.apply(&block.linear);
            if let Some(bn) = &block.batch_norm {
                y = bn.forward_t(&y, train);
            }
            if let Some(w) = block.layer_norm_width {
                y = y.layer_norm([w], None::<&Tensor>, None::<&Tensor>, 1e-5, false);
            }
            if self.use_activation {
                y = y.relu();
            }
            if self.dropout_rate > 0.0 {
                y = y.dropout(self.dropout_rate, train);
            }
            h = y;
        }
        h
    }
}
