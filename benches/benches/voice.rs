//! The voice loop end to end, on the real `sotad` binary: latency from the end of a spoken
//! question to the first audio sample of the answer, per stage (median over the spoken
//! question set), each answer scored (keywords and English, `benches/data/questions.tsv`),
//! and the idle cost of an open microphone (CPU % and RSS over time).
//!
//! ```text
//! cargo build --release -p sotad
//! cargo bench -p sotad-benches --bench voice                 # latency and answers, 35 questions
//! cargo bench -p sotad-benches --bench voice -- idle 600     # idle, 600 s
//! SOTAD__VOICE__WAKE_WORDS=hey_jarvis cargo bench -p sotad-benches --bench voice -- idle 600  # idle, waiting for a wake word
//! cargo bench -p sotad-benches --bench voice -- split        # early endpoint's false splits
//! cargo bench -p sotad-benches --bench voice -- soak 1800    # memory over 30 min, a turn a minute
//! SOTAD__VAD__SPECULATE_MS=0 cargo bench -p sotad-benches --bench voice   # no speculative STT
//! SOTAD_BENCH_CONFIG=configs/low-latency.toml cargo bench -p sotad-benches --bench voice
//! SOTAD__LLM__MODEL=smollm2-135m-instruct-q4_1.gguf cargo bench -p sotad-benches --bench voice  # another LLM
//! ```
//! The daemon inherits the environment, so any `SOTAD__SECTION__KEY` override applies;
//! `SOTAD_BENCH_CONFIG` names a profile whose keys are passed that way.
//! The daemon runs on its embedded broker with Whisper tiny.en, the default LLM and the
//! joe-medium Piper voice (the default configuration, answers capped at 48 tokens). Its
//! microphone is alsa-lib's `file` plugin reading a recording this bench writes: the question
//! set spoken by the Piper voice (resampled to 16 kHz), each followed by 9 s of silence;
//! a turn is scored against the question its transcript shares most words with;
//! for `idle`, faint noise (about -60 dBFS) and nobody speaking; for `split`, pairs of
//! sentences with a pause between them (300, 400, 500 and 700 ms), to count how often the
//! early endpoint (`vad.complete_silence_ms`) ends the utterance after the first sentence.
//! Turn latencies come from the
//! daemon's `turn/done` events (watched with `mosquitto_sub`); `endpoint` starts at the VAD's
//! estimate of the end of speech. Needs the models directory (`scripts/install-models.sh`)
//! and `mosquitto_sub` (Debian's mosquitto-clients).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotad_benches::{median, models_dir};
use sotad_engines::audio;
use sotad_engines::tts::{LoadOptions, SynthOptions, Voice};
use sotad_tests::questions::{self, Answered, Question};

/// The spoken question set (`benches/data/questions.tsv`): each answer is scored.
fn question_set() -> Vec<Question> {
    questions::load()
}

/// The question a transcript is of: the one sharing the most words with it (at least half of
/// the question's words), since Whisper may drop or change a word.
fn question_of<'a>(set: &'a [Question], transcript: &str) -> Option<&'a Question> {
    let heard: std::collections::HashSet<String> = questions::normalize(transcript)
        .split(' ')
        .map(str::to_string)
        .collect();
    set.iter()
        .map(|q| {
            let words: Vec<String> = questions::normalize(&q.text)
                .split(' ')
                .map(str::to_string)
                .collect();
            let shared = words.iter().filter(|w| heard.contains(*w)).count();
            (q, shared as f64 / words.len().max(1) as f64)
        })
        .filter(|(_, f)| *f >= 0.5)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(q, _)| q)
}
/// Silence after each question: room for its turn to finish (the microphone is ignored
/// while sotad speaks).
const GAP_S: f64 = 9.0;

/// The daemon under test: `$SOTAD_BIN` (to compare two builds), else this tree's release build.
fn sotad_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOTAD_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/sotad");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p sotad` first",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn push_silence(raw: &mut Vec<u8>, secs: f64) {
    raw.extend(std::iter::repeat_n(0u8, (secs * 16_000.0) as usize * 2));
}

