//! Intents: the template matcher's cost, and spoken commands through the real voice loop.
//!
//! ```text
//! cargo bench -p sotad-benches --bench intents                      # match, then transcribed (4 voices)
//! cargo bench -p sotad-benches --bench intents -- match             # matcher cost only
//! cargo bench -p sotad-benches --bench intents -- transcribed piper # one voice (piper, piper-slow, espeak, espeak-slow)
//! cargo build --release -p sotad
//! cargo bench -p sotad-benches --bench intents -- spoken            # through the real voice loop (4 voices)
//! cargo bench -p sotad-benches --bench intents -- grammar           # constrained vs unconstrained decoding
//! cargo bench -p sotad-benches --bench intents -- typed [llm|templates]  # turn/text: templates vs templates + LLM
//! cargo bench -p sotad-benches --bench intents -- transcribed --no-prompt  # without the intents' initial_prompt
//! INTENTS_STT_MODEL=whisper-base-ct2 cargo bench -p sotad-benches --bench intents -- transcribed  # another Whisper
//! cargo bench -p sotad-benches --bench intents -- fuzzy             # fuzzy false accepts on text (no models)
//! cargo bench -p sotad-benches --bench intents -- prompt-wer        # ordinary speech with and without the prompt
//! ```
//!
//! `transcribed` gives Whisper the `initial_prompt` made from the intents file
//! (`IntentSet::stt_prompt`, as the daemon does by default) unless `--no-prompt`, and counts
//! both the templates alone and the templates then the tolerant matcher (`recognize_fuzzy`).
//!
//! `transcribed`: the 64 commands synthesized as below, transcribed by the Whisper engine the
//! daemon runs (tiny.en, default options, 2 threads) and matched; what counts as right is
//! as for `spoken`. Not paced by a microphone, so a loaded machine only makes it slower.
//!
//! `match`: configs/intents/robot.toml (10 intents, 30 templates) and the same file ten times
//! over (100 intents, 300 templates: nine renamed copies first, whose templates start with a
//! word of their own, so every sentence is tried against 270 failing templates before its own), on the 64 sentences of benches/data/robot_commands.tsv;
//! median and 99th percentile of the time of one `recognize` (tokenizing included).
//!
//! `spoken`: the real `sotad` (embedded broker, Whisper tiny.en, the robot's intents, the LLM
//! off so that an out-of-domain question ends its turn at once) hears the 64 commands of
//! benches/data/robot_commands.tsv from its file-plugin microphone, each followed by 2.5 s of
//! silence. Voices: Piper joe-medium at length scale 1.0 (`piper`) and 1.3 (`piper-slow`),
//! espeak-ng en-us at 175 and 130 words a minute (`espeak`, `espeak-slow`); every third
//! command is mixed with pink noise (sox) at 10 dB SNR. A command counts as right when the
//! `intent/<name>` of its turn has exactly the expected name and slot values; an
//! out-of-domain one when its turn published no intent. Also the median end of speech (as
//! the VAD saw it) → intent published (`turn/done`'s `latency.intent_ms`). Needs the
//! models (scripts/install-models.sh), espeak-ng, sox and mosquitto_sub.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sotad_benches::{median, models_dir};
use sotad_engines::audio;
use sotad_engines::intent::{IntentMatch, IntentSet, SlotValue};
use sotad_engines::stt::{LoadOptions as SttLoad, TranscribeOptions, Whisper};
use sotad_engines::tts::{LoadOptions, SynthOptions, Voice};

const GAP_S: f64 = 2.5;
/// The daemon's defaults: `intents.stt_prompt_words` and `intents.fuzzy_min_confidence`.
const PROMPT_WORDS: usize = 120;
const FUZZY_MIN: f32 = 0.8;
const VOICES: [&str; 4] = ["piper", "piper-slow", "espeak", "espeak-slow"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Cmd {
    text: String,
    intent: Option<String>,
    slots: Vec<(String, String)>,
}

fn commands() -> Vec<Cmd> {
    let data = std::fs::read_to_string(root().join("benches/data/robot_commands.tsv")).unwrap();
    parse_tsv(&data)
}

fn parse_tsv(data: &str) -> Vec<Cmd> {
    data.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            let text = f.next().unwrap().to_string();
            let intent = f.next().unwrap();
            let slots = f
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (k, v) = s.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            Cmd {
                text,
                intent: (intent != "-").then(|| intent.to_string()),
                slots,
            }
        })
        .collect()
}

fn robot_file() -> PathBuf {
    root().join("configs/intents/robot.toml")
}

fn bench_match() {
    let text = std::fs::read_to_string(robot_file()).unwrap();
    let small = IntentSet::parse(&text, "robot.toml").unwrap();
    // Nine copies first, renamed and with every template starting with a word of its own,
    // so each sentence is tried against 270 templates that fail before its own.
    let mut big_text = String::new();
    for i in 0..9 {
        let copy = text
            .replace("name = \"", &format!("name = \"copy{i}_"))
            .replace("\n  \"", &format!("\n  \"robot{i} "));
        big_text.push_str(&copy);
        big_text.push('\n');
    }
    big_text.push_str(&text);
    let big = IntentSet::parse(&big_text, "robot-x10.toml").unwrap();
    let sentences: Vec<String> = commands().into_iter().map(|c| c.text).collect();
    for (label, set) in [("robot.toml", &small), ("robot.toml x10", &big)] {
        let mut times = Vec::new();
        let mut matched = 0;
        for _round in 0..50 {
            for s in &sentences {
                let t = Instant::now();
                let m = set.recognize(s);
                times.push(t.elapsed().as_secs_f64() * 1e6);
                matched += usize::from(m.is_some());
            }
        }
        times.sort_by(f64::total_cmp);
        let p99 = times[times.len() * 99 / 100];
        println!(
            "match {label}: {} intents, {} templates; {} sentences x 50: median {:.1} µs, p99 {:.1} µs per recognize ({} matched per round)",
            set.intents.len(),
            set.templates(),
            sentences.len(),
            median(&times),
            p99,
            matched / 50
        );
    }
}

