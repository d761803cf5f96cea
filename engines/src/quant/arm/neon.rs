//! aarch64 kernels: NEON, with and without the `dotprod` extension (`SDOT`), and tiles with
//! the `i8mm` extension (`SMMLA`).
//!
//! NEON is part of the aarch64 baseline, so the plain path runs everywhere (Raspberry Pi 4's
//! Cortex-A72 included). `SDOT` (Armv8.2 `dotprod`: Pi 5's Cortex-A76, Jetson Orin's
//! Cortex-A78AE) is only used after `is_aarch64_feature_detected!("dotprod")` says so, and
//! only inside functions compiled with `#[target_feature(enable = "dotprod")]`; a binary built
//! for the baseline never executes it on a core that lacks it.
//!
//! Both paths share one source: each kernel is generic over [`Dot`], "add the 16 products of
//! two signed byte vectors into four i32 lanes", implemented by `vmull_s8` + `vpadalq_s16`
//! ([`Plain`]) or by one `SDOT` instruction ([`Sdot`]). How the products are spread over the
//! lanes differs, but the kernels only ever use lane totals, so both give the same integers.
//! `SDOT`'s intrinsic (`vdotq_s32`) is still unstable in Rust, hence the one-instruction
//! `asm!`.
//!
//! Every kernel computes `N` dot products (one weight row against `N` activation rows),
//! unpacking each weight block once. Float accumulation is as on x86: per-lane for the
//! 32-element formats, and one exact integer per super-block folded with [`KSum`] or [`k_accumulate`]
//! for the k-quants (bit-identical to the scalar reference).
//!
//! With `i8mm` (Armv8.6; Cortex-A710/X2/A720, Neoverse N2/V1, Graviton 3; not the Pi 5's
//! A76 nor Jetson Orin's A78AE), [`dot_tile_i8mm`] computes a tile of weight rows × tokens
//! for prefill with `SMMLA`, which multiplies a 2×8 byte matrix by the transpose of another
//! into a 2×2 i32 matrix: two weight rows' eight-element chunks in one operand, two tokens'
//! in the other, interleaved by [`pair`]; an odd last row or token is paired with itself.
//! The weights are unpacked by the same functions as above. The k-quants reduce to the same
//! exact integers per super-block and output and fold them with the same calls, so they are
//! bit for bit the `SDOT` results; the 32-element formats keep one f32 lane per output (as
//! llama.cpp's i8mm kernels), so they differ from `SDOT` by float rounding. One-token and
//! one-row products keep using `SDOT`. This path has run only under qemu (`-cpu max`), never
//! on i8mm hardware; its speed is unknown.

// See ../x86/avx2.rs: needed for Rust 1.85, reported as unnecessary by newer compilers.
#![allow(unused_unsafe)]

use std::arch::aarch64::*;
use std::arch::asm;

use crate::gguf::GgmlType;
use crate::quant::layout::*;

/// Whether this CPU has the `dotprod` extension (detected at run time).
pub(in crate::quant) fn dotprod_available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `N` dot products of the weight row `w` (`nb` blocks of `ty`) with the activation rows `xs`, using
/// `SDOT` if `dotprod` is true.
///
/// # Panics
///
/// If `dotprod` is requested on a CPU without it, or the lengths do not match (see
/// [`check_dot_lengths`]).
pub(in crate::quant) fn dot<const N: usize>(
    dotprod: bool,
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    xs: [&[u8]; N],
) -> [f32; N] {
    check_dot_lengths(ty, nb, w, &xs);
    let xp = xs.map(<[u8]>::as_ptr);
    let wp = w.as_ptr();
    if dotprod {
        assert!(
            dotprod_available(),
            "SDOT kernels called on a CPU without dotprod"
        );
        // SAFETY: `dotprod` was detected just above; `check_dot_lengths` proved that `w`
        // holds `nb` blocks of `ty` and every `xs[j]` `nb` activation blocks, which is exactly
        // what the kernels read.
        unsafe { kernels_sdot::<N>(ty, wp, xp, nb) }
    } else {
        // SAFETY: NEON is baseline on aarch64; lengths as above.
        unsafe { kernels::<Plain, N>(ty, wp, xp, nb) }
    }
}

/// The kernels compiled with `dotprod` enabled, so that [`Sdot::dot`] inlines into them.
///
/// # Safety
///
/// The CPU must have `dotprod`; pointers as in [`kernels`].
#[target_feature(enable = "dotprod")]
unsafe fn kernels_sdot<const N: usize>(
    ty: GgmlType,
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
) -> [f32; N] {
    // SAFETY: forwarded contract.
    unsafe { kernels::<Sdot, N>(ty, wp, xp, nb) }
}

/// # Safety
///
/// `wp` must point to `nb` blocks of `ty` and each `xp[j]` to `nb` blocks of its activation
/// type; `D` must be usable on this CPU.
#[inline(always)]
unsafe fn kernels<D: Dot, const N: usize>(
    ty: GgmlType,
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
) -> [f32; N] {
    // SAFETY: forwarded contract.
    unsafe {
        match ty {
            GgmlType::Q4_0 => signed_q8_0::<D, N>(wp, xp, nb, Q4_0_BYTES, |wb| q4_0_values(wb)),
            GgmlType::Q5_0 => signed_q8_0::<D, N>(wp, xp, nb, Q5_0_BYTES, |wb| q5_0_values(wb)),
            GgmlType::Q8_0 => signed_q8_0::<D, N>(wp, xp, nb, Q8_0_BYTES, |wb| q8_0_values(wb)),
            GgmlType::Q4_1 => unsigned_q8_1::<D, N>(wp, xp, nb, Q4_1_BYTES, |wb| q4_1_values(wb)),
            GgmlType::Q5_1 => unsigned_q8_1::<D, N>(wp, xp, nb, Q5_1_BYTES, |wb| q5_1_values(wb)),
            GgmlType::Q4_K => {
                k_with_mins::<D, N>(wp, xp, nb, Q4_K_BYTES, |wb, c| q4_k_values(wb, c))
            }
            GgmlType::Q5_K => {
                k_with_mins::<D, N>(wp, xp, nb, Q5_K_BYTES, |wb, c| q5_k_values(wb, c))
            }
            GgmlType::Q6_K => q6_k::<D, N>(wp, xp, nb),
            other => unreachable!("check_dot_lengths accepted {other}"),
        }
    }
}