fn push_samples(raw: &mut Vec<u8>, samples: &[f32]) {
    for &x in samples {
        raw.extend_from_slice(&((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
}

fn piper_voice(models: &Path) -> Voice {
    Voice::load(
        models.join("piper/en_US-joe-medium.onnx"),
        &LoadOptions::default(),
    )
    .expect("load the Piper voice (scripts/install-models.sh)")
}

/// `text` spoken by the Piper voice, 16 kHz mono.
fn speak(voice: &Voice, text: &str) -> Vec<f32> {
    let mut spoken = Vec::new();
    let mut rate = 22_050;
    voice
        .synthesize(text, &SynthOptions::default(), |chunk| {
            rate = chunk.sample_rate;
            spoken.extend_from_slice(chunk.samples);
            std::ops::ControlFlow::Continue(())
        })
        .expect("synthesize a sentence");
    audio::to_mono_16k(&spoken, rate, 1)
        .expect("resample")
        .into_owned()
}

/// Without the silence Piper puts around speech (so that a pause added between two
/// sentences is the pause).
fn trimmed(mono: Vec<f32>) -> Vec<f32> {
    let loud = |x: &f32| x.abs() > 0.01;
    let first = mono.iter().position(loud).unwrap_or(0);
    let last = mono.iter().rposition(loud).map_or(mono.len(), |i| i + 1);
    mono[first..last.max(first)].to_vec()
}

/// Where speech truly ends in `mono` (16 kHz), in samples: the end of the last 10 ms frame
/// whose RMS is within 40 dB of the loudest frame's (Piper leaves a quiet tail after the
/// last word; the VAD's own estimate of the end comes later still).
fn true_end(mono: &[f32]) -> usize {
    const FRAME: usize = 160;
    let rms: Vec<f32> = mono
        .chunks(FRAME)
        .map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt())
        .collect();
    let loudest = rms.iter().copied().fold(0.0f32, f32::max);
    rms.iter()
        .rposition(|&r| r > loudest * 0.01)
        .map_or(0, |i| ((i + 1) * FRAME).min(mono.len()))
}

/// The questions, spoken by the Piper voice, at 16 kHz, each followed by silence; the mean
/// question length in seconds, and where each question's speech truly ends (seconds from
/// the start of the recording).
fn question_recording(models: &Path, set: &[Question]) -> (Vec<u8>, f64, Vec<f64>) {
    let voice = piper_voice(models);
    let mut raw = Vec::new();
    push_silence(&mut raw, 1.0);
    let mut speech_s = 0.0;
    let mut ends = Vec::new();
    for q in set {
        let mono = speak(&voice, &q.text);
        speech_s += mono.len() as f64 / 16_000.0;
        ends.push((raw.len() / 2 + true_end(&mono)) as f64 / 16_000.0);
        push_samples(&mut raw, &mono);
        push_silence(&mut raw, GAP_S);
    }
    (raw, speech_s / set.len() as f64, ends)
}

/// How much later than the true end of speech the VAD placed it, in ms: the turn's
/// `speech_end_s` (a position in the capture stream, which is the recording here) against
/// the nearest true end. `None` when no question ends within 1.5 s of it.
fn vad_lag_ms(turn: &serde_json::Value, true_ends: &[f64]) -> Option<f64> {
    let seen = turn["speech_end_s"].as_f64()?;
    true_ends
        .iter()
        .map(|&t| seen - t)
        .filter(|d| d.abs() < 1.5)
        .min_by(|a, b| a.abs().total_cmp(&b.abs()))
        .map(|d| d * 1e3)
}

/// Faint noise (about -60 dBFS RMS) for `secs`: a room where nobody speaks.
fn room_tone(secs: f64) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let samples: Vec<f32> = (0..(secs * 16_000.0) as usize)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.0035
        })
        .collect();
    let mut raw = Vec::with_capacity(samples.len() * 2);
    push_samples(&mut raw, &samples);
    raw
}

struct Daemon {
    child: Child,
    sub: Child,
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile_dir::Dir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.sub.kill();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.sub.wait();
    }
}

