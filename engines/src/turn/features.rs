//! Smart Turn's input features: Whisper's log-mel spectrogram of the last 8 s, computed as
//! Pipecat's `_whisper_features.py` (which mirrors `transformers.WhisperFeatureExtractor`
//! with `chunk_length=8`, `do_normalize=True`) computes it.
//!
//! 1. The audio (16 kHz mono) is cut to its last 8 s or padded with zeros *at the start* to
//!    128 000 samples (`local_smart_turn_v3.py`, `truncate_audio_to_last_n_seconds`).
//! 2. Zero-mean, unit-variance normalisation over the whole 8 s (padding included), in f32:
//!    `(x - mean) / sqrt(var + 1e-7)`.
//! 3. A centred STFT in f64: reflect-padded by 200 samples at both ends, periodic Hann window
//!    of 400, hop 160, power spectrum `|rfft|²` (bins 0..=200).
//! 4. The Slaney mel filter bank (80 bands, 0..8 kHz, area-normalised), built in f64 as the
//!    reference builds it; `log10(max(mel, 1e-10))`.
//! 5. The last of the 801 frames is dropped; the rest is clamped from below at its maximum
//!    minus 8, then `(x + 4) / 4`, and converted to f32: `[80][800]`, band-major.
//!
//! Frame 800 is dropped, so it is never computed.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Samples the model sees: 8 s at 16 kHz.
pub const WINDOW_SAMPLES: usize = 8 * 16_000;
/// Mel bands.
pub const N_MELS: usize = 80;
/// Frames the model sees.
pub const N_FRAMES: usize = 800;

const N_FFT: usize = 400;
const HOP: usize = 160;
const N_BINS: usize = N_FFT / 2 + 1;

/// The feature extractor: FFT plan, window and filter bank, built once.
pub struct Features {
    fft: Arc<dyn Fft<f64>>,
    window: Vec<f64>,
    /// `[N_MELS]` sparse rows of the filter bank: first bin and weights.
    filters: Vec<(usize, Vec<f64>)>,
}

impl std::fmt::Debug for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Features").finish_non_exhaustive()
    }
}

impl Default for Features {
    fn default() -> Self {
        Self::new()
    }
}

fn hz_to_mel(f: f64) -> f64 {
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hz(m: f64) -> f64 {
    if m >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (m - 15.0)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// numpy's `linspace(a, b, n)`: `a + i * step`, with the last point exactly `b`.
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    let step = (b - a) / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { b } else { a + i as f64 * step })
        .collect()
}

impl Features {
    /// Builds the FFT plan, window and filter bank.
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .collect();
        let mel_pts = linspace(hz_to_mel(0.0), hz_to_mel(8000.0), N_MELS + 2);
        let hz: Vec<f64> = mel_pts.iter().map(|&m| mel_to_hz(m)).collect();
        let fft_freqs = linspace(0.0, 8000.0, N_BINS);
        let mut filters = Vec::with_capacity(N_MELS);
        for m in 0..N_MELS {
            let (lo, mid, hi) = (hz[m], hz[m + 1], hz[m + 2]);
            let enorm = 2.0 / (hi - lo);
            let row: Vec<f64> = fft_freqs
                .iter()
                .map(|&f| {
                    let down = -(lo - f) / (mid - lo);
                    let up = (hi - f) / (hi - mid);
                    down.min(up).max(0.0) * enorm
                })
                .collect();
            let start = row.iter().position(|&w| w != 0.0).unwrap_or(0);
            let end = row.iter().rposition(|&w| w != 0.0).map_or(start, |i| i + 1);
            filters.push((start, row[start..end].to_vec()));
        }
        Self {
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
            window,
            filters,
        }
    }

    /// The model's input for the utterance `samples` (16 kHz mono, any length; only the last
    /// 8 s count): `[N_MELS][N_FRAMES]`, band-major.
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        // 1. Last 8 s, zeros in front.
        let mut x = vec![0.0f32; WINDOW_SAMPLES];
        let take = samples.len().min(WINDOW_SAMPLES);
        x[WINDOW_SAMPLES - take..].copy_from_slice(&samples[samples.len() - take..]);
        // 2. Normalise (statistics in f64, the arithmetic on samples in f32 as numpy's).
        let n = WINDOW_SAMPLES as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let mean32 = mean as f32;
        let var = x
            .iter()
            .map(|&v| {
                let d = f64::from(v) - mean;
                d * d
            })
            .sum::<f64>()
            / n;
        let denom = ((var as f32) + 1e-7f32).sqrt();
        for v in &mut x {
            *v = (*v - mean32) / denom;
        }
        // 3-4. STFT frames 0..800 and mel energies (log10).
        let mut logmel = vec![0.0f64; N_MELS * N_FRAMES];
        let mut buf = vec![Complex::new(0.0f64, 0.0); N_FFT];
        let mut scratch = vec![Complex::new(0.0f64, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = [0.0f64; N_BINS];
        let mut max_log = f64::NEG_INFINITY;
        for t in 0..N_FRAMES {
            for (i, c) in buf.iter_mut().enumerate() {
                // Padded index 160 t + i is original index 160 t + i - 200, reflected at both ends.
                let j = ((HOP * t + i) as isize - (N_FFT / 2) as isize).unsigned_abs();
                let j = if j < WINDOW_SAMPLES {
                    j
                } else {
                    2 * (WINDOW_SAMPLES - 1) - j
                };
                let v = x[j];
                *c = Complex::new(f64::from(v) * self.window[i], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (m, (start, w)) in self.filters.iter().enumerate() {
                let e: f64 = w.iter().zip(&power[*start..]).map(|(a, b)| a * b).sum();
                let v = e.max(1e-10).log10();
                max_log = max_log.max(v);
                logmel[m * N_FRAMES + t] = v;
            }
        }
        // 5. Dynamic range and scaling.
        let floor = max_log - 8.0;
        logmel
            .iter()
            .map(|&v| ((v.max(floor) + 4.0) / 4.0) as f32)
            .collect()
    }
}
