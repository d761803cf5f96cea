//! The OpenAI-compatible HTTP API (`[http]`, off by default): chat completions, audio
//! transcriptions and speech, the model list, `/health` and a Prometheus `/metrics`.
//!
//! It reaches the engines through the same [`Stages`] as MQTT: the same workers and bounded
//! queues, so a full queue is a `429` here as it is `busy` there, and nothing waits without
//! bound. Every error is OpenAI's shape, `{"error":{"message","type","param","code"}}`
//! ([`ApiError`]). Bodies are read whole, up to `http.max_request_bytes` (JSON) or
//! `http.max_upload_bytes` (a transcription's multipart upload), before anything is parsed.
//!
//! axum 0.7 (HTTP/1 and tokio only): it is already built for the embedded broker (rumqttd),
//! so it costs no new crate; routing and graceful shutdown come with it. Multipart is parsed
//! by hand ([`multipart`]) over the buffered body rather than with axum's `multipart`
//! feature (multer, encoding_rs and more for a few lines of splitting).
//!
//! - `chat.rs`: `POST /v1/chat/completions` (plain and server-sent events).
//! - `audio.rs`: `POST /v1/audio/transcriptions` and `POST /v1/audio/speech`.
//! - `metrics.rs`: the telemetry counters in Prometheus' text format.
//! - `multipart.rs`: `multipart/form-data` from a buffered body.

pub mod audio;
pub mod chat;
pub mod metrics;
pub mod multipart;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::stages::worker::SubmitError;
use crate::stages::{StageError, StageErrorKind, Stages};
use crate::telemetry::{Metrics, Sampler};

/// What every handler shares.
pub struct Api {
    pub stages: Stages,
    pub metrics: Arc<Metrics>,
    /// `http.api_key`; `None`: no authentication.
    api_key: Option<String>,
    pub max_request_bytes: usize,
    pub max_upload_bytes: usize,
    /// The configured models by the ids `/v1/models` lists.
    pub models: Models,
    /// `llm.max_tokens`: the default length of an answer (sizes a stream's buffer).
    pub llm_max_tokens: usize,
    sampler: Mutex<Sampler>,
    next_id: AtomicU64,
    created: u64,
}

/// The model ids of the configured stages: the model's file or directory name without its
/// extension (`whisper-tiny.en-ct2`, `smollm2-135m-instruct-q4_1`, `en_US-joe-medium`).
#[derive(Debug, Clone, Default)]
pub struct Models {
    pub stt: Option<ModelId>,
    pub llm: Option<ModelId>,
    pub tts: Option<ModelId>,
}

#[derive(Debug, Clone)]
pub struct ModelId {
    pub id: String,
    /// The configuration value (`stt.model`, ...), accepted as a name too.
    pub configured: String,
}

impl ModelId {
    fn new(configured: &str) -> Option<ModelId> {
        if configured.is_empty() {
            return None;
        }
        let file = Path::new(configured.trim_end_matches('/'))
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or(configured);
        let id = [".gguf", ".onnx", ".bin"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext))
            .unwrap_or(file);
        Some(ModelId {
            id: id.to_string(),
            configured: configured.to_string(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        name == self.id || name == self.configured
    }
}

/// The stage a request's `model` must name: `None` (no `model` given) takes the configured one.
pub fn check_model(
    model: Option<&str>,
    configured: Option<&ModelId>,
    stage: &str,
    key: &str,
) -> Result<(), ApiError> {
    let Some(configured) = configured else {
        return Err(ApiError::unavailable(format!(
            "the {stage} stage is off: configuration key `{key}` is empty"
        )));
    };
    match model {
        None => Ok(()),
        Some(name) if configured.matches(name) => Ok(()),
        Some(name) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the model {name:?} does not exist here; this server's {stage} model is {:?} (GET /v1/models lists them)",
                configured.id
            ),
        )
        .param("model")
        .code("model_not_found")),
    }
}

impl Api {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Seconds since the Unix epoch at start: the `created` of ids and models.
    pub fn created(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(self.created, |d| d.as_secs())
    }

