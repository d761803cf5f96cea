//! Voice activity detection: cost per window, false triggers on noise, endpoint delay on
//! real speech in noise.
//!
//! ```text
//! cargo bench -p sotad-benches --bench vad            # everything (about a minute)
//! cargo bench -p sotad-benches --bench vad -- quick   # 20 s of noise per case instead of 120 s
//! ```
//!
//! Needs `sox` (scripts/setup.sh) for the noise and the models directory
//! (scripts/install-models.sh) for `silero_vad_16k_op15.onnx` and the LibriVox clips.
//!
//! 1. Model cost: `SileroVad::probability` per 512-sample window (32 ms of audio), median of
//!    repeated runs, and the real-time factor; plus onnxruntime's figure for the same file
//!    if `/tmp/venv-vad/bin/python` exists (scripts/reference/vad_reference.py's venv).
//! 2. False triggers: white, pink and brown noise from `sox -R synth` (reproducible) at
//!    -50, -35 and -20 dBFS RMS, no speech at all, through the whole detector with the
//!    default `[vad]` settings; utterances started per minute, and the share of windows the
//!    energy gate let through to the model.
//! 3. Endpoint delay: each LibriVox clip with 1 s of silence before and 2 s after, mixed
//!    with pink noise at 20, 10 and 5 dB SNR (speech RMS over noise RMS). The true end of
//!    speech is the last 10 ms frame of the clean clip 15 dB above its room tone (the same
//!    rule as engines/tests/vad_endpoint.rs). Reported: clips with exactly one utterance,
//!    and the delay from the true end to the `SpeechEnd` event (trailing silence 600 ms
//!    included), median and worst.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sotad_benches::{median, models_dir};
use sotad_engines::audio::read_wav;
use sotad_engines::vad::{
    EndpointConfig, GateConfig, SileroVad, VadEvent, VadState, VoiceDetector, VoiceDetectorConfig,
    WINDOW, rms_db,
};

const CLIPS: [&str; 5] = [
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
];

