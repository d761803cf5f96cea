//! Every request, reply and event payload of the MQTT protocol (docs/protocol.md), and the
//! checks serde cannot make. Plain data: nothing here runs a stage or touches the network.
//! The telemetry document's parts are telemetry's own counters ([`crate::telemetry`]).
//!
//! Requests derive `Deserialize` with `deny_unknown_fields` and implement [`Request`], so
//! [`super::request::parse`] can read them from untrusted bytes; replies and events derive
//! `Serialize`.

use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};
use sotad_engines::llm::StopReason;
use sotad_engines::vad::EndReason;

use super::request::{self, ErrorCode, Request, RequestError};
use crate::telemetry::Latency;

/// Longest prompt or message accepted, in bytes (the request size limit applies too).
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// Longest text accepted in one `tts/say`, in bytes.
pub const MAX_TEXT_BYTES: usize = 100 * 1024;

// ---- device ----

/// The retained `instance` document: which process serves this device id. Each process
/// publishes its own before it serves; one that later sees a newer process's document stands
/// down (see `mqtt::connection`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    /// Random, new for every process.
    pub instance: String,
    /// The host name of the machine it runs on.
    pub host: String,
    pub pid: u32,
    /// When the process started, in milliseconds since the Unix epoch (by its own clock).
    pub started_ms: u64,
}

impl Instance {
    /// The document of this process.
    pub fn this_process(host: String) -> Instance {
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Instance {
            instance: format!("{:016x}", fastrand::u64(..)),
            host,
            pid: std::process::id(),
            started_ms,
        }
    }

    /// Whether `self` started after `other`: of two live processes, the later one keeps the
    /// device id (ties broken by the instance string, so both agree).
    pub fn is_newer_than(&self, other: &Instance) -> bool {
        (self.started_ms, &self.instance) > (other.started_ms, &other.instance)
    }
}

/// The retained `capabilities` document.
#[derive(Debug, Serialize)]
pub struct Capabilities {
    pub version: &'static str,
    pub protocol: u32,
    pub device_id: String,
    pub commands: Vec<&'static str>,
    /// Configured engines with their models.
    pub engines: Vec<EngineInfo>,
    pub audio: AudioInfo,
    pub features: Vec<&'static str>,
    pub build: BuildInfo,
    pub limits: Limits,
}

#[derive(Debug, Serialize)]
pub struct EngineInfo {
    pub stage: &'static str,
    pub engine: String,
    pub model: String,
}

