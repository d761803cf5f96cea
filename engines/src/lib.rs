//! sotad's inference engines.
//!
//! Everything here is synchronous and free of I/O runtimes: no tokio, no MQTT, no ALSA.
//! The daemon drives these engines from dedicated worker threads; tests and benchmarks
//! drive them directly from files, on any target (including aarch64 under qemu).

pub mod audio;
mod bpe;
pub mod cpu;
pub mod error;
pub mod gguf;
pub mod intent;
pub mod json;
pub mod llm;
pub mod located;
pub mod mapped;
mod par;
pub mod quant;
pub mod stt;
pub mod tts;
pub mod turn;
pub mod vad;
pub mod wake;

pub use error::{Error, Result};
