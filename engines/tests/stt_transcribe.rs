//! The Whisper engine on the real tiny.en and base models and the LibriVox clips that
//! scripts/install-models.sh installs (missing files fail the tests, naming the command).
//!
//! Accuracy is word error rate after normalization (lowercase; "mister"/"mr." → "mr";
//! hyphens to spaces; everything but letters, digits, apostrophes and spaces removed; numbers
//! not spelled out), compared with faster-whisper's on the same model and clips, greedy
//! (beam 1) with its default fallback settings: `engines/tests/data/stt_reference.json`,
//! written by `scripts/reference/stt_reference.py fixture`.
//!
//! Under emulation (aarch64 CI) the accuracy tests use one clip per model.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Clip, edit_distance, models_dir, normalize};
use sotad_engines::audio::{encode_wav_i16, resample::resample_mono};
use sotad_engines::stt::ct2::json::{self, JsonValue};
use sotad_engines::stt::{LoadOptions, Task, TranscribeOptions, Whisper};

const TINY: &str = "whisper-tiny.en-ct2";
const BASE: &str = "whisper-base-ct2";

fn model_path(name: &str) -> PathBuf {
    let dir = models_dir().join(name);
    assert!(
        dir.join("model.bin").exists(),
        "{} is missing: run scripts/install-models.sh",
        dir.display()
    );
    dir
}

fn model(name: &str) -> &'static Whisper {
    static TINY_M: OnceLock<Whisper> = OnceLock::new();
    static BASE_M: OnceLock<Whisper> = OnceLock::new();
    let cell = if name == TINY { &TINY_M } else { &BASE_M };
    cell.get_or_init(|| {
        Whisper::load(
            model_path(name),
            &LoadOptions {
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap()
    })
}

fn clips() -> Vec<Clip> {
    common::librivox_clips()
}

/// faster-whisper's result for a model and setting (`"float32"`: greedy,
/// `"float32_beam5"`): (per-clip id, errors and transcript; total WER).
fn reference(name: &str, key: &str) -> (Vec<(String, usize, String)>, f64) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/stt_reference.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let root = json::parse(&text).unwrap();
    let r = root
        .get("models")
        .and_then(|m| m.get(name))
        .and_then(|m| m.get(key))
        .unwrap_or_else(|| panic!("{}: no {key} result for {name}", path.display()));
    let num = |v: Option<&JsonValue>| match v {
        Some(JsonValue::Number(x)) => *x,
        other => panic!("expected a number, found {other:?}"),
    };
    let clips = r
        .get("clips")
        .and_then(JsonValue::as_array)
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.get("id").and_then(JsonValue::as_str).unwrap().to_owned(),
                num(c.get("errors")) as usize,
                c.get("text")
                    .and_then(JsonValue::as_str)
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    (clips, num(r.get("wer")))
}

fn accuracy(name: &str, key: &str, beam_size: usize) {
    let m = model(name);
    let opts = TranscribeOptions {
        beam_size,
        ..Default::default()
    };
    let mut all = clips();
    if cfg!(target_arch = "aarch64") {
        // Under qemu: the shortest clip only.
        all.retain(|c| c.id.ends_with("0880"));
    }
    let (ref_clips, ref_wer) = reference(name, key);
    let (mut errors, mut words, mut ref_errors) = (0, 0, 0);
    for c in &all {
        let t = m.transcribe(&c.samples, &opts).unwrap();
        let (r, h) = (normalize(&c.reference), normalize(&t.text));
        let e = edit_distance(&r, &h);
        eprintln!(
            "{name} {}: {e} errors / {} words: {:?} ({:.0} ms)",
            c.id,
            r.len(),
            t.text,
            t.timings.total_ms
        );
        assert_eq!(t.language, "en", "{}: language", c.id);
        errors += e;
        words += r.len();
        let (_, ref_e, ref_text) = ref_clips.iter().find(|(id, ..)| *id == c.id).unwrap();
        ref_errors += ref_e;
        if key == "float32" {
            // Greedy decoding gives faster-whisper float32's transcripts word for word (and
            // punctuation for punctuation) with the default, full 30 s encoder window.
            assert_eq!(&t.text, ref_text, "{name} {}: transcript", c.id);
        }
    }
    let wer = errors as f64 / words as f64;
    eprintln!(
        "{name} beam {beam_size}: WER {wer:.4} ({errors}/{words}); faster-whisper {key} {ref_errors} errors (WER {ref_wer:.4} on all five)"
    );
    assert!(
        errors <= ref_errors,
        "{name} beam {beam_size}: {errors} word errors ({wer:.4}) > faster-whisper's {ref_errors} ({key}) on the same clips"
    );
}

#[test]
fn tiny_en_wer_is_at_most_faster_whispers() {
    accuracy(TINY, "float32", 1);
}

#[test]
fn base_wer_is_at_most_faster_whispers() {
    accuracy(BASE, "float32", 1);
}

#[test]
fn tiny_en_beam5_wer_is_at_most_faster_whispers() {
    accuracy(TINY, "float32_beam5", 5);
}

