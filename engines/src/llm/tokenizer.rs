//! The tokenizer stored in the GGUF (`tokenizer.ggml.*`): GPT-2 style byte-level BPE with
//! merges and a pre-tokenizer regex chosen by `tokenizer.ggml.pre`, or SentencePiece
//! (`llama` model: scores, `▁` for spaces, byte fallback) for Gemma.
//!
//! Special tokens (control, user-defined) are cut out of the text before the model's own
//! tokenization, longest first, as llama.cpp does: user-defined ones always, control ones
//! (`<|im_start|>`, `<start_of_turn>`) only with `parse_special`, which chat prompts use.
//!
//! A chat prompt is one rendered string, but only the template's markers may be control
//! tokens: the messages' texts are escaped before rendering ([`Tokenizer::escape_controls`]
//! puts [`ESCAPE`] after the first character of every control token's text in them), so
//! that `<|im_start|>system` typed by a user is spelled as text, as llama.cpp does with
//! `parse_special = false` for user content. Encoding removes the escape from text
//! fragments, so the text is tokenized as if it had never been there.

use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use super::{LlmError, LlmErrorKind};
use crate::bpe::{ByteLevel, Merges, TokenIds, Vocab};
use crate::error::Result;
use crate::gguf::GgufFile;

/// Breaks up a control token's text inside a message (U+FDD0, a noncharacter that never
/// stands for text; [`Tokenizer::encode`] removes it).
pub const ESCAPE: char = '\u{FDD0}';

/// What a token is (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Ordinary text.
    Normal,
    /// `<unk>`.
    Unknown,
    /// Control tokens (`<|im_start|>`, `<eos>`): never printed.
    Control,
    /// Added tokens matched literally in text (`<think>`, runs of newlines).
    UserDefined,
    /// Unused slots.
    Unused,
    /// SentencePiece byte tokens `<0xAB>`.
    Byte,
}

