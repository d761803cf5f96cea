//! Zero-copy reader (and a small writer) for CTranslate2 model directories, as written by
//! CTranslate2's converters for faster-whisper.
//!
//! # The directory
//!
//! - `model.bin`: the weights, described below.
//! - `config.json`: model configuration; for Whisper `suppress_ids`, `suppress_ids_begin`,
//!   `lang_ids` and `alignment_heads` (see [`crate::stt::weights::WhisperConfig`]). Read
//!   with a small strict JSON parser ([`json`]).
//! - `vocabulary.txt` (one token per line) or `vocabulary.json` (an array of strings): the
//!   token of each id.
//! - `tokenizer.json` (Hugging Face tokenizers) is present for faster-whisper but not read
//!   here.
//!
//! # `model.bin`
//!
//! Little-endian, no alignment or padding anywhere (as written by `ModelSpec._serialize` in
//! CTranslate2's `python/ctranslate2/specs/model_spec.py` and read by `Model::load` in
//! `src/models/model.cc`):
//!
//! ```text
//! binary_version   u32      6 for current CTranslate2 (4 and 5 have the same layout)
//! spec name        string   e.g. "WhisperSpec"
//! spec revision    u32      e.g. 3
//! num_variables    u32
//! variables        num_variables × {
//!                    name       string   e.g. "encoder/conv1/weight"
//!                    rank       u8
//!                    dims       u32 × rank   row-major, outermost first
//!                    dtype      u8       0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
//!                    num_bytes  u32      = product(dims) × size of dtype
//!                    data       num_bytes bytes
//!                  }
//! num_aliases      u32
//! aliases          num_aliases × { alias: string, variable: string }
//! ```
//!
//! A `string` is a `u16` length *including* a terminating NUL, then that many bytes. The dtype
//! ids are the order of CTranslate2's `DataType` enum (`include/ctranslate2/types.h`).
//! Variables are written sorted by name. Scalars (rank 0) hold model attributes such as
//! `encoder/num_heads` (int16) or `decoder/pre_norm` (int8, a boolean). An alias (e.g.
//! `decoder/projection/weight` → `decoder/embeddings/weight` for tied embeddings) shares the
//! variable's data. Quantized weights (`int8`, `int16`) come with a `<name>_scale` variable.
//!
//! Binary versions 1 to 3 used an item size instead of a dtype id and are not read; every
//! converter that supports Whisper writes version 6.
//!
//! # Zero copy, and alignment
//!
//! [`Ct2Model::open`] memory-maps `model.bin` and validates the whole header; variable data
//! is never copied: [`VariableView::bytes`] borrows from the mapping, which an [`Arc`] keeps
//! alive as long as any view exists. Because the format has no padding, data starts at
//! arbitrary byte offsets (in tiny.en the first weight starts at byte 187, an odd address),
//! so views are bytes, not `&[f16]`/`&[f32]`: elements are decoded with `from_le_bytes`
//! ([`VariableView::to_f32_vec`]) or copied into aligned buffers by whoever needs them.
//!
//! # Validation
//!
//! Everything in `model.bin` is checked before a [`Ct2Model`] is returned: counts are
//! bounded by the bytes present, strings are NUL-terminated UTF-8 within the data, dtypes are
//! known, `num_bytes` matches the shape, data lies within the file, names are unique, and
//! aliases point to existing variables. Errors ([`Ct2Error`]) name the file, the variable and
//! the byte offset.

pub mod writer;
/// The JSON reader, where it has always been reachable from (`ct2::json::parse`).
pub use crate::json;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mapped::Backing;
use half::{bf16, f16};

pub use self::writer::Ct2Writer;
use crate::error::{Error, Result};
pub use crate::json::JsonValue;
use crate::located::{Format, Located, LocatedKind};

/// Binary versions this reader accepts.
pub const SUPPORTED_BINARY_VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;
/// The file holding the weights.
pub const MODEL_FILE: &str = "model.bin";
/// The file holding the configuration.
pub const CONFIG_FILE: &str = "config.json";

/// Upper bound on capacity reserved from a count read from the file.
const MAX_PREALLOC: usize = 1024;
/// Smallest variable record: name length (2), name with NUL (≥ 2), rank, dtype, num_bytes.
const MIN_VARIABLE_SIZE: usize = 2 + 2 + 1 + 1 + 4;
/// Smallest alias record: two strings of at least one character plus NUL.
const MIN_ALIAS_SIZE: usize = 2 * (2 + 2);

// ----- dtypes ----------------------------------------------------------------------------

/// Element type of a variable (CTranslate2's `DataType`, with its numeric ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 single precision (id 0).
    F32,
    /// Signed 8-bit integer (id 1), used for int8-quantized weights.
    I8,
    /// Signed 16-bit integer (id 2), used for int16-quantized weights and some attributes.
    I16,
    /// Signed 32-bit integer (id 3).
    I32,
    /// IEEE 754 half precision (id 4).
    F16,
    /// bfloat16 (id 5).
    BF16,
}

