//! Transcription: Whisper's decoding loop over 30-second windows.
//!
//! This follows OpenAI's `transcribe()` (and faster-whisper's `generate_segments`, which
//! reproduces it), with greedy decoding or beam search:
//!
//! - **Windows and seeking.** The log-mel spectrogram of the whole recording is computed once.
//!   A window is the 3000 frames from `seek`; frames past the audio are 0 in the normalized
//!   log-mel domain, as in faster-whisper ([`TranscribeOptions::pad_with_silence`] gives
//!   OpenAI's silence value instead). The encoder always sees the full 3000 frames. A window
//!   whose audio peaks below [`TranscribeOptions::silence_peak`] (-60 dBFS) is skipped
//!   without running the model. After decoding, `seek` moves to the last complete
//!   timestamp pair, or past the window when it ended in a single timestamp or had none, so a
//!   sentence cut at 30 s is decoded again whole in the next window.
//! - **Timestamp rules** (OpenAI's `ApplyTimestampRules`): timestamps come in pairs (after a
//!   lone timestamp only a timestamp or end of text; after a pair, text), never decrease, the
//!   first token is a timestamp no later than `max_initial_timestamp`, and a timestamp is
//!   forced whenever the summed probability of all timestamps exceeds that of the likeliest
//!   text token. Tokens in the model's `suppress_ids`, the task/start tokens, and (at the
//!   first step) the blank and end of text are suppressed.
//! - **Silence.** The probability of `<|nospeech|>` at the start-of-transcript position is
//!   read from the first forward pass. A window with `no_speech_prob > no_speech_threshold`
//!   and an average log-probability below `log_prob_threshold` is skipped.
//! - **Temperature fallback.** A window whose text compresses too well (zlib ratio above
//!   `compression_ratio_threshold`: repetition) or whose average log-probability is below
//!   `log_prob_threshold` is decoded again at the next temperature, sampling `best_of`
//!   candidates. If every temperature fails, the best result by average log-probability
//!   among those under the compression threshold is kept (faster-whisper's rule).
//! - **Token budget.** A window decodes at most `24 + 12 × its seconds of audio` tokens (and
//!   never past half the text context, as OpenAI's decoder): about three times the densest
//!   speech, so a transcript is never cut, while a decoder stuck in a loop (an
//!   `initial_prompt` of one phrase repeated primes one) stops early at every fallback
//!   temperature instead of running to 224 tokens 26 times; a sampled or greedy candidate
//!   whose text already fails the compression check (below) stops at once. faster-whisper
//!   has neither rule; they are sotad's own (issue 24), and touch only candidates that fail
//!   the check when they stop (which, on speech, are loops). The prompt and start tokens are
//!   fed once per window (`prime`), not once per candidate.
//! - **Context.** Text of earlier windows is given as a prompt (`<|startofprev|>`, at most
//!   223 tokens) unless `condition_on_previous_text` is off or the window needed a
//!   temperature above 0.5; an `initial_prompt` starts that context.
//! - **Language and task.** Multilingual models detect the language on the first window
//!   (the likeliest language token after `<|startoftranscript|>`) unless one is given, and
//!   can translate to English; English-only models only transcribe English.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::mel::{HOP_LENGTH, MelFrontEnd, N_FRAMES};
use super::model::{CrossKv, DecoderCache, WhisperNet, log_softmax};
use super::tokenizer::Tokenizer;
use super::weights::{TokenizerJson, WhisperWeights};
use crate::audio::{parse_wav, resample::to_mono_16k};
use crate::error::{Error, Result};

/// Seconds per timestamp step.
const TIME_PRECISION: f32 = 0.02;
/// Mel frames per encoder position (the second convolution has stride 2).
const INPUT_STRIDE: usize = 2;
/// Seconds per mel frame.
const FRAME_SECS: f64 = 0.01;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Threads for the matrix products and row kernels (a pool owned by the model).
    pub threads: usize,
    /// Keep the decoder's per-token weights and the output projection (vocabulary × width)
    /// as Q8_0 blocks and multiply them with the quantized matrix-vector kernels (about 4x
    /// less memory traffic per generated token). The encoder always runs in `f32`. On by
    /// default.
    pub quantized_decoder: bool,
    /// For GGUF models: also multiply the encoder's (and cross-attention keys' and values')
    /// matrices in their quantized form, file-backed, instead of dequantizing them to `f32`
    /// at load. Saves memory (4x for Q8_0) at the cost of encoder speed; off by default (see
    /// docs/benchmarks.md). The decoder's quantized matrices always stay file-backed.
    pub quantized_encoder: bool,
    /// Threads for a decoding step's matrix-vector products (0 = 1). One by default: a step
    /// of tiny or base is a few milliseconds of memory-bound work, and handing part of it to
    /// another thread, about 25 times per token, cost more than it saved, 5-10x more when
    /// the cores are busy (docs/benchmarks.md). The encoder always uses `threads`.
    pub decoder_threads: usize,
    /// The encoder's linear layers (query/key/value, attention output, fc1, fc2) as int8
    /// products with one scale per weight row and per activation row, as CTranslate2's int8
    /// (`stt::int8`); convolutions and attention stay `f32`. Off by default: it can change
    /// transcripts (docs/benchmarks.md). Ignored with `quantized_encoder`.
    pub encoder_int8: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            quantized_decoder: true,
            quantized_encoder: false,
            decoder_threads: 1,
            encoder_int8: false,
        }
    }
}

