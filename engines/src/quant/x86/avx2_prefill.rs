//! AVX2 prefill products over unpacked weight rows: `outs[t][r] = w_r · xs[t]` for a range
//! of weight rows and a batch of activation rows, bit for bit what [`super::avx2::dot`]
//! computes tile by tile.
//!
//! `dot` is a dot product of one weight row with a tile of four activation rows: every call
//! unpacks the row's blocks again (nibbles, fifth bits, sign transfer, scales), once per
//! tile, so for a batch of 128 tokens each weight block was unpacked 32 times, and the
//! 32-element kernels also widened every activation scale from f16 once per weight row.
//! Here each weight row is unpacked once into a small buffer of registers' worth of values
//! per block (kept in L1 while the activation rows stream past), and the activation scales
//! are widened once per call. The inner loops keep only the multiply-adds, in the same order
//! on the same values, hence the same bits: the `quant` tests compare every product with the
//! one-row dot product.
//!
//! On a Zen 3 core the Q5_0 product of a 4864 × 896 matrix with 128 tokens went from about
//! 0.5 to 0.7-0.87 block pairs per nanosecond (`qmm_probe`, docs/benchmarks.md).

// See avx2.rs: newer compilers find some of the `unsafe` blocks unnecessary.
#![allow(unused_unsafe)]

use std::arch::x86_64::*;

use super::avx2::*;
use crate::gguf::GgmlType;
use crate::quant::layout::*;

