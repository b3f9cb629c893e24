//! The encoders' sparse first layer against the dense product and autograd, on real PBMC 3k
//! minibatches: values, weight gradients (counts and log1p), independence from the thread count,
//! and a whole model's gradients with and without it. Also: a minibatch's tensor forms of its
//! nonzeros come from its host rows, minibatches built on several threads are the ones built on
//! one, and a model's gradients are the same whether the likelihood or tensor operations form
//! the rates from the decoder's logits.

mod common;
use common::{counts, pbmc};
use scvir_engine::data::{Minibatch, MinibatchBuilder};
use scvir_engine::distributions::fused::{self, Mean};
use scvir_engine::module::{Vae, VaeConfig};
use scvir_engine::nn::sparse_input::{self, SparseInput};
use scvir_engine::runtime;
use tch::{Device, Kind, Tensor};

/// libtorch's generator and thread count are process-global; tests take turns.
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// 128 cells spread over the data set.
fn minibatch(builder: &mut MinibatchBuilder<'_>) -> Minibatch {
    let cells: Vec<usize> = (0..128).map(|i| i * 20 + 3).collect();
    builder.build(&cells)
}

/// `f` on a minibatch of the bundled PBMC 3k.
fn with_minibatch<T>(f: impl FnOnce(&Minibatch) -> T) -> T {
    let d = pbmc();
    let x = counts(&d);
    let batch = vec![0i32; x.n_cells()];
    let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
    f(&minibatch(&mut builder))
}

fn close(a: &Tensor, b: &Tensor, rel: f64) -> bool {
    let scale = f64::try_from(b.abs().max()).unwrap().max(1e-12);
    f64::try_from((a - b).abs().max()).unwrap() <= rel * scale
}

/// A first-layer weight (hidden x genes) whose `.grad` exists, as after a first training step.
fn weight(g: i64) -> Tensor {
    let w = (Tensor::randn([128, g], (Kind::Float, Device::Cpu)) * 0.05).set_requires_grad(true);
    (w.sum(Kind::Float) * 0.0).backward();
    w
}

/// Output and weight gradient of sum(R * (x W^T)): densely through autograd, and sparsely.
fn both(mb: &Minibatch, w: &mut Tensor, log1p: bool) -> ((Tensor, Tensor), (Tensor, Tensor)) {
    let x = if log1p { mb.x_log1p() } else { &mb.x };
    let r = Tensor::randn([mb.n_cells as i64, 128], (Kind::Float, Device::Cpu));
    let yd = x.matmul(&w.tr());
    (&yd * &r).sum(Kind::Float).backward();
    let gd = w.grad().copy();
    let _ = w.grad().zero_();
    let rows = mb.rows().expect("a CPU minibatch carries its nonzeros");
    let ys = sparse_input::linear(SparseInput { rows, log1p }, w).expect("the sparse path applies");
    (&ys * &r).sum(Kind::Float).backward();
    sparse_input::finish_backward(rows);
    let gs = w.grad().copy();
    let _ = w.grad().zero_();
    ((yd.detach(), gd), (ys.detach(), gs))
}

/// A CPU minibatch collects its nonzeros once, as host rows; the nonzeros as tensors and the
/// dense log1p counts formed from them on demand are the dense block's, and the fused likelihood
/// gives the same terms from the rows as from those tensors.
#[test]
fn tensor_forms_come_from_the_host_rows() {
    let _t = turn();
    let d = pbmc();
    let x = counts(&d);
    let batch = vec![0i32; x.n_cells()];
    let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
    let mut mb = minibatch(&mut builder);
    let g = mb.x.size()[1];
    let flat_x = mb.x.reshape([-1]);
    let positions = flat_x.nonzero().squeeze_dim(1);
    assert!(positions.size()[0] > 10_000, "a real minibatch's nonzeros");
    assert!(mb.nz_flat().equal(&positions), "the nonzeros' positions are the dense block's, in cell and gene order");
    assert!(mb.nz_x().equal(&flat_x.index_select(0, &positions)));
    assert!(mb.nz_row().equal(&positions.divide_scalar_mode(g, "floor")));
    assert!(mb.nz_gene().equal(&positions.remainder(g)));
    assert!(close(mb.x_log1p(), &mb.x.log1p(), 1e-6), "log1p counts");

    tch::manual_seed(3);
    let shape = [mb.n_cells as i64, g];
    let logits = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let theta = Tensor::rand([g], (Kind::Float, Device::Cpu)) * 5.0 + 0.1;
    let pi = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let terms = |mb: &Minibatch| {
        let mean = Mean::Softmax { logits: &logits, log_library: &mb.log_library };
        fused::likelihood_terms(mb, mean, &theta, Some(&pi)).expect("the fused likelihood applies")
    };
    let from_rows = terms(&mb);
    mb.drop_host_rows();
    assert!(mb.rows().is_none());
    let from_tensors = terms(&mb);
    assert!(from_rows.value.equal(&from_tensors.value) && from_rows.grad_mu.equal(&from_tensors.grad_mu));
}

