//! Training on real counts (the package's bundled PBMC 3k, 2,000 genes): the ELBO falls, a seed
//! makes runs identical, and a model survives its file format.

mod common;
use common::pbmc;
use scvir_engine::data::{Counts, Registry};
use scvir_engine::io::{h5ad, model_file};
use scvir_engine::module::{Vae, VaeConfig};
use scvir_engine::train::{self, NoObserver, TrainConfig};
use scvir_engine::{infer, runtime};
use tch::Device;

/// The first `n` cells, as a CSR view over the same buffers.
fn head(data: &h5ad::H5ad, n: usize) -> Counts<'_> {
    let c = &data.counts;
    let end = c.indptr[n] as usize;
    Counts::from_csr(n, c.n_genes, &c.indptr[..=n], &c.indices[..end], &c.data[..end]).unwrap()
}

/// libtorch's random generator is process-global and the test harness runs tests on parallel
/// threads: training runs take turns.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_turn() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn fit(counts: Counts<'_>, seed: u64, epochs: usize) -> (Vae, train::TrainOutcome) {
    fit_watched(counts, seed, epochs, &mut NoObserver)
}

fn fit_watched(counts: Counts<'_>, seed: u64, epochs: usize, observer: &mut dyn train::TrainingObserver) -> (Vae, train::TrainOutcome) {
    fit_on(counts, seed, epochs, 1, observer)
}

fn fit_on(counts: Counts<'_>, seed: u64, epochs: usize, threads: usize, observer: &mut dyn train::TrainingObserver) -> (Vae, train::TrainOutcome) {
    fit_step(counts, seed, epochs, threads, true, observer)
}

/// `closed_form`: the standard network's steps with their gradients in closed form (the
/// default), or through autograd.
fn fit_step(counts: Counts<'_>, seed: u64, epochs: usize, threads: usize, closed_form: bool, observer: &mut dyn train::TrainingObserver) -> (Vae, train::TrainOutcome) {
    let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(threads), ..Default::default() });
    let batch = vec![0i32; counts.n_cells()];
    runtime::seed_everything(seed);
    let mut vae = Vae::new(VaeConfig::new(counts.n_genes() as i64, 1), Device::Cpu, None).unwrap();
    vae.closed_form = closed_form;
    let cfg = TrainConfig { max_epochs: Some(epochs), seed, ..Default::default() };
    let out = train::train(&mut vae, counts, &batch, &Default::default(), &cfg, observer).unwrap();
    (vae, out)
}

/// Keeps the step profile the loop hands over.
struct Profiled(Option<train::StepProfile>);

impl train::TrainingObserver for Profiled {
    fn profile_steps(&self) -> bool {
        true
    }
    fn on_step_profile(&mut self, p: &train::StepProfile) {
        self.0 = Some(p.clone());
    }
}

#[test]
fn a_profiled_run_times_every_step_and_trains_the_same_model() {
    let _turn = torch_turn();
    let d = pbmc();
    let counts = head(&d, 400);
    let (plain, a) = fit(counts, 5, 3);
    let mut obs = Profiled(None);
    let (vae, b) = fit_watched(counts, 5, 3, &mut obs);
    let p = obs.0.expect("the profile arrives after training");
    // 360 training cells in minibatches of 128: 3 steps per epoch.
    assert_eq!(p.steps, 3 * 3);
    for phase in train::Phase::ALL {
        assert!(p.seconds_in(phase) > 0.0, "{} was not timed", phase.name());
    }
    let elbo = |o: &train::TrainOutcome| o.history.epochs.iter().map(|r| r.elbo_validation).collect::<Vec<_>>();
    assert_eq!(elbo(&a), elbo(&b), "timing changes nothing in the fit");
    assert!(plain.vs.variables()["z_encoder.encoder.layer_0.linear.weight"].equal(&vae.vs.variables()["z_encoder.encoder.layer_0.linear.weight"]));
}

/// With two threads, each minibatch after an epoch's first is built during the step before
/// (beside autograd's backward pass): the same cells reach the same steps, so the fit equals the
/// one-thread fit up to the rounding of libtorch's threaded sums.
#[test]
fn two_threads_train_the_same_model_up_to_rounding() {
    let _turn = torch_turn();
    let d = pbmc();
    let counts = head(&d, 400);
    let (_, one) = fit_on(counts, 11, 4, 1, &mut NoObserver);
    let (_, two) = fit_on(counts, 11, 4, 2, &mut NoObserver);
    for (a, b) in one.history.epochs.iter().zip(&two.history.epochs) {
        let rel = (a.elbo_train - b.elbo_train).abs() / a.elbo_train.abs();
        assert!(rel < 1e-5, "epoch {}: training ELBO {} at 1 thread, {} at 2", a.epoch, a.elbo_train, b.elbo_train);
    }
    assert_eq!(one.history.epochs.len(), 4);
}

