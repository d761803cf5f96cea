//! Phoneme ids for a Piper voice from espeak-ng's IPA output, the way Piper computes them.
//! Pure functions: running espeak-ng is [`super::espeak`]'s job.
//!
//! # What Piper does
//!
//! Piper (`piper-phonemize`, and `piper-tts` 1.x's `espeakbridge`) calls libespeak-ng's
//! `espeak_TextToPhonemes` (1.52: `espeak_TextToPhonemesWithTerminator`) with
//! `phonememode = espeakPHONEMES_IPA` (`0x02`: IPA, no separator between phonemes, no tie or
//! joiner), once per clause. For each clause it gets the IPA string and the clause's
//! terminator (`.`, `?`, `!`, `,`, `:`, `;`, or none) and whether it ends a sentence. Then:
//!
//! 1. `(en)`-style language-switch flags are removed;
//! 2. the terminator is appended, plus a space after `,`, `:` and `;`;
//! 3. the text is decomposed to Unicode NFD and split into code points: each code point is
//!    one phoneme (`ç` becomes `c` + U+0327, stress marks `ˈ` and length marks `ː` are
//!    phonemes of their own);
//! 4. clauses accumulate until one ends a sentence; each sentence is synthesized separately;
//! 5. ids: BOS `^`, pad `_`, then every phoneme followed by a pad, then EOS `$`
//!    (`^ _ p1 _ p2 _ … pn _ $`). Phonemes missing from the map are skipped (Piper logs a
//!    warning), without a pad.
//!
//! [`Clause`], [`sentences`] and [`phonemes_to_ids`] implement steps 1–5 exactly.
//!
//! # The espeak-ng command line
//!
//! The CLI equivalent of that library call is `espeak-ng -q --ipa -v <voice>` (plain
//! `--ipa`: `--ipa=1` separates phonemes with `_`, `--ipa=2` ties multi-letter phonemes with
//! U+0361 and `--ipa=3` joins them with U+200D ZWJ, none of which Piper's output has; ZWJ is
//! stripped here anyway). It prints one line per clause with the same IPA, but **drops the
//! terminators**. [`clauses_from_cli`] restores them by finding the clause ends in the input
//! text with espeak's rules (punctuation followed by a space, a bracket or the end; a `.`
//! before a lower-case word is an abbreviation; `...` is an ellipsis, not a terminator; runs of
//! `?`/`!` count as their first; a blank line ends a clause without a terminator). When its
//! count disagrees with espeak's line count (very long clauses that espeak splits, SSML, other
//! rules this does not model) it falls back to one sentence without terminators and says so in
//! [`CliClauses::aligned`]. Other gaps: espeak-ng versions differ in pronunciation (Piper
//! 1.8 bundles 1.52, Debian 12 ships 1.51), Piper's `[[ raw phonemes ]]` blocks and vowel
//! cluster merging are not supported. Phoneme text is decomposed to NFD (the
//! `unicode-normalization` crate), as Piper does with Python's `unicodedata`.

use std::collections::{BTreeMap, HashMap};

use super::error::{TtsError, TtsErrorKind, TtsFile, TtsSubject};
use crate::error::Result;
use unicode_normalization::UnicodeNormalization;

/// `s` in NFD (canonical decomposition and ordering) as code points: Piper maps the
/// code points of the decomposed text to ids ("ç" is "c" + U+0327).
pub(crate) fn nfd(s: &str) -> Vec<char> {
    s.nfd().collect()
}

/// The padding phoneme, inserted after every phoneme.
pub const PAD: char = '_';
/// The beginning-of-sentence phoneme.
pub const BOS: char = '^';
/// The end-of-sentence phoneme.
pub const EOS: char = '$';

/// How espeak-ng says a clause ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Terminator {
    /// `.`
    Period,
    /// `?`
    Question,
    /// `!`
    Exclamation,
    /// `,`
    Comma,
    /// `:`
    Colon,
    /// `;`
    Semicolon,
}

impl Terminator {
    /// The punctuation character, which Piper appends as a phoneme.
    pub fn as_char(self) -> char {
        match self {
            Terminator::Period => '.',
            Terminator::Question => '?',
            Terminator::Exclamation => '!',
            Terminator::Comma => ',',
            Terminator::Colon => ':',
            Terminator::Semicolon => ';',
        }
    }

    /// The terminator for a punctuation character.
    pub fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '.' => Terminator::Period,
            '?' => Terminator::Question,
            '!' => Terminator::Exclamation,
            ',' => Terminator::Comma,
            ':' => Terminator::Colon,
            ';' => Terminator::Semicolon,
            _ => return None,
        })
    }

    /// Whether espeak-ng treats it as the end of a sentence.
    pub fn ends_sentence(self) -> bool {
        matches!(
            self,
            Terminator::Period | Terminator::Question | Terminator::Exclamation
        )
    }
}

