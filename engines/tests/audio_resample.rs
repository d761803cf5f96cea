//! Downmix and resampling to 16 kHz, on synthetic sines: frequency (FFT peak and zero
//! crossings), length, level, phase alignment, aliasing, streaming, pass-through.

use std::borrow::Cow;

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;
use sotad_engines::Error;
use sotad_engines::audio::resample::{MonoResampler, resample_mono};
use sotad_engines::audio::{downmix_to_mono, to_mono_16k};

const OUT_RATE: f64 = 16_000.0;

fn sine(rate: u32, freq: f64, n: usize, amp: f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as f32
        })
        .collect()
}

fn interleave(channels: &[Vec<f32>]) -> Vec<f32> {
    let n = channels[0].len();
    (0..n)
        .flat_map(|i| channels.iter().map(move |c| c[i]))
        .collect()
}

/// Frequency of the strongest bin of a Hann-windowed 1 s (16000-sample) window: 1 Hz bins.
fn fft_peak_hz(x: &[f32]) -> f64 {
    let n = 16_000;
    assert!(x.len() >= n);
    let mut buf: Vec<Complex<f64>> = x[..n]
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos();
            Complex::new(f64::from(v) * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let (bin, _) = buf[..n / 2]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.norm_sqr().total_cmp(&b.1.norm_sqr()))
        .unwrap();
    bin as f64 * OUT_RATE / n as f64
}

