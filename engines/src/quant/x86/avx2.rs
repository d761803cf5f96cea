//! x86_64 kernels: AVX2 with FMA and F16C, selected at run time.
//!
//! Every kernel computes `N` dot products (one weight row against `N` activation rows) at
//! once, so that the weight block, once loaded and unpacked into registers, is reused across
//! the activation rows of a prefill batch; `N = 1` is the plain vector dot product.
//!
//! The integer core of each format is `_mm256_maddubs_epi16` (unsigned × signed bytes into
//! 16-bit pairs) followed by `_mm256_madd_epi16` (into 32-bit lanes). Signed weights go
//! through the usual sign transfer: `|w| · (x · sign(w))`, which needs activations in
//! −127..=127 (our quantizers never produce −128). Neither step can overflow for any input:
//! the largest pair sum is 2·128·127 = 32512.
//!
//! Float accumulation: 32-element formats accumulate `d_w·d_x` times the eight 32-bit lanes
//! in eight f32 lanes and add them up at the end, so the result differs from the scalar
//! reference by rounding only. The k-quants reduce each super-block to one exact integer and
//! fold it in with [`KSum`] (Q4_K, Q5_K), or keep eight lanes in f32 (Q6_K), exactly like the
//! scalar code, so they match it bit for bit. Q4_K against a tile of four activation rows
//! folds per 64-element chunk instead (llama.cpp's repacked GEMM order), so the rows of
//! complete four-row tiles of a matrix product differ from the one-row dot product in the
//! last bits.

// Rust 1.87 made most intrinsics safe to call from functions with matching target features;
// the crate's minimum version (1.85) still needs the `unsafe` blocks, which newer compilers
// then report as unnecessary.
#![allow(unused_unsafe)]

use std::arch::x86_64::*;

use crate::gguf::GgmlType;
use crate::quant::layout::*;

/// Whether this CPU can run these kernels (AVX2, FMA and F16C, detected at run time).
pub(in crate::quant) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// `N` dot products of the weight row `w` (`nb` blocks of `ty`) with the activation rows `xs`.
///
/// # Panics
///
/// If the CPU lacks AVX2, FMA or F16C, or the lengths do not match (see
/// [`check_dot_lengths`]).
pub(in crate::quant) fn dot<const N: usize>(
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    xs: [&[u8]; N],
) -> [f32; N] {
    assert!(
        available(),
        "AVX2/FMA/F16C kernels called on a CPU without them"
    );
    check_dot_lengths(ty, nb, w, &xs);
    let xp = xs.map(<[u8]>::as_ptr);
    let wp = w.as_ptr();
    // SAFETY: the CPU features these functions enable were detected just above, and
    // `check_dot_lengths` proved that `w` holds `nb` blocks of `ty` and every `xs[j]` `nb`
    // blocks of its activation type, which is exactly what each kernel reads.
    unsafe {
        match ty {
            GgmlType::Q4_0 => q4_0::<N>(wp, xp, nb),
            GgmlType::Q4_1 => q4_1::<N>(wp, xp, nb),
            GgmlType::Q5_0 => q5_0::<N>(wp, xp, nb),
            GgmlType::Q5_1 => q5_1::<N>(wp, xp, nb),
            GgmlType::Q8_0 => q8_0::<N>(wp, xp, nb),
            GgmlType::Q4_K => q4_k::<N>(wp, xp, nb),
            GgmlType::Q5_K => q5_k::<N>(wp, xp, nb),
            GgmlType::Q6_K => q6_k::<N>(wp, xp, nb),
            other => unreachable!("check_dot_lengths accepted {other}"),
        }
    }
}

