//! x86_64 kernels with AVX-512 VNNI (256-bit `vpdpbusd` / `vpdpwssd` on the 32 vector
//! registers of AVX-512VL), register-tiled over several weight rows, selected at run time.
//!
//! These kernels compute a tile of `R` weight rows × `N` activation rows at once: each
//! weight block is unpacked once for the `N` activation rows, and each activation block is
//! loaded (and its scale converted) once for the `R` weight rows. They return **exactly** the
//! AVX2 kernels' results ([`super::avx2`]), bit for bit, because every float operation per
//! output is the same one in the same order; only the integer parts are computed differently,
//! and integer sums are exact in any order:
//!
//! - Q4_0, Q5_0, Q8_0 against Q8_0: the AVX2 kernel's eight i32 lanes per block (lane `l` =
//!   the sum of the four products of elements `4l..4l+4`) come from `vpdpbusd` on the weights
//!   made unsigned (`q + o`, with `o` = 8, 16 or 128) into an accumulator that starts at
//!   `−o · Σ₄ x` (the same four activations per lane, from `vpdpbusd` with the constant `o`),
//!   so each lane is `Σ₄ (q + o)·x − o·Σ₄ x = Σ₄ q·x`; then, as before, one fused multiply-add
//!   per block of `d_w·d_x` times the lanes into eight f32 lanes, summed at the end.
//! - Q4_K against four activation rows (llama.cpp's repacked GEMM order, [`KSum::add_chunks`]):
//!   per 64-element chunk the exact integer `Σ sc·Σ q·y` (`vpmaddubsw`, then `vpdpwssd` with
//!   the sub-block scales), reduced across lanes; the chunk's minimum term from the Q8_K
//!   block sums; then the same two fused multiply-adds per chunk, done for the four tokens in
//!   the four lanes of one register.
//!
//! - Q6_K: the AVX2 kernel with `vpmaddwd` + `vpaddd` fused into `vpdpwssd` (the same eight
//!   exact i32 lanes, then the same f32 lane accumulation), one weight row at a time.
//!
//! Every other case (Q4_1, Q5_1, Q5_K, Q4_K with fewer than four activation rows) runs the
//! AVX2 kernel row by row.

#![allow(unused_unsafe)] // see avx2.rs

use std::arch::x86_64::*;

use super::avx2::{Q6Step, f16x8, f32_at_ptr, hsum_f32, load32, nibbles, q6_k_body};
use crate::gguf::GgmlType;
use crate::quant::layout::*;

