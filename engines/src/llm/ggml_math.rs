//! The ggml-compatible math of the forward pass: RMS norms (squares in f32, sum in f64),
//! rope tables and rotations, the summation orders of ggml's and llamafile's f16 dot
//! products, ggml's SIMD `exp` with the softmax and SiLU built on it, and Gemma's GELU
//! through ggml's f16 table. Each function reproduces ggml's CPU arithmetic (x86 order) bit
//! for bit, which is what keeps greedy decoding token-exact with llama.cpp.

use half::f16;

/// Rope `(cos, sin)` for `ctx` positions and `dim / 2` pairs, as ggml's rope cache builds
/// them: `θ = p · base^(-2i/dim) / factor_i · freq_scale`, the powers by repeated f32 products.
pub(super) fn rope_table(
    ctx: usize,
    dim: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
) -> Vec<(f32, f32)> {
    let half = dim / 2;
    let theta_scale = base.powf(-2.0 / dim as f32);
    let mut t = Vec::with_capacity(ctx * half);
    for p in 0..ctx {
        let mut theta = p as f32;
        for i in 0..half {
            let ff = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
            let th = freq_scale * (theta / ff);
            t.push((th.cos(), th.sin()));
            theta *= theta_scale;
        }
    }
    t
}

pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * w;
    }
}

pub(super) fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(w) {
        *v = (*v * scale) * w;
    }
}

/// Rotates pairs; written as the fused multiply-adds a C compiler makes of ggml's
/// `x0·cos − x1·sin`, `x0·sin + x1·cos` (this matters for matching llama.cpp bit for bit).
pub(super) fn rope(x: &mut [f32], table: &[(f32, f32)], rope_dim: usize, neox: bool) {
    let half = rope_dim / 2;
    if neox {
        for (i, &(c, s)) in table.iter().enumerate().take(half) {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a.mul_add(c, -(b * s));
            x[i + half] = a.mul_add(s, b * c);
        }
    } else {
        for (i, &(c, s)) in table.iter().enumerate().take(half) {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a.mul_add(c, -(b * s));
            x[2 * i + 1] = a.mul_add(s, b * c);
        }
    }
}

/// Horizontal sum of up to eight lanes as x86 does it (`hi + lo`, then `movehl`, then
/// `movehdup`): `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`; missing lanes are 0.
#[inline]
pub(super) fn hsum8(x: &[f32]) -> f32 {
    let g = |i: usize| x.get(i).copied().unwrap_or(0.0);
    let s: [f32; 4] = std::array::from_fn(|i| g(i + 4) + g(i));
    (s[0] + s[2]) + (s[1] + s[3])
}

/// ggml's reduction of four 8-lane accumulators (`lane = 8·k + l`).
#[inline]
pub(super) fn reduce32(l: &[f32; 32]) -> f32 {
    let x: [f32; 8] = std::array::from_fn(|i| (l[i] + l[16 + i]) + (l[8 + i] + l[24 + i]));
    let t: [f32; 4] = std::array::from_fn(|i| x[i] + x[i + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// Dot product in the order of ggml's `ggml_vec_dot_f16` (x86: four 8-lane FMA
/// accumulators over blocks of 32, then [`reduce32`]; the tail summed in f64).
#[inline]
pub(super) fn dot_f16_ggml(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 32];
    let np = a.len() & !31;
    for (ca, cb) in a[..np].chunks_exact(32).zip(b[..np].chunks_exact(32)) {
        for k in 0..32 {
            l[k] = ca[k].mul_add(cb[k], l[k]);
        }
    }
    let mut s = f64::from(reduce32(&l));
    for (x, y) in a[np..].iter().zip(&b[np..]) {
        s += f64::from(x * y);
    }
    s as f32
}

/// Dot product in the order of llamafile's tiled GEMM: one 8-lane FMA accumulator, then
/// [`hsum8`].
#[inline]
pub(super) fn dot_gemm8(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            l[k] = ca[k].mul_add(cb[k], l[k]);
        }
    }
    let mut s = hsum8(&l);
    let r = a.len() & !7;
    for (x, y) in a[r..].iter().zip(&b[r..]) {
        s += x * y;
    }
    s
}

