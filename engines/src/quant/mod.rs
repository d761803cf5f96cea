//! Quantized dot products and matrix-vector kernels that read GGUF blocks in place.
//!
//! The LLM engine keeps its weights in the memory-mapped GGUF file and multiplies them
//! without ever making a dequantized copy: [`QMatrix`] borrows a tensor's bytes from the
//! mapping ([`TensorView::bytes`]), and the kernels unpack one block at a time into
//! registers. Activations are quantized once per token to an 8-bit format
//! ([`quantize_activation`]) and dotted against every weight row with integer arithmetic,
//! as in ggml's CPU backend.
//!
//! # Block layouts
//!
//! All multi-byte fields are little-endian; `f16` is IEEE half precision. A row of `cols`
//! elements is `cols / block` consecutive blocks, and a matrix is `rows` consecutive rows.
//!
//! | type | block | bytes | layout (in order) | value of element `i` |
//! |---|---|---|---|---|
//! | Q4_0 | 32 | 18 | `d: f16`, `qs: [u8; 16]` | `d·(q_i − 8)` |
//! | Q4_1 | 32 | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]` | `d·q_i + m` |
//! | Q5_0 | 32 | 22 | `d: f16`, `qh: [u8; 4]`, `qs: [u8; 16]` | `d·(q_i − 16)` |
//! | Q5_1 | 32 | 24 | `d: f16`, `m: f16`, `qh: [u8; 4]`, `qs: [u8; 16]` | `d·q_i + m` |
//! | Q8_0 | 32 | 34 | `d: f16`, `qs: [i8; 32]` | `d·q_i` |
//! | Q8_1 | 32 | 36 | `d: f16`, `s: f16`, `qs: [i8; 32]` | `d·q_i` (and `s = d·Σq`) |
//! | Q4_K | 256 | 144 | `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qs: [u8; 128]` | `d·sc_s·q_i − dmin·m_s` |
//! | Q5_K | 256 | 176 | `d`, `dmin`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]` | `d·sc_s·q_i − dmin·m_s` |
//! | Q6_K | 256 | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16` | `d·sc_g·(q_i − 32)` |
//! | Q8_K | 256 | 292 | `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` | `d·q_i` (and `bsums_g = Σ` of group g) |
//!
//! - **4-bit, 32-element blocks** (Q4_0, Q4_1): element `j < 16` is the low nibble of
//!   `qs[j]`, element `j + 16` its high nibble.
//! - **5-bit** (Q5_0, Q5_1): the nibbles as above, and bit `i` of the 32-bit word `qh` is the
//!   fifth (high) bit of element `i`.
//! - **Q4_K**: eight sub-blocks of 32, each with a 6-bit scale `sc_s` and 6-bit minimum `m_s`
//!   packed into `scales` (bytes 0-3: scales 0-3 in the low six bits; bytes 4-7: minimums
//!   0-3; bytes 8-11: low nibble = low four bits of scale 4-7, high nibble = of minimum 4-7;
//!   the top two bits of bytes 0-3 and 4-7 are the high bits of scales 4-7 and minimums 4-7).
//!   `qs` is four 32-byte chunks, chunk `c` holding sub-block `2c` in its low nibbles and
//!   sub-block `2c + 1` in its high nibbles.
//! - **Q5_K**: as Q4_K, plus bit `s` of `qh[l]` is the fifth bit of element `l` of sub-block
//!   `s`.
//! - **Q6_K**: sixteen groups of 16 with signed 8-bit scales. Each half of 128 elements uses
//!   64 bytes of `ql` and 32 of `qh`: for `l < 32`, elements `l`, `l+32`, `l+64`, `l+96` are
//!   the low nibble of `ql[l]`, low nibble of `ql[l+32]`, high nibble of `ql[l]`, high nibble
//!   of `ql[l+32]`, each with bits 0-1, 2-3, 4-5, 6-7 of `qh[l]` as its bits 4-5.
//! - **Q8_K** exists only as an activation format: `d` is f32, and `bsums` holds the sums of
//!   the 16 groups of 16 quants, which the kernels use instead of re-adding activations.
//!
//! # Which activation format each weight type pairs with
//!
//! As in ggml (`type_traits_cpu[..].vec_dot_type`), see [`activation_type`]:
//!
//! | weights | activations | why |
//! |---|---|---|
//! | Q4_0, Q5_0, Q8_0 | Q8_0 | Symmetric weights: `Σ w·x = d_w·d_x·Σ q_w·q_x`, one integer dot per block. |
//! | Q4_1, Q5_1 | Q8_1 | Weights have an offset `m`: `Σ (d_w·q_w + m)·x = d_w·d_x·Σ q_w·q_x + m·Σ x`. Q8_1 carries `s = d_x·Σ q_x` precomputed, so the offset costs one multiply per block instead of a second pass over `x`. |
//! | Q4_K, Q5_K | Q8_K | Super-blocks of 256 need 256-element activation blocks; the per-sub-block minimum terms `m_s·Σ x` come from `bsums`; the f32 scale avoids rounding `d_x` to f16. |
//! | Q6_K | Q8_K | Same block size; the x86 kernel also uses `bsums` for the −32 offset. |
//!
//! # Kernels and accuracy
//!
//! [`Kernel`] names the implementations: [`Kernel::Scalar`] (portable reference),
//! [`Kernel::Avx2`] (x86_64 with AVX2, FMA, F16C), [`Kernel::Avx512Vnni`] (x86_64 with
//! AVX-512 F/BW/VL/VNNI as well: 256-bit `vpdpbusd`/`vpdpwssd` on tiles of four weight rows ×
//! four tokens, bit for bit the AVX2 results), [`Kernel::Neon`] (aarch64 baseline, e.g.
//! Raspberry Pi 4's Cortex-A72), [`Kernel::NeonDotprod`] (aarch64 with `SDOT`, e.g. Pi 5,
//! Jetson Orin) and [`Kernel::NeonI8mm`] (aarch64 with `i8mm` as well: `SMMLA` on tiles of
//! four weight rows × up to four tokens for prefill, `SDOT` for one token; for newer cores
//! such as Cortex-A710/X2/A720, Neoverse N2/V1 and Graviton 3, not Pi 5's Cortex-A76 or Jetson
//! Orin's A78AE; tested under qemu only, no i8mm hardware has run it, so nothing is known of its
//! speed). [`Kernel::best`] picks one by **run-time** feature detection, never from
//! compile-time flags, so one aarch64 binary runs on cores with and without `dotprod`/`i8mm`.
//!
//! All paths compute the integer part of every block exactly. For the k-quants they also
//! reduce each super-block to one integer and fold it into the float sum the same way, so
//! every path returns bit-identical results (the `SMMLA` tiles included). For the 32-element
//! formats the SIMD paths accumulate in vector lanes (as ggml does; the `SMMLA` tiles, as
//! llama.cpp's i8mm kernels, in one f32 lane per output, so their tiles round differently
//! from their one-row products); they differ from the scalar reference only by float
//! rounding (tested to within 1e-5 of `Σ|w_i·x_i|` plus the minimum terms; observed 7e-8). When this module was written, dequantization and the activation quantizers were
//! also compared with ggml's own C reference functions on the same random blocks (identical
//! bytes and bits), and the dot products with ggml's generic ones (within 7e-8 of
//! `Σ|w_i·x_i|`); that comparison needs a C build of ggml and is not part of the tests.
//!
//! Activations must hold quants in −127..=127, which the quantizers here guarantee (ggml's
//! too): the x86 sign trick cannot represent −(−128). Q8_K's `bsums` must be the sums of its
//! quants, as [`quantize_row_q8_k`] writes them.
//!
//! # Threads
//!
//! [`QMatrix::matvec`] and [`QMatrix::matmul`] split the rows into contiguous ranges, one per
//! thread, under `std::thread::scope`; the calling thread takes the first range. Starting a
//! thread costs tens of microseconds, so small products use fewer threads (see
//! [`MIN_BYTES_PER_THREAD`]). Each output value is computed by one thread in a fixed order,
//! so results do not depend on the thread count (with a kernel that tiles weight rows, the
//! ranges are whole tiles, so the same rows are tiled whatever the thread count).
//!
//! # Example
//!
//! ```no_run
//! use sotad_engines::gguf::GgufFile;
//! use sotad_engines::quant::QMatrix;
//!
//! # fn main() -> sotad_engines::Result<()> {
//! let file = GgufFile::open("smollm2-135m-instruct-q4_1.gguf")?;
//! let wq = file.tensor("blk.0.attn_q.weight")?;
//! let m = QMatrix::from_tensor(&wq)?;          // borrows the mapping, validated
//! let x = vec![0.5f32; m.cols()];
//! let xq = m.quantize_activation(&x)?;         // Q8_1 for these Q4_1 weights
//! let mut out = vec![0.0f32; m.rows()];
//! m.matvec(&xq, &mut out, 2)?;                 // two threads
//! # Ok(())
//! # }
//! ```
//!
//! [`TensorView::bytes`]: crate::gguf::TensorView::bytes

