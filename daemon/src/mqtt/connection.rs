//! The one task that owns rumqttc's `EventLoop`: connects, reconnects, and routes.
//!
//! It never awaits a publish (that could deadlock on rumqttc's bounded request channel): on
//! every ConnAck it spawns the re-subscription and the `online`/capabilities publications, and
//! it hands received requests to the service with `try_send`, answering `busy` when the
//! service queue is full. Failures are retried with exponential back-off and jitter, reset
//! only by a connection that lasted (`STABLE_CONNECTION`).
//!
//! Before serving on each connection it checks the retained `instance` document: a newer
//! daemon with the same device id makes this one stand down (`Link`). Messages over
//! `mqtt.max_packet_bytes` are read, refused and acknowledged on the same connection
//! (`MQTT_MAX_PACKET`). Replies it cannot await go through one replier task (`Connection::owe`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::{
    ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    StateError, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::discovery::Discovery;
use super::outbound::{OFFLINE, ONLINE, Publisher};
use super::payloads::Instance;
use super::request::{ErrorCode, RequestError, peek_id};
use super::topics::{Command, Topics};
use crate::config::Config;
use crate::telemetry::Metrics;

/// The largest packet MQTT 3.1.1 can frame: a remaining length of 268,435,455 bytes plus the
/// fixed header. rumqttc reads up to this, so no message size can cost the connection.
pub const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// A connection must have lasted this long for its end to reset the back-off: one that the
/// broker closes at once (a message it cannot deliver, a session taken over) is retried ever
/// more slowly instead of in a tight loop.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

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
        // Incoming: every packet MQTT can frame, so that a message over `mqtt.max_packet_bytes`
        // is read, acknowledged and refused (`route`) instead of making rumqttc drop the
        // connection, which a persistent session or a retained message would repeat forever.
        // Outgoing: room for the MQTT header around a payload of the configured size.
        .set_max_packet_size(MQTT_MAX_PACKET, m.max_packet_bytes + 1024)
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
    /// Home Assistant's discovery document (or its removal), republished on every ConnAck.
    pub discovery: Arc<Discovery>,
    /// Requests go here; when full, the request is answered with `busy`.
    pub inbound: mpsc::Sender<Inbound>,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// Cancelled when sotad stops taking requests; later ones are left unacknowledged so
    /// that a persistent session delivers them to the next run.
    pub intake: CancellationToken,
    /// Cancelled when the connection must end (after the farewell, or on timeout).
    pub stop: CancellationToken,
    /// `mqtt.max_packet_bytes`: larger messages are refused without being parsed.
    pub max_packet_bytes: usize,
    /// This process's retained `instance` document, published before it serves.
    pub instance: Instance,
    /// The wait before a daemon that stood down for a newer one with its device id checks again.
    pub stand_down: Backoff,
    /// Where the link is between ConnAck and serving.
    pub link: Link,
}

/// The state of the link: after each ConnAck sotad first looks at the retained `instance`
/// document (checking), then serves, or stands down for a newer daemon with its device id.
#[derive(Debug, Default)]
pub struct Link {
    phase: Phase,
    /// Whether this process has published its `instance` document on some connection: a
    /// different document seen before that is its predecessor's (a restart), not a rival.
    published: bool,
    /// Requests that arrived while checking (a persistent session delivers queued ones at once).
    held: Vec<Publish>,
    /// The queue of the replier task (`Connection::owe`), started on first use.
    owed: Option<mpsc::Sender<Owed>>,
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Down,
    /// Waiting for the two SUBACKs of the `instance` subscription: the second one comes after
    /// every retained message the first one released.
    Checking {
        subacks: u8,
        rival: Option<Instance>,
    },
    Serving,
    /// Disconnecting to stand down for a newer daemon with the same device id.
    StandingDown,
}

