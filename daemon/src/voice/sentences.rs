//! Cutting streamed LLM text into sentences for speech, as soon as each one is complete.
//!
//! A sentence ends at `.`, `!`, `?` (or `…`, `;`, `:`) followed by whitespace, or at a line
//! break. Very short pieces ("1.", "e.g.") are held back and joined to what follows, so the
//! voice does not stop after every abbreviation. Markdown emphasis and list markers that
//! small models like to emit are removed: they are not meant to be read aloud.
//!
//! With [`SentenceSplitter::early_first_clause`], the first piece may also end at a comma:
//! the voice loop starts speaking after the first clause instead of the first sentence,
//! which saves the time the LLM and TTS spend on the rest of it. The comma stays in the
//! text, so the voice pauses there as it would mid-sentence. With
//! [`SentenceSplitter::first_piece_words`] the first piece also ends after that many words
//! when no clause or sentence has ended before (`voice.first_piece_words`): sooner still for
//! a long first clause, at the cost of a break in the intonation where it is cut.

/// Accumulates streamed text and yields complete sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    pending: String,
    /// The next piece may end at a comma (only until the first piece is out).
    clause: bool,
    /// The next piece ends after this many words at the latest (0: no limit; only until
    /// the first piece is out).
    first_words: usize,
}

/// Sentences shorter than this (in characters) wait for more text.
const MIN_CHARS: usize = 12;

impl SentenceSplitter {
    pub fn new() -> SentenceSplitter {
        SentenceSplitter::default()
    }

    /// The first piece ends at the first comma too (with at least [`MIN_CHARS`] before it).
    pub fn early_first_clause(mut self) -> SentenceSplitter {
        self.clause = true;
        self
    }

    /// The first piece ends after `words` words if no clause or sentence ended before
    /// (0: no limit).
    pub fn first_piece_words(mut self, words: usize) -> SentenceSplitter {
        self.first_words = words;
        self
    }

    /// Adds a piece of text; returns the sentences it completed, in order.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.pending.push_str(piece);
        let mut out = Vec::new();
        loop {
            let Some(end) = self.sentence_end() else {
                break;
            };
            let sentence: String = self.pending.drain(..end).collect();
            let cleaned = clean(&sentence);
            if !cleaned.is_empty() {
                self.clause = false;
                self.first_words = 0;
                out.push(cleaned);
            }
        }
        out
    }

    /// The rest, once the stream has ended.
    pub fn finish(&mut self) -> Option<String> {
        let rest = clean(&std::mem::take(&mut self.pending));
        (!rest.is_empty()).then_some(rest)
    }

    /// Byte index just past the first sentence end that leaves a long enough sentence.
    fn sentence_end(&self) -> Option<usize> {
        let text = &self.pending;
        let word_limit = self.first_words;
        let mut words = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            // The limit's last word ends where whitespace follows it.
            let word_ends = !c.is_whitespace() && next.is_some_and(char::is_whitespace);
            if word_ends {
                words += 1;
            }
            let end = match c {
                '\n' => Some(i + 1),
                '.' | '!' | '?' | '…' | ';' | ':' if next.is_some_and(char::is_whitespace) => {
                    Some(i + c.len_utf8())
                }
                ',' if self.clause && next.is_some_and(char::is_whitespace) => Some(i + 1),
                _ if word_limit > 0 && word_ends && words >= word_limit => Some(i + c.len_utf8()),
                _ => None,
            };
            if c == '.' && end.is_some() && is_abbreviation(&text[..i]) {
                continue;
            }
            if let Some(end) = end
                && (c == '\n' && text[..end].trim().is_empty()
                    || text[..end].trim().chars().count() >= MIN_CHARS)
            {
                return Some(end);
            }
        }
        None
    }
}

/// Whether the word just before a period is an abbreviation (`e.g`, `Dr`, `U.S`, a single letter).
/// Whether a transcript reads as a finished utterance, for the voice loop's early endpoint
/// (`vad.complete_silence_ms`): it ends with a full stop, question or exclamation mark
/// (possibly inside closing quotes or brackets), not with an ellipsis, and its last word is
/// not one that announces more (a conjunction, an article, a hesitation). Whisper
/// punctuates what it hears, and trails off with "..." or a comma when speech stops
/// mid-sentence; the word list catches the cases where it still writes a full stop.
pub fn reads_complete(transcript: &str) -> bool {
    let text = transcript.trim_end_matches(|c: char| {
        c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ']' | '»' | '”' | '’')
    });
    let Some(last) = text.chars().last() else {
        return false;
    };
    if !matches!(last, '.' | '?' | '!' | '。' | '？' | '！') || text.ends_with("..") {
        return false;
    }
    let body = text.trim_end_matches(['.', '?', '!', '。', '？', '！']);
    let Some(word) = body.split_whitespace().last() else {
        return false;
    };
    let word = word
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    !word.is_empty() && !TRAILING_WORDS.contains(&word.as_str())
}