/// `out[r] = w_r · x` for the `out.len()` consecutive weight rows in `w` (`nb` blocks of `ty`
/// each) and one activation row `x`: the matrix-vector product of one token. The same kernel
/// as [`dot`] with `N = 1`, so the same results, but the lengths are checked once and the
/// kernel is chosen once for all rows instead of per row (that per-row cost was about 7 % of
/// a decode step on the 640-column rows of Gemma 3's output matrix). Q4_0, Q5_0 and Q8_0 go
/// through [`signed_rows`], which prepares the activation row once for all rows (same bits).
///
/// # Panics
///
/// As [`dot`], and if `w` is not `out.len()` rows.
pub(in crate::quant) fn dot_rows(ty: GgmlType, nb: usize, w: &[u8], x: &[u8], out: &mut [f32]) {
    assert!(
        available(),
        "AVX2/FMA/F16C kernels called on a CPU without them"
    );
    let row_bytes = w.len() / out.len().max(1);
    assert_eq!(
        row_bytes * out.len(),
        w.len(),
        "{ty} rows do not divide the weight bytes"
    );
    if out.is_empty() {
        return;
    }
    // One check for all rows: they have the same length.
    check_dot_lengths(ty, nb, &w[..row_bytes], &[x]);
    if matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0) {
        // SAFETY: as below; `signed_rows` reads exactly what the per-row kernel reads.
        unsafe { signed_rows(ty, nb, w, row_bytes, x, out) };
        return;
    }
    type K = unsafe fn(*const u8, [*const u8; 1], usize) -> [f32; 1];
    let kernel: K = match ty {
        GgmlType::Q4_1 => q4_1::<1>,
        GgmlType::Q5_1 => q5_1::<1>,
        GgmlType::Q4_K => q4_k::<1>,
        GgmlType::Q5_K => q5_k::<1>,
        GgmlType::Q6_K => q6_k::<1>,
        other => unreachable!("check_dot_lengths accepted {other}, or signed_rows took it"),
    };
    let xp = [x.as_ptr()];
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: the CPU features were detected above; row `r` is `row_bytes` bytes inside
        // `w` (checked), holding `nb` blocks of `ty`, and `x` holds `nb` activation blocks.
        let [v] = unsafe { kernel(w.as_ptr().add(r * row_bytes), xp, nb) };
        *o = v;
    }
}

// ----- one token, signed 32-element formats -------------------------------------------------

/// One token's activation row, prepared once for all the weight rows of a product: each
/// block's scale widened to f32 and, for the offset formats, `offset · Σ y` over the four
/// values that land in each of the eight 32-bit lanes (see [`signed_rows`]). Kept per thread
/// and grown, never shrunk, so that a decode step allocates nothing.
#[derive(Default)]
struct Prepared {
    d: Vec<f32>,
    offset_sums: Vec<__m256i>,
}

thread_local! {
    static PREPARED: std::cell::RefCell<Prepared> = std::cell::RefCell::default();
}

