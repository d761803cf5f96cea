//! A flood at the MQTT link (issue 24): 10,000 malformed and oversized messages, retained and
//! not, at Debian's mosquitto for the real `sotad`, with a good ping every 100 of them from
//! another client. Prints how long the flood took to go through, how the good pings were
//! answered, the time to answer a ping afterwards, and sotad's anonymous RSS before and after.
//!
//! ```text
//! cargo build --release -p sotad
//! cargo bench -p sotad-benches --bench flood              # 10,000 messages
//! cargo bench -p sotad-benches --bench flood -- 50000     # another count
//! ```
//! sotad runs with `mqtt.max_packet_bytes = 65536` (the smallest allowed), so that an
//! oversized message is 70 KiB; the eight kinds are in `sotad_tests::flood`. Needs mosquitto.
//! The lean version (400 messages) is `a_flood_of_bad_messages_leaves_sotad_serving` in
//! tests/tests/reliability.rs.

use std::time::Duration;

use sotad_tests::{Mosquitto, Sotad, TestClient, flood};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let broker = Mosquitto::start().expect("mosquitto");
    let config = Sotad::config_for(
        broker.port,
        "flood",
        "max_packet_bytes = 65536\nmax_request_bytes = 65536",
    );
    let sotad = Sotad::start(&config, "flood").expect("sotad");
    let mut client = TestClient::connect(broker.port, "bench-flood", false)
        .await
        .expect("client");
    client
        .subscribe(&sotad.topic("status"))
        .await
        .expect("subscribe");
    client
        .expect(&sotad.topic("status"), Duration::from_secs(15), |p| {
            p == b"online"
        })
        .await
        .unwrap_or_else(|e| panic!("sotad not online: {e}\n{}", sotad.log()));
    client
        .subscribe(&sotad.topic("telemetry"))
        .await
        .expect("subscribe");

    let report = flood(broker.port, &sotad, count, 70 * 1024, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    // The connection count from the next telemetry sample (one: the flood cost no reconnect).
    client.drain();
    let telemetry = client
        .expect(&sotad.topic("telemetry"), Duration::from_secs(5), |_| true)
        .await
        .expect("telemetry");
    let telemetry: serde_json::Value = serde_json::from_slice(&telemetry.payload).unwrap();

    let grew = report.rss_anon_after_kib as i64 - report.rss_anon_before_kib as i64;
    println!(
        "flood: {} bad messages (1 in 4 oversized, 70 KiB; 1 in 4 retained)",
        report.bad_sent
    );
    println!(
        "  through sotad in {:.2} s ({:.0} messages/s)",
        report.flood_secs,
        report.bad_sent as f64 / report.flood_secs
    );
    println!(
        "  good pings during the flood: {} sent, {} answered once ({} pongs, the rest busy), {} unanswered, {} answered twice",
        report.good_sent,
        report.good_answered_once,
        report.good_pongs,
        report.good_unanswered.len(),
        report.good_answered_twice.len()
    );
    println!("  ping after the flood: {:.1} ms", report.ping_after_ms);
    println!(
        "  anonymous RSS: {} KiB before, {} KiB after ({grew:+} KiB)",
        report.rss_anon_before_kib, report.rss_anon_after_kib
    );
    println!(
        "  connects: {}, oversized refused: {}",
        telemetry["mqtt"]["connects"], telemetry["mqtt"]["oversized_dropped"]
    );
}
