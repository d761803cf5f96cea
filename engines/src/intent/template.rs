//! Sentence templates, in the spirit of hassil and Rhasspy: words, alternatives `(a|b)`,
//! optional parts `[word]` (`[a|b]`: one of them or nothing), slot references `{slot}`.

use super::normalize::tokenize;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A normalized word.
    Word(String),
    /// A slot, by its index in the intent's slots.
    Slot(usize),
    /// One of the alternatives; an optional part has an empty one last.
    Alt(Vec<Vec<Node>>),
}

/// What is wrong with a template, and where: `offset` counts characters from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    slot: &'a dyn Fn(&str) -> Result<usize, String>,
    /// Slots referenced so far (each at most once a template).
    seen: Vec<usize>,
}

/// Parses `template`; `slot` maps a referenced slot name to its index, or says why not.
pub fn parse(
    template: &str,
    slot: &dyn Fn(&str) -> Result<usize, String>,
) -> Result<Vec<Node>, TemplateError> {
    let mut p = Parser {
        chars: template.chars().collect(),
        pos: 0,
        slot,
        seen: Vec::new(),
    };
    let seq = p.sequence()?;
    if let Some(&c) = p.chars.get(p.pos) {
        return Err(p.fail(match c {
            ')' => "')' without a matching '('".into(),
            ']' => "']' without a matching '['".into(),
            '|' => "'|' outside (...) or [...]: alternatives go in parentheses, e.g. (turn|switch)"
                .into(),
            c => format!("unexpected {c:?}"),
        }));
    }
    if !seq.iter().any(required) {
        return Err(TemplateError {
            offset: 0,
            message: "the template has no required word or slot (it would match an empty sentence)"
                .into(),
        });
    }
    Ok(seq)
}

/// Whether a node must consume at least one word.
fn required(node: &Node) -> bool {
    match node {
        Node::Word(_) | Node::Slot(_) => true,
        Node::Alt(alts) => alts.iter().all(|a| a.iter().any(required)),
    }
}

impl Parser<'_> {
    fn fail(&self, message: String) -> TemplateError {
        TemplateError {
            offset: self.pos,
            message,
        }
    }

    /// Words, groups and slots up to `)`, `]`, `|` or the end.
    fn sequence(&mut self) -> Result<Vec<Node>, TemplateError> {
        let mut seq = Vec::new();
        while let Some(&c) = self.chars.get(self.pos) {
            match c {
                ')' | ']' | '|' => break,
                '(' | '[' => {
                    let open = self.pos;
                    self.pos += 1;
                    let mut alts = vec![self.sequence()?];
                    while self.chars.get(self.pos) == Some(&'|') {
                        self.pos += 1;
                        alts.push(self.sequence()?);
                    }
                    let close = if c == '(' { ')' } else { ']' };
                    match self.chars.get(self.pos) {
                        Some(&x) if x == close => self.pos += 1,
                        Some(&x) => {
                            return Err(self.fail(format!(
                                "{x:?} closes the {c:?} opened at character {}; expected {close:?}",
                                open + 1
                            )));
                        }
                        None => {
                            return Err(TemplateError {
                                offset: open,
                                message: format!("{c:?} is never closed (expected {close:?})"),
                            });
                        }
                    }
                    if c == '(' && alts.iter().any(Vec::is_empty) {
                        return Err(TemplateError {
                            offset: open,
                            message: "an empty alternative in (...): write optional words in [...]"
                                .into(),
                        });
                    }
                    if c == '[' {
                        if alts.iter().all(Vec::is_empty) {
                            return Err(TemplateError {
                                offset: open,
                                message: "empty [...]".into(),
                            });
                        }
                        alts.retain(|a| !a.is_empty());
                        alts.push(Vec::new());
                    }
                    seq.push(Node::Alt(alts));
                }
                '{' => {
                    let open = self.pos;
                    let end = self.chars[open..]
                        .iter()
                        .position(|&x| x == '}')
                        .map(|i| open + i);
                    let Some(end) = end else {
                        return Err(self.fail("'{' is never closed (expected '}')".into()));
                    };
                    let name: String = self.chars[open + 1..end].iter().collect();
                    let name = name.trim();
                    if name.is_empty() || name.contains(['{', '(', '[', '|', ')', ']']) {
                        return Err(self.fail(format!(
                            "{{{name}}} is not a slot reference: write {{slot_name}}"
                        )));
                    }
                    let index = (self.slot)(name).map_err(|m| self.fail(m))?;
                    if self.seen.contains(&index) {
                        return Err(
                            self.fail(format!("slot `{name}` is referenced twice in one template"))
                        );
                    }
                    self.seen.push(index);
                    seq.push(Node::Slot(index));
                    self.pos = end + 1;
                }
                '}' => return Err(self.fail("'}' without a matching '{'".into())),
                c if c.is_whitespace() => self.pos += 1,
                _ => {
                    let start = self.pos;
                    while self
                        .chars
                        .get(self.pos)
                        .is_some_and(|&x| !x.is_whitespace() && !"()[]{}|".contains(x))
                    {
                        self.pos += 1;
                    }
                    let word: String = self.chars[start..self.pos].iter().collect();
                    // Punctuation alone ("," or "?") is no word: it is ignored in transcripts too.
                    seq.extend(tokenize(&word).into_iter().map(|t| Node::Word(t.text)));
                }
            }
        }
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(name: &str) -> Result<usize, String> {
        match name {
            "a" => Ok(0),
            "b" => Ok(1),
            _ => Err(format!("slot `{name}` is not declared")),
        }
    }

    fn w(s: &str) -> Node {
        Node::Word(s.into())
    }

    #[test]
    fn parses_words_alternatives_options_and_slots() {
        let t = parse("(Turn|switch) [the] {a} on, please!", &slots).unwrap();
        assert_eq!(
            t,
            vec![
                Node::Alt(vec![vec![w("turn")], vec![w("switch")]]),
                Node::Alt(vec![vec![w("the")], vec![]]),
                Node::Slot(0),
                w("on"),
                w("please"),
            ]
        );
        let t = parse("go [(fast|slow) {b}|now]", &slots).unwrap();
        assert_eq!(
            t[1],
            Node::Alt(vec![
                vec![
                    Node::Alt(vec![vec![w("fast")], vec![w("slow")]]),
                    Node::Slot(1)
                ],
                vec![w("now")],
                vec![],
            ])
        );
    }

    #[test]
    fn bad_templates_say_what_and_where() {
        for (template, offset, says) in [
            ("turn (left|right", 5, "never closed"),
            ("turn left)", 9, "without a matching '('"),
            ("turn [left)", 10, "closes the '['"),
            ("turn {c}", 5, "slot `c` is not declared"),
            ("turn {a} {a}", 9, "twice"),
            ("turn {}", 5, "not a slot reference"),
            ("turn {a", 5, "never closed"),
            ("turn a}", 6, "without a matching '{'"),
            ("left|right", 4, "outside"),
            ("(left|)", 0, "empty alternative"),
            ("[please]", 0, "empty sentence"),
            ("turn []", 5, "empty [...]"),
        ] {
            let e = parse(template, &slots).unwrap_err();
            assert!(e.message.contains(says), "{template}: {e:?}");
            assert_eq!(e.offset, offset, "{template}: {e:?}");
        }
    }
}
