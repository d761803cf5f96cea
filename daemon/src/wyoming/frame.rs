//! The Wyoming event framing, as a pure codec with limits: no I/O, so it is unit-tested here
//! and every byte sequence is safe to feed it.
//!
//! An event is a header line of JSON ending in `\n` (`type`, optional `data`, `data_length`,
//! `payload_length`, `version`), then `data_length` bytes of JSON (an object merged over the
//! header's inline `data`), then `payload_length` bytes of payload (audio).
//!
//! [`Decoder::decode`] takes bytes as they arrive and returns whole events; a header line
//! longer than [`Limits::header`], or a length above its limit, is refused before anything is
//! waited for, so a connection never holds more than the three limits' sum.

use serde_json::{Map, Value};

/// The version of the `wyoming` Python package whose events this server follows; written
/// in every header, as that package does.
pub const VERSION: &str = "1.10.2";

/// One Wyoming event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub kind: String,
    pub data: Map<String, Value>,
    pub payload: Vec<u8>,
}

impl Event {
    pub fn new(kind: &str) -> Event {
        Event {
            kind: kind.to_string(),
            ..Default::default()
        }
    }

    /// The event with `data` (a JSON object; anything else leaves the data empty).
    pub fn with(kind: &str, data: Value) -> Event {
        Event {
            kind: kind.to_string(),
            data: match data {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            payload: Vec::new(),
        }
    }

    /// The event as bytes on the wire: the header line, the data, the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut header = Map::new();
        header.insert("type".into(), Value::String(self.kind.clone()));
        header.insert("version".into(), Value::String(VERSION.into()));
        let data = if self.data.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(&self.data).unwrap_or_default()
        };
        if !data.is_empty() {
            header.insert("data_length".into(), data.len().into());
        }
        if !self.payload.is_empty() {
            header.insert("payload_length".into(), self.payload.len().into());
        }
        let mut out = serde_json::to_vec(&header).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&data);
        out.extend_from_slice(&self.payload);
        out
    }

    /// A string member of the data.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

/// The largest header line, data section and payload a connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header: usize,
    pub data: usize,
    pub payload: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header: 64 * 1024,
            data: 1024 * 1024,
            payload: 4 * 1024 * 1024,
        }
    }
}

/// Why the bytes are not an event. After any of these the stream cannot be resynchronized:
/// the server answers with an `error` and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the header line is longer than {limit} bytes without a newline")]
    HeaderTooLong { limit: usize },
    #[error("the header line is not JSON: {0}")]
    HeaderNotJson(String),
    #[error("the header line is not a JSON object")]
    HeaderNotObject,
    #[error("the header has no \"type\" string")]
    NoType,
    #[error("header field {field:?} is not a non-negative integer")]
    BadLength { field: &'static str },
    #[error("header field {field:?} is {length} bytes, above the limit of {limit}")]
    TooLong {
        field: &'static str,
        length: u64,
        limit: usize,
    },
    #[error("header field \"data\" is not a JSON object")]
    InlineDataNotObject,
    #[error("the data section ({length} bytes) is not a JSON object: {reason}")]
    DataNotObject { length: usize, reason: String },
    #[error(
        "the connection ended inside an event: {have} of the {want} bytes its header announced"
    )]
    Truncated { have: usize, want: usize },
}

impl FrameError {
    /// The `code` of the `error` event that reports it.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::HeaderTooLong { .. } | FrameError::TooLong { .. } => "too-large",
            FrameError::Truncated { .. } => "truncated",
            _ => "bad-frame",
        }
    }
}

