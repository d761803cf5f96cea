//! Whisper speech to text, side by side with faster-whisper on the same model and clips.
//!
//! For whisper-tiny.en-ct2 and whisper-base-ct2 (the models dir of scripts/install-models.sh)
//! and each of the five LibriVox clips: the median wall time (latency) of `STT_BENCH_RUNS`
//! (default 3) transcriptions after one warm-up, with 2 threads and greedy decoding, for
//! sotad at its default settings (the full 30 s encoder window, as faster-whisper), sotad
//! with the encoder window fitted to the audio (`EncoderWindow::Fit`, 2 s margin, 5 s
//! minimum; opt-in, it changes transcripts), and faster-whisper
//! with compute types int8 and float32 (`cpu_threads=2`, `beam_size=1`), run as a
//! subprocess: `scripts/reference/stt_reference.py bench` with the Python in
//! `STT_REF_PYTHON` (default /tmp/venv-stt/bin/python). The two sotad settings alternate
//! run by run. Prints latency, real-time factor, the ratios sotad / faster-whisper (below 1:
//! sotad is faster), and whether each transcript equals faster-whisper float32's.
//!
//! `cargo bench -p sotad-benches --bench stt` (`STT_BENCH_MODELS=tiny` for one model)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sotad_benches::{median, models_dir};
use sotad_engines::audio::{read_wav, to_mono_16k};
use sotad_engines::stt::ct2::json::{self, JsonValue};
use sotad_engines::stt::{EncoderWindow, LoadOptions, TranscribeOptions, Whisper};

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
        .map(|c| match (c.get("median_secs"), c.get("text")) {
            (Some(JsonValue::Number(x)), Some(JsonValue::String(t))) => Some(Peer {
                secs: *x,
                text: t.clone(),
            }),
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
        let full = TranscribeOptions::default();
        let fit = TranscribeOptions {
            encoder_window: EncoderWindow::Fit {
                margin_secs: 2.0,
                min_secs: 5.0,
            },
            ..Default::default()
        };
        // Per clip: (median s, timings, text) for the default (full) and the fitted window.
        let mut ours = Vec::new();
        for a in &audio {
            model.transcribe(a, &fit).unwrap();
            model.transcribe(a, &full).unwrap();
            let (mut tf, mut tw) = (Vec::new(), Vec::new());
            let (mut lf, mut lw) = (None, None);
            for _ in 0..runs {
                let t = Instant::now();
                let r = model.transcribe(a, &fit).unwrap();
                tf.push(t.elapsed().as_secs_f64());
                lf = Some(r);
                let t = Instant::now();
                let r = model.transcribe(a, &full).unwrap();
                tw.push(t.elapsed().as_secs_f64());
                lw = Some(r);
            }
            ours.push(((median(&tw), lw.unwrap()), (median(&tf), lf.unwrap())));
        }
        let int8 = faster_whisper(&mdir, "int8", runs, &wavs);
        let f32s = faster_whisper(&mdir, "float32", runs, &wavs);
        let peer = |v: &Option<Vec<Peer>>, i: usize| v.as_ref().map_or(f64::NAN, |v| v[i].secs);
        println!("\n{name} (load {load_ms:.0} ms); latency in ms, RTF = latency / audio");
        println!(
            "| clip | audio s | sotad ms (enc/dec) | RTF | sotad fitted window ms (enc/dec) | fw int8 ms | RTF | fw f32 ms | sotad/int8 | sotad/f32 | fitted/int8 | text = fw f32 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut sums = [0.0f64; 4];
        let mut equal = 0;
        for (i, p) in wavs.iter().enumerate() {
            let secs = audio[i].len() as f64 / 16_000.0;
            let id = p.file_stem().unwrap().to_string_lossy();
            let id = id.rsplit('-').next().unwrap_or_default();
            let ((o, rf), (w, rw)) = &ours[i];
            let (fi, ff) = (peer(&int8, i), peer(&f32s, i));
            for (s, v) in sums.iter_mut().zip([*o, *w, fi, ff]) {
                *s += v;
            }
            let same = f32s.as_ref().map(|v| v[i].text == rf.text);
            equal += usize::from(same == Some(true));
            println!(
                "| {id} | {secs:.2} | {:.0} ({:.0}/{:.0}) | {:.3} | {:.0} ({:.0}/{:.0}) | {:.0} | {:.3} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                o * 1e3,
                rf.timings.encode_ms,
                rf.timings.decode_ms,
                o / secs,
                w * 1e3,
                rw.timings.encode_ms,
                rw.timings.decode_ms,
                fi * 1e3,
                fi / secs,
                ff * 1e3,
                o / fi,
                o / ff,
                w / fi,
                match same {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "?",
                }
            );
            if same == Some(false) {
                println!(
                    "  sotad: {:?}\n  fw f32: {:?}",
                    rf.text,
                    f32s.as_ref().unwrap()[i].text
                );
            }
            if rw.text != rf.text {
                println!("  fitted window: {:?}", rw.text);
            }
        }
        let [so, sw, si, sf] = sums;
        println!(
            "| all five | | {:.0} | | {:.0} | {:.0} | | {:.0} | **{:.2}** | **{:.2}** | **{:.2}** | {equal}/{} |",
            so * 1e3,
            sw * 1e3,
            si * 1e3,
            sf * 1e3,
            so / si,
            so / sf,
            sw / si,
            wavs.len()
        );
        println!(
            "{name}: sotad / fw int8 = {:.2} (fitted window {:.2}), sotad / fw float32 = {:.2} (fitted window {:.2}); fitted window / full window = {:.2}",
            so / si,
            sw / si,
            so / sf,
            sw / sf,
            sw / so
        );
    }
}
