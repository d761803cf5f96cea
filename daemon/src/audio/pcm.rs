//! Opening an ALSA PCM by a configured name, and classifying its errors.

use std::ffi::CString;

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

/// `SND_PCM_NO_AUTO_RESAMPLE | SND_PCM_NO_AUTO_CHANNELS` (alsa/pcm.h).
const NO_AUTO_CONVERSIONS: i32 = 0x0001_0000 | 0x0002_0000;

/// Why a device could not be used, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// Not there (unknown name, unplugged, file absent): ENOENT, ENODEV, ENXIO, ESHUTDOWN.
    Missing,
    /// Used by another program: EBUSY, EAGAIN at open.
    Busy,
    /// Anything else (unsupported parameters, I/O error).
    Other,
}

pub(crate) fn classify(e: &alsa::Error) -> Trouble {
    match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO | libc::ESHUTDOWN => Trouble::Missing,
        libc::EBUSY | libc::EAGAIN => Trouble::Busy,
        _ => Trouble::Other,
    }
}

/// The sample format negotiated with the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SampleFmt {
    S16,
    S32,
    F32,
}

/// An open, configured PCM.
pub(crate) struct OpenPcm {
    pub pcm: PCM,
    pub rate: u32,
    pub channels: u32,
    pub format: SampleFmt,
    /// Frames per period.
    pub period: usize,
}

/// Opens `device` non-blocking for `dir`, asking for `rate` Hz and `channels` channels (the
/// nearest the device offers is accepted), interleaved S16 (else S32, else F32), with about
/// `buffer_ms` of buffer in periods of about a quarter of it.
pub(crate) fn open(
    device: &str,
    dir: Direction,
    rate: u32,
    channels: u32,
    buffer_ms: u32,
) -> Result<OpenPcm, alsa::Error> {
    // A NUL inside a configured name cannot reach alsa-lib; report it as an unknown device.
    let name = CString::new(device).map_err(|_| alsa::Error::new("snd_pcm_open", libc::ENOENT))?;
    // SAFETY: the flags are the documented SND_PCM_NO_AUTO_* open modes of alsa/pcm.h.
    let pcm = unsafe { PCM::open_with_flags(&name, dir, true, NO_AUTO_CONVERSIONS)? };
    let (rate, channels, format, period) = {
        let hwp = HwParams::any(&pcm)?;
        hwp.set_access(Access::RWInterleaved)?;
        let format = if hwp.test_format(Format::s16()).is_ok() {
            hwp.set_format(Format::s16())?;
            SampleFmt::S16
        } else if hwp.test_format(Format::s32()).is_ok() {
            hwp.set_format(Format::s32())?;
            SampleFmt::S32
        } else {
            hwp.set_format(Format::float())?;
            SampleFmt::F32
        };
        let channels = hwp.set_channels_near(channels)?;
        let rate = hwp.set_rate_near(rate, ValueOr::Nearest)?;
        let buffer_us = buffer_ms.max(10) * 1000;
        hwp.set_buffer_time_near(buffer_us, ValueOr::Nearest)?;
        let period_frames = (u64::from(rate) * u64::from(buffer_us / 4) / 1_000_000).max(32);
        let period =
            hwp.set_period_size_near(period_frames as alsa::pcm::Frames, ValueOr::Nearest)?;
        pcm.hw_params(&hwp)?;
        (
            rate,
            channels,
            format,
            usize::try_from(period).unwrap_or(1024).max(1),
        )
    };
    Ok(OpenPcm {
        pcm,
        rate,
        channels,
        format,
        period,
    })
}
