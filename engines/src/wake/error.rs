//! [`WakeError`]: a wake word model or settings problem with its location.

use std::fmt;

use crate::located::{Format, Located, LocatedKind};

/// A TensorFlow Lite model (or its JSON settings) that is malformed or uses something the
/// engine does not support: a [`Located`] error (the one shape of every file error), whose
/// subject is the flatbuffer table (`Model`, `SubGraph #0`, `Operator #43`, ...) or settings key
/// involved.
///
/// Displays as, for example:
///
/// ```text
/// TFLite file "/models/hey_jarvis.tflite": Operator #43 at byte 2560: operator SQUARED_DIFFERENCE (code 99) is not supported (supported: CONCATENATION, CONV_2D, ...)
/// ```
pub type WakeError = Located<WakeErrorKind>;

/// What is wrong, in words: the reader's checks are many, and each says what it found.
#[derive(Debug, Clone, PartialEq)]
pub struct WakeErrorKind {
    /// The description.
    pub message: String,
}

impl fmt::Display for WakeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl LocatedKind for WakeErrorKind {
    /// The table (with its index) or settings key, as it reads in the message.
    type Subject = String;

    fn fmt_subject(&self, subject: &String, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(subject)
    }
}

impl WakeError {
    /// A model problem (`Format::TfLite`); settings problems set `file` to
    /// `Format::WakeSettings`.
    pub(crate) fn new(message: impl Into<String>) -> Box<Self> {
        Located::in_format(
            Format::TfLite,
            WakeErrorKind {
                message: message.into(),
            },
        )
    }

    pub(crate) fn at(self: Box<Self>, offset: usize) -> Box<Self> {
        self.at_byte(offset as u64)
    }

    pub(crate) fn table(self: Box<Self>, table: impl Into<String>) -> Box<Self> {
        self.about(table.into())
    }
}

impl From<Box<WakeError>> for crate::Error {
    fn from(e: Box<WakeError>) -> Self {
        crate::Error::Wake(e)
    }
}