#[derive(Debug, Serialize, Default)]
pub struct AudioInfo {
    pub capture: Option<String>,
    pub playback: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BuildInfo {
    pub target_arch: &'static str,
    pub target_os: &'static str,
    pub cpu_features: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct Limits {
    pub max_packet_bytes: usize,
    pub max_request_bytes: usize,
}

/// Protocol version of docs/protocol.md; raised on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

// ---- stt ----

/// `stt/transcribe` as JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscribeRequest {
    pub id: String,
    /// The WAV file, base64-encoded (standard alphabet, padding optional).
    pub wav: String,
    /// ISO language code; default `stt.language` (empty: detect).
    #[serde(default)]
    pub language: Option<String>,
    /// `transcribe` (default) or `translate` (to English; multilingual models only).
    #[serde(default)]
    pub task: Option<Task>,
    /// Beam width 1-8; default `stt.beam_size`.
    #[serde(default)]
    pub beam_size: Option<usize>,
    /// Text that conditions the decoder: names, spellings, hotwords.
    #[serde(default)]
    pub initial_prompt: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Transcribe,
    Translate,
}

impl Request for TranscribeRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// A parsed request: the id, the WAV bytes and the options.
#[derive(Debug, Clone)]
pub struct Transcribe {
    pub id: String,
    pub wav: Vec<u8>,
    pub language: Option<String>,
    pub task: Task,
    pub beam_size: Option<usize>,
    pub initial_prompt: Option<String>,
}

/// Parses a raw WAV or a JSON request of at most `max_bytes`.
pub fn parse_transcribe(payload: &[u8], max_bytes: usize) -> Result<Transcribe, RequestError> {
    if payload.starts_with(b"RIFF") {
        return Ok(Transcribe {
            id: raw_id(payload),
            wav: payload.to_vec(),
            language: None,
            task: Task::Transcribe,
            beam_size: None,
            initial_prompt: None,
        });
    }
    let r: TranscribeRequest = request::parse(payload, max_bytes)?;
    let invalid = |field: &str, message: String| {
        RequestError::new(Some(r.id.clone()), ErrorCode::InvalidRequest, message).with_field(field)
    };
    let wav = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(r.wav.trim_end_matches('=').as_bytes())
        .map_err(|e| invalid("wav", format!("field `wav` is not base64: {e}")))?;
    if let Some(beam) = r.beam_size
        && !(1..=8).contains(&beam)
    {
        return Err(invalid(
            "beam_size",
            format!("{beam} is out of range; allowed: 1 to 8"),
        ));
    }
    if let Some(lang) = &r.language
        && !(lang.is_empty() || lang.len() <= 3 && lang.chars().all(|c| c.is_ascii_lowercase()))
    {
        return Err(invalid(
            "language",
            format!("{lang:?} is not a language code; allowed e.g. \"en\", or empty to detect"),
        ));
    }
    Ok(Transcribe {
        id: r.id,
        wav,
        language: r.language,
        task: r.task.unwrap_or(Task::Transcribe),
        beam_size: r.beam_size,
        initial_prompt: r.initial_prompt,
    })
}

/// A stable id for a raw WAV payload: `wav-` and a 64-bit FNV-1a hash of the bytes.
pub fn raw_id(payload: &[u8]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in payload {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("wav-{hash:016x}")
}

/// The answer on `stt/result`.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    pub id: String,
    pub text: String,
    pub language: String,
    pub segments: Vec<Segment>,
    pub duration_s: f64,
    pub timings: TranscriptTimings,
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TranscriptTimings {
    pub total_ms: f64,
    pub real_time_factor: f64,
    /// Tokens the decoder generated, every window and fallback temperature included.
    pub tokens_decoded: usize,
}

// ---- llm ----

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
    /// Functions the model may call instead of answering, as the OpenAI API takes them.
    #[serde(default)]
    pub tools: Option<Vec<ToolIn>>,
    /// `{"type": "json_schema", "json_schema": {"name", "schema"}}` or `{"type":
    /// "json_object"}`: the answer is JSON of that shape.
    #[serde(default)]
    pub response_format: Option<ResponseFormatIn>,
}

/// One of `llm/ask`'s `tools`: `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolIn {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionIn,
}

/// A tool's function: its name, what it does, its parameters' JSON schema.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionIn {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    /// Accepted for compatibility; calls are always schema-valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `llm/ask`'s `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormatIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<JsonSchemaIn>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaIn {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// Accepted for compatibility; the answer always validates.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// Most tools an `llm/ask` may give.
pub const MAX_TOOLS: usize = 64;

