//! A 10-minute recording through Whisper tiny.en: long-form decoding must neither hang nor
//! panic, must keep the words, and must give increasing timestamps.
//!
//! The audio is built here from the five LibriVox clips (cycled), separated by silences of
//! 0.7 to 6 s with faint noise, plus one 40-second gap (a whole window without speech).
//! HEAVY (about a minute on x86 with 2 threads): this is its own test target so that the
//! emulated (qemu) CI pass can leave it out.

mod common;

use common::{Rng, edit_distance, models_dir, normalize};
use sotad_engines::stt::{LoadOptions, TranscribeOptions, Whisper};

const RATE: usize = 16_000;

fn clips() -> Vec<(Vec<f32>, String)> {
    common::librivox_clips()
        .into_iter()
        .map(|c| (c.samples, c.reference))
        .collect()
}

#[test]
fn ten_minutes_of_speech_and_silence() {
    let model = models_dir().join("whisper-tiny.en-ct2");
    let m = Whisper::load(
        &model,
        &LoadOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}: run scripts/install-models.sh"));
    let clips = clips();
    let gaps = [1.0f32, 2.5, 4.0, 0.7, 6.0, 3.0];
    let mut rng = Rng(0x5eed_1234);
    let mut silence = |secs: f32, out: &mut Vec<f32>| {
        let n = (secs * RATE as f32) as usize;
        out.extend((0..n).map(|_| rng.f32() * 2e-4));
    };
    let mut audio = Vec::new();
    let mut reference = String::new();
    let mut i = 0;
    while audio.len() < 600 * RATE {
        let (s, t) = &clips[i % clips.len()];
        audio.extend_from_slice(s);
        reference.push_str(t);
        reference.push(' ');
        silence(gaps[i % gaps.len()], &mut audio);
        if i == 30 {
            silence(40.0, &mut audio);
        }
        i += 1;
    }
    let dur = audio.len() as f32 / RATE as f32;
    let start = std::time::Instant::now();
    let t = m.transcribe(&audio, &TranscribeOptions::default()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let r = normalize(&reference);
    let h = normalize(&t.text);
    let errors = edit_distance(&r, &h);
    let wer = errors as f64 / r.len() as f64;
    eprintln!(
        "{dur:.0} s of audio, {i} clips, {} words: WER {wer:.4} ({errors} errors), {} windows, {} segments, {secs:.1} s",
        r.len(),
        t.timings.windows,
        t.segments.len()
    );
    assert!(dur >= 600.0);
    // tiny.en makes 3 errors in the 71 words of the five clips (WER 0.042) one by one.
    assert!(wer <= 0.10, "WER {wer:.4}: {:?}", t.text);
    assert!(t.timings.windows >= 20, "{} windows", t.timings.windows);
    let mut prev_start = -1.0f32;
    let mut prev_end = 0.0f32;
    for s in &t.segments {
        assert!(
            s.start > prev_start && s.start >= prev_end - 1e-3,
            "{s:?} after a segment [{prev_start}, {prev_end}]"
        );
        assert!(s.end > s.start && s.end <= dur + 0.5, "{s:?}");
        prev_start = s.start;
        prev_end = s.end;
    }
    // The speech runs to the end of the recording.
    assert!(
        prev_end > dur - 15.0,
        "last segment ends at {prev_end} of {dur}"
    );
    // Nothing was transcribed inside the 40-second gap.
    let gap_words = t
        .segments
        .iter()
        .filter(|s| s.text.split_whitespace().count() > 3 && s.end - s.start > 35.0)
        .count();
    assert_eq!(gap_words, 0, "{:?}", t.segments);
}
