//! `POST /v1/chat/completions`: OpenAI's chat request as an `llm/ask` (checked by the same
//! `validate_ask`, turned into the stage's question by the same `service::question`), answered
//! whole or, with `stream: true`, as server-sent events in OpenAI's chunk shape ending with
//! `data: [DONE]`.
//!
//! Stateless as OpenAI's API is: no session, the request's messages are the conversation
//! (the configured system prompt first unless they bring one). A client that goes away
//! cancels its generation.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Api, ApiError, check_model, parse_json, read_body, stage_error, submit_error};
use crate::mqtt::payloads::{self, AskRequest};
use crate::service;
use crate::stages::llm::{Answer, LlmStage};
use crate::stages::worker::SubmitError;
use crate::stages::{StageError, llm};
use sotad_engines::llm::StopReason;

/// The request. Fields of OpenAI's API not listed here are ignored (`user`,
/// `frequency_penalty`, `logprobs`, ...); those that would change the answer and are not
/// supported are refused by name.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// The checked question and how to answer it.
struct Question {
    ask: llm::Ask,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<usize>,
}

fn not_yet(param: &str) -> ApiError {
    ApiError::unsupported(
        param,
        format!("`{param}` is not supported yet by this server (sotad); leave it out"),
    )
}

/// OpenAI's request as an `llm/ask`, checked as MQTT's are.
fn question(r: ChatRequest, id: String) -> Result<Question, ApiError> {
    if r.functions.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(not_yet("functions"));
    }
    // `auto` (the default with tools) and `none` (no tools); forcing a call is not offered.
    let mut tools = r.tools.filter(|t| !t.is_null());
    match r.tool_choice.as_ref().and_then(Value::as_str) {
        _ if r.tool_choice.as_ref().is_none_or(Value::is_null) => {}
        Some("auto") => {}
        Some("none") => tools = None,
        _ => return Err(not_yet("tool_choice")),
    }
    // `text` is the default; `json_object` and `json_schema` go to `llm/ask` as they are.
    let response_format = r
        .response_format
        .filter(|f| !f.is_null() && f.get("type").and_then(Value::as_str) != Some("text"));
    if r.stream == Some(true) && (tools.is_some() || response_format.is_some()) {
        return Err(ApiError::unsupported(
            "stream",
            "`stream` with `tools` or `response_format` is not supported yet; ask without `stream`"
                .into(),
        ));
    }
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported(
            "n",
            "only one choice (`n`: 1) is generated".into(),
        ));
    }
    let mut messages = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => {
                return Err(ApiError::unsupported(
                    &format!("messages[{i}].role"),
                    format!("role {:?} is not supported yet (no tools)", m.role),
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {other:?}; allowed: system, developer, user, assistant"),
                ));
            }
        };
        if m.tool_calls.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::unsupported(
                &format!("messages[{i}].tool_calls"),
                "tool calls are not supported yet".into(),
            ));
        }
        let content = match m.content {
            None => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    "missing content".into(),
                ));
            }
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::unsupported(
                                &format!("messages[{i}].content[{j}]"),
                                format!("content of type {kind:?} is not supported; only text"),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(json!({ "role": role, "content": content }));
    }
    let stop = match r.stop {
        None => None,
        Some(Stop::One(s)) => Some(vec![s]),
        Some(Stop::Many(v)) => Some(v),
    };
    let max_tokens = r.max_completion_tokens.or(r.max_tokens);
    // Built as JSON so that fields `llm/ask` gains later keep their defaults.
    let mut request = json!({
        "id": id,
        "messages": messages,
        "options": {
            "max_tokens": max_tokens,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "seed": r.seed.map(|s| s as u64),
            "stop": stop,
        },
    });
    // Their shapes are checked here, so that a mistake names the parameter.
    if let Some(tools) = tools {
        serde_json::from_value::<Vec<payloads::ToolIn>>(tools.clone())
            .map_err(|e| ApiError::invalid("tools", format!("invalid tools: {e}")))?;
        request["tools"] = tools;
    }
    if let Some(format) = response_format {
        serde_json::from_value::<payloads::ResponseFormatIn>(format.clone()).map_err(|e| {
            ApiError::invalid("response_format", format!("invalid response_format: {e}"))
        })?;
        request["response_format"] = format;
    }
    let request: AskRequest = serde_json::from_value(request)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))?;
    payloads::validate_ask(&request).map_err(|e| {
        let param = e.field.as_deref().map(|f| {
            f.strip_prefix("options.")
                .map(|f| if f == "max_tokens" { "max_tokens" } else { f })
                .unwrap_or(f)
                .to_string()
        });
        let error = ApiError::new(StatusCode::BAD_REQUEST, e.message);
        match param {
            Some(p) => error.param(p),
            None => error,
        }
    })?;
    Ok(Question {
        ask: service::question(request),
        stream: r.stream.unwrap_or(false),
        include_usage: r.stream_options.unwrap_or_default().include_usage,
        max_tokens: max_tokens.map(|n| n as usize),
    })
}