/// The checks of `tools` and `response_format` serde cannot make; the schemas themselves
/// are compiled by the LLM stage, which names the field of one it cannot compile.
fn validate_tools(r: &AskRequest) -> Result<(), RequestError> {
    let invalid = |field: String, message: String| {
        RequestError::new(Some(r.id.clone()), ErrorCode::InvalidRequest, message).with_field(field)
    };
    if let Some(tools) = &r.tools {
        if tools.is_empty() || tools.len() > MAX_TOOLS {
            return Err(invalid(
                "tools".into(),
                format!("give 1 to {MAX_TOOLS} tools (or leave `tools` out)"),
            ));
        }
        for (i, t) in tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(invalid(
                    format!("tools[{i}].type"),
                    format!("{:?} is not a tool type; allowed: \"function\"", t.kind),
                ));
            }
            let name = &t.function.name;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    format!("tools[{i}].function.name"),
                    "1 to 64 letters, digits, `_` or `-`".into(),
                ));
            }
            if tools[..i].iter().any(|o| &o.function.name == name) {
                return Err(invalid(
                    format!("tools[{i}].function.name"),
                    format!("`{name}` is given twice"),
                ));
            }
            if let Some(p) = &t.function.parameters
                && !(p.is_object() || p.is_null())
            {
                return Err(invalid(
                    format!("tools[{i}].function.parameters"),
                    "must be a JSON schema (an object)".into(),
                ));
            }
        }
        if r.response_format.is_some() {
            return Err(invalid(
                "response_format".into(),
                "give either `tools` or `response_format`, not both".into(),
            ));
        }
    }
    if let Some(f) = &r.response_format {
        match (f.kind.as_str(), &f.json_schema) {
            ("json_object", None) => {}
            ("json_schema", Some(s)) => match &s.schema {
                Some(v) if v.is_object() || v.is_boolean() => {}
                Some(_) => {
                    return Err(invalid(
                        "response_format.json_schema.schema".into(),
                        "must be a JSON schema (an object)".into(),
                    ));
                }
                None => {
                    return Err(invalid(
                        "response_format.json_schema.schema".into(),
                        "missing: the JSON schema the answer must validate against".into(),
                    ));
                }
            },
            ("json_schema", None) => {
                return Err(invalid(
                    "response_format.json_schema".into(),
                    "missing: `{\"name\": ..., \"schema\": {...}}`".into(),
                ));
            }
            ("json_object", Some(_)) => {
                return Err(invalid(
                    "response_format.json_schema".into(),
                    "only with `\"type\": \"json_schema\"`".into(),
                ));
            }
            (other, _) => {
                return Err(invalid(
                    "response_format.type".into(),
                    format!(
                        "{other:?} is not a response format; allowed: \"json_schema\", \"json_object\" (or leave it out for text)"
                    ),
                ));
            }
        }
    }
    Ok(())
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
    /// A prompt longer than the context: `true` leaves out the oldest turns after the system
    /// prompt (then the start of the last message) until it fits; otherwise (the default)
    /// the request is refused with `context_full`.
    pub truncate: Option<bool>,
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
pub fn validate_ask(r: &AskRequest) -> Result<(), RequestError> {
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
    validate_tools(r)
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
    #[serde(serialize_with = "stop_reason")]
    pub stop_reason: StopReason,
    pub timings: ReplyTimings,
    /// Tokens left out of the `llm/tokens` stream because MQTT fell behind.
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_dropped: u64,
    /// What `options.truncate` left out of the prompt, when it left anything out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
    /// The tool the model called instead of answering (with `tools`), in the OpenAI shape.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
    /// Under a grammar (`tools`, `response_format`): the geometric mean of the generated
    /// tokens' probabilities in the model's own distribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f32>,
}

/// `{"id", "type": "function", "function": {"name", "arguments"}}`, `arguments` a JSON
/// string as in the OpenAI API.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionCallOut {
    pub name: String,
    pub arguments: String,
}

/// What was left out of a prompt so that it fits in the context.
#[derive(Debug, Clone, Serialize)]
pub struct Truncated {
    /// Oldest messages left out (after the system prompt).
    pub messages: usize,
    /// Tokens cut from the start of the last message.
    pub tokens: usize,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// The protocol's name of a stop reason.
pub fn stop_reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Eos => "eos",
        StopReason::StopString => "stop",
        StopReason::MaxTokens => "max_tokens",
        StopReason::Cancelled => "cancelled",
        StopReason::ContextFull => "context_full",
    }
}

