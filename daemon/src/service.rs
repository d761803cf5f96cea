//! The request service: takes requests from the connection task, parses them, recognizes
//! redeliveries, runs them and publishes the answer.
//!
//! A request is acknowledged to the broker only once its answer (reply or error) has been
//! handed to the client: if sotad dies first, the broker redelivers it to the next run
//! (persistent session), and the id check keeps a redelivery from running twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::mqtt::dedup::RecentIds;
use crate::mqtt::request::{self, ErrorCode, PingRequest, Pong, RequestError};
use crate::mqtt::{Command, Inbound, Publisher};
use crate::pipeline::{self, Turns};
use crate::telemetry::Metrics;
use crate::voice::VoiceControl;
use crate::worker::{EngineState, SubmitError};
use crate::{llm, stt, tts};

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
        let parsed = self.parse(command, &publish.payload);
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
        // `llm/cancel` names the request to cancel by its id, and is idempotent: never skipped.
        if command != Command::LlmCancel && !self.recent.first_time(command, job.id()) {
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
            Command::SttTranscribe => Job::Transcribe(stt::parse(payload, self.max_packet_bytes)?),
            Command::LlmAsk => {
                let r: llm::AskRequest = request::parse(payload, max)?;
                llm::validate(&r)?;
                Job::Ask(r)
            }
            Command::LlmCancel => Job::Cancel(request::parse(payload, max)?),
            Command::ListenStart
            | Command::ListenStop
            | Command::Mute
            | Command::Unmute
            | Command::PttStart
            | Command::PttStop => Job::Switch(request::parse::<PingRequest>(payload, max)?),
            Command::TurnText => {
                let r: pipeline::TextTurnRequest = request::parse(payload, max)?;
                pipeline::validate(&r)?;
                Job::Turn(r)
            }
            Command::TtsSay => {
                let r: tts::SayRequest = request::parse(payload, max)?;
                tts::validate(&r)?;
                Job::Say(r)
            }
        })
    }
}

/// The engine stages; `None` where the configuration turned a stage off.
#[derive(Clone, Default)]
pub struct Stages {
    pub stt: Option<stt::SttWorker>,
    pub llm: Option<llm::LlmStage>,
    pub tts: Option<tts::TtsWorker>,
    /// `service.request_queue`: each stage's queue capacity.
    pub queue_capacity: usize,
}

impl Stages {
    /// Starts a worker thread for every configured stage; loading happens on those threads.
    pub fn spawn(config: &Config) -> Stages {
        Stages {
            stt: stt::spawn(config),
            llm: llm::spawn(config),
            tts: tts::spawn(config),
            queue_capacity: config.service.request_queue,
        }
    }
}

