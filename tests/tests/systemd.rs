//! The systemd notify protocol, spoken by the real binary to a real notify socket: READY=1
//! once serving, WATCHDOG=1 at half the watchdog period, STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use sotad_tests::{Mosquitto, Sotad};

fn recv_until(socket: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {timeout:?}; got {seen:?}");
}

#[test]
fn ready_watchdog_and_stopping_notifications() {
    let broker = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // WatchdogSec=2: sotad must ping every second.
    let mut sotad = Sotad::start_with_env(
        &Sotad::config_for(broker.port, "notify", ""),
        "notify",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    )
    .unwrap();
    let ready = recv_until(&socket, "READY=1", Duration::from_secs(15));
    assert!(ready.last().unwrap().contains("STATUS="), "{ready:?}");

    let start = Instant::now();
    for _ in 0..3 {
        recv_until(&socket, "WATCHDOG=1", Duration::from_secs(3));
    }
    let three_pings = start.elapsed();
    assert!(
        three_pings >= Duration::from_millis(1500) && three_pings < Duration::from_millis(4500),
        "three watchdog pings took {three_pings:?}; expected about 2-3 s at one per second"
    );

    sotad.sigterm();
    recv_until(&socket, "STOPPING=1", Duration::from_secs(5));
    assert!(sotad.wait_exit(Duration::from_secs(10)).unwrap().success());
}
