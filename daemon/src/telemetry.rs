//! Telemetry: counters every stage updates, and the periodic sample published on `telemetry`.
//!
//! Stages record into [`Metrics`] with atomics or a short lock, never blocking on I/O. The
//! telemetry task reads them together with process and system figures from `/proc` and
//! `/sys`, and publishes one JSON [`TelemetrySample`] per interval at QoS 0.
//!
//! A leaf: it owns the figures other modules report ([`Latency`] of a turn, the voice
//! loop's [`VoiceSample`]) and imports nothing from the rest of the daemon.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many recent latencies each stage keeps for its percentiles.
const LATENCY_WINDOW: usize = 256;

/// Shared counters; one per daemon, behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    pub mqtt: MqttMetrics,
    stages: Mutex<BTreeMap<&'static str, StageMetrics>>,
    queues: Mutex<BTreeMap<&'static str, QueueMetrics>>,
    /// Engine state by stage: `loading`, `ready`, or `failed: <why>`.
    engines: Mutex<BTreeMap<&'static str, String>>,
}

/// Connection health, updated by the connection task.
#[derive(Debug, Default)]
pub struct MqttMetrics {
    pub connected: AtomicBool,
    /// Successful connections (ConnAck received), the first included.
    pub connects: AtomicU64,
    /// Connection attempts or connections that failed.
    pub connection_errors: AtomicU64,
    /// QoS-1 redeliveries recognized by request id and not run again.
    pub duplicates: AtomicU64,
    /// QoS-0 messages (telemetry) dropped because the outgoing queue was full.
    pub publish_dropped: AtomicU64,
    /// Messages larger than mqtt.max_packet_bytes, refused without being parsed.
    pub oversized_dropped: AtomicU64,
    /// Times this daemon stood down for a newer one with the same device id.
    pub stood_down: AtomicU64,
    /// Set while it stands down: nothing is published for the device id then.
    pub standing_down: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct StageMetrics {
    /// Requests that reached the stage.
    pub requests: u64,
    /// Requests answered successfully.
    pub ok: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Requests turned away with `busy`.
    pub busy: u64,
    #[serde(skip)]
    latencies_ms: Vec<f64>,
    #[serde(skip)]
    next: usize,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct QueueMetrics {
    pub depth: usize,
    pub capacity: usize,
    pub dropped: u64,
}

impl StageMetrics {
    fn record_latency(&mut self, ms: f64) {
        if self.latencies_ms.len() < LATENCY_WINDOW {
            self.latencies_ms.push(ms);
        } else {
            self.latencies_ms[self.next] = ms;
        }
        self.next = (self.next + 1) % LATENCY_WINDOW;
    }

    fn latency_summary(&self) -> Option<LatencySummary> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Some(LatencySummary {
            samples: sorted.len(),
            p50: round3(pick(0.5)),
            p95: round3(pick(0.95)),
            max: round3(pick(1.0)),
        })
    }
}

/// Latency percentiles over the last [`LATENCY_WINDOW`] requests, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            mqtt: MqttMetrics::default(),
            stages: Mutex::new(BTreeMap::new()),
            queues: Mutex::new(BTreeMap::new()),
            engines: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn stage<R>(&self, name: &'static str, f: impl FnOnce(&mut StageMetrics) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update; counters stay usable.
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        f(stages.entry(name).or_default())
    }

    pub fn request_received(&self, stage: &'static str) {
        self.stage(stage, |s| s.requests += 1);
    }

    pub fn request_done(&self, stage: &'static str, ok: bool, latency: Duration) {
        self.stage(stage, |s| {
            if ok {
                s.ok += 1;
            } else {
                s.errors += 1;
            }
            s.record_latency(latency.as_secs_f64() * 1000.0);
        });
    }

    pub fn request_busy(&self, stage: &'static str) {
        self.stage(stage, |s| s.busy += 1);
    }

    /// Reports the current depth of a bounded queue.
    pub fn queue(&self, name: &'static str, depth: usize, capacity: usize) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let q = queues.entry(name).or_default();
        q.depth = depth;
        q.capacity = capacity;
    }

