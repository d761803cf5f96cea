//! `sotad demo`: the daemon on its embedded broker, exercised by a client in the same
//! process, with a plain account of what went over MQTT.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sotad::config::Config;
use tokio::sync::oneshot;

pub async fn run(mut config: Config, seconds: u64) -> anyhow::Result<()> {
    // Always the embedded broker, on a free loopback port so the demo never collides with a
    // broker already running on 1883.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    config.mqtt.host.clear();
    config.mqtt.tls.enabled = false;
    config.broker.listen = format!("127.0.0.1:{port}");
    config.telemetry.interval_secs = 1;
    let device = config.device_id();
    let base = format!("{}/{}", config.mqtt.prefix, device);

    println!("sotad {} demo", env!("CARGO_PKG_VERSION"));
    println!("  embedded broker on 127.0.0.1:{port}, topics under {base}/");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(sotad::run(config, async {
        let _ = stop_rx.await;
    }));

    // The client retries until the daemon's broker is up.
    let mut options = MqttOptions::new("sotad-demo-client", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 16);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    client
        .subscribe(format!("{base}/#"), QoS::AtLeastOnce)
        .await?;

    let deadline = Instant::now() + Duration::from_secs(seconds.max(2) + 10);
    let mut ping_sent: Option<Instant> = None;
    let mut telemetry_seen = 0u32;
    let mut stop_tx = Some(stop_tx);
    let mut offline_seen = false;
    let mut telemetry_until: Option<Instant> = None;
    while Instant::now() < deadline {
        let event = match tokio::time::timeout(Duration::from_millis(500), events.poll()).await {
            Ok(Ok(event)) => event,
            Ok(Err(_)) if ping_sent.is_none() => {
                if daemon.is_finished() {
                    return Err(daemon
                        .await?
                        .err()
                        .unwrap_or_else(|| anyhow::anyhow!("daemon exited")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(Err(e)) => return Err(e).context("demo client lost the embedded broker"),
            Err(_) => continue,
        };
        let Event::Incoming(Packet::Publish(p)) = event else {
            continue;
        };
        let suffix = p
            .topic
            .strip_prefix(&base)
            .unwrap_or(&p.topic)
            .trim_start_matches('/');
        let text = String::from_utf8_lossy(&p.payload);
        match suffix {
            "status" => {
                println!("  status        {text}");
                if text == "online" && ping_sent.is_none() {
                    ping_sent = Some(Instant::now());
                    client
                        .publish(
                            format!("{base}/ping"),
                            QoS::AtLeastOnce,
                            false,
                            r#"{"id":"demo-1"}"#,
                        )
                        .await?;
                }
                if text == "offline" {
                    offline_seen = true;
                    break;
                }
            }
            "capabilities" => println!("  capabilities  {text}"),
            "pong" => {
                let rtt = ping_sent
                    .map(|t| t.elapsed().as_secs_f64() * 1000.0)
                    .unwrap_or(0.0);
                println!("  pong          {text}  (round trip {rtt:.1} ms)");
                telemetry_until = Some(Instant::now() + Duration::from_secs(seconds));
            }
            "telemetry" => {
                telemetry_seen += 1;
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                println!(
                    "  telemetry     uptime {:.1} s, rss {:.1} MiB, cpu {:.1} %, mqtt connected {}",
                    v["uptime_s"].as_f64().unwrap_or(0.0),
                    v["process"]["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                    v["process"]["cpu_percent"].as_f64().unwrap_or(0.0),
                    v["mqtt"]["connected"]
                );
            }
            "ping" => println!("  ping          {text}  (sent by the demo client)"),
            "error" => println!("  error         {text}"),
            _ => println!("  {suffix:<13} {text}"),
        }
        if let Some(until) = telemetry_until {
            if Instant::now() >= until && telemetry_seen > 0 {
                if let Some(tx) = stop_tx.take() {
                    println!("  stopping the daemon (as SIGTERM would)");
                    let _ = tx.send(());
                }
            }
        }
    }
    daemon.await??;
    if ping_sent.is_none() || telemetry_seen == 0 || !offline_seen {
        bail!(
            "the demo did not see everything it expected (online and ping: {}, telemetry: {telemetry_seen}, offline: {offline_seen})",
            ping_sent.is_some()
        );
    }
    println!(
        "demo finished: the daemon answered ping, published telemetry and said offline on exit"
    );
    Ok(())
}
