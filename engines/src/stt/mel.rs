//! Whisper's log-mel spectrogram front end.
//!
//! # Definition
//!
//! This computes exactly what OpenAI's `whisper.audio.log_mel_spectrogram(audio,
//! padding=N_SAMPLES)` computes (and whisper.cpp, which pads the same way), for 16 kHz mono
//! input:
//!
//! 1. The audio is followed by silence (zeros) and, as `torch.stft(center=True)` does,
//!    reflect-padded by `N_FFT / 2` = 200 samples at the start (`x[200], ..., x[1]`, then
//!    `x[0], x[1], ...`; positions past the end of a clip shorter than 201 samples reflect
//!    onto the silence, i.e. zeros).
//! 2. Frame `t` is samples `160 t - 200 .. 160 t + 200` of the audio, times a periodic Hann
//!    window of 400 (`0.5 - 0.5 cos(2πn/400)`).
//! 3. Power spectrum `|FFT_400(frame)|²`, bins `0..=200`.
//! 4. A Slaney-style mel filter bank, as `librosa.filters.mel(sr=16000, n_fft=400,
//!    n_mels=80 or 128, fmin=0, fmax=8000, htk=False, norm="slaney")` (which is what
//!    Whisper's `mel_filters.npz` holds): triangles between mel points equally spaced on
//!    the Slaney mel scale (linear below 1 kHz at 3 mels per 200 Hz, logarithmic above with
//!    27 mels per factor 6.4), each scaled by `2 / (f_hi - f_lo)` so it has unit area.
//! 5. `log10(max(mel, 1e-10))`, then clamped from below at the clip's maximum minus 8, then
//!    `(x + 4) / 4`.
//!
//! # Only the frames that carry audio
//!
//! Whisper's encoder always sees 3000 frames (30 s), but a 3 s command only has 300. A
//! frame whose window lies entirely in the trailing silence has power exactly 0, so its
//! value is known without an FFT: `(max(-10, max_log - 8) + 4) / 4`, the *silence value*.
//! [`MelFrontEnd::compute`] therefore computes only the frames whose window overlaps the
//! audio (`floor((n + 358) / 160)` of them for `n` samples, which includes the one or two
//! frames after the last full hop that the encoder's first convolution also reads), and
//! [`LogMel::padded`] / [`LogMel::segment`] fill the rest with the silence value. The result
//! is identical to computing all 3000 frames of audio followed by zeros.
//!
//! The FFT plan, window and (sparse) filter bank are built once per [`MelFrontEnd`]; two
//! real frames go through one complex FFT.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Sample rate Whisper expects.
pub use crate::audio::SAMPLE_RATE;
/// FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Frequency bins of the power spectrum: `N_FFT / 2 + 1`.
pub const N_BINS: usize = N_FFT / 2 + 1;
/// Frames in one 30 s Whisper window.
pub const N_FRAMES: usize = 3000;
/// Samples in one 30 s Whisper window.
pub const N_SAMPLES: usize = N_FRAMES * HOP_LENGTH;

/// The floor applied to mel power before the logarithm.
const POWER_FLOOR: f32 = 1e-10;
/// `log10(POWER_FLOOR)`.
const LOG_FLOOR: f32 = -10.0;
/// Dynamic range kept below the maximum, in log10 units.
const DYNAMIC_RANGE: f32 = 8.0;

/// A periodic Hann window of length `n` (`torch.hann_window(n)`, `np.hanning(n + 1)[:-1]`).
pub fn hann_window(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = 2.0 * std::f64::consts::PI * i as f64 / n as f64;
            (0.5 - 0.5 * x.cos()) as f32
        })
        .collect()
}

/// Hertz to Slaney mels (librosa `hz_to_mel(htk=False)`).
pub fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    if hz >= MIN_LOG_HZ {
        let logstep = 6.4f64.ln() / 27.0;
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep
    } else {
        hz / F_SP
    }
}

