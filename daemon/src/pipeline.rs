//! The voice loop: utterance → STT → LLM (streamed, cut at sentence ends) → TTS sentence by
//! sentence → playback and MQTT, with one id per turn and a latency breakdown.
//!
//! Every edge is bounded, with a written policy:
//! - capture → VAD: frames, `try_send`, dropped and counted when the VAD falls behind
//!   (the capture thread never blocks);
//! - VAD → turns: utterances, `try_send` into a queue of 2, dropped and counted when full;
//! - LLM → sentences: the token stream of [`crate::service::ask`] (bounded, tokens dropped
//!   from the MQTT stream only; the turn uses the pieces it receives in full, see below);
//! - sentences → TTS: one job per sentence on the TTS worker queue (busy → the sentence is
//!   skipped and counted; the reply text still goes out on `turn/reply`);
//! - TTS → MQTT/playback: [`crate::tts::AUDIO_BUFFER`] chunks, the engine waits (audio is
//!   never dropped).
//!
//! Inference runs on the engine threads; this module only coordinates, on tokio.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::mqtt::Publisher;
use crate::mqtt::request::{ErrorCode, Request, RequestError};
use crate::sentences::SentenceSplitter;
use crate::service::Stages;
use crate::telemetry::Metrics;
use crate::{llm, tts};

/// What starts a turn.
pub enum Input {
    /// Text injected over MQTT (`turn/text`).
    Text {
        text: String,
        session: Option<String>,
    },
    /// An utterance from the microphone, 16 kHz mono, with when the endpointer saw its end.
    Speech {
        samples: Vec<f32>,
        /// Delay from the end of speech as the VAD saw it to the endpoint, in ms.
        endpoint_ms: f64,
        endpointed_at: Instant,
        /// Its transcription, when it was started at a pause before the endpoint.
        speculation: Option<Speculation>,
        /// What ended it: `silence`, `complete` (its transcript read as finished),
        /// `max_length` or `push_to_talk`.
        endpoint: &'static str,
        /// Where the speech ended as the VAD saw it, in seconds of audio captured since
        /// capture started (dropped frames included); `None` for push-to-talk.
        speech_end_s: Option<f64>,
    },
}

/// What a transcription gives the turn: text, language, and its time in ms.
type SttResult = Result<(String, String, f64), String>;

/// A transcription started at a pause in speech (`vad.speculate_ms`), before the endpoint
/// knew whether the utterance was over. Cancelled when speech comes back.
pub struct Speculation {
    /// (utterance start, end of speech), stream positions: the endpoint's utterance must
    /// have the same to use this transcript.
    key: (u64, u64),
    cancel: Arc<AtomicBool>,
    started: Instant,
    result: Pin<Box<dyn Future<Output = SttResult> + Send>>,
    /// The answer started from the transcript before the endpoint, if any: set before
    /// `result` resolves.
    held: Arc<Mutex<Option<Held>>>,
    /// Set once the transcript is ready and reads as a finished sentence
    /// ([`crate::sentences::reads_complete`]): the VAD thread may end the utterance early.
    complete: Arc<AtomicBool>,
}

/// An answer generated from a speculative transcript before the endpoint confirmed it: the
/// LLM and TTS run, but no audio is played or published (and nothing is remembered) until
/// the turn sends its id through `commit`. Dropping `commit` abandons it.
struct Held {
    llm_id: String,
    commit: tokio::sync::oneshot::Sender<String>,
    done: tokio::task::JoinHandle<Result<Answer, String>>,
}

/// `turn/text`: a typed question that runs the LLM → TTS path of the voice loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextTurnRequest {
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub session: Option<String>,
}

impl Request for TextTurnRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

