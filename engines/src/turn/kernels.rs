//! The integer kernels of Smart Turn's QDQ graph, with onnxruntime's arithmetic (the fused
//! `QLinearMatMul`, `QLinearConv`, `QGemm` and `QLinearSoftmax` it runs on the CPU).
//!
//! Activations are u8 with a zero point, weights int8 with per-output-channel scales and zero
//! point 0. A product accumulates `(a - za) * w` exactly in i32 and is requantized as MLAS
//! does: `float(acc) * scale` with `scale = (a_scale * w_scale) / y_scale` in f32, clamped to
//! the u8 range minus the zero point, rounded half to even, plus the zero point.

use rayon::prelude::*;

/// Round half to even, as `f32::round_ties_even` but without a library call on x86-64
/// without SSE4.1: adding and subtracting 1.5 · 2^23 leaves the nearest integer (ties to
/// even, the default rounding mode) for |v| < 2^22; larger values are returned as they are
/// (every caller clamps them to 0..=255 or its zero-point-shifted range).
#[inline]
pub fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if v.abs() < 4_194_304.0 {
        (v + MAGIC) - MAGIC
    } else {
        v
    }
}

/// Scale and zero point of a u8 activation (`QuantizeLinear`'s parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParam {
    /// Scale.
    pub scale: f32,
    /// Zero point (0..=255).
    pub zp: i32,
}

impl QParam {
    /// `QuantizeLinear`: `clamp(round_half_even(x / scale) + zp, 0, 255)`.
    #[inline]
    pub fn quantize(self, x: f32) -> u8 {
        let v = round_even(x / self.scale) + self.zp as f32;
        v.clamp(0.0, 255.0) as u8
    }

    /// `DequantizeLinear`: `(q - zp) * scale`.
    #[inline]
    pub fn dequantize(self, q: u8) -> f32 {
        (i32::from(q) - self.zp) as f32 * self.scale
    }

    /// MLAS's requantization of an i32 accumulator with the combined `scale`.
    #[inline]
    pub fn requantize(self, acc: i32, scale: f32) -> u8 {
        let v = (acc as f32 * scale).clamp(-self.zp as f32, (255 - self.zp) as f32);
        (round_even(v) as i32 + self.zp) as u8
    }

    /// The table `q -> out.quantize(f(self.dequantize(q)))` of a unary float step between two
    /// quantized tensors: exact, and the step costs one lookup.
    pub fn table(self, out: QParam, f: impl Fn(f32) -> f32) -> [u8; 256] {
        std::array::from_fn(|q| out.quantize(f(self.dequantize(q as u8))))
    }

    /// The values minus the zero point, as i16 (the integer kernels' input).
    pub fn centered(self, q: &[u8], out: &mut Vec<i16>) {
        out.clear();
        out.extend(q.iter().map(|&v| i16::from(v) - self.zp as i16));
    }
}

/// A weight matrix `[n][k]` (one row per output channel), int8 values widened to i16 at load
/// (the kernels multiply i16 by i16), per-row scales.
#[derive(Debug, Clone)]
pub struct QWeight {
    /// Output channels.
    pub n: usize,
    /// Input channels (the dot product's length).
    pub k: usize,
    /// `[n][k]`, row-major.
    pub w: Vec<i16>,
    /// `[n]`.
    pub scale: Vec<f32>,
}