/// Whether this CPU can run these kernels (AVX2, FMA, F16C, AVX-512 F/BW/VL/VNNI, detected at
/// run time).
pub(in crate::quant) fn available() -> bool {
    super::avx2::available()
        && crate::cpu::avx512_allowed()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// The tile of `R` weight rows `ws` (`nb` blocks of `ty` each) times `N` activation rows
/// `xs`: `out[r][t] = ws[r] · xs[t]`, bit for bit what [`super::avx2::dot`] returns per row.
///
/// # Panics
///
/// If the CPU lacks the features, or the lengths do not match (see [`check_tile_lengths`]).
pub(in crate::quant) fn dot_tile<const R: usize, const N: usize>(
    ty: GgmlType,
    nb: usize,
    ws: [&[u8]; R],
    xs: [&[u8]; N],
) -> [[f32; N]; R] {
    assert!(
        available(),
        "AVX-512 VNNI kernels called on a CPU without them"
    );
    let (wp, xp) = check_tile_lengths(ty, nb, &ws, &xs);
    // SAFETY: the CPU features were detected above, and `check_tile_lengths` proved that every
    // `ws[r]` holds `nb` blocks of `ty` and every `xs[t]` `nb` blocks of its activation type,
    // which is exactly what each kernel reads.
    unsafe {
        match ty {
            GgmlType::Q4_0 => q4_0_tile(wp, xp, nb),
            GgmlType::Q5_0 => q5_0_tile(wp, xp, nb),
            GgmlType::Q8_0 => q8_0_tile(wp, xp, nb),
            GgmlType::Q4_K if N == 4 => {
                let x4 = [xp[0], xp[1], xp[2], xp[3]];
                let v = q4_k_tile4(wp, x4, nb);
                std::array::from_fn(|r| std::array::from_fn(|t| v[r][t]))
            }
            GgmlType::Q6_K => wp.map(|w| q6_k(w, xp, nb)),
            _ => ws.map(|w| super::avx2::dot(ty, nb, w, xs)),
        }
    }
}

/// `out[r] = w_r · x` for the `out.len()` consecutive weight rows in `w` and one activation
/// row `x` (one token), four rows at a time; bit for bit [`super::avx2::dot_rows`].
///
/// # Panics
///
/// As [`super::avx2::dot_rows`].
pub(in crate::quant) fn dot_rows(ty: GgmlType, nb: usize, w: &[u8], x: &[u8], out: &mut [f32]) {
    type Tile4 = unsafe fn([*const u8; 4], [*const u8; 1], usize) -> [[f32; 1]; 4];
    let tile: Option<Tile4> = match ty {
        GgmlType::Q4_0 => Some(q4_0_tile::<4, 1>),
        GgmlType::Q5_0 => Some(q5_0_tile::<4, 1>),
        GgmlType::Q8_0 => Some(q8_0_tile::<4, 1>),
        _ => None,
    };
    if !(tile.is_some() || ty == GgmlType::Q6_K) || out.is_empty() {
        return super::avx2::dot_rows(ty, nb, w, x, out);
    }
    assert!(
        available(),
        "AVX-512 VNNI kernels called on a CPU without them"
    );
    let row_bytes = w.len() / out.len();
    assert_eq!(
        row_bytes * out.len(),
        w.len(),
        "{ty} rows do not divide the weight bytes"
    );
    // One check for all rows (they have the same length), as in the AVX2 `dot_rows`: per-row
    // checks cost a measurable part of a decode step on short rows.
    check_dot_lengths(ty, nb, &w[..row_bytes], &[x]);
    let xp = [x.as_ptr()];
    let wp = w.as_ptr();
    let Some(tile) = tile else {
        for (r, o) in out.iter_mut().enumerate() {
            // SAFETY: the features were detected above; row `r` is inside `w` (checked) and
            // holds `nb` Q6_K blocks, `x` `nb` Q8_K blocks.
            let [v] = unsafe { q6_k::<1>(wp.add(r * row_bytes), xp, nb) };
            *o = v;
        }
        return;
    };
    let full = out.len() / 4 * 4;
    for (g, o) in out[..full].chunks_exact_mut(4).enumerate() {
        // SAFETY: as above; rows 4g..4g+4 are inside `w`.
        let v = unsafe {
            tile(
                std::array::from_fn(|k| wp.add((4 * g + k) * row_bytes)),
                xp,
                nb,
            )
        };
        for (o, v) in o.iter_mut().zip(v) {
            *o = v[0];
        }
    }
    super::avx2::dot_rows(ty, nb, &w[full * row_bytes..], x, &mut out[full..]);
}

/// Q4_0 tiles ([`signed_tile`] with the nibbles, offset 8).
///
/// # Safety
///
/// As [`signed_tile`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0_tile<const R: usize, const N: usize>(
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
) -> [[f32; N]; R] {
    // SAFETY: forwarded contract; the closure reads bytes 2..18 of a block.
    unsafe { signed_tile(wp, xp, nb, Q4_0_BYTES, 8, |wb| nibbles(wb.add(2))) }
}

/// Q5_0 tiles ([`signed_tile`] with the nibbles and the fifth bits by a mask move, offset 16).
///
/// # Safety
///
/// As [`signed_tile`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q5_0_tile<const R: usize, const N: usize>(
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
) -> [[f32; N]; R] {
    // SAFETY: forwarded contract; the closure reads bytes 2..22 of a block.
    unsafe {
        signed_tile(wp, xp, nb, Q5_0_BYTES, 16, |wb| {
            let qh = wb.add(2).cast::<u32>().read_unaligned();
            _mm256_or_si256(
                nibbles(wb.add(6)),
                _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10)),
            )
        })
    }
}

