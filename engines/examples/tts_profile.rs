//! Runs Piper synthesis in a loop, for `perf record` and per-stage times.
//!
//! ```text
//! cargo run --release -p sotad-engines --example tts_profile [runs] [threads] [text]
//! perf record -g target/release/examples/tts_profile 20
//! ```
//!
//! Voice: `~/.cache/sotad/models/piper/en_US-joe-medium.onnx` (scripts/install-models.sh).
//! Prints the median wall time and the stage times of each run (whole sentences, the voice's
//! default scales). For the CPU time, run it under `/usr/bin/time`; `cargo bench -p
//! sotad-benches --bench tts` measures CPU per second of audio beside piper-tts.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use sotad_engines::tts::{LoadOptions, SynthOptions, Voice};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(Ok(10), |s| s.parse())?;
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let text = args
        .next()
        .unwrap_or_else(|| "The quick brown fox jumps over the lazy dog.".to_owned());
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let onnx = PathBuf::from(home).join(".cache/sotad/models/piper/en_US-joe-medium.onnx");
    let voice = Voice::load(
        &onnx,
        &LoadOptions {
            threads,
            espeak: None,
        },
    )?;
    let opts = SynthOptions::default();
    let mut walls = Vec::with_capacity(runs);
    let t0 = Instant::now();
    for run in 0..=runs {
        let s = voice.synthesize(&text, &opts, |_| ControlFlow::Continue(()))?;
        if run > 0 {
            walls.push(s.total_ms);
        }
        println!(
            "run {run}: total {:.1} ms, first {:.1} ms, audio {:.2} s, encoder {:.1} durations {:.1} flow {:.1} decoder {:.1} ms",
            s.total_ms,
            s.first_audio_ms,
            s.audio_secs,
            s.stages.encoder_ms,
            s.stages.durations_ms,
            s.stages.flow_ms,
            s.stages.decoder_ms
        );
    }
    walls.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let n = (runs + 1) as f64;
    println!(
        "median wall {:.1} ms over {runs} runs; wall {:.1} ms per run (warm-up included)",
        walls.get(walls.len() / 2).copied().unwrap_or(0.0),
        t0.elapsed().as_secs_f64() * 1e3 / n
    );
    Ok(())
}
