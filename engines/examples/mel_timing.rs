//! Times Whisper's log-mel front end on 5 s of real speech.
//!
//! ```text
//! cargo run --release -p sotad-engines --example mel_timing [clip.wav] [n_mels]
//! ```
//!
//! Without arguments it uses the LibriVox clips installed by scripts/install-models.sh,
//! concatenated and cut to 5 s (converted to 16 kHz mono if needed).

use std::path::PathBuf;
use std::time::Instant;

use sotad_engines::audio::{read_wav, to_mono_16k};
use sotad_engines::stt::mel::{MelFrontEnd, N_FRAMES};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let clips: Vec<PathBuf> = match args.next() {
        Some(path) => vec![PathBuf::from(path)],
        None => {
            let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
            let dir = PathBuf::from(home).join(".cache/sotad/models/speech/librivox");
            let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wav"))
                .collect();
            v.sort();
            v
        }
    };
    let n_mels: usize = args.next().map_or(Ok(80), |s| s.parse())?;

    let mut audio = Vec::new();
    for clip in &clips {
        let wav = read_wav(clip)?;
        audio.extend_from_slice(&to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)?);
        if audio.len() >= 5 * 16_000 {
            break;
        }
    }
    if audio.len() < 5 * 16_000 {
        return Err(format!("only {} samples of audio, need 5 s", audio.len()).into());
    }
    audio.truncate(5 * 16_000);

    let t0 = Instant::now();
    let front = MelFrontEnd::new(n_mels);
    let setup = t0.elapsed();

    // Warm up, then time several runs and report the median.
    let _ = front.compute(&audio);
    let mut runs: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            let mel = front.compute(&audio);
            let padded = mel.padded(N_FRAMES);
            std::hint::black_box(padded);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    let mel = front.compute(&audio);
    println!(
        "log-mel, {n_mels} bands, 5.0 s of audio ({} frames computed, padded to {N_FRAMES}): median {:.3} ms, min {:.3} ms, max {:.3} ms over {} runs; front-end setup {:.3} ms",
        mel.n_frames(),
        runs[runs.len() / 2],
        runs[0],
        runs[runs.len() - 1],
        runs.len(),
        setup.as_secs_f64() * 1e3
    );
    Ok(())
}
