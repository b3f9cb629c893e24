//! scANVI's additions to the VAE (Xu et al. 2021; scvi-tools' `SCANVAE`): a classifier q(y | z1),
//! a second latent layer q(z2 | z1, y) with its decoder p(z1 | z2, y), and the label prior.
//!
//! The unsupervised objective marginalises the label of every cell: the terms of z2 and z1 are
//! weighted by q(y | z1), and KL(q(y | z1) || prior) is added; labelled cells additionally give a
//! cross-entropy on the classifier applied to the posterior mean of z1 (`classify`).

use super::config::VaeConfig;
use super::vae::kl_normal_std_normal;
use crate::nn::{init, Encoder, EncoderOutput, FcLayers, FcLayersConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ScanviConfig {
    /// Known labels (the unlabelled category excluded); label codes 0..n_labels-1, and
    /// `n_labels` marks an unlabelled cell.
    pub n_labels: i64,
    /// A single linear layer instead of one hidden layer.
    pub linear_classifier: bool,
    /// Prior probability of each label (uniform by default).
    pub y_prior: Vec<f64>,
    /// Group code of each label when `use_labels_groups` (codes 0..n_groups-1).
    pub labels_groups: Vec<i64>,
    pub use_labels_groups: bool,
    /// Weight of the labelled cells' cross-entropy in the training loss (scvi-tools: 50).
    pub classification_ratio: f64,
    /// Labelled cells per label that feed the classifier, drawn anew each epoch (scvi-tools'
    /// `n_samples_per_label` / `SubSampleLabels`); `None` uses every labelled cell.
    pub n_samples_per_label: Option<usize>,
}

impl Default for ScanviConfig {
    fn default() -> Self {
        ScanviConfig { n_labels: 0, linear_classifier: false, y_prior: vec![], labels_groups: vec![], use_labels_groups: false, classification_ratio: 50.0, n_samples_per_label: None }
    }
}

/// An MLP classifier: FC layers then a linear layer to the classes (scvi-tools' `Classifier`).
struct Classifier {
    fc: Option<FcLayers>,
    out: nn::Linear,
}

impl Classifier {
    #[allow(clippy::too_many_arguments)]
    fn new(path: nn::Path, n_in: i64, n_hidden: i64, n_out: i64, n_layers: i64, dropout: f64, bn: bool, ln: bool, momentum: f64) -> Self {
        let deep = n_hidden > 0 && n_layers > 0;
        let fc = deep.then(|| {
            let cfg = FcLayersConfig {
                dropout_rate: dropout,
                use_batch_norm: bn,
                use_layer_norm: ln,
                batch_norm_momentum: momentum,
                ..FcLayersConfig::plain(n_in, n_hidden, n_layers, n_hidden)
            };
            FcLayers::new(&path / "fc", &cfg)
        });
        let out = init::linear(&path / "out", if deep { n_hidden } else { n_in }, n_out, true);
        Classifier { fc, out }
    }

    /// Unnormalised log-probabilities (logits), cells x classes.
    fn forward(&self, z: &Tensor, train: bool) -> Tensor {
        match &self.fc {
            Some(fc) => fc.forward(z, &[], train).apply(&self.out),
            None => self.out.forward(z),
        }
    }
}

/// p(z1 | z2, y): FC layers then mean and exp-variance heads (scvi-tools' `Decoder`).
struct GaussianDecoder {
    fc: FcLayers,
    mean: nn::Linear,
    var: nn::Linear,
}

impl GaussianDecoder {
    fn forward(&self, x: &Tensor, cats: &[&Tensor], train: bool) -> (Tensor, Tensor) {
        let h = self.fc.forward(x, cats, train);
        (h.apply(&self.mean), h.apply(&self.var).exp())
    }
}

pub struct ScanviHeads {
    pub config: ScanviConfig,
    classifier: Classifier,
    /// Classifier over label groups (`use_labels_groups`).
    classifier_groups: Option<Classifier>,
    encoder_z2_z1: Encoder,
    decoder_z1_z2: GaussianDecoder,
    /// log prior of each label, 1 x n_labels.
    log_y_prior: Tensor,
    /// Label codes of each group.
    groups: Vec<Tensor>,
}

/// Per-cell unsupervised terms: reconstruction-side additions and the KL of z2 and y.
pub struct ScanviTerms {
    /// log q(z1 | x) - E_q(y)[log p(z1 | z2, y)], cells.
    pub z1_terms: Tensor,
    /// E_q(y)[KL(q(z2 | z1, y) || N(0, I))] + KL(q(y | z1) || prior), cells.
    pub kl: Tensor,
}

fn log_normal_density(x: &Tensor, mean: &Tensor, var: &Tensor) -> Tensor {
    ((x - mean).square() / var + var.log() + (2.0 * std::f64::consts::PI).ln()) * -0.5
}

impl ScanviHeads {
    pub fn new(path: nn::Path, c: &VaeConfig, s: &ScanviConfig) -> crate::Result<Self> {
        let n_labels = s.n_labels;
        if n_labels < 2 {
            return Err(crate::Error::InvalidConfig(format!("scANVI needs at least 2 known labels, got {n_labels}")));
        }
        let (n_hidden, n_layers) = if s.linear_classifier { (0, 0) } else { (c.n_hidden, c.n_layers) };
        let dropout = c.effective_dropout();
        // A query model keeps the classifier's BatchNorm statistics while the classifier is
        // frozen (scvi-tools lets them move, changing the reference's predictions).
        let classifier_momentum = if c.frozen().is_some_and(|q| q.freeze_classifier) { 0.0 } else { init::BATCH_NORM_MOMENTUM };
        let classifier = Classifier::new(
            &path / "classifier",
            c.n_latent,
            n_hidden,
            n_labels,
            n_layers,
            dropout,
            c.use_batch_norm_encoder,
            c.use_layer_norm_encoder,
            classifier_momentum,
        );
        // z1 and the label in, as scvi-tools' Encoder / Decoder with n_cat_list = [n_labels].
        let z_fc = |bn: bool, ln: bool, dropout: f64, momentum: f64| FcLayersConfig {
            n_cat_list: vec![n_labels],
            dropout_rate: dropout,
            use_batch_norm: bn,
            use_layer_norm: ln,
            batch_norm_momentum: momentum,
            ..FcLayersConfig::plain(c.n_latent, c.n_hidden, c.n_layers, c.n_hidden)
        };
        let enc_fc = z_fc(c.use_batch_norm_encoder, c.use_layer_norm_encoder, dropout, c.batch_norm_momentum(true));
        let encoder_z2_z1 = Encoder::new(&path / "encoder_z2_z1", &enc_fc, c.n_latent, false);
        let dec_fc = z_fc(c.use_batch_norm_decoder, c.use_layer_norm_decoder, 0.0, c.batch_norm_momentum(false));
        let dpath = &path / "decoder_z1_z2";
        let decoder_z1_z2 = GaussianDecoder {
            fc: FcLayers::new(&dpath / "decoder", &dec_fc),
            mean: init::linear(&dpath / "mean_decoder", c.n_hidden, c.n_latent, true),
            var: init::linear(&dpath / "var_decoder", c.n_hidden, c.n_latent, true),
        };
        let prior: Vec<f64> = if s.y_prior.is_empty() { vec![1.0 / n_labels as f64; n_labels as usize] } else { s.y_prior.clone() };
        if prior.len() != n_labels as usize || prior.iter().any(|&p| !(p > 0.0)) {
            return Err(crate::Error::InvalidConfig("y_prior needs one positive probability per label".into()));
        }
        let total: f64 = prior.iter().sum();
        let log_prior: Vec<f32> = prior.iter().map(|p| (p / total).ln() as f32).collect();
        let log_y_prior = Tensor::from_slice(&log_prior).view([1, n_labels]).to_device(path.device());
        let (classifier_groups, groups) = if s.use_labels_groups {
            if s.labels_groups.len() != n_labels as usize {
                return Err(crate::Error::InvalidConfig("labels_groups needs one group per label".into()));
            }
            let n_groups = s.labels_groups.iter().copied().max().unwrap_or(-1) + 1;
            let groups: Vec<Tensor> = (0..n_groups)
                .map(|g| {
                    let idx: Vec<i64> = s.labels_groups.iter().enumerate().filter(|(_, &x)| x == g).map(|(i, _)| i as i64).collect();
                    Tensor::from_slice(&idx).to_device(path.device())
                })
                .collect();
            if groups.iter().any(|t| t.numel() == 0) || s.labels_groups.iter().any(|&g| g < 0) {
                return Err(crate::Error::InvalidConfig("labels_groups must use every group code 0..n_groups-1".into()));
            }
            let cg = Classifier::new(&path / "classifier_groups", c.n_latent, c.n_hidden, n_groups, c.n_layers, dropout, true, false, classifier_momentum);
            (Some(cg), groups)
        } else {
            (None, vec![])
        };
        Ok(ScanviHeads { config: s.clone(), classifier, classifier_groups, encoder_z2_z1, decoder_z1_z2, log_y_prior, groups })
    }

    /// The covariate layout of the FC blocks' weights (classifiers, z2 layer).
    pub fn fc_layouts(&self) -> Vec<crate::nn::BlockLayout> {
        let mut out = self.encoder_z2_z1.fc_layouts();
        out.extend(self.decoder_z1_z2.fc.layouts().iter().cloned());
        for c in std::iter::once(&self.classifier).chain(self.classifier_groups.as_ref()) {
            out.extend(c.fc.iter().flat_map(|f| f.layouts().iter().cloned()));
        }
        out
    }

    /// Label log-probabilities from z (cells x labels). With label groups:
    /// log p(group) + log p(label | group), each a softmax of its own classifier.
    pub fn classify_z(&self, z: &Tensor, train: bool) -> Tensor {
        let logits = self.classifier.forward(z, train);
        match &self.classifier_groups {
            None => logits,
            Some(cg) => {
                let log_w_g = cg.forward(z, train).log_softmax(-1, Kind::Float);
                let mut out = Tensor::zeros_like(&logits);
                for (g, idx) in self.groups.iter().enumerate() {
                    let within = logits.index_select(1, idx).log_softmax(-1, Kind::Float) + log_w_g.narrow(1, g as i64, 1);
                    out = out.index_copy(1, idx, &within);
                }
                out
            }
        }
    }

    /// The label-marginalised terms for a minibatch, given q(z1 | x) and its sample z1.
    pub fn unsupervised_terms(&self, qz1: &EncoderOutput, z1: &Tensor, train: bool) -> ScanviTerms {
        let n_labels = self.config.n_labels;
        let b = z1.size()[0];
        let dev = z1.device();
        // Every cell paired with every label, label-major: rows l * b .. (l + 1) * b have label l.
        let ys = Tensor::arange(n_labels, (Kind::Int64, dev)).repeat_interleave_self_int(b, 0, None);
        let z1s = z1.repeat([n_labels, 1]);
        let qz2 = self.encoder_z2_z1.forward(&z1s, &[&ys], train);
        let z2 = qz2.rsample();
        let (pz1_m, pz1_v) = self.decoder_z1_z2.forward(&z2, &[&ys], train);
        let kl_z2 = kl_normal_std_normal(&qz2.q_mean, &qz2.q_var).sum_dim_intlist(1, false, Kind::Float).view([n_labels, b]).tr();
        let loss_z1_unweight = (-log_normal_density(&z1s, &pz1_m, &pz1_v)).sum_dim_intlist(1, false, Kind::Float).view([n_labels, b]).tr();
        let loss_z1_weight = log_normal_density(z1, &qz1.q_mean, &qz1.q_var).sum_dim_intlist(1, false, Kind::Float);
        let log_probs = self.classifier.forward(z1, train).log_softmax(-1, Kind::Float);
        let probs = log_probs.exp();
        let z1_terms = loss_z1_weight + (&loss_z1_unweight * &probs).sum_dim_intlist(1, false, Kind::Float);
        let kl_y = (&probs * (&log_probs - &self.log_y_prior)).sum_dim_intlist(1, false, Kind::Float);
        let kl = (&kl_z2 * &probs).sum_dim_intlist(1, false, Kind::Float) + kl_y;
        ScanviTerms { z1_terms, kl }
    }
}
