//! LLM engine against candle 0.11.1's own `quantized_llama` (`candle-transformers`), same
//! GGUF, same threads, same token ids, in one run: load time, prefill tok/s on a 512-token
//! prompt, time to first token, greedy decode tok/s over 256 tokens (after the prompt's first
//! 16 ids, as in `benches/llm.rs`), RSS (anonymous and file-backed) after load and after
//! generating, peak RSS. Medians of `RUNS`; ratios sotad / candle. It also checks whether the
//! two decode the same greedy tokens, and prints both logit margins where they first differ.
//!
//! ```text
//! cargo bench -p sotad-benches --features candle-peer --bench llm_candle
//! ```
//! The feature keeps candle-transformers out of the normal build and of `cargo test`.
//! Environment: `SOTAD_BENCH_MODEL` (file name in the models directory; default SmolLM2, a
//! `llama` GGUF: candle's `quantized_llama` reads only `llama.*` keys), `SOTAD_BENCH_THREADS`
//! (default 2).
//!
//! Each engine runs in its own child process (this binary re-executed with `--llm-side NAME`),
//! so neither's RSS contains the other's. The candle child gets `RAYON_NUM_THREADS` and
//! `CANDLE_NUM_THREADS` set to the thread count: candle 0.11.1 sizes its quantized-matmul
//! barrier pool (`CANDLE_NUM_THREADS`, falling back to `RAYON_NUM_THREADS`) and its rayon
//! pool and gemm (`RAYON_NUM_THREADS`) from them. sotad gets the count in `LoadOptions`.
//! The candle child runs first, then sotad.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sotad_benches::{median, self_status_kib};
use sotad_engines::llm::{LoadOptions, Model};

const PROMPT_TOKENS: usize = 512;
const DECODE_PROMPT: usize = 16;
const DECODE_TOKENS: usize = 256;
const RUNS: usize = 5;
const CONTEXT: usize = 1024;

#[derive(Clone, Copy)]
struct Rss {
    anon: u64,
    file: u64,
}

fn rss() -> Rss {
    Rss {
        anon: self_status_kib("RssAnon:"),
        file: self_status_kib("RssFile:"),
    }
}

/// The greedy token (the first index of the largest logit, the rule of `Sampler::argmax`)
/// and its margin over the runner-up logit, which says whether a disagreement is a near-tie.
fn greedy(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut second) = (0, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            second = logits[best];
            best = i;
        } else if i != best && v > second {
            second = v;
        }
    }
    (best as u32, logits[best] - second)
}

/// What one side has to offer the timing loop.
trait Engine {
    /// Forgets the context.
    fn reset(&mut self);
    /// Evaluates `tokens` after what is cached and returns the greedy next token and its
    /// logit margin.
    fn next(&mut self, tokens: &[u32]) -> (u32, f32);
}

struct Sotad {
    session: sotad_engines::llm::Session,
}

impl Engine for Sotad {
    fn reset(&mut self) {
        self.session.reset();
    }
    fn next(&mut self, tokens: &[u32]) -> (u32, f32) {
        greedy(self.session.eval(tokens).expect("sotad eval"))
    }
}

#[cfg(feature = "candle-peer")]
struct Candle {
    model: candle_transformers::models::quantized_llama::ModelWeights,
    pos: usize,
}

#[cfg(feature = "candle-peer")]
impl Engine for Candle {
    fn reset(&mut self) {
        self.model.clear_kv_cache();
        self.pos = 0;
    }
    fn next(&mut self, tokens: &[u32]) -> (u32, f32) {
        use candle_core::{Device, Tensor};
        let input = Tensor::new(tokens, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("candle input");
        let logits = self
            .model
            .forward(&input, self.pos)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_vec1::<f32>())
            .expect("candle forward");
        self.pos += tokens.len();
        greedy(&logits)
    }
}

fn load(side: &str, path: &Path, threads: usize) -> Box<dyn Engine> {
    match side {
        "sotad" => {
            let model = Model::load(
                path,
                &LoadOptions {
                    context_len: CONTEXT,
                    threads,
                },
            )
            .expect("sotad load");
            Box::new(Sotad {
                session: model.session(),
            })
        }
        #[cfg(feature = "candle-peer")]
        "candle" => {
            use candle_core::Device;
            use candle_core::quantized::gguf_file;
            use candle_transformers::models::quantized_llama::ModelWeights;
            let mut f = std::fs::File::open(path).expect("open model");
            let content = gguf_file::Content::read(&mut f)
                .map_err(|e| e.with_path(path))
                .expect("candle gguf header");
            let model =
                ModelWeights::from_gguf(content, &mut f, &Device::Cpu).expect("candle load");
            Box::new(Candle { model, pos: 0 })
        }
        other => panic!("unknown side {other}"),
    }
}