fn stop_reason<S: Serializer>(reason: &StopReason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(stop_reason_name(*reason))
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplyTimings {
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

// ---- tts ----

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SayRequest {
    pub id: String,
    pub text: String,
    /// A voice name (e.g. `en_US-joe-medium`), found as `<models.dir>/piper/<name>.onnx` or
    /// `<models.dir>/<name>.onnx`. Default: `tts.voice`.
    #[serde(default)]
    pub voice: Option<String>,
    /// Speaker id of a multi-speaker voice. Default: `tts.speaker`.
    #[serde(default)]
    pub speaker: Option<u32>,
    #[serde(default)]
    pub scales: Scales,
    /// Also play the audio on the speaker (`audio.playback_device`), as well as publishing it.
    #[serde(default)]
    pub play: bool,
}

impl Request for SayRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Overrides of the voice's inference scales.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scales {
    /// Speaking rate: larger is slower (0.1-5).
    pub length: Option<f32>,
    /// Variation of the voice (0-2).
    pub noise: Option<f32>,
    /// Variation of phoneme durations (0-2).
    pub noise_w: Option<f32>,
}

pub fn validate_say(r: &SayRequest) -> Result<(), RequestError> {
    let invalid = |field: &str, message: String| {
        RequestError::new(Some(r.id.clone()), ErrorCode::InvalidRequest, message).with_field(field)
    };
    if r.text.trim().is_empty() {
        return Err(invalid("text", "the text is empty; nothing to say".into()));
    }
    if r.text.len() > MAX_TEXT_BYTES {
        return Err(invalid(
            "text",
            format!(
                "the text is {} bytes; the limit is {MAX_TEXT_BYTES}",
                r.text.len()
            ),
        ));
    }
    if let Some(v) = &r.voice
        && (v.is_empty()
            || v.len() > 128
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            || v.starts_with('.'))
    {
        return Err(invalid(
            "voice",
            format!(
                "{v:?} is not a voice name; allowed: letters, digits, '_', '-', '.' (e.g. \"en_US-joe-medium\")"
            ),
        ));
    }
    let s = &r.scales;
    for (field, value, lo, hi) in [
        ("scales.length", s.length, 0.1, 5.0),
        ("scales.noise", s.noise, 0.0, 2.0),
        ("scales.noise_w", s.noise_w, 0.0, 2.0),
    ] {
        if let Some(x) = value
            && !(x.is_finite() && x >= lo && x <= hi)
        {
            return Err(invalid(
                field,
                format!("{x} is out of range; allowed: {lo} to {hi}"),
            ));
        }
    }
    Ok(())
}

/// The answer on `tts/done`.
#[derive(Debug, Clone, Serialize)]
pub struct SayDone {
    pub id: String,
    pub voice: String,
    pub sample_rate: u32,
    /// WAVs published on `tts/audio/<id>`.
    pub chunks: usize,
    /// Sentences they make up (a sentence is one WAV or, decoded in pieces, several).
    pub sentences: usize,
    pub audio_s: f64,
    /// Characters that had no phoneme in the voice and were skipped.
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_chars: usize,
    pub cancelled: bool,
    /// Why `play: true` was not honoured (no speaker configured); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub play_error: Option<String>,
    pub timings: SpeechTimings,
}

/// Processing time per second of audio (0 for no audio): the `real_time_factor` of
/// `stt/transcript` and `tts/done`.
pub fn real_time_factor(total_ms: f64, audio_s: f64) -> f64 {
    if audio_s > 0.0 {
        total_ms / 1e3 / audio_s
    } else {
        0.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeechTimings {
    pub first_audio_ms: f64,
    pub total_ms: f64,
    pub real_time_factor: f64,
}

// ---- turn ----

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

pub fn validate_text_turn(r: &TextTurnRequest) -> Result<(), RequestError> {
    if r.text.trim().is_empty() || r.text.len() > MAX_PROMPT_BYTES {
        return Err(RequestError::new(
            Some(r.id.clone()),
            ErrorCode::InvalidRequest,
            format!("`text` must be 1 to {} bytes of text", MAX_PROMPT_BYTES),
        )
        .with_field("text"));
    }
    Ok(())
}

/// `wake/detected`: a wake word (or, with `stop`, a stop word) heard by the microphone.
#[derive(Debug, Clone, Serialize)]
pub struct WakeDetected<'a> {
    /// The phrase from the model's settings, e.g. "Hey Jarvis".
    pub word: &'a str,
    /// The configuration value that named the model (`voice.wake_words`/`voice.stop_words`).
    pub model: &'a str,
    /// The mean probability over the model's sliding window.
    pub probability: f32,
    /// Where it was heard: seconds of audio captured since capture started (the end of the
    /// 32 ms frame that completed the detection), the clock of `turn/done`'s `speech_end_s`.
    pub time_s: f64,
    /// Unix time in milliseconds when sotad heard it.
    pub at_ms: u64,
    /// True for a stop word (the answer was cancelled), false for a wake word.
    pub stop: bool,
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
    #[serde(serialize_with = "stop_reason")]
    pub stop_reason: StopReason,
}

/// `turn/answer`: an integration's answer to the intent of turn `id`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TurnAnswerRequest {
    /// The turn id of the intent it answers.
    pub id: String,
    /// What to say; absent or empty: nothing.
    #[serde(default)]
    pub text: Option<String>,
}

impl Request for TurnAnswerRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

pub fn validate_turn_answer(r: &TurnAnswerRequest) -> Result<(), RequestError> {
    if r.text.as_ref().is_some_and(|t| t.len() > MAX_PROMPT_BYTES) {
        return Err(RequestError::new(
            Some(r.id.clone()),
            ErrorCode::InvalidRequest,
            format!("`text` must be at most {MAX_PROMPT_BYTES} bytes"),
        )
        .with_field("text"));
    }
    Ok(())
}

/// A recognized intent, on `intent/<name>`.
#[derive(Debug, Clone, Serialize)]
pub struct IntentEvent<'a> {
    pub turn: &'a str,
    pub intent: &'a str,
    pub transcript: &'a str,
    /// Slot name → its value and the words it came from.
    pub slots: serde_json::Map<String, serde_json::Value>,
    /// `template` (the sentence matcher); `llm` is reserved for the LLM's tool calls.
    pub recognizer: &'static str,
    pub confidence: f32,
    /// The topic the answer goes to, with `{"id": <turn>, "text": ...}`.
    pub answer_topic: &'a str,
    /// How long sotad waits for it before it speaks the fallback.
    pub answer_timeout_ms: u64,
}

