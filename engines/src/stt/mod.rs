//! Speech to text (Whisper).
//!
//! - [`Whisper`] loads a faster-whisper (CTranslate2) model directory and transcribes 16 kHz
//!   mono audio ([`Whisper::transcribe`]) or WAV bytes ([`Whisper::transcribe_wav`]).
//! - [`mel`] is Whisper's log-mel front end.
//! - [`ct2`] reads CTranslate2 model directories (as converted for faster-whisper) and maps
//!   their variables to a Whisper model's weights.
//! - [`weights`] resolves every tensor of a Whisper model from a CTranslate2 model.
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

pub mod ct2;
pub(crate) mod encoder;
pub mod gguf;
pub mod mel;
pub mod model;
pub mod ops;
pub mod quantize;
pub mod safetensors;
pub mod tokenizer;
pub mod transcribe;
pub mod vmath;
pub mod weights;

pub use self::transcribe::{
    EncoderWindow, LoadOptions, Segment, Task, Timings, TranscribeOptions, Transcript, Whisper,
    compression_ratio,
};