// ----- unpacking weight blocks -------------------------------------------------------------
//
// Each function below returns the values of one weight block (or part of one) as signed
// bytes, shared by the `SDOT`/plain kernels and the `SMMLA` tiles.
//
// # Safety (all of them)
//
// `wb` must point to a whole block of the named type.

/// Q4_0: `q − 8`, elements 0-15 and 16-31.
#[inline(always)]
unsafe fn q4_0_values(wb: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: see the section comment.
    unsafe {
        let (lo, hi) = nibbles(wb.add(2));
        let eight = vdupq_n_s8(8);
        (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
    }
}

/// Q5_0: `q − 16`, elements 0-15 and 16-31.
#[inline(always)]
unsafe fn q5_0_values(wb: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: see the section comment.
    unsafe {
        let (lo, hi) = nibbles(wb.add(6));
        let (h_lo, h_hi) = fifth_bits(wb.add(2));
        let sixteen = vdupq_n_s8(16);
        (
            vsubq_s8(vorrq_s8(lo, h_lo), sixteen),
            vsubq_s8(vorrq_s8(hi, h_hi), sixteen),
        )
    }
}

/// Q8_0: the quants, elements 0-15 and 16-31.
#[inline(always)]
unsafe fn q8_0_values(wb: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: see the section comment.
    unsafe { (load_s8(wb.add(2)), load_s8(wb.add(18))) }
}

/// Q4_1: the unsigned nibbles, elements 0-15 and 16-31.
#[inline(always)]
unsafe fn q4_1_values(wb: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: see the section comment.
    unsafe { nibbles(wb.add(4)) }
}

/// Q5_1: the unsigned five-bit values, elements 0-15 and 16-31.
#[inline(always)]
unsafe fn q5_1_values(wb: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: see the section comment.
    unsafe {
        let (lo, hi) = nibbles(wb.add(8));
        let (h_lo, h_hi) = fifth_bits(wb.add(4));
        (vorrq_s8(lo, h_lo), vorrq_s8(hi, h_hi))
    }
}

/// Q4_K, 64-element chunk `c < 4`: sub-block `2c` (elements 0-15, 16-31), then `2c + 1`.
#[inline(always)]
unsafe fn q4_k_values(wb: *const u8, c: usize) -> [int8x16_t; 4] {
    // SAFETY: see the section comment; `c < 4` keeps the loads inside `qs`.
    unsafe {
        let q0 = vld1q_u8(wb.add(Q4_K_QS + 32 * c));
        let q1 = vld1q_u8(wb.add(Q4_K_QS + 32 * c + 16));
        let m4 = vdupq_n_u8(0x0f);
        [
            vreinterpretq_s8_u8(vandq_u8(q0, m4)),
            vreinterpretq_s8_u8(vandq_u8(q1, m4)),
            vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)),
            vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)),
        ]
    }
}

/// Q5_K, 64-element chunk `c < 4`, as [`q4_k_values`].
#[inline(always)]
unsafe fn q5_k_values(wb: *const u8, c: usize) -> [int8x16_t; 4] {
    // SAFETY: see the section comment; `c < 4` keeps the loads inside `qs`.
    unsafe {
        let q0 = vld1q_u8(wb.add(Q5_K_QS + 32 * c));
        let q1 = vld1q_u8(wb.add(Q5_K_QS + 32 * c + 16));
        // Bits 2c and 2c+1 of qh[l] are the fifth bits of sub-blocks 2c and 2c+1.
        let shift = vdupq_n_s8(-2 * c as i8);
        let h0 = vshlq_u8(vld1q_u8(wb.add(Q5_K_QH)), shift);
        let h1 = vshlq_u8(vld1q_u8(wb.add(Q5_K_QH + 16)), shift);
        let m4 = vdupq_n_u8(0x0f);
        let b0 = vdupq_n_u8(0x01);
        let b1 = vdupq_n_u8(0x02);
        [
            vorrq_u8(vandq_u8(q0, m4), vshlq_n_u8(vandq_u8(h0, b0), 4)),
            vorrq_u8(vandq_u8(q1, m4), vshlq_n_u8(vandq_u8(h1, b0), 4)),
            vorrq_u8(vshrq_n_u8(q0, 4), vshlq_n_u8(vandq_u8(h0, b1), 3)),
            vorrq_u8(vshrq_n_u8(q1, 4), vshlq_n_u8(vandq_u8(h1, b1), 3)),
        ]
        .map(|v| vreinterpretq_s8_u8(v))
    }
}