/// Whether [`matmul`] has a whole-product kernel for `ty`.
pub(in crate::quant) fn has_matmul(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4_1
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// `outs[t][r] = w_r · xs[t]` for the `outs[t].len()` consecutive weight rows in `w` (`nb`
/// blocks of `ty` each) and the activation rows `xs` (in `ty`'s activation format).
///
/// Tiles of four activation rows, from the first, then the remaining rows one by one, as
/// the tiled `dot` calls did: Q4_K folds complete four-row tiles per 64-element chunk.
///
/// # Panics
///
/// If the CPU lacks AVX2, FMA or F16C, [`has_matmul`] is false for `ty`, or the lengths do
/// not match.
pub(in crate::quant) fn matmul(
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
) {
    assert!(
        available(),
        "AVX2/FMA/F16C kernels called on a CPU without them"
    );
    assert!(has_matmul(ty), "no whole-product kernel for {ty}");
    assert_eq!(xs.len(), outs.len(), "one output row per activation row");
    let rows = outs.first().map_or(0, |o| o.len());
    if rows == 0 {
        return;
    }
    assert!(
        outs.iter().all(|o| o.len() == rows),
        "output rows differ in length"
    );
    let row_bytes = w.len() / rows;
    assert_eq!(
        row_bytes * rows,
        w.len(),
        "{ty} rows do not divide the weight bytes"
    );
    // The rows have the same length: check each activation row against the first.
    for x in xs {
        check_dot_lengths(ty, nb, &w[..row_bytes], &[*x]);
    }
    // SAFETY: the CPU features were detected above, and `check_dot_lengths` proved that every
    // row of `w` holds `nb` blocks of `ty` and every activation row `nb` blocks of its
    // format, which is what each function below reads.
    unsafe {
        match ty {
            GgmlType::Q4_0 => signed(w, row_bytes, nb, xs, outs, Q4_0_BYTES, unpack_q4_0),
            GgmlType::Q5_0 => signed(w, row_bytes, nb, xs, outs, Q5_0_BYTES, unpack_q5_0),
            GgmlType::Q8_0 => signed(w, row_bytes, nb, xs, outs, Q8_0_BYTES, unpack_q8_0),
            GgmlType::Q4_1 => unsigned(w, row_bytes, nb, xs, outs, Q4_1_BYTES, unpack_q4_1),
            GgmlType::Q5_1 => unsigned(w, row_bytes, nb, xs, outs, Q5_1_BYTES, unpack_q5_1),
            GgmlType::Q4_K => with_mins(w, row_bytes, xs, outs, Q4_K_BYTES, true, unpack_q4_k),
            GgmlType::Q5_K => with_mins(w, row_bytes, xs, outs, Q5_K_BYTES, false, unpack_q5_k),
            GgmlType::Q6_K => q6_k(w, row_bytes, xs, outs),
            other => unreachable!("has_matmul accepted {other}"),
        }
    }
}

/// The loop shared by every format: unpack row `r` of `w` (blocks of `w_bytes`) into
/// `unpack`'s blocks, then `tile4` on each complete tile of four activation rows and `tile1`
/// on the remaining ones. Both get the unpacked row, the index of their first activation row
/// and pointers to the activation rows.
///
/// # Safety
///
/// `unpack`, `tile4` and `tile1` must be safe to call on the blocks of `w` and the rows of
/// `xs`; the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)] // the product's five inputs and the format's three steps
unsafe fn rows<B: Copy>(
    w: &[u8],
    row_bytes: usize,
    w_bytes: usize,
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
    unpack: impl Fn(*const u8) -> B,
    tile4: impl Fn(&[B], usize, [*const u8; 4]) -> [f32; 4],
    tile1: impl Fn(&[B], usize, *const u8) -> f32,
) {
    let nb = row_bytes / w_bytes;
    let mut blocks: Vec<B> = Vec::with_capacity(nb);
    for (r, row) in w.chunks_exact(row_bytes).enumerate() {
        blocks.clear();
        blocks.extend((0..nb).map(|i| unpack(row[i * w_bytes..].as_ptr())));
        let mut t = 0;
        while t + 4 <= xs.len() {
            let v = tile4(&blocks, t, std::array::from_fn(|j| xs[t + j].as_ptr()));
            for (j, v) in v.into_iter().enumerate() {
                outs[t + j][r] = v;
            }
            t += 4;
        }
        for t in t..xs.len() {
            outs[t][r] = tile1(&blocks, t, xs[t].as_ptr());
        }
    }
}

/// The activation scales of every block of `xs` (blocks of `block_bytes`), widened once by
/// `widen`, in groups of four rows (the tiles): row t's block i is at
/// `(t / 4) · 4 · nb + 4 · i + t % 4`, so a tile's four values of a block are adjacent; a
/// last incomplete group is padded with `pad`.
///
/// # Safety
///
/// Every row of `xs` must hold `nb` blocks whose first bytes `widen` can read; the CPU must
/// have what `widen` needs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_scales<T: Copy>(
    xs: &[&[u8]],
    nb: usize,
    block_bytes: usize,
    pad: T,
    widen: impl Fn(*const u8) -> T,
) -> Vec<T> {
    let mut xd = vec![pad; xs.len().next_multiple_of(4) * nb];
    for (t, x) in xs.iter().enumerate() {
        let group = &mut xd[t / 4 * 4 * nb..];
        for i in 0..nb {
            group[4 * i + t % 4] = widen(x[i * block_bytes..].as_ptr());
        }
    }
    xd
}

/// The scale group of [`tile_scales`] that holds row `t`.
fn tile_group<T>(xd: &[T], t: usize, nb: usize) -> &[T] {
    &xd[t / 4 * 4 * nb..][..4 * nb]
}

// ----- Q4_0, Q5_0, Q8_0 against Q8_0 -------------------------------------------------------

/// One unpacked block of a symmetric 32-element format: the magnitudes, the values (for the
/// sign transfer) and the scale.
#[derive(Clone, Copy)]
struct SignedBlock {
    abs: __m256i,
    q: __m256i,
    d: f32,
}

