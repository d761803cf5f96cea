//! The LLM stage: the model on its worker thread, with remembered conversations.
//!
//! Conversations: an [`Ask`] with a `session` continues that conversation; its turns are
//! remembered (at most `llm.session_turns` per session, `llm.sessions` sessions, least
//! recently used forgotten first, a session idle for `llm.conversation_idle_s` forgotten;
//! a reply in another language than its question is not remembered, see
//! [`super::conversations::keeps_reply`]). The engine keeps one KV cache and reuses whatever token
//! prefix the new prompt shares with the previous one, so a follow-up in the same session
//! only computes the new turn, and switching sessions recomputes from the end of the shared
//! system prompt.
//!
//! Text pieces stream through a bounded channel while the answer is generated: when the
//! consumer falls behind, pieces are dropped from the stream (counted), never from the
//! final [`Answer`].

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sotad_engines::llm as engine;
use tokio::sync::mpsc;

use super::conversations::Conversations;
use super::error::StageError;
use super::files::ModelFiles;
use super::hold::Hold;
use super::worker::{SubmitError, Worker, threads};
use crate::config;

/// The engine thread's state: the model, its one live session, remembered conversations.
pub struct Llm {
    model: engine::Model,
    session: engine::Session,
    conversations: Conversations,
    defaults: Defaults,
    /// The conversation the last `ask` of a session left, for [`Llm::warm`]: its messages
    /// (system prompt first) and whether thinking was on.
    warm: Option<(Vec<engine::Message>, bool)>,
    /// The GGUF file, checked before each job.
    files: ModelFiles,
    /// The last grammars compiled (tools or a schema), by their source: the intents' tools
    /// are the same at every turn.
    grammars: Vec<(String, engine::Grammar)>,
}

impl super::worker::Rest for Llm {
    /// The batch scratch goes (a long prompt's is tens of MiB); the KV cache stays, so the
    /// next turn still reuses the conversation's prefix.
    fn rest(&mut self) {
        self.session.release_scratch();
    }
}

/// The fewest tokens a question with tools may generate unless the request says otherwise.
const TOOL_CALL_TOKENS: usize = 96;

/// Grammars kept compiled ([`Llm::grammars`]).
const GRAMMARS_KEPT: usize = 4;

/// How a tool call is written: Qwen2.5's (and Hermes') tags around one JSON object.
pub const TOOL_OPEN: &str = "<tool_call>";
pub const TOOL_CLOSE: &str = "</tool_call>";

/// What the answer must be besides plain text.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// JSON valid against this schema (`response_format.json_schema.schema`).
    JsonSchema(serde_json::Value),
    /// Any JSON object.
    JsonObject,
}

/// A tool the model called: its name and arguments (a JSON object valid against the tool's
/// parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: serde_json::Value,
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

/// A question: the new messages (one user message, or a whole conversation ending with
/// one), the session it continues, and overrides of the configured sampling.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Names the generation for `cancel`.
    pub id: String,
    pub messages: Vec<engine::Message>,
    pub session: Option<String>,
    pub options: Overrides,
}

impl Ask {
    /// One user message in `session`, with the configured sampling.
    pub fn question(id: String, text: String, session: Option<String>) -> Ask {
        Ask {
            id,
            messages: vec![engine::Message::user(&text)],
            session,
            // A spoken conversation goes on when it outgrows the context: its oldest turns
            // are left out, never the system prompt.
            options: Overrides {
                truncate: Some(true),
                ..Overrides::default()
            },
        }
    }
}

