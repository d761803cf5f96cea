//! Helpers for sotad's integration tests: a real mosquitto broker on a free loopback port,
//! the real `sotad` binary as a child process, and an MQTT test client (rumqttc).
//!
//! Nothing here is a stand-in: the broker is Debian's mosquitto, the daemon is the binary that
//! ships. The binary is found next to the test executable (`target/<profile>/sotad`), or at
//! `$SOTAD_BIN`; build it first (`cargo build --release -p sotad`, as scripts/test.sh does).

pub mod questions;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

/// The sotad binary under test.
pub fn sotad_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SOTAD_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/sotad
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("sotad");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p sotad` in the same profile (scripts/test.sh does), or set SOTAD_BIN",
        bin.display()
    );
    bin
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned; at worst the process is already gone (ESRCH).
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Debian's mosquitto, on a free loopback port, with persistence in a temporary directory so
/// that sessions and retained messages survive a restart (as on a real installation).
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start() -> anyhow::Result<Mosquitto> {
        Self::start_with(|_| Ok(String::new()))
    }

    /// Starts with extra configuration lines for the listener, written by `extra` (which gets
    /// the broker's directory to put password files or certificates in).
    pub fn start_with(
        extra: impl FnOnce(&Path) -> anyhow::Result<String>,
    ) -> anyhow::Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        // mosquitto started as root drops to the `mosquitto` user, which must be able to write
        // its persistence file and log here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let mut broker = Mosquitto {
            port: free_port(),
            dir,
            child: None,
        };
        let conf = broker.dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf)?;
        writeln!(f, "listener {} 127.0.0.1", broker.port)?;
        let extra = extra(broker.dir.path())?;
        if extra.contains("allow_anonymous") {
            write!(f, "{extra}")?;
        } else {
            writeln!(f, "allow_anonymous true")?;
            write!(f, "{extra}")?;
        }
        writeln!(f, "persistence true")?;
        writeln!(f, "persistence_location {}/", broker.dir.path().display())?;
        writeln!(f, "autosave_interval 1")?;
        writeln!(
            f,
            "log_dest file {}/mosquitto.log",
            broker.dir.path().display()
        )?;
        writeln!(f, "log_type all")?;
        writeln!(f, "max_queued_messages 10000")?;
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto; scripts/test.sh does)")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10)).with_context(|| self.log())
    }

    /// Stops the broker the way systemd would (SIGTERM: it saves sessions and retained messages).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            wait_timeout(&mut child, Duration::from_secs(10))?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real sotad binary with a configuration file written for the test.
/// Configuration sections that turn the engines, microphone and speaker off.
pub const ENGINES_OFF: &str = "[stt]\nmodel = \"\"\n[llm]\nmodel = \"\"\n[tts]\nvoice = \"\"\n\
    [audio]\ncapture_device = \"\"\nplayback_device = \"\"\n";

pub struct Sotad {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub device_id: String,
}

impl Sotad {
    /// Starts `sotad --config <file> run`, the file holding `config_toml`.
    pub fn start(config_toml: &str, device_id: &str) -> anyhow::Result<Sotad> {
        Self::start_with_env(config_toml, device_id, &[])
    }

    /// Like [`Sotad::start`], with extra environment variables (e.g. systemd's NOTIFY_SOCKET).
    pub fn start_with_env(
        config_toml: &str,
        device_id: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Sotad> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("sotad.toml");
        std::fs::write(&conf, config_toml)?;
        let log = std::fs::File::create(dir.path().join("sotad.log"))?;
        let mut command = Command::new(sotad_bin());
        command
            .arg("--config")
            .arg(&conf)
            .arg("run")
            .env("RUST_LOG", "info,rumqttd=warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sotad")?;
        Ok(Sotad {
            child: Some(child),
            dir,
            device_id: device_id.to_string(),
        })
    }

    /// A configuration for `port` on loopback, with fast reconnects, plus `extra` TOML lines
    /// appended to the [mqtt] section.
    /// The engines, microphone and speaker are off: these tests are about the link.
    /// [`ENGINES_OFF`] does the same for hand-written configurations.
    pub fn config_for(port: u16, device_id: &str, extra_mqtt: &str) -> String {
        format!(
            "{}{ENGINES_OFF}",
            Self::link_config(port, device_id, extra_mqtt)
        )
    }

    /// Only the [device], [mqtt] and [telemetry] sections; the caller adds the rest.
    pub fn link_config(port: u16, device_id: &str, extra_mqtt: &str) -> String {
        format!(
            "[device]\nid = \"{device_id}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 1000\n{extra_mqtt}\n\
             [telemetry]\ninterval_secs = 1\n"
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn sigterm(&mut self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGTERM);
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("sotad already reaped")?;
        let status = wait_timeout(child, timeout)?;
        self.child = None;
        Ok(status)
    }

    /// Waits `for_` and fails if sotad exited meanwhile: a refused connection must be retried,
    /// never fatal. Returns the log so far.
    pub async fn assert_still_running_after(&mut self, for_: Duration) -> String {
        tokio::time::sleep(for_).await;
        assert!(
            self.wait_exit(Duration::from_millis(10)).is_err(),
            "sotad must keep running\n{}",
            self.log()
        );
        self.log()
    }

    /// Resident set size from /proc, in KiB: (total, anonymous).
    pub fn rss_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("RssAnon:")))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sotad.log")).unwrap_or_default()
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("sotad/{}/{suffix}", self.device_id)
    }
}

impl Drop for Sotad {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- sotad log ---\n{}", self.log());
        }
    }
}

/// An MQTT client for tests, polled by its own task; received publishes arrive on a channel.
/// It reconnects by itself (like any integrator's client) when the broker goes away.
pub struct TestClient {
    pub client: AsyncClient,
    /// Filters to subscribe again on every ConnAck (a restarted broker may have lost them).
    filters: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    rx: mpsc::UnboundedReceiver<Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    /// Connects as `id`; `persistent` keeps the session (and QoS-1 messages) across reconnects.
    pub async fn connect(port: u16, id: &str, persistent: bool) -> anyhow::Result<TestClient> {
        Self::connect_options(MqttOptions::new(id, "127.0.0.1", port), persistent).await
    }

    pub async fn connect_with_credentials(
        port: u16,
        id: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<TestClient> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_credentials(user, password);
        Self::connect_options(options, false).await
    }

    async fn connect_options(
        mut options: MqttOptions,
        persistent: bool,
    ) -> anyhow::Result<TestClient> {
        options
            .set_clean_session(!persistent)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
        let filters = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let resubscribe = (client.clone(), filters.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            for filter in resubscribe.1.lock().unwrap().iter() {
                                let _ = resubscribe
                                    .0
                                    .try_subscribe(filter.clone(), QoS::AtLeastOnce);
                            }
                        }
                        let _ = connected_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected_rx.recv())
            .await
            .context("test client could not connect within 10 s")?;
        Ok(TestClient {
            client,
            filters,
            rx,
            task,
        })
    }

    pub async fn subscribe(&self, filter: &str) -> anyhow::Result<()> {
        self.filters.lock().unwrap().push(filter.to_string());
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        // Let the SUBACK arrive before the test publishes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await?;
        Ok(())
    }

    /// Publishes with the retain flag: the broker keeps the message for later subscribers.
    pub async fn publish_retained(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .await?;
        Ok(())
    }

    /// Waits for a publish on `topic` whose payload satisfies `accept`; others are discarded.
    pub async fn expect(
        &mut self,
        topic: &str,
        timeout: Duration,
        accept: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<Publish> {
        Ok(self.expect_collecting(topic, timeout, accept).await?.0)
    }

    /// Like [`TestClient::expect`], but also returns everything else received meanwhile.
    pub async fn expect_collecting(
        &mut self,
        topic: &str,
        timeout: Duration,
        accept: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<(Publish, Vec<Publish>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut others = Vec::new();
        loop {
            let p = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .with_context(|| format!("nothing acceptable on {topic} within {timeout:?}"))?
                .context("client task ended")?;
            if p.topic == topic && accept(&p.payload) {
                return Ok((p, others));
            }
            others.push(p);
        }
    }

    /// Waits for a JSON message on `topic` whose `id` is `id`.
    pub async fn expect_id(
        &mut self,
        topic: &str,
        id: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let p = self
            .expect(topic, timeout, |payload| {
                serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| v["id"] == id)
            })
            .await?;
        Ok(serde_json::from_slice(&p.payload)?)
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Publish> {
        let mut out = Vec::new();
        while let Ok(p) = self.rx.try_recv() {
            out.push(p);
        }
        out
    }

    /// Receives for `duration`, returning everything.
    pub async fn collect_for(&mut self, duration: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + duration;
        let mut out = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(p);
        }
        out
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The model cache (`$SOTAD_MODELS_DIR`, default `~/.cache/sotad/models`), as
/// `scripts/install-models.sh` fills it. Tests that need models fail when it is missing.
pub fn models_dir() -> PathBuf {
    let dir = match std::env::var_os("SOTAD_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sotad/models")
        }
    };
    assert!(
        dir.join("smollm2-135m-instruct-q4_1.gguf").is_file(),
        "models missing in {}: run scripts/install-models.sh",
        dir.display()
    );
    dir
}

/// A payload as JSON (`Value::Null` when it is not JSON).
pub fn json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null)
}

/// A configuration for `port` with the installed models, no microphone or speaker, and
/// `extra` sections.
pub fn models_config(port: u16, device_id: &str, extra: &str) -> String {
    format!(
        "{}\n[models]\ndir = \"{}\"\n[audio]\ncapture_device = \"\"\nplayback_device = \"\"\n{extra}\n",
        Sotad::link_config(port, device_id, ""),
        models_dir().display()
    )
}

/// Subscribes `client` to `sotad`'s status and waits (up to `wait`) until it says online.
pub async fn wait_online(client: &mut TestClient, sotad: &Sotad, wait: Duration) {
    client
        .subscribe(&sotad.topic("status"))
        .await
        .expect("subscribe status");
    client
        .expect(&sotad.topic("status"), wait, |p| p == b"online")
        .await
        .unwrap_or_else(|e| panic!("sotad never said online: {e}\n{}", sotad.log()));
}

/// A client on the broker at `port`, subscribed to everything under `sotad`'s device prefix,
/// once sotad says online (up to `wait`: model loading on a busy machine).
pub async fn online(port: u16, sotad: &Sotad, name: &str, wait: Duration) -> TestClient {
    let mut client = TestClient::connect(port, name, false).await.unwrap();
    client
        .subscribe(&format!("{}/#", sotad.topic("").trim_end_matches('/')))
        .await
        .unwrap();
    client
        .expect(&sotad.topic("status"), wait, |p| p == b"online")
        .await
        .unwrap_or_else(|e| panic!("sotad never said online: {e}\n{}", sotad.log()));
    client
}

/// The LibriVox clips of Debian's pocketsphinx-testdata with their transcripts.
pub fn librivox_clips() -> Vec<(PathBuf, String)> {
    let dir = models_dir().join("speech/librivox");
    let list = std::fs::read_to_string(dir.join("transcription")).expect("librivox transcription");
    list.lines()
        .filter_map(|line| {
            let (text, name) = line.rsplit_once(" (")?;
            let name = name.trim_end_matches(')');
            let text = text.replace("<s>", "").replace("</s>", "");
            Some((dir.join(format!("{name}.wav")), text.trim().to_string()))
        })
        .collect()
}

/// Lower-case words without punctuation, for comparing transcripts.
pub fn normalize_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .map(|w| if w == "mr" { "mister".to_string() } else { w })
        .collect()
}

/// Word error rate of `hypothesis` against `reference` after [`normalize_words`].
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = normalize_words(reference);
    let h = normalize_words(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

/// What [`flood`] measured.
#[derive(Debug, Clone)]
pub struct FloodReport {
    /// Malformed and oversized messages published (retained and not).
    pub bad_sent: usize,
    /// From the first of them to sotad's answer to a ping published after the last, in seconds.
    pub flood_secs: f64,
    /// Good pings sent during the flood, and how many of them got exactly one answer (a pong
    /// or an error with their id), none, or more than one.
    pub good_sent: usize,
    pub good_answered_once: usize,
    pub good_unanswered: Vec<String>,
    pub good_answered_twice: Vec<String>,
    /// Of those answers, how many were pongs (the others were `busy`).
    pub good_pongs: usize,
    /// A ping sent after the flood: time to its pong, in milliseconds.
    pub ping_after_ms: f64,
    /// sotad's anonymous RSS before and after the flood, in KiB.
    pub rss_anon_before_kib: u64,
    pub rss_anon_after_kib: u64,
}

/// Floods the broker with `bad` malformed and oversized messages (every kind: not JSON,
/// truncated JSON, invalid ids, wrong fields, binary on `llm/ask`, unknown topics, and
/// payloads of `oversized_bytes` on `ping` and `stt/transcribe`; some retained, some QoS 0)
/// aimed at `sotad`, with a good ping every `good_every` of them from another client, then
/// checks that sotad still answers. sotad must be online with a persistent session.
pub async fn flood(
    port: u16,
    sotad: &Sotad,
    bad: usize,
    oversized_bytes: usize,
    good_every: usize,
) -> anyhow::Result<FloodReport> {
    use std::collections::BTreeMap;

    let mut watcher =
        TestClient::connect(port, &format!("flood-watch-{}", sotad.pid()), false).await?;
    watcher.subscribe(&sotad.topic("pong")).await?;
    watcher.subscribe(&sotad.topic("error")).await?;
    let good = TestClient::connect(port, &format!("flood-good-{}", sotad.pid()), false).await?;
    // The flooder: its own event loop with a deep request queue, so publishing is bounded by
    // the broker's acknowledgements, not by this test.
    let mut options = MqttOptions::new(format!("flood-{}", sotad.pid()), "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_inflight(200);
    let (flooder, mut eventloop) = AsyncClient::new(options, 1000);
    let flood_task = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // Warm up (buffers, the error path), then take the baseline.
    let ping = sotad.topic("ping");
    for i in 0..50 {
        flooder
            .publish(&ping, QoS::AtLeastOnce, false, format!("warm-{i}"))
            .await?;
    }
    good.publish(&ping, r#"{"id":"flood-warm"}"#).await?;
    watcher
        .expect_id(&sotad.topic("pong"), "flood-warm", Duration::from_secs(15))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_anon_before_kib) = sotad.rss_kib()?;

    let big = vec![b'{'; oversized_bytes];
    let topics = [
        sotad.topic("ping"),
        sotad.topic("tts/say"),
        sotad.topic("stt/transcribe"),
        sotad.topic("llm/ask"),
        sotad.topic("no/such/command"),
    ];
    let mut good_ids = Vec::new();
    let started = Instant::now();
    for i in 0..bad {
        let (topic, qos, retain, payload): (&str, QoS, bool, Vec<u8>) = match i % 8 {
            0 => (&topics[0], QoS::AtLeastOnce, false, b"not json".to_vec()),
            1 => (
                &topics[1],
                QoS::AtLeastOnce,
                false,
                br#"{"id":"trunc"#.to_vec(),
            ),
            2 => (&topics[0], QoS::AtMostOnce, false, big.clone()),
            3 => (&topics[2], QoS::AtLeastOnce, true, big.clone()),
            4 => (
                &topics[0],
                QoS::AtLeastOnce,
                false,
                br#"{"id":"a+b#c"}"#.to_vec(),
            ),
            5 => (
                &topics[1],
                QoS::AtLeastOnce,
                true,
                format!(r#"{{"id":"r{i}","text":5}}"#).into_bytes(),
            ),
            6 => (
                &topics[3],
                QoS::AtMostOnce,
                false,
                vec![0xff, 0x00, 0xfe, 0x80],
            ),
            _ => (&topics[4], QoS::AtLeastOnce, false, b"junk".to_vec()),
        };
        flooder.publish(topic, qos, retain, payload).await?;
        if good_every > 0 && i % good_every == good_every / 2 {
            let id = format!("good-{i}");
            good.publish(&ping, format!(r#"{{"id":"{id}"}}"#)).await?;
            good_ids.push(id);
        }
    }
    // Wait for the flood to leave the flooder (its queue drained and acknowledged).
    let marker = "flood-end";
    flooder
        .publish(
            &ping,
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"id":"{marker}"}}"#),
        )
        .await?;
    let mut flood_secs = f64::NAN;

    // Every good id: answered once? Collect until the marker's pong and all good ids are in,
    // or 60 s.
    let mut answers: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut marker_seen = false;
    while Instant::now() < deadline {
        let done = marker_seen && good_ids.iter().all(|id| answers.contains_key(id));
        if done {
            break;
        }
        for p in watcher.collect_for(Duration::from_millis(200)).await {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let Some(id) = v["id"].as_str() else { continue };
            if id == marker && !marker_seen {
                marker_seen = true;
                flood_secs = started.elapsed().as_secs_f64();
            }
            let e = answers.entry(id.to_string()).or_default();
            e.0 += 1;
            if p.topic.ends_with("/pong") {
                e.1 += 1;
            }
        }
    }
    // Late doubles would show here.
    for p in watcher.collect_for(Duration::from_millis(500)).await {
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
        if let Some(id) = v["id"].as_str() {
            answers.entry(id.to_string()).or_default().0 += 1;
        }
    }
    let count = |id: &String| answers.get(id).map(|a| a.0).unwrap_or(0);
    let good_unanswered: Vec<String> = good_ids
        .iter()
        .filter(|id| count(id) == 0)
        .cloned()
        .collect();
    let good_answered_twice: Vec<String> = good_ids
        .iter()
        .filter(|id| count(id) > 1)
        .cloned()
        .collect();
    let good_answered_once = good_ids.iter().filter(|id| count(id) == 1).count();
    let good_pongs = good_ids
        .iter()
        .filter(|id| answers.get(*id).is_some_and(|a| a.1 > 0))
        .count();

    let sent = Instant::now();
    good.publish(&ping, r#"{"id":"after-flood"}"#).await?;
    watcher
        .expect_id(&sotad.topic("pong"), "after-flood", Duration::from_secs(15))
        .await?;
    let ping_after_ms = sent.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_anon_after_kib) = sotad.rss_kib()?;
    flood_task.abort();
    Ok(FloodReport {
        bad_sent: bad,
        flood_secs,
        good_sent: good_ids.len(),
        good_answered_once,
        good_unanswered,
        good_answered_twice,
        good_pongs,
        ping_after_ms,
        rss_anon_before_kib,
        rss_anon_after_kib,
    })
}

/// The Python with the test clients of `tests/requirements.txt` (`openai`, `jinja2`,
/// `wyoming`, `zeroconf`):
/// `$SOTAD_TEST_PYTHON`, or the venv scripts/setup.sh makes.
pub fn test_python() -> PathBuf {
    let python = std::env::var_os("SOTAD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sotad/venv-tests/bin/python")
        });
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh (it installs tests/requirements.txt into a venv)",
        python.display()
    );
    python
}