/// `exp(x)` computed as ggml's SIMD `ggml_v_expf` computes it on x86 (AVX2) and aarch64
/// (NEON): the same range reduction `x = n·ln2 + b`, the same degree-5 polynomial in fused
/// multiply-adds, the same scaling by `2^n` with its special cases for |n| > 126. llama.cpp
/// uses it in the softmax and in SiLU; libm's `expf` differs from it in the last bit for most
/// softmax inputs (about 60 % in a test), which is enough to flip near-tied greedy choices.
#[inline]
pub(crate) fn expf_ggml(x: f32) -> f32 {
    const SHIFT: f32 = f32::from_bits(0x4b40_0000); // 1.5·2^23: rounds to an integer
    const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
    const C1: f32 = f32::from_bits(0x3f7f_fff6);
    const C2: f32 = f32::from_bits(0x3eff_fedb);
    const C3: f32 = f32::from_bits(0x3e2a_af33);
    const C4: f32 = f32::from_bits(0x3d2b_9f17);
    const C5: f32 = f32::from_bits(0x3c07_2010);
    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // The integer n sits in z's low mantissa bits; shifted into the exponent field it
    // scales 1.0 by 2^n.
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1 * b);
    if n.abs() <= 126.0 || n.is_nan() {
        return j.mul_add(k, k);
    }
    // 2^n out of the normal range: split it in two factors (or saturate).
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    if n.abs() > 192.0 {
        return s1 * s1;
    }
    let s2 = f32::from_bits(e.wrapping_sub(g));
    s2.mul_add(j, s2) * s1
}

/// Softmax numerators in place as ggml_vec_soft_max_f32 computes them: `exp(s − max)` with
/// ggml's SIMD exp, summed eight at a time in f32 and the partial sums in f64. Returns
/// `1 / sum`.
pub(super) fn softmax_exp(scores: &mut [f32], max: f32) -> f32 {
    let mut sum = 0f64;
    for chunk in scores.chunks_mut(8) {
        for sc in chunk.iter_mut() {
            *sc = expf_ggml(*sc - max);
        }
        sum += f64::from(hsum8(chunk));
    }
    (1.0 / sum) as f32
}

#[inline]
pub(super) fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = a.mul_add(v, *o);
    }
}

pub(super) fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// GELU (tanh form) of every f16 value, rounded to f16: ggml's `ggml_table_gelu_f16`,
/// built on first use (256 KiB). `1 + a·x²` is the fused multiply-add `(a·x)·x + 1` that the
/// C compiler makes of ggml's expression (with it all 65,536 entries equal the table in
/// llama-cpp-python's library; without it one differs, and Gemma 3's layer 0 with it).
pub(super) fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const COEF_A: f32 = 0.044_715;
        (0..=u16::MAX)
            .map(|bits| {
                let x = f16::from_bits(bits).to_f32();
                let inner = (COEF_A * x).mul_add(x, 1.0);
                let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh());
                round_f16(g)
            })
            .collect()
    })
}

/// ggml's GEGLU `gelu(x)·u` with GELU through its f16 table (input and output rounded to
/// f16); below −10 the result is +0 whatever the sign of `u`, as in ggml.
#[inline]
pub(super) fn geglu_f16(table: &[f32], x: f32, u: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x * u
    } else {
        table[usize::from(f16::from_f32(x).to_bits())] * u
    }
}

/// SiLU exactly as ggml's `ggml_v_silu` computes it: `x / (1 + ggml_v_expf(−x))`. Checked
/// against llama.cpp's own `ffn_swiglu` tensor (SmolLM2 layer 0 on its chat prompt, all
/// 52,224 values equal bit for bit; libm's `expf` differs on a quarter of them).
#[inline]
pub(super) fn silu_ggml(x: f32) -> f32 {
    x / (1.0 + expf_ggml(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expf_ggml` and `silu` against ggml's own SIMD functions (values from
    /// scripts/reference/ggml_expf_reference.py): bit for bit.
    #[test]
    fn exp_and_silu_match_ggml_bit_for_bit() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/llm/ggml_expf.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let bits = |k: &str| -> Vec<f32> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|b| f32::from_bits(b.as_u64().unwrap() as u32))
                .collect()
        };
        let (x, e, s) = (bits("x"), bits("exp"), bits("silu"));
        assert!(x.len() > 800);
        let mut libm_differs = 0;
        for ((&x, &e), &s) in x.iter().zip(&e).zip(&s) {
            let got = expf_ggml(x);
            assert!(
                got.to_bits() == e.to_bits() || (got.is_nan() && e.is_nan()),
                "exp({x:e}): {got:e} vs ggml {e:e}"
            );
            let got = silu_ggml(x);
            assert!(
                got.to_bits() == s.to_bits() || (got.is_nan() && s.is_nan()),
                "silu({x:e}): {got:e} vs ggml {s:e}"
            );
            libm_differs += usize::from(x.exp().to_bits() != e.to_bits());
        }
        // The test can tell the two apart: libm's expf differs on many of these inputs.
        assert!(libm_differs > 50, "{libm_differs}");
    }
}
