//! WAV (RIFF/WAVE) reading and writing.
//!
//! # What is read
//!
//! A WAV file is a RIFF container: the 12-byte header `"RIFF" size "WAVE"` followed by
//! chunks, each an ASCII id, a little-endian `u32` size and that many bytes, padded to an even
//! length. Only two chunks matter here: `fmt ` (the encoding) and `data` (the samples); every
//! other chunk (`LIST`, `fact`, `bext`, `JUNK`, ...) is skipped.
//!
//! Supported encodings, with any channel count and sample rate:
//!
//! | format tag | bits per sample | decoded as |
//! |---|---|---|
//! | 1 (PCM) | 8 (unsigned) | `(b - 128) / 128` |
//! | 1 (PCM) | 16, 24, 32 (signed) | `x / 2^(bits-1)` |
//! | 3 (IEEE float) | 32, 64 | as is (64-bit rounded to `f32`) |
//! | 0xFFFE (`WAVE_FORMAT_EXTENSIBLE`) | as above, by its sub-format GUID | as above |
//!
//! PCM whose valid bits are fewer than the container's (20-bit audio in 24-bit slots) is read
//! by container size, which is correct because samples are left-justified. RF64/BW64 files
//! (the 64-bit variant, with a `ds64` chunk) are read too.
//!
//! # Untrusted input
//!
//! [`parse_wav`] never panics and never allocates more than the input can fill. Problems are
//! reported as a [`WavError`] naming the file (when read with [`read_wav`]), the byte offset
//! and what is wrong: empty input, not a RIFF/WAVE file (with a hint when the bytes look like
//! FLAC, Ogg, MP3, AIFF or big-endian RIFX), a truncated chunk, a `data` chunk larger than
//! what follows, an unsupported format tag (named: ADPCM, mu-law, A-law, MP3, ...), zero
//! channels or sample rate, or a block size that does not match the channel count.
//!
//! Leniencies, all matching what common readers accept:
//!
//! - The RIFF size field is ignored (streaming writers cannot know it).
//! - A `data` chunk size of 0 or `0xFFFFFFFF` means "to the end of the file", as written by
//!   writers that stream to a pipe. Any other size beyond the end of the file is an error.
//! - A trailing partial frame (fewer bytes than one sample for every channel) is dropped.
//! - Chunks after `data` are not read at all.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::located::{Format, Located, LocatedKind, NoSubject};

/// How samples are stored in a WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SampleFormat {
    /// 8-bit unsigned PCM (silence is 128).
    U8,
    /// 16-bit signed PCM.
    I16,
    /// 24-bit signed PCM, packed in 3 bytes.
    I24,
    /// 32-bit signed PCM.
    I32,
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
}

impl SampleFormat {
    /// Bytes one sample of one channel occupies.
    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::U8 => 1,
            SampleFormat::I16 => 2,
            SampleFormat::I24 => 3,
            SampleFormat::I32 | SampleFormat::F32 => 4,
            SampleFormat::F64 => 8,
        }
    }

    /// A short name, e.g. `"s16"` or `"f32"`.
    pub fn name(self) -> &'static str {
        match self {
            SampleFormat::U8 => "u8",
            SampleFormat::I16 => "s16",
            SampleFormat::I24 => "s24",
            SampleFormat::I32 => "s32",
            SampleFormat::F32 => "f32",
            SampleFormat::F64 => "f64",
        }
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decoded audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    /// Interleaved samples (`frame0.ch0, frame0.ch1, ..., frame1.ch0, ...`), nominally in
    /// `[-1, 1]` (float files may exceed it).
    pub samples: Vec<f32>,
    /// Frames per second.
    pub sample_rate: u32,
    /// Number of interleaved channels (at least 1).
    pub channels: u16,
    /// How the samples were stored in the file.
    pub format: SampleFormat,
}

impl Wav {
    /// Number of frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// Duration in seconds.
    pub fn duration_secs(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.frames() as f64 / f64::from(self.sample_rate)
    }
}

// ----- errors ----------------------------------------------------------------------------

