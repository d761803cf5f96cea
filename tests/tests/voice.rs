//! The voice loop end to end: the real daemon with the real small models, a microphone made
//! from a real LibriVox clip through alsa-lib's `file` plugin, and a `file` speaker.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sotad_tests::{Mosquitto, Sotad, TestClient, librivox_clips, models_dir, word_error_rate};

const WAIT: Duration = Duration::from_secs(180);

/// A 16 kHz mono s16le microphone file: 1 s of silence, the clip, 3 s of silence.
fn mic_file(dir: &Path, clip: &Path) -> std::path::PathBuf {
    let wav = std::fs::read(clip).unwrap();
    // The LibriVox clips are 16 kHz mono 16-bit PCM with a 44-byte header.
    assert_eq!(&wav[..4], b"RIFF");
    let mut raw = vec![0u8; 32_000];
    raw.extend_from_slice(&wav[44..]);
    raw.extend(std::iter::repeat_n(0u8, 96_000));
    let path = dir.join("mic.raw");
    std::fs::write(&path, raw).unwrap();
    path
}

fn asound(dir: &Path, mic: &str) -> std::path::PathBuf {
    let conf = dir.join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm.testmic {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n infile \"{mic}\"\n format \"raw\"\n}}\n\
             pcm.testspeaker {{\n type file\n slave.pcm \"null\"\n file \"{}\"\n format \"raw\"\n}}\n",
            dir.join("speaker.raw").display()
        ),
    )
    .unwrap();
    conf
}

fn config(port: u16, device: &str, capture: &str) -> String {
    format!(
        "{}\n[models]\ndir = \"{}\"\n[audio]\ncapture_device = \"{capture}\"\nplayback_device = \"testspeaker\"\nretry_min_ms = 100\nretry_max_ms = 300\n[llm]\nmax_tokens = 24\ntemperature = 0.0\n",
        Sotad::link_config(port, device, ""),
        models_dir().display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spoken_question_is_transcribed_answered_and_spoken() {
    let broker = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (clip, reference) = librivox_clips().remove(1);
    let mic = mic_file(dir.path(), &clip);
    let conf = asound(dir.path(), &mic.display().to_string());
    let alsa = format!("/usr/share/alsa/alsa.conf:{}", conf.display());
    let sotad = Sotad::start_with_env(
        &config(broker.port, "voice", "testmic"),
        "voice",
        &[("ALSA_CONFIG_PATH", &alsa)],
    )
    .unwrap();
    let mut c = TestClient::connect(broker.port, "t-voice", false)
        .await
        .unwrap();
    c.subscribe("sotad/voice/#").await.unwrap();
    let (done, seen) = c
        .expect_collecting(&sotad.topic("turn/done"), WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let done: Value = serde_json::from_slice(&done.payload).unwrap();
    let turn = done["turn"].as_str().unwrap().to_string();
    assert_eq!(done["outcome"], "answered", "{done}");
    let wer = word_error_rate(&reference, done["transcript"].as_str().unwrap());
    assert!(wer <= 0.3, "WER {wer:.2}: {done}");
    assert!(!done["reply"].as_str().unwrap().trim().is_empty(), "{done}");
    let latency = &done["latency"];
    for key in [
        "endpoint_ms",
        "stt_ms",
        "ttft_ms",
        "first_audio_ms",
        "response_ms",
        "total_ms",
    ] {
        assert!(
            latency[key].as_f64().is_some_and(|x| x > 0.0),
            "{key}: {done}"
        );
    }
    // The events of this turn, in order, with one id.
    let events: Vec<String> = seen
        .iter()
        .filter(|p| p.topic.contains("/turn/"))
        .filter(|p| {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["turn"] == turn.as_str())
        })
        .map(|p| p.topic.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(events, ["started", "transcript", "reply"], "{events:?}");
    let audio: usize = seen
        .iter()
        .filter(|p| p.topic == sotad.topic(&format!("tts/audio/{turn}")))
        .map(|p| p.payload.len())
        .sum();
    assert!(audio > 22_050, "speech audio on MQTT: {audio} bytes");
    // And to the speaker device.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let played = std::fs::metadata(dir.path().join("speaker.raw")).map_or(0, |m| m.len());
        if played > 22_050 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing played: {played} bytes\n{}",
            sotad.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_microphone_is_reported_text_turns_still_work_and_capture_resumes() {
    let broker = Mosquitto::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The microphone's file does not exist yet: opening the device fails until it does.
    let mic = dir.path().join("later.raw");
    let conf = asound(dir.path(), &mic.display().to_string());
    let alsa = format!("/usr/share/alsa/alsa.conf:{}", conf.display());
    let sotad = Sotad::start_with_env(
        &config(broker.port, "nomic", "testmic"),
        "nomic",
        &[("ALSA_CONFIG_PATH", &alsa)],
    )
    .unwrap();
    let mut c = TestClient::connect(broker.port, "t-nomic", false)
        .await
        .unwrap();
    c.subscribe("sotad/nomic/#").await.unwrap();
    let t = c
        .expect(&sotad.topic("telemetry"), WAIT, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|v| v["voice"]["capture"] == "missing")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let t: Value = serde_json::from_slice(&t.payload).unwrap();
    assert_eq!(t["voice"]["frames_sent"], 0, "{t}");
    c.publish(&sotad.topic("mute"), r#"{"id":"m"}"#)
        .await
        .unwrap();
    let state = c
        .expect(&sotad.topic("voice/state"), WAIT, |_| true)
        .await
        .unwrap();
    let state: Value = serde_json::from_slice(&state.payload).unwrap();
    assert_eq!(state["muted"], true, "{state}");
    assert_eq!(state["capture"], "missing", "{state}");
    c.publish(
        &sotad.topic("turn/text"),
        json!({"id": "typed-1", "text": "Say hello."}).to_string(),
    )
    .await
    .unwrap();
    let done = c
        .expect(&sotad.topic("turn/done"), WAIT, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|v| v["turn"] == "typed-1")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let done: Value = serde_json::from_slice(&done.payload).unwrap();
    assert_eq!(done["outcome"], "answered", "{done}");
    assert!(!done["reply"].as_str().unwrap().is_empty(), "{done}");
    assert!(done["audio_s"].as_f64().unwrap() > 0.2, "{done}");

    // The device appears: capture resumes and frames flow.
    let written = mic_file(dir.path(), &librivox_clips()[0].0);
    std::fs::rename(written, &mic).unwrap();
    let t = c
        .expect(&sotad.topic("telemetry"), WAIT, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|v| {
                v["voice"]["capture"] == "open" && v["voice"]["frames_sent"].as_u64() > Some(10)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let _ = t;
}
