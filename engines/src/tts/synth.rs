//! Text to speech with a Piper voice: the API the daemon calls.
//!
//! [`Voice::synthesize`] splits the text into sentences ([`super::espeak::split_text`]),
//! phonemizes each with espeak-ng (its library, or a process started one sentence ahead so it
//! overlaps with synthesis), maps the phonemes to ids the way Piper does, runs [`Vits`] on
//! them and hands every sentence's audio to a callback as soon as it is ready. Memory stays
//! bounded by one sentence, whatever the length of the text; the callback can stop the stream.
//!
//! [`Synthesizer`] is the engine-neutral interface, so another engine (Kokoro) can sit
//! beside Piper later.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::error::{TtsError, TtsErrorKind, TtsFile};
use super::espeak::{Espeak, Pending, sanitize, split_text};
use super::phonemize::{PhonemeIdMap, clauses_from_cli, nfd, phonemes_to_ids, sentences};
use super::piper_voice::PiperVoice;
use super::vits::{DecodeChunks, Noise, Scales, StageTimes, Vits};
use crate::error::Result;

/// How to load a voice.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Inference threads (a dedicated pool per voice). At least 1.
    pub threads: usize,
    /// The espeak-ng program to run for every piece. `None` (the default): espeak-ng's
    /// shared library, loaded at run time, or when it is missing the program `espeak-ng`
    /// from `PATH` (see [`super::espeak`]).
    pub espeak: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            espeak: None,
        }
    }
}

/// Per-request synthesis options; `None` takes the voice config's value.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Speaker id of a multi-speaker voice (default 0).
    pub speaker: Option<u32>,
    /// Noise of the prior (voice default, typically 0.667).
    pub noise_scale: Option<f32>,
    /// Duration multiplier: above 1 is slower (voice default, typically 1).
    pub length_scale: Option<f32>,
    /// Noise of the stochastic duration predictor (voice default, typically 0.8).
    pub noise_w: Option<f32>,
    /// Seed of the noise: the same text, options and seed give the same audio.
    pub seed: u64,
    /// Scale each sentence to a peak of 1.0, as piper-tts does by default. With `chunks`
    /// cutting sentences into pieces, the peak of the whole sentence is not known when its
    /// first piece goes out: each piece is then scaled by the reciprocal of the highest
    /// peak so far, but never above [`STREAM_MAX_GAIN`] (a quiet first piece is not
    /// blown up); no sample leaves above 1.0 either way.
    pub normalize: bool,
    /// How the first sentence's audio is cut into pieces (default: one piece per sentence).
    /// With chunks, its first piece is handed over after the decoder has run on its first
    /// frames only, not on the whole sentence. The later sentences are synthesized whole
    /// (one piece each): they are ready long before the audio before them has played, and
    /// whole they cost the decoder no overlap.
    pub chunks: DecodeChunks,
}

/// The largest gain of [`SynthOptions::normalize`] on a sentence streamed in pieces.
/// joe-medium's raw output peaked at 0.48 and 0.57 on the two sentences of the streaming test
/// (whole-sentence normalization gains of 2.1 and 1.7), with 250 ms pieces peaking from 0.12
/// to 0.57: 2 keeps a streamed sentence about as loud as a whole one, while a quiet first
/// piece (an unvoiced onset) is not raised far above what follows.
pub const STREAM_MAX_GAIN: f32 = 2.0;

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            speaker: None,
            noise_scale: None,
            length_scale: None,
            noise_w: None,
            seed: 0,
            normalize: true,
            chunks: DecodeChunks::WHOLE,
        }
    }
}

