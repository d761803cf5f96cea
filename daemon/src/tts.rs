//! The text-to-speech stage: `tts/say` over the Piper engine worker.
//!
//! Text is synthesized sentence by sentence; the first sentence is decoded in pieces
//! (`tts.first_chunk_ms` of audio first, then growing pieces), the others whole. Each piece is
//! published as one WAV on `tts/audio/<id>` as soon as it is ready (QoS 1, in order), then
//! `tts/done` closes the request. The first piece leaves after the decoder has run on its
//! frames only, not on the whole sentence. The channel from the engine thread to MQTT is bounded and the engine waits when
//! it is full: audio is never dropped, and a slow broker slows synthesis instead of growing
//! memory.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sotad_engines::audio;
use sotad_engines::tts as engine;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::mqtt::request::{ErrorCode, Request, RequestError};
use crate::worker::Worker;

/// Longest text accepted in one request, in bytes.
pub const MAX_TEXT_BYTES: usize = 100 * 1024;
/// Pieces of audio waiting for MQTT before the engine waits.
pub const AUDIO_BUFFER: usize = 4;
/// Voices kept loaded besides the default one.
const EXTRA_VOICES: usize = 2;

pub struct Tts {
    default_voice: String,
    models_dir: PathBuf,
    /// Loaded voices by name, most recently used last; the default voice is never evicted.
    voices: VecDeque<(String, engine::Voice)>,
    speaker: u32,
    threads: usize,
    /// Audio of the first piece of a request's first sentence, ms (0: whole sentences).
    first_chunk_ms: u32,
}

pub type TtsWorker = Worker<Tts>;

/// Starts the TTS worker if `tts.voice` is set; the voice loads on the worker thread.
pub fn spawn(config: &Config) -> Option<TtsWorker> {
    config.model_path(&config.tts.voice)?;
    let config = config.clone();
    Some(Worker::spawn(
        "tts",
        config.service.request_queue,
        move || load(&config),
    ))
}

/// Loads the configured voice; the error names the configuration key and the file.
pub fn load(config: &Config) -> Result<Tts, String> {
    let key_value = &config.tts.voice;
    let Some(path) = config.model_path(key_value) else {
        return Err("text-to-speech is off: configuration key `tts.voice` is empty".into());
    };
    let threads = crate::stt::threads(config.tts.threads);
    let voice = engine::Voice::load(
        &path,
        &engine::LoadOptions {
            threads,
            ..Default::default()
        },
    )
    .map_err(|e| {
        format!(
            "text-to-speech is not available: configuration key `tts.voice` = {key_value:?}: {e}"
        )
    })?;
    let name = voice_name(&path);
    if let Some(phonemizer) = voice.phonemizer() {
        tracing::info!(voice = %name, "phonemes from espeak-ng: {phonemizer}");
    }
    Ok(Tts {
        default_voice: name.clone(),
        models_dir: config.models_dir(),
        voices: VecDeque::from([(name, voice)]),
        speaker: config.tts.speaker,
        threads,
        first_chunk_ms: config.tts.first_chunk_ms,
    })
}

/// A voice's name: its file name without `.onnx`.
fn voice_name(path: &Path) -> String {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    file.strip_suffix(".onnx").unwrap_or(file).to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SayRequest {
    pub id: String,
    pub text: String,
    /// A voice name (e.g. `en_US-joe-medium`), found as `<models.dir>/piper/<name>.onnx` or
    /// `<models.dir>/<name>.onnx`. Default: `tts.voice`.
    #[serde(default)]
    pub voice: Option<String>,
    /// Speaker id of a multi-speaker voice. Default: `tts.speaker`.
    #[serde(default)]
    pub speaker: Option<u32>,
    #[serde(default)]
    pub scales: Scales,
    /// Also play the audio on the speaker (`audio.playback_device`), as well as publishing it.
    #[serde(default)]
    pub play: bool,
}

impl Request for SayRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Overrides of the voice's inference scales.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scales {
    /// Speaking rate: larger is slower (0.1-5).
    pub length: Option<f32>,
    /// Variation of the voice (0-2).
    pub noise: Option<f32>,
    /// Variation of phoneme durations (0-2).
    pub noise_w: Option<f32>,
}

