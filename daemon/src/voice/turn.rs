//! A turn: one question (spoken or typed) and its spoken answer, with one id, the
//! `turn/*` events and the latency breakdown. A new turn cancels the one in progress.
//!
//! Speech is transcribed first (or the speculative transcription made at the last pause is
//! taken over, [`super::speculation`]); then the answer is spoken ([`super::answer`]), or a
//! held speculative answer adopted. [`outcome`] decides how the turn ended.
//!
//! A question that matches an intent (`intents.file`) is not given to the LLM: the intent
//! is published on `intent/<name>`, and the integration's answer (`turn/answer`, matched by
//! the turn id) is spoken, or after `intents.reply_timeout_ms` the fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sotad_engines::intent::{IntentMatch, IntentSet};
use sotad_engines::llm::StopReason;
use tokio::sync::oneshot;

use super::answer::Answerer;
use super::speaker::Speaker;
use super::speculation::{Speculation, Speculator, transcribe};
use crate::config::Config;
use crate::mqtt::payloads::{
    self, DoneEvent, Endpoint, IntentDone, IntentEvent, ReplyEvent, SmartTurnVerdict, Started,
    TranscriptEvent, TurnOutcome, TurnPath,
};
use crate::mqtt::{Command, Publisher, TurnEvent};
use crate::stages::Stages;
use crate::telemetry::{Latency, Metrics};

/// What starts a turn.
pub enum Input {
    /// Text injected over MQTT (`turn/text`).
    Text {
        text: String,
        session: Option<String>,
    },
    /// An utterance from the microphone, 16 kHz mono.
    Speech(Utterance),
}

/// A finished utterance, as the VAD thread hands it over.
pub struct Utterance {
    pub samples: Vec<f32>,
    /// Delay from the end of speech as the VAD saw it to the endpoint.
    pub endpoint_delay: Duration,
    pub endpointed_at: Instant,
    /// Its transcription, when it was started at a pause before the endpoint.
    pub speculation: Option<Speculation>,
    /// What ended it.
    pub endpoint: Endpoint,
    /// Where the speech ended as the VAD saw it, in seconds of audio captured since
    /// capture started (dropped frames included); `None` for push-to-talk.
    pub speech_end_s: Option<f64>,
    /// Smart Turn's latest verdict on its last pause, when it was asked (`[turn]`).
    pub smart_turn: Option<SmartTurnVerdict>,
}

/// The length of the `initial_prompt` made from an intents file (`intents.stt_prompt =
/// "auto"`): Whisper keeps the last 223 tokens of a prompt.
pub const STT_PROMPT_WORDS: usize = 120;

/// How the voice loop answers; fixed at construction.
#[derive(Debug, Clone)]
pub struct TurnsConfig {
    /// `vad.speculate_answer`: whether a transcript made before the endpoint is answered at
    /// once (held back until the endpoint), or only has its prompt evaluated.
    pub speculate_answers: bool,
    /// `voice.first_piece_words`: the answer's first spoken piece ends after this many
    /// words when no clause has ended before (0: no limit).
    pub first_piece_words: usize,
    /// `voice.first_audio_priority`: whether an answer's generation waits while its first
    /// spoken piece is synthesized.
    pub first_audio_priority: bool,
    /// The LLM session of spoken questions.
    pub session: String,
    /// `intents.file`, parsed: questions that match one become intents.
    pub intents: Option<Arc<IntentSet>>,
    /// `intents.reply_timeout_ms`.
    pub answer_timeout: Duration,
    /// `intents.fallback`.
    pub fallback: String,
    /// `intents.llm_fallback`: a question no template matches is asked with the intents as
    /// tools.
    pub llm_fallback: bool,
    /// `intents.stt_prompt`, resolved: Whisper's `initial_prompt` for spoken turns.
    pub stt_prompt: Option<Arc<str>>,
    /// `intents.fuzzy` and `intents.fuzzy_min_confidence`: the tolerant match's bound, when on.
    pub fuzzy: Option<f32>,
}