/// Q4_0, Q5_0 or Q8_0 weights (`unpack` gives a block's 32 signed values).
///
/// # Safety
///
/// As [`matmul`] for these formats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
    w_bytes: usize,
    unpack: unsafe fn(*const u8) -> __m256i,
) {
    // SAFETY: every block read is one `matmul` checked; the scales buffer holds `nb` values
    // for each of the `xs.len()` rows.
    unsafe {
        let xd = tile_scales(xs, nb, Q8_0_BYTES, 0.0, |xb| _mm_cvtss_f32(f16x2(xb)));
        rows(
            w,
            row_bytes,
            w_bytes,
            xs,
            outs,
            |wb| {
                let q = unpack(wb);
                SignedBlock {
                    abs: _mm256_sign_epi8(q, q),
                    q,
                    d: _mm_cvtss_f32(f16x2(wb)),
                }
            },
            |b, t, xp| signed_tile4(b, tile_group(&xd, t, nb), xp),
            |b, t, x| signed_tile1(b, tile_group(&xd, t, nb), t % 4, x),
        );
    }
}

/// Four dot products of an unpacked row with Q8_0 rows, whose widened scales are `xd` (four
/// per block, see [`tile_scales`]): per block `acc += (d_w·d_x) · Σ|w|·(x·sign w)` in eight
/// lanes, summed at the end, as `avx2::signed_q8_0`. The four products `d_w·d_x` of a block
/// are one vector multiplication, read back by broadcasting loads, which keeps the vector
/// units free for the integer products.
///
/// # Safety
///
/// Each `xp[j]` must point to `blocks.len()` Q8_0 blocks; the CPU must have AVX2, FMA and
/// F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_tile4(blocks: &[SignedBlock], xd: &[f32], xp: [*const u8; 4]) -> [f32; 4] {
    assert_eq!(xd.len(), 4 * blocks.len(), "one scale per block and row");
    // SAFETY: block `i < nb` of each activation row (caller's contract); `xd` was checked.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut d = [0.0f32; 4];
        for (i, b) in blocks.iter().enumerate() {
            let dx = _mm_loadu_ps(xd.as_ptr().add(4 * i));
            _mm_storeu_ps(d.as_mut_ptr(), _mm_mul_ps(_mm_set1_ps(b.d), dx));
            // Keep the products in memory: LLVM would otherwise broadcast them from the
            // register with shuffles, which compete with the multiply-adds for the same units.
            std::hint::black_box(&mut d);
            for (j, acc) in acc.iter_mut().enumerate() {
                let y = _mm256_sign_epi8(load32(xp[j].add(i * Q8_0_BYTES + 2)), b.q);
                let p = _mm256_cvtepi32_ps(dot_u8_i8(b.abs, y));
                *acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d[j]), p, *acc);
            }
        }
        acc.map(|a| hsum_f32(a))
    }
}

/// One dot product of an unpacked row with a Q8_0 row, lane `lane` of the scale groups `xd`;
/// the same arithmetic as [`signed_tile4`] for one row.
///
/// # Safety
///
/// As [`signed_tile4`], for the one row `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_tile1(blocks: &[SignedBlock], xd: &[f32], lane: usize, x: *const u8) -> f32 {
    assert!(
        xd.len() == 4 * blocks.len() && lane < 4,
        "one scale per block and row"
    );
    // SAFETY: block `i < nb` of the activation row (caller's contract); `xd` was checked.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (i, b) in blocks.iter().enumerate() {
            let y = _mm256_sign_epi8(load32(x.add(i * Q8_0_BYTES + 2)), b.q);
            let p = _mm256_cvtepi32_ps(dot_u8_i8(b.abs, y));
            let d = b.d * *xd.get_unchecked(4 * i + lane);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), p, acc);
        }
        hsum_f32(acc)
    }
}

// ----- Q4_1, Q5_1 against Q8_1 -------------------------------------------------------------

/// One unpacked block of a 32-element format with a minimum: the unsigned values and
/// `(d, m)` in lanes 0 and 1.
#[derive(Clone, Copy)]
struct UnsignedBlock {
    q: __m256i,
    dm: __m128,
}

