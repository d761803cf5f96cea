//! A microWakeWord model as a fixed plan of int8 operators, and its streaming state.
//!
//! [`Graph::build`] checks every operator against what the kernels support (types, shapes,
//! options, quantization) and precomputes what TensorFlow Lite computes in its `Prepare`
//! steps (per-channel quantized multipliers, activation ranges, the logistic table, slice
//! bounds). [`State`] holds the activations and the streaming variables; [`State::invoke`]
//! runs one inference step. The arithmetic is TensorFlow Lite's integer arithmetic: 32-bit
//! accumulators, `MultiplyByQuantizedMultiplier` (a rounding doubling high multiply and a
//! rounding right shift) to requantize, and a 256-entry table for LOGISTIC. DEPTHWISE_CONV_2D
//! rounds exact halves as TensorFlow Lite's optimized kernel does (upward in whole blocks of 8
//! channels), so that detections equal the reference's (the wake bench's `confusion` mode).
//!
//! Streaming state lives in resource variables: the model's `CALL_ONCE` subgraph assigns
//! their initial values (constant tensors), `READ_VARIABLE` and `ASSIGN_VARIABLE` read and
//! replace them every step.

use std::collections::HashMap;
use std::ops::Range;

use super::error::WakeError;
use super::tflite::{Fb, Model, Operator, Table, Tensor, dtype, op_label, op_name};

type Result<T> = std::result::Result<T, Box<WakeError>>;

/// The operators the engine runs (`BuiltinOperator` codes).
const SUPPORTED: &[(i32, &str)] = &[
    (2, "CONCATENATION"),
    (3, "CONV_2D"),
    (4, "DEPTHWISE_CONV_2D"),
    (9, "FULLY_CONNECTED"),
    (14, "LOGISTIC"),
    (22, "RESHAPE"),
    (45, "STRIDED_SLICE"),
    (102, "SPLIT_V"),
    (114, "QUANTIZE"),
    (129, "CALL_ONCE"),
    (142, "VAR_HANDLE"),
    (143, "READ_VARIABLE"),
    (144, "ASSIGN_VARIABLE"),
];

// ---------------------------------------------------------------------------------------------
// TensorFlow Lite's fixed-point helpers (tensorflow/lite/kernels/internal/common.h,
// quantization_util.cc), written from their definitions.
// ---------------------------------------------------------------------------------------------

/// `QuantizeMultiplier`: `m` as a Q31 significand in [2^30, 2^31) and a power-of-two shift.
pub(crate) fn quantize_multiplier(m: f64) -> (i32, i32) {
    if m == 0.0 {
        return (0, 0);
    }
    let (q, mut shift) = frexp(m);
    let mut q_fixed = (q * (1i64 << 31) as f64).round() as i64;
    if q_fixed == 1i64 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        shift = 0;
        q_fixed = 0;
    }
    if shift > 30 {
        shift = 30;
        q_fixed = (1i64 << 31) - 1;
    }
    (q_fixed as i32, shift)
}

/// `frexp` for finite positive `x`: (mantissa in [0.5, 1), exponent).
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale up first.
        let (m, e) = frexp(x * (1u64 << 54) as f64);
        return (m, e - 54);
    }
    let m = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (m, exp - 1022)
}

fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 {
        1i64 << 30
    } else {
        1 - (1i64 << 30)
    };
    // Division truncates toward zero, as in C++.
    ((ab + nudge) / (1i64 << 31)) as i32
}

fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + (x < 0) as i32;
    (x >> exponent) + (remainder > threshold) as i32
}

/// TensorFlow Lite's optimized kernels' `DepthwiseConvRound<kUpward>`: as
/// [`multiply_by_quantized_multiplier`], but the right shift rounds halves upward (toward +∞)
/// rather than away from zero.
pub(crate) fn multiply_by_quantized_multiplier_upward(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0);
    let right = (-shift).max(0);
    let high = saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), multiplier);
    if right == 0 {
        high
    } else {
        ((high as i64 + (1i64 << (right - 1))) >> right) as i32
    }
}

/// `MultiplyByQuantizedMultiplier`.
pub(crate) fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0);
    let right = (-shift).max(0);
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), multiplier),
        right,
    )
}

#[derive(Clone, Copy, Debug)]
struct Requant {
    multiplier: i32,
    shift: i32,
    /// Halves round upward in the right shift ([`multiply_by_quantized_multiplier_upward`]),
    /// not away from zero.
    upward: bool,
}

impl Requant {
    fn new(real: f64) -> Requant {
        let real = if real.is_finite() { real } else { 0.0 };
        let (multiplier, shift) = quantize_multiplier(real);
        Requant {
            multiplier,
            shift,
            upward: false,
        }
    }

    #[inline]
    fn apply(&self, acc: i32) -> i32 {
        if self.upward {
            multiply_by_quantized_multiplier_upward(acc, self.multiplier, self.shift)
        } else {
            multiply_by_quantized_multiplier(acc, self.multiplier, self.shift)
        }
    }
}

/// Channels per SIMD block of TensorFlow Lite's optimized depthwise convolution (see
/// [`Graph::conv`]'s requantization).
const DEPTHWISE_BLOCK: usize = 8;

/// Largest tensor the engine accepts, in elements (microWakeWord's are a few thousand).
const MAX_ELEMENTS: usize = 1 << 22;
/// Largest number of multiply-accumulates per step (the shipped models need about 50 000).
const MAX_MACS: usize = 1 << 24;
/// Largest total of activation bytes (the shipped models need about 5 000).
const MAX_ARENA: usize = 1 << 24;

/// Elements of `shape`, when every partial product stays within [`MAX_ELEMENTS`].
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let n = acc.checked_mul(d.max(1))?;
        (n <= MAX_ELEMENTS).then_some(n)
    })?;
    Some(shape.iter().product())
}

// ---------------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Conv,
    Depthwise { multiplier: usize },
}

#[derive(Debug)]
struct ConvOp {
    kind: Kind,
    input: usize,
    output: usize,
    filter: Range<usize>,
    bias: Option<Range<usize>>,
    /// Input height, width, channels.
    ih: usize,
    iw: usize,
    ic: usize,
    /// Output height, width, channels.
    oh: usize,
    ow: usize,
    oc: usize,
    kh: usize,
    kw: usize,
    stride: (usize, usize),
    dilation: (usize, usize),
    pad: (isize, isize),
    input_offset: i32,
    output_offset: i32,
    act: (i32, i32),
    requant: Vec<Requant>,
}