/// A piece of audio: a whole sentence, or a part of one when [`SynthOptions::chunks`]
/// cuts sentences.
#[derive(Debug, Clone, Copy)]
pub struct AudioChunk<'a> {
    /// Mono samples in `[-1, 1]`.
    pub samples: &'a [f32],
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Index of this chunk in the stream (0, 1, ...).
    pub index: usize,
    /// The piece of text it came from (a sentence; a sentence longer than
    /// [`MAX_PHONEMES`] is synthesized in several parts, each counted as a sentence here).
    pub text: &'a str,
    /// The phonemes synthesized.
    pub phonemes: &'a str,
    /// Index of the sentence in the stream (0, 1, ...); equal for the pieces of one sentence.
    pub sentence: usize,
    /// Whether this is the last piece of its sentence.
    pub sentence_end: bool,
}

impl AudioChunk<'_> {
    /// The samples as 16-bit PCM (clipped, scaled by 32767 like Piper).
    pub fn to_i16(&self) -> Vec<i16> {
        self.samples
            .iter()
            .map(|&s| {
                #[allow(clippy::cast_possible_truncation)]
                let v = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
                v
            })
            .collect()
    }

    /// Duration in seconds.
    pub fn secs(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let s = self.samples.len() as f64 / f64::from(self.sample_rate);
        s
    }
}

/// What a synthesis did and how long it took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SynthStats {
    /// Chunks delivered.
    pub chunks: usize,
    /// Sentences synthesized (whole or, when stopped, in part).
    pub sentences: usize,
    /// Samples delivered.
    pub samples: usize,
    /// Seconds of audio delivered.
    pub audio_secs: f64,
    /// Time spent waiting for espeak-ng (the part not overlapped with synthesis).
    pub phonemize_ms: f64,
    /// From the call to the first chunk handed to the callback.
    pub first_audio_ms: f64,
    /// The whole call.
    pub total_ms: f64,
    /// Model time by stage, summed over chunks.
    pub stages: StageTimes,
    /// Phonemes the voice does not know (skipped, as Piper does).
    pub unknown_phonemes: usize,
    /// Control characters replaced by spaces before phonemizing.
    pub dropped_chars: usize,
    /// Whether the callback stopped the stream early.
    pub stopped: bool,
}

impl SynthStats {
    /// Real-time factor: synthesis time over audio time (below 1 is faster than real time).
    pub fn rtf(&self) -> f64 {
        if self.audio_secs > 0.0 {
            self.total_ms / 1e3 / self.audio_secs
        } else {
            0.0
        }
    }
}

/// An engine that turns text into audio chunks.
pub trait Synthesizer: Send + Sync {
    /// Output sample rate in Hz.
    fn sample_rate(&self) -> u32;

    /// Synthesizes `text`, calling `on_chunk` with each sentence's audio as soon as it is
    /// ready; `ControlFlow::Break` stops the stream.
    fn synthesize_dyn(
        &self,
        text: &str,
        opts: &SynthOptions,
        on_chunk: &mut dyn FnMut(&AudioChunk<'_>) -> ControlFlow<()>,
    ) -> Result<SynthStats>;
}

/// Longest phoneme sequence synthesized at once; longer sentences are cut at a word boundary
/// (decoder memory grows with the audio length).
pub const MAX_PHONEMES: usize = 400;

/// Most latent frames decoded at once (about 6 s of audio at Piper's 22050 Hz and hop of
/// 256): a longer sentence (up to [`MAX_PHONEMES`], tens of seconds without punctuation) is
/// decoded and delivered in pieces of this size, so the decoder's memory stays bounded by it
/// instead of growing with the sentence. Shorter sentences are one piece, as before.
pub const MAX_DECODE_FRAMES: usize = 512;

/// `chunks` with no piece longer than [`MAX_DECODE_FRAMES`].
fn bounded(chunks: DecodeChunks) -> DecodeChunks {
    if chunks.first_frames == 0 {
        return DecodeChunks {
            first_frames: MAX_DECODE_FRAMES,
            max_frames: MAX_DECODE_FRAMES,
        };
    }
    DecodeChunks {
        first_frames: chunks.first_frames.min(MAX_DECODE_FRAMES),
        max_frames: chunks.max_frames.min(MAX_DECODE_FRAMES),
    }
}

/// A loaded Piper voice, ready to synthesize. `Send + Sync`: share it behind an `Arc`.
pub struct Voice {
    voice: PiperVoice,
    vits: Vits,
    map: PhonemeIdMap,
    espeak: Option<Espeak>,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("voice", &self.voice)
            .field("espeak", &self.espeak)
            .field("threads", &self.pool.current_num_threads())
            .finish_non_exhaustive()
    }
}

