//! The standard network's training step with its gradients in closed form (`Vae::loss` in
//! training) against the same step through autograd, on real PBMC 3k minibatches: the loss and
//! its per-cell parts, every parameter's gradient and the BatchNorm running statistics, for
//! ZINB and NB, one to three hidden layers, with and without BatchNorm and dropout, with batches
//! entering the decoder's layers and continuous covariates its first, with the observed or a
//! latent library, on one thread and split across two. Configurations it does not cover run
//! through autograd.

mod common;
use common::{counts, pbmc};
use scvir_engine::data::{Minibatch, MinibatchBuilder};
use scvir_engine::distributions::GeneLikelihood;
use scvir_engine::module::{ScanviConfig, Vae, VaeConfig};
use scvir_engine::nn::sparse_input;
use scvir_engine::runtime;
use tch::{Device, Kind, Tensor};

/// libtorch's generator and thread count are process-global; tests take turns.
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

fn largest(t: &Tensor) -> f64 {
    f64::try_from(t.abs().max()).unwrap()
}

/// A fresh model on PBMC 3k whose parameters have a `.grad` (as after a first step), its
/// trainable weights and its BatchNorm running statistics, sorted by name.
fn model(config: VaeConfig, x: scvir_engine::data::Counts<'_>) -> (Vae, Vec<(String, Tensor)>, Vec<(String, Tensor)>) {
    let log_library: Vec<f64> = (0..x.n_cells()).map(|c| x.cell(c).1.iter().sum::<f64>().ln()).collect();
    let mean = log_library.iter().sum::<f64>() / log_library.len() as f64;
    let var = log_library.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / log_library.len() as f64;
    // A latent library's prior, made to differ between batches so that each cell's is its own
    // batch's.
    let n_batch = config.n_batch as usize;
    let means: Vec<f64> = (0..n_batch).map(|b| mean + 0.1 * b as f64).collect();
    let vars: Vec<f64> = (0..n_batch).map(|b| var * (1.0 + 0.2 * b as f64)).collect();
    let vae = Vae::new(config, Device::Cpu, Some((&means, &vars))).unwrap();
    let mut vars: Vec<(String, Tensor)> = vae.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let (params, stats): (Vec<_>, Vec<_>) = vars.into_iter().partition(|(_, t)| t.requires_grad());
    let stats = stats.into_iter().filter(|(n, _)| n.contains("running_")).collect();
    let zero: Tensor = params.iter().map(|(_, p)| p.sum(Kind::Float) * 0.0).sum();
    zero.backward();
    (vae, params, stats)
}

struct Step {
    loss: f64,
    reconstruction: Tensor,
    kl_z: Tensor,
    kl_library: Tensor,
    grads: Vec<Tensor>,
    stats: Vec<Tensor>,
    /// Whether the loss came with a graph (autograd's step).
    graph: bool,
}

/// One training step on `mb` with the given seed; the gradients and running statistics it
/// produced, after which both are put back as they were.
fn step(vae: &mut Vae, closed_form: bool, mb: &Minibatch, params: &[(String, Tensor)], stats: &[(String, Tensor)]) -> Step {
    let before: Vec<Tensor> = stats.iter().map(|(_, t)| t.copy()).collect();
    vae.closed_form = closed_form;
    tch::manual_seed(11);
    let out = vae.loss(mb, true, 0.7);
    let graph = out.loss.requires_grad();
    if graph {
        out.loss.backward();
    }
    if let Some(rows) = mb.rows() {
        sparse_input::finish_backward(rows);
    }
    let grads = params.iter().map(|(_, p)| p.grad().copy()).collect();
    let after = stats.iter().map(|(_, t)| t.copy()).collect();
    tch::no_grad(|| {
        for (_, p) in params {
            let _ = p.grad().zero_();
        }
        for ((_, t), b) in stats.iter().zip(&before) {
            let _ = t.shallow_clone().copy_(b);
        }
    });
    Step { loss: f64::try_from(&out.loss).unwrap(), reconstruction: out.reconstruction.detach(), kl_z: out.kl_z.detach(), kl_library: out.kl_library.detach(), grads, stats: after, graph }
}

/// Two continuous covariates of each cell, from its counts as QC metrics are: the log total
/// count and the fraction of counts in the first 100 genes.
fn qc_covariates(x: scvir_engine::data::Counts<'_>) -> [Vec<f64>; 2] {
    let (mut log_total, mut fraction) = (Vec::new(), Vec::new());
    for c in 0..x.n_cells() {
        let (genes, values) = x.cell(c);
        let total: f64 = values.iter().sum();
        let first: f64 = genes.iter().zip(values).filter(|(&g, _)| g < 100).map(|(_, &v)| v).sum();
        log_total.push(total.ln());
        fraction.push(first / total);
    }
    [log_total, fraction]
}

