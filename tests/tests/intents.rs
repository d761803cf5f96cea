//! Intents end to end: the real `sotad` with the robot's intents file (configs/intents/robot.toml),
//! the real small models and Debian's mosquitto. A command typed on `turn/text` or spoken into
//! the file-plugin microphone is published on `intent/<name>`; the integration's answer on
//! `turn/answer` is spoken, or the fallback after the wait; other questions go to the LLM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sotad_tests::{ENGINES_OFF, Mosquitto, Sotad, TestClient, models_dir, online};

/// Model loading plus a first inference on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

const FALLBACK: &str = "Sorry, the robot did not answer.";

fn robot_intents() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/intents/robot.toml")
}

/// The models of the cache, the robot's intents with a short wait (templates only), and
/// `audio` lines.
fn config(port: u16, device: &str, audio: &str, stt: &str) -> String {
    config_with(port, device, audio, stt, false)
}

fn config_with(port: u16, device: &str, audio: &str, stt: &str, llm_fallback: bool) -> String {
    format!(
        "{}\n[models]\ndir = \"{}\"\n[audio]\n{audio}\n[stt]\nmodel = \"{stt}\"\n[llm]\nmax_tokens = 16\ntemperature = 0.0\n\
         [intents]\nfile = \"{}\"\nreply_timeout_ms = 1500\nfallback = \"{FALLBACK}\"\nllm_fallback = {llm_fallback}\n",
        Sotad::link_config(port, device, ""),
        models_dir().display(),
        robot_intents().display()
    )
}

fn json_of(p: &rumqttc::Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or(Value::Null)
}

