//! ggml tensor types and GGUF metadata value types.

use std::fmt;

use crate::error::GgufErrorKind;

/// Elements per block of the "k-quant" types (`QK_K` in ggml).
pub const QK_K: u64 = 256;

/// A ggml tensor element type that this crate can read.
///
/// The discriminant is the numeric id used in GGUF files. Types that exist in ggml but are
/// not supported here (the `IQ*` family, `TQ*`, `MXFP4`, and the repacked types that were
/// removed from GGUF) are recognised by [`GgmlType::from_id`], which reports them as
/// "unsupported quant type NAME (id N)" instead of as garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)] // ggml's own names, as printed by llama.cpp tools
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE float.
    F16 = 1,
    /// 4-bit, blocks of 32 with an f16 scale.
    Q4_0 = 2,
    /// 4-bit, blocks of 32 with f16 scale and minimum.
    Q4_1 = 3,
    /// 5-bit, blocks of 32 with an f16 scale.
    Q5_0 = 6,
    /// 5-bit, blocks of 32 with f16 scale and minimum.
    Q5_1 = 7,
    /// 8-bit, blocks of 32 with an f16 scale.
    Q8_0 = 8,
    /// 8-bit, blocks of 32 with f16 scale and sum (used for activations).
    Q8_1 = 9,
    /// 2-bit k-quant, super-blocks of 256.
    Q2_K = 10,
    /// 3-bit k-quant, super-blocks of 256.
    Q3_K = 11,
    /// 4-bit k-quant, super-blocks of 256.
    Q4_K = 12,
    /// 5-bit k-quant, super-blocks of 256.
    Q5_K = 13,
    /// 6-bit k-quant, super-blocks of 256.
    Q6_K = 14,
    /// 8-bit k-quant, super-blocks of 256 (used for activations).
    Q8_K = 15,
    /// 8-bit signed integer.
    I8 = 24,
    /// 16-bit signed integer.
    I16 = 25,
    /// 32-bit signed integer.
    I32 = 26,
    /// 64-bit signed integer.
    I64 = 27,
    /// 64-bit IEEE float.
    F64 = 28,
    /// bfloat16.
    BF16 = 30,
}

