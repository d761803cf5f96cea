//! LLM engine against llama.cpp (llama-cpp-python), same GGUF, same threads, same token ids,
//! in one run: load time, prefill tok/s on a 512-token prompt, time to first token, greedy
//! decode tok/s over 256 tokens, RSS (anonymous and file-backed) after load and after
//! generating. Medians of `RUNS`; ratios sotad / llama.cpp.
//!
//! ```text
//! SOTAD_BENCH_PYTHON=/tmp/venv-llm/bin/python cargo bench -p sotad-benches --bench llm
//! ```
//! Environment: `SOTAD_BENCH_MODEL` (file name in the models directory; default SmolLM2),
//! `SOTAD_BENCH_THREADS` (default 2), `SOTAD_BENCH_PYTHON` (a python with llama-cpp-python;
//! without it only sotad is measured). The peer runs first, in its own process, then sotad.
//! The comparison with candle 0.11.1's `quantized_llama` is `benches/llm_candle.rs`
//! (`cargo bench -p sotad-benches --features candle-peer --bench llm_candle`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use sotad_benches::{median, self_status_kib};
use sotad_engines::llm::{LoadOptions, Model, Sampler};

const PROMPT_TOKENS: usize = 512;
const DECODE_TOKENS: usize = 256;
const RUNS: usize = 5;

fn main() {
    let (path, threads) = sotad_benches::llm::model_and_threads();
    let file = path
        .file_name()
        .map_or(String::new(), |f| f.to_string_lossy().into_owned());
    // The prompt: both sides evaluate exactly these ids.
    let (ids, ids_file) = sotad_benches::llm::prompt_ids(&path, PROMPT_TOKENS, "sotad-bench-llm");

    let peer: Option<serde_json::Value> = std::env::var("SOTAD_BENCH_PYTHON").ok().and_then(|py| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts/reference/llm_bench_peer.py");
        let out = Command::new(py)
            .arg(script)
            .arg(&path)
            .arg(threads.to_string())
            .arg(&ids_file)
            .arg(DECODE_TOKENS.to_string())
            .arg(RUNS.to_string())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "llama.cpp peer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last()?).ok()
    });
    let _ = std::fs::remove_file(&ids_file);

    let anon0 = self_status_kib("RssAnon:");
    let file0 = self_status_kib("RssFile:");
    let t = Instant::now();
    let model = Model::load(
        &path,
        &LoadOptions {
            context_len: 1024,
            threads,
        },
    )
    .expect("load model");
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut session = model.session();
    let anon_load = self_status_kib("RssAnon:") - anon0.min(self_status_kib("RssAnon:"));
    let file_load = self_status_kib("RssFile:").saturating_sub(file0);

    let (mut prefill, mut ttft, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        session.reset();
        let t = Instant::now();
        session.eval(&ids).unwrap();
        let _first = Sampler::argmax(session.logits());
        let dt = t.elapsed().as_secs_f64();
        prefill.push(ids.len() as f64 / dt);
        ttft.push(dt * 1e3);
        session.reset();
        session.eval(&ids[..16]).unwrap();
        let mut tok = Sampler::argmax(session.logits());
        let t = Instant::now();
        for _ in 0..DECODE_TOKENS {
            session.eval(&[tok]).unwrap();
            tok = Sampler::argmax(session.logits());
        }
        decode.push(DECODE_TOKENS as f64 / t.elapsed().as_secs_f64());
    }
    let anon_gen = self_status_kib("RssAnon:").saturating_sub(anon0);
    let file_gen = self_status_kib("RssFile:").saturating_sub(file0);

    println!(
        "LLM bench: {file}, {threads} threads, prompt {} tokens, decode {DECODE_TOKENS} tokens, median of {RUNS}",
        ids.len()
    );
    println!(
        "(sotad RSS figures are growth over the process before loading; llama.cpp's are its whole python process)"
    );
    let ours = [
        ("load ms", load_ms, "load_ms"),
        ("prefill tok/s", median(&prefill), "prefill_tok_s"),
        ("TTFT ms (512-token prompt)", median(&ttft), "ttft_ms"),
        ("decode tok/s", median(&decode), "decode_tok_s"),
        (
            "RssAnon after load KiB",
            anon_load as f64,
            "rss_anon_load_kib",
        ),
        (
            "RssFile after load KiB",
            file_load as f64,
            "rss_file_load_kib",
        ),
        (
            "RssAnon after generating KiB",
            anon_gen as f64,
            "rss_anon_gen_kib",
        ),
        (
            "RssFile after generating KiB",
            file_gen as f64,
            "rss_file_gen_kib",
        ),
    ];
    println!(
        "{:<32} {:>12} {:>12} {:>8}",
        "metric", "sotad", "llama.cpp", "ratio"
    );
    for (label, v, key) in ours {
        match peer.as_ref().and_then(|p| p[key].as_f64()) {
            Some(p) => println!("{label:<32} {v:>12.1} {p:>12.1} {:>8.2}", v / p),
            None => println!("{label:<32} {v:>12.1} {:>12} {:>8}", "-", "-"),
        }
    }
}
