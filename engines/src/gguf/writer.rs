//! A small GGUF v3 writer, for tests and for generating small models.
//!
//! ```
//! use sotad_engines::gguf::{GgmlType, GgufFile, GgufWriter};
//!
//! # fn main() -> sotad_engines::Result<()> {
//! let mut w = GgufWriter::new();
//! w.metadata("general.architecture", "llama")
//!     .metadata("llama.block_count", 2u32)
//!     .metadata("tokenizer.ggml.tokens", vec!["<s>", "</s>"]);
//! w.tensor("output_norm.weight", &[8], GgmlType::F32, vec![0u8; 32]);
//! let file = GgufFile::from_vec(w.to_bytes()?)?;
//! assert_eq!(file.get_u32("llama.block_count")?, 2);
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use super::parse::align_up;
use super::types::{GgmlType, ValueType};
use super::value::to_u64;
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::error::{Error, GgufError, GgufErrorKind, Result};

/// An owned metadata value to write.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
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
    /// A string.
    String(String),
    /// An array.
    Array(MetaArray),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f64`
    F64(f64),
}

/// An owned, homogeneous metadata array to write.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Nested arrays (each with its own element type).
    Array(Vec<MetaArray>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

macro_rules! from_scalars {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for MetaValue {
            fn from(x: $t) -> Self {
                MetaValue::$v(x)
            }
        }
        impl From<Vec<$t>> for MetaArray {
            fn from(x: Vec<$t>) -> Self {
                MetaArray::$v(x)
            }
        }
        impl From<Vec<$t>> for MetaValue {
            fn from(x: Vec<$t>) -> Self {
                MetaValue::Array(MetaArray::$v(x))
            }
        }
    )*};
}

from_scalars!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64,
);

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::String(s.to_owned())
    }
}

impl From<Vec<&str>> for MetaValue {
    fn from(v: Vec<&str>) -> Self {
        MetaValue::Array(MetaArray::String(
            v.into_iter().map(str::to_owned).collect(),
        ))
    }
}

impl From<MetaArray> for MetaValue {
    fn from(a: MetaArray) -> Self {
        MetaValue::Array(a)
    }
}

impl MetaArray {
    fn elem_type(&self) -> ValueType {
        match self {
            MetaArray::U8(_) => ValueType::U8,
            MetaArray::I8(_) => ValueType::I8,
            MetaArray::U16(_) => ValueType::U16,
            MetaArray::I16(_) => ValueType::I16,
            MetaArray::U32(_) => ValueType::U32,
            MetaArray::I32(_) => ValueType::I32,
            MetaArray::F32(_) => ValueType::F32,
            MetaArray::Bool(_) => ValueType::Bool,
            MetaArray::String(_) => ValueType::String,
            MetaArray::Array(_) => ValueType::Array,
            MetaArray::U64(_) => ValueType::U64,
            MetaArray::I64(_) => ValueType::I64,
            MetaArray::F64(_) => ValueType::F64,
        }
    }

    fn depth(&self) -> usize {
        match self {
            MetaArray::Array(v) => 1 + v.iter().map(MetaArray::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.elem_type().id().to_le_bytes());
        fn each<T>(out: &mut Vec<u8>, v: &[T], mut f: impl FnMut(&mut Vec<u8>, &T)) {
            out.extend_from_slice(&to_u64(v.len()).to_le_bytes());
            for x in v {
                f(out, x);
            }
        }
        match self {
            MetaArray::U8(v) => each(out, v, |o, x| o.push(*x)),
            MetaArray::I8(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U16(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I16(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::F32(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::Bool(v) => each(out, v, |o, x| o.push(u8::from(*x))),
            MetaArray::String(v) => each(out, v, |o, x| put_str(o, x)),
            MetaArray::Array(v) => each(out, v, |o, x| x.encode(o)),
            MetaArray::U64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
            MetaArray::F64(v) => each(out, v, |o, x| o.extend_from_slice(&x.to_le_bytes())),
        }
    }
}

impl MetaValue {
    fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.value_type().id().to_le_bytes());
        match self {
            MetaValue::U8(x) => out.push(*x),
            MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::Bool(x) => out.push(u8::from(*x)),
            MetaValue::String(s) => put_str(out, s),
            MetaValue::Array(a) => a.encode(out),
            MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(x) => Some(x.into()),
            MetaValue::U16(x) => Some(x.into()),
            MetaValue::U32(x) => Some(x.into()),
            MetaValue::U64(x) => Some(x),
            MetaValue::I8(x) => u64::try_from(x).ok(),
            MetaValue::I16(x) => u64::try_from(x).ok(),
            MetaValue::I32(x) => u64::try_from(x).ok(),
            MetaValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&to_u64(s.len()).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF file from metadata and tensors.
///
/// Adding is infallible; everything is validated by [`GgufWriter::to_bytes`] (and
/// [`GgufWriter::write_file`]), which only ever produce files that [`super::GgufFile`]
/// accepts. Tensors are laid out in the order added, each aligned to the file's alignment
/// (`general.alignment` if set with [`GgufWriter::alignment`], else 32).
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty GGUF v3 file.
    pub fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the format version to write (2 or 3; the layouts are identical).
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets `general.alignment` (must be a power of two).
    pub fn alignment(&mut self, alignment: u32) -> &mut Self {
        self.metadata(ALIGNMENT_KEY, alignment)
    }

    /// Adds a metadata entry, replacing (in place) any earlier value for `key`.
    pub fn metadata(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor with dimensions in ggml order (innermost first) and its raw data in
    /// ggml's layout for `ty`.
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data: data.into(),
        });
        self
    }

    /// The alignment that will be used.
    fn effective_alignment(&self) -> Result<u64, Box<GgufError>> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && u32::try_from(a).is_ok() => Ok(a),
                _ => Err(GgufError::new(GgufErrorKind::BadAlignment {
                    value: v.as_u64().unwrap_or(0),
                })
                .key(ALIGNMENT_KEY)),
            },
        }
    }

    fn validate(&self) -> Result<u64, Box<GgufError>> {
        if !(2..=3).contains(&self.version) {
            return Err(GgufError::new(GgufErrorKind::UnsupportedVersion {
                version: self.version,
            }));
        }
        for (key, value) in &self.metadata {
            if let MetaValue::Array(a) = value {
                if a.depth() > MAX_ARRAY_DEPTH {
                    return Err(GgufError::new(GgufErrorKind::NestingTooDeep {
                        max: MAX_ARRAY_DEPTH,
                    })
                    .key(key));
                }
            }
        }
        let alignment = self.effective_alignment()?;
        for (i, t) in self.tensors.iter().enumerate() {
            let err = |kind| Err(GgufError::new(kind).tensor(&t.name));
            if self
                .tensors
                .get(..i)
                .is_some_and(|prev| prev.iter().any(|p| p.name == t.name))
            {
                return err(GgufErrorKind::DuplicateTensor { first_offset: 0 });
            }
            let n_dims = u32::try_from(t.dims.len()).unwrap_or(u32::MAX);
            if n_dims > MAX_DIMS {
                return err(GgufErrorKind::TooManyDims {
                    n_dims,
                    max: MAX_DIMS,
                });
            }
            if let Some(index) = t.dims.iter().position(|&d| d == 0) {
                return err(GgufErrorKind::ZeroDim {
                    index,
                    dims: t.dims.clone(),
                });
            }
            let ne0 = t.dims.first().copied().unwrap_or(1);
            if ne0 % t.ty.block_size() != 0 {
                return err(GgufErrorKind::PartialBlock {
                    ne0,
                    ty: t.ty.name(),
                    block_size: t.ty.block_size(),
                });
            }
            match t.ty.tensor_bytes(&t.dims) {
                Some(n) if n == to_u64(t.data.len()) => {}
                Some(n) => {
                    return err(GgufErrorKind::Truncated {
                        what: "tensor data given to the writer",
                        needed: n,
                        available: to_u64(t.data.len()),
                    });
                }
                None => {
                    return err(GgufErrorKind::ShapeOverflow {
                        dims: t.dims.clone(),
                    });
                }
            }
        }
        Ok(alignment)
    }

    /// Encodes the file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let alignment = self.validate()?;
        let pad = |out: &mut Vec<u8>| {
            let len = to_u64(out.len());
            let target = align_up(len, alignment).unwrap_or(len);
            let n = usize::try_from(target.saturating_sub(len)).unwrap_or(0);
            out.resize(out.len().saturating_add(n), 0);
        };

        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&to_u64(self.tensors.len()).to_le_bytes());
        out.extend_from_slice(&to_u64(self.metadata.len()).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            value.encode(&mut out);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            let n_dims = u32::try_from(t.dims.len()).unwrap_or_default(); // validated <= 4
            out.extend_from_slice(&n_dims.to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            let end = offset.saturating_add(to_u64(t.data.len()));
            offset = align_up(end, alignment).unwrap_or(end);
        }
        for t in &self.tensors {
            pad(&mut out);
            out.extend_from_slice(&t.data);
        }
        Ok(out)
    }

    /// Writes the file to `path`, creating or truncating it.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes().map_err(|e| match e {
            Error::Gguf(mut g) => {
                g.path = Some(path.to_owned());
                Error::Gguf(g)
            }
            other => other,
        })?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            action: "write",
            path: path.to_owned(),
            source,
        })
    }
}
