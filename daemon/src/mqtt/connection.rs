//! The one task that owns rumqttc's `EventLoop`: connects, reconnects, and routes.
//!
//! It never awaits a publish (that could deadlock on rumqttc's bounded request channel): on
//! every ConnAck it spawns the re-subscription and the `online`/capabilities publications, and
//! it hands received requests to the service with `try_send`, answering `busy` when the
//! service queue is full. Failures are retried with exponential back-off and jitter.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{
    ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    StateError, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::outbound::{OFFLINE, ONLINE, Publisher};
use super::request::{ErrorCode, RequestError, peek_id};
use super::topics::{Command, Topics};
use crate::config::Config;
use crate::telemetry::Metrics;

/// A received request on its way to the service.
#[derive(Debug)]
pub struct Inbound {
    pub command: Command,
    pub publish: Publish,
}

/// Exponential back-off with jitter: each wait is between half and all of
/// `min * 2^attempt`, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let full = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Builds the client options: identity, will, limits, credentials and TLS.
pub fn options(
    config: &Config,
    topics: &Topics,
    host: &str,
    port: u16,
) -> anyhow::Result<MqttOptions> {
    let m = &config.mqtt;
    let mut options = MqttOptions::new(config.client_id(), host, port);
    options
        .set_keep_alive(Duration::from_secs(m.keep_alive_secs))
        .set_clean_session(!m.persistent_session)
        // Leave room for the MQTT header around a payload of the configured size.
        .set_max_packet_size(m.max_packet_bytes + 1024, m.max_packet_bytes + 1024)
        .set_manual_acks(true)
        .set_last_will(LastWill::new(
            topics.status(),
            OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
    let password = if m.password_file.is_empty() {
        m.password.clone()
    } else {
        let text = std::fs::read_to_string(&m.password_file).map_err(|e| {
            anyhow::anyhow!(
                "configuration key `mqtt.password_file`: cannot read {}: {e}",
                m.password_file
            )
        })?;
        text.lines().next().unwrap_or_default().to_string()
    };
    if !m.username.is_empty() {
        options.set_credentials(m.username.clone(), password);
    }
    if m.tls.enabled {
        let read = |key: &str, path: &str| {
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("configuration key `{key}`: cannot read {path}: {e}"))
        };
        let ca = read("mqtt.tls.ca_file", &m.tls.ca_file)?;
        let client_auth = if m.tls.client_cert_file.is_empty() {
            None
        } else {
            Some((
                read("mqtt.tls.client_cert_file", &m.tls.client_cert_file)?,
                read("mqtt.tls.client_key_file", &m.tls.client_key_file)?,
            ))
        };
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(options)
}

/// The event-loop task and what it needs.
pub struct Connection {
    pub eventloop: EventLoop,
    pub publisher: Publisher,
    /// Retained capabilities, republished on every ConnAck.
    pub capabilities: Arc<Vec<u8>>,
    /// Requests go here; when full, the request is answered with `busy`.
    pub inbound: mpsc::Sender<Inbound>,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// Cancelled when sotad stops taking requests; later ones are left unacknowledged so
    /// that a persistent session delivers them to the next run.
    pub intake: CancellationToken,
    /// Cancelled when the connection must end (after the farewell, or on timeout).
    pub stop: CancellationToken,
    /// Whether the configuration asks for a persistent session.
    pub persistent_session: bool,
}

impl Connection {
    pub async fn run(mut self) {
        let mut announced_down = false;
        // Set when a message too large for the connection arrived: the broker would redeliver it
        // to a persistent session forever, so the next connection starts clean once.
        let mut drop_poison = false;
        loop {
            let event = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.backoff.reset();
                    self.metrics.mqtt.connected.store(true, Ordering::Relaxed);
                    self.metrics.mqtt.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        session_present = ack.session_present,
                        client_id = self.eventloop.mqtt_options.client_id(),
                        "connected to broker"
                    );
                    announced_down = false;
                    let was_poisoned = drop_poison;
                    if drop_poison {
                        drop_poison = false;
                        self.eventloop
                            .mqtt_options
                            .set_clean_session(!self.persistent_session);
                    }
                    tokio::spawn(announce(
                        self.publisher.clone(),
                        self.capabilities.clone(),
                        was_poisoned,
                    ));
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => self.route(publish),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    tracing::debug!("disconnect sent");
                    break;
                }
                Ok(_) => {}
                Err(error) => {
                    self.metrics.mqtt.connected.store(false, Ordering::Relaxed);
                    self.metrics
                        .mqtt
                        .connection_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics.set_last_error(error.to_string());
                    if let ConnectionError::MqttState(StateError::Deserialization(
                        rumqttc::Error::PayloadSizeLimitExceeded(size),
                    )) = &error
                    {
                        self.metrics
                            .mqtt
                            .oversized_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            size,
                            "a message larger than mqtt.max_packet_bytes arrived; dropping it with a clean session \
                             (raise mqtt.max_packet_bytes, or set the broker's message size limit to it)"
                        );
                        if self.persistent_session {
                            drop_poison = true;
                            self.eventloop.mqtt_options.set_clean_session(true);
                        }
                    }
                    let delay = self.backoff.next_delay();
                    if announced_down {
                        tracing::debug!(error = %error, retry_in_ms = delay.as_millis() as u64, "broker still unreachable");
                    } else {
                        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "broker connection lost; reconnecting");
                        announced_down = true;
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.metrics.mqtt.connected.store(false, Ordering::Relaxed);
    }

    fn route(&mut self, publish: Publish) {
        let Some(command) = self.publisher.topics().route(&publish.topic) else {
            tracing::debug!(
                topic = publish.topic,
                "message on an unexpected topic ignored"
            );
            let publisher = self.publisher.clone();
            tokio::spawn(async move { publisher.ack(&publish).await });
            return;
        };
        if self.intake.is_cancelled() {
            // Not acknowledged: a persistent session hands it to the next run.
            return;
        }
        self.metrics.queue(
            "requests",
            self.inbound.max_capacity() - self.inbound.capacity(),
            self.inbound.max_capacity(),
        );
        match self.inbound.try_send(Inbound { command, publish }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Inbound { command, publish })) => {
                self.metrics.request_busy(command.name());
                self.metrics.queue_dropped("requests");
                let publisher = self.publisher.clone();
                tokio::spawn(async move {
                    let error = RequestError::new(
                        peek_id(&publish.payload),
                        ErrorCode::Busy,
                        "the request queue is full (service.request_queue); try again later",
                    );
                    publisher.error(&error, Some(&publish.topic)).await;
                    publisher.ack(&publish).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// After each ConnAck: subscribe again (even a resumed session may have lost them) and
/// publish the retained state.
async fn announce(publisher: Publisher, capabilities: Arc<Vec<u8>>, dropped_oversized: bool) {
    let filters: Vec<_> = Command::ALL
        .into_iter()
        .map(|c| rumqttc::SubscribeFilter::new(publisher.topics().request(c), QoS::AtLeastOnce))
        .collect();
    if let Err(e) = publisher.client().subscribe_many(filters).await {
        tracing::warn!(error = %e, "subscribe failed");
    }
    publisher.status(ONLINE).await;
    publisher.capabilities(capabilities.as_ref().clone()).await;
    if dropped_oversized {
        let error = RequestError::new(
            None,
            ErrorCode::Connection,
            "a message larger than mqtt.max_packet_bytes was received and dropped, together with \
             the requests the broker had queued for sotad; raise mqtt.max_packet_bytes or lower \
             the broker's message size limit",
        );
        publisher.error(&error, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        for (i, d) in delays.iter().enumerate() {
            let full = (100u128 << i).min(1000);
            assert!(
                *d >= full / 2 && *d <= full,
                "attempt {i}: {d} ms not in [{}, {full}]",
                full / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
