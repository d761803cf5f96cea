//! Row-wise kernels the Whisper graph needs and candle-core (without candle-nn) lacks, as
//! candle custom ops on contiguous `f32` CPU tensors, parallel over rows with rayon:
//! layer normalisation, scaled (optionally causal) softmax, and bias + exact (erf) GELU.
//!
//! candle's own element-wise ops run on one thread; on Whisper's encoder (1500 positions)
//! the softmax over `heads × 1500 × 1500` scores and the GELU over `1500 × 4·state` values
//! would otherwise cost as much as a matrix product.

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, InplaceOp2, Layout, Shape};
use rayon::prelude::*;

/// Rows below which the kernels stay on the calling thread.
const PAR_MIN_ROWS: usize = 8;

fn slice_of<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected an f32 tensor");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: expected a contiguous tensor");
    };
    v.get(a..b)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: layout outside the storage")))
}

fn slice_of_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected an f32 tensor");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: expected a contiguous tensor");
    };
    v.get_mut(a..b)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: layout outside the storage")))
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension.
pub struct LayerNorm<'a> {
    /// Scale, one per column.
    pub gamma: &'a [f32],
    /// Shift, one per column.
    pub beta: &'a [f32],
    /// Added to the variance (Whisper: 1e-5).
    pub eps: f32,
}

impl LayerNorm<'_> {
    pub(crate) fn row(&self, x: &[f32], y: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for (((o, &v), &g), &b) in y.iter_mut().zip(x).zip(self.gamma).zip(self.beta) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

impl CustomOp1 for LayerNorm<'_> {
    fn name(&self) -> &'static str {
        "whisper-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_of(s, l, self.name())?;
        let d = last_dim(l);
        if d != self.gamma.len() || d != self.beta.len() || d == 0 {
            candle_core::bail!(
                "layer norm: rows of {d} but {} scales and {} shifts",
                self.gamma.len(),
                self.beta.len()
            );
        }
        let mut y = vec![0.0f32; x.len()];
        if x.len() / d < PAR_MIN_ROWS {
            for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                self.row(xr, yr);
            }
        } else {
            x.par_chunks_exact(d)
                .zip(y.par_chunks_exact_mut(d))
                .for_each(|(xr, yr)| self.row(xr, yr));
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// In place: `softmax(scale · x)` over the last dimension of `(…, q_len, k_len)` scores.
/// With `causal_offset = Some(p)`, query row `i` sees keys `0 ..= i + p` (the others get
/// probability 0).
pub struct Softmax {
    /// Multiplies the scores first.
    pub scale: f32,
    /// Number of query rows per matrix (the second-to-last dimension).
    pub q_len: usize,
    /// Keys before the first query's position, for causal masking.
    pub causal_offset: Option<usize>,
}

impl Softmax {
    pub(crate) fn row(&self, r: usize, x: &mut [f32]) {
        let visible = match self.causal_offset {
            Some(p) => (r % self.q_len.max(1) + p + 1).min(x.len()),
            None => x.len(),
        };
        let (live, masked) = x.split_at_mut(visible);
        let max = super::vmath::max(live);
        if !max.is_finite() {
            x.fill(0.0);
            return;
        }
        let sum = super::vmath::exp_scaled_sum(live, self.scale, -max * self.scale);
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        for v in live.iter_mut() {
            *v *= inv;
        }
        masked.fill(0.0);
    }
}

impl InplaceOp1 for Softmax {
    fn name(&self) -> &'static str {
        "whisper-softmax"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let d = last_dim(l);
        let x = slice_of_mut(s, l, "whisper-softmax")?;
        if d == 0 {
            return Ok(());
        }
        if x.len() / d < PAR_MIN_ROWS {
            for (r, row) in x.chunks_exact_mut(d).enumerate() {
                self.row(r, row);
            }
        } else {
            x.par_chunks_exact_mut(d)
                .enumerate()
                .for_each(|(r, row)| self.row(r, row));
        }
        Ok(())
    }
}

/// `e^x` for `x ≤ 0` (larger inputs are clamped to 0), relative error below 5e-7, written
/// without branches so that loops over it vectorise. Results under `e^-87` are 0.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor(); // vectorizes, unlike round()
    // x - n ln 2 in two parts (Cody-Waite), so that large |x| keeps its precision.
    let t = n.mul_add(-0.693_359_4, x);
    let t = n.mul_add(2.121_944_4e-4, t); // t in [-ln 2 / 2, ln 2 / 2]
    // e^t by its Taylor series, to degree 6.
    let p = 1.0
        + t * (1.0
            + t * (0.5
                + t * (1.0 / 6.0 + t * (1.0 / 24.0 + t * (1.0 / 120.0 + t * (1.0 / 720.0))))));
    // 2^n from the exponent bits. n + 127 is an integer in 1..=127; adding 1.5·2^23 puts it
    // in the low mantissa bits (a float-to-int cast would not vectorize: it saturates).
    let k = (n + 127.0 + 12_582_912.0)
        .to_bits()
        .wrapping_sub(0x4B40_0000);
    p * f32::from_bits(k << 23)
}

