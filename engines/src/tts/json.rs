//! A small JSON parser (RFC 8259) for Piper's voice config, which is the only JSON the
//! engines read. Values remember their byte offset so errors can point at them.
//!
//! Limits: nesting at most [`MAX_DEPTH`] deep; numbers are read as `f64` (exact for
//! integers up to 2^53). Duplicate object keys are kept; [`Value::get`] returns the first.

/// Deepest array/object nesting accepted.
pub(crate) const MAX_DEPTH: usize = 64;

/// A JSON value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Value {
    pub(crate) offset: usize,
    pub(crate) kind: Kind,
}

/// The value itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The JSON type's name, for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "boolean",
            Kind::Number(_) => "number",
            Kind::String(_) => "string",
            Kind::Array(_) => "array",
            Kind::Object(_) => "object",
        }
    }

    /// The member `key` of an object (the first, if repeated).
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        match &self.kind {
            Kind::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A syntax error: what was expected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) reason: String,
    pub(crate) offset: usize,
}

/// Parses one JSON document (surrounding whitespace allowed, a UTF-8 BOM skipped).
pub(crate) fn parse(text: &[u8]) -> Result<Value, SyntaxError> {
    let mut p = Parser { s: text, pos: 0 };
    if p.s.starts_with(b"\xef\xbb\xbf") {
        p.pos = 3;
    }
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.pos < p.s.len() {
        return Err(p.error("end of input after the top-level value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, expected: &str) -> SyntaxError {
        let found = match self.s.get(self.pos) {
            None => "end of input".to_owned(),
            Some(&b) if b.is_ascii_graphic() => format!("{:?}", char::from(b)),
            Some(&b) => format!("byte {b:#04x}"),
        };
        SyntaxError {
            reason: format!("expected {expected}, found {found}"),
            offset: self.pos,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Result<Value, SyntaxError> {
        let offset = self.pos;
        if self.s.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(Value { offset, kind })
        } else {
            Err(self.error("a JSON value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let offset = self.pos;
        match self.peek() {
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(SyntaxError {
                        reason: format!("nested more than {MAX_DEPTH} levels deep"),
                        offset,
                    });
                }
                self.pos += 1;
                let mut members = Vec::new();
                self.ws();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        if self.peek() != Some(b'"') {
                            return Err(self.error("a string key"));
                        }
                        let key = self.string()?;
                        self.ws();
                        if !self.eat(b':') {
                            return Err(self.error("':'"));
                        }
                        self.ws();
                        let v = self.value(depth + 1)?;
                        members.push((key, v));
                        self.ws();
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(b'}') {
                            break;
                        }
                        return Err(self.error("',' or '}'"));
                    }
                }
                Ok(Value {
                    offset,
                    kind: Kind::Object(members),
                })
            }
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(SyntaxError {
                        reason: format!("nested more than {MAX_DEPTH} levels deep"),
                        offset,
                    });
                }
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if !self.eat(b']') {
                    loop {
                        self.ws();
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        if self.eat(b',') {
                            continue;
                        }
                        if self.eat(b']') {
                            break;
                        }
                        return Err(self.error("',' or ']'"));
                    }
                }
                Ok(Value {
                    offset,
                    kind: Kind::Array(items),
                })
            }
            Some(b'"') => Ok(Value {
                offset,
                kind: Kind::String(self.string()?),
            }),
            Some(b't') => self.literal(b"true", Kind::Bool(true)),
            Some(b'f') => self.literal(b"false", Kind::Bool(false)),
            Some(b'n') => self.literal(b"null", Kind::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("a JSON value")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let offset = self.pos;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("a digit")),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.error("a digit after '.'"));
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.error("an exponent"));
            }
        }
        let text =
            std::str::from_utf8(self.s.get(offset..self.pos).unwrap_or_default()).unwrap_or("");
        let n: f64 = text.parse().map_err(|_| SyntaxError {
            reason: format!("invalid number {text:?}"),
            offset,
        })?;
        Ok(Value {
            offset,
            kind: Kind::Number(n),
        })
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.error("a hex digit")),
            };
            self.pos += 1;
            v = v * 16 + u32::from(d);
        }
        Ok(v)
    }

    /// A string; `pos` is at the opening quote.
    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(SyntaxError {
                    reason: "unterminated string".to_owned(),
                    offset: start,
                });
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    self.pos += 1;
                    let esc = self.peek();
                    self.pos += 1;
                    let c = match esc {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if !(self.eat(b'\\') && self.eat(b'u')) {
                                    return Err(self.error("a low surrogate escape"));
                                }
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(SyntaxError {
                                        reason: format!("invalid low surrogate \\u{lo:04x}"),
                                        offset: self.pos - 6,
                                    });
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or_else(|| SyntaxError {
                                reason: format!("invalid code point \\u{code:04x}"),
                                offset: self.pos - 6,
                            })?
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("an escape character"));
                        }
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.error("no control characters in a string")),
                _ => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|e| SyntaxError {
            reason: "string is not valid UTF-8".to_owned(),
            offset: start + 1 + e.utf8_error().valid_up_to(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        let text = br#" {"a": [1, -2.5e1, true, null], "b": "x\u00e7\ud83d\ude00\n", "c": {}} "#;
        let v = parse(text).unwrap();
        assert_eq!(v.get("a").unwrap().type_name(), "array");
        let Kind::Array(a) = &v.get("a").unwrap().kind else {
            panic!("not an array")
        };
        assert_eq!(a[1].kind, Kind::Number(-25.0));
        assert_eq!(v.get("b").unwrap().kind, Kind::String("xç😀\n".to_owned()));
        let braces = text.windows(2).position(|w| w == b"{}").unwrap();
        assert_eq!(v.get("c").unwrap().offset, braces);
        assert_eq!(v.get("missing"), None);
    }

    #[test]
    fn rejects_invalid_json() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\" 1}",
            b"[1,]",
            b"01",
            b"1.",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"a\nb\"",
            b"[1] 2",
            b"tru",
            b"\"\xff\"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(
            parse(deep.as_bytes())
                .unwrap_err()
                .reason
                .contains("nested")
        );
    }
}
