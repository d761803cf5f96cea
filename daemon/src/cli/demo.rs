//! `sotad demo`: the whole voice loop on embedded defaults, with nothing but the models.
//!
//! The daemon runs on its embedded broker, with a microphone made from a clip (by default a
//! question said by the configured Piper voice, [`DEFAULT_QUESTION`]) through alsa-lib's
//! `file` plugin and a speaker that is a `file` device too. A client in the
//! same process watches MQTT and prints what happened: the transcript, the reply, where the
//! reply's audio was written, and the latency breakdown of the turn.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sotad::config::Config;
use sotad_engines::audio;
use tokio::sync::oneshot;

/// The question the demo's microphone says unless given a clip: one of the spoken question
/// set (benches/data/questions.tsv), said by the configured Piper voice.
pub const DEFAULT_QUESTION: &str = "What is the capital of France?";
/// ALSA device names the demo defines.
const MIC: &str = "sotad_demo_mic";
const SPEAKER: &str = "sotad_demo_speaker";

/// Writes `question` spoken by the configured voice (`tts.voice`) to `dir/question.wav` and
/// returns that path: the demo's default clip.
pub fn speak_question(config: &Config, dir: &Path, question: &str) -> anyhow::Result<PathBuf> {
    use sotad_engines::tts::{LoadOptions, SynthOptions, Voice};
    let Some(path) = config.model_path(&config.tts.voice) else {
        bail!("configuration key `tts.voice` is empty: give the demo a recording with --clip");
    };
    let voice = Voice::load(&path, &LoadOptions::default()).with_context(|| {
        format!(
            "configuration key `tts.voice` = {:?}: cannot load the voice that says the demo's question",
            config.tts.voice
        )
    })?;
    let mut samples = Vec::new();
    let mut rate = 22_050;
    voice.synthesize(question, &SynthOptions::default(), |chunk| {
        rate = chunk.sample_rate;
        samples.extend_from_slice(chunk.samples);
        std::ops::ControlFlow::Continue(())
    })?;
    let wav = dir.join("question.wav");
    std::fs::write(&wav, audio::encode_wav_i16(&samples, rate, 1))
        .with_context(|| format!("cannot write {}", wav.display()))?;
    Ok(wav)
}