    pub fn queue_dropped(&self, name: &'static str) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(name).or_default().dropped += 1;
    }

    /// Counts an answer started from a speculative transcript before the endpoint, in
    /// telemetry's stages as `turn.speculative_answer`: `ok` when a turn adopted it,
    /// `errors` when it was abandoned (speech came back).
    pub fn speculative_answer(&self, adopted: bool) {
        self.stage("turn.speculative_answer", |s| {
            s.requests += 1;
            if adopted {
                s.ok += 1;
            } else {
                s.errors += 1;
            }
        });
    }

    /// Records a finished voice-loop turn: `turn` counts turns (ok = answered) with their
    /// total time, and `turn.<part>` the latency parts, so telemetry shows their percentiles.
    pub fn turn_done(&self, answered: bool, latency: &Latency) {
        let ms = |x: f64| Duration::from_secs_f64(x.max(0.0) / 1e3);
        self.request_received("turn");
        self.request_done("turn", answered, ms(latency.total_ms));
        for (name, value) in [
            ("turn.endpoint", latency.endpoint_ms),
            ("turn.stt", latency.stt_ms),
            ("turn.ttft", latency.ttft_ms),
            ("turn.first_audio", latency.first_audio_ms),
            ("turn.response", latency.response_ms),
            ("turn.intent", latency.intent_ms),
        ] {
            if let Some(v) = value {
                self.request_received(name);
                self.request_done(name, true, ms(v));
            }
        }
    }

    /// Records a turn that matched an intent: `intent` counts them (ok: the integration
    /// answered in time; error: the fallback was spoken) with the wait for the answer.
    pub fn intent_done(&self, answered: bool, wait: Duration) {
        self.request_received("intent");
        self.request_done("intent", answered, wait);
    }

    /// Records an engine's state for the next sample.
    pub fn engine_state(&self, stage: &'static str, state: String) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage, state);
    }

    pub fn set_last_error(&self, error: impl Into<String>) {
        *self
            .mqtt
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(error.into());
    }