/// Q4_1 or Q5_1 weights (`unpack` gives a block's 32 unsigned values).
///
/// # Safety
///
/// As [`matmul`] for these formats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
    w_bytes: usize,
    unpack: unsafe fn(*const u8) -> __m256i,
) {
    // SAFETY: every block read is one `matmul` checked; the scales buffer holds `nb` pairs
    // for each of the `xs.len()` rows.
    unsafe {
        // The activation (d, s) pairs, widened once.
        let xd = tile_scales(xs, nb, Q8_1_BYTES, _mm_setzero_ps(), |xb| f16x2(xb));
        rows(
            w,
            row_bytes,
            w_bytes,
            xs,
            outs,
            |wb| UnsignedBlock {
                q: unpack(wb),
                dm: f16x2(wb),
            },
            |b, t, xp| unsigned_tile(b, tile_group(&xd, t, nb), 0, xp),
            |b, t, x| unsigned_tile(b, tile_group(&xd, t, nb), t % 4, [x])[0],
        );
    }
}

/// `N` dot products of an unpacked row with Q8_1 rows whose widened `(d, s)` pairs are lanes
/// `lane ..` of the scale group `xd` (see [`tile_scales`]), as `avx2::unsigned_q8_1`:
/// `d_w·d_x · Σ q·x` in eight lanes, plus `m_w·s_x` summed block by block.
///
/// # Safety
///
/// Each `xp[j]` must point to `blocks.len()` Q8_1 blocks; the CPU must have AVX2, FMA and
/// F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_tile<const N: usize>(
    blocks: &[UnsignedBlock],
    xd: &[__m128],
    lane: usize,
    xp: [*const u8; N],
) -> [f32; N] {
    assert!(
        xd.len() == 4 * blocks.len() && lane + N <= 4,
        "one scale pair per block and row"
    );
    // SAFETY: block `i < nb` of each activation row (caller's contract); `xd` was checked.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        // Lane 1 accumulates the minimum terms m_w·s_x (lane 0 is unused).
        let mut mins = [_mm_setzero_ps(); N];
        for (i, b) in blocks.iter().enumerate() {
            for j in 0..N {
                let p = _mm256_cvtepi32_ps(dot_u8_i8(b.q, load32(xp[j].add(i * Q8_1_BYTES + 4))));
                let prod = _mm_mul_ps(b.dm, *xd.get_unchecked(4 * i + lane + j)); // (d_w·d_x, m_w·s_x)
                acc[j] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), p, acc[j]);
                mins[j] = _mm_add_ps(mins[j], prod);
            }
        }
        std::array::from_fn(|j| hsum_f32(acc[j]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[j])))
    }
}

// ----- Q4_K, Q5_K against Q8_K -------------------------------------------------------------

/// One unpacked Q4_K / Q5_K super-block: the eight sub-blocks as unsigned bytes, their
/// scales broadcast to i16 lanes, the minimums paired with the Q8_K block sums, and the
/// super-block scales.
#[derive(Clone, Copy)]
struct MinsBlock {
    q: [__m256i; 8],
    scale: [__m256i; 8],
    mins: __m256i,
    d: f32,
    dmin: f32,
}

