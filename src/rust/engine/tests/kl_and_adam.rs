//! KL divergence against numerical integration, and the fused Adam against libtorch's Adam.

use scvir_engine::module::vae::{kl_normal_normal, kl_normal_std_normal};
use scvir_engine::train::adam::Adam;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

fn normal_log_pdf(x: f64, m: f64, v: f64) -> f64 {
    -(x - m).powi(2) / (2.0 * v) - 0.5 * (2.0 * std::f64::consts::PI * v).ln()
}

/// KL(p || q) = integral of p log(p / q), by the midpoint rule over +-12 sd of p.
fn kl_numeric(m1: f64, v1: f64, m2: f64, v2: f64) -> f64 {
    let sd = v1.sqrt();
    let (lo, hi, n) = (m1 - 12.0 * sd, m1 + 12.0 * sd, 200_000);
    let h = (hi - lo) / n as f64;
    (0..n)
        .map(|i| {
            let x = lo + (i as f64 + 0.5) * h;
            let log_p = normal_log_pdf(x, m1, v1);
            log_p.exp() * (log_p - normal_log_pdf(x, m2, v2)) * h
        })
        .sum()
}

#[test]
fn kl_of_two_normals_matches_integration() {
    for &(m1, v1, m2, v2) in &[(0.0, 1.0, 0.0, 1.0), (1.5, 0.2, -0.5, 2.0), (-3.0, 4.0, 1.0, 0.5), (0.3, 1e-3, 0.0, 1.0)] {
        let t = |v: f64| Tensor::from_slice(&[v]).to_kind(Kind::Double);
        let got = kl_normal_normal(&t(m1), &t(v1), &t(m2), &t(v2)).double_value(&[0]);
        let want = kl_numeric(m1, v1, m2, v2);
        assert!((got - want).abs() < 1e-5 * want.max(1.0), "KL({m1},{v1} || {m2},{v2}) = {got}, integral {want}");
        if m2 == 0.0 && v2 == 1.0 {
            let std = kl_normal_std_normal(&t(m1), &t(v1)).double_value(&[0]);
            assert!((std - want).abs() < 1e-5 * want.max(1.0));
        }
    }
}

/// Same parameters and gradients through our Adam and libtorch's: same trajectory.
fn compare_with_libtorch(weight_decay: f64) {
    tch::manual_seed(3);
    let init = Tensor::randn([37, 5], (Kind::Float, Device::Cpu));
    let target = Tensor::randn([37, 5], (Kind::Float, Device::Cpu));
    let vs_ours = nn::VarStore::new(Device::Cpu);
    let p_ours = vs_ours.root().var_copy("w", &init);
    let vs_ref = nn::VarStore::new(Device::Cpu);
    let p_ref = vs_ref.root().var_copy("w", &init);
    let mut ours = Adam::new(vec![p_ours.shallow_clone()], 1e-2, 0.01, weight_decay, false);
    let mut reference = nn::Adam { beta1: 0.9, beta2: 0.999, wd: weight_decay, eps: 0.01, amsgrad: false }
        .build(&vs_ref, 1e-2)
        .unwrap();
    for _ in 0..25 {
        let loss = (&p_ours - &target).square().sum(Kind::Float) + p_ours.abs().sum(Kind::Float);
        loss.backward();
        ours.step();
        let loss = (&p_ref - &target).square().sum(Kind::Float) + p_ref.abs().sum(Kind::Float);
        reference.zero_grad();
        loss.backward();
        reference.step();
    }
    let diff = (&p_ours - &p_ref).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "parameters drifted apart by {diff}");
    assert!((&p_ours - &init).abs().max().double_value(&[]) > 0.1, "parameters did not move");
}

#[test]
fn fused_adam_matches_libtorch_adam() {
    compare_with_libtorch(0.0);
}

#[test]
fn fused_adam_matches_libtorch_adam_with_l2_weight_decay() {
    compare_with_libtorch(0.5);
}
