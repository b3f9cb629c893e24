//! The training likelihoods (nonzero-split form) and the dense scvi-tools form against values
//! computed independently in f64 from the formulas, at zeros, large counts and tiny dispersions.

use scvir_engine::data::counts::OwnedCounts;
use scvir_engine::data::MinibatchBuilder;
use scvir_engine::distributions::{dense, log_likelihood, GeneLikelihood};
use tch::{Device, Kind, Tensor};

const EPS: f64 = 1e-8;

fn lg(x: f64) -> f64 {
    libm::lgamma(x)
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 { x } else { x.exp().ln_1p() }
}

fn nb_ref(x: f64, mu: f64, theta: f64) -> f64 {
    let l = (theta + mu + EPS).ln();
    theta * ((theta + EPS).ln() - l) + x * ((mu + EPS).ln() - l) + lg(x + theta) - lg(theta) - lg(x + 1.0)
}

fn zinb_ref(x: f64, mu: f64, theta: f64, pi: f64) -> f64 {
    let sp = softplus(-pi);
    let pi_theta_log = -pi + theta * ((theta + EPS).ln() - (theta + mu + EPS).ln());
    if x < EPS {
        softplus(pi_theta_log) - sp
    } else {
        -sp + pi_theta_log + x * ((mu + EPS).ln() - (theta + mu + EPS).ln()) + lg(x + theta) - lg(theta) - lg(x + 1.0)
    }
}

fn normal_ref(x: f64, mu: f64, sd: f64) -> f64 {
    -(x - mu).powi(2) / (2.0 * sd * sd) - sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
}

fn poisson_ref(x: f64, mu: f64) -> f64 {
    (if x == 0.0 { 0.0 } else { x * mu.ln() }) - mu - lg(x + 1.0)
}

/// 3 cells x 4 genes with zeros, small and large counts.
fn data() -> (OwnedCounts, Vec<Vec<f64>>) {
    let dense = vec![vec![0.0, 3.0, 0.0, 1.0], vec![1200.0, 0.0, 7.0, 0.0], vec![0.0, 0.0, 0.0, 55.0]];
    let mut m = OwnedCounts { n_cells: 3, n_genes: 4, indptr: vec![0], ..Default::default() };
    for row in &dense {
        for (g, &v) in row.iter().enumerate() {
            if v != 0.0 {
                m.indices.push(g as i32);
                m.data.push(v);
            }
        }
        m.indptr.push(m.data.len() as i32);
    }
    (m, dense)
}

fn mu_values() -> Vec<Vec<f64>> {
    vec![vec![0.5, 2.0, 1e-3, 30.0], vec![900.0, 0.2, 9.0, 1e-6], vec![3.0, 0.01, 4.0, 60.0]]
}

fn t2(v: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_slice(&flat).view([v.len() as i64, v[0].len() as i64])
}

fn check(kind: GeneLikelihood, theta: &[f64], pi: &[Vec<f64>]) {
    let (m, x) = data();
    let counts = m.view().unwrap();
    let codes = vec![0i32; 3];
    let mut builder = MinibatchBuilder::new(counts, &codes, &Default::default(), Device::Cpu);
    let mb = builder.build(&[0, 1, 2]);
    let mu = mu_values();
    let theta_t = Tensor::from_slice(&theta.iter().map(|&v| v as f32).collect::<Vec<_>>());
    let pi_t = t2(pi);
    let got = log_likelihood(kind, &mb, &t2(&mu), Some(&theta_t), Some(&pi_t));
    let dense_form = match kind {
        GeneLikelihood::Zinb => dense::log_zinb(&mb.x, &t2(&mu), &theta_t, &pi_t),
        GeneLikelihood::Nb => dense::log_nb(&mb.x, &t2(&mu), &theta_t),
        GeneLikelihood::Poisson => dense::log_poisson(&mb.x, &t2(&mu)),
        GeneLikelihood::Normal => dense::log_normal(&mb.x, &t2(&mu), &theta_t),
    }
    .sum_dim_intlist(1, false, Kind::Float);
    for c in 0..3 {
        let want: f64 = (0..4)
            .map(|g| match kind {
                GeneLikelihood::Zinb => zinb_ref(x[c][g], mu[c][g], theta[g], pi[c][g]),
                GeneLikelihood::Nb => nb_ref(x[c][g], mu[c][g], theta[g]),
                GeneLikelihood::Poisson => poisson_ref(x[c][g], mu[c][g]),
                GeneLikelihood::Normal => normal_ref(x[c][g], mu[c][g], theta[g]),
            })
            .sum();
        let a = got.double_value(&[c as i64]);
        let b = dense_form.double_value(&[c as i64]);
        let tol = 1e-4 * want.abs().max(1.0);
        assert!((a - want).abs() < tol, "{kind:?} cell {c}: split form {a} vs reference {want}");
        assert!((b - want).abs() < tol, "{kind:?} cell {c}: dense form {b} vs reference {want}");
    }
}