#[derive(Debug)]
enum Op {
    Conv(Box<ConvOp>),
    FullyConnected {
        input: usize,
        output: usize,
        weights: Range<usize>,
        bias: Option<Range<usize>>,
        rows: usize,
        depth: usize,
        input_offset: i32,
        filter_offset: i32,
        output_offset: i32,
        act: (i32, i32),
        requant: Requant,
    },
    Logistic {
        input: usize,
        output: usize,
        table: Box<[u8; 256]>,
    },
    Quantize {
        input: usize,
        output: usize,
        input_zp: i32,
        output_zp: i32,
        requant: Requant,
        range: (i32, i32),
    },
    Copy {
        input: usize,
        output: usize,
    },
    /// CONCATENATION (several inputs, one output) and SPLIT_V (one input, several outputs):
    /// `outer` rows, each the parts' chunks of `chunks[i]` bytes one after the other.
    Concat {
        inputs: Vec<usize>,
        output: usize,
        outer: usize,
        chunks: Vec<usize>,
    },
    Split {
        input: usize,
        outputs: Vec<usize>,
        outer: usize,
        chunks: Vec<usize>,
    },
    Slice {
        input: usize,
        output: usize,
        /// Input dims (padded to 4), and per dim start and stride; output dims.
        in_dims: [usize; 4],
        start: [isize; 4],
        stride: [isize; 4],
        out_dims: [usize; 4],
    },
    Read {
        var: usize,
        output: usize,
    },
    Assign {
        var: usize,
        input: usize,
    },
}

/// Where a tensor's data lives.
#[derive(Clone, Debug)]
enum Storage {
    /// A constant: a range of the model file.
    Const(Range<usize>),
    /// An activation in the state's arena, of this many bytes.
    Arena(usize),
    /// A resource handle: the variable's index.
    Resource(usize),
    /// Never read or written by a supported operator.
    Unused,
}

/// The model as a plan of operators with everything `Prepare` computes.
pub(crate) struct Graph {
    ops: Vec<Op>,
    storage: Vec<Storage>,
    var_init: Vec<Range<usize>>,
    pub input: usize,
    pub output: usize,
    /// Input: frames per step, features per frame, scale, zero point.
    pub input_frames: usize,
    pub input_features: usize,
    pub input_scale: f32,
    pub input_zero_point: i32,
    /// Output: scale, zero point, whether the output is unsigned.
    pub output_scale: f32,
    pub output_zero_point: i32,
    pub output_unsigned: bool,
}

struct Ctx<'a, 'b> {
    fb: &'a Fb<'b>,
    model: &'a Model,
    tensors: &'a [Tensor],
}

impl Ctx<'_, '_> {
    fn err(&self, op: &Operator, msg: impl Into<String>) -> Box<WakeError> {
        let name = op_name(self.model.opcodes[op.opcode].builtin);
        WakeError::new(format!("{name}: {}", msg.into()))
            .table(op.table.label())
            .at(op.table.pos)
    }

    fn tensor(&self, op: &Operator, idx: i32) -> Result<(usize, &Tensor)> {
        if idx < 0 {
            return Err(self.err(op, "a required tensor is missing (index -1)"));
        }
        Ok((idx as usize, &self.tensors[idx as usize]))
    }

    fn input(&self, op: &Operator, i: usize) -> Result<(usize, &Tensor)> {
        let idx = *op.inputs.get(i).ok_or_else(|| {
            self.err(
                op,
                format!("has {} inputs, needs at least {}", op.inputs.len(), i + 1),
            )
        })?;
        self.tensor(op, idx)
    }

    fn output(&self, op: &Operator, i: usize) -> Result<(usize, &Tensor)> {
        let idx = *op.outputs.get(i).ok_or_else(|| {
            self.err(
                op,
                format!("has {} outputs, needs at least {}", op.outputs.len(), i + 1),
            )
        })?;
        self.tensor(op, idx)
    }

    /// A constant tensor's bytes range, checked against its shape and element size.
    fn constant(&self, op: &Operator, t: &Tensor) -> Result<Range<usize>> {
        let r = self.model.buffers[t.buffer].clone();
        let elem = dtype::size(t.dtype).unwrap_or(1);
        let want = t.shape.iter().product::<usize>().checked_mul(elem);
        if r.is_empty() || Some(r.len()) != want {
            return Err(self.err(
                op,
                format!(
                    "tensor {:?} should be a constant of {} bytes ({:?} {}), its buffer has {}",
                    t.name,
                    want.unwrap_or(usize::MAX),
                    t.shape,
                    dtype::name(t.dtype),
                    r.len()
                ),
            ));
        }
        Ok(r)
    }