/// Q6_K, half `half < 2` of the super-block: its eight groups of 16 (group `g` = elements
/// `128·half + 16g ..`), offset by −32.
#[inline(always)]
unsafe fn q6_k_values(wb: *const u8, half: usize) -> [int8x16_t; 8] {
    // SAFETY: see the section comment; `half < 2` keeps the loads inside `ql` and `qh`.
    unsafe {
        let m4 = vdupq_n_u8(0x0f);
        let m2 = vdupq_n_u8(0x03);
        let m2_2 = vdupq_n_u8(0x0c);
        let m2_4 = vdupq_n_u8(0x30);
        let ql = wb.add(64 * half);
        let (a0, a1) = (vld1q_u8(ql), vld1q_u8(ql.add(16)));
        let (b0, b1) = (vld1q_u8(ql.add(32)), vld1q_u8(ql.add(48)));
        let qh = wb.add(Q6_K_QH + 32 * half);
        let (h0, h1) = (vld1q_u8(qh), vld1q_u8(qh.add(16)));
        // See the module docs of `quant` for the bit layout.
        [
            vorrq_u8(vandq_u8(a0, m4), vshlq_n_u8(vandq_u8(h0, m2), 4)),
            vorrq_u8(vandq_u8(a1, m4), vshlq_n_u8(vandq_u8(h1, m2), 4)),
            vorrq_u8(vandq_u8(b0, m4), vshlq_n_u8(vandq_u8(h0, m2_2), 2)),
            vorrq_u8(vandq_u8(b1, m4), vshlq_n_u8(vandq_u8(h1, m2_2), 2)),
            vorrq_u8(vshrq_n_u8(a0, 4), vandq_u8(h0, m2_4)),
            vorrq_u8(vshrq_n_u8(a1, 4), vandq_u8(h1, m2_4)),
            vorrq_u8(vshrq_n_u8(b0, 4), vandq_u8(vshrq_n_u8(h0, 2), m2_4)),
            vorrq_u8(vshrq_n_u8(b1, 4), vandq_u8(vshrq_n_u8(h1, 2), m2_4)),
        ]
        .map(|v| vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(32)))
    }
}

/// The exact integer minimum term of a Q4_K / Q5_K super-block, `Σ_s m_s · Σ x` over its
/// eight sub-blocks, from the Q8_K block at `xb` (its `bsums`, pairwise) and the weight
/// block's minimums `mins`.
///
/// # Safety
///
/// `xb` must point to a whole Q8_K block.
#[inline(always)]
unsafe fn k_min_term(xb: *const u8, mins: int16x8_t) -> i32 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        // Block sums pairwise (one per 32-element sub-block) times the minimums.
        let pairs = vpaddq_s16(
            load_s16(xb.add(Q8_K_BSUMS)),
            load_s16(xb.add(Q8_K_BSUMS + 16)),
        );
        let m = vmull_s16(vget_low_s16(pairs), vget_low_s16(mins));
        vaddvq_s32(vmlal_high_s16(m, pairs, mins))
    }
}

/// The eight minimums `mn` of a Q4_K / Q5_K super-block, widened for [`k_min_term`].
#[inline(always)]
fn k_mins_s16(mn: &[u8; 8]) -> int16x8_t {
    // SAFETY: baseline NEON; `mn` is 8 readable bytes.
    unsafe { vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn.as_ptr()))) }
}

// ----- the integer dot step ----------------------------------------------------------------

/// Adds the 16 products `a[k]·b[k]` into the four i32 lanes of `acc` (in an unspecified
/// distribution over the lanes).
trait Dot {
    /// # Safety
    ///
    /// The CPU must support the instructions of the implementation.
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Baseline NEON: widening multiplies, then pairwise add-accumulate into i32 (no overflow
/// for any bytes: each i16 product is at most 128·128).
struct Plain;

impl Dot for Plain {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: baseline NEON, registers only.
        unsafe {
            let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let hi = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, lo), hi)
        }
    }
}

/// `acc` (`int32x4_t`) after the one instruction `insn acc.4s, a.16b, b.16b` (an
/// accumulating product of the signed byte vectors `a` and `b`), written with `asm!` because
/// the intrinsics of `SDOT` and `SMMLA` are unstable in Rust. Needs an `unsafe` block and the
/// instruction's target feature.
macro_rules! accumulate_asm {
    ($insn:literal, $acc:expr, $a:expr, $b:expr) => {{
        let mut acc: int32x4_t = $acc;
        asm!(
            concat!($insn, " {acc:v}.4s, {a:v}.16b, {b:v}.16b"),
            acc = inout(vreg) acc,
            a = in(vreg) $a,
            b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }};
}

/// Armv8.2 `SDOT`: lane `i` gains `Σ a[4i..4i+4]·b[4i..4i+4]`.
struct Sdot;

impl Dot for Sdot {
    #[inline]
    #[target_feature(enable = "dotprod")]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: the caller guarantees `dotprod`; the instruction reads and writes only the
        // three vector registers named in `accumulate_asm!`.
        unsafe { accumulate_asm!("sdot", acc, a, b) }
    }
}

// ----- helpers -----------------------------------------------------------------------------