impl DType {
    /// The dtype with CTranslate2 id `id`.
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    /// The CTranslate2 id.
    pub fn id(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::I8 => 1,
            DType::I16 => 2,
            DType::I32 => 3,
            DType::F16 => 4,
            DType::BF16 => 5,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    /// CTranslate2's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ----- errors ----------------------------------------------------------------------------

/// A CTranslate2 (or safetensors, Hugging Face, GGUF Whisper) problem with its location: a
/// [`Located`] error (the one shape of every file error). Its subject is the variable, alias or
/// configuration key involved.
///
/// Displays as, for example:
///
/// ```text
/// CTranslate2 file "/models/whisper-tiny.en-ct2/model.bin": variable "encoder/conv1/weight" at byte 59115536: num_bytes is 184318, but shape [384, 80, 3] of float16 needs 184320
/// ```
pub type Ct2Error = Located<Ct2ErrorKind>;

impl Ct2Error {
    pub(crate) fn new(kind: Ct2ErrorKind) -> Box<Self> {
        Located::in_format(Format::Ctranslate2, kind)
    }

    /// The file format named in the message (CTranslate2 unless said otherwise).
    pub(crate) fn format(mut self: Box<Self>, format: Format) -> Box<Self> {
        self.file = format;
        self
    }

    pub(crate) fn at(self: Box<Self>, offset: usize) -> Box<Self> {
        self.at_byte(offset as u64)
    }

    pub(crate) fn subject(self: Box<Self>, subject: &str) -> Box<Self> {
        self.about(subject.to_owned())
    }

    pub(crate) fn path(self: Box<Self>, path: Option<&Path>) -> Box<Self> {
        self.in_file(path.map(Path::to_owned))
    }
}

impl LocatedKind for Ct2ErrorKind {
    /// The variable or configuration key, by name.
    type Subject = String;

    fn fmt_subject(&self, subject: &String, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Ct2ErrorKind::Config { .. } | Ct2ErrorKind::Json { .. } => "key",
            _ => "variable",
        };
        write!(f, "{what} {subject:?}")
    }
}

impl From<Box<Ct2Error>> for Error {
    fn from(e: Box<Ct2Error>) -> Self {
        Error::Ct2(e)
    }
}

impl From<Ct2Error> for Error {
    fn from(e: Ct2Error) -> Self {
        Error::Ct2(Box::new(e))
    }
}

/// What is wrong with a CTranslate2 model. See [`Ct2Error`] for the location.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Ct2ErrorKind {
    /// The data ends in the middle of a field.
    #[error("truncated: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left.
        available: u64,
    },

    /// The binary version is not one this reader understands.
    #[error(
        "unsupported binary version {version}{}: versions 4 to 6 are supported",
        if *.version > 0xffff && .version.swap_bytes() <= 6 { " (byte-swapped: not a little-endian model.bin?)" } else { "" }
    )]
    UnsupportedBinaryVersion {
        /// The version as read.
        version: u32,
    },

    /// A count is larger than the remaining data could hold.
    #[error(
        "{what} {count} cannot fit: at least {min_bytes} bytes needed, only {available} remain"
    )]
    CountTooLarge {
        /// What is counted.
        what: &'static str,
        /// The count as read.
        count: u64,
        /// Minimum bytes that many entries occupy.
        min_bytes: u64,
        /// Bytes left.
        available: u64,
    },

    /// A string field is malformed.
    #[error("{what} {reason}")]
    BadString {
        /// Which string ("spec name", "variable name", "alias", "alias target").
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A dtype id outside CTranslate2's `DataType` enum.
    #[error(
        "unknown dtype id {id} (known: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16)"
    )]
    UnknownDType {
        /// The id as read.
        id: u8,
    },

    /// The element count or byte size overflows.
    #[error("shape {shape:?} is too large: element count or byte size overflows")]
    ShapeOverflow {
        /// The shape.
        shape: Vec<u64>,
    },

    /// `num_bytes` does not match the shape and dtype.
    #[error("num_bytes is {found}, but shape {shape:?} of {dtype} needs {expected}")]
    SizeMismatch {
        /// The shape.
        shape: Vec<u64>,
        /// The dtype.
        dtype: DType,
        /// `product(shape) × dtype size`.
        expected: u64,
        /// The `num_bytes` field.
        found: u64,
    },

    /// The variable's data runs past the end of the file.
    #[error("data ({size} bytes at byte {start}) runs past the end of the file ({file_len} bytes)")]
    DataPastEnd {
        /// Start of the data.
        start: u64,
        /// Declared size.
        size: u64,
        /// Length of the file.
        file_len: u64,
    },

    /// The same name is used twice (as variables, or as a variable and an alias).
    #[error("duplicate name (first defined at byte {first_offset})")]
    DuplicateName {
        /// Where the first definition starts.
        first_offset: u64,
    },

    /// An alias points to a variable that does not exist.
    #[error("alias points to {target:?}, which is not a variable")]
    DanglingAlias {
        /// The alias target.
        target: String,
    },

    /// A variable the caller needs does not exist.
    #[error("not found ({spec} revision {revision}, {count} variables)")]
    MissingVariable {
        /// The spec name of the file.
        spec: String,
        /// The spec revision.
        revision: u32,
        /// How many variables the file has.
        count: usize,
    },

    /// A variable has a different shape than the model needs.
    #[error("shape is {found:?}, expected {expected}")]
    WrongShape {
        /// What was expected, e.g. `"[384, 80, 3] ([n_audio_state, n_mels, 3])"`.
        expected: String,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A variable has a dtype the model cannot use there.
    #[error("dtype is {found}, expected {expected}")]
    WrongDType {
        /// What was expected.
        expected: &'static str,
        /// The dtype in the file.
        found: DType,
    },

    /// A model attribute (a scalar variable) has an unexpected value.
    #[error("value is {found}, expected {expected}")]
    WrongValue {
        /// What was expected.
        expected: String,
        /// The value in the file.
        found: String,
    },

    /// The spec name or revision is not one the caller supports.
    #[error("model spec is {spec} revision {revision}, expected {expected}")]
    UnsupportedSpec {
        /// The spec name.
        spec: String,
        /// The revision.
        revision: u32,
        /// What is supported.
        expected: &'static str,
    },

    /// A JSON file is not valid JSON.
    #[error("{message}")]
    Json {
        /// The parser's message.
        message: String,
    },

    /// A configuration value is missing or has the wrong type.
    #[error("{reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// A vocabulary file is malformed.
    #[error("{reason}")]
    Vocabulary {
        /// What is wrong.
        reason: String,
    },

    /// Files or variables disagree with each other.
    #[error("{what}")]
    Inconsistent {
        /// What disagrees.
        what: String,
    },
}

