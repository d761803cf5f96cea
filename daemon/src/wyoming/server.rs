//! The Wyoming TCP server: one task per connection, events handled in order, the engines
//! reached through the same workers and queues as MQTT (a full queue is an `error` with code
//! `busy`, never a wait without bound).
//!
//! A framing error (a header that is not JSON, a length above its limit, a connection that
//! ends inside an event) is answered with an `error` and the connection is closed: the byte
//! stream cannot be resynchronized. A mistake in an event (audio out of order, an unknown
//! event type, a missing field) is answered with an `error` and the connection goes on.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sotad_engines::wake::WakeWord;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::audio::{Format, To16k, to_i16_bytes};
use super::frame::{Decoder, Event, Limits};
use super::info::{self, Programs, WakeModel};
use crate::capacity;
use crate::stages::worker::SubmitError;
use crate::stages::{StageError, StageErrorKind, Stages, stt, tts};
use crate::voice::sentences::SentenceSplitter;

/// A connection that stops sending in the middle of an event is closed after this long.
const MID_EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that does not read what it asked for is closed after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `describe` waits for the STT model to load to list its languages.
const LANGUAGES_WAIT: Duration = Duration::from_secs(30);
/// Samples per `audio-chunk` sent (as wyoming-piper).
const SAMPLES_PER_CHUNK: usize = 1024;
/// Streamed text without a sentence end is spoken once it is this long (bytes).
const MAX_PENDING_TEXT: usize = 4096;

/// What every connection shares.
pub struct Shared {
    pub stages: Stages,
    pub limits: Limits,
    /// 16 kHz samples one transcription may buffer (`wyoming.max_audio_s`).
    pub max_audio_samples: usize,
    pub connections: Arc<Semaphore>,
    /// The STT model's name and, once known, its languages.
    pub stt_model: Option<String>,
    pub stt_languages: Mutex<Option<Vec<String>>>,
    pub voice: Option<(String, Vec<String>)>,
    pub wake: Vec<WakeModel>,
}

impl Shared {
    async fn programs(&self) -> Programs {
        let stt = match (&self.stt_model, &self.stages.stt) {
            (Some(model), Some(worker)) => {
                let mut cached = self.stt_languages.lock().await;
                if cached.is_none()
                    && let Ok(job) = worker.submit(|e: &mut stt::Stt| e.languages())
                    && let Ok(Ok(languages)) = tokio::time::timeout(LANGUAGES_WAIT, job).await
                {
                    *cached = Some(languages);
                }
                let languages = cached.clone().unwrap_or_else(|| {
                    // Not loaded (yet): what the name says.
                    if model.contains(".en") {
                        vec!["en".to_string()]
                    } else {
                        Vec::new()
                    }
                });
                Some((model.clone(), languages))
            }
            _ => None,
        };
        Programs {
            stt,
            voice: self.voice.clone().filter(|_| self.stages.tts.is_some()),
            wake: self.wake.clone(),
        }
    }
}

/// Accepts connections until `stop`; each runs on a task of its own.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("wyoming: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                let (_, writer) = socket.into_split();
                let mut writer = BufWriter::new(writer);
                let _ = send_to(
                    &mut writer,
                    &error_event(
                        "busy",
                        "too many Wyoming connections (wyoming.max_connections); try again later",
                    ),
                )
                .await;
                return;
            };
            tracing::debug!(%peer, "wyoming: connection");
            Connection::new(socket, shared).run(stop).await;
            drop(permit);
            tracing::debug!(%peer, "wyoming: closed");
        });
    }
}

fn error_event(code: &str, text: impl Into<String>) -> Event {
    Event::with("error", json!({"text": text.into(), "code": code}))
}

async fn send_to(writer: &mut BufWriter<OwnedWriteHalf>, event: &Event) -> io::Result<()> {
    let bytes = event.encode();
    let write = async {
        writer.write_all(&bytes).await?;
        writer.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read for 30 s",
        )),
    }
}

/// What the next audio stream is for (`transcribe` or `detect` before `audio-start`).
enum Request {
    None,
    Transcribe { language: Option<String> },
    Detect { names: Option<Vec<String>> },
}

/// The audio stream in progress.
enum Stream {
    Idle,
    Transcribe {
        conv: To16k,
        samples: Vec<f32>,
        language: Option<String>,
    },
    Detect {
        conv: To16k,
        detectors: Option<Vec<WakeWord>>,
        detected: bool,
    },
    /// Refused with an error: its chunks are dropped until `audio-stop`.
    Discard,
}

