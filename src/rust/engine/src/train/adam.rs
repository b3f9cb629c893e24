//! Adam with PyTorch's semantics (coupled L2 weight decay for "Adam", decoupled for "AdamW"),
//! done in one pass over each parameter's raw buffer on CPU: read the gradient, update both
//! moments and the parameter, and zero the gradient, without the dozen temporaries libtorch's
//! optimiser creates. Other devices use the same update as tensor operations.

use crate::distributions::fastmath::MulAdd;
use crate::simd::{self, Simd};
use tch::{Device, Kind, Tensor};

/// Parameters of at least twice this many entries are updated in parts on libtorch's threads.
const PARALLEL_ENTRIES: usize = 1 << 16;

pub struct Adam {
    params: Vec<Tensor>,
    /// 0/1 mask per parameter: entries at 0 are never updated (None: all entries are).
    masks: Vec<Option<Tensor>>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i32,
    /// Parameters already updated in the step begun by [`Adam::step_first`] (None between steps).
    updated: Option<Vec<bool>>,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled_weight_decay: bool,
    /// Vector instructions of the update loop.
    simd: Simd,
}

impl Adam {
    pub fn new(params: Vec<Tensor>, lr: f64, eps: f64, weight_decay: f64, decoupled_weight_decay: bool) -> Self {
        let masked = params.into_iter().map(|p| (p, None)).collect();
        Self::with_masks(masked, lr, eps, weight_decay, decoupled_weight_decay)
    }

    /// An optimiser that changes only the entries where each parameter's mask is 1 (a frozen
    /// entry keeps its value exactly, weight decay included, and its moments stay 0).
    pub fn with_masks(params: Vec<(Tensor, Option<Tensor>)>, lr: f64, eps: f64, weight_decay: f64, decoupled_weight_decay: bool) -> Self {
        let (params, masks): (Vec<Tensor>, Vec<Option<Tensor>>) = params
            .into_iter()
            .map(|(p, m)| {
                let m = m.map(|m| m.to_kind(Kind::Float).to_device(p.device()).contiguous());
                (p, m)
            })
            .unzip();
        let exp_avg = params.iter().map(|p| p.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|p| p.zeros_like()).collect();
        Adam { params, masks, exp_avg, exp_avg_sq, step: 0, updated: None, lr, beta1: 0.9, beta2: 0.999, eps, weight_decay, decoupled_weight_decay, simd: Simd::detect() }
    }

    /// Gradients of all parameters set to zero (before the first backward they do not exist).
    pub fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One update; zeroes the gradients it consumed. Parameters without a gradient are skipped,
    /// as PyTorch skips parameters whose `.grad` is None. After [`Adam::step_first`], updates
    /// the parameters that it did not, ending that step.
    pub fn step(&mut self) {
        let todo: Vec<bool> = match self.updated.take() {
            Some(done) => done.iter().map(|&u| !u).collect(),
            None => {
                self.step += 1;
                vec![true; self.params.len()]
            }
        };
        self.update(&todo);
    }

    /// Begins a step by updating only `first` (parameters of this optimiser, matched by their
    /// data, whose gradients are final before the others'); [`Adam::step`] then updates the
    /// rest. The two together make the same update as one `step`: entries are independent.
    pub fn step_first(&mut self, first: &[Tensor]) {
        if self.updated.is_some() {
            return; // a step is already begun: its rest comes in `step`
        }
        self.step += 1;
        let ptrs: Vec<usize> = first.iter().map(|t| t.data_ptr() as usize).collect();
        let todo: Vec<bool> = self.params.iter().map(|p| ptrs.contains(&(p.data_ptr() as usize))).collect();
        self.update(&todo);
        self.updated = Some(todo);
    }