// ----- parsing ---------------------------------------------------------------------------

/// Name, dtype, shape and location of one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableInfo {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    n_elements: usize,
    /// Absolute byte range of the data.
    start: usize,
    end: usize,
    /// Where the record (its name's length prefix) starts.
    record_offset: usize,
    /// For a tensor of ggml quantization blocks (GGUF): the block type. `shape` is then the
    /// logical `[rows, cols]` and `dtype` is [`DType::I8`] (raw bytes).
    quant: Option<crate::gguf::GgmlType>,
}

impl VariableInfo {
    /// The variable's name, e.g. `encoder/layer_0/self_attention/linear_0/weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape, outermost dimension first (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements (1 for a scalar).
    pub fn n_elements(&self) -> usize {
        self.n_elements
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Absolute byte offset of the data in `model.bin`.
    pub fn data_offset(&self) -> u64 {
        self.start as u64
    }

    /// Where this variable's record starts in `model.bin` (for error messages).
    pub fn record_offset(&self) -> u64 {
        self.record_offset as u64
    }

    /// The ggml block type of a quantized GGUF matrix, `None` for plain elements.
    pub fn quant(&self) -> Option<crate::gguf::GgmlType> {
        self.quant
    }

    /// Bytes per row (first-dimension index): elements per row times the element size, or
    /// the block bytes of a quantized row.
    pub fn row_bytes(&self) -> usize {
        let row: usize = self.shape.iter().skip(1).product();
        match self.quant {
            Some(ty) => crate::quant::row_bytes(ty, row).unwrap_or(0),
            None => row * self.dtype.size(),
        }
    }

    /// A variable at `start..end` of another container's bytes (safetensors, GGUF).
    pub(crate) fn external(
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        range: Range<usize>,
        quant: Option<crate::gguf::GgmlType>,
    ) -> Self {
        Self {
            name,
            dtype,
            n_elements: shape.iter().product(),
            shape,
            start: range.start,
            end: range.end,
            record_offset: range.start,
            quant,
        }
    }
}

/// One alias record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasInfo {
    /// The alias name, e.g. `decoder/projection/weight`.
    pub alias: String,
    /// The variable it refers to, e.g. `decoder/embeddings/weight`.
    pub target: String,
    /// Where the record starts in `model.bin`.
    pub record_offset: u64,
}