fn bad_input(name: &'static str, reason: String) -> crate::Error {
    TtsError::new(TtsFile::Request, TtsErrorKind::BadInput { name, reason }).into()
}

impl Voice {
    /// Loads the Piper voice `onnx_path` (with its config at `<onnx_path>.json`).
    pub fn load(onnx_path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        Self::from_piper(PiperVoice::open(onnx_path)?, opts)
    }

    /// Builds the engine for an opened voice.
    pub fn from_piper(voice: PiperVoice, opts: &LoadOptions) -> Result<Self> {
        let config = voice.config();
        let espeak = match config.phoneme_type.as_str() {
            "espeak" => Some(match &opts.espeak {
                Some(program) => Espeak::new(program.clone(), config.espeak_voice.clone()),
                None => Espeak::auto(config.espeak_voice.clone()),
            }),
            "text" => None,
            other => {
                return Err(TtsError::new(
                    TtsFile::VoiceConfig,
                    TtsErrorKind::BadValue {
                        reason: format!("phoneme_type {other:?} is not supported (espeak or text)"),
                    },
                )
                .path(voice.config_path().map(Path::to_path_buf))
                .subject(super::TtsSubject::Key("phoneme_type".to_owned()))
                .into());
            }
        };
        let map = PhonemeIdMap::new(&config.phoneme_id_map)?;
        let vits = Vits::load(&voice)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .thread_name(|i| format!("sotad-tts-{i}"))
            .build()
            .map_err(|e| {
                TtsError::new(
                    TtsFile::Request,
                    TtsErrorKind::Inference {
                        stage: "thread pool",
                        reason: e.to_string(),
                    },
                )
            })?;
        Ok(Self {
            voice,
            vits,
            map,
            espeak,
            pool,
        })
    }