/// Widens an IEEE half (given as bits) to f32 with `FCVT`, which is baseline aarch64 FP.
/// Exact for every input, subnormals included (Rust leaves flush-to-zero off).
#[inline(always)]
pub(in crate::quant) fn f16_to_f32(bits: u16) -> f32 {
    let out: f32;
    // SAFETY: FCVT only reads and writes the two registers named here.
    unsafe {
        asm!(
            "fcvt {o:s}, {i:h}",
            o = lateout(vreg) out,
            i = in(vreg) bits,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// The f16 at `p`, widened.
///
/// # Safety
///
/// `p` must be valid for reading 2 bytes.
#[inline(always)]
unsafe fn f16_at_ptr(p: *const u8) -> f32 {
    // SAFETY: guaranteed by the caller.
    f16_to_f32(u16::from_le_bytes(unsafe { p.cast::<[u8; 2]>().read() }))
}

/// The little-endian f32 at `p`.
///
/// # Safety
///
/// `p` must be valid for reading 4 bytes.
#[inline(always)]
unsafe fn f32_at_ptr(p: *const u8) -> f32 {
    // SAFETY: guaranteed by the caller.
    f32::from_le_bytes(unsafe { p.cast::<[u8; 4]>().read() })
}

/// 16 signed bytes from `p`.
///
/// # Safety
///
/// `p` must be valid for reading 16 bytes.
#[inline(always)]
unsafe fn load_s8(p: *const u8) -> int8x16_t {
    // SAFETY: guaranteed by the caller; LD1 has no alignment requirement.
    unsafe { vld1q_s8(p.cast()) }
}

/// Eight little-endian i16 from `p`.
///
/// # Safety
///
/// `p` must be valid for reading 16 bytes.
#[inline(always)]
unsafe fn load_s16(p: *const u8) -> int16x8_t {
    // SAFETY: guaranteed by the caller; loading bytes avoids any alignment question, and
    // aarch64 Linux is little-endian.
    unsafe { vreinterpretq_s16_u8(vld1q_u8(p)) }
}

/// The 16 bytes at `p` as 32 nibbles: (low nibbles = elements 0-15, high = elements 16-31).
///
/// # Safety
///
/// `p` must be valid for reading 16 bytes.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let q = vld1q_u8(p);
        (
            vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))),
            vreinterpretq_s8_u8(vshrq_n_u8(q, 4)),
        )
    }
}

/// Which byte of the fifth-bit word each element's bit is in, and which bit.
static BYTE_OF_ELEMENT: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
    2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
];
static BIT_OF_ELEMENT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// For the little-endian u32 at `p`: byte `j` of the pair is 0x10 if bit `j` (elements
/// 0-15), resp. `j + 16` (elements 16-31), is set, else 0.
///
/// # Safety
///
/// `p` must be valid for reading 4 bytes.
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> (int8x16_t, int8x16_t) {
    // SAFETY: guaranteed by the caller; the tables are statics of the right length.
    unsafe {
        let qh = u32::from_le_bytes(p.cast::<[u8; 4]>().read());
        let v = vreinterpretq_u8_u32(vdupq_n_u32(qh));
        let bit = vld1q_u8(BIT_OF_ELEMENT.as_ptr());
        let b16 = vdupq_n_u8(0x10);
        let lo = vtstq_u8(vqtbl1q_u8(v, vld1q_u8(BYTE_OF_ELEMENT.as_ptr())), bit);
        let hi = vtstq_u8(
            vqtbl1q_u8(v, vld1q_u8(BYTE_OF_ELEMENT.as_ptr().add(16))),
            bit,
        );
        (
            vreinterpretq_s8_u8(vandq_u8(lo, b16)),
            vreinterpretq_s8_u8(vandq_u8(hi, b16)),
        )
    }
}

// ----- 32-element formats ------------------------------------------------------------------

/// Signed weights (Q4_0, Q5_0, Q8_0) against Q8_0 activations; `unpack` gives the 32 values
/// of a weight block as two signed byte vectors.
///
/// # Safety
///
/// `wp` must point to `nb` blocks of `w_bytes` bytes and each `xp[j]` to `nb` Q8_0 blocks.
#[inline(always)]
unsafe fn signed_q8_0<D: Dot, const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    unpack: impl Fn(*const u8) -> (int8x16_t, int8x16_t),
) -> [f32; N] {
    // SAFETY: every pointer below stays inside block `i < nb` of its row.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); N];
        for i in 0..nb {
            let wb = wp.add(i * w_bytes);
            let dw = f16_at_ptr(wb);
            let (q0, q1) = unpack(wb);
            for (j, acc) in acc.iter_mut().enumerate() {
                let xb = xp[j].add(i * Q8_0_BYTES);
                let p = D::dot(vdupq_n_s32(0), q0, load_s8(xb.add(2)));
                let p = D::dot(p, q1, load_s8(xb.add(18)));
                *acc = vfmaq_n_f32(*acc, vcvtq_f32_s32(p), dw * f16_at_ptr(xb));
            }
        }
        acc.map(|a| vaddvq_f32(a))
    }
}

/// Unsigned weights with a minimum (Q4_1, Q5_1) against Q8_1 activations; the minimum term
/// is `m_w · s_x`.
///
/// # Safety
///
/// As [`signed_q8_0`], with Q8_1 activations.
#[inline(always)]
unsafe fn unsigned_q8_1<D: Dot, const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    unpack: impl Fn(*const u8) -> (int8x16_t, int8x16_t),
) -> [f32; N] {
    // SAFETY: every pointer below stays inside block `i < nb` of its row.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); N];
        let mut mins = [0.0f32; N];
        for i in 0..nb {
            let wb = wp.add(i * w_bytes);
            let (dw, mw) = (f16_at_ptr(wb), f16_at_ptr(wb.add(2)));
            let (q0, q1) = unpack(wb);
            for j in 0..N {
                let xb = xp[j].add(i * Q8_1_BYTES);
                let p = D::dot(vdupq_n_s32(0), q0, load_s8(xb.add(4)));
                let p = D::dot(p, q1, load_s8(xb.add(20)));
                acc[j] = vfmaq_n_f32(acc[j], vcvtq_f32_s32(p), dw * f16_at_ptr(xb));
                mins[j] += mw * f16_at_ptr(xb.add(2));
            }
        }
        let mut out = [0.0; N];
        for j in 0..N {
            out[j] = vaddvq_f32(acc[j]) + mins[j];
        }
        out
    }
}