#[derive(Debug)]
struct Header {
    binary_version: u32,
    spec: String,
    revision: u32,
    variables: Vec<VariableInfo>,
    aliases: Vec<AliasInfo>,
    /// Variable and alias names to indices into `variables`.
    index: HashMap<String, usize>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Box<Ct2Error>> {
        let available = self.remaining();
        match self.buf.get(self.pos..self.pos.saturating_add(n)) {
            Some(b) if n <= available => {
                self.pos += n;
                Ok(b)
            }
            _ => Err(Ct2Error::new(Ct2ErrorKind::Truncated {
                what,
                needed: n as u64,
                available: available as u64,
            })
            .at(self.pos)),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Box<Ct2Error>> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Box<Ct2Error>> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Box<Ct2Error>> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count of records of at least `min_size` bytes each, checked against the data left.
    fn count(&mut self, what: &'static str, min_size: usize) -> Result<usize, Box<Ct2Error>> {
        let at = self.pos;
        let count = self.u32(what)?;
        let min_bytes = u64::from(count) * min_size as u64;
        if min_bytes > self.remaining() as u64 {
            return Err(Ct2Error::new(Ct2ErrorKind::CountTooLarge {
                what,
                count: u64::from(count),
                min_bytes,
                available: self.remaining() as u64,
            })
            .at(at));
        }
        Ok(count as usize)
    }

    /// A CTranslate2 string: `u16` length including the NUL terminator, then the bytes.
    fn string(&mut self, what: &'static str) -> Result<String, Box<Ct2Error>> {
        let at = self.pos;
        let len = self.u16(what)?;
        let bad = |reason: String| Ct2Error::new(Ct2ErrorKind::BadString { what, reason }).at(at);
        if len == 0 {
            return Err(bad(
                "has length 0 (the length includes a NUL terminator, so it is at least 1)".into(),
            ));
        }
        let available = self.remaining();
        if usize::from(len) > available {
            return Err(bad(format!(
                "of length {len} runs past the end of the data ({available} bytes remain)"
            )));
        }
        let bytes = self.take(usize::from(len), what)?;
        // CTranslate2 reads up to the first NUL; the writer puts exactly one at the end.
        let Some(nul) = bytes.iter().position(|&b| b == 0) else {
            return Err(bad(format!(
                "of length {len} has no NUL terminator: {:?}",
                String::from_utf8_lossy(bytes)
            )));
        };
        let text = bytes.get(..nul).unwrap_or_default();
        match std::str::from_utf8(text) {
            Ok(s) if !s.is_empty() => Ok(s.to_owned()),
            Ok(_) => Err(bad("is empty".into())),
            Err(_) => Err(bad(format!(
                "is not valid UTF-8: {:?}",
                String::from_utf8_lossy(text)
            ))),
        }
    }
}

fn parse(buf: &[u8]) -> Result<Header, Box<Ct2Error>> {
    let mut c = Cursor { buf, pos: 0 };
    let binary_version = c.u32("binary version")?;
    if !SUPPORTED_BINARY_VERSIONS.contains(&binary_version) {
        return Err(Ct2Error::new(Ct2ErrorKind::UnsupportedBinaryVersion {
            version: binary_version,
        })
        .at(0));
    }
    let spec = c.string("spec name")?;
    let revision = c.u32("spec revision")?;

    let n_vars = c.count("variable count", MIN_VARIABLE_SIZE)?;
    let mut variables: Vec<VariableInfo> = Vec::with_capacity(n_vars.min(MAX_PREALLOC));
    let mut index: HashMap<String, usize> = HashMap::with_capacity(n_vars.min(MAX_PREALLOC));
    for _ in 0..n_vars {
        let info = read_variable(&mut c)?;
        if let Some(&first) = index.get(&info.name) {
            let first_offset = variables.get(first).map_or(0, |v| v.record_offset as u64);
            return Err(Ct2Error::new(Ct2ErrorKind::DuplicateName { first_offset })
                .at(info.record_offset)
                .subject(&info.name));
        }
        index.insert(info.name.clone(), variables.len());
        variables.push(info);
    }

    let n_aliases = c.count("alias count", MIN_ALIAS_SIZE)?;
    let mut aliases = Vec::with_capacity(n_aliases.min(MAX_PREALLOC));
    for _ in 0..n_aliases {
        let at = c.pos;
        let alias = c.string("alias")?;
        let target = c.string("alias target")?;
        if let Some(&first) = index.get(&alias) {
            let first_offset = variables.get(first).map_or(0, |v| v.record_offset as u64);
            return Err(Ct2Error::new(Ct2ErrorKind::DuplicateName { first_offset })
                .at(at)
                .subject(&alias));
        }
        // Aliases refer to variables, not to other aliases (CTranslate2 resolves them
        // against variables only).
        let Some(&target_index) = index
            .get(&target)
            .filter(|&&i| variables.get(i).is_some_and(|v| v.name == target))
        else {
            return Err(Ct2Error::new(Ct2ErrorKind::DanglingAlias { target })
                .at(at)
                .subject(&alias));
        };
        index.insert(alias.clone(), target_index);
        aliases.push(AliasInfo {
            alias,
            target,
            record_offset: at as u64,
        });
    }
    if c.remaining() > 0 {
        tracing::debug!(
            trailing = c.remaining(),
            "model.bin has bytes after the aliases; ignored, as CTranslate2 does"
        );
    }
    Ok(Header {
        binary_version,
        spec,
        revision,
        variables,
        aliases,
        index,
    })
}

fn read_variable(c: &mut Cursor<'_>) -> Result<VariableInfo, Box<Ct2Error>> {
    let record_offset = c.pos;
    let name = c.string("variable name")?;
    let located = |e: Box<Ct2Error>| e.subject(&name);
    let rank = c.u8("rank").map_err(located)?;
    let dims_bytes = c
        .take(4 * usize::from(rank), "dimensions")
        .map_err(located)?;
    let shape: Vec<u64> = dims_bytes
        .chunks_exact(4)
        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    let dtype_at = c.pos;
    let id = c.u8("dtype").map_err(located)?;
    let Some(dtype) = DType::from_id(id) else {
        return Err(located(
            Ct2Error::new(Ct2ErrorKind::UnknownDType { id }).at(dtype_at),
        ));
    };
    let size_at = c.pos;
    let num_bytes = u64::from(c.u32("num_bytes").map_err(located)?);
    let overflow = || {
        located(
            Ct2Error::new(Ct2ErrorKind::ShapeOverflow {
                shape: shape.clone(),
            })
            .at(record_offset),
        )
    };
    let n_elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let expected = n_elements
        .checked_mul(dtype.size() as u64)
        .ok_or_else(overflow)?;
    if expected != num_bytes {
        return Err(located(
            Ct2Error::new(Ct2ErrorKind::SizeMismatch {
                shape,
                dtype,
                expected,
                found: num_bytes,
            })
            .at(size_at),
        ));
    }
    let start = c.pos;
    if num_bytes > c.remaining() as u64 {
        return Err(located(
            Ct2Error::new(Ct2ErrorKind::DataPastEnd {
                start: start as u64,
                size: num_bytes,
                file_len: c.buf.len() as u64,
            })
            .at(record_offset),
        ));
    }
    // Both fit in usize: they are bounded by the buffer length.
    let n_bytes = num_bytes as usize;
    c.pos += n_bytes;
    Ok(VariableInfo {
        shape: shape.iter().map(|&d| d as usize).collect(),
        n_elements: n_elements as usize,
        dtype,
        start,
        end: start + n_bytes,
        record_offset,
        name,
        quant: None,
    })
}

// ----- the model -------------------------------------------------------------------------

struct Inner {
    backing: Backing,
    dir: Option<PathBuf>,
    bin_path: Option<PathBuf>,
    header: Header,
    config: Option<(PathBuf, JsonValue)>,
    vocabulary: Option<(PathBuf, Vec<String>)>,
    format: Format,
    /// Integer attributes given outside the tensors (GGUF metadata), by variable name.
    attributes: HashMap<String, i64>,
}

/// A CTranslate2 model: `model.bin` memory-mapped and validated, plus `config.json` and the
/// vocabulary when opened from a directory.
///
/// Cloning is cheap: clones share the mapping.
#[derive(Clone)]
pub struct Ct2Model {
    inner: Arc<Inner>,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

impl Ct2Model {
    /// Opens the model directory `dir`: memory-maps and validates `model.bin`, and reads
    /// `config.json` and `vocabulary.txt` (or `vocabulary.json`) when present.
    ///
    /// The model file must not be modified while mapped (model directories are replaced by
    /// renaming, which leaves existing mappings intact).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let bin_path = dir.join(MODEL_FILE);
        let backing = Backing::map(&bin_path)?;
        let header = parse(backing.bytes()).map_err(|e| e.path(Some(&bin_path)))?;

        let config_path = dir.join(CONFIG_FILE);
        let config = match std::fs::read(&config_path) {
            Ok(bytes) => Some((config_path.clone(), parse_json_file(&bytes, &config_path)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &config_path)(e)),
        };
        let vocabulary = read_vocabulary(dir)?;

        let model = Self {
            inner: Arc::new(Inner {
                backing,
                dir: Some(dir.to_owned()),
                bin_path: Some(bin_path),
                header,
                config,
                vocabulary,
                format: Format::Ctranslate2,
                attributes: HashMap::new(),
            }),
        };
        tracing::debug!(
            path = ?model.path(),
            binary_version = model.binary_version(),
            spec = model.spec_name(),
            revision = model.spec_revision(),
            variables = model.variables().len(),
            aliases = model.aliases().len(),
            "opened CTranslate2 model"
        );
        Ok(model)
    }

    /// Parses `model.bin` bytes held in memory, taking ownership (no copy). There is no
    /// configuration or vocabulary.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        let header = parse(&bytes)?;
        Ok(Self {
            inner: Arc::new(Inner {
                backing: Backing::Owned(bytes),
                dir: None,
                bin_path: None,
                header,
                config: None,
                vocabulary: None,
                format: Format::Ctranslate2,
                attributes: HashMap::new(),
            }),
        })
    }

    /// Parses a copy of `model.bin` bytes (tests, fuzzing).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }

    /// The model directory, if opened from one.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The path of `model.bin`, if opened from a directory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.bin_path.as_deref()
    }