/// What to do with the speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    /// Text in the spoken language.
    #[default]
    Transcribe,
    /// English text (multilingual models only).
    Translate,
}

/// Decoding options; the defaults are OpenAI's and faster-whisper's, with greedy search.
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// Language code (`"en"`, `"de"`, ...); `None` detects it (multilingual models) or means
    /// English (`.en` models).
    pub language: Option<String>,
    /// Transcribe or translate.
    pub task: Task,
    /// Beam width at temperature 0: 1 is greedy (the default), up to 16 (faster-whisper's
    /// default is 5). Fallback temperatures above 0 sample `best_of` candidates either way.
    pub beam_size: usize,
    /// Candidates sampled per window at temperatures above 0.
    pub best_of: usize,
    /// Temperatures tried in order (fallback), default `0.0, 0.2, ..., 1.0`.
    pub temperatures: Vec<f32>,
    /// Redo a window whose text's zlib compression ratio exceeds this (default 2.4).
    pub compression_ratio_threshold: Option<f32>,
    /// Redo a window whose average token log-probability is below this (default -1.0).
    pub log_prob_threshold: Option<f32>,
    /// Treat a window as silence when `<|nospeech|>` is likelier than this (default 0.6)
    /// and the average log-probability is below `log_prob_threshold`.
    pub no_speech_threshold: Option<f32>,
    /// Give the previous windows' text as a prompt (default true).
    pub condition_on_previous_text: bool,
    /// Text that precedes the audio (names, spelling, style).
    pub initial_prompt: Option<String>,
    /// Decode without timestamp tokens: one segment per window.
    pub without_timestamps: bool,
    /// The first timestamp of a window is at most this many seconds (default 1.0).
    pub max_initial_timestamp: f32,
    /// Seed for sampling at temperatures above 0.
    pub seed: u64,
    /// How a window that runs past the audio is filled: `false` (default) with zeros in the
    /// normalized log-mel domain, as faster-whisper does; `true` with the spectrogram's
    /// silence value, as OpenAI's `transcribe()` does. On the LibriVox clips the zeros give
    /// faster-whisper's exact transcripts and fewer errors with tiny.en.
    pub pad_with_silence: bool,
    /// Windows whose audio never exceeds this absolute amplitude are silence and are not
    /// decoded (default 1e-3, -60 dBFS). The log-mel front end normalizes to the loudest
    /// frame, so without this gate a digitally silent recording looks like noise to the
    /// model, which may then hallucinate a word. `0.0` turns the gate off.
    pub silence_peak: f32,
    /// How much of a window the encoder sees when the audio ends before 30 s (see
    /// [`EncoderWindow`]).
    pub encoder_window: EncoderWindow,
    /// Raised by the caller to abandon the transcription: checked before each window's
    /// encoder and at each decoding step, after which `transcribe` returns
    /// [`Error::Cancelled`]. A window's encoder, once started, runs to its end.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl TranscribeOptions {
    fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }
}

/// How many mel frames the encoder runs on for a window whose audio is shorter than 30 s.
///
/// Whisper's encoder was trained on 30 s windows (3000 frames, 1500 positions), and its
/// cost grows with the positions (the attention quadratically). For a 3 s command,
/// [`EncoderWindow::Fit`] runs it on the frames that hold audio plus a margin of padding,
/// with the positional embedding cut to match (whisper.cpp's `audio_ctx` idea). A window
/// that holds 30 s of audio is encoded whole either way.
///
/// The default is [`EncoderWindow::Full`]: the model was trained on 30 s windows, and a
/// fitted window changes its output. With tiny.en, 2 s of margin and a 5 s minimum, 20 of
/// 37 test utterances came out different from the full window's (mostly punctuation and
/// case, but also word errors, and on a 10 s recording a hallucinated repetition of the
/// first sentence); see `docs/benchmarks.md`. `Fit` is for callers that trade accuracy for
/// latency knowingly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EncoderWindow {
    /// Always all 3000 frames (30 s), as OpenAI's and faster-whisper's `transcribe()` do.
    Full,
    /// The window's audio frames plus `margin_secs` of padding, at least `min_secs`, at
    /// most 30 s.
    Fit {
        /// Padding after the audio, seconds.
        margin_secs: f32,
        /// Smallest window, seconds.
        min_secs: f32,
    },
}

