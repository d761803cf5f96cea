//! Playing speech on an ALSA device, stoppable mid-utterance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alsa::Direction;
use sotad_engines::audio::MonoResampler;

use super::pcm::{self, OpenPcm, SampleFmt, Trouble};

/// Playback settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackConfig {
    /// ALSA PCM name.
    pub device: String,
    /// ALSA buffer length, ms: the most audio still queued when playback is cancelled.
    pub buffer_ms: u32,
}

impl Default for PlaybackConfig {
    fn default() -> Self {
        Self {
            device: "default".into(),
            buffer_ms: 100,
        }
    }
}

/// Mono speech samples to play.
#[derive(Debug, Clone, Copy)]
pub enum Samples<'a> {
    /// 16-bit PCM.
    I16(&'a [i16]),
    /// Float in [-1, 1] (clipped).
    F32(&'a [f32]),
}

impl Samples<'_> {
    fn len(&self) -> usize {
        match self {
            Samples::I16(s) => s.len(),
            Samples::F32(s) => s.len(),
        }
    }

    fn to_f32(self) -> Vec<f32> {
        match self {
            Samples::I16(s) => s.iter().map(|&x| f32::from(x) / 32768.0).collect(),
            Samples::F32(s) => s
                .iter()
                .map(|&x| {
                    if x.is_finite() {
                        x.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                })
                .collect(),
        }
    }
}

/// What a [`Player::play`] call did.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayStats {
    /// Input samples written to the device (all of them unless cancelled).
    pub samples_played: usize,
    /// Whether `cancel` stopped playback early (the queued audio was discarded).
    pub cancelled: bool,
    /// Underruns recovered.
    pub underruns: u64,
    /// The device's rate and channels.
    pub device_rate: u32,
    /// Channels the mono speech was duplicated to.
    pub device_channels: u32,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// Why playback failed. Not fatal: the daemon reports it and carries on.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// The device does not exist (unknown name, unplugged).
    #[error("playback device {device:?} is missing: {source}")]
    Missing {
        /// The configured name.
        device: String,
        /// ALSA's error.
        source: alsa::Error,
    },
    /// Another program holds the device.
    #[error("playback device {device:?} is busy: {source}")]
    Busy {
        /// The configured name.
        device: String,
        /// ALSA's error.
        source: alsa::Error,
    },
    /// Any other device error, with what was being done.
    #[error("playback device {device:?}: {what}: {source}")]
    Device {
        /// The configured name.
        device: String,
        /// The step that failed.
        what: &'static str,
        /// ALSA's error.
        source: alsa::Error,
    },
    /// The input cannot be played (unsupported rate).
    #[error("cannot play {rate} Hz audio on {device:?}: {reason}")]
    Input {
        /// The configured name.
        device: String,
        /// The input rate.
        rate: u32,
        /// What is wrong.
        reason: String,
    },
}

/// Plays speech on one configured device. The device is opened for each utterance and
/// closed after it, so other programs can use it in between, and an unplugged device that
/// comes back works again at the next utterance.
#[derive(Debug, Clone)]
pub struct Player {
    cfg: PlaybackConfig,
}

impl Player {
    /// A player for `cfg.device` (nothing is opened yet).
    pub fn open(cfg: PlaybackConfig) -> Self {
        Self { cfg }
    }

    /// The configured device name.
    pub fn device(&self) -> &str {
        &self.cfg.device
    }

    /// Plays `samples` (mono, `rate` Hz), blocking until they have been played, or until
    /// `cancel` becomes true (checked at least every period, about `buffer_ms / 4`), in which
    /// case the audio still queued in the device is dropped at once.
    pub fn play(
        &self,
        samples: Samples<'_>,
        rate: u32,
        cancel: &AtomicBool,
    ) -> Result<PlayStats, PlayError> {
        self.play_stream(samples, rate, &mut || None, cancel)
    }

