//! Gaussian encoder q(z | x): FC layers, then a mean head and a variance head with
//! variance = exp(.) + 1e-4 (scvi-tools' `var_eps`).

use super::fc_layers::{FcLayers, FcLayersConfig};
use super::init;
use tch::{nn, Tensor};

pub const VAR_EPS: f64 = 1e-4;

pub struct Encoder {
    fc: FcLayers,
    mean: nn::Linear,
    var: nn::Linear,
}

pub struct EncoderOutput {
    pub q_mean: Tensor,
    pub q_var: Tensor,
}

impl EncoderOutput {
    /// Reparameterised sample mean + sqrt(var) * eps.
    pub fn rsample(&self) -> Tensor {
        &self.q_mean + self.q_var.sqrt() * self.q_mean.randn_like()
    }
}

impl Encoder {
    pub fn new(path: nn::Path, fc: &FcLayersConfig, n_output: i64) -> Self {
        Encoder {
            fc: FcLayers::new(&path / "encoder", fc),
            mean: init::linear(&path / "mean_encoder", fc.n_out, n_output, true),
            var: init::linear(&path / "var_encoder", fc.n_out, n_output, true),
        }
    }

    pub fn forward(&self, x: &Tensor, cats: &[&Tensor], train: bool) -> EncoderOutput {
        let h = self.fc.forward(x, cats, train);
        EncoderOutput { q_mean: h.apply(&self.mean), q_var: h.apply(&self.var).exp() + VAR_EPS }
    }
}
