//! Zero-copy reader (and a small writer) for GGUF model files.
//!
//! # The format
//!
//! GGUF is the single-file container used by llama.cpp/ggml. Versions 2 and 3 are read
//! here; both are little-endian with this layout (version 1 used 32-bit counts and is not
//! supported, nor are big-endian v3 files):
//!
//! ```text
//! magic             4 bytes  "GGUF"
//! version           u32      2 or 3
//! tensor_count      u64
//! metadata_count    u64
//! metadata          metadata_count × { key: string, value_type: u32, value }
//! tensor infos      tensor_count × { name: string, n_dims: u32, dims: u64 × n_dims,
//!                                    type: u32 (ggml type id), offset: u64 }
//! padding           zeros up to a multiple of the alignment
//! tensor data       each tensor at data_start + offset, offset a multiple of the alignment
//! ```
//!
//! A `string` is a `u64` byte length followed by that many UTF-8 bytes (no terminator). A
//! metadata `value` is one of 13 [`ValueType`]s; arrays carry their element type and a `u64`
//! length and may nest. The alignment is the `general.alignment` metadata value (a power of
//! two, default [`DEFAULT_ALIGNMENT`]). Dimensions are in ggml order: `dims[0]` is the
//! innermost, contiguous one, so a `dims = [4096, 32000]` matrix has 32000 rows of 4096
//! columns. A tensor of type `T` with `dims[0]` a multiple of `T`'s block size occupies
//! `dims[0] / block_size × bytes_per_block × dims[1] × dims[2] × dims[3]` bytes.
//!
//! # Zero copy
//!
//! [`GgufFile::open`] memory-maps the file and parses only the header. Metadata strings and
//! arrays (such as a tokenizer's 50 000-entry vocabulary) are decoded on access and borrow
//! from the mapping; tensor data is never copied: [`TensorView::bytes`] is a slice of the
//! mapping itself. The mapping lives in an [`Arc`] shared by the [`GgufFile`] (cheap to
//! clone) and every [`TensorView`], so views can be stored in model structs without
//! lifetimes and the file stays mapped until the last one is dropped. Tensor data in a
//! mapped file is aligned to the file's alignment in memory too (mappings are page-aligned).
//!
//! # Validation
//!
//! Everything is checked before a [`GgufFile`] is returned, so later accesses cannot fail:
//! counts are bounded by the bytes actually present (no allocation is sized by an untrusted
//! count), strings must lie within the data, tensors must have at most four non-zero
//! dimensions whose sizes do not overflow, a supported [`GgmlType`], an aligned offset, data
//! inside the file and not overlapping another tensor, and a unique name. Errors name the
//! file, the tensor or metadata key, and the byte offset; see [`GgufError`].
//!
//! ```no_run
//! use sotad_engines::gguf::GgufFile;
//!
//! # fn main() -> sotad_engines::Result<()> {
//! let file = GgufFile::open("model.gguf")?;
//! let layers = file.get_u32("llama.block_count")?;
//! let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
//! let embd = file.tensor("token_embd.weight")?;
//! println!("{layers} layers, {} tokens, {} {:?}", tokens.len(), embd.ggml_type(), embd.dims());
//! let raw: &[u8] = embd.bytes(); // borrowed from the mapping
//! # let _ = raw;
//! # Ok(())
//! # }
//! ```

mod parse;
mod types;
mod value;
pub mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mapped::Backing;

pub use self::types::{GgmlType, QK_K, ValueType};
pub use self::value::{ArrayIter, ArrayValue, MAX_ARRAY_DEPTH, Value};
pub use self::writer::{GgufWriter, MetaArray, MetaValue};
pub use crate::error::{GgufError, GgufErrorKind, GgufSubject};

use self::parse::Header;
use crate::error::Result;

/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Maximum number of tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Metadata key holding the tensor data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Metadata key holding the model architecture (`llama`, `qwen2`, ...).
pub const ARCHITECTURE_KEY: &str = "general.architecture";

struct Inner {
    backing: Backing,
    path: Option<PathBuf>,
    header: Header,
}

/// A parsed, validated GGUF file whose bytes are memory-mapped (or held in memory).
///
/// Cloning is cheap: clones share the mapping.
#[derive(Clone)]
pub struct GgufFile {
    inner: Arc<Inner>,
}