    /// All of `model.bin`.
    pub fn as_bytes(&self) -> &[u8] {
        self.inner.backing.bytes()
    }

    /// The binary format version (4 to 6).
    pub fn binary_version(&self) -> u32 {
        self.inner.header.binary_version
    }

    /// The model spec, e.g. `WhisperSpec`.
    pub fn spec_name(&self) -> &str {
        &self.inner.header.spec
    }

    /// The spec revision, e.g. 3.
    pub fn spec_revision(&self) -> u32 {
        self.inner.header.revision
    }

    /// Every variable, in file order (sorted by name, as CTranslate2 writes them).
    pub fn variables(&self) -> &[VariableInfo] {
        &self.inner.header.variables
    }

    /// Every alias, in file order.
    pub fn aliases(&self) -> &[AliasInfo] {
        &self.inner.header.aliases
    }

    /// Whether `name` is a variable or an alias.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.header.index.contains_key(name)
    }

    /// The variable called `name` (or that the alias `name` refers to), if any.
    pub fn variable_info(&self, name: &str) -> Option<&VariableInfo> {
        let h = &self.inner.header;
        h.index.get(name).and_then(|&i| h.variables.get(i))
    }

    /// A view of the variable called `name` (or that the alias `name` refers to). Fails
    /// naming the file and the variable if there is none.
    pub fn variable(&self, name: &str) -> Result<VariableView> {
        match self.inner.header.index.get(name) {
            Some(&index) => match self.variables().get(index) {
                Some(info) => Ok(VariableView {
                    model: self.clone(),
                    info: info.clone(),
                }),
                None => Err(self.missing(name).into()),
            },
            None => Err(self.missing(name).into()),
        }
    }

    pub(crate) fn missing(&self, name: &str) -> Box<Ct2Error> {
        self.error(Ct2ErrorKind::MissingVariable {
            spec: self.spec_name().to_owned(),
            revision: self.spec_revision(),
            count: self.variables().len(),
        })
        .subject(name)
    }

    /// An error about `model.bin` (path set, no offset).
    pub(crate) fn error(&self, kind: Ct2ErrorKind) -> Box<Ct2Error> {
        Ct2Error::new(kind)
            .path(self.path())
            .format(self.inner.format)
    }

    /// An integer attribute given outside the tensors (GGUF metadata), e.g.
    /// `encoder/num_heads`.
    pub fn attribute(&self, name: &str) -> Option<i64> {
        self.inner.attributes.get(name).copied()
    }

    /// The file format (`"CTranslate2"`, or the container this model was adapted from).
    pub fn format(&self) -> &'static str {
        self.inner.format.name()
    }

    /// A model over the tensors of another container (safetensors, GGUF) held in `backing`.
    /// Ranges are checked against the bytes and names must be unique; `aliases` are
    /// `(alias, target)` pairs.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        format: Format,
        backing: Backing,
        path: &Path,
        spec: (&str, u32),
        variables: Vec<VariableInfo>,
        aliases: &[(String, String)],
        config: Option<(PathBuf, JsonValue)>,
        vocabulary: Option<(PathBuf, Vec<String>)>,
        attributes: HashMap<String, i64>,
    ) -> Result<Self> {
        let len = backing.bytes().len();
        let bad = |name: &str, kind: Ct2ErrorKind| -> Error {
            Ct2Error::new(kind)
                .path(Some(path))
                .format(format)
                .subject(name)
                .into()
        };
        let mut index = HashMap::with_capacity(variables.len());
        for (i, v) in variables.iter().enumerate() {
            let expected = v
                .shape
                .first()
                .map_or(v.dtype.size(), |&r| r * v.row_bytes());
            if v.start > v.end || v.end > len || v.end - v.start != expected {
                return Err(bad(
                    &v.name,
                    Ct2ErrorKind::Inconsistent {
                        what: format!(
                            "data at bytes {}..{} of a {len}-byte file, but shape {:?} needs {expected} bytes",
                            v.start, v.end, v.shape
                        ),
                    },
                ));
            }
            if index.insert(v.name.clone(), i).is_some() {
                return Err(bad(
                    &v.name,
                    Ct2ErrorKind::Inconsistent {
                        what: "the name appears twice".into(),
                    },
                ));
            }
        }
        let mut alias_infos = Vec::new();
        for (alias, target) in aliases {
            let Some(&t) = index.get(target) else {
                return Err(bad(
                    alias,
                    Ct2ErrorKind::Inconsistent {
                        what: format!("alias of missing tensor {target:?}"),
                    },
                ));
            };
            index.insert(alias.clone(), t);
            alias_infos.push(AliasInfo {
                alias: alias.clone(),
                target: target.clone(),
                record_offset: 0,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                backing,
                dir: path.parent().map(Path::to_owned),
                bin_path: Some(path.to_owned()),
                header: Header {
                    binary_version: 0,
                    spec: spec.0.to_owned(),
                    revision: spec.1,
                    variables,
                    aliases: alias_infos,
                    index,
                },
                config,
                vocabulary,
                format,
                attributes,
            }),
        })
    }

    /// The parsed `config.json` and its path, if the directory has one.
    pub fn config(&self) -> Option<(&Path, &JsonValue)> {
        self.inner.config.as_ref().map(|(p, v)| (p.as_path(), v))
    }

    /// The vocabulary (the token of each id) and the file it came from, if the directory
    /// has one.
    pub fn vocabulary(&self) -> Option<(&Path, &[String])> {
        self.inner
            .vocabulary
            .as_ref()
            .map(|(p, v)| (p.as_path(), v.as_slice()))
    }

    fn data(&self, info: &VariableInfo) -> &[u8] {
        // The range was checked against the file length when parsing.
        self.as_bytes()
            .get(info.start..info.end)
            .unwrap_or_default()
    }
}