mod error;
mod layout;
mod matrix;
mod quantize;
mod scalar;

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::fmt;

#[cfg(target_arch = "aarch64")]
use self::arm::neon;
#[cfg(target_arch = "x86_64")]
use self::x86::{avx2, avx2_prefill, avx512_vnni};

pub use self::error::{QuantError, QuantErrorKind};
pub use self::layout::{WEIGHT_TYPES, activation_type};
pub use self::matrix::{MIN_BYTES_PER_THREAD, QMatrix, matmul, matvec};

use crate::error::Result;
use crate::gguf::GgmlType;

/// An implementation of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive] // later: SVE, AVX-VNNI without AVX-512
pub enum Kernel {
    /// Portable scalar code: the reference.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// x86_64 with AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI: 256-bit `vpdpbusd`/`vpdpwssd`,
    /// tiles of several weight rows; results bit for bit those of [`Kernel::Avx2`].
    Avx512Vnni,
    /// aarch64 NEON without the `dotprod` extension (widening multiplies).
    Neon,
    /// aarch64 NEON with `dotprod` (`SDOT`).
    NeonDotprod,
    /// aarch64 NEON with `i8mm` (`SMMLA`) for tiles of several weight rows × several tokens
    /// (prefill), and `SDOT` as [`Kernel::NeonDotprod`] for one token or one row. The
    /// k-quants are bit for bit those of [`Kernel::NeonDotprod`]; the 32-element formats
    /// differ from them by float rounding only.
    NeonI8mm,
}

