//! Home Assistant's MQTT device discovery: one retained document on
//! `<ha prefix>/device/<device id>/config` that describes sotad as a device with its entities.
//!
//! Every entity reads or writes topics of sotad's own protocol (through [`Topics`]); Home
//! Assistant's templates turn their JSON into entity states and its commands into requests,
//! each with a fresh id (`ha-<timestamp>`), so nothing here needs a topic of its own.
//! Availability is the retained `status`. The connection publishes the document on every
//! ConnAck and again when Home Assistant announces `online` on `<ha prefix>/status`; with
//! discovery off it publishes an empty retained message instead, which removes the device.

use serde_json::{Value, json};

use super::outbound::{OFFLINE, ONLINE};
use super::topics::{Command, Topics, TurnEvent};

/// What the connection publishes for Home Assistant.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `<ha prefix>/device/<device id>/config`.
    pub topic: String,
    /// `<ha prefix>/status`: Home Assistant's birth and will; subscribed to when enabled.
    pub status_topic: String,
    /// The retained document; empty when discovery is off (which clears it).
    pub payload: Vec<u8>,
}

impl Discovery {
    pub fn enabled(&self) -> bool {
        !self.payload.is_empty()
    }

    /// `enabled`: the document; otherwise an empty payload that clears a stale one.
    pub fn new(
        enabled: bool,
        ha_prefix: &str,
        topics: &Topics,
        device_id: &str,
        intents: &[String],
        wake_words: &[String],
    ) -> Discovery {
        let payload = if enabled {
            serde_json::to_vec(&document(topics, device_id, intents, wake_words))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Discovery {
            topic: super::topics::ha_discovery(ha_prefix, device_id),
            status_topic: super::topics::ha_status(ha_prefix),
            payload,
        }
    }
}

/// The template that gives each command Home Assistant sends a fresh request id.
const FRESH_ID: &str = "\"id\": \"ha-{{ now().timestamp() }}\"";

/// The device document (full key names; Home Assistant also takes its abbreviations).
/// `wake_words` are the configured wake and stop words (the `model` of `wake/detected`).
pub fn document(
    topics: &Topics,
    device_id: &str,
    intents: &[String],
    wake_words: &[String],
) -> Value {
    let uid = |key: &str| format!("sotad_{device_id}_{key}");
    let telemetry = topics.telemetry();
    let voice_state = topics.reply(Command::Mute);
    let mut components = serde_json::Map::new();
    let mut add = |key: &str, mut c: Value| {
        c["unique_id"] = json!(uid(key));
        components.insert(key.to_string(), c);
    };
    add(
        "temperature",
        json!({
            "platform": "sensor", "name": "SoC temperature", "device_class": "temperature",
            "state_class": "measurement", "unit_of_measurement": "°C",
            "entity_category": "diagnostic", "state_topic": telemetry,
            "value_template": "{{ (value_json.system.temperatures_c.values() | max) if value_json.system.temperatures_c else None }}",
        }),
    );
    add(
        "memory",
        json!({
            "platform": "sensor", "name": "Memory", "device_class": "data_size",
            "state_class": "measurement", "unit_of_measurement": "MiB",
            "entity_category": "diagnostic", "state_topic": telemetry,
            "value_template": "{{ (value_json.process.rss_bytes / 1048576) | round(1) }}",
        }),
    );
    add(
        "cpu",
        json!({
            "platform": "sensor", "name": "CPU", "state_class": "measurement",
            "unit_of_measurement": "%", "icon": "mdi:cpu-64-bit",
            "entity_category": "diagnostic", "state_topic": telemetry,
            "value_template": "{{ value_json.process.cpu_percent }}",
        }),
    );
    add(
        "last_transcript",
        json!({
            "platform": "sensor", "name": "Last transcript", "icon": "mdi:account-voice",
            "state_topic": topics.turn(TurnEvent::Transcript),
            "value_template": "{{ value_json.text[:255] }}",
        }),
    );
    add(
        "last_reply",
        json!({
            "platform": "sensor", "name": "Last reply", "icon": "mdi:robot",
            "state_topic": topics.turn(TurnEvent::Reply),
            "value_template": "{{ value_json.text[:255] }}",
        }),
    );
    add(
        "listening",
        json!({
            "platform": "binary_sensor", "name": "Listening", "icon": "mdi:microphone",
            "state_topic": voice_state,
            "value_template": "{{ 'ON' if value_json.listening and not value_json.muted else 'OFF' }}",
        }),
    );
    add(
        "speaking",
        json!({
            "platform": "binary_sensor", "name": "Speaking", "device_class": "sound",
            "state_topic": voice_state,
            "value_template": "{{ 'ON' if value_json.speaking else 'OFF' }}",
        }),
    );
    add(
        "listen",
        json!({
            "platform": "switch", "name": "Listen", "icon": "mdi:ear-hearing",
            "state_topic": voice_state,
            "value_template": "{{ 'ON' if value_json.listening else 'OFF' }}",
            "command_topic": topics.request(Command::ListenSet),
            "command_template": format!("{{{FRESH_ID}, \"on\": {{{{ 'true' if value == 'ON' else 'false' }}}}}}"),
        }),
    );
    add(
        "mute",
        json!({
            "platform": "switch", "name": "Mute", "icon": "mdi:microphone-off",
            "state_topic": voice_state,
            "value_template": "{{ 'ON' if value_json.muted else 'OFF' }}",
            "command_topic": topics.request(Command::MuteSet),
            "command_template": format!("{{{FRESH_ID}, \"on\": {{{{ 'true' if value == 'ON' else 'false' }}}}}}"),
        }),
    );
    add(
        "stop",
        json!({
            "platform": "button", "name": "Stop speaking", "icon": "mdi:stop",
            "command_topic": topics.request(Command::Stop),
            "command_template": format!("{{{FRESH_ID}}}"),
        }),
    );
    add(
        "say",
        json!({
            "platform": "text", "name": "Say", "icon": "mdi:message-text", "max": 255,
            "command_topic": topics.request(Command::TtsSay),
            "command_template": format!("{{{FRESH_ID}, \"text\": {{{{ value | tojson }}}}, \"play\": true}}"),
        }),
    );
    add(
        "turn",
        json!({
            "platform": "event", "name": "Turn", "icon": "mdi:chat",
            "state_topic": topics.turn(TurnEvent::Done),
            "event_types": ["answered", "no_speech", "cancelled", "failed"],
            "value_template": "{{ {'event_type': value_json.outcome, 'transcript': value_json.transcript | default(''), 'reply': value_json.reply | default('')} | tojson }}",
        }),
    );
    if !intents.is_empty() {
        add(
            "intent",
            json!({
                "platform": "event", "name": "Intent", "icon": "mdi:robot-industrial",
                "state_topic": topics.intent("+"),
                "event_types": intents,
                "value_template": "{{ {'event_type': value_json.intent, 'slots': value_json.slots, 'transcript': value_json.transcript} | tojson }}",
            }),
        );
    }
    if !wake_words.is_empty() {
        add(
            "wake",
            json!({
                "platform": "event", "name": "Wake word", "icon": "mdi:account-voice",
                "state_topic": topics.wake_detected(),
                "event_types": wake_words,
                "value_template": "{{ {'event_type': value_json.model, 'word': value_json.word, 'probability': value_json.probability, 'stop': value_json.stop} | tojson }}",
            }),
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    json!({
        "device": {
            "identifiers": [uid("device")],
            "name": format!("sotad {device_id}"),
            "manufacturer": "sotad",
            "model": "sotad voice daemon",
            "sw_version": version,
        },
        "origin": {"name": "sotad", "sw_version": version},
        "availability": [{
            "topic": topics.status(),
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
        }],
        "qos": 1,
        "components": components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_has_a_unique_id_and_its_platforms_topics() {
        let t = Topics::new("sotad", "kitchen");
        let doc = document(
            &t,
            "kitchen",
            &["move".to_string()],
            &["hey_jarvis".to_string()],
        );
        let comps = doc["components"].as_object().unwrap();
        let mut ids = std::collections::HashSet::new();
        for (key, c) in comps {
            assert!(
                ids.insert(c["unique_id"].as_str().unwrap().to_string()),
                "{key}"
            );
            let platform = c["platform"].as_str().unwrap();
            match platform {
                "sensor" | "binary_sensor" | "event" => assert!(c["state_topic"].is_string()),
                "switch" | "button" | "text" => assert!(c["command_topic"].is_string()),
                other => panic!("{key}: platform {other}"),
            }
        }
        assert_eq!(comps["listen"]["command_topic"], "sotad/kitchen/listen/set");
        assert_eq!(
            comps["listen"]["command_template"],
            "{\"id\": \"ha-{{ now().timestamp() }}\", \"on\": {{ 'true' if value == 'ON' else 'false' }}}"
        );
        assert_eq!(comps["intent"]["state_topic"], "sotad/kitchen/intent/+");
        assert_eq!(comps["wake"]["state_topic"], "sotad/kitchen/wake/detected");
        assert_eq!(doc["availability"][0]["topic"], "sotad/kitchen/status");
    }
}