impl Stages {
    /// Puts each engine's state and queue depth into the metrics for telemetry.
    pub fn report(&self, metrics: &Metrics) {
        fn one<E: 'static>(metrics: &Metrics, worker: &crate::worker::Worker<E>, capacity: usize) {
            let state = match worker.state() {
                EngineState::Loading => "loading".to_string(),
                EngineState::Ready { .. } => "ready".to_string(),
                EngineState::Failed(why) => format!("failed: {why}"),
            };
            metrics.engine_state(worker.name(), state);
            metrics.queue(worker.name(), worker.queued(), capacity);
        }
        let capacity = self.queue_capacity;
        if let Some(w) = &self.stt {
            one(metrics, w, capacity);
        }
        if let Some(l) = &self.llm {
            one(metrics, &l.worker, capacity);
        }
        if let Some(w) = &self.tts {
            one(metrics, w, capacity);
        }
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
enum Job {
    Ping(PingRequest),
    Transcribe(stt::Transcribe),
    Ask(llm::AskRequest),
    Cancel(llm::CancelRequest),
    Say(tts::SayRequest),
    Turn(pipeline::TextTurnRequest),
    /// A microphone switch; only an id.
    Switch(PingRequest),
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
            Job::Switch(r) => &r.id,
        }
    }

    async fn run(self, command: Command, ctx: Ctx) -> Result<(), RequestError> {
        match self {
            Job::Ping(r) => {
                let pong = Pong {
                    id: r.id,
                    version: env!("CARGO_PKG_VERSION"),
                    device_id: ctx.device_id,
                    uptime_s: ctx.metrics.uptime().as_secs_f64(),
                };
                ctx.publisher.reply(command, &pong).await;
                Ok(())
            }
            Job::Transcribe(r) => {
                let worker = stage(&r.id, ctx.stages.stt.as_ref(), "stt", "stt.model")?;
                let id = r.id.clone();
                let transcript = worker
                    .submit(move |engine| engine.run(&r))
                    .map_err(|e| submit_error(&id, e))?
                    .await
                    .map_err(|e| submit_error(&id, e))??;
                ctx.publisher.reply(command, &transcript).await;
                Ok(())
            }
            Job::Ask(r) => {
                let llm = stage(&r.id, ctx.stages.llm.as_ref(), "llm", "llm.model")?;
                let reply = ask(llm, r, &ctx.publisher).await?;
                ctx.publisher.reply(command, &reply).await;
                Ok(())
            }
            Job::Cancel(r) => {
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
            Job::Switch(_) => {
                let voice = &ctx.voice;
                match command {
                    Command::ListenStart => voice.listening.store(true, Ordering::Relaxed),
                    Command::ListenStop => voice.listening.store(false, Ordering::Relaxed),
                    Command::Mute => voice.muted.store(true, Ordering::Relaxed),
                    Command::PttStart => {
                        // Pressing the button is an explicit interruption: whatever sotad is
                        // saying stops now, even with barge-in off.
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
            Job::Turn(r) => {
                let input = pipeline::Input::Text {
                    text: r.text,
                    session: r.session,
                };
                ctx.turns.run(r.id, input).await;
                Ok(())
            }
            Job::Say(r) => {
                let worker = stage(&r.id, ctx.stages.tts.as_ref(), "tts", "tts.voice")?;
                let player = if r.play {
                    ctx.turns.playback().cloned()
                } else {
                    None
                };
                let done = say(worker, r, &ctx.publisher, player, &ctx.metrics).await?;
                ctx.publisher.reply(command, &done).await;
                Ok(())
            }
        }
    }
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

/// Runs an `llm/ask`, publishing its tokens as they come.
pub async fn ask(
    llm: &llm::LlmStage,
    request: llm::AskRequest,
    publisher: &Publisher,
) -> Result<llm::Reply, RequestError> {
    let id = request.id.clone();
    let cancel = llm.register(&id);
    let (tokens_tx, mut tokens_rx) = mpsc::channel::<String>(llm::TOKEN_STREAM_BUFFER);
    let submitted = llm.worker.submit(move |engine| {
        let mut stream = llm::Stream {
            tokens: Some(tokens_tx),
            cancel,
            hold: None,
            dropped: 0,
            remember: true,
        };
        engine.ask(&request, &mut stream)
    });
    let result = match submitted {
        Ok(done) => {
            let topic = publisher.topics().llm_tokens();
            let forward = async {
                let mut seq = 0u64;
                while let Some(text) = tokens_rx.recv().await {
                    publisher.stream(
                        &topic,
                        &llm::TokenChunk {
                            id: &id,
                            seq,
                            text: &text,
                        },
                    );
                    seq += 1;
                }
            };
            let (result, ()) = tokio::join!(done, forward);
            result.map_err(|e| submit_error(&id, e)).and_then(|r| r)
        }
        Err(e) => Err(submit_error(&id, e)),
    };
    llm.finish(&id);
    if result.is_ok() {
        llm.warm();
    }
    result
}

/// Runs a `tts/say`, publishing each piece's WAV as it is ready.
pub async fn say(
    worker: &tts::TtsWorker,
    request: tts::SayRequest,
    publisher: &Publisher,
    player: Option<pipeline::PlaybackSender>,
    metrics: &Metrics,
) -> Result<tts::Done, RequestError> {
    let id = request.id.clone();
    let (audio_tx, mut audio_rx) = mpsc::channel::<tts::Chunk>(tts::AUDIO_BUFFER);
    let cancel = tts::CancelFlag::default();
    let done = worker
        .submit(move |engine| engine.say(&request, &audio_tx, &cancel, || {}))
        .map_err(|e| submit_error(&id, e))?;
    let topic = publisher.topics().tts_audio(&id);
    let forward = async {
        let never = Arc::new(std::sync::atomic::AtomicBool::new(false));
        while let Some(chunk) = audio_rx.recv().await {
            if let Some(player) = &player {
                let item = pipeline::PlayItem::Audio {
                    samples: chunk.samples.clone(),
                    sample_rate: chunk.sample_rate,
                    cancel: never.clone(),
                    more: !chunk.sentence_end,
                };
                if player.try_send(item).is_err() {
                    metrics.queue_dropped("playback");
                }
            }
            publisher.bytes(&topic, chunk.wav()).await;
        }
    };
    let (result, ()) = tokio::join!(done, forward);
    result.map_err(|e| submit_error(&id, e))?
}
