//! The scVI variational autoencoder (Lopez et al. 2018) with scvi-tools' parameterisation.

use super::config::{Dispersion, VaeConfig};
use super::scanvi::ScanviHeads;
use crate::data::minibatch::one_hot;
use crate::data::Minibatch;
use crate::nn::sparse_input::{HostRows, SparseInput};
use crate::distributions::{self, fused, GeneLikelihood};
use crate::nn::decoder::{Head, Scale};
use crate::nn::{DecoderScvi, Encoder, EncoderOutput, FcLayersConfig};
use tch::{nn, Device, Kind, Tensor};

mod closed_form;
pub use closed_form::SideWork;

pub struct Vae {
    pub config: VaeConfig,
    pub vs: nn::VarStore,
    z_encoder: Encoder,
    l_encoder: Option<Encoder>,
    decoder: DecoderScvi,
    /// Log dispersion: genes (gene) or genes x batches (gene-batch); absent for gene-cell/Poisson.
    px_r: Option<Tensor>,
    /// Learnt batch vectors (n_batch x dim) when `batch_representation = "embedding"`.
    batch_embedding: Option<Tensor>,
    /// Latent-library prior per batch (1 x n_batch), only when the library is latent.
    library_log_means: Option<Tensor>,
    library_log_vars: Option<Tensor>,
    /// scANVI heads, when the config asks for them.
    pub scanvi: Option<ScanviHeads>,
    /// Whether training's likelihood forms the rates from the decoder's logits itself (see
    /// `distributions::fused`); off, the decoder's softmax and the library scaling run as tensor
    /// operations. The two agree to rounding (tests); the switch exists for them and benchmarks.
    pub fused_rates: bool,
    /// Whether training steps of the standard network run with their gradients in closed form
    /// (see `closed_form`) instead of through autograd. The two agree to rounding (tests); the
    /// switch exists for them and benchmarks.
    pub closed_form: bool,
}

pub struct Inference {
    pub qz: EncoderOutput,
    /// The Gaussian sample behind z (equal to z for a normal latent).
    pub z_untransformed: Tensor,
    /// What the decoder sees: the sample, or its softmax for a logistic-normal latent.
    pub z: Tensor,
    /// Log library size, cells x 1.
    pub library: Tensor,
    pub ql: Option<EncoderOutput>,
}

pub struct Generative {
    pub px_scale: Tensor,
    pub px_rate: Tensor,
    /// Dispersion theta (not its log), genes or cells x genes.
    pub theta: Option<Tensor>,
    pub px_dropout: Option<Tensor>,
}

/// Where the fused likelihood's gradient for a decoder output enters autograd.
fn target<'a>(h: &'a Head, rows: Option<&'a HostRows>) -> fused::Target<'a> {
    match h {
        Head::Tensor(t) => fused::Target::Tensor(t),
        Head::Linear { input, weight, bias } => fused::Target::Linear { input, weight, bias: bias.as_ref(), defer: rows },
    }
}

/// The decoder's outputs before the library scaling.
struct Heads {
    px_scale: Scale,
    /// Dispersion theta (not its log), genes or cells x genes.
    theta: Option<Tensor>,
    px_dropout: Option<Head>,
}

/// Per-cell loss components (cells), and the minibatch objective.
pub struct LossOutput {
    pub loss: Tensor,
    pub reconstruction: Tensor,
    pub kl_z: Tensor,
    pub kl_library: Tensor,
}

