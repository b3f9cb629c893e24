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

/// libtorch's random generator and thread count are process-wide; the tests below take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Same parameters and gradients through our Adam and libtorch's: same trajectory.
fn compare_with_libtorch(weight_decay: f64) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
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

/// Several parameters updated in one pass, split across threads at entries inside a parameter:
/// the same bits at 1 and 2 threads, and libtorch's Adam's trajectory.
#[test]
fn one_pass_over_several_parameters_does_not_depend_on_threads() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let shapes: [&[i64]; 3] = [&[100, 1000], &[7], &[1000, 200]];
    let run = |threads: i32, libtorch: bool| -> Vec<Tensor> {
        let before = tch::get_num_threads();
        tch::set_num_threads(threads);
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let params: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| vs.root().var_copy(&format!("w{i}"), &Tensor::randn(*s, (Kind::Float, Device::Cpu)))).collect();
        let targets: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
        let mut ours = Adam::new(params.iter().map(Tensor::shallow_clone).collect(), 1e-2, 0.01, 0.0, false);
        let mut reference = nn::Adam { beta1: 0.9, beta2: 0.999, wd: 0.0, eps: 0.01, amsgrad: false }.build(&vs, 1e-2).unwrap();
        for _ in 0..5 {
            let loss: Tensor = params.iter().zip(&targets).map(|(p, t)| (p - t).square().sum(Kind::Float)).sum();
            if libtorch {
                reference.zero_grad();
                loss.backward();
                reference.step();
            } else {
                loss.backward();
                ours.step();
            }
        }
        tch::set_num_threads(before);
        params.iter().map(|p| p.detach().copy()).collect()
    };
    let (one, two, reference) = (run(1, false), run(2, false), run(1, true));
    for ((a, b), r) in one.iter().zip(&two).zip(&reference) {
        assert!(a.equal(b), "1 and 2 threads differ");
        let diff = (a - r).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "drifted from libtorch's Adam by {diff}");
    }
}

/// A step begun on some parameters (`step_first`, the trainer's update beside the training
/// step) and finished by `step` makes the same bits as whole steps, at the same step count.
#[test]
fn a_step_in_two_parts_is_one_step() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let shapes: [&[i64]; 3] = [&[300, 200], &[7], &[200, 50]];
    let run = |first: Option<&[usize]>| -> Vec<Tensor> {
        tch::manual_seed(9);
        let vs = nn::VarStore::new(Device::Cpu);
        let params: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| vs.root().var_copy(&format!("w{i}"), &Tensor::randn(*s, (Kind::Float, Device::Cpu)))).collect();
        let targets: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
        let mut adam = Adam::new(params.iter().map(Tensor::shallow_clone).collect(), 1e-2, 0.01, 0.0, false);
        // A tensor that is not one of the optimiser's parameters is ignored.
        let stranger = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        for _ in 0..6 {
            let loss: Tensor = params.iter().zip(&targets).map(|(p, t)| (p - t).square().sum(Kind::Float)).sum();
            loss.backward();
            if let Some(first) = first {
                let mut given: Vec<Tensor> = first.iter().map(|&i| params[i].shallow_clone()).collect();
                given.push(stranger.shallow_clone());
                adam.step_first(&given);
                // Those parameters moved and their gradients were consumed; the others wait.
                for (i, p) in params.iter().enumerate() {
                    let consumed = f64::try_from(p.grad().abs().max()).unwrap() == 0.0;
                    assert_eq!(consumed, first.contains(&i), "parameter {i} after step_first");
                }
            }
            adam.step();
            assert!(params.iter().all(|p| f64::try_from(p.grad().abs().max()).unwrap() == 0.0), "every gradient consumed");
        }
        params.iter().map(|p| p.detach().copy()).collect()
    };
    let whole = run(None);
    for first in [&[0usize, 1][..], &[2], &[], &[0, 1, 2]] {
        for (a, b) in run(Some(first)).iter().zip(&whole) {
            assert!(a.equal(b), "begun on {first:?}: differs from whole steps");
        }
    }
}