#[test]
fn segments_have_sane_timestamps() {
    let m = model(TINY);
    let c = clips()
        .into_iter()
        .find(|c| c.id.ends_with("0870"))
        .unwrap();
    let dur = c.samples.len() as f32 / 16_000.0;
    let t = m
        .transcribe(&c.samples, &TranscribeOptions::default())
        .unwrap();
    assert!(!t.segments.is_empty());
    let mut prev_end = 0.0f32;
    for s in &t.segments {
        assert!(
            s.start >= prev_end - 1e-3,
            "{s:?} starts before the previous end {prev_end}"
        );
        assert!(s.end > s.start, "{s:?}");
        assert!(s.end <= dur + 0.5, "{s:?} ends after the audio ({dur} s)");
        assert!(!s.text.trim().is_empty());
        assert!(s.avg_logprob < 0.0 && s.avg_logprob > -1.0, "{s:?}");
        assert!(s.no_speech_prob < 0.5, "{s:?}");
        prev_end = s.end;
    }
    // The speech starts within the first second and ends in the last two.
    assert!(t.segments[0].start < 1.0, "{:?}", t.segments);
    assert!(prev_end > dur - 2.0, "{:?}", t.segments);
    let joined: String = t.segments.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(joined.trim(), t.text);
    let tm = t.timings;
    assert!((tm.audio_secs - f64::from(dur)).abs() < 0.01);
    assert_eq!(tm.windows, 1);
    assert!(tm.encode_ms > 0.0 && tm.decode_ms > 0.0 && tm.total_ms >= tm.encode_ms + tm.decode_ms);
}

#[test]
fn silence_gives_no_text() {
    let m = model(TINY);
    let t = m
        .transcribe(&vec![0.0f32; 16_000 * 5], &TranscribeOptions::default())
        .unwrap();
    assert_eq!(t.text, "", "{:?}", t.segments);
    assert!(t.segments.is_empty());
}

#[test]
fn a_raised_cancel_flag_stops_the_transcription() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let m = model(TINY);
    let clip = &clips()[0];
    let flag = Arc::new(AtomicBool::new(true));
    let opts = TranscribeOptions {
        cancel: Some(flag),
        ..Default::default()
    };
    let e = m.transcribe(&clip.samples, &opts).unwrap_err();
    assert!(matches!(e, sotad_engines::Error::Cancelled), "{e}");
    // (A lowered flag is the daemon's every voice turn: tests/tests/voice.rs.)
}

#[test]
fn long_form_audio_keeps_every_clip() {
    let m = model(TINY);
    let all = clips();
    let mut audio = Vec::new();
    for c in &all {
        audio.extend_from_slice(&c.samples);
        audio.extend(std::iter::repeat_n(0.0f32, 16_000 * 2));
    }
    let dur = audio.len() as f32 / 16_000.0;
    assert!(dur > 30.0, "{dur} s");
    let t = m.transcribe(&audio, &TranscribeOptions::default()).unwrap();
    eprintln!(
        "{dur:.1} s: {:?} ({:.0} ms, {} windows)",
        t.text, t.timings.total_ms, t.timings.windows
    );
    assert!(t.timings.windows >= 2);
    let hyp = normalize(&t.text);
    for c in &all {
        let r = normalize(&c.reference);
        let found = r.iter().filter(|w| hyp.contains(w)).count();
        assert!(
            found * 10 >= r.len() * 8,
            "clip {}: only {found} of {} words in {:?}",
            c.id,
            r.len(),
            t.text
        );
    }
    let mut prev = 0.0;
    for s in &t.segments {
        assert!(
            s.start >= prev - 1e-3 && s.end > s.start && s.end <= dur + 0.5,
            "{s:?}"
        );
        prev = s.end;
    }
    assert!(prev > 30.0, "last segment ends at {prev}");
}

