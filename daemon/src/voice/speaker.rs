//! The `sotad-play` thread: what sotad says, played in order on the configured speaker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::Duration;

use crate::audio::{PlaybackConfig, Player, Samples};
use crate::telemetry::Metrics;

/// A piece of speech for the speaker.
pub struct PlayChunk {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Set when its turn is cancelled: the rest is skipped at once.
    pub cancel: Arc<AtomicBool>,
    /// The sentence goes on in the next chunk with the same `cancel` (played without a gap
    /// on the open device).
    pub more: bool,
}

/// The player's queue; cloned by whoever has audio to play.
#[derive(Clone)]
pub struct Speaker {
    queue: std_mpsc::SyncSender<PlayChunk>,
    metrics: Arc<Metrics>,
}

impl Speaker {
    /// Queues a chunk; when the queue is full (a stalled device) it is dropped and counted
    /// (the audio still goes out on MQTT).
    pub fn play(&self, chunk: PlayChunk) {
        if self.queue.try_send(chunk).is_err() {
            self.metrics.queue_dropped("playback");
        }
    }
}

/// Starts the player thread on `config`'s device with a queue of `queue` chunks. `playing`
/// is set while it plays.
pub fn spawn(
    config: PlaybackConfig,
    queue: usize,
    playing: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Option<Speaker> {
    let player = Player::open(config);
    let (tx, rx) = std_mpsc::sync_channel::<PlayChunk>(queue);
    let spawned = std::thread::Builder::new()
        .name("sotad-play".into())
        .spawn(move || play_loop(&player, &rx, &playing));
    match spawned {
        Ok(_) => Some(Speaker { queue: tx, metrics }),
        Err(e) => {
            tracing::error!(error = %e, "could not start the playback thread");
            None
        }
    }
}

fn play_loop(player: &Player, rx: &std_mpsc::Receiver<PlayChunk>, playing: &AtomicBool) {
    let mut reported = false;
    // A chunk taken while waiting for the rest of a sentence that belongs elsewhere.
    let mut pending: Option<PlayChunk> = None;
    while let Some(PlayChunk {
        samples,
        sample_rate,
        cancel,
        more,
    }) = pending.take().or_else(|| rx.recv().ok())
    {
        if cancel.load(Ordering::Relaxed) {
            continue;
        }
        playing.store(true, Ordering::Relaxed);
        // The rest of the sentence (chunks with `more`), played on the open device.
        let mut open = more;
        let mut next = || {
            while open {
                if cancel.load(Ordering::Relaxed) {
                    return None;
                }
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(chunk) => {
                        if Arc::ptr_eq(&chunk.cancel, &cancel) && chunk.sample_rate == sample_rate {
                            open = chunk.more;
                            return Some(chunk.samples);
                        }
                        // Another turn's audio: the sentence ended early (cancelled).
                        pending = Some(chunk);
                        open = false;
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
            }
            None
        };
        match player.play_stream(Samples::F32(&samples), sample_rate, &mut next, &cancel) {
            Ok(_) => reported = false,
            Err(e) => {
                // A busy or missing speaker is reported once per outage, not fatal: the
                // audio still went out on MQTT.
                if !reported {
                    tracing::warn!(device = player.device(), error = %e, "playback failed");
                    reported = true;
                }
            }
        }
        playing.store(false, Ordering::Relaxed);
    }
    playing.store(false, Ordering::Relaxed);
}