/// The closed form against autograd for one configuration, on one minibatch of 128 cells, with
/// `config.n_continuous_cov` (0 to 2) continuous covariates.
fn compare(config: VaeConfig, n_batch: i32, what: &str) {
    let d = pbmc();
    let x = counts(&d);
    // The minibatch's i-th cell (20 i + 7) in batch i mod n_batch: every batch in it.
    let batch: Vec<i32> = (0..x.n_cells()).map(|c| (c / 20) as i32 % n_batch).collect();
    let qc = qc_covariates(x);
    let mut covariates = scvir_engine::data::Covariates::default();
    covariates.continuous = qc.iter().take(config.n_continuous_cov as usize).map(Vec::as_slice).collect();
    let mut builder = MinibatchBuilder::new(x, &batch, &covariates, Device::Cpu);
    let cells: Vec<usize> = (0..128).map(|i| i * 20 + 7).collect();
    let mb = builder.build(&cells);
    tch::manual_seed(4);
    let (mut vae, params, stats) = model(config, x);
    let autograd = step(&mut vae, false, &mb, &params, &stats);
    let closed = step(&mut vae, true, &mb, &params, &stats);
    assert!(autograd.graph, "{what}: the autograd step has a graph");
    assert!(!closed.graph, "{what}: the closed form applies");
    assert!((closed.loss - autograd.loss).abs() <= 1e-5 * autograd.loss.abs(), "{what}: loss {} against {}", closed.loss, autograd.loss);
    for (a, b, part) in [
        (&closed.reconstruction, &autograd.reconstruction, "reconstruction"),
        (&closed.kl_z, &autograd.kl_z, "KL"),
        (&closed.kl_library, &autograd.kl_library, "library KL"),
    ] {
        assert!(largest(&(a - b)) <= 1e-5 * largest(b).max(1e-3), "{what}: per-cell {part} differs");
    }
    if !vae.config.use_observed_lib_size {
        assert!(largest(&autograd.kl_library) > 0.0, "{what}: the library KL is part of the loss");
    }
    // Every gradient within 1e-4 of its largest entry. The first layers' biases, which
    // BatchNorm cancels, have gradients of about 0 made of rounding: those are taken relative to
    // their layer's weight gradient, summed from the same output gradients.
    assert!(params.len() >= 12, "{what}: every weight compared");
    for (i, (name, _)) in params.iter().enumerate() {
        let (a, b) = (&closed.grads[i], &autograd.grads[i]);
        let layer_scale = name
            .strip_suffix("linear.bias")
            .and_then(|layer| params.iter().position(|(n, _)| *n == format!("{layer}linear.weight")))
            .map_or(0.0, |j| largest(&autograd.grads[j]));
        let scale = largest(b).max(layer_scale).max(1e-6);
        assert!(largest(b) > 0.0 || layer_scale > 0.0, "{what}: {name} got no gradient");
        let diff = largest(&(a - b));
        assert!(diff <= 1e-4 * scale, "{what}: {name}: gradients differ by {diff} (largest {scale})");
    }
    for (i, (name, _)) in stats.iter().enumerate() {
        let (a, b) = (&closed.stats[i], &autograd.stats[i]);
        assert!(largest(&(a - b)) <= 1e-5 * largest(b).max(1e-3), "{what}: {name} differs");
    }
}

