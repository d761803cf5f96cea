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

/// `(d, id)` for a 32-element block, as ggml computes them on the machine: `d = amax/127`,
/// and the multiplier `id = 1/d` on aarch64 (NEON) but `127/amax` on x86 (AVX2). The two differ
/// in the last bit for some blocks, which moves a rounding tie now and then (a real case:
/// Gemma 3's first layer on "The capital of France is", one quant of 32, enough to change
/// the layer's output).
fn q8_scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if cfg!(target_arch = "x86_64") {
        if amax != 0.0 { 127.0 / amax } else { 0.0 }
    } else if d != 0.0 {
        1.0 / d
    } else {
        0.0
    };
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

// ----- weight quantizers ---------------------------------------------------------------------
//
// Round-to-nearest quantizers for weights (model conversion, not per token), writing ggml's
// block layouts. They minimise the error of each block with its plain min/max (or absmax)
// scale, like ggml's `quantize_row_*_ref` for the 32-element formats; for the k-quants they
// use the sub-block min/max rather than ggml's iterative search (`make_qkx2_quants`), which
// costs a little accuracy but reads back with the same kernels.

fn f16_of(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// The element of largest magnitude, with its sign.
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// Q4_0: `x ≈ d · (q − 8)`, `d = max / −8` (ggml's `quantize_row_q4_0_ref`).
pub(super) fn q4_0_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_0_BYTES)) {
        let d = signed_absmax(xb) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[0..2].copy_from_slice(&f16_bits(d));
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            ob[2 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
        }
    }
}

/// Q4_1: `x ≈ d · q + m` over the block's range.
pub(super) fn q4_1_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[0..2].copy_from_slice(&f16_bits(d));
        ob[2..4].copy_from_slice(&f16_bits(min));
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            ob[4 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
        }
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        })
}

/// Writes 32 five-bit quants: low nibbles as Q4 (`j`, `j + 16` share a byte), fifth bits
/// into the little-endian `u32` `qh`.
fn pack_q5(q: &[u8; 32], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 15) | ((q[j + 16] & 15) << 4);
        h |= u32::from(q[j] >> 4) << j;
        h |= u32::from(q[j + 16] >> 4) << (j + 16);
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

/// Q5_0: `x ≈ d · (q − 16)`, `d = max / −16`.
pub(super) fn q5_0_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q5_0_BYTES)) {
        let d = signed_absmax(xb) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[0..2].copy_from_slice(&f16_bits(d));
        let mut q = [0u8; 32];
        for (qi, &v) in q.iter_mut().zip(xb) {
            *qi = ((v * id + 16.5) as i32).clamp(0, 31) as u8;
        }
        let (qh, qs) = ob[2..].split_at_mut(4);
        pack_q5(&q, qh, qs);
    }
}

/// Q5_1: `x ≈ d · q + m`.
pub(super) fn q5_1_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q5_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[0..2].copy_from_slice(&f16_bits(d));
        ob[2..4].copy_from_slice(&f16_bits(min));
        let mut q = [0u8; 32];
        for (qi, &v) in q.iter_mut().zip(xb) {
            *qi = (((v - min) * id + 0.5) as i32).clamp(0, 31) as u8;
        }
        let (qh, qs) = ob[4..].split_at_mut(4);
        pack_q5(&q, qh, qs);
    }
}

/// Packs eight 6-bit scales and mins as ggml's `get_scale_min_k4` reads them.
fn pack_scales_k4(sc: &[u8; 8], m: &[u8; 8], out: &mut [u8]) {
    out[..12].fill(0);
    for j in 0..4 {
        out[j] = sc[j] & 63;
        out[j + 4] = m[j] & 63;
    }
    for j in 4..8 {
        out[j + 4] = (sc[j] & 15) | ((m[j] & 15) << 4);
        out[j - 4] |= (sc[j] >> 4) << 6;
        out[j] |= (m[j] >> 4) << 6;
    }
}

