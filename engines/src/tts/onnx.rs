//! A minimal, zero-copy reader for ONNX model files: just enough of the schema to load the
//! weights and hyperparameters of a Piper (VITS) voice.
//!
//! # The format
//!
//! An `.onnx` file is one protobuf message, `onnx.ModelProto` (see `onnx/onnx.proto` in the
//! ONNX repository), with no header or framing. [`wire`] decodes the protobuf wire format;
//! this module reads these messages and fields (everything else is skipped):
//!
//! ```text
//! ModelProto      ir_version(1) producer_name(2) producer_version(3) graph(7) opset_import(8)
//! OperatorSetId   domain(1) version(2)
//! GraphProto      node(1) name(2) initializer(5) input(11) output(12)
//! NodeProto       input(1) output(2) name(3) op_type(4) attribute(5) domain(7)
//! AttributeProto  name(1) f(2) i(3) s(4) t(5) g(6) floats(7) ints(8) type(20)
//! TensorProto     dims(1) data_type(2) segment(3) float_data(4) int32_data(5) int64_data(7)
//!                 name(8) raw_data(9) external_data(13) data_location(14)
//! ValueInfoProto  name(1) type(2) -> TypeProto.tensor_type(1) -> elem_type(1) shape(2)
//!                 -> TensorShapeProto.dim(1) -> dim_value(1) | dim_param(2)
//! ```
//!
//! # Zero copy, and alignment
//!
//! [`OnnxModel::open`] memory-maps the file and parses the whole message tree (names,
//! nodes, attributes: a few hundred kilobytes for a Piper voice) onto the heap, but never the
//! tensor data: an initializer's `raw_data` is recorded as a byte range of the mapping and
//! [`Tensor::raw_bytes`] returns a slice of the mapping itself.
//!
//! Protobuf does not align anything: `raw_data` starts wherever its length prefix ends, so a
//! float tensor's bytes are at an arbitrary offset (in `en_US-joe-medium.onnx` the offsets
//! are spread evenly over all four residues mod 4). The bytes therefore must not be
//! reinterpreted as `&[f32]`; read them with `f32::from_le_bytes` per element, or convert
//! once when building the model with [`Tensor::to_f32_vec`] (which also handles `float_data`,
//! f16 and bf16).
//!
//! # Validation
//!
//! Everything is checked before an [`OnnxModel`] is returned: the wire format (lengths within
//! their enclosing message, varints at most 10 bytes, no groups, nesting at most
//! [`wire::MAX_DEPTH`]), UTF-8 names, the presence of `ir_version`, a graph and an opset,
//! unique initializer names, non-negative dims whose element count does not overflow, and data
//! whose size matches shape and type. Tensors stored outside the file (`external_data`) are
//! rejected with "external data not supported". Errors name the file, the protobuf field path
//! or tensor, and the byte offset; see [`TtsError`].
//!
//! ```no_run
//! use sotad_engines::tts::onnx::OnnxModel;
//!
//! # fn main() -> sotad_engines::Result<()> {
//! let model = OnnxModel::open("voice.onnx")?;
//! println!("opset {:?}, {} nodes", model.opset_version(""), model.graph().node.len());
//! let w = model.initializer("dec.conv_pre.weight").expect("present");
//! let bytes: &[u8] = w.raw_bytes().unwrap_or_default(); // borrowed from the mapping
//! let floats: Vec<f32> = w.to_f32_vec()?; // a copy, aligned
//! # let _ = (bytes, floats);
//! # Ok(())
//! # }
//! ```

pub mod wire;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mapped::Backing;

use self::wire::Decoder;
use super::error::{TtsError, TtsErrorKind, TtsFile, TtsSubject};
use crate::error::{Error, Result};

type PResult<T> = std::result::Result<T, Box<TtsError>>;

/// Oldest and newest `ir_version` accepted (ONNX 1.0 wrote 3; 1.17 writes 10).
const IR_VERSIONS: std::ops::RangeInclusive<i64> = 1..=64;

