//! The endpointer: a pure state machine from (window, speech probability) to utterance events.
//!
//! ```text
//!            p >= threshold                 speech lasted min_speech_ms
//!   Idle ───────────────────▶ Candidate ─────────────────────────────▶ Speech ── emits SpeechStart
//!    ▲   ◀─────────────────────    │                                      │
//!    │     p < neg_threshold       │                                      │ p < neg_threshold for
//!    │     (a blip: forgotten)     │                                      │ trailing_silence_ms, or
//!    └─────────────────────────────┴──────────── emits SpeechEnd ◀────────┘ max_utterance_ms reached
//! ```
//!
//! With `pause_ms` set (below `trailing_silence_ms`), a pause in speech of that length emits
//! [`VadEvent::Pause`] with the utterance so far, so that a caller can start transcribing
//! before the endpoint (speculatively); speech that comes back after it emits
//! [`VadEvent::Resume`], and the pause's audio is no longer the utterance.
//!
//! Hysteresis: once in speech, a window counts as silence only below `neg_threshold`
//! (default `threshold - 0.15`, as silero-vad's own `get_speech_timestamps`).
//! While idle the last `pre_roll_ms` of audio are kept in a ring, so an utterance starts a
//! little before the first window the model was sure about (onsets are soft).
//! Memory is bounded: the utterance buffer never exceeds `pre_roll + max_utterance`.

use std::collections::VecDeque;

/// Endpointer settings. Durations are rounded up to whole windows.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    /// Sample rate of the audio pushed (16 000 for Silero).
    pub sample_rate: u32,
    /// Probability at or above which a window is speech.
    pub threshold: f32,
    /// Probability below which a window is silence once speech has started.
    pub neg_threshold: f32,
    /// Speech must last this long before `SpeechStart` is emitted, ms.
    pub min_speech_ms: u32,
    /// Audio kept from before the first speech window, ms.
    pub pre_roll_ms: u32,
    /// Silence after speech that ends the utterance, ms.
    pub trailing_silence_ms: u32,
    /// An utterance is cut (ended) at this length, ms.
    pub max_utterance_ms: u32,
    /// Silence after speech that emits [`VadEvent::Pause`], ms; 0 (the default) never does.
    /// Only meaningful below `trailing_silence_ms`.
    pub pause_ms: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            sample_rate: crate::audio::SAMPLE_RATE,
            threshold: 0.5,
            neg_threshold: 0.35,
            min_speech_ms: 160,
            pre_roll_ms: 300,
            trailing_silence_ms: 600,
            max_utterance_ms: 30_000,
            pause_ms: 0,
        }
    }
}

/// Why an utterance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `trailing_silence_ms` of silence followed the speech.
    Silence,
    /// The utterance reached `max_utterance_ms`.
    MaxLength,
    /// [`Endpointer::flush`] was called (end of stream) during speech.
    Flushed,
    /// [`Endpointer::end_paused`] was called: the caller judged the utterance complete
    /// during a pause (say, from its transcript) before `trailing_silence_ms` had passed.
    Complete,
}

impl EndReason {
    /// The reason's name in the daemon's protocol (`turn/done`'s `endpoint`).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Silence => "silence",
            EndReason::MaxLength => "max_length",
            EndReason::Flushed => "flushed",
            EndReason::Complete => "complete",
        }
    }
}

/// What the endpointer reports. Sample positions count from the first sample pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum VadEvent {
    /// Speech has lasted `min_speech_ms`: an utterance has begun.
    SpeechStart {
        /// The audio so far: up to `pre_roll_ms` before the first speech window, then the
        /// windows up to and including this one.
        pre_roll: Vec<f32>,
        /// Stream position of `pre_roll[0]`.
        start: u64,
        /// Stream position just after the window that triggered the event.
        at: u64,
    },
    /// Speech paused for `pause_ms`: the utterance may be over (the endpoint decides).
    Pause {
        /// The utterance so far: pre-roll, speech, and `pause_ms` (rounded up to whole
        /// windows) of the pause. If no speech follows, the `SpeechEnd` utterance starts
        /// with exactly these samples.
        utterance: Vec<f32>,
        /// Stream position of `utterance[0]`.
        start: u64,
        /// Stream position just after the last window judged speech.
        speech_end: u64,
    },
    /// Speech came back after a [`VadEvent::Pause`]: that pause did not end the utterance.
    Resume {
        /// Stream position just after the window that triggered the event.
        at: u64,
    },
    /// The utterance is over.
    SpeechEnd {
        /// The whole utterance: pre-roll, speech, and the trailing silence that ended it.
        utterance: Vec<f32>,
        /// Stream position of `utterance[0]`.
        start: u64,
        /// Stream position just after the last window judged speech.
        speech_end: u64,
        /// Stream position just after the window that triggered the event.
        at: u64,
        /// Why it ended.
        reason: EndReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Speech seen since `speech_first`, not yet long enough.
    Candidate,
    Speech,
}

