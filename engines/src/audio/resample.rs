//! Downmix to mono and sample-rate conversion (to Whisper's 16 kHz).
//!
//! [`to_mono_16k`] is the one-shot conversion for a whole clip; [`MonoResampler`] does the
//! same on a stream of chunks (a microphone) and gives identical output for the same input,
//! however it is split.
//!
//! # The resampler
//!
//! A windowed-sinc interpolator (rubato's `SincFixedIn`) with these parameters:
//!
//! | parameter | value | why |
//! |---|---|---|
//! | sinc length | 256 taps | a steep anti-aliasing filter |
//! | window | Blackman-Harris² | high stop-band attenuation |
//! | cut-off | `calculate_cutoff(256, BlackmanHarris2)` ≈ 0.92 of the lower Nyquist frequency | the highest the window allows without aliasing |
//! | oversampling | 256 | with cubic interpolation between sinc points, error far below 16-bit noise |
//! | interpolation | cubic | |
//! | chunk | 1024 input frames | |
//!
//! Output sample `j` is aligned with input time `j / rate_out` to within 1/256 of an input
//! sample (one step of the oversampled sinc table; the tests check the phase of resampled
//! sines), and the output has exactly `ceil(n_in × rate_out / rate_in)`
//! samples: the filter's tail is flushed with zeros at the end. Input rates from
//! [`MIN_RATE`] to [`MAX_RATE`] Hz are accepted; outside that range the buffers a chunk
//! needs would be absurd (a WAV header may claim 1 Hz).

use std::borrow::Cow;

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
    calculate_cutoff,
};

use super::SAMPLE_RATE;
use crate::error::{Error, Result};

/// Lowest sample rate accepted by the resampler.
pub const MIN_RATE: u32 = 1_000;
/// Highest sample rate accepted by the resampler.
pub const MAX_RATE: u32 = 768_000;

const SINC_LEN: usize = 256;
const WINDOW: WindowFunction = WindowFunction::BlackmanHarris2;
const OVERSAMPLING: usize = 256;
const CHUNK: usize = 1024;

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Averages the channels of interleaved audio into one.
///
/// Averaging (rather than summing) keeps the level of a signal that is the same on every
/// channel. A trailing partial frame is dropped; `channels` of 0 or 1 returns a copy.
pub fn downmix_to_mono(interleaved: &[f32], channels: u16) -> Vec<f32> {
    let n = usize::from(channels.max(1));
    if n == 1 {
        return interleaved.to_vec();
    }
    let scale = 1.0 / n as f32;
    interleaved
        .chunks_exact(n)
        .map(|frame| frame.iter().sum::<f32>() * scale)
        .collect()
}

/// Converts interleaved audio at any rate and channel count to 16 kHz mono.
///
/// Already 16 kHz mono input is returned borrowed, untouched. See the module docs for the
/// resampler's parameters.
pub fn to_mono_16k(interleaved: &[f32], sample_rate: u32, channels: u16) -> Result<Cow<'_, [f32]>> {
    let mono: Cow<'_, [f32]> = if channels <= 1 {
        Cow::Borrowed(interleaved)
    } else {
        Cow::Owned(downmix_to_mono(interleaved, channels))
    };
    if sample_rate == SAMPLE_RATE {
        return Ok(mono);
    }
    let mut resampler = MonoResampler::new(sample_rate, SAMPLE_RATE).map_err(|e| match e {
        Error::Resample {
            from_rate,
            to_rate,
            reason,
            ..
        } => Error::Resample {
            from_rate,
            to_rate,
            channels: usize::from(channels),
            reason,
        },
        other => other,
    })?;
    let mut out = Vec::with_capacity(resampler.output_len(mono.len() as u64) as usize);
    resampler.push(&mono, &mut out)?;
    resampler.finish(&mut out)?;
    Ok(Cow::Owned(out))
}

