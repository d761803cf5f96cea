//! Home Assistant's MQTT device discovery against mosquitto and the real binary: the
//! document's keys are those Home Assistant documents for each platform, its templates
//! (rendered by Jinja2, as Home Assistant renders them) read sotad's real messages and make
//! requests sotad accepts, it comes back when Home Assistant announces `online`, and its
//! availability follows `status` through a `kill -9`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sotad_tests::{Mosquitto, Sotad, TestClient, wait_online};

const WAIT: Duration = Duration::from_secs(30);

/// The keys Home Assistant's MQTT integration documents for each platform used (besides the
/// common ones), and those a component of that platform must have.
fn platform_keys(platform: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match platform {
        "sensor" => (
            &[
                "state_topic",
                "value_template",
                "unit_of_measurement",
                "state_class",
                "device_class",
            ],
            &["state_topic"],
        ),
        "binary_sensor" => (
            &[
                "state_topic",
                "value_template",
                "device_class",
                "payload_on",
                "payload_off",
            ],
            &["state_topic"],
        ),
        "switch" => (
            &[
                "state_topic",
                "value_template",
                "command_topic",
                "command_template",
                "payload_on",
                "payload_off",
                "device_class",
            ],
            &["command_topic"],
        ),
        "button" => (
            &[
                "command_topic",
                "command_template",
                "payload_press",
                "device_class",
            ],
            &["command_topic"],
        ),
        "text" => (
            &[
                "command_topic",
                "command_template",
                "state_topic",
                "value_template",
                "max",
                "min",
                "mode",
                "pattern",
            ],
            &["command_topic"],
        ),
        "event" => (
            &[
                "state_topic",
                "value_template",
                "event_types",
                "device_class",
            ],
            &["state_topic", "event_types"],
        ),
        other => panic!("platform {other} is not one the test knows"),
    }
}

const COMMON_KEYS: &[&str] = &["platform", "name", "unique_id", "icon", "entity_category"];