pub fn validate(r: &SayRequest) -> Result<(), RequestError> {
    let invalid = |field: &str, message: String| {
        RequestError::new(Some(r.id.clone()), ErrorCode::InvalidRequest, message).with_field(field)
    };
    if r.text.trim().is_empty() {
        return Err(invalid("text", "the text is empty; nothing to say".into()));
    }
    if r.text.len() > MAX_TEXT_BYTES {
        return Err(invalid(
            "text",
            format!(
                "the text is {} bytes; the limit is {MAX_TEXT_BYTES}",
                r.text.len()
            ),
        ));
    }
    if let Some(v) = &r.voice
        && (v.is_empty()
            || v.len() > 128
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            || v.starts_with('.'))
    {
        return Err(invalid(
            "voice",
            format!(
                "{v:?} is not a voice name; allowed: letters, digits, '_', '-', '.' (e.g. \"en_US-joe-medium\")"
            ),
        ));
    }
    let s = &r.scales;
    for (field, value, lo, hi) in [
        ("scales.length", s.length, 0.1, 5.0),
        ("scales.noise", s.noise, 0.0, 2.0),
        ("scales.noise_w", s.noise_w, 0.0, 2.0),
    ] {
        if let Some(x) = value
            && !(x.is_finite() && x >= lo && x <= hi)
        {
            return Err(invalid(
                field,
                format!("{x} is out of range; allowed: {lo} to {hi}"),
            ));
        }
    }
    Ok(())
}

/// The answer on `tts/done`.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    pub id: String,
    pub voice: String,
    pub sample_rate: u32,
    /// WAVs published on `tts/audio/<id>`.
    pub chunks: usize,
    /// Sentences they make up (a sentence is one WAV or, decoded in pieces, several).
    pub sentences: usize,
    pub audio_s: f64,
    /// Characters that had no phoneme in the voice and were skipped.
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_chars: usize,
    pub cancelled: bool,
    pub timings: Timings,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub first_audio_ms: f64,
    pub total_ms: f64,
    pub real_time_factor: f64,
}

/// A sentence of audio, or a piece of one, ready to publish or play.
pub struct Chunk {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub text: String,
    /// The last piece of its sentence.
    pub sentence_end: bool,
}

/// The decoder chunks for a first piece of `first_ms` of audio (0: whole sentences): the
/// first piece's frames, then pieces doubling up to four times that.
pub fn decode_chunks(first_ms: u32, sample_rate: u32, hop: usize) -> engine::DecodeChunks {
    if first_ms == 0 || hop == 0 {
        return engine::DecodeChunks::WHOLE;
    }
    let samples = u64::from(first_ms) * u64::from(sample_rate) / 1000;
    let frames = usize::try_from(samples.div_ceil(hop as u64))
        .unwrap_or(usize::MAX)
        .max(1);
    engine::DecodeChunks {
        first_frames: frames,
        max_frames: frames.saturating_mul(4),
    }
}

impl Chunk {
    pub fn wav(&self) -> Vec<u8> {
        audio::encode_wav_i16(&self.samples, self.sample_rate, 1)
    }
}

