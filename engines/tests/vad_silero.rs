//! Silero VAD on the real `silero_vad_16k_op15.onnx` (installed by scripts/install-models.sh;
//! a missing file fails): probabilities against onnxruntime's, load errors, odd input.

mod common;

use std::path::PathBuf;

use sotad_engines::audio::read_wav;
use sotad_engines::vad::{SileroVad, VadState, WINDOW};

fn vad_path(name: &str) -> PathBuf {
    let p = common::models_dir().join("silero-vad").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

fn clip(name: &str) -> Vec<f32> {
    let p = common::models_dir().join("speech/librivox").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-models.sh",
        p.display()
    );
    let wav = read_wav(&p).unwrap();
    assert_eq!(
        (wav.sample_rate, wav.channels),
        (16_000, 1),
        "{}",
        p.display()
    );
    wav.samples
}

/// The fixture written by scripts/reference/vad_reference.py: its header names the clip and
/// the silence around it; then one onnxruntime probability per window.
fn reference() -> (Vec<f32>, Vec<f32>) {
    let text = include_str!("data/vad/reference_probs.txt");
    let mut lines = text.lines();
    let head = lines.next().unwrap();
    let clip_name = head.split("clip ").nth(1).unwrap().trim();
    let params = lines.next().unwrap();
    let get = |key: &str| -> f64 {
        params
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (pre, post) = (get("pre_s"), get("post_s"));
    let probs: Vec<f32> = lines.map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(probs.len() as f64, get("windows"));
    let mut audio = vec![0f32; (pre * 16_000.0) as usize];
    audio.extend(clip(clip_name));
    audio.extend(std::iter::repeat_n(0f32, (post * 16_000.0) as usize));
    audio.resize(audio.len().div_ceil(WINDOW) * WINDOW, 0.0);
    (audio, probs)
}

fn run(vad: &SileroVad, audio: &[f32]) -> Vec<f32> {
    let mut state = VadState::new();
    audio
        .chunks_exact(WINDOW)
        .map(|w| vad.probability(&mut state, w.try_into().unwrap()))
        .collect()
}

#[test]
fn probabilities_match_onnxruntime_within_1e_3() {
    let vad = SileroVad::load(vad_path("silero_vad_16k_op15.onnx")).unwrap();
    let (audio, want) = reference();
    let got = run(&vad, &audio);
    assert_eq!(got.len(), want.len());
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = (g - w).abs();
        if d > worst.1 {
            worst = (i, d);
        }
    }
    eprintln!(
        "max |sotad - onnxruntime| = {:.2e} at window {}",
        worst.1, worst.0
    );
    assert!(
        worst.1 <= 1e-3,
        "window {}: sotad {} vs onnxruntime {}",
        worst.0,
        got[worst.0],
        want[worst.0]
    );
    // The fixture itself is not trivial: silence low, speech high.
    assert!(want.iter().filter(|&&p| p > 0.9).count() > 40);
    assert!(want.iter().filter(|&&p| p < 0.05).count() > 30);
}

#[test]
fn state_is_carried_between_windows() {
    let vad = SileroVad::load(vad_path("silero_vad_16k_op15.onnx")).unwrap();
    let (audio, want) = reference();
    // A window in the middle of speech, seen with a fresh state, differs from the reference
    // (which carried the LSTM state and context from the previous windows).
    let i = want.iter().position(|&p| p > 0.99).unwrap() + 5;
    let w: &[f32; WINDOW] = audio[i * WINDOW..(i + 1) * WINDOW].try_into().unwrap();
    let fresh = vad.probability(&mut VadState::new(), w);
    assert!(
        (fresh - want[i]).abs() > 1e-3,
        "fresh {fresh} vs carried {}",
        want[i]
    );
    // And reset really goes back to the start-of-stream state.
    let mut state = VadState::new();
    let first: &[f32; WINDOW] = audio[..WINDOW].try_into().unwrap();
    let a = vad.probability(&mut state, w);
    state.reset();
    assert_eq!(
        vad.probability(&mut state, first),
        run(&vad, &audio[..WINDOW])[0]
    );
    assert_eq!(a, fresh);
}

#[test]
fn odd_samples_do_not_panic() {
    let vad = SileroVad::load(vad_path("silero_vad_16k_op15.onnx")).unwrap();
    let mut state = VadState::new();
    let mut rng = common::Rng(7);
    let cases: [Box<dyn Fn(usize) -> f32>; 4] = [
        Box::new(|i| if i % 3 == 0 { f32::NAN } else { 0.1 }),
        Box::new(|i| {
            if i % 2 == 0 {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            }
        }),
        Box::new(|_| 1e30),
        Box::new(|i| if i % 2 == 0 { 1.0 } else { -1.0 }),
    ];
    for f in &cases {
        let w: Vec<f32> = (0..WINDOW).map(f).collect();
        let p = vad.probability(&mut state, w.as_slice().try_into().unwrap());
        assert!((0.0..=1.0).contains(&p), "{p}");
    }
    // Noise after garbage still gives probabilities.
    let w: Vec<f32> = (0..WINDOW).map(|_| rng.f32() * 0.1).collect();
    let p = vad.probability(&mut state, w.as_slice().try_into().unwrap());
    assert!(p.is_finite());
}

#[test]
fn the_if_branch_export_is_refused_with_the_tensor_named() {
    // silero_vad.onnx keeps its weights as Constant nodes inside If subgraphs.
    let err = SileroVad::load(vad_path("silero_vad.onnx"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("silero_vad.onnx"), "{err}");
    assert!(err.contains("model.stft.forward_basis_buffer"), "{err}");
    assert!(err.contains("silero_vad_16k_op15.onnx"), "{err}");
}

#[test]
fn missing_and_foreign_files_are_errors() {
    let err = SileroVad::load("/nonexistent/vad.onnx")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/vad.onnx"), "{err}");
    // A Piper voice is a valid ONNX file without the VAD's tensors.
    let voice = common::models_dir().join("piper/en_US-joe-medium.onnx");
    let err = SileroVad::load(&voice).unwrap_err().to_string();
    assert!(
        err.contains("en_US-joe-medium.onnx") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn truncated_and_mutated_model_bytes_never_panic() {
    let bytes = std::fs::read(vad_path("silero_vad_16k_op15.onnx")).unwrap();
    let mut rng = common::Rng(0x5eed);
    let rounds = if cfg!(target_arch = "aarch64") {
        20
    } else {
        120
    };
    for round in 0..rounds {
        let mut b = bytes.clone();
        if round % 2 == 0 {
            b.truncate(rng.below(bytes.len()));
        } else {
            for _ in 0..8 {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
        }
        let f = common::TempFile::with_bytes("vad-mut", &b);
        if let Ok(vad) = SileroVad::load(f.path()) {
            let w = [0.01f32; WINDOW];
            let p = vad.probability(&mut VadState::new(), &w);
            assert!((0.0..=1.0).contains(&p) || p.is_nan(), "{p}");
        }
    }
}
