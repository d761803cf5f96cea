//! The tolerant second look, for a transcript no template matches whole: a word-level
//! alignment against every template (without free-text slots), where a word may be
//! replaced by one that sounds close, and a word may be missing or extra, each at a cost.
//!
//! - A replaced word costs its phonetic distance (a rough consonant key compared by edit
//!   distance, [`distance`]), and only words within [`MAX_SUBSTITUTION`] may replace each
//!   other ("matter" for "battery", "lamb" for "lamp"); any other difference is a missing
//!   plus an extra word.
//! - A missing or extra word costs 1, or 0.5 when it has at most 3 letters ("it", "the").
//! - Slots are never guessed from nothing: a number slot needs a number reading as in the
//!   exact matcher; an enumeration slot its phrase, or one word within 0.34 of exactly one
//!   of its one-word phrases, every other at least 0.3 further (so "light" is neither "left"
//!   nor "right").
//!
//! - No extra word may stand right before or after a number slot's words: it may have been
//!   part of the number ("turn right for the five degrees" is not 5 degrees).
//!
//! The confidence is `1 - cost / max(transcript words, template words)`. A match is kept
//! when it reaches the caller's bound, at least two words (or slot words) are exact and at
//! least half of the template's are, and no template of another intent comes within 0.05
//! of it. Pure and deterministic, like the template matcher.

use super::normalize::{Token, numbers_at, tokenize};
use super::template::Node;
use super::{
    IntentMatch, IntentSet, MAX_WORDS, Matcher, Recognizer, SlotKind, SlotMatch, SlotValue,
    uses_text,
};

/// The largest phonetic distance at which one word may stand for another.
pub const MAX_SUBSTITUTION: f32 = 0.5;
/// The largest distance at which a word stands for an enumeration value it is not.
const MAX_ENUM_DISTANCE: f32 = 0.34;
/// How much nearer than every other value a fuzzy enumeration value must be.
const ENUM_MARGIN: f32 = 0.3;
/// How close another intent may come before the best match counts as ambiguous.
const AMBIGUITY: f32 = 0.05;

enum Label {
    Word(String),
    Slot(usize),
    Empty,
}

/// A template as an acyclic automaton: every edge goes to a higher state.
struct Automaton {
    edges: Vec<Vec<(usize, Label)>>,
}

impl Automaton {
    fn of(nodes: &[Node]) -> (Automaton, usize) {
        let mut a = Automaton {
            edges: vec![Vec::new()],
        };
        let end = a.build(nodes, 0);
        (a, end)
    }

    fn state(&mut self) -> usize {
        self.edges.push(Vec::new());
        self.edges.len() - 1
    }

    fn build(&mut self, nodes: &[Node], mut at: usize) -> usize {
        for node in nodes {
            at = match node {
                Node::Word(w) => {
                    let s = self.state();
                    self.edges[at].push((s, Label::Word(w.clone())));
                    s
                }
                Node::Slot(x) => {
                    let s = self.state();
                    self.edges[at].push((s, Label::Slot(*x)));
                    s
                }
                Node::Alt(alts) => {
                    let ends: Vec<usize> = alts.iter().map(|alt| self.build(alt, at)).collect();
                    let s = self.state();
                    for e in ends {
                        self.edges[e].push((s, Label::Empty));
                    }
                    s
                }
            };
        }
        at
    }
}

#[derive(Clone)]
enum Step {
    Start,
    /// A template word: exact (0 cost), replaced, or missing.
    Word {
        exact: bool,
    },
    Missing,
    Extra,
    Slot {
        slot: usize,
        len: usize,
        value: SlotValue,
        exact: bool,
    },
    Empty,
}

#[derive(Clone)]
struct Cell {
    cost: f32,
    from: (usize, usize),
    step: Step,
}

/// The cost of a word missing from, or extra in, the transcript.
fn gap(word: &str) -> f32 {
    if word.chars().count() <= 3 { 0.5 } else { 1.0 }
}

/// A rough consonant key: vowels dropped after the first letter (an initial vowel becomes
/// `a`), silent and paired letters folded ("wr" → r, "ph" → f, "gh" dropped, "ch"/"sh" →
/// one letter), doubled letters once.
pub fn key(word: &str) -> Vec<char> {
    let w: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
    let mut out: Vec<char> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let c = w[i];
        let next = w.get(i + 1).copied();
        let (k, step) = match (c, next) {
            ('w', Some('r')) | ('k', Some('n')) if i == 0 => (None, 1),
            ('w', Some('h')) => (Some('w'), 2),
            ('p', Some('h')) => (Some('f'), 2),
            ('g', Some('h')) => (None, 2),
            ('c' | 's', Some('h')) => (Some('X'), 2),
            ('t', Some('h')) => (Some('0'), 2),
            ('c', Some('k')) => (Some('k'), 2),
            ('m', Some('b')) if i + 2 == w.len() => (Some('m'), 2),
            ('t', Some('c')) if w.get(i + 2) == Some(&'h') => (Some('X'), 3),
            ('a' | 'e' | 'i' | 'o' | 'u' | 'y', _) => ((i == 0).then_some('a'), 1),
            ('h', _) if i > 0 => (None, 1),
            ('c' | 'q', _) => (Some('k'), 1),
            ('z', _) => (Some('s'), 1),
            (c, _) => (Some(c), 1),
        };
        if let Some(k) = k
            && out.last() != Some(&k)
        {
            out.push(k);
        }
        i += step;
    }
    out
}