/// Cancels the generation when the request ends early (the client went away) and forgets
/// its cancel flag.
struct Generation {
    llm: LlmStage,
    id: String,
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.llm.cancel(&self.id);
        self.llm.finish(&self.id);
    }
}

type Done = Pin<Box<dyn Future<Output = Result<Result<Answer, StageError>, SubmitError>> + Send>>;

fn finish_reason(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

fn usage(a: &Answer) -> Usage {
    let t = &a.timings;
    Usage {
        prompt_tokens: t.prompt_tokens,
        completion_tokens: t.generated_tokens,
        total_tokens: t.prompt_tokens + t.generated_tokens,
    }
}

fn answer(result: Result<Result<Answer, StageError>, SubmitError>) -> Result<Answer, ApiError> {
    result
        .map_err(submit_error)?
        .map_err(|e| stage_error(e, |f| f.to_string()))
}

pub async fn completions(State(api): State<Arc<Api>>, request: Request) -> Response {
    let tracked = api.track("http.chat");
    let result = tracked.end(run(&api, request).await);
    match result {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(api: &Arc<Api>, request: Request) -> Result<Response, ApiError> {
    let (_, body) = read_body(api, request, api.max_request_bytes, &["application/json"]).await?;
    let r: ChatRequest = parse_json(&body)?;
    drop(body);
    check_model(
        r.model.as_deref(),
        api.models.llm.as_ref(),
        "llm",
        "llm.model",
    )?;
    let model = api
        .models
        .llm
        .as_ref()
        .map(|m| m.id.clone())
        .unwrap_or_default();
    let llm = api
        .stages
        .llm
        .clone()
        .ok_or_else(|| ApiError::unavailable("the llm stage is off".into()))?;
    let id = format!("chatcmpl-{}-{}", std::process::id(), api.next_id());
    let q = question(r, id.clone())?;
    // Every piece fits in the stream (one or fewer per token): none is dropped.
    let buffer = q.max_tokens.unwrap_or(api.llm_max_tokens).clamp(16, 32_768) + 16;
    let (mut pieces, done) = llm
        .ask_streaming(q.ask, buffer, None, false, false)
        .map_err(submit_error)?;
    let generation = Generation {
        llm: llm.clone(),
        id: id.clone(),
    };
    let mut done: Done = Box::pin(done);
    let created = api.created();

    if !q.stream {
        let (result, ()) =
            tokio::join!(&mut done, async { while pieces.recv().await.is_some() {} });
        let a = answer(result)?;
        drop(generation);
        // A tool call is the message's `tool_calls`, with no content (OpenAI's shape).
        let (message, finish) = if a.tool_calls.is_empty() {
            (
                json!({ "role": "assistant", "content": a.text }),
                finish_reason(&a.stop_reason),
            )
        } else {
            let calls: Vec<Value> = a
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({
                        "id": format!("call_{i}"),
                        "type": "function",
                        "function": { "name": c.name, "arguments": c.arguments.to_string() },
                    })
                })
                .collect();
            (
                json!({ "role": "assistant", "content": null, "tool_calls": calls }),
                "tool_calls",
            )
        };
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage(&a),
        });
        return Ok(super::json_response(StatusCode::OK, &body));
    }

    // Streamed: the status waits for the first piece, so that a request refused when its job
    // starts (a prompt beyond the context) is still an HTTP error.
    let first = pieces.recv().await;
    let mut queued = VecDeque::new();
    let mut state = Sse {
        id,
        model,
        created,
        include_usage: q.include_usage,
        pieces,
        done: Some(done),
        generation,
        queued: VecDeque::new(),
        finished: false,
    };
    queued.push_back(state.chunk(json!({ "role": "assistant", "content": "" }), None));
    match first {
        Some(text) => queued.push_back(state.chunk(json!({ "content": text }), None)),
        None => {
            let result = state.done.take().expect("not taken yet").await;
            let a = answer(result)?;
            state.finish(&a, &mut queued);
        }
    }
    state.queued = queued;
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(bytes) = s.queued.pop_front() {
                return Some((Ok::<_, Infallible>(bytes), s));
            }
            if s.finished {
                return None;
            }
            match s.pieces.recv().await {
                Some(text) => {
                    let chunk = s.chunk(json!({ "content": text }), None);
                    s.queued.push_back(chunk);
                }
                None => {
                    let result = match s.done.take() {
                        Some(done) => done.await,
                        None => Err(SubmitError::Crashed("llm")),
                    };
                    let mut queued = std::mem::take(&mut s.queued);
                    match answer(result) {
                        Ok(a) => s.finish(&a, &mut queued),
                        Err(e) => {
                            queued.push_back(event(&e.body()));
                            queued.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                            s.finished = true;
                        }
                    }
                    s.queued = queued;
                }
            }
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        super::stream_body(stream),
    )
        .into_response())
}