/// One clause as espeak-ng's phonemizer returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The IPA text of the clause.
    pub phonemes: String,
    /// How the clause ended.
    pub terminator: Option<Terminator>,
    /// Whether the clause ends a sentence.
    pub end_of_sentence: bool,
}

/// Piper's sentence assembly: the phonemes (one code point each) of every sentence.
pub fn sentences(clauses: &[Clause]) -> Vec<Vec<char>> {
    let mut out = Vec::new();
    let mut sentence: Vec<char> = Vec::new();
    for clause in clauses {
        let mut text = strip_language_flags(&clause.phonemes);
        if let Some(t) = clause.terminator {
            text.push(t.as_char());
            if matches!(
                t,
                Terminator::Comma | Terminator::Colon | Terminator::Semicolon
            ) {
                text.push(' ');
            }
        }
        sentence.extend(nfd(&text));
        if clause.end_of_sentence {
            out.push(std::mem::take(&mut sentence));
        }
    }
    if !sentence.is_empty() {
        out.push(sentence);
    }
    out
}

/// Removes espeak's language-switch flags, `(en)` ... `(fr)`: every `(` up to the next `)`.
/// An unclosed `(` is kept.
fn strip_language_flags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('(') {
        let after = &rest[open + 1..];
        match after.find(')') {
            // Python's r"\([^)]+\)" needs at least one character inside.
            Some(close) if close > 0 => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A voice's phoneme-to-id map, for single-code-point phonemes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhonemeIdMap {
    ids: HashMap<char, Vec<i64>>,
    pad: Vec<i64>,
    bos: Vec<i64>,
    eos: Vec<i64>,
    multi: Vec<String>,
}

impl PhonemeIdMap {
    /// Builds the map from a voice config's `phoneme_id_map`. It must contain `_`, `^` and
    /// `$`. Keys of several code points (Piper's vowel clusters) are kept aside in
    /// [`PhonemeIdMap::multi_char_keys`]: phonemes here are single code points.
    pub fn new(map: &BTreeMap<String, Vec<i64>>) -> Result<Self> {
        let mut ids = HashMap::new();
        let mut multi = Vec::new();
        for (key, v) in map {
            let mut chars = key.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => {
                    ids.insert(c, v.clone());
                }
                _ => multi.push(key.clone()),
            }
        }
        let special = |c: char, what: &str| {
            ids.get(&c).cloned().ok_or_else(|| {
                TtsError::new(
                    TtsFile::VoiceConfig,
                    TtsErrorKind::BadValue {
                        reason: format!(
                            "has no {what} symbol {c:?}, which Piper's id scheme needs"
                        ),
                    },
                )
                .subject(TtsSubject::Key("phoneme_id_map".to_owned()))
            })
        };
        Ok(Self {
            pad: special(PAD, "pad")?,
            bos: special(BOS, "bos")?,
            eos: special(EOS, "eos")?,
            ids,
            multi,
        })
    }

    /// The ids of phoneme `c`.
    pub fn get(&self, c: char) -> Option<&[i64]> {
        self.ids.get(&c).map(Vec::as_slice)
    }

    /// Number of single-code-point phonemes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the map is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Keys of more than one code point, which [`phonemes_to_ids`] does not use.
    pub fn multi_char_keys(&self) -> &[String] {
        &self.multi
    }
}

/// The ids of one sentence, and the phonemes the voice does not know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhonemeIds {
    /// `^ _ p1 _ p2 _ … _ $`, as ids.
    pub ids: Vec<i64>,
    /// Phonemes missing from the map, with how often each occurred, in order of first
    /// occurrence. They were skipped, as Piper does.
    pub unknown: Vec<(char, usize)>,
}

/// Piper's ids for one sentence: BOS, pad, every known phoneme followed by pad, EOS.
pub fn phonemes_to_ids(phonemes: &[char], map: &PhonemeIdMap) -> PhonemeIds {
    let mut out = PhonemeIds::default();
    out.ids.reserve(2 * phonemes.len() + 3);
    out.ids.extend_from_slice(&map.bos);
    out.ids.extend_from_slice(&map.pad);
    for &p in phonemes {
        match map.get(p) {
            Some(ids) => {
                out.ids.extend_from_slice(ids);
                out.ids.extend_from_slice(&map.pad);
            }
            None => match out.unknown.iter_mut().find(|(c, _)| *c == p) {
                Some((_, n)) => *n += 1,
                None => out.unknown.push((p, 1)),
            },
        }
    }
    out.ids.extend_from_slice(&map.eos);
    out
}