impl fmt::Debug for Ct2Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ct2Model")
            .field("path", &self.path())
            .field("binary_version", &self.binary_version())
            .field("spec", &self.spec_name())
            .field("revision", &self.spec_revision())
            .field("variables", &self.variables().len())
            .field("aliases", &self.aliases().len())
            .finish()
    }
}

pub(crate) fn parse_json_file(bytes: &[u8], path: &Path) -> Result<JsonValue> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Ct2Error::new(Ct2ErrorKind::Json {
            message: "file is not valid UTF-8".into(),
        })
        .at(e.valid_up_to())
        .path(Some(path))
    })?;
    json::parse(text).map_err(|e| {
        Ct2Error::new(Ct2ErrorKind::Json { message: e.message })
            .at(e.offset)
            .path(Some(path))
            .into()
    })
}

fn read_vocabulary(dir: &Path) -> Result<Option<(PathBuf, Vec<String>)>> {
    let txt = dir.join("vocabulary.txt");
    match std::fs::read(&txt) {
        Ok(bytes) => return parse_vocabulary_txt(&bytes, &txt).map(|v| Some((txt, v))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &txt)(e)),
    }
    let json_path = dir.join("vocabulary.json");
    match std::fs::read(&json_path) {
        Ok(bytes) => {
            let value = parse_json_file(&bytes, &json_path)?;
            let bad = |reason: String| -> Error {
                Ct2Error::new(Ct2ErrorKind::Vocabulary { reason })
                    .path(Some(&json_path))
                    .into()
            };
            let items = value.as_array().ok_or_else(|| {
                bad(format!(
                    "expected an array of strings, found {}",
                    value.type_name()
                ))
            })?;
            let tokens = items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        bad(format!(
                            "element {i} is a {}, expected a string",
                            v.type_name()
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some((json_path, tokens)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &json_path)(e)),
    }
}

/// One token per line, `\n`-separated; a final newline does not start another token.
fn parse_vocabulary_txt(bytes: &[u8], path: &Path) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes
            .get(..e.valid_up_to())
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Ct2Error::new(Ct2ErrorKind::Vocabulary {
            reason: format!("line {line} is not valid UTF-8"),
        })
        .at(e.valid_up_to())
        .path(Some(path))
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    Ok(text.split('\n').map(str::to_owned).collect())
}

