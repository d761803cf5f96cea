//! The speech-to-text stage: `stt/transcribe` requests over the Whisper engine worker.
//!
//! A request is either a raw WAV file as the whole payload (its id is then derived from the
//! bytes, so a redelivery is still recognized), or JSON with the WAV in base64 and options.
//! Decoding, resampling and inference all run on the engine thread.

use std::time::Instant;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sotad_engines::audio;
use sotad_engines::stt as engine;

use crate::config::Config;
use crate::mqtt::request::{self, ErrorCode, Request, RequestError};
use crate::worker::Worker;

/// The loaded model and the configured defaults.
pub struct Stt {
    model: engine::Whisper,
    language: Option<String>,
    beam_size: usize,
    encoder_window: engine::EncoderWindow,
}

pub type SttWorker = Worker<Stt>;

/// Starts the STT worker if `stt.model` is set; the model loads on the worker thread.
pub fn spawn(config: &Config) -> Option<SttWorker> {
    config.model_path(&config.stt.model)?;
    let config = config.clone();
    Some(Worker::spawn(
        "stt",
        config.service.request_queue,
        move || load(&config),
    ))
}

/// Loads the configured model; the error names the configuration key and the file.
pub fn load(config: &Config) -> Result<Stt, String> {
    let key_value = &config.stt.model;
    let Some(path) = config.model_path(key_value) else {
        return Err("speech-to-text is off: configuration key `stt.model` is empty".into());
    };
    let threads = threads(config.stt.threads);
    let model = engine::Whisper::load(
        &path,
        &engine::LoadOptions {
            threads,
            quantized_encoder: config.stt.quantized_encoder,
            decoder_threads: self::threads(config.stt.decoder_threads),
            ..Default::default()
        },
    )
    .map_err(|e| {
        format!(
            "speech-to-text is not available: configuration key `stt.model` = {key_value:?}: {e}"
        )
    })?;
    Ok(Stt {
        model,
        language: (!config.stt.language.is_empty()).then(|| config.stt.language.clone()),
        beam_size: config.stt.beam_size,
        encoder_window: encoder_window(&config.stt.encoder_window),
    })
}

/// The engine's window for `stt.encoder_window` (validated: `full` or `fit`).
fn encoder_window(configured: &str) -> engine::EncoderWindow {
    match configured {
        "fit" => engine::EncoderWindow::Fit {
            margin_secs: 2.0,
            min_secs: 5.0,
        },
        _ => engine::EncoderWindow::Full,
    }
}

/// `0` means one thread per core.
pub fn threads(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    }
}

/// `stt/transcribe` as JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscribeRequest {
    pub id: String,
    /// The WAV file, base64-encoded (standard alphabet, padding optional).
    pub wav: String,
    /// ISO language code; default `stt.language` (empty: detect).
    #[serde(default)]
    pub language: Option<String>,
    /// `transcribe` (default) or `translate` (to English; multilingual models only).
    #[serde(default)]
    pub task: Option<Task>,
    /// Beam width 1-8; default `stt.beam_size`.
    #[serde(default)]
    pub beam_size: Option<usize>,
    /// Text that conditions the decoder: names, spellings, hotwords.
    #[serde(default)]
    pub initial_prompt: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Transcribe,
    Translate,
}

impl Request for TranscribeRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// A parsed request: the id, the WAV bytes and the options.
#[derive(Debug, Clone)]
pub struct Transcribe {
    pub id: String,
    pub wav: Vec<u8>,
    pub language: Option<String>,
    pub task: Task,
    pub beam_size: Option<usize>,
    pub initial_prompt: Option<String>,
}

/// Parses a raw WAV or a JSON request of at most `max_bytes`.
pub fn parse(payload: &[u8], max_bytes: usize) -> Result<Transcribe, RequestError> {
    if payload.starts_with(b"RIFF") {
        return Ok(Transcribe {
            id: raw_id(payload),
            wav: payload.to_vec(),
            language: None,
            task: Task::Transcribe,
            beam_size: None,
            initial_prompt: None,
        });
    }
    let r: TranscribeRequest = request::parse(payload, max_bytes)?;
    let invalid = |field: &str, message: String| {
        RequestError::new(Some(r.id.clone()), ErrorCode::InvalidRequest, message).with_field(field)
    };
    let wav = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(r.wav.trim_end_matches('=').as_bytes())
        .map_err(|e| invalid("wav", format!("field `wav` is not base64: {e}")))?;
    if let Some(beam) = r.beam_size
        && !(1..=8).contains(&beam)
    {
        return Err(invalid(
            "beam_size",
            format!("{beam} is out of range; allowed: 1 to 8"),
        ));
    }
    if let Some(lang) = &r.language
        && !(lang.is_empty() || lang.len() <= 3 && lang.chars().all(|c| c.is_ascii_lowercase()))
    {
        return Err(invalid(
            "language",
            format!("{lang:?} is not a language code; allowed e.g. \"en\", or empty to detect"),
        ));
    }
    Ok(Transcribe {
        id: r.id,
        wav,
        language: r.language,
        task: r.task.unwrap_or(Task::Transcribe),
        beam_size: r.beam_size,
        initial_prompt: r.initial_prompt,
    })
}