// ----- k-quants ----------------------------------------------------------------------------

/// Q4_K and Q5_K against Q8_K. `unpack(wb, c)` returns 64-element chunk `c` as four vectors:
/// sub-block `2c` (bytes 0-15, 16-31), then sub-block `2c+1`.
///
/// # Safety
///
/// `wp` must point to `nb` super-blocks of `w_bytes` bytes and each `xp[j]` to `nb` Q8_K
/// blocks.
#[inline(always)]
unsafe fn k_with_mins<D: Dot, const N: usize>(
    wp: *const u8,
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    unpack: impl Fn(*const u8, usize) -> [int8x16_t; 4],
) -> [f32; N] {
    // SAFETY: every pointer below stays inside super-block `i < nb` of its row.
    unsafe {
        let mut sums = [KSum::default(); N];
        for i in 0..nb {
            let wb = wp.add(i * w_bytes);
            let (sc, mn) = k_scales_mins(&*wb.add(K_SCALES).cast::<[u8; 12]>());
            let mut acc = [vdupq_n_s32(0); N];
            for c in 0..4 {
                let [l0, l1, h0, h1] = unpack(wb, c);
                let (s_lo, s_hi) = (i32::from(sc[2 * c]), i32::from(sc[2 * c + 1]));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let y = xp[j].add(i * Q8_K_BYTES + Q8_K_QS + 64 * c);
                    let p_lo = D::dot(
                        D::dot(vdupq_n_s32(0), l0, load_s8(y)),
                        l1,
                        load_s8(y.add(16)),
                    );
                    let p_hi = D::dot(
                        D::dot(vdupq_n_s32(0), h0, load_s8(y.add(32))),
                        h1,
                        load_s8(y.add(48)),
                    );
                    *acc = vmlaq_n_s32(vmlaq_n_s32(*acc, p_lo, s_lo), p_hi, s_hi);
                }
            }
            let mins = k_mins_s16(&mn);
            let (dw, dmin) = (f16_at_ptr(wb), f16_at_ptr(wb.add(2)));
            for j in 0..N {
                let xb = xp[j].add(i * Q8_K_BYTES);
                let dy = f32_at_ptr(xb);
                let imin = k_min_term(xb, mins);
                sums[j].add(dw * dy, vaddvq_s32(acc[j]), dmin * dy, imin);
            }
        }
        sums.map(KSum::total)
    }
}

/// Q6_K against Q8_K: 16 groups of 16 signed six-bit values, each with an i8 scale.
///
/// # Safety
///
/// `wp` must point to `nb` Q6_K super-blocks and each `xp[j]` to `nb` Q8_K blocks.
#[inline(always)]
unsafe fn q6_k<D: Dot, const N: usize>(wp: *const u8, xp: [*const u8; N], nb: usize) -> [f32; N] {
    // SAFETY: every pointer below stays inside super-block `i < nb` of its row.
    unsafe {
        let mut sums = [0.0f32; N];
        for i in 0..nb {
            let wb = wp.add(i * Q6_K_BYTES);
            let sc = &*wb.add(Q6_K_SCALES).cast::<[i8; 16]>();
            let mut acc = [vdupq_n_s32(0); N];
            for half in 0..2 {
                let q = q6_k_values(wb, half);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let y = xp[j].add(i * Q8_K_BYTES + Q8_K_QS + 128 * half);
                    for (g, q) in q.iter().enumerate() {
                        let p = D::dot(vdupq_n_s32(0), *q, load_s8(y.add(16 * g)));
                        *acc = vmlaq_n_s32(*acc, p, i32::from(sc[8 * half + g]));
                    }
                }
            }
            let dw = f16_at_ptr(wb.add(Q6_K_D));
            for j in 0..N {
                let dy = f32_at_ptr(xp[j].add(i * Q8_K_BYTES));
                sums[j] = k_accumulate(sums[j], dw * dy, vaddvq_s32(acc[j]), 0.0, 0);
            }
        }
        sums
    }
}

// ----- i8mm: tiles of weight rows × tokens with SMMLA --------------------------------------

/// Whether this CPU has `i8mm` (`SMMLA`), and `dotprod`, which the one-row products of
/// [`crate::quant::Kernel::NeonI8mm`] use (detected at run time; every core with i8mm has both).
pub(in crate::quant) fn i8mm_available() -> bool {
    std::arch::is_aarch64_feature_detected!("i8mm") && dotprod_available()
}

/// The tile of `R` weight rows `ws` (`nb` blocks of `ty` each) times `N` activation rows
/// `xs`, `out[r][t] = ws[r] · xs[t]`, with `SMMLA` on pairs of rows × pairs of tokens (an odd
/// last row or token is paired with itself and the duplicate lanes dropped). The k-quants
/// are bit for bit what [`dot`] returns with `SDOT`; the 32-element formats differ from it
/// by float rounding only (one f32 lane per output instead of four partial lanes).
///
/// # Panics
///
/// If the CPU lacks i8mm, or the lengths do not match (see [`check_tile_lengths`]).
pub(in crate::quant) fn dot_tile_i8mm<const R: usize, const N: usize>(
    ty: GgmlType,
    nb: usize,
    ws: [&[u8]; R],
    xs: [&[u8]; N],
) -> [[f32; N]; R] {
    assert!(
        i8mm_available(),
        "SMMLA kernels called on a CPU without i8mm"
    );
    let (wp, xp) = check_tile_lengths(ty, nb, &ws, &xs);
    // SAFETY: `i8mm` and `dotprod` were detected just above; `check_tile_lengths` proved that
    // every `ws[r]` holds `nb` blocks of `ty` and every `xs[t]` `nb` activation blocks, which
    // is exactly what the tiles read.
    unsafe { tiles_i8mm::<R, N>(ty, wp, xp, nb) }
}