/// A WAV problem with its location: a [`Located`] error (the one shape of every file error).
///
/// Displays as, for example:
///
/// ```text
/// WAV file "/tmp/x.wav" at byte 20: unsupported format tag 0x0007 (mu-law): only PCM (1), IEEE float (3) and WAVE_FORMAT_EXTENSIBLE (0xFFFE) are supported
/// ```
pub type WavError = Located<WavErrorKind>;

impl WavError {
    fn new(kind: WavErrorKind, offset: usize) -> Box<Self> {
        Located::in_format(Format::Wav, kind).at_byte(offset as u64)
    }
}

impl LocatedKind for WavErrorKind {
    /// A WAV error is about the file as a whole.
    type Subject = NoSubject;

    fn fmt_subject(&self, subject: &NoSubject, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *subject {}
    }
}

impl From<Box<WavError>> for Error {
    fn from(e: Box<WavError>) -> Self {
        Error::Wav(e)
    }
}

impl From<WavError> for Error {
    fn from(e: WavError) -> Self {
        Error::Wav(Box::new(e))
    }
}

/// What is wrong with a WAV file. See [`WavError`] for the location.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WavErrorKind {
    /// There are no bytes at all.
    #[error("empty input: 0 bytes")]
    Empty,

    /// The data does not start with `RIFF` (or `RF64`/`BW64`).
    #[error("not a RIFF file: first bytes are {} ({}), expected \"RIFF\"{}", hex(.found), ascii(.found), not_riff_hint(.found))]
    NotRiff {
        /// Up to the first four bytes.
        found: Vec<u8>,
    },

    /// The RIFF form type is not `WAVE`.
    #[error("RIFF form type is {} ({}), expected \"WAVE\"{}", hex(.found), ascii(.found), not_wave_hint(.found))]
    NotWave {
        /// The four bytes at offset 8.
        found: [u8; 4],
    },

    /// The data ends in the middle of a header or chunk.
    #[error("truncated: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes left.
        available: u64,
    },

    /// A chunk's declared size runs past the end of the data.
    #[error("chunk {} declares {size} bytes but only {available} follow its header", ascii(.id))]
    ChunkPastEnd {
        /// The chunk id.
        id: [u8; 4],
        /// The declared size.
        size: u64,
        /// Bytes after the chunk header.
        available: u64,
    },

    /// The `data` chunk's declared size runs past the end of the data.
    #[error(
        "data chunk declares {size} bytes but only {available} follow its header (sizes 0 and 0xFFFFFFFF are read as \"to the end of the file\"; any other size must fit)"
    )]
    DataPastEnd {
        /// The declared size.
        size: u64,
        /// Bytes after the chunk header.
        available: u64,
    },

    /// There is a `data` chunk before any `fmt ` chunk.
    #[error("data chunk comes before the fmt chunk")]
    DataBeforeFmt,

    /// There is no `fmt ` chunk.
    #[error("no fmt chunk (chunks found: {chunks})")]
    MissingFmt {
        /// Ids of the chunks that were found, comma-separated.
        chunks: String,
    },

    /// There is no `data` chunk.
    #[error("no data chunk (chunks found: {chunks})")]
    MissingData {
        /// Ids of the chunks that were found, comma-separated.
        chunks: String,
    },

    /// The `fmt ` chunk is smaller than the 16 bytes of a `WAVEFORMAT` + bits per sample.
    #[error("fmt chunk is {size} bytes, at least 16 are needed")]
    FmtTooShort {
        /// The chunk size.
        size: u64,
    },

    /// A `WAVE_FORMAT_EXTENSIBLE` fmt chunk lacks its extension.
    #[error(
        "WAVE_FORMAT_EXTENSIBLE fmt chunk is {size} bytes with extension size {cb_size}; 40 and 22 are needed"
    )]
    BadExtensible {
        /// The fmt chunk size.
        size: u64,
        /// The `cbSize` field (0 if absent).
        cb_size: u16,
    },

    /// A `WAVE_FORMAT_EXTENSIBLE` sub-format GUID is not a `KSDATAFORMAT_SUBTYPE_*` one.
    #[error("unknown WAVE_FORMAT_EXTENSIBLE sub-format GUID {}", hex(.guid))]
    UnknownSubFormat {
        /// The 16 GUID bytes as stored.
        guid: [u8; 16],
    },

    /// The encoding is compressed or otherwise not PCM/float.
    #[error(
        "unsupported format tag {tag:#06x} ({name}){}: only PCM (1), IEEE float (3) and WAVE_FORMAT_EXTENSIBLE (0xFFFE) are supported",
        if *.extensible { " inside WAVE_FORMAT_EXTENSIBLE" } else { "" }
    )]
    UnsupportedFormat {
        /// The format tag (for extensible files, from the sub-format GUID).
        tag: u16,
        /// A human name for the tag, e.g. `"mu-law"`, or `"unknown"`.
        name: &'static str,
        /// Whether the tag came from a `WAVE_FORMAT_EXTENSIBLE` sub-format.
        extensible: bool,
    },

    /// PCM or float with a sample size the reader does not handle.
    #[error("unsupported {encoding} sample size of {bits} bits: {supported}")]
    UnsupportedBits {
        /// `"PCM"` or `"IEEE float"`.
        encoding: &'static str,
        /// Bits per sample as stored.
        bits: u16,
        /// Which sizes are supported.
        supported: &'static str,
    },

    /// The channel count is 0.
    #[error("channel count is 0")]
    ZeroChannels,

    /// The sample rate is 0.
    #[error("sample rate is 0")]
    ZeroSampleRate,

    /// The block size does not match channels × bytes per sample.
    #[error(
        "block align is {block_align} bytes, expected {channels} channels × {sample_bytes} bytes = {expected}"
    )]
    BlockAlignMismatch {
        /// The `nBlockAlign` field.
        block_align: u16,
        /// The channel count.
        channels: u16,
        /// Bytes per sample of the encoding.
        sample_bytes: u16,
        /// `channels × sample_bytes`.
        expected: u64,
    },

    /// An RF64/BW64 file's `data` chunk defers its size to a `ds64` chunk that is absent.
    #[error("RF64 data chunk size is 0xFFFFFFFF but there is no ds64 chunk before it")]
    MissingDs64,
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ascii(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn not_riff_hint(found: &[u8]) -> &'static str {
    match found {
        [b'R', b'I', b'F', b'X', ..] => " (big-endian RIFX is not supported)",
        [b'f', b'L', b'a', b'C', ..] => " (this is a FLAC file)",
        [b'O', b'g', b'g', b'S', ..] => " (this is an Ogg file)",
        [b'I', b'D', b'3', ..] => " (this is an MP3 file with an ID3 tag)",
        [0xff, b, ..] if b & 0xe0 == 0xe0 => " (this looks like an MPEG audio frame, e.g. MP3)",
        [b'F', b'O', b'R', b'M', ..] => " (this is an IFF file such as AIFF)",
        [b'.', b's', b'n', b'd', ..] => " (this is a Sun/NeXT .au file)",
        _ => "",
    }
}