/// `out[r] = w_r · x` for Q4_0, Q5_0 and Q8_0 rows against one Q8_0 activation row: the same
/// bits as [`signed_q8_0`] with `N = 1` (and so as llama.cpp's `ggml_vec_dot_q*_0_q8_0`),
/// computed with fewer instructions per block:
///
/// - Q4_0 and Q5_0 weights stay unsigned (0..=15, 0..=31) and their offset (8, 16) moves to
///   the activations: each 32-bit lane of `maddubs`+`madd` is `Σ q·y − offset · Σ y`, the
///   same exact integer as the sign transfer's `Σ (q − offset)·y`, with the per-lane sums
///   of `y` computed once per token instead of the two sign instructions per weight block.
/// - The activation scales are widened from f16 once per token, not once per weight row.
///
/// (Taking rows in pairs, to load each activation block once for both and interleave their
/// chains of multiply-adds, was slower: two streams 600-3,000 bytes apart defeat the
/// prefetch. Qwen2.5-Coder-0.5B decode, Zen 3: 28-34 tok/s paired, 36-41 one row at a time.)
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C; `w` must be `out.len()` rows of `row_bytes` bytes,
/// each `nb` blocks of `ty`, and `x` `nb` Q8_0 blocks (checked by [`dot_rows`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_rows(
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    row_bytes: usize,
    x: &[u8],
    out: &mut [f32],
) {
    PREPARED.with_borrow_mut(|prep| {
        let offset = match ty {
            GgmlType::Q4_0 => 3, // 8 = 1 << 3
            GgmlType::Q5_0 => 4, // 16 = 1 << 4
            _ => 0,
        };
        prep.d.clear();
        prep.offset_sums.clear();
        for xb in x.chunks_exact(Q8_0_BYTES) {
            // SAFETY: `xb` is one whole Q8_0 block; the CPU features are the caller's.
            unsafe {
                prep.d.push(_mm_cvtss_f32(f16x2(xb.as_ptr())));
                if offset != 0 {
                    let y = load32(xb.as_ptr().add(2));
                    let sums = dot_u8_i8(_mm256_set1_epi8(1), y);
                    prep.offset_sums
                        .push(_mm256_sll_epi32(sums, _mm_cvtsi32_si128(offset)));
                }
            }
        }
        let (d, sums) = (&prep.d[..], &prep.offset_sums[..]);
        // SAFETY: `d` and, for Q4_0 and Q5_0, `sums` were filled from `x`'s `nb` blocks just
        // above (so a block index `i < nb` indexes them), and each closure reads inside block
        // `i` of its row.
        unsafe {
            match ty {
                GgmlType::Q4_0 => {
                    prepared_rows(w, row_bytes, nb, Q4_0_BYTES, x, d, out, |wb, y, i| {
                        _mm256_sub_epi32(dot_u8_i8(nibbles(wb.add(2)), y), *sums.get_unchecked(i))
                    })
                }
                GgmlType::Q5_0 => {
                    prepared_rows(w, row_bytes, nb, Q5_0_BYTES, x, d, out, |wb, y, i| {
                        let q = _mm256_or_si256(nibbles(wb.add(6)), fifth_bits(wb.add(2)));
                        _mm256_sub_epi32(dot_u8_i8(q, y), *sums.get_unchecked(i))
                    })
                }
                // Q8_0 values span the whole signed byte, so they cannot be offset into
                // `maddubs`'s unsigned operand: the sign transfer.
                _ => prepared_rows(w, row_bytes, nb, Q8_0_BYTES, x, d, out, |wb, y, _| {
                    let q = load32(wb.add(2));
                    dot_u8_i8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q))
                }),
            }
        }
    });
}

/// The rows of [`signed_rows`], one after the other: per row `acc += (d_w·d_x) · lanes`,
/// block by block, as [`signed_q8_0`] does, where `lanes(wb, y, i)` gives the eight exact
/// integer lanes of weight block `i` (at `wb`) against the activation values `y`.
///
/// # Safety
///
/// `w` must be `out.len()` rows of `row_bytes` bytes, each `nb` blocks of `w_bytes` bytes
/// that `lanes` may read; `x` must be `nb` Q8_0 blocks and `d` their widened scales; the CPU
/// must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)] // the product's six inputs, the prepared scales and the format's lanes
unsafe fn prepared_rows(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    w_bytes: usize,
    x: &[u8],
    d: &[f32],
    out: &mut [f32],
    lanes: impl Fn(*const u8, __m256i, usize) -> __m256i,
) {
    let d = &d[..nb];
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        // SAFETY: block `i < nb` of the row and of `x` is in bounds (caller's contract).
        *o = unsafe {
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let wb = row.as_ptr().add(i * w_bytes);
                _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH_BYTES).cast());
                let y = load32(x.as_ptr().add(i * Q8_0_BYTES + 2));
                let dd = _mm256_mul_ps(f16x8(wb), _mm256_set1_ps(d[i]));
                acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes(wb, y, i)), acc);
            }
            hsum_f32(acc)
        };
    }
}

// ----- helpers -----------------------------------------------------------------------------

/// Widens the two f16 at `p` (bytes 0-3) with F16C: lanes 0 and 1 (lanes 2 and 3 are 0).
///
/// Loading the four bytes with `movd` writes the whole register. (Converting a single f16
/// from a scalar made LLVM insert it into whatever register was at hand, here the running
/// sum, and the false dependency serialized the whole loop: 2.5x slower.)
///
/// # Safety
///
/// `p` must be valid for reading 4 bytes; the CPU must have F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x2(p: *const u8) -> __m128 {
    // SAFETY: the caller guarantees four readable bytes; F16C is enabled on this function.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())) }
}

