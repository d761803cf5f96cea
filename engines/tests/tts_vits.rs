//! VITS inference on the real joe-medium voice against piper-tts (onnxruntime).
//!
//! The fixtures `tests/data/piper/vits_*.{ids,f32}` were made by
//! `scripts/reference/tts_reference.py`: piper-tts 1.8.0's onnxruntime session on the same
//! voice, with noise_scale = 0 and noise_w = 0, so the output is deterministic.

mod common;

use common::models_dir;
use std::path::PathBuf;
use std::time::Instant;

use sotad_engines::tts::PiperVoice;
use sotad_engines::tts::vits::{Noise, Scales, Vits};

fn joe_path() -> PathBuf {
    let path = models_dir().join("piper/en_US-joe-medium.onnx");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

fn fixture(name: &str) -> (f32, Vec<i64>, Vec<f32>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/piper");
    let ids = std::fs::read_to_string(dir.join(format!("vits_{name}.ids"))).unwrap();
    let mut it = ids.split_whitespace();
    let length_scale: f32 = it.next().unwrap().parse().unwrap();
    let ids = it.map(|s| s.parse().unwrap()).collect();
    let bytes = std::fs::read(dir.join(format!("vits_{name}.f32"))).unwrap();
    let audio = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (length_scale, ids, audio)
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let ma = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let mb = b.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa.sqrt() * sbb.sqrt())
}

#[test]
fn waveform_matches_piper_onnxruntime() {
    let voice = PiperVoice::open(joe_path()).unwrap();
    let t = Instant::now();
    let vits = Vits::load(&voice).unwrap();
    println!("load {:?}", t.elapsed());
    // Under qemu (aarch64 CI) the longer case would take minutes: the short one only.
    let cases: &[&str] = if cfg!(target_arch = "aarch64") {
        &["hello"]
    } else {
        &["hello", "fox_slow"]
    };
    for &name in cases {
        let (length_scale, ids, reference) = fixture(name);
        let t = Instant::now();
        let mut times = Default::default();
        let audio = vits
            .infer(
                &ids,
                None,
                Scales {
                    noise_scale: 0.0,
                    length_scale,
                    noise_w: 0.0,
                },
                &mut Noise::new(0),
                Some(&mut times),
            )
            .unwrap();
        let r = correlation(&audio, &reference);
        println!(
            "{name}: {} samples (reference {}), correlation {r:.5}, {:?} {times:?}",
            audio.len(),
            reference.len(),
            t.elapsed()
        );
        assert_eq!(audio.len(), reference.len(), "{name}: length");
        assert!(r >= 0.99, "{name}: correlation {r}");
    }
}