    /// Checks the bearer token when `http.api_key` is set.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared without an early exit on the first differing byte.
        let same = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if same {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                match given {
                    None => "no API key: send \"Authorization: Bearer <key>\" (the server's http.api_key)",
                    Some(_) => "incorrect API key (it must equal the server's http.api_key)",
                }
                .to_string(),
            )
            .kind("invalid_request_error")
            .code("invalid_api_key"))
        }
    }

    /// Counts a request of `stage` in the telemetry, and its outcome when it ends.
    pub fn track(self: &Arc<Self>, stage: &'static str) -> Tracked {
        self.metrics.request_received(stage);
        Tracked {
            api: self.clone(),
            stage,
            started: Instant::now(),
            outcome: None,
        }
    }
}

/// A request counted in the telemetry: ok, error or busy once it ends (an error if it is
/// dropped without an outcome: the client went away).
pub struct Tracked {
    api: Arc<Api>,
    stage: &'static str,
    started: Instant,
    outcome: Option<bool>,
}

impl Tracked {
    /// Records `result` and returns it.
    pub fn end<T>(mut self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        match &result {
            Ok(_) => self.outcome = Some(true),
            Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
                self.api.metrics.request_busy(self.stage);
                self.outcome = Some(false);
            }
            Err(_) => self.outcome = Some(false),
        }
        result
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.api.metrics.request_done(
            self.stage,
            self.outcome.unwrap_or(false),
            self.started.elapsed(),
        );
    }
}

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
pub struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> ApiError {
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        ApiError {
            status,
            message,
            kind,
            param: None,
            code: None,
        }
    }

    /// `400`: the request's `param` is wrong.
    pub fn invalid(param: impl Into<String>, message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message).param(param)
    }

    /// `400` for what the OpenAI API has and this server does not do yet.
    pub fn unsupported(param: &str, message: String) -> ApiError {
        ApiError::invalid(param, message).code("unsupported")
    }

    pub fn unavailable(message: String) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).code("unavailable")
    }

    pub fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn kind(mut self, kind: &'static str) -> ApiError {
        self.kind = kind;
        self
    }

    /// The JSON body (also an SSE event's data when a stream fails).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&ErrorBody {
            error: ErrorFields {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}

/// A worker's refusal: `429` when its queue is full.
pub fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Busy(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            .kind("requests")
            .code("rate_limit_exceeded"),
        SubmitError::Unavailable(m) => ApiError::unavailable(m),
        SubmitError::Crashed(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).code("internal")
        }
    }
}

/// A stage's error: the caller's input is a `400` naming the field, the rest `5xx`.
pub fn stage_error(e: StageError, field: impl Fn(&str) -> String) -> ApiError {
    let param = e.field.as_deref().map(field);
    let error = match e.kind {
        StageErrorKind::InvalidInput => ApiError::new(StatusCode::BAD_REQUEST, e.message),
        StageErrorKind::InvalidAudio => {
            ApiError::new(StatusCode::BAD_REQUEST, e.message).code("invalid_audio")
        }
        StageErrorKind::ContextFull => {
            ApiError::new(StatusCode::BAD_REQUEST, e.message).code("context_length_exceeded")
        }
        StageErrorKind::Unavailable => ApiError::unavailable(e.message),
        StageErrorKind::Internal => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.message).code("internal")
        }
    };
    match param {
        Some(p) => error.param(p),
        None => error,
    }
}

/// The most of a body without the right token that is read anyway.
const UNAUTHORIZED_DRAIN: u64 = 64 * 1024;

/// The body, whole: `413` past `limit` (told by `Content-Length` at once, or found while
/// reading), `401` without the token, `415` (once it is read) unless its type is one of `types`.
pub async fn read_body(
    api: &Api,
    request: Request,
    limit: usize,
    types: &[&str],
) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes (http.max_request_bytes / http.max_upload_bytes)"),
        )
        .code("request_too_large")
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Without the token, a small body is read (so that the connection stays usable) and a
    // large one is not read at all (the connection closes).
    if let Err(e) = api.authorize(&parts.headers) {
        if declared.is_some_and(|n| n <= UNAUTHORIZED_DRAIN) {
            let _ = axum::body::to_bytes(body, UNAUTHORIZED_DRAIN as usize).await;
        }
        return Err(e);
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if s.to_string().contains("length limit") {
                return too_large();
            }
            source = s.source();
        }
        ApiError::invalid("body", format!("could not read the request body: {e}"))
    })?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !types.contains(&essence.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {:?} is not accepted here; send {}",
                content_type,
                types.join(" or ")
            ),
        )
        .code("unsupported_media_type"));
    }
    Ok((parts.headers, bytes))
}

