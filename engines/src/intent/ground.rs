//! Grounding: an intent the LLM proposes is kept only as far as the transcript says it.
//!
//! A small model asked with tools calls one for almost anything ("What is the capital of
//! France?" became `move` with `direction` forward and `distance` 10), and fills optional
//! slots with values nobody said ("Please head forward a little" got a `distance` of 5). So
//! the LLM proposes and the intents file checks, against the words of the transcript:
//! - **Slot values.** An enumeration's value is grounded when the value or one of its
//!   synonyms is in the transcript; a number, when the transcript has a reading of it
//!   ("45", "forty five"); free text, when its words are there in order. A value that is not
//!   is replaced by the one value of that slot the transcript does hold, when there is
//!   exactly one (the LLM said `forward` for "back up": the transcript has `back`, a synonym
//!   of `backward`); else an optional slot is dropped, and a required one refuses the call.
//! - **The intent's own words.** At least one word of the transcript must be a word of the
//!   intent's templates or description (not a slot value, not a function word such as "the"
//!   or "you", compared without a plural or verb ending): "Why is the sky blue?" grounds the
//!   colour `blue` but no word of `light_color` ("light", "colour", "make"...), so it is no
//!   command.
//!
//! A refused call is no intent: the turn is answered as a question. The function-word list is
//! English; with another language every template word counts, and the check is weaker.

use super::normalize::{Token, homophone, numbers_at, tokenize};
use super::template::Node;
use super::{Intent, IntentMatch, IntentSet, SlotKind, SlotMatch, SlotValue};

/// English words that say nothing about which command is meant.
const FUNCTION_WORDS: &[&str] = &[
    "a", "about", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by",
    "can", "could", "did", "do", "does", "for", "from", "get", "give", "had", "has", "have", "hey",
    "how", "i", "id", "if", "im", "in", "is", "it", "its", "just", "kindly", "let", "lets", "like",
    "me", "my", "need", "no", "not", "now", "of", "off", "ok", "okay", "on", "or", "our", "please",
    "right", "robot", "should", "so", "some", "than", "that", "the", "then", "there", "this", "to",
    "up", "us", "want", "was", "we", "what", "whats", "when", "where", "which", "who", "why",
    "will", "with", "would", "yes", "you", "your", "youre",
];

/// A word without a plural or verb ending, so that "lights" meets "light" and "turning"
/// meets "turn".
fn stem(word: &str) -> &str {
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(s) = word.strip_suffix(suffix)
            && s.len() >= 3
        {
            return s;
        }
    }
    word
}

/// Whether two normalized words are the same word, endings aside.
fn same_word(a: &str, b: &str) -> bool {
    a == b || stem(a) == stem(b) || stem(a) == b || a == stem(b)
}

fn is_function_word(word: &str) -> bool {
    FUNCTION_WORDS.binary_search(&word).is_ok()
}

/// Whether `phrase` occurs in `tokens` as consecutive words (plural endings aside).
fn contains_phrase(tokens: &[Token], phrase: &[String]) -> bool {
    !phrase.is_empty()
        && tokens
            .windows(phrase.len())
            .any(|w| w.iter().zip(phrase).all(|(t, p)| same_word(&t.text, p)))
}

/// Every number the transcript can be read as; a homophone ("to", "for") is no evidence.
fn numbers_in(tokens: &[Token]) -> Vec<f64> {
    (0..tokens.len())
        .filter(|&i| homophone(&tokens[i].text).is_none())
        .flat_map(|i| numbers_at(tokens, i))
        .map(|(x, _)| x)
        .collect()
}

/// The words of an intent that name it: its templates' words and its description's, without
/// function words.
fn intent_words(intent: &Intent) -> Vec<String> {
    fn walk(nodes: &[Node], out: &mut Vec<String>) {
        for n in nodes {
            match n {
                Node::Word(w) => out.push(w.clone()),
                Node::Alt(alts) => alts.iter().for_each(|a| walk(a, out)),
                Node::Slot(_) => {}
            }
        }
    }
    let mut words = Vec::new();
    intent.templates.iter().for_each(|t| walk(t, &mut words));
    words.extend(tokenize(&intent.description).into_iter().map(|t| t.text));
    let mut words: Vec<String> = words
        .iter()
        .filter(|w| !is_function_word(w) && w.chars().any(char::is_alphabetic))
        .cloned()
        .collect();
    words.sort();
    words.dedup();
    words
}