/// Clauses recovered from the espeak-ng command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliClauses {
    /// One per non-empty output line.
    pub clauses: Vec<Clause>,
    /// Whether the clause ends found in the text matched espeak's lines one to one. If not,
    /// the clauses carry no terminators and form one sentence.
    pub aligned: bool,
}

/// The clause ends espeak-ng finds in `text`, in order: the terminator and whether it ends
/// a sentence (see the module docs for the rules modelled).
pub fn clause_ends(text: &str) -> Vec<(Option<Terminator>, bool)> {
    let chars: Vec<char> = text.chars().collect();
    let mut ends = Vec::new();
    let mut any_alnum = false;
    let mut i = 0;
    let is_bracket = |c: char| matches!(c, '(' | ')' | '[' | ']' | '{' | '}');
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() {
            any_alnum = true;
            i += 1;
            continue;
        }
        if c == '\n' {
            // A blank line ends the clause (and the sentence), without a terminator.
            let mut j = i;
            let mut newlines = 0;
            while j < chars.len() && chars[j].is_whitespace() {
                newlines += usize::from(chars[j] == '\n');
                j += 1;
            }
            if newlines > 1 && any_alnum {
                ends.push((None, true));
                any_alnum = false;
            }
            i = j;
            continue;
        }
        // The punctuation run: "..." or more is an ellipsis; "?!?" counts as its first.
        let (punct, mut j) = if c == '.' && chars.get(i + 1) == Some(&'.') {
            let mut j = i;
            while chars.get(j) == Some(&'.') {
                j += 1;
            }
            ('\u{2026}', j)
        } else if matches!(c, '?' | '!') {
            let mut j = i + 1;
            while matches!(chars.get(j), Some('?' | '!')) {
                j += 1;
            }
            (c, j)
        } else if matches!(c, '.' | ',' | ':' | ';' | '\u{2026}') {
            (c, i + 1)
        } else {
            i += 1;
            continue;
        };
        let run_end = j;
        let next = chars.get(j).copied();
        let mut is_end = next.is_none_or(|n| n.is_whitespace() || is_bracket(n) || n == '?');
        let mut newlines = 0;
        if is_end {
            while j < chars.len() && chars[j].is_whitespace() {
                newlines += usize::from(chars[j] == '\n');
                j += 1;
            }
            let after = chars.get(j).copied();
            if punct == '.' && newlines == 0 {
                if after.is_some_and(char::is_lowercase) {
                    is_end = false; // an abbreviation
                }
                if after == Some('\'') && chars.get(j + 1) == Some(&'s') {
                    is_end = false; // u.s.a.'s
                }
            }
            if !any_alnum {
                is_end = false;
            }
        }
        if is_end {
            if newlines > 1 {
                ends.push((None, true));
            } else {
                let t = Terminator::from_char(punct);
                ends.push((t, t.is_some_and(Terminator::ends_sentence)));
            }
            any_alnum = false;
            i = j;
        } else {
            i = run_end;
        }
    }
    if any_alnum {
        ends.push((None, true));
    }
    ends
}