/// A temporary directory without the tempfile crate (removed on drop).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("sotad-bench-voice-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The keys of the configuration file named by `SOTAD_BENCH_CONFIG` (for instance
/// `configs/low-latency.toml`, relative to the workspace root or absolute) as `SOTAD__SECTION__KEY`
/// overrides for the daemon, which keeps the bench's own file for broker, devices and models
/// (a variable set in the environment wins over the profile's key).
/// Only the simple form the profiles use: `[section]` lines and `key = scalar` lines.
/// Read once: `split` starts one daemon per pause.
fn profile_env() -> &'static [(String, String)] {
    static VARS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    VARS.get_or_init(read_profile)
}

fn read_profile() -> Vec<(String, String)> {
    let Some(name) = std::env::var_os("SOTAD_BENCH_CONFIG") else {
        return Vec::new();
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("SOTAD_BENCH_CONFIG: cannot read {}: {e}", path.display()));
    let mut section = String::new();
    let mut vars = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_uppercase();
        } else if let Some((key, value)) = line.split_once('=') {
            // A variable already set in the environment wins over the profile.
            let var = format!("SOTAD__{section}__{}", key.trim().to_uppercase());
            if std::env::var_os(&var).is_none() {
                vars.push((var, value.trim().trim_matches('"').to_string()));
            }
        } else {
            panic!(
                "SOTAD_BENCH_CONFIG: {}: cannot read line {line:?}",
                path.display()
            );
        }
    }
    println!("configuration from {}: {vars:?}", path.display());
    vars
}