/// The f16 at `p`, widened and broadcast to eight lanes.
///
/// Broadcasting before converting keeps every lane in use, so the load is a full-register
/// `vpbroadcastw` (see [`f16x2`] for what happens otherwise).
///
/// # Safety
///
/// `p` must be valid for reading 2 bytes; the CPU must have AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees two readable bytes; AVX2 and F16C are enabled.
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned())) }
}

/// Reads the little-endian f32 at `p`.
///
/// # Safety
///
/// `p` must be valid for reading 4 bytes.
#[inline]
pub(super) unsafe fn f32_at_ptr(p: *const u8) -> f32 {
    // SAFETY: guaranteed by the caller; x86_64 is little-endian.
    unsafe { p.cast::<f32>().read_unaligned() }
}

/// Loads 32 bytes from `p`.
///
/// # Safety
///
/// `p` must be valid for reading 32 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: guaranteed by the caller; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// Horizontal sum of eight f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_f32(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; AVX2 is enabled on this function.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Horizontal sum of eight i32 lanes (exact: callers' sums fit in i32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: register-only intrinsics; AVX2 is enabled on this function.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
        _mm_cvtsi128_si32(s)
    }
}

/// Σ of unsigned bytes `a` times signed bytes `b`, in eight i32 lanes (each lane the sum of
/// four products).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8_i8(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: register-only intrinsics; AVX2 is enabled on this function.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)) }
}

/// The 16 bytes at `p` split into 32 nibbles: low nibbles in bytes 0-15, high in 16-31.
///
/// # Safety
///
/// `p` must be valid for reading 16 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let q = _mm_loadu_si128(p.cast());
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
        _mm256_set_m128i(hi, lo)
    }
}

/// Byte `j` is 0x10 if bit `j` of the little-endian u32 at `p` is set, else 0: the fifth bits
/// of a Q5_0 / Q5_1 block, in element order.
///
/// # Safety
///
/// `p` must be valid for reading 4 bytes; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fifth_bits(p: *const u8) -> __m256i {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let qh = p.cast::<u32>().read_unaligned();
        // Copy byte k of qh to bytes 8k..8k+8 (the shuffle works within each 128-bit half,
        // and both halves hold the broadcast word), then test one bit per byte.
        let v = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// The activation block at `xp[j] + offset`.
///
/// # Safety
///
/// The caller guarantees the offset is inside row `j`.
#[inline(always)]
unsafe fn at<const N: usize>(xp: &[*const u8; N], j: usize, offset: usize) -> *const u8 {
    // SAFETY: guaranteed by the caller.
    unsafe { xp[j].add(offset) }
}

// ----- 32-element formats ------------------------------------------------------------------

/// How far ahead of the block being read the one-token kernels of the 32-element signed
/// formats ([`prepared_rows`], and [`signed_q8_0`] with `N = 1`) prefetch
/// (Qwen2.5-Coder-0.5B decode on a Zen 3: 33.5-37.7 tok/s without, 38.7-40.9 with 512; see
/// docs/benchmarks.md).
const PREFETCH_BYTES: usize = 512;

/// Signed weights (Q4_0, Q5_0, Q8_0) against Q8_0 activations; `unpack` turns a weight block
/// into 32 signed bytes.
///
/// # Safety
///
/// `wp` must point to `nb` blocks of `w_bytes` bytes and each `xp[j]` to `nb` Q8_0 blocks;
/// the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_q8_0<const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    unpack: impl Fn(*const u8) -> __m256i,
) -> [f32; N] {
    // SAFETY: every pointer below stays inside block `i < nb` of its row (caller's contract).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let wb = wp.add(i * w_bytes);
            if N == 1 {
                // One token: the rows stream from memory one after the other; ask for the
                // bytes a fixed distance ahead (a hint: it never faults, nor changes results).
                _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH_BYTES).cast());
            }
            let dw = f16x8(wb);
            let q = unpack(wb);
            let q_abs = _mm256_sign_epi8(q, q);
            for (j, acc) in acc.iter_mut().enumerate() {
                let xb = at(&xp, j, i * Q8_0_BYTES);
                let y = _mm256_sign_epi8(load32(xb.add(2)), q);
                let p = _mm256_cvtepi32_ps(dot_u8_i8(q_abs, y));
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, f16x8(xb)), p, *acc);
            }
        }
        let mut out = [0.0; N];
        for (o, acc) in out.iter_mut().zip(acc) {
            *o = hsum_f32(acc);
        }
        out
    }
}

