//! The request service: takes requests from the connection task, parses them, recognizes
//! redeliveries, runs them and publishes the answer.
//!
//! A request is acknowledged to the broker only once its answer (reply or error) has been
//! handed to the client: if sotad dies first, the broker redelivers it to the next run
//! (persistent session), and the id check keeps a redelivery from running twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity;
use crate::mqtt::dedup::RecentIds;
use crate::mqtt::payloads::{
    self, AskRequest, MessageIn, Reply, ReplyTimings, Role, SayDone, SayRequest, Segment,
    SpeechTimings, TextTurnRequest, TokenChunk, Transcribe, Transcript, TranscriptTimings,
    Truncated, TurnAnswerRequest,
};
use crate::mqtt::request::{self, ErrorCode, PingRequest, Pong, RequestError, SetRequest};
use crate::mqtt::{Command, Inbound, Publisher};
use crate::stages::worker::SubmitError;
use crate::stages::{StageError, StageErrorKind, Stages, llm, stt, tts};
use crate::telemetry::Metrics;
use crate::voice::VoiceControl;
use crate::voice::answer::send_audio;
use crate::voice::turn::{Input, Turns};

/// How many request ids are remembered to recognize redeliveries.
pub const REMEMBERED_IDS: usize = 4096;

pub struct Service {
    /// Requests routed by the connection task.
    pub inbound: mpsc::Receiver<Inbound>,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    /// Ids of recent requests, to skip QoS-1 redeliveries.
    pub recent: RecentIds,
    /// `mqtt.max_request_bytes`.
    pub max_request_bytes: usize,
    /// `mqtt.max_packet_bytes`: the limit for requests that carry audio.
    pub max_packet_bytes: usize,
    pub stages: Stages,
    pub turns: Turns,
    pub voice: Arc<VoiceControl>,
    pub device_id: String,
    /// Handlers run as tracked tasks so that shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when sotad stops taking requests.
    pub intake: CancellationToken,
    /// Whether the broker keeps queued requests for the next run (persistent session).
    pub persistent_session: bool,
}

impl Service {
    pub async fn run(mut self) {
        loop {
            let inbound = tokio::select! {
                biased;
                _ = self.intake.cancelled() => break,
                inbound = self.inbound.recv() => match inbound {
                    Some(inbound) => inbound,
                    None => break,
                },
            };
            self.handle(inbound).await;
        }
        // Requests still queued: with a persistent session they stay unacknowledged and the
        // broker delivers them to the next run; otherwise they would be lost, so say so.
        self.inbound.close();
        while let Ok(Inbound { publish, .. }) = self.inbound.try_recv() {
            if self.persistent_session {
                continue;
            }
            let error = RequestError::new(
                request::peek_id(&publish.payload),
                ErrorCode::ShuttingDown,
                "sotad is stopping and did not run this request; send it again when status is online",
            );
            self.publisher.error(&error, Some(&publish.topic)).await;
            self.publisher.ack(&publish).await;
        }
    }

