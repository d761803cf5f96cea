//! The crate's error type.
//!
//! Every fallible function in `sotad-engines` returns [`Result`], whose error is the single
//! [`Error`] enum. Model-file problems carry enough context to be fixed without a debugger:
//! the file path (when the data came from a file), the byte offset, the tensor or metadata
//! key involved, and a description of what was expected and what was found.

use std::fmt;
use std::path::PathBuf;

use crate::located::{Format, Located, LocatedKind};

/// Shorthand for `std::result::Result<T, sotad_engines::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors produced by the inference engines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, inspected or memory-mapped.
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        /// What was being attempted ("open", "memory-map", "write", ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// A GGUF model file is malformed, unsupported, or lacks something the caller asked for.
    ///
    /// Boxed so that `Result<T, Error>` stays small on the happy path.
    #[error(transparent)]
    Gguf(Box<GgufError>),

    /// A WAV file is malformed or uses an encoding the reader does not support.
    #[error(transparent)]
    Wav(Box<crate::audio::WavError>),

    /// Audio could not be resampled.
    #[error(
        "cannot resample {channels}-channel audio from {from_rate} Hz to {to_rate} Hz: {reason}"
    )]
    Resample {
        /// Input sample rate.
        from_rate: u32,
        /// Requested output sample rate.
        to_rate: u32,
        /// Number of channels.
        channels: usize,
        /// What went wrong.
        reason: String,
    },

    /// A CTranslate2 model directory (`model.bin`, `config.json`, `vocabulary.txt`) is
    /// malformed, unsupported, or lacks a variable the model needs.
    #[error(transparent)]
    Ct2(Box<crate::stt::ct2::Ct2Error>),

    /// Speech to text failed: bad input audio, or an inference step that could not run
    /// (the reason names which and why).
    #[error("speech to text: {reason}")]
    Stt {
        /// What went wrong.
        reason: String,
    },

    /// The caller's input cannot be used as given (audio with no samples or non-finite ones,
    /// a language the model does not know, a task it cannot do): the caller's mistake, not
    /// the engine's. `field` names the input (`audio`, `language`, `task`, ...).
    #[error("{reason}")]
    InvalidInput {
        /// Which input is at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The caller's cancel flag was raised; the work stopped at the next check.
    #[error("cancelled")]
    Cancelled,

    /// A text-to-speech model (ONNX graph, Piper voice config) is malformed, unsupported, or
    /// lacks a parameter the VITS architecture needs.
    #[error(transparent)]
    Tts(Box<crate::tts::TtsError>),

    /// Quantized weights or activations that the kernels cannot use: an unsupported type, a
    /// row that is not a whole number of blocks, or a buffer of the wrong length.
    #[error(transparent)]
    Quant(Box<crate::quant::QuantError>),

    /// An LLM model file has an unknown architecture, a tensor of the wrong shape, unusable
    /// tokenizer data or chat template, or a request the engine cannot serve.
    #[error(transparent)]
    Llm(Box<crate::llm::LlmError>),

    /// A wake word model (TensorFlow Lite flatbuffer) or its settings are malformed, or the
    /// model uses an operator or type the engine does not support.
    #[error(transparent)]
    Wake(Box<crate::wake::WakeError>),
}