/// Renders every template of `document` with Jinja2 against `messages` (topic → payload).
fn render(document: &Value, messages: &BTreeMap<String, String>) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("homeassistant/render.py");
    let mut child = Command::new(sotad_tests::test_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({"document": document, "messages": messages});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "render.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_describes_a_device_home_assistant_can_read_and_command() {
    let broker = Mosquitto::start().unwrap();
    let config = format!(
        "{}\n[homeassistant]\ndiscovery = true\n",
        Sotad::config_for(broker.port, "ha", "keep_alive_secs = 5")
    );
    let mut sotad = Sotad::start(&config, "ha").unwrap();
    let mut c = TestClient::connect(broker.port, "t-ha", false)
        .await
        .unwrap();
    let config_topic = "homeassistant/device/ha/config";
    wait_online(&mut c, &sotad, WAIT).await;
    // Subscribed once sotad is online, so the retained document is not among what
    // `wait_online` skips.
    c.subscribe(config_topic).await.unwrap();
    c.subscribe(&sotad.topic("#")).await.unwrap();

    let doc = c
        .expect(config_topic, WAIT, |p| !p.is_empty())
        .await
        .unwrap_or_else(|e| panic!("no discovery document: {e}\n{}", sotad.log()));
    assert!(doc.retain, "the discovery document is retained");
    let doc: Value = serde_json::from_slice(&doc.payload).unwrap();

    // The device, origin and availability blocks.
    assert!(!doc["device"]["identifiers"][0].as_str().unwrap().is_empty());
    assert_eq!(doc["device"]["sw_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["origin"]["name"], "sotad");
    assert_eq!(doc["availability"][0]["topic"], sotad.topic("status"));
    assert_eq!(doc["availability"][0]["payload_available"], "online");
    assert_eq!(doc["availability"][0]["payload_not_available"], "offline");

    // Each component: known platform, documented keys only, required keys present, unique id,
    // and every topic under sotad's own device prefix.
    let comps = doc["components"].as_object().unwrap();
    let mut ids = HashSet::new();
    for (key, comp) in comps {
        let platform = comp["platform"].as_str().unwrap();
        let (allowed, required) = platform_keys(platform);
        for k in comp.as_object().unwrap().keys() {
            assert!(
                COMMON_KEYS.contains(&k.as_str()) || allowed.contains(&k.as_str()),
                "{key} ({platform}): key {k} is not one Home Assistant documents for it"
            );
        }
        for k in required {
            assert!(comp.get(*k).is_some(), "{key} ({platform}) lacks {k}");
        }
        assert!(ids.insert(comp["unique_id"].as_str().unwrap().to_string()));
        for k in ["state_topic", "command_topic"] {
            if let Some(t) = comp.get(k) {
                assert!(
                    t.as_str().unwrap().starts_with("sotad/ha/"),
                    "{key}.{k}: {t}"
                );
            }
        }
    }
    for needed in [
        "temperature",
        "memory",
        "cpu",
        "last_transcript",
        "last_reply",
        "listening",
        "speaking",
        "listen",
        "mute",
        "stop",
        "say",
        "turn",
    ] {
        assert!(comps.contains_key(needed), "no {needed} entity");
    }

    // The command templates, rendered as Home Assistant renders them, make requests sotad
    // accepts: the switches change voice/state, the button answers, the text reaches tts/say.
    let no_messages = BTreeMap::new();
    let rendered = render(&doc, &no_messages);
    let command = |key: &str, value: &str| -> (String, String) {
        (
            comps[key]["command_topic"].as_str().unwrap().to_string(),
            rendered[key]["commands"][value]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let voice_state = sotad.topic("voice/state");
    let (topic, payload) = command("listen", "OFF");
    c.publish(&topic, payload).await.unwrap();
    c.expect(&voice_state, WAIT, |p| {
        serde_json::from_slice::<Value>(p).is_ok_and(|v| v["listening"] == false)
    })
    .await
    .unwrap_or_else(|e| panic!("listen OFF: {e}\n{}", sotad.log()));
    // Two presses in the same second still carry two ids (now().timestamp() has microseconds).
    let (topic, payload) = command("mute", "ON");
    c.publish(&topic, payload).await.unwrap();
    let state = c
        .expect(&voice_state, WAIT, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|v| v["muted"] == true)
        })
        .await
        .unwrap();
    let (topic, payload) = command("stop", "PRESS");
    c.publish(&topic, payload).await.unwrap();
    c.expect(&voice_state, WAIT, |_| true).await.unwrap();
    let (topic, payload) = command("say", "Say \"hi\" now.");
    assert!(
        serde_json::from_str::<Value>(&payload).unwrap()["text"] == "Say \"hi\" now.",
        "{payload}"
    );
    c.publish(&topic, payload).await.unwrap();
    // The voice is off in this configuration: the request is understood and refused as such.
    let error = c
        .expect(&sotad.topic("error"), WAIT, |_| true)
        .await
        .unwrap();
    let error: Value = serde_json::from_slice(&error.payload).unwrap();
    assert_eq!(error["code"], "unavailable", "{error}");

    // The state templates read sotad's real messages.
    let telemetry = c
        .expect(&sotad.topic("telemetry"), WAIT, |_| true)
        .await
        .unwrap();
    let mut messages = BTreeMap::new();
    messages.insert(
        sotad.topic("telemetry"),
        String::from_utf8(telemetry.payload.to_vec()).unwrap(),
    );
    messages.insert(
        voice_state.clone(),
        String::from_utf8(state.payload.to_vec()).unwrap(),
    );
    let rendered = render(&doc, &messages);
    let mib: f64 = rendered["memory"]["state"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(mib > 1.0 && mib < 4096.0, "memory {mib} MiB");
    let cpu: f64 = rendered["cpu"]["state"].as_str().unwrap().parse().unwrap();
    assert!(cpu >= 0.0, "cpu {cpu}");
    let temp = rendered["temperature"]["state"].as_str().unwrap();
    assert!(temp == "None" || temp.parse::<f64>().is_ok(), "{temp}");
    assert_eq!(rendered["mute"]["state"], "ON");
    assert_eq!(rendered["listen"]["state"], "OFF");
    assert_eq!(rendered["listening"]["state"], "OFF");
    assert_eq!(rendered["speaking"]["state"], "OFF");

    // Home Assistant restarts (its retained discovery was lost): it announces `online` and gets
    // the document again.
    c.publish_retained(config_topic, Vec::new()).await.unwrap();
    c.expect(config_topic, WAIT, |p| p.is_empty())
        .await
        .unwrap();
    c.publish("homeassistant/status", "online").await.unwrap();
    c.expect(config_topic, WAIT, |p| !p.is_empty())
        .await
        .unwrap_or_else(|e| panic!("not re-published: {e}\n{}", sotad.log()));

    // Availability follows `status` through a kill -9 (the broker's will).
    sotad.kill9().unwrap();
    c.expect(&sotad.topic("status"), WAIT, |p| p == b"offline")
        .await
        .expect("offline after kill -9");

    // Switched off, the next start clears the document: the device leaves Home Assistant.
    let off = Sotad::start(&Sotad::config_for(broker.port, "ha", ""), "ha").unwrap();
    c.expect(config_topic, WAIT, |p| p.is_empty())
        .await
        .unwrap_or_else(|e| panic!("not cleared: {e}\n{}", off.log()));
}