    fn const_i32s(&self, op: &Operator, t: &Tensor) -> Result<Vec<i32>> {
        if t.dtype != dtype::INT32 {
            return Err(self.err(
                op,
                format!(
                    "tensor {:?} must be INT32, is {}",
                    t.name,
                    dtype::name(t.dtype)
                ),
            ));
        }
        let r = self.constant(op, t)?;
        Ok(self.fb.data[r]
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    fn scale(&self, op: &Operator, t: &Tensor) -> Result<(f32, i32)> {
        match (t.quant.scale.first(), t.quant.zero_point.first()) {
            (Some(&s), zp)
                if s > 0.0
                    && s.is_finite()
                    && (-128..=255).contains(&zp.copied().unwrap_or(0)) =>
            {
                Ok((s, zp.copied().unwrap_or(0) as i32))
            }
            _ => Err(self.err(
                op,
                format!(
                    "tensor {:?} has no usable quantization (a positive scale, a zero point from -128 to 255)",
                    t.name
                ),
            )),
        }
    }

    fn int8(&self, op: &Operator, t: &Tensor) -> Result<()> {
        if t.dtype != dtype::INT8 {
            return Err(self.err(
                op,
                format!(
                    "tensor {:?} is {}, only INT8 is supported here",
                    t.name,
                    dtype::name(t.dtype)
                ),
            ));
        }
        Ok(())
    }

    fn options(&self, op: &Operator) -> Result<Table> {
        op.options
            .ok_or_else(|| self.err(op, "has no options table"))
    }

    fn activation(&self, op: &Operator, code: u8, out: &Tensor) -> Result<(i32, i32)> {
        let (scale, zp) = self.scale(op, out)?;
        let q = |v: f32| zp + (v / scale).round() as i32;
        match code {
            0 => Ok((-128, 127)),
            1 => Ok((q(0.0).max(-128), 127)),
            3 => Ok((q(0.0).max(-128), q(6.0).min(127))),
            2 => Ok((q(-1.0).max(-128), q(1.0).min(127))),
            _ => Err(self.err(op, format!("fused activation {code} is not supported"))),
        }
    }
}

fn dims4(shape: &[usize]) -> Option<[usize; 4]> {
    if shape.len() > 4 {
        return None;
    }
    let mut d = [1usize; 4];
    d[4 - shape.len()..].copy_from_slice(shape);
    Some(d)
}

impl Graph {
    pub(crate) fn build(fb: &Fb<'_>, model: &Model) -> Result<Graph> {
        let main = &model.subgraphs[0];
        for (k, sg) in model.subgraphs.iter().enumerate() {
            for (i, t) in sg.tensors.iter().enumerate() {
                if elements(&t.shape).is_none() {
                    return Err(WakeError::new(format!(
                        "tensor {:?} of shape {:?} is larger than the {MAX_ELEMENTS} elements the engine accepts",
                        t.name, t.shape
                    ))
                    .table(format!("Tensor #{i} of SubGraph #{k}"))
                    .at(t.table.pos));
                }
            }
        }
        let cx = Ctx {
            fb,
            model,
            tensors: &main.tensors,
        };
        // Every operator first: an unsupported one is the error a user most needs to see.
        for sg in &model.subgraphs {
            for op in &sg.operators {
                let code = model.opcodes[op.opcode].builtin;
                if !SUPPORTED.iter().any(|&(c, _)| c == code) {
                    let names: Vec<&str> = SUPPORTED.iter().map(|&(_, n)| n).collect();
                    return Err(WakeError::new(format!(
                        "operator {} is not supported (supported: {})",
                        op_label(code),
                        names.join(", ")
                    ))
                    .table(op.table.label())
                    .at(op.table.pos));
                }
            }
        }

        let mut vars: HashMap<String, usize> = HashMap::new();
        let mut var_init: Vec<Option<Range<usize>>> = Vec::new();
        let var_of = |fb: &Fb<'_>,
                      op: &Operator,
                      vars: &mut HashMap<String, usize>,
                      init: &mut Vec<Option<Range<usize>>>|
         -> Result<usize> {
            let t = op.options.ok_or_else(|| {
                WakeError::new("VAR_HANDLE has no options")
                    .table(op.table.label())
                    .at(op.table.pos)
            })?;
            let key = format!(
                "{}/{}",
                fb.string(&t, 0)?.unwrap_or_default(),
                fb.string(&t, 1)?.unwrap_or_default()
            );
            let n = vars.len();
            let id = *vars.entry(key).or_insert(n);
            if id == init.len() {
                init.push(None);
            }
            Ok(id)
        };

        // CALL_ONCE: the initialization subgraph assigns constants to the variables.
        for op in &main.operators {
            if model.opcodes[op.opcode].builtin != 129 {
                continue;
            }
            let opts = cx.options(op)?;
            let index = fb.i32_field(&opts, 0, 0)?;
            let sg = usize::try_from(index)
                .ok()
                .filter(|&i| i > 0 && i < model.subgraphs.len())
                .ok_or_else(|| cx.err(op, format!("init subgraph index {index} out of range")))?;
            let init_sg = &model.subgraphs[sg];
            let icx = Ctx {
                fb,
                model,
                tensors: &init_sg.tensors,
            };
            let mut handles: HashMap<usize, usize> = HashMap::new();
            for iop in &init_sg.operators {
                match model.opcodes[iop.opcode].builtin {
                    142 => {
                        let (t, _) = icx.output(iop, 0)?;
                        handles.insert(t, var_of(fb, iop, &mut vars, &mut var_init)?);
                    }
                    144 => {
                        let (h, _) = icx.input(iop, 0)?;
                        let (_, value) = icx.input(iop, 1)?;
                        let var = *handles
                            .get(&h)
                            .ok_or_else(|| icx.err(iop, "assigns to a tensor that is not a variable handle"))?;
                        var_init[var] = Some(icx.constant(iop, value)?);
                    }
                    c => {
                        return Err(icx.err(
                            iop,
                            format!("only VAR_HANDLE and ASSIGN_VARIABLE are supported in an initialization subgraph, found {}", op_name(c)),
                        ))
                    }
                }
            }
        }

        let mut storage: Vec<Storage> = main
            .tensors
            .iter()
            .map(|t| {
                let r = &model.buffers[t.buffer];
                if !r.is_empty() {
                    Storage::Const(r.clone())
                } else {
                    Storage::Unused
                }
            })
            .collect();
        let arena = |storage: &mut Vec<Storage>, op: &Operator, idx: usize| -> Result<()> {
            let t = &main.tensors[idx];
            if matches!(storage[idx], Storage::Const(_)) {
                return Err(cx.err(op, format!("writes to constant tensor {:?}", t.name)));
            }
            if t.dtype != dtype::INT8 && t.dtype != dtype::UINT8 {
                return Err(cx.err(
                    op,
                    format!(
                        "tensor {:?} is {}, only INT8 and UINT8 activations are supported",
                        t.name,
                        dtype::name(t.dtype)
                    ),
                ));
            }
            storage[idx] = Storage::Arena(t.shape.iter().product());
            Ok(())
        };
        if main.inputs.len() != 1 || main.outputs.len() != 1 {
            return Err(WakeError::new(format!(
                "the main subgraph has {} inputs and {} outputs, a wake word model has one of each",
                main.inputs.len(),
                main.outputs.len()
            ))
            .table("SubGraph #0"));
        }
        let input = main.inputs[0] as usize;
        let output = main.outputs[0] as usize;
        {
            let t = &main.tensors[input];
            if t.dtype != dtype::INT8 {
                return Err(WakeError::new(format!(
                    "the input tensor {:?} is {}, expected INT8",
                    t.name,
                    dtype::name(t.dtype)
                ))
                .table(format!("Tensor #{input}"))
                .at(t.table.pos));
            }
            storage[input] = Storage::Arena(t.shape.iter().product());
        }

        let mut ops = Vec::new();
        for op in &main.operators {
            let code = model.opcodes[op.opcode].builtin;
            match code {
                129 => {}
                142 => {
                    let (t, _) = cx.output(op, 0)?;
                    storage[t] = Storage::Resource(var_of(fb, op, &mut vars, &mut var_init)?);
                }
                143 | 144 => {
                    let (h, _) = cx.input(op, 0)?;
                    let Storage::Resource(var) = storage[h] else {
                        return Err(cx.err(op, "the first input is not a variable handle"));
                    };
                    if code == 143 {
                        let (out, _) = cx.output(op, 0)?;
                        arena(&mut storage, op, out)?;
                        ops.push(Op::Read { var, output: out });
                    } else {
                        let (inp, _) = cx.input(op, 1)?;
                        ops.push(Op::Assign { var, input: inp });
                    }
                }
                3 | 4 => {
                    let conv = Self::conv(&cx, op, code == 4)?;
                    arena(&mut storage, op, conv.output)?;
                    ops.push(Op::Conv(Box::new(conv)));
                }
                9 => {
                    let (i, it) = cx.input(op, 0)?;
                    let (_, wt) = cx.input(op, 1)?;
                    let (o, ot) = cx.output(op, 0)?;
                    cx.int8(op, it)?;
                    cx.int8(op, wt)?;
                    cx.int8(op, ot)?;
                    let opts = cx.options(op)?;
                    if fb.u8_field(&opts, 1, 0)? != 0 {
                        return Err(cx.err(op, "only the default weights format is supported"));
                    }
                    if wt.shape.len() != 2 {
                        return Err(cx.err(
                            op,
                            format!("weights of shape {:?}, expected 2 dimensions", wt.shape),
                        ));
                    }
                    let (rows, depth) = (wt.shape[0], wt.shape[1]);
                    let in_len: usize = it.shape.iter().product();
                    let out_len: usize = ot.shape.iter().product();
                    if depth == 0 || in_len != depth || out_len != rows {
                        return Err(cx.err(
                            op,
                            format!("input {:?}, weights {:?} and output {:?} do not fit (one batch only)", it.shape, wt.shape, ot.shape),
                        ));
                    }
                    let bias = match op.inputs.get(2) {
                        Some(&b) if b >= 0 => {
                            let bt = &main.tensors[b as usize];
                            let v = cx.const_i32s(op, bt)?;
                            if v.len() != rows {
                                return Err(cx.err(
                                    op,
                                    format!("bias has {} values for {rows} outputs", v.len()),
                                ));
                            }
                            Some(cx.constant(op, bt)?)
                        }
                        _ => None,
                    };
                    let (is, izp) = cx.scale(op, it)?;
                    let (ws, wzp) = cx.scale(op, wt)?;
                    let (os, ozp) = cx.scale(op, ot)?;
                    if wt.quant.scale.len() != 1 {
                        return Err(cx.err(
                            op,
                            "per-channel weights are not supported in FULLY_CONNECTED",
                        ));
                    }
                    let act = cx.activation(op, fb.u8_field(&opts, 0, 0)?, ot)?;
                    arena(&mut storage, op, o)?;
                    ops.push(Op::FullyConnected {
                        input: i,
                        output: o,
                        weights: cx.constant(op, wt)?,
                        bias,
                        rows,
                        depth,
                        input_offset: -izp,
                        filter_offset: -wzp,
                        output_offset: ozp,
                        act,
                        requant: Requant::new(is as f64 * ws as f64 / os as f64),
                    });
                }
                14 => {
                    let (i, it) = cx.input(op, 0)?;
                    let (o, ot) = cx.output(op, 0)?;
                    cx.int8(op, it)?;
                    cx.int8(op, ot)?;
                    let (is, izp) = cx.scale(op, it)?;
                    let (os, ozp) = cx.scale(op, ot)?;
                    let mut table = Box::new([0u8; 256]);
                    let inverse = 1.0f32 / os;
                    for v in -128i32..=127 {
                        let x = is * (v - izp) as f32;
                        let y = 1.0f32 / (1.0f32 + (-x).exp());
                        let q = ((y * inverse).round() + ozp as f32) as i32;
                        table[v as i8 as u8 as usize] = q.clamp(-128, 127) as i8 as u8;
                    }
                    arena(&mut storage, op, o)?;
                    ops.push(Op::Logistic {
                        input: i,
                        output: o,
                        table,
                    });
                }
                114 => {
                    let (i, it) = cx.input(op, 0)?;
                    let (o, ot) = cx.output(op, 0)?;
                    cx.int8(op, it)?;
                    let range = match ot.dtype {
                        dtype::INT8 => (-128, 127),
                        dtype::UINT8 => (0, 255),
                        t => {
                            return Err(cx.err(
                                op,
                                format!("output type {} is not supported", dtype::name(t)),
                            ));
                        }
                    };
                    let (is, izp) = cx.scale(op, it)?;
                    let (os, ozp) = cx.scale(op, ot)?;
                    arena(&mut storage, op, o)?;
                    ops.push(Op::Quantize {
                        input: i,
                        output: o,
                        input_zp: izp,
                        output_zp: ozp,
                        requant: Requant::new(is as f64 / os as f64),
                        range,
                    });
                }
                22 => {
                    let (i, it) = cx.input(op, 0)?;
                    let (o, ot) = cx.output(op, 0)?;
                    if it.shape.iter().product::<usize>() != ot.shape.iter().product::<usize>()
                        || it.dtype != ot.dtype
                    {
                        return Err(cx.err(
                            op,
                            format!("cannot reshape {:?} to {:?}", it.shape, ot.shape),
                        ));
                    }
                    arena(&mut storage, op, o)?;
                    ops.push(Op::Copy {
                        input: i,
                        output: o,
                    });
                }
                2 => {
                    let (o, ot) = cx.output(op, 0)?;
                    let opts = cx.options(op)?;
                    let rank = ot.shape.len() as i32;
                    let mut axis = fb.i32_field(&opts, 0, 0)?;
                    if axis < 0 {
                        axis += rank;
                    }
                    if axis < 0 || axis >= rank {
                        return Err(cx.err(op, format!("axis {axis} out of range for rank {rank}")));
                    }
                    if fb.u8_field(&opts, 1, 0)? != 0 {
                        return Err(cx.err(op, "a fused activation is not supported"));
                    }
                    let axis = axis as usize;
                    let oq = cx.scale(op, ot)?;
                    let mut inputs = Vec::new();
                    let mut chunks = Vec::new();
                    let mut along = 0;
                    for k in 0..op.inputs.len() {
                        let (i, it) = cx.input(op, k)?;
                        cx.int8(op, it)?;
                        if cx.scale(op, it)? != oq {
                            return Err(cx.err(op, format!("input {:?} is quantized differently from the output (requantizing concatenation is not supported)", it.name)));
                        }
                        if it.shape.len() != ot.shape.len()
                            || (0..it.shape.len()).any(|d| d != axis && it.shape[d] != ot.shape[d])
                        {
                            return Err(cx.err(
                                op,
                                format!(
                                    "input shape {:?} does not fit output {:?}",
                                    it.shape, ot.shape
                                ),
                            ));
                        }
                        along += it.shape[axis];
                        inputs.push(i);
                        chunks.push(it.shape[axis..].iter().product());
                    }
                    if along != ot.shape[axis] {
                        return Err(cx.err(op, "the inputs do not add up to the output"));
                    }
                    arena(&mut storage, op, o)?;
                    ops.push(Op::Concat {
                        inputs,
                        output: o,
                        outer: ot.shape[..axis].iter().product(),
                        chunks,
                    });
                }
                102 => {
                    let (i, it) = cx.input(op, 0)?;
                    let (_, st) = cx.input(op, 1)?;
                    let (_, at) = cx.input(op, 2)?;
                    cx.int8(op, it)?;
                    let sizes = cx.const_i32s(op, st)?;
                    let axis_v = cx.const_i32s(op, at)?;
                    let rank = it.shape.len() as i32;
                    let mut axis = *axis_v.first().ok_or_else(|| cx.err(op, "axis is empty"))?;
                    if axis < 0 {
                        axis += rank;
                    }
                    if axis < 0 || axis >= rank {
                        return Err(cx.err(op, format!("axis {axis} out of range for rank {rank}")));
                    }
                    let axis = axis as usize;
                    if sizes.len() != op.outputs.len() {
                        return Err(cx.err(op, "size_splits and outputs differ in number"));
                    }
                    let iq = cx.scale(op, it)?;
                    let mut outputs = Vec::new();
                    let mut chunks = Vec::new();
                    let mut along = 0;
                    for (k, &size) in sizes.iter().enumerate() {
                        let (o, ot) = cx.output(op, k)?;
                        cx.int8(op, ot)?;
                        if cx.scale(op, ot)? != iq
                            || ot.shape.len() != it.shape.len()
                            || (0..it.shape.len()).any(|d| d != axis && it.shape[d] != ot.shape[d])
                            || ot.shape[axis] as i64 != size as i64
                        {
                            return Err(cx.err(
                                op,
                                format!(
                                    "output {:?} {:?} does not fit input {:?}",
                                    ot.name, ot.shape, it.shape
                                ),
                            ));
                        }
                        along += ot.shape[axis];
                        arena(&mut storage, op, o)?;
                        outputs.push(o);
                        chunks.push(ot.shape[axis..].iter().product());
                    }
                    if along != it.shape[axis] {
                        return Err(cx.err(op, "the outputs do not add up to the input"));
                    }
                    ops.push(Op::Split {
                        input: i,
                        outputs,
                        outer: it.shape[..axis].iter().product(),
                        chunks,
                    });
                }
                45 => {
                    let (i, it) = cx.input(op, 0)?;
                    let (o, ot) = cx.output(op, 0)?;
                    cx.int8(op, it)?;
                    cx.int8(op, ot)?;
                    if cx.scale(op, it)? != cx.scale(op, ot)? {
                        return Err(cx.err(op, "input and output are quantized differently"));
                    }
                    let begin = cx.const_i32s(op, cx.input(op, 1)?.1)?;
                    let end = cx.const_i32s(op, cx.input(op, 2)?.1)?;
                    let strides = cx.const_i32s(op, cx.input(op, 3)?.1)?;
                    let opts = cx.options(op)?;
                    let begin_mask = fb.i32_field(&opts, 0, 0)?;
                    let end_mask = fb.i32_field(&opts, 1, 0)?;
                    for (f, what) in [
                        (2, "ellipsis_mask"),
                        (3, "new_axis_mask"),
                        (4, "shrink_axis_mask"),
                    ] {
                        if fb.i32_field(&opts, f, 0)? != 0 {
                            return Err(cx.err(op, format!("{what} is not supported")));
                        }
                    }
                    if fb.u8_field(&opts, 5, 0)? != 0 {
                        return Err(cx.err(op, "offset is not supported"));
                    }
                    let n = it.shape.len();
                    if n > 4 || begin.len() != n || end.len() != n || strides.len() != n {
                        return Err(cx.err(
                            op,
                            format!("begin/end/strides do not match the input's {n} dimensions"),
                        ));
                    }
                    let (mut start4, mut stride4, mut out4) =
                        ([0isize; 4], [1isize; 4], [1usize; 4]);
                    let in4 = dims4(&it.shape).unwrap();
                    for d in 0..n {
                        let dim = it.shape[d] as isize;
                        let s = strides[d] as isize;
                        if s == 0 {
                            return Err(cx.err(op, "a stride of 0"));
                        }
                        let clamp = |v: isize| {
                            if s > 0 {
                                v.clamp(0, dim)
                            } else {
                                v.clamp(-1, dim - 1)
                            }
                        };
                        let start = if begin_mask & (1 << d) != 0 {
                            if s > 0 { 0 } else { dim - 1 }
                        } else {
                            let b = begin[d] as isize;
                            clamp(if b < 0 { b + dim } else { b })
                        };
                        let stop = if end_mask & (1 << d) != 0 {
                            if s > 0 { dim } else { -1 }
                        } else {
                            let e = end[d] as isize;
                            clamp(if e < 0 { e + dim } else { e })
                        };
                        let count = if (s > 0 && stop > start) || (s < 0 && stop < start) {
                            ((stop - start).abs() + s.abs() - 1) / s.abs()
                        } else {
                            0
                        };
                        let k = 4 - n + d;
                        start4[k] = start;
                        stride4[k] = s;
                        out4[k] = count as usize;
                    }
                    if dims4(&ot.shape) != Some(out4) {
                        return Err(cx.err(
                            op,
                            format!("the slice is {out4:?}, the output tensor {:?}", ot.shape),
                        ));
                    }
                    arena(&mut storage, op, o)?;
                    ops.push(Op::Slice {
                        input: i,
                        output: o,
                        in_dims: in4,
                        start: start4,
                        stride: stride4,
                        out_dims: out4,
                    });
                }
                _ => unreachable!("checked against SUPPORTED"),
            }
        }

        // Every operand must now have a home, and variables an initial value.
        let mut var_init_checked = Vec::new();
        for (k, init) in var_init.into_iter().enumerate() {
            match init {
                Some(r) => var_init_checked.push(r),
                None => {
                    return Err(WakeError::new(format!(
                        "variable #{k} is never initialized (no CALL_ONCE assignment)"
                    ))
                    .table("SubGraph #0"));
                }
            }
        }
        let size_of = |s: &Storage| match s {
            Storage::Const(r) => Some(r.len()),
            Storage::Arena(n) => Some(*n),
            _ => None,
        };
        for op in &ops {
            let (reads, writes): (Vec<usize>, Vec<usize>) = match op {
                Op::Conv(c) => (vec![c.input], vec![c.output]),
                Op::FullyConnected { input, output, .. }
                | Op::Logistic { input, output, .. }
                | Op::Quantize { input, output, .. }
                | Op::Copy { input, output }
                | Op::Slice { input, output, .. } => (vec![*input], vec![*output]),
                Op::Concat { inputs, output, .. } => (inputs.clone(), vec![*output]),
                Op::Split { input, outputs, .. } => (vec![*input], outputs.clone()),
                Op::Read { var, output } => {
                    if size_of(&storage[*output]) != Some(var_init_checked[*var].len()) {
                        return Err(WakeError::new(format!(
                            "READ_VARIABLE into tensor {:?} of a different size than the variable",
                            main.tensors[*output].name
                        ))
                        .table("SubGraph #0"));
                    }
                    (vec![], vec![*output])
                }
                Op::Assign { var, input } => {
                    if size_of(&storage[*input]) != Some(var_init_checked[*var].len()) {
                        return Err(WakeError::new(format!(
                            "ASSIGN_VARIABLE from tensor {:?} of a different size than the variable",
                            main.tensors[*input].name
                        ))
                        .table("SubGraph #0"));
                    }
                    (vec![*input], vec![])
                }
            };
            for t in reads.iter().chain(&writes) {
                if !matches!(storage[*t], Storage::Const(_) | Storage::Arena(_)) {
                    return Err(WakeError::new(format!(
                        "tensor {:?} is read before any operator writes it",
                        main.tensors[*t].name
                    ))
                    .table(format!("Tensor #{t}"))
                    .at(main.tensors[*t].table.pos));
                }
                let want = elements(&main.tensors[*t].shape);
                if size_of(&storage[*t]) != want {
                    return Err(WakeError::new(format!(
                        "tensor {:?} holds {:?} bytes, its shape {:?} needs {:?}",
                        main.tensors[*t].name,
                        size_of(&storage[*t]),
                        main.tensors[*t].shape,
                        want
                    ))
                    .table(format!("Tensor #{t}"))
                    .at(main.tensors[*t].table.pos));
                }
            }
        }
        if !matches!(storage[output], Storage::Arena(_)) {
            return Err(WakeError::new("no operator writes the output tensor").table("SubGraph #0"));
        }

        // The whole model's cost, not just each operator's.
        let macs: usize = ops
            .iter()
            .map(|op| match op {
                Op::Conv(c) => {
                    let ic = if c.kind == Kind::Conv { c.ic } else { 1 };
                    [c.oh, c.ow, c.oc, c.kh, c.kw, ic]
                        .iter()
                        .try_fold(1usize, |a, &d| a.checked_mul(d))
                        .unwrap_or(usize::MAX)
                }
                Op::FullyConnected { rows, depth, .. } => rows.saturating_mul(*depth),
                _ => 0,
            })
            .fold(0usize, usize::saturating_add);
        let arena_bytes: usize = storage
            .iter()
            .map(|s| match s {
                Storage::Arena(n) => *n,
                _ => 0,
            })
            .fold(0usize, usize::saturating_add);
        if macs > MAX_MACS || arena_bytes > MAX_ARENA {
            return Err(WakeError::new(format!(
                "the model needs {macs} multiply-accumulates and {arena_bytes} bytes of activations per step; the engine accepts at most {MAX_MACS} and {MAX_ARENA}"
            ))
            .table("SubGraph #0"));
        }

        let it = &main.tensors[input];
        let ot = &main.tensors[output];
        let (input_frames, input_features) = match it.shape.as_slice() {
            [1, frames, features] if (1..=100).contains(frames) => (*frames, *features),
            s => {
                return Err(WakeError::new(format!(
                    "input shape {s:?}, expected [1, frames, features] with 1 to 100 frames"
                ))
                .table(format!("Tensor #{input}"))
                .at(it.table.pos));
            }
        };
        if ot.shape.iter().product::<usize>() != 1 {
            return Err(WakeError::new(format!(
                "output shape {:?}, expected one probability",
                ot.shape
            ))
            .table(format!("Tensor #{output}"))
            .at(ot.table.pos));
        }
        let q = |t: &Tensor, idx: usize| -> Result<(f32, i32)> {
            match t.quant.scale.first() {
                Some(&s) if s > 0.0 => {
                    Ok((s, t.quant.zero_point.first().copied().unwrap_or(0) as i32))
                }
                _ => Err(
                    WakeError::new(format!("tensor {:?} is not quantized", t.name))
                        .table(format!("Tensor #{idx}"))
                        .at(t.table.pos),
                ),
            }
        };
        let (input_scale, input_zero_point) = q(it, input)?;
        let (output_scale, output_zero_point) = q(ot, output)?;
        Ok(Graph {
            ops,
            storage,
            var_init: var_init_checked,
            input,
            output,
            input_frames,
            input_features,
            input_scale,
            input_zero_point,
            output_scale,
            output_zero_point,
            output_unsigned: ot.dtype == dtype::UINT8,
        })
    }

    fn conv(cx: &Ctx<'_, '_>, op: &Operator, depthwise: bool) -> Result<ConvOp> {
        let (i, it) = cx.input(op, 0)?;
        let (_, ft) = cx.input(op, 1)?;
        let (o, ot) = cx.output(op, 0)?;
        cx.int8(op, it)?;
        cx.int8(op, ft)?;
        cx.int8(op, ot)?;
        let fb = cx.fb;
        let opts = cx.options(op)?;
        // Conv2DOptions: padding, stride_w, stride_h, activation, dilation_w, dilation_h.
        // DepthwiseConv2DOptions: padding, stride_w, stride_h, depth_multiplier, activation,
        // dilation_w, dilation_h.
        let padding = fb.u8_field(&opts, 0, 0)?;
        let sw = fb.i32_field(&opts, 1, 0)?;
        let sh = fb.i32_field(&opts, 2, 0)?;
        let (act_code, dw, dh) = if depthwise {
            (
                fb.u8_field(&opts, 4, 0)?,
                fb.i32_field(&opts, 5, 1)?,
                fb.i32_field(&opts, 6, 1)?,
            )
        } else {
            (
                fb.u8_field(&opts, 3, 0)?,
                fb.i32_field(&opts, 4, 1)?,
                fb.i32_field(&opts, 5, 1)?,
            )
        };
        if sw < 1 || sh < 1 || dw < 1 || dh < 1 || padding > 1 {
            return Err(cx.err(op, format!("strides ({sh}, {sw}), dilations ({dh}, {dw}) or padding {padding} not supported")));
        }
        let (ish, fsh, osh) = (&it.shape, &ft.shape, &ot.shape);
        if ish.len() != 4 || fsh.len() != 4 || osh.len() != 4 || ish[0] != 1 || osh[0] != 1 {
            return Err(cx.err(op, format!("shapes input {ish:?}, filter {fsh:?}, output {osh:?}: expected 4 dimensions, batch 1")));
        }
        let (ih, iw, ic) = (ish[1], ish[2], ish[3]);
        let (oh, ow, oc) = (osh[1], osh[2], osh[3]);
        let (kh, kw) = (fsh[1], fsh[2]);
        let kind = if depthwise {
            if fsh[0] != 1 || fsh[3] != oc || ic == 0 || oc % ic != 0 {
                return Err(cx.err(
                    op,
                    format!("filter {fsh:?} does not fit input {ish:?} and output {osh:?}"),
                ));
            }
            Kind::Depthwise {
                multiplier: oc / ic,
            }
        } else {
            if fsh[0] != oc || fsh[3] != ic {
                return Err(cx.err(
                    op,
                    format!("filter {fsh:?} does not fit input {ish:?} and output {osh:?}"),
                ));
            }
            Kind::Conv
        };
        let (sh, sw, dh, dw) = (sh as usize, sw as usize, dh as usize, dw as usize);
        let out_size = |input: usize, k: usize, s: usize, d: usize| -> Option<usize> {
            let eff = (k.checked_sub(1)?) * d + 1;
            if padding == 0 {
                Some(input.div_ceil(s))
            } else {
                (input + s).checked_sub(eff).map(|v| v / s)
            }
        };
        let pad = |input: usize, k: usize, s: usize, d: usize, out: usize| -> isize {
            let eff = ((k - 1) * d + 1) as isize;
            (((out as isize - 1) * s as isize + eff - input as isize).max(0)) / 2
        };
        if kh == 0
            || kw == 0
            || out_size(ih, kh, sh, dh) != Some(oh)
            || out_size(iw, kw, sw, dw) != Some(ow)
        {
            return Err(cx.err(op, format!("output {osh:?} is not what input {ish:?}, filter {fsh:?}, strides ({sh}, {sw}) and padding give")));
        }
        let filter = cx.constant(op, ft)?;
        let bias = match op.inputs.get(2) {
            Some(&b) if b >= 0 => {
                let bt = &cx.tensors[b as usize];
                let v = cx.const_i32s(op, bt)?;
                if v.len() != oc {
                    return Err(
                        cx.err(op, format!("bias has {} values for {oc} channels", v.len()))
                    );
                }
                Some(cx.constant(op, bt)?)
            }
            _ => None,
        };
        let (is, izp) = cx.scale(op, it)?;
        let (os, ozp) = cx.scale(op, ot)?;
        let fscales = &ft.quant.scale;
        let per_channel = fscales.len() == oc && oc > 1;
        if !(fscales.len() == 1 || per_channel)
            || fscales.iter().any(|&s| !(s > 0.0 && s.is_finite()))
        {
            return Err(cx.err(
                op,
                format!("filter has {} scales for {oc} channels", fscales.len()),
            ));
        }
        if per_channel && ft.quant.dim != if depthwise { 3 } else { 0 } {
            return Err(cx.err(
                op,
                format!(
                    "filter quantized along dimension {}, not the output channels",
                    ft.quant.dim
                ),
            ));
        }
        if ft.quant.zero_point.iter().any(|&z| z != 0) {
            return Err(cx.err(op, "filter zero points must be 0"));
        }
        let macs = [oh, ow, oc, kh, kw, if depthwise { 1 } else { ic }]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if macs.is_none_or(|m| m > MAX_MACS) {
            return Err(cx.err(
                op,
                format!("needs more than the {MAX_MACS} multiply-accumulates per step the engine accepts"),
            ));
        }
        let requant = (0..oc)
            .map(|c| {
                let fs = if per_channel { fscales[c] } else { fscales[0] };
                let mut r = Requant::new(is as f64 * fs as f64 / os as f64);
                // TensorFlow Lite's optimized DEPTHWISE_CONV_2D (the reference's x86 library)
                // requantizes whole blocks of 8 channels in SIMD with upward rounding
                // (`DepthwiseConvRound<kUpward>`) and the channels left over one by one with
                // `MultiplyByQuantizedMultiplier` (halves away from zero). The two differ only
                // on exact halves, and matching them keeps sotad's outputs equal to the
                // reference's (the wake bench's `confusion` mode).
                r.upward = depthwise && c < oc - oc % DEPTHWISE_BLOCK;
                r
            })
            .collect();
        Ok(ConvOp {
            kind,
            input: i,
            output: o,
            filter,
            bias,
            ih,
            iw,
            ic,
            oh,
            ow,
            oc,
            kh,
            kw,
            stride: (sh, sw),
            dilation: (dh, dw),
            pad: (pad(ih, kh, sh, dh, oh), pad(iw, kw, sw, dw, ow)),
            input_offset: -izp,
            output_offset: ozp,
            act: cx.activation(op, act_code, ot)?,
            requant,
        })
    }

    /// A fresh streaming state: activations zeroed, variables at their initial values.
    pub(crate) fn state(&self, data: &[u8]) -> State {
        let arena = self
            .storage
            .iter()
            .map(|s| match s {
                Storage::Arena(n) => vec![0u8; *n],
                _ => Vec::new(),
            })
            .collect();
        let vars = self
            .var_init
            .iter()
            .map(|r| data[r.clone()].to_vec())
            .collect();
        State { arena, vars }
    }
}

/// Activations and streaming variables of one running model.
pub(crate) struct State {
    arena: Vec<Vec<u8>>,
    vars: Vec<Vec<u8>>,
}

fn i32_at(data: &[u8], r: &Option<Range<usize>>, i: usize) -> i32 {
    match r {
        Some(r) => {
            let p = r.start + 4 * i;
            i32::from_le_bytes(data[p..p + 4].try_into().unwrap())
        }
        None => 0,
    }
}

impl State {
    /// Back to the initial variables (and zeroed activations).
    pub(crate) fn reset(&mut self, graph: &Graph, data: &[u8]) {
        for a in &mut self.arena {
            a.fill(0);
        }
        for (v, r) in self.vars.iter_mut().zip(&graph.var_init) {
            v.copy_from_slice(&data[r.clone()]);
        }
    }

    /// The input tensor, to be filled with one step's quantized features (frame after frame).
    pub(crate) fn input_mut(&mut self, graph: &Graph) -> &mut [u8] {
        &mut self.arena[graph.input]
    }

    /// Runs every operator once; returns the raw (quantized) output.
    pub(crate) fn invoke(&mut self, graph: &Graph, data: &[u8]) -> u8 {
        for op in &graph.ops {
            self.run(graph, op, data);
        }
        self.arena[graph.output][0]
    }

    /// A tensor's bytes after the last step (constants from the model), for comparing
    /// intermediate activations with TensorFlow Lite's; empty for an index beyond the graph.
    pub(crate) fn tensor<'s>(&'s self, graph: &Graph, data: &'s [u8], t: usize) -> &'s [u8] {
        if t < graph.storage.len() {
            self.src(graph, data, t)
        } else {
            &[]
        }
    }

    fn src<'s>(&'s self, graph: &Graph, data: &'s [u8], t: usize) -> &'s [u8] {
        match &graph.storage[t] {
            Storage::Const(r) => &data[r.clone()],
            _ => &self.arena[t],
        }
    }

    fn run(&mut self, graph: &Graph, op: &Op, data: &[u8]) {
        match op {
            Op::Conv(c) => {
                let mut out = std::mem::take(&mut self.arena[c.output]);
                conv(c, self.src(graph, data, c.input), data, &mut out);
                self.arena[c.output] = out;
            }
            Op::FullyConnected {
                input,
                output,
                weights,
                bias,
                rows,
                depth,
                input_offset,
                filter_offset,
                output_offset,
                act,
                requant,
            } => {
                let mut out = std::mem::take(&mut self.arena[*output]);
                let x = self.src(graph, data, *input);
                let w = &data[weights.clone()];
                for (r, o) in out.iter_mut().enumerate().take(*rows) {
                    let row = &w[r * depth..(r + 1) * depth];
                    let mut acc: i32 = 0;
                    for (&wv, &xv) in row.iter().zip(x) {
                        acc = acc.wrapping_add(
                            (wv as i8 as i32 + filter_offset) * (xv as i8 as i32 + input_offset),
                        );
                    }
                    acc = acc.wrapping_add(i32_at(data, bias, r));
                    let v = requant.apply(acc).saturating_add(*output_offset);
                    *o = v.clamp(act.0, act.1) as i8 as u8;
                }
                self.arena[*output] = out;
            }
            Op::Logistic {
                input,
                output,
                table,
            } => {
                let mut out = std::mem::take(&mut self.arena[*output]);
                for (o, &x) in out.iter_mut().zip(self.src(graph, data, *input)) {
                    *o = table[x as usize];
                }
                self.arena[*output] = out;
            }
            Op::Quantize {
                input,
                output,
                input_zp,
                output_zp,
                requant,
                range,
            } => {
                let mut out = std::mem::take(&mut self.arena[*output]);
                for (o, &x) in out.iter_mut().zip(self.src(graph, data, *input)) {
                    let v = requant
                        .apply(x as i8 as i32 - input_zp)
                        .saturating_add(*output_zp);
                    *o = v.clamp(range.0, range.1) as u8;
                }
                self.arena[*output] = out;
            }
            Op::Copy { input, output } => {
                let mut out = std::mem::take(&mut self.arena[*output]);
                out.copy_from_slice(self.src(graph, data, *input));
                self.arena[*output] = out;
            }
            Op::Concat {
                inputs,
                output,
                outer,
                chunks,
            } => {
                let mut out = std::mem::take(&mut self.arena[*output]);
                let mut at = 0;
                for row in 0..*outer {
                    for (&t, &n) in inputs.iter().zip(chunks) {
                        let src = self.src(graph, data, t);
                        out[at..at + n].copy_from_slice(&src[row * n..(row + 1) * n]);
                        at += n;
                    }
                }
                self.arena[*output] = out;
            }
            Op::Split {
                input,
                outputs,
                outer,
                chunks,
            } => {
                let mut at = 0;
                for row in 0..*outer {
                    for (&t, &n) in outputs.iter().zip(chunks) {
                        let mut out = std::mem::take(&mut self.arena[t]);
                        let src = self.src(graph, data, *input);
                        out[row * n..(row + 1) * n].copy_from_slice(&src[at..at + n]);
                        self.arena[t] = out;
                        at += n;
                    }
                }
            }
            Op::Slice {
                input,
                output,
                in_dims,
                start,
                stride,
                out_dims,
            } => {
                let mut out = std::mem::take(&mut self.arena[*output]);
                let src = self.src(graph, data, *input);
                let mut k = 0;
                for a in 0..out_dims[0] {
                    let ia = (start[0] + a as isize * stride[0]) as usize;
                    for b in 0..out_dims[1] {
                        let ib = (start[1] + b as isize * stride[1]) as usize;
                        for c in 0..out_dims[2] {
                            let ic = (start[2] + c as isize * stride[2]) as usize;
                            for d in 0..out_dims[3] {
                                let id = (start[3] + d as isize * stride[3]) as usize;
                                let at =
                                    ((ia * in_dims[1] + ib) * in_dims[2] + ic) * in_dims[3] + id;
                                out[k] = src[at];
                                k += 1;
                            }
                        }
                    }
                }
                self.arena[*output] = out;
            }
            Op::Read { var, output } => {
                let v = &self.vars[*var];
                self.arena[*output].copy_from_slice(v);
            }
            Op::Assign { var, input } => {
                let mut v = std::mem::take(&mut self.vars[*var]);
                v.copy_from_slice(self.src(graph, data, *input));
                self.vars[*var] = v;
            }
        }
    }
}

/// CONV_2D and DEPTHWISE_CONV_2D, NHWC, one batch, per-channel requantization
/// (`reference_integer_ops::ConvPerChannel` and `DepthwiseConvPerChannel`).
fn conv(c: &ConvOp, x: &[u8], data: &[u8], out: &mut [u8]) {
    let w = &data[c.filter.clone()];
    let (sh, sw) = c.stride;
    let (dh, dw) = c.dilation;
    let mut k = 0;
    for oy in 0..c.oh {
        for ox in 0..c.ow {
            let y0 = (oy * sh) as isize - c.pad.0;
            let x0 = (ox * sw) as isize - c.pad.1;
            for o in 0..c.oc {
                let mut acc: i32 = 0;
                for ky in 0..c.kh {
                    let iy = y0 + (ky * dh) as isize;
                    if iy < 0 || iy >= c.ih as isize {
                        continue;
                    }
                    for kx in 0..c.kw {
                        let ix = x0 + (kx * dw) as isize;
                        if ix < 0 || ix >= c.iw as isize {
                            continue;
                        }
                        let xbase = (iy as usize * c.iw + ix as usize) * c.ic;
                        match c.kind {
                            Kind::Conv => {
                                let wbase = ((o * c.kh + ky) * c.kw + kx) * c.ic;
                                let wrow = &w[wbase..wbase + c.ic];
                                let xrow = &x[xbase..xbase + c.ic];
                                for (&wv, &xv) in wrow.iter().zip(xrow) {
                                    acc = acc.wrapping_add(
                                        wv as i8 as i32 * (xv as i8 as i32 + c.input_offset),
                                    );
                                }
                            }
                            Kind::Depthwise { multiplier } => {
                                let ic = o / multiplier;
                                let wv = w[(ky * c.kw + kx) * c.oc + o] as i8 as i32;
                                acc = acc.wrapping_add(
                                    wv * (x[xbase + ic] as i8 as i32 + c.input_offset),
                                );
                            }
                        }
                    }
                }
                acc = acc.wrapping_add(i32_at(data, &c.bias, o));
                let v = c.requant[o].apply(acc).saturating_add(c.output_offset);
                out[k] = v.clamp(c.act.0, c.act.1) as i8 as u8;
                k += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_helpers_match_tflite() {
        // 0.5 = 0.5 * 2^0 → Q31 2^30, shift 0.
        assert_eq!(quantize_multiplier(0.5), (1 << 30, 0));
        assert_eq!(quantize_multiplier(0.25), (1 << 30, -1));
        assert_eq!(quantize_multiplier(1.0), (1 << 30, 1));
        // Halves: away from zero, or upward (the optimized depthwise kernels).
        assert_eq!(multiply_by_quantized_multiplier(-2, 1 << 30, -1), -1); // -0.5 → -1
        assert_eq!(multiply_by_quantized_multiplier_upward(-2, 1 << 30, -1), 0); // -0.5 → 0
        assert_eq!(multiply_by_quantized_multiplier_upward(3, 1 << 30, -1), 1); // 0.75 → 1
        assert_eq!(multiply_by_quantized_multiplier_upward(5, 1 << 30, 1), 5); // no shift
        // Rounding half away from zero in the right shift.
        assert_eq!(multiply_by_quantized_multiplier(3, 1 << 30, -1), 1); // 0.75 → 1
        assert_eq!(multiply_by_quantized_multiplier(-3, 1 << 30, -1), -1); // -0.75 → -1
        assert_eq!(multiply_by_quantized_multiplier(4, 1 << 30, -2), 1); // 0.5 → 1
        assert_eq!(multiply_by_quantized_multiplier(-4, 1 << 30, -2), -1); // -0.5 → -1
        assert_eq!(multiply_by_quantized_multiplier(100, 1 << 30, 1), 100);
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        let (m, e) = frexp(3.0);
        assert_eq!((m, e), (0.75, 2));
    }
}