impl Error {
    /// The GGUF details, if this is a GGUF error.
    pub fn as_gguf(&self) -> Option<&GgufError> {
        match self {
            Error::Gguf(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Box<GgufError>> for Error {
    fn from(e: Box<GgufError>) -> Self {
        Error::Gguf(e)
    }
}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Self {
        Error::Gguf(Box::new(e))
    }
}

/// A GGUF problem with its location: a [`Located`] error (the one shape of every file error).
///
/// Displays as, for example:
///
/// ```text
/// GGUF file "/models/x.gguf": tensor "blk.0.attn_q.weight" at byte 1234: has 7 dimensions, at most 4 are supported
/// ```
pub type GgufError = Located<GgufErrorKind>;

impl GgufError {
    pub(crate) fn new(kind: GgufErrorKind) -> Box<Self> {
        Located::in_format(Format::Gguf, kind)
    }

    pub(crate) fn at(self: Box<Self>, offset: u64) -> Box<Self> {
        self.at_byte(offset)
    }

    pub(crate) fn key(self: Box<Self>, key: &str) -> Box<Self> {
        self.about(GgufSubject::Key(key.to_owned()))
    }

    pub(crate) fn tensor(self: Box<Self>, name: &str) -> Box<Self> {
        self.about(GgufSubject::Tensor(name.to_owned()))
    }

    pub(crate) fn subject_if_none(
        mut self: Box<Self>,
        subject: impl FnOnce() -> Option<GgufSubject>,
    ) -> Box<Self> {
        if self.subject.is_none() {
            self.subject = subject();
        }
        self
    }
}

impl LocatedKind for GgufErrorKind {
    type Subject = GgufSubject;

    fn fmt_subject(&self, subject: &GgufSubject, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match subject {
            GgufSubject::Tensor(name) => write!(f, "tensor {name:?}"),
            GgufSubject::Key(key) => write!(f, "metadata key {key:?}"),
        }
    }
}

/// The tensor or metadata entry a [`GgufError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufSubject {
    /// A tensor, by name.
    Tensor(String),
    /// A metadata key.
    Key(String),
}

/// What is wrong with a GGUF file. See [`GgufError`] for the location.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufErrorKind {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: magic bytes are {} ({}), expected 47 47 55 46 (\"GGUF\")", hex4(.found), ascii4(.found))]
    BadMagic {
        /// The first four bytes of the file.
        found: [u8; 4],
    },

    /// The format version is not 2 or 3.
    #[error("unsupported GGUF version {version}{}: only versions 2 and 3 are supported", big_endian_hint(*.version))]
    UnsupportedVersion {
        /// The version field as read (little-endian).
        version: u32,
    },

    /// The data ends in the middle of a field.
    #[error("truncated: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the data.
        available: u64,
    },