/// Unsigned weights with a minimum (Q4_1, Q5_1) against Q8_1 activations: `unpack` gives 32
/// unsigned values; the minimum term is `m_w · s_x`.
///
/// # Safety
///
/// As [`signed_q8_0`], with Q8_1 activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unsigned_q8_1<const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    unpack: impl Fn(*const u8) -> __m256i,
) -> [f32; N] {
    // SAFETY: every pointer below stays inside block `i < nb` of its row (caller's contract).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        // Lane 1 accumulates the minimum terms m_w·s_x (lane 0 is unused).
        let mut mins = [_mm_setzero_ps(); N];
        for i in 0..nb {
            let wb = wp.add(i * w_bytes);
            let dm = f16x2(wb); // (d_w, m_w)
            let q = unpack(wb);
            for j in 0..N {
                let xb = at(&xp, j, i * Q8_1_BYTES);
                let p = _mm256_cvtepi32_ps(dot_u8_i8(q, load32(xb.add(4))));
                let prod = _mm_mul_ps(dm, f16x2(xb)); // (d_w·d_x, m_w·s_x)
                acc[j] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), p, acc[j]);
                mins[j] = _mm_add_ps(mins[j], prod);
            }
        }
        let mut out = [0.0; N];
        for j in 0..N {
            out[j] = hsum_f32(acc[j]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[j]));
        }
        out
    }
}

/// The 32 signed values of the Q4_0 block at `wb`.
///
/// # Safety
///
/// `wb` must point to a whole Q4_0 block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q4_0(wb: *const u8) -> __m256i {
    // SAFETY: the quants are bytes 2..18 of the block.
    unsafe { _mm256_sub_epi8(nibbles(wb.add(2)), _mm256_set1_epi8(8)) }
}

/// The 32 signed values of the Q5_0 block at `wb`.
///
/// # Safety
///
/// `wb` must point to a whole Q5_0 block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q5_0(wb: *const u8) -> __m256i {
    // SAFETY: the high bits are bytes 2..6 of the block, the nibbles bytes 6..22.
    unsafe {
        let q = _mm256_or_si256(nibbles(wb.add(6)), fifth_bits(wb.add(2)));
        _mm256_sub_epi8(q, _mm256_set1_epi8(16))
    }
}

/// The 32 signed values of the Q8_0 block at `wb`.
///
/// # Safety
///
/// `wb` must point to a whole Q8_0 block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q8_0(wb: *const u8) -> __m256i {
    // SAFETY: the quants are bytes 2..34 of the block.
    unsafe { load32(wb.add(2)) }
}

/// The 32 unsigned values of the Q4_1 block at `wb`.
///
/// # Safety
///
/// `wb` must point to a whole Q4_1 block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q4_1(wb: *const u8) -> __m256i {
    // SAFETY: the nibbles are bytes 4..20 of the block.
    unsafe { nibbles(wb.add(4)) }
}

