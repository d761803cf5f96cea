//! A bounds-checked reader for the TensorFlow Lite flatbuffer (`schema.fbs`), reading only the
//! tables a microWakeWord model needs: `Model`, `OperatorCode`, `SubGraph`, `Tensor`,
//! `QuantizationParameters`, `Buffer`, `Operator` and the operators' option tables.
//!
//! Hand-written rather than generated with the `flatbuffers` crate: every offset is checked
//! here and a failure names the table and the byte offset, and constant tensors stay ranges
//! of the memory-mapped file. Nothing is trusted: a table's vtable, every field's position,
//! every vector's length and every string is checked against the data before it is read.

use std::ops::Range;

use super::error::WakeError;

type Result<T> = std::result::Result<T, Box<WakeError>>;

/// A flatbuffer table: its position, its vtable's position and size, and a name for errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    pub pos: usize,
    vtable: usize,
    vtable_len: usize,
    table_len: usize,
    pub name: &'static str,
    pub index: Option<usize>,
}

impl Table {
    pub(crate) fn label(&self) -> String {
        match self.index {
            Some(i) => format!("{} #{i}", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// The raw flatbuffer bytes with checked accessors.
#[derive(Clone, Copy)]
pub(crate) struct Fb<'a> {
    pub data: &'a [u8],
}

impl<'a> Fb<'a> {
    fn bytes<const N: usize>(&self, pos: usize, what: &str) -> Result<[u8; N]> {
        pos.checked_add(N)
            .and_then(|end| self.data.get(pos..end))
            .map(|b| b.try_into().unwrap())
            .ok_or_else(|| {
                WakeError::new(format!(
                    "{what} ({N} bytes) runs past the end of the data ({} bytes)",
                    self.data.len()
                ))
                .at(pos)
            })
    }

    fn u16_at(&self, pos: usize, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.bytes(pos, what)?))
    }

    fn u32_at(&self, pos: usize, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(pos, what)?))
    }

    /// The root table (`Model`).
    pub(crate) fn root(&self) -> Result<Table> {
        if self.data.len() < 8 {
            return Err(WakeError::new(format!(
                "{} bytes is too short for a TFLite flatbuffer",
                self.data.len()
            )));
        }
        if &self.data[4..8] != b"TFL3" {
            return Err(WakeError::new(format!(
                "not a TFLite model: file identifier is {:?}, expected \"TFL3\"",
                String::from_utf8_lossy(&self.data[4..8])
            ))
            .at(4));
        }
        let root = self.u32_at(0, "root offset")? as usize;
        self.table(root, "Model", None)
    }

    pub(crate) fn table(
        &self,
        pos: usize,
        name: &'static str,
        index: Option<usize>,
    ) -> Result<Table> {
        let label = Table {
            pos,
            vtable: 0,
            vtable_len: 0,
            table_len: 0,
            name,
            index,
        }
        .label();
        let err = |m: String| WakeError::new(m).table(label.clone()).at(pos);
        let soffset = i32::from_le_bytes(self.bytes(pos, "table")?) as i64;
        let vtable = pos as i64 - soffset;
        if vtable < 0 || vtable as usize >= self.data.len() {
            return Err(err(format!(
                "vtable offset {soffset} points outside the data"
            )));
        }
        let vtable = vtable as usize;
        let vtable_len = self.u16_at(vtable, "vtable size")? as usize;
        let table_len = self.u16_at(vtable + 2, "vtable size")? as usize;
        if vtable_len < 4 || !vtable_len.is_multiple_of(2) || vtable + vtable_len > self.data.len()
        {
            return Err(err(format!(
                "vtable at byte {vtable} has an invalid size {vtable_len}"
            )));
        }
        if table_len < 4 || pos + table_len > self.data.len() {
            return Err(err(format!(
                "table size {table_len} runs past the end of the data"
            )));
        }
        Ok(Table {
            pos,
            vtable,
            vtable_len,
            table_len,
            name,
            index,
        })
    }

    fn err(&self, t: &Table, at: usize, m: impl Into<String>) -> Box<WakeError> {
        WakeError::new(m).table(t.label()).at(at)
    }

    /// Position of field `idx` with `size` bytes inline, `None` when absent.
    fn field(&self, t: &Table, idx: usize, size: usize) -> Result<Option<usize>> {
        let slot = 4 + 2 * idx;
        if slot + 2 > t.vtable_len {
            return Ok(None);
        }
        let off = self.u16_at(t.vtable + slot, "vtable entry")? as usize;
        if off == 0 {
            return Ok(None);
        }
        if off < 4 || off + size > t.table_len {
            return Err(self.err(
                t,
                t.pos,
                format!(
                    "field {idx} at table offset {off} lies outside the table ({} bytes)",
                    t.table_len
                ),
            ));
        }
        Ok(Some(t.pos + off))
    }

    pub(crate) fn u8_field(&self, t: &Table, idx: usize, default: u8) -> Result<u8> {
        Ok(match self.field(t, idx, 1)? {
            Some(p) => self.data[p],
            None => default,
        })
    }

    pub(crate) fn i32_field(&self, t: &Table, idx: usize, default: i32) -> Result<i32> {
        Ok(match self.field(t, idx, 4)? {
            Some(p) => i32::from_le_bytes(self.bytes(p, "int field")?),
            None => default,
        })
    }

    pub(crate) fn u64_field(&self, t: &Table, idx: usize, default: u64) -> Result<u64> {
        Ok(match self.field(t, idx, 8)? {
            Some(p) => u64::from_le_bytes(self.bytes(p, "ulong field")?),
            None => default,
        })
    }

    /// Follows the offset in field `idx`.
    fn target(&self, t: &Table, idx: usize) -> Result<Option<usize>> {
        let Some(p) = self.field(t, idx, 4)? else {
            return Ok(None);
        };
        let rel = self.u32_at(p, "offset")? as usize;
        let target = p + rel;
        if rel == 0 || target >= self.data.len() {
            return Err(self.err(
                t,
                p,
                format!("field {idx}'s offset {rel} points outside the data"),
            ));
        }
        Ok(Some(target))
    }

    /// A vector of `elem`-byte elements: (first element's position, length).
    fn vector(&self, t: &Table, idx: usize, elem: usize) -> Result<Option<(usize, usize)>> {
        let Some(v) = self.target(t, idx)? else {
            return Ok(None);
        };
        let len = self.u32_at(v, "vector length")? as usize;
        let fits = len
            .checked_mul(elem)
            .and_then(|n| n.checked_add(v + 4))
            .is_some_and(|end| end <= self.data.len());
        if !fits {
            return Err(self.err(
                t,
                v,
                format!(
                    "field {idx}: vector of {len} {elem}-byte elements runs past the end of the data ({} bytes)",
                    self.data.len()
                ),
            ));
        }
        Ok(Some((v + 4, len)))
    }

    pub(crate) fn bytes_field(&self, t: &Table, idx: usize) -> Result<Option<Range<usize>>> {
        Ok(self.vector(t, idx, 1)?.map(|(p, n)| p..p + n))
    }

    pub(crate) fn i32_vec(&self, t: &Table, idx: usize) -> Result<Vec<i32>> {
        Ok(match self.vector(t, idx, 4)? {
            Some((p, n)) => (0..n)
                .map(|i| {
                    i32::from_le_bytes(self.data[p + 4 * i..p + 4 * i + 4].try_into().unwrap())
                })
                .collect(),
            None => Vec::new(),
        })
    }

    pub(crate) fn f32_vec(&self, t: &Table, idx: usize) -> Result<Vec<f32>> {
        Ok(self
            .i32_vec(t, idx)?
            .into_iter()
            .map(|b| f32::from_bits(b as u32))
            .collect())
    }

    pub(crate) fn i64_vec(&self, t: &Table, idx: usize) -> Result<Vec<i64>> {
        Ok(match self.vector(t, idx, 8)? {
            Some((p, n)) => (0..n)
                .map(|i| {
                    i64::from_le_bytes(self.data[p + 8 * i..p + 8 * i + 8].try_into().unwrap())
                })
                .collect(),
            None => Vec::new(),
        })
    }

    pub(crate) fn string(&self, t: &Table, idx: usize) -> Result<Option<String>> {
        Ok(self
            .bytes_field(t, idx)?
            .map(|r| String::from_utf8_lossy(&self.data[r]).into_owned()))
    }

    pub(crate) fn table_field(
        &self,
        t: &Table,
        idx: usize,
        name: &'static str,
    ) -> Result<Option<Table>> {
        match self.target(t, idx)? {
            Some(p) => Ok(Some(self.table(p, name, None)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn tables(&self, t: &Table, idx: usize, name: &'static str) -> Result<Vec<Table>> {
        let Some((p, n)) = self.vector(t, idx, 4)? else {
            return Ok(Vec::new());
        };
        (0..n)
            .map(|i| {
                let at = p + 4 * i;
                let rel = self.u32_at(at, "table offset")? as usize;
                if rel == 0 || at + rel >= self.data.len() {
                    return Err(self.err(
                        t,
                        at,
                        format!("{name} #{i}'s offset {rel} points outside the data"),
                    ));
                }
                self.table(at + rel, name, Some(i))
            })
            .collect()
    }
}

/// Tensor element types (`TensorType`).
pub(crate) mod dtype {
    pub const FLOAT32: u8 = 0;
    pub const INT32: u8 = 2;
    pub const UINT8: u8 = 3;
    pub const INT64: u8 = 4;
    pub const INT8: u8 = 9;
    pub const RESOURCE: u8 = 13;

    pub fn name(t: u8) -> &'static str {
        match t {
            FLOAT32 => "FLOAT32",
            1 => "FLOAT16",
            INT32 => "INT32",
            UINT8 => "UINT8",
            INT64 => "INT64",
            5 => "STRING",
            6 => "BOOL",
            7 => "INT16",
            INT8 => "INT8",
            RESOURCE => "RESOURCE",
            _ => "an unknown type",
        }
    }

    /// Bytes per element of the types the engine computes with.
    pub fn size(t: u8) -> Option<usize> {
        match t {
            UINT8 | INT8 => Some(1),
            INT32 | FLOAT32 => Some(4),
            INT64 => Some(8),
            _ => None,
        }
    }
}

/// A tensor's quantization: per-tensor (one scale) or per-channel along `dim`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub dim: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: u8,
    pub buffer: usize,
    pub quant: Quant,
    pub table: Table,
}

#[derive(Clone, Debug)]
pub(crate) struct Operator {
    pub opcode: usize,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: Option<Table>,
    pub table: Table,
}

#[derive(Clone, Debug)]
pub(crate) struct SubGraph {
    pub tensors: Vec<Tensor>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub operators: Vec<Operator>,
}

#[derive(Clone, Debug)]
pub(crate) struct OpCode {
    pub builtin: i32,
}

/// The parts of a TFLite `Model` the engine reads.
pub(crate) struct Model {
    pub opcodes: Vec<OpCode>,
    pub subgraphs: Vec<SubGraph>,
    /// Each buffer's bytes, as a range of the file (empty when the buffer has no data).
    pub buffers: Vec<Range<usize>>,
}

impl Model {
    pub(crate) fn parse(fb: &Fb<'_>) -> Result<Model> {
        let root = fb.root()?;
        let version = fb.i32_field(&root, 0, 0)?;
        if version != 3 {
            return Err(WakeError::new(format!(
                "schema version {version}, only version 3 is supported"
            ))
            .table("Model")
            .at(root.pos));
        }
        let opcodes = fb
            .tables(&root, 1, "OperatorCode")?
            .into_iter()
            .map(|t| {
                let deprecated = fb.u8_field(&t, 0, 0)? as i8 as i32;
                let builtin = fb.i32_field(&t, 3, 0)?;
                Ok(OpCode {
                    builtin: builtin.max(deprecated),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let buffers = fb
            .tables(&root, 4, "Buffer")?
            .into_iter()
            .map(|t| {
                let data = fb.bytes_field(&t, 0)?.unwrap_or(0..0);
                let offset = fb.u64_field(&t, 1, 0)?;
                let size = fb.u64_field(&t, 2, 0)?;
                if offset > 1 {
                    let end = offset.checked_add(size).filter(|&e| e <= fb.data.len() as u64);
                    return match end {
                        Some(end) => Ok(offset as usize..end as usize),
                        None => Err(fb.err(
                            &t,
                            t.pos,
                            format!("data at offset {offset} with size {size} runs past the end of the file"),
                        )),
                    };
                }
                Ok(data)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut subgraphs = Vec::new();
        for sg in fb.tables(&root, 2, "SubGraph")? {
            let mut tensors = Vec::new();
            for t in fb.tables(&sg, 0, "Tensor")? {
                let shape = fb.i32_vec(&t, 0)?;
                if shape.iter().any(|&d| d < 0) {
                    return Err(fb.err(
                        &t,
                        t.pos,
                        format!("negative dimension in shape {shape:?}"),
                    ));
                }
                let quant = match fb.table_field(&t, 4, "QuantizationParameters")? {
                    Some(q) => Quant {
                        scale: fb.f32_vec(&q, 2)?,
                        zero_point: fb.i64_vec(&q, 3)?,
                        dim: fb.i32_field(&q, 6, 0)?.max(0) as usize,
                    },
                    None => Quant::default(),
                };
                let buffer = fb.i32_field(&t, 2, 0)? as u32 as usize;
                if buffer >= buffers.len() {
                    return Err(fb.err(
                        &t,
                        t.pos,
                        format!(
                            "buffer index {buffer} out of range ({} buffers)",
                            buffers.len()
                        ),
                    ));
                }
                tensors.push(Tensor {
                    name: fb.string(&t, 3)?.unwrap_or_default(),
                    shape: shape.into_iter().map(|d| d as usize).collect(),
                    dtype: fb.u8_field(&t, 1, 0)?,
                    buffer,
                    quant,
                    table: t,
                });
            }
            let mut operators = Vec::new();
            for op in fb.tables(&sg, 3, "Operator")? {
                let opcode = fb.i32_field(&op, 0, 0)? as u32 as usize;
                if opcode >= opcodes.len() {
                    return Err(fb.err(
                        &op,
                        op.pos,
                        format!(
                            "opcode index {opcode} out of range ({} operator codes)",
                            opcodes.len()
                        ),
                    ));
                }
                let inputs = fb.i32_vec(&op, 1)?;
                let outputs = fb.i32_vec(&op, 2)?;
                for &i in inputs.iter().chain(&outputs) {
                    if i < -1 || i >= tensors.len() as i32 {
                        return Err(fb.err(
                            &op,
                            op.pos,
                            format!("tensor index {i} out of range ({} tensors)", tensors.len()),
                        ));
                    }
                }
                let options = fb.table_field(&op, 4, "BuiltinOptions")?;
                operators.push(Operator {
                    opcode,
                    inputs,
                    outputs,
                    options,
                    table: op,
                });
            }
            let inputs = fb.i32_vec(&sg, 1)?;
            let outputs = fb.i32_vec(&sg, 2)?;
            for &i in inputs.iter().chain(&outputs) {
                if i < 0 || i >= tensors.len() as i32 {
                    return Err(fb.err(
                        &sg,
                        sg.pos,
                        format!("input/output tensor index {i} out of range"),
                    ));
                }
            }
            subgraphs.push(SubGraph {
                tensors,
                inputs,
                outputs,
                operators,
            });
        }
        if subgraphs.is_empty() {
            return Err(WakeError::new("the model has no subgraph")
                .table("Model")
                .at(root.pos));
        }
        Ok(Model {
            opcodes,
            subgraphs,
            buffers,
        })
    }
}

/// Builtin operator codes (`BuiltinOperator`) the engine knows by name.
pub(crate) fn op_name(code: i32) -> &'static str {
    match code {
        0 => "ADD",
        1 => "AVERAGE_POOL_2D",
        2 => "CONCATENATION",
        3 => "CONV_2D",
        4 => "DEPTHWISE_CONV_2D",
        6 => "DEQUANTIZE",
        9 => "FULLY_CONNECTED",
        14 => "LOGISTIC",
        17 => "MAX_POOL_2D",
        18 => "MUL",
        19 => "RELU",
        22 => "RESHAPE",
        25 => "SOFTMAX",
        28 => "TANH",
        34 => "PAD",
        40 => "MEAN",
        41 => "SUB",
        45 => "STRIDED_SLICE",
        49 => "SPLIT",
        99 => "SQUARED_DIFFERENCE",
        102 => "SPLIT_V",
        114 => "QUANTIZE",
        129 => "CALL_ONCE",
        142 => "VAR_HANDLE",
        143 => "READ_VARIABLE",
        144 => "ASSIGN_VARIABLE",
        _ => "an unnamed builtin",
    }
}

/// An operator for messages: `LOGISTIC (code 14)`, or `code 200` when it has no name here.
pub(crate) fn op_label(code: i32) -> String {
    match op_name(code) {
        "an unnamed builtin" => format!("code {code}"),
        name => format!("{name} (code {code})"),
    }
}
