//! The text-to-speech stage: Piper voices on the worker thread.
//!
//! Text is synthesized sentence by sentence; the first sentence is decoded in pieces
//! (`tts.first_chunk_ms` of audio first, then growing pieces), the others whole. Each piece
//! goes into a bounded channel as soon as it is ready, and the engine waits when the
//! channel is full: audio is never dropped, and a slow consumer slows synthesis instead of
//! growing memory.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sotad_engines::audio;
use sotad_engines::tts as engine;
use tokio::sync::mpsc;

use super::error::StageError;
use super::files::ModelFiles;
use super::worker::{Worker, threads};
use crate::config;

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
    /// The voices' files, checked before each job.
    files: ModelFiles,
}

pub type TtsWorker = Worker<Tts>;

/// Its buffers are sized by the model, not by the job: nothing to free when idle.
impl super::worker::Rest for Tts {}

/// Starts the TTS worker if `tts.voice` is set (`path`); the voice loads on the worker
/// thread. Other voices are looked up in `models_dir`.
pub fn spawn(
    path: Option<PathBuf>,
    config: config::Tts,
    models_dir: PathBuf,
    queue: usize,
) -> Option<TtsWorker> {
    let path = path?;
    Some(Worker::spawn("tts", queue, move || {
        load(Some(path), &config, models_dir)
    }))
}

/// Loads the configured voice; the error names the configuration key and the file.
pub fn load(
    path: Option<PathBuf>,
    config: &config::Tts,
    models_dir: PathBuf,
) -> Result<Tts, String> {
    let key_value = &config.voice;
    let Some(path) = path else {
        return Err("text-to-speech is off: configuration key `tts.voice` is empty".into());
    };
    let threads = threads(config.threads);
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
        models_dir,
        voices: VecDeque::from([(name, voice)]),
        speaker: config.speaker,
        threads,
        first_chunk_ms: config.first_chunk_ms,
        files: ModelFiles::new("tts", "tts.voice", path),
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

/// Text to say, with the request's overrides of the configured voice.
#[derive(Debug, Clone, Default)]
pub struct Say {
    pub text: String,
    /// A voice name (e.g. `en_US-joe-medium`), found as `<models.dir>/piper/<name>.onnx` or
    /// `<models.dir>/<name>.onnx`. Default: `tts.voice`.
    pub voice: Option<String>,
    /// Speaker id of a multi-speaker voice. Default: `tts.speaker`.
    pub speaker: Option<u32>,
    /// Speaking rate: larger is slower.
    pub length_scale: Option<f32>,
    /// Variation of the voice.
    pub noise_scale: Option<f32>,
    /// Variation of phoneme durations.
    pub noise_w: Option<f32>,
}

/// What was said.
#[derive(Debug, Clone)]
pub struct Spoken {
    pub voice: String,
    pub sample_rate: u32,
    /// Chunks sent.
    pub chunks: usize,
    /// Sentences they make up (a sentence is one chunk or, decoded in pieces, several).
    pub sentences: usize,
    pub audio_s: f64,
    /// Characters that had no phoneme in the voice and were skipped.
    pub skipped_chars: usize,
    pub cancelled: bool,
    pub first_audio_ms: f64,
    pub total_ms: f64,
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
            self.files.add(path.clone());
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

    /// Synthesizes `say`, sending each piece into `audio` as soon as it is ready (the
    /// first sentence in pieces of `tts.first_chunk_ms` and more, the others whole). Stops
    /// between pieces when `cancel` is set. `first_audio` runs once the first piece is sent.
    pub fn say(
        &mut self,
        say: &Say,
        audio_out: &mpsc::Sender<Chunk>,
        cancel: &AtomicBool,
        first_audio: impl FnOnce(),
    ) -> Result<Spoken, StageError> {
        self.files.check()?;
        let started = Instant::now();
        if cancel.load(Ordering::Relaxed) {
            // Cancelled while queued: nothing is synthesized.
            return Ok(Spoken {
                voice: say
                    .voice
                    .clone()
                    .unwrap_or_else(|| self.default_voice.clone()),
                sample_rate: self.voices.front().map_or(0, |(_, v)| v.sample_rate()),
                chunks: 0,
                sentences: 0,
                audio_s: 0.0,
                skipped_chars: 0,
                cancelled: true,
                first_audio_ms: 0.0,
                total_ms: started.elapsed().as_secs_f64() * 1e3,
            });
        }
        let mut first_audio = Some(first_audio);
        let speaker = say.speaker.unwrap_or(self.speaker);
        let first_chunk_ms = self.first_chunk_ms;
        let (name, voice) = self
            .voice(say.voice.as_deref())
            .map_err(|m| StageError::invalid("voice", m))?;
        let sample_rate = voice.sample_rate();
        let chunks = decode_chunks(
            first_chunk_ms,
            sample_rate,
            voice.piper().vits().decoder.hop_length(),
        );
        let options = engine::SynthOptions {
            chunks,
            speaker: (say.speaker.is_some() || speaker != 0).then_some(speaker),
            noise_scale: say.noise_scale,
            length_scale: say.length_scale,
            noise_w: say.noise_w,
            ..Default::default()
        };
        let mut chunks = 0usize;
        let mut sentences = 0usize;
        let mut samples_out = 0usize;
        let mut first_audio_ms = 0.0;
        let mut cancelled = false;
        let stats = voice
            .synthesize(&say.text, &options, |chunk: &engine::AudioChunk| {
                // Cancelled while this piece was synthesized: it is not sent.
                if cancel.load(Ordering::Relaxed) {
                    cancelled = true;
                    return ControlFlow::Break(());
                }
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
            .map_err(|e| say_error(&e))?;
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        let audio_s = samples_out as f64 / f64::from(sample_rate);
        Ok(Spoken {
            voice: name,
            sample_rate,
            chunks,
            sentences,
            audio_s,
            skipped_chars: stats.dropped_chars,
            cancelled,
            first_audio_ms,
            total_ms,
        })
    }
}

/// A synthesis error as the stage's: the request's mistakes (an unknown speaker, a scale out
/// of range, text with nothing to speak) name the `tts/say` field; the rest is internal.
fn say_error(e: &sotad_engines::Error) -> StageError {
    let sotad_engines::Error::Tts(t) = e else {
        return StageError::internal(e.to_string());
    };
    match &t.kind {
        engine::TtsErrorKind::UnknownSpeaker { .. } => {
            StageError::invalid("speaker", e.to_string())
        }
        engine::TtsErrorKind::EmptyText { .. } => StageError::invalid("text", e.to_string()),
        engine::TtsErrorKind::BadInput { name, .. } => {
            let field = match *name {
                "noise_scale" => "scales.noise",
                "length_scale" => "scales.length",
                "noise_w" => "scales.noise_w",
                _ => "text",
            };
            StageError::invalid(field, e.to_string())
        }
        _ => StageError::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_names_come_from_file_names() {
        assert_eq!(
            voice_name(Path::new("/m/piper/en_US-joe-medium.onnx")),
            "en_US-joe-medium"
        );
    }
}
