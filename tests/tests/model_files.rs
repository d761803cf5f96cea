//! Model files and the running daemon (issue 24): a model file truncated in place under a
//! running sotad never ends in a silent crash, and `sotad config check` opens every
//! configured model. The real `sotad` binary, Debian's mosquitto and a copy of the real
//! SmolLM2-135M GGUF in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sotad_tests::{Mosquitto, Sotad, models_dir, online, sotad_bin};

const WAIT: Duration = Duration::from_secs(120);

/// The LLM alone, on `model`; no microphone or speaker.
fn llm_config(port: u16, device: &str, model: &Path) -> String {
    format!(
        "{}\n[models]\ndir = \"{}\"\n[audio]\ncapture_device = \"\"\nplayback_device = \"\"\n\
         [stt]\nmodel = \"\"\n[tts]\nvoice = \"\"\n[llm]\nmodel = \"{}\"\n",
        Sotad::link_config(port, device, ""),
        models_dir().display(),
        model.display()
    )
}

/// A private copy of the small LLM, which the test may truncate.
fn llm_copy(dir: &Path) -> PathBuf {
    let path = dir.join("llm.gguf");
    std::fs::copy(models_dir().join("smollm2-135m-instruct-q4_1.gguf"), &path).unwrap();
    path
}

/// Truncates `path` in place, as `cp` over it does first.
fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_truncated_between_jobs_turns_its_stage_off_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = llm_copy(dir.path());
    let broker = Mosquitto::start().unwrap();
    let mut sotad = Sotad::start(&llm_config(broker.port, "trunc", &model), "trunc").unwrap();
    let mut c = online(broker.port, &sotad, "t-trunc", WAIT).await;
    let ask = |id: &str| json!({"id": id, "prompt": "Say hi.", "options": {"max_tokens": 4}});
    c.publish(&sotad.topic("llm/ask"), ask("before").to_string())
        .await
        .unwrap();
    c.expect_id(&sotad.topic("llm/reply"), "before", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));

    truncate(&model, 4096);
    c.publish(&sotad.topic("llm/ask"), ask("after").to_string())
        .await
        .unwrap();
    let e = c
        .expect_id(&sotad.topic("error"), "after", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
    assert_eq!(e["code"], "unavailable", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("llm.model")
            && message.contains("llm.gguf")
            && message.contains("changed in place"),
        "{message}"
    );
    // The daemon keeps serving, and the log names the file.
    c.publish(&sotad.topic("ping"), r#"{"id":"alive"}"#)
        .await
        .unwrap();
    c.expect_id(&sotad.topic("pong"), "alive", WAIT)
        .await
        .unwrap();
    let log = sotad
        .assert_still_running_after(Duration::from_millis(100))
        .await;
    assert!(log.contains("llm.gguf") && log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_truncated_during_a_job_ends_sotad_with_a_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = llm_copy(dir.path());
    let broker = Mosquitto::start().unwrap();
    let mut sotad = Sotad::start(&llm_config(broker.port, "bus", &model), "bus").unwrap();
    let mut c = online(broker.port, &sotad, "t-bus", WAIT).await;
    // A long answer; the file is truncated once its first tokens have streamed, while the
    // engine reads the weights for the next ones. Asked again should the model end first.
    let mut truncated = false;
    for attempt in 0..5 {
        let id = format!("long-{attempt}");
        let ask = json!({"id": id, "prompt": "Write a long story about a robot who learns to cook, with many chapters.",
                         "options": {"max_tokens": 1500, "temperature": 1.0, "seed": attempt}});
        c.publish(&sotad.topic("llm/ask"), ask.to_string())
            .await
            .unwrap();
        let quoted = format!("\"{id}\"");
        let first = c
            .expect(&sotad.topic("llm/tokens"), WAIT, |p| {
                String::from_utf8_lossy(p).contains(&quoted)
            })
            .await;
        if first.is_err() {
            continue;
        }
        if !truncated {
            truncate(&model, 0);
            truncated = true;
        }
        break;
    }
    assert!(truncated, "no tokens streamed\n{}", sotad.log());
    let status = sotad
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("sotad did not exit: {e}\n{}", sotad.log()));
    assert_eq!(status.code(), Some(3), "{status:?}\n{}", sotad.log());
    let log = sotad.log();
    assert!(
        log.contains("SIGBUS reading model file") && log.contains("llm.gguf"),
        "{log}"
    );
    // The broker saw it go: the will.
    c.expect(&sotad.topic("status"), WAIT, |p| p == b"offline")
        .await
        .unwrap();
}

#[test]
fn config_check_opens_every_model_and_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    // A GGUF cut after its header: the tensor table points past the end.
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(models_dir().join("smollm2-135m-instruct-q4_1.gguf")).unwrap();
    std::fs::write(&cut, &bytes[..2 << 20]).unwrap();
    // A directory that is not a Whisper model, and a voice that does not exist.
    let empty = dir.path().join("not-whisper");
    std::fs::create_dir(&empty).unwrap();
    let check = |extra: &str| {
        let config = dir.path().join("sotad.toml");
        std::fs::write(
            &config,
            format!(
                "[models]\ndir = \"{}\"\n[audio]\ncapture_device = \"\"\n{extra}\n",
                models_dir().display()
            ),
        )
        .unwrap();
        Command::new(sotad_bin())
            .args(["config", "check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let bad = check(&format!(
        "[stt]\nmodel = \"{}\"\n[llm]\nmodel = \"{}\"\n[tts]\nvoice = \"piper/no-such-voice.onnx\"",
        empty.display(),
        cut.display()
    ));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    for needle in [
        "`stt.model`",
        "not-whisper",
        "`llm.model`",
        "cut.gguf",
        "`tts.voice`",
        "no-such-voice.onnx",
    ] {
        assert!(stderr.contains(needle), "{needle} not in:\n{stderr}");
    }
    assert!(stderr.contains("3 model file problem"), "{stderr}");
    // The LLM as a directory.
    let bad = check(&format!("[llm]\nmodel = \"{}\"", dir.path().display()));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("is a directory"), "{stderr}");
    // The installed models pass.
    let good = check("");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let out: Value = Value::String(String::from_utf8_lossy(&good.stdout).into_owned());
    assert!(out.as_str().unwrap().contains("configuration ok"), "{out}");
}