/// Last words after which an English sentence is not over.
const TRAILING_WORDS: &[&str] = &[
    "a", "an", "and", "as", "at", "because", "but", "for", "from", "if", "in", "into", "my", "of",
    "on", "or", "so", "than", "that", "the", "then", "to", "uh", "um", "with", "your",
];

fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("");
    const KNOWN: [&str; 12] = [
        "mr", "mrs", "ms", "dr", "st", "vs", "etc", "no", "jr", "sr", "prof", "approx",
    ];
    word.contains('.')
        || (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
        || KNOWN.contains(&word.to_lowercase().as_str())
}

/// Removes markdown markers and collapses whitespace.
fn clean(sentence: &str) -> String {
    let mut words = Vec::new();
    for word in sentence.split_whitespace() {
        let w = word.trim_matches(|c| matches!(c, '*' | '#' | '`' | '_'));
        if w.is_empty() || w == "-" {
            continue;
        }
        words.push(w);
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::new();
        let mut out: Vec<String> = pieces.iter().flat_map(|p| s.push(p)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = SentenceSplitter::new();
        assert!(s.push("The capital of France").is_empty());
        assert!(
            s.push(" is Paris.").is_empty(),
            "the end needs the following space"
        );
        assert_eq!(s.push(" It is"), ["The capital of France is Paris."]);
        assert_eq!(s.push(" lovely!\n"), ["It is lovely!"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn short_pieces_and_abbreviations_are_joined() {
        assert_eq!(
            split(&["Hi. I am Robbie, e.g. a robot. Yes"]),
            ["Hi. I am Robbie, e.g. a robot.", "Yes"]
        );
        assert_eq!(split(&["3.14 is pi. Done"]), ["3.14 is pi. Done"]);
    }

    #[test]
    fn only_the_first_piece_may_end_at_a_comma() {
        let mut s = SentenceSplitter::new().early_first_clause();
        assert!(s.push("Yes, ").is_empty(), "too short to stand alone");
        assert_eq!(
            s.push("the capital of France, of course, is Paris. It"),
            ["Yes, the capital of France,", "of course, is Paris."]
        );
        assert_eq!(s.finish().as_deref(), Some("It"));
        // Without the option, commas never end a piece.
        assert_eq!(
            split(&["Yes, the capital of France, of course, is Paris. It"]),
            ["Yes, the capital of France, of course, is Paris.", "It"]
        );
    }

    #[test]
    fn the_first_piece_ends_after_the_word_limit_when_no_clause_ends_sooner() {
        let mut s = SentenceSplitter::new()
            .early_first_clause()
            .first_piece_words(5);
        assert!(s.push("The distance to the").is_empty());
        assert!(s.push(" moon").is_empty(), "the fifth word may go on");
        assert_eq!(s.push(" varies"), ["The distance to the moon"]);
        // Later pieces are sentences again.
        assert!(
            s.push(" depending on your vantage point, and on the")
                .is_empty()
        );
        assert_eq!(
            s.push(" date. Yes"),
            ["varies depending on your vantage point, and on the date."]
        );
        assert_eq!(s.finish().as_deref(), Some("Yes"));
        // Short words wait for MIN_CHARS; a clause that ends sooner still wins.
        let mut s = SentenceSplitter::new()
            .early_first_clause()
            .first_piece_words(5);
        assert_eq!(s.push("I am a b c d e f"), ["I am a b c d"]);
        let mut s = SentenceSplitter::new()
            .early_first_clause()
            .first_piece_words(5);
        assert_eq!(
            s.push("Paris is the capital, that is right. "),
            ["Paris is the capital,", "that is right."]
        );
        // 0 is no limit.
        assert_eq!(
            split(&["The distance to the moon varies depending on the date. "]),
            ["The distance to the moon varies depending on the date."]
        );
    }

    #[test]
    fn complete_transcripts() {
        for t in [
            "What is the capital of France?",
            "Turn on the light.",
            " Stop!  ",
            "He said \"go home.\"",
            "Wie spät ist es?",
            "今天天气怎么样？",
            "I was born in 1984.",
        ] {
            assert!(reads_complete(t), "{t:?}");
        }
        for t in [
            "",
            "  ",
            ".",
            "What is the capital of",
            "What is the capital of...",
            "Tell me about the weather, and",
            "Tell me about the weather and.",
            "I would like to…",
            "So, um.",
            "Play some music,",
            "The cat sat on the.",
        ] {
            assert!(!reads_complete(t), "{t:?}");
        }
    }

    #[test]
    fn markdown_is_not_read_aloud() {
        assert_eq!(
            split(&["**Bold** claim here.\n- first item\n\n"]),
            ["Bold claim here.", "first item"]
        );
    }
}