    /// Output sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.voice.config().sample_rate
    }

    /// Where the voice's phonemes come from (the espeak-ng library or program), for logs;
    /// `None` for a voice that reads text directly.
    pub fn phonemizer(&self) -> Option<String> {
        self.espeak.as_ref().map(Espeak::describe)
    }

    /// The underlying voice (config, hyperparameters).
    pub fn piper(&self) -> &PiperVoice {
        &self.voice
    }

    /// The id of a named speaker of a multi-speaker voice.
    pub fn speaker_id(&self, name: &str) -> Option<u32> {
        self.voice.config().speaker_id_map.get(name).copied()
    }

    fn scales(&self, opts: &SynthOptions) -> Scales {
        let c = self.voice.config();
        Scales {
            noise_scale: opts.noise_scale.unwrap_or(c.noise_scale),
            length_scale: opts.length_scale.unwrap_or(c.length_scale),
            noise_w: opts.noise_w.unwrap_or(c.noise_w),
        }
    }

    /// Synthesizes one sentence's phoneme ids (Piper's `phoneme_ids_to_audio`): the raw model
    /// output, not normalized.
    pub fn synthesize_ids(&self, ids: &[i64], opts: &SynthOptions) -> Result<Vec<f32>> {
        let scales = self.scales(opts);
        let mut noise = Noise::new(opts.seed);
        self.pool
            .install(|| self.vits.infer(ids, opts.speaker, scales, &mut noise, None))
    }

    /// Phoneme ids of every sentence of `text` (espeak-ng, then Piper's id scheme), with the
    /// count of unknown phonemes skipped.
    pub fn phoneme_ids(&self, text: &str) -> Result<(Vec<Vec<i64>>, usize)> {
        let mut out = Vec::new();
        let mut unknown = 0;
        let (clean, _) = sanitize(text);
        for piece in split_text(&clean) {
            let pending = self.start_phonemes(piece)?;
            for (_, ids, u) in self.finish_phonemes(piece, pending)? {
                unknown += u;
                out.push(ids);
            }
        }
        Ok((out, unknown))
    }

    fn start_phonemes(&self, piece: &str) -> Result<Option<Pending>> {
        match &self.espeak {
            Some(e) => e.spawn(piece).map(Some),
            None => Ok(None),
        }
    }

    /// The phoneme strings and ids of `piece`'s sentences, cut to [`MAX_PHONEMES`].
    fn finish_phonemes(
        &self,
        piece: &str,
        pending: Option<Pending>,
    ) -> Result<Vec<(String, Vec<i64>, usize)>> {
        let sents: Vec<Vec<char>> = match pending {
            Some(p) => {
                let ipa = p.wait()?;
                let cli = clauses_from_cli(piece, &ipa);
                if !cli.aligned {
                    tracing::debug!(
                        piece,
                        "espeak-ng clauses did not align with the text; one sentence without terminators"
                    );
                }
                sentences(&cli.clauses)
            }
            None => vec![nfd(piece)],
        };
        let mut out = Vec::new();
        for s in sents {
            let mut rest: &[char] = &s;
            while !rest.is_empty() {
                let mut cut = rest.len().min(MAX_PHONEMES);
                if cut < rest.len() {
                    if let Some(sp) = rest[..cut].iter().rposition(|&c| c == ' ') {
                        if sp > 0 {
                            cut = sp + 1;
                        }
                    }
                }
                let (part, tail) = rest.split_at(cut);
                rest = tail;
                if part.iter().all(|c| c.is_whitespace()) {
                    continue;
                }
                let ids = phonemes_to_ids(part, &self.map);
                let unknown: usize = ids.unknown.iter().map(|&(_, n)| n).sum();
                if unknown > 0 {
                    tracing::warn!(
                        unknown = ?ids.unknown,
                        "phonemes the voice does not know were skipped"
                    );
                }
                out.push((part.iter().collect(), ids.ids, unknown));
            }
        }
        Ok(out)
    }

    /// Synthesizes `text` sentence by sentence; `on_chunk` gets each sentence's audio as soon
    /// as it is ready and may stop the stream with `ControlFlow::Break`.
    ///
    /// Errors: empty text (nothing to speak), an unknown speaker, out-of-range scales, or
    /// espeak-ng missing or failing.
    pub fn synthesize<F>(
        &self,
        text: &str,
        opts: &SynthOptions,
        mut on_chunk: F,
    ) -> Result<SynthStats>
    where
        F: FnMut(&AudioChunk<'_>) -> ControlFlow<()>,
    {
        let t0 = Instant::now();
        let mut stats = SynthStats::default();
        let scales = self.scales(opts);
        // Check the request before any work.
        if let Some(s) = opts.speaker {
            let n = if self.vits.config().gin_channels > 0 {
                self.vits.config().n_speakers
            } else {
                1
            };
            if s as usize >= n {
                return Err(TtsError::new(
                    TtsFile::Request,
                    TtsErrorKind::UnknownSpeaker {
                        id: s,
                        n_speakers: n,
                    },
                )
                .into());
            }
        }
        for (name, v) in [
            ("noise_scale", scales.noise_scale),
            ("length_scale", scales.length_scale),
            ("noise_w", scales.noise_w),
        ] {
            if !(v.is_finite() && (0.0..=100.0).contains(&v))
                || (name == "length_scale" && v <= 0.0)
            {
                return Err(bad_input(
                    name,
                    format!("{v} is outside the allowed range (finite, 0..=100, length_scale > 0)"),
                ));
            }
        }
        let (clean, dropped) = sanitize(text);
        stats.dropped_chars = dropped;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "control characters in the text were replaced by spaces"
            );
        }
        let pieces = split_text(&clean);
        if pieces.is_empty() || !clean.chars().any(char::is_alphanumeric) {
            return Err(TtsError::new(
                TtsFile::Request,
                TtsErrorKind::EmptyText {
                    chars: text.chars().count(),
                },
            )
            .into());
        }
        let mut noise = Noise::new(opts.seed);
        let mut next = Some(self.start_phonemes(pieces[0])?);
        for (i, piece) in pieces.iter().enumerate() {
            let tp = Instant::now();
            let pending = next.take().unwrap_or(None);
            let sents = self.finish_phonemes(piece, pending)?;
            // Start the next piece's espeak-ng now: it runs while this one is synthesized.
            if let Some(n) = pieces.get(i + 1) {
                next = Some(self.start_phonemes(n)?);
            }
            stats.phonemize_ms += tp.elapsed().as_secs_f64() * 1e3;
            for (phonemes, ids, unknown) in sents {
                stats.unknown_phonemes += unknown;
                let sentence = stats.sentences;
                stats.sentences += 1;
                let mut times = StageTimes::default();
                let mut peak = 0f32;
                let mut stopped = false;
                let chunks = bounded(if sentence == 0 {
                    opts.chunks
                } else {
                    DecodeChunks::WHOLE
                });
                // Each step runs on the voice's pool; the callback runs on the caller's thread.
                let latent = self.pool.install(|| {
                    self.vits
                        .latent(&ids, opts.speaker, scales, &mut noise, &mut times)
                })?;
                let mut stream = self.vits.decode_stream(latent, chunks);
                let whole = stream.plan().len() == 1;
                let mut deliver = |mut audio: Vec<f32>, last: bool, stats: &mut SynthStats| {
                    if opts.normalize {
                        // A whole sentence: to its own peak. Pieces: to the peak so far.
                        peak = audio.iter().fold(peak, |m, &v| m.max(v.abs()));
                        let gain = if whole {
                            if peak > 1e-8 { 1.0 / peak } else { 1.0 }
                        } else {
                            (1.0 / peak.max(1e-8)).min(STREAM_MAX_GAIN)
                        };
                        audio
                            .iter_mut()
                            .for_each(|v| *v = (*v * gain).clamp(-1.0, 1.0));
                    }
                    let chunk = AudioChunk {
                        samples: &audio,
                        sample_rate: self.sample_rate(),
                        index: stats.chunks,
                        text: piece,
                        phonemes: &phonemes,
                        sentence,
                        sentence_end: last,
                    };
                    if stats.chunks == 0 {
                        stats.first_audio_ms = t0.elapsed().as_secs_f64() * 1e3;
                    }
                    stats.chunks += 1;
                    stats.samples += audio.len();
                    stats.audio_secs += chunk.secs();
                    on_chunk(&chunk)
                };
                while let Some((audio, last)) = self.pool.install(|| stream.next_piece(&mut times))
                {
                    if deliver(audio, last, &mut stats).is_break() {
                        stopped = true;
                        break;
                    }
                }
                stats.stages.encoder_ms += times.encoder_ms;
                stats.stages.durations_ms += times.durations_ms;
                stats.stages.flow_ms += times.flow_ms;
                stats.stages.decoder_ms += times.decoder_ms;
                if stopped {
                    stats.stopped = true;
                    drop(next.take()); // kills a running espeak-ng
                    stats.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                    return Ok(stats);
                }
            }
        }
        stats.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(stats)
    }
}

impl Synthesizer for Voice {
    fn sample_rate(&self) -> u32 {
        Voice::sample_rate(self)
    }

    fn synthesize_dyn(
        &self,
        text: &str,
        opts: &SynthOptions,
        on_chunk: &mut dyn FnMut(&AudioChunk<'_>) -> ControlFlow<()>,
    ) -> Result<SynthStats> {
        self.synthesize(text, opts, on_chunk)
    }
}
