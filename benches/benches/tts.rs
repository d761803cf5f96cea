//! Piper TTS: sotad against piper-tts (onnxruntime) on the same voice, in one run.
//!
//! ```text
//! cargo bench -p sotad-benches --bench tts            # 5 timed runs per text and engine
//! TTS_BENCH_RUNS=9 cargo bench -p sotad-benches --bench tts
//! ```
//!
//! For a one-sentence and a five-sentence text: the median time to the first audio chunk,
//! the median total time, and the real-time factor (total time / audio seconds), for sotad
//! (`Voice::synthesize`, 2 threads) and for piper-tts 1.8.0 (`PiperVoice.synthesize`, its
//! onnxruntime session limited to 2 intra-op threads), both with the voice's default scales,
//! after one warm-up run each, alternating the engines run by run. sotad also runs a third
//! way, as the daemon does by default: the first sentence decoded in pieces (a first piece of
//! 250 ms of audio, `tts.first_chunk_ms`, then doubling pieces up to 1 s), with its own table
//! of time to the first audio next to the whole-sentence run's and piper-tts's. piper-tts runs in a
//! subprocess
//! (`scripts/reference/tts_bench_piper.py`) with the Python of `$PIPER_PYTHON`, else
//! `/tmp/venv-tts/bin/python`, else `/tmp/piper-venv/bin/python`; without one, only sotad's
//! figures are printed. Voice: `~/.cache/sotad/models/piper/en_US-joe-medium.onnx`
//! (`$SOTAD_MODELS_DIR`).

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use sotad_benches::{median, models_dir};
use sotad_engines::tts::{DecodeChunks, LoadOptions, StageTimes, SynthOptions, Voice};

const ONE: &str = "The quick brown fox jumps over the lazy dog.";
const FIVE: &str = "Good morning! The battery is at eighty percent. I found three people in the kitchen. \
                    Would you like me to play some music? Tell me when you are ready to go.";

struct Figures {
    first_ms: f64,
    total_ms: f64,
    cpu_ms: f64,
    audio_secs: f64,
}

impl Figures {
    fn rtf(&self) -> f64 {
        self.total_ms / 1e3 / self.audio_secs
    }
}

fn sotad_once(voice: &Voice, text: &str, seed: u64, chunks: DecodeChunks) -> (Run, StageTimes) {
    let opts = SynthOptions {
        seed,
        chunks,
        ..SynthOptions::default()
    };
    let c0 = cpu_ms();
    let s = voice
        .synthesize(text, &opts, |_| ControlFlow::Continue(()))
        .expect("synthesis");
    (
        Run {
            first_ms: s.first_audio_ms,
            total_ms: s.total_ms,
            cpu_ms: cpu_ms() - c0,
            audio_secs: s.audio_secs,
        },
        s.stages,
    )
}

#[derive(Clone, Copy)]
struct Run {
    first_ms: f64,
    total_ms: f64,
    cpu_ms: f64,
    audio_secs: f64,
}

/// CPU time (user + system) of this process and its waited-for children (espeak-ng), in ms.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name: utime is field 14, cstime 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // rest starts at field 3 (state, not numeric, skipped by the filter): field n is f[n - 4].
    let ticks: f64 = (14..=17).filter_map(|n| f.get(n - 4)).sum();
    ticks * 10.0 // USER_HZ = 100 on Linux
}

fn summarize(runs: &[Run]) -> Figures {
    let f: Vec<f64> = runs.iter().map(|r| r.first_ms).collect();
    let t: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
    let c: Vec<f64> = runs.iter().map(|r| r.cpu_ms).collect();
    let a: Vec<f64> = runs.iter().map(|r| r.audio_secs).collect();
    Figures {
        first_ms: median(&f),
        total_ms: median(&t),
        cpu_ms: median(&c),
        audio_secs: median(&a),
    }
}

