//! sotad: an on-device voice daemon driven over MQTT.
//!
//! # Layout
//! - `config`: layered configuration, checked at start-up.
//! - `broker`: the embedded MQTT broker used when no broker is configured.
//! - `mqtt`: topics, payloads, request parsing, the connection task and every publication.
//! - `service`: runs requests and answers them.
//! - `stages`: the engines on their worker threads.
//! - `voice`: the voice loop, from microphone to speaker.
//! - `audio`: ALSA capture and playback.
//! - `telemetry`: counters and the periodic telemetry sample.
//! - `systemd`: readiness, watchdog and status notifications.
//! - `http`: the OpenAI-compatible HTTP API (`[http]`, off by default).
//!
//! [`run`] wires them together; `main.rs` only parses the command line and passes a shutdown
//! future (SIGTERM/SIGINT), so tests can run the daemon in-process with their own.

pub mod audio;
pub mod broker;
pub mod config;
pub mod fatal;
pub mod heap;
pub mod http;
pub mod mqtt;
pub mod service;
pub mod stages;
pub mod systemd;
pub mod telemetry;
pub mod voice;
pub mod wyoming;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::mqtt::dedup::RecentIds;
use crate::mqtt::outbound::OFFLINE;
use crate::mqtt::payloads::{
    AudioInfo, BuildInfo, Capabilities, EngineInfo, Limits, PROTOCOL_VERSION,
};
use crate::mqtt::{Backoff, Command, Connection, Publisher, Topics};
use crate::service::Service;
use crate::stages::Stages;
use crate::telemetry::{Metrics, Sampler};
use crate::voice::turn::{Turns, TurnsConfig};

/// The capacity of every fixed-size queue between the daemon's tasks and threads, chosen here
/// and nowhere else; what happens when each is full is the backpressure table in
/// ARCHITECTURE.md. The configurable ones come from the config: `service.request_queue`
/// (connection → service, and each engine worker's job queue), `audio.frame_queue` (capture →
/// VAD) and `audio.playback_queue` (→ player).
pub mod capacity {
    /// Replies owed by the connection task (`busy`, oversized and ignored messages: an error,
    /// then the acknowledgement) waiting for its replier task, about 300 bytes each; past it, a
    /// reply gets a task of its own (a flood of turned-away messages is not a flood of tasks).
    pub const REPLIES: usize = 1024;
    /// rumqttc's request channel (anyone → the event loop). Small: the event loop drains it
    /// continuously, and telemetry (QoS 0) is dropped rather than queued when it is full.
    pub const MQTT_REQUESTS: usize = 64;
    /// Text pieces of a streaming `llm/ask` waiting for `llm/tokens` before the stream starts
    /// dropping them (the reply still has the whole text).
    pub const TOKENS: usize = 256;
    /// Text pieces of a spoken answer waiting for the sentence splitter: larger than
    /// [`TOKENS`], since a piece waits there while the sentence before it is synthesized.
    pub const SPOKEN_TOKENS: usize = TOKENS * 4;
    /// Pieces of synthesized audio waiting to go out (MQTT, player) before the TTS engine
    /// waits: audio is never dropped.
    pub const AUDIO: usize = 4;
    /// Utterances waiting for a turn: the newest question matters, older ones are stale.
    pub const UTTERANCES: usize = 2;
    /// The one-off CLI commands' streams (`sotad chat` to the terminal, `sotad say` to its
    /// WAV file, which collects the audio once synthesis ends): large, so nothing waits.
    pub const CLI_STREAM: usize = 1024;
}

/// How long a daemon that stood down for a newer one with its device id waits before it looks
/// again (doubling up to the maximum): each look costs the other daemon one reconnect.
const STAND_DOWN_MIN: Duration = Duration::from_secs(60);
const STAND_DOWN_MAX: Duration = Duration::from_secs(15 * 60);

/// How long the farewell (`offline`, then DISCONNECT) may take once work is done.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