/// The `slots` of an intent event: `{"name": {"value": v, "raw": "words"}}`, numbers as
/// JSON numbers (integers without a fraction).
pub fn intent_slots(
    slots: &[sotad_engines::intent::SlotMatch],
) -> serde_json::Map<String, serde_json::Value> {
    use sotad_engines::intent::SlotValue;
    slots
        .iter()
        .map(|s| {
            let value = match &s.value {
                SlotValue::Text(t) => serde_json::Value::from(t.as_str()),
                SlotValue::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                    serde_json::Value::from(*n as i64)
                }
                SlotValue::Number(n) => serde_json::Value::from(*n),
            };
            (
                s.name.clone(),
                serde_json::json!({ "value": value, "raw": s.raw }),
            )
        })
        .collect()
}

/// Which path answered a turn (`turn/done`'s `path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnPath {
    /// The transcript matched an intent: published, and the integration's answer spoken.
    Intent,
    /// The LLM answered.
    Llm,
}

/// What became of a turn's intent (`turn/done`'s `intent`).
#[derive(Debug, Clone, Serialize)]
pub struct IntentDone<'a> {
    pub name: &'a str,
    /// `integration` (its answer was spoken), `timeout` (the fallback was), or `cancelled`.
    pub answer: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoneEvent<'a> {
    pub turn: &'a str,
    pub outcome: TurnOutcome,
    /// Which path answered the question; absent when there was none (no speech, a failed
    /// transcription).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<TurnPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentDone<'a>>,
    pub transcript: &'a str,
    pub reply: &'a str,
    pub audio_s: f64,
    pub sentences: usize,
    /// What ended a spoken question.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Where the question's speech ended in the capture stream (seconds of audio since
    /// capture started), as the VAD saw it: lines a turn up with a recording.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech_end_s: Option<f64>,
    /// Smart Turn's latest verdict on the question's last pause, when it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smart_turn: Option<SmartTurnVerdict>,
    pub latency: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `turn/done`'s `smart_turn`: the probability that the turn was finished, and how long the
