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

use crate::config::Config;

/// What the configuration asks of the embedded broker that it cannot give, as warnings for
/// the log at start: it has no authentication, so listening beyond loopback opens the device to
/// anyone on the network, and `mqtt` credentials have no effect on it. Empty with `mqtt.host` set.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    if !config.uses_embedded_broker() {
        return found;
    }
    let listen = &config.broker.listen;
    match listen.parse::<SocketAddr>() {
        Ok(addr) if !addr.ip().is_loopback() => found.push(format!(
            "the embedded broker listens on {listen} (configuration key `broker.listen`), beyond loopback, \
             and it has no authentication: anyone who reaches that address can send requests to sotad \
             (make it speak, listen, mute) and read its replies. Keep `broker.listen` on 127.0.0.1, or \
             run a broker with credentials (mosquitto) and set `mqtt.host`"
        )),
        _ => {}
    }
    let m = &config.mqtt;
    let set: Vec<&str> = [
        ("mqtt.username", m.username.is_empty()),
        ("mqtt.password", m.password.is_empty()),
        ("mqtt.password_file", m.password_file.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(key, _)| key)
    .collect();
    if !set.is_empty() {
        found.push(format!(
            "{} {} no effect: `mqtt.host` is empty, so sotad uses its embedded broker, which has no \
             authentication and accepts every client. Set `mqtt.host` to a broker that checks \
             credentials, or remove {}",
            set.join(", "),
            if set.len() == 1 { "has" } else { "have" },
            if set.len() == 1 { "it" } else { "them" },
        ));
    }
    found
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sotad.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load_with_env(crate::config::FileLayer::Explicit(path), Default::default()).unwrap()
    }

    #[test]
    fn warns_about_a_listener_beyond_loopback_and_unused_credentials() {
        assert!(warnings(&config("")).is_empty());
        let open = warnings(&config("[broker]\nlisten = \"0.0.0.0:1883\"\n"));
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(open[0].contains("broker.listen") && open[0].contains("no authentication"));
        let creds = warnings(&config("[mqtt]\nusername = \"u\"\npassword = \"p\"\n"));
        assert_eq!(creds.len(), 1, "{creds:?}");
        assert!(creds[0].contains("mqtt.username, mqtt.password have no effect"));
        // A real broker: none of this applies.
        let real = warnings(&config(
            "[mqtt]\nhost = \"broker\"\nusername = \"u\"\n[broker]\nlisten = \"0.0.0.0:1883\"\n",
        ));
        assert!(real.is_empty(), "{real:?}");
    }
}
