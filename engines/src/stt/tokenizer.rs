//! Whisper's tokenizer: GPT-2 byte-level BPE over the model's `vocabulary.txt`, plus the
//! special tokens (end of text, start of transcript, languages, tasks, timestamps).
//!
//! Decoding maps each vocabulary symbol back to bytes through GPT-2's byte ↔ character table
//! and joins them as UTF-8. Encoding (for initial prompts) splits text the way GPT-2's
//! pre-tokenizer does (contractions, letter runs, digit runs, other-symbol runs, each with
//! an optional leading space; whitespace) and applies the merges of `tokenizer.json` by rank
//! (the byte map and the merge loop are `crate::bpe`, shared with the LLM tokenizer).
//!
//! Special token ids are looked up by name in the vocabulary, where every faster-whisper
//! model has them (`tiny.en`'s `tokenizer.json` lacks the timestamps, but `vocabulary.txt` has
//! all 1501). Their positions differ between English-only and multilingual models (by one,
//! from `<|endoftext|>` on), so nothing is hard-coded.

use std::collections::HashMap;
use std::path::Path;

use crate::bpe::{ByteLevel, Merges};
use crate::error::{Error, Result};

/// Ids of Whisper's special tokens in one vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|endoftext|>`.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|translate|>`.
    pub translate: u32,
    /// `<|transcribe|>`.
    pub transcribe: u32,
    /// `<|startoflm|>`.
    pub sot_lm: u32,
    /// `<|startofprev|>`.
    pub sot_prev: u32,
    /// `<|nospeech|>` (named `<|nocaptions|>` in older vocabularies).
    pub no_speech: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// `<|0.00|>`; timestamp `i` (`0.02 i` s) is `timestamp_begin + i`.
    pub timestamp_begin: u32,
    /// Language tokens, in id order, with their codes (`"en"`, `"de"`, ...).
    pub languages: Vec<(u32, String)>,
}

/// Text ↔ token ids for one Whisper model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vec<String>,
    ids: HashMap<String, u32>,
    merges: Merges,
    bytes: ByteLevel,
    specials: SpecialTokens,
}

impl Tokenizer {
    /// A tokenizer over `vocab` (id → symbol). `tokenizer_json`, if given, supplies the BPE
    /// merges needed by [`Tokenizer::encode`]; without it, `encode` fails.
    pub fn new(vocab: Vec<String>, tokenizer_json: Option<&Path>) -> Result<Self> {
        let merges = match tokenizer_json {
            Some(p) => read_merges(p)?,
            None => Vec::new(),
        };
        Self::with_merges(vocab, merges)
    }

    /// A tokenizer over `vocab` with the merges of `tokenizer.json` text (`what` names its
    /// origin in errors, e.g. a GGUF file).
    pub fn from_json_text(vocab: Vec<String>, text: Option<&str>, what: &Path) -> Result<Self> {
        let merges = match text {
            Some(t) => parse_merges(t, what)?,
            None => Vec::new(),
        };
        Self::with_merges(vocab, merges)
    }

    fn with_merges(vocab: Vec<String>, pairs: Vec<(String, String)>) -> Result<Self> {
        let bad = |reason: String| Error::Stt { reason };
        let ids: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let find = |name: &str| -> Result<u32> {
            ids.get(name).copied().ok_or_else(|| {
                bad(format!(
                    "the vocabulary ({} tokens) has no special token {name}",
                    vocab.len()
                ))
            })
        };
        let eot = find("<|endoftext|>")?;
        let sot = find("<|startoftranscript|>")?;
        let translate = find("<|translate|>")?;
        let no_speech = find("<|nospeech|>").or_else(|_| find("<|nocaptions|>"))?;
        let languages = vocab
            .iter()
            .enumerate()
            .skip(sot as usize + 1)
            .take_while(|&(i, _)| (i as u32) < translate)
            .filter_map(|(i, s)| {
                let code = s.strip_prefix("<|")?.strip_suffix("|>")?;
                Some((i as u32, code.to_owned()))
            })
            .collect();
        let specials = SpecialTokens {
            eot,
            sot,
            translate,
            transcribe: find("<|transcribe|>")?,
            sot_lm: find("<|startoflm|>")?,
            sot_prev: find("<|startofprev|>")?,
            no_speech,
            no_timestamps: find("<|notimestamps|>")?,
            timestamp_begin: find("<|0.00|>")?,
            languages,
        };
        let mut merges = Merges::with_capacity(pairs.len());
        for (rank, (a, b)) in pairs.iter().enumerate() {
            merges.add(rank as u32, a, b, &ids);
        }
        Ok(Self {
            vocab,
            ids,
            merges,
            bytes: ByteLevel::new(),
            specials,
        })
    }