/// Per-question overrides of the `llm` section; `None` keeps the configured value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Vec<String>>,
    pub thinking: Option<bool>,
    /// Replaces `llm.system_prompt` ("" for none).
    pub system_prompt: Option<String>,
    /// A prompt beyond the context: leave out the oldest turns (`Some(true)`) or refuse it
    /// with [`StageErrorKind::ContextFull`](super::error::StageErrorKind::ContextFull).
    /// `None`: refuse.
    pub truncate: Option<bool>,
    /// Tools the model may call instead of answering (the OpenAI shape: `[{"type":
    /// "function", "function": {"name", "description", "parameters"}}]`). Decoding is
    /// constrained to a plain answer or exactly one valid call.
    pub tools: Option<Arc<serde_json::Value>>,
    /// The answer must be JSON of this shape (decoding constrained by its schema).
    pub response_format: Option<Format>,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The visible text, trimmed.
    pub text: String,
    /// What a thinking model thought first, if anything.
    pub thinking: Option<String>,
    pub stop_reason: engine::StopReason,
    /// The engine's timings, with `decode_tok_s` leaving out the time the generation was
    /// held ([`Hold`]).
    pub timings: engine::Timings,
    /// Pieces left out of the stream because its consumer fell behind.
    pub tokens_dropped: u64,
    /// The tool the model called (with `tools`); the text is then empty.
    pub tool_calls: Vec<ToolCall>,
    /// Under a grammar (tools, a response format): the geometric mean of the generated
    /// tokens' probabilities in the model's own distribution.
    pub probability: Option<f32>,
}

/// The async side: the worker and the cancel flags of running requests.
#[derive(Clone)]
pub struct LlmStage {
    pub worker: Worker<Llm>,
    running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
}

/// Starts the LLM worker if `llm.model` is set (`path`); the model loads on the worker
/// thread.
pub fn spawn(path: Option<PathBuf>, config: config::Llm, queue: usize) -> Option<LlmStage> {
    let path = path?;
    let worker = Worker::spawn("llm", queue, move || load(Some(path), &config));
    let stage = LlmStage {
        worker,
        running: Arc::default(),
    };
    // Once loaded: the system prompt, so that the first question computes only itself.
    stage.warm();
    Some(stage)
}

/// Loads the configured model; the error names the configuration key and the file.
pub fn load(path: Option<PathBuf>, c: &config::Llm) -> Result<Llm, String> {
    let Some(path) = path else {
        return Err("the LLM is off: configuration key `llm.model` is empty".into());
    };
    let options = engine::LoadOptions {
        context_len: c.context,
        threads: threads(c.threads),
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
        conversations: Conversations::new(c.sessions, c.session_turns, c.conversation_idle_s),
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
        files: ModelFiles::new("llm", "llm.model", path),
        grammars: Vec::new(),
    };
    // The first question finds the default system prompt computed.
    let system = llm.system_prompt(&Overrides::default());
    llm.warm = Some((system.into_iter().collect(), false));
    Ok(llm)
}

impl LlmStage {
    /// Queues [`Llm::warm`] behind whatever the worker is doing; skipped when the queue is
    /// full.
    pub fn warm(&self) {
        if let Err(e) = self.worker.submit(|engine: &mut Llm| engine.warm()) {
            tracing::debug!(error = %e, "no warm-up of the conversation");
        }
    }

    /// Queues `ask` with its text streamed into the returned receiver (at most `buffer`
    /// pieces waiting). Its cancel flag is registered under `ask.id` until
    /// [`LlmStage::finish`]; `cancelled` sets it at once. While `hold` is held, the
    /// generation waits between tokens. `remember`: whether the exchange joins its session
    /// when done (a speculative answer's does only once a turn adopts it).
    pub fn ask_streaming(
        &self,
        ask: Ask,
        buffer: usize,
        hold: Option<Arc<Hold>>,
        remember: bool,
        cancelled: bool,
    ) -> Result<
        (
            mpsc::Receiver<String>,
            impl Future<Output = Result<Result<Answer, StageError>, SubmitError>> + use<>,
        ),
        SubmitError,
    > {
        let cancel = self.register(&ask.id);
        if cancelled {
            cancel.store(true, Ordering::Relaxed);
        }
        let (tokens, rx) = mpsc::channel::<String>(buffer);
        let id = ask.id.clone();
        let submitted = self.worker.submit(move |engine| {
            let mut stream = Stream::new(Some(tokens), cancel);
            stream.hold = hold;
            stream.remember = remember;
            engine.ask(&ask, &mut stream)
        });
        match submitted {
            Ok(done) => Ok((rx, done)),
            Err(e) => {
                self.finish(&id);
                Err(e)
            }
        }
    }