/// Minibatches are built by parts on libtorch's threads (each part fills its own cells); the
/// result, dense blocks, nonzeros and host rows alike, does not depend on how many there are.
#[test]
fn minibatches_do_not_depend_on_threads() {
    let _t = turn();
    let d = pbmc();
    let x = counts(&d);
    let batch = vec![0i32; x.n_cells()];
    let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
    let before = tch::get_num_threads();
    let mut built = Vec::new();
    for threads in [1, 3] {
        tch::set_num_threads(threads);
        built.push(minibatch(&mut builder));
    }
    tch::set_num_threads(before);
    let (a, b) = (&built[0], &built[1]);
    for (name, u, v) in [
        ("x", &a.x, &b.x),
        ("x_log1p", a.x_log1p(), b.x_log1p()),
        ("nz_flat", a.nz_flat(), b.nz_flat()),
        ("nz_row", a.nz_row(), b.nz_row()),
        ("nz_gene", a.nz_gene(), b.nz_gene()),
        ("nz_x", a.nz_x(), b.nz_x()),
        ("lgamma_x1", &a.lgamma_x1, &b.lgamma_x1),
        ("log_library", &a.log_library, &b.log_library),
    ] {
        assert!(u.equal(v), "{name} differs between 1 and 3 threads");
    }
    assert!(a.nz_x().size()[0] > 10_000, "a real minibatch's nonzeros");
    let (ra, rb) = (a.rows().unwrap(), b.rows().unwrap());
    assert_eq!((&ra.row_ptr, &ra.gene, &ra.x, &ra.log1p), (&rb.row_ptr, &rb.gene, &rb.x, &rb.log1p));
}

#[test]
fn sparse_first_layer_matches_the_dense_product_and_its_gradient() {
    let _t = turn();
    with_minibatch(check_against_dense);
}

fn check_against_dense(mb: &Minibatch) {
    tch::manual_seed(11);
    let fresh = (Tensor::randn([128, 2000], (Kind::Float, Device::Cpu)) * 0.05).set_requires_grad(true);
    let rows = mb.rows().unwrap();
    assert!(
        sparse_input::linear(SparseInput { rows, log1p: true }, &fresh).is_none(),
        "a trained weight without .grad takes the dense path (which creates .grad)"
    );
    let untracked = tch::no_grad(|| sparse_input::linear(SparseInput { rows, log1p: true }, &fresh));
    assert!(untracked.is_some_and(|y| !y.requires_grad()), "without gradient tracking the product is sparse");
    let mut w = weight(2000);
    for log1p in [true, false] {
        let ((yd, gd), (ys, gs)) = both(mb, &mut w, log1p);
        assert!(close(&ys, &yd, 1e-5), "products differ (log1p = {log1p})");
        assert!(close(&gs, &gd, 1e-5), "weight gradients differ (log1p = {log1p})");
    }
    // A frozen weight: the product alone, nothing deferred.
    let frozen = w.detach();
    let y = sparse_input::linear(SparseInput { rows, log1p: true }, &frozen).unwrap();
    assert!(!y.requires_grad() && close(&y, &mb.x_log1p().matmul(&frozen.tr()), 1e-5));
}

#[test]
fn sparse_first_layer_does_not_depend_on_threads() {
    let _t = turn();
    with_minibatch(check_threads);
}

fn check_threads(mb: &Minibatch) {
    let before = tch::get_num_threads();
    let run = |threads: i32| {
        tch::set_num_threads(threads);
        tch::manual_seed(12);
        let mut w = weight(2000);
        let (_, sparse) = both(mb, &mut w, true);
        sparse
    };
    let (y1, g1) = run(1);
    let (y3, g3) = run(3);
    tch::set_num_threads(before);
    assert!(y1.equal(&y3) && g1.equal(&g3), "the same bits at 1 and 3 threads");
}

