//! The endpointer on synthetic probability sequences, the energy gate on synthetic levels,
//! and the whole detector (gate + Silero + endpointer) on real LibriVox clips padded with
//! silence and mixed with noise.

mod common;

use sotad_engines::audio::read_wav;
use sotad_engines::vad::{
    EndReason, EndpointConfig, Endpointer, EnergyGate, GateConfig, SileroVad, VadEvent,
    VoiceDetector, VoiceDetectorConfig, WINDOW, rms_db,
};

const W: u64 = WINDOW as u64;

fn cfg() -> EndpointConfig {
    EndpointConfig {
        sample_rate: 16_000,
        threshold: 0.5,
        neg_threshold: 0.35,
        min_speech_ms: 96,        // 3 windows
        pre_roll_ms: 64,          // 2 windows
        trailing_silence_ms: 160, // 5 windows
        max_utterance_ms: 30_000,
        pause_ms: 0,
    }
}

/// Window `i` holds the sample values i*512 .. i*512+511 (as f32), so any slice of the
/// output says exactly which stream positions it came from.
fn window(i: u64) -> Vec<f32> {
    (i * W..(i + 1) * W).map(|x| x as f32).collect()
}

/// Feeds `probs`, returning (window index, event) pairs.
/// Window indices continue from where the endpointer is.
fn feed(ep: &mut Endpointer, probs: &[f32]) -> Vec<(usize, VadEvent)> {
    let first = ep.position() / W;
    probs
        .iter()
        .enumerate()
        .filter_map(|(i, &p)| ep.push(&window(first + i as u64), p).map(|e| (i, e)))
        .collect()
}

fn assert_contiguous(samples: &[f32], start: u64) {
    for (k, &s) in samples.iter().enumerate() {
        assert_eq!(s, (start + k as u64) as f32, "sample {k} of an event");
    }
}

#[test]
fn one_utterance_with_pre_roll_and_trailing_silence() {
    let mut ep = Endpointer::new(cfg());
    // 10 silent windows, 20 speech, 10 silent.
    let mut probs = vec![0.01; 10];
    probs.extend(vec![0.9; 20]);
    probs.extend(vec![0.05; 10]);
    let events = feed(&mut ep, &probs);
    assert_eq!(events.len(), 2, "{events:?}");
    match &events[0] {
        (
            i,
            VadEvent::SpeechStart {
                pre_roll,
                start,
                at,
            },
        ) => {
            assert_eq!(*i, 12, "start after 3 speech windows");
            assert_eq!(*start, 8 * W, "two windows of pre-roll");
            assert_eq!(*at, 13 * W);
            assert_eq!(pre_roll.len() as u64, 5 * W);
            assert_contiguous(pre_roll, *start);
        }
        e => panic!("{e:?}"),
    }
    match &events[1] {
        (
            i,
            VadEvent::SpeechEnd {
                utterance,
                start,
                speech_end,
                at,
                reason,
            },
        ) => {
            assert_eq!(*reason, EndReason::Silence);
            assert_eq!(*speech_end, 30 * W);
            assert_eq!(*i, 34, "end after 5 silent windows");
            assert_eq!(*at, 35 * W);
            assert_eq!(*start, 8 * W);
            assert_eq!(utterance.len() as u64, at - start);
            assert_contiguous(utterance, *start);
        }
        e => panic!("{e:?}"),
    }
    assert!(!ep.in_speech());
}