    /// Queues the building of the grammar compiler over the model's vocabulary (seconds for
    /// a large vocabulary), so that the first question with tools does not wait for it.
    pub fn prepare_grammars(&self) {
        let job = |engine: &mut Llm| {
            if let Err(e) = engine.model.grammar(&engine::GrammarSpec::JsonObject) {
                tracing::warn!(error = %e, "no grammar compiler for the LLM");
            }
        };
        if let Err(e) = self.worker.submit(job) {
            tracing::debug!(error = %e, "grammar compiler not prepared ahead");
        }
    }

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

/// What a generation needs besides the question: where text goes and when to stop.
pub struct Stream {
    pub tokens: Option<mpsc::Sender<String>>,
    pub cancel: Arc<AtomicBool>,
    /// Checked after every token: the generation waits while another stage holds it.
    pub hold: Option<Arc<Hold>>,
    pub dropped: u64,
    /// Whether the exchange joins the question's session when done. The voice loop's
    /// speculative answers do not: the turn that adopts one remembers it
    /// ([`Llm::remember`]); an abandoned one leaves no trace.
    pub remember: bool,
}

impl Stream {
    /// Text into `tokens` (if any), stopped by `cancel`, remembered, never held.
    pub fn new(tokens: Option<mpsc::Sender<String>>, cancel: Arc<AtomicBool>) -> Stream {
        Stream {
            tokens,
            cancel,
            hold: None,
            dropped: 0,
            remember: true,
        }
    }
}

impl Llm {
    /// Answers `ask` on the engine thread, streaming text pieces into `stream`.
    pub fn ask(&mut self, ask: &Ask, stream: &mut Stream) -> Result<Answer, StageError> {
        self.files.check()?;
        let (mut messages, given) = self.conversation(ask);
        let o = &ask.options;
        let grammar = self.constraint(o)?;
        let mut template_tools = None;
        if let Some(tools) = &o.tools {
            if self.model.chat_template().takes_tools() {
                template_tools = Some(tools.clone());
            } else {
                describe_tools(&mut messages, tools);
            }
        }
        let d = &self.defaults;

        let options = engine::GenerateOptions {
            // A tool call must fit whole, even when `llm.max_tokens` is set for short
            // spoken answers.
            max_tokens: o.max_tokens.unwrap_or(if o.tools.is_some() {
                d.max_tokens.max(TOOL_CALL_TOKENS)
            } else {
                d.max_tokens
            }),
            temperature: o.temperature.unwrap_or(d.temperature),
            top_k: o.top_k.unwrap_or(d.top_k),
            top_p: o.top_p.unwrap_or(d.top_p),
            min_p: o.min_p.unwrap_or(d.min_p),
            repeat_penalty: o.repeat_penalty.unwrap_or(d.repeat_penalty),
            seed: o.seed.unwrap_or_else(|| fastrand::u64(..)),
            stop: o.stop.clone().unwrap_or_default(),
            thinking: o.thinking.unwrap_or(false),
            truncate_prompt: o.truncate.unwrap_or(false),
            grammar,
            tools: template_tools,
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
        let reply = result.map_err(|e| chat_error(&e))?;
        if stream.remember {
            self.remember_exchange(ask, &messages, &given, &reply.text);
        }
        let mut timings = reply.timings.clone();
        timings.decode_tok_s = decode_rate(&reply.timings, held);
        let mut text = reply.text.trim().to_string();
        let mut tool_calls = Vec::new();
        if o.tools.is_some()
            && let Some(call) = text
                .strip_prefix(TOOL_OPEN)
                .or_else(|| text.starts_with('{').then_some(text.as_str()))
        {
            tool_calls.push(tool_call(call, reply.stop_reason)?);
            text.clear();
        }
        if o.response_format.is_some()
            && reply.stop_reason != engine::StopReason::Cancelled
            && serde_json::from_str::<serde_json::Value>(&text).is_err()
        {
            return Err(StageError::internal(format!(
                "the JSON answer was cut ({:?}) before it was complete; raise `options.max_tokens`",
                reply.stop_reason
            )));
        }
        Ok(Answer {
            tool_calls,
            probability: reply.probability,
            text,
            thinking: reply.thinking.clone().filter(|t| !t.trim().is_empty()),
            stop_reason: reply.stop_reason,
            timings,
            tokens_dropped: dropped,
        })
    }

    pub fn model(&self) -> &engine::Model {
        &self.model
    }

    /// The grammar `o` asks for (tools, a response format), compiled or taken from the
    /// last ones; a schema that cannot be compiled is the request's mistake, named by its
    /// field.
    fn constraint(&mut self, o: &Overrides) -> Result<Option<engine::Grammar>, StageError> {
        let (spec, field) = match (&o.tools, &o.response_format) {
            (Some(tools), _) => {
                let list = tool_list(tools);
                let lark = self.model.text_or_tool_call(&list, TOOL_OPEN, TOOL_CLOSE);
                (engine::GrammarSpec::Lark(lark), "tools")
            }
            (None, Some(Format::JsonSchema(s))) => (
                engine::GrammarSpec::JsonSchema(s.clone()),
                "response_format.json_schema.schema",
            ),
            (None, Some(Format::JsonObject)) => {
                (engine::GrammarSpec::JsonObject, "response_format")
            }
            (None, None) => return Ok(None),
        };
        let key = format!("{spec:?}");
        if let Some(i) = self.grammars.iter().position(|(k, _)| *k == key) {
            let g = self.grammars.remove(i);
            let grammar = g.1.clone();
            self.grammars.push(g);
            return Ok(Some(grammar));
        }
        let grammar = self.model.grammar(&spec).map_err(|e| {
            // Which tool's parameters: each compiled alone.
            if let Some(tools) = &o.tools {
                for (i, (_, params)) in tool_list(tools).into_iter().enumerate() {
                    if let Err(e) = self.model.grammar(&engine::GrammarSpec::JsonSchema(params)) {
                        return StageError::invalid(
                            format!("tools[{i}].function.parameters"),
                            format!("the schema cannot be compiled: {e}"),
                        );
                    }
                }
            }
            StageError::invalid(field, format!("the schema cannot be compiled: {e}"))
        })?;
        if self.grammars.len() >= GRAMMARS_KEPT {
            self.grammars.remove(0);
        }
        self.grammars.push((key, grammar.clone()));
        Ok(Some(grammar))
    }

    /// Remembers `reply` as the answer to `ask` in its session, as [`Llm::ask`] does when
    /// its stream says so: for an answer generated speculatively, once the turn that asked
    /// it is confirmed.
    pub fn remember(&mut self, ask: &Ask, reply: &str) {
        let (messages, given) = self.conversation(ask);
        self.remember_exchange(ask, &messages, &given, reply);
    }

    /// Adds the exchange to the question's session (if it has one) and readies
    /// [`Llm::warm`] with the conversation as the session's next question will see it.
    fn remember_exchange(
        &mut self,
        ask: &Ask,
        messages: &[engine::Message],
        given: &[engine::Message],
        reply: &str,
    ) {
        let Some(session) = &ask.session else {
            return;
        };
        let now = Instant::now();
        if !self
            .conversations
            .remember(session, given, engine::Message::assistant(reply), now)
        {
            tracing::info!(
                session = %session,
                "reply not remembered: it is in another language than the question"
            );
        }
        let mut next: Vec<engine::Message> = messages
            .first()
            .filter(|m| m.role == engine::Role::System)
            .cloned()
            .into_iter()
            .collect();
        next.extend(self.conversations.history(session, now).iter().cloned());
        self.warm = Some((next, ask.options.thinking.unwrap_or(false)));
    }

    /// The messages `ask` is answered from (system prompt, the session's remembered turns,
    /// the new messages) and the new messages alone.
    fn conversation(&mut self, ask: &Ask) -> (Vec<engine::Message>, Vec<engine::Message>) {
        let mut messages: Vec<engine::Message> = Vec::new();
        let given = ask.messages.clone();
        let has_system = given
            .first()
            .is_some_and(|m| m.role == engine::Role::System);
        if !has_system && let Some(system) = self.system_prompt(&ask.options) {
            messages.push(system);
        }
        if let Some(session) = &ask.session {
            messages.extend(
                self.conversations
                    .history(session, Instant::now())
                    .iter()
                    .cloned(),
            );
        }
        messages.extend(given.iter().cloned());
        (messages, given)
    }

    /// The system message a question gets unless it brings its own: `system_prompt` of its
    /// overrides, else `llm.system_prompt`; none when that is empty.
    fn system_prompt(&self, options: &Overrides) -> Option<engine::Message> {
        let prompt = options
            .system_prompt
            .as_deref()
            .unwrap_or(&self.defaults.system_prompt);
        (!prompt.is_empty()).then(|| engine::Message::system(prompt))
    }

    /// Evaluates the prompt `ask` would be answered from into the KV cache, without
    /// generating or remembering anything: the voice loop calls it with a transcript made
    /// before the endpoint, so that the answer, if that transcript is the question, starts
    /// from a computed prompt.
    pub fn prepare(&mut self, ask: &Ask) {
        if self.files.check().is_err() {
            return;
        }
        let (messages, _) = self.conversation(ask);
        let thinking = ask.options.thinking.unwrap_or(false);
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
        if self.files.check().is_err() {
            return;
        }
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

/// (name, parameters schema) of each tool in the OpenAI shape; a tool without parameters
/// takes an empty object.
fn tool_list(tools: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    tools
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    let f = &t["function"];
                    let name = f["name"].as_str().unwrap_or_default().to_string();
                    let params = match f.get("parameters") {
                        Some(p) if !p.is_null() => p.clone(),
                        _ => serde_json::json!({"type": "object", "properties": {}}),
                    };
                    (name, params)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// For a chat template that does not describe tools itself: the tools and how to call one,
/// added to the system message (one is added when there is none), in the words of Qwen2.5's
/// template.
fn describe_tools(messages: &mut Vec<engine::Message>, tools: &serde_json::Value) {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools.as_array().into_iter().flatten() {
        text.push('\n');
        text.push_str(&t.to_string());
    }
    text.push_str("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
    match messages.first_mut() {
        Some(m) if m.role == engine::Role::System => {
            m.content = format!("{}\n\n{text}", m.content);
        }
        _ => messages.insert(0, engine::Message::system(text)),
    }
}

/// The call after [`TOOL_OPEN`] in a reply: `{"name", "arguments"}` up to [`TOOL_CLOSE`].
fn tool_call(rest: &str, stop: engine::StopReason) -> Result<ToolCall, StageError> {
    let cut = || {
        StageError::internal(format!(
            "the tool call was cut ({stop:?}) before it was complete; raise `options.max_tokens`"
        ))
    };
    let body = rest.split(TOOL_CLOSE).next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body.trim()).map_err(|_| cut())?;
    let name = v["name"].as_str().ok_or_else(cut)?.to_string();
    Ok(ToolCall {
        name,
        arguments: v
            .get("arguments")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
    })
}

/// A chat's error as the stage's: a prompt beyond the context is `ContextFull`, a
/// conversation the model's chat template refuses (roles out of order) the request's
/// `messages`; the rest is internal.
fn chat_error(e: &sotad_engines::Error) -> StageError {
    let sotad_engines::Error::Llm(l) = e else {
        return StageError::internal(e.to_string());
    };
    match &l.kind {
        engine::LlmErrorKind::ContextFull { .. } => StageError {
            kind: super::error::StageErrorKind::ContextFull,
            field: None,
            message: format!(
                "{e} (the context is configuration key `llm.context`; `options.truncate: true` leaves out the oldest turns)"
            ),
        },
        engine::LlmErrorKind::Template(_) => StageError::invalid("messages", e.to_string()),
        engine::LlmErrorKind::Grammar(_) => StageError::internal(e.to_string()),
        _ => StageError::internal(e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
