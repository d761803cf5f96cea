//! Request payloads: parsing untrusted bytes into typed requests, and the error replies.
//!
//! Every request is a JSON object with a string `id`. Parsing never panics; a bad payload
//! becomes a [`RequestError`] that names the field at fault and echoes the id whenever one
//! could be read, so the integrator can match the error to what it sent.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest accepted request id, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Machine-readable error kinds, stable across versions (see docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is larger than `mqtt.max_request_bytes`.
    PayloadTooLarge,
    /// The payload is not UTF-8.
    InvalidUtf8,
    /// The payload is not JSON.
    InvalidJson,
    /// JSON, but not a valid request: missing or unknown field, wrong type, bad value.
    InvalidRequest,
    /// The audio in the request cannot be decoded (broken WAV header, unsupported format).
    InvalidAudio,
    /// The request names something that does not exist (e.g. `llm/cancel` of an unknown id).
    NotFound,
    /// The stage is off in the configuration, or its model could not be loaded; the message
    /// names the configuration key and the file.
    Unavailable,
    /// The request queue is full; try again later.
    Busy,
    /// sotad is stopping and did not take the request.
    ShuttingDown,
    /// A chat prompt longer than the LLM's context (`llm.context`), and the request did not
    /// ask for truncation (`options.truncate`).
    ContextFull,
    /// A failure inside sotad while handling a valid request.
    Internal,
    /// A problem that belongs to no request (e.g. a message too large for the connection).
    Connection,
}

/// What went wrong with one request; published on the `error` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestError {
    /// The request's id when it could be read.
    pub id: Option<String>,
    pub code: ErrorCode,
    /// The field at fault, as a path (`id`, `options.temperature`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl RequestError {
    pub fn new(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError {
            id,
            code,
            field: None,
            message: message.into(),
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> RequestError {
        self.field = Some(field.into());
        self
    }
}

/// A request that carries the `id` every request must have.
pub trait Request: DeserializeOwned {
    fn id(&self) -> &str;
}

/// `ping`: no fields besides `id`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PingRequest {
    pub id: String,
}

impl Request for PingRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// `listen/set`, `mute/set`: a switch set to a state (what Home Assistant's switches send).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    pub id: String,
    pub on: bool,
}

impl Request for SetRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// `pong`: the answer to `ping`.
#[derive(Debug, Clone, Serialize)]
pub struct Pong {
    pub id: String,
    pub version: &'static str,
    pub device_id: String,
    pub uptime_s: f64,
}

/// The payload published on the `error` topic.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorReply<'a> {
    #[serde(flatten)]
    pub error: &'a RequestError,
    /// Topic the failed request arrived on; absent for errors that belong to no request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_topic: Option<&'a str>,
}

/// Reads the `id` of a payload if it has a usable one, without judging the rest.
/// Used to echo the id on errors, even for payloads that are otherwise rejected.
pub fn peek_id(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<serde_json::Value>,
    }
    let parsed: IdOnly = serde_json::from_slice(payload).ok()?;
    match parsed.id? {
        serde_json::Value::String(id) if valid_id(&id) => Some(id),
        _ => None,
    }
}

/// The one rule for a field that may become part of a topic (a request id is the last
/// level of `tts/audio/<id>`): 1 to [`MAX_ID_BYTES`] bytes, no control characters, and none
/// of MQTT's `+`, `#` and `/`, which would make the topic a wildcard (a broker refuses to
/// deliver a publication to it) or move it to another level.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id
            .chars()
            .any(|c| c.is_control() || matches!(c, '+' | '#' | '/'))
}