#[test]
fn closed_form_step_matches_autograd() {
    let _t = turn();
    for threads in [1, 2] {
        let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(threads), ..Default::default() });
        // (likelihood, batches, hidden layers, BatchNorm in the encoder / decoder, dropout,
        // covariates into every layer, continuous covariates, latent library, covariates into
        // the encoders)
        for (likelihood, n_batch, layers, bn, dropout, inject, continuous, latent_library, encode) in [
            (GeneLikelihood::Zinb, 1, 1, (true, true), 0.1, true, 0, false, false),
            (GeneLikelihood::Nb, 3, 1, (true, true), 0.1, true, 0, false, false),
            (GeneLikelihood::Zinb, 2, 1, (false, false), 0.0, true, 0, false, false),
            (GeneLikelihood::Nb, 1, 1, (true, false), 0.3, true, 0, false, false),
            (GeneLikelihood::Nb, 3, 2, (true, true), 0.1, true, 0, false, false),
            (GeneLikelihood::Zinb, 2, 3, (true, false), 0.2, false, 0, false, false),
            (GeneLikelihood::Zinb, 1, 1, (true, true), 0.1, true, 2, false, false),
            (GeneLikelihood::Nb, 2, 2, (true, true), 0.1, true, 1, false, false),
            (GeneLikelihood::Zinb, 3, 1, (true, true), 0.1, true, 0, true, false),
            (GeneLikelihood::Nb, 2, 2, (false, true), 0.2, true, 1, true, false),
            (GeneLikelihood::Zinb, 3, 1, (true, true), 0.1, false, 0, false, true),
            (GeneLikelihood::Nb, 2, 2, (true, true), 0.1, true, 0, false, true),
            (GeneLikelihood::Zinb, 2, 2, (true, false), 0.2, false, 0, true, true),
        ] {
            let (config, what) = standard(likelihood, n_batch, layers, bn, dropout, inject, continuous, latent_library, encode);
            compare(config, n_batch, &format!("{what}, {threads} threads"));
        }
        // LayerNorm (no affine parameters, as scvi-tools'), with or without BatchNorm before it:
        // (LayerNorm in the encoder / decoder, BatchNorm in both, layers, latent library), with
        // covariates into the encoders, as scArches' reference models are set up.
        for (ln, bn, layers, latent_library) in [((true, true), false, 2, false), ((true, false), true, 1, true), ((false, true), true, 1, false)] {
            let (mut config, what) = standard(GeneLikelihood::Nb, 2, layers, (bn, bn), 0.2, true, 0, latent_library, true);
            config.use_layer_norm_encoder = ln.0;
            config.use_layer_norm_decoder = ln.1;
            compare(config, 2, &format!("{what}, LayerNorm {ln:?}, {threads} threads"));
        }
    }
}

/// A configuration of the standard network, and its description.
#[allow(clippy::too_many_arguments)]
fn standard(
    likelihood: GeneLikelihood,
    n_batch: i32,
    layers: i64,
    bn: (bool, bool),
    dropout: f64,
    inject: bool,
    continuous: i64,
    latent_library: bool,
    encode: bool,
) -> (VaeConfig, String) {
    let mut config = VaeConfig::new(2000, n_batch as i64);
    config.encode_covariates = encode;
    config.use_observed_lib_size = !latent_library;
    config.n_continuous_cov = continuous;
    config.gene_likelihood = likelihood;
    config.n_layers = layers;
    config.use_batch_norm_encoder = bn.0;
    config.use_batch_norm_decoder = bn.1;
    config.dropout_rate = dropout;
    config.deeply_inject_covariates = inject;
    if layers > 1 {
        config.n_latent = 30;
    }
    let what = format!(
        "{likelihood:?}, {n_batch} batches, {layers} layers, BatchNorm {bn:?}, dropout {dropout}, injected {inject}, {continuous} continuous, latent library {latent_library}, encoded {encode}"
    );
    (config, what)
}

/// Configurations outside the closed form (here: Poisson, a per-cell dispersion, a softplus
/// variance, a batch embedding, scANVI) take autograd's step. (scANVI's label-marginalised terms
/// on z, joined to the closed form through autograd, gave the same gradients but no faster
/// step on PBMC 3k: those terms' small networks and the labelled minibatch take most of its
/// time either way.)
#[test]
fn other_networks_run_through_autograd() {
    use scvir_engine::module::Dispersion;
    let _t = turn();
    let d = pbmc();
    let x = counts(&d);
    let batch: Vec<i32> = (0..x.n_cells()).map(|c| c as i32 % 2).collect();
    let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
    let cells: Vec<usize> = (0..64).map(|i| i * 30 + 1).collect();
    let mb = builder.build(&cells);
    let variants: Vec<(&str, Box<dyn Fn(&mut VaeConfig)>)> = vec![
        ("softplus variance", Box::new(|c| c.var_activation = scvir_engine::module::config::VarActivation::Softplus)),
        ("Poisson", Box::new(|c| c.gene_likelihood = GeneLikelihood::Poisson)),
        ("gene-cell dispersion", Box::new(|c| c.dispersion = Dispersion::GeneCell)),
        ("batch embedding", Box::new(|c| c.batch_representation = scvir_engine::module::config::BatchRepresentation::Embedding)),
        ("scANVI", Box::new(|c| c.scanvi = Some(ScanviConfig { n_labels: 4, ..Default::default() }))),
    ];
    for (what, change) in variants {
        let mut config = VaeConfig::new(2000, 2);
        change(&mut config);
        tch::manual_seed(3);
        let (vae, _, _) = model(config, x);
        assert!(vae.loss(&mb, true, 1.0).loss.requires_grad(), "{what}: autograd's step");
    }
    // The closed form's own configuration takes it, but not outside training nor on its first
    // step (no `.grad` yet).
    let fresh = Vae::new(VaeConfig::new(2000, 2), Device::Cpu, None).unwrap();
    assert!(fresh.loss(&mb, true, 1.0).loss.requires_grad(), "a fresh model's first step");
    let (vae, _, _) = model(VaeConfig::new(2000, 2), x);
    assert!(!vae.loss(&mb, true, 1.0).loss.requires_grad(), "the standard network");
    assert!(vae.loss(&mb, false, 1.0).loss.requires_grad(), "evaluation runs the model's own forward pass");
}

