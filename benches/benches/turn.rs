//! Smart Turn v3.2 (learned end of turn): sotad's engine against onnxruntime, side by side in
//! one run, on the same utterances.
//!
//! ```text
//! PIPECAT_DIR=/tmp/pipecat cargo bench -p sotad-benches --bench turn
//! ```
//!
//! Needs the models directory (scripts/install-models.sh: `smart-turn`, `speech`) and, for the
//! reference, a `python3` (or `$SOTAD_PYTHON`) with numpy and onnxruntime, and the unpacked
//! `pipecat-ai==1.14.0` wheel in `$PIPECAT_DIR` (see scripts/reference/smart_turn_reference.py).
//!
//! Utterances: every 16 kHz clip of the speech set (LibriVox, cards, the `.raw` clips), each
//! whole (a finished sentence) and cut at 80 %, 60 % and 40 % of its length (mid-sentence):
//! 56 utterances. Reported: max |Δp| against onnxruntime, how many are within 1e-3,
//! agreement of the decision at 0.5, and the median time per decision (features + network)
//! of both, with their ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sotad_benches::{median, models_dir};
use sotad_engines::audio::read_wav;
use sotad_engines::turn::SmartTurn;

const CUTS: &str = "1.0,0.8,0.6,0.4";

fn clips() -> Vec<PathBuf> {
    let speech = models_dir().join("speech");
    let mut out = Vec::new();
    for dir in ["librivox", "cards"] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(speech.join(dir))
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/install-models.sh", speech.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wav"))
            .collect();
        v.sort();
        out.extend(v);
    }
    for raw in [
        "goforward.raw",
        "numbers.raw",
        "something.raw",
        "tidigits/dhd.2934z.raw",
    ] {
        out.push(speech.join(raw));
    }
    out
}

fn load(path: &Path) -> Vec<f32> {
    if path.extension().is_some_and(|e| e == "raw") {
        let bytes = std::fs::read(path).unwrap();
        return bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect();
    }
    let wav = read_wav(path).unwrap();
    assert_eq!(
        (wav.sample_rate, wav.channels),
        (16_000, 1),
        "{}",
        path.display()
    );
    wav.samples
}

fn main() {
    let model_path = models_dir().join("smart-turn/smart-turn-v3.2-cpu.onnx");
    let model = SmartTurn::load(&model_path).expect("load Smart Turn (scripts/install-models.sh)");
    let clips = clips();

    // The reference first: it decides the utterances (clip, samples) for both.
    let py = std::env::var("SOTAD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/smart_turn_reference.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg("--bench")
        .args(&clips)
        .env("SMART_TURN_CUTS", CUTS)
        .output()
        .expect("run the reference script");
    assert!(
        out.status.success(),
        "reference failed (PIPECAT_DIR set? onnxruntime installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ort_ms = (f64::NAN, f64::NAN);
    let mut rows: Vec<(PathBuf, usize, f32)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# median_ms ") {
            let v: Vec<f64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            ort_ms = (v[0], v.get(1).copied().unwrap_or(f64::NAN));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        rows.push((
            PathBuf::from(f[0]),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        ));
    }

    // Warm up (thread pool, page cache), then one decision per utterance, timed.
    let _ = model.probability(&load(&clips[0]));
    let mut times = Vec::new();
    let mut max_d = 0f32;
    let mut within = 0;
    let mut agree = 0;
    let mut complete = [0usize; 2];
    println!("| utterance | samples | sotad | onnxruntime | |Δp| |");
    println!("|---|---:|---:|---:|---:|");
    for (path, samples, want) in &rows {
        let audio = load(path);
        let t = Instant::now();
        let got = model.probability(&audio[..*samples]);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let d = (got - want).abs();
        max_d = max_d.max(d);
        within += usize::from(d <= 1e-3);
        agree += usize::from((got > 0.5) == (*want > 0.5));
        complete[usize::from(*want > 0.5)] += 1;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        println!("| {name} | {samples} | {got:.4} | {want:.4} | {d:.1e} |");
    }
    let n = rows.len();
    let ms = median(&times);
    println!();
    println!(
        "utterances: {n} ({} judged complete by onnxruntime, {} incomplete)",
        complete[1], complete[0]
    );
    println!(
        "max |Δp|: {max_d:.2e}; within 1e-3: {within} of {n}; decision at 0.5 agrees: {agree} of {n}"
    );
    println!(
        "ms per decision (median, features + network): sotad {ms:.1}, onnxruntime {:.1} (network alone {:.1}); sotad / onnxruntime {:.2}",
        ort_ms.0,
        ort_ms.1,
        ms / ort_ms.0
    );
}
