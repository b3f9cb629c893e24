//! Branch-free f32 exp / ln / softplus / sigmoid that the compiler vectorises (Cephes-style
//! polynomials, about 1-2 ulp on the ranges the likelihood uses). The fused likelihood kernel
//! evaluates several transcendental functions per matrix entry; libm's scalar calls would cost
//! more than the tensor operations they replace.

const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
const LOG2E: f32 = std::f32::consts::LOG2_E;

/// How a polynomial step a * b + c is evaluated: as written, or as one fused multiply-add. Kernels
/// compiled for CPUs with FMA instantiate the functions below with [`Fused`]; elsewhere `mul_add`
/// would be a library call, so the portable path uses [`Plain`].
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

pub struct Plain;
pub struct Fused;

impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// e^x for x in about [-87, 88] (clamped outside).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with::<Plain>(x)
}

#[inline(always)]
pub fn exp_with<M: MulAdd>(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by adding and removing 1.5 * 2^23 (no libm call, so loops vectorise); the
    // integer n is then read off the low bits of the shifted value, without a float-to-int
    // conversion (whose saturating semantics do not vectorise well).
    const SHIFT: f32 = 12_582_912.0;
    let shifted = M::mul_add(x, LOG2E, SHIFT);
    let n = shifted - SHIFT;
    let n_int = shifted.to_bits() as i32 - SHIFT.to_bits() as i32;
    let r = M::mul_add(-n, LN2_HI, x);
    let r = M::mul_add(-n, LN2_LO, r);
    let p = 1.987_569_1e-4_f32;
    let p = M::mul_add(p, r, 1.398_199_9e-3);
    let p = M::mul_add(p, r, 8.333_452e-3);
    let p = M::mul_add(p, r, 4.166_579_6e-2);
    let p = M::mul_add(p, r, 1.666_666_5e-1);
    let p = M::mul_add(p, r, 5e-1);
    let y = M::mul_add(p * r, r, r) + 1.0;
    y * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// Natural logarithm of a positive, normal x.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    ln_with::<Plain>(x)
}

