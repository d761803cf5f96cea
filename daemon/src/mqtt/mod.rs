//! MQTT: the only module that knows topic strings and payload JSON.
//!
//! - `topics`: the topic tree of one device.
//! - `payloads`: every request, reply and event payload.
//! - `request`: parsing untrusted request payloads; error replies.
//! - `dedup`: recognizing QoS-1 redeliveries by request id.
//! - `connection`: the task that owns the event loop (connect, back-off, re-subscribe, route).
//! - `outbound`: every publication, with its QoS and retain flag.
//! - `discovery`: Home Assistant's device discovery document.

pub mod connection;
pub mod dedup;
pub mod discovery;
pub mod outbound;
pub mod payloads;
pub mod request;
pub mod topics;

pub use connection::{Backoff, Connection, Inbound};
pub use outbound::Publisher;
pub use topics::{Command, Topics, TurnEvent};
