//! The capture thread: ALSA device -> 16 kHz mono f32 frames -> bounded channel.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alsa::Direction;
use alsa::pcm::IO;
use sotad_engines::audio::{MonoResampler, downmix_to_mono};
use tokio::sync::mpsc;

use super::pcm::{self, OpenPcm, SampleFmt, Trouble};

/// The rate frames are delivered at: the engines' one speech rate.
pub use sotad_engines::audio::SAMPLE_RATE;
/// Samples per frame: 32 ms, one Silero VAD window.
pub const FRAME_SAMPLES: usize = 512;

/// One frame of captured audio: [`FRAME_SAMPLES`] samples, 16 kHz mono, f32 in [-1, 1].
#[derive(Debug, Clone)]
pub struct AudioFrame {
    /// The samples.
    pub samples: Box<[f32; FRAME_SAMPLES]>,
    /// Frame number since the thread started, counting dropped frames too (a gap in `seq`
    /// is a drop) and continuing across device reopenings.
    pub seq: u64,
    /// When the frame was complete.
    pub captured_at: Instant,
}

/// Sending side of the frame channel (the capture thread only uses `try_send`).
pub type FrameSender = mpsc::Sender<AudioFrame>;
/// Receiving side: `recv().await` in tokio, `blocking_recv()` on a worker thread.
pub type FrameReceiver = mpsc::Receiver<AudioFrame>;

/// A bounded frame channel holding at most `capacity` frames (at least 1).
pub fn frame_channel(capacity: usize) -> (FrameSender, FrameReceiver) {
    mpsc::channel(capacity.max(1))
}

/// Capture settings (the `[audio]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// ALSA PCM name: `default`, `plughw:CARD=Device,DEV=0`, `hw:1,0`, a name from asoundrc.
    pub device: String,
    /// ALSA buffer length, ms (the period is a quarter of it).
    pub buffer_ms: u32,
    /// First wait before reopening a missing/busy/failed device, ms.
    pub retry_min_ms: u64,
    /// Longest wait between reopen attempts, ms (the wait doubles up to it).
    pub retry_max_ms: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            device: "default".into(),
            buffer_ms: 128,
            retry_min_ms: 250,
            retry_max_ms: 5_000,
        }
    }
}

/// Where the capture thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CaptureState {
    /// Opening the device.
    Starting = 0,
    /// Capturing.
    Open = 1,
    /// The device does not exist (unknown name, unplugged); retrying.
    Missing = 2,
    /// Another program holds the device; retrying.
    Busy = 3,
    /// Another error (unsupported parameters, I/O error); retrying.
    Failed = 4,
    /// The thread has stopped.
    Stopped = 5,
}

impl CaptureState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Starting,
            1 => Self::Open,
            2 => Self::Missing,
            3 => Self::Busy,
            4 => Self::Failed,
            _ => Self::Stopped,
        }
    }

    /// A short name for logs, telemetry and `voice/state` (`missing`, `busy` and `failed`
    /// mean the thread is retrying with back-off).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Open => "open",
            Self::Missing => "missing",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// Shared, lock-free status of a capture thread (the last error sits behind a mutex that
/// the thread only takes when an error happens).
#[derive(Debug, Default)]
pub struct CaptureStatus {
    state: AtomicU8,
    frames_sent: AtomicU64,
    frames_dropped: AtomicU64,
    overruns: AtomicU64,
    opens: AtomicU64,
    device_rate: AtomicU32,
    device_channels: AtomicU32,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`CaptureStatus`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSnapshot {
    /// Where the thread is.
    pub state: CaptureState,
    /// Frames delivered to the channel.
    pub frames_sent: u64,
    /// Frames dropped because the channel was full.
    pub frames_dropped: u64,
    /// ALSA overruns recovered (audio lost inside the device buffer).
    pub overruns: u64,
    /// Successful opens of the device (1 + reopenings).
    pub opens: u64,
    /// Rate and channel count the device runs at (0 before the first open).
    pub device_rate: u32,
    /// Channels the device delivers.
    pub device_channels: u32,
    /// The last error, if any, with the device name.
    pub last_error: Option<String>,
}

impl CaptureStatus {
    /// A status in the `Starting` state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> CaptureState {
        CaptureState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// All counters.
    pub fn snapshot(&self) -> CaptureSnapshot {
        CaptureSnapshot {
            state: self.state(),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
            opens: self.opens.load(Ordering::Relaxed),
            device_rate: self.device_rate.load(Ordering::Relaxed),
            device_channels: self.device_channels.load(Ordering::Relaxed),
            last_error: self.last_error.lock().map(|e| e.clone()).unwrap_or(None),
        }
    }