/// Letters that are often heard for each other (voicing, nasals) cost half.
fn letter_cost(a: char, b: char) -> f32 {
    if a == b {
        return 0.0;
    }
    let pair = |x: char, y: char| (a == x && b == y) || (a == y && b == x);
    if pair('b', 'p')
        || pair('d', 't')
        || pair('g', 'k')
        || pair('v', 'f')
        || pair('m', 'n')
        || pair('s', 'X')
    {
        0.5
    } else {
        1.0
    }
}

/// The phonetic distance of two words, 0 (the same) to 1: the weighted edit distance of
/// their keys over the longer key. Numbers are only ever the same or 1 apart.
pub fn distance(a: &str, b: &str) -> f32 {
    if a == b {
        return 0.0;
    }
    if a.starts_with(|c: char| c.is_ascii_digit()) || b.starts_with(|c: char| c.is_ascii_digit()) {
        return 1.0;
    }
    let (ka, kb) = (key(a), key(b));
    let longest = ka.len().max(kb.len());
    if longest == 0 {
        return 1.0;
    }
    let mut prev: Vec<f32> = (0..=kb.len()).map(|j| j as f32).collect();
    for (i, &ca) in ka.iter().enumerate() {
        let mut row = vec![(i + 1) as f32; kb.len() + 1];
        for (j, &cb) in kb.iter().enumerate() {
            row[j + 1] = (prev[j] + letter_cost(ca, cb))
                .min(prev[j + 1] + 1.0)
                .min(row[j] + 1.0);
        }
        prev = row;
    }
    // Different spellings of one sound ("metres", "meters") still differ a little.
    (prev[kb.len()] / longest as f32).max(0.1)
}

struct Found {
    intent: usize,
    confidence: f32,
    slots: Vec<SlotMatch>,
}

impl IntentSet {
    /// The tolerant match of `transcript` (see the module doc), for when
    /// [`IntentSet::recognize`] found nothing: the best template's intent when its
    /// confidence is at least `min_confidence` and it is unambiguous, with
    /// [`Recognizer::Fuzzy`].
    pub fn recognize_fuzzy(&self, transcript: &str, min_confidence: f32) -> Option<IntentMatch> {
        let tokens = tokenize(transcript);
        if tokens.is_empty() || tokens.len() > MAX_WORDS {
            return None;
        }
        let mut best: Option<Found> = None;
        let mut runner_up = f32::NEG_INFINITY;
        for &(i, t) in &self.order {
            let intent = &self.intents[i];
            if uses_text(&intent.templates[t], &intent.slots) {
                continue;
            }
            let Some(found) = self.align(i, t, transcript, &tokens) else {
                continue;
            };
            match &best {
                Some(b) if found.confidence <= b.confidence => {
                    if found.intent != b.intent {
                        runner_up = runner_up.max(found.confidence);
                    }
                }
                _ => {
                    if let Some(b) = &best
                        && b.intent != found.intent
                    {
                        runner_up = runner_up.max(b.confidence);
                    }
                    best = Some(found);
                }
            }
        }
        let best = best?;
        if best.confidence < min_confidence || best.confidence - runner_up < AMBIGUITY {
            return None;
        }
        Some(IntentMatch {
            intent: best.intent,
            name: self.intents[best.intent].name.clone(),
            slots: best.slots,
            recognizer: Recognizer::Fuzzy,
            confidence: (best.confidence * 1000.0).round() / 1000.0,
        })
    }

