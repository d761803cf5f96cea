//! A minimal, zero-copy protobuf wire-format decoder.
//!
//! Protobuf messages are sequences of fields. Each field starts with a varint key,
//! `field_number << 3 | wire_type`, followed by its value:
//!
//! | wire type | name    | value                                                    |
//! |-----------|---------|----------------------------------------------------------|
//! | 0         | VARINT  | base-128 varint, 1 to 10 bytes                           |
//! | 1         | I64     | 8 bytes, little-endian (`fixed64`, `double`)             |
//! | 2         | LEN     | varint length, then that many bytes (strings, bytes, nested messages, packed repeated scalars) |
//! | 3, 4      | SGROUP, EGROUP | deprecated groups: rejected (ONNX never uses them) |
//! | 5         | I32     | 4 bytes, little-endian (`fixed32`, `float`)              |
//!
//! [`Decoder`] walks one message's fields. It never panics and never allocates: every
//! length is checked against the bytes of the *enclosing* message, a varint may not exceed
//! 10 bytes or 64 bits, and nested messages are opened through [`Decoder::nested`], which
//! enforces [`MAX_DEPTH`]. Unknown fields are the caller's to skip: it simply ignores the
//! [`Field`] (the decoder has already stepped over its value). Errors carry the absolute byte
//! offset of the offending field.

use crate::tts::error::{TtsError, TtsErrorKind, TtsFile};

/// Deepest message nesting [`Decoder::nested`] accepts. The ONNX schema this crate reads
/// nests at most 7 deep (model, graph, value info, type, tensor type, shape, dimension)
/// unless graphs nest inside attributes, which real models do only a few levels deep.
pub const MAX_DEPTH: usize = 32;

type Result<T> = std::result::Result<T, Box<TtsError>>;

fn err(kind: TtsErrorKind, offset: u64) -> Box<TtsError> {
    TtsError::new(TtsFile::Onnx, kind).at(offset)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The value of one field, as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    I64(u64),
    /// Wire type 2: the payload, borrowed from the input.
    Len(&'a [u8]),
    /// Wire type 5.
    I32(u32),
}

impl WireValue<'_> {
    /// The wire type number.
    pub fn wire_type(&self) -> u8 {
        match self {
            WireValue::Varint(_) => 0,
            WireValue::I64(_) => 1,
            WireValue::Len(_) => 2,
            WireValue::I32(_) => 5,
        }
    }
}

/// One decoded field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field number (1 ..= 2^29 - 1).
    pub number: u32,
    /// The value.
    pub value: WireValue<'a>,
    /// Absolute offset of the field's key.
    pub offset: u64,
    /// Absolute offset of the value (for `Len`, of the payload after the length prefix).
    pub value_offset: u64,
}

impl<'a> Field<'a> {
    fn wrong(&self, expected: &'static str) -> Box<TtsError> {
        err(
            TtsErrorKind::WrongWireType {
                field: self.number,
                expected,
                found: self.value.wire_type(),
            },
            self.offset,
        )
    }

    /// A varint field (`int32`, `int64`, `uint64`, `bool`, enums).
    pub fn varint(&self) -> Result<u64> {
        match self.value {
            WireValue::Varint(v) => Ok(v),
            _ => Err(self.wrong("VARINT")),
        }
    }

    /// An `int64` field: a varint reinterpreted as two's complement.
    pub fn int64(&self) -> Result<i64> {
        #[allow(clippy::cast_possible_wrap)] // protobuf int64 is the two's-complement bit pattern
        self.varint().map(|v| v as i64)
    }

    /// An `int32` field: negative values are sign-extended to ten bytes on the wire; the low
    /// 32 bits are the value.
    pub fn int32(&self) -> Result<i32> {
        #[allow(clippy::cast_possible_truncation)] // protobuf int32 semantics: keep the low 32 bits
        self.varint().map(|v| v as u32 as i32)
    }

    /// A `float` field (wire type I32).
    pub fn float(&self) -> Result<f32> {
        match self.value {
            WireValue::I32(v) => Ok(f32::from_bits(v)),
            _ => Err(self.wrong("I32")),
        }
    }

