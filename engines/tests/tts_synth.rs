//! Text to speech through the public API ([`Voice`]) on the real joe-medium voice.
//!
//! - Streaming: one chunk per sentence, the first before the rest are synthesized, audible
//!   audio of a plausible length; a 100 kB text starts at once and stops when asked, with
//!   bounded memory.
//! - Phoneme ids from text (espeak-ng 1.51 as a process) against piper-tts 1.8.0's
//!   (`tests/data/piper/phoneme_ids.tsv`): same sentences, same lengths, differences only in
//!   stress marks.
//! - Determinism: the same seed gives the same audio, another seed different audio.
//! - Bad input: empty text, unknown speaker, bad scales and ids, control characters, a
//!   missing voice file or espeak-ng program, each with an error naming it.

mod common;

use common::models_dir;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use sotad_engines::tts::{AudioChunk, LoadOptions, SynthOptions, Synthesizer, TtsErrorKind, Voice};

fn joe_path() -> PathBuf {
    let path = models_dir().join("piper/en_US-joe-medium.onnx");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

fn joe() -> &'static Voice {
    static VOICE: OnceLock<Voice> = OnceLock::new();
    VOICE.get_or_init(|| Voice::load(joe_path(), &LoadOptions::default()).unwrap())
}

fn rms(s: &[f32]) -> f64 {
    (s.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / s.len().max(1) as f64).sqrt()
}

fn kind(e: &sotad_engines::Error) -> &TtsErrorKind {
    &e.as_tts()
        .unwrap_or_else(|| panic!("not a TTS error: {e}"))
        .kind
}

