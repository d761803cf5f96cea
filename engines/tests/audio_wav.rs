//! The WAV reader and writer: every supported encoding, RIFF details (odd chunks, extra
//! chunks, streaming sizes, RF64), located errors for damaged or unsupported files, real
//! LibriVox recordings, and a deterministic mutation fuzzer asserting that no input makes the
//! reader panic.

mod common;

use common::Rng;
use std::path::PathBuf;

use sotad_engines::Error;
use sotad_engines::audio::{
    SampleFormat, WavError, WavErrorKind, encode_wav_i16, parse_wav, read_wav, write_wav_i16,
};

// ----- building files --------------------------------------------------------------------

const PCM: u16 = 1;
const FLOAT: u16 = 3;
const EXTENSIBLE: u16 = 0xfffe;

fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn fmt_body(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
    let block = channels * bits.div_ceil(8);
    let mut b = Vec::new();
    b.extend_from_slice(&tag.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b
}

/// A `WAVE_FORMAT_EXTENSIBLE` fmt body with sub-format `sub_tag`.
fn fmt_extensible(sub_tag: u16, channels: u16, rate: u32, bits: u16, valid: u16) -> Vec<u8> {
    let mut b = fmt_body(EXTENSIBLE, channels, rate, bits);
    b.extend_from_slice(&22u16.to_le_bytes());
    b.extend_from_slice(&valid.to_le_bytes());
    b.extend_from_slice(&0x3u32.to_le_bytes()); // channel mask
    b.extend_from_slice(&sub_tag.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xaa, 0, 0x38, 0x9b, 0x71]);
    b
}

fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = chunks.concat();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(&body);
    out
}

fn wav_err(e: &Error) -> &WavError {
    match e {
        Error::Wav(w) => w,
        other => panic!("expected a WAV error, got {other}"),
    }
}

fn parse_err(bytes: &[u8]) -> (WavErrorKind, Option<u64>, String) {
    let err = parse_wav(bytes).unwrap_err();
    let e = wav_err(&err);
    (e.kind.clone(), e.offset, err.to_string())
}

// ----- encodings -------------------------------------------------------------------------

#[test]
fn every_encoding_decodes() {
    // U8: 0, 128, 255.
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 8_000, 8)),
        chunk(b"data", &[0, 128, 255]),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.sample_rate, w.channels),
        (SampleFormat::U8, 8_000, 1)
    );
    assert_eq!(w.samples, [-1.0, 0.0, 127.0 / 128.0]);

    // S16 stereo.
    let data: Vec<u8> = [i16::MIN, i16::MAX, 0, -16_384]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 2, 44_100, 16)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.channels, w.frames()),
        (SampleFormat::I16, 2, 2)
    );
    assert_eq!(w.samples, [-1.0, 32_767.0 / 32_768.0, 0.0, -0.5]);

    // S24: -2^23, 2^23 - 1, 1, -1 (odd data size: the pad byte follows).
    let data = [
        0x00, 0x00, 0x80, 0xff, 0xff, 0x7f, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff,
    ];
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 48_000, 24)),
        chunk(b"data", &data[..9]),
    ]))
    .unwrap();
    assert_eq!(w.format, SampleFormat::I24);
    assert_eq!(
        w.samples,
        [-1.0, 8_388_607.0 / 8_388_608.0, 1.0 / 8_388_608.0]
    );
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 48_000, 24)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(w.samples[3], -1.0 / 8_388_608.0);

    // S32.
    let data: Vec<u8> = [i32::MIN, 1 << 30]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 96_000, 32)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.samples.clone()),
        (SampleFormat::I32, vec![-1.0, 0.5])
    );

    // F32 and F64 (values outside [-1, 1] are kept).
    let data: Vec<u8> = [0.25f32, -1.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(FLOAT, 1, 16_000, 32)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.samples.clone()),
        (SampleFormat::F32, vec![0.25, -1.5])
    );
    let data: Vec<u8> = [0.125f64, -0.75]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(FLOAT, 1, 16_000, 64)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.samples.clone()),
        (SampleFormat::F64, vec![0.125, -0.75])
    );

    // WAVE_FORMAT_EXTENSIBLE: PCM 24 (20 valid bits), float 32, 6 channels.
    let data = [0x00, 0x00, 0x40, 0x00, 0x00, 0xc0];
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_extensible(PCM, 1, 48_000, 24, 20)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.samples.clone()),
        (SampleFormat::I24, vec![0.5, -0.5])
    );
    let data: Vec<u8> = (0..12)
        .flat_map(|i| (i as f32 / 16.0).to_le_bytes())
        .collect();
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_extensible(FLOAT, 6, 22_050, 32, 32)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.channels, w.frames(), w.sample_rate),
        (SampleFormat::F32, 6, 2, 22_050)
    );
    assert_eq!(w.samples[11], 11.0 / 16.0);

    // 12-bit PCM in 16-bit containers is read by container.
    let data: Vec<u8> = [0x4000i16].iter().flat_map(|v| v.to_le_bytes()).collect();
    let w = parse_wav(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 8_000, 12)),
        chunk(b"data", &data),
    ]))
    .unwrap();
    assert_eq!(
        (w.format, w.samples.clone()),
        (SampleFormat::I16, vec![0.5])
    );
}