    /// A count in the header is larger than the remaining data could possibly hold.
    #[error(
        "{what} {count} cannot fit: at least {min_bytes} bytes needed, only {available} remain"
    )]
    CountTooLarge {
        /// What is being counted ("tensor count", "metadata entry count", "array length").
        what: &'static str,
        /// The count as read.
        count: u64,
        /// Minimum bytes `count` entries would occupy (saturating).
        min_bytes: u64,
        /// Bytes left in the data.
        available: u64,
    },

    /// A string's length prefix points past the end of the data.
    #[error("string of length {len} runs past the end of the data ({available} bytes remain)")]
    StringPastEnd {
        /// The length prefix as read.
        len: u64,
        /// Bytes left after the length prefix.
        available: u64,
    },

    /// A key or tensor name is not valid UTF-8.
    #[error("{what} is not valid UTF-8: {lossy:?}")]
    InvalidUtf8 {
        /// What the string is ("metadata key", "tensor name", "string value").
        what: &'static str,
        /// The string with invalid sequences replaced.
        lossy: String,
    },

    /// A metadata value type id is not one of the 13 GGUF value types.
    #[error("unknown metadata value type id {id}")]
    UnknownValueType {
        /// The type id as read.
        id: u32,
    },

    /// A boolean is neither 0 nor 1.
    #[error("invalid boolean byte {byte:#04x}")]
    InvalidBool {
        /// The byte as read.
        byte: u8,
    },

    /// Arrays are nested deeper than the reader accepts.
    #[error("arrays nested more than {max} levels deep")]
    NestingTooDeep {
        /// Maximum nesting depth.
        max: usize,
    },

    /// The same metadata key appears twice.
    #[error("duplicate metadata key (first defined at byte {first_offset})")]
    DuplicateKey {
        /// Where the first definition starts.
        first_offset: u64,
    },

    /// `general.alignment` is zero or not a power of two.
    #[error("alignment {value} is not a non-zero power of two")]
    BadAlignment {
        /// The alignment value as read.
        value: u64,
    },

    /// A tensor has more dimensions than ggml supports.
    #[error("has {n_dims} dimensions, at most {max} are supported")]
    TooManyDims {
        /// The dimension count as read.
        n_dims: u32,
        /// Maximum supported (4).
        max: u32,
    },

    /// A tensor dimension is zero.
    #[error("dimension {index} is 0 (shape {dims:?})")]
    ZeroDim {
        /// Index of the zero dimension (ggml order).
        index: usize,
        /// The full shape in ggml order.
        dims: Vec<u64>,
    },

    /// The tensor's element count or byte size overflows.
    #[error("shape {dims:?} is too large: element count or byte size overflows")]
    ShapeOverflow {
        /// The full shape in ggml order.
        dims: Vec<u64>,
    },

    /// A ggml type id that no ggml version has defined.
    #[error("unknown ggml type id {id}")]
    UnknownType {
        /// The type id as read.
        id: u32,
    },

    /// A ggml type that exists but that this reader does not support.
    #[error("unsupported quant type {name} (id {id})")]
    UnsupportedType {
        /// The ggml name of the type.
        name: &'static str,
        /// The type id.
        id: u32,
    },

    /// The first dimension is not a whole number of quantisation blocks.
    #[error("first dimension {ne0} is not a multiple of the {ty} block size {block_size}")]
    PartialBlock {
        /// The first (innermost) dimension.
        ne0: u64,
        /// The type's name.
        ty: &'static str,
        /// Elements per block.
        block_size: u64,
    },

    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error("data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// Offset relative to the start of the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },

    /// A tensor's data extends past the end of the file.
    #[error(
        "data ({size} bytes at file offset {start}) runs past the end of the file ({file_len} bytes)"
    )]
    TensorPastEnd {
        /// Absolute start of the tensor data.
        start: u64,
        /// Size of the tensor data in bytes.
        size: u64,
        /// Total size of the file.
        file_len: u64,
    },

    /// Two tensors' data ranges overlap.
    #[error(
        "data bytes {start}..{end} overlap tensor {other:?} (bytes {other_start}..{other_end})"
    )]
    OverlappingTensors {
        /// Absolute start of this tensor's data.
        start: u64,
        /// Absolute end of this tensor's data.
        end: u64,
        /// The other tensor.
        other: String,
        /// Absolute start of the other tensor's data.
        other_start: u64,
        /// Absolute end of the other tensor's data.
        other_end: u64,
    },

    /// The same tensor name appears twice.
    #[error("duplicate tensor name (first defined at byte {first_offset})")]
    DuplicateTensor {
        /// Where the first definition starts.
        first_offset: u64,
    },

    /// A requested tensor does not exist.
    #[error("tensor is missing (architecture {arch}, file has {count} tensors)")]
    MissingTensor {
        /// The `general.architecture` value, or `"unknown"`.
        arch: String,
        /// How many tensors the file has.
        count: usize,
    },

    /// A requested metadata key does not exist.
    #[error("key is missing (architecture {arch})")]
    MissingKey {
        /// The `general.architecture` value, or `"unknown"`.
        arch: String,
    },

    /// A metadata value has a different type than requested.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds, e.g. `"string"` or `"array of f32"`.
        found: String,
    },

    /// A metadata value does not fit the requested type.
    #[error("value {value} ({found}) does not fit in {expected}")]
    OutOfRange {
        /// What the caller asked for.
        expected: &'static str,
        /// The file's type.
        found: &'static str,
        /// The value, formatted.
        value: String,
    },

    /// A string value or array element is not valid UTF-8.
    #[error("{what} is not valid UTF-8 at byte {valid_up_to} of the string")]
    InvalidUtf8Value {
        /// Which value ("string value" or "array element N").
        what: String,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
}

fn hex4(b: &[u8; 4]) -> String {
    format!("{:02x} {:02x} {:02x} {:02x}", b[0], b[1], b[2], b[3])
}

fn ascii4(b: &[u8; 4]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn big_endian_hint(version: u32) -> &'static str {
    if version.swap_bytes() <= 3 && version > 0xffff {
        " (looks like a big-endian file, which is not supported)"
    } else {
        ""
    }
}