/// Frequency from the number of upward zero crossings.
fn zero_crossing_hz(x: &[f32]) -> f64 {
    let ups: Vec<usize> = (1..x.len())
        .filter(|&i| x[i - 1] < 0.0 && x[i] >= 0.0)
        .collect();
    let (first, last) = (ups[0], *ups.last().unwrap());
    (ups.len() - 1) as f64 / ((last - first) as f64 / OUT_RATE)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

#[test]
fn sines_keep_frequency_length_level_and_phase() {
    let amp = 0.5;
    for rate in [
        8_000u32, 11_025, 12_345, 22_050, 32_000, 44_100, 44_101, 48_000, 96_000,
    ] {
        for freq in [440.0, 1_000.0, 3_000.0] {
            // 1.5 s and a few samples, so the length is not a round number.
            let n = rate as usize * 3 / 2 + 17;
            let x = sine(rate, freq, n, amp);
            let y = to_mono_16k(&x, rate, 1).unwrap();
            assert!(matches!(y, Cow::Owned(_)));

            let expected_len = (n as u64 * 16_000).div_ceil(u64::from(rate)) as usize;
            assert_eq!(y.len(), expected_len, "{rate} Hz, {freq} Hz: length");

            // The steady part (away from the zero-padded edges).
            let mid = &y[2_000..y.len() - 2_000];
            let peak = fft_peak_hz(&mid[..16_000.min(mid.len())]);
            assert_eq!(peak, freq, "{rate} Hz, {freq} Hz: FFT peak");
            let zc = zero_crossing_hz(mid);
            assert!(
                (zc - freq).abs() / freq < 0.002,
                "{rate} Hz, {freq} Hz: zero crossings give {zc}"
            );
            let level_db = 20.0 * (rms(mid) * 2f64.sqrt() / amp).log10();
            assert!(
                level_db.abs() < 1.0,
                "{rate} Hz, {freq} Hz: level {level_db} dB"
            );

            // Output sample j is input time j / 16000: compare with the ideal sine.
            let ideal = sine(16_000, freq, y.len(), amp);
            let err = y[2_000..y.len() - 2_000]
                .iter()
                .zip(&ideal[2_000..])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Aligned to within one sinc sub-step (1/256 of an input sample, rubato's
            // oversampling), i.e. a deviation of at most A × 2πf × (1/256)/rate.
            let bound =
                amp * 2.0 * std::f64::consts::PI * freq / f64::from(rate) / 256.0 * 1.1 + 1e-4;
            assert!(
                f64::from(err) < bound,
                "{rate} Hz, {freq} Hz: max deviation from the ideal sine {err} (bound {bound})"
            );
            if freq == 1_000.0 {
                println!(
                    "{rate:>6} Hz -> 16 kHz: {} -> {} samples, 1 kHz level {level_db:+.4} dB, max deviation {err:.1e}",
                    n,
                    y.len()
                );
            }
        }
    }
}

#[test]
fn stereo_and_multichannel_downmix() {
    let left = sine(44_100, 440.0, 44_100, 0.5);
    // Same signal on both channels: the level is kept.
    let stereo = interleave(&[left.clone(), left.clone()]);
    let y = to_mono_16k(&stereo, 44_100, 2).unwrap();
    let mono = to_mono_16k(&left, 44_100, 1).unwrap();
    assert_eq!(y.len(), 16_000);
    for (a, b) in y.iter().zip(mono.iter()) {
        assert!((a - b).abs() < 1e-6);
    }
    // Opposite phases cancel.
    let right: Vec<f32> = left.iter().map(|v| -v).collect();
    let stereo = interleave(&[left.clone(), right]);
    let y = to_mono_16k(&stereo, 44_100, 2).unwrap();
    assert!(rms(&y) < 1e-6);
    // 48 kHz stereo with different tones: both survive at half level.
    let a = sine(48_000, 500.0, 48_000, 0.8);
    let b = sine(48_000, 2_000.0, 48_000, 0.8);
    let stereo = interleave(&[a, b]);
    let y = to_mono_16k(&stereo, 48_000, 2).unwrap();
    let ideal: Vec<f32> = sine(16_000, 500.0, 16_000, 0.4)
        .iter()
        .zip(sine(16_000, 2_000.0, 16_000, 0.4))
        .map(|(x, y)| x + y)
        .collect();
    let err = y[1_000..15_000]
        .iter()
        .zip(&ideal[1_000..15_000])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 2e-3, "{err}");
    // Three channels, a trailing partial frame is dropped.
    assert_eq!(downmix_to_mono(&[0.3, 0.6, 0.9, 1.0, 1.0], 3), vec![0.6]);
}

#[test]
fn sixteen_khz_mono_passes_through() {
    let x = sine(16_000, 440.0, 1_234, 0.5);
    let y = to_mono_16k(&x, 16_000, 1).unwrap();
    assert!(matches!(y, Cow::Borrowed(_)));
    assert_eq!(y.as_ptr(), x.as_ptr());
    // 16 kHz stereo is only downmixed.
    let y = to_mono_16k(&[0.5, -0.5, 0.25, 0.75], 16_000, 2).unwrap();
    assert_eq!(&*y, &[0.0, 0.5]);
    // Equal rates in the streaming resampler are a copy.
    let mut r = MonoResampler::new(22_050, 22_050).unwrap();
    let mut out = Vec::new();
    r.push(&x, &mut out).unwrap();
    r.finish(&mut out).unwrap();
    assert_eq!(out, x);
}

#[test]
fn aliases_are_filtered_out() {
    // 12 kHz is above the 8 kHz Nyquist frequency of the output: it must not fold to 4 kHz.
    let x = sine(48_000, 12_000.0, 48_000, 0.5);
    let y = to_mono_16k(&x, 48_000, 1).unwrap();
    let level_db = 20.0 * (rms(&y[1_000..15_000]) * 2f64.sqrt() / 0.5).log10();
    println!("12 kHz tone at 48 kHz -> 16 kHz: {level_db:.1} dB");
    assert!(level_db < -60.0, "aliased tone at {level_db} dB");
}

#[test]
fn streaming_matches_one_shot() {
    let x = sine(44_100, 1_000.0, 50_000, 0.5);
    let whole = resample_mono(&x, 44_100, 16_000).unwrap();
    for sizes in [
        vec![1usize],
        vec![7, 1_000, 3],
        vec![1_024],
        vec![5_000, 1],
        vec![50_000],
    ] {
        let mut r = MonoResampler::new(44_100, 16_000).unwrap();
        let mut out = Vec::new();
        let (mut at, mut k) = (0, 0);
        while at < x.len() {
            let n = sizes[k % sizes.len()].min(x.len() - at);
            r.push(&x[at..at + n], &mut out).unwrap();
            at += n;
            k += 1;
        }
        assert_eq!(r.output_len(x.len() as u64), whole.len() as u64);
        r.finish(&mut out).unwrap();
        assert_eq!(out, whole, "chunk sizes {sizes:?}");
    }
}

#[test]
fn short_and_empty_input() {
    assert!(to_mono_16k(&[], 48_000, 1).unwrap().is_empty());
    assert!(to_mono_16k(&[], 8_000, 2).unwrap().is_empty());
    assert_eq!(to_mono_16k(&[0.5], 48_000, 1).unwrap().len(), 1);
    assert_eq!(to_mono_16k(&[0.5, 0.5], 8_000, 1).unwrap().len(), 4);
    // A DC step keeps its level once the filter settles (8 kHz -> 16 kHz).
    let dc = vec![0.25; 8_000];
    let y = to_mono_16k(&dc, 8_000, 1).unwrap();
    assert_eq!(y.len(), 16_000);
    assert!(y[1_000..15_000].iter().all(|v| (v - 0.25).abs() < 1e-3));
}

#[test]
fn unsupported_rates_are_errors() {
    for (from, to) in [
        (0u32, 16_000u32),
        (999, 16_000),
        (1_000_000, 16_000),
        (48_000, 0),
    ] {
        let err = MonoResampler::new(from, to).unwrap_err();
        assert!(matches!(err, Error::Resample { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("outside the supported 1000..=768000 Hz"),
            "{err}"
        );
    }
    let err = to_mono_16k(&[0.0; 4], 500, 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot resample 2-channel audio from 500 Hz to 16000 Hz: input rate 500 Hz is outside the supported 1000..=768000 Hz"
    );
}