/// `Σ a[i] * b[i]` over i16 values, exact in i32 (|a|, |b| ≤ 255, length ≤ 32 768).
#[inline]
pub fn dot_i16(a: &[i16], b: &[i16]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// Dot products of four rows of `x` with two rows of `w` (all of length `k`): `out[r][c]`.
#[inline]
fn tile_4x2(x: [&[i16]; 4], w: [&[i16]; 2]) -> [[i32; 2]; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if x[0].len().is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked above); all slices have the same length, a
            // multiple of 16 (checked by the caller and above).
            return unsafe { avx2::tile_4x2(x, w) };
        }
    }
    let mut out = [[0i32; 2]; 4];
    for (o, xr) in out.iter_mut().zip(x) {
        for (v, wr) in o.iter_mut().zip(w) {
            *v = dot_i16(xr, wr);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Horizontal sum of eight i32 lanes.
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// Safety: AVX2; every slice has the length of `x[0]`, a multiple of 16.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_4x2(x: [&[i16]; 4], w: [&[i16]; 2]) -> [[i32; 2]; 4] {
        let k = x[0].len();
        debug_assert!(x.iter().all(|r| r.len() == k) && w.iter().all(|r| r.len() == k));
        let mut acc = [_mm256_setzero_si256(); 8];
        let mut i = 0;
        while i < k {
            // SAFETY: i + 16 <= k for every slice (lengths checked by the caller).
            unsafe {
                let w0 = _mm256_loadu_si256(w[0].as_ptr().add(i).cast());
                let w1 = _mm256_loadu_si256(w[1].as_ptr().add(i).cast());
                for r in 0..4 {
                    let xr = _mm256_loadu_si256(x[r].as_ptr().add(i).cast());
                    acc[2 * r] = _mm256_add_epi32(acc[2 * r], _mm256_madd_epi16(xr, w0));
                    acc[2 * r + 1] = _mm256_add_epi32(acc[2 * r + 1], _mm256_madd_epi16(xr, w1));
                }
            }
            i += 16;
        }
        let mut out = [[0i32; 2]; 4];
        for r in 0..4 {
            // SAFETY: AVX2 (this function's feature).
            unsafe {
                out[r] = [hsum(acc[2 * r]), hsum(acc[2 * r + 1])];
            }
        }
        out
    }
}

/// `out[i][j] = Σ_k x[i][k] * w[j][k]` for `x` `[m][k]` and `w` `[n][k]` (i16, exact in i32),
/// then `finish(j, acc)`. Blocks of 32 rows of `w` in parallel (rayon), each kept in cache
/// while every row of `x` passes, in 4 × 2 tiles.
pub fn matmul_i16<T: Send + Sync + Copy + Default>(
    x: &[i16],
    w: &[i16],
    k: usize,
    out: &mut Vec<T>,
    finish: impl Fn(usize, i32) -> T + Sync,
) {
    const JB: usize = 32;
    let m = x.len() / k;
    let n = w.len() / k;
    let blocks: Vec<Vec<T>> = (0..n.div_ceil(JB))
        .into_par_iter()
        .map(|b| {
            let j0 = b * JB;
            let nb = JB.min(n - j0);
            let mut o = vec![T::default(); m * nb];
            let wr = |j: usize| {
                let j = j0 + j.min(nb - 1);
                &w[j * k..(j + 1) * k]
            };
            for i0 in (0..m).step_by(4) {
                let rows = 4.min(m - i0);
                let xr = |r: usize| {
                    let i = i0 + r.min(rows - 1);
                    &x[i * k..(i + 1) * k]
                };
                let xs = [xr(0), xr(1), xr(2), xr(3)];
                for j in (0..nb).step_by(2) {
                    let t = tile_4x2(xs, [wr(j), wr(j + 1)]);
                    for (r, tr) in t.iter().enumerate().take(rows) {
                        o[(i0 + r) * nb + j] = finish(j0 + j, tr[0]);
                        if j + 1 < nb {
                            o[(i0 + r) * nb + j + 1] = finish(j0 + j + 1, tr[1]);
                        }
                    }
                }
            }
            o
        })
        .collect();
    out.clear();
    out.resize(m * n, T::default());
    for (b, o) in blocks.iter().enumerate() {
        let j0 = b * JB;
        let nb = JB.min(n - j0);
        for i in 0..m {
            out[i * n + j0..i * n + j0 + nb].copy_from_slice(&o[i * nb..(i + 1) * nb]);
        }
    }
}

/// `QLinearMatMul` (or `QGemm` with `bias`): `x` is `[m][w.k]` centred activations of scale
/// `x_scale`; the output `[m][w.n]` is quantized with `y`.
pub fn qmatmul(
    x: &[i16],
    x_scale: f32,
    w: &QWeight,
    bias: Option<&[i32]>,
    y: QParam,
    out: &mut Vec<u8>,
) {
    let scales: Vec<f32> = w.scale.iter().map(|&s| x_scale * s / y.scale).collect();
    matmul_i16(x, &w.w, w.k, out, |j, acc| {
        let acc = acc + bias.map_or(0, |b| b[j]);
        y.requantize(acc, scales[j])
    });
}

