//! Whisper log-mel front end: against a numpy reference (tests/data/mel_reference.bin, made
//! by tests/data/make_mel_reference.py from the first second of a LibriVox recording), and
//! against a slow `f64` implementation of the definition written here for edge cases.

use std::path::PathBuf;

use sotad_engines::audio::read_wav;
use sotad_engines::stt::mel::{
    HOP_LENGTH, LogMel, MelFrontEnd, N_BINS, N_FFT, N_FRAMES, hann_window, hz_to_mel, mel_filters,
    mel_to_hz,
};

/// The accuracy required against both references, in normalised log-mel units (the encoder's
/// input, where 1.0 is a factor of 10⁴ in power).
const TOLERANCE: f32 = 1e-3;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take(8).try_into().unwrap())
    }
}

struct Reference {
    n_mels: usize,
    silence: f32,
    tail_min: f32,
    tail_max: f32,
    tail_sum: f64,
    /// n_mels × n_stored.
    frames: Vec<f32>,
}

fn load_reference() -> (usize, usize, usize, Vec<Reference>) {
    let bytes = std::fs::read(data_dir().join("mel_reference.bin")).expect("mel_reference.bin");
    let mut r = Reader(&bytes);
    assert_eq!(r.take(8), b"MELREF1\0");
    let n_samples = r.u32() as usize;
    let n_stored = r.u32() as usize;
    let n_total = r.u32() as usize;
    let n_configs = r.u32() as usize;
    let refs = (0..n_configs)
        .map(|_| {
            let n_mels = r.u32() as usize;
            let silence = r.f32();
            let tail_min = r.f32();
            let tail_max = r.f32();
            let tail_sum = r.f64();
            let frames = (0..n_mels * n_stored).map(|_| r.f32()).collect();
            Reference {
                n_mels,
                silence,
                tail_min,
                tail_max,
                tail_sum,
                frames,
            }
        })
        .collect();
    assert!(r.0.is_empty(), "trailing bytes in mel_reference.bin");
    (n_samples, n_stored, n_total, refs)
}

#[test]
fn matches_numpy_reference_on_real_speech() {
    let (n_samples, n_stored, n_total, refs) = load_reference();
    assert_eq!(n_total, N_FRAMES);
    let wav = read_wav(data_dir().join("librivox_1s.wav")).expect("fixture clip");
    assert_eq!((wav.sample_rate, wav.channels), (16_000, 1));
    assert_eq!(wav.samples.len(), n_samples);
    assert_eq!(refs.iter().map(|r| r.n_mels).collect::<Vec<_>>(), [80, 128]);

    for reference in &refs {
        let front = MelFrontEnd::new(reference.n_mels);
        let mel = front.compute(&wav.samples);
        assert_eq!(mel.n_frames(), 102, "frames overlapping 16000 samples");
        assert_eq!(mel.content_frames(), 100);
        let padded = mel.padded(N_FRAMES);
        assert_eq!(padded.len(), reference.n_mels * N_FRAMES);

        let mut max_diff = 0.0f32;
        let mut worst = (0, 0);
        for m in 0..reference.n_mels {
            for t in 0..n_stored {
                let ours = padded[m * N_FRAMES + t];
                let theirs = reference.frames[m * n_stored + t];
                let d = (ours - theirs).abs();
                if d > max_diff {
                    max_diff = d;
                    worst = (m, t);
                }
            }
        }
        println!(
            "n_mels={}: max |ours - numpy| over {} frames = {max_diff:.3e} (band {}, frame {})",
            reference.n_mels, n_stored, worst.0, worst.1
        );
        assert!(
            max_diff < TOLERANCE,
            "n_mels={}: max difference {max_diff} at band {} frame {}",
            reference.n_mels,
            worst.0,
            worst.1
        );

        // Frames past the stored ones are all silence, in both.
        assert!((mel.silence_value() - reference.silence).abs() < TOLERANCE);
        assert!((reference.tail_max - reference.tail_min).abs() < 1e-6);
        let tail: Vec<f32> = (0..reference.n_mels)
            .flat_map(|m| padded[m * N_FRAMES + n_stored..(m + 1) * N_FRAMES].to_vec())
            .collect();
        let sum: f64 = tail.iter().map(|&v| f64::from(v)).sum();
        assert!(
            (sum - reference.tail_sum).abs() / reference.tail_sum.abs() < 1e-4,
            "tail sum {sum} vs {}",
            reference.tail_sum
        );
        assert!(tail.iter().all(|&v| v == mel.silence_value()));
    }
}