#[test]
fn zinb_matches_formula() {
    let pi = vec![vec![-2.0, 0.5, 3.0, -8.0], vec![0.0, 1.5, -1.0, 4.0], vec![-0.3, 10.0, 0.1, -3.0]];
    check(GeneLikelihood::Zinb, &[0.7, 12.0, 1e-4, 250.0], &pi);
}

#[test]
fn nb_matches_formula() {
    let pi = vec![vec![0.0; 4]; 3];
    check(GeneLikelihood::Nb, &[0.7, 12.0, 1e-4, 250.0], &pi);
    check(GeneLikelihood::Nb, &[1e-3, 1e-3, 5.0, 0.05], &pi);
}

#[test]
fn poisson_matches_formula() {
    let pi = vec![vec![0.0; 4]; 3];
    check(GeneLikelihood::Poisson, &[1.0; 4], &pi);
}

#[test]
fn normal_matches_formula() {
    let pi = vec![vec![0.0; 4]; 3];
    check(GeneLikelihood::Normal, &[0.7, 12.0, 3.0, 250.0], &pi);
}

#[test]
fn per_cell_dispersion_matches_formula() {
    // gene-batch / gene-cell dispersions arrive as cells x genes tensors.
    let (m, x) = data();
    let counts = m.view().unwrap();
    let codes = vec![0i32; 3];
    let mut builder = MinibatchBuilder::new(counts, &codes, &Default::default(), Device::Cpu);
    let mb = builder.build(&[2, 0]);
    let mu = vec![mu_values()[2].clone(), mu_values()[0].clone()];
    let theta = vec![vec![0.3, 4.0, 1e-4, 90.0], vec![2.0, 0.01, 7.0, 0.5]];
    let got = log_likelihood(GeneLikelihood::Nb, &mb, &t2(&mu), Some(&t2(&theta)), None);
    for (row, cell) in [2usize, 0].iter().enumerate() {
        let want: f64 = (0..4).map(|g| nb_ref(x[*cell][g], mu[row][g], theta[row][g])).sum();
        let a = got.double_value(&[row as i64]);
        assert!((a - want).abs() < 1e-4 * want.abs().max(1.0), "row {row}: {a} vs {want}");
    }
}