/// onnxruntime's `QLinearSoftmax` (u8, opset 13) over one row, in place: a table of
/// `exp((i - 255 + shift) * x_scale)` in f32, shifted so the row's maximum reads entry 255,
/// summed in order in f32, each entry `round(v * floor(1 / y_scale) / sum) + y_zp`, at most 255.
pub struct QSoftmax {
    table: [f32; 256],
    y_mul: f32,
    y_zp: u32,
}

impl QSoftmax {
    /// The table for rows of `len` entries.
    pub fn new(x_scale: f32, y: QParam, len: usize) -> Self {
        // onnxruntime takes this logarithm in f32 (`log` of a float).
        let bit_shift = f64::from((f64::from(f32::MAX / len as f32).ln()) as f32);
        let bit_shift = (bit_shift - 5.0).max(0.0) / f64::from(x_scale);
        let mut table = [0.0f32; 256];
        for (i, t) in table.iter_mut().enumerate() {
            *t = ((i as f64 - 255.0 + bit_shift) * f64::from(x_scale)).exp() as f32;
        }
        Self {
            table,
            y_mul: (1.0f32 / y.scale).floor(),
            y_zp: y.zp as u32,
        }
    }

    /// Softmax of the u8 row `x` into `y`.
    pub fn row(&self, x: &[u8], y: &mut [u8]) {
        let max = x.iter().copied().max().unwrap_or(255);
        let shift = 255 - usize::from(max);
        let look = |v: u8| self.table[usize::from(v) + shift];
        // onnxruntime sums the row in order, in f32 (measured bit-exact against it on every
        // row of the encoder's attention).
        let sum = x.iter().fold(0.0f32, |s, &v| s + look(v));
        if sum == 0.0 {
            return;
        }
        self.finish(x, shift, sum, y);
    }

    /// [`Self::row`] for consecutive rows of `len` entries (`x` and `y` hold whole rows): four
    /// rows at a time, their sums interleaved (each still in order) so they overlap in time.
    pub fn rows(&self, x: &[u8], len: usize, y: &mut [u8]) {
        for (xc, yc) in x.chunks(4 * len).zip(y.chunks_mut(4 * len)) {
            if xc.len() < 4 * len {
                for (xr, yr) in xc.chunks_exact(len).zip(yc.chunks_exact_mut(len)) {
                    self.row(xr, yr);
                }
                continue;
            }
            let shift: [usize; 4] = std::array::from_fn(|r| {
                255 - usize::from(
                    xc[r * len..(r + 1) * len]
                        .iter()
                        .copied()
                        .max()
                        .unwrap_or(255),
                )
            });
            let mut sums = [0.0f32; 4];
            for i in 0..len {
                for (r, s) in sums.iter_mut().enumerate() {
                    *s += self.table[usize::from(xc[r * len + i]) + shift[r]];
                }
            }
            for (r, yr) in yc.chunks_exact_mut(len).enumerate() {
                if sums[r] != 0.0 {
                    self.finish(&xc[r * len..(r + 1) * len], shift[r], sums[r], yr);
                }
            }
        }
    }

    fn finish(&self, x: &[u8], shift: usize, sum: f32, y: &mut [u8]) {
        for (o, &v) in y.iter_mut().zip(x) {
            let e = self.table[usize::from(v) + shift];
            let q = round_even((e * self.y_mul) / sum) as u32 + self.y_zp;
            *o = q.min(255) as u8;
        }
    }
}