/// A JSON body as `T`: a `400` naming the field and the position of the mistake.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not valid JSON: {inner}")
        } else {
            format!("invalid request: {inner}")
        };
        let error = ApiError::new(StatusCode::BAD_REQUEST, message);
        if path == "." || path.is_empty() {
            error
        } else {
            error.param(path)
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    Ok(value)
}

pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Binds `http.listen` and serves until `stop` is cancelled; then stops accepting and
/// finishes the requests in flight (the task ends when they have).
pub async fn start(
    config: &Config,
    stages: Stages,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listen: SocketAddr = config
        .http
        .listen
        .parse()
        .context("configuration key `http.listen`")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("configuration key `http.listen` = {listen}: cannot listen"))?;
    let local = listener.local_addr().unwrap_or(listen);
    let api = Arc::new(Api {
        stages,
        metrics,
        api_key: (!config.http.api_key.is_empty()).then(|| config.http.api_key.clone()),
        max_request_bytes: config.http.max_request_bytes,
        max_upload_bytes: config.http.max_upload_bytes,
        models: Models {
            stt: ModelId::new(&config.stt.model),
            llm: ModelId::new(&config.llm.model),
            tts: ModelId::new(&config.tts.voice),
        },
        llm_max_tokens: config.llm.max_tokens,
        sampler: Mutex::new(Sampler::new(config.telemetry.thermal_zones.clone())),
        next_id: AtomicU64::new(1),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let app = router(api);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    Ok((local, task))
}

fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus).fallback(method_not_allowed))
        .route("/v1/models", get(models).fallback(method_not_allowed))
        .route(
            "/v1/chat/completions",
            post(chat::completions).fallback(method_not_allowed),
        )
        .route(
            "/v1/audio/transcriptions",
            post(audio::transcriptions).fallback(method_not_allowed),
        )
        .route(
            "/v1/audio/speech",
            post(audio::speech).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .with_state(api)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {} (docs/protocol.md, \"HTTP API\", lists them)",
            request.method(),
            request.uri().path()
        ),
    )
    .code("not_found")
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .code("method_not_allowed")
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    uptime_s: f64,
}

/// `GET /health`: always `200` while the server runs (no token needed).
async fn health(State(api): State<Arc<Api>>) -> Response {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: api.metrics.uptime().as_secs_f64(),
        },
    )
}

/// `GET /metrics`: the telemetry counters in Prometheus' text format.
async fn prometheus(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(e) = api.authorize(&headers) {
        return e.into_response();
    }
    api.stages.report(&api.metrics);
    let sample = api
        .sampler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sample(&api.metrics);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&sample),
    )
        .into_response()
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelEntry>,
}

#[derive(Serialize)]
struct ModelEntry {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// `GET /v1/models`: the configured STT, LLM and TTS models.
async fn models(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(e) = api.authorize(&headers) {
        return e.into_response();
    }
    let m = &api.models;
    let data = [&m.stt, &m.llm, &m.tts]
        .into_iter()
        .flatten()
        .map(|id| ModelEntry {
            id: id.id.clone(),
            object: "model",
            created: api.created,
            owned_by: "sotad",
        })
        .collect();
    json_response(
        StatusCode::OK,
        &ModelList {
            object: "list",
            data,
        },
    )
}

/// A body from a stream of byte pieces.
pub fn stream_body<S>(stream: S) -> Body
where
    S: futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_file_names_without_extension() {
        let id = ModelId::new("smollm2-135m-instruct-q4_1.gguf").unwrap();
        assert_eq!(id.id, "smollm2-135m-instruct-q4_1");
        assert!(id.matches("smollm2-135m-instruct-q4_1.gguf"));
        assert_eq!(
            ModelId::new("/m/whisper-tiny.en-ct2/").unwrap().id,
            "whisper-tiny.en-ct2"
        );
        assert_eq!(
            ModelId::new("piper/en_US-joe-medium.onnx").unwrap().id,
            "en_US-joe-medium"
        );
        assert!(ModelId::new("").is_none());
    }

    #[test]
    fn errors_have_openai_shape() {
        let e = ApiError::invalid("messages", "empty".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "empty");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["code"].is_null());
    }
}