impl Vae {
    /// Builds a freshly initialised model. `library_prior` holds per-batch (means, variances) of
    /// the log library size and is required when the library is latent.
    pub fn new(config: VaeConfig, device: Device, library_prior: Option<(&[f64], &[f64])>) -> crate::Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let c = &config;
        // With a batch embedding the batch leaves the one-hot list and becomes input columns.
        let batch_one_hot = (!c.batch_embedding()).then_some(c.n_batch);
        let cat_list: Vec<i64> = batch_one_hot.into_iter().chain(c.n_cats_per_cov.iter().copied()).collect();
        let batch_dim = if c.batch_embedding() { c.batch_embedding_dim } else { 0 };
        let encoder_fc = FcLayersConfig {
            n_in: c.n_genes + if c.encode_covariates { c.n_continuous_cov + batch_dim } else { 0 },
            n_out: c.n_hidden,
            n_cat_list: if c.encode_covariates { cat_list.clone() } else { vec![] },
            n_layers: c.n_layers,
            n_hidden: c.n_hidden,
            dropout_rate: c.effective_dropout(),
            use_batch_norm: c.use_batch_norm_encoder,
            use_layer_norm: c.use_layer_norm_encoder,
            inject_covariates: c.deeply_inject_covariates,
            use_activation: true,
            bias: true,
            batch_norm_momentum: c.batch_norm_momentum(true),
            frozen_base_from: c.frozen().map(|q| if q.freeze_expression { 0 } else { 1 }),
        };
        let softplus_var = c.var_activation == super::config::VarActivation::Softplus;
        let z_encoder = Encoder::new(&root / "z_encoder", &encoder_fc, c.n_latent, softplus_var);
        let l_encoder = (!c.use_observed_lib_size).then(|| {
            // scArches leaves the library encoder free, its BatchNorm statistics included.
            let fc = FcLayersConfig {
                n_layers: 1,
                batch_norm_momentum: crate::nn::init::BATCH_NORM_MOMENTUM,
                frozen_base_from: None,
                ..encoder_fc.clone()
            };
            Encoder::new(&root / "l_encoder", &fc, 1, softplus_var)
        });
        let decoder_fc = FcLayersConfig {
            n_in: c.n_latent + c.n_continuous_cov + batch_dim,
            n_out: c.n_hidden,
            n_cat_list: cat_list,
            n_layers: c.n_layers,
            n_hidden: c.n_hidden,
            dropout_rate: 0.0,
            use_batch_norm: c.use_batch_norm_decoder,
            use_layer_norm: c.use_layer_norm_decoder,
            inject_covariates: c.deeply_inject_covariates,
            use_activation: true,
            bias: true,
            batch_norm_momentum: c.batch_norm_momentum(false),
            frozen_base_from: c.frozen().map(|q| if q.freeze_decoder_first_layer || c.linear_decoder { 0 } else { 1 }),
        };
        let decoder = if c.linear_decoder {
            DecoderScvi::new_linear(&root / "decoder", &decoder_fc, c.n_genes)
        } else {
            DecoderScvi::new(
                &root / "decoder",
                &decoder_fc,
                c.n_genes,
                c.gene_likelihood.has_zero_inflation(),
                c.dispersion == Dispersion::GeneCell && c.gene_likelihood.has_dispersion(),
                c.use_size_factor_key,
            )
        };
        let randn = nn::Init::Randn { mean: 0.0, stdev: 1.0 };
        let batch_embedding = c.batch_embedding().then(|| root.var("batch_embedding", &[c.n_batch, c.batch_embedding_dim], randn));
        let px_r = match (c.gene_likelihood.has_dispersion(), c.dispersion) {
            (false, _) | (true, Dispersion::GeneCell) => None,
            (true, Dispersion::Gene) => Some(root.var("px_r", &[c.n_genes], randn)),
            (true, Dispersion::GeneBatch) => Some(root.var("px_r", &[c.n_genes, c.n_batch], randn)),
            (true, Dispersion::GeneLabel) => Some(root.var("px_r", &[c.n_genes, c.n_labels.max(1)], randn)),
        };
        let (library_log_means, library_log_vars) = if c.use_observed_lib_size {
            (None, None)
        } else {
            let (m, v) = library_prior.ok_or_else(|| {
                crate::Error::InvalidConfig("a latent library needs the per-batch library prior".into())
            })?;
            let mut means = root.zeros_no_train("library_log_means", &[1, c.n_batch]);
            let mut vars = root.zeros_no_train("library_log_vars", &[1, c.n_batch]);
            tch::no_grad(|| {
                means.copy_(&Tensor::from_slice(m).to_kind(Kind::Float).view([1, -1]));
                vars.copy_(&Tensor::from_slice(v).to_kind(Kind::Float).view([1, -1]));
            });
            (Some(means), Some(vars))
        };
        let scanvi = match &c.scanvi {
            Some(s) => Some(ScanviHeads::new(&root / "scanvi", c, s)?),
            None => None,
        };
        Ok(Vae { config, vs, z_encoder, l_encoder, decoder, px_r, batch_embedding, library_log_means, library_log_vars, scanvi, fused_rates: true, closed_form: true })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The covariate layout of every FC block's weight (encoders, decoder, scANVI heads).
    pub fn fc_layouts(&self) -> Vec<crate::nn::BlockLayout> {
        let mut out = self.z_encoder.fc_layouts();
        if let Some(l) = &self.l_encoder {
            out.extend(l.fc_layouts());
        }
        out.extend(self.decoder.fc_layouts());
        if let Some(h) = &self.scanvi {
            out.extend(h.fc_layouts());
        }
        out
    }