impl GgufFile {
    /// Memory-maps and validates the GGUF file at `path`.
    ///
    /// Errors name the path. The file must not be modified while mapped (as with any
    /// memory-mapped model file; model files are treated as read-only).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_backing(Backing::map(path)?, Some(path.to_owned()))
    }

    /// Parses a GGUF file held in memory, taking ownership of the buffer (no copy).
    ///
    /// Tensor data in a `Vec` is only byte-aligned; readers must not assume more.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        Self::from_backing(Backing::Owned(bytes), None)
    }

    /// Parses a copy of `bytes`. Convenient for tests and fuzzing; prefer [`GgufFile::open`]
    /// for real models.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }

    /// The mapping itself, if this is the only handle to it (no clones): for readers that
    /// read the header here and keep the bytes in a container of their own.
    pub(crate) fn into_backing(self) -> Option<Backing> {
        Arc::try_unwrap(self.inner).ok().map(|inner| inner.backing)
    }

    fn from_backing(backing: Backing, path: Option<PathBuf>) -> Result<Self> {
        let header = match parse::parse(backing.bytes()) {
            Ok(h) => h,
            Err(mut e) => {
                e.path = path;
                return Err(e.into());
            }
        };
        let file = Self {
            inner: Arc::new(Inner {
                backing,
                path,
                header,
            }),
        };
        tracing::debug!(
            path = ?file.path(),
            version = file.version(),
            tensors = file.tensor_count(),
            metadata = file.metadata_count(),
            "parsed GGUF header"
        );
        Ok(file)
    }

    /// The path the file was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.inner.backing.bytes()
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.inner.header.version
    }

    /// Alignment of tensor data, from `general.alignment` or [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> u64 {
        self.inner.header.alignment
    }

    /// Byte offset of the tensor data section (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.inner.header.data_offset
    }

    /// The value of `general.architecture`, if present and a valid string.
    pub fn architecture(&self) -> Option<&str> {
        self.get(ARCHITECTURE_KEY).and_then(|v| v.as_str())
    }

    fn err(&self, kind: GgufErrorKind) -> Box<GgufError> {
        let mut e = GgufError::new(kind);
        e.path.clone_from(&self.inner.path);
        e
    }

    // ----- metadata -------------------------------------------------------------------

    /// Number of metadata entries.
    pub fn metadata_count(&self) -> usize {
        self.inner.header.metadata.len()
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, Value<'_>)> + '_ {
        let buf = self.as_bytes();
        self.inner
            .header
            .metadata
            .iter()
            .map(move |e| (e.key.as_str(), e.node.value(buf)))
    }

    /// Whether the metadata has `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.inner.header.keys.contains_key(key)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.entry(key).map(|e| e.node.value(self.as_bytes()))
    }

    fn entry(&self, key: &str) -> Option<&parse::MetaEntry> {
        let header = &self.inner.header;
        header.keys.get(key).and_then(|&i| header.metadata.get(i))
    }

    /// Looks up `key` and converts its value with `convert`, attaching path, key and
    /// offset to any error.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        convert: impl FnOnce(Value<'a>) -> Result<T, GgufErrorKind>,
    ) -> Result<T> {
        let Some(entry) = self.entry(key) else {
            let arch = self.architecture().unwrap_or("unknown").to_owned();
            return Err(self.err(GgufErrorKind::MissingKey { arch }).key(key).into());
        };
        convert(entry.node.value(self.as_bytes()))
            .map_err(|kind| self.err(kind).at(entry.offset).key(key).into())
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, |v| match v {
            Value::Str(bytes) => str_from(bytes, || "string value".to_owned()),
            other => Err(wrong_type("string", &other)),
        })
    }

    /// An integer value of any GGUF integer type that fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, |v| int_from(&v, "u32"))
    }

    /// An integer value of any GGUF integer type that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, |v| int_from(&v, "u64"))
    }

    /// An integer value of any GGUF integer type that fits in `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.typed(key, |v| int_from(&v, "i64"))
    }

    /// A float value: `f32`, or `f64` rounded to the nearest `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, |v| match v {
            Value::F32(x) => Ok(x),
            #[allow(clippy::cast_possible_truncation)] // documented rounding
            Value::F64(x) => Ok(x as f32),
            other => Err(wrong_type("f32", &other)),
        })
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, |v| match v {
            Value::Bool(b) => Ok(b),
            other => Err(wrong_type("bool", &other)),
        })
    }

    /// An array value of any element type.
    pub fn get_array(&self, key: &str) -> Result<ArrayValue<'_>> {
        self.typed(key, |v| v.as_array().ok_or_else(|| wrong_type("array", &v)))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`), borrowed from the file. Every
    /// element must be valid UTF-8.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, |v| {
            let a = array_of(&v, ValueType::String, "array of string")?;
            a.iter()
                .enumerate()
                .map(|(i, e)| match e {
                    Value::Str(bytes) => str_from(bytes, || format!("array element {i}")),
                    other => Err(wrong_type("string element", &other)),
                })
                .collect()
        })
    }

    /// An array of integers (e.g. `tokenizer.ggml.token_type`) of any integer element type
    /// whose values all fit in `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.typed(key, |v| {
            let Some(a) = v.as_array().filter(|a| is_integer_type(a.elem_type())) else {
                return Err(wrong_type("array of i32", &v));
            };
            a.iter()
                .enumerate()
                .map(|(i, e)| {
                    int_from(&e, "i32").map_err(|kind| match kind {
                        GgufErrorKind::OutOfRange {
                            expected,
                            found,
                            value,
                        } => GgufErrorKind::OutOfRange {
                            expected,
                            found,
                            value: format!("{value} at index {i}"),
                        },
                        other => other,
                    })
                })
                .collect()
        })
    }

    /// An array of floats (e.g. `tokenizer.ggml.scores`): `f32` elements, or `f64` rounded.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.typed(key, |v| {
            let Some(a) = v
                .as_array()
                .filter(|a| matches!(a.elem_type(), ValueType::F32 | ValueType::F64))
            else {
                return Err(wrong_type("array of f32", &v));
            };
            #[allow(clippy::cast_possible_truncation)] // documented rounding
            Ok(a.iter()
                .filter_map(|e| e.as_float())
                .map(|x| x as f32)
                .collect())
        })
    }

    // ----- tensors --------------------------------------------------------------------

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.inner.header.tensors.len()
    }

    /// Information about every tensor, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.inner.header.tensors
    }

    /// Information about the tensor called `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let header = &self.inner.header;
        header.names.get(name).and_then(|&i| header.tensors.get(i))
    }

    /// A view of the tensor called `name`, whose bytes borrow from the mapping.
    ///
    /// Fails naming the file, the tensor and the model architecture if there is no such
    /// tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorView> {
        match self.tensor_info(name) {
            Some(info) => Ok(TensorView {
                file: self.clone(),
                info: info.clone(),
            }),
            None => {
                let arch = self.architecture().unwrap_or("unknown").to_owned();
                let count = self.tensor_count();
                Err(self
                    .err(GgufErrorKind::MissingTensor { arch, count })
                    .tensor(name)
                    .into())
            }
        }
    }

    /// Views of every tensor, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView> + '_ {
        self.tensor_infos().iter().map(|info| TensorView {
            file: self.clone(),
            info: info.clone(),
        })
    }

    /// The data bytes of a tensor described by one of this file's [`TensorInfo`]s.
    fn data(&self, info: &TensorInfo) -> &[u8] {
        // The range was checked against the file length when parsing.
        self.as_bytes()
            .get(info.start..info.end)
            .unwrap_or_default()
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path())
            .field("len", &self.as_bytes().len())
            .field("version", &self.version())
            .field("architecture", &self.architecture())
            .field("metadata_count", &self.metadata_count())
            .field("tensor_count", &self.tensor_count())
            .finish()
    }
}