/// ggml types that exist (or existed) but are not supported here, with their ids.
const UNSUPPORTED: &[(u32, &str)] = &[
    (4, "Q4_2 (removed from ggml)"),
    (5, "Q4_3 (removed from ggml)"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (29, "IQ1_M"),
    (31, "Q4_0_4_4 (removed from GGUF)"),
    (32, "Q4_0_4_8 (removed from GGUF)"),
    (33, "Q4_0_8_8 (removed from GGUF)"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (36, "IQ4_NL_4_4 (removed from GGUF)"),
    (37, "IQ4_NL_4_8 (removed from GGUF)"),
    (38, "IQ4_NL_8_8 (removed from GGUF)"),
    (39, "MXFP4"),
    (40, "NVFP4"),
    (41, "Q1_0"),
    (42, "Q2_0"),
];

impl GgmlType {
    /// Every supported type, in id order.
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
    ];

    /// Looks up a type by its GGUF id.
    ///
    /// Fails with [`GgufErrorKind::UnsupportedType`] for ids that ggml defines (or once
    /// defined) but this crate cannot read, and [`GgufErrorKind::UnknownType`] otherwise.
    pub fn from_id(id: u32) -> Result<Self, GgufErrorKind> {
        if let Some(ty) = Self::ALL.iter().copied().find(|t| t.id() == id) {
            return Ok(ty);
        }
        match UNSUPPORTED.iter().find(|(i, _)| *i == id) {
            Some(&(id, name)) => Err(GgufErrorKind::UnsupportedType { name, id }),
            None => Err(GgufErrorKind::UnknownType { id }),
        }
    }

    /// The numeric id used in GGUF files.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type, e.g. `"Q4_K"`.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::I8 => "I8",
            GgmlType::I16 => "I16",
            GgmlType::I32 => "I32",
            GgmlType::I64 => "I64",
            GgmlType::F64 => "F64",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Number of elements in one block (1 for plain types, 32 or 256 for quantised ones).
    pub fn block_size(self) -> u64 {
        self.layout().0
    }

    /// Number of bytes one block occupies.
    pub fn type_size(self) -> u64 {
        self.layout().1
    }

    /// Whether the type is block-quantised (as opposed to a plain float or integer type).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// `(elements per block, bytes per block)`, matching ggml's `block_q*` structs.
    fn layout(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 2 + 16),         // d, 32 nibbles
            GgmlType::Q4_1 => (32, 2 + 2 + 16),     // d, m, 32 nibbles
            GgmlType::Q5_0 => (32, 2 + 4 + 16),     // d, high bits, 32 nibbles
            GgmlType::Q5_1 => (32, 2 + 2 + 4 + 16), // d, m, high bits, 32 nibbles
            GgmlType::Q8_0 => (32, 2 + 32),         // d, 32 bytes
            GgmlType::Q8_1 => (32, 2 + 2 + 32),     // d, s, 32 bytes
            GgmlType::Q2_K => (QK_K, 16 + 64 + 2 + 2), // scales, quants, d, dmin
            GgmlType::Q3_K => (QK_K, 32 + 64 + 12 + 2), // hmask, quants, scales, d
            GgmlType::Q4_K => (QK_K, 2 + 2 + 12 + 128), // d, dmin, scales, quants
            GgmlType::Q5_K => (QK_K, 2 + 2 + 12 + 32 + 128), // d, dmin, scales, high bits, quants
            GgmlType::Q6_K => (QK_K, 128 + 64 + 16 + 2), // low bits, high bits, scales, d
            GgmlType::Q8_K => (QK_K, 4 + 256 + 2 * 16), // f32 d, quants, i16 block sums
            GgmlType::I8 => (1, 1),
            GgmlType::I16 => (1, 2),
            GgmlType::I32 => (1, 4),
            GgmlType::I64 | GgmlType::F64 => (1, 8),
        }
    }

    /// Bytes needed for a tensor of this type with the given shape (ggml order), or `None`
    /// if the first dimension is not a whole number of blocks or the size overflows `u64`.
    pub fn tensor_bytes(self, dims: &[u64]) -> Option<u64> {
        let (ne0, rest) = match dims.split_first() {
            Some((ne0, rest)) => (*ne0, rest),
            None => (1, &[][..]),
        };
        let row = self.row_bytes(ne0)?;
        rest.iter().try_fold(row, |acc, &d| acc.checked_mul(d))
    }

    /// Bytes of one row of `ne0` elements, or `None` if `ne0` is not a multiple of the block
    /// size or the size overflows.
    pub fn row_bytes(self, ne0: u64) -> Option<u64> {
        let (block, size) = self.layout();
        if ne0 % block != 0 {
            return None;
        }
        (ne0 / block).checked_mul(size)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a GGUF metadata value. The discriminant is the id used in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// `u8`
    U8 = 0,
    /// `i8`
    I8 = 1,
    /// `u16`
    U16 = 2,
    /// `i16`
    I16 = 3,
    /// `u32`
    U32 = 4,
    /// `i32`
    I32 = 5,
    /// `f32`
    F32 = 6,
    /// `bool`, one byte that must be 0 or 1.
    Bool = 7,
    /// String: `u64` byte length followed by UTF-8 bytes (no terminator).
    String = 8,
    /// Array: `u32` element type, `u64` length, then the elements.
    Array = 9,
    /// `u64`
    U64 = 10,
    /// `i64`
    I64 = 11,
    /// `f64`
    F64 = 12,
}

impl ValueType {
    /// Looks up a value type by its GGUF id.
    pub fn from_id(id: u32) -> Result<Self, GgufErrorKind> {
        Ok(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return Err(GgufErrorKind::UnknownValueType { id }),
        })
    }

    /// The numeric id used in GGUF files.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// A short name: `u8`, `i32`, `f32`, `bool`, `string`, `array`, ...
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Encoded size of a value of this type, or `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The smallest number of bytes a value of this type can occupy.
    pub(crate) fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,    // length
            ValueType::Array => 4 + 8, // element type, length
            other => other.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
