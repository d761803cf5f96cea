//! The LLM stage: `llm/ask` and `llm/cancel` over the LLM engine worker.
//!
//! Conversations: a request with a `session` id continues that conversation; its turns are
//! remembered (at most `llm.session_turns` per session, `llm.sessions` sessions, least recently
//! used forgotten first). The engine keeps one KV cache and reuses whatever token prefix the
//! new prompt shares with the previous one, so a follow-up in the same session only computes
//! the new turn, and switching sessions recomputes from the end of the shared system prompt.
//!
//! Tokens stream on `llm/tokens` at QoS 0 through a bounded channel: when MQTT falls behind,
//! tokens are dropped from the stream (counted), never from the final `llm/reply`.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sotad_engines::llm as engine;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::mqtt::request::{ErrorCode, Request, RequestError};
use crate::worker::Worker;

/// Longest prompt or message accepted, in bytes (the request size limit applies too).
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// Tokens waiting to be published before the stream starts dropping them.
pub const TOKEN_STREAM_BUFFER: usize = 256;

/// The engine thread's state: the model, its one live session, remembered conversations.
pub struct Llm {
    model: engine::Model,
    session: engine::Session,
    conversations: Conversations,
    defaults: Defaults,
    /// The conversation the last `ask` of a session left, for [`Llm::warm`]: its messages
    /// (system prompt first) and whether thinking was on.
    warm: Option<(Vec<engine::Message>, bool)>,
}

#[derive(Debug, Clone)]
struct Defaults {
    system_prompt: String,
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
}

/// The async side: the worker and the cancel flags of running requests.
#[derive(Clone)]
pub struct LlmStage {
    pub worker: Worker<Llm>,
    running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
}

impl LlmStage {
    /// Queues [`Llm::warm`] behind whatever the worker is doing; skipped when the queue is
    /// full.
    pub fn warm(&self) {
        if let Err(e) = self.worker.submit(|engine: &mut Llm| engine.warm()) {
            tracing::debug!(error = %e, "no warm-up of the conversation");
        }
    }
}

/// Starts the LLM worker if `llm.model` is set; the model loads on the worker thread.
pub fn spawn(config: &Config) -> Option<LlmStage> {
    config.model_path(&config.llm.model)?;
    let config = config.clone();
    let worker = Worker::spawn("llm", config.service.request_queue, move || load(&config));
    let stage = LlmStage {
        worker,
        running: Arc::default(),
    };
    // Once loaded: the system prompt, so that the first question computes only itself.
    stage.warm();
    Some(stage)
}

/// Loads the configured model; the error names the configuration key and the file.
pub fn load(config: &Config) -> Result<Llm, String> {
    let c = &config.llm;
    let Some(path) = config.model_path(&c.model) else {
        return Err("the LLM is off: configuration key `llm.model` is empty".into());
    };
    let options = engine::LoadOptions {
        context_len: c.context,
        threads: crate::stt::threads(c.threads),
        ..Default::default()
    };
    let model = engine::Model::load(&path, &options).map_err(|e| {
        format!(
            "the LLM is not available: configuration key `llm.model` = {:?}: {e}",
            c.model
        )
    })?;
    let session = model.session();
    let mut llm = Llm {
        model,
        session,
        conversations: Conversations::new(c.sessions, c.session_turns),
        defaults: Defaults {
            system_prompt: c.system_prompt.clone(),
            max_tokens: c.max_tokens,
            temperature: c.temperature,
            top_k: c.top_k,
            top_p: c.top_p,
            min_p: c.min_p,
            repeat_penalty: c.repeat_penalty,
        },
        warm: None,
    };
    // The first question finds the default system prompt computed.
    let system = llm.system_prompt(&Options::default());
    llm.warm = Some((system.into_iter().collect(), false));
    Ok(llm)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub id: String,
    /// A single user message. Exactly one of `prompt` and `messages`.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A whole conversation: `[{"role": "system"|"user"|"assistant", "content": "..."}]`.
    #[serde(default)]
    pub messages: Option<Vec<MessageIn>>,
    /// Continue (or start) this conversation; its earlier turns are prepended.
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub options: Options,
}