    async fn handle(&mut self, Inbound { command, publish }: Inbound) {
        let started = Instant::now();
        let name = command.name();
        self.metrics.request_received(name);
        // The broker sets the retain flag only on what it stores and hands to a new
        // subscription: a stale request that would run again at every start. It is not run.
        let parsed = if publish.retain {
            Err(retained(&publish))
        } else {
            self.parse(command, &publish.payload)
        };
        let job = match parsed {
            Ok(job) => job,
            Err(error) => {
                tracing::info!(
                    topic = publish.topic,
                    id = error.id.as_deref().unwrap_or(""),
                    code = ?error.code,
                    field = error.field.as_deref().unwrap_or(""),
                    error = error.message,
                    "request rejected"
                );
                self.publisher.error(&error, Some(&publish.topic)).await;
                self.publisher.ack(&publish).await;
                self.metrics.request_done(name, false, started.elapsed());
                return;
            }
        };
        // A cancel names the request to cancel by its id, and is idempotent: never skipped.
        let is_cancel = matches!(command, Command::LlmCancel | Command::TtsCancel);
        if !is_cancel && !self.recent.first_time(command, job.id()) {
            self.metrics.mqtt.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                command = name,
                id = job.id(),
                dup = publish.dup,
                "redelivered request skipped"
            );
            self.publisher.ack(&publish).await;
            return;
        }
        let ctx = Ctx {
            publisher: self.publisher.clone(),
            metrics: self.metrics.clone(),
            device_id: self.device_id.clone(),
            stages: self.stages.clone(),
            turns: self.turns.clone(),
            voice: self.voice.clone(),
        };
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        self.tracker.spawn(async move {
            let result = job.run(command, ctx).await;
            let ok = result.is_ok();
            if let Err(error) = result {
                tracing::info!(
                    command = name,
                    id = error.id.as_deref().unwrap_or(""),
                    code = ?error.code,
                    error = error.message,
                    "request failed"
                );
                publisher.error(&error, Some(&publish.topic)).await;
            }
            publisher.ack(&publish).await;
            metrics.request_done(name, ok, started.elapsed());
        });
    }

    /// Parses a payload into the job its command runs.
    fn parse(&self, command: Command, payload: &[u8]) -> Result<Job, RequestError> {
        let max = self.max_request_bytes;
        Ok(match command {
            Command::Ping => Job::Ping(request::parse::<PingRequest>(payload, max)?),
            // Audio may be as large as the connection allows.
            Command::SttTranscribe => {
                Job::Transcribe(payloads::parse_transcribe(payload, self.max_packet_bytes)?)
            }
            Command::LlmAsk => {
                let r: AskRequest = request::parse(payload, max)?;
                payloads::validate_ask(&r)?;
                Job::Ask(r)
            }
            Command::LlmCancel | Command::TtsCancel => Job::Cancel(request::parse(payload, max)?),
            Command::ListenStart
            | Command::ListenStop
            | Command::Mute
            | Command::Unmute
            | Command::PttStart
            | Command::PttStop
            | Command::Stop => Job::Switch(request::parse::<PingRequest>(payload, max)?),
            Command::ListenSet | Command::MuteSet => {
                Job::Set(request::parse::<SetRequest>(payload, max)?)
            }
            Command::TurnText => {
                let r: TextTurnRequest = request::parse(payload, max)?;
                payloads::validate_text_turn(&r)?;
                Job::Turn(r)
            }
            Command::TtsSay => {
                let r: SayRequest = request::parse(payload, max)?;
                payloads::validate_say(&r)?;
                Job::Say(r)
            }
            Command::TurnAnswer => {
                let r: TurnAnswerRequest = request::parse(payload, max)?;
                payloads::validate_turn_answer(&r)?;
                Job::Answer(r)
            }
        })
    }
}

/// What a running job may use.
struct Ctx {
    publisher: Publisher,
    metrics: Arc<Metrics>,
    device_id: String,
    stages: Stages,
    turns: Turns,
    voice: Arc<VoiceControl>,
}

/// A parsed request, ready to run.
// An `llm/ask` with `tools` and `response_format` is the largest; one lives per request.
#[allow(clippy::large_enum_variant)]
enum Job {
    Ping(PingRequest),
    Transcribe(Transcribe),
    Ask(AskRequest),
    Cancel(payloads::CancelRequest),
    Say(SayRequest),
    Turn(TextTurnRequest),
    /// An integration's answer to a turn's intent.
    Answer(TurnAnswerRequest),
    /// A microphone switch, or `stop`; only an id.
    Switch(PingRequest),
    /// A microphone switch set to a state.
    Set(SetRequest),
}

