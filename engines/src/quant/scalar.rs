//! Portable reference code: dequantization and the scalar dot products.
//!
//! These follow the block definitions literally and are the reference the SIMD paths are
//! tested against. Integer parts are exact; the order of float operations is documented
//! per format, because the SIMD paths reproduce it exactly for the k-quants.

use super::layout::*;
use crate::gguf::GgmlType;

// ----- dequantization ----------------------------------------------------------------------

/// Dequantizes whole blocks of `ty` from `b` into `out` (lengths already checked).
pub(super) fn dequantize(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                *o = f32_at(c, 0);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = f16_at(c, 0);
            }
        }
        GgmlType::Q4_0 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(b.chunks_exact(Q4_0_BYTES)) {
                let d = f16_at(blk, 0);
                for j in 0..16 {
                    let q = blk[2 + j];
                    o[j] = (i32::from(q & 0x0f) - 8) as f32 * d;
                    o[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(b.chunks_exact(Q4_1_BYTES)) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                for j in 0..16 {
                    let q = blk[4 + j];
                    o[j] = f32::from(q & 0x0f) * d + m;
                    o[j + 16] = f32::from(q >> 4) * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(b.chunks_exact(Q5_0_BYTES)) {
                let d = f16_at(blk, 0);
                let q = q5_values(blk[2..6].try_into().unwrap_or_default(), &blk[6..22]);
                for (o, q) in o.iter_mut().zip(q) {
                    *o = f32::from(i16::from(q) - 16) * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(b.chunks_exact(Q5_1_BYTES)) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let q = q5_values(blk[4..8].try_into().unwrap_or_default(), &blk[8..24]);
                for (o, q) in o.iter_mut().zip(q) {
                    *o = f32::from(q) * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(b.chunks_exact(Q8_0_BYTES)) {
                let d = f16_at(blk, 0);
                for (o, &q) in o.iter_mut().zip(&blk[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q8_1 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(b.chunks_exact(Q8_1_BYTES)) {
                let d = f16_at(blk, 0);
                for (o, &q) in o.iter_mut().zip(&blk[4..36]) {
                    *o = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_K => {
            for (o, blk) in out.chunks_exact_mut(QK_K).zip(b.chunks_exact(Q4_K_BYTES)) {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (sc, mn) = k_scales_mins(k_scale_bytes(blk));
                let q = q4_k_values(blk);
                for (s, (o, q)) in o.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
                    let (d1, m1) = (d * f32::from(sc[s]), dmin * f32::from(mn[s]));
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = d1 * f32::from(q) - m1;
                    }
                }
            }
        }
        GgmlType::Q5_K => {
            for (o, blk) in out.chunks_exact_mut(QK_K).zip(b.chunks_exact(Q5_K_BYTES)) {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (sc, mn) = k_scales_mins(k_scale_bytes(blk));
                let q = q5_k_values(blk);
                for (s, (o, q)) in o.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
                    let (d1, m1) = (d * f32::from(sc[s]), dmin * f32::from(mn[s]));
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = d1 * f32::from(q) - m1;
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (o, blk) in out.chunks_exact_mut(QK_K).zip(b.chunks_exact(Q6_K_BYTES)) {
                let d = f16_at(blk, Q6_K_D);
                let q = q6_k_values(blk);
                for (g, (o, q)) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                    let s = blk[Q6_K_SCALES + g] as i8;
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = d * f32::from(s) * f32::from(q);
                    }
                }
            }
        }
        GgmlType::Q8_K => {
            for (o, blk) in out.chunks_exact_mut(QK_K).zip(b.chunks_exact(Q8_K_BYTES)) {
                let d = f32_at(blk, 0);
                for (o, &q) in o.iter_mut().zip(&blk[Q8_K_QS..Q8_K_QS + QK_K]) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
        other => unreachable!("dequantize called for {other}"),
    }
}

// ----- unpacking (element order) -----------------------------------------------------------

/// The 32 five-bit values (0..=31) of a Q5_0 / Q5_1 block: element `j < 16` is the low nibble
/// of `qs[j]`, element `j + 16` its high nibble, and bit `j` of the little-endian `qh` word is
/// element `j`'s fifth bit.
fn q5_values(qh: [u8; 4], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (qs[j] & 0x0f) | (hi0 << 4);
        q[j + 16] = (qs[j] >> 4) | (hi1 << 4);
    }
    q
}

/// The 256 four-bit values of a Q4_K super-block, in element order: each 32-byte group of
/// `qs` holds two sub-blocks, the low nibbles first.
fn q4_k_values(blk: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    let qs = &blk[Q4_K_QS..Q4_K_QS + 128];
    for (out, bytes) in q.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
        for l in 0..32 {
            out[l] = bytes[l] & 0x0f;
            out[l + 32] = bytes[l] >> 4;
        }
    }
    q
}

/// The 256 five-bit values of a Q5_K super-block: as Q4_K, plus bit `s` of `qh[l]` is the
/// fifth bit of element `l` of sub-block `s`.
fn q5_k_values(blk: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    let qh = &blk[Q5_K_QH..Q5_K_QH + 32];
    let qs = &blk[Q5_K_QS..Q5_K_QS + 128];
    for (c, (out, bytes)) in q.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        for l in 0..32 {
            let h_lo = (qh[l] >> (2 * c)) & 1;
            let h_hi = (qh[l] >> (2 * c + 1)) & 1;
            out[l] = (bytes[l] & 0x0f) | (h_lo << 4);
            out[l + 32] = (bytes[l] >> 4) | (h_hi << 4);
        }
    }
    q
}

/// The 256 signed six-bit values (−32..=31) of a Q6_K super-block. Each half of 128 elements
/// uses 64 bytes of `ql` and 32 of `qh`: for `l < 32`, elements `l`, `l+32`, `l+64`, `l+96`
/// take the low nibble of `ql[l]`, the low nibble of `ql[l+32]`, the high nibble of `ql[l]`
/// and the high nibble of `ql[l+32]`, and bits 0-1, 2-3, 4-5, 6-7 of `qh[l]` as bits 4-5.
fn q6_k_values(blk: &[u8]) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for (half, out) in q.chunks_exact_mut(128).enumerate() {
        let ql = &blk[64 * half..64 * half + 64];
        let qh = &blk[Q6_K_QH + 32 * half..Q6_K_QH + 32 * half + 32];
        for l in 0..32 {
            let h = qh[l];
            let v = [
                (ql[l] & 0x0f) | ((h & 0x03) << 4),
                (ql[l + 32] & 0x0f) | (((h >> 2) & 0x03) << 4),
                (ql[l] >> 4) | (((h >> 4) & 0x03) << 4),
                (ql[l + 32] >> 4) | (((h >> 6) & 0x03) << 4),
            ];
            for (k, v) in v.into_iter().enumerate() {
                // v <= 63, so the subtraction stays in i8 range.
                out[l + 32 * k] = v as i8 - 32;
            }
        }
    }
    q
}

// ----- dot products ------------------------------------------------------------------------

/// The scalar dot product of one weight row of `ty` with one activation row of
/// `activation_type(ty)`; both hold the same number of whole blocks (checked by the caller).
pub(super) fn dot(ty: GgmlType, w: &[u8], x: &[u8]) -> f32 {
    match ty {
        GgmlType::Q4_0 => dot_q4_0(w, x),
        GgmlType::Q4_1 => dot_q4_1(w, x),
        GgmlType::Q5_0 => dot_q5_0(w, x),
        GgmlType::Q5_1 => dot_q5_1(w, x),
        GgmlType::Q8_0 => dot_q8_0(w, x),
        GgmlType::Q4_K => dot_q4_k(w, x),
        GgmlType::Q5_K => dot_q5_k(w, x),
        GgmlType::Q6_K => dot_q6_k(w, x),
        other => unreachable!("dot called for {other}"),
    }
}

fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&v| i32::from(v as i8))
}

/// Σ over blocks of `(d_w·d_x)·isum`, with `isum = Σ (q_w − 8)·q_x`.
fn dot_q4_0(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(Q4_0_BYTES).zip(x.chunks_exact(Q8_0_BYTES)) {
        let mut isum = 0i32;
        for (j, y) in i8s(&xb[2..18]).enumerate() {
            isum += (i32::from(wb[2 + j] & 0x0f) - 8) * y;
        }
        for (j, y) in i8s(&xb[18..34]).enumerate() {
            isum += (i32::from(wb[2 + j] >> 4) - 8) * y;
        }
        sum += f16_at(wb, 0) * f16_at(xb, 0) * isum as f32;
    }
    sum
}

/// Σ over blocks of `(d_w·d_x)·isum + m_w·s_x`, with `isum = Σ q_w·q_x` and `s_x` the Q8_1
/// block's stored `d_x·Σ q_x`.
fn dot_q4_1(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(Q4_1_BYTES).zip(x.chunks_exact(Q8_1_BYTES)) {
        let mut isum = 0i32;
        for (j, y) in i8s(&xb[4..20]).enumerate() {
            isum += i32::from(wb[4 + j] & 0x0f) * y;
        }
        for (j, y) in i8s(&xb[20..36]).enumerate() {
            isum += i32::from(wb[4 + j] >> 4) * y;
        }
        sum += f16_at(wb, 0) * f16_at(xb, 0) * isum as f32 + f16_at(wb, 2) * f16_at(xb, 2);
    }
    sum
}

/// As Q4_0 with five-bit values offset by 16.
fn dot_q5_0(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(Q5_0_BYTES).zip(x.chunks_exact(Q8_0_BYTES)) {
        let q = q5_values(wb[2..6].try_into().unwrap_or_default(), &wb[6..22]);
        let isum: i32 = q
            .iter()
            .zip(i8s(&xb[2..34]))
            .map(|(&q, y)| (i32::from(q) - 16) * y)
            .sum();
        sum += f16_at(wb, 0) * f16_at(xb, 0) * isum as f32;
    }
    sum
}

/// As Q4_1 with five-bit values.
fn dot_q5_1(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(Q5_1_BYTES).zip(x.chunks_exact(Q8_1_BYTES)) {
        let q = q5_values(wb[4..8].try_into().unwrap_or_default(), &wb[8..24]);
        let isum: i32 = q
            .iter()
            .zip(i8s(&xb[4..36]))
            .map(|(&q, y)| i32::from(q) * y)
            .sum();
        sum += f16_at(wb, 0) * f16_at(xb, 0) * isum as f32 + f16_at(wb, 2) * f16_at(xb, 2);
    }
    sum
}

/// Σ over blocks of `(d_w·d_x)·Σ q_w·q_x`.
fn dot_q8_0(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(Q8_0_BYTES).zip(x.chunks_exact(Q8_0_BYTES)) {
        let isum: i32 = i8s(&wb[2..34])
            .zip(i8s(&xb[2..34]))
            .map(|(a, b)| a * b)
            .sum();
        sum += f16_at(wb, 0) * f16_at(xb, 0) * isum as f32;
    }
    sum
}

/// The Q8_K block sums folded with the Q4_K / Q5_K minimums: `Σ_s min_s·(bsum_2s + bsum_2s+1)`.
fn k_min_term(xb: &[u8], mn: &[u8; 8]) -> i32 {
    (0..16)
        .map(|g| i32::from(i16_at(xb, Q8_K_BSUMS + 2 * g)) * i32::from(mn[g / 2]))
        .sum()
}

/// Per super-block: `isum = Σ_s scale_s·Σ q_w·q_x` (sub-blocks of 32) and the minimum term
/// from the Q8_K block sums, folded with [`KSum`].
fn dot_q4_k(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = KSum::default();
    for (wb, xb) in w.chunks_exact(Q4_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let (sc, mn) = k_scales_mins(k_scale_bytes(wb));
        let q = q4_k_values(wb);
        let y = &xb[Q8_K_QS..Q8_K_QS + QK_K];
        let mut isum = 0i32;
        for (s, (q, y)) in q.chunks_exact(32).zip(y.chunks_exact(32)).enumerate() {
            let d: i32 = q.iter().zip(i8s(y)).map(|(&q, y)| i32::from(q) * y).sum();
            isum += i32::from(sc[s]) * d;
        }
        let dy = f32_at(xb, 0);
        sum.add(
            f16_at(wb, 0) * dy,
            isum,
            f16_at(wb, 2) * dy,
            k_min_term(xb, &mn),
        );
    }
    sum.total()
}

/// As Q4_K with five-bit values.
fn dot_q5_k(w: &[u8], x: &[u8]) -> f32 {
    let mut sum = KSum::default();
    for (wb, xb) in w.chunks_exact(Q5_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let (sc, mn) = k_scales_mins(k_scale_bytes(wb));
        let q = q5_k_values(wb);
        let y = &xb[Q8_K_QS..Q8_K_QS + QK_K];
        let mut isum = 0i32;
        for (s, (q, y)) in q.chunks_exact(32).zip(y.chunks_exact(32)).enumerate() {
            let d: i32 = q.iter().zip(i8s(y)).map(|(&q, y)| i32::from(q) * y).sum();
            isum += i32::from(sc[s]) * d;
        }
        let dy = f32_at(xb, 0);
        sum.add(
            f16_at(wb, 0) * dy,
            isum,
            f16_at(wb, 2) * dy,
            k_min_term(xb, &mn),
        );
    }
    sum.total()
}

/// Per super-block: `isum = Σ_g scale_g·Σ (q_w−32)·q_x` over 16 groups of 16, then
/// `sum + d·isum` (through [`k_accumulate`] with a zero minimum term).
fn dot_q6_k(w: &[u8], x: &[u8]) -> f32 {
    if cfg!(target_arch = "x86_64") {
        return dot_q6_k_lanes(w, x);
    }
    let mut sum = 0.0f32;
    for (wb, xb) in w.chunks_exact(Q6_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let q = q6_k_values(wb);
        let y = &xb[Q8_K_QS..Q8_K_QS + QK_K];
        let mut isum = 0i32;
        for (g, (q, y)) in q.chunks_exact(16).zip(y.chunks_exact(16)).enumerate() {
            let d: i32 = q.iter().zip(i8s(y)).map(|(&q, y)| i32::from(q) * y).sum();
            isum += i32::from(wb[Q6_K_SCALES + g] as i8) * d;
        }
        sum = k_accumulate(sum, f16_at(wb, Q6_K_D) * f32_at(xb, 0), isum, 0.0, 0);
    }
    sum
}

/// Q6_K in the order of llama.cpp's x86 (AVX2) `ggml_vec_dot_q6_K_q8_K`, which the AVX2
/// kernel reproduces and which llama.cpp uses on x86 for Q6_K for one token and batches
/// under 8 (larger batches take its tiled GEMM, not reproduced): eight i32 lanes per super-block, lane `l` holding the elements `e` with
/// `(e mod 32) / 4 = l` with the six-bit values unsigned (0..=63), minus `32·(s_2l·bsum_2l +
/// s_2l+1·bsum_2l+1)` (the −32 offset, spread over the lanes by 16-element group); each
/// lane folded into its own f32 accumulator with a fused multiply-add by `d_w·d_x`, the eight
/// accumulators summed at the end as x86 does (`(l0+l4)+(l2+l6)` + `(l1+l5)+(l3+l7)`).
fn dot_q6_k_lanes(w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (wb, xb) in w.chunks_exact(Q6_K_BYTES).zip(x.chunks_exact(Q8_K_BYTES)) {
        let q = q6_k_values(wb);
        let y = &xb[Q8_K_QS..Q8_K_QS + QK_K];
        let sc = |g: usize| i32::from(wb[Q6_K_SCALES + g] as i8);
        let mut lanes = [0i32; 8];
        for (e, (&q, y)) in q.iter().zip(i8s(y)).enumerate() {
            lanes[(e % 32) / 4] += sc(e / 16) * (i32::from(q) + 32) * y;
        }
        let d = f16_at(wb, Q6_K_D) * f32_at(xb, 0);
        for (l, (a, lane)) in acc.iter_mut().zip(lanes).enumerate() {
            let bsum = |g: usize| i32::from(i16_at(xb, Q8_K_BSUMS + 2 * g));
            let off = 32 * (sc(2 * l) * bsum(2 * l) + sc(2 * l + 1) * bsum(2 * l + 1));
            *a = d.mul_add((lane - off) as f32, *a);
        }
    }
    let s: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[i + 4]);
    (s[0] + s[2]) + (s[1] + s[3])
}