/// Scales and mins for a k-quant super-block with `levels` quant values: per 32-element
/// sub-block `x ≈ d·sc·q − dmin·m`, with `sc`, `m` six-bit. Returns (d, dmin, sc, m, quants).
fn k_scales(x: &[f32], levels: f32) -> (f32, f32, [u8; 8], [u8; 8], [u8; QK_K]) {
    let mut scale = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for (i, sb) in x.chunks_exact(32).enumerate() {
        let (min, max) = min_max(sb);
        let min = min.min(0.0);
        scale[i] = (max - min) / levels;
        mins[i] = -min;
    }
    let max_scale = scale.iter().fold(0.0f32, |a, &b| a.max(b));
    let max_min = mins.iter().fold(0.0f32, |a, &b| a.max(b));
    let d = f16_of(max_scale / 63.0);
    let dmin = f16_of(max_min / 63.0);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    let mut q = [0u8; QK_K];
    for i in 0..8 {
        sc[i] = if d > 0.0 {
            ((scale[i] / d).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
        m[i] = if dmin > 0.0 {
            ((mins[i] / dmin).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
        let step = d * f32::from(sc[i]);
        let off = dmin * f32::from(m[i]);
        for (l, &v) in x[i * 32..(i + 1) * 32].iter().enumerate() {
            q[i * 32 + l] = if step > 0.0 {
                (((v + off) / step).round() as i32).clamp(0, levels as i32) as u8
            } else {
                0
            };
        }
    }
    (d, dmin, sc, m, q)
}

/// Q4_K: super-blocks of 256, eight sub-blocks with 6-bit scales and mins.
pub(super) fn q4_k_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q4_K_BYTES)) {
        let (d, dmin, sc, m, q) = k_scales(xb, 15.0);
        ob[0..2].copy_from_slice(&f16_bits(d));
        ob[2..4].copy_from_slice(&f16_bits(dmin));
        pack_scales_k4(&sc, &m, &mut ob[K_SCALES..K_SCALES + 12]);
        let qs = &mut ob[Q4_K_QS..];
        for c in 0..4 {
            for l in 0..32 {
                qs[c * 32 + l] = q[c * 64 + l] | (q[c * 64 + 32 + l] << 4);
            }
        }
    }
}

/// Q5_K: as Q4_K with a fifth bit per quant in `qh`.
pub(super) fn q5_k_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q5_K_BYTES)) {
        let (d, dmin, sc, m, q) = k_scales(xb, 31.0);
        ob[0..2].copy_from_slice(&f16_bits(d));
        ob[2..4].copy_from_slice(&f16_bits(dmin));
        pack_scales_k4(&sc, &m, &mut ob[K_SCALES..K_SCALES + 12]);
        ob[Q5_K_QH..Q5_K_QH + 32].fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (a, b) = (q[c * 64 + l], q[c * 64 + 32 + l]);
                ob[Q5_K_QS + c * 32 + l] = (a & 15) | ((b & 15) << 4);
                ob[Q5_K_QH + l] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
            }
        }
    }
}

/// Q6_K: super-blocks of 256, sixteen 16-element groups with int8 scales,
/// `x ≈ d · sc · (q − 32)`.
pub(super) fn q6_k_into(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q6_K_BYTES)) {
        let mut scales = [0.0f32; 16];
        for (i, g) in xb.chunks_exact(16).enumerate() {
            scales[i] = signed_absmax(g) / -32.0;
        }
        let max_scale = signed_absmax(&scales);
        let iscale = if max_scale != 0.0 {
            -128.0 / max_scale
        } else {
            0.0
        };
        let d = f16_of(if iscale != 0.0 { 1.0 / iscale } else { 0.0 });
        let mut sc = [0i8; 16];
        let mut q = [0u8; QK_K];
        for i in 0..16 {
            sc[i] = ((iscale * scales[i]).round() as i32).clamp(-128, 127) as i8;
            let step = d * f32::from(sc[i]);
            for l in 0..16 {
                let v = xb[i * 16 + l];
                q[i * 16 + l] = if step != 0.0 {
                    ((v / step).round() as i32 + 32).clamp(0, 63) as u8
                } else {
                    32
                };
            }
        }
        let (ql, rest) = ob.split_at_mut(Q6_K_QH);
        let (qh, rest) = rest.split_at_mut(64);
        let (scb, db) = rest.split_at_mut(16);
        qh.fill(0);
        for n in 0..2 {
            let (ql, qh, q) = (&mut ql[n * 64..], &mut qh[n * 32..], &q[n * 128..]);
            for l in 0..32 {
                let (q1, q2, q3, q4) = (q[l], q[l + 32], q[l + 64], q[l + 96]);
                ql[l] = (q1 & 15) | ((q3 & 15) << 4);
                ql[l + 32] = (q2 & 15) | ((q4 & 15) << 4);
                qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        for (b, &s) in scb.iter_mut().zip(&sc) {
            *b = s as u8;
        }
        db[..2].copy_from_slice(&f16_bits(d));
    }
}