    /// The special token ids.
    pub fn specials(&self) -> &SpecialTokens {
        &self.specials
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    /// Whether the vocabulary is empty (never, for a loaded model).
    pub fn is_empty(&self) -> bool {
        self.vocab.is_empty()
    }

    /// The symbol of `id` (e.g. `Ġhello`, `<|en|>`), if it exists.
    pub fn symbol(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    /// The id of a symbol.
    pub fn id(&self, symbol: &str) -> Option<u32> {
        self.ids.get(symbol).copied()
    }

    /// The language token for a code such as `"en"`.
    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.specials
            .languages
            .iter()
            .find(|(_, c)| c == code)
            .map(|&(id, _)| id)
    }

    /// The text of `ids`. Special tokens (from `<|endoftext|>` on) are skipped; invalid
    /// UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id >= self.specials.eot {
                continue;
            }
            if let Some(s) = self.vocab.get(id as usize) {
                self.bytes.push_bytes(s, &mut bytes);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Token ids of `text` (no special tokens). Needs the merges from `tokenizer.json`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if self.merges.is_empty() {
            return Err(Error::Stt {
                reason:
                    "cannot encode text: the model directory has no tokenizer.json with BPE merges"
                        .into(),
            });
        }
        let mut out = Vec::new();
        let mut word = String::new();
        for piece in pre_tokenize(text) {
            word.clear();
            self.bytes.push_chars(piece.as_bytes(), &mut word);
            self.merges.encode_word(&word, &self.ids, &mut out);
        }
        Ok(out)
    }
}

fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let bad = |reason: String| Error::Stt {
        reason: format!("tokenizer {path:?}: {reason}"),
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| bad(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    parse_merges(text, path)
}

/// The merges of `model.merges`, in rank order.
fn parse_merges(text: &str, path: &Path) -> Result<Vec<(String, String)>> {
    let bad = |reason: String| Error::Stt {
        reason: format!("tokenizer {path:?}: {reason}"),
    };
    let json = crate::json::parse(text)
        .map_err(|e| bad(format!("JSON error at byte {}: {}", e.offset, e.message)))?;
    let merges = json
        .get("model")
        .and_then(|m| m.get("merges"))
        .and_then(|m| m.as_array())
        .ok_or_else(|| bad("no model.merges array".into()))?;
    let mut out = Vec::with_capacity(merges.len());
    for (rank, m) in merges.iter().enumerate() {
        let pair = if let Some(s) = m.as_str() {
            s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned()))
        } else if let Some([a, b]) = m.as_array() {
            a.as_str()
                .zip(b.as_str())
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        } else {
            None
        };
        let pair = pair.ok_or_else(|| bad(format!("merge {rank} is not a pair of symbols")))?;
        out.push(pair);
    }
    Ok(out)
}

#[derive(PartialEq, Clone, Copy)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// GPT-2's pre-tokenizer: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn pre_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let (_, c) = chars[i];
        if c == '\'' {
            let rest = &text[chars[i].0..];
            if let Some(len) = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
                .iter()
                .find(|s| rest.starts_with(*s))
                .map(|s| s.chars().count())
            {
                out.push(&text[chars[i].0..end_of(i + len)]);
                i += len;
                continue;
            }
        }
        // Optional leading space before a non-space run.
        let mut j = i;
        if c == ' '
            && chars
                .get(i + 1)
                .is_some_and(|&(_, n)| class(n) != Class::Space)
        {
            j += 1;
        }
        let k = class(chars[j].1);
        if k == Class::Space {
            // Whitespace run; leave the last space for the next word if one follows.
            let mut e = j;
            while e < chars.len() && class(chars[e].1) == Class::Space {
                e += 1;
            }
            if e < chars.len() && e - start > 1 {
                e -= 1;
            }
            out.push(&text[chars[start].0..end_of(e)]);
            i = e;
            continue;
        }
        let mut e = j;
        while e < chars.len() && class(chars[e].1) == k {
            e += 1;
        }
        out.push(&text[chars[start].0..end_of(e)]);
        i = e;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizer_splits_like_gpt2() {
        assert_eq!(
            pre_tokenize(" Hello world's 123 ok!!  x"),
            vec![" Hello", " world", "'s", " 123", " ok", "!!", " ", " x"]
        );
    }
}
