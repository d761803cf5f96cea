//! Intents: what an integrator declares a spoken command may mean, and the template
//! matcher that recognizes them in a transcript.
//!
//! An intents file (TOML, read by the daemon and handed here as text with its name for the
//! errors) declares intents with typed slots and sentence templates ([`template`]).
//! [`IntentSet::parse`] refuses a bad file with its line and column; [`IntentSet::recognize`]
//! matches a transcript against every template after the one normalization of both sides
//! ([`normalize`]): case, punctuation and number forms ("10", "ten") do not matter, anything
//! else does. A match must cover the whole transcript, so out-of-domain sentences and partial
//! matches give nothing: there is no fuzzy guessing. Matching is pure and deterministic.
//!
//! Order: templates without a free-text slot are tried first, in file order (intents, then
//! their sentences), then those with one; the first that matches wins. Within a template,
//! alternatives are tried in the order written, an optional part before its absence, longer
//! enumeration synonyms and number readings before shorter ones, and free text shortest
//! first.
//!
//! The LLM recognizer (tool calls under a grammar) is meant to produce the same
//! [`IntentMatch`] with [`Recognizer::Llm`] and its own confidence.

pub mod fuzzy;
mod ground;
pub mod normalize;
pub mod prompt;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use normalize::{Token, numbers_at, tokenize};
use template::Node;

/// Transcripts longer than this many words are not matched (a command is short; this also
/// bounds the backtracking of free-text slots).
pub const MAX_WORDS: usize = 48;

/// A parsed, checked intents file.
#[derive(Debug, Clone)]
pub struct IntentSet {
    pub intents: Vec<Intent>,
    /// (intent index, template), in the order they are tried.
    order: Vec<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct Intent {
    pub name: String,
    pub description: String,
    pub slots: Vec<Slot>,
    /// The templates as written.
    pub sentences: Vec<String>,
    /// The 1-based line of its `name`, for the caller's own checks of the name.
    pub line: usize,
    templates: Vec<Vec<Node>>,
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub kind: SlotKind,
}

#[derive(Debug, Clone)]
pub enum SlotKind {
    /// One of `values`; each matches its canonical form and its synonyms.
    Enum { values: Vec<EnumValue> },
    /// A number ("10", "ten", "two point five"), within `min..=max` when given.
    Number {
        min: Option<f64>,
        max: Option<f64>,
        integer: bool,
        unit: Option<String>,
    },
    /// Any words (at least one).
    Text,
}

#[derive(Debug, Clone)]
pub struct EnumValue {
    pub canonical: String,
    /// Every phrase that means it (the canonical one first), tokenized.
    phrases: Vec<Vec<String>>,
}

/// Which recognizer found an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognizer {
    Template,
    /// The LLM's tool call under a grammar ([`IntentSet::tools`], [`IntentSet::tool_call`]).
    Llm,
    /// The tolerant second look ([`IntentSet::recognize_fuzzy`]).
    Fuzzy,
}

impl Recognizer {
    pub fn name(self) -> &'static str {
        match self {
            Recognizer::Template => "template",
            Recognizer::Llm => "llm",
            Recognizer::Fuzzy => "fuzzy",
        }
    }
}

/// A slot's value.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotValue {
    /// An enumeration's canonical value, or free text as spoken.
    Text(String),
    Number(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlotMatch {
    pub name: String,
    pub value: SlotValue,
    /// The words of the transcript it came from, as written there.
    pub raw: String,
}

/// A recognized intent.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentMatch {
    /// Index into [`IntentSet::intents`].
    pub intent: usize,
    pub name: String,
    /// The slots the matched template filled, in the order of the transcript.
    pub slots: Vec<SlotMatch>,
    pub recognizer: Recognizer,
    /// 1.0 for a template match: the whole transcript, normalized, is one of the sentences
    /// its templates describe.
    pub confidence: f32,
}

/// A mistake in an intents file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentFileError {
    pub file: String,
    /// 1-based; 0 when the mistake has no place (an empty file).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for IntentFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for IntentFileError {}

// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    intent: Vec<IntentDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentDoc {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    slots: BTreeMap<String, Spanned<SlotDoc>>,
    sentences: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotDoc {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    values: Option<Spanned<ValuesDoc>>,
    min: Option<f64>,
    max: Option<f64>,
    integer: Option<bool>,
    unit: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ValuesDoc {
    Plain(Vec<String>),
    Synonyms(BTreeMap<String, Vec<String>>),
}

/// Line and column (1-based, in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl IntentSet {
    /// Parses and checks an intents file; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<IntentSet, IntentFileError> {
        let at = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            IntentFileError {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        let doc: FileDoc = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) => at(span.start, message),
                None => IntentFileError {
                    file: file.to_string(),
                    line: 0,
                    column: 0,
                    message,
                },
            }
        })?;
        if doc.intent.is_empty() {
            return Err(IntentFileError {
                file: file.to_string(),
                line: 0,
                column: 0,
                message: "no intent is declared: add [[intent]] tables with a name and sentences"
                    .into(),
            });
        }
        let mut intents: Vec<Intent> = Vec::new();
        for doc in doc.intent {
            let name = doc.name.get_ref().trim().to_string();
            let name_at = doc.name.span().start;
            if name.is_empty() {
                return Err(at(name_at, "an intent's name is empty".into()));
            }
            if let Some(first) = intents.iter().find(|i| i.name == name) {
                return Err(at(
                    name_at,
                    format!(
                        "intent `{name}` is declared twice (first at line {})",
                        first.line
                    ),
                ));
            }
            let mut slots = Vec::new();
            for (slot_name, slot) in doc.slots {
                let span = slot.span();
                slots.push(Slot {
                    kind: slot_kind(slot.into_inner(), &slot_name, &name, span.start, &at)?,
                    name: slot_name,
                });
            }
            if doc.sentences.get_ref().is_empty() {
                return Err(at(
                    doc.sentences.span().start,
                    format!("intent `{name}` has no sentences"),
                ));
            }
            let mut templates = Vec::new();
            let mut sentences = Vec::new();
            for sentence in doc.sentences.into_inner() {
                let span = sentence.span();
                let lookup = |slot: &str| {
                    slots.iter().position(|s| s.name == slot).ok_or_else(|| {
                        let declared: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
                        format!(
                            "slot `{slot}` is referenced but not declared in intent `{name}` (declared: {}); add [intent.slots.{slot}] with a type",
                            if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                        )
                    })
                };
                let nodes = template::parse(sentence.get_ref(), &lookup).map_err(|e| {
                    // The column of the character in a one-line string written without
                    // escapes (the quote is at span.start).
                    let (line, column) = line_col(text, span.start);
                    IntentFileError {
                        file: file.to_string(),
                        line,
                        column: column + 1 + e.offset,
                        message: format!("in template {:?}: {}", sentence.get_ref(), e.message),
                    }
                })?;
                templates.push(nodes);
                sentences.push(sentence.into_inner());
            }
            intents.push(Intent {
                name,
                description: doc.description,
                slots,
                sentences,
                line: line_col(text, name_at).0,
                templates,
            });
        }
        let mut order = Vec::new();
        for free_text in [false, true] {
            for (i, intent) in intents.iter().enumerate() {
                for (t, nodes) in intent.templates.iter().enumerate() {
                    if uses_text(nodes, &intent.slots) == free_text {
                        order.push((i, t));
                    }
                }
            }
        }
        Ok(IntentSet { intents, order })
    }

    /// The intent `transcript` expresses, if one of the templates matches it whole.
    pub fn recognize(&self, transcript: &str) -> Option<IntentMatch> {
        let tokens = tokenize(transcript);
        if tokens.is_empty() || tokens.len() > MAX_WORDS {
            return None;
        }
        for &(i, t) in &self.order {
            let intent = &self.intents[i];
            let m = Matcher {
                tokens: &tokens,
                slots: &intent.slots,
            };
            let mut caps = Vec::new();
            if m.seq(&intent.templates[t], &Cont::Done, 0, &mut caps) {
                caps.sort_by_key(|c| c.start);
                let slots = caps
                    .into_iter()
                    .map(|c| {
                        let raw =
                            transcript[tokens[c.start].start..tokens[c.end - 1].end].to_string();
                        let value = match intent.slots[c.slot].kind {
                            SlotKind::Text => SlotValue::Text(raw.clone()),
                            _ => c.value,
                        };
                        SlotMatch {
                            name: intent.slots[c.slot].name.clone(),
                            raw,
                            value,
                        }
                    })
                    .collect();
                return Some(IntentMatch {
                    intent: i,
                    name: intent.name.clone(),
                    slots,
                    recognizer: Recognizer::Template,
                    confidence: 1.0,
                });
            }
        }
        None
    }

    /// How many templates there are.
    pub fn templates(&self) -> usize {
        self.order.len()
    }
}

