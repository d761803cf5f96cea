//! Whisper speech to text, side by side with faster-whisper on the same model and clips.
//!
//! For whisper-tiny.en-ct2 and whisper-base-ct2 (the models dir of scripts/install-models.sh)
//! and each of the five LibriVox clips: the median wall time of `STT_BENCH_RUNS` (default 3)
//! transcriptions after one warm-up, with 2 threads and greedy decoding, for sotad and for
//! faster-whisper with compute types int8 and float32 (`cpu_threads=2`, `beam_size=1`), run
//! as a subprocess: `scripts/reference/stt_reference.py bench` with the Python in
//! `STT_REF_PYTHON` (default /tmp/venv-stt/bin/python). Prints latency, real-time factor and
//! the ratios sotad / faster-whisper (below 1: sotad is faster).
//!
//! `cargo bench -p sotad-benches --bench stt` (`STT_BENCH_MODELS=tiny` for one model)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sotad_engines::audio::{read_wav, to_mono_16k};
use sotad_engines::stt::ct2::json::{self, JsonValue};
use sotad_engines::stt::{LoadOptions, TranscribeOptions, Whisper};

fn models_dir() -> PathBuf {
    std::env::var_os("SOTAD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sotad/models")
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per-clip median seconds from the reference script, or None if it cannot run.
fn faster_whisper(model: &Path, compute: &str, runs: usize, wavs: &[PathBuf]) -> Option<Vec<f64>> {
    let python =
        std::env::var("STT_REF_PYTHON").unwrap_or_else(|_| "/tmp/venv-stt/bin/python".into());
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/stt_reference.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(["bench", model.to_str()?, compute, &runs.to_string()])
        .args(wavs)
        .output();
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
    let text = String::from_utf8_lossy(&out.stdout);
    let v = json::parse(text.trim()).ok()?;
    v.as_array()?
        .iter()
        .map(|c| match c.get("median_secs") {
            Some(JsonValue::Number(x)) => Some(*x),
            _ => None,
        })
        .collect()
}

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
    println!(
        "STT benchmark: {runs} runs per clip after a warm-up, medians, 2 threads, greedy (beam 1)"
    );
    let only = std::env::var("STT_BENCH_MODELS").unwrap_or_default();
    for name in ["whisper-tiny.en-ct2", "whisper-base-ct2"] {
        if !only.is_empty() && !only.split(',').any(|m| name.contains(m.trim())) {
            continue;
        }
        let mdir = dir.join(name);
        let t = Instant::now();
        let model = Whisper::load(
            &mdir,
            &LoadOptions {
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let opts = TranscribeOptions::default();
        let mut ours = Vec::new();
        let mut parts = Vec::new();
        for a in &audio {
            model.transcribe(a, &opts).unwrap();
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..runs {
                let t = Instant::now();
                let r = model.transcribe(a, &opts).unwrap();
                times.push(t.elapsed().as_secs_f64());
                last = Some(r.timings);
            }
            ours.push(median(times));
            parts.push(last.unwrap());
        }
        let int8 = faster_whisper(&mdir, "int8", runs, &wavs);
        let f32s = faster_whisper(&mdir, "float32", runs, &wavs);
        println!("\n{name} (load {load_ms:.0} ms)");
        println!(
            "| clip | audio s | sotad ms (mel/enc/dec) | RTF | fw int8 ms | fw f32 ms | sotad/int8 | sotad/f32 |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let (mut so, mut si, mut sf) = (0.0, 0.0, 0.0);
        for (i, p) in wavs.iter().enumerate() {
            let secs = audio[i].len() as f64 / 16_000.0;
            let id = p.file_stem().unwrap().to_string_lossy();
            let id = id.rsplit('-').next().unwrap_or_default();
            let (o, tm) = (ours[i], parts[i]);
            let fi = int8.as_ref().map(|v| v[i]);
            let ff = f32s.as_ref().map(|v| v[i]);
            so += o;
            si += fi.unwrap_or(f64::NAN);
            sf += ff.unwrap_or(f64::NAN);
            println!(
                "| {id} | {secs:.2} | {:.0} ({:.0}/{:.0}/{:.0}) | {:.3} | {:.0} | {:.0} | {:.2} | {:.2} |",
                o * 1e3,
                tm.mel_ms,
                tm.encode_ms,
                tm.decode_ms,
                o / secs,
                fi.unwrap_or(f64::NAN) * 1e3,
                ff.unwrap_or(f64::NAN) * 1e3,
                o / fi.unwrap_or(f64::NAN),
                o / ff.unwrap_or(f64::NAN)
            );
        }
        println!(
            "| all five | | {:.0} | | {:.0} | {:.0} | **{:.2}** | **{:.2}** |",
            so * 1e3,
            si * 1e3,
            sf * 1e3,
            so / si,
            so / sf
        );
    }
}