impl TokenKind {
    fn from_id(t: i32) -> TokenKind {
        match t {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

enum Model {
    Bpe {
        merges: Merges,
        regexes: Vec<Regex>,
        ignore_merges: bool,
    },
    Spm {
        scores: Vec<f32>,
        byte_tokens: Box<[Option<u32>; 256]>,
        add_space_prefix: bool,
    },
}

/// A tokenizer read from a GGUF file.
pub struct Tokenizer {
    model: Model,
    /// The texts, and the ids by text.
    tokens: Vocab,
    kinds: Vec<TokenKind>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    eog: Vec<u32>,
    bytes: ByteLevel,
}

// Pre-tokenizer patterns, as llama.cpp lists them per `tokenizer.ggml.pre`.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Reads the tokenizer from the file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let path = file.path();
        let err = |key: &str, msg: String| {
            LlmError::error(
                path,
                Some(format!("key {key:?}")),
                LlmErrorKind::Tokenizer(msg),
            )
        };
        let model_name = file.get_str("tokenizer.ggml.model")?;
        let tokens: Vec<&str> = file.get_str_array("tokenizer.ggml.tokens")?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize / 2 {
            return Err(err(
                "tokenizer.ggml.tokens",
                format!("{} tokens", tokens.len()),
            ));
        }
        let kinds: Vec<TokenKind> = if file.contains_key("tokenizer.ggml.token_type") {
            let t = file.get_i32_array("tokenizer.ggml.token_type")?;
            if t.len() != tokens.len() {
                return Err(err(
                    "tokenizer.ggml.token_type",
                    format!("{} types for {} tokens", t.len(), tokens.len()),
                ));
            }
            t.into_iter().map(TokenKind::from_id).collect()
        } else {
            vec![TokenKind::Normal; tokens.len()]
        };
        let ids = Vocab::new(tokens.iter().copied()).ok_or_else(|| {
            err(
                "tokenizer.ggml.tokens",
                "the token texts add up to 4 GiB or more".into(),
            )
        })?;
        let opt_id = |key: &str| -> Result<Option<u32>> {
            if !file.contains_key(key) {
                return Ok(None);
            }
            let id = file.get_u32(key)?;
            if id as usize >= tokens.len() {
                return Err(err(
                    key,
                    format!(
                        "token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    ),
                ));
            }
            Ok(Some(id))
        };
        let bos = opt_id("tokenizer.ggml.bos_token_id")?;
        let eos = opt_id("tokenizer.ggml.eos_token_id")?;
        let eot = opt_id("tokenizer.ggml.eot_token_id")?;
        let opt_bool = |key: &str, d: bool| -> Result<bool> {
            if file.contains_key(key) {
                file.get_bool(key)
            } else {
                Ok(d)
            }
        };

        let model = match model_name {
            "gpt2" => {
                let merges = file.get_str_array("tokenizer.ggml.merges")?;
                let mut ranks = Merges::with_capacity(merges.len());
                for (rank, m) in merges.iter().enumerate() {
                    let Some((a, b)) = m.split_once(' ') else {
                        return Err(err(
                            "tokenizer.ggml.merges",
                            format!("merge {rank} {m:?} has no space"),
                        ));
                    };
                    ranks.add(rank as u32, a, b, &ids);
                }
                let pre = if file.contains_key("tokenizer.ggml.pre") {
                    file.get_str("tokenizer.ggml.pre")?
                } else {
                    "default"
                };
                let (patterns, ignore_merges): (Vec<&str>, bool) = match pre {
                    "smollm" => (vec![r"\p{N}", GPT2], false),
                    "qwen2" | "deepseek-r1-qwen" => (vec![QWEN2], false),
                    "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => (vec![LLAMA3], true),
                    "gpt-2" | "gpt2" | "default" | "phi-2" | "starcoder" | "refact" | "jina-es" => {
                        (vec![GPT2], false)
                    }
                    other => {
                        return Err(err(
                            "tokenizer.ggml.pre",
                            format!(
                                "unknown pre-tokenizer {other:?} (known: smollm, qwen2, llama3, llama-bpe, gpt2, default)"
                            ),
                        ));
                    }
                };
                let regexes = patterns
                    .into_iter()
                    .map(|p| Regex::new(p).map_err(|e| err("tokenizer.ggml.pre", e.to_string())))
                    .collect::<Result<Vec<_>>>()?;
                Model::Bpe {
                    merges: ranks,
                    regexes,
                    ignore_merges,
                }
            }
            "llama" => {
                let scores = file.get_f32_array("tokenizer.ggml.scores")?;
                if scores.len() != tokens.len() {
                    return Err(err(
                        "tokenizer.ggml.scores",
                        format!("{} scores for {} tokens", scores.len(), tokens.len()),
                    ));
                }
                let mut byte_tokens = Box::new([None; 256]);
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    *slot = ids.id_of(&format!("<0x{b:02X}>"));
                }
                Model::Spm {
                    scores,
                    byte_tokens,
                    add_space_prefix: opt_bool("tokenizer.ggml.add_space_prefix", true)?,
                }
            }
            other => {
                return Err(err(
                    "tokenizer.ggml.model",
                    format!("unsupported tokenizer model {other:?} (supported: gpt2, llama)"),
                ));
            }
        };
        let default_bos = matches!(model, Model::Spm { .. });
        let add_bos = opt_bool("tokenizer.ggml.add_bos_token", default_bos)? && bos.is_some();

        let mut specials: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| {
                matches!(
                    kinds[i as usize],
                    TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        let mut eog: Vec<u32> = [eos, eot].into_iter().flatten().collect();
        for name in [
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<eos>",
        ] {
            if let Some(id) = ids.id_of(name) {
                if !eog.contains(&id) {
                    eog.push(id);
                }
            }
        }
        Ok(Tokenizer {
            model,
            tokens: ids,
            kinds,
            specials,
            bos,
            eos,
            add_bos,
            eog,
            bytes: ByteLevel::new(),
        })
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether [`Self::encode`] with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The tokens that end a generation (EOS, end of turn).
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends a generation (EOS, end of turn).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The token's stored text (byte-level encoded for BPE, `▁` for SentencePiece spaces).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)
    }

    /// The token's kind.
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The id of a token with exactly this stored text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokens.id_of(text)
    }

    /// The texts of the control tokens (`<|im_start|>`, `<start_of_turn>`, `<s>`), longest
    /// first: what [`Tokenizer::escape_controls`] breaks up.
    pub fn control_texts(&self) -> Vec<String> {
        self.specials
            .iter()
            .filter(|&&id| {
                matches!(
                    self.kinds[id as usize],
                    TokenKind::Control | TokenKind::Unknown
                )
            })
            .map(|&id| self.tokens[id as usize].to_owned())
            .filter(|t| t.chars().count() > 1)
            .collect()
    }

    /// Tokenizes `text`. `add_special` adds BOS when the model wants it; `parse_special`
    /// turns control-token texts (`<|im_start|>`) into their tokens instead of spelling them.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        // Cut special tokens out of the text, longest first.
        enum Frag<'a> {
            Text(&'a str),
            Tok(u32),
        }
        let mut frags = vec![Frag::Text(text)];
        for &id in &self.specials {
            let kind = self.kinds[id as usize];
            if !parse_special && matches!(kind, TokenKind::Control | TokenKind::Unknown) {
                continue;
            }
            let pat = &self.tokens[id as usize];
            if !frags
                .iter()
                .any(|f| matches!(f, Frag::Text(t) if t.contains(pat)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Frag::Text(mut t) => {
                        while let Some(i) = t.find(pat) {
                            if i > 0 {
                                next.push(Frag::Text(&t[..i]));
                            }
                            next.push(Frag::Tok(id));
                            t = &t[i + pat.len()..];
                        }
                        if !t.is_empty() {
                            next.push(Frag::Text(t));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        let mut prev_special = true;
        for f in frags {
            match f {
                Frag::Tok(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Frag::Text(t) => {
                    if t.contains(ESCAPE) {
                        self.encode_text(&t.replace(ESCAPE, ""), prev_special, &mut out);
                    } else {
                        self.encode_text(t, prev_special, &mut out);
                    }
                    prev_special = false;
                }
            }
        }
        out
    }

    fn encode_text(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        match &self.model {
            Model::Bpe {
                merges,
                regexes,
                ignore_merges,
            } => {
                let mut pieces: Vec<&str> = vec![text];
                for re in regexes {
                    let mut next = Vec::new();
                    for p in pieces {
                        let mut last = 0;
                        for m in re.find_iter(p) {
                            let Ok(m) = m else { break };
                            if m.start() > last {
                                next.push(&p[last..m.start()]);
                            }
                            if m.end() > m.start() {
                                next.push(m.as_str());
                            }
                            last = m.end();
                        }
                        if last < p.len() {
                            next.push(&p[last..]);
                        }
                    }
                    pieces = next;
                }
                let mut word = String::new();
                for p in pieces {
                    word.clear();
                    self.bytes.push_chars(p.as_bytes(), &mut word);
                    if *ignore_merges {
                        if let Some(id) = self.tokens.id_of(&word) {
                            out.push(id);
                            continue;
                        }
                    }
                    merges.encode_word(&word, &self.tokens, out);
                }
            }
            Model::Spm {
                scores,
                byte_tokens,
                add_space_prefix,
            } => {
                let mut s = String::with_capacity(text.len() + 3);
                if *add_space_prefix && after_special {
                    s.push('▁');
                }
                for ch in text.chars() {
                    s.push(if ch == ' ' { '▁' } else { ch });
                }
                self.spm(&s, scores, byte_tokens, out);
            }
        }
    }

    fn spm(
        &self,
        text: &str,
        scores: &[f32],
        byte_tokens: &[Option<u32>; 256],
        out: &mut Vec<u32>,
    ) {
        #[derive(Clone, Copy)]
        struct Sym {
            start: usize,
            len: usize,
            prev: Option<usize>,
            next: Option<usize>,
        }
        #[derive(PartialEq)]
        struct Bigram {
            score: f32,
            left: usize,
            right: usize,
            len: usize,
        }
        impl Eq for Bigram {}
        impl Ord for Bigram {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.score
                    .total_cmp(&o.score)
                    .then_with(|| o.left.cmp(&self.left))
            }
        }
        impl PartialOrd for Bigram {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        let mut syms: Vec<Sym> = Vec::new();
        for (i, c) in text.char_indices() {
            let k = syms.len();
            syms.push(Sym {
                start: i,
                len: c.len_utf8(),
                prev: k.checked_sub(1),
                next: None,
            });
            if k > 0 {
                syms[k - 1].next = Some(k);
            }
        }
        let mut heap = BinaryHeap::new();
        let mut rev: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
        let try_add =
            |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let (a, b) = (syms[l], syms[r]);
                let piece = &text[a.start..b.start + b.len];
                if let Some(id) = self.tokens.id_of(piece) {
                    heap.push(Bigram {
                        score: scores[id as usize],
                        left: l,
                        right: r,
                        len: piece.len(),
                    });
                }
            };
        for i in 1..syms.len() {
            try_add(&mut heap, &syms, Some(i - 1), Some(i));
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.len {
                continue;
            }
            rev.insert((l.start, bg.len), (l.len, r.len));
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if let Some(nx) = r.next {
                syms[nx].prev = Some(bg.left);
            }
            try_add(&mut heap, &syms, l.prev, Some(bg.left));
            try_add(&mut heap, &syms, Some(bg.left), r.next);
        }
        fn reseg(
            tk: &Tokenizer,
            text: &str,
            start: usize,
            len: usize,
            rev: &HashMap<(usize, usize), (usize, usize)>,
            byte_tokens: &[Option<u32>; 256],
            out: &mut Vec<u32>,
        ) {
            if let Some(id) = tk.tokens.id_of(&text[start..start + len]) {
                out.push(id);
                return;
            }
            if let Some(&(a, b)) = rev.get(&(start, len)) {
                reseg(tk, text, start, a, rev, byte_tokens, out);
                reseg(tk, text, start + a, b, rev, byte_tokens, out);
                return;
            }
            for &b in &text.as_bytes()[start..start + len] {
                if let Some(id) = byte_tokens[b as usize] {
                    out.push(id);
                }
            }
        }
        let mut i = if syms.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            let s = syms[k];
            if s.len > 0 {
                reseg(self, text, s.start, s.len, &rev, byte_tokens, out);
            }
            i = s.next;
        }
    }

    /// The bytes a token stands for: control tokens are empty unless `special`.
    pub fn token_bytes(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let Some(text) = self.tokens.get(id as usize) else {
            return;
        };
        match self.kinds[id as usize] {
            TokenKind::Control | TokenKind::Unknown | TokenKind::Unused => {
                if special {
                    out.extend_from_slice(text.as_bytes());
                }
            }
            TokenKind::UserDefined => out.extend_from_slice(text.as_bytes()),
            TokenKind::Byte => {
                let hex = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(text.as_bytes()),
                }
            }
            TokenKind::Normal => match self.model {
                Model::Bpe { .. } => self.bytes.push_bytes(text, out),
                Model::Spm { .. } => {
                    for c in text.chars() {
                        let c = if c == '▁' { ' ' } else { c };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            },
        }
    }

    /// Decodes tokens to text (invalid UTF-8 replaced); control tokens are left out unless
    /// `special`.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.token_bytes(id, special, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