fn not_wave_hint(found: &[u8; 4]) -> &'static str {
    match found {
        b"AVI " => " (this is an AVI video)",
        b"WEBP" => " (this is a WebP image)",
        _ => "",
    }
}

/// A human name for a WAVE format tag.
pub fn format_tag_name(tag: u16) -> &'static str {
    match tag {
        0x0001 => "PCM",
        0x0002 => "Microsoft ADPCM",
        0x0003 => "IEEE float",
        0x0006 => "A-law",
        0x0007 => "mu-law",
        0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10",
        0x0040 => "G.721 ADPCM",
        0x0050 => "MPEG",
        0x0055 => "MPEG Layer 3 (MP3)",
        0x0092 => "Dolby AC-3 SPDIF",
        0x00ff | 0x1610 => "AAC",
        0x0161 => "Windows Media Audio",
        0x0162 => "Windows Media Audio Pro",
        0x2000 => "Dolby AC-3",
        0x674f | 0x6750 | 0x6751 | 0x676f | 0x6770 | 0x6771 => "Ogg Vorbis",
        0xf1ac => "FLAC",
        0xfffe => "WAVE_FORMAT_EXTENSIBLE",
        _ => "unknown",
    }
}

// ----- reading ---------------------------------------------------------------------------

const TAG_PCM: u16 = 1;
const TAG_FLOAT: u16 = 3;
const TAG_EXTENSIBLE: u16 = 0xfffe;
/// Bytes 4..16 of every `KSDATAFORMAT_SUBTYPE_*` GUID (`XXXXXXXX-0000-0010-8000-00AA00389B71`).
const KSDATAFORMAT_TAIL: [u8; 12] = [
    0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
];