#[test]
fn blips_shorter_than_min_speech_are_ignored() {
    let mut ep = Endpointer::new(cfg());
    let mut probs = Vec::new();
    for _ in 0..20 {
        probs.extend([0.9, 0.9, 0.1, 0.0]); // two speech windows, never three
    }
    assert!(feed(&mut ep, &probs).is_empty());
    assert!(!ep.active());
    // Pre-roll memory stays bounded to pre_roll (+ one window).
    let mut probs = vec![0.0; 10];
    probs.extend([0.9; 3]);
    let ev = feed(&mut ep, &probs);
    match &ev[..] {
        [
            (
                _,
                VadEvent::SpeechStart {
                    pre_roll, start, ..
                },
            ),
        ] => {
            assert_eq!(pre_roll.len() as u64, 5 * W);
            assert_contiguous(pre_roll, *start);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn hysteresis_and_short_pauses_keep_the_utterance() {
    let mut ep = Endpointer::new(cfg());
    let mut probs = vec![0.9; 5];
    probs.extend([0.4; 10]); // between neg_threshold and threshold: still speech
    probs.extend([0.1; 4]); // a pause shorter than the trailing silence
    probs.extend([0.9; 5]);
    probs.extend([0.1; 5]);
    let ev = feed(&mut ep, &probs);
    assert_eq!(ev.len(), 2, "{ev:?}");
    match &ev[1] {
        (
            i,
            VadEvent::SpeechEnd {
                speech_end, reason, ..
            },
        ) => {
            assert_eq!(*reason, EndReason::Silence);
            assert_eq!(*speech_end, 24 * W);
            assert_eq!(*i, 28);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn pauses_are_reported_before_the_endpoint_and_resumes_after_them() {
    let mut ep = Endpointer::new(EndpointConfig {
        pause_ms: 64, // 2 windows
        ..cfg()
    });
    // 5 silent, 10 speech, 3 silent (a pause, then speech again), 6 speech, 8 silent.
    let mut probs = vec![0.01; 5];
    probs.extend(vec![0.9; 10]);
    probs.extend(vec![0.1; 3]);
    probs.extend(vec![0.9; 6]);
    probs.extend(vec![0.1; 8]);
    let events = feed(&mut ep, &probs);
    let kinds: Vec<_> = events
        .iter()
        .map(|(i, e)| {
            let k = match e {
                VadEvent::SpeechStart { .. } => "start",
                VadEvent::Pause { .. } => "pause",
                VadEvent::Resume { .. } => "resume",
                VadEvent::SpeechEnd { .. } => "end",
            };
            (*i, k)
        })
        .collect();
    // The first pause: 2 silent windows after window 14; speech resumes at window 18;
    // the second pause 2 windows after window 23, the endpoint 5 windows after it.
    assert_eq!(
        kinds,
        [
            (7, "start"),
            (16, "pause"),
            (18, "resume"),
            (25, "pause"),
            (28, "end")
        ]
    );
    let (
        VadEvent::Pause {
            utterance: paused,
            start: pause_start,
            speech_end: pause_speech_end,
        },
        VadEvent::SpeechEnd {
            utterance,
            start,
            speech_end,
            ..
        },
    ) = (&events[3].1, &events[4].1)
    else {
        panic!("{events:?}");
    };
    assert_eq!(pause_start, start);
    assert_eq!(pause_speech_end, speech_end);
    assert_eq!(*speech_end, 24 * W);
    // The pause's audio is the utterance up to two windows after the speech, and the
    // final utterance begins with exactly those samples.
    assert_eq!(paused.len() as u64, 26 * W - start);
    assert_eq!(&utterance[..paused.len()], &paused[..]);
    assert_contiguous(paused, *start);
    // Off by default: the same input gives no pause events.
    let mut ep = Endpointer::new(cfg());
    assert!(
        feed(&mut ep, &probs)
            .iter()
            .all(|(_, e)| !matches!(e, VadEvent::Pause { .. } | VadEvent::Resume { .. }))
    );
}

#[test]
fn a_pause_can_be_ended_early_as_complete() {
    let mut ep = Endpointer::new(EndpointConfig {
        pause_ms: 64, // 2 windows
        ..cfg()
    });
    // Not in a pause: nothing to end, nothing changes.
    assert!(ep.end_paused().is_none());
    let mut probs = vec![0.01; 5];
    probs.extend(vec![0.9; 10]);
    let events = feed(&mut ep, &probs);
    assert!(
        matches!(events[..], [(_, VadEvent::SpeechStart { .. })]),
        "{events:?}"
    );
    assert!(ep.in_speech());
    assert_eq!(ep.paused_for(), None);
    assert!(ep.end_paused().is_none(), "speech under way is not a pause");
    // Two silent windows: the pause.
    let events = feed(&mut ep, &[0.1, 0.1]);
    let VadEvent::Pause {
        utterance: paused,
        start: pause_start,
        ..
    } = &events[0].1
    else {
        panic!("{events:?}");
    };
    assert_eq!(ep.paused_for(), Some(2 * W));
    // One more silent window, then the caller ends it (the silence alone needs five).
    assert!(feed(&mut ep, &[0.1]).is_empty());
    assert_eq!(ep.paused_for(), Some(3 * W));
    let Some(VadEvent::SpeechEnd {
        utterance,
        start,
        speech_end,
        at,
        reason,
    }) = ep.end_paused()
    else {
        panic!("no end");
    };
    assert_eq!(reason, EndReason::Complete);
    assert_eq!(start, *pause_start);
    assert_eq!(speech_end, 15 * W);
    assert_eq!(at, 18 * W);
    assert_eq!(&utterance[..paused.len()], &paused[..]);
    assert_eq!(utterance.len() as u64, at - start);
    assert_contiguous(&utterance, start);
    // Idle again: silence ends nothing more, and new speech starts a new utterance.
    assert!(!ep.active());
    assert_eq!(ep.paused_for(), None);
    assert!(feed(&mut ep, &[0.1; 8]).is_empty());
    let events = feed(&mut ep, &[0.9; 4]);
    assert!(
        matches!(events[..], [(_, VadEvent::SpeechStart { .. })]),
        "{events:?}"
    );
}

#[test]
fn max_utterance_cuts_and_speech_restarts() {
    let mut c = cfg();
    c.max_utterance_ms = 640; // 20 windows
    let mut ep = Endpointer::new(c);
    let ev = feed(&mut ep, &[0.9; 50]);
    let ends: Vec<_> = ev
        .iter()
        .filter_map(|(i, e)| match e {
            VadEvent::SpeechEnd {
                utterance, reason, ..
            } => Some((*i, utterance.len(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(ends.len(), 2, "{ev:?}");
    assert_eq!(ends[0], (19, 20 * WINDOW, EndReason::MaxLength));
    // The second utterance starts fresh (no pre-roll left after a cut), 20 windows again.
    assert_eq!(ends[1].2, EndReason::MaxLength);
    assert!(ends[1].1 <= 22 * WINDOW);
    let starts = ev
        .iter()
        .filter(|(_, e)| matches!(e, VadEvent::SpeechStart { .. }))
        .count();
    assert_eq!(starts, 3);
}

#[test]
fn flush_and_nan() {
    let mut ep = Endpointer::new(cfg());
    let ev = feed(&mut ep, &[0.9, 0.9, 0.9, 0.9, f32::NAN, f32::NAN]);
    assert_eq!(ev.len(), 1);
    assert!(
        ep.in_speech(),
        "NaN counts as silence, but 2 windows do not end it"
    );
    match ep.flush() {
        Some(VadEvent::SpeechEnd {
            reason, utterance, ..
        }) => {
            assert_eq!(reason, EndReason::Flushed);
            assert_eq!(utterance.len(), 6 * WINDOW);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(ep.flush(), None);
}

fn tone(level_db: f32, n: usize) -> Vec<f32> {
    // A sine with RMS level_db dBFS.
    let amp = 10f32.powf(level_db / 20.0) * std::f32::consts::SQRT_2;
    (0..n).map(|i| amp * (i as f32 * 0.3).sin()).collect()
}

#[test]
fn gate_levels_floor_and_hangover() {
    assert!((rms_db(&tone(-20.0, 16_000)) + 20.0).abs() < 0.05);
    assert_eq!(rms_db(&[0.0; 512]), -120.0);
    assert_eq!(rms_db(&[f32::NAN; 512]), -120.0);

    let g = GateConfig {
        min_db: -55.0,
        margin_db: 9.0,
        rise_db_per_s: 3.0,
        hangover_ms: 96,
    };
    let mut gate = EnergyGate::new(g, 16_000);
    // Digital silence: closed. A loud window opens it, hangover keeps it open 3 windows.
    assert!(!gate.push(&[0.0; 512], false).open);
    assert!(gate.push(&tone(-30.0, 512), false).open);
    for k in 0..3 {
        assert!(gate.push(&[0.0; 512], false).open, "hangover window {k}");
    }
    assert!(!gate.push(&[0.0; 512], false).open);
    // Below min_db never opens, even far above the floor.
    assert!(!gate.push(&tone(-60.0, 512), false).open);
    // A steady -35 dBFS hum: open at first, then the floor learns it (3 dB/s from
    // -60: about 9 s) and the gate closes; a louder voice on top opens it again.
    let hum = tone(-35.0, 512);
    let opened: Vec<bool> = (0..400).map(|_| gate.push(&hum, false).open).collect();
    assert!(opened[0]);
    let closed_at = opened
        .iter()
        .position(|&o| !o)
        .expect("gate learns the hum");
    assert!(
        (150..350).contains(&closed_at),
        "closed after {closed_at} windows"
    );
    assert!(opened[closed_at..].iter().all(|&o| !o));
    assert!(gate.push(&tone(-20.0, 512), false).open);
    // While speech is active the floor does not rise.
    let floor = gate.floor_db();
    for _ in 0..100 {
        gate.push(&tone(-20.0, 512), true);
    }
    assert_eq!(gate.floor_db(), floor);
}

// ----- real clips ---------------------------------------------------------------------------

const CLIPS: [&str; 5] = [
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
];

fn load_clip(name: &str) -> Vec<f32> {
    let p = common::models_dir().join("speech/librivox").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-models.sh",
        p.display()
    );
    read_wav(&p).unwrap().samples
}

/// The "true" speech boundaries of a clip: first and last 10 ms frame at least 15 dB above
/// the clip's room tone (its 10th-percentile frame level) and within 30 dB of its loudest.
/// The LibriVox clips are read speech cut with 0.1-0.4 s of room tone at -45..-55 dBFS.
pub fn speech_bounds(clip: &[f32]) -> (usize, usize) {
    let levels: Vec<f32> = clip.chunks(160).map(rms_db).collect();
    let mut sorted = levels.clone();
    sorted.sort_by(f32::total_cmp);
    let floor = sorted[sorted.len() / 10];
    let peak = sorted[sorted.len() - 1];
    let thr = (floor + 15.0).max(peak - 30.0);
    let first = levels.iter().position(|&l| l > thr).unwrap();
    let last = levels.iter().rposition(|&l| l > thr).unwrap();
    (first * 160, ((last + 1) * 160).min(clip.len()))
}

#[test]
fn real_clips_padded_with_silence_and_noise_give_one_utterance_each() {
    let model_path = common::models_dir().join("silero-vad/silero_vad_16k_op15.onnx");
    assert!(
        model_path.exists(),
        "{} missing: run scripts/install-models.sh",
        model_path.display()
    );
    let n_clips = if cfg!(target_arch = "aarch64") {
        2
    } else {
        CLIPS.len()
    };
    let mut rng = common::Rng(42);
    for (ci, name) in CLIPS.iter().take(n_clips).enumerate() {
        let clip = load_clip(name);
        let (s, e) = speech_bounds(&clip);
        let pad_before = 16_000;
        let mut audio = vec![0f32; pad_before];
        audio.extend(&clip);
        audio.extend(vec![0f32; 32_000]);
        // Alternate: clean, then white noise at about -50 dBFS (~30 dB below the speech).
        if ci % 2 == 1 {
            for x in audio.iter_mut() {
                *x += rng.f32() * 0.011;
            }
        }
        let true_start = (pad_before + s) as u64;
        let true_end = (pad_before + e) as u64;
        let cfg = VoiceDetectorConfig {
            gate: Some(GateConfig::default()),
            endpoint: EndpointConfig::default(),
        };
        let trailing = u64::from(cfg.endpoint.trailing_silence_ms) * 16;
        let mut det = VoiceDetector::new(SileroVad::load(&model_path).unwrap(), cfg);
        let mut events = Vec::new();
        det.push(&audio, &mut events);
        let starts: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, VadEvent::SpeechStart { .. }))
            .collect();
        let ends: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                VadEvent::SpeechEnd {
                    utterance,
                    start,
                    at,
                    reason,
                    ..
                } => Some((utterance, *start, *at, *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(
            (starts.len(), ends.len()),
            (1, 1),
            "{name}: {} events",
            events.len()
        );
        let (utt, start, at, reason) = ends[0];
        assert_eq!(reason, EndReason::Silence, "{name}");
        let delay_ms = (at as i64 - true_end as i64) as f64 / 16.0;
        eprintln!(
            "{name}: speech {:.2}-{:.2} s, utterance from {:.2} s, endpoint {:.2} s, delay {delay_ms:.0} ms, model ran on {}/{} windows",
            true_start as f64 / 16e3,
            true_end as f64 / 16e3,
            start as f64 / 16e3,
            at as f64 / 16e3,
            det.stats().model_runs,
            det.stats().windows
        );
        // The utterance holds all the speech, and the endpoint comes after the trailing
        // silence, give or take the model's own lag and a window of rounding.
        assert!(
            start <= true_start,
            "{name}: utterance starts at {start}, speech at {true_start}"
        );
        assert!(start + utt.len() as u64 >= true_end, "{name}");
        assert!(
            at + 8 * W >= true_end + trailing && at <= true_end + trailing + 12 * W,
            "{name}: endpoint delay {delay_ms} ms with trailing silence {} ms",
            trailing / 16
        );
        // The utterance is the input audio, sample for sample.
        assert_eq!(&audio[start as usize..start as usize + utt.len()], &utt[..]);
        // The gate kept the model asleep in the digital silence of the clean clips.
        if ci % 2 == 0 {
            assert!(
                det.stats().model_runs < det.stats().windows * 9 / 10,
                "{name}"
            );
        }
    }
}