    /// Plays `first`, then each piece `more` returns until it returns `None`, on one open
    /// device: the pieces follow each other without a gap as long as each comes before the
    /// device has played out the one before (the device keeps running while `more` waits; a
    /// piece that comes too late is an underrun, recovered and counted). Every piece is mono
    /// at `rate`. Otherwise as [`Player::play`].
    pub fn play_stream(
        &self,
        first: Samples<'_>,
        rate: u32,
        more: &mut dyn FnMut() -> Option<Vec<f32>>,
        cancel: &AtomicBool,
    ) -> Result<PlayStats, PlayError> {
        let started = Instant::now();
        let device = &self.cfg.device;
        let dev_err = |what: &'static str, e: alsa::Error| match pcm::classify(&e) {
            Trouble::Missing => PlayError::Missing {
                device: device.clone(),
                source: e,
            },
            Trouble::Busy if what == "open" => PlayError::Busy {
                device: device.clone(),
                source: e,
            },
            _ => PlayError::Device {
                device: device.clone(),
                what,
                source: e,
            },
        };
        let input_err = |reason: String| PlayError::Input {
            device: device.clone(),
            rate,
            reason,
        };
        if rate == 0 {
            return Err(input_err("the rate is 0".into()));
        }
        let dev = pcm::open(device, Direction::Playback, rate, 1, self.cfg.buffer_ms)
            .map_err(|e| dev_err("open", e))?;
        // Convert to the device's rate and channel count here (see the module docs); one
        // resampler for the whole stream, so the pieces join seamlessly.
        let mut resampler = if dev.rate == rate {
            None
        } else {
            Some(MonoResampler::new(rate, dev.rate).map_err(|e| input_err(e.to_string()))?)
        };
        let mut total_in = first.len();
        let mut failed: Option<String> = None;
        let mut finished = false;
        // The next piece at the device's rate: the input's pieces, then the resampler's tail.
        let mut convert = |mono: Option<Vec<f32>>| -> Option<Vec<f32>> {
            if resampler.is_none() {
                return mono;
            }
            if finished || failed.is_some() {
                return None;
            }
            let mut out = Vec::new();
            let step = match (&mono, resampler.take()) {
                (Some(m), Some(mut r)) => {
                    out.reserve(m.len() * dev.rate as usize / rate as usize + 64);
                    let step = r.push(m, &mut out);
                    resampler = Some(r);
                    step
                }
                (None, Some(r)) => {
                    finished = true;
                    r.finish(&mut out)
                }
                (_, None) => Ok(()),
            };
            match step {
                Ok(()) => Some(out),
                Err(e) => {
                    failed = Some(e.to_string());
                    None
                }
            }
        };
        let first = convert(Some(first.to_f32())).unwrap_or_default();
        let mut next = || match more() {
            Some(piece) => {
                total_in += piece.len();
                convert(Some(Samples::F32(&piece).to_f32()))
            }
            None => convert(None),
        };
        let mut stats = PlayStats {
            samples_played: 0,
            cancelled: false,
            underruns: 0,
            device_rate: dev.rate,
            device_channels: dev.channels,
            elapsed: Duration::ZERO,
        };
        let result = match dev.format {
            SampleFmt::S16 => {
                let io = dev.pcm.io_i16().map_err(|e| dev_err("io", e))?;
                write_all(
                    &dev,
                    first,
                    &mut next,
                    |x| (x * 32767.0).round() as i16,
                    |b| io.writei(b),
                    cancel,
                    &mut stats,
                )
            }
            SampleFmt::S32 => {
                let io = dev.pcm.io_i32().map_err(|e| dev_err("io", e))?;
                write_all(
                    &dev,
                    first,
                    &mut next,
                    |x| (f64::from(x) * 2_147_483_647.0).round() as i32,
                    |b| io.writei(b),
                    cancel,
                    &mut stats,
                )
            }
            SampleFmt::F32 => {
                let io = dev.pcm.io_f32().map_err(|e| dev_err("io", e))?;
                write_all(
                    &dev,
                    first,
                    &mut next,
                    |x| x,
                    |b| io.writei(b),
                    cancel,
                    &mut stats,
                )
            }
        };
        drop(next);
        result.map_err(|(what, e)| dev_err(what, e))?;
        if let Some(reason) = failed {
            return Err(input_err(reason));
        }
        // Map device frames written back to input samples.
        stats.samples_played = if stats.cancelled {
            (stats.samples_played as u64 * u64::from(rate) / u64::from(dev.rate.max(1))) as usize
        } else {
            total_in
        };
        stats.elapsed = started.elapsed();
        Ok(stats)
    }
}

