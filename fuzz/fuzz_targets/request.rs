//! Feeds arbitrary bytes to the MQTT request parser, as any client on the broker could.
//! It must never panic; every rejection must be a well-formed error that serializes, and an
//! id it echoes must be one the payload really carried.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotad::mqtt::request::{self, ErrorReply, PingRequest};

fuzz_target!(|data: &[u8]| {
    let peeked = request::peek_id(data);
    match request::parse::<PingRequest>(data, 4096) {
        Ok(ping) => {
            assert!(!ping.id.is_empty() && ping.id.len() <= request::MAX_ID_BYTES);
            assert_eq!(peeked.as_deref(), Some(ping.id.as_str()));
        }
        Err(error) => {
            assert!(!error.message.is_empty());
            if let Some(id) = &error.id {
                assert_eq!(peeked.as_deref(), Some(id.as_str()));
            }
            let reply = ErrorReply { error: &error, request_topic: Some("sotad/fuzz/ping") };
            serde_json::to_vec(&reply).expect("error replies always serialize");
        }
    }
});
