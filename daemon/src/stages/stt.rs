//! The speech-to-text stage: Whisper on its worker thread.
//!
//! A WAV is decoded, brought to 16 kHz mono and transcribed on the engine thread
//! ([`Stt::run`]); the microphone's utterances are already 16 kHz mono
//! ([`Stt::transcribe_samples`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use sotad_engines::audio;
use sotad_engines::stt as engine;

use super::error::StageError;
use super::files::ModelFiles;
use super::worker::{Worker, threads};
use crate::config;

pub use engine::Task;

/// The loaded model and the configured defaults.
pub struct Stt {
    model: engine::Whisper,
    language: Option<String>,
    beam_size: usize,
    encoder_window: engine::EncoderWindow,
    files: ModelFiles,
}

pub type SttWorker = Worker<Stt>;

/// Its buffers are sized by the model, not by the job: nothing to free when idle.
impl super::worker::Rest for Stt {}

/// Starts the STT worker if `stt.model` is set (`path`); the model loads on the worker
/// thread.
pub fn spawn(path: Option<PathBuf>, config: config::Stt, queue: usize) -> Option<SttWorker> {
    let path = path?;
    Some(Worker::spawn("stt", queue, move || {
        load(Some(path), &config)
    }))
}

/// Loads the configured model; the error names the configuration key and the file.
pub fn load(path: Option<PathBuf>, config: &config::Stt) -> Result<Stt, String> {
    let Some(path) = path else {
        return Err("speech-to-text is off: configuration key `stt.model` is empty".into());
    };
    let model = engine::Whisper::load(
        &path,
        &engine::LoadOptions {
            threads: threads(config.threads),
            quantized_encoder: config.quantized_encoder,
            encoder_int8: config.encoder_precision == "int8",
            decoder_threads: threads(config.decoder_threads),
            ..Default::default()
        },
    )
    .map_err(|e| {
        format!(
            "speech-to-text is not available: configuration key `stt.model` = {:?}: {e}",
            config.model
        )
    })?;
    Ok(Stt {
        model,
        language: (!config.language.is_empty()).then(|| config.language.clone()),
        beam_size: config.beam_size,
        encoder_window: encoder_window(&config.encoder_window),
        files: ModelFiles::new("stt", "stt.model", path),
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

/// A WAV to transcribe, with the request's overrides of the configured defaults.
#[derive(Debug, Clone)]
pub struct WavJob {
    pub wav: Vec<u8>,
    /// `Some("")`: detect; `None`: `stt.language`.
    pub language: Option<String>,
    pub task: Task,
    pub beam_size: Option<usize>,
    pub initial_prompt: Option<String>,
}

/// What a WAV said.
#[derive(Debug, Clone)]
pub struct Transcription {
    pub transcript: engine::Transcript,
    /// The WAV's length.
    pub duration_s: f64,
    /// Decoding, resampling and transcribing.
    pub total_ms: f64,
}

impl Stt {
    /// The languages the model transcribes (ISO codes): `en` only for English-only models.
    pub fn languages(&self) -> Vec<String> {
        if !self.model.is_multilingual() {
            return vec!["en".to_string()];
        }
        let tokenizer = self.model.tokenizer();
        tokenizer
            .specials()
            .languages
            .iter()
            .map(|(_, code)| code.clone())
            .collect()
    }

    /// Transcribes 16 kHz mono samples with the configured defaults overridden by the
    /// arguments; stops early when `cancel` is set.
    pub fn transcribe_samples(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
        task: Task,
        beam_size: Option<usize>,
        initial_prompt: Option<&str>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<engine::Transcript, String> {
        self.transcribe_checked(samples, language, task, beam_size, initial_prompt, cancel)
            .map_err(|e| e.message)
    }

    /// [`Stt::transcribe_samples`] with the caller's mistakes (no samples, non-finite ones, a
    /// language or task the model does not have) told apart from the engine's failures.
    pub fn transcribe_checked(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
        task: Task,
        beam_size: Option<usize>,
        initial_prompt: Option<&str>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<engine::Transcript, StageError> {
        self.files.check()?;
        let language = match language {
            Some("") => None,
            Some(l) => Some(l.to_string()),
            None => self.language.clone(),
        };
        let options = engine::TranscribeOptions {
            language,
            task,
            beam_size: beam_size.unwrap_or(self.beam_size),
            initial_prompt: initial_prompt.map(str::to_string),
            cancel,
            encoder_window: self.encoder_window,
            ..Default::default()
        };
        self.model
            .transcribe(samples, &options)
            .map_err(|e| match e {
                // The samples come from the request's WAV.
                sotad_engines::Error::InvalidInput {
                    field: "audio",
                    reason,
                } => StageError::audio("wav", reason),
                sotad_engines::Error::InvalidInput { field, reason } => {
                    StageError::invalid(field, reason)
                }
                e => StageError::internal(e.to_string()),
            })
    }

    /// Runs one job: decode the WAV, bring it to 16 kHz mono, transcribe.
    pub fn run(&mut self, job: &WavJob) -> Result<Transcription, StageError> {
        let started = Instant::now();
        if job.wav.is_empty() {
            return Err(StageError::invalid("wav", "the WAV is empty"));
        }
        let wav =
            audio::parse_wav(&job.wav).map_err(|e| StageError::audio("wav", e.to_string()))?;
        let duration_s = wav.duration_secs();
        let mono = audio::to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)
            .map_err(|e| StageError::audio("wav", e.to_string()))?;
        let transcript = self.transcribe_checked(
            &mono,
            job.language.as_deref(),
            job.task,
            job.beam_size,
            job.initial_prompt.as_deref(),
            None,
        )?;
        Ok(Transcription {
            transcript,
            duration_s,
            total_ms: started.elapsed().as_secs_f64() * 1e3,
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
}
