//! Errors of the text-to-speech loaders: the ONNX reader, the Piper voice config and the
//! VITS parameter map.
//!
//! A [`TtsError`] carries its location like [`crate::error::GgufError`] does: which kind of
//! file, its path, the byte offset, and the field, tensor, node, parameter or JSON key involved.
//! It reaches callers as [`crate::Error::Tts`].

use std::fmt;
use std::path::PathBuf;

use crate::located::{Format, Located, LocatedKind};

/// Which kind of file a [`TtsError`] is about: ONNX, Piper voice config, or a request.
pub type TtsFile = Format;

/// A text-to-speech model problem with its location: a [`Located`] error (the one shape of
/// every file error).
///
/// Displays as, for example:
///
/// ```text
/// ONNX file "/models/x.onnx": tensor "dec.ups.0.weight" at byte 1234: data is 10 bytes, shape [2, 3] of FLOAT needs 24
/// Piper voice config "/models/x.onnx.json": key "phoneme_id_map" at byte 311: expected object, found array
/// ```
pub type TtsError = Located<TtsErrorKind>;

impl TtsError {
    pub(crate) fn new(file: TtsFile, kind: TtsErrorKind) -> Box<Self> {
        Located::in_format(file, kind)
    }

    pub(crate) fn at(self: Box<Self>, offset: u64) -> Box<Self> {
        self.at_byte(offset)
    }

    pub(crate) fn subject(self: Box<Self>, subject: TtsSubject) -> Box<Self> {
        self.about(subject)
    }

    pub(crate) fn path(self: Box<Self>, path: Option<PathBuf>) -> Box<Self> {
        self.in_file(path)
    }
}

impl LocatedKind for TtsErrorKind {
    type Subject = TtsSubject;

    fn fmt_subject(&self, subject: &TtsSubject, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(subject, f)
    }
}

/// What a [`TtsError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsSubject {
    /// A protobuf field, as a path such as `ModelProto.graph.node[12].attribute[0]`.
    Field(String),
    /// An ONNX tensor (initializer), by name.
    Tensor(String),
    /// An ONNX node, by name.
    Node(String),
    /// A VITS module parameter, by its PyTorch name (`flow.flows.0.enc.in_layers.0.weight`).
    Param(String),
    /// A key of the voice config, as a dotted path (`inference.noise_scale`).
    Key(String),
}

impl fmt::Display for TtsSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TtsSubject::Field(p) => write!(f, "field {p}"),
            TtsSubject::Tensor(n) => write!(f, "tensor {n:?}"),
            TtsSubject::Node(n) => write!(f, "node {n:?}"),
            TtsSubject::Param(n) => write!(f, "parameter {n:?}"),
            TtsSubject::Key(k) => write!(f, "key {k:?}"),
        }
    }
}