impl Job {
    fn id(&self) -> &str {
        match self {
            Job::Ping(r) => &r.id,
            Job::Transcribe(r) => &r.id,
            Job::Ask(r) => &r.id,
            Job::Cancel(r) => &r.id,
            Job::Say(r) => &r.id,
            Job::Turn(r) => &r.id,
            Job::Answer(r) => &r.id,
            Job::Switch(r) => &r.id,
            Job::Set(r) => &r.id,
        }
    }

    async fn run(self, command: Command, ctx: Ctx) -> Result<(), RequestError> {
        match self {
            Job::Ping(r) => ping(r, command, &ctx).await,
            Job::Transcribe(r) => transcribe(r, command, &ctx).await,
            Job::Ask(r) => {
                let llm = stage(&r.id, ctx.stages.llm.as_ref(), "llm", "llm.model")?;
                let reply = ask(llm, r, &ctx.publisher).await?;
                ctx.publisher.reply(command, &reply).await;
                Ok(())
            }
            Job::Cancel(r) if command == Command::TtsCancel => cancel_say(r, &ctx),
            Job::Cancel(r) => cancel(r, &ctx),
            Job::Switch(_) => switch(command, None, &ctx).await,
            Job::Set(r) => switch(command, Some(r.on), &ctx).await,
            Job::Turn(r) => {
                let input = Input::Text {
                    text: r.text,
                    session: r.session,
                };
                ctx.turns.run(r.id, input).await;
                Ok(())
            }
            Job::Say(r) => say(r, command, &ctx).await,
            Job::Answer(r) => {
                if ctx.turns.answer_intent(&r.id, r.text) {
                    Ok(())
                } else {
                    Err(RequestError::new(
                        Some(r.id.clone()),
                        ErrorCode::NotFound,
                        format!(
                            "no turn {:?} is waiting for an answer to an intent (it ended, its wait of intents.reply_timeout_ms ran out, or it matched no intent); `id` must be the `turn` of the intent",
                            r.id
                        ),
                    )
                    .with_field("id"))
                }
            }
        }
    }
}

/// `ping` → `pong`.
async fn ping(r: PingRequest, command: Command, ctx: &Ctx) -> Result<(), RequestError> {
    let pong = Pong {
        id: r.id,
        version: env!("CARGO_PKG_VERSION"),
        device_id: ctx.device_id.clone(),
        uptime_s: ctx.metrics.uptime().as_secs_f64(),
    };
    ctx.publisher.reply(command, &pong).await;
    Ok(())
}

/// `stt/transcribe` → `stt/result`.
async fn transcribe(r: Transcribe, command: Command, ctx: &Ctx) -> Result<(), RequestError> {
    let worker = stage(&r.id, ctx.stages.stt.as_ref(), "stt", "stt.model")?;
    let id = r.id.clone();
    let job = stt::WavJob {
        wav: r.wav,
        language: r.language,
        task: match r.task {
            payloads::Task::Transcribe => stt::Task::Transcribe,
            payloads::Task::Translate => stt::Task::Translate,
        },
        beam_size: r.beam_size,
        initial_prompt: r.initial_prompt,
    };
    let done = worker
        .submit(move |engine| engine.run(&job))
        .map_err(|e| submit_error(&id, e))?
        .await
        .map_err(|e| submit_error(&id, e))?
        .map_err(|e| stage_error(&id, e))?;
    ctx.publisher.reply(command, &transcript(id, &done)).await;
    Ok(())
}

/// The `stt/result` of a transcription.
pub fn transcript(id: String, t: &stt::Transcription) -> Transcript {
    let duration_s = t.duration_s;
    Transcript {
        id,
        text: t.transcript.text.trim().to_string(),
        language: t.transcript.language.clone(),
        segments: t
            .transcript
            .segments
            .iter()
            .map(|s| Segment {
                start: f64::from(s.start),
                end: f64::from(s.end),
                text: s.text.trim().to_string(),
            })
            .collect(),
        duration_s,
        timings: TranscriptTimings {
            total_ms: t.total_ms,
            real_time_factor: payloads::real_time_factor(t.total_ms, duration_s),
            tokens_decoded: t.transcript.timings.tokens,
        },
    }
}