/// Waits for the `turn/done` of `turn`, returning it and everything seen before.
async fn done(c: &mut TestClient, sotad: &Sotad, turn: &str) -> (Value, Vec<rumqttc::Publish>) {
    let (p, seen) = c
        .expect_collecting(&sotad.topic("turn/done"), WAIT, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|v| v["turn"] == turn)
        })
        .await
        .unwrap_or_else(|e| panic!("no turn/done for {turn}: {e}\n{}", sotad.log()));
    (json_of(&p), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_commands_become_intents_answered_by_the_integration_or_the_fallback() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(
        &config(
            broker.port,
            "robot",
            "capture_device = \"\"\nplayback_device = \"\"",
            "",
        ),
        "robot",
    )
    .unwrap();
    let mut c = online(broker.port, &sotad, "t-intents", WAIT).await;
    let turn_text = sotad.topic("turn/text");
    let answer = sotad.topic("turn/answer");

    // 1. A command with slots; the integration answers with text, which is spoken.
    c.publish(
        &turn_text,
        json!({"id": "t1", "text": "Turn left ninety degrees, please."}).to_string(),
    )
    .await
    .unwrap();
    let intent = c
        .expect(&sotad.topic("intent/turn"), WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let intent = json_of(&intent);
    assert_eq!(intent["turn"], "t1", "{intent}");
    assert_eq!(intent["intent"], "turn", "{intent}");
    assert_eq!(intent["transcript"], "Turn left ninety degrees, please.");
    assert_eq!(
        intent["slots"],
        json!({"side": {"value": "left", "raw": "left"}, "angle": {"value": 90, "raw": "ninety"}}),
        "{intent}"
    );
    assert_eq!(intent["recognizer"], "template");
    assert_eq!(intent["confidence"], 1.0);
    assert_eq!(intent["answer_topic"], answer.as_str());
    c.publish(
        &answer,
        json!({"id": "t1", "text": "Turning left."}).to_string(),
    )
    .await
    .unwrap();
    let (d, seen) = done(&mut c, &sotad, "t1").await;
    assert_eq!(d["outcome"], "answered", "{d}");
    assert_eq!(d["path"], "intent", "{d}");
    assert_eq!(
        d["intent"],
        json!({"name": "turn", "answer": "integration"})
    );
    assert_eq!(d["reply"], "Turning left.", "{d}");
    assert!(d["audio_s"].as_f64().unwrap() > 0.3, "{d}");
    assert!(d["latency"]["intent_ms"].as_f64().is_some(), "{d}");
    let audio: Vec<_> = seen
        .iter()
        .filter(|p| p.topic == sotad.topic("tts/audio/t1"))
        .collect();
    assert!(!audio.is_empty() && audio.iter().all(|p| p.payload.starts_with(b"RIFF")));
    assert!(
        !seen.iter().any(|p| p.topic == sotad.topic("turn/reply")),
        "the LLM did not answer a command"
    );

    // 2. Nobody answers: after reply_timeout_ms the fallback is spoken.
    c.publish(&turn_text, json!({"id": "t2", "text": "Stop!"}).to_string())
        .await
        .unwrap();
    let (d, seen) = done(&mut c, &sotad, "t2").await;
    assert!(
        seen.iter()
            .any(|p| p.topic == sotad.topic("intent/stop") && json_of(p)["turn"] == "t2"),
        "{d}"
    );
    assert_eq!(d["path"], "intent", "{d}");
    assert_eq!(d["intent"], json!({"name": "stop", "answer": "timeout"}));
    assert_eq!(d["reply"], FALLBACK, "{d}");
    assert!(
        seen.iter().any(|p| p.topic == sotad.topic("tts/audio/t2")),
        "the fallback is spoken"
    );
    // The late answer finds no turn: `not_found` naming the field.
    c.publish(&answer, json!({"id": "t2", "text": "Late."}).to_string())
        .await
        .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "t2", WAIT)
        .await
        .unwrap();
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("not_found"), Some("id")),
        "{e}"
    );

    // 3. Bad answers while a turn waits: each an error naming what is wrong; then an empty
    // answer (nothing to say) ends the turn.
    c.publish(
        &turn_text,
        json!({"id": "t3", "text": "lights on"}).to_string(),
    )
    .await
    .unwrap();
    c.expect(&sotad.topic("intent/lights"), WAIT, |_| true)
        .await
        .unwrap();
    c.publish(&answer, "{not json").await.unwrap();
    let e = c
        .expect(&sotad.topic("error"), WAIT, |_| true)
        .await
        .unwrap();
    assert_eq!(json_of(&e)["code"], "invalid_json", "{}", json_of(&e));
    c.publish(&answer, json!({"id": "t3", "text": 5}).to_string())
        .await
        .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "t3", WAIT)
        .await
        .unwrap();
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("invalid_request"), Some("text")),
        "{e}"
    );
    c.publish(&answer, json!({"id": "t3"}).to_string())
        .await
        .unwrap();
    let (d, _) = done(&mut c, &sotad, "t3").await;
    assert_eq!(
        d["intent"],
        json!({"name": "lights", "answer": "integration"})
    );
    assert_eq!(
        (d["reply"].as_str(), d["audio_s"].as_f64()),
        (Some(""), Some(0.0)),
        "{d}"
    );

    // 4. Not a command: the LLM answers as before, and no intent goes out.
    c.publish(
        &turn_text,
        json!({"id": "t4", "text": "What is the capital of France?"}).to_string(),
    )
    .await
    .unwrap();
    let (d, seen) = done(&mut c, &sotad, "t4").await;
    assert_eq!(d["path"], "llm", "{d}");
    assert!(d.get("intent").is_none(), "{d}");
    assert!(!d["reply"].as_str().unwrap().is_empty(), "{d}");
    assert!(
        !seen.iter().any(|p| p.topic.contains("/intent/")),
        "no intent for a question"
    );

    // 6. `llm/ask` with tools: a tool call in the OpenAI shape, arguments a JSON string.
    let ask = sotad.topic("llm/ask");
    let reply = sotad.topic("llm/reply");
    let weather = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}}]);
    c.publish(
        &ask,
        json!({"id": "a1", "prompt": "What is the weather in Paris?", "tools": weather,
               "options": {"max_tokens": 40}})
        .to_string(),
    )
    .await
    .unwrap();
    let r = c.expect_id(&reply, "a1", WAIT).await.unwrap();
    let call = &r["tool_calls"][0];
    assert_eq!(call["type"], "function", "{r}");
    assert_eq!(call["function"]["name"], "get_weather", "{r}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].as_str().is_some_and(|c| !c.is_empty()), "{r}");

    // 7. `response_format` with a JSON schema: the text is JSON that validates.
    c.publish(
        &ask,
        json!({"id": "a2", "prompt": "Name a primary colour.", "options": {"max_tokens": 24},
               "response_format": {"type": "json_schema", "json_schema": {"name": "colour",
                 "schema": {"type": "object", "properties": {"colour": {"enum": ["red", "yellow", "blue"]}},
                            "required": ["colour"], "additionalProperties": false}}}})
        .to_string(),
    )
    .await
    .unwrap();
    let r = c.expect_id(&reply, "a2", WAIT).await.unwrap();
    let v: Value = serde_json::from_str(r["text"].as_str().unwrap()).unwrap();
    assert!(
        ["red", "yellow", "blue"].contains(&v["colour"].as_str().unwrap()),
        "{r}"
    );
    assert_eq!(v.as_object().unwrap().len(), 1, "{r}");

    // 8. A tool schema the grammar engine cannot compile: `invalid_request` naming it.
    let mut bad = weather.clone();
    bad.as_array_mut().unwrap().push(json!({"type": "function", "function": {
        "name": "broken", "parameters": {"type": "object", "properties": {"x": {"type": "colour"}}}}}));
    c.publish(
        &ask,
        json!({"id": "a3", "prompt": "Hi", "tools": bad}).to_string(),
    )
    .await
    .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "a3", WAIT)
        .await
        .unwrap();
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (
            Some("invalid_request"),
            Some("tools[1].function.parameters")
        ),
        "{e}"
    );
}