/// Rebuilds the clauses Piper would see from `espeak-ng -q --ipa -v <voice>`'s output for
/// `text` (see the module docs).
pub fn clauses_from_cli(text: &str, ipa_output: &str) -> CliClauses {
    let lines: Vec<String> = ipa_output
        .lines()
        .map(|l| l.replace('\u{200d}', "").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let ends = clause_ends(text);
    if ends.len() == lines.len() {
        let clauses = lines
            .into_iter()
            .zip(ends)
            .map(|(phonemes, (terminator, end_of_sentence))| Clause {
                phonemes,
                terminator,
                end_of_sentence,
            })
            .collect();
        return CliClauses {
            clauses,
            aligned: true,
        };
    }
    let n = lines.len();
    let clauses = lines
        .into_iter()
        .enumerate()
        .map(|(i, phonemes)| Clause {
            phonemes,
            terminator: None,
            end_of_sentence: i + 1 == n,
        })
        .collect();
    CliClauses {
        clauses,
        aligned: false,
    }
}

/// The ids of every sentence of `text`, from espeak-ng's CLI output for it:
/// [`clauses_from_cli`], [`sentences`], then [`phonemes_to_ids`].
pub fn ids_from_cli(text: &str, ipa_output: &str, map: &PhonemeIdMap) -> (Vec<PhonemeIds>, bool) {
    let cli = clauses_from_cli(text, ipa_output);
    let ids = sentences(&cli.clauses)
        .iter()
        .map(|s| phonemes_to_ids(s, map))
        .collect();
    (ids, cli.aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Moved from tts/nfd.rs with the hand-written tables it tested; the check that those
    // tables were sorted went with them.
    #[test]
    fn decomposes_and_reorders() {
        assert_eq!(nfd("ç"), vec!['c', '\u{327}']);
        assert_eq!(nfd("ɪç"), vec!['ɪ', 'c', '\u{327}']);
        // ễ: e + circumflex (230) + tilde (230), order kept.
        assert_eq!(nfd("\u{1ec5}"), vec!['e', '\u{302}', '\u{303}']);
        // tilde (230) before a below mark (220) is reordered.
        assert_eq!(nfd("a\u{303}\u{32f}"), vec!['a', '\u{32f}', '\u{303}']);
        assert_eq!(nfd("həlˈoʊ"), "həlˈoʊ".chars().collect::<Vec<_>>());
    }

    fn map() -> PhonemeIdMap {
        let mut m = BTreeMap::new();
        for (i, c) in [
            '_', '^', '$', ' ', '.', ',', 'h', 'ə', 'l', 'ˈ', 'o', 'ʊ', 'c', '\u{327}',
        ]
        .into_iter()
        .enumerate()
        {
            m.insert(c.to_string(), vec![i64::try_from(i).unwrap()]);
        }
        m.insert("aɪ".to_owned(), vec![99]);
        PhonemeIdMap::new(&m).unwrap()
    }

    #[test]
    fn ids_follow_pipers_scheme() {
        let m = map();
        assert_eq!(m.multi_char_keys(), ["aɪ"]);
        let s: Vec<char> = "həlˈoʊ.".chars().collect();
        let ids = phonemes_to_ids(&s, &m);
        assert_eq!(
            ids.ids,
            vec![1, 0, 6, 0, 7, 0, 8, 0, 9, 0, 10, 0, 11, 0, 4, 0, 2]
        );
        assert!(ids.unknown.is_empty());
        let ids = phonemes_to_ids(&['h', 'x', 'x', 'y'], &m);
        assert_eq!(ids.ids, vec![1, 0, 6, 0, 2]);
        assert_eq!(ids.unknown, vec![('x', 2), ('y', 1)]);
    }

    #[test]
    fn sentences_append_terminators_and_split() {
        let c = |p: &str, t: Option<Terminator>, e: bool| Clause {
            phonemes: p.to_owned(),
            terminator: t,
            end_of_sentence: e,
        };
        let s = sentences(&[
            c("ab", Some(Terminator::Comma), false),
            c("(fr)ç(en)d", Some(Terminator::Period), true),
            c("e", None, false),
            c("f", None, true),
            c("g", None, false),
        ]);
        let strings: Vec<String> = s.iter().map(|v| v.iter().collect()).collect();
        assert_eq!(strings, vec!["ab, c\u{327}d.", "ef", "g"]);
        assert_eq!(strip_language_flags("a()b(c"), "a()b(c");
    }

    #[test]
    fn clause_ends_follow_espeak() {
        use Terminator::*;
        assert_eq!(
            clause_ends(
                "Hello, world. How are you? I'm fine: thanks; really! Dr. Smith paid $3.50"
            ),
            vec![
                (Some(Comma), false),
                (Some(Period), true),
                (Some(Question), true),
                (Some(Colon), false),
                (Some(Semicolon), false),
                (Some(Exclamation), true),
                (Some(Period), true),
                (None, true),
            ]
        );
        assert_eq!(
            clause_ends("Wait... what?! No way"),
            vec![(None, false), (Some(Question), true), (None, true)]
        );
        assert_eq!(
            clause_ends("e.g. this, i.e. that"),
            vec![(Some(Comma), false), (None, true)]
        );
        assert_eq!(
            clause_ends("Line one\nLine two\n\nPara two"),
            vec![(None, true), (None, true)]
        );
        assert_eq!(
            clause_ends("Done.\n\nNext."),
            vec![(None, true), (Some(Period), true)]
        );
        assert_eq!(clause_ends("... ?"), vec![]);
    }

    #[test]
    fn cli_output_is_aligned_or_falls_back() {
        let m = map();
        let (ids, aligned) = ids_from_cli("Hello, hello.", "həlˈo\u{200d}ʊ\nhəlˈoʊ\n", &m);
        assert!(aligned);
        assert_eq!(ids.len(), 1);
        let expect: Vec<char> = "həlˈoʊ, həlˈoʊ.".chars().collect();
        assert_eq!(ids[0], phonemes_to_ids(&expect, &m));
        let cli = clauses_from_cli("Hello, hello.", "həlˈoʊ\n");
        assert!(!cli.aligned);
        assert_eq!(cli.clauses.len(), 1);
        assert!(cli.clauses[0].end_of_sentence);
    }
}