impl EncoderWindow {
    /// Mel frames (even, at most [`N_FRAMES`]) to encode for `content` frames of audio.
    pub fn frames(&self, content: usize) -> usize {
        match *self {
            Self::Full => N_FRAMES,
            Self::Fit {
                margin_secs,
                min_secs,
            } => {
                let secs = |s: f32| (f64::from(s.max(0.0)) / FRAME_SECS).ceil() as usize;
                let want = (content + secs(margin_secs)).max(secs(min_secs));
                (want.div_ceil(2) * 2).min(N_FRAMES)
            }
        }
    }
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: None,
            task: Task::Transcribe,
            beam_size: 1,
            best_of: 5,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            log_prob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            initial_prompt: None,
            without_timestamps: false,
            max_initial_timestamp: 1.0,
            seed: 0x5eed,
            pad_with_silence: false,
            silence_peak: 1e-3,
            encoder_window: EncoderWindow::Full,
            cancel: None,
        }
    }
}

/// A piece of text with its time span in the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Start, seconds from the beginning of the audio.
    pub start: f32,
    /// End, seconds.
    pub end: f32,
    /// Text (usually with a leading space, as Whisper writes it).
    pub text: String,
    /// The text tokens (no timestamps).
    pub tokens: Vec<u32>,
    /// Average log-probability of the window's tokens.
    pub avg_logprob: f32,
    /// Probability of `<|nospeech|>` for the window.
    pub no_speech_prob: f32,
    /// zlib compression ratio of the window's text.
    pub compression_ratio: f32,
    /// Temperature the window was decoded at.
    pub temperature: f32,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Log-mel front end.
    pub mel_ms: f64,
    /// Encoder and cross-attention keys/values, all windows.
    pub encode_ms: f64,
    /// Token generation, all windows and temperatures.
    pub decode_ms: f64,
    /// Everything.
    pub total_ms: f64,
    /// Length of the audio, seconds.
    pub audio_secs: f64,
    /// Windows encoded.
    pub windows: usize,
    /// Tokens generated (including fallbacks).
    pub tokens: usize,
}

impl Timings {
    /// Real-time factor: processing time over audio time.
    pub fn rtf(&self) -> f64 {
        if self.audio_secs > 0.0 {
            self.total_ms / 1000.0 / self.audio_secs
        } else {
            0.0
        }
    }
}

/// A transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// All segments' text, joined and trimmed.
    pub text: String,
    /// Language code (detected or given).
    pub language: String,
    /// Probability of the detected language (`None` when it was given or the model is
    /// English-only).
    pub language_prob: Option<f32>,
    /// Segments in time order.
    pub segments: Vec<Segment>,
    /// Timings.
    pub timings: Timings,
}

/// A loaded Whisper model. `Send + Sync`: one instance can serve several threads (each call
/// runs on the model's own thread pool).
pub struct Whisper {
    net: WhisperNet,
    tokenizer: Tokenizer,
    mel: MelFrontEnd,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    pool: rayon::ThreadPool,
    /// Threads of a decoding step ([`LoadOptions::decoder_threads`]).
    decoder_threads: usize,
    threads: usize,
    name: &'static str,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("model", &self.name)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// One decoding pass over a window.
#[derive(Debug, Clone)]
struct Decoded {
    tokens: Vec<u32>,
    sum_logprob: f32,
    avg_logprob: f32,
    no_speech_prob: f32,
    temperature: f32,
    compression_ratio: f32,
}

/// xorshift64* for sampling.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// zlib compression ratio of `text` (bytes / compressed bytes), as Whisper computes it.
pub fn compression_ratio(text: &str) -> f32 {
    let b = text.as_bytes();
    if b.is_empty() {
        return 0.0;
    }
    let z = miniz_oxide::deflate::compress_to_vec_zlib(b, 6);
    b.len() as f32 / z.len().max(1) as f32
}

impl Whisper {
    /// Loads a model: a faster-whisper (CTranslate2) directory (`model.bin`, `config.json`,
    /// `vocabulary.txt`, and `tokenizer.json` for initial prompts), a Hugging Face directory
    /// (`model.safetensors`, `config.json`, `tokenizer.json`), or a GGUF file from
    /// `sotad quantize whisper`; the format is decided by what is on disk.
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let (weights, format, tj) = WhisperWeights::open_any(dir)?;
        let threads = opts.threads.max(1);
        let net = WhisperNet::load_opts(&weights, opts, threads)?;
        let vocab = weights.vocabulary().to_vec();
        let tokenizer = match &tj {
            TokenizerJson::File(p) => Tokenizer::new(vocab, Some(p)),
            TokenizerJson::Text(t, p) => Tokenizer::from_json_text(vocab, Some(t), p),
            TokenizerJson::None => Tokenizer::new(vocab, None),
        }
        .map_err(|e| match e {
            Error::Stt { reason } => Error::Stt {
                reason: format!("model {dir:?}: {reason}"),
            },
            e => e,
        })?;
        tracing::debug!(path = ?dir, ?format, "loaded Whisper weights");
        let sp = tokenizer.specials().clone();
        let mut suppress = weights.config.suppress_ids.clone();
        suppress.extend([
            sp.transcribe,
            sp.translate,
            sp.sot,
            sp.sot_prev,
            sp.sot_lm,
            sp.no_speech,
        ]);
        suppress.sort_unstable();
        suppress.dedup();
        let mut suppress_begin = weights.config.suppress_ids_begin.clone();
        if suppress_begin.is_empty() {
            suppress_begin.extend(tokenizer.id("Ġ"));
            suppress_begin.push(sp.eot);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sotad-stt-{i}"))
            .build()
            .map_err(|e| Error::Stt {
                reason: format!("cannot start {threads} inference threads: {e}"),
            })?;
        Ok(Self {
            mel: MelFrontEnd::new(weights.dims.n_mels),
            name: weights.dims.size_name(),
            net,
            tokenizer,
            suppress,
            suppress_begin,
            pool,
            threads,
            decoder_threads: opts.decoder_threads.max(1),
        })
    }