/// Q4_K or Q5_K weights (`unpack(wb, c)` gives chunk `c`'s two sub-blocks). With `chunked`,
/// complete four-row tiles fold each super-block per 64-element chunk, as `avx2::q4_k` does
/// for a tile (llama.cpp's repacked Q4_K GEMM order).
///
/// # Safety
///
/// As [`matmul`] for these formats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn with_mins(
    w: &[u8],
    row_bytes: usize,
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
    w_bytes: usize,
    chunked: bool,
    unpack: unsafe fn(*const u8, usize) -> (__m256i, __m256i),
) {
    // SAFETY: every super-block read is one `matmul` checked.
    unsafe {
        rows(
            w,
            row_bytes,
            w_bytes,
            xs,
            outs,
            |wb| {
                let scales = &*wb.add(K_SCALES).cast::<[u8; 12]>();
                let (sc, mn) = k_scales_mins(scales);
                let mut b = MinsBlock {
                    q: [_mm256_setzero_si256(); 8],
                    scale: [_mm256_setzero_si256(); 8],
                    mins: mins_pairs(&mn),
                    d: 0.0,
                    dmin: 0.0,
                };
                for c in 0..4 {
                    (b.q[2 * c], b.q[2 * c + 1]) = unpack(wb, c);
                }
                for (s, &sc) in b.scale.iter_mut().zip(&sc) {
                    *s = _mm256_set1_epi16(i16::from(sc));
                }
                let d_dmin = f16x2(wb);
                b.d = _mm_cvtss_f32(d_dmin);
                b.dmin = _mm_cvtss_f32(_mm_movehdup_ps(d_dmin));
                b
            },
            |b, _, xp| {
                if chunked {
                    mins_tile4_chunked(b, xp)
                } else {
                    mins_tile(b, xp)
                }
            },
            |b, _, x| mins_tile(b, [x])[0],
        );
    }
}

/// The integer dot products of the four 64-element chunks of an unpacked super-block with
/// the Q8_K quants at `y`, each in eight i32 lanes (sub-block scales applied).
///
/// # Safety
///
/// `y` must point to 256 readable quants; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk_dots(b: &MinsBlock, y: *const u8) -> [__m256i; 4] {
    // SAFETY: chunk c reads quants 64c..64c+64 (caller's contract).
    std::array::from_fn(|c| unsafe {
        let lo = _mm256_maddubs_epi16(b.q[2 * c], load32(y.add(64 * c)));
        let hi = _mm256_maddubs_epi16(b.q[2 * c + 1], load32(y.add(64 * c + 32)));
        _mm256_add_epi32(
            _mm256_madd_epi16(lo, b.scale[2 * c]),
            _mm256_madd_epi16(hi, b.scale[2 * c + 1]),
        )
    })
}

/// `N` dot products of an unpacked Q4_K / Q5_K row with Q8_K rows, as `avx2::k_with_mins`
/// folds them per super-block (see [`mins_tile4_chunked`] for the per-chunk order).
///
/// # Safety
///
/// Each `xp[j]` must point to `blocks.len()` Q8_K blocks; the CPU must have AVX2, FMA and
/// F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mins_tile<const N: usize>(blocks: &[MinsBlock], xp: [*const u8; N]) -> [f32; N] {
    // SAFETY: super-block `i < blocks.len()` of each activation row (caller's contract).
    unsafe {
        let mut sums = [KSum::default(); N];
        for (i, b) in blocks.iter().enumerate() {
            for (j, sum) in sums.iter_mut().enumerate() {
                let xb = xp[j].add(i * Q8_K_BYTES);
                let y = xb.add(Q8_K_QS);
                let p = chunk_dots(b, y);
                let dx = f32_at_ptr(xb);
                let (d, dmin) = (b.d * dx, b.dmin * dx);
                let acc =
                    _mm256_add_epi32(_mm256_add_epi32(p[0], p[1]), _mm256_add_epi32(p[2], p[3]));
                sum.add(d, hsum_i32(acc), dmin, k_min_term(xb, b.mins));
            }
        }
        sums.map(KSum::total)
    }
}