/// `llm/cancel`: no reply; `not_found` when nothing by that id runs.
fn cancel(r: payloads::CancelRequest, ctx: &Ctx) -> Result<(), RequestError> {
    let llm = stage(&r.id, ctx.stages.llm.as_ref(), "llm", "llm.model")?;
    if llm.cancel(&r.id) {
        Ok(())
    } else {
        Err(RequestError::new(
            Some(r.id.clone()),
            ErrorCode::NotFound,
            format!("no llm/ask with id {:?} is queued or running", r.id),
        ))
    }
}

/// `tts/cancel`: no reply of its own (the `tts/say` answers with `cancelled`); `not_found`
/// when no `tts/say` by that id is queued or running.
fn cancel_say(r: payloads::CancelRequest, ctx: &Ctx) -> Result<(), RequestError> {
    let flag = ctx
        .stages
        .says
        .lock()
        .ok()
        .and_then(|m| m.get(&r.id).cloned());
    match flag {
        Some(flag) => {
            flag.store(true, Ordering::Relaxed);
            Ok(())
        }
        None => Err(RequestError::new(
            Some(r.id.clone()),
            ErrorCode::NotFound,
            format!("no tts/say with id {:?} is queued or running", r.id),
        )),
    }
}

/// `listen/*`, `mute`, `unmute`, `mute/set`, `ptt/*`, `stop` → the retained `voice/state`.
/// `on` is the state `listen/set` and `mute/set` ask for.
async fn switch(command: Command, on: Option<bool>, ctx: &Ctx) -> Result<(), RequestError> {
    let voice = &ctx.voice;
    match command {
        Command::ListenStart => voice.listening.store(true, Ordering::Relaxed),
        Command::ListenStop => voice.listening.store(false, Ordering::Relaxed),
        Command::ListenSet => voice.listening.store(on.unwrap_or(true), Ordering::Relaxed),
        Command::Mute => voice.muted.store(true, Ordering::Relaxed),
        Command::MuteSet => voice.muted.store(on.unwrap_or(true), Ordering::Relaxed),
        Command::Stop => {
            // Whatever sotad is saying stops: the turn's answer and every `tts/say`.
            if let Some(turn) = ctx.turns.cancel_current() {
                tracing::info!(turn, "stop: turn cancelled");
            }
            if let Ok(says) = ctx.stages.says.lock() {
                for flag in says.values() {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
        Command::PttStart => {
            // Pressing the button is an explicit interruption: whatever sotad is saying
            // stops now, even with barge-in off.
            if let Some(turn) = ctx.turns.cancel_current() {
                tracing::info!(turn, "push-to-talk: turn cancelled");
            }
            voice.ptt.store(true, Ordering::Relaxed)
        }
        Command::PttStop => voice.ptt.store(false, Ordering::Relaxed),
        _ => voice.muted.store(false, Ordering::Relaxed),
    }
    ctx.publisher
        .voice_state(&voice.state(ctx.turns.speaking()))
        .await;
    Ok(())
}

/// `tts/say` → `tts/audio/<id>` chunks, then `tts/done`.
async fn say(r: SayRequest, command: Command, ctx: &Ctx) -> Result<(), RequestError> {
    let worker = stage(&r.id, ctx.stages.tts.as_ref(), "tts", "tts.voice")?;
    let speaker = if r.play { ctx.turns.speaker() } else { None };
    let play_error = (r.play && speaker.is_none()).then(|| {
        "not played: no speaker is configured (configuration key `audio.playback_device` is empty); the audio went out on MQTT only".to_string()
    });
    let id = r.id.clone();
    let job = speech(r);
    let (audio_tx, mut audio_rx) = mpsc::channel::<tts::Chunk>(capacity::AUDIO);
    let cancel = Arc::new(AtomicBool::new(false));
    let engine_cancel = cancel.clone();
    // `tts/cancel` finds the flag by id while the request is queued or running.
    let says = ctx.stages.says.clone();
    if let Ok(mut m) = says.lock() {
        m.insert(id.clone(), cancel.clone());
    }
    let forget = || {
        if let Ok(mut m) = says.lock() {
            m.remove(&id);
        }
    };
    let done = match worker.submit(move |engine| engine.say(&job, &audio_tx, &engine_cancel, || {}))
    {
        Ok(done) => done,
        Err(e) => {
            forget();
            return Err(submit_error(&id, e));
        }
    };
    let topic = ctx.publisher.topics().tts_audio(&id);
    let forward = send_audio(&mut audio_rx, &topic, &ctx.publisher, speaker, &cancel);
    let (result, _) = tokio::join!(done, forward);
    forget();
    let spoken = result
        .map_err(|e| submit_error(&id, e))?
        .map_err(|e| stage_error(&id, e))?;
    let done = SayDone {
        id,
        voice: spoken.voice,
        sample_rate: spoken.sample_rate,
        chunks: spoken.chunks,
        sentences: spoken.sentences,
        audio_s: spoken.audio_s,
        skipped_chars: spoken.skipped_chars,
        cancelled: spoken.cancelled,
        play_error,
        timings: SpeechTimings {
            first_audio_ms: spoken.first_audio_ms,
            total_ms: spoken.total_ms,
            real_time_factor: payloads::real_time_factor(spoken.total_ms, spoken.audio_s),
        },
    };
    ctx.publisher.reply(command, &done).await;
    Ok(())
}

/// The stage's text to say for a `tts/say`.
pub fn speech(r: SayRequest) -> tts::Say {
    tts::Say {
        text: r.text,
        voice: r.voice,
        speaker: r.speaker,
        length_scale: r.scales.length,
        noise_scale: r.scales.noise,
        noise_w: r.scales.noise_w,
    }
}

/// The error for a retained request, which is never run.
fn retained(publish: &rumqttc::Publish) -> RequestError {
    RequestError::new(
        request::peek_id(&publish.payload),
        ErrorCode::InvalidRequest,
        format!(
            "a retained request is not run (it would run again at every start); publish requests without the retain flag, and clear this one with an empty retained message on {}",
            publish.topic
        ),
    )
}

fn stage<'a, T>(
    id: &str,
    stage: Option<&'a T>,
    name: &str,
    key: &str,
) -> Result<&'a T, RequestError> {
    stage.ok_or_else(|| {
        RequestError::new(
            Some(id.to_string()),
            ErrorCode::Unavailable,
            format!("the {name} stage is off: configuration key `{key}` is empty"),
        )
    })
}

fn submit_error(id: &str, e: SubmitError) -> RequestError {
    let code = match e {
        SubmitError::Busy(_) => ErrorCode::Busy,
        SubmitError::Unavailable(_) => ErrorCode::Unavailable,
        SubmitError::Crashed(_) => ErrorCode::Internal,
    };
    RequestError::new(Some(id.to_string()), code, e.to_string())
}

/// A stage's error as the protocol's, for the request `id`.
fn stage_error(id: &str, e: StageError) -> RequestError {
    let code = match e.kind {
        StageErrorKind::InvalidInput => ErrorCode::InvalidRequest,
        StageErrorKind::InvalidAudio => ErrorCode::InvalidAudio,
        StageErrorKind::ContextFull => ErrorCode::ContextFull,
        StageErrorKind::Unavailable => ErrorCode::Unavailable,
        StageErrorKind::Internal => ErrorCode::Internal,
    };
    let error = RequestError::new(Some(id.to_string()), code, e.message);
    match e.field {
        Some(field) => error.with_field(field),
        None => error,
    }
}

/// The stage's question for an `llm/ask`.
pub fn question(r: AskRequest) -> llm::Ask {
    let messages = match (r.prompt, r.messages) {
        (Some(p), _) => vec![sotad_engines::llm::Message::user(&p)],
        (None, Some(m)) => m.iter().map(message).collect(),
        (None, None) => Vec::new(),
    };
    let o = r.options;
    let tools = r
        .tools
        .map(|t| std::sync::Arc::new(serde_json::to_value(t).unwrap_or(serde_json::Value::Null)));
    let response_format = r.response_format.map(|f| match f.json_schema {
        Some(s) if f.kind == "json_schema" => {
            llm::Format::JsonSchema(s.schema.unwrap_or(serde_json::Value::Bool(true)))
        }
        _ => llm::Format::JsonObject,
    });
    llm::Ask {
        id: r.id,
        messages,
        session: r.session,
        options: llm::Overrides {
            max_tokens: o.max_tokens,
            temperature: o.temperature,
            top_k: o.top_k,
            top_p: o.top_p,
            min_p: o.min_p,
            repeat_penalty: o.repeat_penalty,
            seed: o.seed,
            stop: o.stop,
            thinking: o.thinking,
            system_prompt: o.system_prompt,
            truncate: o.truncate,
            tools,
            response_format,
        },
    }
}

fn message(m: &MessageIn) -> sotad_engines::llm::Message {
    use sotad_engines::llm::Message;
    match m.role {
        Role::System => Message::system(&m.content),
        Role::User => Message::user(&m.content),
        Role::Assistant => Message::assistant(&m.content),
    }
}

/// The `llm/reply` of an answer.
pub fn reply(id: String, session: Option<String>, a: llm::Answer) -> Reply {
    let t = &a.timings;
    Reply {
        id,
        session,
        text: a.text,
        thinking: a.thinking,
        stop_reason: a.stop_reason,
        timings: ReplyTimings {
            prompt_tokens: t.prompt_tokens,
            cached_tokens: t.cached_tokens,
            generated_tokens: t.generated_tokens,
            ttft_ms: t.ttft_ms,
            prefill_tok_s: t.prefill_tok_s,
            decode_tok_s: t.decode_tok_s,
            total_ms: t.total_ms,
        },
        tokens_dropped: a.tokens_dropped,
        truncated: (t.dropped_messages > 0 || t.cut_tokens > 0).then_some(Truncated {
            messages: t.dropped_messages,
            tokens: t.cut_tokens,
        }),
        tool_calls: a
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| crate::mqtt::payloads::ToolCallOut {
                id: format!("call_{i}"),
                kind: "function",
                function: crate::mqtt::payloads::FunctionCallOut {
                    name: c.name.clone(),
                    arguments: c.arguments.to_string(),
                },
            })
            .collect(),
        probability: a.probability,
    }
}

/// Runs an `llm/ask`, publishing its tokens as they come.
pub async fn ask(
    llm: &llm::LlmStage,
    request: AskRequest,
    publisher: &Publisher,
) -> Result<Reply, RequestError> {
    let id = request.id.clone();
    let session = request.session.clone();
    let submitted = llm.ask_streaming(question(request), capacity::TOKENS, None, true, false);
    let result = match submitted {
        Ok((mut tokens_rx, done)) => {
            let topic = publisher.topics().llm_tokens();
            let forward = async {
                let mut seq = 0u64;
                while let Some(text) = tokens_rx.recv().await {
                    publisher.stream(
                        &topic,
                        &TokenChunk {
                            id: &id,
                            seq,
                            text: &text,
                        },
                    );
                    seq += 1;
                }
            };
            let (result, ()) = tokio::join!(done, forward);
            llm.finish(&id);
            result
                .map_err(|e| submit_error(&id, e))
                .and_then(|r| r.map_err(|e| stage_error(&id, e)))
        }
        Err(e) => Err(submit_error(&id, e)),
    };
    if result.is_ok() {
        llm.warm();
    }
    result.map(|a| reply(id, session, a))
}