/// The definition, in `f64`, with a plain DFT: all frames of `audio` followed by silence,
/// up to `n_frames`.
fn naive_log_mel(audio: &[f32], n_mels: usize, n_frames: usize) -> Vec<f64> {
    let filters = mel_filters(n_mels);
    let window = hann_window(N_FFT);
    let sample = |j: isize| -> f64 {
        let idx = j.unsigned_abs();
        audio.get(idx).map_or(0.0, |&x| f64::from(x))
    };
    let cos_sin: Vec<(f64, f64)> = (0..N_FFT)
        .map(|i| {
            let a = 2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64;
            (a.cos(), a.sin())
        })
        .collect();
    let mut log = vec![0.0f64; n_mels * n_frames];
    for t in 0..n_frames {
        let start = (t * HOP_LENGTH) as isize - (N_FFT / 2) as isize;
        let frame: Vec<f64> = (0..N_FFT)
            .map(|n| sample(start + n as isize) * f64::from(window[n]))
            .collect();
        let power: Vec<f64> = (0..N_BINS)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (n, &x) in frame.iter().enumerate() {
                    let (c, s) = cos_sin[(k * n) % N_FFT];
                    re += x * c;
                    im -= x * s;
                }
                re * re + im * im
            })
            .collect();
        for m in 0..n_mels {
            let e: f64 = (0..N_BINS)
                .map(|k| f64::from(filters[m * N_BINS + k]) * power[k])
                .sum();
            log[m * n_frames + t] = e.max(1e-10).log10();
        }
    }
    let max = log.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    log.iter()
        .map(|&v| (v.max(max - 8.0) + 4.0) / 4.0)
        .collect()
}

fn chirp(n: usize, seed: u32) -> Vec<f32> {
    // A deterministic mixture of tones and a little noise, with a loud burst in the middle
    // so that neighbouring frames have very different energies.
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state as f32 / u32::MAX as f32 - 0.5) * 1e-3;
            let t = i as f32 / 16_000.0;
            let burst = if (n / 3..n / 2).contains(&i) {
                0.8
            } else {
                0.02
            };
            burst * (2.0 * std::f32::consts::PI * (300.0 + 2000.0 * t) * t).sin()
                + 0.05 * (2.0 * std::f32::consts::PI * 3100.0 * t).sin()
                + noise
        })
        .collect()
}

fn compare_with_naive(audio: &[f32], n_mels: usize) -> f32 {
    let front = MelFrontEnd::new(n_mels);
    let mel = front.compute(audio);
    let n_check = mel.n_frames() + 3;
    let naive = naive_log_mel(audio, n_mels, n_check);
    let ours = mel.padded(n_check);
    let mut max_diff = 0.0f32;
    for (a, b) in ours.iter().zip(&naive) {
        max_diff = max_diff.max((a - *b as f32).abs());
    }
    // The first frame not computed is pure silence in the definition too.
    for m in 0..n_mels {
        let v = naive[m * n_check + mel.n_frames()] as f32;
        assert!(
            (v - mel.silence_value()).abs() < 1e-6,
            "len {}: frame {} is not silent in the definition ({v} vs {})",
            audio.len(),
            mel.n_frames(),
            mel.silence_value()
        );
    }
    max_diff
}

