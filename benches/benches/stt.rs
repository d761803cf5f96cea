//! Whisper speech to text, side by side with faster-whisper on the same model and clips.
//!
//! For whisper-tiny.en-ct2 and whisper-base-ct2 (the models dir of scripts/install-models.sh)
//! and each of the five LibriVox clips: the median wall time (latency) of `STT_BENCH_RUNS`
//! (default 3) transcriptions after one warm-up, with 2 threads and greedy decoding, for
//! each sotad variant of `STT_BENCH_VARIANTS` (default `f32,q8_0,q8_0-enc`):
//! - `f32`: the defaults on the CTranslate2 directory (f32 encoder on the full 30 s window,
//!   as faster-whisper; decoder matrices in Q8_0);
//! - `q8_0`: a GGUF file made from it by `quantize_whisper` (`sotad quantize whisper --type
//!   q8_0`), loaded with the defaults (decoder file-backed Q8_0, encoder dequantized to f32);
//! - `q8_0-enc`: the same file with `quantized_encoder` (the encoder's matrices file-backed Q8_0);
//! - `int8`: the f32 defaults with the encoder's linear layers as int8 products
//!   (`LoadOptions::encoder_int8`, `stt.encoder_precision = "int8"`);
//! - `fit`: the f32 defaults with the encoder window fitted to the audio (opt-in; it changes
//!   transcripts, docs/benchmarks.md);
//!
//! and faster-whisper with compute types int8 and float32 (`cpu_threads=2`, `beam_size=1`),
//! run as a subprocess: `scripts/reference/stt_reference.py bench` with the Python in
//! `STT_REF_PYTHON` (default /tmp/venv-stt/bin/python; `scripts/bench-peers.sh` makes it).
//! Prints latency, real-time factor, the ratios sotad / faster-whisper (below 1: sotad is
//! faster), and whether each transcript equals faster-whisper float32's.
//!
//! `cargo bench -p sotad-benches --bench stt` (`STT_BENCH_MODELS=tiny` for one model)
//!
//! **AVX2 on an AVX-512 CPU.** `SOTAD_MAX_ISA=avx2 cargo bench -p sotad-benches --bench stt`
//! caps both sides at AVX2 in one run, as an AVX2-only CPU (AMD Zen 3) would run them:
//! sotad's kernels and gemm's products through `sotad_engines::cpu`, and faster-whisper
//! through the environment of its subprocess: `CT2_FORCE_CPU_ISA=AVX2` (CTranslate2's own
//! kernels), `CT2_USE_MKL=0` (oneDNN for the GEMMs, CTranslate2's backend on a non-Intel CPU),
//! `ONEDNN_MAX_CPU_ISA=AVX2` and `MKL_ENABLE_INSTRUCTIONS=AVX2` (each unless already set).
//! The bench prints which instruction set sotad's kernels ran and the ISA and GEMM backends
//! CTranslate2 reported (`CT2_VERBOSE=1`, its stderr). What the cap does not change: the
//! code the compiler generated for `-C target-cpu=native` (`.cargo/config.toml`; LLVM keeps to
//! 256-bit vectors on this Xeon by default, but may use AVX-512VL's extra registers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sotad_benches::{median, models_dir};
use sotad_engines::audio::{read_wav, to_mono_16k};
use sotad_engines::gguf::GgmlType;
use sotad_engines::stt::ct2::json::{self, JsonValue};
use sotad_engines::stt::quantize::quantize_whisper;
use sotad_engines::stt::{EncoderWindow, LoadOptions, TranscribeOptions, Transcript, Whisper};

/// One clip's result from the reference script.
struct Peer {
    secs: f64,
    text: String,
}