    pub fn n_parameters(&self) -> i64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    /// q(z | x) and the library: observed log total counts, or a sample of q(l | x).
    pub fn inference(&self, mb: &Minibatch, train: bool) -> Inference {
        let x_in = self.encoder_input(mb);
        let cats = self.categoricals(&mb.batch_index, mb);
        let qz = self.posterior_z(mb, &x_in, &cats, train);
        let z_untransformed = qz.rsample();
        let z = self.latent_for_decoder(&z_untransformed);
        let (library, ql) = match (&self.l_encoder, &mb.log_size_factor) {
            (_, Some(s)) if self.config.use_size_factor_key => (s.shallow_clone(), None),
            (None, _) => (mb.log_library.shallow_clone(), None),
            (Some(enc), _) => {
                let ql = enc.forward_sparse(&x_in, self.sparse_input(mb), &cats, train);
                (ql.rsample(), Some(ql))
            }
        };
        Inference { qz, z_untransformed, z, library, ql }
    }

    /// What the decoder sees of a Gaussian latent sample: the sample, or its softmax for a
    /// logistic-normal latent.
    pub fn latent_for_decoder(&self, z_untransformed: &Tensor) -> Tensor {
        if self.config.logistic_normal() { z_untransformed.softmax(-1, Kind::Float) } else { z_untransformed.shallow_clone() }
    }

    /// Another draw of z (and of the library, when it is latent) from the posteriors of `inf`,
    /// drawn in the order `inference` draws them. In evaluation the encoders are deterministic, so
    /// this is `inference(mb, false)` again without running them.
    pub fn resample(&self, inf: &Inference) -> Inference {
        let copy = |q: &EncoderOutput| EncoderOutput { q_mean: q.q_mean.shallow_clone(), q_var: q.q_var.shallow_clone() };
        let z_untransformed = inf.qz.rsample();
        let z = self.latent_for_decoder(&z_untransformed);
        let library = match &inf.ql {
            Some(ql) => ql.rsample(),
            None => inf.library.shallow_clone(),
        };
        Inference { qz: copy(&inf.qz), z_untransformed, z, library, ql: inf.ql.as_ref().map(copy) }
    }

    /// q(z | x): from the encoder, or a minified model's stored posterior.
    fn posterior_z(&self, mb: &Minibatch, x_in: &Tensor, cats: &[&Tensor], train: bool) -> EncoderOutput {
        match &mb.latent {
            Some((m, v)) => EncoderOutput { q_mean: m.shallow_clone(), q_var: v.shallow_clone() },
            None => self.z_encoder.forward_sparse(x_in, self.sparse_input(mb), cats, train),
        }
    }

