//! Wake word: CPU per second of audio for an open microphone with one wake word, sotad's
//! engine beside the reference (PyPI `pymicro-wakeword` 2.5.0: `pymicro-features` and
//! TensorFlow Lite's C library) on the same audio, in one run, with the ratio.
//!
//! ```text
//! scripts/bench-peers.sh wake                    # the reference, in /tmp/venv-wake
//! cargo bench -p sotad-benches --bench wake      # a few seconds
//! ```
//!
//! Audio: the five LibriVox clips of the speech set and the synthesized "Hey Jarvis" test clip,
//! one after the other (26 s), fed in 512-sample (32 ms) chunks as the microphone
//! delivers them. Model: `hey_jarvis` (the models directory, scripts/install-models.sh).
//! Reported: CPU time of the feeding thread (`/proc/thread-self/schedstat`) and wall time per
//! second of audio, median of 5 runs, for the whole detector and for the front end alone;
//! the reference's `time.thread_time()` for its features and model on the same chunks.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sotad_benches::{median, models_dir};
use sotad_engines::audio::{SAMPLE_RATE, read_wav};
use sotad_engines::wake::WakeWord;
use sotad_engines::wake::frontend::Frontend;

const CLIPS: [&str; 5] = [
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
];
const CHUNK: usize = 512;
const RUNS: usize = 5;

/// CPU time of this thread in ns (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn pcm(path: &Path) -> Vec<i16> {
    let wav = read_wav(path).unwrap_or_else(|e| panic!("{e} (run scripts/install-models.sh)"));
    assert_eq!((wav.sample_rate, wav.channels), (SAMPLE_RATE, 1));
    wav.samples
        .iter()
        .map(|&x| (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// Median (CPU ms, wall ms) per second of audio over `RUNS` runs of `run`.
fn measure(seconds: f64, mut run: impl FnMut()) -> (f64, f64) {
    run(); // warm-up
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        run();
        wall.push(t0.elapsed().as_secs_f64() * 1e3 / seconds);
        if let (Some(c0), Some(c1)) = (c0, thread_cpu_ns()) {
            cpu.push((c1 - c0) as f64 / 1e6 / seconds);
        }
    }
    (median(&cpu), median(&wall))
}

fn main() {
    let models = models_dir();
    let json = models.join("microwakeword/hey_jarvis.json");
    let mut audio = Vec::new();
    for clip in CLIPS {
        audio.extend(pcm(&models.join("speech/librivox").join(clip)));
    }
    audio
        .extend(pcm(&Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../engines/tests/data/wake/hey_jarvis.wav")));
    let seconds = audio.len() as f64 / SAMPLE_RATE as f64;
    println!(
        "# Wake word: CPU per second of audio, one wake word (hey_jarvis), {seconds:.1} s of audio in {CHUNK}-sample chunks"
    );

    let mut det = WakeWord::load(&json).unwrap_or_else(|e| panic!("{e}"));
    let mut detections = 0;
    let (cpu, wall) = measure(seconds, || {
        det.reset();
        detections = 0;
        for chunk in audio.chunks(CHUNK) {
            detections += det.process(chunk).len();
        }
    });
    let mut fe = Frontend::new();
    let (fe_cpu, _) = measure(seconds, || {
        fe.reset();
        let mut n = 0usize;
        for chunk in audio.chunks(CHUNK) {
            n += fe.push(chunk, |_| {});
        }
        std::hint::black_box(n);
    });
    println!(
        "sotad:      {cpu:.3} ms CPU per s of audio ({:.3} % of one core), wall {wall:.3} ms; front end alone {fe_cpu:.3} ms; {detections} detection(s)",
        cpu / 10.0
    );

    let py = Path::new("/tmp/venv-wake/bin/python");
    if !py.exists() {
        println!("reference:  not measured (run scripts/bench-peers.sh wake)");
        return;
    }
    let raw = std::env::temp_dir().join(format!("sotad-wake-bench-{}.raw", std::process::id()));
    let bytes: Vec<u8> = audio.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).unwrap();
    let script = format!(
        r#"
import time
from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures
audio = open("{raw}", "rb").read()
mww = MicroWakeWord.from_config("{json}")
def run():
    f = MicroWakeWordFeatures(); mww.reset(); n = 0
    for i in range(0, len(audio), {chunk} * 2):
        for x in f.process_streaming(audio[i:i + {chunk} * 2]):
            if mww.process_streaming(x): n += 1
    return n
run()
cpu, wall = [], []
for _ in range({runs}):
    c = time.thread_time(); t = time.perf_counter(); n = run()
    cpu.append((time.thread_time() - c) * 1e3 / {seconds}); wall.append((time.perf_counter() - t) * 1e3 / {seconds})
print(sorted(cpu)[{runs} // 2], sorted(wall)[{runs} // 2], n)
"#,
        raw = raw.display(),
        json = json.display(),
        chunk = CHUNK,
        runs = RUNS,
    );
    let out = Command::new(py).args(["-c", &script]).output();
    let _ = std::fs::remove_file(&raw);
    match out {
        Ok(o) if o.status.success() => {
            let v: Vec<f64> = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let (pcpu, pwall, pn) = (v[0], v[1], v[2]);
            println!(
                "reference:  {pcpu:.3} ms CPU per s of audio ({:.3} % of one core), wall {pwall:.3} ms; {pn} step(s) above the cutoff (it reports every one)",
                pcpu / 10.0
            );
            println!("sotad / reference CPU: {:.2}", cpu / pcpu);
        }
        Ok(o) => println!(
            "reference:  failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("reference:  failed to start: {e}"),
    }
}