// ----- views -----------------------------------------------------------------------------

/// A variable: its [`VariableInfo`] plus its data, borrowed from the mapped `model.bin`.
///
/// Holds a reference-counted handle to the model, so it may outlive the [`Ct2Model`] it came
/// from.
#[derive(Clone)]
pub struct VariableView {
    model: Ct2Model,
    info: VariableInfo,
}

impl VariableView {
    /// Name, dtype, shape and location.
    pub fn info(&self) -> &VariableInfo {
        &self.info
    }

    /// The variable's name (the real one, if it was looked up through an alias).
    pub fn name(&self) -> &str {
        self.info().name()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.info().dtype()
    }

    /// The shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        self.info().shape()
    }

    /// The raw little-endian data, borrowed from the mapping.
    pub fn bytes(&self) -> &[u8] {
        self.model.data(self.info())
    }

    /// The model this variable belongs to.
    pub fn model(&self) -> &Ct2Model {
        &self.model
    }

    /// All elements converted to `f32` (floats exactly; integers by value, without any
    /// quantization scale).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        decode_any(self.bytes(), self.info())
    }

    /// The value of an integer scalar (an attribute such as `encoder/num_heads`).
    pub fn scalar_i64(&self) -> Option<i64> {
        if !self.shape().is_empty() {
            return None;
        }
        let b = self.bytes();
        match self.dtype() {
            DType::I8 => b.first().map(|&x| i64::from(x as i8)),
            DType::I16 => b
                .get(..2)
                .map(|x| i64::from(i16::from_le_bytes([x[0], x[1]]))),
            DType::I32 => b
                .get(..4)
                .map(|x| i64::from(i32::from_le_bytes([x[0], x[1], x[2], x[3]]))),
            _ => None,
        }
    }

    /// Rows `rows` of the variable (ranges over the first dimension), without copying.
    /// Returns `None` if the range is out of bounds or the variable is a scalar.
    pub fn rows(&self, rows: Range<usize>) -> Option<TensorSlice> {
        let n = *self.shape().first()?;
        if rows.start > rows.end || rows.end > n {
            return None;
        }
        Some(TensorSlice {
            view: self.clone(),
            rows,
        })
    }

    /// The whole variable as a [`TensorSlice`] (all rows; a scalar is one row).
    pub fn all(&self) -> TensorSlice {
        let n = self.shape().first().copied().unwrap_or(1);
        TensorSlice {
            view: self.clone(),
            rows: 0..n,
        }
    }
}