/// `secs` of `kind` noise (whitenoise, pinknoise, brownnoise) from sox, scaled to `db` dBFS RMS.
fn noise(kind: &str, secs: u32, db: f32) -> Vec<f32> {
    let out = Command::new("sox")
        .args([
            "-R",
            "-n",
            "-r",
            "16000",
            "-c",
            "1",
            "-e",
            "floating-point",
            "-b",
            "32",
            "-t",
            "raw",
            "-",
        ])
        .args(["synth", &secs.to_string(), kind])
        .output()
        .expect("sox is needed: run scripts/setup.sh");
    assert!(
        out.status.success(),
        "sox failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    scale_to(&x, db)
}

fn scale_to(x: &[f32], db: f32) -> Vec<f32> {
    let g = 10f32.powf((db - rms_db(x)) / 20.0);
    x.iter().map(|&v| v * g).collect()
}

fn speech_bounds(clip: &[f32]) -> (usize, usize) {
    let levels: Vec<f32> = clip.chunks(160).map(rms_db).collect();
    let mut sorted = levels.clone();
    sorted.sort_by(f32::total_cmp);
    let floor = sorted[sorted.len() / 10];
    let peak = sorted[sorted.len() - 1];
    let thr = (floor + 15.0).max(peak - 30.0);
    let first = levels.iter().position(|&l| l > thr).unwrap();
    let last = levels.iter().rposition(|&l| l > thr).unwrap();
    (first * 160, ((last + 1) * 160).min(clip.len()))
}

fn detector(model: &Path, gate: bool) -> VoiceDetector {
    VoiceDetector::new(
        SileroVad::load(model).unwrap(),
        VoiceDetectorConfig {
            gate: gate.then(GateConfig::default),
            endpoint: EndpointConfig::default(),
        },
    )
}

/// CPU time of this thread in ns (`/proc/thread-self/schedstat`), so that the figure does
/// not depend on how busy the machine is; `None` where the file is missing.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let model = models_dir().join("silero-vad/silero_vad_16k_op15.onnx");
    assert!(
        model.exists(),
        "{} missing: run scripts/install-models.sh",
        model.display()
    );
    let clips: Vec<(String, Vec<f32>)> = CLIPS
        .iter()
        .map(|c| {
            let p = models_dir().join("speech/librivox").join(c);
            (
                c.to_string(),
                read_wav(&p).unwrap_or_else(|e| panic!("{e}")).samples,
            )
        })
        .collect();

    // 1. Model cost.
    let vad = SileroVad::load(&model).unwrap();
    let audio: Vec<f32> = clips.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    let windows: Vec<&[f32; WINDOW]> = audio
        .chunks_exact(WINDOW)
        .map(|w| w.try_into().unwrap())
        .collect();
    let mut runs = Vec::new();
    let mut cpu_runs = Vec::new();
    for _ in 0..5 {
        let mut state = VadState::new();
        let (t, c) = (Instant::now(), thread_cpu_ns());
        for w in &windows {
            std::hint::black_box(vad.probability(&mut state, w));
        }
        runs.push(t.elapsed().as_secs_f64() * 1e6 / windows.len() as f64);
        if let (Some(c0), Some(c1)) = (c, thread_cpu_ns()) {
            cpu_runs.push((c1 - c0) as f64 / 1e3 / windows.len() as f64);
        }
    }
    let us = median(&runs);
    println!(
        "## Silero VAD model cost ({} windows of 32 ms, one thread)",
        windows.len()
    );
    println!(
        "sotad:             {us:.1} us/window wall, real-time factor {:.4}",
        us / 32_000.0
    );
    if !cpu_runs.is_empty() {
        println!(
            "sotad:             {:.1} us/window of CPU time (independent of machine load)",
            median(&cpu_runs)
        );
    }
    let py = Path::new("/tmp/venv-vad/bin/python");
    if py.exists() {
        let script = format!(
            r#"
import numpy as np, onnxruntime as ort, time
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession("{}", sess_options=o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 576)).astype(np.float32) * 0.1
st = np.zeros((2, 1, 128), np.float32); sr = np.array(16000, np.int64)
for _ in range(100): s.run(None, {{"input": x, "state": st, "sr": sr}})
best = []; cpu = []
for _ in range(5):
    t = time.perf_counter(); c = time.thread_time()
    for _ in range(500): p, st = s.run(None, {{"input": x, "state": st, "sr": sr}})
    best.append((time.perf_counter() - t) / 500 * 1e6); cpu.append((time.thread_time() - c) / 500 * 1e6)
print(f"{{sorted(best)[2]:.1f}} {{sorted(cpu)[2]:.1f}}")
"#,
            model.display()
        );
        match Command::new(py).args(["-c", &script]).output() {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let v: Vec<f64> = text
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let (ort_us, ort_cpu) = (
                    v.first().copied().unwrap_or(f64::NAN),
                    v.get(1).copied().unwrap_or(f64::NAN),
                );
                println!(
                    "onnxruntime (py):  {ort_us:.1} us/window wall, {ort_cpu:.1} us CPU (both include Python's call overhead, ~5-10 us)"
                );
                println!("sotad / onnxruntime wall time: {:.2}", us / ort_us);
            }
            _ => println!("onnxruntime: not measured (venv without onnxruntime)"),
        }
    }

    // 2. False triggers on noise only.
    let secs = if quick { 20 } else { 120 };
    println!("\n## False triggers on noise only ({secs} s per case, default [vad] settings)");
    println!(
        "| noise | level dBFS | utterances/min (gate) | model runs (gate) | utterances/min (no gate) |"
    );
    println!("|---|---|---|---|---|");
    for kind in ["whitenoise", "pinknoise", "brownnoise"] {
        for db in [-50.0, -35.0, -20.0] {
            let x = noise(kind, secs, db);
            let mut row = Vec::new();
            for gate in [true, false] {
                let mut det = detector(&model, gate);
                let mut ev = Vec::new();
                det.push(&x, &mut ev);
                let starts = ev
                    .iter()
                    .filter(|e| matches!(e, VadEvent::SpeechStart { .. }))
                    .count();
                let st = det.stats();
                row.push((
                    starts as f64 * 60.0 / f64::from(secs),
                    st.model_runs as f64 / st.windows as f64,
                ));
            }
            println!(
                "| {kind} | {db} | {:.2} | {:.0} % | {:.2} |",
                row[0].0,
                row[0].1 * 100.0,
                row[1].0
            );
        }
    }

    // 3. Endpoint delay on speech in pink noise.
    println!("\n## Endpoint delay, LibriVox clips in pink noise (trailing silence 600 ms)");
    println!(
        "| SNR dB | clips with 1 utterance | delay median ms | delay worst ms | start early by (median ms) |"
    );
    println!("|---|---|---|---|---|");
    let pink = noise("pinknoise", 20, 0.0);
    for snr in [f32::INFINITY, 20.0, 10.0, 5.0] {
        let mut delays = Vec::new();
        let mut early = Vec::new();
        let mut ok = 0;
        for (ci, (_, clip)) in clips.iter().enumerate() {
            let (s, e) = speech_bounds(clip);
            let speech_db = rms_db(&clip[s..e]);
            let mut x = vec![0f32; 16_000];
            x.extend_from_slice(clip);
            x.extend(vec![0f32; 32_000]);
            if snr.is_finite() {
                let n = scale_to(&pink, speech_db - snr);
                let off = ci * 7_919;
                for (i, v) in x.iter_mut().enumerate() {
                    *v += n[(off + i) % n.len()];
                }
            }
            let mut det = detector(&model, true);
            let mut ev = Vec::new();
            det.push(&x, &mut ev);
            if let Some(last) = det.flush() {
                ev.push(last);
            }
            let ends: Vec<(u64, u64)> = ev
                .iter()
                .filter_map(|e| match e {
                    VadEvent::SpeechEnd { start, at, .. } => Some((*start, *at)),
                    _ => None,
                })
                .collect();
            if ends.len() == 1 {
                ok += 1;
            }
            if let Some(&(_, at)) = ends.last() {
                delays.push((at as f64 - (16_000 + e) as f64) / 16.0);
            }
            if let Some(&(start, _)) = ends.first() {
                early.push(((16_000 + s) as f64 - start as f64) / 16.0);
            }
        }
        let worst = delays.iter().cloned().fold(f64::NAN, f64::max);
        println!(
            "| {} | {ok}/{} | {:.0} | {:.0} | {:.0} |",
            if snr.is_finite() {
                format!("{snr}")
            } else {
                "clean".into()
            },
            clips.len(),
            if delays.is_empty() {
                f64::NAN
            } else {
                median(&delays)
            },
            worst,
            if early.is_empty() {
                f64::NAN
            } else {
                median(&early)
            },
        );
    }
}