fn onnx_err(kind: TtsErrorKind) -> Box<TtsError> {
    TtsError::new(TtsFile::Onnx, kind)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Prefixes the protobuf field path of `e` with `segment` (or sets it).
fn in_field(mut e: Box<TtsError>, segment: impl fmt::Display) -> Box<TtsError> {
    e.subject = match e.subject.take() {
        None => Some(TtsSubject::Field(segment.to_string())),
        Some(TtsSubject::Field(path)) => Some(TtsSubject::Field(format!("{segment}.{path}"))),
        Some(other) => Some(other),
    };
    e
}

// ----- data types --------------------------------------------------------------------------

/// An ONNX `TensorProto.DataType` code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataType(pub i32);

impl DataType {
    /// No type given.
    pub const UNDEFINED: Self = Self(0);
    /// IEEE 754 binary32.
    pub const FLOAT: Self = Self(1);
    /// u8.
    pub const UINT8: Self = Self(2);
    /// i8.
    pub const INT8: Self = Self(3);
    /// u16.
    pub const UINT16: Self = Self(4);
    /// i16.
    pub const INT16: Self = Self(5);
    /// i32.
    pub const INT32: Self = Self(6);
    /// i64.
    pub const INT64: Self = Self(7);
    /// Variable-length strings (`string_data`).
    pub const STRING: Self = Self(8);
    /// One byte per element.
    pub const BOOL: Self = Self(9);
    /// IEEE 754 binary16.
    pub const FLOAT16: Self = Self(10);
    /// IEEE 754 binary64.
    pub const DOUBLE: Self = Self(11);
    /// u32.
    pub const UINT32: Self = Self(12);
    /// u64.
    pub const UINT64: Self = Self(13);
    /// Two f32.
    pub const COMPLEX64: Self = Self(14);
    /// Two f64.
    pub const COMPLEX128: Self = Self(15);
    /// bfloat16.
    pub const BFLOAT16: Self = Self(16);

    /// The name `onnx.proto` gives the type.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "UNDEFINED",
            1 => "FLOAT",
            2 => "UINT8",
            3 => "INT8",
            4 => "UINT16",
            5 => "INT16",
            6 => "INT32",
            7 => "INT64",
            8 => "STRING",
            9 => "BOOL",
            10 => "FLOAT16",
            11 => "DOUBLE",
            12 => "UINT32",
            13 => "UINT64",
            14 => "COMPLEX64",
            15 => "COMPLEX128",
            16 => "BFLOAT16",
            17 => "FLOAT8E4M3FN",
            18 => "FLOAT8E4M3FNUZ",
            19 => "FLOAT8E5M2",
            20 => "FLOAT8E5M2FNUZ",
            21 => "UINT4",
            22 => "INT4",
            23 => "FLOAT4E2M1",
            _ => "unknown",
        }
    }

    /// Bytes per element in `raw_data`, for types with a fixed whole-byte size.
    pub fn size(self) -> Option<usize> {
        match self.0 {
            2 | 3 | 9 | 17..=20 => Some(1),
            4 | 5 | 10 | 16 => Some(2),
            1 | 6 | 12 => Some(4),
            7 | 11 | 13 | 14 => Some(8),
            15 => Some(16),
            _ => None,
        }
    }
}

impl fmt::Debug for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// An ONNX `AttributeProto.AttributeType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributeType {
    /// 0, or the field is absent.
    Undefined,
    /// 1: `f`.
    Float,
    /// 2: `i`.
    Int,
    /// 3: `s`.
    String,
    /// 4: `t`.
    Tensor,
    /// 5: `g`.
    Graph,
    /// 6: `floats`.
    Floats,
    /// 7: `ints`.
    Ints,
    /// 8: `strings` (not read).
    Strings,
    /// 9: `tensors` (not read).
    Tensors,
    /// 10: `graphs` (not read).
    Graphs,
    /// Any other code (sparse tensors, type protos, future types; not read).
    Other(i32),
}

impl AttributeType {
    fn from_code(code: i32) -> Self {
        match code {
            0 => Self::Undefined,
            1 => Self::Float,
            2 => Self::Int,
            3 => Self::String,
            4 => Self::Tensor,
            5 => Self::Graph,
            6 => Self::Floats,
            7 => Self::Ints,
            8 => Self::Strings,
            9 => Self::Tensors,
            10 => Self::Graphs,
            other => Self::Other(other),
        }
    }
}

// ----- the message tree --------------------------------------------------------------------

