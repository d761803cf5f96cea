//! Explicitly vectorised row kernels for Whisper: the softmax's exponentials and the exact
//! (erf) GELU, with AVX-512 (16 lanes) or AVX2 + FMA (8 lanes) chosen at run time on x86_64,
//! and the scalar functions of [`super::ops`] elsewhere.
//!
//! The compiler vectorises the scalar loops only partly (the profile of a transcription had
//! the softmax's exponentials at a fifth of all samples, about 14 cycles per value), and never
//! to 512-bit registers on CPUs where it prefers 256-bit ones. The vector code evaluates the
//! same formulas as [`super::ops::exp_neg`] and [`super::ops::erf`] (same range reduction,
//! same polynomial coefficients), with fused multiply-adds in the polynomials, so results
//! differ from the scalar ones in the last bits only; the tests bound both against `f64`.

use super::ops::{exp_neg, gelu};

/// `x[i] = e^(x[i] · scale + offset)` in place, for arguments ≤ 0 (larger ones give 1, as
/// [`exp_neg`]); returns the sum of the results.
pub fn exp_scaled_sum(x: &mut [f32], scale: f32, offset: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match x86::level() {
        // SAFETY: the level says which features this CPU has.
        x86::Level::Avx512 => return unsafe { x86::exp_scaled_sum_512(x, scale, offset) },
        x86::Level::Avx2 => return unsafe { x86::exp_scaled_sum_256(x, scale, offset) },
        x86::Level::None => {}
    }
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = exp_neg(v.mul_add(scale, offset));
            *a += *v;
        }
    }
    for v in chunks.into_remainder() {
        *v = exp_neg(v.mul_add(scale, offset));
        acc[0] += *v;
    }
    acc.iter().sum()
}

