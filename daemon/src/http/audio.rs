//! `POST /v1/audio/transcriptions` (a multipart WAV upload → Whisper) and
//! `POST /v1/audio/speech` (text → Piper, as a WAV or as raw PCM streamed while it is
//! synthesized).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sotad_engines::audio;
use tokio::sync::mpsc;

use super::{
    Api, ApiError, check_model, multipart, parse_json, read_body, stage_error, submit_error,
};
use crate::capacity;
use crate::mqtt::payloads::{self, SayRequest};
use crate::service;
use crate::stages::{stt, tts};

pub async fn transcriptions(State(api): State<Arc<Api>>, request: Request) -> Response {
    let tracked = api.track("http.transcriptions");
    match tracked.end(transcribe(&api, request).await) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct VerboseSegment {
    id: usize,
    seek: usize,
    start: f64,
    end: f64,
    text: String,
    tokens: Vec<u32>,
    temperature: f32,
    avg_logprob: f32,
    compression_ratio: f32,
    no_speech_prob: f32,
}

fn text_field(part: &multipart::Part) -> Result<String, ApiError> {
    std::str::from_utf8(part.data)
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::invalid(part.name.clone(), "not UTF-8 text".into()))
}

async fn transcribe(api: &Arc<Api>, request: Request) -> Result<Response, ApiError> {
    let (headers, body) =
        read_body(api, request, api.max_upload_bytes, &["multipart/form-data"]).await?;
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary)
        .ok_or_else(|| {
            ApiError::invalid(
                "body",
                "multipart/form-data without a boundary parameter".into(),
            )
        })?;
    let parts = multipart::parse(&body, &boundary)
        .map_err(|e| ApiError::invalid("body", format!("malformed multipart body: {e}")))?;
    let mut wav = None;
    let mut model = None;
    let mut language = None;
    let mut prompt = None;
    let mut format = "json".to_string();
    for part in &parts {
        match part.name.as_str() {
            "file" => wav = Some(part.data.to_vec()),
            "model" => model = Some(text_field(part)?),
            "language" => language = Some(text_field(part)?).filter(|l| !l.is_empty()),
            "prompt" => prompt = Some(text_field(part)?).filter(|p| !p.is_empty()),
            "response_format" => format = text_field(part)?,
            // temperature, timestamp_granularities[], ...: not used.
            _ => {}
        }
    }
    drop(parts);
    drop(body);
    check_model(
        model.as_deref(),
        api.models.stt.as_ref(),
        "stt",
        "stt.model",
    )?;
    if !matches!(format.as_str(), "json" | "text" | "verbose_json") {
        return Err(ApiError::unsupported(
            "response_format",
            format!(
                "response_format {format:?} is not supported; allowed: json, text, verbose_json"
            ),
        ));
    }
    let wav = wav.ok_or_else(|| {
        ApiError::invalid(
            "file",
            "missing the `file` part: the WAV to transcribe".into(),
        )
    })?;
    let worker = api
        .stages
        .stt
        .clone()
        .ok_or_else(|| ApiError::unavailable("the stt stage is off".into()))?;
    let job = stt::WavJob {
        wav,
        language,
        task: stt::Task::Transcribe,
        beam_size: None,
        initial_prompt: prompt,
    };
    let done = worker
        .submit(move |engine| engine.run(&job))
        .map_err(submit_error)?
        .await
        .map_err(submit_error)?
        .map_err(|e| {
            stage_error(e, |f| match f {
                "wav" | "audio" => "file".to_string(),
                other => other.to_string(),
            })
        })?;
    let t = service::transcript(String::new(), &done);
    Ok(match format.as_str() {
        "text" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", t.text),
        )
            .into_response(),
        "verbose_json" => {
            let segments: Vec<VerboseSegment> = done
                .transcript
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| VerboseSegment {
                    id: i,
                    seek: (f64::from(s.start) * 100.0) as usize,
                    start: f64::from(s.start),
                    end: f64::from(s.end),
                    text: s.text.clone(),
                    tokens: s.tokens.clone(),
                    temperature: s.temperature,
                    avg_logprob: s.avg_logprob,
                    compression_ratio: s.compression_ratio,
                    no_speech_prob: s.no_speech_prob,
                })
                .collect();
            super::json_response(
                StatusCode::OK,
                &json!({
                    "task": "transcribe",
                    "language": t.language,
                    "duration": t.duration_s,
                    "text": t.text,
                    "segments": segments,
                }),
            )
        }
        _ => super::json_response(StatusCode::OK, &json!({ "text": t.text })),
    })
}