/// Q8_0 tiles ([`signed_tile`] with the quants' sign bit flipped, offset 128).
///
/// # Safety
///
/// As [`signed_tile`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_tile<const R: usize, const N: usize>(
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
) -> [[f32; N]; R] {
    // SAFETY: forwarded contract; the closure reads bytes 2..34 of a block.
    unsafe {
        signed_tile(wp, xp, nb, Q8_0_BYTES, 128, |wb| {
            _mm256_xor_si256(load32(wb.add(2)), _mm256_set1_epi8(-128))
        })
    }
}

/// Signed weights (Q4_0, Q5_0, Q8_0) against Q8_0 activations; `unpack` turns a weight block
/// into its 32 quants plus `o`, as unsigned bytes.
///
/// # Safety
///
/// Each `wp[r]` must point to `nb` blocks of `w_bytes` bytes and each `xp[t]` to `nb` Q8_0
/// blocks; the CPU must have the features of [`available`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn signed_tile<const R: usize, const N: usize>(
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    o: u8,
    unpack: impl Fn(*const u8) -> __m256i,
) -> [[f32; N]; R] {
    // SAFETY: every pointer below stays inside block `i < nb` of its row (caller's contract).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let ov = _mm256_set1_epi8(o as i8);
        let zero = _mm256_setzero_si256();
        for i in 0..nb {
            let mut u = [zero; R];
            let mut dw = [_mm256_setzero_ps(); R];
            for r in 0..R {
                let wb = wp[r].add(i * w_bytes);
                dw[r] = f16x8(wb);
                u[r] = unpack(wb);
            }
            for t in 0..N {
                let xb = xp[t].add(i * Q8_0_BYTES);
                let x = load32(xb.add(2));
                // −o · (the four activations of each lane).
                let neg = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, ov, x));
                let dx = f16x8(xb);
                for r in 0..R {
                    let lanes = _mm256_dpbusd_epi32(neg, u[r], x);
                    acc[r][t] = _mm256_fmadd_ps(
                        _mm256_mul_ps(dw[r], dx),
                        _mm256_cvtepi32_ps(lanes),
                        acc[r][t],
                    );
                }
            }
        }
        acc.map(|row| row.map(|a| hsum_f32(a)))
    }
}

/// The four i32 lane sums of `a`: `[Σ a[0], Σ a[1], Σ a[2], Σ a[3]]` (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn hsum4_i32(a: [__m256i; 4]) -> __m128i {
    // SAFETY: register-only intrinsics.
    unsafe {
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
    }
}