/// The tile kernels compiled with `i8mm` (and `dotprod`) enabled, so that [`smmla`] inlines.
///
/// # Safety
///
/// The CPU must have `i8mm`; `wp[r]` must point to `nb` blocks of `ty` and each `xp[t]` to
/// `nb` blocks of its activation type.
#[target_feature(enable = "dotprod,i8mm")]
unsafe fn tiles_i8mm<const R: usize, const N: usize>(
    ty: GgmlType,
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
) -> [[f32; N]; R] {
    // SAFETY: forwarded contract.
    unsafe {
        match ty {
            GgmlType::Q4_0 => tile_32::<R, N, false>(wp, xp, nb, Q4_0_BYTES, |wb| q4_0_values(wb)),
            GgmlType::Q5_0 => tile_32::<R, N, false>(wp, xp, nb, Q5_0_BYTES, |wb| q5_0_values(wb)),
            GgmlType::Q8_0 => tile_32::<R, N, false>(wp, xp, nb, Q8_0_BYTES, |wb| q8_0_values(wb)),
            GgmlType::Q4_1 => tile_32::<R, N, true>(wp, xp, nb, Q4_1_BYTES, |wb| q4_1_values(wb)),
            GgmlType::Q5_1 => tile_32::<R, N, true>(wp, xp, nb, Q5_1_BYTES, |wb| q5_1_values(wb)),
            GgmlType::Q4_K => {
                tile_k_with_mins::<R, N>(wp, xp, nb, Q4_K_BYTES, |wb, c| q4_k_values(wb, c))
            }
            GgmlType::Q5_K => {
                tile_k_with_mins::<R, N>(wp, xp, nb, Q5_K_BYTES, |wb, c| q5_k_values(wb, c))
            }
            GgmlType::Q6_K => tile_q6_k::<R, N>(wp, xp, nb),
            other => unreachable!("check_dot_lengths accepted {other}"),
        }
    }
}

/// Armv8.6 `SMMLA`: `acc`, a 2×2 i32 matrix in row-major lanes, gains `A·Bᵀ` for the 2×8
/// byte matrices `a` and `b` (row `i` = bytes `8i..8i+8`): lane `2i + j` gains
/// `Σ_k a[8i+k]·b[8j+k]`. Its intrinsic (`vmmlaq_s32`) is unstable in Rust, hence `asm!`.
#[inline]
#[target_feature(enable = "i8mm")]
unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the caller guarantees `i8mm`; the instruction reads and writes only the three
    // vector registers named in `accumulate_asm!`.
    unsafe { accumulate_asm!("smmla", acc, a, b) }
}

/// The 2×2 dot products of two weight rows with two tokens over the operands `w` and `x`
/// (each element a [`pair`] of the rows', resp. tokens', same 16 elements), added to `acc`.
///
/// # Safety
///
/// The CPU must have `i8mm`.
#[inline]
#[target_feature(enable = "i8mm")]
unsafe fn smmla_pairs(acc: int32x4_t, w: &[[int8x16_t; 2]], x: &[[int8x16_t; 2]]) -> int32x4_t {
    let mut acc = acc;
    for (w, x) in w.iter().zip(x) {
        // SAFETY: forwarded contract.
        acc = unsafe { smmla(smmla(acc, w[0], x[0]), w[1], x[1]) };
    }
    acc
}

/// The same 16 elements of two rows (or tokens) `a` and `b` as two `SMMLA` operands:
/// elements 0-7 of `a` and of `b`, then elements 8-15 of both.
#[inline(always)]
fn pair(a: int8x16_t, b: int8x16_t) -> [int8x16_t; 2] {
    // SAFETY: baseline NEON, registers only.
    unsafe {
        let (a, b) = (vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b));
        [
            vreinterpretq_s8_s64(vzip1q_s64(a, b)),
            vreinterpretq_s8_s64(vzip2q_s64(a, b)),
        ]
    }
}

/// The pairs of `m` rows (or tokens): `(pair index, first, second)`, the last one paired with
/// itself if `m` is odd.
#[inline(always)]
fn pairs(m: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..m.div_ceil(2)).map(move |p| (p, 2 * p, (2 * p + 1).min(m - 1)))
}

/// `[a, a, b, b]`: a per-row value in the lanes of an `SMMLA` result.
#[inline(always)]
fn per_row_f32(a: f32, b: f32) -> float32x4_t {
    // SAFETY: baseline NEON, registers only.
    unsafe { vcombine_f32(vdup_n_f32(a), vdup_n_f32(b)) }
}

/// `[a, a, b, b]`, as [`per_row_f32`].
#[inline(always)]
fn per_row_s32(a: i32, b: i32) -> int32x4_t {
    // SAFETY: baseline NEON, registers only.
    unsafe { vcombine_s32(vdup_n_s32(a), vdup_n_s32(b)) }
}