#[test]
fn riff_details() {
    let data: Vec<u8> = [1000i16, -1000, 5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let fmt = chunk(b"fmt ", &fmt_body(PCM, 1, 16_000, 16));
    let expect = [1000.0 / 32_768.0, -1000.0 / 32_768.0, 5.0 / 32_768.0];

    // Odd-sized LIST chunk (with its pad byte) and JUNK before fmt, fact between, a chunk
    // after data that is not read, an 18-byte fmt (cbSize 0).
    let mut fmt18 = fmt_body(PCM, 1, 16_000, 16);
    fmt18.extend_from_slice(&0u16.to_le_bytes());
    let bytes = riff(&[
        chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00Lavf\x00"),
        chunk(b"JUNK", &[0; 28]),
        chunk(b"fmt ", &fmt18),
        chunk(b"fact", &3u32.to_le_bytes()),
        chunk(b"data", &data),
        chunk(b"id3 ", b"whatever"),
    ]);
    assert_eq!(parse_wav(&bytes).unwrap().samples, expect);

    // The RIFF size is ignored (0, too small, 0xFFFFFFFF).
    for riff_size in [0u32, 4, u32::MAX] {
        let mut b = riff(&[fmt.clone(), chunk(b"data", &data)]);
        b[4..8].copy_from_slice(&riff_size.to_le_bytes());
        assert_eq!(parse_wav(&b).unwrap().samples, expect);
    }

    // Streaming writers: data size 0 or 0xFFFFFFFF means "to the end of the file"; a trailing
    // partial frame is dropped.
    for size in [0u32, u32::MAX] {
        let mut b = riff(&[fmt.clone(), chunk(b"data", &data)]);
        let at = b.len() - data.len() - 4;
        b[at..at + 4].copy_from_slice(&size.to_le_bytes());
        assert_eq!(parse_wav(&b).unwrap().samples, expect, "size {size:#x}");
        b.push(0x7f);
        assert_eq!(
            parse_wav(&b).unwrap().samples,
            expect,
            "size {size:#x} + partial frame"
        );
    }
    // A declared size with a partial frame at its end.
    let b = riff(&[
        fmt.clone(),
        chunk(b"data", &[data.as_slice(), &[1]].concat()),
    ]);
    assert_eq!(parse_wav(&b).unwrap().samples, expect);
    // An empty data chunk at the end of the file: no samples.
    let b = riff(&[fmt.clone(), chunk(b"data", &[])]);
    assert!(parse_wav(&b).unwrap().samples.is_empty());
}

#[test]
fn rf64_uses_its_ds64_size() {
    let data: Vec<u8> = [1000i16, -1000, 5, 7]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut ds64 = Vec::new();
    ds64.extend_from_slice(&0u64.to_le_bytes()); // RIFF size
    ds64.extend_from_slice(&6u64.to_le_bytes()); // data size: 3 of the 4 samples
    ds64.extend_from_slice(&3u64.to_le_bytes()); // sample count
    ds64.extend_from_slice(&0u32.to_le_bytes()); // table length
    let mut b = riff(&[
        chunk(b"ds64", &ds64),
        chunk(b"fmt ", &fmt_body(PCM, 1, 16_000, 16)),
        chunk(b"data", &data),
    ]);
    b[..4].copy_from_slice(b"RF64");
    let at = b.len() - data.len() - 4;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(parse_wav(&b).unwrap().samples.len(), 3);

    // Without ds64, the size is unknown.
    let mut b = riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 16_000, 16)),
        chunk(b"data", &data),
    ]);
    b[..4].copy_from_slice(b"RF64");
    let at = b.len() - data.len() - 4;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (kind, offset, _) = parse_err(&b);
    assert_eq!((kind, offset), (WavErrorKind::MissingDs64, Some(36)));
}