/// Q4_K against four activation rows in the order of [`KSum::add_chunks`], for `R` rows.
///
/// # Safety
///
/// Each `wp[r]` must point to `nb` Q4_K super-blocks and each `xp[t]` to `nb` Q8_K blocks;
/// the CPU must have the features of [`available`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_k_tile4<const R: usize>(
    wp: [*const u8; R],
    xp: [*const u8; 4],
    nb: usize,
) -> [[f32; 4]; R] {
    // SAFETY: every pointer below stays inside super-block `i < nb` of its row.
    unsafe {
        // Lane t of these is token t's running sum and minimum sum (KSum's two fields).
        let mut acc = [_mm_setzero_ps(); R];
        let mut min = [_mm_setzero_ps(); R];
        let m4 = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for i in 0..nb {
            let xb: [*const u8; 4] = std::array::from_fn(|t| xp[t].add(i * Q8_K_BYTES));
            let dx = _mm_setr_ps(
                f32_at_ptr(xb[0]),
                f32_at_ptr(xb[1]),
                f32_at_ptr(xb[2]),
                f32_at_ptr(xb[3]),
            );
            // Sub-block sums of the activations (bsum_2s + bsum_2s+1) as i16, paired per
            // chunk: lane c of `sub[t]` holds (sum of sub-block 2c, of 2c+1) for token t.
            let sub: [__m128i; 4] = std::array::from_fn(|t| {
                let s = _mm256_madd_epi16(load32(xb[t].add(Q8_K_BSUMS)), ones);
                let p = _mm256_packs_epi32(s, s); // per half: (s0,s1),(s2,s3),(s0,s1),(s2,s3)
                _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0b10_00))
            });
            // Transposed: lane t of `bs[c]` is token t's pair for chunk c.
            let t01lo = _mm_unpacklo_epi32(sub[0], sub[1]);
            let t01hi = _mm_unpackhi_epi32(sub[0], sub[1]);
            let t23lo = _mm_unpacklo_epi32(sub[2], sub[3]);
            let t23hi = _mm_unpackhi_epi32(sub[2], sub[3]);
            let bs = [
                _mm_unpacklo_epi64(t01lo, t23lo),
                _mm_unpackhi_epi64(t01lo, t23lo),
                _mm_unpacklo_epi64(t01hi, t23hi),
                _mm_unpackhi_epi64(t01hi, t23hi),
            ];
            let mut sc = [[0u8; 8]; R];
            let mut mn = [[0u8; 8]; R];
            let mut d = [_mm_setzero_ps(); R];
            let mut dmin = [_mm_setzero_ps(); R];
            for r in 0..R {
                let wb = wp[r].add(i * Q4_K_BYTES);
                (sc[r], mn[r]) = k_scales_mins(&*wb.add(K_SCALES).cast::<[u8; 12]>());
                let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(wb.cast::<i32>().read_unaligned()));
                // d_w·d_x and dmin_w·d_x per token, the same products as the AVX2 kernel.
                d[r] = _mm_mul_ps(_mm_shuffle_ps(dw, dw, 0), dx);
                dmin[r] = _mm_mul_ps(_mm_shuffle_ps(dw, dw, 0b01_01_01_01), dx);
            }
            for c in 0..4 {
                let y: [(__m256i, __m256i); 4] = std::array::from_fn(|t| {
                    let y = xb[t].add(Q8_K_QS + 64 * c);
                    (load32(y), load32(y.add(32)))
                });
                for r in 0..R {
                    let q = load32(wp[r].add(i * Q4_K_BYTES + Q4_K_QS + 32 * c));
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    let s_lo = _mm256_set1_epi16(i16::from(sc[r][2 * c]));
                    let s_hi = _mm256_set1_epi16(i16::from(sc[r][2 * c + 1]));
                    let p: [__m256i; 4] = std::array::from_fn(|t| {
                        let a = _mm256_dpwssd_epi32(
                            _mm256_setzero_si256(),
                            _mm256_maddubs_epi16(lo, y[t].0),
                            s_lo,
                        );
                        _mm256_dpwssd_epi32(a, _mm256_maddubs_epi16(hi, y[t].1), s_hi)
                    });
                    let isum = _mm_cvtepi32_ps(hsum4_i32(p));
                    acc[r] = _mm_fmadd_ps(isum, d[r], acc[r]);
                    let pair = i32::from(mn[r][2 * c]) | (i32::from(mn[r][2 * c + 1]) << 16);
                    let imin = _mm_madd_epi16(bs[c], _mm_set1_epi32(pair));
                    min[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(imin), dmin[r], min[r]);
                }
            }
        }
        let mut out = [[0.0f32; 4]; R];
        for r in 0..R {
            _mm_storeu_ps(out[r].as_mut_ptr(), _mm_sub_ps(acc[r], min[r]));
        }
        out
    }
}

/// Q6_K against Q8_K: [`super::avx2`]'s Q6_K kernel (its body, [`q6_k_body`]) with the
/// scale multiply and the lane sum fused into `vpdpwssd` (same exact integer lanes, same float
/// order).
///
/// # Safety
///
/// `wp` must point to `nb` Q6_K super-blocks and each `xp[j]` to `nb` Q8_K blocks; the CPU
/// must have the features of [`available`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6_k<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; the features of `Dpwssd` are enabled on this function.
    unsafe { q6_k_body::<Dpwssd, N>(wp, xp, nb) }
}

/// The Q6_K integer step in one instruction: `vpdpwssd` (`acc + Σ pairs(p·s)`, without
/// saturation, so the same integers as AVX2's `vpmaddwd` + `vpaddd`).
struct Dpwssd;

impl Q6Step for Dpwssd {
    #[inline(always)]
    unsafe fn madd_add(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI and VL, which the caller has enabled.
        unsafe { _mm256_dpwssd_epi32(acc, p, s) }
    }
}