impl Request for AskRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// Generation stops before any of these strings (at most 8, each 1-64 bytes).
    pub stop: Option<Vec<String>>,
    /// Models that think (Qwen3): whether to think first; the thinking is returned apart.
    pub thinking: Option<bool>,
    /// Replace the configured system prompt for this request ("" for none).
    pub system_prompt: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub id: String,
}

impl Request for CancelRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Checks what serde cannot: exactly one of prompt/messages, sizes, ranges.
pub fn validate(r: &AskRequest) -> Result<(), RequestError> {
    let invalid = |field: &str, message: String| {
        RequestError::new(Some(r.id.clone()), ErrorCode::InvalidRequest, message).with_field(field)
    };
    match (&r.prompt, &r.messages) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "messages",
                "give either `prompt` or `messages`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                "prompt",
                "missing field `prompt` (or `messages`): what should the model answer?".into(),
            ));
        }
        (Some(p), None) if p.trim().is_empty() => {
            return Err(invalid("prompt", "the prompt is empty".into()));
        }
        (Some(p), None) if p.len() > MAX_PROMPT_BYTES => {
            return Err(invalid(
                "prompt",
                format!(
                    "the prompt is {} bytes; the limit is {MAX_PROMPT_BYTES}",
                    p.len()
                ),
            ));
        }
        (None, Some(m)) => {
            if m.is_empty() {
                return Err(invalid("messages", "`messages` is empty".into()));
            }
            for (i, msg) in m.iter().enumerate() {
                if msg.content.len() > MAX_PROMPT_BYTES {
                    return Err(invalid(
                        &format!("messages[{i}].content"),
                        format!(
                            "{} bytes; the limit is {MAX_PROMPT_BYTES}",
                            msg.content.len()
                        ),
                    ));
                }
            }
            if m.last().map(|x| x.role) != Some(Role::User) {
                return Err(invalid(
                    "messages",
                    "the last message must have role `user`".into(),
                ));
            }
        }
        _ => {}
    }
    if let Some(s) = &r.session
        && (s.is_empty() || s.len() > 128)
    {
        return Err(invalid("session", "must be 1 to 128 bytes".into()));
    }
    let o = &r.options;
    let float = |field: &str, v: Option<f32>, lo: f32, hi: f32| match v {
        Some(x) if !(x.is_finite() && x >= lo && x <= hi) => Err(invalid(
            &format!("options.{field}"),
            format!("{x} is out of range; allowed: {lo} to {hi}"),
        )),
        _ => Ok(()),
    };
    float("temperature", o.temperature, 0.0, 5.0)?;
    float("top_p", o.top_p, 0.0, 1.0)?;
    float("min_p", o.min_p, 0.0, 1.0)?;
    float("repeat_penalty", o.repeat_penalty, 0.5, 3.0)?;
    if let Some(n) = o.max_tokens
        && !(1..=32_768).contains(&n)
    {
        return Err(invalid(
            "options.max_tokens",
            format!("{n} is out of range; allowed: 1 to 32768"),
        ));
    }
    if let Some(stop) = &o.stop
        && (stop.len() > 8 || stop.iter().any(|s| s.is_empty() || s.len() > 64))
    {
        return Err(invalid(
            "options.stop",
            "allowed: at most 8 strings of 1 to 64 bytes".into(),
        ));
    }
    Ok(())
}

/// The answer on `llm/reply`.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub text: String,
    /// What a thinking model thought before answering; never spoken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// `eos`, `stop`, `max_tokens`, `cancelled` or `context_full`.
    pub stop_reason: String,
    pub timings: Timings,
    /// Tokens left out of the `llm/tokens` stream because MQTT fell behind.
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the previous request's cache.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub total_ms: f64,
}

/// One streamed token on `llm/tokens`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenChunk<'a> {
    pub id: &'a str,
    pub seq: u64,
    pub text: &'a str,
}