#[test]
fn write_and_read_back() {
    let samples: Vec<f32> = (-100..100)
        .map(|i| i as f32 / 100.0)
        .chain([1.5, -2.0, f32::NAN])
        .collect();
    let bytes = encode_wav_i16(&samples, 22_050, 1);
    assert_eq!(bytes.len(), 44 + 2 * samples.len());
    let w = parse_wav(&bytes).unwrap();
    assert_eq!(
        (w.sample_rate, w.channels, w.format),
        (22_050, 1, SampleFormat::I16)
    );
    for (a, b) in samples[..200].iter().zip(&w.samples) {
        assert!((a - b).abs() <= 0.5 / 32_768.0 + 1e-7, "{a} vs {b}");
    }
    // Clamped, and NaN becomes 0.
    assert_eq!(&w.samples[200..], &[32_767.0 / 32_768.0, -1.0, 0.0]);
    // Values read from a 16-bit file round-trip exactly.
    let again = parse_wav(&encode_wav_i16(&w.samples, 22_050, 1)).unwrap();
    assert_eq!(again.samples, w.samples);

    // Stereo, to a file; a trailing half frame is dropped.
    let dir = std::env::temp_dir().join(format!("sotad-wav-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stereo.wav");
    write_wav_i16(&path, &[0.5, -0.5, 0.25, -0.25, 0.125], 48_000, 2).unwrap();
    let w = read_wav(&path).unwrap();
    assert_eq!(
        (w.channels, w.frames(), w.samples.clone()),
        (2, 2, vec![0.5, -0.5, 0.25, -0.25])
    );
    assert!((w.duration_secs() - 2.0 / 48_000.0).abs() < 1e-12);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ----- errors ----------------------------------------------------------------------------

#[test]
fn errors_say_what_and_where() {
    let fmt16 = chunk(b"fmt ", &fmt_body(PCM, 1, 16_000, 16));
    let data = chunk(b"data", &[0; 8]);

    let (kind, offset, _) = parse_err(&[]);
    assert_eq!((kind, offset), (WavErrorKind::Empty, Some(0)));

    let (kind, offset, msg) = parse_err(b"RIF");
    assert!(
        matches!(
            kind,
            WavErrorKind::Truncated {
                what: "RIFF header",
                needed: 12,
                available: 3
            }
        ),
        "{msg}"
    );
    assert_eq!(offset, Some(0));

    for (magic, hint) in [
        (&b"RIFX"[..], "big-endian RIFX"),
        (b"fLaC", "FLAC"),
        (b"OggS", "Ogg"),
        (b"ID3\x04", "MP3"),
        (b"\xff\xfb\x90\x00", "MPEG"),
        (b"FORM", "AIFF"),
        (b"\x00\x01", "expected \"RIFF\""),
    ] {
        let mut b = magic.to_vec();
        b.extend_from_slice(&[0; 40]);
        let (kind, offset, msg) = parse_err(&b);
        assert!(matches!(kind, WavErrorKind::NotRiff { .. }), "{msg}");
        assert_eq!(offset, Some(0));
        assert!(msg.contains(hint), "{msg}");
    }

    let mut b = riff(&[fmt16.clone(), data.clone()]);
    b[8..12].copy_from_slice(b"AVI ");
    let (kind, offset, msg) = parse_err(&b);
    assert_eq!(
        (kind, offset),
        (WavErrorKind::NotWave { found: *b"AVI " }, Some(8))
    );
    assert!(msg.contains("AVI video"), "{msg}");

    // A truncated chunk header and a chunk running past the end.
    let (kind, offset, _) = parse_err(&riff(&[b"fmt".to_vec()]));
    assert_eq!(
        (kind, offset),
        (
            WavErrorKind::Truncated {
                what: "chunk header",
                needed: 8,
                available: 3
            },
            Some(12)
        )
    );
    let mut list = chunk(b"LIST", &[0; 10]);
    list.truncate(12);
    let (kind, offset, msg) = parse_err(&riff(&[fmt16.clone(), list]));
    assert_eq!(
        (kind, offset),
        (
            WavErrorKind::ChunkPastEnd {
                id: *b"LIST",
                size: 10,
                available: 4
            },
            Some(36)
        )
    );
    assert_eq!(
        msg,
        "WAV data at byte 36: chunk \"LIST\" declares 10 bytes but only 4 follow its header"
    );

    // A data size beyond the end (not 0 or 0xFFFFFFFF) is an error.
    let mut b = riff(&[fmt16.clone(), data.clone()]);
    b[40..44].copy_from_slice(&1_000u32.to_le_bytes());
    let (kind, offset, _) = parse_err(&b);
    assert_eq!(
        (kind, offset),
        (
            WavErrorKind::DataPastEnd {
                size: 1_000,
                available: 8
            },
            Some(36)
        )
    );

    // Unsupported encodings are named, at the format tag.
    for (tag, name) in [
        (7u16, "mu-law"),
        (6, "A-law"),
        (2, "Microsoft ADPCM"),
        (0x11, "IMA ADPCM"),
        (0x55, "MP3"),
        (0x1234, "unknown"),
    ] {
        let (kind, offset, msg) = parse_err(&riff(&[
            chunk(b"fmt ", &fmt_body(tag, 1, 8_000, 8)),
            data.clone(),
        ]));
        assert!(
            matches!(kind, WavErrorKind::UnsupportedFormat { tag: t, extensible: false, .. } if t == tag),
            "{msg}"
        );
        assert_eq!(offset, Some(20));
        assert!(msg.contains(name), "{msg}");
    }
    let (kind, offset, msg) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_extensible(7, 1, 8_000, 8, 8)),
        data.clone(),
    ]));
    assert!(
        matches!(
            kind,
            WavErrorKind::UnsupportedFormat {
                tag: 7,
                extensible: true,
                ..
            }
        ),
        "{msg}"
    );
    assert_eq!(offset, Some(44));
    assert!(
        msg.contains("mu-law") && msg.contains("inside WAVE_FORMAT_EXTENSIBLE"),
        "{msg}"
    );
    let mut ext = fmt_extensible(PCM, 1, 8_000, 16, 16);
    ext[30] = 0x11; // break the GUID
    let (kind, _, _) = parse_err(&riff(&[chunk(b"fmt ", &ext), data.clone()]));
    assert!(matches!(kind, WavErrorKind::UnknownSubFormat { .. }));
    let (kind, _, _) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_body(EXTENSIBLE, 1, 8_000, 16)),
        data.clone(),
    ]));
    assert!(matches!(
        kind,
        WavErrorKind::BadExtensible {
            size: 16,
            cb_size: 0
        }
    ));

    // Zero channels and sample rate, at their fields.
    let (kind, offset, _) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 0, 8_000, 16)),
        data.clone(),
    ]));
    assert_eq!((kind, offset), (WavErrorKind::ZeroChannels, Some(22)));
    let (kind, offset, msg) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 0, 16)),
        data.clone(),
    ]));
    assert_eq!((kind, offset), (WavErrorKind::ZeroSampleRate, Some(24)));
    assert_eq!(msg, "WAV data at byte 24: sample rate is 0");

    // Sizes.
    let (kind, offset, _) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 8_000, 40)),
        data.clone(),
    ]));
    assert!(matches!(
        kind,
        WavErrorKind::UnsupportedBits { bits: 40, .. }
    ));
    assert_eq!(offset, Some(34));
    let (kind, _, _) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_body(FLOAT, 1, 8_000, 16)),
        data.clone(),
    ]));
    assert!(matches!(
        kind,
        WavErrorKind::UnsupportedBits {
            encoding: "IEEE float",
            bits: 16,
            ..
        }
    ));
    let (kind, _, _) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 8_000, 0)),
        data.clone(),
    ]));
    assert!(matches!(
        kind,
        WavErrorKind::UnsupportedBits { bits: 0, .. }
    ));
    let mut f = fmt_body(PCM, 2, 8_000, 16);
    f[12..14].copy_from_slice(&2u16.to_le_bytes());
    let (kind, offset, msg) = parse_err(&riff(&[chunk(b"fmt ", &f), data.clone()]));
    assert!(
        matches!(
            kind,
            WavErrorKind::BlockAlignMismatch {
                block_align: 2,
                channels: 2,
                sample_bytes: 2,
                expected: 4
            }
        ),
        "{msg}"
    );
    assert_eq!(offset, Some(32));
    let (kind, offset, _) = parse_err(&riff(&[
        chunk(b"fmt ", &fmt_body(PCM, 1, 8_000, 16)[..14]),
        data.clone(),
    ]));
    assert_eq!(
        (kind, offset),
        (WavErrorKind::FmtTooShort { size: 14 }, Some(12))
    );

    // Missing or misplaced chunks.
    let (kind, offset, _) = parse_err(&riff(&[data.clone(), fmt16.clone()]));
    assert_eq!((kind, offset), (WavErrorKind::DataBeforeFmt, Some(12)));
    let (kind, _, msg) = parse_err(&riff(&[chunk(b"LIST", b"ab"), fmt16.clone()]));
    assert_eq!(
        kind,
        WavErrorKind::MissingData {
            chunks: "LIST, fmt ".into()
        },
        "{msg}"
    );
    let (kind, _, _) = parse_err(&riff(&[]));
    assert_eq!(
        kind,
        WavErrorKind::MissingFmt {
            chunks: "none".into()
        }
    );

    // From a file, the error names it.
    let path = std::env::temp_dir().join(format!("sotad-wav-err-{}.wav", std::process::id()));
    std::fs::write(
        &path,
        riff(&[chunk(b"fmt ", &fmt_body(7, 1, 8_000, 8)), data]),
    )
    .unwrap();
    let msg = read_wav(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(
        msg.starts_with(&format!(
            "WAV file {path:?} at byte 20: unsupported format tag 0x0007 (mu-law)"
        )),
        "{msg}"
    );
    let err = read_wav("/nonexistent/x.wav").unwrap_err();
    assert!(matches!(err, Error::Io { action: "read", .. }), "{err}");
}

