//! A Whisper `initial_prompt` made from an intents file: example commands that use the
//! templates' words and the slots' values, so the decoder expects the vocabulary of the
//! commands ("battery", not "matter").
//!
//! Sentences are generated from every template a few times over, each time taking other
//! alternatives, optional parts, enumeration phrases and numbers; then chosen greedily, the
//! sentence that brings the most words not yet in the prompt (per word it costs; the words of
//! enumeration values count three times) first, until
//! every word is in or the word budget is spent. Deterministic: the same file gives the same
//! prompt.

use super::template::Node;
use super::{IntentSet, SlotKind};

/// How many sentences are generated from one template before choosing.
const VARIANTS: usize = 12;

/// Numbers used to fill number slots (those in the slot's range, in this order).
const SAMPLE_NUMBERS: [f64; 10] = [2.0, 5.0, 10.0, 90.0, 3.0, 50.0, 45.0, 20.0, 180.0, 1.0];

impl IntentSet {
    /// Example commands for Whisper's `initial_prompt`, at most `max_words` words, an
    /// enumeration value of several words counting as one (Whisper
    /// keeps only the last 223 tokens of a prompt; 120 words of these sentences stay inside).
    pub fn stt_prompt(&self, max_words: usize) -> String {
        let mut candidates: Vec<Vec<String>> = Vec::new();
        for intent in &self.intents {
            for nodes in &intent.templates {
                for k in 0..VARIANTS {
                    let mut words = Vec::new();
                    let mut counter = k;
                    self.fill(intent, nodes, k, &mut counter, &mut words);
                    if !words.is_empty() && !candidates.contains(&words) {
                        candidates.push(words);
                    }
                }
            }
        }
        // The words of enumeration values' canonical forms count most: they carry what a
        // command means ("forward", "kitchen"), where template words and synonyms vary.
        let mut key_words: Vec<&str> = Vec::new();
        for intent in &self.intents {
            for slot in &intent.slots {
                if let SlotKind::Enum { values } = &slot.kind {
                    for v in values {
                        key_words.extend(v.canonical.split_whitespace());
                    }
                }
            }
        }
        let weight = |w: &str| if key_words.contains(&w) { 3.0 } else { 1.0 };
        let mut seen: Vec<&str> = Vec::new();
        let mut chosen: Vec<usize> = Vec::new();
        let mut used = 0;
        loop {
            // The sentence with the most new words per word; ties to the earlier one.
            let mut best: Option<(usize, f64)> = None;
            for (i, words) in candidates.iter().enumerate() {
                if chosen.contains(&i) || used + words.len() > max_words {
                    continue;
                }
                let mut new: Vec<&str> = Vec::new();
                for w in words {
                    if !seen.contains(&w.as_str()) && !new.contains(&w.as_str()) {
                        new.push(w);
                    }
                }
                if new.is_empty() {
                    continue;
                }
                let score = new.iter().map(|w| weight(w)).sum::<f64>() / words.len() as f64;
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((i, score));
                }
            }
            let Some((i, _)) = best else { break };
            for w in &candidates[i] {
                if !seen.contains(&w.as_str()) {
                    seen.push(w);
                }
            }
            used += candidates[i].len();
            chosen.push(i);
        }
        // In file order, as an integrator would read them.
        chosen.sort_unstable();
        let mut out = String::new();
        for i in chosen {
            let sentence = candidates[i].join(" ");
            let mut chars = sentence.chars();
            if let Some(first) = chars.next() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
                out.push('.');
            }
        }
        out
    }

    /// One sentence of `nodes`; `k` picks the variant, `counter` turns at each choice so
    /// that the choices of one sentence differ from each other's.
    fn fill(
        &self,
        intent: &super::Intent,
        nodes: &[Node],
        k: usize,
        counter: &mut usize,
        out: &mut Vec<String>,
    ) {
        for node in nodes {
            match node {
                Node::Word(w) => out.push(w.clone()),
                Node::Alt(alts) => {
                    let a = &alts[*counter % alts.len()];
                    *counter += 1;
                    self.fill(intent, a, k, counter, out);
                }
                Node::Slot(s) => match &intent.slots[*s].kind {
                    SlotKind::Enum { values } => {
                        // Every canonical value first, then the synonyms.
                        let canonical: Vec<String> =
                            values.iter().map(|v| v.canonical.to_lowercase()).collect();
                        let synonyms = values.iter().flat_map(|v| {
                            v.phrases
                                .iter()
                                .map(|p| p.join(" "))
                                .filter(|p| *p != v.canonical.to_lowercase())
                        });
                        let phrases: Vec<String> =
                            canonical.iter().cloned().chain(synonyms).collect();
                        out.push(phrases[(k + *s) % phrases.len()].clone());
                    }
                    SlotKind::Number {
                        min, max, integer, ..
                    } => {
                        let fits: Vec<f64> = SAMPLE_NUMBERS
                            .iter()
                            .copied()
                            .filter(|&v| min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m))
                            .collect();
                        let v = match fits.get(k % fits.len().max(1)) {
                            Some(&v) => v,
                            None => min.or(*max).unwrap_or(1.0),
                        };
                        let v = if *integer { v.round() } else { v };
                        out.push(format!("{v}"));
                    }
                    // Free text: nothing to expect.
                    SlotKind::Text => {}
                },
            }
        }
    }
}