/// A stable id for a raw WAV payload: `wav-` and a 64-bit FNV-1a hash of the bytes.
pub fn raw_id(payload: &[u8]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in payload {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("wav-{hash:016x}")
}

#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    pub id: String,
    pub text: String,
    pub language: String,
    pub segments: Vec<Segment>,
    pub duration_s: f64,
    pub timings: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub total_ms: f64,
    pub real_time_factor: f64,
}

impl Stt {
    /// Transcribes 16 kHz mono samples with the configured defaults overridden by `request`.
    pub fn transcribe_samples(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
        task: Task,
        beam_size: Option<usize>,
        initial_prompt: Option<&str>,
        cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<engine::Transcript, String> {
        let language = match language {
            Some("") => None,
            Some(l) => Some(l.to_string()),
            None => self.language.clone(),
        };
        let options = engine::TranscribeOptions {
            language,
            task: match task {
                Task::Transcribe => engine::Task::Transcribe,
                Task::Translate => engine::Task::Translate,
            },
            beam_size: beam_size.unwrap_or(self.beam_size),
            initial_prompt: initial_prompt.map(str::to_string),
            cancel,
            encoder_window: self.encoder_window,
            ..Default::default()
        };
        self.model
            .transcribe(samples, &options)
            .map_err(|e| e.to_string())
    }

    /// Runs one request: decode the WAV, bring it to 16 kHz mono, transcribe.
    pub fn run(&mut self, request: &Transcribe) -> Result<Transcript, RequestError> {
        let started = Instant::now();
        let fail = |code: ErrorCode, field: Option<&str>, message: String| {
            let e = RequestError::new(Some(request.id.clone()), code, message);
            match field {
                Some(f) => e.with_field(f),
                None => e,
            }
        };
        if request.wav.is_empty() {
            return Err(fail(
                ErrorCode::InvalidRequest,
                Some("wav"),
                "the WAV is empty".to_string(),
            ));
        }
        let wav = audio::parse_wav(&request.wav)
            .map_err(|e| fail(ErrorCode::InvalidAudio, Some("wav"), e.to_string()))?;
        let duration_s = wav.duration_secs();
        let mono = audio::to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)
            .map_err(|e| fail(ErrorCode::InvalidAudio, Some("wav"), e.to_string()))?;
        let t = self
            .transcribe_samples(
                &mono,
                request.language.as_deref(),
                request.task,
                request.beam_size,
                request.initial_prompt.as_deref(),
                None,
            )
            .map_err(|e| fail(ErrorCode::Internal, None, e))?;
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(Transcript {
            id: request.id.clone(),
            text: t.text.trim().to_string(),
            language: t.language.clone(),
            segments: t
                .segments
                .iter()
                .map(|s| Segment {
                    start: f64::from(s.start),
                    end: f64::from(s.end),
                    text: s.text.trim().to_string(),
                })
                .collect(),
            duration_s,
            timings: Timings {
                total_ms,
                real_time_factor: if duration_s > 0.0 {
                    total_ms / 1e3 / duration_s
                } else {
                    0.0
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_window_key_selects_the_engine_window() {
        assert_eq!(encoder_window("full"), engine::EncoderWindow::Full);
        let fit = encoder_window("fit");
        assert_ne!(fit, engine::EncoderWindow::Full);
        // A 2 s command (200 mel frames) is encoded as a 5 s window, not the full 30 s.
        assert_eq!(fit.frames(200), 500);
        assert_eq!(engine::EncoderWindow::Full.frames(200), 3000);
    }

    #[test]
    fn raw_wav_gets_a_stable_id() {
        let a = parse(b"RIFF....WAVEfmt ", 1024).unwrap();
        let b = parse(b"RIFF....WAVEfmt ", 1024).unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("wav-"));
        assert_ne!(a.id, parse(b"RIFF....WAVEfmX ", 1024).unwrap().id);
    }

    #[test]
    fn json_request_decodes_base64_and_checks_fields() {
        let r = parse(br#"{"id":"1","wav":"UklGRg==","task":"translate"}"#, 1024).unwrap();
        assert_eq!(r.wav, b"RIFF");
        assert_eq!(r.task, Task::Translate);
        let e = parse(br#"{"id":"2","wav":"***"}"#, 1024).unwrap_err();
        assert_eq!(
            (e.field.as_deref(), e.id.as_deref()),
            (Some("wav"), Some("2"))
        );
        let e = parse(br#"{"id":"3","wav":"","beam_size":9}"#, 1024).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("beam_size"));
        let e = parse(br#"{"id":"4","wav":"","language":"English"}"#, 1024).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("language"));
        let e = parse(br#"{"id":"5","wav":"","tsk":"x"}"#, 1024).unwrap_err();
        assert!(e.message.contains("tsk"), "{}", e.message);
    }
}