pub fn validate(r: &TextTurnRequest) -> Result<(), RequestError> {
    if r.text.trim().is_empty() || r.text.len() > llm::MAX_PROMPT_BYTES {
        return Err(RequestError::new(
            Some(r.id.clone()),
            ErrorCode::InvalidRequest,
            format!(
                "`text` must be 1 to {} bytes of text",
                llm::MAX_PROMPT_BYTES
            ),
        )
        .with_field("text"));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Started<'a> {
    pub turn: &'a str,
    pub source: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct TranscriptEvent<'a> {
    pub turn: &'a str,
    pub text: &'a str,
    pub language: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplyEvent<'a> {
    pub turn: &'a str,
    pub text: &'a str,
    pub stop_reason: &'a str,
}

/// Where the time of a turn went, in milliseconds; absent stages did not run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// End of speech as the VAD saw it → endpoint (the silence the endpointer waited for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_ms: Option<f64>,
    /// The transcription, from its start to the transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stt_ms: Option<f64>,
    /// How long before the endpoint the transcription started (speculatively, at a pause).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stt_early_ms: Option<f64>,
    /// Start of the turn (the endpoint, or the text's arrival) → the LLM's first token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Start of the turn (the endpoint, or the text's arrival) → first audio sample ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_audio_ms: Option<f64>,
    /// End of speech as the VAD saw it (or arrival) → first audio: what the person waits
    /// for, less the VAD's lag behind the true end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_ms: Option<f64>,
    /// How long before the endpoint an answer started from a speculative transcript had its
    /// first audio ready: the margin by which the endpoint, not the computation, set the
    /// wait. Absent when the audio was not ready before the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_early_ms: Option<f64>,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoneEvent<'a> {
    pub turn: &'a str,
    /// `answered`, `no_speech`, `cancelled` or `failed`.
    pub outcome: &'a str,
    pub transcript: &'a str,
    pub reply: &'a str,
    pub audio_s: f64,
    pub sentences: usize,
    /// What ended a spoken question: `silence`, `complete`, `max_length`, `push_to_talk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'static str>,
    /// Where the question's speech ended in the capture stream (seconds of audio since
    /// capture started), as the VAD saw it: lines a turn up with a recording.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech_end_s: Option<f64>,
    pub latency: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One turn in progress, so a new one (barge-in) or `listen/stop` can cancel it.
struct Current {
    turn: String,
    cancel: Arc<AtomicBool>,
    llm_id: String,
}

/// Audio of a turn: sent to MQTT and, when configured, to the player.
pub type PlaybackSender = std::sync::mpsc::SyncSender<PlayItem>;

pub enum PlayItem {
    Audio {
        samples: Vec<f32>,
        sample_rate: u32,
        cancel: Arc<AtomicBool>,
        /// The sentence goes on in the next item with the same `cancel` (played without a
        /// gap on the open device).
        more: bool,
    },
}

/// The turn runner, shared by the MQTT service (`turn/text`) and the microphone path.
#[derive(Clone)]
pub struct Turns {
    inner: Arc<Inner>,
}

struct Inner {
    stages: Stages,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    current: Mutex<Option<Current>>,
    seq: AtomicU64,
    /// Numbers the speculative answers (their LLM and TTS request ids).
    seq_speculative: AtomicU64,
    /// Whether a speculative transcript is answered before the endpoint (`vad.speculate_answer`).
    speculate_answers: bool,
    /// The first spoken piece's word limit (`voice.first_piece_words`, 0: none).
    first_piece_words: usize,
    /// Whether an answer's generation waits while its first spoken piece is synthesized
    /// (`voice.first_audio_priority`).
    first_audio_priority: bool,
    /// Set while a turn is producing or playing speech (the microphone is ignored meanwhile
    /// unless barge-in is on).
    speaking: AtomicBool,
    playback: Option<PlaybackSender>,
    session: String,
    /// The transcription started at the latest pause, if speech has not come back since.
    speculation: Mutex<Option<Speculation>>,
    /// The runtime, for the tasks that follow a speculation from the VAD thread.
    runtime: Option<tokio::runtime::Handle>,
}

impl Turns {
    pub fn new(
        stages: Stages,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        playback: Option<PlaybackSender>,
    ) -> Turns {
        Turns {
            inner: Arc::new(Inner {
                stages,
                publisher,
                metrics,
                current: Mutex::new(None),
                seq: AtomicU64::new(0),
                seq_speculative: AtomicU64::new(0),
                speculate_answers: true,
                first_piece_words: 0,
                first_audio_priority: true,
                speaking: AtomicBool::new(false),
                playback,
                session: "voice".to_string(),
                speculation: Mutex::new(None),
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }

    /// Sets `vad.speculate_answer`: whether a transcript made before the endpoint is
    /// answered at once (held back until the endpoint), or only has its prompt evaluated.
    /// Call before the turns are shared.
    pub fn speculate_answers(mut self, on: bool) -> Turns {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.speculate_answers = on;
        }
        self
    }

    /// Sets `voice.first_audio_priority`: whether an answer's generation waits while its
    /// first spoken piece is synthesized. Call before the turns are shared.
    pub fn first_audio_priority(mut self, on: bool) -> Turns {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.first_audio_priority = on;
        }
        self
    }

    /// Sets `voice.first_piece_words`: the answer's first spoken piece ends after this many
    /// words when no clause has ended before (0: no limit). Call before the turns are shared.
    pub fn first_piece_words(mut self, words: usize) -> Turns {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.first_piece_words = words;
        }
        self
    }

    /// The player's queue, when a speaker is configured.
    pub fn playback(&self) -> Option<&PlaybackSender> {
        self.inner.playback.as_ref()
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
        if let Some(llm) = &self.inner.stages.llm {
            llm.cancel(&current.llm_id);
        }
        Some(current.turn)
    }

    /// Runs one turn to its end, publishing its events. A turn already in progress is
    /// cancelled first: the newest question wins.
    pub async fn run(&self, turn: String, mut input: Input) {
        let started = Instant::now();
        let inner = &self.inner;
        let topics = inner.publisher.topics().clone();
        // A speculative transcription becomes this turn's: cancelling the turn stops it too.
        let speculation = match &mut input {
            Input::Speech { speculation, .. } => speculation.take(),
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
            Input::Speech { .. } => "speech",
        };
        inner
            .publisher
            .event(
                &topics.turn("started"),
                &Started {
                    turn: &turn,
                    source,
                },
            )
            .await;

        let mut latency = Latency::default();
        let mut outcome = "answered";
        let mut error = None;
        let mut transcript = String::new();
        let mut reply = String::new();
        let mut audio_s = 0.0;
        let mut sentences = 0usize;
        let mut held: Option<Held> = None;
        let mut endpoint_reason = None;
        let mut speech_end = None;
        let mut endpointed = None;

        // 1. Speech to text.
        let (question, session, origin) = match input {
            Input::Text { text, session } => (Some(text), session, started),
            Input::Speech {
                samples,
                endpoint_ms,
                endpointed_at,
                endpoint,
                speech_end_s,
                ..
            } => {
                endpoint_reason = Some(endpoint);
                endpointed = Some(endpointed_at);
                speech_end = speech_end_s.map(|s| (s * 1e3).round() / 1e3);
                latency.endpoint_ms = Some(round1(endpoint_ms));
                let origin = endpointed_at
                    .checked_sub(std::time::Duration::from_secs_f64(endpoint_ms / 1e3))
                    .unwrap_or(endpointed_at);
                let result = match speculation {
                    Some(s) => {
                        latency.stt_early_ms = Some(round1(ms_between(s.started, endpointed_at)));
                        let r = s.result.await;
                        held = s.held.lock().unwrap_or_else(|e| e.into_inner()).take();
                        r
                    }
                    None => match self.start_transcription(samples, cancel.clone()) {
                        Ok(pending) => pending.await,
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok((text, language, ms)) => {
                        latency.stt_ms = Some(round1(ms));
                        transcript = text.clone();
                        inner
                            .publisher
                            .event(
                                &topics.turn("transcript"),
                                &TranscriptEvent {
                                    turn: &turn,
                                    text: &text,
                                    language: &language,
                                },
                            )
                            .await;
                        if text.trim().is_empty() {
                            outcome = "no_speech";
                            (None, None, origin)
                        } else {
                            (Some(text), Some(inner.session.clone()), origin)
                        }
                    }
                    // Cancelled while transcribing (barge-in, a newer turn, `listen/stop`):
                    // the engine stopped on the turn's flag; that is not a failure.
                    Err(_) if cancel.load(Ordering::Relaxed) => {
                        outcome = "cancelled";
                        (None, None, origin)
                    }
                    Err(e) => {
                        outcome = "failed";
                        error = Some(e);
                        (None, None, origin)
                    }
                }
            }
        };

        // 2. LLM, streamed into sentences; 3. each sentence to TTS as soon as it is complete.
        if let Some(question) = question
            && !cancel.load(Ordering::Relaxed)
        {
            let answered = match held.take() {
                Some(h) => self.adopt(&turn, h, &question, session).await,
                None => {
                    self.answer(&turn, &llm_id, question, session, &cancel, None)
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
                    inner
                        .publisher
                        .event(
                            &topics.turn("reply"),
                            &ReplyEvent {
                                turn: &turn,
                                text: &reply,
                                stop_reason: &a.stop_reason,
                            },
                        )
                        .await;
                    if a.stop_reason == "cancelled" || cancel.load(Ordering::Relaxed) {
                        outcome = "cancelled";
                    }
                }
                Err(e) => {
                    outcome = if cancel.load(Ordering::Relaxed) {
                        "cancelled"
                    } else {
                        "failed"
                    };
                    error = Some(e);
                }
            }
        }
        if let Some(h) = held.take() {
            self.abandon_held(h);
        }
        // Cancelled while transcribing (barge-in, a newer turn, `listen/stop`): the LLM never
        // ran, and the turn must not read as answered.
        if cancel.load(Ordering::Relaxed) && outcome == "answered" {
            outcome = "cancelled";
        }
        latency.total_ms = round1(ms_between(started, Instant::now()));
        {
            // A cancelled turn was already taken out of `current`; it still ends the speaking
            // state unless a newer turn has taken its place.
            let mut current = inner.current.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_ref().is_none_or(|c| c.turn == turn) {
                *current = None;
                inner.speaking.store(false, Ordering::Relaxed);
            }
        }
        inner.metrics.turn_done(outcome, &latency);
        inner
            .publisher
            .event(
                &topics.turn("done"),
                &DoneEvent {
                    turn: &turn,
                    outcome,
                    transcript: &transcript,
                    reply: &reply,
                    audio_s,
                    sentences,
                    endpoint: endpoint_reason,
                    speech_end_s: speech_end,
                    latency,
                    error,
                },
            )
            .await;
    }

    /// Queues a transcription on the STT worker; the future gives its result.
    fn start_transcription(
        &self,
        samples: Vec<f32>,
        cancel: Arc<AtomicBool>,
    ) -> Result<impl Future<Output = SttResult> + Send + use<>, String> {
        let Some(stt) = &self.inner.stages.stt else {
            return Err("speech-to-text is off: configuration key `stt.model` is empty".into());
        };
        let started = Instant::now();
        let pending = stt
            .submit(move |engine| {
                engine.transcribe_samples(
                    &samples,
                    None,
                    crate::stt::Task::Transcribe,
                    None,
                    None,
                    Some(cancel),
                )
            })
            .map_err(|e| e.to_string())?;
        Ok(async move {
            let t = pending.await.map_err(|e| e.to_string())??;
            Ok((
                t.text.trim().to_string(),
                t.language.clone(),
                ms_between(started, Instant::now()),
            ))
        })
    }

    /// Starts transcribing the utterance so far at a pause (`VadEvent::Pause`), replacing
    /// (and cancelling) an earlier speculation. `key` is (utterance start, end of speech).
    pub fn speculate(&self, key: (u64, u64), samples: Vec<f32>) {
        let cancel = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(None));
        let complete = Arc::new(AtomicBool::new(false));
        let speculation = match self.start_transcription(samples, cancel.clone()) {
            Ok(pending) => Some(Speculation {
                key,
                cancel: cancel.clone(),
                started: Instant::now(),
                result: self.follow_speculation(pending, cancel, held.clone(), complete.clone()),
                held,
                complete,
            }),
            Err(e) => {
                tracing::debug!(error = e, "no speculative transcription");
                None
            }
        };
        let old = std::mem::replace(
            &mut *self
                .inner
                .speculation
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            speculation,
        );
        if let Some(old) = old {
            self.cancel_speculation(old);
        }
    }

    /// Cancels a speculation: its transcription and, if it has one, its held answer.
    fn cancel_speculation(&self, s: Speculation) {
        s.cancel.store(true, Ordering::Relaxed);
        if let Some(h) = s.held.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.abandon_held(h);
        }
    }

    /// Stops a held answer that no turn will adopt: the LLM is cancelled, the audio is
    /// neither played nor published, nothing is remembered.
    fn abandon_held(&self, h: Held) {
        if let Some(llm) = &self.inner.stages.llm {
            llm.cancel(&h.llm_id);
        }
        drop(h.commit);
        self.inner.metrics.speculative_answer(false);
    }

    /// Makes a held answer this turn's: its audio goes out under the turn's id from now
    /// on, and once it is complete the exchange is remembered in the voice session.
    async fn adopt(
        &self,
        turn: &str,
        h: Held,
        question: &str,
        session: Option<String>,
    ) -> Result<Answer, String> {
        if let Some(current) = self
            .inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .filter(|c| c.turn == turn)
        {
            current.llm_id = h.llm_id.clone();
        }
        self.inner.metrics.speculative_answer(true);
        let _ = h.commit.send(turn.to_string());
        let answer = h
            .done
            .await
            .unwrap_or_else(|e| Err(format!("the answer task failed: {e}")))?;
        if answer.stop_reason != "cancelled"
            && let Some(llm) = &self.inner.stages.llm
        {
            let request = self.voice_request(h.llm_id, question.to_string(), Some(session));
            let reply = answer.text.clone();
            match llm
                .worker
                .submit(move |engine| engine.remember(&request, &reply))
            {
                Ok(_) => llm.warm(),
                Err(e) => tracing::warn!(turn, error = %e, "the answer was not remembered"),
            }
        }
        Ok(answer)
    }

    /// Drives a speculative transcription on its own task, so that as soon as it has a
    /// transcript (often before the endpoint), the LLM evaluates the prompt it would answer
    /// ([`crate::llm::Llm::prepare`]): if the endpoint confirms the question, the answer
    /// starts from a computed prompt. Nothing is published or remembered before the turn.
    fn follow_speculation(
        &self,
        pending: impl Future<Output = SttResult> + Send + 'static,
        cancel: Arc<AtomicBool>,
        held: Arc<Mutex<Option<Held>>>,
        complete: Arc<AtomicBool>,
    ) -> Pin<Box<dyn Future<Output = SttResult> + Send>> {
        let Some(runtime) = &self.inner.runtime else {
            return Box::pin(pending);
        };
        let this = self.clone();
        let spawner = runtime.clone();
        let task = runtime.spawn(async move {
            let result = pending.await;
            if let Ok((text, _, _)) = &result
                && !text.trim().is_empty()
                && !cancel.load(Ordering::Relaxed)
                && !this.inner.speculate_answers
                && let Some(llm) = &this.inner.stages.llm
            {
                // Only evaluate the prompt the answer would start from.
                let request = this.voice_request("prepare".into(), text.clone(), None);
                if let Err(e) = llm.worker.submit(move |engine| engine.prepare(&request)) {
                    tracing::debug!(error = %e, "speculative prompt not evaluated");
                }
            } else if let Ok((text, _, _)) = &result
                && !text.trim().is_empty()
                && !cancel.load(Ordering::Relaxed)
                && this.inner.stages.llm.is_some()
            {
                // Answer it now, held back until the endpoint confirms the question.
                let n = this.inner.seq_speculative.fetch_add(1, Ordering::Relaxed) + 1;
                let label = format!("speculative-{n}");
                let llm_id = format!("{label}/llm");
                let (commit, gate) = tokio::sync::oneshot::channel();
                let (answerer, question, id) = (this.clone(), text.clone(), llm_id.clone());
                let flag = cancel.clone();
                let session = Some(this.inner.session.clone());
                let done = spawner.spawn(async move {
                    answerer
                        .answer(&label, &id, question, session, &flag, Some(gate))
                        .await
                });
                let mut slot = held.lock().unwrap_or_else(|e| e.into_inner());
                if cancel.load(Ordering::Relaxed) {
                    // Abandoned meanwhile: nobody will look at the slot again.
                    drop(slot);
                    this.abandon_held(Held {
                        llm_id,
                        commit,
                        done,
                    });
                } else {
                    *slot = Some(Held {
                        llm_id,
                        commit,
                        done,
                    });
                }
            }
            // Last, so that an early endpoint finds the held answer in place.
            if let Ok((text, _, _)) = &result
                && crate::sentences::reads_complete(text)
            {
                complete.store(true, Ordering::Relaxed);
            }
            result
        });
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the transcription task failed: {e}")))
        })
    }

    /// The LLM request of a voice-loop turn: the question in the `voice` session (or the
    /// text turn's own session).
    fn voice_request(
        &self,
        id: String,
        question: String,
        session: Option<Option<String>>,
    ) -> llm::AskRequest {
        llm::AskRequest {
            id,
            prompt: Some(question),
            messages: None,
            session: session.unwrap_or_else(|| Some(self.inner.session.clone())),
            options: llm::Options::default(),
        }
    }

    /// Speech came back after the pause (or the utterance was abandoned): the speculative
    /// transcription is cancelled. Returns whether there was one.
    pub fn abandon_speculation(&self) -> bool {
        let old = self
            .inner
            .speculation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        old.map(|s| self.cancel_speculation(s)).is_some()
    }

    /// Whether the speculative transcription of the utterance `key` is ready and reads as a
    /// finished sentence (then the endpoint need not wait for the whole trailing silence).
    pub fn speculation_complete(&self, key: (u64, u64)) -> bool {
        self.inner
            .speculation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| s.key == key && s.complete.load(Ordering::Relaxed))
    }

    /// The speculative transcription of the utterance `key`, if one is under way; any other
    /// is cancelled.
    pub fn take_speculation(&self, key: (u64, u64)) -> Option<Speculation> {
        let s = self
            .inner
            .speculation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        if s.key == key {
            Some(s)
        } else {
            self.cancel_speculation(s);
            None
        }
    }

    /// Answers `question`: the LLM's tokens cut into sentences, each synthesized as soon as
    /// it is complete, the audio played and published on `turn`'s topic. With a `gate` (a
    /// speculative answer), no audio goes out and nothing is remembered until the gate gives
    /// the id of the turn that adopts it; if the gate closes instead, the audio is dropped.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        turn: &str,
        llm_id: &str,
        question: String,
        session: Option<String>,
        cancel: &Arc<AtomicBool>,
        gate: Option<tokio::sync::oneshot::Receiver<String>>,
    ) -> Result<Answer, String> {
        let inner = &self.inner;
        let Some(llm) = &inner.stages.llm else {
            return Err("the LLM is off: configuration key `llm.model` is empty".into());
        };
        let request = self.voice_request(llm_id.to_string(), question, Some(session));
        let flag = llm.register(llm_id);
        if cancel.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
        }
        let (tokens_tx, mut tokens_rx) = mpsc::channel::<String>(llm::TOKEN_STREAM_BUFFER * 4);
        let remember = gate.is_none();
        // Held while the first spoken piece is synthesized (`voice.first_audio_priority`).
        let hold = (inner.first_audio_priority && inner.stages.tts.is_some())
            .then(|| Arc::new(llm::Hold::default()));
        let llm_hold = hold.clone();
        let submitted = llm.worker.submit(move |engine| {
            let mut stream = llm::Stream {
                tokens: Some(tokens_tx),
                cancel: flag,
                hold: llm_hold,
                dropped: 0,
                remember,
            };
            engine.ask(&request, &mut stream)
        });
        let done = match submitted {
            Ok(done) => done,
            Err(e) => {
                llm.finish(llm_id);
                return Err(e.to_string());
            }
        };

        // Speech for the sentences, in order, as they complete.
        let (audio_tx, mut audio_rx) = mpsc::channel::<tts::Chunk>(tts::AUDIO_BUFFER);
        // When the first audio was synthesized (a held answer's waits behind the gate).
        let audio_ready = Arc::new(std::sync::OnceLock::new());
        let mut ttft = None;
        let tokens = async {
            // Owns the audio sender: the channel closes once every sentence is synthesized.
            let audio_tx = audio_tx;
            let mut jobs = Vec::new();
            let mut splitter = SentenceSplitter::new()
                .early_first_clause()
                .first_piece_words(inner.first_piece_words);
            let mut speak = |sentence: String| {
                let Some(tts) = &inner.stages.tts else {
                    return;
                };
                let request = tts::SayRequest {
                    id: format!("{turn}/{}", jobs.len()),
                    text: sentence,
                    voice: None,
                    speaker: None,
                    scales: tts::Scales::default(),
                    play: false,
                };
                let tx = audio_tx.clone();
                let cancel = cancel.clone();
                // The first piece has the CPU to itself until its first audio is out; the
                // guard goes with the job, so a job that is refused or ends without audio
                // releases the hold too.
                let first = hold
                    .clone()
                    .filter(|_| jobs.is_empty())
                    .map(llm::Hold::guard);
                let ready = audio_ready.clone();
                let first_audio = move || {
                    let _ = ready.set(Instant::now());
                    drop(first);
                };
                match tts.submit(move |engine| engine.say(&request, &tx, &cancel, first_audio)) {
                    Ok(job) => jobs.push(job),
                    Err(e) => {
                        inner.metrics.queue_dropped("tts");
                        tracing::warn!(turn, error = %e, "a sentence was not spoken");
                    }
                }
            };
            while let Some(piece) = tokens_rx.recv().await {
                if ttft.is_none() {
                    ttft = Some(Instant::now());
                }
                for sentence in splitter.push(&piece) {
                    speak(sentence);
                }
            }
            if let Some(rest) = splitter.finish() {
                speak(rest);
            }
            for job in jobs {
                if let Ok(Err(e)) = job.await {
                    tracing::warn!(
                        turn,
                        error = e.message,
                        "a sentence could not be synthesized"
                    );
                }
            }
        };
        let mut first_audio = None;
        let mut samples_out = 0usize;
        let mut rate = 22050;
        let mut sentences = 0usize;
        let forward = async {
            let audio_topic = match gate {
                None => inner.publisher.topics().tts_audio(turn),
                Some(gate) => match gate.await {
                    Ok(adopted_by) => inner.publisher.topics().tts_audio(&adopted_by),
                    Err(_) => {
                        // Abandoned: let the synthesis finish (it stops on the cancel flag)
                        // and drop its audio.
                        while audio_rx.recv().await.is_some() {}
                        return;
                    }
                },
            };
            while let Some(chunk) = audio_rx.recv().await {
                first_audio.get_or_insert_with(Instant::now);
                samples_out += chunk.samples.len();
                rate = chunk.sample_rate;
                sentences += usize::from(chunk.sentence_end);
                if let Some(player) = &inner.playback {
                    let item = PlayItem::Audio {
                        samples: chunk.samples.clone(),
                        sample_rate: chunk.sample_rate,
                        cancel: cancel.clone(),
                        more: !chunk.sentence_end,
                    };
                    if player.try_send(item).is_err() {
                        inner.metrics.queue_dropped("playback");
                    }
                }
                inner.publisher.bytes(&audio_topic, chunk.wav()).await;
            }
        };
        let (result, (), ()) = tokio::join!(done, tokens, forward);
        llm.finish(llm_id);
        let reply = result.map_err(|e| e.to_string())?.map_err(|e| e.message)?;
        // Every sentence is synthesized; while it plays, evaluate the conversation for the
        // next question.
        llm.warm();
        Ok(Answer {
            text: reply.text,
            stop_reason: reply.stop_reason,
            first_token: ttft,
            first_audio,
            audio_ready: audio_ready.get().copied(),
            audio_s: samples_out as f64 / f64::from(rate),
            sentences,
        })
    }
}

struct Answer {
    text: String,
    stop_reason: String,
    /// When the first token arrived (before the turn started, for an adopted answer).
    first_token: Option<Instant>,
    first_audio: Option<Instant>,
    /// When the first audio was synthesized: for an answer held behind its gate, before it
    /// went out (`first_audio`).
    audio_ready: Option<Instant>,
    audio_s: f64,
    sentences: usize,
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1e3
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