fn capabilities(config: &Config, device_id: &str) -> Capabilities {
    let mut features = vec!["ping", "telemetry", "dedup_by_id"];
    if config.mqtt.persistent_session {
        features.push("persistent_session");
    }
    if config.uses_embedded_broker() {
        features.push("embedded_broker");
    }
    if config.mqtt.tls.enabled {
        features.push("tls");
    }
    Capabilities {
        version: env!("CARGO_PKG_VERSION"),
        protocol: PROTOCOL_VERSION,
        device_id: device_id.to_string(),
        commands: Command::ALL.iter().map(|c| c.name()).collect(),
        engines: engines(config),
        audio: AudioInfo {
            capture: (!config.audio.capture_device.is_empty())
                .then(|| config.audio.capture_device.clone()),
            playback: (!config.audio.playback_device.is_empty())
                .then(|| config.audio.playback_device.clone()),
        },
        features,
        build: BuildInfo {
            target_arch: std::env::consts::ARCH,
            target_os: std::env::consts::OS,
            cpu_features: cpu_features(),
        },
        limits: Limits {
            max_packet_bytes: config.mqtt.max_packet_bytes,
            max_request_bytes: config.mqtt.max_request_bytes,
        },
    }
}

/// The configured engines and their models (whether they loaded shows in telemetry).
fn engines(config: &Config) -> Vec<EngineInfo> {
    let mut found = Vec::new();
    for (stage, engine, value) in [
        ("stt", "whisper", &config.stt.model),
        ("llm", "gguf", &config.llm.model),
        ("tts", "piper", &config.tts.voice),
    ] {
        if let Some(path) = config.model_path(value) {
            found.push(EngineInfo {
                stage,
                engine: engine.to_string(),
                model: path.display().to_string(),
            });
        }
    }
    found
}

/// SIMD features the inference kernels care about, detected at run time (capabilities,
/// `sotad bench`).
pub fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            found.push("avx");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            found.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            found.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            found.push("avx512vnni");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            found.push("dotprod");
        }
        if std::arch::is_aarch64_feature_detected!("i8mm") {
            found.push("i8mm");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            found.push("fp16");
        }
    }
    found
}

