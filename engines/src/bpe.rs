//! The byte-level BPE core shared by the LLM's GGUF tokenizer (`llm::tokenizer`) and
//! Whisper's (`stt::tokenizer`): GPT-2's byte ↔ character map and the merge loop.
//!
//! Each tokenizer keeps its own pre-tokenizer, special tokens and file reading; both hand a
//! pre-tokenized piece here as bytes mapped to characters ([`ByteLevel::push_chars`]), and
//! [`Merges::encode_word`] applies the merges by rank, as llama.cpp's `llm_tokenizer_bpe`
//! and Hugging Face's `tokenizers` do: repeatedly the lowest-ranked adjacent pair (the
//! leftmost among equals) whose two sides and result are tokens.

use std::collections::HashMap;

/// GPT-2's reversible map between bytes and printable characters: printable Latin-1 bytes map
/// to themselves, the others to `U+0100` onwards in byte order.
#[derive(Debug, Clone)]
pub(crate) struct ByteLevel {
    char_of_byte: [char; 256],
    byte_of_char: HashMap<char, u8>,
}

impl ByteLevel {
    pub(crate) fn new() -> Self {
        let printable = |b: u32| {
            (u32::from(b'!')..=u32::from(b'~')).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b)
        };
        let mut char_of_byte = ['\0'; 256];
        let mut n = 0u32;
        for (b, slot) in char_of_byte.iter_mut().enumerate() {
            let b = b as u32;
            let c = if printable(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            *slot = char::from_u32(c).unwrap_or('?');
        }
        let byte_of_char = char_of_byte
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        ByteLevel {
            char_of_byte,
            byte_of_char,
        }
    }

    /// Appends the characters standing for `bytes` to `out`.
    pub(crate) fn push_chars(&self, bytes: &[u8], out: &mut String) {
        out.extend(bytes.iter().map(|&b| self.char_of_byte[usize::from(b)]));
    }

    /// Appends the bytes `text` (a token's characters) stands for; a character outside the
    /// map stands for its own UTF-8.
    pub(crate) fn push_bytes(&self, text: &str, out: &mut Vec<u8>) {
        for c in text.chars() {
            match self.byte_of_char.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}

/// Token text → id, as the BPE merges look tokens up.
pub(crate) trait TokenIds {
    /// The id of the token with exactly this text (the lowest, if several have it).
    fn id_of(&self, text: &str) -> Option<u32>;
}

impl TokenIds for HashMap<String, u32> {
    fn id_of(&self, text: &str) -> Option<u32> {
        self.get(text).copied()
    }
}

/// A vocabulary in three flat allocations: every token's text in one string, where each
/// ends, and the ids sorted by text for lookups by binary search. A 152k-token vocabulary
/// takes 3.4 MB so, against 15 MB as a `Vec<String>` and a `HashMap<String, u32>`
/// (docs/benchmarks.md, "Memory"); a lookup is about 17 comparisons.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vocab {
    text: String,
    ends: Vec<u32>,
    by_text: Vec<u32>,
}

impl Vocab {
    /// The tokens' texts in id order; `None` if they add up to 4 GiB or more.
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut v = Vocab::default();
        for t in tokens {
            v.text.push_str(t);
            v.ends.push(u32::try_from(v.text.len()).ok()?);
        }
        v.text.shrink_to_fit();
        let n = u32::try_from(v.ends.len()).ok()?;
        let mut by_text: Vec<u32> = (0..n).collect();
        // Stable: of equal texts, the lowest id comes first.
        by_text.sort_by(|&a, &b| v.text_of(a).cmp(v.text_of(b)));
        v.by_text = by_text;
        Some(v)
    }

    fn text_of(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The text of token `id`.
    pub(crate) fn get(&self, id: usize) -> Option<&str> {
        (id < self.ends.len()).then(|| self.text_of(id as u32))
    }
}

impl TokenIds for Vocab {
    fn id_of(&self, text: &str) -> Option<u32> {
        let i = self.by_text.partition_point(|&id| self.text_of(id) < text);
        let &id = self.by_text.get(i)?;
        (self.text_of(id) == text).then_some(id)
    }
}

impl std::ops::Index<usize> for Vocab {
    type Output = str;
    fn index(&self, id: usize) -> &str {
        self.get(id).expect("token id inside the vocabulary")
    }
}

/// BPE merge ranks over token ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct Merges {
    /// `(left, right)` token ids → merge rank.
    ranks: HashMap<(u32, u32), u32>,
}

impl Merges {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Merges {
            ranks: HashMap::with_capacity(n),
        }
    }

    /// Adds the merge of rank `rank`, `left` + `right`. A pair that is not two tokens of
    /// `ids` can never apply and is left out; a repeated pair keeps its first (lowest) rank.
    pub(crate) fn add(&mut self, rank: u32, left: &str, right: &str, ids: &impl TokenIds) {
        if let (Some(a), Some(b)) = (ids.id_of(left), ids.id_of(right)) {
            self.ranks.entry((a, b)).or_insert(rank);
        }
    }

    /// Whether there are no merges.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }

    /// Appends the token ids of `word` (one pre-tokenized piece, in [`ByteLevel`]
    /// characters). A symbol the merges leave that is not a token becomes one token per
    /// character (those that are tokens).
    pub(crate) fn encode_word(&self, word: &str, ids: &impl TokenIds, out: &mut Vec<u32>) {
        // Symbols: (byte range in `word`, token id if the text is a token).
        let mut syms: Vec<(usize, usize, Option<u32>)> = word
            .char_indices()
            .map(|(i, c)| {
                let e = i + c.len_utf8();
                (i, e, ids.id_of(&word[i..e]))
            })
            .collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let (Some(a), Some(b)) = (syms[i].2, syms[i + 1].2) {
                    if let Some(&r) = self.ranks.get(&(a, b)) {
                        if best.is_none_or(|(br, _)| r < br) {
                            best = Some((r, i));
                        }
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let (s, e) = (syms[i].0, syms[i + 1].1);
            syms[i] = (s, e, ids.id_of(&word[s..e]));
            syms.remove(i + 1);
        }
        for (s, e, id) in syms {
            match id {
                Some(id) => out.push(id),
                None => {
                    for (i, c) in word[s..e].char_indices() {
                        if let Some(id) = ids.id_of(&word[s + i..s + i + c.len_utf8()]) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Moved from stt/tokenizer.rs with the table.
    #[test]
    fn byte_table_is_a_bijection() {
        let t = ByteLevel::new().char_of_byte;
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'a' as usize], 'a');
    }

    #[test]
    fn merges_by_rank_leftmost_first() {
        let vocab = ["a", "b", "ab", "ba", "aba", "abab"];
        let ids: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| ((*s).to_owned(), i as u32))
            .collect();
        let mut m = Merges::with_capacity(4);
        m.add(0, "a", "b", &ids);
        m.add(1, "ab", "ab", &ids);
        m.add(2, "b", "a", &ids);
        m.add(3, "a", "b", &ids); // repeated: rank 0 stays
        m.add(4, "x", "b", &ids); // not a token: left out
        let mut out = Vec::new();
        m.encode_word("ababa", &ids, &mut out);
        // ab|ab|a, then abab|a.
        assert_eq!(out, vec![5, 0]);
        out.clear();
        m.encode_word("bxa", &ids, &mut out);
        assert_eq!(out, vec![1, 0]);
    }
}