#[inline(always)]
pub fn ln_with<M: MulAdd>(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // in [0.5, 1)
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    e -= small as i32;
    m = if small { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let p = 7.037_683_6e-2_f32;
    let p = M::mul_add(p, m, -1.151_461e-1);
    let p = M::mul_add(p, m, 1.167_699_9e-1);
    let p = M::mul_add(p, m, -1.242_014_1e-1);
    let p = M::mul_add(p, m, 1.424_932_3e-1);
    let p = M::mul_add(p, m, -1.666_805_8e-1);
    let p = M::mul_add(p, m, 2.000_071_4e-1);
    let p = M::mul_add(p, m, -2.499_999_4e-1);
    let p = M::mul_add(p, m, 3.333_333_1e-1);
    let ef = e as f32;
    let y = M::mul_add(p * m, z, M::mul_add(ef, LN2_LO, -0.5 * z));
    M::mul_add(ef, LN2_HI, m + y)
}

/// softplus(x) = ln(1 + e^x) and sigmoid(x) = 1 / (1 + e^-x), sharing one exponential.
#[inline(always)]
pub fn softplus_sigmoid(x: f32) -> (f32, f32) {
    softplus_sigmoid_with::<Plain>(x)
}

#[inline(always)]
pub fn softplus_sigmoid_with<M: MulAdd>(x: f32) -> (f32, f32) {
    let e = exp_with::<M>(-x.abs());
    let one_plus = 1.0 + e;
    let inv = 1.0 / one_plus;
    // ln(1 + e) keeping precision when 1 + e rounds: ln(u) - (u - 1 - e) / u, to second order.
    let log1p_e = ln_with::<M>(one_plus) - ((one_plus - 1.0) - e) * inv;
    let softplus = x.max(0.0) + log1p_e;
    let sigmoid = if x >= 0.0 { inv } else { e * inv };
    (softplus, sigmoid)
}

/// ln Gamma(z) and digamma(z) for z > 0, branch-free: the asymptotic series at w = z + 6 and the
/// recurrence back to z (Gamma(z + 6) = Gamma(z) z (z + 1) ... (z + 5)). About 1e-6 relative.
#[inline(always)]
pub fn lgamma_digamma_with<M: MulAdd>(z: f32) -> (f32, f32) {
    const HALF_LN_2PI: f32 = 0.918_938_5;
    let w = z + 6.0;
    let lw = ln_with::<M>(w);
    let iw = 1.0 / w;
    let iw2 = iw * iw;
    let series = iw * M::mul_add(-iw2, M::mul_add(-iw2, 1.0 / 1260.0, 1.0 / 360.0), 1.0 / 12.0);
    let lgamma_w = M::mul_add(w - 0.5, lw, -w) + HALF_LN_2PI + series;
    let (z1, z2, z3, z4, z5) = (z + 1.0, z + 2.0, z + 3.0, z + 4.0, z + 5.0);
    // Two products of three factors (no overflow below z ~ 1e12).
    let lgamma = lgamma_w - ln_with::<M>(z * z1 * z2) - ln_with::<M>(z3 * z4 * z5);
    let psi_w = lw - 0.5 * iw - iw2 * M::mul_add(-iw2, M::mul_add(-iw2, 1.0 / 252.0, 1.0 / 120.0), 1.0 / 12.0);
    // 1/z + 1/(z+1) + ... + 1/(z+5), in pairs: 1/a + 1/b = (a + b) / (a b).
    let recip = (z + z1) / (z * z1) + (z2 + z3) / (z2 * z3) + (z4 + z5) / (z4 * z5);
    (lgamma, psi_w - recip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_libm() {
        close_to_libm_with::<Plain>();
        close_to_libm_with::<Fused>();
    }

    fn close_to_libm_with<M: MulAdd>() {
        let (exp, ln, softplus_sigmoid) = (exp_with::<M>, ln_with::<M>, softplus_sigmoid_with::<M>);
        let mut worst = [0f64; 4];
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = |a: f32, b: f64| ((a as f64 - b) / b.abs().max(1e-30)).abs();
            worst[0] = worst[0].max(rel(exp(x), (x as f64).exp()));
            let (sp, sg) = softplus_sigmoid(x);
            let spr = (x as f64).exp().ln_1p();
            worst[2] = worst[2].max((sp as f64 - spr).abs() / spr.max(1e-7));
            worst[3] = worst[3].max((sg as f64 - 1.0 / (1.0 + (-x as f64).exp())).abs());
            x += 0.013;
        }
        let mut y = 1e-30f32;
        while y < 1e30 {
            worst[1] = worst[1].max(((ln(y) as f64) - (y as f64).ln()).abs());
            y *= 1.37;
        }
        let mut worst_special = [0f64; 2];
        let mut z = 1e-4f32;
        while z < 1e6 {
            let (lg, dg) = lgamma_digamma_with::<M>(z);
            let (lg_ref, dg_ref) = (libm::lgamma(z as f64), digamma_f64(z as f64));
            worst_special[0] = worst_special[0].max((lg as f64 - lg_ref).abs() / lg_ref.abs().max(1.0));
            worst_special[1] = worst_special[1].max((dg as f64 - dg_ref).abs() / dg_ref.abs().max(1.0));
            z *= 1.07;
        }
        assert!(worst_special[0] < 2e-6, "lgamma rel err {}", worst_special[0]);
        assert!(worst_special[1] < 2e-6, "digamma rel err {}", worst_special[1]);
        assert!(worst[0] < 5e-7, "exp rel err {}", worst[0]);
        assert!(worst[1] < 2e-5, "ln abs err {}", worst[1]);
        assert!(worst[2] < 1e-6, "softplus rel err {}", worst[2]);
        assert!(worst[3] < 1e-6, "sigmoid abs err {}", worst[3]);
    }

    /// digamma in f64 by recurrence to x >= 20 and its asymptotic series (reference only).
    fn digamma_f64(mut x: f64) -> f64 {
        let mut acc = 0.0;
        while x < 20.0 {
            acc -= 1.0 / x;
            x += 1.0;
        }
        let i2 = 1.0 / (x * x);
        acc + x.ln() - 0.5 / x - i2 * (1.0 / 12.0 - i2 * (1.0 / 120.0 - i2 * (1.0 / 252.0 - i2 / 240.0)))
    }
}