/// Slaney mels to hertz (librosa `mel_to_hz(htk=False)`).
pub fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    if mel >= MIN_LOG_MEL {
        let logstep = 6.4f64.ln() / 27.0;
        MIN_LOG_HZ * (logstep * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// The dense mel filter bank, `n_mels × N_BINS` row-major, as librosa computes it (in
/// `f64`, stored as `f32` like librosa's default `dtype`).
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let sr = f64::from(SAMPLE_RATE);
    let fft_freqs: Vec<f64> = (0..N_BINS).map(|k| k as f64 * sr / N_FFT as f64).collect();
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let points = n_mels + 2;
    let mel_hz: Vec<f64> = (0..points)
        .map(|i| {
            let frac = if points > 1 {
                i as f64 / (points - 1) as f64
            } else {
                0.0
            };
            mel_to_hz(mel_min + (mel_max - mel_min) * frac)
        })
        .collect();
    let mut out = vec![0.0f32; n_mels * N_BINS];
    for (m, row) in out.chunks_exact_mut(N_BINS).enumerate() {
        let (lo, mid, hi) = (mel_hz[m], mel_hz[m + 1], mel_hz[m + 2]);
        let enorm = 2.0 / (hi - lo);
        for (w, &f) in row.iter_mut().zip(&fft_freqs) {
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            *w = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    out
}

/// One mel filter's non-zero weights, starting at bin `start`.
#[derive(Debug, Clone)]
struct SparseFilter {
    start: usize,
    weights: Vec<f32>,
}

/// Computes Whisper log-mel spectrograms. Build once, use for every clip (it is `Sync`).
pub struct MelFrontEnd {
    n_mels: usize,
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    filters: Vec<SparseFilter>,
}

impl std::fmt::Debug for MelFrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFrontEnd")
            .field("n_mels", &self.n_mels)
            .finish_non_exhaustive()
    }
}

impl MelFrontEnd {
    /// A front end with `n_mels` mel bands: 80 for Whisper up to large-v2, 128 for
    /// large-v3.
    pub fn new(n_mels: usize) -> Self {
        let dense = mel_filters(n_mels);
        let filters = dense
            .chunks_exact(N_BINS)
            .map(|row| {
                let start = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let end = row.iter().rposition(|&w| w != 0.0).map_or(start, |i| i + 1);
                SparseFilter {
                    start,
                    weights: row.get(start..end).unwrap_or_default().to_vec(),
                }
            })
            .collect();
        Self {
            n_mels,
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
            window: hann_window(N_FFT),
            filters,
        }
    }

    /// Number of mel bands.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The filter bank, dense `n_mels × N_BINS` (for inspection and tests).
    pub fn filters(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.n_mels * N_BINS];
        for (row, f) in out.chunks_exact_mut(N_BINS).zip(&self.filters) {
            for (dst, &w) in row.iter_mut().skip(f.start).zip(&f.weights) {
                *dst = w;
            }
        }
        out
    }

    /// Number of frames [`compute`](Self::compute) produces for `n_samples` samples: those
    /// whose window overlaps the audio.
    pub fn frames_for(n_samples: usize) -> usize {
        // Frame t's first non-zero window weight is at sample 160 t - 199.
        (n_samples + N_FFT / 2 + HOP_LENGTH - 2) / HOP_LENGTH
    }

    /// Computes the log-mel spectrogram of 16 kHz mono `samples`, for the frames that
    /// overlap the audio. See the module docs for the exact definition.
    pub fn compute(&self, samples: &[f32]) -> LogMel {
        let n_frames = Self::frames_for(samples.len());
        let mut data = vec![0.0f32; self.n_mels * n_frames];
        let mut buf = vec![Complex::new(0.0f32, 0.0); N_FFT];
        let mut scratch = vec![Complex::new(0.0f32, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power_a = [0.0f32; N_BINS];
        let mut power_b = [0.0f32; N_BINS];
        let mut max_log = f32::NEG_INFINITY;

        let mut t = 0;
        while t < n_frames {
            let pair = t + 1 < n_frames;
            // Frame t in the real part, frame t + 1 (if any) in the imaginary part.
            self.load_frame(samples, t, &mut buf, false);
            if pair {
                self.load_frame(samples, t + 1, &mut buf, true);
            } else {
                for c in &mut buf {
                    c.im = 0.0;
                }
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            split_power(&buf, &mut power_a, &mut power_b);

            let frames: &[(usize, &[f32; N_BINS])] = if pair {
                &[(t, &power_a), (t + 1, &power_b)]
            } else {
                &[(t, &power_a)]
            };
            for &(frame, power) in frames {
                for (m, filter) in self.filters.iter().enumerate() {
                    let bins = power.get(filter.start..).unwrap_or_default();
                    let e: f32 = filter.weights.iter().zip(bins).map(|(w, p)| w * p).sum();
                    let v = e.max(POWER_FLOOR).log10();
                    max_log = max_log.max(v);
                    if let Some(dst) = data.get_mut(m * n_frames + frame) {
                        *dst = v;
                    }
                }
            }
            t += 2;
        }

        let floor = if max_log.is_finite() {
            max_log - DYNAMIC_RANGE
        } else {
            LOG_FLOOR - DYNAMIC_RANGE
        };
        for v in &mut data {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        let silence = (LOG_FLOOR.max(floor) + 4.0) / 4.0;
        LogMel {
            n_mels: self.n_mels,
            n_frames,
            content_frames: samples.len() / HOP_LENGTH,
            data,
            silence,
        }
    }

    /// Writes frame `t`, windowed, into the real (`imag == false`) or imaginary part of `buf`.
    fn load_frame(&self, samples: &[f32], t: usize, buf: &mut [Complex<f32>], imag: bool) {
        let start = (t * HOP_LENGTH) as isize - (N_FFT / 2) as isize;
        let inside = start >= 0 && (start as usize) + N_FFT <= samples.len();
        let set = |c: &mut Complex<f32>, v: f32| {
            if imag {
                c.im = v;
            } else {
                c.re = v;
            }
        };
        if inside {
            let frame = samples
                .get(start as usize..start as usize + N_FFT)
                .unwrap_or_default();
            for ((c, &x), &w) in buf.iter_mut().zip(frame).zip(&self.window) {
                set(c, x * w);
            }
        } else {
            for (n, (c, &w)) in buf.iter_mut().zip(&self.window).enumerate() {
                let j = start + n as isize;
                // Reflect at the start (torch.stft center=True); silence after the end.
                let idx = j.unsigned_abs();
                let x = samples.get(idx).copied().unwrap_or(0.0);
                set(c, x * w);
            }
        }
    }
}

/// Separates the spectra of two real frames packed as `a + i b` and returns their power
/// spectra (bins `0..=N/2`).
fn split_power(z: &[Complex<f32>], pa: &mut [f32; N_BINS], pb: &mut [f32; N_BINS]) {
    let n = z.len();
    for k in 0..N_BINS {
        let zk = z.get(k).copied().unwrap_or_default();
        let zn = z.get((n - k) % n).copied().unwrap_or_default();
        // A[k] = (Z[k] + conj Z[N-k]) / 2, B[k] = (Z[k] - conj Z[N-k]) / 2i.
        let (ar, ai) = (0.5 * (zk.re + zn.re), 0.5 * (zk.im - zn.im));
        let (br, bi) = (0.5 * (zk.im + zn.im), 0.5 * (zn.re - zk.re));
        pa[k] = ar * ar + ai * ai;
        pb[k] = br * br + bi * bi;
    }
}

/// A log-mel spectrogram: the frames that overlap the audio, plus the value every later
/// (silent) frame has.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    n_mels: usize,
    n_frames: usize,
    content_frames: usize,
    /// `n_mels × n_frames`, row-major (one row per mel band), like Whisper's input.
    data: Vec<f32>,
    silence: f32,
}

impl LogMel {
    /// Number of mel bands.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Number of computed frames (see [`MelFrontEnd::frames_for`]).
    pub fn n_frames(&self) -> usize {
        self.n_frames
    }

    /// Frames that start within the audio: `n_samples / 160`, which is what Whisper calls
    /// the content frames (the seek range of its transcription loop).
    pub fn content_frames(&self) -> usize {
        self.content_frames
    }

    /// The computed values, `n_mels × n_frames` row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The value of every frame after the computed ones (silence).
    pub fn silence_value(&self) -> f32 {
        self.silence
    }

    /// The value of band `mel` at `frame`; frames past the computed ones are silence.
    /// Returns `None` if `mel` is out of range.
    pub fn get(&self, mel: usize, frame: usize) -> Option<f32> {
        if mel >= self.n_mels {
            return None;
        }
        if frame >= self.n_frames {
            return Some(self.silence);
        }
        self.data.get(mel * self.n_frames + frame).copied()
    }

    /// Frames `start .. start + len` as `n_mels × len` row-major, with frames past the
    /// computed ones set to the silence value. This is one Whisper input window when `len`
    /// is [`N_FRAMES`].
    pub fn segment(&self, start: usize, len: usize) -> Vec<f32> {
        let mut out = vec![self.silence; self.n_mels * len];
        let avail = self.n_frames.saturating_sub(start).min(len);
        if avail > 0 {
            for (m, dst) in out.chunks_exact_mut(len).enumerate() {
                let row = m * self.n_frames + start;
                if let (Some(src), Some(dst)) =
                    (self.data.get(row..row + avail), dst.get_mut(..avail))
                {
                    dst.copy_from_slice(src);
                }
            }
        }
        out
    }

    /// The first `n_frames` frames (usually [`N_FRAMES`]), padded with the silence value or
    /// cut, as `n_mels × n_frames` row-major.
    pub fn padded(&self, n_frames: usize) -> Vec<f32> {
        self.segment(0, n_frames)
    }
}