    /// The cheapest alignment of `tokens` with template `t` of intent `i`, if it passes the
    /// exact-word checks.
    fn align(&self, i: usize, t: usize, transcript: &str, tokens: &[Token]) -> Option<Found> {
        let intent = &self.intents[i];
        let (auto, end) = Automaton::of(&intent.templates[t]);
        let n = tokens.len();
        let states = auto.edges.len();
        let at = |s: usize, p: usize| s * (n + 1) + p;
        let mut cells: Vec<Option<Cell>> = vec![None; states * (n + 1)];
        cells[0] = Some(Cell {
            cost: 0.0,
            from: (0, 0),
            step: Step::Start,
        });
        let relax = |cells: &mut Vec<Option<Cell>>, to: (usize, usize), cost: f32, from, step| {
            let c = &mut cells[at(to.0, to.1)];
            if c.as_ref().is_none_or(|c| cost < c.cost) {
                *c = Some(Cell { cost, from, step });
            }
        };
        let matcher = Matcher {
            tokens,
            slots: &intent.slots,
        };
        for u in 0..states {
            for p in 0..n {
                if let Some(c) = &cells[at(u, p)] {
                    let cost = c.cost + gap(&tokens[p].text);
                    relax(&mut cells, (u, p + 1), cost, (u, p), Step::Extra);
                }
            }
            for p in 0..=n {
                let Some(base) = cells[at(u, p)].as_ref().map(|c| c.cost) else {
                    continue;
                };
                for (v, label) in &auto.edges[u] {
                    match label {
                        Label::Empty => relax(&mut cells, (*v, p), base, (u, p), Step::Empty),
                        Label::Word(w) => {
                            relax(&mut cells, (*v, p), base + gap(w), (u, p), Step::Missing);
                            if let Ok(x) = w.parse::<f64>() {
                                for (y, len) in numbers_at(tokens, p) {
                                    if x == y {
                                        let step = Step::Word { exact: true };
                                        relax(&mut cells, (*v, p + len), base, (u, p), step);
                                    }
                                }
                            }
                            if p < n {
                                let d = distance(w, &tokens[p].text);
                                if d == 0.0 || d <= MAX_SUBSTITUTION {
                                    let step = Step::Word { exact: d == 0.0 };
                                    relax(&mut cells, (*v, p + 1), base + d, (u, p), step);
                                }
                            }
                        }
                        Label::Slot(s) => {
                            for (value, len) in matcher.candidates(*s, p) {
                                let step = Step::Slot {
                                    slot: *s,
                                    len,
                                    value,
                                    exact: true,
                                };
                                relax(&mut cells, (*v, p + len), base, (u, p), step);
                            }
                            if let (Some((value, d)), true) =
                                (self.near_value(i, *s, tokens, p), p < n)
                            {
                                let step = Step::Slot {
                                    slot: *s,
                                    len: 1,
                                    value,
                                    exact: false,
                                };
                                relax(&mut cells, (*v, p + 1), base + d + 0.2, (u, p), step);
                            }
                        }
                    }
                }
            }
        }
        let last = cells[at(end, n)].as_ref()?;
        let cost = last.cost;
        // Back along the path: exact words, template words, slots.
        let (mut exact, mut words) = (0usize, 0usize);
        let mut slots = Vec::new();
        let mut extra = Vec::new();
        let mut number_spans = Vec::new();
        let (mut s, mut p) = (end, n);
        loop {
            let c = cells[at(s, p)].as_ref()?;
            match &c.step {
                Step::Start => break,
                Step::Word { exact: e, .. } => {
                    words += 1;
                    exact += usize::from(*e);
                }
                Step::Missing => words += 1,
                Step::Slot {
                    slot,
                    len,
                    value,
                    exact: e,
                } => {
                    words += len;
                    if *e {
                        exact += len;
                    }
                    let start = c.from.1;
                    if matches!(intent.slots[*slot].kind, SlotKind::Number { .. }) {
                        number_spans.push((start, start + len));
                    }
                    slots.push(SlotMatch {
                        name: intent.slots[*slot].name.clone(),
                        value: value.clone(),
                        raw: transcript[tokens[start].start..tokens[start + len - 1].end]
                            .to_string(),
                    });
                }
                Step::Extra => extra.push(c.from.1),
                Step::Empty => {}
            }
            (s, p) = c.from;
        }
        slots.reverse();
        if exact < 2 || exact * 2 < words {
            return None;
        }
        // An extra word next to a number may have been part of it ("for the five" is not 5).
        if number_spans
            .iter()
            .any(|&(a, b)| extra.iter().any(|&x| x + 1 == a || x == b))
        {
            return None;
        }
        let confidence = 1.0 - cost / n.max(words) as f32;
        Some(Found {
            intent: i,
            confidence,
            slots,
        })
    }

    /// The enumeration value one word at `p` is near to, alone, with its distance.
    fn near_value(
        &self,
        i: usize,
        s: usize,
        tokens: &[Token],
        p: usize,
    ) -> Option<(SlotValue, f32)> {
        let SlotKind::Enum { values } = &self.intents[i].slots[s].kind else {
            return None;
        };
        let word = &tokens.get(p)?.text;
        let mut best: Option<(&str, f32)> = None;
        let mut second = f32::INFINITY;
        for v in values {
            for phrase in &v.phrases {
                let [w] = phrase.as_slice() else { continue };
                let d = distance(w, word);
                match best {
                    Some((c, b)) if d >= b => {
                        if c != v.canonical {
                            second = second.min(d);
                        }
                    }
                    _ => {
                        if let Some((c, b)) = best
                            && c != v.canonical
                        {
                            second = second.min(b);
                        }
                        best = Some((&v.canonical, d));
                    }
                }
            }
        }
        let (canonical, d) = best?;
        (d > 0.0 && d <= MAX_ENUM_DISTANCE && second - d >= ENUM_MARGIN)
            .then(|| (SlotValue::Text(canonical.to_string()), d))
    }
}