/// Writes the microphone's raw file (16 kHz mono s16le: silence, the clip, silence) and the
/// asoundrc that defines the demo's devices; returns the asoundrc's path.
pub fn prepare_devices(dir: &Path, clip: &Path) -> anyhow::Result<PathBuf> {
    let wav =
        audio::read_wav(clip).with_context(|| format!("reading the clip {}", clip.display()))?;
    let mono = audio::to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)?;
    let mut raw = Vec::with_capacity((mono.len() + 64_000) * 2);
    let silence = |secs: f64, raw: &mut Vec<u8>| {
        raw.extend(std::iter::repeat_n(
            0u8,
            (secs * f64::from(audio::SAMPLE_RATE)) as usize * 2,
        ));
    };
    silence(1.0, &mut raw);
    for &x in mono.iter() {
        raw.extend_from_slice(&((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    // Enough silence for the endpointer; after the end of the file the plugin repeats its
    // last buffer, which is then silence too.
    silence(3.0, &mut raw);
    let mic = dir.join("mic.raw");
    std::fs::write(&mic, raw)?;
    let conf = dir.join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm.{MIC} {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  infile \"{}\"\n  format \"raw\"\n}}\n\
             pcm.{SPEAKER} {{\n  type file\n  slave.pcm \"null\"\n  file \"{}\"\n  format \"raw\"\n}}\n",
            mic.display(),
            dir.join("speaker.raw").display()
        ),
    )?;
    Ok(conf)
}

/// What one turn of the demo's daemon gave.
pub struct Turn {
    /// The `turn/done` event (outcome, latencies).
    pub done: serde_json::Value,
    pub transcript: String,
    pub reply: String,
    /// The reply's audio as it went out on `tts/audio/*`.
    pub audio: Vec<f32>,
    pub sample_rate: u32,
    /// Whether the daemon said `offline` before it stopped.
    pub offline: bool,
}

/// Runs the daemon on an embedded broker with the demo's file microphone (the devices of
/// [`prepare_devices`], named by `ALSA_CONFIG_PATH`) until one voice turn is done, then stops
/// it. `narrate`: print what happens as it comes (`clip` names the microphone's clip there).
/// Used by `sotad demo` and `sotad bench`.
pub async fn one_turn(mut config: Config, clip: &Path, narrate: bool) -> anyhow::Result<Turn> {
    // Always the embedded broker, on a free loopback port so the demo never collides with a
    // broker already running on 1883.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    config.mqtt.host.clear();
    config.mqtt.tls.enabled = false;
    config.broker.listen = format!("127.0.0.1:{port}");
    config.telemetry.interval_secs = 2;
    config.audio.capture_device = MIC.into();
    config.audio.playback_device = SPEAKER.into();
    config.voice.listen = true;
    let device = config.device_id();
    let base = format!("{}/{}", config.mqtt.prefix, device);

    if narrate {
        println!("sotad {} demo", env!("CARGO_PKG_VERSION"));
        println!("  embedded broker on 127.0.0.1:{port}, topics under {base}/");
        println!("  models from {}", config.models_dir().display());
        println!(
            "  microphone: ALSA device {MIC}, playing {}",
            clip.display()
        );
    }
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(sotad::run(config, async {
        let _ = stop_rx.await;
    }));

    let mut options = MqttOptions::new("sotad-demo-client", "127.0.0.1", port);
    options.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut events) = AsyncClient::new(options, 16);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    client
        .subscribe(format!("{base}/#"), QoS::AtLeastOnce)
        .await?;

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut audio: Vec<f32> = Vec::new();
    let mut rate = 22_050u32;
    let mut done: Option<serde_json::Value> = None;
    let mut transcript = String::new();
    let mut reply = String::new();
    let mut stop_tx = Some(stop_tx);
    let mut offline = false;
    while Instant::now() < deadline {
        let event = match tokio::time::timeout(Duration::from_millis(500), events.poll()).await {
            Ok(Ok(event)) => event,
            Ok(Err(_)) => {
                if daemon.is_finished() {
                    return Err(daemon
                        .await?
                        .err()
                        .unwrap_or_else(|| anyhow::anyhow!("daemon exited")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => continue,
        };
        let Event::Incoming(Packet::Publish(p)) = event else {
            continue;
        };
        let suffix = p
            .topic
            .strip_prefix(&base)
            .unwrap_or(&p.topic)
            .trim_start_matches('/');
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
        match suffix {
            "status" => {
                let text = String::from_utf8_lossy(&p.payload);
                if narrate {
                    println!("  status        {text}");
                }
                if text == "offline" {
                    offline = true;
                    break;
                }
            }
            "turn/started" if narrate => {
                println!("  turn/started  {} (from {})", v["turn"], v["source"])
            }
            "turn/transcript" => {
                transcript = v["text"].as_str().unwrap_or_default().to_string();
                if narrate {
                    println!("  transcript    {}", v["text"]);
                }
            }
            "turn/reply" => {
                reply = v["text"].as_str().unwrap_or_default().to_string();
                if narrate {
                    println!("  reply         {}", v["text"]);
                }
            }
            "turn/done" => {
                done = Some(v);
                if let Some(tx) = stop_tx.take() {
                    let _ = tx.send(());
                }
            }
            "error" if narrate => {
                println!("  error         {}", String::from_utf8_lossy(&p.payload))
            }
            "telemetry" if narrate && done.is_none() => {
                let engines = &v["engines"];
                println!(
                    "  telemetry     rss {:.0} MiB, cpu {:.0} %, engines {engines}, capture {}",
                    v["process"]["rss_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
                    v["process"]["cpu_percent"].as_f64().unwrap_or(0.0),
                    v["voice"]["capture"]
                );
            }
            s if s.starts_with("tts/audio/") => {
                if let Ok(wav) = audio::parse_wav(&p.payload) {
                    rate = wav.sample_rate;
                    audio.extend_from_slice(&wav.samples);
                }
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon).await;
    let Some(done) = done else {
        bail!("no turn finished within 3 minutes: was the clip heard? (see the log above)");
    };
    Ok(Turn {
        done,
        transcript,
        reply,
        audio,
        sample_rate: rate,
        offline,
    })
}

pub async fn run(config: Config, dir: PathBuf, clip: PathBuf) -> anyhow::Result<()> {
    let Turn {
        done,
        audio: samples,
        sample_rate: rate,
        offline,
        ..
    } = one_turn(config, &clip, true).await?;
    let reply_wav = dir.join("reply.wav");
    std::fs::write(&reply_wav, audio::encode_wav_i16(&samples, rate, 1))?;
    let l = &done["latency"];
    let ms = |k: &str| {
        l[k].as_f64()
            .map_or("-".to_string(), |x| format!("{x:.0} ms"))
    };
    println!("  turn/done     outcome {}", done["outcome"]);
    println!(
        "  reply audio   {} ({:.1} s)",
        reply_wav.display(),
        samples.len() as f64 / f64::from(rate)
    );
    println!(
        "  latency       endpoint {}, stt {}, first token {}, first audio {}; end of speech to first audio {}; total {}",
        ms("endpoint_ms"),
        ms("stt_ms"),
        ms("ttft_ms"),
        ms("first_audio_ms"),
        ms("response_ms"),
        ms("total_ms")
    );
    if done["outcome"] != "answered" {
        bail!("the turn did not get an answer: {done}");
    }
    if !offline {
        println!("  (the daemon did not confirm offline before the demo ended)");
    }
    println!("demo finished: heard the clip, answered it aloud, and said offline on exit");
    Ok(())
}
