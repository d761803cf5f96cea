//! `sotad bench`: the real binary on the real default models (`--json --tokens 8 --runs 1`),
//! every field present and plausible; and its bad input (a missing model, a clip that is not
//! audio, `--tokens 0`) a clear error with a non-zero exit, before any model loads.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;
use sotad_tests::{models_dir, sotad_bin};

/// Runs `sotad -c CONFIG bench ARGS` with `extra` appended to a configuration that points at
/// the installed models.
fn bench(dir: &Path, extra: &str, args: &[&str]) -> Output {
    let config = dir.join("sotad.toml");
    std::fs::write(
        &config,
        format!("[models]\ndir = \"{}\"\n{extra}\n", models_dir().display()),
    )
    .unwrap();
    Command::new(sotad_bin())
        .arg("-c")
        .arg(&config)
        .arg("bench")
        .args(args)
        .output()
        .unwrap()
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}, expected > 0");
    x
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(!s.trim().is_empty(), "{what} is empty");
    s
}

#[test]
fn bench_json_measures_every_stage_on_the_default_models() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = bench(dir.path(), "", &["--json", "--tokens", "8", "--runs", "1"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sotad bench failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("sotad bench --json --tokens 8 --runs 1: {took:.1?}\n{v:#}");

    text(&v["version"], "version");
    assert_eq!(v["runs"], 1);
    let cpu = &v["cpu"];
    text(&cpu["model"], "cpu.model");
    text(&cpu["arch"], "cpu.arch");
    assert!(positive(&cpu["cores"], "cpu.cores") >= 1.0);
    let features = cpu["features"].as_array().expect("cpu.features");
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert!(!features.is_empty(), "no CPU features detected: {cpu}");
    }
    for engine in ["llm", "whisper", "piper"] {
        text(&cpu["kernels"][engine], &format!("cpu.kernels.{engine}"));
    }
    for when in ["before", "after"] {
        let load = v["load_average"][when].as_array().expect("load_average");
        assert_eq!(load.len(), 3, "load_average.{when}: {load:?}");
    }

    // The default models (configs/default.toml).
    let llm = &v["llm"];
    assert!(
        text(&llm["model"], "llm.model").ends_with("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        "{llm}"
    );
    positive(&llm["threads"], "llm.threads");
    assert_eq!(llm["prefill_tokens"], 128);
    assert_eq!(llm["decode_tokens"], 8);
    positive(&llm["prefill_tok_s"], "llm.prefill_tok_s");
    positive(&llm["decode_tok_s"], "llm.decode_tok_s");

    let stt = &v["stt"];
    assert!(text(&stt["model"], "stt.model").ends_with("whisper-tiny.en-ct2"));
    positive(&stt["threads"], "stt.threads");
    let audio_s = positive(&stt["audio_s"], "stt.audio_s");
    assert!(
        (audio_s - 2.99).abs() < 0.01,
        "the bundled clip is 2.99 s: {stt}"
    );
    let ms = positive(&stt["processing_ms"], "stt.processing_ms");
    let rtf = positive(&stt["rtf"], "stt.rtf");
    assert!((rtf - ms / 1e3 / audio_s).abs() < 1e-3, "{stt}");
    // "He was not an ill disposed young man."
    assert!(
        text(&stt["transcript"], "stt.transcript")
            .to_lowercase()
            .contains("young man"),
        "{stt}"
    );

    let tts = &v["tts"];
    assert!(text(&tts["model"], "tts.model").ends_with("en_US-joe-medium.onnx"));
    positive(&tts["threads"], "tts.threads");
    let audio_s = positive(&tts["audio_s"], "tts.audio_s");
    assert!(audio_s > 2.0, "a sentence of 18 words: {tts}");
    let total = positive(&tts["synthesis_ms"], "tts.synthesis_ms");
    positive(&tts["rtf"], "tts.rtf");
    let first = positive(&tts["first_audio_ms"], "tts.first_audio_ms");
    assert!(
        first <= total,
        "first audio after the whole sentence: {tts}"
    );

    let voice = &v["voice"];
    assert!(
        text(&voice["transcript"], "voice.transcript")
            .to_lowercase()
            .contains("capital"),
        "{voice}"
    );
    text(&voice["reply"], "voice.reply");
    let endpoint = positive(&voice["endpoint_ms"], "voice.endpoint_ms");
    positive(&voice["stt_ms"], "voice.stt_ms");
    positive(&voice["first_token_ms"], "voice.first_token_ms");
    positive(&voice["first_audio_ms"], "voice.first_audio_ms");
    let response = positive(
        &voice["end_of_speech_to_first_audio_ms"],
        "voice.end_of_speech_to_first_audio_ms",
    );
    assert!(response > endpoint, "{voice}");
}

#[test]
fn bench_bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let check = |out: &Output, needles: &[&str]| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "exit 0 for bad input: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{n:?} not in: {stderr}");
        }
    };

    let out = bench(
        dir.path(),
        "[llm]\nmodel = \"missing.gguf\"",
        &["--runs", "1"],
    );
    check(&out, &["`llm.model`", "missing.gguf", "No such file"]);

    let clip = dir.path().join("notes.wav");
    std::fs::write(&clip, "not a recording\n").unwrap();
    let out = bench(dir.path(), "", &["--clip", clip.to_str().unwrap()]);
    check(&out, &[clip.to_str().unwrap(), "not a RIFF file"]);

    let out = bench(dir.path(), "", &["--tokens", "0"]);
    check(&out, &["--tokens", "'0'"]);
}
