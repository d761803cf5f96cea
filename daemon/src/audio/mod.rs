//! Sound in and out through ALSA: the capture thread that feeds the voice pipeline, and the
//! player that speaks. Both run on plain threads (ALSA calls block); nothing here is async.
//!
//! - [`capture`]: [`Capture::spawn`] opens a capture device by name, converts whatever it
//!   offers to 16 kHz mono f32, and pushes fixed [`AudioFrame`]s into a bounded channel with
//!   `try_send` (a full channel drops frames and counts them; the thread never waits for the
//!   pipeline). Overruns are recovered; a missing, busy or unplugged device is retried with
//!   back-off while [`CaptureStatus`] says so.
//! - [`playback`]: [`Player::play`] writes i16 or f32 speech at the voice's rate to a device,
//!   stoppable mid-utterance through an `AtomicBool` (barge-in). A missing or busy device is a
//!   [`PlayError`] value, never a panic.
//!
//! Both open devices with `SND_PCM_NO_AUTO_RESAMPLE | SND_PCM_NO_AUTO_CHANNELS`: alsa-lib's
//! `plug` would otherwise convert rate and channels with its linear interpolator; the device's
//! own rate and channel count are used instead, and the conversion is done here (downmix and
//! rubato's sinc resampler from `sotad_engines::audio`). Sample formats are still converted
//! by alsa-lib where a `plug` layer exists (S32-only I2S microphones, for instance).

pub mod capture;
mod pcm;
pub mod playback;

pub use self::capture::{
    AudioFrame, Capture, CaptureConfig, CaptureHandle, CaptureSnapshot, CaptureState,
    CaptureStatus, FRAME_SAMPLES, FrameReceiver, FrameSender, SAMPLE_RATE, frame_channel,
};
pub use self::playback::{PlayError, PlayStats, PlaybackConfig, Player, Samples};