fn push_silence(raw: &mut Vec<u8>, secs: f64) {
    raw.extend(std::iter::repeat_n(0u8, (secs * 16_000.0) as usize * 2));
}

fn push_samples(raw: &mut Vec<u8>, samples: &[f32]) {
    for &x in samples {
        raw.extend_from_slice(&((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
}

fn piper(voice: &Voice, text: &str, length_scale: f32) -> Vec<f32> {
    let mut spoken = Vec::new();
    let mut rate = 22_050;
    let opts = SynthOptions {
        length_scale: Some(length_scale),
        ..SynthOptions::default()
    };
    voice
        .synthesize(text, &opts, |chunk| {
            rate = chunk.sample_rate;
            spoken.extend_from_slice(chunk.samples);
            std::ops::ControlFlow::Continue(())
        })
        .expect("synthesize");
    audio::to_mono_16k(&spoken, rate, 1).unwrap().into_owned()
}

/// 16 kHz mono s16le from sox reading `args`.
fn sox_raw(dir: &Path, input: &[&str]) -> Vec<f32> {
    let out = dir.join("sox.raw");
    let status = Command::new("sox")
        .args(input)
        .args([
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-t",
            "raw",
        ])
        .arg(&out)
        .status()
        .expect("sox (scripts/setup.sh installs it)");
    assert!(status.success());
    std::fs::read(&out)
        .unwrap()
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

fn espeak(dir: &Path, text: &str, wpm: u32) -> Vec<f32> {
    let wav = dir.join("espeak.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", &wpm.to_string(), "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng (scripts/setup.sh installs it)");
    assert!(status.success());
    sox_raw(dir, &[wav.to_str().unwrap()])
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Mixes pink noise (sox) into `speech` at 10 dB SNR (noise RMS = speech RMS / √10).
fn with_noise(speech: &[f32], noise: &[f32], offset: usize) -> Vec<f32> {
    let loud: Vec<f32> = speech.iter().copied().filter(|x| x.abs() > 0.01).collect();
    let gain = rms(&loud) / 10f32.sqrt() / rms(noise).max(1e-6);
    speech
        .iter()
        .enumerate()
        .map(|(i, x)| x + gain * noise[(offset + i) % noise.len()])
        .collect()
}

fn sotad_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOTAD_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("release/sotad")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

struct Outcome {
    right: usize,
    in_domain: usize,
    ood_clean: usize,
    ood: usize,
    intent_ms: Vec<f64>,
    misses: Vec<String>,
}

/// Runs the daemon on `mic` (raw 16 kHz s16le) until `turns` turns are done (or the
/// recording is over) and returns (turn/done documents, intent documents by turn).
fn run_daemon(dir: &Path, mic: &[u8], turns: usize) -> (Vec<Value>, HashMap<String, Value>) {
    let mic_path = dir.join("mic.raw");
    std::fs::write(&mic_path, mic).unwrap();
    let conf = dir.join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm.bench_mic {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n\
             pcm.bench_speaker {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n format \"raw\"\n}}\n",
            mic_path.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let toml = dir.join("sotad.toml");
    std::fs::write(
        &toml,
        format!(
            "[device]\nid = \"bench\"\n[mqtt]\nhost = \"\"\nport = {port}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
             [models]\ndir = \"{}\"\n[audio]\ncapture_device = \"bench_mic\"\nplayback_device = \"bench_speaker\"\n\
             [llm]\nmodel = \"\"\n[log]\nlevel = \"warn\"\n[intents]\nfile = \"{}\"\nreply_timeout_ms = 100\n",
            models_dir().display(),
            robot_file().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(sotad_bin())
        .args(["--config", toml.to_str().unwrap(), "run"])
        .env(
            "ALSA_CONFIG_PATH",
            format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start sotad (cargo build --release -p sotad)");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sub = loop {
        let mut sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v"])
            .args(["-t", "sotad/bench/turn/done", "-t", "sotad/bench/intent/#"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (mosquitto-clients)");
        std::thread::sleep(Duration::from_millis(300));
        match sub.try_wait() {
            Ok(None) => break sub,
            _ => assert!(Instant::now() < deadline, "the broker did not come up"),
        }
    };
    let out = sub.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut done = Vec::new();
    let mut intents = HashMap::new();
    let end = Instant::now() + Duration::from_secs_f64(mic.len() as f64 / 32_000.0 + 20.0);
    while done.len() < turns && Instant::now() < end {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let Some((topic, body)) = line.split_once(' ') else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        if topic.ends_with("/turn/done") {
            done.push(v);
        } else if let Some(turn) = v["turn"].as_str() {
            intents.insert(turn.to_string(), v);
        }
    }
    let _ = sub.kill();
    let _ = child.kill();
    let _ = child.wait();
    let _ = sub.wait();
    (done, intents)
}

fn spoken(voices: &[&str]) {
    let cmds = commands();
    let models = models_dir();
    let dir = std::env::temp_dir().join(format!("sotad-bench-intents-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Pink noise, 30 s, from sox.
    let noise_path = dir.join("noise.wav");
    let status = Command::new("sox")
        .args(["-n", "-r", "16000", "-c", "1", "-b", "16"])
        .arg(&noise_path)
        .args(["synth", "30", "pinknoise"])
        .status()
        .expect("sox");
    assert!(status.success());
    let noise = sox_raw(&dir, &[noise_path.to_str().unwrap()]);
    let piper_voice = Voice::load(
        models.join("piper/en_US-joe-medium.onnx"),
        &LoadOptions::default(),
    )
    .expect("the Piper voice (scripts/install-models.sh)");
    let mut total = Outcome {
        right: 0,
        in_domain: 0,
        ood_clean: 0,
        ood: 0,
        intent_ms: Vec::new(),
        misses: Vec::new(),
    };
    for &v in voices {
        let mut raw = Vec::new();
        push_silence(&mut raw, 1.0);
        let mut ends = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let mut speech = match v {
                "piper" => piper(&piper_voice, &c.text, 1.0),
                "piper-slow" => piper(&piper_voice, &c.text, 1.3),
                "espeak" => espeak(&dir, &c.text, 175),
                "espeak-slow" => espeak(&dir, &c.text, 130),
                other => panic!("unknown voice {other}"),
            };
            if i % 3 == 2 {
                speech = with_noise(&speech, &noise, i * 7919);
            }
            push_samples(&mut raw, &speech);
            ends.push(raw.len() as f64 / 32_000.0);
            push_silence(&mut raw, GAP_S);
        }
        let started = Instant::now();
        let (done, intents) = run_daemon(&dir, &raw, cmds.len());
        let mut o = Outcome {
            right: 0,
            in_domain: 0,
            ood_clean: 0,
            ood: 0,
            intent_ms: Vec::new(),
            misses: Vec::new(),
        };
        // Each command's turn: the turn whose end of speech is nearest its own end.
        for (i, c) in cmds.iter().enumerate() {
            let turn = done.iter().find(|d| {
                d["speech_end_s"]
                    .as_f64()
                    .is_some_and(|s| (s - ends[i]).abs() < 1.5)
            });
            let intent = turn
                .and_then(|d| d["turn"].as_str())
                .and_then(|t| intents.get(t));
            if let Some(ms) = turn.and_then(|d| d["latency"]["intent_ms"].as_f64()) {
                o.intent_ms.push(ms);
            }
            let heard = turn.map_or("(no turn)", |d| d["transcript"].as_str().unwrap_or(""));
            match &c.intent {
                None => {
                    o.ood += 1;
                    if intent.is_none() {
                        o.ood_clean += 1;
                    } else {
                        o.misses
                            .push(format!("{v}: {:?} heard {heard:?}: an intent", c.text));
                    }
                }
                Some(name) => {
                    o.in_domain += 1;
                    let ok = intent.is_some_and(|m| {
                        m["intent"] == name.as_str()
                            && m["slots"]
                                .as_object()
                                .is_some_and(|s| s.len() == c.slots.len())
                            && c.slots.iter().all(|(k, want)| {
                                let got = &m["slots"][k]["value"];
                                got.as_str() == Some(want.as_str())
                                    || got.as_f64().is_some_and(|n| want.parse() == Ok(n))
                            })
                    });
                    if ok {
                        o.right += 1;
                    } else {
                        o.misses.push(format!(
                            "{v}: {:?} heard {heard:?} -> {}",
                            c.text,
                            intent.map_or("no intent".to_string(), |m| format!(
                                "{} {}",
                                m["intent"], m["slots"]
                            ))
                        ));
                    }
                }
            }
        }
        println!(
            "spoken {v}: {}/{} in-domain exactly right ({:.1} %), {}/{} out-of-domain without intent; end of speech -> intent published: median {:.0} ms over {} ({:.0} s)",
            o.right,
            o.in_domain,
            100.0 * o.right as f64 / o.in_domain as f64,
            o.ood_clean,
            o.ood,
            median(&o.intent_ms),
            o.intent_ms.len(),
            started.elapsed().as_secs_f64()
        );
        total.right += o.right;
        total.in_domain += o.in_domain;
        total.ood_clean += o.ood_clean;
        total.ood += o.ood;
        total.intent_ms.extend(o.intent_ms);
        total.misses.extend(o.misses);
    }
    for m in &total.misses {
        println!("  miss: {m}");
    }
    println!(
        "spoken, all voices: {}/{} in-domain exactly right ({:.1} %), {}/{} out-of-domain without intent; end of speech -> intent published: median {:.0} ms over {}",
        total.right,
        total.in_domain,
        100.0 * total.right as f64 / total.in_domain.max(1) as f64,
        total.ood_clean,
        total.ood,
        median(&total.intent_ms),
        total.intent_ms.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `m` is exactly the command's intent with its slot values.
fn exactly(c: &Cmd, m: Option<&IntentMatch>) -> bool {
    let (Some(name), Some(m)) = (&c.intent, m) else {
        return c.intent.is_none() && m.is_none();
    };
    m.name == *name
        && m.slots.len() == c.slots.len()
        && c.slots.iter().all(|(k, want)| {
            m.slots.iter().any(|s| {
                s.name == *k
                    && match &s.value {
                        SlotValue::Text(t) => t == want,
                        SlotValue::Number(n) => want.parse() == Ok(*n),
                    }
            })
        })
}

/// The same synthesized commands, transcribed by Whisper tiny.en (the engine the daemon
/// runs, its default options, 2 threads) and matched: no real-time microphone, so a loaded
/// machine slows it without changing what is heard.
fn transcribed(voices: &[&str], prompt: bool) {
    let cmds = commands();
    let models = models_dir();
    let dir = std::env::temp_dir().join(format!("sotad-bench-intents-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let noise_path = dir.join("noise.wav");
    let status = Command::new("sox")
        .args(["-n", "-r", "16000", "-c", "1", "-b", "16"])
        .arg(&noise_path)
        .args(["synth", "30", "pinknoise"])
        .status()
        .expect("sox");
    assert!(status.success());
    let noise = sox_raw(&dir, &[noise_path.to_str().unwrap()]);
    let set = IntentSet::parse(
        &std::fs::read_to_string(robot_file()).unwrap(),
        "robot.toml",
    )
    .unwrap();
    let piper_voice = Voice::load(
        models.join("piper/en_US-joe-medium.onnx"),
        &LoadOptions::default(),
    )
    .expect("the Piper voice (scripts/install-models.sh)");
    // `INTENTS_STT_MODEL` (a directory or file in the models dir) to compare Whisper models.
    let stt_model =
        std::env::var("INTENTS_STT_MODEL").unwrap_or_else(|_| "whisper-tiny.en-ct2".into());
    println!("transcribed with {stt_model}");
    let whisper = Whisper::load(
        models.join(&stt_model),
        &SttLoad {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("the Whisper model (scripts/install-models.sh)");
    // As the daemon does with `intents.stt_prompt = "auto"` (its default).
    let opts = TranscribeOptions {
        initial_prompt: prompt.then(|| set.stt_prompt(PROMPT_WORDS)),
        // A multilingual model is told the language, as `stt.language = "en"` does.
        language: Some("en".into()),
        ..TranscribeOptions::default()
    };
    println!("transcribed: initial_prompt {:?}", opts.initial_prompt);
    let (mut right, mut in_domain, mut ood_clean, mut ood) = (0, 0, 0, 0);
    let (mut right_f, mut ood_clean_f) = (0, 0);
    let mut misses = Vec::new();
    let mut stt_ms = Vec::new();
    let mut match_us = Vec::new();
    for &v in voices {
        let (mut r, mut n, mut oc, mut o) = (0, 0, 0, 0);
        let (mut rf, mut ocf) = (0, 0);
        for (i, c) in cmds.iter().enumerate() {
            let mut speech = match v {
                "piper" => piper(&piper_voice, &c.text, 1.0),
                "piper-slow" => piper(&piper_voice, &c.text, 1.3),
                "espeak" => espeak(&dir, &c.text, 175),
                "espeak-slow" => espeak(&dir, &c.text, 130),
                other => panic!("unknown voice {other}"),
            };
            let noisy = i % 3 == 2;
            if noisy {
                speech = with_noise(&speech, &noise, i * 7919);
            }
            let t = Instant::now();
            let heard = whisper.transcribe(&speech, &opts).unwrap().text;
            stt_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let m = set.recognize(&heard);
            match_us.push(t.elapsed().as_secs_f64() * 1e6);
            let ok = exactly(c, m.as_ref());
            // The tolerant second look, as the daemon does with `intents.fuzzy` on.
            let mf = m.clone().or_else(|| set.recognize_fuzzy(&heard, FUZZY_MIN));
            let ok_f = exactly(c, mf.as_ref());
            if c.intent.is_some() {
                n += 1;
                r += usize::from(ok);
                rf += usize::from(ok_f);
            } else {
                o += 1;
                oc += usize::from(ok);
                ocf += usize::from(ok_f);
            }
            if m.is_none()
                && let Some(f) = &mf
            {
                misses.push(format!(
                    "{v}: {:?} heard {heard:?} -> fuzzy {} {:?} confidence {} ({})",
                    c.text,
                    f.name,
                    f.slots
                        .iter()
                        .map(|s| (&s.name, &s.value))
                        .collect::<Vec<_>>(),
                    f.confidence,
                    if ok_f { "right" } else { "WRONG" }
                ));
            }
            if !ok {
                misses.push(format!(
                    "{v}{}: {:?} heard {heard:?} -> {}",
                    if noisy { " +noise" } else { "" },
                    c.text,
                    m.map_or("no intent".into(), |m| format!(
                        "{} {:?}",
                        m.name,
                        m.slots
                            .iter()
                            .map(|s| (&s.name, &s.value))
                            .collect::<Vec<_>>()
                    ))
                ));
            }
        }
        println!(
            "transcribed {v}: {r}/{n} in-domain exactly right ({:.1} %), {oc}/{o} out-of-domain without intent; with fuzzy: {rf}/{n} ({:.1} %), {ocf}/{o}",
            100.0 * r as f64 / n as f64,
            100.0 * rf as f64 / n as f64
        );
        right_f += rf;
        ood_clean_f += ocf;
        right += r;
        in_domain += n;
        ood_clean += oc;
        ood += o;
    }
    for m in &misses {
        println!("  miss: {m}");
    }
    println!(
        "transcribed, all voices: {right}/{in_domain} in-domain exactly right ({:.1} %), {ood_clean}/{ood} out-of-domain without intent; per command: transcription median {:.0} ms, match median {:.1} µs",
        100.0 * right as f64 / in_domain.max(1) as f64,
        median(&stt_ms),
        median(&match_us)
    );
    println!(
        "transcribed, all voices, templates then fuzzy (min confidence {FUZZY_MIN}): {right_f}/{in_domain} in-domain exactly right ({:.1} %), {ood_clean_f}/{ood} out-of-domain without intent",
        100.0 * right_f as f64 / in_domain.max(1) as f64,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decode speed with and without a grammar, on the same prompts (Qwen2.5-Coder-0.5B, the
/// default brain): (1) an out-of-domain question under the intents' `text | tool call`
/// grammar, which lets the plain answer through, so the tokens are the unconstrained ones
/// and the difference is the mask alone; (2) a command under the same grammar (a tool
/// call); (3) a JSON schema (`response_format`). Median of 5 runs each, decode tok/s.
fn bench_grammar() {
    use sotad_engines::llm::{
        GenerateOptions, GrammarSpec, LoadOptions as LlmLoad, Message, Model,
    };
    use std::ops::ControlFlow;
    let model = Model::load(
        models_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        &LlmLoad {
            context_len: 2048,
            threads: 0,
        },
    )
    .expect("the default brain (scripts/install-models.sh)");
    let set = IntentSet::parse(
        &std::fs::read_to_string(robot_file()).unwrap(),
        "robot.toml",
    )
    .unwrap();
    let tools = set.tools();
    let list: Vec<(String, Value)> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["function"]["name"].as_str().unwrap().to_string(),
                t["function"]["parameters"].clone(),
            )
        })
        .collect();
    let t = Instant::now();
    let lark = model
        .grammar(&GrammarSpec::Lark(model.text_or_tool_call(
            &list,
            "<tool_call>",
            "</tool_call>",
        )))
        .unwrap();
    println!(
        "grammar: first compile (token environment + the robot's 10 tools) {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let _ = model
        .grammar(&GrammarSpec::Lark(model.text_or_tool_call(
            &list,
            "<tool_call>",
            "</tool_call>",
        )))
        .unwrap();
    println!(
        "grammar: compile again (the tools) {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let schema = GrammarSpec::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "population_millions": {"type": "number"},
            "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        },
        "required": ["city", "country", "population_millions", "landmarks"],
        "additionalProperties": false,
    }));
    let json = model.grammar(&schema).unwrap();
    let cases: [(&str, &str, bool, Option<&sotad_engines::llm::Grammar>); 3] = [
        (
            "out-of-domain question, text|call grammar",
            "Tell me a short story about a cat.",
            true,
            Some(&lark),
        ),
        (
            "command, text|call grammar (tool call)",
            "Could you please drive ahead three meters for me?",
            true,
            Some(&lark),
        ),
        ("JSON schema", "Describe Paris as JSON.", false, Some(&json)),
    ];
    for (label, q, with_tools, grammar) in cases {
        let messages = [Message::user(q)];
        let mut free = Vec::new();
        let mut masked = Vec::new();
        let mut tokens = (0, 0);
        for run in 0..5 {
            for constrained in [false, true] {
                let mut session = model.session();
                let opts = GenerateOptions {
                    max_tokens: 48,
                    tools: with_tools.then(|| std::sync::Arc::new(tools.clone())),
                    grammar: grammar.filter(|_| constrained).cloned(),
                    ..Default::default()
                };
                let r = session
                    .chat(&messages, &opts, |_| ControlFlow::Continue(()))
                    .unwrap();
                if run == 0 {
                    println!(
                        "    {} {:?}",
                        if constrained {
                            "constrained:  "
                        } else {
                            "unconstrained:"
                        },
                        r.text.chars().take(90).collect::<String>()
                    );
                }
                if constrained {
                    masked.push(r.timings.decode_tok_s);
                    tokens.1 = r.timings.generated_tokens;
                } else {
                    free.push(r.timings.decode_tok_s);
                    tokens.0 = r.timings.generated_tokens;
                }
            }
        }
        let (f, m) = (median(&free), median(&masked));
        println!(
            "grammar {label}: decode unconstrained {f:.1} tok/s ({} tokens), constrained {m:.1} tok/s ({} tokens): {:+.1} % decode time per token",
            tokens.0,
            tokens.1,
            (f / m - 1.0) * 100.0
        );
    }
}

/// The commands typed over `turn/text` to the real sotad with the LLM (the default brain):
/// templates only (`intents.llm_fallback = false`) against templates + the LLM's
/// constrained tool calls, on benches/data/robot_commands.tsv and the paraphrases of
/// benches/data/robot_paraphrases.tsv, which the templates do not match.
/// `only`: one pass, with the LLM fallback (`Some(true)`) or without.
fn typed(only: Option<bool>) {
    let mut cmds = commands();
    let para = std::fs::read_to_string(root().join("benches/data/robot_paraphrases.tsv")).unwrap();
    let n_plain = cmds.len();
    cmds.extend(parse_tsv(&para));
    let set = IntentSet::parse(
        &std::fs::read_to_string(robot_file()).unwrap(),
        "robot.toml",
    )
    .unwrap();
    let tools = set.tools();
    for fallback in [false, true]
        .into_iter()
        .filter(|f| only.is_none_or(|o| o == *f))
    {
        let dir = std::env::temp_dir().join(format!("sotad-bench-typed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let toml = dir.join("sotad.toml");
        std::fs::write(
            &toml,
            format!(
                "[device]\nid = \"bench\"\n[mqtt]\nhost = \"\"\nport = {port}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
                 [models]\ndir = \"{}\"\n[audio]\ncapture_device = \"\"\nplayback_device = \"\"\n[stt]\nmodel = \"\"\n[tts]\nvoice = \"\"\n\
                 [log]\nlevel = \"warn\"\n[intents]\nfile = \"{}\"\nreply_timeout_ms = 100\nllm_fallback = {fallback}\n",
                models_dir().display(),
                robot_file().display()
            ),
        )
        .unwrap();
        let mut child = Command::new(sotad_bin())
            .args(["--config", toml.to_str().unwrap(), "run"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start sotad (cargo build --release -p sotad)");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sub = loop {
            let mut sub = Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v"])
                .args(["-t", "sotad/bench/turn/done", "-t", "sotad/bench/intent/#"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto_sub (mosquitto-clients)");
            std::thread::sleep(Duration::from_millis(300));
            match sub.try_wait() {
                Ok(None) => break sub,
                _ => assert!(Instant::now() < deadline, "the broker did not come up"),
            }
        };
        let out = sub.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The model loads and warms: a first question not counted.
        let ask = |id: &str, text: &str| {
            let body = serde_json::json!({"id": id, "text": text}).to_string();
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
                .args(["-t", "sotad/bench/turn/text", "-m", &body])
                .status()
                .expect("mosquitto_pub");
        };
        let wait = |id: &str| -> (Option<Value>, Option<Value>) {
            let mut intent = None;
            let end = Instant::now() + Duration::from_secs(180);
            while Instant::now() < end {
                let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) else {
                    continue;
                };
                let Some((topic, body)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(body) else {
                    continue;
                };
                if v["turn"] != id {
                    continue;
                }
                if topic.ends_with("/turn/done") {
                    return (Some(v), intent);
                }
                intent = Some(v);
            }
            (None, intent)
        };
        ask("warm", "Hello.");
        let _ = wait("warm");
        let (mut right, mut in_domain, mut ood, mut ood_clean) = ([0usize; 2], [0usize; 2], 0, 0);
        let (mut calls, mut valid) = (0usize, 0usize);
        let mut ms_template = Vec::new();
        let mut ms_llm = Vec::new();
        let mut ms_plain = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let id = format!("c{i}");
            ask(&id, &c.text);
            let (done, intent) = wait(&id);
            let part = usize::from(i >= n_plain);
            let recognizer = intent
                .as_ref()
                .and_then(|v| v["recognizer"].as_str().map(String::from));
            if recognizer.as_deref() == Some("llm") {
                calls += 1;
                let v = intent.as_ref().unwrap();
                println!(
                    "    LLM call, confidence {:.3}: {:?} -> {} {} (expected {:?})",
                    v["confidence"].as_f64().unwrap_or(f64::NAN),
                    c.text,
                    v["intent"],
                    v["slots"],
                    c.intent
                );
                // Slots valid against the tool's schema: names declared, values in range.
                let v = intent.as_ref().unwrap();
                let name = v["intent"].as_str().unwrap_or("");
                let args: serde_json::Map<String, Value> = v["slots"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, s)| (k.clone(), s["value"].clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                if set.tool_call(name, &Value::Object(args), 1.0).is_ok() {
                    valid += 1;
                }
            }
            let ms = done
                .as_ref()
                .and_then(|d| d["latency"]["intent_ms"].as_f64());
            match (&recognizer, ms) {
                (Some(r), Some(ms)) if r == "template" => ms_template.push(ms),
                (Some(_), Some(ms)) => ms_llm.push(ms),
                _ => {
                    if let Some(ms) = done
                        .as_ref()
                        .and_then(|d| d["latency"]["total_ms"].as_f64())
                    {
                        ms_plain.push(ms);
                    }
                }
            }
            let got = intent.as_ref().map(|v| {
                let slots: Vec<(String, String)> = v["slots"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, s)| {
                                let val = match &s["value"] {
                                    Value::String(x) => x.clone(),
                                    other => other.to_string(),
                                };
                                (k.clone(), val)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (v["intent"].as_str().unwrap_or("").to_string(), slots)
            });
            match &c.intent {
                None => {
                    ood += 1;
                    if got.is_none() {
                        ood_clean += 1;
                    } else {
                        println!("    OOD called: {:?} -> {:?}", c.text, got);
                    }
                }
                Some(want) => {
                    in_domain[part] += 1;
                    let ok = got.as_ref().is_some_and(|(name, slots)| {
                        let mut a = slots.clone();
                        a.sort();
                        let mut b = c.slots.clone();
                        b.sort();
                        name == want
                            && a.len() == b.len()
                            && a.iter().zip(&b).all(|(x, y)| {
                                x.0 == y.0
                                    && (x.1 == y.1
                                        || x.1.parse::<f64>().ok() == y.1.parse::<f64>().ok()
                                            && y.1.parse::<f64>().is_ok())
                            })
                    });
                    if ok {
                        right[part] += 1;
                    } else {
                        println!("    miss: {:?} -> {:?}", c.text, got);
                    }
                }
            }
        }
        let _ = sub.kill();
        let _ = child.kill();
        let _ = child.wait();
        let _ = sub.wait();
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "typed, {}: robot_commands {}/{} right, paraphrases {}/{} right, out-of-domain {}/{} without intent; LLM tool calls {calls}, schema-valid {valid}/{calls}",
            if fallback {
                "templates + LLM fallback"
            } else {
                "templates only"
            },
            right[0],
            in_domain[0],
            right[1],
            in_domain[1],
            ood_clean,
            ood,
        );
        println!(
            "    text -> intent published: template median {:.1} ms (n={}), LLM median {:.0} ms (n={}); plain answers: turn median {:.0} ms (n={})",
            median(&ms_template),
            ms_template.len(),
            median(&ms_llm),
            ms_llm.len(),
            median(&ms_plain),
            ms_plain.len()
        );
        let _ = &tools;
    }
}

fn main() {
    let prompt = !std::env::args().any(|a| a == "--no-prompt");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.first().map(String::as_str) {
        Some("match") => bench_match(),
        Some("grammar") => bench_grammar(),
        Some("typed") => typed(match args.get(1).map(String::as_str) {
            Some("llm") => Some(true),
            Some("templates") => Some(false),
            _ => None,
        }),
        Some("spoken") if args.len() > 1 => {
            spoken(&args[1..].iter().map(String::as_str).collect::<Vec<_>>())
        }
        Some("spoken") => spoken(&VOICES),
        Some("transcribed") if args.len() > 1 => transcribed(
            &args[1..].iter().map(String::as_str).collect::<Vec<_>>(),
            prompt,
        ),
        Some("fuzzy") => fuzzy_text(),
        Some("prompt-wer") => prompt_wer(),
        _ => {
            bench_match();
            transcribed(&VOICES, prompt);
        }
    }
}

/// Lines of text that are not commands: the question set's questions, the reference
/// transcripts of the LibriVox and cards clips.
fn ordinary_sentences() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let q = std::fs::read_to_string(root().join("benches/data/questions.tsv")).unwrap();
    for l in q
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        out.push((
            "questions.tsv".into(),
            l.split('\t').next().unwrap().to_string(),
        ));
    }
    for (set, file) in [
        ("librivox", "speech/librivox/transcription"),
        ("cards", "speech/cards/cards.transcription"),
    ] {
        let t = std::fs::read_to_string(models_dir().join(file)).unwrap_or_default();
        for l in t.lines() {
            let text = l.split(" (").next().unwrap_or("");
            let text = text.replace("<s>", "").replace("</s>", "");
            if !text.trim().is_empty() {
                out.push((set.into(), text.trim().to_string()));
            }
        }
    }
    out
}

/// The tolerant matcher on text: every accept on sentences that are not commands (the
/// question set, the speech sets' transcripts, the out-of-domain lines of both command
/// sets) is a false accept; on the paraphrases no template matches, right or wrong; and,
/// given `INTENTS_MISSES=<output of a transcribed run>`, on that run's unmatched transcripts.
fn fuzzy_text() {
    let set = IntentSet::parse(
        &std::fs::read_to_string(robot_file()).unwrap(),
        "robot.toml",
    )
    .unwrap();
    println!(
        "stt_prompt({PROMPT_WORDS}): {:?}",
        set.stt_prompt(PROMPT_WORDS)
    );
    let mut lines: Vec<(String, Cmd)> = ordinary_sentences()
        .into_iter()
        .map(|(s, text)| {
            (
                s,
                Cmd {
                    text,
                    intent: None,
                    slots: Vec::new(),
                },
            )
        })
        .collect();
    for (name, file) in [
        ("robot_commands.tsv", "benches/data/robot_commands.tsv"),
        (
            "robot_paraphrases.tsv",
            "benches/data/robot_paraphrases.tsv",
        ),
    ] {
        let data = std::fs::read_to_string(root().join(file)).unwrap();
        lines.extend(parse_tsv(&data).into_iter().map(|c| (name.to_string(), c)));
    }
    // `miss: <voice>: "<command>" heard "<transcript>" -> no intent`
    if let Some(path) = std::env::var_os("INTENTS_MISSES") {
        let cmds = commands();
        let out = std::fs::read_to_string(path).unwrap();
        for l in out.lines().filter(|l| l.trim_start().starts_with("miss:")) {
            let Some((said, heard)) = l.split_once("\" heard \"") else {
                continue;
            };
            let said = said.rsplit_once(": \"").map_or("", |x| x.1);
            let heard = heard.rsplit_once("\" -> ").map_or("", |x| x.0);
            if let Some(c) = cmds.iter().find(|c| c.text == said) {
                lines.push((
                    "misses".into(),
                    Cmd {
                        text: heard.to_string(),
                        intent: c.intent.clone(),
                        slots: c.slots.clone(),
                    },
                ));
            }
        }
    }
    let mut sets: Vec<String> = lines.iter().map(|(s, _)| s.clone()).collect();
    sets.dedup();
    let mut times = Vec::new();
    for name in sets {
        let (mut n, mut accepted, mut right) = (0, 0, 0);
        for (_, c) in lines.iter().filter(|(s, _)| *s == name) {
            if set.recognize(&c.text).is_some() {
                continue;
            }
            n += 1;
            let t = Instant::now();
            let m = set.recognize_fuzzy(&c.text, 0.0);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            // Every candidate with its confidence, so the bound can be read off.
            if let Some(m) = m.filter(|m| m.confidence >= 0.6) {
                let ok = exactly(c, Some(&m));
                let kept = m.confidence >= FUZZY_MIN;
                accepted += usize::from(kept);
                right += usize::from(kept && ok);
                println!(
                    "  {name}: {:?} -> {} {:?} confidence {:.3} ({}{})",
                    c.text,
                    m.name,
                    m.slots
                        .iter()
                        .map(|s| (&s.name, &s.value))
                        .collect::<Vec<_>>(),
                    m.confidence,
                    if ok { "right" } else { "WRONG" },
                    if kept { ", kept" } else { ", below the bound" }
                );
            }
        }
        println!(
            "fuzzy {name}: {n} sentences no template matches, {accepted} accepted at {FUZZY_MIN}, {right} of them right"
        );
    }
    println!(
        "fuzzy: median {:.1} µs per recognize_fuzzy (robot.toml)",
        median(&times)
    );
}

/// Word error rate of `hyp` against `reference`, both normalized as the matcher does.
fn wer(reference: &str, hyp: &str) -> (usize, usize) {
    let r: Vec<String> = sotad_engines::intent::normalize::tokenize(reference)
        .into_iter()
        .map(|t| t.text)
        .collect();
    let h: Vec<String> = sotad_engines::intent::normalize::tokenize(hyp)
        .into_iter()
        .map(|t| t.text)
        .collect();
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, a) in r.iter().enumerate() {
        let mut row = vec![i + 1; h.len() + 1];
        for (j, b) in h.iter().enumerate() {
            row[j + 1] = (prev[j] + usize::from(a != b))
                .min(prev[j + 1] + 1)
                .min(row[j] + 1);
        }
        prev = row;
    }
    (prev[h.len()], r.len())
}

/// Ordinary speech with and without the intents' `initial_prompt`: the LibriVox and cards
/// clips and the question set spoken by Piper; word error rate, median
/// transcription time, and how many transcripts became an intent (templates, then fuzzy).
fn prompt_wer() {
    let models = models_dir();
    let set = IntentSet::parse(
        &std::fs::read_to_string(robot_file()).unwrap(),
        "robot.toml",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("sotad-bench-wer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut clips: Vec<(String, String, Vec<f32>)> = Vec::new();
    for (set_name, sub, file) in [
        ("librivox", "speech/librivox", "transcription"),
        ("cards", "speech/cards", "cards.transcription"),
    ] {
        let t = std::fs::read_to_string(models.join(sub).join(file)).unwrap();
        for l in t.lines() {
            let Some((text, id)) = l.rsplit_once(" (") else {
                continue;
            };
            let id = id.trim_end_matches(')');
            let text = text.replace("<s>", "").replace("</s>", "");
            let wav = audio::read_wav(models.join(sub).join(format!("{id}.wav"))).unwrap();
            let pcm = audio::to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)
                .unwrap()
                .into_owned();
            clips.push((set_name.into(), text.trim().to_string(), pcm));
        }
    }
    let piper_voice = Voice::load(
        models.join("piper/en_US-joe-medium.onnx"),
        &LoadOptions::default(),
    )
    .expect("the Piper voice");
    for (s, q) in ordinary_sentences() {
        if s == "questions.tsv" {
            clips.push((
                "questions piper".into(),
                q.clone(),
                piper(&piper_voice, &q, 1.0),
            ));
        }
    }
    let whisper = Whisper::load(
        models.join("whisper-tiny.en-ct2"),
        &SttLoad {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("Whisper tiny.en");
    let prompt = set.stt_prompt(PROMPT_WORDS);
    for (label, p) in [("no prompt", None), ("intents prompt", Some(prompt))] {
        let opts = TranscribeOptions {
            initial_prompt: p,
            ..TranscribeOptions::default()
        };
        let mut by_set: Vec<(String, usize, usize, usize, usize)> = Vec::new();
        let mut ms = Vec::new();
        for (name, text, pcm) in &clips {
            let t = Instant::now();
            let heard = whisper.transcribe(pcm, &opts).unwrap().text;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            let (e, n) = wer(text, &heard);
            let tmpl = set.recognize(&heard).is_some();
            let fz = !tmpl && set.recognize_fuzzy(&heard, FUZZY_MIN).is_some();
            if tmpl || fz {
                println!(
                    "  {label}: {name} {text:?} heard {heard:?} became an intent ({})",
                    if tmpl { "template" } else { "fuzzy" }
                );
            }
            match by_set.iter_mut().find(|b| b.0 == *name) {
                Some(b) => {
                    b.1 += e;
                    b.2 += n;
                    b.3 += usize::from(tmpl);
                    b.4 += usize::from(fz);
                }
                None => by_set.push((name.clone(), e, n, usize::from(tmpl), usize::from(fz))),
            }
        }
        for (name, e, n, tm, fz) in &by_set {
            println!(
                "prompt-wer {label}: {name}: WER {:.1} % ({e}/{n} words), {tm} template and {fz} fuzzy intents",
                100.0 * *e as f64 / *n as f64
            );
        }
        println!(
            "prompt-wer {label}: transcription median {:.0} ms over {} clips",
            median(&ms),
            ms.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