/// `Σ e^(x[i] + offset)` for arguments ≤ 0, without writing `x` (a log-sum-exp's sum).
pub fn sum_exp(x: &[f32], offset: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::level() == x86::Level::Avx512 {
        // SAFETY: AVX-512F was detected.
        return unsafe { x86::sum_exp_512(x, offset) };
    }
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (&v, a) in c.iter().zip(acc.iter_mut()) {
            *a += exp_neg(v + offset);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| exp_neg(v + offset))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The largest value of `x` (−∞ for an empty slice; NaNs are skipped).
pub fn max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match x86::level() {
        // SAFETY: AVX-512F was detected.
        x86::Level::Avx512 => return unsafe { x86::max_512(x) },
        // SAFETY: AVX2 was detected.
        x86::Level::Avx2 if x86::avx2_rows() => return unsafe { x86::max_256(x) },
        x86::Level::Avx2 => {}
        x86::Level::None => {}
    }
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// In place: `x = gelu(x + bias)`, with `bias` per column of rows of `bias.len()` values, or
/// no bias when it is empty.
pub fn bias_gelu(bias: &[f32], x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match x86::level() {
        // SAFETY: AVX-512F was detected.
        x86::Level::Avx512 => return unsafe { x86::bias_gelu_512(bias, x) },
        // SAFETY: AVX2 and FMA were detected.
        x86::Level::Avx2 if x86::avx2_rows() => return unsafe { x86::bias_gelu_256(bias, x) },
        x86::Level::Avx2 => {}
        x86::Level::None => {}
    }
    if bias.is_empty() {
        x.iter_mut().for_each(|v| *v = gelu(*v));
        return;
    }
    for row in x.chunks_exact_mut(bias.len()) {
        row.iter_mut()
            .zip(bias)
            .for_each(|(v, b)| *v = gelu(*v + b));
    }
}

/// The row kernels this CPU runs (for reports such as `sotad bench`): `avx512`, `avx2`, or
/// `portable` (the scalar functions, as the compiler vectorizes them for the target's baseline,
/// e.g. NEON on aarch64).
pub fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    match x86::level() {
        x86::Level::Avx512 => return "avx512",
        x86::Level::Avx2 => return "avx2",
        x86::Level::None => {}
    }
    "portable"
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    // Rust 1.87 made most intrinsics safe inside functions with matching target features;
    // the crate's minimum version still needs the `unsafe` blocks.
    #![allow(unused_unsafe)]

    use std::arch::x86_64::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::super::ops::{exp_neg, gelu};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Level {
        None,
        Avx2,
        Avx512,
    }

    static LEVEL: AtomicU8 = AtomicU8::new(0);

    /// The widest instruction set this CPU offers (detected once), AVX-512 only if
    /// `SOTAD_MAX_ISA` allows it ([`crate::cpu`]).
    pub(super) fn level() -> Level {
        match LEVEL.load(Ordering::Relaxed) {
            1 => Level::None,
            2 => Level::Avx2,
            3 => Level::Avx512,
            _ => {
                let l = if crate::cpu::avx512_allowed() {
                    Level::Avx512
                } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    Level::Avx2
                } else {
                    Level::None
                };
                LEVEL.store(
                    match l {
                        Level::None => 1,
                        Level::Avx2 => 2,
                        Level::Avx512 => 3,
                    },
                    Ordering::Relaxed,
                );
                l
            }
        }
    }

    // Coefficients of `ops::exp_neg`: e^x = 2^n · e^t, n = floor(x·log2 e + ½), t = x − n·ln 2
    // in two parts, e^t by its Taylor series to degree 6.
    const LN2_HI: f32 = -0.693_359_4;
    const LN2_LO: f32 = 2.121_944_4e-4;
    const C: [f32; 7] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
    ];

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_neg_512(x: __m512) -> __m512 {
        unsafe {
            let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_setzero_ps());
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(
                _mm512_fmadd_ps(
                    x,
                    _mm512_set1_ps(std::f32::consts::LOG2_E),
                    _mm512_set1_ps(0.5),
                ),
            );
            let t = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
            let t = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_LO), t);
            let mut p = _mm512_set1_ps(C[6]);
            for &c in C[..6].iter().rev() {
                p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
            }
            let k = _mm512_sub_epi32(
                _mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(127.0 + 12_582_912.0))),
                _mm512_set1_epi32(0x4B40_0000),
            );
            _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(k)))
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp_neg_256(x: __m256) -> __m256 {
        unsafe {
            let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_setzero_ps());
            let n = _mm256_floor_ps(_mm256_fmadd_ps(
                x,
                _mm256_set1_ps(std::f32::consts::LOG2_E),
                _mm256_set1_ps(0.5),
            ));
            let t = _mm256_fmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
            let t = _mm256_fmadd_ps(n, _mm256_set1_ps(LN2_LO), t);
            let mut p = _mm256_set1_ps(C[6]);
            for &c in C[..6].iter().rev() {
                p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
            }
            let k = _mm256_sub_epi32(
                _mm256_castps_si256(_mm256_add_ps(n, _mm256_set1_ps(127.0 + 12_582_912.0))),
                _mm256_set1_epi32(0x4B40_0000),
            );
            _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(k)))
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_scaled_sum_512(x: &mut [f32], scale: f32, offset: f32) -> f32 {
        unsafe {
            let (vs, vo) = (_mm512_set1_ps(scale), _mm512_set1_ps(offset));
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut pairs = x.chunks_exact_mut(32);
            for c in &mut pairs {
                let p = c.as_mut_ptr();
                let e0 = exp_neg_512(_mm512_fmadd_ps(_mm512_loadu_ps(p), vs, vo));
                let e1 = exp_neg_512(_mm512_fmadd_ps(_mm512_loadu_ps(p.add(16)), vs, vo));
                _mm512_storeu_ps(p, e0);
                _mm512_storeu_ps(p.add(16), e1);
                a0 = _mm512_add_ps(a0, e0);
                a1 = _mm512_add_ps(a1, e1);
            }
            let rest = pairs.into_remainder();
            let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
            if !rest.is_empty() {
                // The tail through a mask: lanes past the end are neither read nor written.
                let m: __mmask16 = (1u32 << rest.len().min(16)).wrapping_sub(1) as __mmask16;
                let p = rest.as_mut_ptr();
                let e = exp_neg_512(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p), vs, vo));
                _mm512_mask_storeu_ps(p, m, e);
                sum += _mm512_mask_reduce_add_ps(m, e);
                for v in rest.iter_mut().skip(16) {
                    *v = exp_neg(v.mul_add(scale, offset));
                    sum += *v;
                }
            }
            sum
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_exp_512(x: &[f32], offset: f32) -> f32 {
        unsafe {
            let vo = _mm512_set1_ps(offset);
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut pairs = x.chunks_exact(32);
            for c in &mut pairs {
                let p = c.as_ptr();
                a0 = _mm512_add_ps(a0, exp_neg_512(_mm512_add_ps(_mm512_loadu_ps(p), vo)));
                a1 = _mm512_add_ps(
                    a1,
                    exp_neg_512(_mm512_add_ps(_mm512_loadu_ps(p.add(16)), vo)),
                );
            }
            let tail: f32 = pairs.remainder().iter().map(|&v| exp_neg(v + offset)).sum();
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + tail
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_scaled_sum_256(x: &mut [f32], scale: f32, offset: f32) -> f32 {
        unsafe {
            let (vs, vo) = (_mm256_set1_ps(scale), _mm256_set1_ps(offset));
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut pairs = x.chunks_exact_mut(16);
            for c in &mut pairs {
                let p = c.as_mut_ptr();
                let e0 = exp_neg_256(_mm256_fmadd_ps(_mm256_loadu_ps(p), vs, vo));
                let e1 = exp_neg_256(_mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), vs, vo));
                _mm256_storeu_ps(p, e0);
                _mm256_storeu_ps(p.add(8), e1);
                a0 = _mm256_add_ps(a0, e0);
                a1 = _mm256_add_ps(a1, e1);
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1));
            let mut sum: f32 = lanes.iter().sum();
            for v in pairs.into_remainder() {
                *v = exp_neg(v.mul_add(scale, offset));
                sum += *v;
            }
            sum
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_512(x: &[f32]) -> f32 {
        unsafe {
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut chunks = x.chunks_exact(16);
            for c in &mut chunks {
                // max_ps returns the second operand when either is NaN: NaNs are skipped.
                m = _mm512_max_ps(_mm512_loadu_ps(c.as_ptr()), m);
            }
            chunks
                .remainder()
                .iter()
                .fold(_mm512_reduce_max_ps(m), |m, &v| if v > m { v } else { m })
        }
    }

    /// Whether the AVX2 level also runs [`bias_gelu_256`] and [`max_256`] (else the scalar
    /// loops as the compiler vectorises them): `STT_VMATH_AVX2=0` turns them off, for
    /// before/after measurements.
    pub(super) fn avx2_rows() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("STT_VMATH_AVX2").map_or(true, |v| v.trim() != "0"))
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn max_256(x: &[f32]) -> f32 {
        unsafe {
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut chunks = x.chunks_exact(8);
            for c in &mut chunks {
                // max_ps returns the second operand when either is NaN: NaNs are skipped.
                m = _mm256_max_ps(_mm256_loadu_ps(c.as_ptr()), m);
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            chunks
                .remainder()
                .iter()
                .chain(&lanes)
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
        }
    }

    /// Coefficients of `ops::erf`, innermost first.
    const ERF_P: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];

    /// [`gelu_512`] on 8 lanes; the reciprocal from the 12-bit `rcp` estimate and one Newton
    /// step (about 23 bits).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn gelu_256(x: __m256) -> __m256 {
        unsafe {
            let u = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let sign_bit = _mm256_set1_ps(-0.0);
            let z = _mm256_andnot_ps(sign_bit, u);
            let one = _mm256_set1_ps(1.0);
            let den = _mm256_fmadd_ps(_mm256_set1_ps(0.5), z, one);
            let r = _mm256_rcp_ps(den);
            let t = _mm256_mul_ps(r, _mm256_fnmadd_ps(den, r, _mm256_set1_ps(2.0)));
            let mut p = _mm256_set1_ps(ERF_P[0]);
            for &c in &ERF_P[1..] {
                p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
            }
            let arg = _mm256_fnmadd_ps(z, z, p);
            let erfc = _mm256_mul_ps(t, exp_neg_256(arg));
            let e = _mm256_sub_ps(one, erfc);
            let erf = _mm256_or_ps(e, _mm256_and_ps(u, sign_bit));
            _mm256_mul_ps(
                _mm256_mul_ps(_mm256_set1_ps(0.5), x),
                _mm256_add_ps(one, erf),
            )
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_gelu_256(bias: &[f32], x: &mut [f32]) {
        let row = |row: &mut [f32], bias: Option<&[f32]>| unsafe {
            let mut i = 0;
            while i + 8 <= row.len() {
                let p = row.as_mut_ptr().add(i);
                let mut v = _mm256_loadu_ps(p);
                if let Some(b) = bias {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(b.as_ptr().add(i)));
                }
                _mm256_storeu_ps(p, gelu_256(v));
                i += 8;
            }
            for (j, v) in row.iter_mut().enumerate().skip(i) {
                let b = bias.map_or(0.0, |b| b[j]);
                *v = gelu(*v + b);
            }
        };
        if bias.is_empty() {
            row(x, None);
        } else {
            for r in x.chunks_exact_mut(bias.len()) {
                row(r, Some(bias));
            }
        }
    }

    /// `gelu` on 16 lanes: `ops::erf`'s Chebyshev fit of `erfc` with [`exp_neg_512`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gelu_512(x: __m512) -> __m512 {
        // Coefficients of `ops::erf`, innermost first.
        const P: [f32; 10] = [
            0.170_872_77,
            -0.822_152_23,
            1.488_515_9,
            -1.135_204,
            0.278_868_07,
            -0.186_288_06,
            0.096_784_18,
            0.374_091_96,
            1.000_023_7,
            -1.265_512_2,
        ];
        unsafe {
            let u = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let z = _mm512_abs_ps(u);
            let one = _mm512_set1_ps(1.0);
            // 1 / (1 + z/2): the 14-bit reciprocal estimate and one Newton step (about 28
            // bits, more than f32 keeps) instead of a division, several times slower.
            let den = _mm512_fmadd_ps(_mm512_set1_ps(0.5), z, one);
            let r = _mm512_rcp14_ps(den);
            let t = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(2.0)));
            let mut p = _mm512_set1_ps(P[0]);
            for &c in &P[1..] {
                p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
            }
            // −z² + p
            let arg = _mm512_fnmadd_ps(z, z, p);
            let erfc = _mm512_mul_ps(t, exp_neg_512(arg));
            // erf(u) = sign(u) · (1 − erfc(|u|))
            let e = _mm512_sub_ps(one, erfc);
            let sign = _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32(i32::MIN));
            let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(e), sign));
            _mm512_mul_ps(
                _mm512_mul_ps(_mm512_set1_ps(0.5), x),
                _mm512_add_ps(one, erf),
            )
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bias_gelu_512(bias: &[f32], x: &mut [f32]) {
        let row = |row: &mut [f32], bias: Option<&[f32]>| unsafe {
            let mut i = 0;
            while i + 16 <= row.len() {
                let p = row.as_mut_ptr().add(i);
                let mut v = _mm512_loadu_ps(p);
                if let Some(b) = bias {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(b.as_ptr().add(i)));
                }
                _mm512_storeu_ps(p, gelu_512(v));
                i += 16;
            }
            for (j, v) in row.iter_mut().enumerate().skip(i) {
                let b = bias.map_or(0.0, |b| b[j]);
                *v = gelu(*v + b);
            }
        };
        if bias.is_empty() {
            row(x, None);
        } else {
            for r in x.chunks_exact_mut(bias.len()) {
                row(r, Some(bias));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_scaled_sum_matches_f64() {
        for len in [0usize, 1, 7, 15, 16, 17, 31, 33, 100, 1500] {
            let src: Vec<f32> = (0..len).map(|i| -((i * 37 % 101) as f32) * 0.31).collect();
            let mut x = src.clone();
            let (scale, offset) = (0.125f32, -0.5f32);
            let sum = exp_scaled_sum(&mut x, scale, offset);
            let mut want_sum = 0.0f64;
            for (&s, &y) in src.iter().zip(&x) {
                let e = (f64::from(s.mul_add(scale, offset))).exp();
                want_sum += e;
                assert!(
                    (f64::from(y) - e).abs() <= 1e-6 * e + 1e-37,
                    "len {len}: e^{s} = {y}, want {e}"
                );
            }
            assert!((f64::from(sum) - want_sum).abs() <= 1e-5 * want_sum.max(1e-30));
        }
        // Positive arguments are clamped to 0 (as exp_neg), huge negative ones to -87.
        let mut x = [3.0f32, -1000.0];
        exp_scaled_sum(&mut x, 1.0, 0.0);
        assert_eq!(x[0], 1.0);
        assert!(x[1] < 1e-37, "{}", x[1]);
    }

    #[test]
    fn sum_exp_matches_f64() {
        let x: Vec<f32> = (0..1001).map(|i| -((i * 13 % 97) as f32) * 0.2).collect();
        let want: f64 = x.iter().map(|&v| (f64::from(v) - 0.25).exp()).sum();
        let got = f64::from(sum_exp(&x, -0.25));
        assert!((got - want).abs() <= 1e-5 * want, "{got} != {want}");
    }

    #[test]
    fn max_finds_the_largest_value() {
        for len in [1usize, 5, 16, 17, 40] {
            let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
            let want = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want, "len {len}");
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }

    /// The AVX2 kernels (what an AVX2-only CPU, or `SOTAD_MAX_ISA=avx2`, runs) against the
    /// scalar formulas, whatever level this CPU picks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_match_the_scalar_ones() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let bias: Vec<f32> = (0..21).map(|i| i as f32 * 0.13 - 1.3).collect();
        let src: Vec<f32> = (0..63).map(|i| (i as f32 - 31.0) * 0.19).collect();
        for b in [&bias[..], &[]] {
            let mut x = src.clone();
            // SAFETY: AVX2 and FMA checked above.
            unsafe { x86::bias_gelu_256(b, &mut x) };
            for (i, (&s, &y)) in src.iter().zip(&x).enumerate() {
                let want = gelu(s + b.get(i % 21).copied().unwrap_or(0.0));
                assert!(
                    (y - want).abs() <= 2e-6 * want.abs().max(1.0),
                    "gelu: {y} against {want}"
                );
            }
        }
        // SAFETY: as above.
        assert_eq!(unsafe { x86::max_256(&src[..37]) }, src[36]);
    }

    #[test]
    fn bias_gelu_matches_the_definition() {
        let erf = |x: f64| {
            // Abramowitz & Stegun 7.1.26 is too coarse; integrate instead (Simpson).
            let n = 2000;
            let h = x / n as f64;
            let f = |t: f64| (-t * t).exp();
            let mut s = f(0.0) + f(x);
            for i in 1..n {
                s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
        };
        let bias: Vec<f32> = (0..24).map(|i| i as f32 * 0.1 - 1.2).collect();
        let src: Vec<f32> = (0..72).map(|i| (i as f32 - 36.0) * 0.17).collect();
        for b in [&bias[..], &[]] {
            let mut x = src.clone();
            bias_gelu(b, &mut x);
            for (i, (&s, &y)) in src.iter().zip(&x).enumerate() {
                let v = f64::from(s + b.get(i % 24).copied().unwrap_or(0.0));
                let want = 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
                assert!(
                    (f64::from(y) - want).abs() < 2e-6,
                    "gelu({v}) = {y}, want {want}"
                );
            }
        }
    }
}