impl fmt::Debug for VariableView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info();
        f.debug_struct("VariableView")
            .field("name", &info.name)
            .field("dtype", &info.dtype)
            .field("shape", &info.shape)
            .field("data_offset", &info.start)
            .finish()
    }
}

/// A contiguous range of rows (first-dimension indices) of a variable, e.g. the key part of
/// a fused query/key/value projection. Borrowed from the mapping, never copied.
#[derive(Clone)]
pub struct TensorSlice {
    view: VariableView,
    rows: Range<usize>,
}

impl TensorSlice {
    /// The variable this slice is taken from.
    pub fn variable(&self) -> &VariableView {
        &self.view
    }

    /// The variable's name.
    pub fn name(&self) -> &str {
        self.view.name()
    }

    /// The row range within the variable.
    pub fn row_range(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// Whether the slice is the whole variable.
    pub fn is_whole(&self) -> bool {
        self.rows.start == 0 && Some(&self.rows.end) == self.view.shape().first()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.view.dtype()
    }

    /// The slice's shape: the variable's, with the first dimension replaced by the row count
    /// (a scalar stays a scalar).
    pub fn shape(&self) -> Vec<usize> {
        let mut shape = self.view.shape().to_vec();
        if let Some(first) = shape.first_mut() {
            *first = self.rows.len();
        }
        shape
    }

    /// Elements per row (1 for a vector or scalar).
    pub fn row_len(&self) -> usize {
        self.view.shape().iter().skip(1).product()
    }

    /// The raw data of these rows, borrowed from the mapping.
    pub fn bytes(&self) -> &[u8] {
        let row_bytes = self.view.info().row_bytes();
        self.view
            .bytes()
            .get(self.rows.start * row_bytes..self.rows.end * row_bytes)
            .unwrap_or_default()
    }

    /// The elements converted to `f32` (see [`VariableView::to_f32_vec`]; quantized rows are
    /// dequantized).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        decode_any(self.bytes(), self.view.info())
    }

    /// The ggml block type, if the variable is a quantized GGUF matrix.
    pub fn quant(&self) -> Option<crate::gguf::GgmlType> {
        self.view.info().quant()
    }

    /// Row `r` of the slice converted to `f32` as [`TensorSlice::to_f32_vec`] converts it,
    /// read in place from the mapping (`None` past the last row).
    pub fn row_f32(&self, r: usize) -> Option<Vec<f32>> {
        if r >= self.rows.len() {
            return None;
        }
        let row_bytes = self.view.info().row_bytes();
        let b = self.bytes().get(r * row_bytes..(r + 1) * row_bytes)?;
        Some(decode_any(b, self.view.info()))
    }
}

impl fmt::Debug for TensorSlice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorSlice")
            .field("name", &self.name())
            .field("rows", &self.rows)
            .field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .finish()
    }
}

fn decode_any(bytes: &[u8], info: &VariableInfo) -> Vec<f32> {
    let Some(ty) = info.quant() else {
        return decode_f32(bytes, info.dtype());
    };
    let row_bytes = info.row_bytes().max(1);
    let cols: usize = info.shape().iter().skip(1).product();
    let mut out = vec![0.0f32; bytes.len() / row_bytes * cols];
    for (src, dst) in bytes
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(cols))
    {
        // Lengths match by construction; a failure leaves zeros.
        let _ = crate::quant::dequantize_row(ty, src, dst);
    }
    out
}

fn decode_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
        DType::I16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
            .collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
    }
}