/// The fused kernel's values and gradients against autograd through the tensor-op form, on
/// realistic magnitudes (100 cells x 300 genes), for NB and ZINB, gene and per-cell theta.
#[test]
fn fused_dense_terms_match_autograd() {
    use scvir_engine::distributions::{fused, sparse::dense_terms_by_tensor_ops};
    tch::manual_seed(0);
    let (b, g) = (100i64, 300i64);
    let opts = (Kind::Float, Device::Cpu);
    let x = (Tensor::rand([b, g], opts) * 3.0).floor() * Tensor::rand([b, g], opts).gt(0.7);
    for (per_cell, zinb) in [(false, true), (false, false), (true, true), (true, false)] {
        let mu = (Tensor::randn([b, g], opts) * 2.0 - 1.0).exp().set_requires_grad(true);
        let theta_shape: Vec<i64> = if per_cell { vec![b, g] } else { vec![g] };
        let theta = (Tensor::randn(theta_shape.as_slice(), opts) * 1.5).exp().set_requires_grad(true);
        let pi = (Tensor::randn([b, g], opts) * 2.0).set_requires_grad(true);
        let pi_opt = if zinb { Some(&pi) } else { None };
        // Reference: autograd through tensor ops, loss = sum of per-cell values with weights.
        let w = Tensor::rand([b], opts);
        let reference = dense_terms_by_tensor_ops(&x, &mu, &theta, pi_opt);
        (&reference * &w).sum(Kind::Float).backward();
        let (gm_ref, gt_ref) = (mu.grad().copy(), theta.grad().copy());
        let gp_ref = if zinb { Some(pi.grad().copy()) } else { None };
        for t in [&mu, &theta, &pi] {
            let mut gr = t.grad();
            if gr.defined() {
                let _ = gr.zero_();
            }
        }
        let terms = fused::dense_terms(&x, &mu, &theta, pi_opt);
        // Without gradient tracking (validation, queries) the value is the kernel's, exactly,
        // and nothing is recorded.
        let evaluated = tch::no_grad(|| fused::attach(&terms, fused::Mean::Given(&mu), &theta, pi_opt));
        assert!(evaluated.equal(&terms.value) && !evaluated.requires_grad());
        let attached = fused::attach(&terms, fused::Mean::Given(&mu), &theta, pi_opt);
        assert!(attached.requires_grad());
        (&attached * &w).sum(Kind::Float).backward();
        let rel = |a: &Tensor, b: &Tensor| ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).double_value(&[]);
        assert!(rel(&attached, &reference) < 1e-5, "values differ ({per_cell}, {zinb})");
        assert!(rel(&mu.grad(), &gm_ref) < 1e-4, "d/dmu differs ({per_cell}, {zinb})");
        assert!(rel(&theta.grad(), &gt_ref) < 1e-4, "d/dtheta differs ({per_cell}, {zinb})");
        if let Some(gp) = gp_ref {
            assert!(rel(&pi.grad(), &gp) < 1e-4, "d/dpi differs ({per_cell}, {zinb})");
        }
    }
}

/// Every level of vector instructions this CPU offers gives the fused kernel's results: AVX-512
/// and AVX2 bit for bit (the same lane-wise operations), the baseline (no FMA) to rounding.
#[test]
fn fused_dense_terms_agree_across_vector_levels() {
    use scvir_engine::distributions::fused;
    use scvir_engine::simd::Simd;
    tch::manual_seed(1);
    let (b, g) = (37i64, 301i64); // lengths that leave remainders after 16 and 8 lanes
    let opts = (Kind::Float, Device::Cpu);
    let x = (Tensor::rand([b, g], opts) * 4.0).floor() * Tensor::rand([b, g], opts).gt(0.8);
    let mu = (Tensor::randn([b, g], opts) * 2.0 - 1.0).exp();
    let theta = (Tensor::randn([g], opts) * 1.5).exp();
    let pi = Tensor::randn([b, g], opts) * 2.0;
    for pi_opt in [Some(&pi), None] {
        let base = fused::dense_terms_at(Simd::Baseline, &x, &mu, &theta, pi_opt);
        let mut previous: Option<fused::DenseTerms> = None;
        for level in Simd::available() {
            let t = fused::dense_terms_at(level, &x, &mu, &theta, pi_opt);
            let close = |a: &Tensor, b: &Tensor| ((a - b).abs().max() / b.abs().max()).double_value(&[]) < 1e-5;
            assert!(close(&t.value, &base.value) && close(&t.grad_mu, &base.grad_mu) && close(&t.grad_theta, &base.grad_theta), "{level:?}");
            if let (Some(p), Some(bp)) = (&t.grad_pi, &base.grad_pi) {
                assert!(close(p, bp), "{level:?} d/dpi");
            }
            if let Some(prev) = &previous {
                if level != Simd::Baseline {
                    assert!(t.value.equal(&prev.value) && t.grad_mu.equal(&prev.grad_mu) && t.grad_theta.equal(&prev.grad_theta), "{level:?} differs from the wider level");
                }
            }
            previous = Some(t);
        }
    }
}

