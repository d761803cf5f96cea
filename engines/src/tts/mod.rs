//! Text to speech: Piper voices (VITS generators exported to ONNX).
//!
//! - [`onnx`] reads ONNX model files without copying their weights (a protobuf wire-format
//!   decoder and just enough of the ONNX schema).
//! - [`piper_voice`] loads a Piper voice (`*.onnx` + `*.onnx.json`), maps every weight to
//!   its PyTorch module parameter name and infers the VITS hyperparameters from the graph.
//! - [`phonemize`] turns espeak-ng's IPA output into the voice's phoneme ids, the way Piper
//!   does; [`espeak`] runs espeak-ng as a separate program (GPL-3.0: never linked) and
//!   splits long text into sentences for it.
//! - [`vits`] is the VITS generator (f32, CPU) on plain buffers, its convolutions on the
//!   gemm kernels of `conv.rs`.
//! - [`Voice`] (`synth.rs`) is the API the daemon calls: text in, one audio chunk per
//!   sentence out through a callback, as soon as each is ready. [`Synthesizer`] is the
//!   engine-neutral trait a second engine would implement.
//!
//! Errors are [`TtsError`]s, reaching callers as [`crate::Error::Tts`].

mod conv;
mod error;
pub mod espeak;
pub mod onnx;
pub mod phonemize;
pub mod piper_voice;
mod synth;
pub mod vits;

pub use self::error::{TtsError, TtsErrorKind, TtsFile, TtsSubject};
pub use self::piper_voice::{PiperVoice, VitsConfig, VoiceConfig};
pub use self::synth::{
    AudioChunk, LoadOptions, MAX_PHONEMES, STREAM_MAX_GAIN, SynthOptions, SynthStats, Synthesizer,
    Voice,
};
pub use self::vits::{DecodeChunks, Scales, StageTimes};