/// `[a, b, a, b]`: a per-token value in the lanes of an `SMMLA` result.
#[inline(always)]
fn per_token_f32(a: f32, b: f32) -> float32x4_t {
    // SAFETY: baseline NEON, registers only.
    unsafe {
        let ab = vset_lane_f32::<1>(b, vdup_n_f32(a));
        vcombine_f32(ab, ab)
    }
}

/// Output `(r, t)` of a tile held as one 2×2 `SMMLA`-shaped vector per (row pair, token
/// pair), `v[r / 2][t / 2]`; `lanes` stores a vector's four lanes.
#[inline(always)]
fn spread<V: Copy, T: Copy, const R: usize, const N: usize>(
    v: &[[V; N]; R],
    lanes: impl Fn(V) -> [T; 4],
) -> [[T; N]; R] {
    std::array::from_fn(|r| std::array::from_fn(|t| lanes(v[r / 2][t / 2])[2 * (r % 2) + t % 2]))
}

/// The four lanes of `v`.
#[inline(always)]
fn f32_lanes(v: float32x4_t) -> [f32; 4] {
    let mut out = [0.0; 4];
    // SAFETY: baseline NEON; `out` has room for four f32.
    unsafe { vst1q_f32(out.as_mut_ptr(), v) };
    out
}

/// The four lanes of `v`.
#[inline(always)]
fn i32_lanes(v: int32x4_t) -> [i32; 4] {
    let mut out = [0; 4];
    // SAFETY: baseline NEON; `out` has room for four i32.
    unsafe { vst1q_s32(out.as_mut_ptr(), v) };
    out
}

/// The 32-element formats as tiles: signed weights (Q4_0, Q5_0, Q8_0) against Q8_0
/// activations, or, with `MIN`, unsigned weights with a minimum (Q4_1, Q5_1) against Q8_1.
/// Per block and output, one fused multiply-add of the exact block integer by `d_w·d_x`
/// into the output's own f32 lane (as llama.cpp's i8mm kernels); with `MIN`, `m_w·s_x`
/// summed separately and added at the end, as in [`unsigned_q8_1`].
///
/// # Safety
///
/// The CPU must have `i8mm`; `wp[r]` must point to `nb` blocks of `w_bytes` bytes and each
/// `xp[t]` to `nb` activation blocks.
#[inline(always)]
unsafe fn tile_32<const R: usize, const N: usize, const MIN: bool>(
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    unpack: impl Fn(*const u8) -> (int8x16_t, int8x16_t),
) -> [[f32; N]; R] {
    // Q8_1 is `d, s, qs`; Q8_0 is `d, qs`.
    let (x_bytes, x_qs) = if MIN {
        (Q8_1_BYTES, 4)
    } else {
        (Q8_0_BYTES, 2)
    };
    // SAFETY: every pointer below stays inside block `i < nb` of its row.
    unsafe {
        let zero_f = vdupq_n_f32(0.0);
        let mut acc = [[zero_f; N]; R];
        let mut mins = [[zero_f; N]; R];
        for i in 0..nb {
            // Every row pair's block, unpacked once for all tokens.
            let mut w = [[[vdupq_n_s8(0); 2]; 2]; R];
            let mut dw = [zero_f; R];
            let mut mw = [zero_f; R];
            for (p, a, b) in pairs(R) {
                let (wa, wb) = (wp[a].add(i * w_bytes), wp[b].add(i * w_bytes));
                let ((a0, a1), (b0, b1)) = (unpack(wa), unpack(wb));
                w[p] = [pair(a0, b0), pair(a1, b1)];
                dw[p] = per_row_f32(f16_at_ptr(wa), f16_at_ptr(wb));
                if MIN {
                    mw[p] = per_row_f32(f16_at_ptr(wa.add(2)), f16_at_ptr(wb.add(2)));
                }
            }
            for (q, t, u) in pairs(N) {
                let (xt, xu) = (xp[t].add(i * x_bytes), xp[u].add(i * x_bytes));
                let x = [0, 16].map(|o| pair(load_s8(xt.add(x_qs + o)), load_s8(xu.add(x_qs + o))));
                let dx = per_token_f32(f16_at_ptr(xt), f16_at_ptr(xu));
                for p in 0..R.div_ceil(2) {
                    let isum = smmla_pairs(vdupq_n_s32(0), &w[p], &x);
                    acc[p][q] = vfmaq_f32(acc[p][q], vcvtq_f32_s32(isum), vmulq_f32(dw[p], dx));
                }
                if MIN {
                    let sx = per_token_f32(f16_at_ptr(xt.add(2)), f16_at_ptr(xu.add(2)));
                    for p in 0..R.div_ceil(2) {
                        mins[p][q] = vaddq_f32(mins[p][q], vmulq_f32(mw[p], sx));
                    }
                }
            }
        }
        if MIN {
            for (acc, mins) in acc.iter_mut().zip(&mins) {
                for (acc, mins) in acc.iter_mut().zip(mins) {
                    *acc = vaddq_f32(*acc, *mins);
                }
            }
        }
        spread(&acc, f32_lanes)
    }
}

