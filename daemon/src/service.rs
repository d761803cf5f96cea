//! The request service: takes requests from the connection task, parses them, recognizes
//! redeliveries, runs them and publishes the answer.
//!
//! A request is acknowledged to the broker only once its answer (reply or error) has been
//! handed to the client: if sotad dies first, the broker redelivers it to the next run
//! (persistent session), and the id check keeps a redelivery from running twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mqtt::dedup::RecentIds;
use crate::mqtt::request::{self, ErrorCode, PingRequest, Pong, Request, RequestError};
use crate::mqtt::{Command, Inbound, Publisher};
use crate::telemetry::Metrics;

/// How many request ids are remembered to recognize redeliveries.
pub const REMEMBERED_IDS: usize = 4096;

pub struct Service {
    /// Requests routed by the connection task.
    pub inbound: mpsc::Receiver<Inbound>,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    /// Ids of recent requests, to skip QoS-1 redeliveries.
    pub recent: RecentIds,
    /// `mqtt.max_request_bytes`.
    pub max_request_bytes: usize,
    pub device_id: String,
    /// Handlers run as tracked tasks so that shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when sotad stops taking requests.
    pub intake: CancellationToken,
    /// Whether the broker keeps queued requests for the next run (persistent session).
    pub persistent_session: bool,
}

impl Service {
    pub async fn run(mut self) {
        loop {
            let inbound = tokio::select! {
                biased;
                _ = self.intake.cancelled() => break,
                inbound = self.inbound.recv() => match inbound {
                    Some(inbound) => inbound,
                    None => break,
                },
            };
            self.handle(inbound).await;
        }
        // Requests still queued: with a persistent session they stay unacknowledged and the
        // broker delivers them to the next run; otherwise they would be lost, so say so.
        self.inbound.close();
        while let Ok(Inbound { publish, .. }) = self.inbound.try_recv() {
            if self.persistent_session {
                continue;
            }
            let error = RequestError::new(
                request::peek_id(&publish.payload),
                ErrorCode::ShuttingDown,
                "sotad is stopping and did not run this request; send it again when status is online",
            );
            self.publisher.error(&error, Some(&publish.topic)).await;
            self.publisher.ack(&publish).await;
        }
    }

    async fn handle(&mut self, Inbound { command, publish }: Inbound) {
        let started = Instant::now();
        let name = command.name();
        self.metrics.request_received(name);
        let parsed = match command {
            Command::Ping => {
                request::parse::<PingRequest>(&publish.payload, self.max_request_bytes)
            }
        };
        let request = match parsed {
            Ok(request) => request,
            Err(error) => {
                tracing::info!(
                    topic = publish.topic,
                    id = error.id.as_deref().unwrap_or(""),
                    code = ?error.code,
                    field = error.field.as_deref().unwrap_or(""),
                    error = error.message,
                    "request rejected"
                );
                self.publisher.error(&error, Some(&publish.topic)).await;
                self.publisher.ack(&publish).await;
                self.metrics.request_done(name, false, started.elapsed());
                return;
            }
        };
        if !self.recent.first_time(command, request.id()) {
            self.metrics.mqtt.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                command = name,
                id = request.id(),
                dup = publish.dup,
                "redelivered request skipped"
            );
            self.publisher.ack(&publish).await;
            return;
        }
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        let device_id = self.device_id.clone();
        self.tracker.spawn(async move {
            let pong = Pong {
                id: request.id,
                version: env!("CARGO_PKG_VERSION"),
                device_id,
                uptime_s: metrics.uptime().as_secs_f64(),
            };
            publisher.reply(command, &pong).await;
            publisher.ack(&publish).await;
            metrics.request_done(name, true, started.elapsed());
        });
    }
}