/// The endpointer's state. See the module docs.
#[derive(Debug, Clone)]
pub struct Endpointer {
    cfg: EndpointConfig,
    phase: Phase,
    pre_roll_cap: usize,
    min_speech: u64,
    trailing_silence: u64,
    /// `pause_ms` in samples; 0 when off.
    pause: u64,
    /// A `Pause` was emitted for the current silence.
    paused: bool,
    max_utterance: usize,
    /// Idle: the last `pre_roll_cap` samples. Candidate/Speech: the utterance so far.
    buf: VecDeque<f32>,
    /// Stream position of `buf[0]`.
    buf_start: u64,
    /// Stream position of the first speech window of the current candidate/utterance.
    speech_first: u64,
    /// Stream position just after the last speech window.
    speech_last_end: u64,
    /// Samples pushed so far.
    pos: u64,
}

fn ms_to_samples(ms: u32, rate: u32) -> u64 {
    (u64::from(ms) * u64::from(rate)).div_ceil(1000)
}

impl Endpointer {
    /// A new endpointer in the idle state.
    pub fn new(cfg: EndpointConfig) -> Self {
        let rate = cfg.sample_rate;
        let pre_roll_cap = ms_to_samples(cfg.pre_roll_ms, rate) as usize;
        let max_utterance = ms_to_samples(cfg.max_utterance_ms, rate) as usize;
        Self {
            phase: Phase::Idle,
            pre_roll_cap,
            min_speech: ms_to_samples(cfg.min_speech_ms, rate),
            trailing_silence: ms_to_samples(cfg.trailing_silence_ms, rate).max(1),
            pause: ms_to_samples(cfg.pause_ms, rate),
            paused: false,
            max_utterance: max_utterance.max(1),
            buf: VecDeque::with_capacity(pre_roll_cap),
            buf_start: 0,
            speech_first: 0,
            speech_last_end: 0,
            pos: 0,
            cfg,
        }
    }

    /// The settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// Whether an utterance has started (after `SpeechStart`, before `SpeechEnd`).
    pub fn in_speech(&self) -> bool {
        self.phase == Phase::Speech
    }