/// A stream's state between events.
struct Sse {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    pieces: mpsc::Receiver<String>,
    done: Option<Done>,
    /// Dropped with the stream: a client that goes away cancels the generation.
    #[allow(dead_code)]
    generation: Generation,
    queued: VecDeque<Bytes>,
    finished: bool,
}

fn event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Sse {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        });
        event(&serde_json::to_vec(&body).unwrap_or_default())
    }

    fn finish(&mut self, a: &Answer, queued: &mut VecDeque<Bytes>) {
        queued.push_back(self.chunk(json!({}), Some(finish_reason(&a.stop_reason))));
        if self.include_usage {
            let body = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(a),
            });
            queued.push_back(event(&serde_json::to_vec(&body).unwrap_or_default()));
        }
        queued.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Question, ApiError> {
        question(parse_json(body.as_bytes())?, "t".into())
    }

    #[test]
    fn openai_requests_become_questions() {
        let q = parse(
            r#"{"model":"m","messages":[{"role":"developer","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hi"}]}],
            "max_tokens":8,"stop":"\n","seed":3,"stream":true,"user":"x"}"#,
        )
        .unwrap();
        assert!(q.stream);
        assert_eq!(q.ask.messages.len(), 2);
        assert_eq!(q.ask.messages[1].content, "Hi");
        assert_eq!(q.ask.options.max_tokens, Some(8));
        assert_eq!(q.ask.options.stop, Some(vec!["\n".to_string()]));
        assert_eq!(q.ask.options.seed, Some(3));
    }

    #[test]
    fn unsupported_and_wrong_fields_are_named() {
        let e = parse(r#"{"messages":[{"role":"user","content":"x"}],"tools":[{}]}"#)
            .err()
            .unwrap();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("tools"))
        );
        let e = parse(
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#,
        )
        .err()
        .unwrap();
        assert!(e.param.as_deref().unwrap().starts_with("response_format"));
        assert!(parse(r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#).is_ok());
        let e = parse(r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},"stream":true}"#)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("stream"));
        let e = parse(r#"{"messages":[{"role":"user","content":"x"}],"tool_choice":"required"}"#)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = parse(r#"{"messages":[{"role":"user","content":"x"}],"temperature":9}"#)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse(r#"{"messages":[]}"#).err().unwrap();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse(r#"{"messages":[{"role":"robot","content":"x"}]}"#)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse(r#"{"messages": ["#).err().unwrap();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }
}
