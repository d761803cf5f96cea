//! Decoding of GGUF metadata values.
//!
//! The parser validates every value once and records where it lives ([`Node`]); values are
//! decoded again on access, borrowing strings and array contents from the file's bytes.

use std::fmt;
use std::ops::Range;

use super::types::ValueType;
use crate::error::{GgufError, GgufErrorKind};

/// How deeply arrays may nest (an array of arrays of arrays is depth 3).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// A little-endian reader over a byte slice. Every read is bounds-checked and reports the
/// absolute offset (position in `buf`) on failure.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn offset(&self) -> u64 {
        to_u64(self.pos)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<&'a [u8], Box<GgufError>> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| Some((end, self.buf.get(self.pos..end)?))) {
            Some((end, bytes)) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(GgufError::new(GgufErrorKind::Truncated {
                what,
                needed: to_u64(n),
                available: to_u64(self.remaining()),
            })
            .at(self.offset())),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Box<GgufError>> {
        let at = self.offset();
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| {
            GgufError::new(GgufErrorKind::Truncated {
                what,
                needed: to_u64(N),
                available: to_u64(bytes.len()),
            })
            .at(at)
        })
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, Box<GgufError>> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Box<GgufError>> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, Box<GgufError>> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a GGUF string (u64 length + bytes) and returns the byte range of its contents.
    pub(crate) fn string_range(
        &mut self,
        what: &'static str,
    ) -> Result<Range<usize>, Box<GgufError>> {
        let at = self.offset();
        let len = self.u64(what)?;
        let available = self.remaining();
        match usize::try_from(len) {
            Ok(n) if n <= available => {
                let start = self.pos;
                self.take(n, what)?;
                Ok(start..self.pos)
            }
            _ => Err(GgufError::new(GgufErrorKind::StringPastEnd {
                len,
                available: to_u64(available),
            })
            .at(at)),
        }
    }

    /// Reads a GGUF string and returns its bytes.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<&'a [u8], Box<GgufError>> {
        let range = self.string_range(what)?;
        Ok(self.buf.get(range).unwrap_or_default())
    }

    /// Reads a `u64` element count and checks that `count` items of at least `min_size`
    /// bytes each could fit in what remains.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        min_size: usize,
        reserved: usize,
    ) -> Result<usize, Box<GgufError>> {
        let at = self.offset();
        let count = self.u64(what)?;
        self.check_count(what, count, min_size, reserved)
            .map_err(|e| e.at(at))
    }

    /// Checks that `count` items of at least `min_size` bytes fit in the remaining bytes
    /// minus `reserved`.
    pub(crate) fn check_count(
        &self,
        what: &'static str,
        count: u64,
        min_size: usize,
        reserved: usize,
    ) -> Result<usize, Box<GgufError>> {
        let available = self.remaining().saturating_sub(reserved);
        let min_bytes = count.saturating_mul(to_u64(min_size));
        match usize::try_from(count) {
            Ok(n) if min_bytes <= to_u64(available) => Ok(n),
            _ => Err(GgufError::new(GgufErrorKind::CountTooLarge {
                what,
                count,
                min_bytes,
                available: to_u64(available),
            })),
        }
    }
}