impl LlmStage {
    /// Registers a cancel flag for `id`; dropped from the table by [`LlmStage::finish`].
    pub fn register(&self, id: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), flag.clone());
        flag
    }

    pub fn finish(&self, id: &str) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Flags the request `id` as cancelled; false when no such request is queued or running.
    pub fn cancel(&self, id: &str) -> bool {
        match self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Cancels every running request (shutdown, barge-in).
    pub fn cancel_all(&self) {
        for flag in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Lets another stage pause a generation between two tokens. The voice loop holds its answer's
/// generation while Piper synthesizes the first spoken piece (`voice.first_audio_priority`):
/// on a board with two cores the LLM's threads would otherwise take half the CPU from the one
/// job the person is waiting for. A hold lasts at most [`Hold::LIMIT`] from when it was set,
/// released or not, and a cancelled generation does not wait.
#[derive(Debug, Default)]
pub struct Hold {
    /// When the hold was set; `None` when released.
    since: Mutex<Option<Instant>>,
    released: Condvar,
}

impl Hold {
    /// The longest a hold keeps a generation waiting.
    pub const LIMIT: Duration = Duration::from_secs(1);

    pub fn hold(&self) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub fn release(&self) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.released.notify_all();
    }

    /// Sets the hold until the returned guard is dropped.
    pub fn guard(self: Arc<Self>) -> HoldGuard {
        self.hold();
        HoldGuard(self)
    }

    /// Waits while held (until [`Hold::LIMIT`] after the hold was set), and returns early once
    /// `cancel` is set. Returns how long it waited.
    pub fn wait(&self, cancel: &AtomicBool) -> Duration {
        let start = Instant::now();
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(t) = *since
            && !cancel.load(Ordering::Relaxed)
        {
            let left = Self::LIMIT.saturating_sub(t.elapsed());
            if left.is_zero() {
                break;
            }
            // Short slices, so a cancel (which does not notify) is seen soon.
            since = self
                .released
                .wait_timeout(since, left.min(Duration::from_millis(20)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        start.elapsed()
    }
}

/// Releases its [`Hold`] when dropped, whichever way its owner ends.
#[derive(Debug)]
pub struct HoldGuard(Arc<Hold>);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// What a generation needs besides the request: where tokens go and when to stop.
pub struct Stream {
    pub tokens: Option<mpsc::Sender<String>>,
    pub cancel: Arc<AtomicBool>,
    /// Checked after every token: the generation waits while another stage holds it.
    pub hold: Option<Arc<Hold>>,
    pub dropped: u64,
    /// Whether the exchange joins the request's session when done. The voice loop's
    /// speculative answers do not: the turn that adopts one remembers it
    /// ([`Llm::remember`]); an abandoned one leaves no trace.
    pub remember: bool,
}

impl Llm {
    /// Answers `request` on the engine thread, streaming text pieces into `stream`.
    pub fn ask(
        &mut self,
        request: &AskRequest,
        stream: &mut Stream,
    ) -> Result<Reply, RequestError> {
        let (messages, given) = self.conversation(request);
        let o = &request.options;
        let d = &self.defaults;

        let options = engine::GenerateOptions {
            max_tokens: o.max_tokens.unwrap_or(d.max_tokens),
            temperature: o.temperature.unwrap_or(d.temperature),
            top_k: o.top_k.unwrap_or(d.top_k),
            top_p: o.top_p.unwrap_or(d.top_p),
            min_p: o.min_p.unwrap_or(d.min_p),
            repeat_penalty: o.repeat_penalty.unwrap_or(d.repeat_penalty),
            seed: o.seed.unwrap_or_else(|| fastrand::u64(..)),
            stop: o.stop.clone().unwrap_or_default(),
            thinking: o.thinking.unwrap_or(false),
            ..Default::default()
        };
        let cancel = stream.cancel.clone();
        let tokens = stream.tokens.clone();
        let hold = stream.hold.clone();
        let mut dropped = 0u64;
        let mut held = Duration::ZERO;
        let result = self.session.chat(&messages, &options, |piece: &str| {
            if let Some(tx) = &tokens
                && tx.try_send(piece.to_string()).is_err()
            {
                dropped += 1;
            }
            if let Some(hold) = &hold {
                held += hold.wait(&cancel);
            }
            if cancel.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        stream.dropped = dropped;
        let reply = result.map_err(|e| {
            RequestError::new(Some(request.id.clone()), ErrorCode::Internal, e.to_string())
        })?;
        if stream.remember {
            self.remember_exchange(request, &messages, &given, &reply.text);
        }
        let t = &reply.timings;
        Ok(Reply {
            id: request.id.clone(),
            session: request.session.clone(),
            text: reply.text.trim().to_string(),
            thinking: reply.thinking.clone().filter(|t| !t.trim().is_empty()),
            stop_reason: stop_reason(reply.stop_reason).to_string(),
            timings: Timings {
                prompt_tokens: t.prompt_tokens,
                cached_tokens: t.cached_tokens,
                generated_tokens: t.generated_tokens,
                ttft_ms: t.ttft_ms,
                prefill_tok_s: t.prefill_tok_s,
                decode_tok_s: decode_rate(t, held),
                total_ms: t.total_ms,
            },
            tokens_dropped: dropped,
        })
    }

    pub fn model(&self) -> &engine::Model {
        &self.model
    }

    /// Remembers `reply` as the answer to `request` in its session, as [`Llm::ask`] does
    /// when its stream says so: for an answer generated speculatively, once the turn that
    /// asked it is confirmed.
    pub fn remember(&mut self, request: &AskRequest, reply: &str) {
        let (messages, given) = self.conversation(request);
        self.remember_exchange(request, &messages, &given, reply);
    }

    /// Adds the exchange to the request's session (if it has one) and readies
    /// [`Llm::warm`] with the conversation as the session's next question will see it.
    fn remember_exchange(
        &mut self,
        request: &AskRequest,
        messages: &[engine::Message],
        given: &[engine::Message],
        reply: &str,
    ) {
        let Some(session) = &request.session else {
            return;
        };
        self.conversations
            .remember(session, given, engine::Message::assistant(reply));
        let mut next: Vec<engine::Message> = messages
            .first()
            .filter(|m| m.role == engine::Role::System)
            .cloned()
            .into_iter()
            .collect();
        next.extend(self.conversations.history(session).iter().cloned());
        self.warm = Some((next, request.options.thinking.unwrap_or(false)));
    }

    /// The messages `request` is answered from (system prompt, the session's remembered
    /// turns, the new messages) and the new messages alone.
    fn conversation(
        &mut self,
        request: &AskRequest,
    ) -> (Vec<engine::Message>, Vec<engine::Message>) {
        let mut messages: Vec<engine::Message> = Vec::new();
        let given: Vec<engine::Message> = match (&request.prompt, &request.messages) {
            (Some(p), _) => vec![engine::Message::user(p)],
            (None, Some(m)) => m.iter().map(to_engine).collect(),
            (None, None) => Vec::new(),
        };
        let has_system = given
            .first()
            .is_some_and(|m| m.role == engine::Role::System);
        if !has_system && let Some(system) = self.system_prompt(&request.options) {
            messages.push(system);
        }
        if let Some(session) = &request.session {
            messages.extend(self.conversations.history(session).iter().cloned());
        }
        messages.extend(given.iter().cloned());
        (messages, given)
    }

    /// The system message a request gets unless it brings its own: `options.system_prompt`,
    /// else `llm.system_prompt`; none when that is empty.
    fn system_prompt(&self, options: &Options) -> Option<engine::Message> {
        let prompt = options
            .system_prompt
            .as_deref()
            .unwrap_or(&self.defaults.system_prompt);
        (!prompt.is_empty()).then(|| engine::Message::system(prompt))
    }

    /// Evaluates the prompt `request` would be answered from into the KV cache, without
    /// generating or remembering anything: the voice loop calls it with a transcript made
    /// before the endpoint, so that the answer, if that transcript is the question, starts
    /// from a computed prompt.
    pub fn prepare(&mut self, request: &AskRequest) {
        let (messages, _) = self.conversation(request);
        let thinking = request.options.thinking.unwrap_or(false);
        if let Err(e) = self.session.prefill_chat(&messages, true, thinking) {
            tracing::debug!(error = %e, "prompt not evaluated ahead");
        }
    }

    /// Evaluates the conversation the last `ask` left (with its oldest turns forgotten if the
    /// session was full), and the start of the next user message, into the KV cache, so that
    /// the session's next question computes only its words and the template around them. Run
    /// as its own job after the reply, in the time the answer is being spoken, and once after
    /// the model loads (the system prompt).
    pub fn warm(&mut self) {
        let Some((messages, thinking)) = self.warm.take() else {
            return;
        };
        let started = std::time::Instant::now();
        match self.session.prefill_before_user(&messages, thinking) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                tokens = n,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "conversation evaluated ahead of its next turn"
            ),
            Err(e) => tracing::debug!(error = %e, "conversation not evaluated ahead"),
        }
    }
}

/// Generated tokens after the first, per second of generating: a generation held while the
/// first spoken piece was synthesized (`held`, all of it after the first token) is not slower.
fn decode_rate(t: &engine::Timings, held: Duration) -> f64 {
    let generating_ms = t.decode_ms - held.as_secs_f64() * 1e3;
    if held.is_zero() || t.generated_tokens < 2 || generating_ms <= 0.0 {
        return t.decode_tok_s;
    }
    (t.generated_tokens - 1) as f64 / generating_ms * 1e3
}

/// The protocol's name of a stop reason.
pub fn stop_reason(reason: engine::StopReason) -> &'static str {
    match reason {
        engine::StopReason::Eos => "eos",
        engine::StopReason::StopString => "stop",
        engine::StopReason::MaxTokens => "max_tokens",
        engine::StopReason::Cancelled => "cancelled",
        engine::StopReason::ContextFull => "context_full",
    }
}

fn to_engine(m: &MessageIn) -> engine::Message {
    match m.role {
        Role::System => engine::Message::system(&m.content),
        Role::User => engine::Message::user(&m.content),
        Role::Assistant => engine::Message::assistant(&m.content),
    }
}

/// Remembered conversations, least recently used first.
pub struct Conversations {
    max_sessions: usize,
    max_turns: usize,
    sessions: VecDeque<(String, Vec<engine::Message>)>,
}

impl Conversations {
    pub fn new(max_sessions: usize, max_turns: usize) -> Conversations {
        Conversations {
            max_sessions,
            max_turns: max_turns.max(1),
            sessions: VecDeque::new(),
        }
    }

    /// The remembered turns of `session` (empty if unknown); marks it most recently used.
    pub fn history(&mut self, session: &str) -> &[engine::Message] {
        match self.sessions.iter().position(|(s, _)| s == session) {
            Some(i) => {
                let entry = self.sessions.remove(i).expect("index from position");
                self.sessions.push_back(entry);
                &self.sessions.back().expect("just pushed").1
            }
            None => &[],
        }
    }

    /// Appends a turn (the new messages and the answer), dropping the oldest turns beyond
    /// the bound and the least recently used session beyond the session bound.
    pub fn remember(&mut self, session: &str, asked: &[engine::Message], answer: engine::Message) {
        if self.max_sessions == 0 {
            return;
        }
        let i = match self.sessions.iter().position(|(s, _)| s == session) {
            Some(i) => i,
            None => {
                if self.sessions.len() >= self.max_sessions {
                    self.sessions.pop_front();
                }
                self.sessions.push_back((session.to_string(), Vec::new()));
                self.sessions.len() - 1
            }
        };
        let turns = &mut self.sessions[i].1;
        turns.extend(
            asked
                .iter()
                .filter(|m| m.role != engine::Role::System)
                .cloned(),
        );
        turns.push(answer);
        // A turn starts at a user message. Beyond `max_turns`, the oldest are forgotten down
        // to half of it at once: every forgetting changes the prompt right after the system
        // prompt, so the whole history must be evaluated again; this way that happens once
        // every `max_turns / 2` turns instead of on every turn of a long conversation.
        let starts: Vec<usize> = turns
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == engine::Role::User)
            .map(|(i, _)| i)
            .collect();
        if starts.len() > self.max_turns {
            let keep = self.max_turns.div_ceil(2);
            let cut = starts[starts.len() - keep];
            turns.drain(..cut);
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::request;

    #[test]
    fn the_decode_rate_leaves_out_the_time_held() {
        let t = engine::Timings {
            generated_tokens: 11,
            decode_ms: 300.0,
            decode_tok_s: 10.0 / 0.3,
            ..Default::default()
        };
        assert_eq!(decode_rate(&t, Duration::ZERO), t.decode_tok_s);
        // 10 tokens in 300 ms, 200 of them held: 100 tokens a second.
        assert!((decode_rate(&t, Duration::from_millis(200)) - 100.0).abs() < 1e-9);
        // Nothing left to divide by: the engine's figure.
        assert_eq!(decode_rate(&t, Duration::from_millis(300)), t.decode_tok_s);
    }

    #[test]
    fn a_hold_pauses_the_generation_until_released_or_cancelled() {
        let no = AtomicBool::new(false);
        // Not held: no wait.
        let hold = Arc::new(Hold::default());
        assert!(hold.wait(&no) < Duration::from_millis(50));
        // Held, released by another thread after 100 ms.
        hold.hold();
        let releaser = {
            let hold = hold.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                hold.release();
            })
        };
        let waited = hold.wait(&no);
        releaser.join().unwrap();
        assert!(
            waited >= Duration::from_millis(90) && waited < Hold::LIMIT,
            "{waited:?}"
        );
        // Held and cancelled: returns at once.
        hold.hold();
        assert!(hold.wait(&AtomicBool::new(true)) < Duration::from_millis(50));
        // Held and never released: bounded by the limit, counted from the hold, so the
        // next token does not wait again.
        let waited = hold.wait(&no);
        assert!(
            waited >= Hold::LIMIT - Duration::from_millis(100)
                && waited < Hold::LIMIT + Duration::from_millis(500),
            "{waited:?}"
        );
        assert!(hold.wait(&no) < Duration::from_millis(50));
    }

    fn ask(json: &str) -> Result<AskRequest, RequestError> {
        let r: AskRequest = request::parse(json.as_bytes(), 1 << 20)?;
        validate(&r)?;
        Ok(r)
    }

    #[test]
    fn ask_validation_names_the_field() {
        assert!(ask(r#"{"id":"1","prompt":"hi"}"#).is_ok());
        let e = ask(r#"{"id":"1"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("prompt"));
        let e = ask(r#"{"id":"1","prompt":"a","messages":[]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("messages"));
        let e = ask(r#"{"id":"1","prompt":"a","options":{"temperature":9}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("options.temperature"));
        let e = ask(r#"{"id":"1","prompt":"a","options":{"temprature":1}}"#).unwrap_err();
        assert!(e.message.contains("temprature"), "{}", e.message);
        let e = ask(r#"{"id":"1","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("messages"));
        let e = ask(r#"{"id":"1","messages":[{"role":"robot","content":"a"}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn conversations_keep_bounded_turns_and_sessions() {
        let mut c = Conversations::new(2, 4);
        let turns = |c: &mut Conversations| -> Vec<String> {
            c.history("a").iter().map(|m| m.content.clone()).collect()
        };
        for i in 0..4 {
            c.remember(
                "a",
                &[engine::Message::user(&format!("q{i}"))],
                engine::Message::assistant(&format!("a{i}")),
            );
        }
        assert_eq!(turns(&mut c).len(), 8, "four turns kept");
        // The fifth forgets down to half of the bound at once.
        c.remember(
            "a",
            &[engine::Message::user("q4")],
            engine::Message::assistant("a4"),
        );
        assert_eq!(turns(&mut c), ["q3", "a3", "q4", "a4"]);
        c.remember(
            "b",
            &[engine::Message::user("x")],
            engine::Message::assistant("y"),
        );
        c.remember(
            "c",
            &[engine::Message::user("x")],
            engine::Message::assistant("y"),
        );
        assert_eq!(c.len(), 2);
        assert!(
            c.history("a").is_empty(),
            "least recently used session forgotten"
        );
    }
}