impl Intent {
    /// Whether slot `s` is required: every template fills it (a tool schema's `required`,
    /// and what grounding may not drop).
    fn requires(&self, s: usize) -> bool {
        self.templates.iter().all(|t| always_fills(t, s))
    }
}

/// Whether every way through `nodes` fills slot `s`.
fn always_fills(nodes: &[Node], s: usize) -> bool {
    nodes.iter().any(|n| match n {
        Node::Slot(x) => *x == s,
        Node::Alt(alts) => alts.iter().all(|a| always_fills(a, s)),
        Node::Word(_) => false,
    })
}

impl IntentSet {
    /// The intents as tools, in the OpenAI shape (`[{"type": "function", "function":
    /// {"name", "description", "parameters"}}]`): each slot a property (an enumeration's
    /// canonical values, a number's range, free text as a string); a slot every template
    /// fills is required.
    pub fn tools(&self) -> serde_json::Value {
        use serde_json::json;
        let tools: Vec<serde_json::Value> = self
            .intents
            .iter()
            .map(|intent| {
                let mut props = serde_json::Map::new();
                let mut required = Vec::new();
                for (i, slot) in intent.slots.iter().enumerate() {
                    let schema = match &slot.kind {
                        SlotKind::Enum { values } => json!({
                            "type": "string",
                            "enum": values.iter().map(|v| v.canonical.clone()).collect::<Vec<_>>(),
                        }),
                        SlotKind::Number {
                            min,
                            max,
                            integer,
                            unit,
                        } => {
                            let mut n = serde_json::Map::new();
                            n.insert(
                                "type".into(),
                                json!(if *integer { "integer" } else { "number" }),
                            );
                            if let Some(m) = min {
                                n.insert("minimum".into(), json!(m));
                            }
                            if let Some(m) = max {
                                n.insert("maximum".into(), json!(m));
                            }
                            if let Some(u) = unit {
                                n.insert("description".into(), json!(format!("in {u}")));
                            }
                            serde_json::Value::Object(n)
                        }
                        SlotKind::Text => json!({"type": "string", "minLength": 1}),
                    };
                    props.insert(slot.name.clone(), schema);
                    if intent.requires(i) {
                        required.push(slot.name.clone());
                    }
                }
                let description = if intent.description.is_empty() {
                    intent.sentences.first().cloned().unwrap_or_default()
                } else {
                    intent.description.clone()
                };
                json!({
                    "type": "function",
                    "function": {
                        "name": intent.name,
                        "description": description,
                        "parameters": {
                            "type": "object",
                            "properties": props,
                            "required": required,
                            "additionalProperties": false,
                        },
                    },
                })
            })
            .collect();
        serde_json::Value::Array(tools)
    }

