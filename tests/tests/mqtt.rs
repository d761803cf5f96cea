//! The MQTT link end to end: the real `sotad` binary against Debian's mosquitto (and against
//! its own embedded broker), driven by a real MQTT client.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sotad_tests::{ENGINES_OFF, Mosquitto, Sotad, TestClient, free_port, json, wait_online};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn status_and_capabilities_are_retained_after_start() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(&Sotad::config_for(broker.port, "retained", ""), "retained").unwrap();
    let mut first = TestClient::connect(broker.port, "t-retained-1", false)
        .await
        .unwrap();
    wait_online(&mut first, &sotad, WAIT).await;

    // A client that connects later gets both from the broker's retained store.
    let mut late = TestClient::connect(broker.port, "t-retained-2", false)
        .await
        .unwrap();
    late.subscribe(&sotad.topic("status")).await.unwrap();
    late.subscribe(&sotad.topic("capabilities")).await.unwrap();
    let status = late
        .expect(&sotad.topic("status"), WAIT, |_| true)
        .await
        .unwrap();
    assert!(status.retain, "status must be retained");
    assert_eq!(&status.payload[..], b"online");
    let caps = late
        .expect(&sotad.topic("capabilities"), WAIT, |_| true)
        .await
        .unwrap();
    assert!(caps.retain, "capabilities must be retained");
    let caps = json(&caps.payload);
    assert_eq!(caps["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(caps["device_id"], "retained");
    assert!(
        caps["commands"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ping"))
    );
    assert!(
        caps["features"]
            .as_array()
            .unwrap()
            .contains(&Value::from("persistent_session"))
    );
    assert!(caps["limits"]["max_packet_bytes"].as_u64().unwrap() >= 1_300_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_is_published_periodically() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(&Sotad::config_for(broker.port, "tele", ""), "tele").unwrap();
    let mut client = TestClient::connect(broker.port, "t-tele", false)
        .await
        .unwrap();
    wait_online(&mut client, &sotad, WAIT).await;
    client.subscribe(&sotad.topic("telemetry")).await.unwrap();
    client.subscribe(&sotad.topic("pong")).await.unwrap();
    client
        .publish(&sotad.topic("ping"), r#"{"id":"tele-1"}"#)
        .await
        .unwrap();
    client
        .expect_id(&sotad.topic("pong"), "tele-1", WAIT)
        .await
        .unwrap();
    // The sample after the ping counts it, with a latency.
    let sample = client
        .expect(&sotad.topic("telemetry"), WAIT, |p| {
            json(p)["stages"]["ping"]["ok"].as_u64() == Some(1)
        })
        .await
        .unwrap();
    assert!(!sample.retain);
    let t = json(&sample.payload);
    assert!(t["uptime_s"].as_f64().unwrap() > 0.0);
    assert!(t["process"]["rss_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(t["process"]["cpu_percent"].is_number());
    assert_eq!(t["system"]["load_avg"].as_array().unwrap().len(), 3);
    assert!(t["system"]["temperatures_c"].is_object());
    assert_eq!(t["mqtt"]["connected"], true);
    assert!(t["stages"]["ping"]["latency_ms"]["p50"].is_number());
    assert!(t["queues"]["requests"]["capacity"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_makes_the_broker_publish_offline() {
    let broker = Mosquitto::start().unwrap();
    let mut sotad = Sotad::start(&Sotad::config_for(broker.port, "crash", ""), "crash").unwrap();
    let mut client = TestClient::connect(broker.port, "t-crash", false)
        .await
        .unwrap();
    wait_online(&mut client, &sotad, WAIT).await;
    sotad.kill9().unwrap();
    let offline = client
        .expect(&sotad.topic("status"), WAIT, |p| p == b"offline")
        .await
        .expect("the broker publishes the last will after kill -9");
    // The will is retained, so a dashboard that connects later also sees the crash.
    drop(offline);
    let mut late = TestClient::connect(broker.port, "t-crash-late", false)
        .await
        .unwrap();
    late.subscribe(&sotad.topic("status")).await.unwrap();
    let retained = late
        .expect(&sotad.topic("status"), WAIT, |_| true)
        .await
        .unwrap();
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], b"offline");
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_reconnects_and_serves_requests_queued_while_away() {
    let mut broker = Mosquitto::start().unwrap();
    // A slow first retry (1.5-3 s) leaves a window to publish while sotad is disconnected.
    let config = Sotad::config_for(broker.port, "restart", "")
        .replace("reconnect_min_ms = 100", "reconnect_min_ms = 3000")
        .replace("reconnect_max_ms = 1000", "reconnect_max_ms = 6000");
    let sotad = Sotad::start(&config, "restart").unwrap();
    let mut client = TestClient::connect(broker.port, "t-restart", true)
        .await
        .unwrap();
    wait_online(&mut client, &sotad, WAIT).await;
    client.subscribe(&sotad.topic("pong")).await.unwrap();
    client
        .publish(&sotad.topic("ping"), r#"{"id":"before"}"#)
        .await
        .unwrap();
    client
        .expect_id(&sotad.topic("pong"), "before", WAIT)
        .await
        .unwrap();

    broker.restart().unwrap();
    // The test client reconnects within ~50 ms and publishes; sotad is still waiting to retry.
    let published = Instant::now();
    client
        .publish(&sotad.topic("ping"), r#"{"id":"while-away"}"#)
        .await
        .unwrap();
    let pong = client
        .expect_id(&sotad.topic("pong"), "while-away", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nsotad log:\n{}\nbroker log:\n{}",
                sotad.log(),
                broker.log()
            )
        });
    assert_eq!(pong["version"], env!("CARGO_PKG_VERSION"));

    // Prove the order from the broker's own log: the request arrived before sotad reconnected,
    // and sotad subscribed again after reconnecting (the broker may write that line a moment
    // after the reply went out, so poll for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = broker.log();
        let restart_at = log
            .rfind("mosquitto version")
            .expect("restart in broker log");
        let after = &log[restart_at..];
        let request_at = after
            .find("'sotad/restart/ping'")
            .expect("request in broker log after restart");
        let reconnect_at = after
            .find("as sotad-restart")
            .expect("sotad reconnect in broker log");
        assert!(
            request_at < reconnect_at,
            "the request must be published while sotad was disconnected\n{after}"
        );
        if after[reconnect_at..].contains("Received SUBSCRIBE from sotad-restart") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no re-subscription after reconnect:\n{after}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_errors_and_sotad_keeps_serving() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(&Sotad::config_for(broker.port, "bad", ""), "bad").unwrap();
    let mut client = TestClient::connect(broker.port, "t-bad", false)
        .await
        .unwrap();
    wait_online(&mut client, &sotad, WAIT).await;
    client.subscribe(&sotad.topic("error")).await.unwrap();
    client.subscribe(&sotad.topic("pong")).await.unwrap();
    let ping = sotad.topic("ping");

    let oversized = format!(r#"{{"id":"big","pad":"{}"}}"#, "x".repeat(300 * 1024));
    // (what, payload, expected code, expected id, expected field)
    type Case<'a> = (&'a str, Vec<u8>, &'a str, Value, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "not json",
            b"hello".to_vec(),
            "invalid_json",
            Value::Null,
            None,
        ),
        (
            "invalid utf-8",
            b"{\"id\":\"\xff\"}".to_vec(),
            "invalid_utf8",
            Value::Null,
            None,
        ),
        (
            "wrong type",
            br#"{"id":42}"#.to_vec(),
            "invalid_request",
            Value::Null,
            Some("id"),
        ),
        (
            "unknown field",
            br#"{"id":"u-1","colour":"red"}"#.to_vec(),
            "invalid_request",
            Value::from("u-1"),
            None,
        ),
        (
            "missing id",
            br#"{}"#.to_vec(),
            "invalid_request",
            Value::Null,
            Some("id"),
        ),
        (
            "not an object",
            br#"["id"]"#.to_vec(),
            "invalid_request",
            Value::Null,
            None,
        ),
        ("empty", Vec::new(), "invalid_json", Value::Null, None),
        // Ids become topic levels (`tts/audio/<id>`): a wildcard or a level separator in
        // one would lose the audio or move it elsewhere, so the id is refused (issue 24, 3).
        (
            "id with a wildcard",
            br#"{"id":"a+1"}"#.to_vec(),
            "invalid_request",
            Value::Null,
            Some("id"),
        ),
        (
            "id with a level separator",
            br#"{"id":"../../other"}"#.to_vec(),
            "invalid_request",
            Value::Null,
            Some("id"),
        ),
        (
            "oversized",
            oversized.into_bytes(),
            "payload_too_large",
            Value::from("big"),
            None,
        ),
    ];
    for (what, payload, code, id, field) in cases {
        client.publish(&ping, payload).await.unwrap();
        let error = client
            .expect(&sotad.topic("error"), WAIT, |_| true)
            .await
            .unwrap_or_else(|e| panic!("{what}: no error reply: {e}"));
        let error = json(&error.payload);
        assert_eq!(error["code"], code, "{what}: {error}");
        assert_eq!(error["id"], id, "{what}: {error}");
        assert_eq!(error["request_topic"], ping.as_str(), "{what}: {error}");
        assert!(
            !error["message"].as_str().unwrap_or("").is_empty(),
            "{what}"
        );
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{what}: {error}");
        }
        // After every bad request, a good one is still answered.
        let good = format!("after-{}", what.replace(' ', "-"));
        client
            .publish(&ping, format!(r#"{{"id":"{good}"}}"#))
            .await
            .unwrap();
        client
            .expect_id(&sotad.topic("pong"), &good, WAIT)
            .await
            .unwrap_or_else(|e| panic!("no pong after {what}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retained_request_is_refused_not_run_at_start() {
    let broker = Mosquitto::start().unwrap();
    let config = Sotad::config_for(broker.port, "retained", "");
    let mut client = TestClient::connect(broker.port, "t-retained", false)
        .await
        .unwrap();
    let base = "sotad/retained";
    client.subscribe(&format!("{base}/error")).await.unwrap();
    client.subscribe(&format!("{base}/pong")).await.unwrap();
    // Left on the broker before sotad starts: delivered with the retain flag on subscribe.
    client
        .publish_retained(&format!("{base}/ping"), r#"{"id":"stale-1"}"#)
        .await
        .unwrap();
    let sotad = Sotad::start(&config, "retained").unwrap();
    assert_eq!(sotad.topic("ping"), format!("{base}/ping"));
    let error = client
        .expect(&sotad.topic("error"), WAIT, |_| true)
        .await
        .expect("an error about the retained request");
    let error = json(&error.payload);
    assert_eq!(error["code"], "invalid_request", "{error}");
    assert_eq!(error["id"], "stale-1", "{error}");
    assert_eq!(
        error["request_topic"],
        sotad.topic("ping").as_str(),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap_or("").contains("retained"),
        "{error}"
    );
    // It did not run, and a request without the flag does.
    client
        .publish(&sotad.topic("ping"), r#"{"id":"fresh-1"}"#)
        .await
        .unwrap();
    let pong = client
        .expect(&sotad.topic("pong"), WAIT, |_| true)
        .await
        .expect("a pong for the fresh request");
    assert_eq!(json(&pong.payload)["id"], "fresh-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_packet_limit_is_refused_and_sotad_keeps_serving() {
    let broker = Mosquitto::start().unwrap();
    let config = Sotad::config_for(
        broker.port,
        "huge",
        "max_packet_bytes = 65536\nmax_request_bytes = 65536",
    );
    let sotad = Sotad::start(&config, "huge").unwrap();
    let mut client = TestClient::connect(broker.port, "t-huge", false)
        .await
        .unwrap();
    wait_online(&mut client, &sotad, WAIT).await;
    client.subscribe(&sotad.topic("error")).await.unwrap();
    client.subscribe(&sotad.topic("pong")).await.unwrap();

    // Bigger than mqtt.max_packet_bytes: read, acknowledged and refused on the same
    // connection (tests/reliability.rs covers retained ones, the session and reconnects).
    client
        .publish(&sotad.topic("ping"), vec![b'x'; 200 * 1024])
        .await
        .unwrap();
    let error = client
        .expect(&sotad.topic("error"), WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let error = json(&error.payload);
    assert_eq!(error["code"], "payload_too_large", "{error}");
    assert_eq!(
        error["request_topic"],
        sotad.topic("ping").as_str(),
        "{error}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("mqtt.max_packet_bytes")
    );
    client
        .publish(&sotad.topic("ping"), r#"{"id":"after-huge"}"#)
        .await
        .unwrap();
    client
        .expect_id(&sotad.topic("pong"), "after-huge", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_publishes_offline_and_exits_zero_within_the_bound() {
    let broker = Mosquitto::start().unwrap();
    let mut sotad = Sotad::start(&Sotad::config_for(broker.port, "term", ""), "term").unwrap();
    let mut client = TestClient::connect(broker.port, "t-term", false)
        .await
        .unwrap();
    wait_online(&mut client, &sotad, WAIT).await;
    let sent = Instant::now();
    sotad.sigterm();
    // The bound: service.shutdown_timeout_secs (5 by default) plus the 2 s farewell.
    let status = sotad
        .wait_exit(Duration::from_secs(8))
        .expect("exits within the bound");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    client
        .expect(&sotad.topic("status"), WAIT, |p| p == b"offline")
        .await
        .expect("offline after SIGTERM");
    // Nothing was in flight, so stopping should be quick.
    assert!(took < Duration::from_secs(3), "stopping took {took:?}");
    assert!(sotad.log().contains("stopped"), "{}", sotad.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_serves_clients() {
    let port = free_port();
    let config = format!(
        "[device]\nid = \"embedded\"\n[broker]\nlisten = \"127.0.0.1:{port}\"\n[telemetry]\ninterval_secs = 1\n{ENGINES_OFF}"
    );
    let mut sotad = Sotad::start(&config, "embedded").unwrap();
    // Connect to the broker inside sotad.
    let deadline = Instant::now() + WAIT;
    let mut client = loop {
        match TestClient::connect(port, "t-embedded", false).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("{e}\n{}", sotad.log()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    client.subscribe(&sotad.topic("status")).await.unwrap();
    let status = client
        .expect(&sotad.topic("status"), WAIT, |_| true)
        .await
        .unwrap();
    assert_eq!(&status.payload[..], b"online");
    assert!(status.retain);
    client.subscribe(&sotad.topic("pong")).await.unwrap();
    client
        .publish(&sotad.topic("ping"), r#"{"id":"emb-1"}"#)
        .await
        .unwrap();
    let pong = client
        .expect_id(&sotad.topic("pong"), "emb-1", WAIT)
        .await
        .unwrap();
    assert_eq!(pong["device_id"], "embedded");
    // A client that says goodbye properly (DISCONNECT, then the socket closes), as
    // mosquitto_pub does; rumqttd used to log each one as an ERROR, twice.
    let status = std::process::Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "elsewhere",
            "-m",
            "x",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    sotad.sigterm();
    assert!(sotad.wait_exit(Duration::from_secs(10)).unwrap().success());
    // The log goes to a file: plain text, and a clean run has no ERROR line.
    let log = sotad.log();
    assert!(
        !log.contains('\x1b'),
        "colour escapes in a log file:\n{log}"
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines in a clean run:\n{}",
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_port_for_the_embedded_broker_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config =
        format!("[device]\nid = \"busy\"\n[broker]\nlisten = \"127.0.0.1:{port}\"\n{ENGINES_OFF}");
    let mut sotad = Sotad::start(&config, "busy").unwrap();
    let status = sotad.wait_exit(WAIT).unwrap();
    assert!(!status.success());
    let log = sotad.log();
    assert!(
        log.contains("broker.listen") && log.contains(&port.to_string()),
        "{log}"
    );
}

/// 20 broker stop/start cycles with QoS-1 pings flowing the whole time: every request is
/// answered, none runs twice (redeliveries are recognized by id), and memory stays flat.
#[tokio::test(flavor = "multi_thread")]
async fn soak_broker_restarts_every_request_answered_once() {
    const CYCLES: usize = 20;
    let mut broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(&Sotad::config_for(broker.port, "soak", ""), "soak").unwrap();
    let mut client = TestClient::connect(broker.port, "t-soak", true)
        .await
        .unwrap();
    wait_online(&mut client, &sotad, WAIT).await;
    client.subscribe(&sotad.topic("pong")).await.unwrap();
    client.subscribe(&sotad.topic("telemetry")).await.unwrap();

    let sending = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let publisher = client.client.clone();
        let topic = sotad.topic("ping");
        let sending = sending.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while sending.load(Ordering::Relaxed) {
                let payload = format!(r#"{{"id":"soak-{n}"}}"#);
                publisher
                    .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
                n += 1;
                sent.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    let mut rss_after_warmup = None;
    for cycle in 0..CYCLES {
        tokio::time::sleep(Duration::from_millis(700)).await;
        broker.stop().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.restart().unwrap();
        if cycle == 4 {
            rss_after_warmup = Some(sotad.rss_kib().unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    sending.store(false, Ordering::Relaxed);
    sender.await.unwrap();
    let total = sent.load(Ordering::Relaxed);

    // Collect replies until every id is answered.
    let mut replies: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut deliveries = 0u64;
    let mut last_telemetry = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (replies.len() as u64) < total && Instant::now() < deadline {
        for p in client.collect_for(Duration::from_millis(500)).await {
            if p.topic == sotad.topic("telemetry") {
                last_telemetry = json(&p.payload);
                continue;
            }
            let v = json(&p.payload);
            if let Some(id) = v["id"].as_str() {
                deliveries += 1;
                // Identical payloads are the broker redelivering one reply; a second run of
                // the request would carry a different uptime.
                replies
                    .entry(id.to_string())
                    .or_default()
                    .insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    }
    let missing: Vec<u64> = (0..total)
        .filter(|n| !replies.contains_key(&format!("soak-{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {total} requests unanswered: {missing:?}\n{}",
        missing.len(),
        sotad.log()
    );
    let ran_twice: Vec<_> = replies.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        ran_twice.is_empty(),
        "requests run more than once: {ran_twice:?}"
    );

    // Memory: flat after warm-up (the id memory is bounded; allow allocator noise).
    let (rss_warm, anon_warm) = rss_after_warmup.unwrap();
    let (rss_end, anon_end) = sotad.rss_kib().unwrap();
    let telemetry = client
        .expect(&sotad.topic("telemetry"), WAIT, |_| true)
        .await
        .map(|p| json(&p.payload))
        .unwrap_or(last_telemetry);
    println!(
        "soak: {CYCLES} broker restarts, {total} requests, {deliveries} reply deliveries \
         ({} redelivered by the broker), sotad skipped {} redelivered requests, reconnects {}; \
         RSS {rss_warm} -> {rss_end} KiB, anonymous {anon_warm} -> {anon_end} KiB",
        deliveries - total,
        telemetry["mqtt"]["duplicates"],
        telemetry["mqtt"]["connects"],
    );
    assert!(telemetry["mqtt"]["connects"].as_u64().unwrap_or(0) > CYCLES as u64);
    assert!(
        anon_end <= anon_warm + 2048,
        "anonymous memory grew from {anon_warm} to {anon_end} KiB"
    );
}
