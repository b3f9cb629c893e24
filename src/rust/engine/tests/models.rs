//! LDVAE, scANVI and DE on the bundled PBMC 3k (real counts, 2,000 genes, annotated cell types).

mod common;
use common::{counts, pbmc};
use scvir_engine::data::split::make_semisupervised_split;
use scvir_engine::data::{Counts, Covariates};
use scvir_engine::de::{self, BatchPolicy, DeConfig, Mode};
use scvir_engine::io::h5ad;
use scvir_engine::module::{ScanviConfig, Vae, VaeConfig};
use scvir_engine::train::{self, NoObserver, TrainConfig};
use scvir_engine::{infer, runtime};
use tch::Device;

/// Cell-type codes of the bundled data.
fn cell_types(d: &h5ad::H5ad) -> (Vec<i32>, usize) {
    d.obs
        .columns
        .iter()
        .find_map(|(n, c)| match c {
            h5ad::Column::Categorical { codes, categories, .. } if n == "cell_type" => Some((codes.clone(), categories.len())),
            _ => None,
        })
        .expect("cell_type column")
}

static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn train_on(vae: &mut Vae, x: Counts<'_>, cov: &Covariates<'_>, epochs: usize) -> train::TrainOutcome {
    let batch = vec![0i32; x.n_cells()];
    let cfg = TrainConfig { max_epochs: Some(epochs), seed: 0, ..Default::default() };
    train::train(vae, x, &batch, cov, &cfg, &mut NoObserver).unwrap()
}

#[test]
fn ldvae_has_a_bias_free_linear_decoder_and_trains() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(1), ..Default::default() });
    let d = pbmc();
    let x = counts(&d);
    runtime::seed_everything(0);
    let cfg = VaeConfig { linear_decoder: true, ..VaeConfig::new(2000, 1) };
    let mut vae = Vae::new(cfg, Device::Cpu, None).unwrap();
    let names: Vec<String> = vae.vs.variables().into_keys().collect();
    assert!(names.contains(&"decoder.factor_regressor.layer_0.linear.weight".to_string()));
    assert!(!names.iter().any(|n| n.contains("factor_regressor.layer_0.linear.bias")));
    // 2000 genes x 10 latent weights, per-gene BN scale and shift, twice (scale and dropout).
    let decoder: i64 = vae.vs.variables().iter().filter(|(n, _)| n.starts_with("decoder.")).filter(|(n, _)| !n.contains("running") && !n.contains("num_batches")).map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(decoder, 2 * (2000 * 10 + 2 * 2000));
    let out = train_on(&mut vae, x, &Covariates::default(), 3);
    let e: Vec<f64> = out.history.epochs.iter().map(|r| r.elbo_train).collect();
    assert!(e[2] < e[0], "{e:?}");
}

#[test]
fn semisupervised_split_keeps_label_proportions() {
    let labelled: Vec<bool> = (0..1000).map(|i| i % 4 == 0).collect();
    let s = make_semisupervised_split(&labelled, None, None, 128, true, 0).unwrap();
    let count = |v: &[usize]| v.iter().filter(|&&c| labelled[c]).count();
    assert_eq!(s.train.len() + s.validation.len(), 1000);
    assert_eq!(count(&s.train), 225); // ceil(0.9 * 250)
    assert_eq!(count(&s.validation), 25);
    assert!(s.train[..225].iter().all(|&c| labelled[c]), "labelled cells come first");
}

#[test]
fn scanvi_learns_hidden_labels_and_predicts_probabilities() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(1), ..Default::default() });
    let d = pbmc();
    let x = counts(&d);
    let (truth, n_types) = cell_types(&d);
    // Every other cell keeps its label; the others get the unlabelled code n_types.
    let masked: Vec<i32> = truth.iter().enumerate().map(|(i, &c)| if i % 2 == 0 { c } else { n_types as i32 }).collect();
    let cov = Covariates { labels: Some(&masked), ..Default::default() };
    runtime::seed_everything(0);
    let cfg = VaeConfig {
        n_labels: n_types as i64 + 1,
        scanvi: Some(ScanviConfig { n_labels: n_types as i64, ..Default::default() }),
        ..VaeConfig::new(2000, 1)
    };
    let mut vae = Vae::new(cfg, Device::Cpu, None).unwrap();
    let out = train_on(&mut vae, x, &cov, 8);
    assert!(out.history.epochs.iter().all(|r| r.elbo_train.is_finite()));
    let batch = vec![0i32; x.n_cells()];
    let p = infer::label_probabilities(&vae, x, &batch, &Covariates::default(), true, 256).unwrap();
    let mut correct = 0;
    let mut hidden = 0;
    for (i, row) in p.chunks(n_types).enumerate() {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        if i % 2 == 1 {
            hidden += 1;
            let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            correct += (best as i32 == truth[i]) as usize;
        }
    }
    let acc = correct as f64 / hidden as f64;
    assert!(acc > 0.85, "held-out accuracy {acc}");
}