    /// A tool call (`name`, `arguments` as a JSON object) as an intent recognized by the LLM:
    /// the slots checked against the intent's declaration (an enumeration's synonym becomes
    /// its canonical value, a number must be in range), or what is wrong.
    pub fn tool_call(
        &self,
        name: &str,
        arguments: &serde_json::Value,
        confidence: f32,
    ) -> Result<IntentMatch, String> {
        let (index, intent) = self
            .intents
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == name)
            .ok_or_else(|| format!("no intent is named `{name}`"))?;
        let args = match arguments {
            serde_json::Value::Object(o) => o,
            serde_json::Value::Null => &serde_json::Map::new(),
            _ => return Err("the arguments are not a JSON object".into()),
        };
        let mut slots = Vec::new();
        for (key, value) in args {
            let slot = intent
                .slots
                .iter()
                .find(|s| &s.name == key)
                .ok_or_else(|| format!("intent `{name}` has no slot `{key}`"))?;
            let bad = || format!("slot `{key}` of intent `{name}`: {value} is not allowed");
            let (value, raw) = match (&slot.kind, value) {
                (SlotKind::Enum { values }, serde_json::Value::String(v)) => {
                    let words: Vec<String> = tokenize(v).into_iter().map(|t| t.text).collect();
                    let canonical = values
                        .iter()
                        .find(|e| e.canonical == *v || e.phrases.contains(&words))
                        .ok_or_else(bad)?;
                    (SlotValue::Text(canonical.canonical.clone()), v.clone())
                }
                (
                    SlotKind::Number {
                        min, max, integer, ..
                    },
                    serde_json::Value::Number(n),
                ) => {
                    let x = n.as_f64().ok_or_else(bad)?;
                    if min.is_some_and(|m| x < m)
                        || max.is_some_and(|m| x > m)
                        || (*integer && x.fract() != 0.0)
                    {
                        return Err(bad());
                    }
                    (SlotValue::Number(x), n.to_string())
                }
                (SlotKind::Text, serde_json::Value::String(v)) if !v.trim().is_empty() => {
                    (SlotValue::Text(v.clone()), v.clone())
                }
                _ => return Err(bad()),
            };
            slots.push(SlotMatch {
                name: key.clone(),
                value,
                raw,
            });
        }
        Ok(IntentMatch {
            intent: index,
            name: intent.name.clone(),
            slots,
            recognizer: Recognizer::Llm,
            confidence,
        })
    }
}

fn uses_text(nodes: &[Node], slots: &[Slot]) -> bool {
    nodes.iter().any(|n| match n {
        Node::Slot(s) => matches!(slots[*s].kind, SlotKind::Text),
        Node::Alt(alts) => alts.iter().any(|a| uses_text(a, slots)),
        Node::Word(_) => false,
    })
}

fn slot_kind(
    doc: SlotDoc,
    slot: &str,
    intent: &str,
    offset: usize,
    at: &dyn Fn(usize, String) -> IntentFileError,
) -> Result<SlotKind, IntentFileError> {
    let kind = doc.kind.get_ref().as_str();
    let kind_at = doc.kind.span().start;
    let only = |key: &str, present: bool, for_kind: &str| {
        if present {
            Err(at(
                offset,
                format!("slot `{slot}` of intent `{intent}`: `{key}` is only for {for_kind} slots"),
            ))
        } else {
            Ok(())
        }
    };
    match kind {
        "enum" => {
            only("min", doc.min.is_some(), "number")?;
            only("max", doc.max.is_some(), "number")?;
            only("integer", doc.integer.is_some(), "number")?;
            only("unit", doc.unit.is_some(), "number")?;
            let Some(values) = doc.values else {
                return Err(at(
                    offset,
                    format!(
                        "enum slot `{slot}` of intent `{intent}` has no `values` (a list, or a table of value = [synonyms])"
                    ),
                ));
            };
            let values_at = values.span().start;
            let pairs: Vec<(String, Vec<String>)> = match values.into_inner() {
                ValuesDoc::Plain(v) => v.into_iter().map(|v| (v, Vec::new())).collect(),
                ValuesDoc::Synonyms(m) => m.into_iter().collect(),
            };
            if pairs.is_empty() {
                return Err(at(values_at, format!("enum slot `{slot}` has no values")));
            }
            let mut out = Vec::new();
            for (canonical, synonyms) in pairs {
                let mut phrases = Vec::new();
                for phrase in std::iter::once(&canonical).chain(&synonyms) {
                    let words: Vec<String> = tokenize(phrase).into_iter().map(|t| t.text).collect();
                    if words.is_empty() {
                        return Err(at(
                            values_at,
                            format!("enum slot `{slot}`: {phrase:?} has no words"),
                        ));
                    }
                    phrases.push(words);
                }
                // Longest first, so "light blue" wins over "light".
                phrases.sort_by_key(|p| std::cmp::Reverse(p.len()));
                out.push(EnumValue { canonical, phrases });
            }
            Ok(SlotKind::Enum { values: out })
        }
        "number" => {
            only("values", doc.values.is_some(), "enum")?;
            for (key, v) in [("min", doc.min), ("max", doc.max)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    return Err(at(offset, format!("slot `{slot}`: `{key}` must be finite")));
                }
            }
            if let (Some(lo), Some(hi)) = (doc.min, doc.max)
                && lo > hi
            {
                return Err(at(
                    offset,
                    format!(
                        "number slot `{slot}` of intent `{intent}`: min {lo} is above max {hi}"
                    ),
                ));
            }
            Ok(SlotKind::Number {
                min: doc.min,
                max: doc.max,
                integer: doc.integer.unwrap_or(false),
                unit: doc.unit,
            })
        }
        "text" => {
            only("values", doc.values.is_some(), "enum")?;
            only("min", doc.min.is_some(), "number")?;
            only("max", doc.max.is_some(), "number")?;
            only("integer", doc.integer.is_some(), "number")?;
            only("unit", doc.unit.is_some(), "number")?;
            Ok(SlotKind::Text)
        }
        other => Err(at(
            kind_at,
            format!(
                "slot `{slot}` of intent `{intent}` has unknown type {other:?}; allowed: \"enum\", \"number\", \"text\""
            ),
        )),
    }
}