/// One side, in its own process: prints one JSON line with its medians, RSS and tokens.
fn child(side: &str, path: &Path, threads: usize, ids_file: &Path) {
    let ids: Vec<u32> = std::fs::read_to_string(ids_file)
        .expect("read ids")
        .split_whitespace()
        .map(|t| t.parse().expect("token id"))
        .collect();
    let base = rss();
    let t = Instant::now();
    let mut engine = load(side, path, threads);
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let after_load = rss();
    let hwm_load = self_status_kib("VmHWM:");

    let (mut prefill, mut ttft, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_after_prompt = Vec::new();
    let mut runs_tokens: Vec<Vec<u32>> = Vec::new();
    let mut margins = Vec::new();
    for _ in 0..RUNS {
        engine.reset();
        let t = Instant::now();
        let (first, _) = engine.next(&ids);
        let dt = t.elapsed().as_secs_f64();
        prefill.push(ids.len() as f64 / dt);
        ttft.push(dt * 1e3);
        first_after_prompt.push(first);

        engine.reset();
        let (mut tok, margin) = engine.next(&ids[..DECODE_PROMPT]);
        let mut tokens = Vec::with_capacity(DECODE_TOKENS + 1);
        margins = Vec::with_capacity(DECODE_TOKENS + 1);
        tokens.push(tok);
        margins.push(margin);
        let t = Instant::now();
        for _ in 0..DECODE_TOKENS {
            let (next, margin) = engine.next(&[tok]);
            tok = next;
            tokens.push(tok);
            margins.push(margin);
        }
        decode.push(DECODE_TOKENS as f64 / t.elapsed().as_secs_f64());
        runs_tokens.push(tokens);
    }
    let after_gen = rss();
    let same_every_run = runs_tokens.iter().all(|t| *t == runs_tokens[0])
        && first_after_prompt
            .iter()
            .all(|&t| t == first_after_prompt[0]);
    let json = serde_json::json!({
        "load_ms": load_ms,
        "prefill_tok_s": median(&prefill),
        "ttft_ms": median(&ttft),
        "decode_tok_s": median(&decode),
        "rss_anon_base_kib": base.anon,
        "rss_file_base_kib": base.file,
        "rss_anon_load_kib": after_load.anon.saturating_sub(base.anon),
        "rss_file_load_kib": after_load.file.saturating_sub(base.file),
        "rss_anon_gen_kib": after_gen.anon.saturating_sub(base.anon),
        "rss_file_gen_kib": after_gen.file.saturating_sub(base.file),
        "hwm_load_kib": hwm_load,
        "hwm_kib": self_status_kib("VmHWM:"),
        "first_after_prompt": first_after_prompt[0],
        "tokens": runs_tokens[0],
        "margins": margins,
        "same_every_run": same_every_run,
    });
    println!("{json}");
}

fn run_side(
    side: &str,
    path: &Path,
    threads: usize,
    ids_file: &Path,
) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("--llm-side")
        .arg(side)
        .arg(path)
        .arg(threads.to_string())
        .arg(ids_file)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("CANDLE_NUM_THREADS", threads.to_string())
        .output()
        .map_err(|e| format!("cannot start the {side} child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{side} child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{side} child printed {line:?}: {e}"))
}

