//! The JSON the engines read (Piper's voice config, CTranslate2's `config.json` and
//! `vocabulary.json`, Hugging Face's `config.json` and `tokenizer.json`, the safetensors
//! header), parsed by `serde_json` into [`JsonValue`].
//!
//! [`JsonValue`] keeps an object's members in file order, repeated keys included;
//! [`JsonValue::get`] returns the last occurrence, as `serde_json` and Python's `json` do.
//! Nesting is limited to [`MAX_DEPTH`] levels. Numbers are `f64` (integers up to 2⁵³ are
//! exact, which covers token ids and dimensions). A UTF-8 byte order mark is skipped.
//! Syntax errors ([`JsonError`]) carry the byte offset and say what was expected.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Maximum nesting of arrays and objects.
pub const MAX_DEPTH: usize = 64;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<JsonValue>),
    /// An object, members in file order (a repeated key keeps every occurrence;
    /// [`JsonValue::get`] returns the last, like most parsers).
    Object(Vec<(String, JsonValue)>),
}

impl JsonValue {
    /// The member `key` of an object (the last one if repeated).
    pub fn get(&self, key: &str) -> Option<&JsonValue> {
        match self {
            JsonValue::Object(members) => {
                members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The elements of an array.
    pub fn as_array(&self) -> Option<&[JsonValue]> {
        match self {
            JsonValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            JsonValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a non-negative integer that fits in `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        match *self {
            JsonValue::Number(n) if n >= 0.0 && n <= f64::from(u32::MAX) && n.fract() == 0.0 => {
                Some(n as u32)
            }
            _ => None,
        }
    }

    /// A short description of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            JsonValue::Null => "null",
            JsonValue::Bool(_) => "boolean",
            JsonValue::Number(_) => "number",
            JsonValue::String(_) => "string",
            JsonValue::Array(_) => "array",
            JsonValue::Object(_) => "object",
        }
    }
}

/// A JSON syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for JsonError {}

const BOM: &[u8] = b"\xef\xbb\xbf";

/// Parses a complete JSON document (surrounding whitespace allowed, nothing else).
pub fn parse(text: &str) -> Result<JsonValue, JsonError> {
    parse_slice(text.as_bytes())
}

/// [`parse`] for bytes; strings must be valid UTF-8.
pub fn parse_slice(bytes: &[u8]) -> Result<JsonValue, JsonError> {
    let skip = if bytes.starts_with(BOM) { BOM.len() } else { 0 };
    let body = &bytes[skip..];
    let mut de = serde_json::Deserializer::from_slice(body);
    Depth(0)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            let mut e = from_serde(body, &e);
            e.offset += skip;
            e
        })
}

/// Turns `serde_json`'s error on `text` (line and column, its own wording) into a byte offset
/// and an "expected …, found …" message.
pub(crate) fn from_serde(text: &[u8], e: &serde_json::Error) -> JsonError {
    // serde_json's column counts the bytes of the line up to and including the one it
    // stopped at, so the offending byte is the last one counted; at the end of the input
    // (an EOF error) it is the end itself.
    let line_start = text
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .nth(e.line().saturating_sub(2))
        .map_or(0, |(i, _)| if e.line() > 1 { i + 1 } else { 0 });
    let end = (line_start + e.column()).min(text.len());
    let mut offset = if e.classify() == serde_json::error::Category::Eof {
        end
    } else {
        end.saturating_sub(1)
    };

    let full = e.to_string();
    let code = full
        .rfind(" at line ")
        .map_or(full.as_str(), |i| &full[..i]);
    let last = text[..offset]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    let expected = match code {
        "EOF while parsing an object" if last == Some(b'{') => Some("a string key or '}'"),
        "EOF while parsing an object" | "expected `,` or `}`" => Some("',' or '}'"),
        "EOF while parsing a list" | "expected `,` or `]`" => Some("',' or ']'"),
        "EOF while parsing a string" => Some("'\"'"),
        "expected `:`" => Some("':'"),
        "EOF while parsing a value" | "expected value" | "expected ident" => {
            // A cut or misspelt `true`, `false` or `null` is reported where the word starts.
            let word = text[..offset]
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_lowercase())
                .count();
            let tail = &text[offset - word..offset];
            if word > 0
                && [&b"true"[..], b"false", b"null"]
                    .iter()
                    .any(|w| w.starts_with(tail))
            {
                offset -= word;
            }
            Some("a value")
        }
        _ => None,
    };
    let message = match expected {
        Some(expected) => format!("expected {expected}, found {}", describe(text.get(offset))),
        None => code.to_owned(),
    };
    JsonError { offset, message }
}

fn describe(b: Option<&u8>) -> String {
    match b {
        None => "end of input".to_owned(),
        Some(&b) if b.is_ascii_graphic() => format!("'{}'", char::from(b)),
        Some(b) => format!("byte 0x{b:02x}"),
    }
}

/// Builds [`JsonValue`]s from `serde_json`'s events, counting the nesting depth.
#[derive(Clone, Copy)]
struct Depth(usize);

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = JsonValue;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<JsonValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl Depth {
    fn deeper<E: de::Error>(self) -> Result<Depth, E> {
        if self.0 >= MAX_DEPTH {
            Err(E::custom(format!(
                "nested more than {MAX_DEPTH} levels deep"
            )))
        } else {
            Ok(Depth(self.0 + 1))
        }
    }
}

impl<'de> Visitor<'de> for Depth {
    type Value = JsonValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<JsonValue, E> {
        Ok(JsonValue::Bool(v))
    }

    #[allow(clippy::cast_precision_loss)] // beyond 2^53 JSON numbers are approximate anyway
    fn visit_i64<E>(self, v: i64) -> Result<JsonValue, E> {
        Ok(JsonValue::Number(v as f64))
    }

    #[allow(clippy::cast_precision_loss)] // as above
    fn visit_u64<E>(self, v: u64) -> Result<JsonValue, E> {
        Ok(JsonValue::Number(v as f64))
    }

    fn visit_f64<E>(self, v: f64) -> Result<JsonValue, E> {
        Ok(JsonValue::Number(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<JsonValue, E> {
        Ok(JsonValue::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<JsonValue, E> {
        Ok(JsonValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
        let inner = self.deeper()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            items.push(v);
        }
        Ok(JsonValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonValue, A::Error> {
        let inner = self.deeper()?;
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(inner)?;
            members.push((key, v));
        }
        Ok(JsonValue::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Moved with Piper's parser (tts/json.rs), which this module replaces; `parses_values`
    // lost its check of a value's byte offset, which serde_json does not report.
    #[test]
    fn parses_values() {
        let text = br#" {"a": [1, -2.5e1, true, null], "b": "x\u00e7\ud83d\ude00\n", "c": {}} "#;
        let v = parse_slice(text).unwrap();
        assert_eq!(v.get("a").unwrap().type_name(), "array");
        let JsonValue::Array(a) = v.get("a").unwrap() else {
            panic!("not an array")
        };
        assert_eq!(a[1], JsonValue::Number(-25.0));
        assert_eq!(v.get("b").unwrap(), &JsonValue::String("xç😀\n".to_owned()));
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
            assert!(
                parse_slice(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(
            parse_slice(deep.as_bytes())
                .unwrap_err()
                .message
                .contains("nested")
        );
    }

    #[test]
    fn byte_order_mark_and_offsets() {
        assert_eq!(
            parse_slice(b"\xef\xbb\xbf[1]").unwrap(),
            JsonValue::Array(vec![JsonValue::Number(1.0)])
        );
        let e = parse_slice(b"\xef\xbb\xbf{\n  \"a\": x}").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (12, "expected a value, found 'x'")
        );
    }
}
