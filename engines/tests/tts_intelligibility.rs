//! Intelligibility: sentences spoken by sotad's Piper engine (joe-medium) and transcribed by
//! sotad's own Whisper (tiny.en) come back with a word error rate of at most 10 %.
//!
//! Under emulation (aarch64 CI) one sentence is checked instead of five.

mod common;

use common::{edit_distance, models_dir, normalize};
use sotad_engines::audio::resample::resample_mono;
use sotad_engines::stt::{LoadOptions as SttLoad, TranscribeOptions, Whisper};
use sotad_engines::tts::{LoadOptions as TtsLoad, SynthOptions, Voice};

const SENTENCES: [&str; 5] = [
    "The kitchen light is on.",
    "It will rain tomorrow afternoon, so take an umbrella.",
    "I found three books on the table near the window.",
    "Please open the garage door and turn off the radio.",
    "My battery is almost empty, so I am going back to the charger.",
];

#[test]
fn whisper_understands_what_piper_says() {
    let dir = models_dir();
    let voice = Voice::load(dir.join("piper/en_US-joe-medium.onnx"), &TtsLoad::default()).unwrap();
    let whisper = Whisper::load(dir.join("whisper-tiny.en-ct2"), &SttLoad::default()).unwrap();
    let count = if cfg!(target_arch = "aarch64") {
        1
    } else {
        SENTENCES.len()
    };
    let (mut errors, mut words) = (0, 0);
    for text in &SENTENCES[..count] {
        let mut audio = Vec::new();
        voice
            .synthesize(text, &SynthOptions::default(), |chunk| {
                audio.extend_from_slice(chunk.samples);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        let speech = resample_mono(&audio, voice.sample_rate(), 16_000).unwrap();
        let heard = whisper
            .transcribe(&speech, &TranscribeOptions::default())
            .unwrap();
        let (r, h) = (normalize(text), normalize(&heard.text));
        let e = edit_distance(&r, &h);
        eprintln!("{e} errors: {text:?} -> {:?}", heard.text);
        errors += e;
        words += r.len();
    }
    let wer = errors as f64 / words as f64;
    assert!(
        wer <= 0.10,
        "WER {wer:.3} ({errors} errors in {words} words)"
    );
}