fn tokens_of(v: &serde_json::Value) -> Vec<u32> {
    v["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_u64())
                .map(|t| t as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--llm-side") {
        let a = &args[i + 1..];
        child(
            &a[0],
            Path::new(&a[1]),
            a[2].parse().expect("threads"),
            Path::new(&a[3]),
        );
        return;
    }

    let (path, threads) = sotad_benches::llm::model_and_threads();
    let file = path
        .file_name()
        .map_or(String::new(), |f| f.to_string_lossy().into_owned());
    // The prompt, the same ids as benches/llm.rs; both sides evaluate exactly these.
    let (ids, ids_file) =
        sotad_benches::llm::prompt_ids(&path, PROMPT_TOKENS, "sotad-bench-llm-candle");

    let candle = run_side("candle", &path, threads, &ids_file);
    let sotad = run_side("sotad", &path, threads, &ids_file);
    let _ = std::fs::remove_file(&ids_file);
    let sotad = sotad.unwrap_or_else(|e| panic!("{e}"));
    let candle = candle
        .map_err(|e| eprintln!("candle quantized_llama failed: {e}"))
        .ok();

    println!(
        "LLM bench vs candle-transformers 0.11.1 quantized_llama: {file}, {threads} threads, \
         prompt {} tokens, decode {DECODE_TOKENS} tokens after a {DECODE_PROMPT}-token prompt, median of {RUNS}",
        ids.len()
    );
    println!(
        "(each side in its own process; RSS figures are growth over that process before loading; \
         peak RSS is the whole process)"
    );
    let rows = [
        ("load ms", "load_ms", 1.0),
        ("prefill tok/s", "prefill_tok_s", 1.0),
        ("TTFT ms (512-token prompt)", "ttft_ms", 1.0),
        ("decode tok/s", "decode_tok_s", 1.0),
        ("RssAnon after load MiB", "rss_anon_load_kib", 1024.0),
        ("RssFile after load MiB", "rss_file_load_kib", 1024.0),
        ("RssAnon after generating MiB", "rss_anon_gen_kib", 1024.0),
        ("RssFile after generating MiB", "rss_file_gen_kib", 1024.0),
        ("peak RSS after load MiB", "hwm_load_kib", 1024.0),
        ("peak RSS at end MiB", "hwm_kib", 1024.0),
    ];
    println!(
        "{:<32} {:>10} {:>10} {:>8}",
        "metric", "sotad", "candle", "ratio"
    );
    for (label, key, div) in rows {
        let v = sotad[key].as_f64().unwrap_or(f64::NAN) / div;
        match candle.as_ref().and_then(|c| c[key].as_f64()) {
            Some(c) => {
                let c = c / div;
                println!("{label:<32} {v:>10.1} {c:>10.1} {:>8.2}", v / c)
            }
            None => println!("{label:<32} {v:>10.1} {:>10} {:>8}", "-", "-"),
        }
    }

    let ours = tokens_of(&sotad);
    // The tokenizer, to show the texts (a memory map: loading costs milliseconds).
    let probe = Model::load(
        &path,
        &LoadOptions {
            context_len: CONTEXT,
            threads: 1,
        },
    )
    .expect("load model");
    let tok = probe.tokenizer();
    let show = |t: &[u32]| {
        let s = tok.decode(&t[..t.len().min(40)], false);
        format!("{:?}", s)
    };
    println!(
        "sotad greedy tokens identical in every run: {}",
        sotad["same_every_run"]
    );
    println!("sotad  text: {}", show(&ours));
    if let Some(c) = &candle {
        let theirs = tokens_of(c);
        let n = ours.len().min(theirs.len());
        let prefix = (0..n).take_while(|&i| ours[i] == theirs[i]).count();
        let same = (0..n).filter(|&i| ours[i] == theirs[i]).count();
        println!(
            "candle greedy tokens identical in every run: {}",
            c["same_every_run"]
        );
        println!("candle text: {}", show(&theirs));
        println!(
            "greedy tokens after the {DECODE_PROMPT}-token prompt (the first + {DECODE_TOKENS} decoded): \
             {prefix} of {n} agree before the first difference; {same} of {n} agree position by position"
        );
        if prefix < n {
            let margin = |v: &serde_json::Value| v["margins"][prefix].as_f64().unwrap_or(f64::NAN);
            println!(
                "first difference at token {prefix}: sotad {} {:?} (margin over its runner-up {:.3}), \
                 candle {} {:?} (margin {:.3})",
                ours[prefix],
                tok.decode(&ours[prefix..prefix + 1], false),
                margin(&sotad),
                theirs[prefix],
                tok.decode(&theirs[prefix..prefix + 1], false),
                margin(c),
            );
            let tail =
                |t: &[u32]| format!("{:?}", tok.decode(&t[prefix..n.min(prefix + 20)], false));
            println!("  sotad  from there: {}", tail(&ours));
            println!("  candle from there: {}", tail(&theirs));
        }
        println!(
            "first token after the 512-token prompt: sotad {}, candle {}",
            sotad["first_after_prompt"], c["first_after_prompt"]
        );
    }
}