/// One training step's gradients of every parameter of a default SCVI model, with the first
/// layer sparse and dense (same seed, so the same dropout and posterior draws).
#[test]
fn model_gradients_are_the_same_with_the_sparse_first_layer() {
    let _t = turn();
    // The observed library (one sparse product per step), and a latent library, whose library
    // encoder reads the same input (two products, sharing their gene-ordered nonzeros); each
    // also with two batches encoded (the first layers' weights then have the batch's one-hot
    // columns after the genes', whose gradient autograd gives).
    for threads in [1, 2] {
        let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(threads), ..Default::default() });
        for observed in [true, false] {
            for encode in [false, true] {
                check_model_gradients(observed, encode);
            }
        }
    }
}

fn check_model_gradients(observed: bool, encode: bool) {
    let d = pbmc();
    let x = counts(&d);
    let n_batch = if encode { 2 } else { 1 };
    // Cell 20 i + 3 (the minibatch's i-th) in batch i mod 2: both batches in the minibatch, or
    // BatchNorm would cancel the covariates' columns.
    let batch: Vec<i32> = (0..x.n_cells()).map(|c| ((c / 20) % n_batch) as i32).collect();
    let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
    tch::manual_seed(5);
    let mut config = VaeConfig::new(2000, n_batch as i64);
    config.use_observed_lib_size = observed;
    config.encode_covariates = encode;
    let (mut vae, params) = model(config, x);
    // The autograd step's sparse layer is what is compared here (the closed-form step has its
    // own test, tests/closed_form.rs).
    vae.closed_form = false;
    let touch = || {
        let zero: Tensor = params.iter().map(|(_, p)| p.sum(Kind::Float) * 0.0).sum();
        zero.backward();
    };
    touch();
    let mut grads = |sparse: bool| -> Vec<Tensor> {
        let mut mb = minibatch(&mut builder);
        if !sparse {
            mb.drop_host_rows();
        }
        tch::manual_seed(9);
        let out = vae.loss(&mb, true, 1.0);
        out.loss.backward();
        let names: &[&str] = if observed { &["z_encoder"] } else { &["z_encoder", "l_encoder"] };
        let firsts: Vec<&Tensor> = names
            .iter()
            .map(|e| &params.iter().find(|(n, _)| *n == format!("{e}.encoder.layer_0.linear.weight")).expect("first layer").1)
            .collect();
        // The decoder's linear heads (ZINB: scale and zero-inflation logits).
        let heads: Vec<&Tensor> = ["px_scale_decoder.weight", "px_scale_decoder.bias", "px_dropout_decoder.weight", "px_dropout_decoder.bias"]
            .iter()
            .map(|h| &params.iter().find(|(n, _)| n.ends_with(h)).expect("a decoder head").1)
            .collect();
        let reached = |w: &Tensor| f64::try_from(w.grad().abs().sum(Kind::Double)).unwrap() > 0.0;
        let reached_genes = |w: &Tensor| f64::try_from(w.grad().narrow(1, 0, 2000).abs().sum(Kind::Double)).unwrap() > 0.0;
        // Autograd reaches the first layers' genes' columns only on the dense path; the sparse
        // path's gradients arrive in finish_backward (the covariates' columns get theirs from
        // autograd on both). So do the heads' (weights and biases) where the
        // engine runs their products itself (an AVX-512 CPU not by Intel), and only with a
        // minibatch's rows.
        assert!(firsts.iter().all(|w| reached_genes(w) == !sparse));
        if encode {
            assert!(firsts.iter().all(|w| w.size()[1] == 2002 && f64::try_from(w.grad().narrow(1, 2000, 2).abs().sum(Kind::Double)).unwrap() > 0.0));
        }
        let own_heads = sparse && scvir_engine::gemm::available();
        assert!(heads.iter().all(|w| reached(w) == !own_heads));
        if let Some(rows) = mb.rows() {
            sparse_input::finish_backward(rows);
        }
        assert!(firsts.iter().chain(&heads).all(|w| reached(w)));
        let g: Vec<Tensor> = params.iter().map(|(_, p)| p.grad().copy()).collect();
        for (_, p) in &params {
            let _ = p.grad().zero_();
        }
        g
    };
    let dense = grads(false);
    let sparse = grads(true);
    assert_same_gradients(&params, &dense, &sparse, 1e-5, 1.0, &format!("observed library: {observed}, encoded batch: {encode}"));
}