/// What is wrong. See [`TtsError`] for the location.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TtsErrorKind {
    // ----- protobuf wire format ---------------------------------------------------------
    /// The data ends in the middle of a field.
    #[error("truncated: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes left in the enclosing message.
        available: u64,
    },

    /// A varint is longer than 10 bytes or overflows 64 bits.
    #[error("malformed varint (longer than 10 bytes or over 64 bits)")]
    BadVarint,

    /// A field key has field number 0 or one above 2^29 - 1.
    #[error("invalid protobuf field number {number}")]
    BadFieldNumber {
        /// The field number as read.
        number: u64,
    },

    /// A wire type that protobuf does not define, or a deprecated group.
    #[error("unsupported protobuf wire type {wire_type} (field {field})")]
    BadWireType {
        /// The wire type (0..=7).
        wire_type: u8,
        /// The field number.
        field: u32,
    },

    /// A known field was encoded with a different wire type than the schema says.
    #[error("field {field} has wire type {found}, expected {expected}")]
    WrongWireType {
        /// The field number.
        field: u32,
        /// The schema's wire type name.
        expected: &'static str,
        /// The wire type found.
        found: u8,
    },

    /// A length-delimited field runs past the end of its enclosing message.
    #[error(
        "length {len} of field #{field} runs past the end of the enclosing message ({available} bytes remain)"
    )]
    LengthPastEnd {
        /// The field number.
        field: u32,
        /// The length prefix as read.
        len: u64,
        /// Bytes left after the length prefix.
        available: u64,
    },

    /// Messages are nested deeper than the reader accepts.
    #[error("messages nested more than {max} levels deep")]
    NestingTooDeep {
        /// Maximum nesting depth.
        max: usize,
    },

    /// A string field is not valid UTF-8.
    #[error("{what} is not valid UTF-8 at byte {valid_up_to} of the string")]
    InvalidUtf8 {
        /// Which string.
        what: &'static str,
        /// Length of the valid prefix.
        valid_up_to: usize,
    },

    /// A packed repeated field's length is not a multiple of its element size.
    #[error("packed {what} field of {len} bytes is not a multiple of {elem_size}")]
    BadPackedLength {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The element size.
        elem_size: u64,
    },

    // ----- ONNX ------------------------------------------------------------------------
    /// The data parses as protobuf but is not an ONNX model (or is damaged beyond recognition).
    #[error("not an ONNX model: {reason}")]
    NotOnnx {
        /// What is missing or wrong.
        reason: String,
    },

    /// A tensor stores its data in an external file, which this reader does not support.
    #[error("external data not supported (the tensor's data lives in a separate file)")]
    ExternalData,

    /// A tensor's data type cannot be converted as requested.
    #[error("data type {found} ({found_name}) cannot be read as {wanted}")]
    UnsupportedDataType {
        /// The ONNX `TensorProto.DataType` code.
        found: i32,
        /// Its name.
        found_name: &'static str,
        /// What the caller asked for.
        wanted: &'static str,
    },

    /// A tensor has a negative dimension or its size overflows.
    #[error("invalid shape {dims:?}: {reason}")]
    BadDims {
        /// The dims as stored.
        dims: Vec<i64>,
        /// What is wrong.
        reason: &'static str,
    },

    /// A tensor's data size does not match its shape and type.
    #[error("data is {found} bytes, shape {dims:?} of {data_type} needs {expected}")]
    DataSizeMismatch {
        /// The dims as stored.
        dims: Vec<i64>,
        /// The data type's name.
        data_type: &'static str,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes present.
        found: u64,
    },

    // ----- Piper voice and VITS parameters ----------------------------------------------
    /// The graph lacks a tensor the VITS architecture needs.
    #[error("missing from the model ({context})")]
    Missing {
        /// Where it was looked for, or what it was needed for.
        context: String,
    },

    /// A tensor has a different shape than the architecture requires.
    #[error("has shape {found:?}, expected {expected}")]
    UnexpectedShape {
        /// The expected shape, described (`[384, 192, 5]`, `[*, 192, 1]`, ...).
        expected: String,
        /// The shape found.
        found: Vec<i64>,
    },

    /// An attribute of a node is missing or has an unusable value.
    #[error("attribute {attribute:?}: {reason}")]
    BadAttribute {
        /// The attribute name.
        attribute: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// The graph is not a Piper/VITS generator.
    #[error("not a Piper VITS model: {reason}")]
    NotVits {
        /// What does not fit.
        reason: String,
    },

    /// An anonymous initializer could not be mapped to a module parameter.
    #[error("cannot resolve anonymous initializer: {reason}")]
    Unresolved {
        /// Why.
        reason: String,
    },

    /// The voice config is not valid JSON.
    #[error("invalid JSON: {reason}")]
    Json {
        /// What the parser expected.
        reason: String,
    },

    /// A required key of the voice config is absent.
    #[error("key is missing")]
    MissingKey,

    /// A voice config value has the wrong JSON type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// The expected JSON type.
        expected: &'static str,
        /// The JSON type found.
        found: &'static str,
    },

    /// A voice config value is out of range or inconsistent with the model.
    #[error("{reason}")]
    BadValue {
        /// What is wrong.
        reason: String,
    },

    // ----- synthesis requests ---------------------------------------------------------
    /// The text has nothing to speak (empty, only whitespace or punctuation).
    #[error("the text is empty: nothing to speak ({chars} characters)")]
    EmptyText {
        /// Characters in the text as given.
        chars: usize,
    },

    /// A speaker id the voice does not have.
    #[error(
        "speaker {id} does not exist: the voice has {n_speakers} speaker(s), ids 0..{n_speakers}"
    )]
    UnknownSpeaker {
        /// The requested id.
        id: u32,
        /// Speakers of the voice.
        n_speakers: usize,
    },

    /// A synthesis option or input is out of range.
    #[error("{name}: {reason}")]
    BadInput {
        /// The option or input (`noise_scale`, `phoneme_ids[3]`, ...).
        name: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// espeak-ng could not be run, or failed.
    #[error("espeak-ng: {reason}")]
    Espeak {
        /// What went wrong.
        reason: String,
    },

    /// A tensor operation failed during inference (a bug, or memory exhausted).
    #[error("inference failed in {stage}: {reason}")]
    Inference {
        /// The model stage (`text encoder`, `decoder`, ...).
        stage: &'static str,
        /// The underlying error.
        reason: String,
    },
}

impl From<Box<TtsError>> for crate::Error {
    fn from(e: Box<TtsError>) -> Self {
        crate::Error::Tts(e)
    }
}

impl From<TtsError> for crate::Error {
    fn from(e: TtsError) -> Self {
        crate::Error::Tts(Box::new(e))
    }
}

impl crate::Error {
    /// The text-to-speech details, if this is a TTS model error.
    pub fn as_tts(&self) -> Option<&TtsError> {
        match self {
            crate::Error::Tts(e) => Some(e),
            _ => None,
        }
    }
}
