//! The real ALSA path, through alsa-lib's `file` PCM plugin: a raw file becomes a capture
//! device, and playback into a `file` device writes what was played.
//!
//! Every test device is defined in one generated asoundrc, selected for this whole process
//! with `ALSA_CONFIG_PATH` before the first ALSA call (see `setup`); each test uses its own
//! device names and files. Speech is a real LibriVox clip from the models directory
//! (scripts/install-models.sh); the 48 kHz stereo version is made with sox (scripts/setup.sh).
//!
//! What the file plugin does (observed with alsa-lib 1.2.8): its `null` slave is not paced,
//! so capture runs as fast as the file can be read (seconds of audio in milliseconds), and
//! after the end of the file it goes on delivering whatever its ring buffer held (stale
//! audio, not silence), so tests only compare the file's length. Playback into `null` is
//! unpaced as well: real-time behaviour (pacing, cancel in the middle of a long utterance)
//! cannot be observed with these plugins.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sotad::audio::{
    AudioFrame, Capture, CaptureConfig, CaptureState, CaptureStatus, FRAME_SAMPLES, FrameReceiver,
    PlayError, PlaybackConfig, Player, Samples, frame_channel,
};

const CLIP: &str = "sense_and_sensibility_01_austen_64kb-0880.wav";

struct Fixture {
    dir: PathBuf,
    /// The clip, 16 kHz mono s16.
    speech: Vec<i16>,
}

fn models_dir() -> PathBuf {
    std::env::var_os("SOTAD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sotad/models")
        })
}

fn write_raw(path: &Path, samples: &[i16]) {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_raw(path: &Path) -> Vec<i16> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Writes the test asoundrc and points alsa-lib at it, once per process, before any test
/// opens a device.
fn setup() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sotad-alsa-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let wav = models_dir().join("speech/librivox").join(CLIP);
        assert!(wav.exists(), "{} is missing: run scripts/install-models.sh", wav.display());
        let w = sotad_engines::audio::read_wav(&wav).unwrap();
        assert_eq!((w.sample_rate, w.channels), (16_000, 1));
        let speech: Vec<i16> = w.samples.iter().map(|&x| (x * 32768.0).round() as i16).collect();
        write_raw(&dir.join("speech16.raw"), &speech);
        let sox = std::process::Command::new("sox")
            .arg(&wav)
            .args(["-t", "raw", "-e", "signed", "-b", "16", "-r", "48000", "-c", "2"])
            .arg(dir.join("speech48s.raw"))
            .status()
            .expect("sox is needed for the audio tests: run scripts/setup.sh");
        assert!(sox.success());
        let d = dir.display();
        let conf = format!(
            r#"
pcm.t_mic16 {{ type file slave.pcm "null" file "/dev/null" infile "{d}/speech16.raw" format "raw" }}
pcm.t_file48 {{ type file slave.pcm "null" file "/dev/null" infile "{d}/speech48s.raw" format "raw" }}
# plug whose slave is fixed at 48 kHz stereo: with plug's automatic rate and channel
# conversion disabled (as sotad opens devices), it offers 48000 Hz and 2 channels only.
pcm.t_mic48 {{ type plug slave {{ pcm "t_file48" rate 48000 channels 2 format S16_LE }} }}
pcm.t_drops {{ type file slave.pcm "null" file "/dev/null" infile "{d}/speech16.raw" format "raw" }}
pcm.t_late {{ type file slave.pcm "null" file "/dev/null" infile "{d}/late.raw" format "raw" }}
pcm.t_spk {{ type file slave.pcm "null" file "{d}/played16.raw" format "raw" }}
pcm.t_spk_cancel {{ type file slave.pcm "null" file "{d}/cancelled.raw" format "raw" }}
pcm.t_file_spk48 {{ type file slave.pcm "null" file "{d}/played48.raw" format "raw" }}
pcm.t_spk48 {{ type plug slave {{ pcm "t_file_spk48" rate 48000 channels 2 format S16_LE }} }}
"#
        );
        let conf_path = dir.join("asound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // SAFETY: set once, before any test thread calls into alsa-lib (all of them wait on
        // this OnceLock first); nothing else in this test binary sets environment variables.
        unsafe {
            std::env::set_var(
                "ALSA_CONFIG_PATH",
                format!("/usr/share/alsa/alsa.conf:{}", conf_path.display()),
            )
        };
        Fixture { dir, speech }
    })
}

fn fast_retry(device: &str) -> CaptureConfig {
    CaptureConfig {
        device: device.into(),
        buffer_ms: 128,
        retry_min_ms: 20,
        retry_max_ms: 100,
    }
}