struct Connection {
    shared: Arc<Shared>,
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: BufWriter<OwnedWriteHalf>,
    request: Request,
    stream: Stream,
    /// A `synthesize-start` stream: its sentences so far, voice and speaker.
    synth: Option<SynthStream>,
}

struct SynthStream {
    splitter: SentenceSplitter,
    pending: usize,
    voice: Option<String>,
    speaker: Option<u32>,
}

impl Connection {
    fn new(socket: TcpStream, shared: Arc<Shared>) -> Connection {
        let (reader, writer) = socket.into_split();
        Connection {
            shared,
            reader,
            writer: BufWriter::new(writer),
            request: Request::None,
            stream: Stream::Idle,
            synth: None,
        }
    }

    async fn send(&mut self, event: Event) -> io::Result<()> {
        send_to(&mut self.writer, &event).await
    }

    async fn error(&mut self, code: &str, text: impl Into<String>) -> io::Result<()> {
        let text = text.into();
        tracing::debug!(code, "wyoming: {text}");
        self.send(error_event(code, text)).await
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut decoder = Decoder::new(self.shared.limits);
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(event)) => {
                        if let Err(e) = self.handle(event).await {
                            tracing::debug!("wyoming: connection dropped: {e}");
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = self.error(e.code(), e.to_string()).await;
                        self.close().await;
                        return;
                    }
                }
            }
            let read = self.reader.read(&mut chunk);
            let n = tokio::select! {
                _ = stop.cancelled() => return,
                n = async {
                    if buf.is_empty() {
                        read.await
                    } else {
                        tokio::time::timeout(MID_EVENT_TIMEOUT, read)
                            .await
                            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "mid-event")))
                    }
                } => n,
            };
            match n {
                Ok(0) => {
                    if let Some(e) = decoder.at_end(&buf) {
                        let _ = self.error(e.code(), e.to_string()).await;
                    }
                    if !matches!(self.stream, Stream::Idle) || self.synth.is_some() {
                        tracing::debug!("wyoming: the client left in the middle of a stream");
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    let _ = self
                        .error(
                            "timeout",
                            format!(
                                "no byte for {} s in the middle of an event ({} bytes of it received); closing",
                                MID_EVENT_TIMEOUT.as_secs(),
                                buf.len()
                            ),
                        )
                        .await;
                    self.close().await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Ends the connection after a framing error: our side first, then what the client still
    /// sends is read and dropped (briefly, boundedly), so that the close is a FIN after the
    /// `error` rather than a reset that could destroy it.
    async fn close(&mut self) {
        let _ = self.writer.shutdown().await;
        let mut sink = [0u8; 16 * 1024];
        let drain = async {
            let mut left = 1024 * 1024usize;
            while left > 0 {
                match self.reader.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }

    async fn handle(&mut self, event: Event) -> io::Result<()> {
        match event.kind.as_str() {
            "describe" => {
                let programs = self.shared.programs().await;
                self.send(Event::with("info", info::info(&programs))).await
            }
            "ping" => {
                let text = event.data.get("text").cloned().unwrap_or(Value::Null);
                self.send(Event::with("pong", json!({ "text": text })))
                    .await
            }
            // One program of each kind: selecting it changes nothing.
            "select-program" => Ok(()),
            "transcribe" => {
                self.request = Request::Transcribe {
                    language: language(&event),
                };
                Ok(())
            }
            "detect" => {
                let names = event.data.get("names").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                });
                self.request = Request::Detect { names };
                Ok(())
            }
            "audio-start" => self.audio_start(&event).await,
            "audio-chunk" => self.audio_chunk(&event).await,
            "audio-stop" => self.audio_stop().await,
            "synthesize" => {
                if self.synth.is_some() {
                    // Sent inside a stream for older servers only (the protocol's rule).
                    return Ok(());
                }
                let Some(text) = event.str("text").map(str::to_string) else {
                    return self
                        .error(
                            "bad-event",
                            "synthesize: field \"text\" is missing or not a string",
                        )
                        .await;
                };
                let (voice, speaker) = match self.voice(&event) {
                    Ok(v) => v,
                    Err(m) => return self.error("bad-event", m).await,
                };
                self.speak(text, voice, speaker).await
            }
            "synthesize-start" => {
                let (voice, speaker) = match self.voice(&event) {
                    Ok(v) => v,
                    Err(m) => return self.error("bad-event", m).await,
                };
                self.synth = Some(SynthStream {
                    splitter: SentenceSplitter::new(),
                    pending: 0,
                    voice,
                    speaker,
                });
                Ok(())
            }
            "synthesize-chunk" => {
                let Some(text) = event.str("text").map(str::to_string) else {
                    return self
                        .error(
                            "bad-event",
                            "synthesize-chunk: field \"text\" is missing or not a string",
                        )
                        .await;
                };
                let Some(s) = self.synth.as_mut() else {
                    return self
                        .error("out-of-order", "synthesize-chunk before synthesize-start")
                        .await;
                };
                let mut sentences = s.splitter.push(&text);
                s.pending += text.len();
                if sentences.is_empty() && s.pending > MAX_PENDING_TEXT {
                    // No sentence end in sight: speak what there is rather than hold it.
                    sentences.extend(s.splitter.finish());
                }
                if !sentences.is_empty() {
                    s.pending = 0;
                }
                let (voice, speaker) = (s.voice.clone(), s.speaker);
                for sentence in sentences {
                    self.speak(sentence, voice.clone(), speaker).await?;
                }
                Ok(())
            }
            "synthesize-stop" => {
                let Some(mut s) = self.synth.take() else {
                    return self
                        .error("out-of-order", "synthesize-stop before synthesize-start")
                        .await;
                };
                if let Some(rest) = s.splitter.finish() {
                    self.speak(rest, s.voice, s.speaker).await?;
                }
                self.send(Event::new("synthesize-stopped")).await
            }
            other => {
                let other = other.chars().take(64).collect::<String>();
                self.error(
                    "unknown-event",
                    format!(
                        "unknown event type {other:?}; sotad handles describe, ping, transcribe, detect, audio-start, audio-chunk, audio-stop, synthesize, synthesize-start, synthesize-chunk and synthesize-stop"
                    ),
                )
                .await
            }
        }
    }

    /// A `synthesize` event's voice name (the configured voice: `None`) and numeric speaker.
    fn voice(&self, event: &Event) -> Result<(Option<String>, Option<u32>), String> {
        let Some(voice) = event.data.get("voice").filter(|v| !v.is_null()) else {
            return Ok((None, None));
        };
        let name = voice.get("name").and_then(Value::as_str);
        let default = self.shared.voice.as_ref().map(|(n, _)| n.as_str());
        let name = name.filter(|n| Some(*n) != default).map(str::to_string);
        let speaker = match voice.get("speaker") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.parse::<u32>().map_err(|_| {
                format!(
                    "{}: voice.speaker {s:?} is not a speaker id (a number)",
                    event.kind
                )
            })?),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(_) => return Err(format!("{}: voice.speaker is not a speaker id", event.kind)),
        };
        Ok((name, speaker))
    }

    async fn audio_start(&mut self, event: &Event) -> io::Result<()> {
        if !matches!(self.stream, Stream::Idle) {
            self.stream = Stream::Idle;
            self.error(
                "out-of-order",
                "audio-start while a stream is open: the open stream is dropped (send audio-stop to end one)",
            )
            .await?;
        }
        let format = match Format::of(event) {
            Ok(f) => f,
            Err(m) => {
                self.stream = Stream::Discard;
                return self.error("bad-event", m).await;
            }
        };
        let conv = match To16k::new(format) {
            Ok(c) => c,
            Err(m) => {
                self.stream = Stream::Discard;
                return self.error("bad-event", format!("audio-start: {m}")).await;
            }
        };
        match std::mem::replace(&mut self.request, Request::None) {
            // Audio without a request is transcribed (as the Wyoming ASR servers do).
            Request::None | Request::Transcribe { .. } if self.shared.stages.stt.is_none() => {
                self.stream = Stream::Discard;
                self.error(
                    "unavailable",
                    "speech-to-text is off: configuration key `stt.model` is empty",
                )
                .await
            }
            Request::None => {
                self.stream = Stream::Transcribe {
                    conv,
                    samples: Vec::new(),
                    language: None,
                };
                Ok(())
            }
            Request::Transcribe { language } => {
                self.stream = Stream::Transcribe {
                    conv,
                    samples: Vec::new(),
                    language,
                };
                Ok(())
            }
            Request::Detect { names } => match detectors(&self.shared.clone(), names).await {
                Ok(detectors) => {
                    self.stream = Stream::Detect {
                        conv,
                        detectors: Some(detectors),
                        detected: false,
                    };
                    Ok(())
                }
                Err(m) => {
                    self.stream = Stream::Discard;
                    self.error("unavailable", m).await
                }
            },
        }
    }

    async fn audio_chunk(&mut self, event: &Event) -> io::Result<()> {
        let expected = match &self.stream {
            Stream::Idle => {
                return self
                    .error("out-of-order", "audio-chunk before audio-start")
                    .await;
            }
            Stream::Discard => return Ok(()),
            Stream::Transcribe { conv, .. } | Stream::Detect { conv, .. } => conv.format(),
        };
        match Format::of(event) {
            Ok(f) if f == expected => {}
            Ok(f) => {
                self.stream = Stream::Discard;
                return self
                    .error(
                        "bad-event",
                        format!("audio-chunk: format {f:?} differs from audio-start's {expected:?}; the stream is dropped"),
                    )
                    .await;
            }
            Err(m) => {
                self.stream = Stream::Discard;
                return self.error("bad-event", m).await;
            }
        }
        let max = self.shared.max_audio_samples;
        match &mut self.stream {
            Stream::Transcribe { conv, samples, .. } => {
                if let Err(m) = conv.push(&event.payload, samples) {
                    self.stream = Stream::Discard;
                    return self.error("invalid-audio", m).await;
                }
                if samples.len() > max {
                    self.stream = Stream::Discard;
                    return self
                        .error(
                            "too-large",
                            format!(
                                "more than {} s of audio to transcribe (wyoming.max_audio_s); the stream is dropped",
                                max / 16_000
                            ),
                        )
                        .await;
                }
                Ok(())
            }
            Stream::Detect {
                conv,
                detectors,
                detected,
            } => {
                let mut mono = Vec::new();
                if let Err(m) = conv.push(&event.payload, &mut mono) {
                    self.stream = Stream::Discard;
                    return self.error("invalid-audio", m).await;
                }
                let pcm: Vec<i16> = mono
                    .iter()
                    .map(|s| (s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16)
                    .collect();
                let Some(mut ds) = detectors.take() else {
                    return Ok(());
                };
                let (ds, found) = tokio::task::spawn_blocking(move || {
                    let mut found = Vec::new();
                    for d in &mut ds {
                        let name = d
                            .model()
                            .path()
                            .and_then(|p| p.file_stem())
                            .and_then(|s| s.to_str())
                            .unwrap_or_default()
                            .to_string();
                        for hit in d.process(&pcm) {
                            found.push((name.clone(), hit.time.as_millis() as u64));
                        }
                    }
                    (ds, found)
                })
                .await
                .map_err(|_| io::Error::other("the wake word detector panicked"))?;
                *detectors = Some(ds);
                if !found.is_empty() {
                    *detected = true;
                }
                for (name, ms) in found {
                    self.send(Event::with(
                        "detection",
                        json!({"name": name, "timestamp": ms, "speaker": null}),
                    ))
                    .await?;
                }
                Ok(())
            }
            Stream::Idle | Stream::Discard => Ok(()),
        }
    }

    async fn audio_stop(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.stream, Stream::Idle) {
            Stream::Idle => {
                self.error("out-of-order", "audio-stop before audio-start")
                    .await
            }
            Stream::Discard => Ok(()),
            Stream::Detect { detected, .. } => {
                if detected {
                    Ok(())
                } else {
                    self.send(Event::new("not-detected")).await
                }
            }
            Stream::Transcribe {
                conv,
                mut samples,
                language,
            } => {
                if let Err(m) = conv.finish(&mut samples) {
                    return self.error("invalid-audio", m).await;
                }
                self.transcribe(samples, language).await
            }
        }
    }

    async fn transcribe(&mut self, samples: Vec<f32>, language: Option<String>) -> io::Result<()> {
        let Some(worker) = self.shared.stages.stt.clone() else {
            return self
                .error(
                    "unavailable",
                    "speech-to-text is off: configuration key `stt.model` is empty",
                )
                .await;
        };
        let job = worker.submit(move |e: &mut stt::Stt| {
            e.transcribe_checked(
                &samples,
                language.as_deref(),
                stt::Task::Transcribe,
                None,
                None,
                None,
            )
        });
        let result = match job {
            Ok(done) => done.await,
            Err(e) => Err(e),
        };
        let t = match result {
            Err(e) => return self.error(submit_code(&e), e.to_string()).await,
            Ok(Err(e)) => return self.error(stage_code(&e), e.message).await,
            Ok(Ok(t)) => t,
        };
        let text = t.text.trim().to_string();
        self.send(Event::with(
            "transcript-start",
            json!({"language": t.language}),
        ))
        .await?;
        for s in &t.segments {
            let piece = s.text.trim();
            if !piece.is_empty() {
                self.send(Event::with("transcript-chunk", json!({"text": piece})))
                    .await?;
            }
        }
        self.send(Event::with(
            "transcript",
            json!({"text": text, "language": t.language}),
        ))
        .await?;
        self.send(Event::new("transcript-stop")).await
    }

    /// Synthesizes `text`: `audio-start` with the first audio, `audio-chunk`s as they come,
    /// `audio-stop`; an `error` if nothing could be said.
    async fn speak(
        &mut self,
        text: String,
        voice: Option<String>,
        speaker: Option<u32>,
    ) -> io::Result<()> {
        let Some(worker) = self.shared.stages.tts.clone() else {
            return self
                .error(
                    "unavailable",
                    "text-to-speech is off: configuration key `tts.voice` is empty",
                )
                .await;
        };
        let job = tts::Say {
            text,
            voice,
            speaker,
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel::<tts::Chunk>(capacity::AUDIO);
        let cancel = Arc::new(AtomicBool::new(false));
        let engine_cancel = cancel.clone();
        let done =
            match worker.submit(move |e: &mut tts::Tts| e.say(&job, &tx, &engine_cancel, || {})) {
                Ok(done) => done,
                Err(e) => return self.error(submit_code(&e), e.to_string()).await,
            };
        let writer = &mut self.writer;
        let forward = async move {
            let mut rx = rx;
            let mut format = None;
            while let Some(chunk) = rx.recv().await {
                let data = json!({"rate": chunk.sample_rate, "width": 2, "channels": 1});
                if format.is_none() {
                    format = Some(data.clone());
                    send_to(writer, &Event::with("audio-start", data.clone())).await?;
                }
                for piece in chunk.samples.chunks(SAMPLES_PER_CHUNK) {
                    let mut e = Event::with("audio-chunk", data.clone());
                    e.payload = to_i16_bytes(piece);
                    send_to(writer, &e).await?;
                }
            }
            Ok::<_, io::Error>(format)
        };
        let (result, sent) = tokio::join!(done, async {
            let r = forward.await;
            if r.is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
            r
        });
        let format = sent?;
        match result {
            Err(e) => self.error(submit_code(&e), e.to_string()).await,
            Ok(Err(e)) => {
                if format.is_some() {
                    self.send(Event::new("audio-stop")).await?;
                }
                self.error(stage_code(&e), e.message).await
            }
            Ok(Ok(_)) => match format {
                Some(_) => self.send(Event::new("audio-stop")).await,
                None => self.error("tts-failed", "nothing was synthesized").await,
            },
        }
    }
}

/// Fresh detectors for the wake words named (all when `None`), loaded off the runtime.
async fn detectors(shared: &Shared, names: Option<Vec<String>>) -> Result<Vec<WakeWord>, String> {
    let norm = |s: &str| s.to_lowercase().replace([' ', '-'], "_");
    let wanted: Vec<WakeModel> = shared
        .wake
        .iter()
        .filter(|m| match &names {
            None => true,
            Some(names) if names.is_empty() => true,
            Some(names) => names
                .iter()
                .any(|n| norm(n) == norm(&m.name) || norm(n) == norm(&m.phrase)),
        })
        .cloned()
        .collect();
    if wanted.is_empty() {
        let installed: Vec<&str> = shared.wake.iter().map(|m| m.name.as_str()).collect();
        return Err(match names {
            Some(n) => format!(
                "detect: no installed wake word matches {n:?}; installed: {installed:?} (models.dir/microwakeword)"
            ),
            None => "detect: no wake word is installed (models.dir/microwakeword/*.json)".into(),
        });
    }
    tokio::task::spawn_blocking(move || {
        wanted
            .iter()
            .map(|m| WakeWord::load(&m.path).map_err(|e| format!("wake word {}: {e}", m.name)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| "loading the wake word panicked".to_string())?
}

/// `transcribe`'s language: `en-US` → `en`; empty → the configured one.
fn language(event: &Event) -> Option<String> {
    let l = event.str("language")?.trim();
    if l.is_empty() {
        return None;
    }
    let primary = l.split(['-', '_']).next().unwrap_or(l);
    Some(primary.to_lowercase())
}

fn submit_code(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::Busy(_) => "busy",
        SubmitError::Unavailable(_) => "unavailable",
        SubmitError::Crashed(_) => "internal",
    }
}

fn stage_code(e: &StageError) -> &'static str {
    match e.kind {
        StageErrorKind::InvalidInput => "invalid-input",
        StageErrorKind::InvalidAudio => "invalid-audio",
        StageErrorKind::Unavailable => "unavailable",
        StageErrorKind::ContextFull => "invalid-input",
        StageErrorKind::Internal => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_reduced_to_their_primary_subtag() {
        let e = |l: &str| Event::with("transcribe", json!({ "language": l }));
        assert_eq!(language(&e("en-US")), Some("en".into()));
        assert_eq!(language(&e("de_DE")), Some("de".into()));
        assert_eq!(language(&e("")), None);
        assert_eq!(language(&Event::new("transcribe")), None);
    }
}