impl Tts {
    fn voice(&mut self, name: Option<&str>) -> Result<(String, &engine::Voice), String> {
        let name = name.unwrap_or(&self.default_voice).to_string();
        if let Some(i) = self.voices.iter().position(|(n, _)| *n == name) {
            // Most recently used last (the default stays at the front when unused).
            if i != 0 {
                let entry = self.voices.remove(i).expect("index from position");
                self.voices.push_back(entry);
            }
        } else {
            let candidates = [
                self.models_dir.join("piper").join(format!("{name}.onnx")),
                self.models_dir.join(format!("{name}.onnx")),
            ];
            let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                return Err(format!(
                    "unknown voice {name:?}: neither {} nor {} exists (models.dir)",
                    candidates[0].display(),
                    candidates[1].display()
                ));
            };
            let voice = engine::Voice::load(
                path,
                &engine::LoadOptions {
                    threads: self.threads,
                    ..Default::default()
                },
            )
            .map_err(|e| format!("voice {name:?}: {e}"))?;
            if self.voices.len() > EXTRA_VOICES {
                self.voices.remove(1);
            }
            self.voices.push_back((name.clone(), voice));
        }
        let voice = &self
            .voices
            .iter()
            .find(|(n, _)| *n == name)
            .expect("loaded above")
            .1;
        Ok((name, voice))
    }

    /// Synthesizes `request`, sending each piece into `audio` as soon as it is ready (the
    /// first sentence in pieces of `tts.first_chunk_ms` and more, the others whole). Stops
    /// between pieces when `cancel` is set. `first_audio` runs once the first piece is sent.
    pub fn say(
        &mut self,
        request: &SayRequest,
        audio_out: &mpsc::Sender<Chunk>,
        cancel: &AtomicBool,
        first_audio: impl FnOnce(),
    ) -> Result<Done, RequestError> {
        let mut first_audio = Some(first_audio);
        let started = Instant::now();
        let fail = |field: Option<&str>, message: String| {
            let e = RequestError::new(Some(request.id.clone()), ErrorCode::InvalidRequest, message);
            match field {
                Some(f) => e.with_field(f),
                None => e,
            }
        };
        let speaker = request.speaker.unwrap_or(self.speaker);
        let first_chunk_ms = self.first_chunk_ms;
        let (name, voice) = self
            .voice(request.voice.as_deref())
            .map_err(|m| fail(Some("voice"), m))?;
        let sample_rate = voice.sample_rate();
        let chunks = decode_chunks(
            first_chunk_ms,
            sample_rate,
            voice.piper().vits().decoder.hop_length(),
        );
        let options = engine::SynthOptions {
            chunks,
            speaker: (request.speaker.is_some() || speaker != 0).then_some(speaker),
            noise_scale: request.scales.noise,
            length_scale: request.scales.length,
            noise_w: request.scales.noise_w,
            ..Default::default()
        };
        let mut chunks = 0usize;
        let mut sentences = 0usize;
        let mut samples_out = 0usize;
        let mut first_audio_ms = 0.0;
        let mut cancelled = false;
        let stats = voice
            .synthesize(&request.text, &options, |chunk: &engine::AudioChunk| {
                if chunks == 0 {
                    first_audio_ms = started.elapsed().as_secs_f64() * 1e3;
                }
                chunks += 1;
                sentences += usize::from(chunk.sentence_end);
                samples_out += chunk.samples.len();
                let sent = audio_out.blocking_send(Chunk {
                    samples: chunk.samples.to_vec(),
                    sample_rate,
                    text: chunk.text.to_string(),
                    sentence_end: chunk.sentence_end,
                });
                if let Some(f) = first_audio.take() {
                    f();
                }
                if sent.is_err() || cancel.load(Ordering::Relaxed) {
                    cancelled = true;
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(|e| match &e {
                sotad_engines::Error::Tts(t)
                    if matches!(t.kind, engine::TtsErrorKind::UnknownSpeaker { .. }) =>
                {
                    fail(Some("speaker"), e.to_string())
                }
                sotad_engines::Error::Tts(t)
                    if matches!(t.kind, engine::TtsErrorKind::BadInput { .. }) =>
                {
                    fail(Some("text"), e.to_string())
                }
                _ => {
                    RequestError::new(Some(request.id.clone()), ErrorCode::Internal, e.to_string())
                }
            })?;
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        let audio_s = samples_out as f64 / f64::from(sample_rate);
        Ok(Done {
            id: request.id.clone(),
            voice: name,
            sample_rate,
            chunks,
            sentences,
            audio_s,
            skipped_chars: stats.dropped_chars,
            cancelled,
            timings: Timings {
                first_audio_ms,
                total_ms,
                real_time_factor: if audio_s > 0.0 {
                    total_ms / 1e3 / audio_s
                } else {
                    0.0
                },
            },
        })
    }
}

/// Shared cancel flag for a running `tts/say` (barge-in, shutdown).
pub type CancelFlag = Arc<AtomicBool>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::request;

    fn say(json: &str) -> Result<SayRequest, RequestError> {
        let r: SayRequest = request::parse(json.as_bytes(), 1 << 20)?;
        validate(&r)?;
        Ok(r)
    }

    #[test]
    fn say_validation_names_the_field() {
        assert!(say(r#"{"id":"1","text":"Hello."}"#).is_ok());
        assert_eq!(
            say(r#"{"id":"1","text":"  "}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("text")
        );
        assert_eq!(
            say(r#"{"id":"1","text":"a","voice":"../etc/passwd"}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("voice")
        );
        assert_eq!(
            say(r#"{"id":"1","text":"a","scales":{"length":0}}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("scales.length")
        );
        let big = format!(
            r#"{{"id":"1","text":"{}"}}"#,
            "a".repeat(MAX_TEXT_BYTES + 1)
        );
        assert_eq!(say(&big).unwrap_err().field.as_deref(), Some("text"));
    }

    #[test]
    fn voice_names_come_from_file_names() {
        assert_eq!(
            voice_name(Path::new("/m/piper/en_US-joe-medium.onnx")),
            "en_US-joe-medium"
        );
    }
}
