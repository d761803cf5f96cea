//! Block sizes, byte offsets and the small decoding helpers every kernel shares.
//!
//! The offsets are those of ggml's `block_*` structs (see the module docs for the layouts);
//! everything is little-endian.

use crate::gguf::GgmlType;

/// Elements per block of the 32-element formats (`QK4_0` ... `QK8_1` in ggml).
pub(crate) const QK: usize = 32;
/// Elements per super-block of the k-quants (`QK_K` in ggml).
pub(crate) const QK_K: usize = 256;

/// Bytes per block of each format.
pub(crate) const Q4_0_BYTES: usize = 2 + 16;
pub(crate) const Q4_1_BYTES: usize = 2 + 2 + 16;
pub(crate) const Q5_0_BYTES: usize = 2 + 4 + 16;
pub(crate) const Q5_1_BYTES: usize = 2 + 2 + 4 + 16;
pub(crate) const Q8_0_BYTES: usize = 2 + 32;
pub(crate) const Q8_1_BYTES: usize = 2 + 2 + 32;
pub(crate) const Q4_K_BYTES: usize = 2 + 2 + 12 + 128;
pub(crate) const Q5_K_BYTES: usize = 2 + 2 + 12 + 32 + 128;
pub(crate) const Q6_K_BYTES: usize = 128 + 64 + 16 + 2;
pub(crate) const Q8_K_BYTES: usize = 4 + 256 + 2 * 16;

/// Offsets inside a Q4_K / Q5_K super-block.
pub(crate) const K_SCALES: usize = 4;
pub(crate) const Q4_K_QS: usize = 16;
pub(crate) const Q5_K_QH: usize = 16;
pub(crate) const Q5_K_QS: usize = 48;
/// Offsets inside a Q6_K super-block.
pub(crate) const Q6_K_QH: usize = 128;
pub(crate) const Q6_K_SCALES: usize = 192;
pub(crate) const Q6_K_D: usize = 208;
/// Offsets inside a Q8_K super-block.
pub(crate) const Q8_K_QS: usize = 4;
pub(crate) const Q8_K_BSUMS: usize = 260;

/// The weight types the kernels handle, in GGUF id order.
pub const WEIGHT_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The activation format a weight type is multiplied with, as in ggml's CPU backend
/// (`type_traits_cpu[..].vec_dot_type`), or `None` if there is no kernel for `ty`.
pub fn activation_type(ty: GgmlType) -> Option<GgmlType> {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => Some(GgmlType::Q8_0),
        GgmlType::Q4_1 | GgmlType::Q5_1 => Some(GgmlType::Q8_1),
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Some(GgmlType::Q8_K),
        _ => None,
    }
}

/// `(elements per block, bytes per block)` of a type this module reads.
pub(crate) fn block_shape(ty: GgmlType) -> (usize, usize) {
    // GgmlType's own layout table is the single source of truth; the constants above must
    // agree with it (checked by a unit test).
    let block = usize::try_from(ty.block_size()).unwrap_or(usize::MAX);
    let bytes = usize::try_from(ty.type_size()).unwrap_or(usize::MAX);
    (block, bytes)
}

/// Checks that one weight row and `N` activation rows of type `ty` hold exactly `nb`
/// blocks each.
///
/// # Panics
///
/// If `ty` has no kernel, or a length does not match. The SIMD kernels read exactly `nb`
/// blocks from every slice, so this check is what makes them memory-safe.
#[inline]
pub(crate) fn check_dot_lengths<const N: usize>(
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    xs: &[&[u8]; N],
) {
    let act =
        activation_type(ty).unwrap_or_else(|| panic!("no quantized dot-product kernel for {ty}"));
    let (_, w_bytes) = block_shape(ty);
    let (_, a_bytes) = block_shape(act);
    assert!(
        nb.checked_mul(w_bytes) == Some(w.len()),
        "{ty} weight row of {} bytes is not {nb} blocks of {w_bytes} bytes",
        w.len()
    );
    for x in xs {
        assert!(
            nb.checked_mul(a_bytes) == Some(x.len()),
            "{act} activation row of {} bytes is not {nb} blocks of {a_bytes} bytes (to match \
             the {ty} weight row)",
            x.len(),
        );
    }
}

/// Checks a tile of `R` weight rows × `N` activation rows of type `ty` (every weight row as
/// [`check_dot_lengths`] does) and returns their start pointers, for the kernels that read
/// `nb` blocks from each.
///
/// # Panics
///
/// As [`check_dot_lengths`].
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn check_tile_lengths<const R: usize, const N: usize>(
    ty: GgmlType,
    nb: usize,
    ws: &[&[u8]; R],
    xs: &[&[u8]; N],
) -> ([*const u8; R], [*const u8; N]) {
    for w in ws {
        check_dot_lengths(ty, nb, w, xs);
    }
    (ws.map(<[u8]>::as_ptr), xs.map(<[u8]>::as_ptr))
}

/// Reads a little-endian `u16`.
#[inline(always)]
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Reads a little-endian `f32`.
#[inline(always)]
pub(crate) fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a little-endian `i16`.
#[inline(always)]
pub(crate) fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_le_bytes([b[at], b[at + 1]])
}

/// Reads an IEEE half-precision value and widens it (exactly) to `f32`.
///
/// This is the reference conversion (the `half` crate); the SIMD paths use the hardware
/// instruction, which gives identical results (tested).
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16_at(b, at)).to_f32()
}