/// Four dot products of an unpacked Q4_K row with Q8_K rows, each super-block folded per
/// 64-element chunk (`KSum::add_chunks`, llama.cpp's repacked GEMM order) as `avx2::q4_k` does
/// for a tile; the per-chunk folds of the four rows run side by side in the four lanes
/// of one vector (lane `j` does exactly row `j`'s scalar fused multiply-adds, in the same
/// order, so the bits are the same).
///
/// # Safety
///
/// As [`mins_tile`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mins_tile4_chunked(blocks: &[MinsBlock], xp: [*const u8; 4]) -> [f32; 4] {
    // SAFETY: super-block `i < blocks.len()` of each activation row (caller's contract).
    unsafe {
        let (mut acc, mut min) = (_mm_setzero_ps(), _mm_setzero_ps());
        for (i, b) in blocks.iter().enumerate() {
            // Per row j: its four chunk sums, and its four chunk minimum terms.
            let mut isum = [_mm_setzero_si128(); 4];
            let mut imin = [_mm_setzero_si128(); 4];
            let mut dx = [0.0f32; 4];
            for j in 0..4 {
                let xb = xp[j].add(i * Q8_K_BYTES);
                let y = xb.add(Q8_K_QS);
                let p = chunk_dots(b, y);
                let h =
                    _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
                isum[j] = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                let m = _mm256_madd_epi16(load32(xb.add(Q8_K_BSUMS)), b.mins);
                let m = _mm256_hadd_epi32(m, m);
                imin[j] =
                    _mm_unpacklo_epi64(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
                dx[j] = f32_at_ptr(xb);
            }
            // Lane j: row j's d_w·d_x and dmin_w·d_x, as the scalar products.
            let dx = _mm_loadu_ps(dx.as_ptr());
            let d = _mm_mul_ps(_mm_set1_ps(b.d), dx);
            let dmin = _mm_mul_ps(_mm_set1_ps(b.dmin), dx);
            // Transposed, vector c holds chunk c of the four rows.
            let isum = transpose4(isum);
            let imin = transpose4(imin);
            for c in 0..4 {
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum[c]), d, acc);
                min = _mm_fmadd_ps(_mm_cvtepi32_ps(imin[c]), dmin, min);
            }
        }
        let mut out = [0.0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, min));
        out
    }
}

/// The 4 × 4 transpose of four vectors of four i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose4(r: [__m128i; 4]) -> [__m128i; 4] {
    let t0 = _mm_unpacklo_epi32(r[0], r[1]); // r0[0] r1[0] r0[1] r1[1]
    let t1 = _mm_unpacklo_epi32(r[2], r[3]); // r2[0] r3[0] r2[1] r3[1]
    let t2 = _mm_unpackhi_epi32(r[0], r[1]); // r0[2] r1[2] r0[3] r1[3]
    let t3 = _mm_unpackhi_epi32(r[2], r[3]); // r2[2] r3[2] r2[3] r3[3]
    [
        _mm_unpacklo_epi64(t0, t1),
        _mm_unpackhi_epi64(t0, t1),
        _mm_unpacklo_epi64(t2, t3),
        _mm_unpackhi_epi64(t2, t3),
    ]
}

// ----- Q6_K against Q8_K -------------------------------------------------------------------

/// One unpacked Q6_K super-block: the values as unsigned bytes in eight vectors (see
/// `unpack_q6_k`), each vector's two group scales in i16 lanes, the sixteen scales widened
/// for the offset term, and `d`.
#[derive(Clone, Copy)]
struct Q6Block {
    q: [__m256i; 8],
    scale: [__m256i; 8],
    scales16: __m256i,
    d: f32,
}

/// Q6_K weights.
///
/// # Safety
///
/// As [`matmul`] for this format.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(w: &[u8], row_bytes: usize, xs: &[&[u8]], outs: &mut [&mut [f32]]) {
    // SAFETY: every super-block read is one `matmul` checked.
    unsafe {
        rows(
            w,
            row_bytes,
            Q6_K_BYTES,
            xs,
            outs,
            |wb| {
                let sc = &*wb.add(Q6_K_SCALES).cast::<[i8; 16]>();
                let mut b = Q6Block {
                    q: [_mm256_setzero_si256(); 8],
                    scale: [_mm256_setzero_si256(); 8],
                    scales16: _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr().cast())),
                    d: q6_k_d(wb),
                };
                for half in 0..2 {
                    for (k, q) in unpack_q6_k(wb, half).into_iter().enumerate() {
                        b.q[4 * half + k] = q;
                        b.scale[4 * half + k] = q6_k_scales(sc, 8 * half + 2 * k);
                    }
                }
                b
            },
            |b, _, xp| q6_tile(b, xp),
            |b, _, x| q6_tile(b, [x])[0],
        );
    }
}