/// A header whose data and payload have not all arrived yet.
#[derive(Debug)]
struct Pending {
    kind: String,
    data: Map<String, Value>,
    /// Bytes of the header line, newline included.
    header_len: usize,
    data_len: usize,
    payload_len: usize,
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    pending: Option<Pending>,
    /// Bytes of the buffer already searched for the newline.
    scanned: usize,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            pending: None,
            scanned: 0,
        }
    }

    /// Takes the next whole event off the front of `buf`; `Ok(None)` when more bytes are
    /// needed. Never lets `buf` need more than the limits' sum.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Event>, FrameError> {
        if self.pending.is_none() {
            let Some(newline) = buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = buf.len();
                if buf.len() > self.limits.header {
                    return Err(FrameError::HeaderTooLong {
                        limit: self.limits.header,
                    });
                }
                return Ok(None);
            };
            let end = self.scanned + newline;
            self.scanned = 0;
            if end > self.limits.header {
                return Err(FrameError::HeaderTooLong {
                    limit: self.limits.header,
                });
            }
            self.pending = Some(self.header(&buf[..end], end + 1)?);
        }
        let p = self.pending.as_ref().expect("set above");
        let total = p.header_len + p.data_len + p.payload_len;
        if buf.len() < total {
            return Ok(None);
        }
        let p = self.pending.take().expect("set above");
        let mut data = p.data;
        if p.data_len > 0 {
            let bytes = &buf[p.header_len..p.header_len + p.data_len];
            match serde_json::from_slice::<Value>(bytes) {
                Ok(Value::Object(m)) => data.extend(m),
                Ok(_) => {
                    return Err(FrameError::DataNotObject {
                        length: p.data_len,
                        reason: "it is another JSON value".into(),
                    });
                }
                Err(e) => {
                    return Err(FrameError::DataNotObject {
                        length: p.data_len,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let payload = buf[p.header_len + p.data_len..total].to_vec();
        buf.drain(..total);
        Ok(Some(Event {
            kind: p.kind,
            data,
            payload,
        }))
    }

    /// What is wrong with the bytes left when the connection ended (`None`: nothing).
    pub fn at_end(&self, buf: &[u8]) -> Option<FrameError> {
        match &self.pending {
            Some(p) => Some(FrameError::Truncated {
                have: buf.len().saturating_sub(p.header_len),
                want: p.data_len + p.payload_len,
            }),
            None if buf.iter().any(|b| !b.is_ascii_whitespace()) => {
                Some(FrameError::HeaderNotJson(format!(
                    "the connection ended inside a header line ({} bytes without a newline)",
                    buf.len()
                )))
            }
            None => None,
        }
    }

    fn header(&self, line: &[u8], header_len: usize) -> Result<Pending, FrameError> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| FrameError::HeaderNotJson(e.to_string()))?;
        let Value::Object(mut header) = value else {
            return Err(FrameError::HeaderNotObject);
        };
        let Some(Value::String(kind)) = header.remove("type") else {
            return Err(FrameError::NoType);
        };
        let length = |header: &Map<String, Value>, field: &'static str, limit: usize| {
            let n = match header.get(field) {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64().ok_or(FrameError::BadLength { field })?,
            };
            if n > limit as u64 {
                return Err(FrameError::TooLong {
                    field,
                    length: n,
                    limit,
                });
            }
            Ok(n as usize)
        };
        let data_len = length(&header, "data_length", self.limits.data)?;
        let payload_len = length(&header, "payload_length", self.limits.payload)?;
        let data = match header.remove("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(FrameError::InlineDataNotObject),
        };
        Ok(Pending {
            kind,
            data,
            header_len,
            data_len,
            payload_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small() -> Decoder {
        Decoder::new(Limits {
            header: 128,
            data: 64,
            payload: 32,
        })
    }

    #[test]
    fn an_encoded_event_decodes_to_itself_byte_by_byte() {
        let mut event = Event::with("audio-chunk", json!({"rate": 16000, "width": 2}));
        event.payload = vec![1, 2, 3, 4];
        let bytes = event.encode();
        let mut d = small();
        let mut buf = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.push(*b);
            let got = d.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(got, None, "at byte {i}");
            } else {
                assert_eq!(got, Some(event.clone()));
            }
        }
        assert!(buf.is_empty());
        assert_eq!(d.at_end(&buf), None);
    }

    #[test]
    fn inline_data_and_data_section_merge_and_two_events_split() {
        let mut buf = br#"{"type":"ping","data":{"text":"a","x":1},"data_length":12}
{"text":"b"}{"type":"describe"}
"#
        .to_vec();
        let mut d = small();
        let e = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(e.kind, "ping");
        assert_eq!(e.str("text"), Some("b"));
        assert_eq!(e.data["x"], 1);
        let e = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(e.kind, "describe");
        assert!(e.data.is_empty() && e.payload.is_empty());
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn bad_headers_and_lengths_are_refused_before_waiting() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json\n", "bad-frame"),
            (b"[1,2]\n", "bad-frame"),
            (b"{\"data\":{}}\n", "bad-frame"),
            (b"{\"type\":\"x\",\"data_length\":-1}\n", "bad-frame"),
            (b"{\"type\":\"x\",\"data_length\":\"5\"}\n", "bad-frame"),
            (b"{\"type\":\"x\",\"data_length\":65}\n", "too-large"),
            (b"{\"type\":\"x\",\"payload_length\":33}\n", "too-large"),
            (
                b"{\"type\":\"x\",\"payload_length\":99999999999999999999}\n",
                "bad-frame",
            ),
            (b"{\"type\":\"x\",\"data\":[1]}\n", "bad-frame"),
            (b"{\"type\":\"x\",\"data_length\":3}\n[1]", "bad-frame"),
            (b"{\"type\":\"x\",\"data_length\":3}\n{{{", "bad-frame"),
        ];
        for (bytes, code) in cases {
            let mut buf = bytes.to_vec();
            let e = small().decode(&mut buf).unwrap_err();
            assert_eq!(e.code(), *code, "{:?}: {e}", String::from_utf8_lossy(bytes));
        }
        // A line that never ends is refused once it passes the limit, not at the newline.
        let mut buf = vec![b'{'; 129];
        assert_eq!(
            small().decode(&mut buf).unwrap_err(),
            FrameError::HeaderTooLong { limit: 128 }
        );
    }

    #[test]
    fn the_end_of_the_stream_inside_an_event_is_truncated() {
        let mut buf = b"{\"type\":\"x\",\"payload_length\":10}\nabc".to_vec();
        let mut d = small();
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(
            d.at_end(&buf),
            Some(FrameError::Truncated { have: 3, want: 10 })
        );
        let mut d = small();
        let mut buf = b"{\"type\":".to_vec();
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(d.at_end(&buf).is_some());
        assert_eq!(small().at_end(b"\n"), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let n = rng.usize(0..200);
            let mut buf: Vec<u8> = (0..n)
                .map(|_| {
                    *rng.choice(b"{}\":,\n0123456789typedata_lengthpayload_x ".iter())
                        .unwrap()
                })
                .collect();
            let mut d = small();
            while let Ok(Some(_)) = d.decode(&mut buf) {}
            let _ = d.at_end(&buf);
        }
    }
}