/// Receives frames until `n` samples are collected (or 10 s pass).
fn collect(rx: &mut FrameReceiver, n: usize) -> (Vec<f32>, Vec<AudioFrame>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut samples = Vec::with_capacity(n + FRAME_SAMPLES);
    let mut frames = Vec::new();
    while samples.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} samples captured",
            samples.len()
        );
        match rx.try_recv() {
            Ok(f) => {
                samples.extend_from_slice(&f.samples[..]);
                frames.push(f);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    (samples, frames)
}

fn wait_for(status: &CaptureStatus, want: CaptureState, within: Duration) {
    let deadline = Instant::now() + within;
    while status.state() != want {
        assert!(
            Instant::now() < deadline,
            "state {:?} never reached; status {:?}",
            want,
            status.snapshot()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn capture_16k_mono_device_delivers_the_file_sample_for_sample() {
    let fx = setup();
    let (tx, mut rx) = frame_channel(1024);
    let status = Arc::new(CaptureStatus::new());
    let handle = Capture::spawn(fast_retry("t_mic16"), tx, status.clone()).unwrap();
    let (got, frames) = collect(&mut rx, fx.speech.len() + FRAME_SAMPLES);
    handle.stop();
    let snap = status.snapshot();
    assert_eq!(snap.state, CaptureState::Stopped);
    assert_eq!((snap.device_rate, snap.device_channels), (16_000, 1));
    assert_eq!(snap.opens, 1);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.seq, i as u64, "no frame dropped, none reordered");
    }
    for (i, (&g, &want)) in got.iter().zip(&fx.speech).enumerate() {
        assert_eq!((g * 32768.0) as i16, want, "sample {i}");
    }
}

fn correlation_at(a: &[f32], b: &[f32], lag: isize) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (i, &x) in a.iter().enumerate() {
        let j = i as isize + lag;
        if j < 0 || j as usize >= b.len() {
            continue;
        }
        let y = b[j as usize];
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-12)
}

#[test]
fn capture_48k_stereo_only_device_is_downmixed_and_resampled_to_16k() {
    let fx = setup();
    let (tx, mut rx) = frame_channel(1024);
    let status = Arc::new(CaptureStatus::new());
    let handle = Capture::spawn(fast_retry("t_mic48"), tx, status.clone()).unwrap();
    let (got, _) = collect(&mut rx, fx.speech.len() + 2 * FRAME_SAMPLES);
    handle.stop();
    let snap = status.snapshot();
    assert_eq!(
        (snap.device_rate, snap.device_channels),
        (48_000, 2),
        "the device must run at 48 kHz stereo, converted by sotad, not alsa-lib"
    );
    let want: Vec<f32> = fx.speech.iter().map(|&s| f32::from(s) / 32768.0).collect();
    // Aligned within a couple of samples (sox's and rubato's filters are both linear phase).
    let (lag, best) = (-4..=4)
        .map(|l| (l, correlation_at(&want, &got, l)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    eprintln!("48k stereo -> 16k mono: correlation {best:.5} at lag {lag}");
    assert!(best > 0.995, "correlation {best} at lag {lag}");
    assert!(lag.abs() <= 2, "lag {lag}");
    // Same energy: the downmix averages two identical channels.
    let energy = |x: &[f32]| x.iter().map(|&v| f64::from(v * v)).sum::<f64>();
    let ratio = energy(&got[..want.len()]) / energy(&want);
    assert!((0.97..1.03).contains(&ratio), "energy ratio {ratio}");
    // Spectrally: energy above 4 kHz relative to total matches within a few percent.
    let hf = |x: &[f32]| {
        // First difference boosts high frequencies: a crude but sensitive spectral tilt.
        let d: Vec<f32> = x.windows(2).map(|w| w[1] - w[0]).collect();
        energy(&d) / energy(x)
    };
    let (a, b) = (hf(&want), hf(&got[..want.len()]));
    assert!((a - b).abs() / a < 0.05, "spectral tilt {a} vs {b}");
}

#[test]
fn a_full_channel_drops_frames_and_counts_them() {
    setup();
    let (tx, mut rx) = frame_channel(4);
    let status = Arc::new(CaptureStatus::new());
    let handle = Capture::spawn(fast_retry("t_drops"), tx, status.clone()).unwrap();
    // The device is not paced: frames pile up at once while nobody receives.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status.snapshot().frames_dropped < 100 {
        assert!(Instant::now() < deadline, "{:?}", status.snapshot());
        std::thread::sleep(Duration::from_millis(5));
    }
    let first: Vec<u64> = (0..4).map(|_| rx.try_recv().unwrap().seq).collect();
    assert_eq!(
        first,
        [0, 1, 2, 3],
        "the oldest frames are kept, newer ones dropped"
    );
    // Capture goes on: the next frame received has skipped the dropped ones.
    let (_, later) = collect(&mut rx, FRAME_SAMPLES);
    handle.stop();
    assert!(later[0].seq > 4, "seq {} after drops", later[0].seq);
    let snap = status.snapshot();
    assert!(
        snap.frames_sent >= 5 && snap.frames_dropped >= 100,
        "{snap:?}"
    );
}

#[test]
fn a_missing_device_is_retried_and_capture_starts_when_it_appears() {
    let fx = setup();
    // An unknown PCM name: missing.
    let (tx, _rx) = frame_channel(16);
    let status = Arc::new(CaptureStatus::new());
    let h = Capture::spawn(fast_retry("t_no_such_device"), tx, status.clone()).unwrap();
    wait_for(&status, CaptureState::Missing, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let snap = status.snapshot();
    assert_eq!(snap.state, CaptureState::Missing, "{snap:?}");
    assert!(
        snap.last_error
            .as_deref()
            .unwrap_or("")
            .contains("t_no_such_device"),
        "{snap:?}"
    );
    assert_eq!(snap.opens, 0);
    h.stop();

    // A defined device whose input does not exist yet, then appears.
    let late = fx.dir.join("late.raw");
    let _ = std::fs::remove_file(&late);
    let (tx, mut rx) = frame_channel(1024);
    let status = Arc::new(CaptureStatus::new());
    let h = Capture::spawn(fast_retry("t_late"), tx, status.clone()).unwrap();
    wait_for(&status, CaptureState::Missing, Duration::from_secs(5));
    assert_eq!(CaptureState::Missing.as_str(), "missing");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_recv().is_err(),
        "no frames while the device is missing"
    );
    assert_eq!(status.snapshot().opens, 0);
    write_raw(&late, &fx.speech[..16_000]);
    wait_for(&status, CaptureState::Open, Duration::from_secs(5));
    let (got, _) = collect(&mut rx, 16_000);
    h.stop();
    for (i, (&g, &want)) in got.iter().zip(&fx.speech[..16_000]).enumerate() {
        assert_eq!((g * 32768.0) as i16, want, "sample {i}");
    }
}

#[test]
fn playback_writes_the_samples_played() {
    let fx = setup();
    let player = Player::open(PlaybackConfig {
        device: "t_spk".into(),
        buffer_ms: 100,
    });
    let cancel = AtomicBool::new(false);
    let stats = player
        .play(Samples::I16(&fx.speech), 16_000, &cancel)
        .unwrap();
    assert!(!stats.cancelled);
    assert_eq!(stats.samples_played, fx.speech.len());
    assert_eq!((stats.device_rate, stats.device_channels), (16_000, 1));
    drop(player);
    let written = read_raw(&fx.dir.join("played16.raw"));
    assert_eq!(written.len(), fx.speech.len());
    assert_eq!(
        written, fx.speech,
        "the device received exactly the samples played"
    );
}

#[test]
fn playback_at_22050_on_a_48k_stereo_device_is_converted() {
    let fx = setup();
    // The speech at Piper's rate (22050 Hz), as f32.
    let f: Vec<f32> = fx.speech.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let voice = sotad_engines::audio::resample::resample_mono(&f, 16_000, 22_050).unwrap();
    let player = Player::open(PlaybackConfig {
        device: "t_spk48".into(),
        buffer_ms: 100,
    });
    let stats = player
        .play(Samples::F32(&voice), 22_050, &AtomicBool::new(false))
        .unwrap();
    assert_eq!((stats.device_rate, stats.device_channels), (48_000, 2));
    let written = read_raw(&fx.dir.join("played48.raw"));
    let frames = written.len() / 2;
    let want_frames = voice.len() as f64 * 48_000.0 / 22_050.0;
    assert!(
        (frames as f64 - want_frames).abs() < 2.0,
        "{frames} frames, expected {want_frames}"
    );
    let (l, r): (Vec<f32>, Vec<f32>) = written
        .chunks_exact(2)
        .map(|c| (f32::from(c[0]) / 32768.0, f32::from(c[1]) / 32768.0))
        .unzip();
    assert_eq!(l, r, "mono duplicated to both channels");
    // Back to 16 kHz, it is the original speech.
    let back = sotad_engines::audio::resample::resample_mono(&l, 48_000, 16_000).unwrap();
    let c = correlation_at(&f, &back, 0);
    assert!(c > 0.995, "correlation {c}");
}

#[test]
fn cancelled_playback_stops_and_missing_devices_are_errors() {
    let fx = setup();
    let player = Player::open(PlaybackConfig {
        device: "t_spk_cancel".into(),
        buffer_ms: 100,
    });
    let stats = player
        .play(Samples::I16(&fx.speech), 16_000, &AtomicBool::new(true))
        .unwrap();
    assert!(stats.cancelled);
    assert_eq!(stats.samples_played, 0);
    assert!(read_raw(&fx.dir.join("cancelled.raw")).is_empty());

    let missing = Player::open(PlaybackConfig {
        device: "t_no_such_speaker".into(),
        buffer_ms: 100,
    });
    match missing.play(Samples::I16(&fx.speech), 16_000, &AtomicBool::new(false)) {
        Err(e @ PlayError::Missing { .. }) => assert!(e.to_string().contains("t_no_such_speaker")),
        other => panic!("{other:?}"),
    }
    // A NUL in a configured name is an error value too, not a panic.
    let bad = Player::open(PlaybackConfig {
        device: "bad\0name".into(),
        buffer_ms: 100,
    });
    assert!(
        bad.play(Samples::I16(&[0; 10]), 16_000, &AtomicBool::new(false))
            .is_err()
    );
    let err = Player::open(PlaybackConfig::default())
        .play(Samples::F32(&[0.0; 10]), 0, &AtomicBool::new(false))
        .unwrap_err();
    assert!(matches!(err, PlayError::Input { .. }), "{err}");
}