/// In place: adds a bias and optionally applies GELU (exact, erf-based, as `torch.nn.GELU`).
///
/// With `per_row = false` the bias has one value per column (a linear layer's output,
/// `(rows, out)`); with `per_row = true` one value per row (a convolution's output,
/// `(channels, length)`).
pub struct BiasGelu<'a> {
    /// The bias (empty: none).
    pub bias: &'a [f32],
    /// Whether `bias[r]` applies to the whole row `r`.
    pub per_row: bool,
    /// Whether to apply GELU after the bias.
    pub gelu: bool,
}

/// `erf(x)` for `f32`, with absolute error below 2e-7 (Numerical Recipes' Chebyshev fit of
/// `erfc`).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp_neg(poly);
    // erf(-x) = -erf(x); `copysign` instead of a branch lets loops over `gelu` vectorize.
    (1.0 - erfc).copysign(x)
}

/// `x · Φ(x)`, the exact GELU.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

impl BiasGelu<'_> {
    fn row(&self, r: usize, x: &mut [f32]) {
        if self.per_row {
            let b = self.bias.get(r).copied().unwrap_or(0.0);
            for v in x.iter_mut() {
                *v += b;
            }
        } else if !self.bias.is_empty() {
            for (v, b) in x.iter_mut().zip(self.bias) {
                *v += b;
            }
        }
        if self.gelu {
            super::vmath::bias_gelu(&[], x);
        }
    }
}

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "whisper-bias-gelu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let d = last_dim(l);
        let x = slice_of_mut(s, l, "whisper-bias-gelu")?;
        if d == 0 {
            return Ok(());
        }
        let rows = x.len() / d;
        let expected = if self.per_row { rows } else { d };
        if !self.bias.is_empty() && self.bias.len() != expected {
            candle_core::bail!(
                "bias of {} values for {} (expected {expected})",
                self.bias.len(),
                if self.per_row { "rows" } else { "columns" }
            );
        }
        if rows < PAR_MIN_ROWS {
            for (r, row) in x.chunks_exact_mut(d).enumerate() {
                self.row(r, row);
            }
        } else {
            x.par_chunks_exact_mut(d)
                .enumerate()
                .for_each(|(r, row)| self.row(r, row));
        }
        Ok(())
    }
}

/// In place: `x += y` for two contiguous tensors of the same size (the residual
/// connections). candle's own addition allocates its result and, above 64K elements, runs
/// on candle's separate spinning thread pool, which competes with the model's pool.
pub struct AddAssign;

/// Values per parallel chunk of [`AddAssign`].
const ADD_CHUNK: usize = 16 * 1024;

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "whisper-add-assign"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let y = slice_of(s2, l2, self.name())?;
        let x = slice_of_mut(s1, l1, self.name())?;
        if x.len() != y.len() {
            candle_core::bail!("add-assign: {} values plus {} values", x.len(), y.len());
        }
        let add = |x: &mut [f32], y: &[f32]| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        if x.len() < 4 * ADD_CHUNK {
            add(x, y);
        } else {
            x.par_chunks_mut(ADD_CHUNK)
                .zip(y.par_chunks(ADD_CHUNK))
                .for_each(|(a, b)| add(a, b));
        }
        Ok(())
    }
}

/// `Σ a[i] · b[i]` with eight partial sums (vectorizes).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_accurate() {
        let mut x = 0.0f32;
        while x > -80.0 {
            let (a, e) = (exp_neg(x), x.exp());
            assert!((a - e).abs() <= 5e-7 * e, "exp({x}) = {a} != {e}");
            x -= 0.037;
        }
        assert!(exp_neg(-1000.0) < 1e-37);
        assert_eq!(exp_neg(5.0), 1.0);
    }

    #[test]
    fn erf_matches_known_values() {
        // erf values from tables (Abramowitz & Stegun 7.1).
        for (x, e) in [
            (0.0f32, 0.0f32),
            (0.1, 0.112_462_92),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.5, -0.966_105_1),
            (4.0, 0.999_999_98),
        ] {
            assert!((erf(x) - e).abs() < 3e-7, "erf({x}) = {} != {e}", erf(x));
        }
    }
}