/// Split across libtorch's threads (minibatches from 65,536 entries), the fused kernel gives the
/// same bits as on one thread: each cell is computed by one thread, in the same order.
#[test]
fn fused_dense_terms_do_not_depend_on_threads() {
    use scvir_engine::distributions::fused;
    tch::manual_seed(2);
    let (b, g) = (131i64, 613i64);
    let opts = (Kind::Float, Device::Cpu);
    let x = (Tensor::rand([b, g], opts) * 4.0).floor() * Tensor::rand([b, g], opts).gt(0.8);
    let mu = (Tensor::randn([b, g], opts) * 2.0 - 1.0).exp();
    let theta = (Tensor::randn([g], opts) * 1.5).exp();
    let pi = Tensor::randn([b, g], opts) * 2.0;
    let before = tch::get_num_threads();
    tch::set_num_threads(1);
    let one = fused::dense_terms(&x, &mu, &theta, Some(&pi));
    tch::set_num_threads(3);
    let three = fused::dense_terms(&x, &mu, &theta, Some(&pi));
    tch::set_num_threads(before);
    assert!(one.value.equal(&three.value) && one.grad_mu.equal(&three.grad_mu));
    assert!(one.grad_theta.equal(&three.grad_theta) && one.grad_pi.unwrap().equal(&three.grad_pi.unwrap()));
}

