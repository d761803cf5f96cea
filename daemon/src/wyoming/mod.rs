//! The Wyoming protocol server (Home Assistant's protocol for speech services): speech to
//! text, text to speech (also streamed) and wake words over TCP, on the same engine workers
//! and queues as MQTT, announced by zeroconf as `_wyoming._tcp.local.`.
//!
//! - `frame`: the event framing (header line, data, payload) as a pure codec with limits.
//! - `audio`: PCM of any rate, width and channel count to 16 kHz mono.
//! - `info`: the `info` answer to `describe`, and the wake words installed.
//! - `server`: the listener and one task per connection.
//! - `zeroconf`: the mDNS announcement.
//!
//! Off unless `wyoming.enabled`; docs/protocol.md ("Wyoming") lists the events, limits and
//! error codes.

pub mod audio;
pub mod frame;
pub mod info;
pub mod server;
pub mod zeroconf;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::stages::Stages;

/// The running server: the listener's task and, if on, the zeroconf announcement (withdrawn
/// when this is dropped).
pub struct Running {
    pub local_addr: SocketAddr,
    pub announcement: Option<zeroconf::Announcement>,
}

/// Binds `wyoming.listen` and serves until `stop`; `None` when `wyoming.enabled` is false.
/// A port that cannot be bound is a start-up error naming the key.
pub async fn start(
    config: &Config,
    stages: Stages,
    stop: CancellationToken,
) -> anyhow::Result<Option<Running>> {
    let w = &config.wyoming;
    if !w.enabled {
        return Ok(None);
    }
    let listen: SocketAddr = w
        .listen
        .parse()
        .with_context(|| format!("configuration key `wyoming.listen` = {:?}", w.listen))?;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!(
            "configuration key `wyoming.listen` = {:?}: cannot listen there",
            w.listen
        )
    })?;
    let local_addr = listener.local_addr()?;
    let models = config.models_dir();
    let voice = config.model_path(&config.tts.voice).map(|p| {
        let name = p
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .trim_end_matches(".onnx")
            .to_string();
        (name, info::voice_languages(&p))
    });
    let stt_model = config.model_path(&config.stt.model).map(|p| {
        p.file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_string()
    });
    let wake = info::wake_models(&models.join("microwakeword"));
    let shared = Arc::new(server::Shared {
        stages,
        limits: frame::Limits::default(),
        max_audio_samples: w.max_audio_s as usize * 16_000,
        connections: Arc::new(Semaphore::new(w.max_connections)),
        stt_model,
        stt_languages: Mutex::new(None),
        voice,
        wake,
    });
    let name = w.instance_name(&config.device_id());
    let announcement = if !w.zeroconf {
        None
    } else if local_addr.ip().is_loopback() {
        tracing::warn!(
            listen = %local_addr,
            "wyoming: zeroconf announces nothing for a loopback address (set wyoming.listen to a reachable address, or wyoming.zeroconf = false)"
        );
        None
    } else {
        match zeroconf::announce(&name, local_addr) {
            Ok(a) => Some(a),
            Err(e) => {
                // The server still works by host and port.
                tracing::warn!("wyoming: {e:#}");
                None
            }
        }
    };
    tracing::info!(
        listen = %local_addr,
        zeroconf = announcement.as_ref().map(|a| a.fullname()).unwrap_or("off"),
        wake_words = shared.wake.len(),
        "wyoming server listening"
    );
    tokio::spawn(server::serve(listener, shared, stop));
    Ok(Some(Running {
        local_addr,
        announcement,
    }))
}
