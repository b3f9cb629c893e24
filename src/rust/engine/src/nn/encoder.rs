//! Gaussian encoder q(z | x): FC layers, then a mean head and a variance head with
//! variance = exp(.) + 1e-4 (scvi-tools' `var_eps`; softplus instead of exp on request).

use super::fc_layers::{FcLayers, FcLayersConfig};
use super::init;
use super::sparse_input::SparseInput;
use tch::{nn, Tensor};

pub const VAR_EPS: f64 = 1e-4;

pub struct Encoder {
    fc: FcLayers,
    mean: nn::Linear,
    var: nn::Linear,
    softplus_variance: bool,
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
    /// `softplus_variance` selects softplus instead of exp for the variance head.
    pub fn new(path: nn::Path, fc: &FcLayersConfig, n_output: i64, softplus_variance: bool) -> Self {
        Encoder {
            fc: FcLayers::new(&path / "encoder", fc),
            mean: init::linear(&path / "mean_encoder", fc.n_out, n_output, true),
            var: init::linear(&path / "var_encoder", fc.n_out, n_output, true),
            softplus_variance,
        }
    }

    /// The hidden layers and the mean and variance heads, for the hand-written training step
    /// (`module::vae::closed_form`): None for a softplus variance or hidden layers it does not
    /// cover.
    pub(crate) fn parts(&self) -> Option<(super::fc_layers::StackParts<'_>, &nn::Linear, &nn::Linear)> {
        if self.softplus_variance {
            return None;
        }
        Some((self.fc.stack()?, &self.mean, &self.var))
    }

    /// The covariate layout of the hidden layers' weights.
    pub fn fc_layouts(&self) -> Vec<super::fc_layers::BlockLayout> {
        self.fc.layouts().to_vec()
    }

    pub fn forward(&self, x: &Tensor, cats: &[&Tensor], train: bool) -> EncoderOutput {
        self.forward_sparse(x, None, cats, train)
    }

    /// [`forward`](Self::forward) with the input also given as nonzeros (see `sparse_input`).
    pub fn forward_sparse(&self, x: &Tensor, sparse: Option<SparseInput<'_>>, cats: &[&Tensor], train: bool) -> EncoderOutput {
        let h = self.fc.forward_sparse(x, sparse, cats, train);
        let v = h.apply(&self.var);
        let v = if self.softplus_variance { v.softplus() } else { v.exp() };
        EncoderOutput { q_mean: h.apply(&self.mean), q_var: v + VAR_EPS }
    }
}