/// `onnx.ModelProto`, the fields this reader keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProto {
    /// The IR version the file was written with.
    pub ir_version: i64,
    /// Operator sets the graph uses.
    pub opset_import: Vec<OperatorSetId>,
    /// The exporting tool (`pytorch`).
    pub producer_name: String,
    /// Its version.
    pub producer_version: String,
    /// The computation graph.
    pub graph: GraphProto,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSetId {
    /// The operator domain; empty for the default `ai.onnx` domain.
    pub domain: String,
    /// The opset version.
    pub version: i64,
}

/// `onnx.GraphProto`, the fields this reader keeps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphProto {
    /// The graph's name (`torch_jit` for PyTorch exports).
    pub name: String,
    /// Nodes in topological order.
    pub node: Vec<NodeProto>,
    /// Constant tensors: weights and folded constants.
    pub initializer: Vec<TensorProto>,
    /// Graph inputs.
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    pub output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeProto {
    /// The node's name; PyTorch names nodes after the module path (`/dec/ups.0/ConvTranspose`).
    /// May be empty.
    pub name: String,
    /// The operator (`Conv`, `Gather`, ...).
    pub op_type: String,
    /// The operator domain; empty for `ai.onnx`.
    pub domain: String,
    /// Input value names; an empty string is an omitted optional input.
    pub input: Vec<String>,
    /// Output value names.
    pub output: Vec<String>,
    /// Attributes.
    pub attribute: Vec<AttributeProto>,
}

impl NodeProto {
    /// The attribute called `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }
}

/// `onnx.AttributeProto`, the fields this reader keeps (`strings`, `tensors`, `graphs`,
/// sparse tensors and type protos are skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeProto {
    /// The attribute name.
    pub name: String,
    /// Which of the value fields is meant.
    pub r#type: AttributeType,
    /// `FLOAT` value.
    pub f: Option<f32>,
    /// `INT` value.
    pub i: Option<i64>,
    /// `STRING` value (bytes; usually UTF-8).
    pub s: Option<Vec<u8>>,
    /// `TENSOR` value. Its `raw_data` lies in the same file; read it with
    /// [`OnnxModel::tensor`].
    pub t: Option<Box<TensorProto>>,
    /// `GRAPH` value (a subgraph of `If`, `Loop`, `Scan`).
    pub g: Option<Box<GraphProto>>,
    /// `FLOATS` value.
    pub floats: Vec<f32>,
    /// `INTS` value.
    pub ints: Vec<i64>,
}

impl AttributeProto {
    fn empty() -> Self {
        Self {
            name: String::new(),
            r#type: AttributeType::Undefined,
            f: None,
            i: None,
            s: None,
            t: None,
            g: None,
            floats: Vec::new(),
            ints: Vec::new(),
        }
    }