impl IntentSet {
    /// `m`, an intent the LLM proposed for `transcript`, kept as far as the transcript says it
    /// (the module's doc): its slots grounded, corrected or dropped; or why it is refused.
    pub fn ground(&self, mut m: IntentMatch, transcript: &str) -> Result<IntentMatch, String> {
        let intent = &self.intents[m.intent];
        let tokens = tokenize(transcript);
        let words = intent_words(intent);
        if !tokens
            .iter()
            .any(|t| !is_function_word(&t.text) && words.iter().any(|w| same_word(&t.text, w)))
        {
            return Err(format!(
                "no word of \"{transcript}\" belongs to intent `{}` (its sentences and description)",
                intent.name
            ));
        }
        let numbers = numbers_in(&tokens);
        let mut kept = Vec::new();
        for (i, slot) in intent.slots.iter().enumerate() {
            let given = m.slots.iter().position(|s| s.name == slot.name);
            // The values of this slot the transcript holds.
            let said: Vec<(SlotValue, String)> = match &slot.kind {
                SlotKind::Enum { values } => values
                    .iter()
                    .filter(|v| v.phrases.iter().any(|p| contains_phrase(&tokens, p)))
                    .map(|v| (SlotValue::Text(v.canonical.clone()), v.canonical.clone()))
                    .collect(),
                SlotKind::Number {
                    min, max, integer, ..
                } => {
                    let mut xs: Vec<f64> = numbers
                        .iter()
                        .copied()
                        .filter(|x| {
                            !(min.is_some_and(|m| *x < m)
                                || max.is_some_and(|m| *x > m)
                                || (*integer && x.fract() != 0.0))
                        })
                        .collect();
                    xs.sort_by(f64::total_cmp);
                    xs.dedup();
                    xs.into_iter()
                        .map(|x| (SlotValue::Number(x), x.to_string()))
                        .collect()
                }
                SlotKind::Text => Vec::new(),
            };
            let grounded = given.is_some_and(|g| match (&slot.kind, &m.slots[g].value) {
                (SlotKind::Text, SlotValue::Text(t)) => {
                    let phrase: Vec<String> = tokenize(t).into_iter().map(|t| t.text).collect();
                    contains_phrase(&tokens, &phrase)
                }
                (_, v) => said.iter().any(|(s, _)| s == v),
            });
            if grounded {
                kept.push(m.slots[given.unwrap_or_default()].clone());
            } else if let [(value, raw)] = said.as_slice() {
                kept.push(SlotMatch {
                    name: slot.name.clone(),
                    value: value.clone(),
                    raw: raw.clone(),
                });
            } else if intent.requires(i) {
                let what = given.map_or_else(
                    || "no value".to_string(),
                    |g| format!("{:?}", m.slots[g].value),
                );
                return Err(format!(
                    "slot `{}` of intent `{}` ({what}) is not in \"{transcript}\"",
                    slot.name, intent.name
                ));
            }
        }
        m.slots = kept;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROBOT: &str = r#"
[[intent]]
name = "move"
description = "Drive forward or backward, optionally by a distance in meters"
sentences = ["(move|go|drive) {direction} [{distance} meters]"]
[intent.slots.direction]
type = "enum"
[intent.slots.direction.values]
forward = ["ahead"]
backward = ["back", "backwards"]
[intent.slots.distance]
type = "number"
min = 0
max = 20

[[intent]]
name = "light_color"
description = "Set the color of the lights"
sentences = ["make the (light|lights) {color}"]
[intent.slots.color]
type = "enum"
values = ["red", "blue"]

[[intent]]
name = "photo"
description = "Take a photo"
sentences = ["take a (photo|picture)"]
"#;

    fn call(set: &IntentSet, name: &str, args: serde_json::Value) -> IntentMatch {
        set.tool_call(name, &args, 0.9).unwrap()
    }

    fn slots(m: &IntentMatch) -> Vec<(String, SlotValue)> {
        m.slots
            .iter()
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect()
    }

    #[test]
    fn the_function_words_are_sorted_for_the_binary_search() {
        assert!(FUNCTION_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn slots_nobody_said_are_dropped_corrected_or_refuse_the_call() {
        let set = IntentSet::parse(ROBOT, "robot.toml").unwrap();
        let text = |s: &str| SlotValue::Text(s.into());
        // Said as the LLM has it: kept.
        let m = call(
            &set,
            "move",
            serde_json::json!({"direction": "forward", "distance": 3}),
        );
        let g = set
            .ground(m, "Could you drive ahead three meters?")
            .unwrap();
        assert_eq!(
            slots(&g),
            [
                ("direction".into(), text("forward")),
                ("distance".into(), SlotValue::Number(3.0))
            ]
        );
        // An invented optional distance is dropped.
        let m = call(
            &set,
            "move",
            serde_json::json!({"direction": "forward", "distance": 5}),
        );
        let g = set.ground(m, "Please head forward a little.").unwrap();
        assert_eq!(slots(&g), [("direction".into(), text("forward"))]);
        // A wrong value the transcript contradicts is replaced by the one it holds.
        let m = call(
            &set,
            "move",
            serde_json::json!({"direction": "forward", "distance": 20}),
        );
        let g = set
            .ground(m, "I'd like you to back up two meters.")
            .unwrap();
        assert_eq!(
            slots(&g),
            [
                ("direction".into(), text("backward")),
                ("distance".into(), SlotValue::Number(2.0))
            ]
        );
        // A required slot with nothing to ground it refuses the call.
        let m = call(
            &set,
            "move",
            serde_json::json!({"direction": "forward", "distance": 10}),
        );
        let e = set.ground(m, "How far can you drive?").unwrap_err();
        assert!(e.contains("slot `direction`"), "{e}");
    }

    #[test]
    fn a_question_without_the_intents_words_is_no_command() {
        let set = IntentSet::parse(ROBOT, "robot.toml").unwrap();
        for (name, args, question) in [
            (
                "light_color",
                serde_json::json!({"color": "blue"}),
                "Why is the sky blue?",
            ),
            ("photo", serde_json::json!({}), "Tell me a joke."),
            (
                "move",
                serde_json::json!({"direction": "forward", "distance": 10}),
                "What is the capital of France?",
            ),
        ] {
            let e = set
                .ground(call(&set, name, args), question)
                .expect_err(question);
            assert!(e.contains(name), "{e}");
        }
        let m = call(&set, "photo", serde_json::json!({}));
        assert!(
            set.ground(m, "Could you snap a quick picture of this?")
                .is_ok()
        );
        let m = call(&set, "light_color", serde_json::json!({"color": "blue"}));
        assert!(set.ground(m, "I'd like the lights to be blue.").is_ok());
    }
}
