//! [`QuantError`]: quantized data that the kernels cannot use, and what is wrong with it.

use std::fmt;

use crate::error::Error;
use crate::gguf::GgmlType;

/// Quantized data that the kernels cannot use, with the tensor it came from if known.
///
/// Displays as, for example:
///
/// ```text
/// tensor "blk.0.attn_q.weight": Q4_1 matrix of 576 x 576 needs 207360 bytes, found 1000
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantError {
    /// The tensor involved, if the data came from a named tensor.
    pub tensor: Option<String>,
    /// What is wrong.
    pub kind: QuantErrorKind,
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tensor {
            Some(name) => write!(f, "tensor {name:?}: {}", self.kind),
            None => write!(f, "quantized data: {}", self.kind),
        }
    }
}

impl std::error::Error for QuantError {}

/// What is wrong with quantized data; see [`QuantError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantErrorKind {
    /// The type has no kernel here (as weights) or is not the right activation format.
    #[error(
        "{ty} is not supported as {role} (weights: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
    )]
    UnsupportedType {
        /// The type found.
        ty: GgmlType,
        /// `"weights"`, `"activations"` or `"dequantization input"`.
        role: &'static str,
    },

    /// A row length is not a whole number of blocks.
    #[error("row length {cols} is not a multiple of the {ty} block size {block_size}")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Elements per row.
        cols: usize,
        /// Elements per block.
        block_size: usize,
    },

    /// A buffer does not have the length the shape requires.
    #[error("{what} needs {expected} bytes or elements, found {found}")]
    WrongLength {
        /// Which buffer, e.g. `"Q4_1 matrix of 576 x 576"` or `"output"`.
        what: String,
        /// Required length.
        expected: usize,
        /// Actual length.
        found: usize,
    },

    /// A matrix with rows of zero elements.
    #[error("{ty} matrix has rows of 0 elements")]
    EmptyRows {
        /// The type.
        ty: GgmlType,
    },

    /// An activation buffer is not a whole number of rows.
    #[error("{ty} activations of {len} bytes are not a whole number of {row_bytes}-byte rows")]
    PartialRow {
        /// The activation type.
        ty: GgmlType,
        /// Bytes given.
        len: usize,
        /// Bytes per activation row.
        row_bytes: usize,
    },

    /// The shape's byte size overflows `usize`.
    #[error("{rows} x {cols} {ty} matrix is too large")]
    TooLarge {
        /// The type.
        ty: GgmlType,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
}

impl From<QuantErrorKind> for Error {
    fn from(kind: QuantErrorKind) -> Self {
        Error::Quant(Box::new(QuantError { tensor: None, kind }))
    }
}

impl From<QuantError> for Error {
    fn from(e: QuantError) -> Self {
        Error::Quant(Box::new(e))
    }
}
