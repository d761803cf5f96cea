//! Smart Turn v3.2 on the real `smart-turn/smart-turn-v3.2-cpu.onnx` (installed by
//! scripts/install-models.sh; a missing file fails): probabilities against onnxruntime's on
//! two short utterances, whole and cut mid-sentence, and load errors for other ONNX files.

mod common;

use std::path::{Path, PathBuf};

use sotad_engines::audio::read_wav;
use sotad_engines::turn::SmartTurn;

fn model_path() -> PathBuf {
    let p = common::models_dir().join("smart-turn/smart-turn-v3.2-cpu.onnx");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A 16 kHz mono clip: WAV, or headerless s16le (`.raw`).
fn clip(path: &Path) -> Vec<f32> {
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-models.sh",
        path.display()
    );
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

/// The table written by scripts/reference/smart_turn_reference.py: clip, samples, probability.
fn reference() -> Vec<(String, usize, f32)> {
    include_str!("data/turn/reference_probs.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// sotad computes onnxruntime's integers and rounds its float steps the same way (MLAS's layer
/// norm, erf, tanh and exp, the softmax sums in onnxruntime's order; see
/// engines/src/turn/mod.rs), so on x86-64, where the reference was made, every probability
/// agrees to the last digits (the final sigmoid aside: 1e-4 leaves room for that only). Other
/// CPUs run the same Rust arithmetic but a different FFT code path for the features, so there
/// only the decisions and a looser bound are checked.
#[test]
fn probabilities_match_onnxruntime() {
    let model = SmartTurn::load(model_path()).unwrap();
    let table = reference();
    assert!(table.len() >= 4);
    // Under qemu (aarch64) a decision takes seconds: the two whole clips only there.
    let x86 = cfg!(target_arch = "x86_64");
    let run: Vec<&(String, usize, f32)> = if x86 {
        table.iter().collect()
    } else {
        table.iter().step_by(2).collect()
    };
    let bound = if x86 { 1e-4 } else { 0.05 };
    for (name, samples, want) in run.iter().copied() {
        let audio = clip(&common::models_dir().join(name));
        let got = model.probability(&audio[..*samples]);
        let d = (got - want).abs();
        eprintln!("{name} (first {samples} samples): sotad {got}, onnxruntime {want}, |d| {d:.2e}");
        assert!(
            d <= bound,
            "{name} (first {samples} samples): sotad {got}, onnxruntime {want}"
        );
        assert_eq!(got > 0.5, *want > 0.5, "{name}: decisions differ");
    }
    // The table must test something: the probabilities differ between whole and cut clips.
    let spread = table.iter().map(|t| t.2).fold(f32::NEG_INFINITY, f32::max)
        - table.iter().map(|t| t.2).fold(f32::INFINITY, f32::min);
    assert!(spread > 0.05, "reference table too uniform: {table:?}");
}

#[test]
fn another_onnx_file_is_a_clear_load_error() {
    // A real ONNX file, but another model (Silero VAD).
    let vad = common::models_dir().join("silero-vad/silero_vad_16k_op15.onnx");
    let err = SmartTurn::load(&vad).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("silero_vad_16k_op15.onnx"), "{err}");
    assert!(err.contains("Smart Turn"), "{err}");

    // The Smart Turn file cut short: not a readable ONNX file.
    let bytes = std::fs::read(model_path()).unwrap();
    let tmp = common::TempFile::new("smart-turn-truncated.onnx");
    std::fs::write(tmp.path(), &bytes[..bytes.len() / 2]).unwrap();
    let err = SmartTurn::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
}
