//! aarch64 kernels: NEON, with and without the `dotprod` extension (`SDOT`).
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

// See x86.rs: needed for Rust 1.85, reported as unnecessary by newer compilers.
#![allow(unused_unsafe)]

use std::arch::aarch64::*;
use std::arch::asm;

use super::layout::*;
use crate::gguf::GgmlType;

/// Whether this CPU has the `dotprod` extension (detected at run time).
pub(super) fn dotprod_available() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `N` dot products of the weight row `w` (`nb` blocks of `ty`) with the activation rows `xs`, using
/// `SDOT` if `dotprod` is true.
///
/// # Panics
///
/// If `dotprod` is requested on a CPU without it, or the lengths do not match (see
/// [`check_dot_lengths`]).
pub(super) fn dot<const N: usize>(
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
            GgmlType::Q4_0 => signed_q8_0::<D, N>(wp, xp, nb, Q4_0_BYTES, |wb| {
                let (lo, hi) = nibbles(wb.add(2));
                let eight = vdupq_n_s8(8);
                (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
            }),
            GgmlType::Q5_0 => signed_q8_0::<D, N>(wp, xp, nb, Q5_0_BYTES, |wb| {
                let (lo, hi) = nibbles(wb.add(6));
                let (h_lo, h_hi) = fifth_bits(wb.add(2));
                let sixteen = vdupq_n_s8(16);
                (
                    vsubq_s8(vorrq_s8(lo, h_lo), sixteen),
                    vsubq_s8(vorrq_s8(hi, h_hi), sixteen),
                )
            }),
            GgmlType::Q8_0 => signed_q8_0::<D, N>(wp, xp, nb, Q8_0_BYTES, |wb| {
                (load_s8(wb.add(2)), load_s8(wb.add(18)))
            }),
            GgmlType::Q4_1 => {
                unsigned_q8_1::<D, N>(wp, xp, nb, Q4_1_BYTES, |wb| nibbles(wb.add(4)))
            }
            GgmlType::Q5_1 => unsigned_q8_1::<D, N>(wp, xp, nb, Q5_1_BYTES, |wb| {
                let (lo, hi) = nibbles(wb.add(8));
                let (h_lo, h_hi) = fifth_bits(wb.add(4));
                (vorrq_s8(lo, h_lo), vorrq_s8(hi, h_hi))
            }),
            GgmlType::Q4_K => k_with_mins::<D, N>(wp, xp, nb, Q4_K_BYTES, |wb, c| {
                let q0 = vld1q_u8(wb.add(Q4_K_QS + 32 * c));
                let q1 = vld1q_u8(wb.add(Q4_K_QS + 32 * c + 16));
                let m4 = vdupq_n_u8(0x0f);
                [
                    vreinterpretq_s8_u8(vandq_u8(q0, m4)),
                    vreinterpretq_s8_u8(vandq_u8(q1, m4)),
                    vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)),
                    vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)),
                ]
            }),
            GgmlType::Q5_K => k_with_mins::<D, N>(wp, xp, nb, Q5_K_BYTES, |wb, c| {
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
            }),
            GgmlType::Q6_K => q6_k::<D, N>(wp, xp, nb),
            other => unreachable!("check_dot_lengths accepted {other}"),
        }
    }
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

/// Armv8.2 `SDOT`: lane `i` gains `Σ a[4i..4i+4]·b[4i..4i+4]`.
struct Sdot;

impl Dot for Sdot {
    #[inline]
    #[target_feature(enable = "dotprod")]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: the caller guarantees `dotprod`; the instruction reads and writes only the
        // three vector registers named here.
        unsafe {
            asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }
}

// ----- helpers -----------------------------------------------------------------------------

/// Widens an IEEE half (given as bits) to f32 with `FCVT`, which is baseline aarch64 FP.
/// Exact for every input, subnormals included (Rust leaves flush-to-zero off).
#[inline(always)]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
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
            let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn.as_ptr())));
            let (dw, dmin) = (f16_at_ptr(wb), f16_at_ptr(wb.add(2)));
            for j in 0..N {
                let xb = xp[j].add(i * Q8_K_BYTES);
                let dy = f32_at_ptr(xb);
                // Block sums pairwise (one per 32-element sub-block) times the minimums.
                let pairs = vpaddq_s16(
                    load_s16(xb.add(Q8_K_BSUMS)),
                    load_s16(xb.add(Q8_K_BSUMS + 16)),
                );
                let m = vmull_s16(vget_low_s16(pairs), vget_low_s16(mins));
                let imin = vaddvq_s32(vmlal_high_s16(m, pairs, mins));
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
        let m4 = vdupq_n_u8(0x0f);
        let m2 = vdupq_n_u8(0x03);
        let m2_2 = vdupq_n_u8(0x0c);
        let m2_4 = vdupq_n_u8(0x30);
        let off = vdupq_n_s8(32);
        for i in 0..nb {
            let wb = wp.add(i * Q6_K_BYTES);
            let sc = &*wb.add(Q6_K_SCALES).cast::<[i8; 16]>();
            let mut acc = [vdupq_n_s32(0); N];
            for half in 0..2 {
                let ql = wb.add(64 * half);
                let (a0, a1) = (vld1q_u8(ql), vld1q_u8(ql.add(16)));
                let (b0, b1) = (vld1q_u8(ql.add(32)), vld1q_u8(ql.add(48)));
                let qh = wb.add(Q6_K_QH + 32 * half);
                let (h0, h1) = (vld1q_u8(qh), vld1q_u8(qh.add(16)));
                // Group g of this half = elements 16g..16g+16; see the module docs.
                let q = [
                    vorrq_u8(vandq_u8(a0, m4), vshlq_n_u8(vandq_u8(h0, m2), 4)),
                    vorrq_u8(vandq_u8(a1, m4), vshlq_n_u8(vandq_u8(h1, m2), 4)),
                    vorrq_u8(vandq_u8(b0, m4), vshlq_n_u8(vandq_u8(h0, m2_2), 2)),
                    vorrq_u8(vandq_u8(b1, m4), vshlq_n_u8(vandq_u8(h1, m2_2), 2)),
                    vorrq_u8(vshrq_n_u8(a0, 4), vandq_u8(h0, m2_4)),
                    vorrq_u8(vshrq_n_u8(a1, 4), vandq_u8(h1, m2_4)),
                    vorrq_u8(vshrq_n_u8(b0, 4), vandq_u8(vshrq_n_u8(h0, 2), m2_4)),
                    vorrq_u8(vshrq_n_u8(b1, 4), vandq_u8(vshrq_n_u8(h1, 2), m2_4)),
                ]
                .map(|v| vsubq_s8(vreinterpretq_s8_u8(v), off));
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