/// Reads and decodes the WAV file at `path`. Errors name the path.
pub fn read_wav(path: impl AsRef<Path>) -> Result<Wav> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    parse_wav(&bytes).map_err(|e| match e {
        Error::Wav(mut w) => {
            w.path = Some(path.to_owned());
            Error::Wav(w)
        }
        other => other,
    })
}

/// Decodes WAV bytes from any source. Never panics.
pub fn parse_wav(bytes: &[u8]) -> Result<Wav> {
    parse(bytes).map_err(Error::Wav)
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn id_at(buf: &[u8], at: usize) -> [u8; 4] {
    let mut id = [0u8; 4];
    if let Some(b) = buf.get(at..at.saturating_add(4)) {
        id.copy_from_slice(b);
    }
    id
}

fn truncated(what: &'static str, needed: usize, available: usize, at: usize) -> Box<WavError> {
    WavError::new(
        WavErrorKind::Truncated {
            what,
            needed: needed as u64,
            available: available as u64,
        },
        at,
    )
}

/// The parsed `fmt ` chunk.
#[derive(Debug, Clone, Copy)]
struct Fmt {
    channels: u16,
    sample_rate: u32,
    block_align: u16,
    format: SampleFormat,
}

fn parse(buf: &[u8]) -> Result<Wav, Box<WavError>> {
    if buf.is_empty() {
        return Err(WavError::new(WavErrorKind::Empty, 0));
    }
    let head = buf.get(..4).unwrap_or(buf);
    let is_riff_magic = |m: &[u8]| {
        [b"RIFF", b"RF64", b"BW64"]
            .iter()
            .any(|magic| magic.starts_with(m))
    };
    if !is_riff_magic(head) {
        return Err(WavError::new(
            WavErrorKind::NotRiff {
                found: head.to_vec(),
            },
            0,
        ));
    }
    if buf.len() < 12 {
        return Err(truncated("RIFF header", 12, buf.len(), 0));
    }
    let rf64 = head != b"RIFF";
    let form = id_at(buf, 8);
    if &form != b"WAVE" {
        return Err(WavError::new(WavErrorKind::NotWave { found: form }, 8));
    }

    let mut pos = 12usize;
    let mut fmt: Option<Fmt> = None;
    let mut ds64_data_size: Option<u64> = None;
    let mut seen: Vec<[u8; 4]> = Vec::new();
    while pos < buf.len() {
        let available = buf.len() - pos;
        if available < 8 {
            return Err(truncated("chunk header", 8, available, pos));
        }
        let id = id_at(buf, pos);
        let size = u32_at(buf, pos + 4).unwrap_or_default();
        let body = pos + 8;
        let body_available = buf.len() - body;
        if seen.len() < 64 {
            seen.push(id);
        }

        if &id == b"data" {
            let Some(fmt) = fmt else {
                return Err(WavError::new(WavErrorKind::DataBeforeFmt, pos));
            };
            let declared = if rf64 && size == u32::MAX {
                match ds64_data_size {
                    Some(n) => n,
                    None => return Err(WavError::new(WavErrorKind::MissingDs64, pos)),
                }
            } else {
                u64::from(size)
            };
            let streaming = !(rf64 && size == u32::MAX) && (size == 0 || size == u32::MAX);
            let len = if streaming {
                body_available
            } else if declared <= body_available as u64 {
                // Cannot truncate: it is at most `body_available`.
                usize::try_from(declared).unwrap_or(body_available)
            } else {
                return Err(WavError::new(
                    WavErrorKind::DataPastEnd {
                        size: declared,
                        available: body_available as u64,
                    },
                    pos,
                ));
            };
            let data = buf.get(body..body + len).unwrap_or_default();
            return Ok(decode(data, fmt, body));
        }

        if u64::from(size) > body_available as u64 {
            return Err(WavError::new(
                WavErrorKind::ChunkPastEnd {
                    id,
                    size: u64::from(size),
                    available: body_available as u64,
                },
                pos,
            ));
        }
        let chunk = buf.get(body..body + size as usize).unwrap_or_default();
        match &id {
            b"fmt " if fmt.is_none() => fmt = Some(parse_fmt(chunk, pos, body)?),
            b"ds64" if rf64 => {
                // riffSize u64, dataSize u64, sampleCount u64, table...
                let Some(data_size) = u64_at(chunk, 8) else {
                    return Err(truncated("ds64 chunk", 24, chunk.len(), body));
                };
                ds64_data_size = Some(data_size);
            }
            _ => {}
        }
        // Chunks are padded to an even size; the pad byte may be missing at the very end.
        pos = body + size as usize + (size as usize & 1);
    }

    let chunks = seen
        .iter()
        .map(|id| String::from_utf8_lossy(id).into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    let chunks = if chunks.is_empty() {
        "none".to_owned()
    } else {
        chunks
    };
    let kind = if fmt.is_none() {
        WavErrorKind::MissingFmt { chunks }
    } else {
        WavErrorKind::MissingData { chunks }
    };
    Err(WavError::new(kind, buf.len()))
}

fn parse_fmt(chunk: &[u8], pos: usize, body: usize) -> Result<Fmt, Box<WavError>> {
    let size = chunk.len() as u64;
    if chunk.len() < 16 {
        return Err(WavError::new(WavErrorKind::FmtTooShort { size }, pos));
    }
    let field = |at: usize| u16_at(chunk, at).unwrap_or_default();
    let mut tag = field(0);
    let channels = field(2);
    let sample_rate = u32_at(chunk, 4).unwrap_or_default();
    let block_align = field(12);
    let bits = field(14);
    let extensible = tag == TAG_EXTENSIBLE;
    if extensible {
        let cb_size = u16_at(chunk, 16).unwrap_or_default();
        if chunk.len() < 40 || cb_size < 22 {
            return Err(WavError::new(
                WavErrorKind::BadExtensible { size, cb_size },
                pos,
            ));
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(chunk.get(24..40).unwrap_or(&[0; 16]));
        if guid[2..4] != [0, 0] || guid[4..] != KSDATAFORMAT_TAIL {
            return Err(WavError::new(
                WavErrorKind::UnknownSubFormat { guid },
                body + 24,
            ));
        }
        tag = u16::from_le_bytes([guid[0], guid[1]]);
    }
    let tag_at = if extensible { body + 24 } else { body };
    if channels == 0 {
        return Err(WavError::new(WavErrorKind::ZeroChannels, body + 2));
    }
    if sample_rate == 0 {
        return Err(WavError::new(WavErrorKind::ZeroSampleRate, body + 4));
    }
    let format = match tag {
        TAG_PCM => match bits.div_ceil(8) {
            _ if bits == 0 => None,
            1 => Some(SampleFormat::U8),
            2 => Some(SampleFormat::I16),
            3 => Some(SampleFormat::I24),
            4 => Some(SampleFormat::I32),
            _ => None,
        }
        .ok_or_else(|| {
            WavError::new(
                WavErrorKind::UnsupportedBits {
                    encoding: "PCM",
                    bits,
                    supported: "1 to 32 bits (8, 16, 24 and 32-bit containers)",
                },
                body + 14,
            )
        })?,
        TAG_FLOAT => match bits {
            32 => SampleFormat::F32,
            64 => SampleFormat::F64,
            _ => {
                return Err(WavError::new(
                    WavErrorKind::UnsupportedBits {
                        encoding: "IEEE float",
                        bits,
                        supported: "32 or 64 bits",
                    },
                    body + 14,
                ));
            }
        },
        _ => {
            return Err(WavError::new(
                WavErrorKind::UnsupportedFormat {
                    tag,
                    name: format_tag_name(tag),
                    extensible,
                },
                tag_at,
            ));
        }
    };
    let sample_bytes = format.bytes() as u16;
    let expected = u64::from(channels) * u64::from(sample_bytes);
    if u64::from(block_align) != expected {
        return Err(WavError::new(
            WavErrorKind::BlockAlignMismatch {
                block_align,
                channels,
                sample_bytes,
                expected,
            },
            body + 12,
        ));
    }
    Ok(Fmt {
        channels,
        sample_rate,
        block_align,
        format,
    })
}

fn decode(data: &[u8], fmt: Fmt, data_at: usize) -> Wav {
    let block = usize::from(fmt.block_align).max(1);
    let whole = data.len() / block * block;
    if whole != data.len() {
        tracing::warn!(
            offset = data_at + whole,
            dropped_bytes = data.len() - whole,
            block,
            "WAV data ends with a partial frame; dropping it"
        );
    }
    let data = data.get(..whole).unwrap_or_default();
    let samples: Vec<f32> = match fmt.format {
        SampleFormat::U8 => data
            .iter()
            .map(|&b| (f32::from(b) - 128.0) / 128.0)
            .collect(),
        SampleFormat::I16 => data
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
            .collect(),
        SampleFormat::I24 => data
            .chunks_exact(3)
            .map(|b| {
                // Place the 24 bits in the top of an i32 and shift back to sign-extend.
                let v = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
                v as f32 / 8_388_608.0
            })
            .collect(),
        SampleFormat::I32 => data
            .chunks_exact(4)
            .map(|b| {
                (f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])) / 2_147_483_648.0) as f32
            })
            .collect(),
        SampleFormat::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        SampleFormat::F64 => data
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
    };
    Wav {
        samples,
        sample_rate: fmt.sample_rate,
        channels: fmt.channels,
        format: fmt.format,
    }
}