/// Runs the daemon until `shutdown` completes, then stops in order:
/// stop taking requests, let in-flight ones finish (bounded by
/// `service.shutdown_timeout_secs`), publish `offline`, disconnect.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let device_id = config.device_id();
    let topics = Topics::new(&config.mqtt.prefix, &device_id);

    for warning in broker::warnings(&config) {
        tracing::warn!("{warning}");
    }
    let (host, port) = if config.uses_embedded_broker() {
        let listen: SocketAddr = config
            .broker
            .listen
            .parse()
            .context("configuration key `broker.listen`")?;
        broker::start(listen, config.mqtt.max_packet_bytes)?;
        (listen.ip().to_string(), listen.port())
    } else {
        (config.mqtt.host.clone(), config.mqtt.port)
    };

    // Engines load on their own threads while MQTT comes up.
    let stages = Stages::spawn(&config);
    let options = mqtt::connection::options(&config, &topics, &host, port)?;
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, capacity::MQTT_REQUESTS);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(config.mqtt.connect_timeout_secs);
    // Small request/reply messages: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms.
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let publisher = Publisher::new(client.clone(), topics.clone(), metrics.clone());
    let voice_control = voice::control(&config);
    let speaker = (!config.audio.playback_device.is_empty())
        .then(|| {
            voice::speaker::spawn(
                config.audio.playback_config(),
                config.audio.playback_queue,
                voice_control.playing.clone(),
                metrics.clone(),
            )
        })
        .flatten();
    let turns = Turns::new(
        TurnsConfig::new(&config),
        stages.clone(),
        publisher.clone(),
        metrics.clone(),
        speaker,
    );
    let voice = voice::start(&config, voice_control.clone(), turns.clone());
    let capabilities = Arc::new(serde_json::to_vec(&capabilities(&config, &device_id))?);

    let intake = CancellationToken::new();
    // The Wyoming server (off by default): the same stages, its own listener.
    let wyoming = wyoming::start(&config, stages.clone(), intake.clone()).await?;
    let stop_connection = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (inbound_tx, inbound_rx) = mpsc::channel(config.service.request_queue);

    let intent_names: Vec<String> = config
        .intents
        .set
        .iter()
        .flat_map(|set| set.intents.iter().map(|i| i.name.clone()))
        .collect();
    let discovery = Arc::new(mqtt::discovery::Discovery::new(
        config.homeassistant.discovery,
        &config.homeassistant.prefix,
        &topics,
        &device_id,
        &intent_names,
        &[
            config.voice.wake_words.clone(),
            config.voice.stop_words.clone(),
        ]
        .concat(),
    ));
    let connection = Connection {
        eventloop,
        publisher: publisher.clone(),
        capabilities,
        discovery,
        inbound: inbound_tx,
        metrics: metrics.clone(),
        backoff: Backoff::new(
            Duration::from_millis(config.mqtt.reconnect_min_ms),
            Duration::from_millis(config.mqtt.reconnect_max_ms),
        ),
        intake: intake.clone(),
        stop: stop_connection.clone(),
        max_packet_bytes: config.mqtt.max_packet_bytes,
        instance: mqtt::payloads::Instance::this_process(config::hostname()),
        stand_down: Backoff::new(STAND_DOWN_MIN, STAND_DOWN_MAX),
        link: Default::default(),
    };
    let connection_task = tokio::spawn(connection.run());

    let service = Service {
        inbound: inbound_rx,
        publisher: publisher.clone(),
        metrics: metrics.clone(),
        recent: RecentIds::new(service::REMEMBERED_IDS),
        max_request_bytes: config.mqtt.max_request_bytes,
        max_packet_bytes: config.mqtt.max_packet_bytes,
        stages: stages.clone(),
        turns: turns.clone(),
        voice: voice_control.clone(),
        device_id: device_id.clone(),
        tracker: tracker.clone(),
        intake: intake.clone(),
        persistent_session: config.mqtt.persistent_session,
    };
    let service_task = tokio::spawn(service.run());

    // The HTTP API beside MQTT, on the same stages; it stops accepting with the intake.
    let mut http_task = None;
    if config.http.enabled {
        let (addr, task) =
            http::start(&config, stages.clone(), metrics.clone(), intake.clone()).await?;
        tracing::info!(listen = %addr, auth = !config.http.api_key.is_empty(), "HTTP API listening");
        http_task = Some(task);
    }

    let telemetry_task = tokio::spawn(telemetry_loop(
        publisher.clone(),
        metrics.clone(),
        Sampler::new(config.telemetry.thermal_zones.clone()),
        stages.clone(),
        voice_control.clone(),
        Duration::from_secs(config.telemetry.interval_secs),
        intake.clone(),
    ));

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        device_id,
        broker = format!("{host}:{port}"),
        embedded_broker = config.uses_embedded_broker(),
        topics = topics.base(),
        "sotad ready"
    );
    systemd::ready(&format!("serving {}", topics.base()));

    let watchdog = systemd::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watchdog_tick.tick(), if watchdog.is_some() => systemd::watchdog_ping(),
        }
    }

    // Shutdown, in order.
    let timeout = Duration::from_secs(config.service.shutdown_timeout_secs);
    tracing::info!(
        timeout_s = timeout.as_secs(),
        "stopping: no new requests; finishing in-flight work"
    );
    systemd::stopping();
    intake.cancel();
    let _ = service_task.await;
    tracker.close();
    // In-flight MQTT and HTTP requests share the one bound.
    let in_flight = async {
        tracker.wait().await;
        if let Some(task) = http_task.as_mut() {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(timeout, in_flight).await.is_err() {
        if let Some(task) = &http_task {
            task.abort();
        }
        tracing::warn!(
            timeout_s = timeout.as_secs(),
            "in-flight requests did not finish in time; cancelled"
        );
    }
    let _ = telemetry_task.await;
    drop(voice);
    // Withdraws the zeroconf announcement; the listener stopped with `intake`.
    drop(wyoming);

    // Farewell: the retained `offline` first, then DISCONNECT (which keeps the broker from
    // publishing the will; the status already says offline).
    let farewell = async {
        publisher.status(OFFLINE).await;
        let _ = client.disconnect().await;
    };
    if tokio::time::timeout(FAREWELL_TIMEOUT, farewell)
        .await
        .is_err()
    {
        tracing::warn!(
            "broker unreachable; could not publish offline (the will reports it once the broker notices)"
        );
    }
    if tokio::time::timeout(FAREWELL_TIMEOUT, connection_task)
        .await
        .is_err()
    {
        stop_connection.cancel();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn telemetry_loop(
    publisher: Publisher,
    metrics: Arc<Metrics>,
    mut sampler: Sampler,
    stages: Stages,
    voice: Arc<voice::VoiceControl>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        stages.report(&metrics);
        let mut sample = sampler.sample(&metrics);
        sample.voice = Some(voice.sample());
        publisher.telemetry(&sample);
    }
}