    fn set_state(&self, s: CaptureState) {
        self.state.store(s as u8, Ordering::Release);
    }

    fn set_error(&self, msg: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(msg);
        }
    }
}

/// How far ahead of the clock a device may deliver before the capture thread waits.
const PACING_SLACK: Duration = Duration::from_millis(250);

/// Starts capture threads.
#[derive(Debug)]
pub struct Capture;

/// The running capture thread; [`CaptureHandle::stop`] (or dropping it) ends it.
#[derive(Debug)]
pub struct CaptureHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CaptureHandle {
    /// Stops the thread and waits for it (at most about 100 ms: it polls the flag).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Capture {
    /// Starts the capture thread on `cfg.device`. It runs until stopped, reopening the
    /// device with back-off whenever it is missing, busy or fails. The only error is
    /// failing to spawn the thread.
    pub fn spawn(
        cfg: CaptureConfig,
        tx: FrameSender,
        status: Arc<CaptureStatus>,
    ) -> std::io::Result<CaptureHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("sotad-capture".into())
            .spawn({
                let stop = stop.clone();
                move || run(cfg, tx, status, stop)
            })?;
        Ok(CaptureHandle {
            stop,
            thread: Some(thread),
        })
    }
}

/// Turns device samples into frames and sends them.
struct Framer {
    resampler: Option<MonoResampler>,
    channels: usize,
    mono: Vec<f32>,
    out: Vec<f32>,
    seq: u64,
}

impl Framer {
    fn push(&mut self, interleaved: &[f32], tx: &FrameSender, status: &CaptureStatus) {
        let mono = if self.channels == 1 {
            interleaved
        } else {
            self.mono = downmix_to_mono(interleaved, self.channels as u16);
            &self.mono
        };
        match &mut self.resampler {
            Some(r) => {
                if let Err(e) = r.push(mono, &mut self.out) {
                    // Cannot happen for validated rates; drop the audio rather than panic.
                    tracing::warn!(error = %e, "resampling captured audio failed");
                }
            }
            None => self.out.extend_from_slice(mono),
        }
        let mut start = 0;
        while self.out.len() - start >= FRAME_SAMPLES {
            let mut samples = Box::new([0f32; FRAME_SAMPLES]);
            samples.copy_from_slice(&self.out[start..start + FRAME_SAMPLES]);
            start += FRAME_SAMPLES;
            let frame = AudioFrame {
                samples,
                seq: self.seq,
                captured_at: Instant::now(),
            };
            self.seq += 1;
            match tx.try_send(frame) {
                Ok(()) => {
                    status.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    status.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.out.drain(..start);
    }
}

fn run(cfg: CaptureConfig, tx: FrameSender, status: Arc<CaptureStatus>, stop: Arc<AtomicBool>) {
    let min = Duration::from_millis(cfg.retry_min_ms.max(1));
    let max = Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_min_ms).max(1));
    let mut backoff = min;
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        if tx.is_closed() {
            break;
        }
        status.set_state(CaptureState::Starting);
        let trouble = match pcm::open(
            &cfg.device,
            Direction::Capture,
            SAMPLE_RATE,
            1,
            cfg.buffer_ms,
        ) {
            Ok(dev) => {
                status.opens.fetch_add(1, Ordering::Relaxed);
                status.device_rate.store(dev.rate, Ordering::Relaxed);
                status
                    .device_channels
                    .store(dev.channels, Ordering::Relaxed);
                status.set_state(CaptureState::Open);
                tracing::info!(
                    device = %cfg.device, rate = dev.rate, channels = dev.channels,
                    format = ?dev.format, period = dev.period, "capture device open"
                );
                match read_loop(&dev, &tx, &status, &stop, &mut seq) {
                    Ok(()) => break,
                    Err((what, e)) => {
                        backoff = min;
                        let t = pcm::classify(&e);
                        status.set_error(format!("capture device {:?}: {what}: {e}", cfg.device));
                        tracing::warn!(device = %cfg.device, error = %e, "capture {what} failed; reopening");
                        t
                    }
                }
            }
            Err(e) => {
                let t = pcm::classify(&e);
                status.set_error(format!("capture device {:?}: cannot open: {e}", cfg.device));
                tracing::debug!(device = %cfg.device, error = %e, "capture device not available");
                t
            }
        };
        status.set_state(match trouble {
            Trouble::Missing => CaptureState::Missing,
            Trouble::Busy => CaptureState::Busy,
            Trouble::Other => CaptureState::Failed,
        });
        // Interruptible sleep.
        let until = Instant::now() + backoff;
        while !stop.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10).min(backoff));
        }
        backoff = (backoff * 2).min(max);
    }
    status.set_state(CaptureState::Stopped);
}