#[test]
fn wav_of_any_rate_and_channels() {
    let m = model(TINY);
    let c = clips()
        .into_iter()
        .find(|c| c.id.ends_with("0930"))
        .unwrap();
    let up = resample_mono(&c.samples, 16_000, 44_100).unwrap();
    let stereo: Vec<f32> = up.iter().flat_map(|&x| [x, x * 0.5]).collect();
    let bytes = encode_wav_i16(&stereo, 44_100, 2);
    let t = m
        .transcribe_wav(&bytes, &TranscribeOptions::default())
        .unwrap();
    let b = normalize(&t.text);
    assert!(
        edit_distance(&normalize(&c.reference), &b) <= 1,
        "{:?}",
        t.text
    );
    if !cfg!(target_arch = "aarch64") {
        let mono = m
            .transcribe(&c.samples, &TranscribeOptions::default())
            .unwrap();
        let a = normalize(&mono.text);
        assert!(
            edit_distance(&a, &b) <= 1,
            "{:?} vs {:?}",
            mono.text,
            t.text
        );
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    fn shareable<T: Send + Sync>(_: &T) {}
    let m = model(TINY);
    shareable(m);
    let o = TranscribeOptions::default();
    let msg = |r: sotad_engines::Result<_>| match r {
        Ok(t) => panic!("expected an error, got {t:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg(m.transcribe(&[], &o)).contains("empty"));
    let mut nan = vec![0.1f32; 1000];
    nan[500] = f32::NAN;
    assert!(msg(m.transcribe(&nan, &o)).contains("sample 500"));
    assert!(msg(m.transcribe_wav(b"", &o)).contains("WAV"));
    assert!(msg(m.transcribe_wav(b"RIFF\x10\x00\x00\x00WAVEjunk", &o)).contains("WAV"));
    let empty = encode_wav_i16(&[], 16_000, 1);
    assert!(msg(m.transcribe_wav(&empty, &o)).contains("empty"));
    let mut float64 = encode_wav_i16(&[0.0; 10], 16_000, 1);
    float64[20] = 7; // format tag 7: mu-law
    assert!(msg(m.transcribe_wav(&float64, &o)).contains("format"));
    let beam = TranscribeOptions {
        beam_size: 0,
        ..Default::default()
    };
    assert!(msg(m.transcribe(&[0.0; 16_000], &beam)).contains("beam_size"));
    let tr = TranscribeOptions {
        task: Task::Translate,
        ..Default::default()
    };
    assert!(msg(m.transcribe(&[0.0; 16_000], &tr)).contains("English-only"));
    // The caller's mistakes are told apart from the engine's failures, with the input at
    // fault (the daemon answers them as invalid_request / invalid_audio, not internal).
    let field = |r: sotad_engines::Result<_>| match r {
        Err(sotad_engines::Error::InvalidInput { field, .. }) => field,
        Err(e) => panic!("expected InvalidInput, got {e}"),
        Ok(_) => panic!("expected an error"),
    };
    assert_eq!(field(m.transcribe(&[0.0; 16_000], &tr)), "task");
    assert_eq!(field(m.transcribe(&[], &o)), "audio");
    assert_eq!(field(m.transcribe(&nan, &o)), "audio");
    assert_eq!(field(m.transcribe(&[f32::INFINITY; 10], &o)), "audio");
    assert_eq!(field(m.transcribe_wav(&empty, &o)), "audio");
    assert_eq!(field(m.transcribe(&[0.0; 16_000], &beam)), "beam_size");
    let xx = TranscribeOptions {
        language: Some("xx".into()),
        ..Default::default()
    };
    assert_eq!(field(m.transcribe(&[0.0; 16_000], &xx)), "language");
    let de = TranscribeOptions {
        language: Some("de".into()),
        ..Default::default()
    };
    assert!(msg(m.transcribe(&[0.0; 16_000], &de)).contains("English-only"));
    let temps = TranscribeOptions {
        temperatures: vec![],
        ..Default::default()
    };
    assert!(msg(m.transcribe(&[0.0; 16_000], &temps)).contains("temperatures"));

    let missing = models_dir().join("no-such-whisper");
    let e = Whisper::load(&missing, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-whisper"), "{e}");
}

#[test]
fn multilingual_model_detects_english_and_takes_a_language() {
    let m = model(BASE);
    assert!(m.is_multilingual());
    let c = clips()
        .into_iter()
        .find(|c| c.id.ends_with("0930"))
        .unwrap();
    let t = m
        .transcribe(&c.samples, &TranscribeOptions::default())
        .unwrap();
    assert_eq!(t.language, "en");
    assert!(t.language_prob.unwrap() > 0.5, "{:?}", t.language_prob);
    if !cfg!(target_arch = "aarch64") {
        let given = TranscribeOptions {
            language: Some("en".into()),
            ..Default::default()
        };
        let t2 = m.transcribe(&c.samples, &given).unwrap();
        assert_eq!(t2.text, t.text);
        assert_eq!(t2.language_prob, None);
    }
    let bad = TranscribeOptions {
        language: Some("xx".into()),
        ..Default::default()
    };
    assert!(
        m.transcribe(&c.samples, &bad)
            .unwrap_err()
            .to_string()
            .contains("xx")
    );
}

#[test]
fn initial_prompt_is_tokenized_and_used() {
    let m = model(TINY);
    let tok = m.tokenizer();
    let ids = tok
        .encode(" Mr. Dashwood's cold-hearted, ill-disposed son.")
        .unwrap();
    assert_eq!(
        tok.decode(&ids),
        " Mr. Dashwood's cold-hearted, ill-disposed son."
    );
    assert!(ids.len() < 20, "{ids:?}: BPE merges were not applied");
    let c = clips()
        .into_iter()
        .find(|c| c.id.ends_with("0880"))
        .unwrap();
    let o = TranscribeOptions {
        initial_prompt: Some("He was not an ill-disposed young man.".into()),
        ..Default::default()
    };
    let t = m.transcribe(&c.samples, &o).unwrap();
    let e = edit_distance(&normalize(&c.reference), &normalize(&t.text));
    assert!(e <= 1, "{:?}", t.text);
}