type WriteError = (&'static str, alsa::Error);

/// Writes `first` and the pieces `next` returns (mono, at the device's rate) duplicated to
/// every channel, then waits for the device to play them out. `stats.samples_played` counts
/// device frames written.
fn write_all<S: Copy + Default>(
    dev: &OpenPcm,
    first: Vec<f32>,
    next: &mut dyn FnMut() -> Option<Vec<f32>>,
    convert: impl Fn(f32) -> S,
    mut writei: impl FnMut(&[S]) -> alsa::Result<usize>,
    cancel: &AtomicBool,
    stats: &mut PlayStats,
) -> Result<(), WriteError> {
    let ch = dev.channels.max(1) as usize;
    let mut buf: Vec<S> = Vec::with_capacity(dev.period * ch);
    let mut piece = Some(first);
    while let Some(mono) = piece.take() {
        write_piece(dev, &mono, &convert, &mut writei, &mut buf, cancel, stats)?;
        if stats.cancelled {
            return Ok(());
        }
        if dev.pcm.state() == alsa::pcm::State::Prepared && !mono.is_empty() {
            // Less than the start threshold was written: play it now rather than wait.
            let _ = dev.pcm.start();
        }
        piece = next();
    }
    play_out(dev, cancel, stats)
}

/// Writes one piece; on `cancel`, drops the device's queue and sets `stats.cancelled`.
fn write_piece<S: Copy + Default>(
    dev: &OpenPcm,
    mono: &[f32],
    convert: &impl Fn(f32) -> S,
    writei: &mut impl FnMut(&[S]) -> alsa::Result<usize>,
    buf: &mut Vec<S>,
    cancel: &AtomicBool,
    stats: &mut PlayStats,
) -> Result<(), WriteError> {
    let ch = dev.channels.max(1) as usize;
    let mut pos = 0usize;
    while pos < mono.len() {
        if cancel.load(Ordering::Acquire) {
            stats.cancelled = true;
            let _ = dev.pcm.drop();
            return Ok(());
        }
        let end = (pos + dev.period).min(mono.len());
        buf.clear();
        for &x in &mono[pos..end] {
            let s = convert(x);
            buf.extend(std::iter::repeat_n(s, ch));
        }
        let mut off = 0;
        while off < end - pos {
            if cancel.load(Ordering::Acquire) {
                stats.cancelled = true;
                let _ = dev.pcm.drop();
                return Ok(());
            }
            match writei(&buf[off * ch..]) {
                Ok(n) => {
                    off += n;
                    stats.samples_played += n;
                }
                Err(e) if e.errno() == libc::EAGAIN => {
                    let _ = dev.pcm.wait(Some(100));
                }
                Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE => {
                    stats.underruns += 1;
                    dev.pcm
                        .try_recover(e, true)
                        .map_err(|e| ("underrun recovery", e))?;
                }
                Err(e) => return Err(("write", e)),
            }
        }
        pos = end;
    }
    Ok(())
}

/// Waits for the queued audio to play out, still watching `cancel`.
fn play_out(dev: &OpenPcm, cancel: &AtomicBool, stats: &mut PlayStats) -> Result<(), WriteError> {
    // Wait for the queued audio to play out, still watching `cancel`.
    if dev.pcm.state() == alsa::pcm::State::Prepared {
        // Less than a buffer was written: start explicitly.
        let _ = dev.pcm.start();
    }
    loop {
        if cancel.load(Ordering::Acquire) {
            stats.cancelled = true;
            let _ = dev.pcm.drop();
            return Ok(());
        }
        match dev.pcm.delay() {
            Ok(d) if d > 0 && dev.pcm.state() == alsa::pcm::State::Running => {
                let ms = (d as u64 * 1000 / u64::from(dev.rate.max(1))).clamp(1, 20);
                std::thread::sleep(Duration::from_millis(ms));
            }
            _ => break,
        }
    }
    let _ = dev.pcm.drain();
    Ok(())
}