// ----- real files --------------------------------------------------------------------------

#[test]
fn librivox_recordings() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/librivox_1s.wav");
    let w = read_wav(&fixture).unwrap();
    assert_eq!(
        (w.sample_rate, w.channels, w.format, w.frames()),
        (16_000, 1, SampleFormat::I16, 16_000)
    );

    let home = std::env::var_os("SOTAD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sotad/models")
        });
    let dir = home.join("speech/librivox");
    assert!(
        dir.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        dir.display()
    );
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "wav") {
            continue;
        }
        let w = read_wav(&path).unwrap();
        assert_eq!(
            (w.sample_rate, w.channels, w.format),
            (16_000, 1, SampleFormat::I16),
            "{}",
            path.display()
        );
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(w.frames(), (size - 44) / 2, "{}", path.display());
        assert!(w.duration_secs() > 2.0 && w.duration_secs() < 10.0);
        // The first second is the fixture's.
        if path.ends_with("sense_and_sensibility_01_austen_64kb-0870.wav") {
            assert_eq!(
                &w.samples[..16_000],
                &read_wav(&fixture).unwrap().samples[..]
            );
        }
        n += 1;
    }
    assert_eq!(n, 5);
}

// ----- no panics -------------------------------------------------------------------------

#[test]
fn mutated_and_truncated_files_never_panic() {
    let data: Vec<u8> = (0..64u8).collect();
    let mut rf64 = riff(&[
        chunk(b"ds64", &[0; 28]),
        chunk(b"fmt ", &fmt_body(PCM, 2, 16_000, 16)),
        chunk(b"data", &data),
    ]);
    rf64[..4].copy_from_slice(b"RF64");
    let seeds = [
        riff(&[
            chunk(b"LIST", b"INFOabc"),
            chunk(b"fmt ", &fmt_body(PCM, 1, 16_000, 16)),
            chunk(b"data", &data),
        ]),
        riff(&[
            chunk(b"fmt ", &fmt_extensible(FLOAT, 2, 48_000, 32, 32)),
            chunk(b"data", &data),
        ]),
        riff(&[
            chunk(b"fmt ", &fmt_body(PCM, 3, 8_000, 24)),
            chunk(b"data", &data[..63]),
        ]),
        riff(&[
            chunk(b"fmt ", &fmt_body(FLOAT, 1, 8_000, 64)),
            chunk(b"data", &data),
        ]),
        rf64,
    ];
    let interesting: [u32; 8] = [0, 1, 2, 3, 0xfffe, 0xffff, 0x7fff_ffff, u32::MAX];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..20_000 {
        let mut bytes = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.below(3) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len());
            match rng.below(5) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.next() as u8,
                2 => {
                    let v = interesting[rng.below(interesting.len())];
                    let end = (at + 4).min(bytes.len());
                    bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                }
                3 => bytes.truncate(at),
                _ => {
                    let n = rng.below(8);
                    let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    bytes.splice(at..at, noise);
                }
            }
        }
        match parse_wav(&bytes) {
            Ok(w) => {
                assert!(w.channels > 0 && w.sample_rate > 0);
                assert_eq!(w.samples.len() % usize::from(w.channels), 0);
                assert!(w.samples.len() <= bytes.len());
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
        }
    }
    assert!(accepted > 1_000, "only {accepted} mutants parsed");
    assert!(rejected > 1_000, "only {rejected} mutants rejected");
}
