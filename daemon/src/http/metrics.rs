//! The telemetry sample (the document published on MQTT `telemetry`) in Prometheus' text
//! exposition format, version 0.0.4: one family per figure, `sotad_` first, stages, queues
//! and engines as labels.

use std::fmt::Write;

use crate::telemetry::TelemetrySample;

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP sotad_{name} {help}");
        let _ = writeln!(self.0, "# TYPE sotad_{name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.0, "sotad_{name}");
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.value(name, &[], value);
    }
}

pub fn render(s: &TelemetrySample) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.one(
        "uptime_seconds",
        "gauge",
        "Seconds since sotad started.",
        s.uptime_s,
    );
    let p = &s.process;
    o.one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        p.rss_bytes as f64,
    );
    o.one(
        "process_resident_anon_bytes",
        "gauge",
        "Resident heap and other anonymous memory.",
        p.rss_anon_bytes as f64,
    );
    o.one(
        "process_resident_file_bytes",
        "gauge",
        "Resident file-backed pages (memory-mapped model weights).",
        p.rss_file_bytes as f64,
    );
    o.one(
        "process_cpu_percent",
        "gauge",
        "CPU since the previous sample, percent of one core.",
        p.cpu_percent,
    );
    o.one(
        "process_threads",
        "gauge",
        "Threads of the process.",
        p.threads as f64,
    );
    let sys = &s.system;
    o.family(
        "system_load_average",
        "gauge",
        "Load average over 1, 5 and 15 minutes.",
    );
    for (window, v) in ["1m", "5m", "15m"].iter().zip(sys.load_avg) {
        o.value("system_load_average", &[("window", window)], v);
    }
    o.one(
        "system_memory_available_bytes",
        "gauge",
        "MemAvailable of the system.",
        sys.mem_available_bytes as f64,
    );
    if !sys.temperatures_c.is_empty() {
        o.family(
            "temperature_celsius",
            "gauge",
            "Temperature per thermal zone.",
        );
        for (zone, t) in &sys.temperatures_c {
            o.value("temperature_celsius", &[("zone", zone)], *t);
        }
    }
    let m = &s.mqtt;
    o.one(
        "mqtt_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        f64::from(u8::from(m.connected)),
    );
    for (name, help, v) in [
        (
            "mqtt_connects_total",
            "Successful MQTT connections.",
            m.connects,
        ),
        (
            "mqtt_connection_errors_total",
            "MQTT connection attempts or connections that failed.",
            m.connection_errors,
        ),
        (
            "mqtt_duplicates_total",
            "QoS-1 redeliveries recognized and not run again.",
            m.duplicates,
        ),
        (
            "mqtt_publish_dropped_total",
            "QoS-0 messages dropped on a full outgoing queue.",
            m.publish_dropped,
        ),
        (
            "mqtt_oversized_dropped_total",
            "Messages over mqtt.max_packet_bytes refused.",
            m.oversized_dropped,
        ),
        (
            "mqtt_stood_down_total",
            "Times this daemon stood down for a newer one.",
            m.stood_down,
        ),
    ] {
        o.one(name, "counter", help, v as f64);
    }
    for (name, help, pick) in [
        (
            "requests_total",
            "Requests that reached a stage (MQTT commands, http.*, turns).",
            0,
        ),
        ("requests_ok_total", "Requests answered successfully.", 1),
        (
            "requests_errors_total",
            "Requests answered with an error.",
            2,
        ),
        (
            "requests_busy_total",
            "Requests turned away because a queue was full.",
            3,
        ),
    ] {
        o.family(name, "counter", help);
        for (stage, snap) in &s.stages {
            let c = &snap.counters;
            let v = [c.requests, c.ok, c.errors, c.busy][pick];
            o.value(name, &[("stage", stage)], v as f64);
        }
    }
    o.family(
        "latency_milliseconds",
        "gauge",
        "Latency percentiles over each stage's last 256 requests.",
    );
    for (stage, snap) in &s.stages {
        if let Some(l) = &snap.latency_ms {
            for (q, v) in [("0.5", l.p50), ("0.95", l.p95), ("1", l.max)] {
                o.value(
                    "latency_milliseconds",
                    &[("stage", stage), ("quantile", q)],
                    v,
                );
            }
        }
    }
    for (name, kind, help, pick) in [
        (
            "queue_depth",
            "gauge",
            "Items waiting in a bounded queue.",
            0,
        ),
        ("queue_capacity", "gauge", "Capacity of a bounded queue.", 1),
        (
            "queue_dropped_total",
            "counter",
            "Items a full queue refused.",
            2,
        ),
    ] {
        o.family(name, kind, help);
        for (queue, q) in &s.queues {
            let v = [q.depth as u64, q.capacity as u64, q.dropped][pick];
            o.value(name, &[("queue", queue)], v as f64);
        }
    }
    o.family(
        "engine_ready",
        "gauge",
        "1 when an engine is loaded, 0 while loading or after a failure (state label).",
    );
    for (engine, state) in &s.engines {
        let kind = state.split(':').next().unwrap_or("");
        o.value(
            "engine_ready",
            &[("engine", engine), ("state", kind)],
            f64::from(u8::from(kind == "ready")),
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
