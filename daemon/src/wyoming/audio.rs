//! Wyoming audio (`audio-start`/`audio-chunk`: raw PCM at any `rate`, `width` and
//! `channels`) brought to the speech path's 16 kHz mono as it arrives.

use serde_json::Value;
use sotad_engines::audio::{MonoResampler, SAMPLE_RATE, downmix_to_mono};

use super::frame::Event;

/// A stream's format, from `audio-start` or `audio-chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub rate: u32,
    /// Bytes per sample: 1 (unsigned 8-bit), 2, 3 or 4 (signed little-endian integers).
    pub width: u8,
    pub channels: u16,
}

impl Format {
    /// The format named by an event's `rate`, `width` and `channels`; the error names the
    /// field at fault.
    pub fn of(event: &Event) -> Result<Format, String> {
        let field = |name: &str| -> Result<u64, String> {
            event.data.get(name).and_then(Value::as_u64).ok_or_else(|| {
                format!(
                    "{}: field {name:?} is missing or not a positive integer",
                    event.kind
                )
            })
        };
        let rate = field("rate")?;
        let width = field("width")?;
        let channels = field("channels")?;
        if !(1_000..=768_000).contains(&rate) {
            return Err(format!(
                "{}: rate {rate} Hz is not supported; allowed: 1000 to 768000",
                event.kind
            ));
        }
        if !(1..=4).contains(&width) {
            return Err(format!(
                "{}: width {width} is not supported; allowed: 1, 2, 3 or 4 bytes",
                event.kind
            ));
        }
        if !(1..=32).contains(&channels) {
            return Err(format!(
                "{}: channels {channels} is not supported; allowed: 1 to 32",
                event.kind
            ));
        }
        Ok(Format {
            rate: rate as u32,
            width: width as u8,
            channels: channels as u16,
        })
    }

    /// Bytes of one frame (a sample of every channel).
    pub fn frame_bytes(&self) -> usize {
        usize::from(self.width) * usize::from(self.channels)
    }
}

/// PCM bytes as interleaved samples in [-1, 1); a trailing partial frame is left out.
pub fn to_f32(bytes: &[u8], format: Format) -> Vec<f32> {
    let whole = bytes.len() - bytes.len() % format.frame_bytes();
    let bytes = &bytes[..whole];
    match format.width {
        1 => bytes
            .iter()
            .map(|&b| (f32::from(b) - 128.0) / 128.0)
            .collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
            .collect(),
        3 => bytes
            .chunks_exact(3)
            .map(|b| (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0)
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0)
            .collect(),
    }
}

/// Converts one stream's chunks to 16 kHz mono as they come.
pub struct To16k {
    format: Format,
    resampler: Option<MonoResampler>,
}

impl To16k {
    pub fn new(format: Format) -> Result<To16k, String> {
        let resampler = if format.rate == SAMPLE_RATE {
            None
        } else {
            Some(MonoResampler::new(format.rate, SAMPLE_RATE).map_err(|e| e.to_string())?)
        };
        Ok(To16k { format, resampler })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Appends the chunk's audio, at 16 kHz mono, to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
        let samples = to_f32(bytes, self.format);
        let mono = downmix_to_mono(&samples, self.format.channels);
        match &mut self.resampler {
            None => {
                out.extend_from_slice(&mono);
                Ok(())
            }
            Some(r) => r.push(&mono, out).map_err(|e| e.to_string()),
        }
    }

    /// Flushes the resampler's tail into `out`.
    pub fn finish(self, out: &mut Vec<f32>) -> Result<(), String> {
        match self.resampler {
            None => Ok(()),
            Some(r) => r.finish(out).map_err(|e| e.to_string()),
        }
    }
}

/// Samples in [-1, 1] as 16-bit little-endian PCM bytes.
pub fn to_i16_bytes(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| ((s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_are_checked_field_by_field() {
        let ok = Event::with(
            "audio-start",
            json!({"rate": 22050, "width": 2, "channels": 1}),
        );
        assert_eq!(
            Format::of(&ok).unwrap(),
            Format {
                rate: 22050,
                width: 2,
                channels: 1
            }
        );
        for (data, field) in [
            (json!({"width": 2, "channels": 1}), "rate"),
            (json!({"rate": 16000, "width": 5, "channels": 1}), "width"),
            (
                json!({"rate": 16000, "width": 2, "channels": 0}),
                "channels",
            ),
            (json!({"rate": 10, "width": 2, "channels": 1}), "rate"),
        ] {
            let e = Format::of(&Event::with("audio-chunk", data)).unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn every_width_and_stereo_48k_become_16k_mono() {
        let f = |width, channels| Format {
            rate: 16_000,
            width,
            channels,
        };
        assert_eq!(
            to_f32(&[128, 0, 255], f(1, 1)),
            vec![0.0, -1.0, 127.0 / 128.0]
        );
        assert_eq!(
            to_f32(&[0, 0x80, 0xff, 0x7f, 9], f(2, 1)),
            vec![-1.0, 32767.0 / 32768.0]
        );
        assert_eq!(to_f32(&[0, 0, 0x40], f(3, 1)), vec![0.5]);
        assert_eq!(to_f32(&[0, 0, 0, 0xc0], f(4, 1)), vec![-0.5]);
        // 1 s of stereo 48 kHz in uneven chunks: 16000 mono samples, within the filter's delay.
        let format = Format {
            rate: 48_000,
            width: 2,
            channels: 2,
        };
        let bytes = to_i16_bytes(&vec![0.25; 96_000]);
        let mut conv = To16k::new(format).unwrap();
        let mut out = Vec::new();
        for piece in bytes.chunks(1234 * 4) {
            conv.push(piece, &mut out).unwrap();
        }
        conv.finish(&mut out).unwrap();
        assert!((out.len() as i64 - 16_000).abs() < 64, "{}", out.len());
        assert!((out[8_000] - 0.25).abs() < 1e-3, "{}", out[8_000]);
    }
}