/// With `intents.llm_fallback`, a command no template matches is asked with the intents as
/// tools; the LLM's constrained call becomes the intent, with recognizer `llm`.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_no_template_matches_becomes_an_intent_through_the_llm() {
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start(
        &config_with(
            broker.port,
            "robot",
            "capture_device = \"\"\nplayback_device = \"\"",
            "",
            true,
        ),
        "robot",
    )
    .unwrap();
    let mut c = online(broker.port, &sotad, "t-llm-intents", WAIT).await;
    c.publish(
        &sotad.topic("turn/text"),
        json!({"id": "t5", "text": "Could you please put the lights on for me?"}).to_string(),
    )
    .await
    .unwrap();
    let (d, seen) = done(&mut c, &sotad, "t5").await;
    let intent = seen
        .iter()
        .find(|p| p.topic == sotad.topic("intent/lights"))
        .map(json_of)
        .unwrap_or_else(|| panic!("no intent/lights: {d}\n{}", sotad.log()));
    assert_eq!(intent["recognizer"], "llm", "{intent}");
    assert_eq!(intent["slots"]["state"]["value"], "on", "{intent}");
    let confidence = intent["confidence"].as_f64().unwrap();
    assert!(confidence > 0.0 && confidence <= 1.0, "{intent}");
    assert_eq!(d["path"], "intent", "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spoken_command_through_the_voice_loop_becomes_an_intent() {
    let dir = tempfile::tempdir().unwrap();
    // espeak-ng says the command; sox makes it the microphone's 16 kHz mono s16le.
    let wav = dir.path().join("command.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg("Move forward two meters.")
        .status()
        .expect("espeak-ng (scripts/setup.sh installs it)");
    assert!(status.success());
    let speech = dir.path().join("command.raw");
    let status = Command::new("sox")
        .arg(&wav)
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
        .arg(&speech)
        .status()
        .expect("sox (scripts/setup.sh installs it)");
    assert!(status.success());
    let mut raw = vec![0u8; 16_000 * 2];
    raw.extend(std::fs::read(&speech).unwrap());
    raw.extend(vec![0u8; 16_000 * 2 * 3]);
    let mic = dir.path().join("mic.raw");
    std::fs::write(&mic, raw).unwrap();
    let asound = dir.path().join("asound.conf");
    std::fs::write(
        &asound,
        format!(
            "pcm.testmic {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n\
             pcm.testspeaker {{\n type file\n slave.pcm \"null\"\n file \"{}\"\n format \"raw\"\n}}\n",
            mic.display(),
            dir.path().join("speaker.raw").display()
        ),
    )
    .unwrap();
    let alsa = format!("/usr/share/alsa/alsa.conf:{}", asound.display());
    let broker = Mosquitto::start().unwrap();
    let sotad = Sotad::start_with_env(
        &config(
            broker.port,
            "spoken",
            "capture_device = \"testmic\"\nplayback_device = \"testspeaker\"",
            "whisper-tiny.en-ct2",
        ),
        "spoken",
        &[("ALSA_CONFIG_PATH", &alsa)],
    )
    .unwrap();
    let mut c = TestClient::connect(broker.port, "t-spoken", false)
        .await
        .unwrap();
    c.subscribe("sotad/spoken/#").await.unwrap();
    let p = c
        .expect(&sotad.topic("intent/move"), WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    let intent = json_of(&p);
    let turn = intent["turn"].as_str().unwrap().to_string();
    assert_eq!(intent["slots"]["direction"]["value"], "forward", "{intent}");
    assert_eq!(intent["slots"]["distance"]["value"], 2, "{intent}");
    c.publish(
        &sotad.topic("turn/answer"),
        json!({"id": turn, "text": "Moving."}).to_string(),
    )
    .await
    .unwrap();
    let (d, _) = done(&mut c, &sotad, &turn).await;
    assert_eq!(d["path"], "intent", "{d}");
    assert_eq!(d["intent"]["answer"], "integration", "{d}");
    // End of speech → intent published: measured from the VAD's end of speech.
    let intent_ms = d["latency"]["intent_ms"].as_f64().unwrap();
    assert!(
        intent_ms >= d["latency"]["endpoint_ms"].as_f64().unwrap(),
        "{d}"
    );
    assert!(d["audio_s"].as_f64().unwrap() > 0.2, "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_intents_file_stops_start_up_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-intents.toml");
    std::fs::write(
        &bad,
        "[[intent]]\nname = \"go\"\nsentences = [\n  \"go {where}\",\n]\n",
    )
    .unwrap();
    let config = format!(
        "[device]\nid = \"bad\"\n{ENGINES_OFF}[intents]\nfile = \"{}\"\n",
        bad.display()
    );
    let mut sotad = Sotad::start(&config, "bad").unwrap();
    let status = sotad.wait_exit(WAIT).unwrap();
    assert_eq!(status.code(), Some(2), "a configuration error");
    let log = sotad.log();
    assert!(
        log.contains("intents.file")
            && log.contains(&format!("{}:4:7", bad.display()))
            && log.contains("slot `where` is referenced but not declared"),
        "{log}"
    );
    // `sotad config check` refuses it the same way.
    let conf = dir.path().join("sotad.toml");
    std::fs::write(&conf, &config).unwrap();
    let out = Command::new(sotad_tests::sotad_bin())
        .arg("--config")
        .arg(&conf)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4:7", bad.display())),
        "{stderr}"
    );
}