    /// A length-delimited field's payload.
    pub fn bytes(&self) -> Result<&'a [u8]> {
        match self.value {
            WireValue::Len(b) => Ok(b),
            _ => Err(self.wrong("LEN")),
        }
    }

    /// A `string` field, which must be UTF-8.
    pub fn string(&self, what: &'static str) -> Result<&'a str> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|e| {
            err(
                TtsErrorKind::InvalidUtf8 {
                    what,
                    valid_up_to: e.valid_up_to(),
                },
                self.value_offset,
            )
        })
    }

    /// Appends the values of a `repeated int64` field, packed or not.
    pub fn push_int64s(&self, out: &mut Vec<i64>) -> Result<()> {
        match self.value {
            WireValue::Len(b) => {
                let mut d = Decoder::new(b, self.value_offset, 0);
                while !d.is_empty() {
                    #[allow(clippy::cast_possible_wrap)]
                    out.push(d.varint()? as i64);
                }
                Ok(())
            }
            _ => {
                out.push(self.int64()?);
                Ok(())
            }
        }
    }

    /// Appends the values of a `repeated int32` field, packed or not.
    pub fn push_int32s(&self, out: &mut Vec<i32>) -> Result<()> {
        match self.value {
            WireValue::Len(b) => {
                let mut d = Decoder::new(b, self.value_offset, 0);
                while !d.is_empty() {
                    #[allow(clippy::cast_possible_truncation)]
                    out.push(d.varint()? as u32 as i32);
                }
                Ok(())
            }
            _ => {
                out.push(self.int32()?);
                Ok(())
            }
        }
    }

    /// Appends the values of a `repeated float` field, packed or not.
    pub fn push_floats(&self, what: &'static str, out: &mut Vec<f32>) -> Result<()> {
        match self.value {
            WireValue::Len(b) => {
                if b.len() % 4 != 0 {
                    return Err(err(
                        TtsErrorKind::BadPackedLength {
                            what,
                            len: to_u64(b.len()),
                            elem_size: 4,
                        },
                        self.offset,
                    ));
                }
                out.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                Ok(())
            }
            _ => {
                out.push(self.float()?);
                Ok(())
            }
        }
    }
}

