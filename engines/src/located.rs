//! [`Located`]: the one shape of every model- and audio-file error.
//!
//! GGUF, WAV, CTranslate2 (and safetensors), ONNX and Piper voice-config problems all say the
//! same four things, in the same order, so a user can fix the file without a debugger:
//!
//! ```text
//! <format> file "<path>": <subject> at byte <offset>: <what is wrong>
//! WAV data at byte 24: sample rate is 0
//! ```
//!
//! The path is left out (`<format> data`) when the bytes came from a buffer, and the subject
//! and offset when they are unknown. Each format keeps its own kind enum (what can go wrong)
//! and names its subject (tensor, metadata key, variable, node, ...) through [`LocatedKind`];
//! the structure, the builders shared by all formats and the message are written once here.

use std::fmt;
use std::path::PathBuf;

/// The file format an error is about; its name starts the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// A GGUF model file.
    Gguf,
    /// A WAV (RIFF, RF64 or BW64) audio file.
    Wav,
    /// A CTranslate2 model (`model.bin`, `config.json`, `vocabulary.txt`).
    Ctranslate2,
    /// A safetensors model file.
    Safetensors,
    /// A Hugging Face model directory (`model.safetensors`, `config.json`, `tokenizer.json`).
    HuggingFace,
    /// An ONNX model (`*.onnx`).
    Onnx,
    /// A Piper voice config (`*.onnx.json`).
    VoiceConfig,
    /// A TensorFlow Lite flatbuffer (a microWakeWord model).
    TfLite,
    /// A microWakeWord model's JSON settings.
    WakeSettings,
    /// A synthesis request: its text, phoneme ids or options, or the inference run on them.
    /// Not a file: its messages name no path and no "data".
    Request,
}

impl Format {
    /// The name that starts the message.
    pub fn name(self) -> &'static str {
        match self {
            Format::Gguf => "GGUF",
            Format::Wav => "WAV",
            Format::Ctranslate2 => "CTranslate2",
            Format::Safetensors => "safetensors",
            Format::HuggingFace => "Hugging Face",
            Format::Onnx => "ONNX",
            Format::VoiceConfig => "Piper voice config",
            Format::TfLite => "TFLite",
            Format::WakeSettings => "microWakeWord settings",
            Format::Request => "TTS request",
        }
    }
}

/// What one format's errors can be, and how that format names the thing an error is about.
pub trait LocatedKind: fmt::Display {
    /// The tensor, key, variable, field... an error is about.
    type Subject: fmt::Debug + Clone + PartialEq;

    /// Writes the subject as it reads in the message, e.g. `tensor "blk.0.attn_q.weight"`.
    fn fmt_subject(&self, subject: &Self::Subject, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// A problem in a file (or buffer), with where it is. See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<K: LocatedKind> {
    /// The file format.
    pub file: Format,
    /// The file the data came from; `None` when parsing an in-memory buffer.
    pub path: Option<PathBuf>,
    /// Byte offset from the start of the file where the problem was detected, when meaningful.
    pub offset: Option<u64>,
    /// The tensor, key, variable or field involved, if any.
    pub subject: Option<K::Subject>,
    /// What is wrong.
    pub kind: K,
}

impl<K: LocatedKind> Located<K> {
    /// An error of `kind` in a `file` buffer, not yet located.
    pub(crate) fn in_format(file: Format, kind: K) -> Box<Self> {
        Box::new(Located {
            file,
            path: None,
            offset: None,
            subject: None,
            kind,
        })
    }

    /// At `offset` bytes from the start of the file.
    pub(crate) fn at_byte(mut self: Box<Self>, offset: u64) -> Box<Self> {
        self.offset = Some(offset);
        self
    }

    /// About `subject`.
    pub(crate) fn about(mut self: Box<Self>, subject: K::Subject) -> Box<Self> {
        self.subject = Some(subject);
        self
    }

    /// In the file at `path` (`None`: a buffer).
    pub(crate) fn in_file(mut self: Box<Self>, path: Option<PathBuf>) -> Box<Self> {
        self.path = path;
        self
    }
}

impl<K: LocatedKind> fmt::Display for Located<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.file.name();
        match &self.path {
            Some(path) => write!(f, "{name} file {path:?}")?,
            None if self.file == Format::Request => f.write_str(name)?,
            None => write!(f, "{name} data")?,
        }
        if let Some(subject) = &self.subject {
            f.write_str(": ")?;
            self.kind.fmt_subject(subject, f)?;
        }
        if let Some(offset) = self.offset {
            write!(f, " at byte {offset}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl<K: LocatedKind + fmt::Debug> std::error::Error for Located<K> {}

/// The subject of a format whose errors never name one (WAV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSubject {}