/// The 32 unsigned values of the Q5_1 block at `wb`.
///
/// # Safety
///
/// `wb` must point to a whole Q5_1 block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q5_1(wb: *const u8) -> __m256i {
    // SAFETY: the high bits are bytes 4..8 of the block, the nibbles bytes 8..24.
    unsafe { _mm256_or_si256(nibbles(wb.add(8)), fifth_bits(wb.add(4))) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; the closure reads bytes 2..18 of a block.
    unsafe { signed_q8_0(wp, xp, nb, Q4_0_BYTES, |wb| unpack_q4_0(wb)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; the closure reads bytes 2..22 of a block.
    unsafe { signed_q8_0(wp, xp, nb, Q5_0_BYTES, |wb| unpack_q5_0(wb)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; the closure reads bytes 2..34 of a block.
    unsafe { signed_q8_0(wp, xp, nb, Q8_0_BYTES, |wb| unpack_q8_0(wb)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; the closure reads bytes 4..20 of a block.
    unsafe { unsigned_q8_1(wp, xp, nb, Q4_1_BYTES, |wb| unpack_q4_1(wb)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_1<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; the closure reads bytes 4..24 of a block.
    unsafe { unsigned_q8_1(wp, xp, nb, Q5_1_BYTES, |wb| unpack_q5_1(wb)) }
}

// ----- k-quants ----------------------------------------------------------------------------

/// `Σ_s min_s · (bsum_2s + bsum_2s+1)` for the Q8_K block at `xb`.
///
/// # Safety
///
/// `xb` must point to a whole Q8_K block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn k_min_term(xb: *const u8, mins_pairs: __m256i) -> i32 {
    // SAFETY: the bsums are the last 32 bytes of the block.
    unsafe { hsum_i32(_mm256_madd_epi16(load32(xb.add(Q8_K_BSUMS)), mins_pairs)) }
}

/// The eight 6-bit minimums as sixteen i16 lanes, each repeated twice (lanes 2s and 2s+1
/// hold min s), to pair with the sixteen Q8_K block sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn mins_pairs(mn: &[u8; 8]) -> __m256i {
    // SAFETY: `mn` is 8 readable bytes.
    unsafe {
        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(mn.as_ptr().cast()));
        _mm256_or_si256(v, _mm256_slli_epi32(v, 16))
    }
}

/// Q4_K and Q5_K against Q8_K. `unpack(wb, c)` returns the two sub-blocks of 64-element
/// chunk `c` as unsigned bytes (sub-block `2c`, then `2c+1`).
///
/// With `chunked` (Q4_K against a tile of four activation rows) the super-block is folded in
/// per 64-element chunk ([`KSum::add_chunks`]), as llama.cpp's repacked Q4_K GEMM does for
/// each complete group of four rows; otherwise per super-block, as its GEMV does for the
/// remaining rows and for one token.
///
/// # Safety
///
/// `wp` must point to `nb` super-blocks of `w_bytes` bytes and each `xp[j]` to `nb` Q8_K
/// blocks; the CPU must have AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_with_mins<const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    chunked: bool,
    unpack: impl Fn(*const u8, usize) -> (__m256i, __m256i),
) -> [f32; N] {
    // SAFETY: every pointer below stays inside super-block `i < nb` of its row.
    unsafe {
        let mut sums = [KSum::default(); N];
        for i in 0..nb {
            let wb = wp.add(i * w_bytes);
            let scales = &*wb.add(K_SCALES).cast::<[u8; 12]>();
            let (sc, mn) = k_scales_mins(scales);
            let mut acc = [_mm256_setzero_si256(); N];
            let mut chunk_sums = [[0i32; 4]; N];
            for c in 0..4 {
                let (lo, hi) = unpack(wb, c);
                let s_lo = _mm256_set1_epi16(i16::from(sc[2 * c]));
                let s_hi = _mm256_set1_epi16(i16::from(sc[2 * c + 1]));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let y = at(&xp, j, i * Q8_K_BYTES + Q8_K_QS + 64 * c);
                    let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32(y)), s_lo);
                    let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32(y.add(32))), s_hi);
                    let p = _mm256_add_epi32(p_lo, p_hi);
                    if chunked {
                        chunk_sums[j][c] = hsum_i32(p);
                    } else {
                        *acc = _mm256_add_epi32(*acc, p);
                    }
                }
            }
            let pairs = mins_pairs(&mn);
            let d_dmin = f16x2(wb); // (d, dmin)
            for j in 0..N {
                let xb = at(&xp, j, i * Q8_K_BYTES);
                let d = _mm_mul_ps(d_dmin, _mm_set1_ps(f32_at_ptr(xb)));
                let (d, dmin) = (_mm_cvtss_f32(d), _mm_cvtss_f32(_mm_movehdup_ps(d)));
                if chunked {
                    // Lane s of the product is sub-block s's minimum term.
                    let mut m = [0i32; 8];
                    let v = _mm256_madd_epi16(load32(xb.add(Q8_K_BSUMS)), pairs);
                    _mm256_storeu_si256(m.as_mut_ptr().cast(), v);
                    let imin = [m[0] + m[1], m[2] + m[3], m[4] + m[5], m[6] + m[7]];
                    sums[j].add_chunks(d, chunk_sums[j], dmin, imin);
                } else {
                    let imin = k_min_term(xb, pairs);
                    sums[j].add(d, hsum_i32(acc[j]), dmin, imin);
                }
            }
        }
        sums.map(KSum::total)
    }
}