/// Resamples mono audio from `from_rate` to `to_rate` in one call.
pub fn resample_mono(samples: &[f32], from_rate: u32, to_rate: u32) -> Result<Vec<f32>> {
    let mut resampler = MonoResampler::new(from_rate, to_rate)?;
    let mut out = Vec::with_capacity(resampler.output_len(samples.len() as u64) as usize);
    resampler.push(samples, &mut out)?;
    resampler.finish(&mut out)?;
    Ok(out)
}

/// A streaming mono resampler: feed chunks of any size with [`push`](Self::push), then
/// [`finish`](Self::finish) to flush the filter's tail.
///
/// Equal rates pass samples through unchanged.
pub struct MonoResampler {
    from_rate: u32,
    to_rate: u32,
    /// `None` when the rates are equal.
    inner: Option<Box<SincFixedIn<f32>>>,
    /// Input not yet processed (fewer than `CHUNK` samples).
    pending: Vec<f32>,
    out_buf: Vec<Vec<f32>>,
    /// Output samples still to drop (the filter's delay).
    skip: usize,
    /// Input samples pushed so far.
    consumed: u64,
    /// Output samples emitted so far.
    produced: u64,
}

impl std::fmt::Debug for MonoResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonoResampler")
            .field("from_rate", &self.from_rate)
            .field("to_rate", &self.to_rate)
            .field("consumed", &self.consumed)
            .field("produced", &self.produced)
            .finish_non_exhaustive()
    }
}

impl MonoResampler {
    /// A resampler from `from_rate` to `to_rate` Hz (each within [`MIN_RATE`]..=[`MAX_RATE`]).
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Self> {
        let err = |reason: String| Error::Resample {
            from_rate,
            to_rate,
            channels: 1,
            reason,
        };
        for (what, rate) in [("input", from_rate), ("output", to_rate)] {
            if !(MIN_RATE..=MAX_RATE).contains(&rate) {
                return Err(err(format!(
                    "{what} rate {rate} Hz is outside the supported {MIN_RATE}..={MAX_RATE} Hz"
                )));
            }
        }
        let (inner, out_buf) = if from_rate == to_rate {
            (None, Vec::new())
        } else {
            let params = SincInterpolationParameters {
                sinc_len: SINC_LEN,
                f_cutoff: calculate_cutoff(SINC_LEN, WINDOW),
                oversampling_factor: OVERSAMPLING,
                interpolation: SincInterpolationType::Cubic,
                window: WINDOW,
            };
            let ratio = f64::from(to_rate) / f64::from(from_rate);
            let r = SincFixedIn::<f32>::new(ratio, 1.0, params, CHUNK, 1)
                .map_err(|e| err(e.to_string()))?;
            let out_buf = r.output_buffer_allocate(true);
            (Some(Box::new(r)), out_buf)
        };
        let mut resampler = Self {
            from_rate,
            to_rate,
            inner,
            pending: Vec::with_capacity(CHUNK),
            out_buf,
            skip: 0,
            consumed: 0,
            produced: 0,
        };
        if resampler.inner.is_some() {
            // rubato 0.16's SincFixedIn centres output k on input position
            // (k + 1) × from / to − 1 (plus one 1/256 sub-step; its filter delay is already
            // compensated, so its `output_delay()` does not apply). Prepending `from/g − 1`
            // zeros and dropping `to/g − 1` outputs (g = gcd) moves output j to input
            // position j × from / to: ((j + to/g) × from/to − 1) − (from/g − 1) = j × from/to.
            let g = gcd(from_rate, to_rate);
            resampler.skip = (to_rate / g - 1) as usize;
            let zeros = vec![0.0f32; (from_rate / g - 1) as usize];
            let mut sink = Vec::new();
            resampler.push(&zeros, &mut sink)?;
            resampler.consumed = 0;
            debug_assert!(sink.is_empty());
        }
        Ok(resampler)
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from_rate
    }

    /// The output rate.
    pub fn to_rate(&self) -> u32 {
        self.to_rate
    }

