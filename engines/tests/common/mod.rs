//! Helpers shared by the engines' integration tests: the model cache, temporary files, and a
//! deterministic pseudo-random generator for mutation (no-panic) tests.
//!
//! Each test binary uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where scripts/install-models.sh puts the real weights and speech clips.
pub fn models_dir() -> PathBuf {
    std::env::var_os("SOTAD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sotad/models")
        })
}

/// A file in the system temp directory, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    /// A fresh, unique path (the file is not created).
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("sotad-test-{}-{tag}-{n}", std::process::id());
        TempFile(std::env::temp_dir().join(name))
    }

    /// A unique file holding `bytes`.
    pub fn with_bytes(tag: &str, bytes: &[u8]) -> Self {
        let f = Self::new(tag);
        std::fs::write(&f.0, bytes).expect("write temp file");
        f
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Uniform in [-0.5, 0.5).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Words for word error rates: lowercase; hyphens to spaces; everything but letters, digits,
/// apostrophes and spaces removed; "mister" → "mr" (as scripts/reference/stt_reference.py).
pub fn normalize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase().replace('-', " ");
    let cleaned: String = lower
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w == "mister" {
                "mr".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect()
}

/// Word-level Levenshtein distance.
pub fn edit_distance(a: &[String], b: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j + 1] + 1)
                .min(cur[j] + 1)
                .min(prev[j] + usize::from(x != y));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// One LibriVox recording of Debian's pocketsphinx-testdata: its id, 16 kHz mono samples and
/// transcript.
pub struct Clip {
    pub id: String,
    pub samples: Vec<f32>,
    pub reference: String,
}

/// The five LibriVox clips with their transcripts, sorted by id.
pub fn librivox_clips() -> Vec<Clip> {
    use sotad_engines::audio::{read_wav, resample::to_mono_16k};
    let dir = models_dir().join("speech/librivox");
    let list = dir.join("transcription");
    let text = std::fs::read_to_string(&list)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/install-models.sh", list.display()));
    let mut out: Vec<Clip> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("<s>")?;
            let (words, rest) = l.split_once("</s>")?;
            let id = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            let wav = read_wav(dir.join(format!("{id}.wav"))).unwrap();
            let samples = to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)
                .unwrap()
                .into_owned();
            Some(Clip {
                id: id.to_owned(),
                samples,
                reference: words.trim().to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        out.len(),
        5,
        "expected five LibriVox clips in {}",
        list.display()
    );
    out
}
