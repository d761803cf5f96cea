//! Compares transcripts with the encoder on the full 30 s window and on windows fitted to
//! the audio (`EncoderWindow::Fit`), for each WAV file and each fit setting:
//!
//! `cargo run --release -p sotad-engines --example stt_window -- MODEL_DIR FILE.wav...`
//!
//! `STT_WINDOWS="margin:min,..."` (seconds) picks the fit settings (default: a grid from
//! 0 s to 3 s of margin and 0 s to 10 s minimum). Prints, per setting, how many files'
//! transcripts differ from the full window's, and the total time.
use sotad_engines::stt::{EncoderWindow, LoadOptions, TranscribeOptions, Whisper};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, files) = args
        .split_first()
        .ok_or("usage: stt_window MODEL_DIR FILE.wav...")?;
    let model = Whisper::load(
        dir,
        &LoadOptions {
            threads: 2,
            ..Default::default()
        },
    )?;
    let spec = std::env::var("STT_WINDOWS")
        .unwrap_or_else(|_| "0:0,0.5:0,1:0,1:3,1:5,2:0,2:3,2:5,3:5,1:10,2:10".into());
    let fits: Vec<(f32, f32)> = spec
        .split(',')
        .map(|p| {
            let (a, b) = p.split_once(':').expect("margin:min");
            (a.trim().parse().unwrap(), b.trim().parse().unwrap())
        })
        .collect();
    let audio: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let run = |w: EncoderWindow| -> Vec<(String, f64)> {
        let o = TranscribeOptions {
            encoder_window: w,
            ..Default::default()
        };
        audio
            .iter()
            .map(|a| {
                let t = model.transcribe_wav(a, &o).unwrap();
                (t.text, t.timings.total_ms)
            })
            .collect()
    };
    // STT_FULL_FROM=FILE reuses the full-window transcripts of an earlier run's output.
    let full = match std::env::var("STT_FULL_FROM") {
        Ok(path) => {
            let prev = std::fs::read_to_string(path)?;
            files
                .iter()
                .map(|f| {
                    let line = prev
                        .lines()
                        .find(|l| l.starts_with(&format!("full {f} (")))
                        .expect("file in STT_FULL_FROM");
                    let (head, text) = line.split_once("): ").unwrap();
                    let ms = head.rsplit('(').next().unwrap().trim_end_matches(" ms");
                    (text.to_owned(), ms.parse().unwrap())
                })
                .collect()
        }
        Err(_) => run(EncoderWindow::Full),
    };
    let full_ms: f64 = full.iter().map(|x| x.1).sum();
    for (f, (t, ms)) in files.iter().zip(&full) {
        println!("full {f} ({ms:.0} ms): {t}");
    }
    println!("full window: {full_ms:.0} ms for {} files", files.len());
    for (margin, min) in fits {
        let r = run(EncoderWindow::Fit {
            margin_secs: margin,
            min_secs: min,
        });
        let ms: f64 = r.iter().map(|x| x.1).sum();
        let mut diff = 0;
        for (f, ((a, _), (b, _))) in files.iter().zip(full.iter().zip(&r)) {
            if a != b {
                diff += 1;
                println!("  margin {margin} min {min}: {f}\n    full: {a}\n    fit:  {b}");
            }
        }
        println!(
            "margin {margin} s, min {min} s: {diff} of {} differ, {ms:.0} ms ({:.2}x of full)",
            files.len(),
            ms / full_ms
        );
    }
    Ok(())
}