    /// The `INT` value, if the attribute is an int.
    pub fn as_int(&self) -> Option<i64> {
        self.i.filter(|_| matches!(self.r#type, AttributeType::Int))
    }

    /// The `INTS` value, if the attribute is a list of ints.
    pub fn as_ints(&self) -> Option<&[i64]> {
        matches!(self.r#type, AttributeType::Ints).then_some(self.ints.as_slice())
    }

    /// The `FLOAT` value, if the attribute is a float.
    pub fn as_float(&self) -> Option<f32> {
        self.f
            .filter(|_| matches!(self.r#type, AttributeType::Float))
    }
}

/// `onnx.ValueInfoProto` of a tensor (graph input or output).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValueInfoProto {
    /// The value's name.
    pub name: String,
    /// The element type, for tensor types.
    pub elem_type: Option<DataType>,
    /// The shape, for tensor types that give one.
    pub shape: Option<Vec<Dim>>,
}

/// One dimension of a [`ValueInfoProto`] shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Value(i64),
    /// A symbolic size (`batch_size`).
    Param(String),
    /// Neither given.
    Unknown,
}

/// `onnx.TensorProto`, the fields this reader keeps. Validated: see [`OnnxModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct TensorProto {
    /// The tensor's name (the value name nodes refer to).
    pub name: String,
    /// The shape; empty for a scalar.
    pub dims: Vec<i64>,
    /// The element type.
    pub data_type: DataType,
    /// `float_data`, when the data is stored there instead of `raw_data` (copied: small
    /// constants only, in practice).
    pub float_data: Vec<f32>,
    /// `int32_data` (also holds INT8/INT16/UINT8/UINT16/BOOL/FLOAT16/BFLOAT16 elements).
    pub int32_data: Vec<i32>,
    /// `int64_data`.
    pub int64_data: Vec<i64>,
    /// Absolute byte range of `raw_data` in the file, if present.
    raw_data: Option<Range<usize>>,
    /// `external_data` entries present, or `data_location == EXTERNAL`.
    external: bool,
    /// `segment` present.
    segmented: bool,
    /// Absolute offset of the `TensorProto` field in the file.
    offset: u64,
}

impl TensorProto {
    /// Absolute byte range of `raw_data` in the file, if the data is stored there.
    pub fn raw_data_range(&self) -> Option<Range<usize>> {
        self.raw_data.clone()
    }

    /// Absolute offset of this tensor's record in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The number of elements (1 for a scalar). Validated not to overflow.
    pub fn element_count(&self) -> usize {
        element_count(&self.dims).unwrap_or(0)
    }
}

fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

// ----- parsing -----------------------------------------------------------------------------

fn parse_model(buf: &[u8]) -> PResult<ModelProto> {
    if buf.is_empty() {
        return Err(onnx_err(TtsErrorKind::NotOnnx {
            reason: "the file is empty".to_owned(),
        })
        .at(0));
    }
    let mut d = Decoder::new(buf, 0, 0);
    let mut ir_version = None;
    let mut opset_import = Vec::new();
    let mut producer_name = String::new();
    let mut producer_version = String::new();
    let mut graph = None;
    let mut fields = 0usize;
    loop {
        let field = match d.next_field() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if fields == 0 => {
                return Err(onnx_err(TtsErrorKind::NotOnnx {
                    reason: format!("not protobuf data ({})", e.kind),
                })
                .at(e.offset.unwrap_or(0)));
            }
            Err(e) => return Err(in_field(e, "ModelProto")),
        };
        fields += 1;
        let r: PResult<()> = (|| {
            match field.number {
                1 => ir_version = Some(field.int64()?),
                2 => producer_name = field.string("producer_name")?.to_owned(),
                3 => producer_version = field.string("producer_version")?.to_owned(),
                7 => {
                    graph = Some(parse_graph(d.nested(&field)?).map_err(|e| in_field(e, "graph"))?)
                }
                8 => {
                    let i = opset_import.len();
                    let op = parse_opset(d.nested(&field)?)
                        .map_err(|e| in_field(e, format_args!("opset_import[{i}]")))?;
                    opset_import.push(op);
                }
                _ => {}
            }
            Ok(())
        })();
        r.map_err(|e| in_field(e, "ModelProto"))?;
    }
    let not_onnx = |reason: String| {
        Err(onnx_err(TtsErrorKind::NotOnnx { reason })
            .subject(TtsSubject::Field("ModelProto".to_owned())))
    };
    let Some(ir_version) = ir_version else {
        return not_onnx("no ir_version field".to_owned());
    };
    if !IR_VERSIONS.contains(&ir_version) {
        return not_onnx(format!(
            "ir_version {ir_version} is outside {}..={}",
            IR_VERSIONS.start(),
            IR_VERSIONS.end()
        ));
    }
    let Some(graph) = graph else {
        return not_onnx("no graph (truncated file?)".to_owned());
    };
    if opset_import.is_empty() {
        return not_onnx("no opset_import (truncated file?)".to_owned());
    }
    Ok(ModelProto {
        ir_version,
        opset_import,
        producer_name,
        producer_version,
        graph,
    })
}

fn parse_opset(mut d: Decoder<'_>) -> PResult<OperatorSetId> {
    let mut op = OperatorSetId {
        domain: String::new(),
        version: 0,
    };
    while let Some(f) = d.next_field()? {
        match f.number {
            1 => op.domain = f.string("opset domain")?.to_owned(),
            2 => op.version = f.int64()?,
            _ => {}
        }
    }
    Ok(op)
}

fn parse_graph(mut d: Decoder<'_>) -> PResult<GraphProto> {
    let mut g = GraphProto::default();
    let mut names: HashMap<String, u64> = HashMap::new();
    while let Some(f) = d.next_field()? {
        match f.number {
            1 => {
                let i = g.node.len();
                let node = parse_node(d.nested(&f)?)
                    .map_err(|e| in_field(e, format_args!("node[{i}]")))?;
                g.node.push(node);
            }
            2 => g.name = f.string("graph name")?.to_owned(),
            5 => {
                let i = g.initializer.len();
                let t = parse_tensor(d.nested(&f)?, f.offset)
                    .map_err(|e| in_field(e, format_args!("initializer[{i}]")))?;
                match names.entry(t.name.clone()) {
                    Entry::Occupied(first) => {
                        return Err(onnx_err(TtsErrorKind::NotOnnx {
                            reason: format!(
                                "duplicate initializer name (first defined at byte {})",
                                first.get()
                            ),
                        })
                        .at(f.offset)
                        .subject(TtsSubject::Tensor(t.name)));
                    }
                    Entry::Vacant(v) => {
                        v.insert(f.offset);
                    }
                }
                g.initializer.push(t);
            }
            11 => {
                let i = g.input.len();
                let v = parse_value_info(d.nested(&f)?)
                    .map_err(|e| in_field(e, format_args!("input[{i}]")))?;
                g.input.push(v);
            }
            12 => {
                let i = g.output.len();
                let v = parse_value_info(d.nested(&f)?)
                    .map_err(|e| in_field(e, format_args!("output[{i}]")))?;
                g.output.push(v);
            }
            _ => {}
        }
    }
    Ok(g)
}

fn parse_node(mut d: Decoder<'_>) -> PResult<NodeProto> {
    let mut n = NodeProto::default();
    while let Some(f) = d.next_field()? {
        match f.number {
            1 => n.input.push(f.string("node input")?.to_owned()),
            2 => n.output.push(f.string("node output")?.to_owned()),
            3 => n.name = f.string("node name")?.to_owned(),
            4 => n.op_type = f.string("op_type")?.to_owned(),
            5 => {
                let i = n.attribute.len();
                let a = parse_attribute(d.nested(&f)?)
                    .map_err(|e| in_field(e, format_args!("attribute[{i}]")))?;
                n.attribute.push(a);
            }
            7 => n.domain = f.string("node domain")?.to_owned(),
            _ => {}
        }
    }
    Ok(n)
}

fn parse_attribute(mut d: Decoder<'_>) -> PResult<AttributeProto> {
    let mut a = AttributeProto::empty();
    while let Some(f) = d.next_field()? {
        match f.number {
            1 => a.name = f.string("attribute name")?.to_owned(),
            2 => a.f = Some(f.float()?),
            3 => a.i = Some(f.int64()?),
            4 => a.s = Some(f.bytes()?.to_vec()),
            5 => {
                a.t = Some(Box::new(
                    parse_tensor(d.nested(&f)?, f.offset).map_err(|e| in_field(e, "t"))?,
                ))
            }
            6 => {
                a.g = Some(Box::new(
                    parse_graph(d.nested(&f)?).map_err(|e| in_field(e, "g"))?,
                ))
            }
            7 => f.push_floats("floats", &mut a.floats)?,
            8 => f.push_int64s(&mut a.ints)?,
            20 => a.r#type = AttributeType::from_code(f.int32()?),
            _ => {}
        }
    }
    Ok(a)
}

fn parse_tensor(mut d: Decoder<'_>, offset: u64) -> PResult<TensorProto> {
    let mut t = TensorProto {
        name: String::new(),
        dims: Vec::new(),
        data_type: DataType::UNDEFINED,
        float_data: Vec::new(),
        int32_data: Vec::new(),
        int64_data: Vec::new(),
        raw_data: None,
        external: false,
        segmented: false,
        offset,
    };
    while let Some(f) = d.next_field()? {
        match f.number {
            1 => f.push_int64s(&mut t.dims)?,
            2 => t.data_type = DataType(f.int32()?),
            3 => t.segmented = true,
            4 => f.push_floats("float_data", &mut t.float_data)?,
            5 => f.push_int32s(&mut t.int32_data)?,
            7 => f.push_int64s(&mut t.int64_data)?,
            8 => t.name = f.string("tensor name")?.to_owned(),
            9 => {
                let len = f.bytes()?.len();
                let start = usize::try_from(f.value_offset).unwrap_or(usize::MAX);
                t.raw_data = Some(start..start.saturating_add(len));
            }
            13 => t.external = true,
            14 => t.external |= f.varint()? == 1,
            _ => {}
        }
    }
    validate_tensor(&t).map_err(|kind| {
        onnx_err(kind)
            .at(t.offset)
            .subject(TtsSubject::Tensor(t.name.clone()))
    })?;
    Ok(t)
}

fn validate_tensor(t: &TensorProto) -> std::result::Result<(), TtsErrorKind> {
    if t.external {
        return Err(TtsErrorKind::ExternalData);
    }
    if t.segmented {
        return Err(TtsErrorKind::BadValue {
            reason: "segmented tensors are not supported".to_owned(),
        });
    }
    if t.dims.iter().any(|&d| d < 0) {
        return Err(TtsErrorKind::BadDims {
            dims: t.dims.clone(),
            reason: "negative dimension",
        });
    }
    let Some(count) = element_count(&t.dims) else {
        return Err(TtsErrorKind::BadDims {
            dims: t.dims.clone(),
            reason: "element count overflows",
        });
    };
    let mismatch = |expected: usize, found: usize| TtsErrorKind::DataSizeMismatch {
        dims: t.dims.clone(),
        data_type: t.data_type.name(),
        expected: to_u64(expected),
        found: to_u64(found),
    };
    if let Some(range) = &t.raw_data {
        if let Some(size) = t.data_type.size() {
            let Some(expected) = count.checked_mul(size) else {
                return Err(TtsErrorKind::BadDims {
                    dims: t.dims.clone(),
                    reason: "byte size overflows",
                });
            };
            if range.len() != expected {
                return Err(mismatch(expected, range.len()));
            }
        }
        return Ok(());
    }
    // Typed fields: the element count must match (sizes reported in bytes of the type).
    let size = t.data_type.size().unwrap_or(0);
    let found = match t.data_type {
        DataType::FLOAT => t.float_data.len(),
        DataType::INT64 => t.int64_data.len(),
        DataType::INT32
        | DataType::INT16
        | DataType::INT8
        | DataType::UINT16
        | DataType::UINT8
        | DataType::BOOL
        | DataType::FLOAT16
        | DataType::BFLOAT16 => t.int32_data.len(),
        // Strings, doubles, unsigned 32/64 and exotic types: not read here; their consumers
        // see the count mismatch when converting.
        _ => return Ok(()),
    };
    if found != count {
        return Err(mismatch(
            count.saturating_mul(size),
            found.saturating_mul(size),
        ));
    }
    Ok(())
}

fn parse_value_info(mut d: Decoder<'_>) -> PResult<ValueInfoProto> {
    let mut v = ValueInfoProto::default();
    while let Some(f) = d.next_field()? {
        match f.number {
            1 => v.name = f.string("value name")?.to_owned(),
            2 => {
                // TypeProto: only tensor_type (1) is read.
                let mut ty = d.nested(&f)?;
                while let Some(tf) = ty.next_field()? {
                    if tf.number != 1 {
                        continue;
                    }
                    let mut tensor = ty.nested(&tf)?;
                    while let Some(x) = tensor.next_field()? {
                        match x.number {
                            1 => v.elem_type = Some(DataType(x.int32()?)),
                            2 => v.shape = Some(parse_shape(tensor.nested(&x)?)?),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(v)
}

fn parse_shape(mut d: Decoder<'_>) -> PResult<Vec<Dim>> {
    let mut dims = Vec::new();
    while let Some(f) = d.next_field()? {
        if f.number != 1 {
            continue;
        }
        let mut dim = Dim::Unknown;
        let mut dd = d.nested(&f)?;
        while let Some(x) = dd.next_field()? {
            match x.number {
                1 => dim = Dim::Value(x.int64()?),
                2 => dim = Dim::Param(x.string("dim_param")?.to_owned()),
                _ => {}
            }
        }
        dims.push(dim);
    }
    Ok(dims)
}

// ----- the model ---------------------------------------------------------------------------

struct Inner {
    backing: Backing,
    path: Option<PathBuf>,
    proto: ModelProto,
    initializers: HashMap<String, usize>,
}

/// A parsed, validated ONNX model whose bytes are memory-mapped (or held in memory).
///
/// Cloning is cheap: clones share the mapping and the parsed tree.
#[derive(Clone)]
pub struct OnnxModel {
    inner: Arc<Inner>,
}

impl OnnxModel {
    /// Memory-maps and parses the ONNX file at `path`.
    ///
    /// The file must not be modified while mapped (model files are treated as read-only and
    /// replaced by renaming).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_backing(Backing::map(path)?, Some(path.to_owned()))
    }

    /// Parses an ONNX model held in memory, taking ownership of the buffer (no copy).
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        Self::from_backing(Backing::Owned(bytes), None)
    }

    /// Parses a copy of `bytes`. Convenient for tests and fuzzing.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }

    fn from_backing(backing: Backing, path: Option<PathBuf>) -> Result<Self> {
        let proto = parse_model(backing.bytes()).map_err(|e| e.path(path.clone()))?;
        let initializers = proto
            .graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let model = Self {
            inner: Arc::new(Inner {
                backing,
                path,
                proto,
                initializers,
            }),
        };
        tracing::debug!(
            path = ?model.path(),
            ir_version = model.proto().ir_version,
            nodes = model.graph().node.len(),
            initializers = model.graph().initializer.len(),
            "parsed ONNX model"
        );
        Ok(model)
    }

    /// The path the file was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.inner.backing.bytes()
    }

    /// The parsed message tree.
    pub fn proto(&self) -> &ModelProto {
        &self.inner.proto
    }

    /// The main graph.
    pub fn graph(&self) -> &GraphProto {
        &self.inner.proto.graph
    }

    /// The imported version of the opset `domain` (`""` for the default ONNX operators).
    pub fn opset_version(&self, domain: &str) -> Option<i64> {
        let is_default = |d: &str| d.is_empty() || d == "ai.onnx";
        self.proto()
            .opset_import
            .iter()
            .find(|o| o.domain == domain || (is_default(domain) && is_default(&o.domain)))
            .map(|o| o.version)
    }

    /// The initializer called `name`, if present.
    pub fn initializer(&self, name: &str) -> Option<Tensor<'_>> {
        let i = *self.inner.initializers.get(name)?;
        self.graph().initializer.get(i).map(|t| self.tensor(t))
    }

    /// Every initializer, in file order.
    pub fn initializers(&self) -> impl ExactSizeIterator<Item = Tensor<'_>> + '_ {
        self.graph().initializer.iter().map(|t| self.tensor(t))
    }

    /// A view of `proto`, which must come from this model (an initializer, or an attribute's
    /// tensor). A tensor from another model yields an empty or wrong `raw_bytes`, never a panic.
    pub fn tensor<'m>(&'m self, proto: &'m TensorProto) -> Tensor<'m> {
        Tensor {
            file: self.as_bytes(),
            path: self.path(),
            proto,
        }
    }

    /// An error about this model's file.
    pub(crate) fn error(&self, kind: TtsErrorKind) -> Box<TtsError> {
        onnx_err(kind).path(self.inner.path.clone())
    }
}

impl fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path())
            .field("len", &self.as_bytes().len())
            .field("ir_version", &self.proto().ir_version)
            .field("opset_import", &self.proto().opset_import)
            .field("nodes", &self.graph().node.len())
            .field("initializers", &self.graph().initializer.len())
            .finish()
    }
}