/// A fresh model on PBMC 3k (with its library prior) and its trainable weights, sorted by name.
fn model(config: VaeConfig, x: scvir_engine::data::Counts<'_>) -> (Vae, Vec<(String, Tensor)>) {
    let log_library: Vec<f64> = (0..x.n_cells()).map(|c| x.cell(c).1.iter().sum::<f64>().ln()).collect();
    let mean = log_library.iter().sum::<f64>() / log_library.len() as f64;
    let var = log_library.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / log_library.len() as f64;
    let vae = Vae::new(config, Device::Cpu, Some((&[mean], &[var]))).unwrap();
    let mut params: Vec<(String, Tensor)> = vae.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (vae, params)
}

/// Every weight's gradient in `got` equals `want`'s within `rel` of its size (at least `floor`).
/// The first layers' biases, which BatchNorm cancels, have gradients of about 0 made of rounding:
/// those are taken relative to their layer's weight gradient, summed from the same output
/// gradients.
fn assert_same_gradients(params: &[(String, Tensor)], want: &[Tensor], got: &[Tensor], rel: f64, floor: f64, what: &str) {
    let largest = |t: &Tensor| f64::try_from(t.abs().max()).unwrap();
    assert!(want.len() == params.len() && got.len() == params.len() && params.len() > 10, "{what}: gradients of every weight");
    for ((name, _), (a, b)) in params.iter().zip(want.iter().zip(got)) {
        let layer_scale = name
            .strip_suffix("linear.bias")
            .and_then(|layer| params.iter().position(|(n, _)| *n == format!("{layer}linear.weight")))
            .map_or(0.0, |i| largest(&want[i]));
        let scale = largest(a).max(layer_scale).max(floor);
        let diff = largest(&(a - b));
        assert!(diff <= rel * scale, "{what}: {name}: gradients differ by {diff} (largest {scale})");
    }
}

/// Training's likelihood forms the rates exp(l) softmax(h) itself and carries their gradient on
/// to the decoder's logits and the log library. Against the decoder's softmax and the library
/// scaling run as tensor operations: the same per-cell losses and the same gradient for every
/// weight, for ZINB with the observed library, NB with a latent library, gene-cell dispersion,
/// and LDVAE's linear decoder, on one thread and split across two.
#[test]
fn model_gradients_are_the_same_with_rates_formed_in_the_likelihood() {
    use scvir_engine::distributions::GeneLikelihood;
    use scvir_engine::module::Dispersion;
    let _t = turn();
    for threads in [1, 2] {
        let _session = runtime::Session::enter(runtime::SessionOptions { n_threads: Some(threads), ..Default::default() });
        for (likelihood, observed, dispersion, linear) in [
            (GeneLikelihood::Zinb, true, Dispersion::Gene, false),
            (GeneLikelihood::Nb, false, Dispersion::Gene, false),
            (GeneLikelihood::Nb, true, Dispersion::GeneCell, false),
            (GeneLikelihood::Zinb, true, Dispersion::Gene, true),
        ] {
            let mut config = VaeConfig::new(2000, 1);
            config.gene_likelihood = likelihood;
            config.use_observed_lib_size = observed;
            config.dispersion = dispersion;
            config.linear_decoder = linear;
            let what = format!("{likelihood:?}, observed library {observed}, {dispersion:?}, linear {linear}, {threads} threads");
            check_rates(config, &what);
        }
    }
}

fn check_rates(config: VaeConfig, what: &str) {
    let d = pbmc();
    let x = counts(&d);
    let batch = vec![0i32; x.n_cells()];
    let mut builder = MinibatchBuilder::new(x, &batch, &Default::default(), Device::Cpu);
    let mut mb = minibatch(&mut builder);
    mb.drop_host_rows(); // the dense first layer: autograd reaches every weight
    tch::manual_seed(6);
    let (mut vae, params) = model(config, x);
    let mut run = |fused: bool| -> (Tensor, Vec<Tensor>) {
        vae.fused_rates = fused;
        tch::manual_seed(10);
        let out = vae.loss(&mb, true, 0.7);
        out.loss.backward();
        let g: Vec<Tensor> = params.iter().map(|(_, p)| p.grad().copy()).collect();
        for (_, p) in &params {
            let _ = p.grad().zero_();
        }
        (out.reconstruction.detach(), g)
    };
    let (tensor_ops, g_ops) = run(false);
    let (fused, g_fused) = run(true);
    assert!(close(&fused, &tensor_ops, 1e-5), "{what}: reconstruction losses differ");
    assert!(params.iter().any(|(n, _)| n.starts_with("decoder")), "{what}: no decoder weights were compared");
    assert_same_gradients(&params, &g_ops, &g_fused, 1e-4, 1e-3, what);
}
