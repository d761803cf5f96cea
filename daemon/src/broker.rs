//! The embedded MQTT broker (rumqttd), started when the configuration names no broker.
//!
//! It makes `sotad run` work on a bare board: integrators can point a client at it at once.
//! It is a convenience, not the production setting: it keeps nothing on disk, has no
//! authentication, and listens on loopback unless `broker.listen` says otherwise.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttd::{Broker, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on its own threads and returns once it accepts connections.
pub fn start(listen: SocketAddr, max_packet_bytes: usize) -> anyhow::Result<()> {
    // rumqttd only logs a failed bind from its server thread; check first so that the
    // error reaches the user with the configuration key that fixes it.
    TcpListener::bind(listen).with_context(|| {
        format!(
            "the embedded broker cannot listen on {listen} (configuration key `broker.listen`); \
             is another broker running there? Then set `mqtt.host` to use it instead"
        )
    })?;

    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_packet_bytes + 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "embedded".to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: RouterConfig {
            max_connections: 256,
            max_outgoing_packet_count: 200,
            // Each topic filter keeps up to count x size bytes of recent messages in memory.
            max_segment_size: (max_packet_bytes + 1024).max(1 << 20),
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };

    std::thread::Builder::new()
        .name("broker".to_string())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("starting the embedded broker thread")?;

    // Wait until the port is taken, i.e. the broker listens. A bind probe instead of a
    // connect keeps rumqttd from logging an aborted connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpListener::bind(listen).is_ok() {
        if Instant::now() > deadline {
            bail!("the embedded broker did not start listening on {listen} within 5 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(%listen, "embedded broker listening");
    Ok(())
}
