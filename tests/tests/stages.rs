//! The three stages as MQTT services, end to end: the real `sotad` binary with the real small
//! models (Whisper tiny.en, SmolLM2-135M-Instruct, Piper joe-medium) against Debian's
//! mosquitto, driven by a real MQTT client.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sotad_tests::{
    Mosquitto, Sotad, librivox_clips, models_config, models_dir, online, word_error_rate,
};

/// Model loading plus a first inference on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn transcribes_raw_and_base64_wavs_and_rejects_broken_ones() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(
        &models_config(
            broker.port,
            "stt",
            "[llm]\nmodel = \"\"\n[tts]\nvoice = \"\"",
        ),
        "stt",
    )
    .unwrap();
    let mut c = online(broker.port, &sotad, "t-stt", WAIT).await;
    let clips = librivox_clips();
    assert_eq!(clips.len(), 5, "five LibriVox clips with transcripts");

    // Raw WAV bytes as the whole payload.
    let (path, reference) = &clips[0];
    let wav = std::fs::read(path).unwrap();
    c.publish(&sotad.topic("stt/transcribe"), wav.clone())
        .await
        .unwrap();
    let reply = c
        .expect(&sotad.topic("stt/transcript"), WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let t: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(t["id"].as_str().unwrap().starts_with("wav-"), "{t}");
    let wer = word_error_rate(reference, t["text"].as_str().unwrap());
    assert!(
        wer <= 0.25,
        "WER {wer:.2}: {:?} vs {reference:?}",
        t["text"]
    );
    assert_eq!(t["language"], "en");
    assert!(!t["segments"].as_array().unwrap().is_empty(), "{t}");

    // Base64 inside JSON, with an id.
    let (path, reference) = &clips[1];
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    c.publish(
        &sotad.topic("stt/transcribe"),
        json!({"id": "b64", "wav": b64}).to_string(),
    )
    .await
    .unwrap();
    let t = c
        .expect_id(&sotad.topic("stt/transcript"), "b64", WAIT)
        .await
        .unwrap();
    let wer = word_error_rate(reference, t["text"].as_str().unwrap());
    assert!(
        wer <= 0.25,
        "WER {wer:.2}: {:?} vs {reference:?}",
        t["text"]
    );
    assert!(t["duration_s"].as_f64().unwrap() > 1.0);

    // A broken header: an error naming the field, and the daemon keeps serving.
    let mut broken = wav.clone();
    broken[20] = 0x07; // format tag: mu-law
    let b64 = base64::engine::general_purpose::STANDARD.encode(&broken);
    c.publish(
        &sotad.topic("stt/transcribe"),
        json!({"id": "bad", "wav": b64}).to_string(),
    )
    .await
    .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "bad", WAIT)
        .await
        .unwrap();
    assert_eq!(e["code"], "invalid_audio", "{e}");
    assert_eq!(e["field"], "wav");
    c.publish(
        &sotad.topic("stt/transcribe"),
        json!({"id": "empty", "wav": ""}).to_string(),
    )
    .await
    .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "empty", WAIT)
        .await
        .unwrap();
    assert_eq!(e["field"], "wav", "{e}");
    c.publish(&sotad.topic("ping"), r#"{"id":"still"}"#)
        .await
        .unwrap();
    c.expect_id(&sotad.topic("pong"), "still", WAIT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_streams_tokens_remembers_sessions_and_cancels() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(
        &models_config(
            broker.port,
            "llm",
            "[stt]\nmodel = \"\"\n[tts]\nvoice = \"\"\n[llm]\nmodel = \"smollm2-135m-instruct-q4_1.gguf\"\nsession_turns = 2",
        ),
        "llm",
    )
    .unwrap();
    let mut c = online(broker.port, &sotad, "t-llm", WAIT).await;

    let ask = json!({"id": "q1", "prompt": "What is the capital of France?", "session": "s",
                     "options": {"temperature": 0.0, "max_tokens": 40}});
    c.publish(&sotad.topic("llm/ask"), ask.to_string())
        .await
        .unwrap();
    let (reply, seen) = c
        .expect_collecting(&sotad.topic("llm/reply"), WAIT, |p| {
            String::from_utf8_lossy(p).contains("\"q1\"")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    let text = reply["text"].as_str().unwrap();
    // SmolLM2-135M's answers are not reliably right; what is checked here is the plumbing.
    assert!(!text.trim().is_empty(), "{reply}");
    assert!(
        ["eos", "max_tokens"].contains(&reply["stop_reason"].as_str().unwrap()),
        "{reply}"
    );
    // The stream carried the same text, in order.
    let streamed: Vec<Value> = seen
        .into_iter()
        .filter(|p| p.topic == sotad.topic("llm/tokens"))
        .map(|p| serde_json::from_slice(&p.payload).unwrap())
        .filter(|v: &Value| v["id"] == "q1")
        .collect();
    let seqs: Vec<u64> = streamed
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "tokens in order"
    );
    let joined: String = streamed
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined.trim(), text, "stream and reply agree");
    let first = reply.clone();

    // A follow-up in the same session reuses the cached prefix.
    let ask = json!({"id": "q2", "prompt": "And of Germany?", "session": "s",
                     "options": {"temperature": 0.0, "max_tokens": 40}});
    c.publish(&sotad.topic("llm/ask"), ask.to_string())
        .await
        .unwrap();
    let reply = c
        .expect_id(&sotad.topic("llm/reply"), "q2", WAIT)
        .await
        .unwrap();
    let cached = reply["timings"]["cached_tokens"].as_u64().unwrap();
    let prompt = reply["timings"]["prompt_tokens"].as_u64().unwrap();
    // The whole first turn (its prompt and the answer) came from the cache: the session's
    // history was put before the new question, and only the new turn was computed.
    let first_prompt = first["timings"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached > first_prompt && cached < prompt,
        "{reply}\nfirst: {first}"
    );
    assert!(!reply["text"].as_str().unwrap().is_empty(), "{reply}");

    // A third turn overflows `session_turns = 2`: the two oldest turns are forgotten (down to
    // half the bound), which changes the prompt right after the system prompt. The warm-up
    // after the reply evaluates the shortened conversation, so the fourth question still
    // finds everything but itself in the cache.
    let mut last = Value::Null;
    for (id, q) in [("q3", "And of Spain?"), ("q4", "And of Italy?")] {
        let ask = json!({"id": id, "prompt": q, "session": "s",
                         "options": {"temperature": 0.0, "max_tokens": 24}});
        c.publish(&sotad.topic("llm/ask"), ask.to_string())
            .await
            .unwrap();
        let reply = c
            .expect_id(&sotad.topic("llm/reply"), id, WAIT)
            .await
            .unwrap();
        if id == "q4" {
            let t = &reply["timings"];
            let prompt = t["prompt_tokens"].as_u64().unwrap();
            let cached = t["cached_tokens"].as_u64().unwrap();
            let before = &last["timings"];
            // q1 and q2 are gone: the prompt is shorter than q3's prompt plus its answer.
            assert!(
                prompt
                    < before["prompt_tokens"].as_u64().unwrap()
                        + before["generated_tokens"].as_u64().unwrap(),
                "{reply}\nq3: {last}"
            );
            // Only the new question (and its template tokens) was computed.
            assert!(prompt - cached <= 24, "{reply}\nq3: {last}");
        }
        last = reply;
    }

    // Cancel a long generation.
    let ask = json!({"id": "long", "prompt": "Write a long story about a robot.",
                     "options": {"temperature": 0.0, "max_tokens": 2000}});
    c.publish(&sotad.topic("llm/ask"), ask.to_string())
        .await
        .unwrap();
    c.expect(&sotad.topic("llm/tokens"), WAIT, |p| {
        String::from_utf8_lossy(p).contains("\"long\"")
    })
    .await
    .unwrap();
    c.publish(&sotad.topic("llm/cancel"), r#"{"id":"long"}"#)
        .await
        .unwrap();
    let reply = c
        .expect_id(&sotad.topic("llm/reply"), "long", WAIT)
        .await
        .unwrap();
    assert_eq!(reply["stop_reason"], "cancelled", "{reply}");
    assert!(reply["timings"]["generated_tokens"].as_u64().unwrap() < 2000);
    c.publish(&sotad.topic("llm/cancel"), r#"{"id":"long"}"#)
        .await
        .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "long", WAIT)
        .await
        .unwrap();
    assert_eq!(e["code"], "not_found", "{e}");

    // Bad options name their field.
    c.publish(
        &sotad.topic("llm/ask"),
        r#"{"id":"bad","prompt":"x","options":{"top_p":2}}"#,
    )
    .await
    .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "bad", WAIT)
        .await
        .unwrap();
    assert_eq!(e["field"], "options.top_p", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tts_publishes_wavs_of_sentences_in_pieces_then_done() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(
        &models_config(
            broker.port,
            "tts",
            "[stt]\nmodel = \"\"\n[llm]\nmodel = \"\"",
        ),
        "tts",
    )
    .unwrap();
    let mut c = online(broker.port, &sotad, "t-tts", WAIT).await;
    let say = json!({"id": "s1", "text": "Hello there. I am a small robot!"});
    c.publish(&sotad.topic("tts/say"), say.to_string())
        .await
        .unwrap();
    let (done, seen) = c
        .expect_collecting(&sotad.topic("tts/done"), WAIT, |p| {
            String::from_utf8_lossy(p).contains("\"s1\"")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let done: Value = serde_json::from_slice(&done.payload).unwrap();
    // Two sentences; the first is decoded in pieces (`tts.first_chunk_ms`, 250 ms by
    // default: "Hello there." is about 70 frames, cut 22 + 48), the second whole.
    assert_eq!(done["sentences"], 2, "{done}");
    assert_eq!(done["chunks"], 3, "{done}");
    assert_eq!(done["sample_rate"], 22050);
    let wavs: Vec<Vec<u8>> = seen
        .into_iter()
        .filter(|p| p.topic == sotad.topic("tts/audio/s1"))
        .map(|p| p.payload.to_vec())
        .collect();
    assert_eq!(wavs.len(), 3);
    let mut seconds = 0.0;
    let mut all = Vec::new();
    for wav in &wavs {
        assert_eq!(&wav[..4], b"RIFF");
        let frames = (wav.len() - 44) / 2;
        assert!(frames >= 22 * 256, "{frames} samples");
        seconds += frames as f64 / 22050.0;
        all.extend(
            wav[44..]
                .chunks_exact(2)
                .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
        );
    }
    // Speech, not silence: a reasonable RMS.
    let rms = (all.iter().map(|x| x * x).sum::<f64>() / all.len() as f64).sqrt();
    assert!(rms > 0.02, "rms {rms}");
    assert!((seconds - done["audio_s"].as_f64().unwrap()).abs() < 0.01);
    assert!(seconds > 1.0 && seconds < 6.0, "{seconds} s");

    // Bad input: empty text, unknown voice, emoji-only text; the daemon keeps serving.
    c.publish(&sotad.topic("tts/say"), r#"{"id":"e1","text":""}"#)
        .await
        .unwrap();
    assert_eq!(
        c.expect_id(&sotad.topic("error"), "e1", WAIT)
            .await
            .unwrap()["field"],
        "text"
    );
    c.publish(
        &sotad.topic("tts/say"),
        r#"{"id":"e2","text":"hi","voice":"nobody"}"#,
    )
    .await
    .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "e2", WAIT)
        .await
        .unwrap();
    assert_eq!(e["field"], "voice", "{e}");
    assert!(e["message"].as_str().unwrap().contains("nobody"), "{e}");
    c.publish(
        &sotad.topic("tts/say"),
        "{\"id\":\"e3\",\"text\":\"Robots \u{1F916} are fun.\"}",
    )
    .await
    .unwrap();
    let done = c
        .expect_id(&sotad.topic("tts/done"), "e3", WAIT)
        .await
        .unwrap();
    assert!(done["audio_s"].as_f64().unwrap() > 0.5, "{done}");
    assert!(done.get("play_error").is_none(), "{done}");

    // `play: true` without a speaker: said in the reply, not ignored (issue 24, item 10).
    c.publish(
        &sotad.topic("tts/say"),
        r#"{"id":"p1","text":"Hi.","play":true}"#,
    )
    .await
    .unwrap();
    let done = c
        .expect_id(&sotad.topic("tts/done"), "p1", WAIT)
        .await
        .unwrap();
    let why = done["play_error"].as_str().unwrap_or_default();
    assert!(why.contains("audio.playback_device"), "{done}");
    assert!(done["audio_s"].as_f64().unwrap() > 0.1, "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_model_is_reported_and_other_stages_keep_serving() {
    let broker = Mosquitto::start().unwrap();
    let extra = "[stt]\nmodel = \"no-such-whisper\"\n[llm]\nmodel = \"\"\n[tts]\nvoice = \"\"";
    let sotad = Sotad::start(&models_config(broker.port, "missing", extra), "missing").unwrap();
    let mut c = online(broker.port, &sotad, "t-missing", WAIT).await;
    c.publish(
        &sotad.topic("stt/transcribe"),
        json!({"id": "m1", "wav": "UklGRg=="}).to_string(),
    )
    .await
    .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "m1", WAIT)
        .await
        .unwrap();
    assert_eq!(e["code"], "unavailable", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("stt.model") && msg.contains("no-such-whisper"),
        "{msg}"
    );
    c.publish(&sotad.topic("llm/ask"), r#"{"id":"m2","prompt":"hi"}"#)
        .await
        .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "m2", WAIT)
        .await
        .unwrap();
    assert!(e["message"].as_str().unwrap().contains("llm.model"), "{e}");
    c.publish(&sotad.topic("ping"), r#"{"id":"p"}"#)
        .await
        .unwrap();
    c.expect_id(&sotad.topic("pong"), "p", WAIT).await.unwrap();
}

/// The one-off commands as a user runs them: `--model` as a path or a name in the models
/// directory, several files for `transcribe` (an array with `--json`), one answer with
/// `chat --prompt`, and a clear error for a model that is nowhere.
#[test]
fn one_off_commands_take_a_model_and_several_files() {
    let models = models_dir();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("sotad.toml");
    std::fs::write(&conf, format!("[models]\ndir = \"{}\"\n", models.display())).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(sotad_tests::sotad_bin())
            .arg("--config")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };

    let clips = librivox_clips();
    let (a, b) = (&clips[0], &clips[1]);
    // A path as given (absolute here), and two files: one JSON array, in order.
    let tiny = models.join("whisper-tiny.en-ct2");
    let (ok, out, err) = run(&[
        "transcribe",
        "--model",
        tiny.to_str().unwrap(),
        "--json",
        a.0.to_str().unwrap(),
        b.0.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(all.len(), 2, "{out}");
    for (t, (path, reference)) in all.iter().zip([a, b]) {
        assert_eq!(t["id"], path.display().to_string());
        let wer = word_error_rate(reference, t["text"].as_str().unwrap());
        assert!(wer <= 0.25, "WER {wer:.2}: {t}");
    }

    // A name in the models directory; one answer and exit.
    let (ok, out, err) = run(&[
        "chat",
        "-m",
        "smollm2-135m-instruct-q4_1.gguf",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--system",
        "",
        "--prompt",
        "Say hello.",
    ]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty(), "no answer: {err}");
    assert!(err.contains("tokens, first after"), "{err}");

    // Nowhere: the error names the flag, the value and the models directory.
    let (ok, _, err) = run(&["chat", "--model", "no-such-model.gguf", "--prompt", "hi"]);
    assert!(!ok);
    assert!(
        err.contains("--model \"no-such-model.gguf\"")
            && err.contains(&models.display().to_string()),
        "{err}"
    );
    // Out of range: the request's own check, naming the option.
    let (ok, _, err) = run(&["chat", "--temperature", "9", "--prompt", "hi"]);
    assert!(!ok);
    assert!(err.contains("temperature"), "{err}");
}