/// Q4_K and Q5_K as tiles (`unpack` as in [`k_with_mins`]): per super-block and output the
/// same exact integers as [`k_with_mins`], folded with the same [`KSum`] calls, so the
/// results are bit for bit the same. The sub-block scales multiply the 2×2 products as
/// `[s_a, s_a, s_b, s_b]` for rows `a`, `b`.
///
/// # Safety
///
/// The CPU must have `i8mm`; `wp[r]` must point to `nb` super-blocks of `w_bytes` bytes and
/// each `xp[t]` to `nb` Q8_K blocks.
#[inline(always)]
unsafe fn tile_k_with_mins<const R: usize, const N: usize>(
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
    w_bytes: usize,
    unpack: impl Fn(*const u8, usize) -> [int8x16_t; 4],
) -> [[f32; N]; R] {
    // SAFETY: every pointer below stays inside super-block `i < nb` of its row.
    unsafe {
        let mut sums = [[KSum::default(); N]; R];
        for i in 0..nb {
            let wb = wp.map(|w| w.add(i * w_bytes));
            let scales = wb.map(|b| k_scales_mins(&*b.add(K_SCALES).cast::<[u8; 12]>()));
            let mut acc = [[vdupq_n_s32(0); N]; R];
            for c in 0..4 {
                for (p, a, b) in pairs(R) {
                    let ([a0, a1, a2, a3], [b0, b1, b2, b3]) = (unpack(wb[a], c), unpack(wb[b], c));
                    let lo = [pair(a0, b0), pair(a1, b1)];
                    let hi = [pair(a2, b2), pair(a3, b3)];
                    let (sa, sb) = (&scales[a].0, &scales[b].0);
                    let s_lo = per_row_s32(i32::from(sa[2 * c]), i32::from(sb[2 * c]));
                    let s_hi = per_row_s32(i32::from(sa[2 * c + 1]), i32::from(sb[2 * c + 1]));
                    for (q, t, u) in pairs(N) {
                        let yt = xp[t].add(i * Q8_K_BYTES + Q8_K_QS + 64 * c);
                        let yu = xp[u].add(i * Q8_K_BYTES + Q8_K_QS + 64 * c);
                        let x =
                            [0, 16, 32, 48].map(|o| pair(load_s8(yt.add(o)), load_s8(yu.add(o))));
                        let p_lo = smmla_pairs(vdupq_n_s32(0), &lo, &x[..2]);
                        let p_hi = smmla_pairs(vdupq_n_s32(0), &hi, &x[2..]);
                        acc[p][q] = vmlaq_s32(vmlaq_s32(acc[p][q], p_lo, s_lo), p_hi, s_hi);
                    }
                }
            }
            let isum = spread(&acc, i32_lanes);
            for (r, sums) in sums.iter_mut().enumerate() {
                let mins = k_mins_s16(&scales[r].1);
                let (dw, dmin) = (f16_at_ptr(wb[r]), f16_at_ptr(wb[r].add(2)));
                for (t, sum) in sums.iter_mut().enumerate() {
                    let xb = xp[t].add(i * Q8_K_BYTES);
                    let dy = f32_at_ptr(xb);
                    sum.add(dw * dy, isum[r][t], dmin * dy, k_min_term(xb, mins));
                }
            }
        }
        sums.map(|s| s.map(KSum::total))
    }
}

/// Q6_K as tiles: the same exact integers per super-block and output as [`q6_k`], folded
/// with the same [`k_accumulate`] call (bit for bit the same results); each group of 16 is
/// two `SMMLA`s, scaled by `[s_a, s_a, s_b, s_b]`.
///
/// # Safety
///
/// The CPU must have `i8mm`; `wp[r]` must point to `nb` Q6_K super-blocks and each `xp[t]`
/// to `nb` Q8_K blocks.
#[inline(always)]
unsafe fn tile_q6_k<const R: usize, const N: usize>(
    wp: [*const u8; R],
    xp: [*const u8; N],
    nb: usize,
) -> [[f32; N]; R] {
    // SAFETY: every pointer below stays inside super-block `i < nb` of its row.
    unsafe {
        let mut sums = [[0.0f32; N]; R];
        for i in 0..nb {
            let wb = wp.map(|w| w.add(i * Q6_K_BYTES));
            let mut acc = [[vdupq_n_s32(0); N]; R];
            for half in 0..2 {
                for (p, a, b) in pairs(R) {
                    let (qa, qb) = (q6_k_values(wb[a], half), q6_k_values(wb[b], half));
                    let sa = &*wb[a].add(Q6_K_SCALES + 8 * half).cast::<[i8; 8]>();
                    let sb = &*wb[b].add(Q6_K_SCALES + 8 * half).cast::<[i8; 8]>();
                    // The row pair's groups and scales, once for all token pairs.
                    let w: [[int8x16_t; 2]; 8] = std::array::from_fn(|g| pair(qa[g], qb[g]));
                    let s: [int32x4_t; 8] =
                        std::array::from_fn(|g| per_row_s32(i32::from(sa[g]), i32::from(sb[g])));
                    for (q, t, u) in pairs(N) {
                        let yt = xp[t].add(i * Q8_K_BYTES + Q8_K_QS + 128 * half);
                        let yu = xp[u].add(i * Q8_K_BYTES + Q8_K_QS + 128 * half);
                        for g in 0..8 {
                            let x = pair(load_s8(yt.add(16 * g)), load_s8(yu.add(16 * g)));
                            let prod = smmla_pairs(vdupq_n_s32(0), &[w[g]], &[x]);
                            acc[p][q] = vmlaq_s32(acc[p][q], prod, s[g]);
                        }
                    }
                }
            }
            let isum = spread(&acc, i32_lanes);
            for (r, sums) in sums.iter_mut().enumerate() {
                let dw = f16_at_ptr(wb[r].add(Q6_K_D));
                for (t, sum) in sums.iter_mut().enumerate() {
                    let dy = f32_at_ptr(xp[t].add(i * Q8_K_BYTES));
                    *sum = k_accumulate(*sum, dw * dy, isum[r][t], 0.0, 0);
                }
            }
        }
        sums
    }
}