/// What is left to match after the current sequence.
enum Cont<'a> {
    Done,
    Then(&'a [Node], &'a Cont<'a>),
}

struct Capture {
    slot: usize,
    start: usize,
    end: usize,
    value: SlotValue,
}

struct Matcher<'a> {
    tokens: &'a [Token],
    slots: &'a [Slot],
}

impl Matcher<'_> {
    fn seq(&self, nodes: &[Node], cont: &Cont, pos: usize, caps: &mut Vec<Capture>) -> bool {
        let Some((node, rest)) = nodes.split_first() else {
            return match cont {
                Cont::Done => pos == self.tokens.len(),
                Cont::Then(next, outer) => self.seq(next, outer, pos, caps),
            };
        };
        match node {
            Node::Word(w) => {
                if self.tokens.get(pos).is_some_and(|t| &t.text == w) {
                    return self.seq(rest, cont, pos + 1, caps);
                }
                // A number written in the template ("90") also matches "ninety".
                if let Ok(v) = w.parse::<f64>() {
                    for (n, len) in numbers_at(self.tokens, pos) {
                        if n == v && self.seq(rest, cont, pos + len, caps) {
                            return true;
                        }
                    }
                }
                false
            }
            Node::Alt(alts) => {
                let after = Cont::Then(rest, cont);
                alts.iter().any(|a| self.seq(a, &after, pos, caps))
            }
            Node::Slot(s) => {
                for (value, len) in self.candidates(*s, pos) {
                    caps.push(Capture {
                        slot: *s,
                        start: pos,
                        end: pos + len,
                        value,
                    });
                    if self.seq(rest, cont, pos + len, caps) {
                        return true;
                    }
                    caps.pop();
                }
                false
            }
        }
    }

    /// The readings of slot `s` at `pos`, in the order they are tried.
    fn candidates(&self, s: usize, pos: usize) -> Vec<(SlotValue, usize)> {
        let left = self.tokens.len().saturating_sub(pos);
        match &self.slots[s].kind {
            SlotKind::Enum { values } => {
                let mut out: Vec<(SlotValue, usize)> = Vec::new();
                for v in values {
                    for p in &v.phrases {
                        if p.len() <= left
                            && p.iter().zip(&self.tokens[pos..]).all(|(w, t)| *w == t.text)
                        {
                            out.push((SlotValue::Text(v.canonical.clone()), p.len()));
                        }
                    }
                }
                out.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
                out
            }
            SlotKind::Number {
                min, max, integer, ..
            } => numbers_at(self.tokens, pos)
                .into_iter()
                .filter(|&(v, _)| {
                    min.is_none_or(|m| v >= m)
                        && max.is_none_or(|m| v <= m)
                        && (!integer || v.fract() == 0.0)
                })
                .map(|(v, len)| (SlotValue::Number(v), len))
                .collect(),
            // The value is the words as written, filled in once the template matched.
            SlotKind::Text => (1..=left)
                .map(|len| (SlotValue::Text(String::new()), len))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