impl Kernel {
    /// Every kernel, fastest last.
    pub const ALL: [Kernel; 6] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::NeonDotprod,
        Kernel::NeonI8mm,
    ];

    /// Whether this kernel can run on this CPU (run-time detection).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => avx512_vnni::available(),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDotprod => neon::dotprod_available(),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonI8mm => neon::i8mm_available(),
            #[allow(unreachable_patterns)] // which arms remain depends on the target
            _ => false,
        }
    }

    /// The kernels this CPU can run, the reference first and the fastest last.
    pub fn available() -> Vec<Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        Self::ALL
            .into_iter()
            .rev()
            .find(|k| k.is_available())
            .unwrap_or(Kernel::Scalar)
    }

    /// A short name: `scalar`, `avx2`, `avx512-vnni`, `neon`, `neon-dotprod`, `neon-i8mm`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Neon => "neon",
            Kernel::NeonDotprod => "neon-dotprod",
            Kernel::NeonI8mm => "neon-i8mm",
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ----- sizes -------------------------------------------------------------------------------

/// Bytes of one row of `cols` elements of a quantized type, checking the block size.
pub fn row_bytes(ty: GgmlType, cols: usize) -> Result<usize> {
    let (block, bytes) = layout::block_shape(ty);
    if cols % block != 0 {
        return Err(QuantErrorKind::PartialBlock {
            ty,
            cols,
            block_size: block,
        }
        .into());
    }
    Ok(cols / block * bytes)
}

// ----- dequantization and activation quantization ------------------------------------------

/// Dequantizes one row (or any whole number of blocks) of `ty` into `out`, as ggml's
/// `dequantize_row_*` do. Supports every weight type, the activation formats (Q8_0, Q8_1,
/// Q8_K), F32 and F16.
///
/// `bytes` must be exactly the encoding of `out.len()` elements.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let supported = WEIGHT_TYPES.contains(&ty)
        || matches!(
            ty,
            GgmlType::Q8_1 | GgmlType::Q8_K | GgmlType::F32 | GgmlType::F16
        );
    if !supported {
        return Err(QuantErrorKind::UnsupportedType {
            ty,
            role: "dequantization input",
        }
        .into());
    }
    let expected = row_bytes(ty, out.len())?;
    if bytes.len() != expected {
        return Err(QuantErrorKind::WrongLength {
            what: format!("{ty} data for {} elements", out.len()),
            expected,
            found: bytes.len(),
        }
        .into());
    }
    scalar::dequantize(ty, bytes, out);
    Ok(())
}

/// Quantizes an f32 row to Q8_0 (ggml's aarch64 rounding; see [`quantize_activation`]).
///
/// # Panics
///
/// If `x.len()` is not a multiple of 32.
pub fn quantize_row_q8_0(x: &[f32]) -> Vec<u8> {
    quantize_or_panic(GgmlType::Q8_0, x)
}

/// Quantizes an f32 row to Q8_1 (Q8_0 plus the f16 block sum `s = d·Σq`).
///
/// # Panics
///
/// If `x.len()` is not a multiple of 32.
pub fn quantize_row_q8_1(x: &[f32]) -> Vec<u8> {
    quantize_or_panic(GgmlType::Q8_1, x)
}