/// Per-clip median seconds and transcripts from the reference script, or None if it cannot
/// run.
fn faster_whisper(model: &Path, compute: &str, runs: usize, wavs: &[PathBuf]) -> Option<Vec<Peer>> {
    let python =
        std::env::var("STT_REF_PYTHON").unwrap_or_else(|_| "/tmp/venv-stt/bin/python".into());
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/stt_reference.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["bench", model.to_str()?, compute, &runs.to_string()])
        .args(wavs)
        .env("CT2_VERBOSE", "1");
    for (k, v) in peer_isa_env() {
        cmd.env(k, v);
    }
    let out = cmd.output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "faster-whisper {compute} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!(
                "cannot run {python}: {e} (see scripts/reference/stt_reference.py for the setup)"
            );
            return None;
        }
    };
    // CTranslate2's start-up report (CT2_VERBOSE=1): the ISA and the GEMM backends.
    let log = String::from_utf8_lossy(&out.stderr);
    let mut seen = Vec::new();
    for line in log.lines() {
        let what = line.rsplit("] ").next().unwrap_or(line).trim();
        if (what.contains("ISA") || what.contains("backend") || what.contains("MKL"))
            && !seen.contains(&what)
        {
            seen.push(what);
        }
    }
    println!("faster-whisper {compute}: {}", seen.join("; "));
    let text = String::from_utf8_lossy(&out.stdout);
    let v = json::parse(text.trim()).ok()?;
    v.as_array()?
        .iter()
        .map(|c| match (c.get("median_secs"), c.get("text")) {
            (Some(JsonValue::Number(x)), Some(JsonValue::String(t))) => Some(Peer {
                secs: *x,
                text: t.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The environment that caps faster-whisper as `SOTAD_MAX_ISA` caps sotad (none when
/// uncapped); a variable already set is left as it is.
fn peer_isa_env() -> Vec<(&'static str, &'static str)> {
    if sotad_engines::cpu::max_isa() >= sotad_engines::cpu::Isa::Avx512 {
        return Vec::new();
    }
    [
        ("CT2_FORCE_CPU_ISA", "AVX2"),
        ("CT2_USE_MKL", "0"),
        ("ONEDNN_MAX_CPU_ISA", "AVX2"),
        ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
    ]
    .into_iter()
    .filter(|(k, _)| std::env::var_os(k).is_none())
    .collect()
}

/// One way of running sotad in the bench.
struct Variant {
    label: &'static str,
    /// The model: its CTranslate2 directory, or a GGUF file quantized from it.
    path: PathBuf,
    load: LoadOptions,
    opts: TranscribeOptions,
}

/// Per clip: median seconds and the last run's transcript.
type Runs = Vec<(f64, Transcript)>;

fn main() {
    let runs: usize = std::env::var("STT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = models_dir();
    let speech = dir.join("speech/librivox");
    let mut wavs: Vec<PathBuf> = std::fs::read_dir(&speech)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/install-models.sh", speech.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    wavs.sort();
    let audio: Vec<Vec<f32>> = wavs
        .iter()
        .map(|p| {
            let w = read_wav(p).unwrap();
            to_mono_16k(&w.samples, w.sample_rate, w.channels)
                .unwrap()
                .into_owned()
        })
        .collect();
    let wanted = std::env::var("STT_BENCH_VARIANTS").unwrap_or_else(|_| "f32,q8_0,q8_0-enc".into());
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
    println!(
        "STT benchmark: {runs} runs per clip after a warm-up, medians, 2 threads, greedy (beam 1); sotad variants: {}",
        wanted.join(", ")
    );
    println!(
        "ISA: sotad {}; faster-whisper environment: {}",
        sotad_engines::cpu::isa_name(),
        match peer_isa_env() {
            e if e.is_empty() => "as is".to_string(),
            e => e
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    );
    let scratch = std::env::temp_dir().join(format!("sotad-stt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let only = std::env::var("STT_BENCH_MODELS").unwrap_or_default();
    for name in ["whisper-tiny.en-ct2", "whisper-base-ct2"] {
        if !only.is_empty() && !only.split(',').any(|m| name.contains(m.trim())) {
            continue;
        }
        let mdir = dir.join(name);
        let load = LoadOptions {
            threads: 2,
            ..Default::default()
        };
        let mut variants = Vec::new();
        let gguf = scratch.join(format!("{name}-q8_0.gguf"));
        for &w in &wanted {
            let (label, path, load, opts) = match w {
                "f32" => (
                    "sotad f32 (defaults: CTranslate2 dir, f32 encoder, Q8_0 decoder)",
                    mdir.clone(),
                    load.clone(),
                    TranscribeOptions::default(),
                ),
                "int8" => (
                    "sotad int8 encoder (defaults, the encoder's linear layers in int8: stt.encoder_precision = \"int8\")",
                    mdir.clone(),
                    LoadOptions {
                        encoder_int8: true,
                        ..load.clone()
                    },
                    TranscribeOptions::default(),
                ),
                "fit" => (
                    "sotad f32, encoder window fitted to the audio (2 s margin, 5 s minimum)",
                    mdir.clone(),
                    load.clone(),
                    TranscribeOptions {
                        encoder_window: EncoderWindow::Fit {
                            margin_secs: 2.0,
                            min_secs: 5.0,
                        },
                        ..Default::default()
                    },
                ),
                "q8_0" | "q8_0-enc" => {
                    if !gguf.exists() {
                        quantize_whisper(&mdir, &gguf, GgmlType::Q8_0).unwrap();
                    }
                    let quantized_encoder = w == "q8_0-enc";
                    (
                        if quantized_encoder {
                            "sotad q8_0 GGUF, quantized encoder too (stt.quantized_encoder)"
                        } else {
                            "sotad q8_0 GGUF (`sotad quantize whisper --type q8_0`; encoder dequantized to f32 at load)"
                        },
                        gguf.clone(),
                        LoadOptions {
                            quantized_encoder,
                            ..load.clone()
                        },
                        TranscribeOptions::default(),
                    )
                }
                other => panic!(
                    "STT_BENCH_VARIANTS: unknown variant {other:?} (f32, int8, fit, q8_0, q8_0-enc)"
                ),
            };
            variants.push(Variant {
                label,
                path,
                load,
                opts,
            });
        }
        let mut results: Vec<Runs> = Vec::new();
        for v in &variants {
            let t = Instant::now();
            let model = Whisper::load(&v.path, &v.load).unwrap();
            let load_ms = t.elapsed().as_secs_f64() * 1e3;
            println!("{name}: {} loaded in {load_ms:.0} ms", v.label);
            let mut per_clip = Vec::new();
            for a in &audio {
                model.transcribe(a, &v.opts).unwrap();
                let mut times = Vec::new();
                let mut last = None;
                for _ in 0..runs {
                    let t = Instant::now();
                    let r = model.transcribe(a, &v.opts).unwrap();
                    times.push(t.elapsed().as_secs_f64());
                    last = Some(r);
                }
                per_clip.push((median(&times), last.unwrap()));
            }
            results.push(per_clip);
        }
        let int8 = faster_whisper(&mdir, "int8", runs, &wavs);
        let f32s = faster_whisper(&mdir, "float32", runs, &wavs);
        let peer = |v: &Option<Vec<Peer>>, i: usize| v.as_ref().map_or(f64::NAN, |v| v[i].secs);
        let total = |v: &Option<Vec<Peer>>| (0..wavs.len()).map(|i| peer(v, i)).sum::<f64>();
        let (ti, tf) = (total(&int8), total(&f32s));
        println!("\n{name}: latency per clip in ms, RTF = latency / audio");
        println!(
            "| clip | audio s | fw int8 ms (RTF) | fw f32 ms (RTF) | {} |",
            variants
                .iter()
                .enumerate()
                .map(|(k, _)| format!("sotad [{k}] ms (enc/dec), RTF, /int8, = fw f32"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|---|---|---|{}", "---|".repeat(variants.len()));
        for (i, p) in wavs.iter().enumerate() {
            let secs = audio[i].len() as f64 / 16_000.0;
            let id = p.file_stem().unwrap().to_string_lossy();
            let id = id.rsplit('-').next().unwrap_or_default().to_string();
            let (fi, ff) = (peer(&int8, i), peer(&f32s, i));
            let cells: Vec<String> = results
                .iter()
                .map(|r| {
                    let (s, t) = &r[i];
                    let same = f32s.as_ref().map(|v| v[i].text == t.text);
                    format!(
                        "{:.0} ({:.0}/{:.0}), {:.3}, {:.2}, {}",
                        s * 1e3,
                        t.timings.encode_ms,
                        t.timings.decode_ms,
                        s / secs,
                        s / fi,
                        match same {
                            Some(true) => "yes",
                            Some(false) => "NO",
                            None => "?",
                        }
                    )
                })
                .collect();
            println!(
                "| {id} | {secs:.2} | {:.0} ({:.3}) | {:.0} ({:.3}) | {} |",
                fi * 1e3,
                fi / secs,
                ff * 1e3,
                ff / secs,
                cells.join(" | ")
            );
        }
        println!("\n{name}, all {} clips:", wavs.len());
        println!(
            "- faster-whisper int8 {:.0} ms, float32 {:.0} ms",
            ti * 1e3,
            tf * 1e3
        );
        for (k, (v, r)) in variants.iter().zip(&results).enumerate() {
            let s: f64 = r.iter().map(|(s, _)| s).sum();
            let equal = r
                .iter()
                .enumerate()
                .filter(|(i, (_, t))| f32s.as_ref().is_some_and(|f| f[*i].text == t.text))
                .count();
            println!(
                "- [{k}] {}: {:.0} ms; sotad / fw int8 = **{:.2}**, sotad / fw float32 = {:.2}; transcripts equal to fw float32's: {equal}/{}",
                v.label,
                s * 1e3,
                s / ti,
                s / tf,
                wavs.len()
            );
            for (i, (_, t)) in r.iter().enumerate() {
                if let Some(f) = f32s.as_ref().filter(|f| f[i].text != t.text) {
                    println!(
                        "  clip {i}: sotad {:?}\n          fw f32 {:?}",
                        t.text, f[i].text
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