#[test]
fn de_sampler_rows_are_proportions_and_seeded() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(1), ..Default::default() });
    let d = pbmc();
    let x = counts(&d);
    runtime::seed_everything(0);
    let mut vae = Vae::new(VaeConfig::new(2000, 1), Device::Cpu, None).unwrap();
    train_on(&mut vae, x, &Covariates::default(), 2);
    let batch = vec![0i32; x.n_cells()];
    let cells1: Vec<usize> = (0..100).collect();
    let cells2: Vec<usize> = (100..400).collect();
    let cfg = DeConfig {
        mode: Mode::Change,
        delta: Some(0.25),
        pseudocounts: None,
        n_samples_overall: 300,
        threshold_counts: 0.01,
        two_sided: false,
        batch_size: 64,
        seed: 3,
        n_threads: 2,
        importance: None,
    };
    let run = |cfg: &DeConfig| {
        tch::manual_seed(1);
        de::compare(&vae, x, &batch, &Default::default(), &cells1, &cells2, &BatchPolicy::Observed, &BatchPolicy::Observed, cfg).unwrap()
    };
    let a = run(&cfg);
    let b = run(&cfg);
    let col = |r: &de::DeResult, name: &str| r.columns.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(col(&a, "lfc_mean"), col(&b, "lfc_mean"));
    let s1: f64 = col(&a, "scale1").iter().sum();
    assert!((s1 - 1.0).abs() < 1e-3, "mean proportions sum to 1: {s1}");
    assert!(col(&a, "proba_de").iter().all(|&p| (0.0..=1.0).contains(&p)));
    let pc = a.pseudocounts.unwrap();
    assert!(pc >= 1e-10 && pc < 1e-3);
    let vanilla = run(&DeConfig { mode: Mode::Vanilla, ..cfg.clone() });
    assert!(col(&vanilla, "proba_m1").iter().zip(col(&vanilla, "proba_m2")).all(|(p, q)| (p + q - 1.0).abs() < 1e-12));
    // lvm-DE: importance-weighted samples are still proportions, and seeded (the B-cell marker
    // check on a trained model is in the R tests).
    let iw = de::importance::ImportanceConfig { max_cells: 50, truncation: true, n_mc_samples: 20 };
    let w = run(&DeConfig { importance: Some(iw.clone()), ..cfg.clone() });
    assert_eq!(col(&w, "lfc_mean"), col(&run(&DeConfig { importance: Some(iw), ..cfg.clone() }), "lfc_mean"));
    let sw: f64 = col(&w, "scale1").iter().sum();
    assert!((sw - 1.0).abs() < 1e-3, "weighted proportions sum to 1: {sw}");
    assert!(col(&w, "proba_de").iter().all(|&p| (0.0..=1.0).contains(&p)));
}

/// In evaluation the encoders are deterministic: a draw from the posteriors of a first
/// `inference` is exactly what a second `inference` gives (the same random numbers in the same
/// order), for an observed and a latent library. The marginal log-likelihood and DE's importance
/// weights rely on it to run the encoders once per minibatch.
#[test]
fn a_resampled_draw_is_a_second_inference() {
    use scvir_engine::data::MinibatchBuilder;
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(1), ..Default::default() });
    let d = pbmc();
    let x = counts(&d);
    let batch = vec![0i32; x.n_cells()];
    for observed in [true, false] {
        runtime::seed_everything(4);
        let cfg = VaeConfig { use_observed_lib_size: observed, ..VaeConfig::new(2000, 1) };
        let registry = scvir_engine::data::Registry::with_library_prior(vec![], x, &batch, 1);
        let prior = (registry.library_log_means.as_slice(), registry.library_log_vars.as_slice());
        let mut vae = Vae::new(cfg, Device::Cpu, Some(prior)).unwrap();
        train_on(&mut vae, x, &Covariates::default(), 2);
        let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
        let cells: Vec<usize> = (100..228).collect();
        let mb = builder.build(&cells);
        let (again, drawn) = tch::no_grad(|| {
            tch::manual_seed(11);
            let _first = vae.inference(&mb, false);
            let again = vae.inference(&mb, false);
            tch::manual_seed(11);
            let first = vae.inference(&mb, false);
            (again, vae.resample(&first))
        });
        assert!(drawn.z.equal(&again.z) && drawn.library.equal(&again.library), "observed library: {observed}");
        assert_eq!(drawn.ql.is_some(), !observed);
        let first_z = tch::no_grad(|| {
            tch::manual_seed(11);
            vae.inference(&mb, false).z
        });
        assert!(!drawn.z.equal(&first_z), "a new draw, not the first one again");
        let ll = infer::marginal_ll(&vae, x, &batch, &Covariates::default(), 5, 128).unwrap();
        assert!(ll.iter().all(|v| v.is_finite() && *v < 0.0));
    }
}