/// Quantizes an f32 row to Q8_K (ggml's `quantize_row_q8_K_ref`).
///
/// # Panics
///
/// If `x.len()` is not a multiple of 256.
pub fn quantize_row_q8_k(x: &[f32]) -> Vec<u8> {
    quantize_or_panic(GgmlType::Q8_K, x)
}

fn quantize_or_panic(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = quantize_activation_into(ty, x, &mut out) {
        panic!("{e}");
    }
    out
}

/// The quantizer of an activation encoding (Q8_0, Q8_1, Q8_K).
fn activation_quantizer(ty: GgmlType) -> Result<fn(&[f32], &mut [u8])> {
    Ok(match ty {
        GgmlType::Q8_0 => quantize::q8_0_into,
        GgmlType::Q8_1 => quantize::q8_1_into,
        GgmlType::Q8_K => quantize::q8_k_into,
        _ => {
            return Err(QuantErrorKind::UnsupportedType {
                ty,
                role: "activations",
            }
            .into());
        }
    })
}
/// Quantizes `x` (one or more rows, concatenated) to the activation format `ty` (Q8_0, Q8_1
/// or Q8_K), replacing the contents of `out`, which is reused to avoid allocating per token.
///
/// Rounding follows ggml: Q8_0 and Q8_1 as ggml's aarch64 backend (`d = amax/127`,
/// `q = round_half_even(x/d)`), Q8_K as `quantize_row_q8_K_ref`. See the source for the
/// small differences between ggml's own platforms.
pub fn quantize_activation_into(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    let quantize = activation_quantizer(ty)?;
    let len = row_bytes(ty, x.len())?;
    out.clear();
    out.resize(len, 0);
    quantize(x, out);
    Ok(())
}

/// As [`quantize_activation_into`], into `out`, which must be exactly the encoding's length
/// (for splitting the rows of a batch between threads).
pub fn quantize_activation_to(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    let quantize = activation_quantizer(ty)?;
    let len = row_bytes(ty, x.len())?;
    if out.len() != len {
        return Err(QuantErrorKind::WrongLength {
            what: format!("{ty} output for {} elements", x.len()),
            expected: len,
            found: out.len(),
        }
        .into());
    }
    quantize(x, out);
    Ok(())
}

/// Quantizes weights (one or more rows, concatenated) to `ty`: any of [`WEIGHT_TYPES`]
/// (round to nearest per block; see the source for how the k-quants choose their scales).
pub fn quantize_weights(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let quantize: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::Q4_0 => quantize::q4_0_into,
        GgmlType::Q4_1 => quantize::q4_1_into,
        GgmlType::Q5_0 => quantize::q5_0_into,
        GgmlType::Q5_1 => quantize::q5_1_into,
        GgmlType::Q8_0 => quantize::q8_0_into,
        GgmlType::Q4_K => quantize::q4_k_into,
        GgmlType::Q5_K => quantize::q5_k_into,
        GgmlType::Q6_K => quantize::q6_k_into,
        _ => {
            return Err(QuantErrorKind::UnsupportedType {
                ty,
                role: "weights",
            }
            .into());
        }
    };
    let mut out = vec![0u8; row_bytes(ty, x.len())?];
    quantize(x, &mut out);
    Ok(out)
}

/// Quantizes `x` to the activation format `ty` (Q8_0, Q8_1 or Q8_K).
pub fn quantize_activation(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    quantize_activation_into(ty, x, &mut out)?;
    Ok(out)
}

// ----- dot products ------------------------------------------------------------------------

/// The dot product of one weight row of type `ty` with one activation row of
/// [`activation_type`]`(ty)`, both in ggml's block layout, with the fastest kernel.
///
/// # Panics
///
/// If `ty` has no kernel or the two rows do not hold the same number of whole blocks.
pub fn vec_dot(ty: GgmlType, w: &[u8], x: &[u8]) -> f32 {
    vec_dot_with(Kernel::best(), ty, w, x)
}

/// As [`vec_dot`], with a chosen kernel (for tests and benchmarks).
///
/// # Panics
///
/// As [`vec_dot`], and if `kernel` is not available on this CPU.
pub fn vec_dot_with(kernel: Kernel, ty: GgmlType, w: &[u8], x: &[u8]) -> f32 {
    let [v] = dot_n(kernel, ty, blocks_of(ty, w), w, [x]);
    v
}