type LoopError = (&'static str, alsa::Error);

fn read_loop(
    dev: &OpenPcm,
    tx: &FrameSender,
    status: &CaptureStatus,
    stop: &AtomicBool,
    seq: &mut u64,
) -> Result<(), LoopError> {
    let resampler = if dev.rate == SAMPLE_RATE {
        None
    } else {
        match MonoResampler::new(dev.rate, SAMPLE_RATE) {
            Ok(r) => Some(r),
            Err(_) => {
                return Err((
                    "resampling from the device rate",
                    alsa::Error::unsupported("rate"),
                ));
            }
        }
    };
    let mut framer = Framer {
        resampler,
        channels: dev.channels.max(1) as usize,
        mono: Vec::new(),
        out: Vec::with_capacity(4 * FRAME_SAMPLES),
        seq: *seq,
    };
    let n = dev.period * dev.channels.max(1) as usize;
    let mut f = vec![0f32; n];
    dev.pcm.start().map_err(|e| ("start", e))?;
    let result = match dev.format {
        SampleFmt::S16 => {
            let io = dev.pcm.io_i16().map_err(|e| ("io", e))?;
            let mut raw = vec![0i16; n];
            pump(
                dev,
                &io,
                &mut raw,
                &mut f,
                |s| f32::from(s) / 32768.0,
                &mut framer,
                tx,
                status,
                stop,
            )
        }
        SampleFmt::S32 => {
            let io = dev.pcm.io_i32().map_err(|e| ("io", e))?;
            let mut raw = vec![0i32; n];
            pump(
                dev,
                &io,
                &mut raw,
                &mut f,
                |s| s as f32 / 2_147_483_648.0,
                &mut framer,
                tx,
                status,
                stop,
            )
        }
        SampleFmt::F32 => {
            let io = dev.pcm.io_f32().map_err(|e| ("io", e))?;
            let mut raw = vec![0f32; n];
            pump(
                dev,
                &io,
                &mut raw,
                &mut f,
                |s| {
                    if s.is_finite() {
                        s.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                },
                &mut framer,
                tx,
                status,
                stop,
            )
        }
    };
    *seq = framer.seq;
    let _ = dev.pcm.drop();
    result
}

#[allow(clippy::too_many_arguments)]
fn pump<S: Copy>(
    dev: &OpenPcm,
    io: &IO<'_, S>,
    raw: &mut [S],
    f: &mut [f32],
    convert: impl Fn(S) -> f32,
    framer: &mut Framer,
    tx: &FrameSender,
    status: &CaptureStatus,
    stop: &AtomicBool,
) -> Result<(), LoopError> {
    let ch = dev.channels.max(1) as usize;
    // Real-time pacing: a device never delivers audio ahead of the clock by more than its
    // buffer, so for real hardware this never sleeps. Unpaced devices (alsa-lib's file plugin
    // over `null`, used by `sotad demo` and the tests) would otherwise deliver seconds of
    // audio in milliseconds; paced, they behave like a microphone.
    let started = Instant::now();
    let mut delivered = 0u64;
    while !stop.load(Ordering::Acquire) {
        if tx.is_closed() {
            return Ok(());
        }
        match io.readi(raw) {
            Ok(0) => {
                wait(dev)?;
            }
            Ok(frames) => {
                delivered += frames as u64;
                let due = started
                    + Duration::from_secs_f64(delivered as f64 / f64::from(dev.rate.max(1)));
                while !stop.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if due <= now + PACING_SLACK {
                        break;
                    }
                    std::thread::sleep((due - now - PACING_SLACK).min(Duration::from_millis(20)));
                }
                let len = frames * ch;
                for (d, &s) in f[..len].iter_mut().zip(&raw[..len]) {
                    *d = convert(s);
                }
                framer.push(&f[..len], tx, status);
            }
            Err(e) if e.errno() == libc::EAGAIN => wait(dev)?,
            Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE => {
                status.overruns.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "capture overrun; recovering");
                dev.pcm
                    .try_recover(e, true)
                    .map_err(|e| ("overrun recovery", e))?;
                dev.pcm
                    .start()
                    .or_else(|e| {
                        if e.errno() == libc::EBADFD {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| ("restart after overrun", e))?;
            }
            Err(e) => return Err(("read", e)),
        }
    }
    Ok(())
}

/// Waits up to 100 ms for data (so the stop flag is seen promptly).
fn wait(dev: &OpenPcm) -> Result<(), LoopError> {
    match dev.pcm.wait(Some(100)) {
        Ok(_) => Ok(()),
        Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE => Ok(()),
        Err(e) => Err(("wait", e)),
    }
}