/// Decodes the 12 packed bytes of a Q4_K / Q5_K super-block into eight 6-bit sub-block scales
/// and eight 6-bit sub-block minimums.
///
/// Bytes 0-3 hold scales 0-3 in their low six bits, bytes 4-7 mins 0-3 likewise; bytes 8-11
/// hold scales 4-7 in their low nibbles and mins 4-7 in their high nibbles, and the top two
/// bits of bytes 0-3 / 4-7 are the high bits of scales 4-7 / mins 4-7.
///
/// Done four bytes at a time: with the little-endian words `a`, `b`, `c` of bytes 0-3, 4-7,
/// 8-11, scales 0-3 are `a & 0x3f..`, minimums 0-3 `b & 0x3f..`, scales 4-7
/// `(c & 0x0f..) | ((a >> 6) & 0x03..) << 4` and minimums 4-7
/// `((c >> 4) & 0x0f..) | ((b >> 6) & 0x03..) << 4` (bits shifted in from the neighbouring
/// byte are masked off).
#[inline(always)]
pub(crate) fn k_scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let sc_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let mn_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
    let join = |lo: u32, hi: u32| (u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes();
    (join(a & LOW6, sc_hi), join(b & LOW6, mn_hi))
}

/// The 12 scale bytes of the Q4_K / Q5_K super-block starting at `b[0]`.
#[inline(always)]
pub(crate) fn k_scale_bytes(b: &[u8]) -> &[u8; 12] {
    b[K_SCALES..K_SCALES + 12]
        .try_into()
        .expect("slice of length 12")
}

/// Folds one k-quant super-block into the running sum, the same way in every code path so
/// that all paths agree bit for bit: `sum + (d·isum − dmin·imin)`, where `d` and `dmin` are
/// the weight's super-block scales times the activation scale, `isum` is the exact integer
/// dot product with the sub-block scales applied and `imin` the exact integer minimum term.
/// (Q6_K; Q4_K and Q5_K use [`KSum`].)
#[inline(always)]
pub(crate) fn k_accumulate(sum: f32, d: f32, isum: i32, dmin: f32, imin: i32) -> f32 {
    sum + (d * isum as f32 - dmin * imin as f32)
}

/// The running sums of a Q4_K / Q5_K dot product, kept the same way in every code path so
/// that all paths agree bit for bit, in the order of llama.cpp's x86 kernels for Q4_K
/// (the AVX2 GEMV/GEMM over rows repacked eight at a time, `q4_K_8x8_q8_K`, which it uses for
/// every batch size): per super-block one fused multiply-add of the exact integer dot product
/// `isum` into `acc` with `d_w·d_x`, and one of the exact integer minimum term `imin` into
/// `min` with `dmin_w·d_x`; the result is `acc − min`.
#[derive(Clone, Copy, Default)]
pub(crate) struct KSum {
    acc: f32,
    min: f32,
}

impl KSum {
    /// Folds in one super-block (`d`, `dmin`: the weight's scales times the activation's).
    #[inline(always)]
    pub(crate) fn add(&mut self, d: f32, isum: i32, dmin: f32, imin: i32) {
        self.acc = (isum as f32).mul_add(d, self.acc);
        self.min = (imin as f32).mul_add(dmin, self.min);
    }

    /// Folds in one super-block in the order of llama.cpp's x86 repacked Q4_K GEMM (four
    /// activation rows at a time): one fused multiply-add per 64-element chunk `c` of the
    /// chunk's integer dot product `isum[c]` and minimum term `imin[c]`.
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the AVX2 kernel tiles
    pub(crate) fn add_chunks(&mut self, d: f32, isum: [i32; 4], dmin: f32, imin: [i32; 4]) {
        for c in 0..4 {
            self.acc = (isum[c] as f32).mul_add(d, self.acc);
            self.min = (imin[c] as f32).mul_add(dmin, self.min);
        }
    }

    /// The dot product.
    #[inline(always)]
    pub(crate) fn total(self) -> f32 {
        self.acc - self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_agree_with_gguf_layout_table() {
        for (ty, bytes) in [
            (GgmlType::Q4_0, Q4_0_BYTES),
            (GgmlType::Q4_1, Q4_1_BYTES),
            (GgmlType::Q5_0, Q5_0_BYTES),
            (GgmlType::Q5_1, Q5_1_BYTES),
            (GgmlType::Q8_0, Q8_0_BYTES),
            (GgmlType::Q8_1, Q8_1_BYTES),
            (GgmlType::Q4_K, Q4_K_BYTES),
            (GgmlType::Q5_K, Q5_K_BYTES),
            (GgmlType::Q6_K, Q6_K_BYTES),
            (GgmlType::Q8_K, Q8_K_BYTES),
        ] {
            let block = if ty.block_size() == 32 { QK } else { QK_K };
            assert_eq!(block_shape(ty), (block, bytes), "{ty}");
        }
    }

    #[test]
    fn k_scales_match_ggml_get_scale_min_k4() {
        // ggml's definition, transcribed per index.
        fn reference(j: usize, q: &[u8; 12]) -> (u8, u8) {
            if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            }
        }
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..1000 {
            let mut q = [0u8; 12];
            for b in &mut q {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let (sc, mn) = k_scales_mins(&q);
            for j in 0..8 {
                assert_eq!((sc[j], mn[j]), reference(j, &q));
            }
        }
    }
}