/// Starts sotad with the microphone reading `mic_raw`, and `mosquitto_sub` on its topics.
fn start(mic_raw: &[u8], telemetry_secs: u32) -> Daemon {
    let dir = tempfile_dir::Dir::new();
    let mic = dir.0.join("mic.raw");
    std::fs::write(&mic, mic_raw).unwrap();
    let conf = dir.0.join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm.bench_mic {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n\
             pcm.bench_speaker {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n format \"raw\"\n}}\n",
            mic.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let toml = dir.0.join("sotad.toml");
    std::fs::write(
        &toml,
        format!(
            "[device]\nid = \"bench\"\n[mqtt]\nhost = \"\"\nport = {port}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
             [telemetry]\ninterval_secs = {telemetry_secs}\n[models]\ndir = \"{}\"\n\
             [audio]\ncapture_device = \"bench_mic\"\nplayback_device = \"bench_speaker\"\n\
             [llm]\nmax_tokens = 48\n[log]\nlevel = \"warn\"\n",
            models_dir().display()
        ),
    )
    .unwrap();
    let child = Command::new(sotad_bin())
        .args(["--config", toml.to_str().unwrap(), "run"])
        .envs(profile_env().iter().cloned())
        .env(
            "ALSA_CONFIG_PATH",
            format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start sotad");
    // The embedded broker needs a moment; mosquitto_sub retries until it connects.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sub = loop {
        let mut sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v"])
            .args(["-t", "sotad/bench/turn/done", "-t", "sotad/bench/telemetry"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients)");
        std::thread::sleep(Duration::from_millis(300));
        match sub.try_wait() {
            Ok(None) => break sub,
            _ => assert!(
                Instant::now() < deadline,
                "the embedded broker did not come up"
            ),
        }
    };
    let out = sub.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Daemon {
        child,
        sub,
        lines,
        _dir: dir,
    }
}

/// `utime + stime` of a process, in seconds, and its VmRSS / RssAnon in KiB.
fn proc_figures(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    let hz = clock_ticks_per_second();
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, field("VmRSS:"), field("RssAnon:"))
}

/// Clock ticks per second, from `getconf` (100 on Linux in practice).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Issue 25's memory targets: anonymous RSS after load, and after the question set's turns.
const ANON_AFTER_LOAD_TARGET_MIB: f64 = 48.0;
const ANON_AFTER_TURNS_TARGET_MIB: f64 = 128.0;

/// `RssAnon` (KiB) of sotad with the defaults, its microphone on faint noise, once every engine
/// reports `ready` in telemetry and two more seconds have passed.
fn anon_after_load() -> Option<u64> {
    let daemon = start(&room_tone(60.0), 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(line) = daemon.lines.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let Some(p) = line.strip_prefix("sotad/bench/telemetry ") else {
            continue;
        };
        let t: serde_json::Value = serde_json::from_str(p).unwrap_or_default();
        let engines = t["engines"].as_object().cloned().unwrap_or_default();
        if !engines.is_empty() && engines.values().all(|v| v == "ready") {
            std::thread::sleep(Duration::from_secs(2));
            return Some(proc_figures(daemon.child.id()).2);
        }
    }
    None
}

fn latency() {
    let anon_load = anon_after_load();
    println!(
        "sotad anonymous RSS after load: {} (target {ANON_AFTER_LOAD_TARGET_MIB:.0} MiB)",
        anon_load.map_or("engines not ready within 60 s".into(), |a| format!(
            "{:.1} MiB",
            a as f64 / 1024.0
        ))
    );
    let models = models_dir();
    let set = question_set();
    let (raw, mean_question_s, true_ends) = question_recording(&models, &set);
    println!(
        "voice loop latency: {} spoken questions (mean {:.2} s, {}), Whisper tiny.en, the default LLM, Piper joe-medium, defaults",
        set.len(),
        mean_question_s,
        questions::FILE
    );
    let daemon = start(&raw, 5);
    let total = Duration::from_secs_f64(raw.len() as f64 / 32_000.0 + 120.0);
    let deadline = Instant::now() + total;
    let mut turns = Vec::new();
    let mut scored = Vec::new();
    while turns.len() < set.len() && Instant::now() < deadline {
        let Ok(line) = daemon.lines.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let Some(payload) = line.strip_prefix("sotad/bench/turn/done ") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let l = &v["latency"];
        let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
        let lag = vad_lag_ms(&v, &true_ends).unwrap_or(f64::NAN);
        println!(
            "  {:8} {:10} VAD lag {:4.0} ms  endpoint {:5.0} ms ({:10})  stt {:5.0} ms (started {:4.0} ms early)  first token {:5.0} ms  first audio {:5.0} ms (ready {:4.0} ms before the endpoint)  end of speech -> audio {:5.0} ms (VAD's end {:5.0} ms)  | {:?} -> {:?}",
            v["turn"].as_str().unwrap_or("?"),
            v["outcome"].as_str().unwrap_or("?"),
            lag,
            f("endpoint_ms"),
            v["endpoint"].as_str().unwrap_or("?"),
            f("stt_ms"),
            l["stt_early_ms"].as_f64().unwrap_or(0.0),
            f("ttft_ms"),
            f("first_audio_ms"),
            margin_ms(&v),
            f("response_ms") + lag,
            f("response_ms"),
            v["transcript"].as_str().unwrap_or(""),
            v["reply"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect::<String>()
        );
        let reply = v["reply"].as_str().unwrap_or("");
        match question_of(&set, v["transcript"].as_str().unwrap_or("")) {
            Some(q) => {
                let a = Answered::new(q, reply, f("ttft_ms"), f64::NAN);
                println!(
                    "           {} {:?} -> {reply:?}",
                    if a.correct { "ok " } else { "BAD" },
                    q.text
                );
                scored.push(a);
            }
            None => println!("           (not one of the questions: not scored)"),
        }
        turns.push(v);
    }
    let (_, rss, anon) = proc_figures(daemon.child.id());
    let answered: Vec<&serde_json::Value> = turns
        .iter()
        .filter(|v| v["outcome"] == "answered")
        .collect();
    let col = |k: &str| -> Vec<f64> {
        answered
            .iter()
            .filter_map(|v| v["latency"][k].as_f64())
            .collect()
    };
    let lags: Vec<f64> = answered
        .iter()
        .filter_map(|v| vad_lag_ms(v, &true_ends))
        .collect();
    // From the true end of speech: the daemon's `response_ms` counts from the VAD's estimate.
    let responses: Vec<f64> = answered
        .iter()
        .filter_map(|v| Some(v["latency"]["response_ms"].as_f64()? + vad_lag_ms(v, &true_ends)?))
        .collect();
    let margins: Vec<f64> = answered.iter().map(|v| margin_ms(v)).collect();
    // `ttft_ms` and `first_audio_ms` count from the turn's start (the endpoint, for speech).
    println!(
        "medians over {} answered turns of {}: VAD's end of speech {:.0} ms after the true end, endpoint {:.0} ms after the VAD's end, STT {:.0} ms (started {:.0} ms before the endpoint), first token {:.0} ms and first audio {:.0} ms after the endpoint (ready {:.0} ms before it); VAD's end of speech -> first audio {:.0} ms; true end of speech -> first audio {:.0} ms (target 500 ms)",
        answered.len(),
        turns.len(),
        median(&lags),
        median(&col("endpoint_ms")),
        median(&col("stt_ms")),
        median(
            &answered
                .iter()
                .map(|v| v["latency"]["stt_early_ms"].as_f64().unwrap_or(0.0))
                .collect::<Vec<_>>()
        ),
        median(&col("ttft_ms")),
        median(&col("first_audio_ms")),
        median(&margins),
        median(&col("response_ms")),
        if responses.len() == answered.len() {
            median(&responses)
        } else {
            f64::NAN
        },
    );
    println!(
        "sotad RSS after the run: {:.0} MiB ({:.1} MiB anonymous; target {ANON_AFTER_TURNS_TARGET_MIB:.0} MiB)",
        rss as f64 / 1024.0,
        anon as f64 / 1024.0
    );
    println!(
        "endpoints: {} of {} turns ended early on a complete transcript (vad.complete_silence_ms)",
        turns.iter().filter(|v| v["endpoint"] == "complete").count(),
        turns.len()
    );
    smart_turn_summary(&turns);
    println!(
        "answers: {} turns scored of {} questions: {} (first token from the endpoint)",
        scored.len(),
        set.len(),
        questions::summary(&scored)
    );
    if turns.len() < set.len() {
        println!(
            "only {} of {} questions became turns within {total:?}",
            turns.len(),
            set.len()
        );
    }
}

fn idle(secs: u64) {
    println!(
        "voice loop idle: microphone open on faint noise, nobody speaking, {secs} s, all engines loaded"
    );
    let daemon = start(&room_tone(secs as f64 + 30.0), 10);
    let pid = daemon.child.id();
    // Let the models load and settle first.
    std::thread::sleep(Duration::from_secs(20));
    let (cpu0, rss0, anon0) = proc_figures(pid);
    let start = Instant::now();
    let mut last = (cpu0, start);
    let mut max_rss = rss0;
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(secs.clamp(10, 60).min(secs)));
        let (cpu, rss, anon) = proc_figures(pid);
        let now = Instant::now();
        let pct = 100.0 * (cpu - last.0) / now.duration_since(last.1).as_secs_f64();
        last = (cpu, now);
        max_rss = max_rss.max(rss);
        samples.push(pct);
        println!(
            "  t={:4.0} s  cpu {pct:5.2} %  rss {:.1} MiB  anon {:.1} MiB",
            start.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            anon as f64 / 1024.0
        );
    }
    let (cpu1, rss1, anon1) = proc_figures(pid);
    let mut telemetry = None;
    while let Ok(line) = daemon.lines.try_recv() {
        if let Some(p) = line.strip_prefix("sotad/bench/telemetry ") {
            telemetry = serde_json::from_str::<serde_json::Value>(p).ok();
        }
    }
    let voice = telemetry.map(|t| t["voice"].clone()).unwrap_or_default();
    println!(
        "idle over {:.0} s: CPU {:.2} % of one core on average (median of intervals {:.2} %); RSS {:.1} -> {:.1} MiB (max {:.1}), anonymous {:.1} -> {:.1} MiB; VAD model ran on {} of {} windows, utterances {}, wake words heard {}",
        start.elapsed().as_secs_f64(),
        100.0 * (cpu1 - cpu0) / start.elapsed().as_secs_f64(),
        median(&samples),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        anon0 as f64 / 1024.0,
        anon1 as f64 / 1024.0,
        voice["vad_model_runs"],
        voice["vad_windows"],
        voice["utterances"],
        voice["wake_detections"],
    );
}

/// Issue 25's soak: no growth of anonymous memory while the loop keeps serving.
/// The microphone hears faint noise with one spoken question at the start of every minute
/// (the question set, cycled); just before each question the daemon's RSS and CPU are read.
/// The first ten minutes (half of a shorter soak) are the warm-up: pools, caches and the
/// allocator's arenas fill, and the conversation reaches `llm.session_turns` (8), so the KV
/// cache's pages for its longest length are touched; growth is the anonymous RSS at the end
/// against its highest value in the warm-up.
fn soak(secs: u64) {
    let minutes = (secs / 60).max(6) as usize;
    let models = models_dir();
    let set = question_set();
    let voice = piper_voice(&models);
    let mut raw = Vec::new();
    for m in 0..minutes {
        let mono = speak(&voice, &set[m % set.len()].text);
        push_samples(&mut raw, &mono);
        // The rest of the minute: room tone (bytes: 2 per sample).
        let rest = 60.0 - mono.len() as f64 / 16_000.0;
        raw.extend(room_tone(rest.max(5.0)));
    }
    raw.extend(room_tone(60.0));
    drop(voice);
    println!(
        "voice soak: {minutes} minutes, one spoken question a minute on faint noise, the defaults"
    );
    let daemon = start(&raw, 30);
    let pid = daemon.child.id();
    let t0 = Instant::now();
    let mut turns = Vec::new();
    let mut anon = Vec::new();
    let mut last_cpu = (proc_figures(pid).0, t0);
    for m in 1..=minutes {
        // Read the figures a little before the next question starts (the turn is over).
        let at = Duration::from_secs(60 * m as u64 - 2);
        while t0.elapsed() < at {
            if let Ok(line) = daemon.lines.recv_timeout(Duration::from_millis(500))
                && let Some(p) = line.strip_prefix("sotad/bench/turn/done ")
            {
                turns.push(serde_json::from_str::<serde_json::Value>(p).unwrap_or_default());
            }
        }
        let (cpu, rss, a) = proc_figures(pid);
        let now = Instant::now();
        let pct = 100.0 * (cpu - last_cpu.0) / now.duration_since(last_cpu.1).as_secs_f64();
        last_cpu = (cpu, now);
        anon.push(a as f64 / 1024.0);
        println!(
            "  minute {m:3}  turns {:3}  cpu {pct:5.2} %  rss {:6.1} MiB  anon {:6.1} MiB",
            turns.len(),
            rss as f64 / 1024.0,
            a as f64 / 1024.0
        );
    }
    let answered = turns.iter().filter(|t| t["outcome"] == "answered").count();
    let warmup = 10.min(minutes / 2);
    let warm = anon[..warmup].iter().copied().fold(f64::MIN, f64::max);
    let end = *anon.last().unwrap_or(&0.0);
    let peak = anon.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "soak over {:.0} s: {} turns ({answered} answered) for {minutes} questions; anonymous RSS highest in the first {warmup} minutes {warm:.1} MiB, at the end {end:.1} MiB (growth {:+.1} MiB; target: none), peak {peak:.1} MiB (target {ANON_AFTER_TURNS_TARGET_MIB:.0} MiB)",
        t0.elapsed().as_secs_f64(),
        turns.len(),
        end - warm,
    );
}