    /// The encoders' input as the minibatch's nonzeros, when it is the counts alone (no
    /// covariates appended) and the minibatch has them on the host.
    fn sparse_input<'m>(&self, mb: &'m Minibatch) -> Option<SparseInput<'m>> {
        let alone = !self.config.encode_covariates || (mb.continuous.is_none() && self.batch_embedding.is_none());
        let rows = mb.rows().filter(|_| alone)?;
        Some(SparseInput { rows, log1p: self.config.log_variational })
    }

    /// The encoders' input: log1p counts (or counts), with the continuous covariates and batch
    /// embedding when `encode_covariates`.
    fn encoder_input(&self, mb: &Minibatch) -> Tensor {
        let x = if self.config.log_variational { mb.x_log1p().shallow_clone() } else { mb.x.shallow_clone() };
        let mut parts = vec![x];
        if self.config.encode_covariates {
            parts.extend(mb.continuous.as_ref().map(|c| c.shallow_clone()));
            parts.extend(self.batch_vectors(&mb.batch_index));
        }
        if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(&parts, 1) }
    }

    /// The categorical inputs as the networks take them: the batch (unless embedded) followed by
    /// the extra categorical covariates.
    fn categoricals<'t>(&self, batch_index: &'t Tensor, mb: &'t Minibatch) -> Vec<&'t Tensor> {
        let batch = (!self.config.batch_embedding()).then_some(batch_index);
        batch.into_iter().chain(mb.categorical.iter()).collect()
    }

    /// Embedding rows of the cells' batches (cells x dim), with a batch embedding.
    fn batch_vectors(&self, batch_index: &Tensor) -> Option<Tensor> {
        self.batch_embedding.as_ref().map(|e| e.index_select(0, batch_index))
    }

    /// p(x | z, library, batch, covariates) parameters. `batch_index` may differ from the data's
    /// batch (transform_batch); the other covariates come from the minibatch.
    pub fn generative(&self, z: &Tensor, library: &Tensor, batch_index: &Tensor, mb: &Minibatch, train: bool) -> Generative {
        let heads = self.decoder_heads(z, batch_index, mb, train);
        let px_scale = heads.px_scale.proportions();
        let px_rate = library.exp() * &px_scale;
        Generative { px_scale, px_rate, theta: heads.theta, px_dropout: heads.px_dropout.map(Head::tensor) }
    }

    /// The decoder's outputs, with the dispersion theta (not its log) in place of its head.
    fn decoder_heads(&self, z: &Tensor, batch_index: &Tensor, mb: &Minibatch, train: bool) -> Heads {
        let mut parts = vec![z.shallow_clone()];
        parts.extend(mb.continuous.as_ref().map(|c| c.shallow_clone()));
        parts.extend(self.batch_vectors(batch_index));
        let dec_in = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(&parts, 1) };
        let out = self.decoder.forward(&dec_in, &self.categoricals(batch_index, mb), train);
        let log_theta = match (&self.px_r, out.px_r) {
            (Some(r), _) if self.config.dispersion == Dispersion::GeneLabel => {
                Some(one_hot(&mb.labels, self.config.n_labels.max(1)).matmul(&r.tr()))
            }
            (Some(r), _) if r.dim() == 2 => Some(one_hot(batch_index, self.config.n_batch).matmul(&r.tr())),
            (Some(r), _) => Some(r.shallow_clone()),
            (None, Some(per_cell)) => Some(per_cell),
            (None, None) => None,
        };
        Heads { px_scale: out.px_scale, theta: log_theta.map(|t| t.exp()), px_dropout: out.px_dropout }
    }

    /// Training's per-cell reconstruction loss. NB and ZINB on the CPU take the decoder's logits
    /// and the log library straight into the fused likelihood, and its gradient straight to the
    /// decoder's linear heads; everything else forms the rates and goes through
    /// `reconstruction_loss`.
    fn training_reconstruction(&self, mb: &Minibatch, inf: &Inference, train: bool) -> Tensor {
        let heads = self.decoder_heads(&inf.z, &mb.batch_index, mb, train);
        let nb = matches!(self.config.gene_likelihood, GeneLikelihood::Nb | GeneLikelihood::Zinb);
        let zinb = self.config.gene_likelihood == GeneLikelihood::Zinb;
        // The kernel runs on the CPU; checked first, so that other devices do not form the logits twice.
        let cpu = fused::supported(&inf.library);
        if let (true, true, true, Scale::Logits(logits), Some(theta)) = (self.fused_rates, nb, cpu, &heads.px_scale, &heads.theta) {
            let logit_values = logits.value();
            let mean = fused::Mean::Softmax { logits: &logit_values, log_library: &inf.library };
            let dropout = heads.px_dropout.as_ref().filter(|_| zinb);
            let pi_values = dropout.map(Head::value);
            if let Some(terms) = fused::likelihood_terms(mb, mean, theta, pi_values.as_ref()) {
                let rows = mb.rows();
                return &mb.lgamma_x1 - fused::attach_to(&terms, target(logits, rows), Some(&inf.library), theta, dropout.map(|d| target(d, rows)));
            }
        }
        let px_scale = heads.px_scale.proportions();
        let px_rate = inf.library.exp() * &px_scale;
        let px_dropout = heads.px_dropout.map(Head::tensor);
        self.reconstruction_loss(mb, &Generative { px_scale, px_rate, theta: heads.theta, px_dropout })
    }

    /// Per-cell reconstruction loss (-log p(x | z)) of a minibatch.
    pub fn reconstruction_loss(&self, mb: &Minibatch, gen: &Generative) -> Tensor {
        -distributions::log_likelihood(
            self.config.gene_likelihood,
            mb,
            &gen.px_rate,
            gen.theta.as_ref(),
            gen.px_dropout.as_ref(),
        )
    }

    /// scvi-tools' VAE loss: mean over cells of reconstruction + kl_weight * KL(z) + KL(library);
    /// the library KL is not warmed up.
    ///
    /// In training, the standard network's step runs with its gradients in closed form where it
    /// can (`closed_form`): they are then already in the parameters' `.grad` and the returned
    /// loss has no graph to run backward through.
    pub fn loss(&self, mb: &Minibatch, train: bool, kl_weight: f64) -> LossOutput {
        if train {
            return self.training_loss(mb, kl_weight, &mut SideWork::default());
        }
        self.autograd_loss(mb, false, kl_weight)
    }

    /// `loss(mb, true, kl_weight)`, offering the step `side` work to run on a second thread
    /// beside its serial stretches (see [`SideWork`]). A step in closed form takes what it can;
    /// what is left in `side` afterwards did not run.
    pub fn training_loss(&self, mb: &Minibatch, kl_weight: f64, side: &mut SideWork<'_>) -> LossOutput {
        if let Some(out) = self.closed_form_loss(mb, kl_weight, side) {
            return out;
        }
        self.autograd_loss(mb, true, kl_weight)
    }

    fn autograd_loss(&self, mb: &Minibatch, train: bool, kl_weight: f64) -> LossOutput {
        let inf = self.inference(mb, train);
        let reconstruction = self.training_reconstruction(mb, &inf, train);
        let kl_z = kl_normal_std_normal(&inf.qz.q_mean, &inf.qz.q_var).sum_dim_intlist(1, false, Kind::Float);
        let kl_library = match (&inf.ql, self.library_prior(&mb.batch_index)) {
            (Some(ql), Some((prior_mean, prior_var))) => {
                kl_normal_normal(&ql.q_mean, &ql.q_var, &prior_mean, &prior_var).sum_dim_intlist(1, false, Kind::Float)
            }
            _ => Tensor::zeros_like(&kl_z),
        };
        if let Some(heads) = &self.scanvi {
            // scANVI: label-marginalised z1 / z2 terms; the library KL is warmed up as well.
            let terms = heads.unsupervised_terms(&inf.qz, &inf.z, train);
            let reconstruction = reconstruction + terms.z1_terms;
            let loss = (&reconstruction + (&terms.kl + &kl_library) * kl_weight).mean(Kind::Float);
            return LossOutput { loss, reconstruction, kl_z: terms.kl, kl_library };
        }
        let loss = (&reconstruction + &kl_z * kl_weight + &kl_library).mean(Kind::Float);
        LossOutput { loss, reconstruction, kl_z, kl_library }
    }

    /// Copies every weight of `src` whose name and shape match one of this model's (scvi-tools'
    /// `load_state_dict(strict = False)`, as `SCANVI.from_scvi_model` does). Returns how many.
    pub fn copy_matching_weights(&mut self, src: &Vae) -> usize {
        let from = src.vs.variables();
        let mut to = self.vs.variables();
        let mut copied = 0;
        tch::no_grad(|| {
            for (name, t) in to.iter_mut() {
                if let Some(s) = from.get(name) {
                    if s.size() == t.size() {
                        t.copy_(&s.to_device(t.device()));
                        copied += 1;
                    }
                }
            }
        });
        copied
    }

    /// scANVI label log-probabilities (cells x labels) from the posterior mean of z, as
    /// scvi-tools' `classify(use_posterior_mean = True)`. Panics without scANVI heads.
    pub fn classify(&self, mb: &Minibatch, train: bool) -> Tensor {
        let heads = self.scanvi.as_ref().expect("classify needs a scANVI model");
        // Only q(z | x) runs, as in scvi-tools: no library encoder pass (whose BatchNorm
        // statistics would otherwise also move on the labelled minibatch) and no sampling.
        let qz = self.posterior_z(mb, &self.encoder_input(mb), &self.categoricals(&mb.batch_index, mb), train);
        heads.classify_z(&qz.q_mean, train)
    }


    /// Mean and variance (cells x 1) of the log-library prior of each cell's batch, when the
    /// library is latent.
    pub fn library_prior(&self, batch_index: &Tensor) -> Option<(Tensor, Tensor)> {
        let (m, v) = (self.library_log_means.as_ref()?, self.library_log_vars.as_ref()?);
        let codes = one_hot(batch_index, self.config.n_batch);
        Some((codes.matmul(&m.tr()), codes.matmul(&v.tr())))
    }

    /// Per-cell, per-gene log p(x | z) written as scvi-tools writes it (no sparse shortcut).
    pub fn log_prob_dense(&self, x: &Tensor, gen: &Generative) -> Tensor {
        match self.config.gene_likelihood {
            GeneLikelihood::Poisson => distributions::dense::log_poisson(x, &gen.px_rate),
            GeneLikelihood::Normal => distributions::dense::log_normal(x, &gen.px_rate, gen.theta.as_ref().unwrap()),
            GeneLikelihood::Nb => distributions::dense::log_nb(x, &gen.px_rate, gen.theta.as_ref().unwrap()),
            GeneLikelihood::Zinb => distributions::dense::log_zinb(
                x,
                &gen.px_rate,
                gen.theta.as_ref().unwrap(),
                gen.px_dropout.as_ref().unwrap(),
            ),
        }
    }
}

/// KL(N(m, v) || N(0, 1)) element-wise.
pub fn kl_normal_std_normal(mean: &Tensor, var: &Tensor) -> Tensor {
    (var + mean.square() - 1.0 - var.log()) * 0.5
}

/// KL(N(m1, v1) || N(m2, v2)) element-wise.
pub fn kl_normal_normal(m1: &Tensor, v1: &Tensor, m2: &Tensor, v2: &Tensor) -> Tensor {
    ((v2.log() - v1.log()) + (v1 + (m1 - m2).square()) / v2 - 1.0) * 0.5
}
