//! LLM engine against llama.cpp (llama-cpp-python), same GGUF, same threads, same token ids,
//! in one run: load time, prefill tok/s on a 512-token prompt, time to first token, greedy
//! decode tok/s over 256 tokens, RSS (anonymous and file-backed) after load and after
//! generating. Medians of `RUNS`; ratios sotad / llama.cpp, of the medians and (`paired`) the
//! median of the runs' own ratios. The two sides' runs alternate (llama.cpp's run `i`, then
//! sotad's run `i`), each side loaded once, so that the drift of a shared machine's speed
//! between minutes falls on both.
//!
//! ```text
//! SOTAD_BENCH_PYTHON=/tmp/venv-llm/bin/python cargo bench -p sotad-benches --bench llm
//! ```
//! Environment: `SOTAD_BENCH_MODEL` (file name in the models directory; default SmolLM2),
//! `SOTAD_BENCH_THREADS` (default 2), `SOTAD_BENCH_PYTHON` (a python with llama-cpp-python;
//! without it only sotad is measured). The peer runs in its own process, driven over its
//! standard input.
//! The comparison with candle 0.11.1's `quantized_llama` is `benches/llm_candle.rs`
//! (`cargo bench -p sotad-benches --features candle-peer --bench llm_candle`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
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

    let mut peer = std::env::var("SOTAD_BENCH_PYTHON")
        .ok()
        .and_then(|py| Peer::start(&py, &path, threads, &ids_file));

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
    let mut peer_runs: Vec<serde_json::Value> = Vec::new();
    for _ in 0..RUNS {
        if let Some(p) = peer.as_mut() {
            match p.run() {
                Some(r) => peer_runs.push(r),
                None => peer = None,
            }
        }
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
    let _ = std::fs::remove_file(&ids_file);
    // The peer's figures: load and RSS from its first and last lines, speeds per run.
    let peer_summary = peer.and_then(|p| p.finish()).map(|mut v| {
        for key in ["prefill_tok_s", "ttft_ms", "decode_tok_s"] {
            let runs: Vec<f64> = peer_runs.iter().filter_map(|r| r[key].as_f64()).collect();
            if runs.len() == RUNS {
                v[key] = median(&runs).into();
            }
        }
        v
    });
    // The median of the runs' own ratios (both sides' run `i` were measured back to back).
    let paired = |ours: &[f64], key: &str| -> Option<f64> {
        let theirs: Vec<f64> = peer_runs.iter().filter_map(|r| r[key].as_f64()).collect();
        (theirs.len() == ours.len()).then(|| {
            median(
                &ours
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| a / b)
                    .collect::<Vec<_>>(),
            )
        })
    };
    let paired_ratio = [
        ("prefill_tok_s", paired(&prefill, "prefill_tok_s")),
        ("ttft_ms", paired(&ttft, "ttft_ms")),
        ("decode_tok_s", paired(&decode, "decode_tok_s")),
    ];
    let anon_gen = self_status_kib("RssAnon:").saturating_sub(anon0);
    let file_gen = self_status_kib("RssFile:").saturating_sub(file0);

    println!(
        "LLM bench: {file}, {threads} threads, prompt {} tokens, decode {DECODE_TOKENS} tokens, median of {RUNS}",
        ids.len()
    );
    println!(
        "(sotad RSS figures are growth over the process before loading; llama.cpp's are its whole python process)"
    );
    println!(
        "(sotad weight layout: the GGUF file's own blocks, memory-mapped, no repacked copy; kernels: {})",
        sotad_engines::quant::Kernel::best()
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
        "{:<32} {:>12} {:>12} {:>8} {:>8}",
        "metric", "sotad", "llama.cpp", "ratio", "paired"
    );
    for (label, v, key) in ours {
        let pair = paired_ratio
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, r)| *r)
            .map_or("-".to_string(), |r| format!("{r:.2}"));
        match peer_summary.as_ref().and_then(|p| p[key].as_f64()) {
            Some(p) => println!("{label:<32} {v:>12.1} {p:>12.1} {:>8.2} {pair:>8}", v / p),
            None => println!("{label:<32} {v:>12.1} {:>12} {:>8} {:>8}", "-", "-", "-"),
        }
    }
}

/// llama-cpp-python in its own process (`llm_bench_peer.py`), one run per request.
struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
    /// Its first line: load time and RSS after load.
    head: serde_json::Value,
}

impl Peer {
    fn start(
        py: &str,
        path: &std::path::Path,
        threads: usize,
        ids_file: &std::path::Path,
    ) -> Option<Peer> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts/reference/llm_bench_peer.py");
        let mut child = Command::new(py)
            .arg(script)
            .arg(path)
            .arg(threads.to_string())
            .arg(ids_file)
            .arg(DECODE_TOKENS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| eprintln!("llama.cpp peer: cannot start {py}: {e}"))
            .ok()?;
        let mut out = BufReader::new(child.stdout.take()?);
        let head = read_json(&mut out)?;
        Some(Peer { child, out, head })
    }

    /// One run's figures, or `None` if the peer failed (its stderr says why).
    fn run(&mut self) -> Option<serde_json::Value> {
        writeln!(self.child.stdin.as_mut()?, "run").ok()?;
        read_json(&mut self.out)
    }

    /// Ends the peer: its first and last lines merged (load, RSS after load and after runs).
    fn finish(mut self) -> Option<serde_json::Value> {
        drop(self.child.stdin.take());
        let tail = read_json(&mut self.out);
        let _ = self.child.wait();
        let mut v = self.head;
        if let (Some(obj), Some(serde_json::Value::Object(t))) = (v.as_object_mut(), tail) {
            obj.extend(t);
        }
        Some(v)
    }
}

/// The next line of the peer's output as JSON; `None` (and a message) if there is none.
fn read_json(out: &mut impl BufRead) -> Option<serde_json::Value> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(n) if n > 0 => serde_json::from_str(&line)
            .map_err(|e| eprintln!("llama.cpp peer: unreadable line {line:?}: {e}"))
            .ok(),
        _ => {
            eprintln!("llama.cpp peer: no output (it failed; see above)");
            None
        }
    }
}