/// The whole fused log-likelihood (dense and nonzero terms in one pass) against autograd through
/// scvi-tools' dense formula, values and gradients, on a minibatch of real-sized counts (up to
/// 1,200), NB and ZINB, per-gene and per-cell theta; given mu, and mu formed from the decoder's
/// logits and the log library.
#[test]
fn fused_log_likelihood_gradients_match_the_dense_formula() {
    use scvir_engine::distributions::{dense, fused};
    tch::manual_seed(3);
    let (b, g) = (40i64, 250i64);
    let opts = (Kind::Float, Device::Cpu);
    let x = ((Tensor::rand([b, g], opts) * 6.0).exp().floor() - 1.0).clamp_min(0.0) * Tensor::rand([b, g], opts).gt(0.75);
    let mut m = OwnedCounts { n_cells: b as usize, n_genes: g as usize, indptr: vec![0], ..Default::default() };
    let xv: Vec<f32> = Vec::<f32>::try_from(x.reshape([-1])).unwrap();
    for c in 0..b as usize {
        for j in 0..g as usize {
            let v = xv[c * g as usize + j];
            if v != 0.0 {
                m.indices.push(j as i32);
                m.data.push(v as f64);
            }
        }
        m.indptr.push(m.data.len() as i32);
    }
    let counts = m.view().unwrap();
    let codes = vec![0i32; b as usize];
    let mut builder = MinibatchBuilder::new(counts, &codes, &Default::default(), Device::Cpu);
    let cells: Vec<usize> = (0..b as usize).rev().collect(); // a shuffled order
    let mb = builder.build(&cells);
    let x_mb = x.index_select(0, &Tensor::from_slice(&cells.iter().map(|&c| c as i64).collect::<Vec<_>>()));
    for (per_cell, zinb) in [(false, true), (false, false), (true, true), (true, false)] {
        let mu = (Tensor::randn([b, g], opts) * 2.0).exp().set_requires_grad(true);
        let theta_shape: Vec<i64> = if per_cell { vec![b, g] } else { vec![g] };
        let theta = (Tensor::randn(theta_shape.as_slice(), opts) * 1.5).exp().set_requires_grad(true);
        let pi = (Tensor::randn([b, g], opts) * 2.0).set_requires_grad(true);
        let w = Tensor::rand([b], opts);
        let kind = if zinb { GeneLikelihood::Zinb } else { GeneLikelihood::Nb };
        let got = log_likelihood(kind, &mb, &mu, Some(&theta), zinb.then_some(&pi));
        (&got * &w).sum(Kind::Float).backward();
        let grads = |t: &Tensor| {
            let gr = t.grad().copy();
            let _ = t.grad().zero_();
            gr
        };
        let (gm, gt) = (grads(&mu), grads(&theta));
        let gp = zinb.then(|| grads(&pi));
        let reference = if zinb { dense::log_zinb(&x_mb, &mu, &theta, &pi) } else { dense::log_nb(&x_mb, &mu, &theta) }.sum_dim_intlist(1, false, Kind::Float);
        (&reference * &w).sum(Kind::Float).backward();
        let rel = |a: &Tensor, b: &Tensor| ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).double_value(&[]);
        assert!(rel(&got, &reference) < 1e-5, "values differ ({per_cell}, {zinb}): {}", rel(&got, &reference));
        assert!(rel(&gm, &mu.grad()) < 1e-4, "d/dmu differs ({per_cell}, {zinb}): {}", rel(&gm, &mu.grad()));
        assert!(rel(&gt, &theta.grad()) < 1e-4, "d/dtheta differs ({per_cell}, {zinb}): {}", rel(&gt, &theta.grad()));
        if let Some(gp) = gp {
            assert!(rel(&gp, &pi.grad()) < 1e-4, "d/dpi differs ({per_cell}, {zinb})");
        }
        for t in [&theta, &pi] {
            let mut gr = t.grad();
            if gr.defined() {
                let _ = gr.zero_();
            }
        }

        // The same with mu = exp(l) softmax(h) formed in the kernel (training's path): the
        // gradients come for the logits h and the log library l, which is about 7 as in data.
        let h = (Tensor::randn([b, g], opts) * 2.0).set_requires_grad(true);
        let l = (Tensor::randn([b, 1], opts) * 0.5 + 7.0).set_requires_grad(true);
        let mean = fused::Mean::Softmax { logits: &h, log_library: &l };
        let pi_opt = zinb.then_some(&pi);
        let terms = fused::likelihood_terms(&mb, mean, &theta, pi_opt).expect("the minibatch's nonzeros are in cell order");
        let got = fused::attach(&terms, mean, &theta, pi_opt) - &mb.lgamma_x1;
        (&got * &w).sum(Kind::Float).backward();
        let (gh, gl, gt) = (grads(&h), grads(&l), grads(&theta));
        let gp = zinb.then(|| grads(&pi));
        let mu = l.exp() * h.softmax(-1, Kind::Float);
        let reference = if zinb { dense::log_zinb(&x_mb, &mu, &theta, &pi) } else { dense::log_nb(&x_mb, &mu, &theta) }.sum_dim_intlist(1, false, Kind::Float);
        (&reference * &w).sum(Kind::Float).backward();
        assert!(rel(&got, &reference) < 1e-5, "softmax: values differ ({per_cell}, {zinb}): {}", rel(&got, &reference));
        assert!(rel(&gh, &h.grad()) < 1e-4, "d/dlogits differs ({per_cell}, {zinb}): {}", rel(&gh, &h.grad()));
        assert!(rel(&gl, &l.grad()) < 1e-4, "d/dlog library differs ({per_cell}, {zinb}): {}", rel(&gl, &l.grad()));
        assert!(rel(&gt, &theta.grad()) < 1e-4, "softmax: d/dtheta differs ({per_cell}, {zinb})");
        if let Some(gp) = gp {
            assert!(rel(&gp, &pi.grad()) < 1e-4, "softmax: d/dpi differs ({per_cell}, {zinb})");
        }
    }
}