fn wrong_type(expected: &'static str, found: &Value<'_>) -> GgufErrorKind {
    GgufErrorKind::WrongType {
        expected,
        found: found.describe_type(),
    }
}

fn str_from(bytes: &[u8], what: impl FnOnce() -> String) -> Result<&str, GgufErrorKind> {
    std::str::from_utf8(bytes).map_err(|e| GgufErrorKind::InvalidUtf8Value {
        what: what(),
        valid_up_to: e.valid_up_to(),
    })
}

fn int_from<T: TryFrom<i128>>(v: &Value<'_>, expected: &'static str) -> Result<T, GgufErrorKind> {
    let Some(n) = v.as_integer() else {
        return Err(wrong_type(expected, v));
    };
    T::try_from(n).map_err(|_| GgufErrorKind::OutOfRange {
        expected,
        found: v.value_type().name(),
        value: n.to_string(),
    })
}

fn is_integer_type(ty: ValueType) -> bool {
    matches!(
        ty,
        ValueType::U8
            | ValueType::I8
            | ValueType::U16
            | ValueType::I16
            | ValueType::U32
            | ValueType::I32
            | ValueType::U64
            | ValueType::I64
    )
}

fn array_of<'a>(
    v: &Value<'a>,
    elem: ValueType,
    expected: &'static str,
) -> Result<ArrayValue<'a>, GgufErrorKind> {
    v.as_array()
        .filter(|a| a.elem_type() == elem)
        .ok_or_else(|| wrong_type(expected, v))
}