/// Chunk `c` (elements 64c..64c+64) of the Q4_K super-block at `wb` as unsigned bytes:
/// sub-block `2c`, then `2c + 1`.
///
/// # Safety
///
/// `wb` must point to a whole Q4_K super-block and `c < 4`; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q4_k(wb: *const u8, c: usize) -> (__m256i, __m256i) {
    // SAFETY: chunk c's nibbles are bytes 32c..32c+32 of `qs`.
    unsafe {
        let q = load32(wb.add(Q4_K_QS + 32 * c));
        let m = _mm256_set1_epi8(0x0f);
        (
            _mm256_and_si256(q, m),
            _mm256_and_si256(_mm256_srli_epi16(q, 4), m),
        )
    }
}

/// Chunk `c` of the Q5_K super-block at `wb`, as [`unpack_q4_k`].
///
/// # Safety
///
/// `wb` must point to a whole Q5_K super-block and `c < 4`; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q5_k(wb: *const u8, c: usize) -> (__m256i, __m256i) {
    // SAFETY: reads 32 bytes of `qs` and the 32 of `qh`.
    unsafe {
        let q = load32(wb.add(Q5_K_QS + 32 * c));
        // Bits 2c and 2c+1 of each qh byte are the fifth bits of sub-blocks 2c and 2c+1.
        // After a 16-bit shift right by 2c (c <= 3) they are bits 0 and 1 of their byte;
        // bits arriving from the neighbouring byte land in bits 8-2c..7, never below 2.
        // The left shifts then move bit 0 / bit 1 to bit 4 within the byte.
        let h = _mm256_srl_epi16(load32(wb.add(Q5_K_QH)), _mm_cvtsi32_si128(2 * c as i32));
        let m = _mm256_set1_epi8(0x0f);
        let b4 = _mm256_set1_epi8(0x10);
        let lo = _mm256_or_si256(
            _mm256_and_si256(q, m),
            _mm256_and_si256(_mm256_slli_epi16(h, 4), b4),
        );
        let hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(q, 4), m),
            _mm256_and_si256(_mm256_slli_epi16(h, 3), b4),
        );
        (lo, hi)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_k<const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
) -> [f32; N] {
    // SAFETY: forwarded contract; the closure reads 32 bytes of `qs` per chunk.
    unsafe { k_with_mins(wp, xp, nb, Q4_K_BYTES, N == 4, |wb, c| unpack_q4_k(wb, c)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; the closure reads 32 bytes of `qs` and the 32 of `qh`.
    unsafe { k_with_mins(wp, xp, nb, Q5_K_BYTES, false, |wb, c| unpack_q5_k(wb, c)) }
}

/// Values 128·half .. 128·half + 128 of the Q6_K super-block at `wb` as unsigned bytes
/// (0..=63), in four vectors of 32: vector `k` holds groups `8·half + 2k` (bytes 0-15) and
/// `8·half + 2k + 1` (bytes 16-31).
///
/// # Safety
///
/// `wb` must point to a whole Q6_K super-block and `half < 2`; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q6_k(wb: *const u8, half: usize) -> [__m256i; 4] {
    // SAFETY: the half's 64 bytes of `ql` and 32 of `qh` are inside the super-block.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(0x30);
        let ql0 = load32(wb.add(64 * half));
        let ql1 = load32(wb.add(64 * half + 32));
        let qh = load32(wb.add(Q6_K_QH + 32 * half));
        // Bits 4-5 of each value come from bit pairs 0-1, 2-3, 4-5, 6-7 of qh; the 16-bit
        // shifts move them within the byte (spill-over is masked off).
        [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                _mm256_and_si256(qh, m2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2),
            ),
        ]
    }
}