impl TurnsConfig {
    pub fn new(config: &Config) -> TurnsConfig {
        TurnsConfig {
            speculate_answers: config.vad.speculate_answer,
            first_piece_words: config.voice.first_piece_words,
            first_audio_priority: config.voice.first_audio_priority,
            session: "voice".to_string(),
            intents: config.intents.set.clone(),
            answer_timeout: Duration::from_millis(config.intents.reply_timeout_ms),
            fallback: config.intents.fallback.clone(),
            llm_fallback: config.intents.llm_fallback,
            stt_prompt: match (config.intents.stt_prompt.as_str(), &config.intents.set) {
                ("", _) | ("auto", None) => None,
                ("auto", Some(set)) => Some(set.stt_prompt(STT_PROMPT_WORDS).into()),
                (text, _) => Some(text.into()),
            },
            fuzzy: config
                .intents
                .fuzzy
                .then_some(config.intents.fuzzy_min_confidence as f32),
        }
    }
}

/// The turn runner, shared by the MQTT service (`turn/text`) and the microphone path.
#[derive(Clone)]
pub struct Turns {
    inner: Arc<Inner>,
}

struct Inner {
    answerer: Answerer,
    speculator: Speculator,
    /// The turn in progress. Locked alone (see the lock order in `speculation.rs`).
    current: Mutex<Option<Current>>,
    seq: AtomicU64,
    /// Set while a turn is producing or playing speech (the microphone is ignored meanwhile
    /// unless barge-in is on).
    speaking: AtomicBool,
    intents: Option<Arc<IntentSet>>,
    answer_timeout: Duration,
    fallback: String,
    /// `intents.fuzzy_min_confidence` when `intents.fuzzy` is on.
    fuzzy: Option<f32>,
    /// Whether the last turn that ended was answered (the wake word's follow-up window).
    last_answered: AtomicBool,
    /// The intents as tools (OpenAI shape), when `intents.llm_fallback` is on.
    tools: Option<Arc<serde_json::Value>>,
    /// Turns waiting for an integration's answer to their intent, by turn id. Locked alone.
    waiting: Mutex<HashMap<String, oneshot::Sender<Option<String>>>>,
}

/// What became of a turn's intent.
struct IntentRun {
    name: String,
    answer: &'static str,
    spoken: String,
    audio_s: f64,
    sentences: usize,
    first_audio: Option<Instant>,
    error: Option<String>,
}

/// One turn in progress, so a new one (barge-in) or `listen/stop` can cancel it.
struct Current {
    turn: String,
    cancel: Arc<AtomicBool>,
    llm_id: String,
}

/// How the transcription step of a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SttStep {
    /// A typed question: nothing to transcribe.
    Typed,
    Words,
    NoWords,
    /// Failed, or stopped; `cancelled`: the turn's cancel flag was set then.
    Failed {
        cancelled: bool,
    },
}

/// How the answer step of a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerStep {
    /// Not run: no question, or cancelled before.
    Skipped,
    Done(StopReason),
    /// The question was an intent: published, and its answer spoken (or the fallback).
    Intent,
    /// Failed; `cancelled`: the turn's cancel flag was set then.
    Failed {
        cancelled: bool,
    },
}

/// How a turn ended, from its steps and whether it was cancelled by the end.
pub fn outcome(stt: SttStep, answer: AnswerStep, cancelled: bool) -> TurnOutcome {
    match (stt, answer) {
        (SttStep::NoWords, _) => TurnOutcome::NoSpeech,
        (SttStep::Failed { cancelled: true }, _) => TurnOutcome::Cancelled,
        (SttStep::Failed { cancelled: false }, _) => TurnOutcome::Failed,
        (_, AnswerStep::Failed { cancelled: true }) => TurnOutcome::Cancelled,
        (_, AnswerStep::Failed { cancelled: false }) => TurnOutcome::Failed,
        (_, AnswerStep::Done(StopReason::Cancelled)) => TurnOutcome::Cancelled,
        // Cancelled while transcribing or answering (barge-in, a newer turn,
        // `listen/stop`): the turn must not read as answered.
        _ if cancelled => TurnOutcome::Cancelled,
        _ => TurnOutcome::Answered,
    }
}