/// Name, type, shape and location of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    ty: GgmlType,
    /// Dimensions in ggml order, padded with 1s.
    ne: [u64; 4],
    n_dims: usize,
    n_elements: u64,
    n_bytes: u64,
    /// Offset relative to the data section, as stored.
    offset: u64,
    /// Where this tensor's info record starts in the file.
    info_offset: u64,
    /// Absolute byte range of the data in the file.
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Dimensions in ggml order: `dims()[0]` is the innermost (contiguous) one.
    pub fn dims(&self) -> &[u64] {
        self.ne.get(..self.n_dims).unwrap_or(&self.ne)
    }

    /// Dimensions in row-major order (outermost first), e.g. `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<u64> {
        self.dims().iter().rev().copied().collect()
    }

    /// Length of a row: the innermost dimension (1 for a scalar).
    pub fn cols(&self) -> u64 {
        self.ne[0]
    }

    /// Number of rows: the product of all dimensions but the innermost.
    pub fn rows(&self) -> u64 {
        // Cannot overflow: the product of all dimensions was checked when parsing.
        self.ne
            .iter()
            .skip(1)
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Size of one row in bytes.
    pub fn row_bytes(&self) -> u64 {
        self.ty.row_bytes(self.cols()).unwrap_or_default()
    }

    /// Offset of the data relative to the data section, as stored in the file.
    pub fn relative_offset(&self) -> u64 {
        self.offset
    }

    /// Absolute byte offset of the data in the file.
    pub fn file_offset(&self) -> u64 {
        value::to_u64(self.start)
    }

    /// Where this tensor's info record starts in the file (for error messages).
    pub fn info_offset(&self) -> u64 {
        self.info_offset
    }
}

/// A tensor: its [`TensorInfo`] plus its data, borrowed from the memory-mapped file.
///
/// Holds a reference-counted handle to the file, so it may outlive the [`GgufFile`] it came
/// from; the bytes stay mapped as long as any view exists.
#[derive(Clone)]
pub struct TensorView {
    file: GgufFile,
    info: TensorInfo,
}

impl TensorView {
    /// Name, type, shape and location.
    pub fn info(&self) -> &TensorInfo {
        &self.info
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        self.info.name()
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type()
    }

    /// Dimensions in ggml order (innermost first).
    pub fn dims(&self) -> &[u64] {
        self.info.dims()
    }

    /// Dimensions in row-major order (outermost first).
    pub fn shape(&self) -> Vec<u64> {
        self.info.shape()
    }

    /// Number of rows (product of all dimensions but the innermost).
    pub fn rows(&self) -> u64 {
        self.info.rows()
    }

    /// Length of a row (the innermost dimension).
    pub fn cols(&self) -> u64 {
        self.info.cols()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.info.n_elements()
    }

    /// The raw data (`n_bytes` bytes in ggml's block layout), borrowed from the mapping.
    pub fn bytes(&self) -> &[u8] {
        self.file.data(&self.info)
    }

    /// The file this tensor belongs to.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl fmt::Debug for TensorView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.info.name)
            .field("type", &self.info.ty)
            .field("dims", &self.dims())
            .field("file_offset", &self.info.file_offset())
            .field("n_bytes", &self.info.n_bytes)
            .finish()
    }
}