/// `usize` to `u64`; lossless on every platform Rust supports (usize is at most 64 bits).
pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A validated metadata value: scalars inline, strings and arrays as byte ranges into the
/// buffer they were read from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(Range<usize>),
    Array {
        elem: ValueType,
        len: usize,
        data: Range<usize>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Node {
    /// Reads and validates one value of type `ty`, recursing into arrays.
    pub(crate) fn read(
        c: &mut Cursor<'_>,
        ty: ValueType,
        depth: usize,
    ) -> Result<Node, Box<GgufError>> {
        Ok(match ty {
            ValueType::U8 => Node::U8(c.u8("u8 value")?),
            ValueType::I8 => Node::I8(i8::from_le_bytes(c.array("i8 value")?)),
            ValueType::U16 => Node::U16(u16::from_le_bytes(c.array("u16 value")?)),
            ValueType::I16 => Node::I16(i16::from_le_bytes(c.array("i16 value")?)),
            ValueType::U32 => Node::U32(c.u32("u32 value")?),
            ValueType::I32 => Node::I32(i32::from_le_bytes(c.array("i32 value")?)),
            ValueType::F32 => Node::F32(f32::from_le_bytes(c.array("f32 value")?)),
            ValueType::U64 => Node::U64(c.u64("u64 value")?),
            ValueType::I64 => Node::I64(i64::from_le_bytes(c.array("i64 value")?)),
            ValueType::F64 => Node::F64(f64::from_le_bytes(c.array("f64 value")?)),
            ValueType::Bool => {
                let at = c.offset();
                Node::Bool(read_bool(c.u8("bool value")?).map_err(|e| e.at(at))?)
            }
            ValueType::String => Node::Str(c.string_range("string value")?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::new(GgufErrorKind::NestingTooDeep {
                        max: MAX_ARRAY_DEPTH,
                    })
                    .at(c.offset()));
                }
                let at = c.offset();
                let elem = ValueType::from_id(c.u32("array element type")?)
                    .map_err(|kind| GgufError::new(kind).at(at))?;
                let len = c.count("array length", elem.min_size(), 0)?;
                let start = c.pos();
                match elem.fixed_size() {
                    Some(size) => {
                        // `count` checked that len * min_size (== size) fits in the buffer.
                        let bytes = c.take(len.saturating_mul(size), "array elements")?;
                        if elem == ValueType::Bool {
                            if let Some(i) = bytes.iter().position(|&b| b > 1) {
                                let byte = bytes.get(i).copied().unwrap_or_default();
                                let at = to_u64(start).saturating_add(to_u64(i));
                                return Err(
                                    GgufError::new(GgufErrorKind::InvalidBool { byte }).at(at)
                                );
                            }
                        }
                    }
                    None => {
                        for _ in 0..len {
                            Node::read(c, elem, depth.saturating_add(1))?;
                        }
                    }
                }
                Node::Array {
                    elem,
                    len,
                    data: start..c.pos(),
                }
            }
        })
    }

    /// The value, borrowing from `buf` (the buffer this node was read from).
    pub(crate) fn value<'a>(&self, buf: &'a [u8]) -> Value<'a> {
        match self {
            Node::U8(v) => Value::U8(*v),
            Node::I8(v) => Value::I8(*v),
            Node::U16(v) => Value::U16(*v),
            Node::I16(v) => Value::I16(*v),
            Node::U32(v) => Value::U32(*v),
            Node::I32(v) => Value::I32(*v),
            Node::F32(v) => Value::F32(*v),
            Node::Bool(v) => Value::Bool(*v),
            Node::U64(v) => Value::U64(*v),
            Node::I64(v) => Value::I64(*v),
            Node::F64(v) => Value::F64(*v),
            Node::Str(range) => Value::Str(buf.get(range.clone()).unwrap_or_default()),
            Node::Array { elem, len, data } => Value::Array(ArrayValue {
                elem: *elem,
                len: *len,
                data: buf.get(data.clone()).unwrap_or_default(),
            }),
        }
    }
}

fn read_bool(byte: u8) -> Result<bool, Box<GgufError>> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(GgufError::new(GgufErrorKind::InvalidBool { byte })),
    }
}

/// A metadata value, borrowing strings and array contents from the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `f32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// A string's raw bytes. GGUF strings should be UTF-8 but the reader does not insist
    /// (some tokenizer vocabularies are not); use [`Value::as_str`] to check.
    Str(&'a [u8]),
    /// An array.
    Array(ArrayValue<'a>),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f64`
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A description of the type for messages: `"u32"`, `"string"`, `"array of f32 (3 elements)"`.
    pub fn describe_type(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {} ({} elements)", a.elem_type(), a.len()),
            other => other.value_type().name().to_owned(),
        }
    }

    /// The value as an integer, if it is one of the integer types.
    pub fn as_integer(&self) -> Option<i128> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::I8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::U64(v) => Some(v.into()),
            Value::I64(v) => Some(v.into()),
            _ => None,
        }
    }

    /// The value as a float, if it is `f32` or `f64`.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string, if it is a string of valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<ArrayValue<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Formats scalars plainly, strings quoted (lossily decoded), and arrays as their first
/// elements followed by the total count.
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Str(bytes) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            Value::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().take(SHOWN).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len() > SHOWN {
                    write!(f, ", ... ({} {} elements)", a.len(), a.elem_type())?;
                }
                f.write_str("]")
            }
        }
    }
}

/// An array value: element type, length, and the encoded elements, borrowed from the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrayValue<'a> {
    elem: ValueType,
    len: usize,
    data: &'a [u8],
}

impl<'a> ArrayValue<'a> {
    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoded elements (little-endian; strings and arrays with their length prefixes).
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Iterates over the elements, decoding them on the fly.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem: self.elem,
            left: self.len,
            cursor: Cursor::new(self.data),
        }
    }
}

impl<'a> IntoIterator for ArrayValue<'a> {
    type Item = Value<'a>;
    type IntoIter = ArrayIter<'a>;

    fn into_iter(self) -> ArrayIter<'a> {
        self.iter()
    }
}

/// Iterator over the elements of an [`ArrayValue`].
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    elem: ValueType,
    left: usize,
    cursor: Cursor<'a>,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        self.left = self.left.checked_sub(1)?;
        // The array was validated when the file was parsed, so this cannot fail; if it
        // somehow did, end the iteration rather than panic.
        match Node::read(&mut self.cursor, self.elem, 1) {
            Ok(node) => Some(node.value(self.cursor.buf)),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ArrayIter<'_> {}