/// Parses and checks one request payload of at most `max_bytes`.
pub fn parse<R: Request>(payload: &[u8], max_bytes: usize) -> Result<R, RequestError> {
    if payload.len() > max_bytes {
        return Err(RequestError::new(
            peek_id(payload),
            ErrorCode::PayloadTooLarge,
            format!(
                "the request is {} bytes; the limit is {max_bytes} (mqtt.max_request_bytes)",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        RequestError::new(
            None,
            ErrorCode::InvalidUtf8,
            format!(
                "the payload is not UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(RequestError::new(
            None,
            ErrorCode::InvalidJson,
            "the payload is empty; expected a JSON object such as {\"id\":\"1\"}",
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        RequestError::new(
            None,
            ErrorCode::InvalidJson,
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let serde_json::Value::Object(object) = &value else {
        return Err(RequestError::new(
            None,
            ErrorCode::InvalidRequest,
            format!(
                "the payload is JSON {}, expected an object such as {{\"id\":\"1\"}}",
                json_kind(&value)
            ),
        ));
    };
    let id = match object.get("id") {
        None => {
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidRequest,
                "missing field `id`: every request needs a string id, echoed in its reply",
            )
            .with_field("id"));
        }
        Some(serde_json::Value::String(id)) if valid_id(id) => id.clone(),
        Some(serde_json::Value::String(_)) => {
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidRequest,
                format!(
                    "field `id` must be 1 to {MAX_ID_BYTES} bytes without control characters, '+', '#' or '/' (it becomes part of a topic)"
                ),
            )
            .with_field("id"));
        }
        Some(other) => {
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidRequest,
                format!("field `id` must be a string, found {}", json_kind(other)),
            )
            .with_field("id"));
        }
    };
    serde_path_to_error::deserialize::<_, R>(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let err = RequestError::new(Some(id.clone()), ErrorCode::InvalidRequest, inner);
        // serde reports unknown and missing fields at the parent; its message names the field.
        if path == "." || path.is_empty() {
            err
        } else {
            err.with_field(path)
        }
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    fn err(payload: &[u8]) -> RequestError {
        parse::<PingRequest>(payload, MAX).unwrap_err()
    }

    #[test]
    fn good_ping_parses() {
        let p: PingRequest = parse(br#"{"id":"abc-1"}"#, MAX).unwrap();
        assert_eq!(p.id, "abc-1");
    }

    #[test]
    fn not_json_invalid_utf8_and_empty() {
        assert_eq!(err(b"hello").code, ErrorCode::InvalidJson);
        let e = err(b"{\"id\":\"a\xff\"}");
        assert_eq!(e.code, ErrorCode::InvalidUtf8);
        assert!(e.message.contains("offset 8"), "{}", e.message);
        assert_eq!(err(b"").code, ErrorCode::InvalidJson);
        assert_eq!(err(b"[1,2]").code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn missing_and_mistyped_id() {
        let e = err(br#"{"x":1}"#);
        assert_eq!(
            (e.code, e.field.as_deref(), e.id),
            (ErrorCode::InvalidRequest, Some("id"), None)
        );
        let e = err(br#"{"id":5}"#);
        assert_eq!(e.field.as_deref(), Some("id"));
        assert!(e.message.contains("a number"), "{}", e.message);
        let e = err(br#"{"id":""}"#);
        assert_eq!(e.field.as_deref(), Some("id"));
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_ID_BYTES + 1));
        assert_eq!(err(long.as_bytes()).field.as_deref(), Some("id"));
    }

    #[test]
    fn ids_that_would_change_a_topic_are_refused() {
        for id in ["a+1", "tt+x", "#", "a/b", "../../other", "x\\u0000y"] {
            let e = err(format!(r#"{{"id":"{id}"}}"#).as_bytes());
            assert_eq!(
                (e.code, e.field.as_deref()),
                (ErrorCode::InvalidRequest, Some("id")),
                "{id}: {}",
                e.message
            );
        }
        for id in ["turn-1", "a.b_c-d", "wav-0123abcd", "ü ok"] {
            assert!(valid_id(id), "{id}");
        }
    }

    #[test]
    fn unknown_field_echoes_id_and_names_field() {
        let e = err(br#"{"id":"7","colour":"red"}"#);
        assert_eq!(e.id.as_deref(), Some("7"));
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("colour"), "{}", e.message);
    }

    #[test]
    fn oversized_echoes_id_when_readable() {
        let big = format!(r#"{{"id":"big","pad":"{}"}}"#, "x".repeat(MAX));
        let e = err(big.as_bytes());
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        assert_eq!(e.id.as_deref(), Some("big"));
        assert!(e.message.contains("mqtt.max_request_bytes"));
    }

    #[test]
    fn error_reply_serializes_with_topic() {
        let e = err(br#"{"id":"7","colour":"red"}"#);
        let json = serde_json::to_value(ErrorReply {
            error: &e,
            request_topic: Some("sotad/d/ping"),
        })
        .unwrap();
        assert_eq!(json["id"], "7");
        assert_eq!(json["code"], "invalid_request");
        assert_eq!(json["request_topic"], "sotad/d/ping");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic xorshift over mutations of valid and invalid payloads; the cargo-fuzz
        // target (fuzz/fuzz_targets/request.rs) explores further.
        let seeds: [&[u8]; 4] = [
            br#"{"id":"a"}"#,
            br#"{"id":["x"],"a":{"b":null}}"#,
            b"\xff\xfe",
            b"[[[[[[",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000 {
            let mut bytes = seeds[i % seeds.len()].to_vec();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pos = (state as usize) % (bytes.len() + 1);
                match state % 3 {
                    0 => bytes.insert(pos, (state >> 8) as u8),
                    1 if pos < bytes.len() => {
                        bytes.remove(pos);
                    }
                    _ => bytes.truncate(pos),
                }
            }
            let _ = parse::<PingRequest>(&bytes, 64);
            let _ = peek_id(&bytes);
        }
    }
}