#[derive(Debug, Deserialize)]
struct SpeechRequest {
    #[serde(default)]
    model: Option<String>,
    input: String,
    #[serde(default)]
    voice: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
    speed: Option<f32>,
}

pub async fn speech(State(api): State<Arc<Api>>, request: Request) -> Response {
    let tracked = api.track("http.speech");
    match tracked.end(speak(&api, request).await) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Sets the cancel flag when dropped: synthesis stops once the client is gone.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn pcm(samples: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for &s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}

async fn speak(api: &Arc<Api>, request: Request) -> Result<Response, ApiError> {
    let (_, body) = read_body(api, request, api.max_request_bytes, &["application/json"]).await?;
    let r: SpeechRequest = parse_json(&body)?;
    drop(body);
    check_model(
        r.model.as_deref(),
        api.models.tts.as_ref(),
        "tts",
        "tts.voice",
    )?;
    let format = r.response_format.as_deref().unwrap_or("wav");
    if !matches!(format, "wav" | "pcm") {
        return Err(ApiError::unsupported(
            "response_format",
            format!("response_format {format:?} is not supported; allowed: wav, pcm"),
        ));
    }
    let stream_pcm = format == "pcm";
    if let Some(speed) = r.speed
        && !(speed.is_finite() && (0.25..=4.0).contains(&speed))
    {
        return Err(ApiError::invalid(
            "speed",
            format!("{speed} is out of range; allowed: 0.25 to 4.0"),
        ));
    }
    // The configured voice's own name (the model id) means the default voice.
    let default_voice = api.models.tts.as_ref().map(|m| m.id.clone());
    let voice = r
        .voice
        .filter(|v| Some(v) != default_voice.as_ref() && v != "default");
    let request = json!({
        "id": "http",
        "text": r.input,
        "voice": voice,
        "scales": { "length": r.speed.map(|s| 1.0 / s) },
    });
    let request: SayRequest = serde_json::from_value(request)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))?;
    payloads::validate_say(&request).map_err(|e| {
        let param = e.field.as_deref().map(|f| match f {
            "text" => "input",
            "scales.length" => "speed",
            other => other,
        });
        let error = ApiError::new(StatusCode::BAD_REQUEST, e.message);
        match param {
            Some(p) => error.param(p),
            None => error,
        }
    })?;
    let worker = api
        .stages
        .tts
        .clone()
        .ok_or_else(|| ApiError::unavailable("the tts stage is off".into()))?;
    let say = service::speech(request);
    let (audio_tx, mut audio_rx) = mpsc::channel::<tts::Chunk>(capacity::AUDIO);
    let cancel = Arc::new(AtomicBool::new(false));
    let engine_cancel = cancel.clone();
    let done = worker
        .submit(move |engine| engine.say(&say, &audio_tx, &engine_cancel, || {}))
        .map_err(submit_error)?;
    let guard = CancelOnDrop(cancel);
    let done = tokio::spawn(done);
    let param = |f: &str| match f {
        "text" => "input".to_string(),
        "scales.length" => "speed".to_string(),
        other => other.to_string(),
    };
    // The first piece, or the job's end (its error) when there is none.
    let Some(first) = audio_rx.recv().await else {
        let spoken = done
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(submit_error)?
            .map_err(|e| stage_error(e, param))?;
        let rate = spoken.sample_rate;
        return Ok(audio_response(
            stream_pcm,
            rate,
            Bytes::from(if stream_pcm {
                Vec::new()
            } else {
                audio::encode_wav_i16(&[], rate, 1)
            }),
        ));
    };
    let rate = first.sample_rate;
    if stream_pcm {
        let state = (Some(first), audio_rx, guard);
        let stream = futures_util::stream::unfold(state, |(first, mut rx, guard)| async move {
            let chunk = match first {
                Some(c) => c,
                None => rx.recv().await?,
            };
            Some((Ok::<_, Infallible>(pcm(&chunk.samples)), (None, rx, guard)))
        });
        return Ok(audio_response(true, rate, super::stream_body(stream)));
    }
    let mut samples = first.samples;
    while let Some(chunk) = audio_rx.recv().await {
        samples.extend_from_slice(&chunk.samples);
    }
    done.await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(submit_error)?
        .map_err(|e| stage_error(e, param))?;
    drop(guard);
    Ok(audio_response(
        false,
        rate,
        Bytes::from(audio::encode_wav_i16(&samples, rate, 1)),
    ))
}

fn audio_response(pcm: bool, rate: u32, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            if pcm { "audio/pcm" } else { "audio/wav" },
        )],
        body.into(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&rate.to_string()) {
        response.headers_mut().insert("x-sample-rate", v);
    }
    response
}