    /// Whether speech has been seen but not yet for `min_speech_ms`, or is under way.
    pub fn active(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// Samples pushed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Feeds one window of audio and the model's speech probability for it. A NaN
    /// probability counts as silence.
    pub fn push(&mut self, window: &[f32], probability: f32) -> Option<VadEvent> {
        let n = window.len() as u64;
        let win_start = self.pos;
        self.pos += n;
        let p = if probability.is_nan() {
            0.0
        } else {
            probability
        };
        match self.phase {
            Phase::Idle => {
                self.buf.extend(window);
                if p >= self.cfg.threshold {
                    self.phase = Phase::Candidate;
                    self.speech_first = win_start;
                    self.speech_last_end = self.pos;
                    // Keep at most pre_roll before this window.
                    let keep = self.pre_roll_cap + window.len();
                    self.trim_front(keep);
                    return self.maybe_start();
                }
                let keep = self.pre_roll_cap;
                self.trim_front(keep);
                None
            }
            Phase::Candidate => {
                self.buf.extend(window);
                if p < self.cfg.neg_threshold {
                    // A blip: back to idle, the audio stays as pre-roll.
                    self.phase = Phase::Idle;
                    let keep = self.pre_roll_cap;
                    self.trim_front(keep);
                    return None;
                }
                if p >= self.cfg.threshold {
                    self.speech_last_end = self.pos;
                }
                self.maybe_start()
            }
            Phase::Speech => {
                self.buf.extend(window);
                if p >= self.cfg.neg_threshold {
                    self.speech_last_end = self.pos;
                    if self.paused {
                        self.paused = false;
                        return Some(VadEvent::Resume { at: self.pos });
                    }
                }
                let silence = self.pos - self.speech_last_end;
                if silence >= self.trailing_silence {
                    return Some(self.end(EndReason::Silence));
                }
                if self.pause > 0 && !self.paused && silence >= self.pause {
                    self.paused = true;
                    return Some(VadEvent::Pause {
                        utterance: self.buf.iter().copied().collect(),
                        start: self.buf_start,
                        speech_end: self.speech_last_end,
                    });
                }
                if self.buf.len() >= self.max_utterance + self.pre_roll_cap
                    || self.pos - self.speech_first >= self.max_utterance as u64
                {
                    return Some(self.end(EndReason::MaxLength));
                }
                None
            }
        }
    }

    /// Ends the stream: an utterance under way is returned as `SpeechEnd` with
    /// [`EndReason::Flushed`]; a candidate is dropped.
    pub fn flush(&mut self) -> Option<VadEvent> {
        match self.phase {
            Phase::Speech => Some(self.end(EndReason::Flushed)),
            Phase::Candidate => {
                self.phase = Phase::Idle;
                let keep = self.pre_roll_cap;
                self.trim_front(keep);
                None
            }
            Phase::Idle => None,
        }
    }

    /// While a pause is under way (after [`VadEvent::Pause`], before speech comes back or
    /// the endpoint): how long the silence has lasted so far, in samples.
    pub fn paused_for(&self) -> Option<u64> {
        (self.phase == Phase::Speech && self.paused).then(|| self.pos - self.speech_last_end)
    }

    /// Ends the utterance now, during a pause, because the caller knows it is complete
    /// (a transcript that reads as a finished sentence): `SpeechEnd` with
    /// [`EndReason::Complete`], the same utterance the silence would have ended, only sooner.
    /// `None` (and nothing changes) unless a pause is under way.
    pub fn end_paused(&mut self) -> Option<VadEvent> {
        self.paused_for()?;
        Some(self.end(EndReason::Complete))
    }

    /// During an utterance's silence (any length, `Pause` emitted or not): the utterance's
    /// (start, end of speech), as its events give them, and how long the silence has lasted
    /// so far, in samples.
    pub fn silence(&self) -> Option<((u64, u64), u64)> {
        let silence = self.pos - self.speech_last_end;
        (self.phase == Phase::Speech && silence > 0)
            .then_some(((self.buf_start, self.speech_last_end), silence))
    }

    /// The last `max` samples of the utterance under way (fewer when it is shorter).
    pub fn tail(&self, max: usize) -> Vec<f32> {
        let skip = self.buf.len().saturating_sub(max);
        self.buf.iter().skip(skip).copied().collect()
    }

    /// Ends the utterance now, during any silence after speech ([`Endpointer::silence`]),
    /// because the caller knows it is complete (a learned end of turn): `SpeechEnd` with
    /// [`EndReason::Complete`]. `None` (and nothing changes) otherwise.
    pub fn end_silent(&mut self) -> Option<VadEvent> {
        self.silence()?;
        Some(self.end(EndReason::Complete))
    }

    fn maybe_start(&mut self) -> Option<VadEvent> {
        if self.pos - self.speech_first < self.min_speech.max(1) {
            return None;
        }
        self.phase = Phase::Speech;
        Some(VadEvent::SpeechStart {
            pre_roll: self.buf.iter().copied().collect(),
            start: self.buf_start,
            at: self.pos,
        })
    }

    fn end(&mut self, reason: EndReason) -> VadEvent {
        let utterance: Vec<f32> = self.buf.drain(..).collect();
        let start = self.buf_start;
        self.paused = false;
        self.buf_start = self.pos;
        self.phase = Phase::Idle;
        VadEvent::SpeechEnd {
            utterance,
            start,
            speech_end: self.speech_last_end,
            at: self.pos,
            reason,
        }
    }

    /// Drops samples from the front so at most `keep` remain.
    fn trim_front(&mut self, keep: usize) {
        if self.buf.len() > keep {
            let drop = self.buf.len() - keep;
            self.buf.drain(..drop);
        }
        // buf_start is the stream position of buf[0]: pos - len.
        self.buf_start = self.pos - self.buf.len() as u64;
    }
}