/// Walks the fields of one message.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute offset of `buf[0]` in the file.
    base: u64,
    depth: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder over the message `buf`, which starts at absolute offset `base` and is nested
    /// `depth` levels deep (0 for the top-level message).
    pub fn new(buf: &'a [u8], base: u64, depth: usize) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            depth,
        }
    }

    /// A decoder over the nested message in `field` (which must be length-delimited), one
    /// level deeper than this one. Fails beyond [`MAX_DEPTH`].
    pub fn nested(&self, field: &Field<'a>) -> Result<Decoder<'a>> {
        let payload = field.bytes()?;
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(err(
                TtsErrorKind::NestingTooDeep { max: MAX_DEPTH },
                field.offset,
            ));
        }
        Ok(Decoder::new(payload, field.value_offset, depth))
    }

    /// How deeply this message is nested.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Whether all fields have been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Absolute offset of the next byte to read.
    pub fn offset(&self) -> u64 {
        self.base.saturating_add(to_u64(self.pos))
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn varint(&mut self) -> Result<u64> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(err(
                    TtsErrorKind::Truncated {
                        what: "varint",
                        needed: to_u64(i + 1),
                        available: to_u64(i),
                    },
                    start,
                ));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only contribute the 64th bit.
            if i == 9 && bits > 1 {
                return Err(err(TtsErrorKind::BadVarint, start));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(err(TtsErrorKind::BadVarint, start))
    }

    fn take(&mut self, n: usize, what: &'static str, field_offset: u64) -> Result<&'a [u8]> {
        let available = self.remaining();
        if n > available {
            return Err(err(
                TtsErrorKind::Truncated {
                    what,
                    needed: to_u64(n),
                    available: to_u64(available),
                },
                field_offset,
            ));
        }
        let out = self.buf.get(self.pos..self.pos + n).unwrap_or_default();
        self.pos += n;
        Ok(out)
    }

    /// Reads the next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<Field<'a>>> {
        if self.is_empty() {
            return Ok(None);
        }
        let offset = self.offset();
        let key = self.varint()?;
        let number = key >> 3;
        #[allow(clippy::cast_possible_truncation)] // masked to 3 bits
        let wire_type = (key & 7) as u8;
        if number == 0 || number > (1 << 29) - 1 {
            return Err(err(TtsErrorKind::BadFieldNumber { number }, offset));
        }
        #[allow(clippy::cast_possible_truncation)] // checked above
        let number = number as u32;
        let value_offset;
        let value = match wire_type {
            0 => {
                value_offset = self.offset();
                WireValue::Varint(self.varint()?)
            }
            1 => {
                value_offset = self.offset();
                let b = self.take(8, "fixed64 value", offset)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                WireValue::I64(u64::from_le_bytes(a))
            }
            2 => {
                let len = self.varint()?;
                value_offset = self.offset();
                let available = self.remaining();
                let n = usize::try_from(len).ok().filter(|&n| n <= available);
                let Some(n) = n else {
                    return Err(err(
                        TtsErrorKind::LengthPastEnd {
                            field: number,
                            len,
                            available: to_u64(available),
                        },
                        offset,
                    ));
                };
                WireValue::Len(self.take(n, "length-delimited value", offset)?)
            }
            5 => {
                value_offset = self.offset();
                let b = self.take(4, "fixed32 value", offset)?;
                WireValue::I32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => {
                return Err(err(
                    TtsErrorKind::BadWireType {
                        wire_type,
                        field: number,
                    },
                    offset,
                ));
            }
        };
        Ok(Some(Field {
            number,
            value,
            offset,
            value_offset,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(buf: &[u8]) -> Result<Vec<(u32, WireValue<'_>)>> {
        let mut d = Decoder::new(buf, 0, 0);
        let mut out = Vec::new();
        while let Some(f) = d.next_field()? {
            out.push((f.number, f.value));
        }
        Ok(out)
    }

    #[test]
    fn decodes_each_wire_type() {
        // field 1 varint 150; field 2 "hi"; field 3 fixed32 1.0; field 4 fixed64 7
        let mut buf = vec![0x08, 0x96, 0x01, 0x12, 2, b'h', b'i', 0x1d];
        buf.extend_from_slice(&1.0f32.to_le_bytes());
        buf.push(0x21);
        buf.extend_from_slice(&7u64.to_le_bytes());
        let f = fields(&buf).unwrap();
        assert_eq!(
            f,
            vec![
                (1, WireValue::Varint(150)),
                (2, WireValue::Len(b"hi")),
                (3, WireValue::I32(1.0f32.to_bits())),
                (4, WireValue::I64(7)),
            ]
        );
    }

    #[test]
    fn negative_int64_is_ten_bytes() {
        let buf = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let mut d = Decoder::new(&buf, 0, 0);
        let f = d.next_field().unwrap().unwrap();
        assert_eq!(f.int64().unwrap(), -1);
        assert_eq!(f.int32().unwrap(), -1);
    }

    #[test]
    fn rejects_malformed_input() {
        let kinds = |buf: &[u8]| fields(buf).unwrap_err().kind;
        assert!(matches!(kinds(&[0x08]), TtsErrorKind::Truncated { .. }));
        assert!(matches!(
            kinds(&[0x12, 5, 1]),
            TtsErrorKind::LengthPastEnd { len: 5, .. }
        ));
        assert!(matches!(
            kinds(&[0x0b]),
            TtsErrorKind::BadWireType { wire_type: 3, .. }
        ));
        assert!(matches!(
            kinds(&[0x0f]),
            TtsErrorKind::BadWireType { wire_type: 7, .. }
        ));
        assert!(matches!(
            kinds(&[0x00]),
            TtsErrorKind::BadFieldNumber { number: 0 }
        ));
        assert!(matches!(
            kinds(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02
            ]),
            TtsErrorKind::BadVarint
        ));
        assert!(matches!(
            kinds(&[
                0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00
            ]),
            TtsErrorKind::BadVarint
        ));
        assert!(matches!(
            kinds(&[0x1d, 0, 0]),
            TtsErrorKind::Truncated {
                needed: 4,
                available: 2,
                ..
            }
        ));
    }

    #[test]
    fn nesting_is_limited() {
        let f = Field {
            number: 1,
            value: WireValue::Len(&[]),
            offset: 0,
            value_offset: 1,
        };
        let mut d = Decoder::new(&[], 0, 0);
        for _ in 0..MAX_DEPTH {
            d = d.nested(&f).unwrap();
        }
        assert!(matches!(
            d.nested(&f).unwrap_err().kind,
            TtsErrorKind::NestingTooDeep { .. }
        ));
    }
}