impl Connection {
    pub async fn run(mut self) {
        let mut announced_down = false;
        let mut connected_at: Option<Instant> = None;
        loop {
            let event = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected_at = Some(Instant::now());
                    self.metrics.mqtt.connected.store(true, Ordering::Relaxed);
                    self.metrics.mqtt.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        session_present = ack.session_present,
                        client_id = self.eventloop.mqtt_options.client_id(),
                        "connected to broker"
                    );
                    announced_down = false;
                    self.link.phase = Phase::Checking {
                        subacks: 0,
                        rival: None,
                    };
                    tokio::spawn(check_instance(self.publisher.clone()));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Phase::Checking { subacks, rival } = &mut self.link.phase {
                        *subacks += 1;
                        if *subacks >= 2 {
                            let rival = rival.take();
                            self.checked(rival);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => self.route(publish),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    tracing::debug!("disconnect sent");
                    if !matches!(self.link.phase, Phase::StandingDown) {
                        break;
                    }
                    // Close the socket now (the DISCONNECT keeps the broker from publishing
                    // our will over the other daemon's `online`), then wait before looking again.
                    self.eventloop.clean();
                    self.link.phase = Phase::Down;
                    self.metrics.mqtt.connected.store(false, Ordering::Relaxed);
                    connected_at = None;
                    let delay = self.stand_down.next_delay();
                    tracing::info!(
                        check_again_in_s = delay.as_secs(),
                        "stood down; not connected to the broker"
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    self.link.phase = Phase::Down;
                    self.link.held.clear();
                    self.metrics.mqtt.connected.store(false, Ordering::Relaxed);
                    self.metrics
                        .mqtt
                        .connection_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics.set_last_error(error.to_string());
                    // Only a connection that lasted resets the back-off: one that the broker
                    // closes at once would otherwise be retried in a tight loop.
                    if connected_at
                        .take()
                        .is_some_and(|at| at.elapsed() >= STABLE_CONNECTION)
                    {
                        self.backoff.reset();
                    }
                    if let ConnectionError::MqttState(StateError::Deserialization(
                        rumqttc::Error::PayloadSizeLimitExceeded(size),
                    )) = &error
                    {
                        // Cannot happen below MQTT's own limit (MQTT_MAX_PACKET); kept explicit.
                        tracing::error!(size, "a packet larger than MQTT allows arrived");
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
        if publish.topic == self.publisher.topics().instance() {
            self.on_instance(publish);
            return;
        }
        if self.discovery.enabled() && publish.topic == self.discovery.status_topic {
            // Home Assistant (re)started: it wants the discovery documents again.
            let (publisher, discovery) = (self.publisher.clone(), self.discovery.clone());
            let again = publish.payload.as_ref() == b"online";
            let header = header_of(publish);
            tokio::spawn(async move {
                publisher.ack(&header).await;
                if again {
                    publisher
                        .discovery(discovery.topic.clone(), discovery.payload.clone())
                        .await;
                }
            });
            return;
        }
        match self.link.phase {
            Phase::Serving => {}
            Phase::Checking { .. } => {
                // Not acknowledged until served: if this daemon stands down, the broker hands
                // them to the one that keeps the device id.
                if self.link.held.len() < self.inbound.max_capacity() {
                    self.link.held.push(publish);
                }
                return;
            }
            Phase::Down | Phase::StandingDown => return,
        }
        let Some(command) = self.publisher.topics().route(&publish.topic) else {
            tracing::debug!(
                topic = publish.topic,
                "message on an unexpected topic ignored"
            );
            self.owe(Owed {
                error: None,
                header: header_of(publish),
            });
            return;
        };
        if self.intake.is_cancelled() {
            // Not acknowledged: a persistent session hands it to the next run.
            return;
        }
        if publish.payload.len() > self.max_packet_bytes {
            self.refuse_oversized(publish);
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
                // The id is looked for in a payload of JSON request size only: this task must
                // not spend long on a message it turns away.
                let id = (publish.payload.len() <= PEEK_ID_BYTES)
                    .then(|| peek_id(&publish.payload))
                    .flatten();
                let error = RequestError::new(
                    id,
                    ErrorCode::Busy,
                    "the request queue is full (service.request_queue); try again later",
                );
                self.owe(Owed {
                    error: Some(error),
                    header: header_of(publish),
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Connection {
    /// A message on the `instance` topic: ours, a predecessor's, or a rival's.
    fn on_instance(&mut self, publish: Publish) {
        let publisher = self.publisher.clone();
        let header = Publish {
            payload: Default::default(),
            ..publish.clone()
        };
        tokio::spawn(async move { publisher.ack(&header).await });
        let Ok(other) = serde_json::from_slice::<Instance>(&publish.payload) else {
            if !publish.payload.is_empty() {
                tracing::debug!("an unreadable instance document ignored");
            }
            return;
        };
        if other.instance == self.instance.instance {
            return;
        }
        match &mut self.link.phase {
            Phase::Checking { rival, .. } => *rival = Some(other),
            // Published while this one serves: another daemon with this device id (and another
            // client id, or it could not be connected now) has just started.
            Phase::Serving if !publish.retain => self.rival_seen(Some(other)),
            _ => {}
        }
    }

    /// The check after a ConnAck is over: serve, or stand down for a newer daemon.
    fn checked(&mut self, seen: Option<Instance>) {
        let rival = seen.filter(|other| {
            // Before this process published its own document, a different one is its
            // predecessor's (a restart, or a crash): never a rival.
            self.link.published && other.is_newer_than(&self.instance)
        });
        if rival.is_some() {
            self.rival_seen(rival);
            return;
        }
        self.link.phase = Phase::Serving;
        self.link.published = true;
        self.metrics
            .mqtt
            .standing_down
            .store(false, Ordering::Relaxed);
        tokio::spawn(announce(
            self.publisher.clone(),
            self.capabilities.clone(),
            self.discovery.clone(),
            self.instance.clone(),
        ));
        for publish in std::mem::take(&mut self.link.held) {
            self.route(publish);
        }
    }

    /// A newer daemon serves this device id: say so, stop serving, disconnect, look again later.
    fn rival_seen(&mut self, rival: Option<Instance>) {
        let Some(rival) = rival else { return };
        self.link.phase = Phase::StandingDown;
        self.link.held.clear();
        self.metrics.mqtt.stood_down.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .mqtt
            .standing_down
            .store(true, Ordering::Relaxed);
        let device = self.publisher.topics().base().to_string();
        let message = format!(
            "another sotad uses this device id ({device}): instance {} on host {:?}, pid {}, started after this one;              it serves the device id and this one stands down (not serving, checking again later).              Give each board its own `device.id` (the default is the host name)",
            rival.instance, rival.host, rival.pid
        );
        tracing::error!(
            device,
            this_instance = self.instance.instance,
            other_instance = rival.instance,
            other_host = rival.host,
            other_pid = rival.pid,
            "duplicate device id: {message}"
        );
        self.metrics.set_last_error(message.clone());
        crate::systemd::status(&format!("standing down: duplicate device id {device}"));
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            let error = RequestError::new(None, ErrorCode::Connection, message);
            publisher.error(&error, None).await;
            let _ = publisher.client().disconnect().await;
        });
    }

    /// A request larger than `mqtt.max_packet_bytes`: acknowledged (so that neither a persistent
    /// session nor a redelivery brings it back) and answered with `payload_too_large` naming the
    /// topic and the size, without being parsed. The connection stays up.
    fn refuse_oversized(&mut self, publish: Publish) {
        let size = publish.payload.len();
        self.metrics
            .mqtt
            .oversized_dropped
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            topic = publish.topic,
            size,
            retained = publish.retain,
            limit = self.max_packet_bytes,
            "a message larger than mqtt.max_packet_bytes was refused"
        );
        let mut message = format!(
            "the message on {} has {size} bytes, more than mqtt.max_packet_bytes ({}); it was not read",
            publish.topic, self.max_packet_bytes
        );
        if publish.retain {
            message.push_str(&format!(
                "; it is retained: clear it with an empty retained message on {}",
                publish.topic
            ));
        }
        let error = RequestError::new(None, ErrorCode::PayloadTooLarge, message);
        self.owe(Owed {
            error: Some(error),
            header: header_of(publish),
        });
    }

    /// Hands a reply this task cannot await to the one replier task, in order; only when
    /// `capacity::REPLIES` replies are already waiting does it spawn one (so that a flood of messages
    /// turned away does not become a flood of tasks).
    fn owe(&mut self, owed: Owed) {
        let publisher = &self.publisher;
        let sender = self.link.owed.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<Owed>(crate::capacity::REPLIES);
            let publisher = publisher.clone();
            tokio::spawn(async move {
                while let Some(owed) = rx.recv().await {
                    owed.pay(&publisher).await;
                }
            });
            tx
        });
        if let Err(
            mpsc::error::TrySendError::Full(owed) | mpsc::error::TrySendError::Closed(owed),
        ) = sender.try_send(owed)
        {
            let publisher = self.publisher.clone();
            tokio::spawn(async move { owed.pay(&publisher).await });
        }
    }
}

/// Payloads up to this size are searched for an id when a request is turned away as `busy`.
const PEEK_ID_BYTES: usize = 256 * 1024;

/// A reply owed by the connection task: an optional error, then the acknowledgement.
#[derive(Debug)]
struct Owed {
    error: Option<RequestError>,
    /// The received message without its payload (enough to acknowledge it).
    header: Publish,
}

impl Owed {
    async fn pay(self, publisher: &Publisher) {
        if let Some(error) = &self.error {
            publisher.error(error, Some(&self.header.topic)).await;
        }
        publisher.ack(&self.header).await;
    }
}

/// A received message without its payload, which is let go at once.
fn header_of(publish: Publish) -> Publish {
    Publish {
        payload: Default::default(),
        ..publish
    }
}

/// After each ConnAck, before serving: subscribe to the retained `instance` document twice.
/// The broker answers in order, so the second SUBACK follows every retained message the first
/// subscription released: then the check is complete (`Connection::checked`).
async fn check_instance(publisher: Publisher) {
    let topic = publisher.topics().instance();
    for _ in 0..2 {
        if let Err(e) = publisher
            .client()
            .subscribe(topic.clone(), QoS::AtLeastOnce)
            .await
        {
            tracing::warn!(error = %e, "subscribe failed");
        }
    }
}

/// Once the check passed: claim the device id with this process's retained `instance`
/// document, subscribe again (even a resumed session may have lost them) and publish the
/// retained state.
async fn announce(
    publisher: Publisher,
    capabilities: Arc<Vec<u8>>,
    discovery: Arc<Discovery>,
    instance: Instance,
) {
    match serde_json::to_vec(&instance) {
        Ok(payload) => publisher.instance(payload).await,
        Err(e) => tracing::error!(error = %e, "could not serialize the instance document"),
    }
    let mut filters: Vec<_> = Command::ALL
        .into_iter()
        .map(|c| rumqttc::SubscribeFilter::new(publisher.topics().request(c), QoS::AtLeastOnce))
        .collect();
    if discovery.enabled() {
        filters.push(rumqttc::SubscribeFilter::new(
            discovery.status_topic.clone(),
            QoS::AtLeastOnce,
        ));
    }
    if let Err(e) = publisher.client().subscribe_many(filters).await {
        tracing::warn!(error = %e, "subscribe failed");
    }
    publisher.status(ONLINE).await;
    publisher.capabilities(capabilities.as_ref().clone()).await;
    publisher
        .discovery(discovery.topic.clone(), discovery.payload.clone())
        .await;
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
