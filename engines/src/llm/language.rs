//! Is a text English? A small, deterministic guess from function words and scripts, for
//! telling a reply that drifted into another language (small models do: SmolLM2-135M at
//! temperature 0.7 answered in French, docs/benchmarks.md) from an English one.
//!
//! The rule, in order:
//! 1. Letters: when at least a third of the letters are outside the Latin script (Cyrillic,
//!    Greek, CJK, Arabic, …), the text is [`Language::Other`].
//! 2. Function words: the lower-cased words are counted against two short lists, common
//!    English function words and common function words of French, Spanish, German, Italian,
//!    Portuguese and Dutch that are not also English words ("die", "do", "so", "in", "on",
//!    "a" and the like are in neither list). With at least two foreign words and more foreign
//!    than English ones, the text is [`Language::Other`]; with at least one English word
//!    and no fewer English than foreign ones, [`Language::English`].
//! 3. Otherwise (a name, a number, "Paris."), [`Language::Unknown`]: too little to tell,
//!    which callers treat as not another language.
//!
//! It does not name the other language: it only has to notice that a reply is not English.
//! Function words are what every sentence has and what a drifting model changes first; a
//! word list needs no model file and gives the same answer on every machine.

/// The guess for a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    English,
    /// Another language: foreign function words or a non-Latin script dominate.
    Other,
    /// Too few words to tell (or as many English as foreign ones without an English one).
    Unknown,
}

impl Language {
    /// Not positively another language (English or too short to tell).
    pub fn is_not_other(self) -> bool {
        self != Language::Other
    }
}

/// Common English function words, and a few words short answers have (words that are also common in the foreign list's
/// languages, such as "a", "in", "on", "me", "no", "so", "do", "as", "die", are left out of
/// both lists).
const ENGLISH: &[&str] = &[
    "the", "is", "are", "was", "were", "be", "been", "and", "of", "to", "it", "its", "you", "your",
    "that", "this", "with", "for", "what", "i", "my", "we", "have", "has", "not", "can", "how",
    "there", "they", "he", "she", "his", "her", "from", "at", "by", "or", "but", "about", "which",
    "would", "will", "could", "should", "does", "if", "yes", "here", "one", "some", "than", "when",
    "equals", "plus", "thank",
];

/// Common function words of French, Spanish, German, Italian, Portuguese and Dutch that are
/// not English words (apostrophes split words: "c'est" is "c" and "est").
const FOREIGN: &[&str] = &[
    // French
    "le", "la", "les", "des", "du", "est", "et", "une", "un", "je", "tu", "vous", "nous", "pas",
    "que", "qui", "ce", "cette", "dans", "pour", "avec", "sur", "sont", "elle", "il", "ils", "au",
    "aux", "mais", "où", "très", "être", "suis", "mon", "ma", "mes", "votre", // Spanish
    "el", "los", "las", "es", "y", "una", "del", "por", "para", "pero", "como", "está", "muy",
    "su", "yo", "hay", "qué", "tiene", "eso", "esta", "ella", "también", "soy", "usted",
    // German
    "der", "das", "und", "ist", "ein", "eine", "nicht", "ich", "sie", "es", "mit", "auf", "für",
    "zu", "dem", "sind", "wir", "auch", "wie", "oder", "bei", "ja", "bin", // Italian
    "gli", "è", "di", "che", "sono", "della", "questo", "ciao", "mio", "sei",
    // Portuguese
    "os", "é", "um", "uma", "não", "da", "com", "você", "são", "eu", // Dutch
    "het", "een", "en", "van", "niet", "ik", "zijn", "voor", "maar", "ook", "wat",
];

/// Guesses whether `text` is English (see the module docs for the rule).
pub fn guess(text: &str) -> Language {
    let (mut latin, mut other) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        if is_latin(c) {
            latin += 1;
        } else {
            other += 1;
        }
    }
    if other > 0 && other * 3 >= latin + other {
        return Language::Other;
    }
    let (mut english, mut foreign) = (0usize, 0usize);
    for word in words(text) {
        if ENGLISH.contains(&word.as_str()) {
            english += 1;
        } else if FOREIGN.contains(&word.as_str()) {
            foreign += 1;
        }
    }
    if foreign >= 2 && foreign > english {
        Language::Other
    } else if english >= 1 && english >= foreign {
        Language::English
    } else {
        Language::Unknown
    }
}

/// Whether `question` asks for an answer in a language other than English, by naming one
/// ("in French", "translate …", "auf Deutsch"): the one case where a reply in another
/// language is what was wanted.
pub fn asks_for_other_language(question: &str) -> bool {
    const NAMES: &[&str] = &[
        "french",
        "français",
        "francais",
        "spanish",
        "español",
        "espanol",
        "german",
        "deutsch",
        "italian",
        "italiano",
        "portuguese",
        "português",
        "dutch",
        "nederlands",
        "chinese",
        "mandarin",
        "japanese",
        "korean",
        "russian",
        "arabic",
        "hindi",
        "latin",
        "greek",
        "swedish",
        "norwegian",
        "danish",
        "polish",
        "turkish",
        "translate",
        "translation",
    ];
    words(question).any(|w| NAMES.contains(&w.as_str()))
}

/// Lower-case words: runs of letters and digits; anything else (apostrophes included)
/// separates them.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Basic Latin and the Latin supplements and extensions (accented letters included).
fn is_latin(c: char) -> bool {
    c.is_ascii_alphabetic()
        || ('\u{00C0}'..='\u{024F}').contains(&c)
        || ('\u{1E00}'..='\u{1EFF}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_answers_are_english() {
        for text in [
            "The capital of France is Paris.",
            "Two plus two equals four.",
            "I'm doing well, thank you! How can I help you today?",
            "Why did the robot go on vacation? It needed to recharge its batteries.",
            "Paris is the capital and the largest city of France.",
        ] {
            assert_eq!(guess(text), Language::English, "{text}");
        }
    }

    #[test]
    fn the_french_drift_seen_in_the_voice_bench_is_other() {
        for text in [
            "La femme de France est une femme du Canada.",
            "Je suis un robot, et je ne sais pas quelle heure il est.",
            "El capital de Francia es París y tiene muchos museos.",
            "Die Hauptstadt von Frankreich ist Paris, und sie ist sehr schön.",
            "De hoofdstad van Frankrijk is Parijs en het is een mooie stad.",
            "法国的首都是巴黎。",
            "Столица Франции — Париж.",
        ] {
            assert_eq!(guess(text), Language::Other, "{text}");
        }
    }

    #[test]
    fn too_little_text_is_unknown_and_not_other() {
        for text in ["Paris.", "42", "", "Tokyo!", "Jupiter", "Bonjour!"] {
            assert_eq!(guess(text), Language::Unknown, "{text:?}");
            assert!(guess(text).is_not_other());
        }
    }

    #[test]
    fn french_words_in_an_english_sentence_do_not_make_it_french() {
        // Borrowed words and names: the English function words still win.
        for text in [
            "The café on the Rue de la Paix is in Paris.",
            "In French, hello is bonjour and thank you is merci.",
            "Le Mans is a city in France, known for its race.",
        ] {
            assert_eq!(guess(text), Language::English, "{text}");
        }
    }

    #[test]
    fn a_question_naming_a_language_asks_for_it() {
        assert!(asks_for_other_language("How do you say hello in French?"));
        assert!(asks_for_other_language("Translate 'good night' please"));
        assert!(asks_for_other_language("Antworte auf Deutsch, bitte."));
        assert!(!asks_for_other_language("What is the capital of France?"));
        assert!(!asks_for_other_language("What language do you speak?"));
    }
}