impl Turns {
    pub fn new(
        config: TurnsConfig,
        stages: Stages,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        speaker: Option<Speaker>,
    ) -> Turns {
        let answerer = Answerer {
            stages,
            publisher,
            metrics,
            speaker,
            first_piece_words: config.first_piece_words,
            first_audio_priority: config.first_audio_priority,
        };
        // With the LLM recognizer, a question is asked with the tools once it is complete:
        // an answer started early without them would be thrown away.
        let llm_recognizer = config.llm_fallback && config.intents.is_some();
        if llm_recognizer && let Some(llm) = &answerer.stages.llm {
            llm.prepare_grammars();
        }
        let speculator = Speculator::new(
            answerer.clone(),
            config.speculate_answers && !llm_recognizer,
            config.session,
            config.intents.clone(),
            config.stt_prompt.clone(),
        );
        Turns {
            inner: Arc::new(Inner {
                answerer,
                speculator,
                current: Mutex::new(None),
                seq: AtomicU64::new(0),
                speaking: AtomicBool::new(false),
                intents: config.intents.clone(),
                answer_timeout: config.answer_timeout,
                tools: config
                    .intents
                    .as_ref()
                    .filter(|_| config.llm_fallback)
                    .map(|set| Arc::new(set.tools())),
                fallback: config.fallback,
                fuzzy: config.fuzzy,
                last_answered: AtomicBool::new(false),
                waiting: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The speaker, when one is configured.
    pub fn speaker(&self) -> Option<&Speaker> {
        self.inner.answerer.speaker.as_ref()
    }

    /// The speculation of the utterance under way (driven by the VAD thread).
    pub fn speculator(&self) -> &Speculator {
        &self.inner.speculator
    }

    /// Whether the last turn that ended was answered (not cancelled, failed or empty).
    pub fn last_answered(&self) -> bool {
        self.inner.last_answered.load(Ordering::Relaxed)
    }

    /// The publisher of the turn events.
    pub fn publisher(&self) -> &Publisher {
        &self.inner.answerer.publisher
    }

    /// The speech-to-text stage, when on.
    pub fn stt(&self) -> Option<&crate::stages::stt::SttWorker> {
        self.inner.answerer.stages.stt.as_ref()
    }

    /// Whether a turn is in progress (speech being produced or played).
    pub fn speaking(&self) -> bool {
        self.inner.speaking.load(Ordering::Relaxed)
    }

    /// A fresh turn id.
    pub fn next_id(&self) -> String {
        format!(
            "turn-{}",
            self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Cancels the turn in progress, if any (barge-in, `listen/stop`, `mute`).
    pub fn cancel_current(&self) -> Option<String> {
        let current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        current.cancel.store(true, Ordering::Relaxed);
        if let Some(llm) = &self.inner.answerer.stages.llm {
            llm.cancel(&current.llm_id);
        }
        Some(current.turn)
    }

    /// Hands an integration's answer (`turn/answer`) to the turn `turn`, which waits for it
    /// to speak `text`. False when no turn by that id waits (it ended, timed out, or its
    /// question was no intent).
    pub fn answer_intent(&self, turn: &str, text: Option<String>) -> bool {
        let waiting = self
            .inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(turn);
        waiting.is_some_and(|tx| tx.send(text).is_ok())
    }

    /// Publishes the intent `m` of turn `turn`, waits for the integration's answer (or the
    /// timeout, or a cancel) and speaks it. Also gives when the intent was published.
    async fn intent(
        &self,
        turn: &str,
        transcript: &str,
        m: IntentMatch,
        cancel: &Arc<AtomicBool>,
    ) -> (IntentRun, Instant) {
        let inner = &self.inner;
        let publisher = &inner.answerer.publisher;
        let (tx, mut rx) = oneshot::channel();
        // Registered before the intent goes out, so that a quick answer finds the turn.
        inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(turn.to_string(), tx);
        let answer_topic = publisher.topics().request(Command::TurnAnswer);
        let timeout_ms = inner.answer_timeout.as_millis() as u64;
        publisher
            .event(
                &publisher.topics().intent(&m.name),
                &IntentEvent {
                    turn,
                    intent: &m.name,
                    transcript,
                    slots: payloads::intent_slots(&m.slots),
                    recognizer: m.recognizer.name(),
                    confidence: m.confidence,
                    answer_topic: &answer_topic,
                    answer_timeout_ms: timeout_ms,
                },
            )
            .await;
        let published = Instant::now();
        tracing::info!(turn, intent = m.name, "intent published");
        // Wait for the answer; the cancel flag is looked at every 50 ms.
        let deadline = published + inner.answer_timeout;
        let answered = loop {
            if cancel.load(Ordering::Relaxed) {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Some(None);
            }
            match tokio::time::timeout(left.min(Duration::from_millis(50)), &mut rx).await {
                Ok(Ok(text)) => break Some(Some(text)),
                Ok(Err(_)) => break Some(None),
                Err(_) => {}
            }
        };
        inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(turn);
        let (answer, text) = match answered {
            None => ("cancelled", String::new()),
            Some(None) => ("timeout", inner.fallback.clone()),
            Some(Some(text)) => ("integration", text.unwrap_or_default()),
        };
        if answer != "cancelled" {
            inner
                .answerer
                .metrics
                .intent_done(answer == "integration", published.elapsed());
        }
        if answer == "timeout" {
            tracing::info!(turn, intent = m.name, "no answer to the intent in time");
        }
        let mut run = IntentRun {
            name: m.name,
            answer,
            spoken: String::new(),
            audio_s: 0.0,
            sentences: 0,
            first_audio: None,
            error: None,
        };
        if !text.trim().is_empty() && !cancel.load(Ordering::Relaxed) {
            match inner.answerer.speak(turn, text.clone(), cancel).await {
                Ok(sent) => {
                    run.audio_s = sent.seconds();
                    run.sentences = sent.sentences;
                    run.first_audio = sent.first;
                }
                Err(e) => run.error = Some(e),
            }
            run.spoken = text;
        }
        (run, published)
    }

    /// The turn in progress now cancels `llm_id` (an adopted answer's generation).
    fn set_current_llm_id(&self, turn: &str, llm_id: &str) {
        if let Some(current) = self
            .inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .filter(|c| c.turn == turn)
        {
            current.llm_id = llm_id.to_string();
        }
    }

    /// Runs one turn to its end, publishing its events. A turn already in progress is
    /// cancelled first: the newest question wins.
    pub async fn run(&self, turn: String, mut input: Input) {
        let started = Instant::now();
        let inner = &self.inner;
        let publisher = &inner.answerer.publisher;
        let topics = publisher.topics().clone();
        // A speculative transcription becomes this turn's: cancelling the turn stops it too.
        let speculation = match &mut input {
            Input::Speech(u) => u.speculation.take(),
            Input::Text { .. } => None,
        };
        let cancel = speculation
            .as_ref()
            .map_or_else(|| Arc::new(AtomicBool::new(false)), |s| s.cancel.clone());
        let llm_id = format!("{turn}/llm");
        if let Some(previous) = self.cancel_current() {
            tracing::info!(previous, turn, "new turn cancels the one in progress");
        }
        *inner.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Current {
            turn: turn.clone(),
            cancel: cancel.clone(),
            llm_id: llm_id.clone(),
        });
        inner.speaking.store(true, Ordering::Relaxed);
        let source = match &input {
            Input::Text { .. } => "text",
            Input::Speech(_) => "speech",
        };
        publisher
            .event(
                &topics.turn(TurnEvent::Started),
                &Started {
                    turn: &turn,
                    source,
                },
            )
            .await;

        let mut latency = Latency::default();
        let mut error = None;
        let mut transcript = String::new();
        let mut reply = String::new();
        let mut audio_s = 0.0;
        let mut sentences = 0usize;
        let mut held = None;
        let mut endpoint = None;
        let mut speech_end = None;
        let mut smart_turn = None;
        let mut endpointed = None;
        let mut stt_step = SttStep::Typed;
        let mut answer_step = AnswerStep::Skipped;
        let mut path = None;
        let mut intent_done = None;

        // 1. Speech to text.
        let (question, session, origin) = match input {
            Input::Text { text, session } => (Some(text), session, started),
            Input::Speech(u) => {
                endpoint = Some(u.endpoint);
                endpointed = Some(u.endpointed_at);
                speech_end = u.speech_end_s.map(|s| (s * 1e3).round() / 1e3);
                smart_turn = u.smart_turn;
                latency.endpoint_ms = Some(round1(u.endpoint_delay.as_secs_f64() * 1e3));
                let origin = u
                    .endpointed_at
                    .checked_sub(u.endpoint_delay)
                    .unwrap_or(u.endpointed_at);
                let result = match speculation {
                    Some(s) => {
                        latency.stt_early_ms = Some(round1(ms_between(s.started, u.endpointed_at)));
                        let r = s.result.await;
                        held = s.held.lock().unwrap_or_else(|e| e.into_inner()).take();
                        r
                    }
                    None => match transcribe(
                        inner.answerer.stages.stt.as_ref(),
                        u.samples,
                        inner.speculator.stt_prompt(),
                        cancel.clone(),
                    ) {
                        Ok(pending) => pending.await,
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(t) => {
                        latency.stt_ms = Some(round1(t.ms));
                        transcript = t.text.clone();
                        publisher
                            .event(
                                &topics.turn(TurnEvent::Transcript),
                                &TranscriptEvent {
                                    turn: &turn,
                                    text: &t.text,
                                    language: &t.language,
                                },
                            )
                            .await;
                        if t.text.trim().is_empty() {
                            stt_step = SttStep::NoWords;
                            (None, None, origin)
                        } else {
                            stt_step = SttStep::Words;
                            (Some(t.text), inner.speculator.voice_session(), origin)
                        }
                    }
                    Err(e) => {
                        // Cancelled while transcribing (barge-in, a newer turn,
                        // `listen/stop`): the engine stopped on the turn's flag; that is not
                        // a failure.
                        let cancelled = cancel.load(Ordering::Relaxed);
                        if !cancelled {
                            error = Some(e);
                        }
                        stt_step = SttStep::Failed { cancelled };
                        (None, None, origin)
                    }
                }
            }
        };

        // 2. A command: its intent is published and the integration's answer spoken.
        let mut matched = question
            .as_deref()
            .filter(|_| !cancel.load(Ordering::Relaxed))
            .and_then(|q| inner.intents.as_ref()?.recognize(q));
        // 2a. No template matched: the tolerant match (`intents.fuzzy`).
        if matched.is_none()
            && let Some(min) = inner.fuzzy
            && let Some(q) = question.as_deref()
            && !cancel.load(Ordering::Relaxed)
        {
            matched = inner
                .intents
                .as_ref()
                .and_then(|set| set.recognize_fuzzy(q, min));
        }
        // 2b. No template matched: the LLM with the intents as tools; a call is the intent,
        // a plain answer is spoken.
        let mut plain = None;
        if matched.is_none()
            && let Some(q) = question.as_deref()
            && !cancel.load(Ordering::Relaxed)
            && let Some(set) = inner.intents.clone()
            && let Some(tools) = inner.tools.clone()
            && let Some(llm) = inner.answerer.stages.llm.clone()
        {
            // A speculative answer was made without the tools.
            if let Some(h) = held.take() {
                inner.speculator.abandon_held(h);
            }
            match ask_tools(&llm, &llm_id, q, session.clone(), tools).await {
                Ok(a) => match a.tool_calls.first() {
                    Some(call) => {
                        match set.tool_call(
                            &call.name,
                            &call.arguments,
                            a.probability.unwrap_or(0.0),
                        ) {
                            // Kept only as far as the transcript says it (intent/ground.rs);
                            // refused, the turn is answered as a question.
                            Ok(m) => match set.ground(m, q) {
                                Ok(m) => matched = Some(m),
                                Err(e) => {
                                    tracing::info!(turn, reason = %e, "the LLM's tool call is not what was said: answered as a question");
                                }
                            },
                            Err(e) => {
                                tracing::warn!(turn, error = %e, "the LLM's tool call is no valid intent");
                            }
                        }
                    }
                    None if !a.text.is_empty() => plain = Some(a),
                    None => {}
                },
                Err(e) => tracing::warn!(turn, error = %e, "the LLM recognizer failed"),
            }
        }
        if let Some(a) = plain {
            path = Some(TurnPath::Llm);
            latency.ttft_ms = Some(round1(ms_between(started, Instant::now())));
            match inner.answerer.speak(&turn, a.text.clone(), &cancel).await {
                Ok(sent) => {
                    audio_s = sent.seconds();
                    sentences = sent.sentences;
                    latency.first_audio_ms = sent.first.map(|t| round1(ms_between(started, t)));
                    latency.response_ms = sent.first.map(|t| round1(ms_between(origin, t)));
                    answer_step = AnswerStep::Done(a.stop_reason);
                }
                Err(e) => {
                    error = Some(e);
                    answer_step = AnswerStep::Failed {
                        cancelled: cancel.load(Ordering::Relaxed),
                    };
                }
            }
            reply = a.text;
            publisher
                .event(
                    &topics.turn(TurnEvent::Reply),
                    &ReplyEvent {
                        turn: &turn,
                        text: &reply,
                        stop_reason: a.stop_reason,
                    },
                )
                .await;
        } else if let Some(m) = matched {
            // A speculative answer to it is never spoken.
            if let Some(h) = held.take() {
                inner.speculator.abandon_held(h);
            }
            path = Some(TurnPath::Intent);
            let question = question.as_deref().unwrap_or_default();
            let (run, published) = self.intent(&turn, question, m, &cancel).await;
            latency.intent_ms = Some(round1(ms_between(origin, published)));
            latency.first_audio_ms = run.first_audio.map(|t| round1(ms_between(started, t)));
            latency.response_ms = run.first_audio.map(|t| round1(ms_between(origin, t)));
            reply = run.spoken;
            audio_s = run.audio_s;
            sentences = run.sentences;
            answer_step = match run.error {
                Some(e) => {
                    error = Some(e);
                    AnswerStep::Failed {
                        cancelled: cancel.load(Ordering::Relaxed),
                    }
                }
                None => AnswerStep::Intent,
            };
            intent_done = Some((run.name, run.answer));
        }
        // 3. Otherwise the LLM, streamed into sentences, each to TTS as soon as it is complete.
        else if let Some(question) = question
            && !cancel.load(Ordering::Relaxed)
        {
            path = Some(TurnPath::Llm);
            let answered = match held.take() {
                Some(h) => {
                    self.set_current_llm_id(&turn, h.llm_id());
                    inner.speculator.adopt(&turn, h, &question, session).await
                }
                None => {
                    inner
                        .answerer
                        .answer(&turn, &llm_id, question, session, &cancel, None)
                        .await
                }
            };
            match answered {
                Ok(a) => {
                    reply = a.text;
                    latency.ttft_ms = a.first_token.map(|t| round1(ms_between(started, t)));
                    latency.first_audio_ms = a.first_audio.map(|t| round1(ms_between(started, t)));
                    latency.response_ms = a.first_audio.map(|t| round1(ms_between(origin, t)));
                    latency.audio_early_ms = a
                        .audio_ready
                        .zip(endpointed)
                        .filter(|(ready, endpoint)| ready < endpoint)
                        .map(|(ready, endpoint)| round1(ms_between(ready, endpoint)));
                    audio_s = a.audio_s;
                    sentences = a.sentences;
                    publisher
                        .event(
                            &topics.turn(TurnEvent::Reply),
                            &ReplyEvent {
                                turn: &turn,
                                text: &reply,
                                stop_reason: a.stop_reason,
                            },
                        )
                        .await;
                    answer_step = AnswerStep::Done(a.stop_reason);
                }
                Err(e) => {
                    answer_step = AnswerStep::Failed {
                        cancelled: cancel.load(Ordering::Relaxed),
                    };
                    error = Some(e);
                }
            }
        }
        if let Some(h) = held.take() {
            inner.speculator.abandon_held(h);
        }
        let outcome = outcome(stt_step, answer_step, cancel.load(Ordering::Relaxed));
        latency.total_ms = round1(ms_between(started, Instant::now()));
        {
            // A cancelled turn was already taken out of `current`; it still ends the speaking
            // state unless a newer turn has taken its place.
            let mut current = inner.current.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_ref().is_none_or(|c| c.turn == turn) {
                *current = None;
                inner
                    .last_answered
                    .store(outcome == TurnOutcome::Answered, Ordering::Relaxed);
                inner.speaking.store(false, Ordering::Relaxed);
            }
        }
        inner
            .answerer
            .metrics
            .turn_done(outcome == TurnOutcome::Answered, &latency);
        publisher
            .event(
                &topics.turn(TurnEvent::Done),
                &DoneEvent {
                    turn: &turn,
                    outcome,
                    path,
                    intent: intent_done
                        .as_ref()
                        .map(|(name, answer)| IntentDone { name, answer }),
                    transcript: &transcript,
                    reply: &reply,
                    audio_s,
                    sentences,
                    endpoint,
                    speech_end_s: speech_end,
                    smart_turn,
                    latency,
                    error,
                },
            )
            .await;
    }
}

/// The question asked with the intents as tools, in its session (not streamed, and not
/// remembered: a call is no conversation).
async fn ask_tools(
    llm: &crate::stages::llm::LlmStage,
    llm_id: &str,
    question: &str,
    session: Option<String>,
    tools: Arc<serde_json::Value>,
) -> Result<crate::stages::llm::Answer, String> {
    use crate::stages::llm::{Ask, Overrides};
    let ask = Ask {
        id: llm_id.to_string(),
        messages: vec![sotad_engines::llm::Message::user(question)],
        session,
        options: Overrides {
            truncate: Some(true),
            tools: Some(tools),
            ..Overrides::default()
        },
    };
    let (_rx, done) = llm
        .ask_streaming(ask, 1, None, false, false)
        .map_err(|e| e.to_string())?;
    let result = done.await;
    llm.finish(llm_id);
    result.map_err(|e| e.to_string())?.map_err(|e| e.message)
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1e3
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_is_answered_only_when_nothing_stopped_it() {
        use AnswerStep as A;
        use SttStep as S;
        use TurnOutcome::*;
        let done = A::Done(StopReason::Eos);
        assert_eq!(outcome(S::Words, done, false), Answered);
        assert_eq!(
            outcome(S::Typed, A::Done(StopReason::MaxTokens), false),
            Answered
        );
        // Nothing said: no answer was asked for, and a late cancel does not change that.
        assert_eq!(outcome(S::NoWords, A::Skipped, false), NoSpeech);
        assert_eq!(outcome(S::NoWords, A::Skipped, true), NoSpeech);
        // A transcription that failed because the turn was cancelled is not a failure.
        assert_eq!(
            outcome(S::Failed { cancelled: true }, A::Skipped, true),
            Cancelled
        );
        assert_eq!(
            outcome(S::Failed { cancelled: false }, A::Skipped, true),
            Failed
        );
        // The same for the answer.
        assert_eq!(
            outcome(S::Words, A::Failed { cancelled: true }, true),
            Cancelled
        );
        assert_eq!(
            outcome(S::Words, A::Failed { cancelled: false }, true),
            Failed
        );
        // Stopped by its cancel flag, or cancelled at any point before the end.
        assert_eq!(
            outcome(S::Words, A::Done(StopReason::Cancelled), false),
            Cancelled
        );
        assert_eq!(outcome(S::Words, done, true), Cancelled);
        assert_eq!(
            outcome(S::Words, A::Skipped, true),
            Cancelled,
            "cancelled before the LLM ran"
        );
        assert_eq!(outcome(S::Typed, A::Skipped, true), Cancelled);
        // An intent published and answered (or not) is an answered turn, unless cancelled.
        assert_eq!(outcome(S::Words, A::Intent, false), Answered);
        assert_eq!(outcome(S::Typed, A::Intent, true), Cancelled);
    }
}