    /// The update of the parameters marked in `todo`, at the current step count.
    fn update(&mut self, todo: &[bool]) {
        let bc1 = 1.0 - self.beta1.powi(self.step);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.step)).sqrt();
        let step_size = self.lr / bc1;
        // The CPU float parameters' buffers (p, g, m, v, mask) and sizes, updated together below.
        let mut buffers: Vec<([usize; 4], Option<usize>, usize)> = Vec::with_capacity(self.params.len());
        for i in (0..self.params.len()).filter(|&i| todo[i]) {
            let p = &self.params[i];
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let fast = p.device() == Device::Cpu
                && p.kind() == Kind::Float
                && g.kind() == Kind::Float
                && p.is_contiguous()
                && g.is_contiguous();
            if fast {
                let ptrs = [p.data_ptr(), g.data_ptr(), self.exp_avg[i].data_ptr(), self.exp_avg_sq[i].data_ptr()].map(|a| a as usize);
                buffers.push((ptrs, self.masks[i].as_ref().map(|m| m.data_ptr() as usize), p.numel()));
            } else {
                self.update_tensor(i, &g, step_size, bc2_sqrt);
            }
        }
        // SAFETY: each entry holds distinct contiguous f32 CPU buffers of its size (the
        // parameter, its gradient and moments, the mask), alive in `self.params`, `exp_avg`,
        // `exp_avg_sq` and `masks`, that nothing else touches during the optimiser step.
        unsafe { self.update_buffers(&buffers, step_size, bc2_sqrt) };
    }

    /// Updates the parameters' entries in one pass: with enough entries, split into contiguous
    /// ranges of all of them (across parameters) on libtorch's threads, one parallel region per
    /// step. Entries are independent, so the result does not depend on the split.
    unsafe fn update_buffers(&self, buffers: &[([usize; 4], Option<usize>, usize)], step_size: f64, bc2_sqrt: f64) {
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let (eps, lr) = (self.eps as f32, self.lr as f32);
        let wd = self.weight_decay as f32;
        let step_size = step_size as f32;
        let inv_bc2_sqrt = (1.0 / bc2_sqrt) as f32;
        let decay = if self.decoupled_weight_decay { 1.0 - lr * wd } else { 1.0 };
        let coupled_wd = if self.decoupled_weight_decay { 0.0 } else { wd };
        let total: usize = buffers.iter().map(|b| b.2).sum();
        let level = self.simd;
        let parts = if total >= 2 * PARALLEL_ENTRIES { crate::runtime::parts_for(total / PARALLEL_ENTRIES) } else { 1 };
        let part = |k: usize| {
            let (from, to) = (total * k / parts, total * (k + 1) / parts);
            let mut start = 0;
            for &([pp, gp, mp, vp], kp, n) in buffers {
                // This part's entries of this parameter: [lo, hi) of its n.
                let (lo, hi) = (from.max(start) - start, to.min(start + n).saturating_sub(start));
                start += n;
                if lo >= hi {
                    continue;
                }
                let len = hi - lo;
                // SAFETY: as in `step`; parts cover disjoint ranges of each buffer.
                unsafe {
                    let at = |a: usize| std::slice::from_raw_parts_mut((a as *mut f32).add(lo), len);
                    let mask = kp.map(|a| std::slice::from_raw_parts((a as *const f32).add(lo), len));
                    let k = AdamKernel { p: at(pp), g: at(gp), m: at(mp), v: at(vp), mask, b1, b2, eps, step_size, inv_bc2_sqrt, decay, coupled_wd };
                    // Only exact IEEE operations (no FMA contraction), so every level gives the
                    // same bits. The level comes from this CPU.
                    simd::run(level, k)
                }
            }
        };
        crate::runtime::parallel_parts(parts, &part);
    }

    fn update_tensor(&mut self, i: usize, g: &Tensor, step_size: f64, bc2_sqrt: f64) {
        tch::no_grad(|| {
            let mut p = self.params[i].shallow_clone();
            let mask = self.masks[i].as_ref();
            let grad = if self.decoupled_weight_decay || self.weight_decay == 0.0 {
                g.shallow_clone()
            } else {
                g + &p * self.weight_decay
            };
            // Masked entries get no gradient, so their moments and update stay 0.
            let grad = match mask {
                Some(m) => grad * m,
                None => grad,
            };
            if self.decoupled_weight_decay {
                let decay = &p * (self.lr * self.weight_decay);
                let _ = p.g_sub_(&match mask {
                    Some(m) => decay * m,
                    None => decay,
                });
            }
            let m = &mut self.exp_avg[i];
            let _ = m.g_mul_scalar_(self.beta1);
            let _ = m.g_add_(&(&grad * (1.0 - self.beta1)));
            let v = &mut self.exp_avg_sq[i];
            let _ = v.g_mul_scalar_(self.beta2);
            let _ = v.g_add_(&(grad.square() * (1.0 - self.beta2)));
            let denom = v.sqrt() / bc2_sqrt + self.eps;
            let _ = p.g_sub_(&(&*m / denom * step_size));
            let mut g = g.shallow_clone();
            let _ = g.zero_();
        });
    }
}

/// The update loop over one parameter's entries.
struct AdamKernel<'a> {
    p: &'a mut [f32],
    g: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    mask: Option<&'a [f32]>,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    inv_bc2_sqrt: f32,
    decay: f32,
    coupled_wd: f32,
}

impl simd::Kernel for AdamKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run<M: MulAdd>(self) {
        let AdamKernel { p, g, m, v, mask, b1, b2, eps, step_size, inv_bc2_sqrt, decay, coupled_wd } = self;
        let n = p.len();
        let (g, m, v) = (&mut g[..n], &mut m[..n], &mut v[..n]);
        for j in 0..n {
            let keep = mask.map_or(true, |k| k[j] != 0.0);
            let grad = g[j] + coupled_wd * p[j];
            let mj = b1 * m[j] + (1.0 - b1) * grad;
            let vj = b2 * v[j] + (1.0 - b2) * grad * grad;
            let denom = vj.sqrt() * inv_bc2_sqrt + eps;
            let pj = p[j] * decay - step_size * mj / denom;
            // Masked entries keep their value and moments; every gradient is consumed.
            m[j] = if keep { mj } else { m[j] };
            v[j] = if keep { vj } else { v[j] };
            p[j] = if keep { pj } else { p[j] };
            g[j] = 0.0;
        }
    }
}