    /// The released model these weights match (`"tiny.en"`, `"base"`, ...) or `"custom"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the model knows languages other than English.
    pub fn is_multilingual(&self) -> bool {
        self.net.dims().is_multilingual()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Transcribes WAV bytes of any sample rate and channel count (see
    /// [`crate::audio::parse_wav`] for the formats).
    pub fn transcribe_wav(&self, bytes: &[u8], opts: &TranscribeOptions) -> Result<Transcript> {
        let wav = parse_wav(bytes)?;
        if wav.frames() == 0 {
            return Err(Error::InvalidInput {
                field: "audio",
                reason: "the WAV data holds no samples (empty audio)".into(),
            });
        }
        let mono = to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)?;
        self.transcribe(&mono, opts)
    }

    /// Transcribes 16 kHz mono samples (nominally in `[-1, 1]`).
    pub fn transcribe(&self, samples: &[f32], opts: &TranscribeOptions) -> Result<Transcript> {
        let bad = |reason: String| Error::Stt { reason };
        let audio = |reason: String| Error::InvalidInput {
            field: "audio",
            reason,
        };
        if samples.is_empty() {
            return Err(audio("no audio samples (empty audio)".into()));
        }
        if let Some(i) = samples.iter().position(|x| !x.is_finite()) {
            return Err(audio(format!(
                "sample {i} of {} is not a finite number ({})",
                samples.len(),
                samples[i]
            )));
        }
        if opts.beam_size == 0 || opts.beam_size > 16 {
            return Err(Error::InvalidInput {
                field: "beam_size",
                reason: format!(
                    "beam_size {} is out of range: 1 (greedy) to 16",
                    opts.beam_size
                ),
            });
        }
        if opts.temperatures.is_empty()
            || opts.temperatures.iter().any(|t| !t.is_finite() || *t < 0.0)
        {
            return Err(bad(format!(
                "temperatures must be a non-empty list of finite values ≥ 0, got {:?}",
                opts.temperatures
            )));
        }
        self.pool.install(|| self.run(samples, opts))
    }

    fn run(&self, samples: &[f32], opts: &TranscribeOptions) -> Result<Transcript> {
        let t_start = Instant::now();
        let mut timings = Timings {
            audio_secs: samples.len() as f64 / f64::from(crate::audio::SAMPLE_RATE),
            ..Timings::default()
        };
        let mel = self.mel.compute(samples);
        timings.mel_ms = ms(t_start);
        let sp = self.tokenizer.specials().clone();
        let dims = *self.net.dims();

        // Language and task tokens.
        let multilingual = dims.is_multilingual();
        let mut language_token = None;
        if let Some(code) = &opts.language {
            if multilingual {
                language_token = Some(self.tokenizer.language_token(code).ok_or_else(|| {
                    Error::InvalidInput {
                        field: "language",
                        reason: format!("unknown language code {code:?} for model {}", self.name),
                    }
                })?);
            } else if code != "en" {
                return Err(Error::InvalidInput {
                    field: "language",
                    reason: format!(
                        "model {} is English-only; language {code:?} is not available",
                        self.name
                    ),
                });
            }
        }
        if !multilingual && opts.task == Task::Translate {
            return Err(Error::InvalidInput {
                field: "task",
                reason: format!("model {} is English-only and cannot translate", self.name),
            });
        }
        let mut language_prob = None;

        let mut all_tokens: Vec<u32> = match &opts.initial_prompt {
            Some(p) if !p.trim().is_empty() => self.tokenizer.encode(&format!(" {}", p.trim()))?,
            _ => Vec::new(),
        };
        let mut prompt_reset_since = 0usize;
        let mut segments = Vec::new();
        let mut rng = Rng(opts.seed | 1);
        let content_frames = mel.content_frames();
        let mut seek = 0usize;

        while seek < content_frames {
            let segment_size = N_FRAMES.min(content_frames - seek);
            let time_offset = (seek as f64 * FRAME_SECS) as f32;
            let segment_duration = (segment_size as f64 * FRAME_SECS) as f32;

            let from = (seek * HOP_LENGTH).min(samples.len());
            let to = ((seek + segment_size) * HOP_LENGTH).min(samples.len());
            let peak = samples[from..to]
                .iter()
                .fold(0.0f32, |m, &x| m.max(x.abs()));
            if peak < opts.silence_peak {
                seek += segment_size;
                continue;
            }

            opts.check_cancel()?;
            let t = Instant::now();
            let frames = opts.encoder_window.frames(segment_size);
            let window = if !opts.pad_with_silence {
                let part = mel.segment(seek, segment_size);
                let mut w = vec![0.0f32; mel.n_mels() * frames];
                for (dst, src) in w
                    .chunks_exact_mut(frames)
                    .zip(part.chunks_exact(segment_size))
                {
                    dst[..segment_size].copy_from_slice(src);
                }
                w
            } else {
                mel.segment(seek, frames)
            };
            let enc = self.net.encode(window, frames)?;
            let cross = self.net.cross_kv(&enc)?;
            timings.encode_ms += ms(t);
            timings.windows += 1;

            let t = Instant::now();
            if multilingual && language_token.is_none() {
                let (tok, p) = self.detect_language(&cross)?;
                language_token = Some(tok);
                language_prob = Some(p);
            }
            let mut sot_seq = vec![sp.sot];
            if multilingual {
                sot_seq.extend(language_token);
                sot_seq.push(match opts.task {
                    Task::Transcribe => sp.transcribe,
                    Task::Translate => sp.translate,
                });
            }
            if opts.without_timestamps {
                sot_seq.push(sp.no_timestamps);
            }
            let max_prompt = dims.n_text_ctx / 2 - 1;
            let context = all_tokens.get(prompt_reset_since..).unwrap_or_default();
            let context = &context[context.len().saturating_sub(max_prompt)..];
            let mut initial = Vec::with_capacity(context.len() + 4);
            if !context.is_empty() {
                initial.push(sp.sot_prev);
                initial.extend_from_slice(context);
            }
            let sot_index = initial.len();
            initial.extend_from_slice(&sot_seq);

            let budget = token_budget(segment_duration)
                .min(dims.n_text_ctx / 2)
                .min(dims.n_text_ctx.saturating_sub(initial.len()));
            let d = self.decode_with_fallback(
                &cross,
                &initial,
                sot_index,
                budget,
                opts,
                &mut rng,
                &mut timings,
            )?;
            timings.decode_ms += ms(t);

            if let Some(nst) = opts.no_speech_threshold {
                let mut skip = d.no_speech_prob > nst;
                if let Some(lpt) = opts.log_prob_threshold
                    && d.avg_logprob > lpt
                {
                    skip = false;
                }
                if skip {
                    seek += segment_size;
                    continue;
                }
            }

            let tokens = &d.tokens;
            let tb = sp.timestamp_begin;
            let is_ts: Vec<bool> = tokens.iter().map(|&t| t >= tb).collect();
            let single_ending =
                is_ts.len() >= 2 && !is_ts[is_ts.len() - 2] && is_ts[is_ts.len() - 1];
            let mut slices: Vec<usize> = (1..is_ts.len())
                .filter(|&i| is_ts[i - 1] && is_ts[i])
                .collect();
            let mut new_segments = Vec::new();
            let mut seek_advance = segment_size;
            if !slices.is_empty() {
                if single_ending {
                    slices.push(tokens.len());
                }
                let mut last = 0;
                for &cur in &slices {
                    let sl = &tokens[last..cur];
                    if let (Some(&a), Some(&b)) = (sl.first(), sl.last()) {
                        let start = time_offset + a.saturating_sub(tb) as f32 * TIME_PRECISION;
                        let end = time_offset + b.saturating_sub(tb) as f32 * TIME_PRECISION;
                        new_segments.push((start, end, sl.to_vec()));
                    }
                    last = cur;
                }
                if !single_ending {
                    let last_ts = tokens
                        .get(last.saturating_sub(1))
                        .map_or(0, |&t| t.saturating_sub(tb) as usize);
                    seek_advance = last_ts * INPUT_STRIDE;
                }
            } else {
                let mut duration = segment_duration;
                if let Some(&last_ts) = tokens.iter().rev().find(|&&t| t >= tb)
                    && last_ts != tb
                {
                    duration = (last_ts - tb) as f32 * TIME_PRECISION;
                }
                new_segments.push((time_offset, time_offset + duration, tokens.clone()));
            }
            if seek_advance == 0 {
                seek_advance = segment_size;
            }
            seek += seek_advance;

            for (start, end, toks) in new_segments {
                let text_tokens: Vec<u32> = toks.into_iter().filter(|&t| t < sp.eot).collect();
                let text = self.tokenizer.decode(&text_tokens);
                if start == end || text.trim().is_empty() {
                    continue;
                }
                segments.push(Segment {
                    start,
                    end,
                    text,
                    tokens: text_tokens,
                    avg_logprob: d.avg_logprob,
                    no_speech_prob: d.no_speech_prob,
                    compression_ratio: d.compression_ratio,
                    temperature: d.temperature,
                });
            }
            all_tokens.extend_from_slice(&d.tokens);
            if !opts.condition_on_previous_text || d.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
        }

        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<String>()
            .trim()
            .to_owned();
        let language = match language_token {
            Some(t) => self
                .tokenizer
                .symbol(t)
                .and_then(|s| s.strip_prefix("<|")?.strip_suffix("|>"))
                .unwrap_or("en")
                .to_owned(),
            None => opts.language.clone().unwrap_or_else(|| "en".into()),
        };
        timings.total_ms = ms(t_start);
        Ok(Transcript {
            text,
            language,
            language_prob,
            segments,
            timings,
        })
    }

    /// The likeliest language token after `<|startoftranscript|>`, and its probability among
    /// the language tokens.
    fn detect_language(&self, cross: &CrossKv) -> Result<(u32, f32)> {
        let sp = self.tokenizer.specials();
        let mut cache = DecoderCache::default();
        let logits = self
            .net
            .decode(&[sp.sot], &mut cache, cross, &[0], self.decoder_threads)?;
        let logits = logits.first().ok_or_else(|| Error::Stt {
            reason: "language detection produced no logits".into(),
        })?;
        let langs: Vec<(u32, f32)> = sp
            .languages
            .iter()
            .filter_map(|&(id, _)| logits.get(id as usize).map(|&l| (id, l)))
            .collect();
        let max = langs.iter().fold(f32::NEG_INFINITY, |m, &(_, l)| m.max(l));
        let sum: f32 = langs.iter().map(|&(_, l)| (l - max).exp()).sum();
        let (best, l) = langs
            .iter()
            .copied()
            .fold((sp.sot + 1, f32::NEG_INFINITY), |a, b| {
                if b.1 > a.1 { b } else { a }
            });
        Ok((best, (l - max).exp() / sum.max(f32::MIN_POSITIVE)))
    }

    fn decode_with_fallback(
        &self,
        cross: &CrossKv,
        initial: &[u32],
        sot_index: usize,
        max_new: usize,
        opts: &TranscribeOptions,
        rng: &mut Rng,
        timings: &mut Timings,
    ) -> Result<Decoded> {
        let primed = self.prime(cross, initial, sot_index)?;
        let mut all = Vec::new();
        for &temp in &opts.temperatures {
            let d = if temp == 0.0 && opts.beam_size > 1 {
                self.decode_beam(cross, &primed, max_new, opts, timings)?
            } else if temp == 0.0 {
                self.decode_once(cross, &primed, max_new, 0.0, opts, rng, timings)?
            } else {
                let mut best: Option<Decoded> = None;
                for _ in 0..opts.best_of.max(1) {
                    let c = self.decode_once(cross, &primed, max_new, temp, opts, rng, timings)?;
                    let score = |d: &Decoded| d.sum_logprob / d.tokens.len().max(1) as f32;
                    if best.as_ref().is_none_or(|b| score(&c) > score(b)) {
                        best = Some(c);
                    }
                }
                best.ok_or_else(|| Error::Stt {
                    reason: "no candidate decoded".into(),
                })?
            };
            let mut needs_fallback = false;
            if let Some(crt) = opts.compression_ratio_threshold
                && d.compression_ratio > crt
            {
                needs_fallback = true;
            }
            if let Some(lpt) = opts.log_prob_threshold
                && d.avg_logprob < lpt
            {
                needs_fallback = true;
            }
            if let (Some(nst), Some(lpt)) = (opts.no_speech_threshold, opts.log_prob_threshold)
                && d.no_speech_prob > nst
                && d.avg_logprob < lpt
            {
                needs_fallback = false;
            }
            if !needs_fallback {
                return Ok(d);
            }
            all.push(d);
        }
        let under: Vec<&Decoded> = match opts.compression_ratio_threshold {
            Some(crt) => all.iter().filter(|d| d.compression_ratio <= crt).collect(),
            None => all.iter().collect(),
        };
        let pool = if under.is_empty() {
            all.iter().collect()
        } else {
            under
        };
        pool.into_iter()
            .max_by(|a, b| a.avg_logprob.total_cmp(&b.avg_logprob))
            .cloned()
            .ok_or_else(|| Error::Stt {
                reason: "no temperature produced a result".into(),
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_once(
        &self,
        cross: &CrossKv,
        primed: &Primed,
        max_new: usize,
        temperature: f32,
        opts: &TranscribeOptions,
        rng: &mut Rng,
        timings: &mut Timings,
    ) -> Result<Decoded> {
        let sp = self.tokenizer.specials();
        let mut cache = primed.cache.clone();
        let mut logits = primed.logits.clone();
        let no_speech_prob = primed.no_speech_prob;
        let mut tokens: Vec<u32> = Vec::new();
        let mut sum_logprob = 0.0f32;
        for step in 0..max_new {
            opts.check_cancel()?;
            self.filter_logits(&mut logits, &tokens, opts);
            let mut logprobs = logits.clone();
            log_softmax(&mut logprobs);
            let next = if temperature == 0.0 {
                argmax(&logits)
            } else {
                sample(&logits, temperature, rng)
            }
            .unwrap_or(sp.eot);
            sum_logprob += logprobs
                .get(next as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY)
                .max(-1e4);
            timings.tokens += 1;
            if next == sp.eot || step + 1 == max_new {
                if next != sp.eot {
                    tokens.push(next);
                }
                break;
            }
            tokens.push(next);
            if self.fails_compression(&tokens, opts) {
                break;
            }
            let out = self
                .net
                .decode(&[next], &mut cache, cross, &[0], self.decoder_threads)?;
            logits = out.into_iter().next().unwrap_or_default();
        }
        let text_tokens: Vec<u32> = tokens.iter().copied().filter(|&t| t < sp.eot).collect();
        let text = self.tokenizer.decode(&text_tokens);
        Ok(Decoded {
            avg_logprob: sum_logprob / (tokens.len() + 1) as f32,
            compression_ratio: compression_ratio(&text),
            tokens,
            sum_logprob,
            no_speech_prob,
            temperature,
        })
    }

    /// Feeds a window's prompt and start tokens through the decoder once; every candidate of
    /// every fallback temperature then starts from a copy of this cache instead of feeding
    /// the (up to 227) tokens again.
    fn prime(&self, cross: &CrossKv, initial: &[u32], sot_index: usize) -> Result<Primed> {
        let sp = self.tokenizer.specials();
        let mut cache = DecoderCache::default();
        let out = self.net.decode(
            initial,
            &mut cache,
            cross,
            &[sot_index, initial.len() - 1],
            self.decoder_threads,
        )?;
        let (Some(first), Some(logits)) = (out.first(), out.last().cloned()) else {
            return Err(Error::Stt {
                reason: "the decoder returned no logits".into(),
            });
        };
        let no_speech_prob = {
            let mut lp = first.clone();
            log_softmax(&mut lp);
            lp.get(sp.no_speech as usize).map_or(0.0, |v| v.exp())
        };
        Ok(Primed {
            cache,
            logits,
            no_speech_prob,
        })
    }

    /// Whether a candidate already fails the compression check it will be judged by (the
    /// module doc's token budget): checked every 16 tokens from 32 on, so a decoder stuck in a
    /// loop stops there rather than at its budget. The check costs one zlib pass over a few
    /// hundred bytes per 16 tokens.
    fn fails_compression(&self, tokens: &[u32], opts: &TranscribeOptions) -> bool {
        let Some(crt) = opts.compression_ratio_threshold else {
            return false;
        };
        if tokens.len() < 32 || tokens.len() % 16 != 0 {
            return false;
        }
        let eot = self.tokenizer.specials().eot;
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < eot).collect();
        compression_ratio(&self.tokenizer.decode(&text)) > crt
    }

    /// Beam search at temperature 0: `opts.beam_size` hypotheses, each extended by its
    /// `beam_size + 1` likeliest tokens; a hypothesis ending in end-of-text is finished, and
    /// the search stops when `beam_size` are. The result is the finished hypothesis with the
    /// best sum of log-probabilities divided by its length (OpenAI's ranking without a length
    /// penalty).
    fn decode_beam(
        &self,
        cross: &CrossKv,
        primed: &Primed,
        max_new: usize,
        opts: &TranscribeOptions,
        timings: &mut Timings,
    ) -> Result<Decoded> {
        struct Beam {
            tokens: Vec<u32>,
            sum: f32,
            cache: DecoderCache,
            logits: Vec<f32>,
        }
        let sp = self.tokenizer.specials();
        let width = opts.beam_size.max(1);
        let no_speech_prob = primed.no_speech_prob;
        let mut beams = vec![Beam {
            tokens: Vec::new(),
            sum: 0.0,
            cache: primed.cache.clone(),
            logits: primed.logits.clone(),
        }];
        let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
        for _ in 0..max_new {
            opts.check_cancel()?;
            let mut candidates: Vec<(f32, usize, u32)> = Vec::new();
            for (bi, b) in beams.iter().enumerate() {
                let mut l = b.logits.clone();
                self.filter_logits(&mut l, &b.tokens, opts);
                log_softmax(&mut l);
                let mut idx: Vec<u32> = (0..l.len() as u32)
                    .filter(|&i| l[i as usize].is_finite())
                    .collect();
                let k = (width + 1).min(idx.len());
                if k == 0 {
                    continue;
                }
                idx.select_nth_unstable_by(k - 1, |&a, &b| l[b as usize].total_cmp(&l[a as usize]));
                for &t in &idx[..k] {
                    candidates.push((b.sum + l[t as usize], bi, t));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut next: Vec<(usize, u32, f32)> = Vec::new();
            for &(score, bi, t) in &candidates {
                if t == sp.eot {
                    if finished.len() < width {
                        finished.push((beams[bi].tokens.clone(), score));
                    }
                } else {
                    next.push((bi, t, score));
                    if next.len() == width {
                        break;
                    }
                }
            }
            if finished.len() >= width || next.is_empty() {
                break;
            }
            let mut new_beams = Vec::with_capacity(next.len());
            for (bi, t, score) in next {
                let parent = &beams[bi];
                let mut cache = parent.cache.clone();
                let out = self
                    .net
                    .decode(&[t], &mut cache, cross, &[0], self.decoder_threads)?;
                timings.tokens += 1;
                let mut tokens = parent.tokens.clone();
                tokens.push(t);
                new_beams.push(Beam {
                    tokens,
                    sum: score,
                    cache,
                    logits: out.into_iter().next().unwrap_or_default(),
                });
            }
            beams = new_beams;
        }
        if finished.is_empty() {
            finished = beams.into_iter().map(|b| (b.tokens, b.sum)).collect();
        }
        let (tokens, sum) = finished
            .into_iter()
            .max_by(|a, b| {
                let sa = a.1 / a.0.len().max(1) as f32;
                let sb = b.1 / b.0.len().max(1) as f32;
                sa.total_cmp(&sb)
            })
            .unwrap_or_default();
        let text_tokens: Vec<u32> = tokens.iter().copied().filter(|&t| t < sp.eot).collect();
        let text = self.tokenizer.decode(&text_tokens);
        Ok(Decoded {
            avg_logprob: sum / (tokens.len() + 1) as f32,
            compression_ratio: compression_ratio(&text),
            tokens,
            sum_logprob: sum,
            no_speech_prob,
            temperature: 0.0,
        })
    }

    /// Suppression and timestamp rules for the next token, given the tokens sampled so far
    /// in this window.
    fn filter_logits(&self, logits: &mut [f32], tokens: &[u32], opts: &TranscribeOptions) {
        let sp = self.tokenizer.specials();
        let ninf = f32::NEG_INFINITY;
        let kill = |id: u32, l: &mut [f32]| {
            if let Some(v) = l.get_mut(id as usize) {
                *v = ninf;
            }
        };
        if tokens.is_empty() {
            for &id in &self.suppress_begin {
                kill(id, logits);
            }
        }
        for &id in &self.suppress {
            kill(id, logits);
        }
        if opts.without_timestamps {
            return;
        }
        let tb = sp.timestamp_begin as usize;
        let eot = sp.eot as usize;
        let n = logits.len();
        kill(sp.no_timestamps, logits);
        let last_ts = tokens.last().is_some_and(|&t| t as usize >= tb);
        let penult_ts = tokens.len() < 2 || tokens[tokens.len() - 2] as usize >= tb;
        if last_ts {
            if penult_ts {
                logits[tb.min(n)..].fill(ninf);
            } else {
                logits[..eot.min(n)].fill(ninf);
            }
        }
        if let Some(&last) = tokens.iter().rev().find(|&&t| t as usize >= tb) {
            let limit = if last_ts && !penult_ts {
                last as usize
            } else {
                last as usize + 1
            };
            logits[tb.min(n)..limit.min(n)].fill(ninf);
        }
        if tokens.is_empty() {
            logits[..tb.min(n)].fill(ninf);
            if opts.max_initial_timestamp >= 0.0 {
                let max_idx = (opts.max_initial_timestamp / TIME_PRECISION).round() as usize;
                let from = (tb + max_idx + 1).min(n);
                logits[from..].fill(ninf);
            }
        }
        // Force a timestamp when timestamps are collectively likelier than any text token.
        let mut lp = logits.to_vec();
        log_softmax(&mut lp);
        let ts = &lp[tb.min(n)..];
        let ts_max = ts.iter().fold(ninf, |m, &v| m.max(v));
        let ts_lse = if ts_max.is_finite() {
            ts_max + ts.iter().map(|&v| (v - ts_max).exp()).sum::<f32>().ln()
        } else {
            ninf
        };
        let text_max = lp[..tb.min(n)].iter().fold(ninf, |m, &v| m.max(v));
        if ts_lse > text_max {
            logits[..tb.min(n)].fill(ninf);
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn argmax(x: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_finite() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// A window's decoder state after its prompt and start tokens (`Whisper::prime`).
struct Primed {
    cache: DecoderCache,
    /// The logits after the last start token: the first step's.
    logits: Vec<f32>,
    /// The probability of `<|nospeech|>` at the start-of-transcript position.
    no_speech_prob: f32,
}

/// The most tokens a window of `seconds` of audio may decode (the module doc's token budget).
fn token_budget(seconds: f32) -> usize {
    24 + (12.0 * seconds.max(0.0)).ceil() as usize
}

fn sample(logits: &[f32], temperature: f32, rng: &mut Rng) -> Option<u32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if !max.is_finite() {
        return None;
    }
    let w: Vec<f32> = logits
        .iter()
        .map(|&v| ((v - max) / temperature).exp())
        .collect();
    let total: f32 = w.iter().sum();
    let mut r = rng.uniform() * total;
    for (i, &p) in w.iter().enumerate() {
        if p > 0.0 {
            if r < p {
                return Some(i as u32);
            }
            r -= p;
        }
    }
    argmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_window_frames() {
        assert_eq!(EncoderWindow::Full.frames(300), N_FRAMES);
        let fit = EncoderWindow::Fit {
            margin_secs: 2.0,
            min_secs: 5.0,
        };
        assert_eq!(fit.frames(100), 500, "at least min_secs");
        assert_eq!(fit.frames(400), 600, "audio plus the margin");
        assert_eq!(fit.frames(401), 602, "even");
        assert_eq!(fit.frames(2900), N_FRAMES, "at most 30 s");
        assert_eq!(fit.frames(N_FRAMES), N_FRAMES);
        let none = EncoderWindow::Fit {
            margin_secs: -1.0,
            min_secs: 0.0,
        };
        assert_eq!(none.frames(7), 8);
    }
}