/// `N` dot products of an unpacked Q6_K row with Q8_K rows, as `avx2::q6_k`.
///
/// # Safety
///
/// Each `xp[j]` must point to `blocks.len()` Q8_K blocks; the CPU must have AVX2, FMA and
/// F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_tile<const N: usize>(blocks: &[Q6Block], xp: [*const u8; N]) -> [f32; N] {
    // SAFETY: super-block `i < blocks.len()` of each activation row (caller's contract).
    unsafe {
        let mut sums = [_mm256_setzero_ps(); N];
        for (i, b) in blocks.iter().enumerate() {
            for (j, sum) in sums.iter_mut().enumerate() {
                let xb = xp[j].add(i * Q8_K_BYTES);
                let y = xb.add(Q8_K_QS);
                let mut acc = _mm256_setzero_si256();
                for (v, (&q, &s)) in b.q.iter().zip(&b.scale).enumerate() {
                    // Vector v = 4·half + k covers activations 128·half + 32k ..
                    let p = _mm256_maddubs_epi16(q, load32(y.add(32 * v)));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
                }
                let offset = _mm256_madd_epi16(load32(xb.add(Q8_K_BSUMS)), b.scales16);
                let lanes = _mm256_sub_epi32(acc, _mm256_slli_epi32(offset, 5));
                let d = _mm256_set1_ps(b.d * f32_at_ptr(xb));
                *sum = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *sum);
            }
        }
        sums.map(|s| hsum_f32(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QMatrix, activation_type, quantize_activation};

    /// Every product equals the tiled dot product it replaces, bit for bit: complete tiles of
    /// four activation rows against `avx2::dot::<4>` (Q4_K's chunked order included), the
    /// remaining rows against `avx2::dot::<1>`.
    #[test]
    fn whole_products_equal_the_tiled_dot_products_bit_for_bit() {
        if !available() {
            return; // nothing to compare on this CPU
        }
        let mut s = 0x853c_49e6_748f_ea9b_u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let (rows, cols, n_tok) = (7, 512, 6);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_1,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            assert!(has_matmul(ty));
            let block = ty.type_size() as usize;
            let nb = cols / ty.block_size() as usize;
            let mut w: Vec<u8> = (0..rows * nb * block).map(|_| next() as u8).collect();
            // Sane f16 scales (0.01 and 0.005) where the format keeps them.
            let scales: &[usize] = match ty {
                GgmlType::Q6_K => &[Q6_K_D],
                GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
                _ => &[0],
            };
            for blk in w.chunks_exact_mut(block) {
                for (k, &at) in scales.iter().enumerate() {
                    let bits: u16 = if k == 0 { 0x211f } else { 0x1d1f };
                    blk[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
            let m = QMatrix::new(ty, rows, cols, &w).unwrap();
            let x: Vec<f32> = (0..cols * n_tok)
                .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect();
            let act = activation_type(ty).unwrap();
            let xq = quantize_activation(act, &x).unwrap();
            let xs: Vec<&[u8]> = xq.chunks_exact(m.activation_row_bytes()).collect();
            let mut out = vec![f32::NAN; rows * n_tok];
            let mut outs: Vec<&mut [f32]> = out.chunks_exact_mut(rows).collect();
            matmul(ty, nb, &w, &xs, &mut outs);
            for r in 0..rows {
                let tile = dot::<4>(ty, nb, m.row(r), [xs[0], xs[1], xs[2], xs[3]]);
                let rest = [4, 5].map(|t| dot::<1>(ty, nb, m.row(r), [xs[t]])[0]);
                let expected = tile.iter().chain(&rest);
                for (t, &e) in expected.enumerate() {
                    let got = out[t * rows + r];
                    assert_eq!(
                        got.to_bits(),
                        e.to_bits(),
                        "{ty} row {r} token {t}: {got} vs {e}"
                    );
                }
            }
        }
    }
}
