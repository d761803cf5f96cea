//! Activation quantizers: f32 rows to Q8_0, Q8_1 and Q8_K blocks, rounded as ggml does.
//!
//! Q8_0 and Q8_1 follow ggml's CPU backend on aarch64 (`quantize_row_q8_0` / `_q8_1` in
//! `ggml-cpu/arch/arm/quants.c`), our deployment target: `d = amax / 127`, `id = 1 / d`,
//! `q = round_half_even(x · id)`, and `d` stored as f16 (round to nearest even). ggml's
//! portable reference (`quantize_row_q8_0_ref`) rounds halves away from zero instead, and its
//! x86 AVX path multiplies by `127 / amax` rather than `1 / d`; either can differ from this in
//! the last bit of a quant for inputs that land exactly on a rounding boundary, which is rare.
//! Q8_K follows `quantize_row_q8_K_ref`, which every ggml CPU backend uses: the scale is taken
//! from the signed value of largest magnitude (`iscale = −127 / max`), quants are rounded
//! half to even (ggml's `nearest_int`) and capped at 127, `d = 1 / iscale` is stored as f32,
//! and the sixteen `bsums` are the sums of each group of 16 quants (zero for an all-zero
//! block, which ggml leaves uninitialized).
//!
//! All quants are in −127..=127, which the SIMD dot products rely on (see the module docs).
//! Non-finite inputs give unspecified quants (never undefined behaviour).

use super::layout::*;

fn f16_bits(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// `(d, 1/d)` for a 32-element block, as ggml computes them on aarch64.
fn q8_scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// Rounds `v` half to even and converts it to a quant (saturating; in range for our inputs).
#[inline(always)]
fn quant(v: f32) -> i8 {
    v.round_ties_even() as i8
}

/// Writes Q8_0 blocks for `x` into `out` (`x.len() / 32 * 34` bytes; lengths checked by the caller).
pub(super) fn q8_0_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let (d, id) = q8_scale(xb);
        ob[0..2].copy_from_slice(&f16_bits(d));
        for (o, &v) in ob[2..].iter_mut().zip(xb) {
            *o = quant(v * id) as u8;
        }
    }
}

/// Writes Q8_1 blocks for `x` into `out` (`x.len() / 32 * 36` bytes): as Q8_0, plus the f16
/// `s = d · Σ q` that the Q4_1 / Q5_1 kernels use for the weights' minimum term.
pub(super) fn q8_1_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_1_BYTES)) {
        let (d, id) = q8_scale(xb);
        let mut sum = 0i32;
        for (o, &v) in ob[4..].iter_mut().zip(xb) {
            let q = quant(v * id);
            sum += i32::from(q);
            *o = q as u8;
        }
        ob[0..2].copy_from_slice(&f16_bits(d));
        ob[2..4].copy_from_slice(&f16_bits(d * sum as f32));
    }
}

/// Writes Q8_K super-blocks for `x` into `out` (`x.len() / 256 * 292` bytes).
pub(super) fn q8_k_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8_K_BYTES)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            ob.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let (qs, bsums) = ob[Q8_K_QS..].split_at_mut(QK_K);
        for (o, &v) in qs.iter_mut().zip(xb) {
            *o = (v * iscale).round_ties_even().min(127.0) as i8 as u8;
        }
        for (g, b) in qs.chunks_exact(16).zip(bsums.chunks_exact_mut(2)) {
            let s: i16 = g.iter().map(|&q| i16::from(q as i8)).sum();
            b.copy_from_slice(&s.to_le_bytes());
        }
        ob[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
