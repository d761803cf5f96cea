//! Everything sotad publishes goes through [`Publisher`]: QoS and retain flags live here.
//!
//! QoS 1 for final results, errors and retained state; QoS 0 for streams and telemetry,
//! which are dropped (and counted) rather than queued when the link is congested.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rumqttc::{AsyncClient, Publish, QoS};
use serde::Serialize;

use super::request::{ErrorReply, RequestError};
use super::topics::{Command, Topics};
use crate::telemetry::Metrics;

/// Payloads of the retained `status` topic.
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// A cheap, cloneable handle for publishing; never used by the task that polls the event loop
/// to await (rumqttc's request channel is bounded, and awaiting it there could deadlock).
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    topics: Topics,
    metrics: Arc<Metrics>,
}

impl Publisher {
    pub fn new(client: AsyncClient, topics: Topics, metrics: Arc<Metrics>) -> Publisher {
        Publisher {
            client,
            topics,
            metrics,
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    async fn json<T: Serialize>(&self, topic: String, qos: QoS, retain: bool, body: &T) {
        let payload = match serde_json::to_vec(body) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(topic, error = %e, "could not serialize a message");
                return;
            }
        };
        if let Err(e) = self
            .client
            .publish(topic.clone(), qos, retain, payload)
            .await
        {
            // Only fails when the event loop is gone, i.e. during shutdown.
            tracing::warn!(topic, error = %e, "publish failed");
        }
    }

    /// The successful reply to a request (QoS 1).
    pub async fn reply<T: Serialize>(&self, command: Command, body: &T) {
        self.json(self.topics.reply(command), QoS::AtLeastOnce, false, body)
            .await;
    }

    /// The retained `voice/state` (QoS 1).
    pub async fn voice_state<T: Serialize>(&self, body: &T) {
        self.json(
            self.topics.reply(Command::Mute),
            QoS::AtLeastOnce,
            true,
            body,
        )
        .await;
    }

    /// An event (QoS 1), e.g. `turn/started`.
    pub async fn event<T: Serialize>(&self, topic: &str, body: &T) {
        self.json(topic.to_string(), QoS::AtLeastOnce, false, body)
            .await;
    }

    /// An error about a request, or about no request when `request_topic` is None (QoS 1).
    pub async fn error(&self, error: &RequestError, request_topic: Option<&str>) {
        let body = ErrorReply {
            error,
            request_topic,
        };
        self.json(self.topics.error(), QoS::AtLeastOnce, false, &body)
            .await;
    }

    /// Retained `online`/`offline` (QoS 1).
    pub async fn status(&self, payload: &'static str) {
        if let Err(e) = self
            .client
            .publish(self.topics.status(), QoS::AtLeastOnce, true, payload)
            .await
        {
            tracing::warn!(error = %e, "publishing status failed");
        }
    }

    /// Retained `instance` document (QoS 1): which process serves this device id.
    pub async fn instance(&self, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .publish(self.topics.instance(), QoS::AtLeastOnce, true, payload)
            .await
        {
            tracing::warn!(error = %e, "publishing the instance document failed");
        }
    }

    /// Retained capabilities document (QoS 1).
    pub async fn capabilities(&self, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .publish(self.topics.capabilities(), QoS::AtLeastOnce, true, payload)
            .await
        {
            tracing::warn!(error = %e, "publishing capabilities failed");
        }
    }

    /// Home Assistant's retained discovery document on `topic` (QoS 1); an empty one clears
    /// it (`mqtt/discovery.rs`).
    pub async fn discovery(&self, topic: String, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
        {
            tracing::warn!(error = %e, "publishing the discovery document failed");
        }
    }

    /// One message of a stream (QoS 0), e.g. `llm/tokens`; dropped and counted when the
    /// outgoing queue is full: the final reply carries the whole result.
    pub fn stream<T: Serialize>(&self, topic: &str, body: &T) {
        let Ok(payload) = serde_json::to_vec(body) else {
            return;
        };
        if self
            .client
            .try_publish(topic, QoS::AtMostOnce, false, payload)
            .is_err()
        {
            self.metrics
                .mqtt
                .publish_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A binary payload (QoS 1), e.g. a WAV on `tts/audio/<id>`; waits for room in the queue.
    pub async fn bytes(&self, topic: &str, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(topic, error = %e, "publish failed");
        }
    }

    /// A telemetry sample (QoS 0); dropped and counted when the outgoing queue is full.
    pub fn telemetry<T: Serialize>(&self, sample: &T) {
        if self.metrics.mqtt.standing_down.load(Ordering::Relaxed) {
            return;
        }
        let Ok(payload) = serde_json::to_vec(sample) else {
            return;
        };
        if self
            .client
            .try_publish(self.topics.telemetry(), QoS::AtMostOnce, false, payload)
            .is_err()
        {
            self.metrics
                .mqtt
                .publish_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Acknowledges a received QoS-1 request once sotad has taken responsibility for it.
    pub async fn ack(&self, publish: &Publish) {
        if let Err(e) = self.client.ack(publish).await {
            tracing::debug!(error = %e, "ack failed (event loop gone)");
        }
    }
}