/// Training with the closed-form step follows training through autograd, epoch by epoch, up to
/// rounding (their single steps are compared in tests/closed_form.rs).
#[test]
fn the_closed_form_step_trains_the_model_autograd_trains() {
    let _turn = torch_turn();
    let d = pbmc();
    let counts = head(&d, 400);
    let (_, autograd) = fit_step(counts, 5, 6, 1, false, &mut NoObserver);
    let (_, closed) = fit_step(counts, 5, 6, 1, true, &mut NoObserver);
    assert_eq!(autograd.history.epochs.len(), 6);
    for (a, b) in autograd.history.epochs.iter().zip(&closed.history.epochs) {
        for (x, y, what) in [(a.elbo_train, b.elbo_train, "training"), (a.elbo_validation.unwrap(), b.elbo_validation.unwrap(), "validation")] {
            assert!((x - y).abs() / x.abs() < 1e-4, "epoch {}: {what} ELBO {x} through autograd, {y} in closed form", a.epoch);
        }
    }
    let first = &closed.history.epochs[0];
    assert!(closed.history.epochs[5].elbo_train < first.elbo_train);
}

#[test]
fn reads_the_bundled_h5ad() {
    let d = pbmc();
    assert_eq!((d.counts.n_cells, d.counts.n_genes), (2638, 2000));
    assert!(d.obs.columns.iter().any(|(n, c)| n == "cell_type" && matches!(c, h5ad::Column::Categorical { categories, .. } if categories.len() == 8)));
}

#[test]
fn elbo_decreases_and_seed_repeats() {
    let _turn = torch_turn();
    let d = pbmc();
    let counts = head(&d, 400);
    let (_, a) = fit(counts, 7, 6);
    let (_, b) = fit(counts, 7, 6);
    let ea: Vec<f64> = a.history.epochs.iter().map(|r| r.elbo_train).collect();
    let eb: Vec<f64> = b.history.epochs.iter().map(|r| r.elbo_train).collect();
    assert_eq!(ea, eb, "same seed, same thread count: identical history");
    assert!(ea[5] < ea[0], "ELBO should fall: {ea:?}");
    assert_eq!(a.split, b.split);
    assert_eq!((a.split.train.len(), a.split.validation.len()), (360, 40));
    let (_, c) = fit(counts, 8, 6);
    assert_ne!(c.history.epochs[5].elbo_train, ea[5], "another seed, another run");
}

#[test]
fn model_file_round_trip_gives_identical_latent() {
    let _turn = torch_turn();
    let d = pbmc();
    let counts = head(&d, 300);
    let (vae, out) = fit(counts, 1, 2);
    let batch = vec![0i32; 300];
    let meta = model_file::ModelMeta {
        model: "SCVI".into(),
        engine_version: "test".into(),
        vae: vae.config.clone(),
        train: TrainConfig::default(),
        registry: Registry::with_library_prior(d.var.index.clone(), counts, &batch, 1),
        history: out.history,
        split: out.split,
        tensors: vec![],
    };
    let bytes = model_file::to_bytes(&vae, &meta).unwrap();
    let (loaded, meta2) = model_file::from_bytes(&bytes, Device::Cpu).unwrap();
    assert_eq!(meta2.vae, vae.config);
    assert_eq!(meta2.registry.genes.len(), 2000);
    let mean = infer::LatentQuery::Mean { mc_samples: 1 };
    let z1 = infer::latent_representation(&vae, counts, &batch, &Default::default(), mean, 128).unwrap().0;
    let z2 = infer::latent_representation(&loaded, counts, &batch, &Default::default(), mean, 128).unwrap().0;
    assert_eq!(z1, z2);
    assert!(model_file::from_bytes(&bytes[..100], Device::Cpu).is_err());
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(model_file::read_meta(&bad).is_err());
}

#[test]
fn bad_counts_are_rejected() {
    let p = [0, 2];
    let i = [0, 1];
    assert!(Counts::from_csr(1, 2, &p, &i, &[1.0, 2.5]).is_err());
    assert!(Counts::from_csr(1, 2, &p, &i, &[1.0, -1.0]).is_err());
    assert!(Counts::from_csr(1, 2, &p, &i, &[f64::NAN, 1.0]).is_err());
    assert!(Counts::from_csr(1, 2, &p, &i, &[1.0, 2.0]).is_ok());
}