fn python() -> Option<PathBuf> {
    std::env::var_os("PIPER_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/tmp/venv-tts/bin/python", "/tmp/piper-venv/bin/python"].map(PathBuf::from))
        .find(|p| p.exists())
}

/// The number after `"key": `.
fn field(line: &str, key: &str) -> Option<f64> {
    let start = line.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &line[start..];
    rest[..rest.find([',', '}'])?].trim().parse().ok()
}

/// piper-tts in a subprocess, one request per line.
struct Piper {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Piper {
    fn start(onnx: &Path) -> Option<Self> {
        let py = python()?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts/reference/tts_bench_piper.py");
        let mut child = Command::new(&py)
            .arg(&script)
            .arg(onnx)
            .arg("2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?;
        if line.trim() != "ready" {
            eprintln!("piper-tts side did not start: {line:?}");
            return None;
        }
        Some(Self { child, stdout })
    }

    fn run(&mut self, text: &str) -> Option<Run> {
        let stdin = self.child.stdin.as_mut()?;
        writeln!(
            stdin,
            "\"{}\"",
            text.replace('\\', "\\\\").replace('"', "\\\"")
        )
        .ok()?;
        stdin.flush().ok()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).ok()?;
        Some(Run {
            first_ms: field(&line, "first_audio_ms")?,
            total_ms: field(&line, "total_ms")?,
            cpu_ms: field(&line, "cpu_ms")?,
            audio_secs: field(&line, "audio_secs")?,
        })
    }
}

impl Drop for Piper {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn main() {
    let runs: usize = std::env::var("TTS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let onnx = models_dir().join("piper/en_US-joe-medium.onnx");
    assert!(
        onnx.exists(),
        "{} is missing: run scripts/install-models.sh",
        onnx.display()
    );
    let t = std::time::Instant::now();
    let voice = Voice::load(
        &onnx,
        &LoadOptions {
            threads: 2,
            espeak: None,
        },
    )
    .expect("voice");
    println!(
        "sotad: voice loaded in {:.0} ms; {runs} timed runs per text after a warm-up, medians",
        t.elapsed().as_secs_f64() * 1e3
    );

    let texts = [("1 sentence", ONE), ("5 sentences", FIVE)];
    let mut piper = Piper::start(&onnx);
    if piper.is_none() {
        println!("piper-tts: not run (no Python with piper-tts; see the header of this file)");
    }
    // As the daemon's `tts.first_chunk_ms = 250`: ceil(250 ms of samples / hop) frames first.
    let hop = voice.piper().vits().decoder.hop_length();
    let first_frames = (250 * voice.sample_rate() as usize).div_ceil(1000 * hop);
    let chunks = DecodeChunks {
        first_frames,
        max_frames: 4 * first_frames,
    };
    let mut ours: Vec<(Figures, StageTimes)> = Vec::new();
    let mut streamed: Vec<(Figures, StageTimes)> = Vec::new();
    let mut theirs: Vec<Option<Figures>> = Vec::new();
    for (_, text) in &texts {
        // Warm-up, then alternate sotad and piper-tts so both see the same machine load.
        sotad_once(&voice, text, 0, DecodeChunks::WHOLE);
        sotad_once(&voice, text, 0, chunks);
        let mut p_ok = piper.as_mut().and_then(|p| p.run(text)).is_some();
        let (mut o_runs, mut p_runs) = (Vec::new(), Vec::new());
        let mut s_runs = Vec::new();
        let (mut stages, mut s_stages) = (StageTimes::default(), StageTimes::default());
        for run in 0..runs {
            let (r, s) = sotad_once(&voice, text, run as u64 + 1, DecodeChunks::WHOLE);
            o_runs.push(r);
            stages = s;
            let (r, s) = sotad_once(&voice, text, run as u64 + 1, chunks);
            s_runs.push(r);
            s_stages = s;
            if p_ok {
                match piper.as_mut().and_then(|p| p.run(text)) {
                    Some(r) => p_runs.push(r),
                    None => p_ok = false,
                }
            }
        }
        ours.push((summarize(&o_runs), stages));
        streamed.push((summarize(&s_runs), s_stages));
        theirs.push(p_ok.then(|| summarize(&p_runs)));
    }
    println!(
        "\n{:<12} {:>7} | {:>9} {:>9} {:>9} {:>6} {:>8} | {:>9} {:>9} {:>9} {:>6} {:>8} | {:>6} {:>6} {:>6}",
        "text",
        "audio s",
        "s 1st ms",
        "s tot ms",
        "s cpu ms",
        "s RTF",
        "s cpuRTF",
        "p 1st ms",
        "p tot ms",
        "p cpu ms",
        "p RTF",
        "p cpuRTF",
        "1st x",
        "RTF x",
        "cpu x"
    );
    for (i, (name, _)) in texts.iter().enumerate() {
        let (o, stages) = &ours[i];
        let cpu_rtf = |f: &Figures| f.cpu_ms / 1e3 / f.audio_secs;
        let mine = format!(
            "{name:<12} {:>7.2} | {:>9.1} {:>9.1} {:>9.0} {:>6.3} {:>8.3}",
            o.audio_secs,
            o.first_ms,
            o.total_ms,
            o.cpu_ms,
            o.rtf(),
            cpu_rtf(o)
        );
        match &theirs[i] {
            Some(p) => println!(
                "{mine} | {:>9.1} {:>9.1} {:>9.0} {:>6.3} {:>8.3} | {:>6.2} {:>6.2} {:>6.2}",
                p.first_ms,
                p.total_ms,
                p.cpu_ms,
                p.rtf(),
                cpu_rtf(p),
                o.first_ms / p.first_ms,
                o.rtf() / p.rtf(),
                cpu_rtf(o) / cpu_rtf(p)
            ),
            None => println!("{mine} |"),
        }
        println!(
            "{:<12} sotad stages (last run): encoder {:.1} ms, durations {:.1} ms, flow {:.1} ms, decoder {:.1} ms",
            "", stages.encoder_ms, stages.durations_ms, stages.flow_ms, stages.decoder_ms
        );
    }
    println!(
        "\nFirst sentence decoded in pieces ({first_frames} frames = {:.0} ms first, up to {} frames), as the daemon does:",
        (first_frames * hop) as f64 * 1e3 / f64::from(voice.sample_rate()),
        4 * first_frames
    );
    println!(
        "{:<12} | {:>10} {:>10} {:>9} | {:>10} {:>10} {:>9} | {:>9} | {:>8} {:>8}",
        "text",
        "whole 1st",
        "pieces 1st",
        "p 1st ms",
        "whole tot",
        "pieces tot",
        "pieces cpu",
        "decoder",
        "1st/whl",
        "1st/p"
    );
    for (i, (name, _)) in texts.iter().enumerate() {
        let (o, _) = &ours[i];
        let (s, st) = &streamed[i];
        let p_first = theirs[i].as_ref().map(|p| p.first_ms);
        println!(
            "{name:<12} | {:>10.1} {:>10.1} {:>9} | {:>10.1} {:>10.1} {:>9.0} | {:>9.1} | {:>8.2} {:>8}",
            o.first_ms,
            s.first_ms,
            p_first.map_or("-".into(), |v| format!("{v:.1}")),
            o.total_ms,
            s.total_ms,
            s.cpu_ms,
            st.decoder_ms,
            s.first_ms / o.first_ms,
            p_first.map_or("-".into(), |v| format!("{:.2}", s.first_ms / v)),
        );
    }
    println!(
        "\ns = sotad, p = piper-tts; RTF = wall time / audio time, cpuRTF = CPU time (all threads, espeak-ng included) / audio time;\nratios are sotad / piper-tts (below 1: sotad is faster), per second of audio for RTF and cpu"
    );
}