// ----- writing ---------------------------------------------------------------------------

/// Encodes interleaved samples as a 16-bit PCM WAV file (44-byte header).
///
/// Samples are scaled by 32768, rounded and clamped to the `i16` range, so samples read from
/// a 16-bit file round-trip exactly. If `samples.len()` is not a multiple of `channels`, the
/// trailing partial frame is dropped. `channels` of 0 is treated as 1.
pub fn encode_wav_i16(samples: &[f32], sample_rate: u32, channels: u16) -> Vec<u8> {
    let channels = channels.max(1);
    let frames = samples.len() / usize::from(channels);
    let samples = samples
        .get(..frames * usize::from(channels))
        .unwrap_or_default();
    // A RIFF chunk size is a u32: longer audio is cut at the largest whole frame that fits.
    let max_bytes =
        (u32::MAX as usize - 36) / (2 * usize::from(channels)) * 2 * usize::from(channels);
    let data_len = (samples.len() * 2).min(max_bytes);
    let samples = samples.get(..data_len / 2).unwrap_or_default();
    let block_align = 2 * channels;
    let byte_rate = sample_rate.saturating_mul(u32::from(block_align));

    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&TAG_PCM.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&byte_rate.to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for &s in samples {
        let v = (s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes interleaved samples to `path` as a 16-bit PCM WAV file; see [`encode_wav_i16`].
pub fn write_wav_i16(
    path: impl AsRef<Path>,
    samples: &[f32],
    sample_rate: u32,
    channels: u16,
) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, encode_wav_i16(samples, sample_rate, channels)).map_err(|source| {
        Error::Io {
            action: "write",
            path: path.to_owned(),
            source,
        }
    })
}
