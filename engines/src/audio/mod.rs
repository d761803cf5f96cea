//! Audio input: WAV decoding, channel downmix and resampling to Whisper's 16 kHz mono.
//!
//! - [`wav`] parses RIFF/WAVE bytes from untrusted sources (PCM 8/16/24/32-bit integer,
//!   32/64-bit float, `WAVE_FORMAT_EXTENSIBLE`, RF64) into interleaved `f32` samples, and
//!   writes 16-bit PCM files.
//! - [`resample`] downmixes to mono and converts any sample rate to 16 kHz with a windowed
//!   sinc resampler (rubato), passing 16 kHz mono input through untouched.
//!
//! ```no_run
//! use sotad_engines::audio::{read_wav, resample::to_mono_16k};
//!
//! # fn main() -> sotad_engines::Result<()> {
//! let wav = read_wav("speech.wav")?;
//! let mono = to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)?;
//! println!("{} samples at 16 kHz", mono.len());
//! # Ok(())
//! # }
//! ```

pub mod resample;
pub mod wav;

pub use self::resample::{MonoResampler, downmix_to_mono, to_mono_16k};
pub use self::wav::{
    SampleFormat, Wav, WavError, WavErrorKind, encode_wav_i16, parse_wav, read_wav, write_wav_i16,
};

/// The one rate of sotad's speech path: the microphone's frames, Whisper's front end and
/// Silero's windows are all 16 kHz mono.
pub const SAMPLE_RATE: u32 = 16_000;