#[test]
fn streams_one_chunk_per_sentence() {
    let voice = joe();
    assert_eq!(voice.sample_rate(), 22050);
    // Under qemu (aarch64 CI), two sentences instead of three.
    let (text, n) = if cfg!(target_arch = "aarch64") {
        ("Hello, world! This is sotad speaking.", 2)
    } else {
        (
            "Hello, world! This is sotad speaking. It runs on a small board.",
            3,
        )
    };
    let mut chunks: Vec<(usize, String, String, Vec<f32>, std::time::Instant)> = Vec::new();
    let stats = voice
        .synthesize(text, &SynthOptions::default(), |c: &AudioChunk<'_>| {
            chunks.push((
                c.index,
                c.text.to_owned(),
                c.phonemes.to_owned(),
                c.samples.to_vec(),
                std::time::Instant::now(),
            ));
            ControlFlow::Continue(())
        })
        .unwrap();
    println!("{stats:?} rtf {:.3}", stats.rtf());
    assert_eq!(
        chunks.len(),
        n,
        "{:?}",
        chunks.iter().map(|c| &c.1).collect::<Vec<_>>()
    );
    assert_eq!(stats.chunks, n);
    assert!(!stats.stopped);
    assert_eq!(stats.unknown_phonemes, 0);
    assert_eq!(chunks[0].1, "Hello, world!");
    if n == 3 {
        assert_eq!(chunks[2].1, "It runs on a small board.");
    }
    assert!(chunks[1].2.contains("spˈiːkɪŋ"), "{}", chunks[1].2);
    // Chunks arrive one by one, each when its sentence is done: the later sentences' work lies
    // between the first chunk and the last. Had the call synthesized everything before
    // handing anything over, they would come microseconds apart. (Not a ratio of the first
    // chunk's time to the total: the tests of this file run side by side, and under qemu the
    // first sentence can take most of the call while the other tests hold the cores.)
    let spread_ms = (chunks[n - 1].4 - chunks[0].4).as_secs_f64() * 1e3;
    println!("last chunk {spread_ms:.1} ms after the first");
    assert!(
        spread_ms > stats.total_ms * 0.02,
        "last chunk {spread_ms:.1} ms after the first; {stats:?}"
    );
    let mut total = 0;
    for (i, (index, text, _, samples, _)) in chunks.iter().enumerate() {
        assert_eq!(*index, i);
        let secs = samples.len() as f64 / 22050.0;
        // About 0.07 to 0.2 s per character of text.
        let chars = text.chars().count() as f64;
        assert!(
            secs > chars * 0.03 && secs < chars * 0.25,
            "{text:?}: {secs} s"
        );
        assert_eq!(samples.len() % 256, 0, "whole frames");
        let peak = samples.iter().fold(0f32, |m, &v| m.max(v.abs()));
        assert!(
            (peak - 1.0).abs() < 1e-5,
            "normalized to peak 1, got {peak}"
        );
        assert!(rms(samples) > 0.05, "{text:?}: rms {}", rms(samples));
        total += samples.len();
    }
    assert_eq!(stats.samples, total);
    // The trait object gives the same stream.
    let dynamic: &dyn Synthesizer = voice;
    // (Under qemu, only its first chunk, then it is stopped.)
    let want = if cfg!(target_arch = "aarch64") { 1 } else { n };
    let mut seen = 0;
    let s2 = dynamic
        .synthesize_dyn(text, &SynthOptions::default(), &mut |c| {
            assert_eq!(c.samples, &chunks[seen].3[..]);
            seen += 1;
            if seen == want {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(seen, want);
    assert_eq!(s2.chunks, want);
    assert!(s2.stopped);
}

#[test]
fn same_seed_same_audio_other_seed_differs() {
    let voice = joe();
    let (ids, unknown) = voice.phoneme_ids("Testing one two.").unwrap();
    assert_eq!(unknown, 0);
    assert_eq!(ids.len(), 1);
    let opts = |seed| SynthOptions {
        seed,
        ..SynthOptions::default()
    };
    let a = voice.synthesize_ids(&ids[0], &opts(7)).unwrap();
    let b = voice.synthesize_ids(&ids[0], &opts(7)).unwrap();
    let c = voice.synthesize_ids(&ids[0], &opts(8)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Slower speech is longer; zero noise is deterministic whatever the seed (not under
    // qemu, where each synthesis takes long).
    if cfg!(target_arch = "aarch64") {
        return;
    }
    let quiet = |seed, length_scale| SynthOptions {
        seed,
        noise_scale: Some(0.0),
        noise_w: Some(0.0),
        length_scale: Some(length_scale),
        ..SynthOptions::default()
    };
    let d = voice.synthesize_ids(&ids[0], &quiet(1, 1.0)).unwrap();
    let f = voice.synthesize_ids(&ids[0], &quiet(1, 1.5)).unwrap();
    let e = voice.synthesize_ids(&ids[0], &quiet(2, 1.0)).unwrap();
    assert_eq!(d, e);
    assert!(
        f.len() as f64 > d.len() as f64 * 1.3,
        "{} vs {}",
        f.len(),
        d.len()
    );
}

struct Row {
    text: String,
    ids: Vec<Vec<i64>>,
}

fn piper_rows() -> Vec<Row> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/piper/phoneme_ids.tsv");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            Row {
                text: cols[0].to_owned(),
                ids: cols[2]
                    .split(" | ")
                    .map(|s| s.split(' ').map(|n| n.parse().unwrap()).collect())
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn text_ids_match_piper_up_to_stress() {
    let voice = joe();
    let map = &voice.piper().config().phoneme_id_map;
    let stress = [map["ˈ"][0], map["ˌ"][0]];
    let (mut equal, mut total) = (0, 0);
    for row in piper_rows() {
        let (ours, unknown) = voice.phoneme_ids(&row.text).unwrap();
        assert_eq!(unknown, 0);
        assert_eq!(ours.len(), row.ids.len(), "{:?}: sentences", row.text);
        for (a, b) in ours.iter().zip(&row.ids) {
            assert_eq!(a.len(), b.len(), "{:?}", row.text);
            for (x, y) in a.iter().zip(b) {
                total += 1;
                if x == y {
                    equal += 1;
                } else {
                    assert!(
                        stress.contains(x) && stress.contains(y),
                        "{:?}: {x} vs {y}",
                        row.text
                    );
                }
            }
        }
    }
    println!("{equal}/{total} ids equal to piper-tts's");
    assert!(equal + 4 >= total, "{equal}/{total}");
}

#[test]
fn long_text_streams_and_stops() {
    let voice = joe();
    // Under qemu a shorter sentence (the text is still 100 kB).
    let sentence = if cfg!(target_arch = "aarch64") {
        "The robot reads on. "
    } else {
        "The robot reads a very long book aloud, one sentence at a time. "
    };
    let text = sentence.repeat(100_000 / sentence.len() + 1);
    assert!(text.len() >= 100_000);
    let rss_before = peak_rss_kib();
    let wanted = if cfg!(target_arch = "aarch64") { 1 } else { 2 };
    let mut got = 0;
    let stats = voice
        .synthesize(&text, &SynthOptions::default(), |c| {
            assert!(c.samples.len() > 22050 / 2);
            got += 1;
            if got == wanted {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    println!("{stats:?}");
    assert!(stats.stopped);
    assert_eq!(stats.chunks, wanted);
    // Only the first sentences of ~1500 were synthesized: the call did not touch the rest.
    assert!(
        stats.total_ms < stats.first_audio_ms * (wanted as f64 + 2.0),
        "{stats:?}"
    );
    let grown = peak_rss_kib().saturating_sub(rss_before);
    assert!(grown < 300 * 1024, "peak RSS grew by {grown} KiB");
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn odd_characters_are_skipped_or_read() {
    let voice = joe();
    // A NUL and a bell are dropped; espeak-ng reads the emoji's name, as it does for Piper.
    let stats = voice
        .synthesize("Hi\u{0} there\u{7} 🙂.", &SynthOptions::default(), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.dropped_chars, 2);
    assert_eq!(stats.chunks, 1);
    assert!(stats.audio_secs > 0.8, "{stats:?}");
}

#[test]
fn bad_input_is_an_error() {
    let voice = joe();
    let none = |_: &AudioChunk<'_>| ControlFlow::Continue(());
    for text in ["", "   \n\n ", "... ?!", "🙂🙂"] {
        let e = voice
            .synthesize(text, &SynthOptions::default(), none)
            .unwrap_err();
        assert!(
            matches!(kind(&e), TtsErrorKind::EmptyText { .. }),
            "{text:?}: {e}"
        );
    }
    let e = voice
        .synthesize(
            "Hi.",
            &SynthOptions {
                speaker: Some(1),
                ..SynthOptions::default()
            },
            none,
        )
        .unwrap_err();
    assert!(
        matches!(
            kind(&e),
            TtsErrorKind::UnknownSpeaker {
                id: 1,
                n_speakers: 1
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("speaker 1"), "{e}");
    for opts in [
        SynthOptions {
            noise_scale: Some(f32::NAN),
            ..SynthOptions::default()
        },
        SynthOptions {
            length_scale: Some(0.0),
            ..SynthOptions::default()
        },
        SynthOptions {
            noise_w: Some(-1.0),
            ..SynthOptions::default()
        },
    ] {
        let e = voice.synthesize("Hi.", &opts, none).unwrap_err();
        assert!(matches!(kind(&e), TtsErrorKind::BadInput { .. }), "{e}");
        let e = voice.synthesize_ids(&[1, 0, 20, 0, 2], &opts).unwrap_err();
        assert!(matches!(kind(&e), TtsErrorKind::BadInput { .. }), "{e}");
    }
    for ids in [&[][..], &[1, 0, 256, 0, 2][..], &[1, -3, 2][..]] {
        let e = voice
            .synthesize_ids(ids, &SynthOptions::default())
            .unwrap_err();
        assert!(
            matches!(
                kind(&e),
                TtsErrorKind::BadInput {
                    name: "phoneme_ids",
                    ..
                }
            ),
            "{e}"
        );
    }

    let missing = models_dir().join("piper/no-such-voice.onnx");
    let e = Voice::load(&missing, &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no-such-voice.onnx"), "{e}");

    let piper = sotad_engines::tts::PiperVoice::open(joe_path()).unwrap();
    let opts = LoadOptions {
        threads: 1,
        espeak: Some(PathBuf::from("/nonexistent/espeak-ng")),
    };
    let v = Voice::from_piper(piper, &opts).unwrap();
    let e = v
        .synthesize("Hi.", &SynthOptions::default(), none)
        .unwrap_err();
    assert!(matches!(kind(&e), TtsErrorKind::Espeak { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/espeak-ng"), "{e}");
}

/// With `SynthOptions::chunks`, the first sentence comes in pieces that put together equal
/// its whole-sentence audio (noise 0, no normalization); later sentences come whole; with
/// normalization no sample exceeds 1.
#[test]
fn first_sentence_comes_in_pieces() {
    use sotad_engines::tts::{DecodeChunks, STREAM_MAX_GAIN};
    let voice = joe();
    // Under qemu (aarch64 CI) one sentence.
    let (text, n) = if cfg!(target_arch = "aarch64") {
        ("This is sotad.", 1)
    } else {
        ("This is sotad speaking. Hello!", 2)
    };
    let raw = SynthOptions {
        noise_scale: Some(0.0),
        noise_w: Some(0.0),
        normalize: false,
        ..SynthOptions::default()
    };
    let chunks = DecodeChunks {
        first_frames: 16,
        max_frames: 32,
    };
    let collect = |opts: &SynthOptions| {
        let mut got: Vec<(usize, bool, Vec<f32>)> = Vec::new();
        let stats = voice
            .synthesize(text, opts, |c| {
                got.push((c.sentence, c.sentence_end, c.samples.to_vec()));
                ControlFlow::Continue(())
            })
            .unwrap();
        (stats, got)
    };
    let (whole_stats, whole) = collect(&raw);
    assert_eq!(whole.len(), n);
    assert_eq!(whole_stats.sentences, n);
    let (stats, pieces) = collect(&SynthOptions {
        chunks,
        ..raw.clone()
    });
    println!(
        "whole: first audio {:.0} ms of {:.0}; pieces: first audio {:.0} ms of {:.0}, {} chunks",
        whole_stats.first_audio_ms,
        whole_stats.total_ms,
        stats.first_audio_ms,
        stats.total_ms,
        stats.chunks
    );
    assert_eq!(stats.sentences, n);
    assert_eq!(stats.chunks, pieces.len());
    let first: Vec<&(usize, bool, Vec<f32>)> = pieces.iter().filter(|p| p.0 == 0).collect();
    assert!(first.len() >= 3, "{} pieces", first.len());
    assert_eq!(first[0].2.len(), 16 * 256);
    assert!(first[..first.len() - 1].iter().all(|p| !p.1) && first.last().unwrap().1);
    let joined: Vec<f32> = first.iter().flat_map(|p| p.2.iter().copied()).collect();
    assert_eq!(joined.len(), whole[0].2.len());
    let diff = joined
        .iter()
        .zip(&whole[0].2)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-4, "max abs diff {diff}");
    if n == 2 {
        // The second sentence: one piece, equal to the whole run's.
        let second: Vec<_> = pieces.iter().filter(|p| p.0 == 1).collect();
        assert_eq!(second.len(), 1);
        assert!(second[0].1);
        assert_eq!(second[0].2, whole[1].2);
    }
    // Normalized: the pieces of the first sentence scaled by at most STREAM_MAX_GAIN, never
    // above 1; a whole sentence to a peak of 1.
    let (_, normalized) = collect(&SynthOptions {
        chunks,
        normalize: true,
        ..raw
    });
    assert_eq!(normalized.len(), pieces.len());
    for (p, r) in normalized.iter().zip(&pieces) {
        let peak = p.2.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let raw_peak = r.2.iter().fold(0f32, |m, &v| m.max(v.abs()));
        println!(
            "sentence {}: raw peak {raw_peak:.3}, normalized {peak:.3}",
            p.0
        );
        assert!(peak <= 1.0, "{peak}");
        if p.0 == 0 {
            assert!(peak >= raw_peak * 0.999 && peak <= raw_peak * STREAM_MAX_GAIN * 1.001);
        } else {
            assert!((peak - 1.0).abs() < 1e-5, "{peak}");
        }
    }
}