    /// How many output samples `n_in` input samples give in total: `ceil(n_in × to / from)`.
    pub fn output_len(&self, n_in: u64) -> u64 {
        let num = u128::from(n_in) * u128::from(self.to_rate);
        let den = u128::from(self.from_rate.max(1));
        u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
    }

    /// Resamples `input`, appending whatever output is ready to `out`.
    ///
    /// Output lags input by the filter's delay until [`finish`](Self::finish).
    pub fn push(&mut self, mut input: &[f32], out: &mut Vec<f32>) -> Result<()> {
        self.consumed += input.len() as u64;
        if self.inner.is_none() {
            out.extend_from_slice(input);
            self.produced += input.len() as u64;
            return Ok(());
        }
        if !self.pending.is_empty() {
            let take = (CHUNK - self.pending.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.pending.extend_from_slice(head);
            input = rest;
            if self.pending.len() < CHUNK {
                return Ok(());
            }
            let chunk = std::mem::take(&mut self.pending);
            self.process(Some(&chunk), false, u64::MAX, out)?;
            self.pending = chunk;
            self.pending.clear();
        }
        while input.len() >= CHUNK {
            let (chunk, rest) = input.split_at(CHUNK);
            self.process(Some(chunk), false, u64::MAX, out)?;
            input = rest;
        }
        self.pending.extend_from_slice(input);
        Ok(())
    }

    /// Flushes the filter: appends the remaining output to `out`, so that the total output
    /// is exactly [`output_len`](Self::output_len) of the total input.
    pub fn finish(mut self, out: &mut Vec<f32>) -> Result<()> {
        if self.inner.is_none() {
            return Ok(());
        }
        let expected = self.output_len(self.consumed);
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() && self.produced < expected {
            self.process(Some(&pending), true, expected, out)?;
        }
        // Each zero chunk yields about CHUNK × ratio samples; the delay is SINC_LEN / 2 input
        // samples, so a few chunks always suffice. The bound only guards against a bug.
        let mut rounds = 0;
        while self.produced < expected {
            rounds += 1;
            if rounds > 64 {
                return Err(Error::Resample {
                    from_rate: self.from_rate,
                    to_rate: self.to_rate,
                    channels: 1,
                    reason: format!(
                        "flushing produced only {} of {expected} samples",
                        self.produced
                    ),
                });
            }
            self.process(None, true, expected, out)?;
        }
        Ok(())
    }

    /// Runs one chunk through the filter (`partial`: zero-padded, possibly empty) and emits
    /// its output, skipping the delay and stopping at `limit` samples in total.
    fn process(
        &mut self,
        chunk: Option<&[f32]>,
        partial: bool,
        limit: u64,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (from_rate, to_rate) = (self.from_rate, self.to_rate);
        let Some(r) = self.inner.as_mut() else {
            return Ok(());
        };
        let result = match (chunk, partial) {
            (Some(c), false) => r.process_into_buffer(&[c], &mut self.out_buf, None),
            (Some(c), true) => r.process_partial_into_buffer(Some(&[c]), &mut self.out_buf, None),
            (None, _) => r.process_partial_into_buffer(None::<&[&[f32]]>, &mut self.out_buf, None),
        };
        let (_, n) = result.map_err(|e| Error::Resample {
            from_rate,
            to_rate,
            channels: 1,
            reason: e.to_string(),
        })?;
        let produced = self
            .out_buf
            .first()
            .and_then(|b| b.get(..n))
            .unwrap_or_default();
        let skip = self.skip.min(produced.len());
        self.skip -= skip;
        let room = usize::try_from(limit.saturating_sub(self.produced)).unwrap_or(usize::MAX);
        let emit = produced.get(skip..).unwrap_or_default();
        let emit = emit.get(..room.min(emit.len())).unwrap_or_default();
        out.extend_from_slice(emit);
        self.produced += emit.len() as u64;
        Ok(())
    }
}
