//! Speech to text (Whisper).
//!
//! - [`Whisper`] loads a faster-whisper (CTranslate2) model directory and transcribes 16 kHz
//!   mono audio ([`Whisper::transcribe`]) or WAV bytes ([`Whisper::transcribe_wav`]).
//! - [`mel`] is Whisper's log-mel front end.
//! - [`formats`] holds the file formats: [`ct2`] reads CTranslate2 model directories (as
//!   converted for faster-whisper), [`safetensors`] Hugging Face directories, [`gguf`] the
//!   Whisper GGUF files [`quantize`] writes; [`weights`] resolves every tensor of a Whisper
//!   model from any of them.
//! - [`model`] is the network on candle; [`ops`] the row kernels it adds to candle.
//! - [`tokenizer`] turns token ids into text and back.
//! - [`transcribe`] is the decoding loop (timestamps, silence, long-form seeking, fallback).
//!
//! ```no_run
//! use sotad_engines::stt::{LoadOptions, TranscribeOptions, Whisper};
//! # fn main() -> sotad_engines::Result<()> {
//! let model = Whisper::load("whisper-tiny.en-ct2", &LoadOptions { threads: 2, ..Default::default() })?;
//! let t = model.transcribe_wav(&std::fs::read("speech.wav").unwrap(), &TranscribeOptions::default())?;
//! for s in &t.segments { println!("[{:.2} → {:.2}]{}", s.start, s.end, s.text); }
//! # Ok(())
//! # }
//! ```

pub(crate) mod encoder;
pub mod formats;
pub(crate) mod int8;
pub mod mel;
pub mod model;
pub mod ops;
pub mod tokenizer;
pub mod transcribe;
pub mod vmath;

pub use self::formats::{ct2, gguf, quantize, safetensors, weights};

pub use self::transcribe::{
    EncoderWindow, LoadOptions, Segment, Task, Timings, TranscribeOptions, Transcript, Whisper,
    compression_ratio,
};
