//! Text to speech: Piper voices (VITS generators exported to ONNX).
//!
//! - [`onnx`] reads ONNX model files without copying their weights (a protobuf wire-format
//!   decoder and just enough of the ONNX schema).
//! - [`piper_voice`] loads a Piper voice (`*.onnx` + `*.onnx.json`), maps every weight to
//!   its PyTorch module parameter name and infers the VITS hyperparameters from the graph.
//! - [`phonemize`] turns espeak-ng's IPA output into the voice's phoneme ids, the way Piper
//!   does. Running espeak-ng is the daemon's job; this crate stays free of I/O.
//!
//! Errors are [`TtsError`]s, reaching callers as [`crate::Error::Tts`].

mod conv;
mod error;
mod json;
mod nfd;
mod nfd_table;
pub mod onnx;
pub mod phonemize;
pub mod piper_voice;
pub mod vits;

pub use self::error::{TtsError, TtsErrorKind, TtsFile, TtsSubject};
pub use self::piper_voice::{PiperVoice, VitsConfig, VoiceConfig};