/// decision took (question handed over → answer).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SmartTurnVerdict {
    pub probability: f64,
    pub ms: f64,
}

// ---- voice ----

/// The retained `voice/state` document.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceState {
    pub listening: bool,
    pub muted: bool,
    pub barge_in: bool,
    /// Push-to-talk is held.
    pub ptt: bool,
    /// `off` (no capture device), or the capture thread's state (`open`, `missing`, ...).
    pub capture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vad_error: Option<String>,
    pub speaking: bool,
}

/// How a turn ended (`turn/done`'s `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// The question was answered (the reply may be empty if the model said nothing).
    Answered,
    /// The utterance transcribed to nothing: no question, no answer.
    NoSpeech,
    /// Stopped by a newer turn, barge-in, push-to-talk or `listen/stop`.
    Cancelled,
    /// A stage failed; `error` says why.
    Failed,
}

/// What ended a spoken question (`turn/done`'s `endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The endpointer's reason: `silence`, `complete`, `max_length` (or `flushed`).
    Vad(EndReason),
    /// The push-to-talk button was released.
    PushToTalk,
    /// Smart Turn (`[turn]`) judged the utterance finished at a pause.
    SmartTurn,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Vad(reason) => reason.as_str(),
            Endpoint::PushToTalk => "push_to_talk",
            Endpoint::SmartTurn => "smart_turn",
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_instance_is_newer_and_both_sides_agree() {
        let mut a = Instance::this_process("pi".to_string());
        let mut b = Instance::this_process("pi".to_string());
        assert_ne!(a.instance, b.instance, "a new id for every process");
        b.started_ms = a.started_ms + 1;
        assert!(b.is_newer_than(&a) && !a.is_newer_than(&b));
        // Same millisecond: the id decides, the same way on both sides.
        b.started_ms = a.started_ms;
        a.instance = "1".into();
        b.instance = "2".into();
        assert!(b.is_newer_than(&a) && !a.is_newer_than(&b));
        assert!(!a.is_newer_than(&a));
        let back: Instance = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    fn parse(payload: &[u8], max: usize) -> Result<Transcribe, RequestError> {
        parse_transcribe(payload, max)
    }

    #[test]
    fn raw_wav_gets_a_stable_id() {
        let a = parse(b"RIFF....WAVEfmt ", 1024).unwrap();
        let b = parse(b"RIFF....WAVEfmt ", 1024).unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("wav-"));
        assert_ne!(a.id, parse(b"RIFF....WAVEfmX ", 1024).unwrap().id);
    }

    #[test]
    fn json_request_decodes_base64_and_checks_fields() {
        let r = parse(br#"{"id":"1","wav":"UklGRg==","task":"translate"}"#, 1024).unwrap();
        assert_eq!(r.wav, b"RIFF");
        assert_eq!(r.task, Task::Translate);
        let e = parse(br#"{"id":"2","wav":"***"}"#, 1024).unwrap_err();
        assert_eq!(
            (e.field.as_deref(), e.id.as_deref()),
            (Some("wav"), Some("2"))
        );
        let e = parse(br#"{"id":"3","wav":"","beam_size":9}"#, 1024).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("beam_size"));
        let e = parse(br#"{"id":"4","wav":"","language":"English"}"#, 1024).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("language"));
        let e = parse(br#"{"id":"5","wav":"","tsk":"x"}"#, 1024).unwrap_err();
        assert!(e.message.contains("tsk"), "{}", e.message);
    }

    fn say(json: &str) -> Result<SayRequest, RequestError> {
        let r: SayRequest = request::parse(json.as_bytes(), 1 << 20)?;
        validate_say(&r)?;
        Ok(r)
    }

    #[test]
    fn say_validation_names_the_field() {
        assert!(say(r#"{"id":"1","text":"Hello."}"#).is_ok());
        assert_eq!(
            say(r#"{"id":"1","text":"  "}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("text")
        );
        assert_eq!(
            say(r#"{"id":"1","text":"a","voice":"../etc/passwd"}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("voice")
        );
        assert_eq!(
            say(r#"{"id":"1","text":"a","scales":{"length":0}}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("scales.length")
        );
        let big = format!(
            r#"{{"id":"1","text":"{}"}}"#,
            "a".repeat(MAX_TEXT_BYTES + 1)
        );
        assert_eq!(say(&big).unwrap_err().field.as_deref(), Some("text"));
    }

    fn ask(json: &str) -> Result<AskRequest, RequestError> {
        let r: AskRequest = request::parse(json.as_bytes(), 1 << 20)?;
        validate_ask(&r)?;
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
    fn tools_and_response_format_mistakes_name_the_field() {
        let f = |json: &str| ask(json).unwrap_err().field;
        let tool = r#"{"type":"function","function":{"name":"go","parameters":{"type":"object"}}}"#;
        assert!(ask(&format!(r#"{{"id":"1","prompt":"a","tools":[{tool}]}}"#)).is_ok());
        assert_eq!(
            f(&format!(r#"{{"id":"1","prompt":"a","tools":[{tool},{{"type":"web","function":{{"name":"x"}}}}]}}"#)).as_deref(),
            Some("tools[1].type")
        );
        assert_eq!(
            f(&format!(
                r#"{{"id":"1","prompt":"a","tools":[{tool},{tool}]}}"#
            ))
            .as_deref(),
            Some("tools[1].function.name")
        );
        assert_eq!(
            f(r#"{"id":"1","prompt":"a","tools":[{"type":"function","function":{"name":"x","parameters":[1]}}]}"#).as_deref(),
            Some("tools[0].function.parameters")
        );
        assert!(ask(r#"{"id":"1","prompt":"a","response_format":{"type":"json_object"}}"#).is_ok());
        assert_eq!(
            f(r#"{"id":"1","prompt":"a","response_format":{"type":"xml"}}"#).as_deref(),
            Some("response_format.type")
        );
        assert_eq!(
            f(r#"{"id":"1","prompt":"a","response_format":{"type":"json_schema","json_schema":{"name":"n"}}}"#).as_deref(),
            Some("response_format.json_schema.schema")
        );
    }

    #[test]
    fn typed_turn_fields_keep_their_wire_names() {
        let names: Vec<String> = [
            TurnOutcome::Answered,
            TurnOutcome::NoSpeech,
            TurnOutcome::Cancelled,
            TurnOutcome::Failed,
        ]
        .iter()
        .map(|o| serde_json::to_string(o).unwrap())
        .collect();
        assert_eq!(
            names,
            [
                r#""answered""#,
                r#""no_speech""#,
                r#""cancelled""#,
                r#""failed""#
            ]
        );
        let ends: Vec<String> = [
            Endpoint::Vad(EndReason::Silence),
            Endpoint::Vad(EndReason::Complete),
            Endpoint::Vad(EndReason::MaxLength),
            Endpoint::PushToTalk,
            Endpoint::SmartTurn,
        ]
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
        assert_eq!(
            ends,
            [
                r#""silence""#,
                r#""complete""#,
                r#""max_length""#,
                r#""push_to_talk""#,
                r#""smart_turn""#
            ]
        );
        let stops: Vec<&str> = [
            StopReason::Eos,
            StopReason::StopString,
            StopReason::MaxTokens,
            StopReason::Cancelled,
            StopReason::ContextFull,
        ]
        .into_iter()
        .map(stop_reason_name)
        .collect();
        assert_eq!(
            stops,
            ["eos", "stop", "max_tokens", "cancelled", "context_full"]
        );
    }
}