/// Smart Turn's part (`[turn]`): turns it ended, and its decisions' probability and time.
fn smart_turn_summary(turns: &[serde_json::Value]) {
    let asked: Vec<&serde_json::Value> = turns
        .iter()
        .filter(|v| v["smart_turn"].is_object())
        .collect();
    let col = |k: &str| -> Vec<f64> {
        asked
            .iter()
            .filter_map(|v| v["smart_turn"][k].as_f64())
            .collect()
    };
    println!(
        "smart turn: {} of {} turns ended by it, asked on {}; decision (audio handed over -> verdict) median {:.0} ms, max {:.0} ms; probability median {:.3}",
        turns
            .iter()
            .filter(|v| v["endpoint"] == "smart_turn")
            .count(),
        turns.len(),
        asked.len(),
        median(&col("ms")),
        col("ms").iter().copied().fold(f64::NAN, f64::max),
        median(&col("probability")),
    );
}

/// Pairs of sentences said as one utterance with a pause between them: the first reads as
/// complete, so the early endpoint may end the utterance there.
const PAIRS: [(&str, &str); 6] = [
    (
        "I am going to the kitchen.",
        "What should I cook for dinner?",
    ),
    ("It is cold outside today.", "Will it rain tomorrow?"),
    ("My name is Anna.", "What is your name?"),
    ("Turn on the kitchen light.", "Then play some music."),
    ("I have a question for you.", "How far away is the moon?"),
    (
        "The meeting starts at noon.",
        "Remind me ten minutes before.",
    ),
];

