//! Wake word: CPU per second of audio for an open microphone with one wake word, sotad's
//! engine beside the reference (PyPI `pymicro-wakeword` 2.5.0: `pymicro-features` and
//! TensorFlow Lite's C library) on the same audio, in one run, with the ratio.
//!
//! ```text
//! scripts/bench-peers.sh wake                    # the reference, in /tmp/venv-wake
//! cargo bench -p sotad-benches --bench wake      # a few seconds
//! ```
//!
//! `-- confusion`: detections of the four models against the reference's on the corpus of
//! `scripts/wake_corpus.py` (see [`confusion`]).
//! `-- features FILE.wav` and `-- steps SETTINGS.json FILE.wav [TENSOR]` print sotad's features,
//! or every step's raw output (or one intermediate tensor), to compare with the reference's
//! when the two disagree.
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
    // `cargo bench` passes `--bench`; the rest are ours.
    if std::env::args().skip(1).any(|a| a == "confusion") {
        return confusion::run();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("steps") && args.len() >= 3 {
        // `-- steps SETTINGS.json FILE.wav [TENSOR]`: every step's frame and raw output
        // (512-sample chunks), or with TENSOR (an index in the model's main subgraph) that
        // tensor's bytes after every step, one line each.
        let mut det = WakeWord::load(Path::new(&args[1])).unwrap_or_else(|e| panic!("{e}"));
        let tensor: Option<usize> = args.get(3).and_then(|t| t.parse().ok());
        let mut steps = 0;
        // With TENSOR, 160-sample chunks: at most one step each.
        let chunk = if tensor.is_some() { 160 } else { CHUNK };
        for chunk in pcm(Path::new(&args[2])).chunks(chunk) {
            det.process_steps(chunk, |s| {
                if tensor.is_none() {
                    print!("{}:{} ", s.frame, s.raw)
                }
                steps += 1;
            });
            if let Some(t) = tensor {
                for _ in 0..std::mem::take(&mut steps) {
                    let b: Vec<String> = det
                        .tensor(t)
                        .iter()
                        .map(|&x| (x as i8).to_string())
                        .collect();
                    println!("{}", b.join(" "));
                }
            }
        }
        println!();
        return;
    }
    if args.first().map(String::as_str) == Some("features") && args.len() == 2 {
        // `-- features FILE.wav`: every frame's 40 features (u16), one line each.
        let mut fe = Frontend::new();
        for chunk in pcm(Path::new(&args[1])).chunks(CHUNK) {
            fe.push(chunk, |f| {
                println!(
                    "{}",
                    f.iter().map(u16::to_string).collect::<Vec<_>>().join(" ")
                )
            });
        }
        return;
    }
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

/// Wake word confusion: sotad's detections against the reference's, on the same files.
///
/// ```text
/// scripts/bench-peers.sh wake && cargo build --release -p sotad
/// /tmp/venv-wake/bin/python scripts/wake_corpus.py       # ~/.cache/sotad/bench-wake
/// cargo bench -p sotad-benches --bench wake -- confusion  # minutes
/// ```
///
/// Every model runs over its own word's positives and over all negatives. Each file is fed
/// from a fresh detector in 512-sample chunks (the microphone's frames), with the daemon's rule
/// on both sides: a detection is the first step of a run whose sliding-window mean exceeds the
/// model's cutoff (`WakeWord::process`, what `wake/detected` publishes); after one, the voice
/// loop gives the audio to the VAD for the wake word's listening window
/// (daemon/src/voice/wake.rs `WAKE_LISTEN`, 4 s, when nobody speaks), so the next
/// [`PAUSE_CHUNKS`] chunks are not fed and the detector starts afresh. The reference
/// (scripts/reference/wake_confusion.py, pymicro-wakeword 2.5.0) runs in a child process at
/// the same time, with its own rule (`process_streaming` true when the mean exceeds the cutoff)
/// under the same reporting and pause.
mod confusion {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use sotad_engines::wake::{WakeWord, frame_end};

    use super::{CHUNK, pcm, thread_cpu_ns};

    /// Chunks not fed after the detecting one: 4 s of 32 ms chunks from the detecting chunk
    /// to the next one fed.
    pub const PAUSE_CHUNKS: usize = 124;
    const WORDS: [&str; 4] = ["okay_nabu", "hey_jarvis", "hey_mycroft", "alexa"];
    const RATE: f64 = 16_000.0;

    struct Entry {
        path: PathBuf,
        positive: bool,
        /// The word (positives) or the group (negatives).
        label: String,
        snr: String,
        description: String,
    }

    #[derive(Default, Clone)]
    struct Outcome {
        /// End sample of the detecting frame, mean probability.
        detections: Vec<(u64, f64)>,
        /// The highest window mean in the file.
        best: f64,
    }

    fn manifest(dir: &Path) -> Vec<Entry> {
        let text = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run /tmp/venv-wake/bin/python scripts/wake_corpus.py)",
                dir.join("manifest.tsv").display()
            )
        });
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 5, "manifest line {l:?}");
                Entry {
                    path: dir.join(f[0]),
                    positive: f[1] == "pos",
                    label: f[2].into(),
                    snr: f[3].into(),
                    description: f[4].into(),
                }
            })
            .collect()
    }

    /// sotad, as the voice loop feeds it.
    fn sotad(det: &mut WakeWord, audio: &[i16]) -> Outcome {
        det.reset();
        let mut out = Outcome::default();
        let (mut c, mut start) = (0usize, 0u64);
        while c * CHUNK < audio.len() {
            let chunk = &audio[c * CHUNK..((c + 1) * CHUNK).min(audio.len())];
            let mut found = None;
            det.process_steps(chunk, |s| {
                if let Some(m) = s.mean {
                    out.best = out.best.max(m);
                    if s.detection && found.is_none() {
                        let end = frame_end(s.frame).as_micros() as u64 * 16 / 1000;
                        found = Some((start + end, m));
                    }
                }
            });
            c += 1;
            if let Some(f) = found {
                out.detections.push(f);
                c += PAUSE_CHUNKS;
                start = (c * CHUNK) as u64;
                det.reset();
            }
        }
        out
    }

    fn parse_reference(line: &str) -> Outcome {
        let (dets, best) = line.split_once('\t').expect("reference line");
        let detections = if dets == "-" {
            Vec::new()
        } else {
            dets.split(',')
                .map(|d| {
                    let (s, m) = d.split_once(':').expect("reference detection");
                    (s.parse().unwrap(), m.parse().unwrap())
                })
                .collect()
        };
        Outcome {
            detections,
            best: best.trim().parse().unwrap(),
        }
    }

    /// Detection-time differences in frames (sotad − reference) of the detections both made,
    /// paired in order.
    fn deltas(a: &Outcome, b: &Outcome) -> Vec<i64> {
        a.detections
            .iter()
            .zip(&b.detections)
            .map(|(x, y)| (x.0 as i64 - y.0 as i64) / 160)
            .collect()
    }

    #[derive(Default)]
    struct Tally {
        files: usize,
        seconds: f64,
        sotad: usize,
        reference: usize,
        /// Files where one detects and the other does not.
        one_sided: usize,
        /// Files with a different number of detections.
        count_differs: usize,
        max_delta: i64,
        beyond_one: usize,
        /// Positives by the synthesizer: (files, detected by sotad, by the reference).
        piper: (usize, usize, usize),
        espeak: (usize, usize, usize),
    }

    impl Tally {
        fn add(&mut self, e: &Entry, seconds: f64, s: &Outcome, r: &Outcome) {
            self.files += 1;
            self.seconds += seconds;
            let (ns, nr) = (s.detections.len(), r.detections.len());
            if e.positive {
                self.sotad += usize::from(ns > 0);
                self.reference += usize::from(nr > 0);
                let by = if e.description.starts_with("piper") {
                    &mut self.piper
                } else {
                    &mut self.espeak
                };
                *by = (
                    by.0 + 1,
                    by.1 + usize::from(ns > 0),
                    by.2 + usize::from(nr > 0),
                );
            } else {
                self.sotad += ns;
                self.reference += nr;
            }
            self.one_sided += usize::from((ns > 0) != (nr > 0));
            self.count_differs += usize::from(ns != nr);
            for d in deltas(s, r) {
                self.max_delta = self.max_delta.max(d.abs());
                self.beyond_one += usize::from(d.abs() > 1);
            }
        }
    }

    pub fn run() {
        let dir = std::env::var_os("SOTAD_WAKE_CORPUS").map_or_else(
            || {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/sotad/bench-wake")
            },
            PathBuf::from,
        );
        let entries = manifest(&dir);
        let models = super::models_dir().join("microwakeword");
        // The jobs: each word's positives, then every negative.
        let mut jobs: Vec<(usize, usize)> = Vec::new();
        for (w, word) in WORDS.iter().enumerate() {
            for (i, e) in entries.iter().enumerate() {
                if !e.positive || e.label == *word {
                    jobs.push((w, i));
                }
            }
        }
        println!(
            "# Wake word confusion: {} files in {}, {} jobs (model × file), {CHUNK}-sample chunks, {PAUSE_CHUNKS} chunks not fed after a detection",
            entries.len(),
            dir.display(),
            jobs.len()
        );

        // The reference, in a child process, at the same time.
        let py = Path::new("/tmp/venv-wake/bin/python");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/wake_confusion.py");
        let tmp = std::env::temp_dir().join(format!("sotad-wake-confusion-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let list = tmp.join("jobs.tsv");
        let mut f = std::fs::File::create(&list).unwrap();
        for &(w, i) in &jobs {
            writeln!(
                f,
                "{}\t{}",
                models.join(format!("{}.json", WORDS[w])).display(),
                entries[i].path.display()
            )
            .unwrap();
        }
        drop(f);
        let ref_out = tmp.join("reference.txt");
        let t0 = Instant::now();
        let child = py.exists().then(|| {
            Command::new(py)
                .arg(&script)
                .arg(&list)
                .arg(CHUNK.to_string())
                .arg(PAUSE_CHUNKS.to_string())
                .stdout(std::fs::File::create(&ref_out).unwrap())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the reference")
        });
        if child.is_none() {
            println!("reference: not run (scripts/bench-peers.sh wake)");
        }

        // sotad.
        let mut audio: BTreeMap<usize, Vec<i16>> = BTreeMap::new();
        let mut ours = Vec::with_capacity(jobs.len());
        let mut cpu = 0u64;
        let mut seconds = 0.0;
        let mut current: Option<(usize, WakeWord)> = None;
        for &(w, i) in &jobs {
            if current.as_ref().is_none_or(|c| c.0 != w) {
                let json = models.join(format!("{}.json", WORDS[w]));
                current = Some((w, WakeWord::load(&json).unwrap_or_else(|e| panic!("{e}"))));
            }
            let det = &mut current.as_mut().unwrap().1;
            let pcm = audio
                .entry(i)
                .or_insert_with(|| pcm(&entries[i].path))
                .clone();
            seconds += pcm.len() as f64 / RATE;
            let c0 = thread_cpu_ns().unwrap_or(0);
            ours.push(sotad(det, &pcm));
            cpu += thread_cpu_ns().unwrap_or(0) - c0;
            if entries[i].positive {
                audio.remove(&i);
            }
        }
        let sotad_wall = t0.elapsed().as_secs_f64();
        println!(
            "sotad: {:.2} h of audio in {:.1} s CPU ({:.3} ms per s of audio), {sotad_wall:.0} s wall",
            seconds / 3600.0,
            cpu as f64 / 1e9,
            cpu as f64 / 1e6 / seconds
        );
        let theirs: Vec<Outcome> = match child {
            Some(mut c) => {
                let status = c.wait().expect("wait for the reference");
                assert!(status.success(), "the reference failed: {status}");
                println!(
                    "reference: done after {:.0} s wall",
                    t0.elapsed().as_secs_f64()
                );
                std::fs::read_to_string(&ref_out)
                    .unwrap()
                    .lines()
                    .map(parse_reference)
                    .collect()
            }
            None => vec![Outcome::default(); jobs.len()],
        };
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(theirs.len(), jobs.len(), "reference lines");

        // Tallies: positives by word and SNR; negatives by word and group.
        let mut pos: BTreeMap<(usize, String), Tally> = BTreeMap::new();
        let mut neg: BTreeMap<(usize, String), Tally> = BTreeMap::new();
        let mut disagreements = Vec::new();
        for (k, &(w, i)) in jobs.iter().enumerate() {
            let e = &entries[i];
            let secs =
                std::fs::metadata(&e.path).map_or(0.0, |m| (m.len() - 44) as f64 / 2.0 / RATE);
            let (s, r) = (&ours[k], &theirs[k]);
            let key = if e.positive {
                e.snr.clone()
            } else {
                e.label.clone()
            };
            let map = if e.positive { &mut pos } else { &mut neg };
            map.entry((w, key.clone())).or_default().add(e, secs, s, r);
            if !e.positive {
                neg.entry((w, "all".into())).or_default().add(e, secs, s, r);
            } else {
                pos.entry((w, "all".into())).or_default().add(e, secs, s, r);
            }
            let d = deltas(s, r);
            if s.detections.len() != r.detections.len() || d.iter().any(|d| d.abs() > 1) {
                disagreements.push(format!(
                    "{} on {} ({}): sotad {:?} best {:.4}, reference {:?} best {:.4}",
                    WORDS[w],
                    e.path.file_name().unwrap().to_string_lossy(),
                    e.description,
                    s.detections,
                    s.best,
                    r.detections,
                    r.best
                ));
            }
        }

        println!(
            "\n## Positives (each word's own; detected = at least one detection in the file)\n"
        );
        println!(
            "| word | SNR | files | detected sotad / reference | false rejects sotad / reference | Piper: detected s / r of n | espeak-ng: s / r of n | one-sided files | max Δ frames | Δ > 1 frame |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (w, word) in WORDS.iter().enumerate() {
            for snr in ["clean", "20", "10", "all"] {
                let Some(t) = pos.get(&(w, snr.to_string())) else {
                    continue;
                };
                let fr = |d: usize| 100.0 * (t.files - d) as f64 / t.files as f64;
                println!(
                    "| {word} | {} | {} | {} / {} | {:.1} % / {:.1} % | {} / {} of {} | {} / {} of {} | {} | {} | {} |",
                    if snr == "clean" || snr == "all" {
                        snr.to_string()
                    } else {
                        format!("{snr} dB")
                    },
                    t.files,
                    t.sotad,
                    t.reference,
                    fr(t.sotad),
                    fr(t.reference),
                    t.piper.1,
                    t.piper.2,
                    t.piper.0,
                    t.espeak.1,
                    t.espeak.2,
                    t.espeak.0,
                    t.one_sided,
                    t.max_delta,
                    t.beyond_one
                );
            }
        }
        println!("\n## Negatives (every model over all of them; false accepts = detections)\n");
        println!(
            "| word | group | files | hours | false accepts sotad / reference | per hour sotad / reference | files with a different count | max Δ frames | Δ > 1 frame |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (w, word) in WORDS.iter().enumerate() {
            let mut groups: Vec<&String> = neg.keys().filter(|k| k.0 == w).map(|k| &k.1).collect();
            groups.sort_by_key(|g| (g.as_str() == "all", g.to_string()));
            for g in groups {
                let t = &neg[&(w, g.clone())];
                let h = t.seconds / 3600.0;
                println!(
                    "| {word} | {g} | {} | {h:.3} | {} / {} | {:.2} / {:.2} | {} | {} | {} |",
                    t.files,
                    t.sotad,
                    t.reference,
                    t.sotad as f64 / h,
                    t.reference as f64 / h,
                    t.count_differs,
                    t.max_delta,
                    t.beyond_one
                );
            }
        }
        println!(
            "\n## Disagreements ({}): a different number of detections, or times more than one frame apart\n",
            disagreements.len()
        );
        for d in disagreements.iter().take(40) {
            println!("- {d}");
        }
    }
}