/// With a second thread, the step runs the trainer's side work beside its serial stretches: the
/// independent job (building another minibatch) and the update of the heads and the dispersion,
/// whose gradients are final by then. The gradients come out as without side work; a loss that
/// is not finite leaves the update unrun.
#[test]
fn side_work_runs_beside_the_step() {
    use scvir_engine::module::vae::SideWork;
    let _t = turn();
    let d = pbmc();
    let x = counts(&d);
    let batch = vec![0i32; x.n_cells()];
    let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
    let cells: Vec<usize> = (0..128).map(|i| i * 20 + 3).collect();
    let upcoming: Vec<usize> = (0..128).map(|i| i * 20 + 11).collect();
    let mb = builder.build(&cells);
    let expected_next = builder.build(&upcoming);
    for threads in [1, 2] {
        let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(threads), ..Default::default() });
        tch::manual_seed(5);
        let (mut vae, params, stats) = model(VaeConfig::new(2000, 1), x);
        let plain = step(&mut vae, true, &mb, &params, &stats);
        // The same step with side work: the gradients the update sees are kept.
        let mut next = None;
        let mut updated: Vec<(usize, Tensor)> = Vec::new();
        let out = {
            let mut side = SideWork::default();
            side.independent = Some(Box::new(|| next = Some(builder.build(&upcoming))));
            side.update = Some(Box::new(|given: Vec<Tensor>| updated = given.iter().map(|t| (t.data_ptr() as usize, t.grad().copy())).collect()));
            tch::manual_seed(11);
            let out = vae.training_loss(&mb, 0.7, &mut side);
            assert!(side.independent.is_none() && side.update.is_none(), "{threads} threads: both jobs taken");
            out
        };
        assert!(!out.loss.requires_grad(), "the closed form ran");
        assert_eq!(f64::try_from(&out.loss).unwrap(), plain.loss, "{threads} threads: the same loss");
        let next = next.expect("the next minibatch was built");
        assert!(next.nz_x().equal(expected_next.nz_x()) && next.x.equal(&expected_next.x), "the minibatch built beside is the one built alone");
        // The update got exactly the heads' weights and biases and the dispersion, with their
        // final gradients.
        let names: Vec<&str> = params.iter().filter(|(_, p)| updated.iter().any(|(a, _)| *a == p.data_ptr() as usize)).map(|(n, _)| n.as_str()).collect();
        assert_eq!(updated.len(), 5, "{names:?}");
        assert!(names.iter().all(|n| n.contains("px_scale_decoder") || n.contains("px_dropout_decoder") || n.ends_with("px_r")), "{names:?}");
        // The same gradients: the same bits on one thread; on two, libtorch's small products
        // inside the stretches run on one thread beside the side work, so up to rounding.
        for (i, (name, p)) in params.iter().enumerate() {
            let (g, reference) = (p.grad(), &plain.grads[i]);
            if threads == 1 {
                assert!(g.equal(reference), "{name}: as without side work");
            } else {
                assert!(largest(&(&g - reference)) <= 1e-5 * largest(reference).max(1e-6), "{name}: as without side work");
            }
            if let Some((_, seen)) = updated.iter().find(|(a, _)| *a == p.data_ptr() as usize) {
                assert!(seen.equal(&g), "{threads} threads: the update saw {name}'s final gradient");
            }
        }
        // A loss that is not finite: no update (the trainer stops before updating anything).
        tch::no_grad(|| {
            for (_, p) in &params {
                let _ = p.grad().zero_();
            }
        });
        let mut ran = false;
        let mut side = SideWork::default();
        side.update = Some(Box::new(|_| ran = true));
        let _ = vae.training_loss(&mb, f64::NAN, &mut side);
        assert!(side.update.is_some(), "{threads} threads: a NaN loss leaves the update");
        drop(side);
        assert!(!ran);
    }
}