/// Layer normalisation of each `n`-wide row of `x` into `out`, with the arithmetic of
/// onnxruntime's `LayerNormalization` on x86-64 (MLAS's AVX2 kernel, centred two passes):
/// the mean from an f64 sum in four lanes (`x[i]` into lane `i % 4`, combined as
/// `(l0 + l2) + (l1 + l3)`), rounded to f32; the variance from f32 fused multiply-adds of
/// `(x - mean)²` in eight lanes (combined as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`);
/// `inv = 1 / sqrt(var / n + 1e-5)` in f32; `y = fma((x - mean) * inv, gamma, beta)`. Plain
/// Rust, so the result is the same on every CPU (measured bit-exact against onnxruntime 1.32
/// on every row of the encoder's layer norms).
pub fn layer_norm(x: &[f32], n: usize, gamma: &[f32], beta: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.resize(x.len(), 0.0);
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mut d = [0.0f64; 4];
        let mut quads = row.chunks_exact(4);
        for q in &mut quads {
            for (l, &v) in d.iter_mut().zip(q) {
                *l += f64::from(v);
            }
        }
        let mut dsum = (d[0] + d[2]) + (d[1] + d[3]);
        for &v in quads.remainder() {
            dsum += f64::from(v);
        }
        let mean = (dsum / n as f64) as f32;
        let mut l = [0.0f32; 8];
        let mut octs = row.chunks_exact(8);
        for c in &mut octs {
            for (a, &v) in l.iter_mut().zip(c) {
                let dv = v - mean;
                *a = dv.mul_add(dv, *a);
            }
        }
        let mut var = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
        for &v in octs.remainder() {
            let dv = v - mean;
            var = dv.mul_add(dv, var);
        }
        let inv = 1.0f32 / (var / n as f32 + 1e-5f32).sqrt();
        for ((d, &v), (&g, &b)) in o.iter_mut().zip(row).zip(gamma.iter().zip(beta)) {
            *d = ((v - mean) * inv).mul_add(g, b);
        }
    }
}

/// GELU as the graph spells it, `x * (0.5 * (erf(x / 1.4142135) + 1))`, with onnxruntime's
/// `Erf` ([`erf`]).
#[inline]
pub fn gelu(x: f32) -> f32 {
    x * (0.5 * (erf(x / std::f32::consts::SQRT_2) + 1.0))
}

/// The error function as onnxruntime's `Erf` computes it on x86-64 (MLAS's FMA3 kernel): for
/// `|x| < 0.921875` an odd polynomial in `|x|`, above it `1 - exp(-p(|x|))` with `|x|` capped
/// at 3.925 and MLAS's own `exp` (a power of two times a polynomial), every step a fused
/// multiply-add in f32, the sign copied from `x`. Bit-exact against onnxruntime 1.32 on every
/// value the model's GELUs see; within a few ulps of the true `erf`.
pub fn erf(x: f32) -> f32 {
    const SMALL: [f32; 6] = [
        -0.00059910497,
        0.004993396,
        -0.026766734,
        0.112818025,
        -0.37612486,
        0.12837915,
    ];
    const BIG: [f32; 7] = [
        1.7294893e-5,
        -0.00038320868,
        0.0038839343,
        -0.02425456,
        0.10677785,
        0.6348467,
        0.12871751,
    ];
    const EXP: [f32; 7] = [
        0.0013831981,
        0.0083755,
        0.04166895,
        0.16666447,
        0.49999985,
        1.0,
        1.0,
    ];
    let a = x.abs().min(3.925);
    let r = if a < 0.921_875 {
        let s = a * a;
        let p = SMALL[1..].iter().fold(SMALL[0], |p, &c| p.mul_add(s, c));
        p.mul_add(a, a)
    } else {
        let p = BIG[1..].iter().fold(BIG[0], |p, &c| p.mul_add(a, c));
        let e = (-p.mul_add(a, a)).max(-88.37626);
        // exp(e) = 2^t * exp(f), t = round(e / ln 2), f = e - t ln 2 (in two parts).
        const ROUND: f32 = 12_582_912.0;
        let t = std::f32::consts::LOG2_E.mul_add(e, ROUND) - ROUND;
        let f = t.mul_add(-0.69314575, e);
        let f = t.mul_add(-1.4286068e-6, f);
        let y = EXP[1..].iter().fold(EXP[0], |y, &c| y.mul_add(f, c));
        let pow2 = f32::from_bits(((t as i32 + 127) as u32) << 23);
        1.0 - y * pow2
    };
    r.copysign(x)
}