/// How long before the endpoint the answer's first audio was ready (`audio_early_ms`), or
/// after it, negative (`first_audio_ms`, counted from the turn's start at the endpoint): the
/// computation's margin, when the endpoint's silence sets the wait.
fn margin_ms(turn: &serde_json::Value) -> f64 {
    let l = &turn["latency"];
    l["audio_early_ms"]
        .as_f64()
        .unwrap_or_else(|| -l["first_audio_ms"].as_f64().unwrap_or(f64::NAN))
}

/// How often the early endpoint splits two sentences said with a pause between them: for
/// each pause length, the six pairs as six utterances; a pair is split when the turn that
/// transcribed its first sentence does not have the second sentence's last word.
fn split() {
    let models = models_dir();
    let voice = piper_voice(&models);
    let spoken: Vec<(Vec<f32>, Vec<f32>)> = PAIRS
        .iter()
        .map(|(a, b)| (trimmed(speak(&voice, a)), trimmed(speak(&voice, b))))
        .collect();
    println!(
        "early endpoint, false splits: {} pairs of sentences per pause (Piper voice), defaults",
        PAIRS.len()
    );
    let last_word = |s: &str| {
        s.split_whitespace()
            .last()
            .unwrap_or("")
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    for pause_ms in [300u32, 400, 500, 700] {
        let mut raw = Vec::new();
        push_silence(&mut raw, 1.0);
        for (a, b) in &spoken {
            push_samples(&mut raw, a);
            push_silence(&mut raw, f64::from(pause_ms) / 1e3);
            push_samples(&mut raw, b);
            push_silence(&mut raw, GAP_S);
        }
        let daemon = start(&raw, 5);
        let deadline = Instant::now() + Duration::from_secs_f64(raw.len() as f64 / 32_000.0 + 15.0);
        let mut turns: Vec<serde_json::Value> = Vec::new();
        while Instant::now() < deadline {
            let Ok(line) = daemon.lines.recv_timeout(Duration::from_secs(1)) else {
                continue;
            };
            if let Some(p) = line.strip_prefix("sotad/bench/turn/done ") {
                turns.push(serde_json::from_str(p).unwrap_or_default());
            }
        }
        let mut splits = 0;
        for (a, b) in PAIRS {
            let (first, end) = (last_word(a), last_word(b));
            // The words of a turn's transcript, normalized like `last_word`.
            let words = |v: &serde_json::Value| -> Vec<String> {
                v["transcript"]
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(last_word)
                    .collect()
            };
            // The turn that heard the first sentence's last word, and whether the second
            // sentence's last word comes after it in the same turn.
            let found = turns.iter().find_map(|v| {
                let w = words(v);
                let at = w.iter().position(|t| *t == first)?;
                Some((v, w[at + 1..].contains(&end)))
            });
            let turn = found.map(|(v, _)| v);
            let whole = found.is_some_and(|(_, both)| both);
            splits += usize::from(!whole);
            println!(
                "  pause {pause_ms:4} ms  {:5}  endpoint {:10} {:5.0} ms  smart turn {:5.3}  | {:?}",
                if whole { "whole" } else { "SPLIT" },
                turn.and_then(|v| v["endpoint"].as_str()).unwrap_or("-"),
                turn.and_then(|v| v["latency"]["endpoint_ms"].as_f64())
                    .unwrap_or(f64::NAN),
                turn.and_then(|v| v["smart_turn"]["probability"].as_f64())
                    .unwrap_or(f64::NAN),
                turn.and_then(|v| v["transcript"].as_str())
                    .unwrap_or("(no turn)")
            );
        }
        println!(
            "pause {pause_ms} ms: {splits} of {} pairs split, {} turns",
            PAIRS.len(),
            turns.len()
        );
        smart_turn_summary(&turns);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.first().map(String::as_str) {
        Some("idle") => idle(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(600)),
        Some("split") => split(),
        Some("soak") => soak(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1800)),
        _ => latency(),
    }
}
