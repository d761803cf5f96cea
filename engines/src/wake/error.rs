//! [`WakeError`]: a wake word model or settings problem with its location.

use std::fmt;
use std::path::PathBuf;

/// A TensorFlow Lite model (or its JSON settings) that is malformed or uses something the
/// engine does not support.
///
/// Displays as, for example:
///
/// ```text
/// TFLite model "/models/hey_jarvis.tflite": Operator #43 at byte 2560: operator SQUARED_DIFFERENCE (code 99) is not supported (supported: CONCATENATION, CONV_2D, ...)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WakeError {
    /// The file the data came from; `None` when parsing an in-memory buffer.
    pub path: Option<PathBuf>,
    /// The flatbuffer table (`Model`, `SubGraph`, `Tensor`, `Operator`, ...) or settings key
    /// involved, with its index when it has one.
    pub table: Option<String>,
    /// Byte offset from the start of the file where the problem was detected.
    pub offset: Option<u64>,
    /// What is wrong.
    pub message: String,
}

impl WakeError {
    pub(crate) fn new(message: impl Into<String>) -> Box<Self> {
        Box::new(WakeError {
            path: None,
            table: None,
            offset: None,
            message: message.into(),
        })
    }

    pub(crate) fn at(mut self: Box<Self>, offset: usize) -> Box<Self> {
        self.offset = Some(offset as u64);
        self
    }

    pub(crate) fn table(mut self: Box<Self>, table: impl Into<String>) -> Box<Self> {
        self.table = Some(table.into());
        self
    }
}

impl fmt::Display for WakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "TFLite model {path:?}")?,
            None => f.write_str("TFLite model data")?,
        }
        if let Some(table) = &self.table {
            write!(f, ": {table}")?;
        }
        if let Some(offset) = self.offset {
            let sep = if self.table.is_some() { " " } else { ": " };
            write!(f, "{sep}at byte {offset}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for WakeError {}

impl From<Box<WakeError>> for crate::Error {
    fn from(e: Box<WakeError>) -> Self {
        crate::Error::Wake(e)
    }
}
