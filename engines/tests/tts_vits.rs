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

/// The decoder run chunk by chunk over the latent frames (each chunk with the receptive field
/// of extra frames on both sides) gives the same waveform as the decoder run whole: same
/// length, differences at float-rounding level. noise_scale = noise_w = 0, so both calls see
/// the same latent.
#[test]
fn streamed_decoder_equals_the_whole() {
    use sotad_engines::tts::vits::DecodeChunks;
    use std::ops::ControlFlow;

    let voice = PiperVoice::open(joe_path()).unwrap();
    let vits = Vits::load(&voice).unwrap();
    // joe-medium (Piper "medium": HiFi-GAN with residual blocks of type 2): conv_pre and
    // conv_post 7 taps; upsampling strides 8, 8, 4 with kernels 16, 16, 8 (padding 4, 4, 2);
    // residual blocks of kernels 3, 5, 7 with dilations (1, 2), (2, 6), (3, 12), of which the
    // 7-tap one reaches furthest: 9 + 36 = 45 positions each side. Backwards from the output:
    // left 3 + 45 -> ceil((48 + 7 - 2) / 4) = 14, + 45 -> ceil((59 + 15 - 4) / 8) = 9,
    // + 45 -> ceil((54 + 15 - 4) / 8) = 9, + 3 = 12 frames; right 3 + 45 -> ceil(50 / 4) = 13,
    // + 45 -> ceil(62 / 8) = 8, + 45 -> ceil(57 / 8) = 8, + 3 = 11 frames.
    assert_eq!(vits.decoder_context(), Some((12, 11)));
    // Small chunks so that even "hello" (94 frames) has interior chunks with context on both
    // sides. Under qemu (aarch64 CI) the short case only.
    let chunks = DecodeChunks {
        first_frames: 8,
        max_frames: 32,
    };
    let cases: &[&str] = if cfg!(target_arch = "aarch64") {
        &["hello"]
    } else {
        &["hello", "fox_slow"]
    };
    for &name in cases {
        let (length_scale, ids, _) = fixture(name);
        let scales = Scales {
            noise_scale: 0.0,
            length_scale,
            noise_w: 0.0,
        };
        let whole = vits
            .infer(&ids, None, scales, &mut Noise::new(0), None)
            .unwrap();
        let frames = whole.len() / 256;
        let plan = chunks.plan(frames);
        assert!(plan.len() >= 4, "{name}: {plan:?}");
        let mut pieces: Vec<Vec<f32>> = Vec::new();
        let mut lasts = Vec::new();
        let mut times = Default::default();
        let flow = vits
            .infer_stream(
                &ids,
                None,
                scales,
                &mut Noise::new(0),
                chunks,
                &mut times,
                &mut |s, last| {
                    pieces.push(s.to_vec());
                    lasts.push(last);
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        assert!(flow.is_continue());
        assert!(lasts.iter().rev().skip(1).all(|&l| !l) && lasts.last() == Some(&true));
        let lens: Vec<usize> = pieces.iter().map(Vec::len).collect();
        let want: Vec<usize> = plan.iter().map(|(a, b)| (b - a) * 256).collect();
        assert_eq!(lens, want, "{name}: pieces follow the plan");
        let streamed: Vec<f32> = pieces.concat();
        assert_eq!(streamed.len(), whole.len(), "{name}: length");
        let max_diff = streamed
            .iter()
            .zip(&whole)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let r = correlation(&streamed, &whole);
        println!(
            "{name}: {frames} frames in {} chunks, max abs diff {max_diff:.2e}, correlation {r:.7}, {times:?}",
            plan.len()
        );
        assert!(max_diff < 1e-4, "{name}: max abs diff {max_diff}");
        assert!(r > 0.99999, "{name}: correlation {r}");
    }
    // The sink stops the stream after the first piece.
    let (length_scale, ids, _) = fixture("hello");
    let mut n = 0;
    let flow = vits
        .infer_stream(
            &ids,
            None,
            Scales {
                noise_scale: 0.0,
                length_scale,
                noise_w: 0.0,
            },
            &mut Noise::new(0),
            chunks,
            &mut Default::default(),
            &mut |_, _| {
                n += 1;
                ControlFlow::Break(())
            },
        )
        .unwrap();
    assert!(flow.is_break());
    assert_eq!(n, 1);
}

#[test]
fn decode_chunks_cover_the_sentence() {
    use sotad_engines::tts::vits::DecodeChunks;
    let c = DecodeChunks {
        first_frames: 16,
        max_frames: 64,
    };
    assert_eq!(c.plan(10), vec![(0, 10)]);
    assert_eq!(
        c.plan(20),
        vec![(0, 20)],
        "a short remainder joins the chunk"
    );
    assert_eq!(c.plan(30), vec![(0, 16), (16, 30)]);
    assert_eq!(
        c.plan(250),
        vec![(0, 16), (16, 48), (48, 112), (112, 176), (176, 250)]
    );
    assert_eq!(DecodeChunks::WHOLE.plan(250), vec![(0, 250)]);
    for f in 1..400 {
        let p = c.plan(f);
        assert_eq!(p[0].0, 0);
        assert_eq!(p.last().unwrap().1, f);
        assert!(p.windows(2).all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1));
    }
}