/// A tensor of an [`OnnxModel`], whose `raw_data` borrows from the model's mapping.
#[derive(Clone, Copy)]
pub struct Tensor<'m> {
    file: &'m [u8],
    path: Option<&'m Path>,
    proto: &'m TensorProto,
}

impl<'m> Tensor<'m> {
    /// The tensor's name.
    pub fn name(&self) -> &'m str {
        &self.proto.name
    }

    /// The shape.
    pub fn dims(&self) -> &'m [i64] {
        &self.proto.dims
    }

    /// The element type.
    pub fn data_type(&self) -> DataType {
        self.proto.data_type
    }

    /// The number of elements.
    pub fn element_count(&self) -> usize {
        self.proto.element_count()
    }

    /// The underlying message.
    pub fn proto(&self) -> &'m TensorProto {
        self.proto
    }

    /// Absolute offset of the data in the file, if stored in `raw_data`.
    pub fn data_offset(&self) -> Option<u64> {
        self.proto.raw_data.as_ref().map(|r| to_u64(r.start))
    }

    /// The `raw_data` bytes, borrowed from the mapping (little-endian, **not aligned**: see
    /// the module docs), or `None` when the data is in a typed field such as `float_data`.
    pub fn raw_bytes(&self) -> Option<&'m [u8]> {
        let r = self.proto.raw_data.clone()?;
        Some(self.file.get(r).unwrap_or_default())
    }

    fn err(&self, kind: TtsErrorKind) -> Box<TtsError> {
        onnx_err(kind)
            .path(self.path.map(Path::to_path_buf))
            .at(self.proto.offset)
            .subject(TtsSubject::Tensor(self.proto.name.clone()))
    }

    fn unsupported(&self, wanted: &'static str) -> Error {
        self.err(TtsErrorKind::UnsupportedDataType {
            found: self.proto.data_type.0,
            found_name: self.proto.data_type.name(),
            wanted,
        })
        .into()
    }

    /// The elements converted to `f32` (an aligned copy). Reads FLOAT, FLOAT16, BFLOAT16 and
    /// DOUBLE, from `raw_data` or the typed fields.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let raw = self.raw_bytes();
        let count = self.element_count();
        let out: Vec<f32> = match (self.proto.data_type, raw) {
            (DataType::FLOAT, Some(b)) => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            (DataType::FLOAT, None) => self.proto.float_data.clone(),
            (DataType::FLOAT16, Some(b)) => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            (DataType::BFLOAT16, Some(b)) => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            // low 16 bits hold the value
            (DataType::FLOAT16, None) => self
                .proto
                .int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16).to_f32())
                .collect(),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            (DataType::BFLOAT16, None) => self
                .proto
                .int32_data
                .iter()
                .map(|&v| half::bf16::from_bits(v as u16).to_f32())
                .collect(),
            #[allow(clippy::cast_possible_truncation)] // documented rounding
            (DataType::DOUBLE, Some(b)) => b
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            _ => return Err(self.unsupported("f32")),
        };
        if out.len() != count {
            return Err(self
                .err(TtsErrorKind::DataSizeMismatch {
                    dims: self.proto.dims.clone(),
                    data_type: self.proto.data_type.name(),
                    expected: to_u64(count),
                    found: to_u64(out.len()),
                })
                .into());
        }
        Ok(out)
    }

    /// The elements converted to `i64`. Reads INT64, INT32, INT16, INT8, UINT8, UINT16 and
    /// BOOL, from `raw_data` or the typed fields.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        let raw = self.raw_bytes();
        let count = self.element_count();
        let out: Vec<i64> = match (self.proto.data_type, raw) {
            (DataType::INT64, Some(b)) => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            (DataType::INT64, None) => self.proto.int64_data.clone(),
            (DataType::INT32, Some(b)) => b
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            (DataType::INT16, Some(b)) => b
                .chunks_exact(2)
                .map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            (DataType::UINT16, Some(b)) => b
                .chunks_exact(2)
                .map(|c| i64::from(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            #[allow(clippy::cast_possible_wrap)]
            (DataType::INT8, Some(b)) => b.iter().map(|&x| i64::from(x as i8)).collect(),
            (DataType::UINT8 | DataType::BOOL, Some(b)) => {
                b.iter().map(|&x| i64::from(x)).collect()
            }
            (
                DataType::INT32
                | DataType::INT16
                | DataType::INT8
                | DataType::UINT16
                | DataType::UINT8
                | DataType::BOOL,
                None,
            ) => self
                .proto
                .int32_data
                .iter()
                .map(|&v| i64::from(v))
                .collect(),
            _ => return Err(self.unsupported("i64")),
        };
        if out.len() != count {
            return Err(self
                .err(TtsErrorKind::DataSizeMismatch {
                    dims: self.proto.dims.clone(),
                    data_type: self.proto.data_type.name(),
                    expected: to_u64(count),
                    found: to_u64(out.len()),
                })
                .into());
        }
        Ok(out)
    }
}

impl fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name())
            .field("dims", &self.dims())
            .field("data_type", &self.data_type())
            .field("data_offset", &self.data_offset())
            .finish()
    }
}