/// The scales of Q6_K groups `g` and `g + 1` as sixteen i16 lanes (eight each), to pair with
/// a vector of [`unpack_q6_k`] after `maddubs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_k_scales(sc: &[i8; 16], g: usize) -> __m256i {
    // SAFETY: register-only intrinsics; AVX2 is enabled on this function.
    unsafe {
        _mm256_set_m128i(
            _mm_set1_epi16(i16::from(sc[g + 1])),
            _mm_set1_epi16(i16::from(sc[g])),
        )
    }
}

/// The scale `d` of the Q6_K super-block at `wb`.
///
/// # Safety
///
/// `wb` must point to a whole Q6_K super-block; the CPU must have F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6_k_d(wb: *const u8) -> f32 {
    // SAFETY: d is the last field: read it with the scale byte pair before it (lane 1).
    unsafe { _mm_cvtss_f32(_mm_movehdup_ps(f16x2(wb.add(Q6_K_D - 2)))) }
}

/// Q6_K against Q8_K. The six-bit values are used unsigned (0..=63) with `maddubs`; the −32
/// offset comes from the Q8_K block sums, `Σ_g s_g Σ (q−32)·y = Σ_g s_g Σ q·y − 32 Σ_g
/// s_g·bsum_g`, subtracted lane by lane; the eight lanes are accumulated in f32 with fused
/// multiply-adds and summed at the end, exactly as llama.cpp's AVX2 `ggml_vec_dot_q6_K_q8_K`
/// (see the scalar `dot_q6_k_lanes`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k<const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: forwarded contract; AVX2 is enabled on this function.
    unsafe { q6_k_body::<MaddAdd, N>(wp, xp, nb) }
}

/// The integer step of [`q6_k_body`]: `acc + Σ pairs(p·s)` per i32 lane (`p` the i16 pair
/// sums of `maddubs`, `s` the group scales). Every implementation gives the same exact
/// integers; they differ in the instructions only.
pub(super) trait Q6Step {
    /// # Safety
    ///
    /// The CPU must have the instructions of the implementation, and the caller must have
    /// them enabled (the body is inlined into it).
    unsafe fn madd_add(acc: __m256i, p: __m256i, s: __m256i) -> __m256i;
}

/// AVX2's integer step: `vpmaddwd`, then `vpaddd`.
pub(super) struct MaddAdd;

impl Q6Step for MaddAdd {
    #[inline(always)]
    unsafe fn madd_add(acc: __m256i, p: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX2, which the caller has enabled.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(p, s)) }
    }
}

/// The body of [`q6_k`] with the integer step `S`, shared with the AVX-512 VNNI kernel
/// (`vpdpwssd`). Inlined into a caller that enables AVX2, FMA, F16C and the features of `S`.
///
/// # Safety
///
/// `wp` must point to `nb` Q6_K super-blocks and each `xp[j]` to `nb` Q8_K blocks; the CPU
/// must have AVX2, FMA, F16C and the instructions of `S`.
#[inline(always)]
pub(super) unsafe fn q6_k_body<S: Q6Step, const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
) -> [f32; N] {
    // SAFETY: every pointer below stays inside super-block `i < nb` of its row.
    unsafe {
        let mut sums = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let wb = wp.add(i * Q6_K_BYTES);
            let sc = &*wb.add(Q6_K_SCALES).cast::<[i8; 16]>();
            let mut acc = [_mm256_setzero_si256(); N];
            for half in 0..2 {
                let q = unpack_q6_k(wb, half);
                for (k, q) in q.into_iter().enumerate() {
                    let s = q6_k_scales(sc, 8 * half + 2 * k);
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let y = at(&xp, j, i * Q8_K_BYTES + Q8_K_QS + 128 * half + 32 * k);
                        *acc = S::madd_add(*acc, _mm256_maddubs_epi16(q, load32(y)), s);
                    }
                }
            }
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr().cast()));
            let dw = q6_k_d(wb);
            for j in 0..N {
                let xb = at(&xp, j, i * Q8_K_BYTES);
                let offset = _mm256_madd_epi16(load32(xb.add(Q8_K_BSUMS)), scales16);
                let lanes = _mm256_sub_epi32(acc[j], _mm256_slli_epi32(offset, 5));
                let d = _mm256_set1_ps(dw * f32_at_ptr(xb));
                sums[j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), sums[j]);
            }
        }
        sums.map(|s| hsum_f32(s))
    }
}