/// The hyperbolic tangent as onnxruntime's `Tanh` computes it on x86-64 (MLAS's FMA3 kernel,
/// Eigen's rational approximation): `x` clamped to ±9, an odd polynomial of degree 13 over an
/// even one of degree 6 in `x`, fused multiply-adds in f32. Bit-exact against onnxruntime 1.32
/// on the model's pooling layer.
pub fn tanh(x: f32) -> f32 {
    const NUM: [f32; 7] = [
        -2.7607684e-16,
        2.000188e-13,
        -8.604672e-11,
        5.1222973e-8,
        1.48572235e-5,
        6.3726195e-4,
        4.8935246e-3,
    ];
    const DEN: [f32; 4] = [1.1982584e-6, 1.1853471e-4, 2.2684347e-3, 4.893525e-3];
    let x = x.clamp(-9.0, 9.0);
    let x2 = x * x;
    let p = NUM[1..].iter().fold(NUM[0], |p, &c| p.mul_add(x2, c)) * x;
    let q = DEN[1..].iter().fold(DEN[0], |q, &c| q.mul_add(x2, c));
    p / q
}

/// `exp(x)` as MLAS's softmax kernel computes it (`x` at most 0, clamped at -103.97):
/// `2^m * p(r)`, `m = round(x / ln 2)`, `r = x - m ln 2` in two parts, `p` a degree-6
/// polynomial, fused multiply-adds in f32, the power of two applied exactly.
fn softmax_exp(x: f32) -> f32 {
    const P: [f32; 5] = [
        1.3780594e-3,
        8.3731245e-3,
        4.1669536e-2,
        1.6666472e-1,
        4.9999985e-1,
    ];
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-103.972_084);
    let m = std::f32::consts::LOG2_E.mul_add(x, ROUND) - ROUND;
    let r = m.mul_add(-0.69314575, x);
    let r = m.mul_add(-1.4286068e-6, r);
    let p = P[1..].iter().fold(P[0], |p, &c| p.mul_add(r, c));
    let p = p.mul_add(r, 1.0).mul_add(r, 1.0);
    // Exact scaling by 2^m (m is an integer in -150..=0), one rounding as VSCALEFPS.
    (f64::from(p) * 2f64.powi(m as i32)) as f32
}

/// onnxruntime's float `Softmax` of one row in place, as MLAS computes it on an AVX-512 CPU
/// (the reference machine): `e = exp(x - max)` ([`softmax_exp`]), summed in sixteen lanes
/// (element `i` into lane `i % 16`; with `a[k] = l[k] + l[k + 8]`, the sum is
/// `((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))`), then `e * (1 / sum)`.
pub fn softmax_row(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0.0f32; 16];
    for (i, v) in x.iter_mut().enumerate() {
        *v = softmax_exp(*v - max);
        lanes[i % 16] += *v;
    }
    let a: [f32; 8] = std::array::from_fn(|k| lanes[k] + lanes[k + 8]);
    let sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    let scale = 1.0 / sum;
    for v in x {
        *v *= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MLAS approximations stay close to the true functions (their exactness against
    /// onnxruntime is checked by `tests/turn.rs` through the model's probabilities).
    #[test]
    fn mlas_approximations_are_close() {
        for i in -4000..=4000 {
            let x = i as f32 * 1.5e-3;
            let e = (erf(x) - libm::erff(x)).abs();
            assert!(e <= 2.5e-7, "erf({x}): {} vs {}", erf(x), libm::erff(x));
            let t = (tanh(x) - x.tanh()).abs();
            assert!(t <= 1e-6, "tanh({x}): {} vs {}", tanh(x), x.tanh());
            if x <= 0.0 {
                let r = (softmax_exp(x) - x.exp()).abs() / x.exp();
                assert!(r <= 4e-7, "exp({x}): {} vs {}", softmax_exp(x), x.exp());
            }
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        let mut row: Vec<f32> = (0..400).map(|i| (i % 37) as f32 * 0.1 - 2.0).collect();
        softmax_row(&mut row);
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        let x: Vec<f32> = (0..384).map(|i| (i % 11) as f32 * 0.3 + 5.0).collect();
        let (g, b) = (vec![1.0; 384], vec![0.0; 384]);
        let mut y = Vec::new();
        layer_norm(&x, 384, &g, &b, &mut y);
        let mean = y.iter().sum::<f32>() / 384.0;
        let var = y.iter().map(|v| v * v).sum::<f32>() / 384.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }
}