#[test]
fn matches_the_definition_at_edges() {
    // Lengths around the reflect padding (200), one frame (400) and hop multiples.
    for (i, len) in [
        1, 2, 150, 199, 200, 201, 202, 399, 400, 401, 559, 560, 1234, 3203,
    ]
    .into_iter()
    .enumerate()
    {
        let audio = chirp(len, i as u32 + 1);
        let d80 = compare_with_naive(&audio, 80);
        assert!(d80 < TOLERANCE, "len {len}, 80 mels: max difference {d80}");
        if len == 3203 {
            let d128 = compare_with_naive(&audio, 128);
            assert!(
                d128 < TOLERANCE,
                "len {len}, 128 mels: max difference {d128}"
            );
            println!("len {len}: max difference 80 mels {d80:.2e}, 128 mels {d128:.2e}");
        }
    }
}

#[test]
fn silence_and_empty_input() {
    let front = MelFrontEnd::new(80);
    for audio in [vec![], vec![0.0f32; 4000]] {
        let mel = front.compute(&audio);
        // log10(1e-10) = -10 everywhere, so the floor is -10: (-10 + 4) / 4.
        assert_eq!(mel.silence_value(), -1.5);
        assert!(mel.data().iter().all(|&v| v == -1.5));
        assert!(mel.padded(N_FRAMES).iter().all(|&v| v == -1.5));
    }
    assert_eq!(front.compute(&[]).content_frames(), 0);
}

#[test]
fn frame_counts() {
    assert_eq!(MelFrontEnd::frames_for(0), 2);
    assert_eq!(MelFrontEnd::frames_for(16_000), 102);
    assert_eq!(MelFrontEnd::frames_for(480_000), 3002);
    for n in [0usize, 1, 41, 159, 160, 161, 1000, 79_999] {
        let f = MelFrontEnd::frames_for(n);
        // The last computed frame reaches the audio; the next one does not.
        let last_start = (f - 1) as isize * 160 - 199;
        assert!(last_start < n as isize || n == 0, "n {n}");
        assert!(f as isize * 160 - 199 >= n as isize, "n {n}");
    }
}

#[test]
fn segments_pad_and_cut() {
    let front = MelFrontEnd::new(80);
    let audio = chirp(5_000, 7);
    let mel: LogMel = front.compute(&audio);
    let n = mel.n_frames();
    let full = mel.padded(n);
    assert_eq!(full, mel.data());
    let cut = mel.padded(10);
    for m in 0..80 {
        assert_eq!(&cut[m * 10..m * 10 + 10], &full[m * n..m * n + 10]);
    }
    let seg = mel.segment(n - 2, 5);
    for m in 0..80 {
        assert_eq!(seg[m * 5], mel.get(m, n - 2).unwrap());
        assert_eq!(seg[m * 5 + 1], mel.get(m, n - 1).unwrap());
        assert!(
            seg[m * 5 + 2..m * 5 + 5]
                .iter()
                .all(|&v| v == mel.silence_value())
        );
    }
    assert!(
        mel.segment(n + 100, 4)
            .iter()
            .all(|&v| v == mel.silence_value())
    );
    assert_eq!(mel.get(80, 0), None);
    assert_eq!(mel.get(0, n + 5), Some(mel.silence_value()));
}

#[test]
fn filter_bank_shape() {
    // Slaney scale: linear to 1 kHz (15 mels), 27 mels per factor 6.4 above.
    assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-9);
    for hz in [0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0] {
        assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9);
    }
    for n_mels in [80usize, 128] {
        let front = MelFrontEnd::new(n_mels);
        let dense = mel_filters(n_mels);
        assert_eq!(front.filters(), dense);
        for row in dense.chunks_exact(N_BINS) {
            // Every band has weight somewhere and none is negative.
            assert!(row.iter().any(|&w| w > 0.0));
            assert!(row.iter().all(|&w| w >= 0.0));
        }
    }
    // A few values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (librosa 0.11).
    let f = mel_filters(80);
    let at = |m: usize, k: usize| f[m * N_BINS + k];
    assert!((at(0, 1) - 0.024_862_595).abs() < 1e-8, "{}", at(0, 1));
    assert!(
        (at(79, 199) - 0.000_448_759).abs() < 1e-8,
        "{}",
        at(79, 199)
    );
    assert_eq!(at(79, 185), 0.0);
    assert!(at(79, 186) > 0.0);
}
