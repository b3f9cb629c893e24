//! PyTorch's default initialisation, made explicit (tch's defaults differ): a Linear layer draws
//! weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm starts at weight 1, bias 0.

use tch::nn;

pub fn linear(path: nn::Path, n_in: i64, n_out: i64, bias: bool) -> nn::Linear {
    let bound = 1.0 / (n_in as f64).sqrt();
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Uniform { lo: -bound, up: bound },
        bs_init: if bias { Some(nn::Init::Uniform { lo: -bound, up: bound }) } else { None },
        bias,
    };
    nn::linear(path, n_in, n_out, cfg)
}

/// BatchNorm's epsilon in every layer (scvi-tools' FCLayers).
pub const BATCH_NORM_EPS: f64 = 1e-3;
/// BatchNorm's running-statistics momentum in every layer (scvi-tools' FCLayers).
pub const BATCH_NORM_MOMENTUM: f64 = 0.01;

/// scvi-tools' BatchNorm1d: eps 1e-3 and the given momentum (0.01, or 0 to freeze the running
/// statistics).
pub fn batch_norm(path: nn::Path, n: i64, momentum: f64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        cudnn_enabled: true,
        eps: BATCH_NORM_EPS,
        momentum,
        affine: true,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
    };
    nn::batch_norm1d(path, n, cfg)
}