/// The number of whole blocks in a weight row (checked again by the kernels).
fn blocks_of(ty: GgmlType, w: &[u8]) -> usize {
    let (_, bytes) = layout::block_shape(ty);
    w.len() / bytes.max(1)
}

/// `N` dot products of the weight row `w` (`nb` blocks of `ty`) with activation rows `xs`.
///
/// # Panics
///
/// If the lengths do not match `nb` blocks, `ty` has no kernel, or `kernel` is not available.
pub(crate) fn dot_n<const N: usize>(
    kernel: Kernel,
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    xs: [&[u8]; N],
) -> [f32; N] {
    match kernel {
        Kernel::Scalar => {
            layout::check_dot_lengths(ty, nb, w, &xs);
            xs.map(|x| scalar::dot(ty, w, x))
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::dot(ty, nb, w, xs),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => {
            let [v] = avx512_vnni::dot_tile::<1, N>(ty, nb, [w], xs);
            v
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => neon::dot(false, ty, nb, w, xs),
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDotprod | Kernel::NeonI8mm => neon::dot(true, ty, nb, w, xs),
        #[allow(unreachable_patterns)] // which arms remain depends on the target
        other => panic!("the {other} kernels do not exist on this architecture"),
    }
}

/// Whether [`dot_tile`] computes several weight rows at once with `kernel` (otherwise it is
/// [`dot_n`] row by row, and callers may as well loop over rows themselves).
pub(crate) fn tiles_rows(kernel: Kernel) -> bool {
    matches!(kernel, Kernel::Avx512Vnni | Kernel::NeonI8mm)
}

/// The `R` × `N` dot products of the weight rows `ws` (`nb` blocks of `ty` each) with the
/// activation rows `xs`: `out[r][t] = ws[r] · xs[t]`, the same values as [`dot_n`] per row
/// (with [`Kernel::NeonI8mm`] and a 32-element format: up to float rounding).
///
/// # Panics
///
/// As [`dot_n`].
pub(crate) fn dot_tile<const R: usize, const N: usize>(
    kernel: Kernel,
    ty: GgmlType,
    nb: usize,
    ws: [&[u8]; R],
    xs: [&[u8]; N],
) -> [[f32; N]; R] {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => avx512_vnni::dot_tile(ty, nb, ws, xs),
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonI8mm => neon::dot_tile_i8mm(ty, nb, ws, xs),
        _ => ws.map(|w| dot_n(kernel, ty, nb, w, xs)),
    }
}

/// `outs[t][r] = w_r · xs[t]` for the consecutive weight rows in `w` (`nb` blocks of `ty`
/// each, as many as each `outs[t]` has elements), if `kernel` has a whole-product kernel for
/// `ty` that beats calling [`dot_n`] tile by tile; returns whether it did. The results are
/// bit for bit those of [`dot_n`].
///
/// # Panics
///
/// As [`dot_n`], and if the lengths of `w`, `xs` and `outs` disagree.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // only x86 has such kernels
pub(crate) fn matmul_rows(
    kernel: Kernel,
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
) -> bool {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if avx2_prefill::has_matmul(ty) => {
            avx2_prefill::matmul(ty, nb, w, xs, outs);
            true
        }
        _ => false,
    }
}

/// `out[r] = w_r · x` for the consecutive weight rows in `w` (`nb` blocks of `ty` each, as
/// many rows as `out` has elements) and one activation row `x`.
///
/// # Panics
///
/// As [`dot_n`], and if `w` is not `out.len()` rows of `nb` blocks.
pub(crate) fn dot_rows(
    kernel: Kernel,
    ty: GgmlType,
    nb: usize,
    w: &[u8],
    x: &[u8],
    out: &mut [f32],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::dot_rows(ty, nb, w, x, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => avx512_vnni::dot_rows(ty, nb, w, x, out),
        _ => {
            let row_bytes = w.len() / out.len().max(1);
            for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes.max(1))) {
                let [v] = dot_n(kernel, ty, nb, row, [x]);
                *o = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_kernel_is_available() {
        assert!(Kernel::best().is_available());
        assert_eq!(Kernel::available().first(), Some(&Kernel::Scalar));
        assert_eq!(Kernel::available().last(), Some(&Kernel::best()));
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn fcvt_widening_matches_the_half_crate_for_every_f16() {
        for bits in 0..=u16::MAX {
            let reference = half::f16::from_bits(bits).to_f32();
            let fast = neon::f16_to_f32(bits);
            if reference.is_nan() {
                assert!(fast.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(fast.to_bits(), reference.to_bits(), "{bits:#06x}");
            }
        }
    }
}