    fn stages_snapshot(&self) -> BTreeMap<String, StageSnapshot> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages
            .iter()
            .map(|(name, s)| {
                (
                    name.to_string(),
                    StageSnapshot {
                        counters: s.clone(),
                        latency_ms: s.latency_summary(),
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageSnapshot {
    #[serde(flatten)]
    pub counters: StageMetrics,
    pub latency_ms: Option<LatencySummary>,
}

/// One telemetry message.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetrySample {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    pub uptime_s: f64,
    pub process: ProcessSample,
    pub system: SystemSample,
    pub mqtt: MqttSample,
    pub stages: BTreeMap<String, StageSnapshot>,
    pub queues: BTreeMap<String, QueueMetrics>,
    /// Configured engines: `loading`, `ready` or `failed: <why>`.
    pub engines: BTreeMap<String, String>,
    /// Microphone, VAD and turn counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<VoiceSample>,
}

/// Voice-loop counters for telemetry.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceSample {
    pub capture: String,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub overruns: u64,
    pub utterances: u64,
    pub utterances_dropped: u64,
    pub ignored_while_speaking: u64,
    pub barge_ins: u64,
    pub speculations: u64,
    pub speculations_abandoned: u64,
    pub complete_endpoints: u64,
    pub vad_windows: u64,
    pub vad_model_runs: u64,
    /// Wake words heard; answers stopped by a stop word or phrase (`voice.wake_words`).
    pub wake_detections: u64,
    pub stops: u64,
}

/// Where the time of a turn went, in milliseconds; absent stages did not run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// End of speech (or the text's arrival) → the intent published, for a turn that
    /// matched an intent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent_ms: Option<f64>,
    /// End of speech as the VAD saw it → endpoint (the silence the endpointer waited for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_ms: Option<f64>,
    /// The transcription, from its start to the transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stt_ms: Option<f64>,
    /// How long before the endpoint the transcription started (speculatively, at a pause).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stt_early_ms: Option<f64>,
    /// Start of the turn (the endpoint, or the text's arrival) → the LLM's first token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Start of the turn (the endpoint, or the text's arrival) → first audio sample ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_audio_ms: Option<f64>,
    /// End of speech as the VAD saw it (or arrival) → first audio: what the person waits
    /// for, less the VAD's lag behind the true end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_ms: Option<f64>,
    /// How long before the endpoint an answer started from a speculative transcript had its
    /// first audio ready: the margin by which the endpoint, not the computation, set the
    /// wait. Absent when the audio was not ready before the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_early_ms: Option<f64>,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    /// Heap and other anonymous memory.
    pub rss_anon_bytes: u64,
    /// File-backed pages, e.g. memory-mapped model weights.
    pub rss_file_bytes: u64,
    /// CPU time over the last interval, in percent of one core (200 = two cores busy).
    pub cpu_percent: f64,
    pub threads: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemSample {
    pub load_avg: [f64; 3],
    pub mem_available_bytes: u64,
    /// Degrees Celsius per thermal zone type, e.g. {"cpu-thermal": 51.1}; empty when the board has none.
    pub temperatures_c: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MqttSample {
    pub connected: bool,
    pub connects: u64,
    pub connection_errors: u64,
    pub duplicates: u64,
    pub publish_dropped: u64,
    pub oversized_dropped: u64,
    pub stood_down: u64,
    pub last_error: Option<String>,
}

/// Takes samples; remembers the previous CPU reading to compute a rate.
#[derive(Debug)]
pub struct Sampler {
    thermal_zones: Vec<String>,
    last_cpu: Option<(Instant, f64)>,
}

impl Sampler {
    pub fn new(thermal_zones: Vec<String>) -> Sampler {
        let mut sampler = Sampler {
            thermal_zones,
            last_cpu: None,
        };
        sampler.last_cpu = Some((Instant::now(), process_cpu_seconds().unwrap_or(0.0)));
        sampler
    }

    pub fn sample(&mut self, metrics: &Metrics) -> TelemetrySample {
        let now = Instant::now();
        let cpu = process_cpu_seconds().unwrap_or(0.0);
        let cpu_percent = match self.last_cpu {
            Some((then, before)) if now > then => {
                (cpu - before).max(0.0) / (now - then).as_secs_f64() * 100.0
            }
            _ => 0.0,
        };
        self.last_cpu = Some((now, cpu));

        let mut process = read_process_status();
        process.cpu_percent = round3(cpu_percent);
        let m = &metrics.mqtt;
        TelemetrySample {
            ts: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| round3(d.as_secs_f64()))
                .unwrap_or(0.0),
            uptime_s: round3(metrics.uptime().as_secs_f64()),
            process,
            system: SystemSample {
                load_avg: read_load_avg(),
                mem_available_bytes: read_mem_available(),
                temperatures_c: read_temperatures(
                    Path::new("/sys/class/thermal"),
                    &self.thermal_zones,
                ),
            },
            mqtt: MqttSample {
                connected: m.connected.load(Ordering::Relaxed),
                connects: m.connects.load(Ordering::Relaxed),
                connection_errors: m.connection_errors.load(Ordering::Relaxed),
                duplicates: m.duplicates.load(Ordering::Relaxed),
                publish_dropped: m.publish_dropped.load(Ordering::Relaxed),
                oversized_dropped: m.oversized_dropped.load(Ordering::Relaxed),
                stood_down: m.stood_down.load(Ordering::Relaxed),
                last_error: m
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            },
            stages: metrics.stages_snapshot(),
            engines: metrics
                .engines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            voice: None,
            queues: metrics
                .queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// User plus system CPU time of this process, in seconds.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after it are space-separated.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is index 0, so utime (field 14) is index 11 and stime index 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) / ticks)
}

fn read_process_status() -> ProcessSample {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_process_status(&text)
}

fn parse_process_status(text: &str) -> ProcessSample {
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    ProcessSample {
        rss_bytes: kib("VmRSS:"),
        rss_anon_bytes: kib("RssAnon:"),
        rss_file_bytes: kib("RssFile:"),
        cpu_percent: 0.0,
        threads: kib("Threads:") / 1024,
    }
}

fn read_load_avg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn read_mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

/// Reads `thermal_zone*/{type,temp}` under `root`; `wanted` empty means every zone.
fn read_temperatures(root: &Path, wanted: &[String]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_zone = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("thermal_zone"));
        if !is_zone {
            continue;
        }
        let Ok(kind) = std::fs::read_to_string(dir.join("type")) else {
            continue;
        };
        let kind = kind.trim().to_string();
        if !wanted.is_empty() && !wanted.contains(&kind) {
            continue;
        }
        let Some(milli) = std::fs::read_to_string(dir.join("temp"))
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
        else {
            continue;
        };
        // Several zones can share a type (e.g. two "cpu-thermal"); keep the hottest.
        let celsius = round3(milli / 1000.0);
        let slot = out.entry(kind).or_insert(celsius);
        if celsius > *slot {
            *slot = celsius;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_over_a_window() {
        let metrics = Metrics::new();
        for ms in 1..=100 {
            metrics.request_received("ping");
            metrics.request_done("ping", ms % 10 != 0, Duration::from_millis(ms));
        }
        let snap = &metrics.stages_snapshot()["ping"];
        assert_eq!(snap.counters.requests, 100);
        assert_eq!(snap.counters.ok, 90);
        assert_eq!(snap.counters.errors, 10);
        let l = snap.latency_ms.as_ref().unwrap();
        assert_eq!(l.samples, 100);
        assert!((l.p50 - 50.0).abs() <= 1.0, "{l:?}");
        assert_eq!(l.max, 100.0);
        for _ in 0..(2 * LATENCY_WINDOW) {
            metrics.request_done("ping", true, Duration::from_millis(1));
        }
        let l = metrics.stages_snapshot()["ping"]
            .latency_ms
            .clone()
            .unwrap();
        assert_eq!((l.samples, l.max), (LATENCY_WINDOW, 1.0));
    }

    #[test]
    fn process_status_fields() {
        let s = parse_process_status(
            "Name:\tsotad\nVmRSS:\t  2048 kB\nRssAnon:\t 1024 kB\nRssFile:\t 512 kB\nThreads:\t7\n",
        );
        assert_eq!(s.rss_bytes, 2048 * 1024);
        assert_eq!(s.rss_anon_bytes, 1024 * 1024);
        assert_eq!(s.rss_file_bytes, 512 * 1024);
        assert_eq!(s.threads, 7);
    }

    #[test]
    fn thermal_zones_are_read_and_filtered() {
        let root = tempfile::tempdir().unwrap();
        for (i, (kind, temp)) in [
            ("cpu-thermal", "51100"),
            ("gpu-thermal", "47000"),
            ("cpu-thermal", "53000"),
        ]
        .iter()
        .enumerate()
        {
            let zone = root.path().join(format!("thermal_zone{i}"));
            std::fs::create_dir(&zone).unwrap();
            std::fs::write(zone.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(zone.join("temp"), format!("{temp}\n")).unwrap();
        }
        let all = read_temperatures(root.path(), &[]);
        assert_eq!(all.len(), 2);
        assert_eq!(all["cpu-thermal"], 53.0);
        let only = read_temperatures(root.path(), &["gpu-thermal".to_string()]);
        assert_eq!(
            only.into_iter().collect::<Vec<_>>(),
            vec![("gpu-thermal".to_string(), 47.0)]
        );
        assert!(read_temperatures(Path::new("/nonexistent"), &[]).is_empty());
    }

    #[test]
    fn sample_of_this_process_is_plausible() {
        let metrics = Metrics::new();
        let mut sampler = Sampler::new(vec![]);
        let s = sampler.sample(&metrics);
        assert!(s.process.rss_bytes > 0);
        assert!(s.process.threads >= 1);
        assert!(s.system.mem_available_bytes > 0);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["mqtt"]["connected"].is_boolean());
    }
}
