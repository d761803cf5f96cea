//! Smart Turn v3 (Pipecat): is the utterance finished? A learned end of turn.
//!
//! The model (`smart-turn-v3.2-cpu.onnx`, BSD-2-Clause, from PyPI `pipecat-ai==1.14.0`) reads
//! Whisper features of the last 8 s ([`features`]) and returns the probability that the
//! speaker has finished. It is a Whisper-tiny encoder (two convolutions, 400 positions, four
//! layers of width 384 with six heads) followed by attention pooling over time and a small
//! classifier, statically quantized in QDQ form: every activation goes through a
//! `QuantizeLinear`/`DequantizeLinear` pair with a fixed u8 scale and zero point, and every
//! weight is int8 with per-channel scales.
//!
//! # Arithmetic
//!
//! onnxruntime does not run the QDQ graph as written: it fuses each `DQ → MatMul → Q` into an
//! integer `QLinearMatMul`, the convolutions into `QLinearConv`, the classifier's `Gemm`s into
//! `QGemm`, and the attention softmax into `QLinearSoftmax` (a lookup table). Because the
//! classifier's last output is itself quantized (the probability takes one of 256 values),
//! agreeing with onnxruntime means computing the same integers, so [`kernels`] follows the
//! fused kernels' arithmetic (exact i32 accumulation, MLAS's requantization, the softmax
//! table, summed in order). The float parts between them round the same way too, because a
//! one-ulp difference before a quantization flips an integer that the later layers amplify:
//! the layer norms follow MLAS's centred two-pass kernel, the GELUs use MLAS's `erf`
//! polynomial, the pooling `tanh` and softmax MLAS's rational `tanh` and polynomial `exp`
//! (with the lane order of its AVX-512 sum), all in plain Rust with fused multiply-adds, so
//! the result does not depend on the CPU. Found by comparing every intermediate tensor with
//! onnxruntime 1.32's (`SmartTurn::probability_traced`, `examples/turn_trace.rs`).
//! `scripts/reference/smart_turn_reference.py` regenerates the reference probabilities the
//! tests compare with.
//!
//! # Loading
//!
//! The reader walks the graph from named anchors (the layer norms' and biases' initializers,
//! as exported by PyTorch) to every matrix, quantization parameter and constant it needs, and
//! checks shapes and data types, so a different ONNX file fails at load with the file and the
//! tensor or node named. Weights are copied once at load (re-laid out as `[out][in]` int8 rows,
//! about 8 MB).

pub mod features;
pub mod kernels;

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use crate::error::{Error, Result};
use crate::tts::onnx::{DataType, NodeProto, OnnxModel};
use crate::tts::{TtsErrorKind, TtsSubject};

use self::features::{Features, N_FRAMES, N_MELS};
use self::kernels::{QParam, QSoftmax, QWeight, gelu, layer_norm, qmatmul};

/// Width of the encoder.
const D: usize = 384;
/// Positions after the stride-2 convolution.
const T: usize = N_FRAMES / 2;
/// Attention heads.
const HEADS: usize = 6;
/// Width of a head.
const HD: usize = D / HEADS;
/// Encoder layers.
const LAYERS: usize = 4;
/// Width of the feed-forward layer.
const FF: usize = 4 * D;
/// Width of the pooling projection and of the classifier's first layer.
const POOL: usize = 256;
/// Width of the classifier's second layer.
const CLS: usize = 64;

/// A layer norm's weight and bias.
type Norm = (Vec<f32>, Vec<f32>);

/// The decision threshold Pipecat uses: `probability > 0.5` is "complete".
pub const THRESHOLD: f32 = 0.5;

#[derive(Debug)]
struct Linear {
    x: QParam,
    w: QWeight,
    y: QParam,
    /// Float bias added after dequantization (None for the key projection).
    bias: Option<Vec<f32>>,
}

#[derive(Debug)]
struct Conv {
    x: QParam,
    /// `[out][tap][in]`, widened to i16.
    w: Vec<i16>,
    scale: Vec<f32>,
    bias: Vec<i32>,
    y: QParam,
    stride: usize,
}

#[derive(Debug)]
struct Gemm {
    x: QParam,
    w: QWeight,
    bias: Vec<i32>,
    y: QParam,
}

#[derive(Debug)]
struct Layer {
    ln1: (Vec<f32>, Vec<f32>),
    q: Linear,
    k: Linear,
    v: Linear,
    /// Quantization of `q * c`, `k * c` (c = head_dim^-1/4) and of `v + bias`.
    q_scaled: QParam,
    k_scaled: QParam,
    q_mul: f32,
    k_mul: f32,
    v_q: QParam,
    scores: QParam,
    probs: QParam,
    softmax: QSoftmax,
    attn: QParam,
    out: Linear,
    ln2: (Vec<f32>, Vec<f32>),
    fc1: Linear,
    gelu: QParam,
    fc2: Linear,
    /// Lookup tables of the float steps between quantized tensors, per channel `[c][q]`:
    /// `q * mul` (with bias), `k * mul`, `v` (with bias), GELU after fc1 (with bias).
    q_tab: Vec<[u8; 256]>,
    k_tab: [u8; 256],
    v_tab: Vec<[u8; 256]>,
    gelu_tab: Vec<[u8; 256]>,
}

impl Layer {
    fn build_tables(&mut self) {
        let bq = self.q.bias.clone().unwrap_or_default();
        let bv = self.v.bias.clone().unwrap_or_default();
        let b1 = self.fc1.bias.clone().unwrap_or_default();
        let (qm, km) = (self.q_mul, self.k_mul);
        self.q_tab = bq
            .iter()
            .map(|&b| self.q.y.table(self.q_scaled, |x| (x + b) * qm))
            .collect();
        self.k_tab = self.k.y.table(self.k_scaled, |x| x * km);
        self.v_tab = bv
            .iter()
            .map(|&b| self.v.y.table(self.v_q, |x| x + b))
            .collect();
        self.gelu_tab = b1
            .iter()
            .map(|&b| self.fc1.y.table(self.gelu, |x| gelu(x + b)))
            .collect();
    }
}

impl std::fmt::Debug for QSoftmax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QSoftmax").finish_non_exhaustive()
    }
}

/// An intermediate tensor shown by [`SmartTurn::probability_traced`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Traced<'a> {
    /// Quantized values.
    U8(&'a [u8]),
    /// Float values.
    F32(&'a [f32]),
}

/// The optional observer of [`SmartTurn::probability_traced`].
struct Tracer<'a, 'b>(Option<&'a mut (dyn FnMut(&str, Traced) + 'b)>);

impl Tracer<'_, '_> {
    fn on(&self) -> bool {
        self.0.is_some()
    }

    fn emit(&mut self, name: &str, t: Traced) {
        if let Some(f) = self.0.as_mut() {
            f(name, t);
        }
    }
}

/// The Smart Turn v3 model, ready to run. `Sync`: one instance serves any number of threads.
#[derive(Debug)]
pub struct SmartTurn {
    features: Features,
    input: QParam,
    conv1: Conv,
    gelu1: QParam,
    conv2: Conv,
    pos: Vec<f32>,
    layers: Vec<Layer>,
    ln_final: (Vec<f32>, Vec<f32>),
    ln_final_q: QParam,
    pool1: Linear,
    tanh_q: QParam,
    pool2: Linear,
    pooled_q: QParam,
    cls0: Gemm,
    cls_ln: (Vec<f32>, Vec<f32>),
    gelu6: QParam,
    cls4: Gemm,
    gelu7: QParam,
    cls6: Gemm,
}

/// The graph with producer and consumer indexes, for the loader's walks.
struct Graph<'m> {
    model: &'m OnnxModel,
    producer: HashMap<&'m str, &'m NodeProto>,
    consumers: HashMap<&'m str, Vec<&'m NodeProto>>,
}

const WHAT: &str = "the Smart Turn v3 model (smart-turn-v3.2-cpu.onnx from pipecat-ai)";

impl<'m> Graph<'m> {
    fn new(model: &'m OnnxModel) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for n in &model.graph().node {
            for o in &n.output {
                producer.insert(o.as_str(), n);
            }
            for i in &n.input {
                consumers.entry(i.as_str()).or_default().push(n);
            }
        }
        Self {
            model,
            producer,
            consumers,
        }
    }

    fn not_expected(&self, what: &str, reason: String) -> Error {
        Error::Tts(
            self.model
                .error(TtsErrorKind::BadValue {
                    reason: format!("not {WHAT}: {reason}"),
                })
                .subject(TtsSubject::Tensor(what.to_owned())),
        )
    }

    fn missing(&self, name: &str, context: &str) -> Error {
        Error::Tts(
            self.model
                .error(TtsErrorKind::Missing {
                    context: format!("{context}; is this {WHAT}?"),
                })
                .subject(TtsSubject::Tensor(name.to_owned())),
        )
    }

    fn floats(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self
            .model
            .initializer(name)
            .ok_or_else(|| self.missing(name, "a float initializer"))?;
        let v = t.to_f32_vec()?;
        if v.len() != len {
            return Err(Error::Tts(
                self.model
                    .error(TtsErrorKind::UnexpectedShape {
                        expected: format!("{len} elements"),
                        found: t.dims().to_vec(),
                    })
                    .subject(TtsSubject::Tensor(name.to_owned())),
            ));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.not_expected(name, format!("element {i} is {}", v[i])));
        }
        Ok(v)
    }

    fn ints(&self, name: &str, ty: DataType, len: usize) -> Result<Vec<i64>> {
        let t = self
            .model
            .initializer(name)
            .ok_or_else(|| self.missing(name, "an integer initializer"))?;
        if t.data_type() != ty {
            return Err(self.not_expected(
                name,
                format!("data type {}, expected {}", t.data_type().name(), ty.name()),
            ));
        }
        let v = t.to_i64_vec()?;
        if v.len() != len {
            return Err(Error::Tts(
                self.model
                    .error(TtsErrorKind::UnexpectedShape {
                        expected: format!("{len} elements"),
                        found: t.dims().to_vec(),
                    })
                    .subject(TtsSubject::Tensor(name.to_owned())),
            ));
        }
        Ok(v)
    }

    /// Scale and u8 zero point from a Q/DQ node's inputs 1 and 2.
    fn qparam(&self, node: &NodeProto) -> Result<QParam> {
        let (Some(s), Some(z)) = (node.input.get(1), node.input.get(2)) else {
            return Err(self.not_expected(
                &node.name,
                "a Q/DQ node without scale and zero point".into(),
            ));
        };
        let scale = self.floats(s, 1)?[0];
        let zp = self.ints(z, DataType::UINT8, 1)?[0];
        if scale.is_nan() || scale <= 0.0 {
            return Err(self.not_expected(s, format!("scale {scale} is not positive")));
        }
        Ok(QParam {
            scale,
            zp: zp as i32,
        })
    }

    fn node(
        &self,
        op: &str,
        pred: impl Fn(&NodeProto) -> bool,
        what: &str,
    ) -> Result<&'m NodeProto> {
        self.model
            .graph()
            .node
            .iter()
            .find(|n| n.op_type == op && pred(n))
            .ok_or_else(|| self.missing(what, &format!("a {op} node using it")))
    }

    fn producer(&self, tensor: &str, op: &str) -> Result<&'m NodeProto> {
        self.producer
            .get(tensor)
            .copied()
            .filter(|n| n.op_type == op)
            .ok_or_else(|| self.missing(tensor, &format!("produced by a {op} node")))
    }

    /// The first QuantizeLinear reached forward from `tensor` (breadth first), with the
    /// constant of any scalar `Mul` passed on the way.
    fn next_q(&self, tensor: &str) -> Result<(&'m NodeProto, Option<f32>)> {
        let mut queue = VecDeque::from([(tensor.to_owned(), 0usize)]);
        let mut mul = None;
        while let Some((t, depth)) = queue.pop_front() {
            if depth > 12 {
                break;
            }
            for n in self.consumers.get(t.as_str()).into_iter().flatten() {
                if n.op_type == "QuantizeLinear" {
                    return Ok((n, mul));
                }
                if n.op_type == "Mul" {
                    for i in &n.input {
                        if let Some(c) = self.model.initializer(i)
                            && c.element_count() == 1
                        {
                            mul = c.to_f32_vec().ok().map(|v| v[0]);
                        }
                    }
                }
                for o in &n.output {
                    queue.push_back((o.clone(), depth + 1));
                }
            }
        }
        Err(self.missing(tensor, "a QuantizeLinear after it"))
    }

    fn next_qparam(&self, tensor: &str) -> Result<QParam> {
        let (n, _) = self.next_q(tensor)?;
        self.qparam(n)
    }

    /// The DQ of an int8 weight `[k][n]` (axis 1) or `[n][k]` (axis 0, `transposed`).
    fn weight(&self, dq_out: &str, n: usize, k: usize, transposed: bool) -> Result<QWeight> {
        let dq = self.producer(dq_out, "DequantizeLinear")?;
        let (Some(wn), Some(sn), Some(zn)) = (dq.input.first(), dq.input.get(1), dq.input.get(2))
        else {
            return Err(
                self.not_expected(dq_out, "weight DequantizeLinear without its inputs".into())
            );
        };
        let w = self.ints(wn, DataType::INT8, n * k)?;
        let dims = self
            .model
            .initializer(wn)
            .map(|t| t.dims().to_vec())
            .unwrap_or_default();
        let want = if transposed {
            [n as i64, k as i64]
        } else {
            [k as i64, n as i64]
        };
        if dims != want {
            return Err(Error::Tts(
                self.model
                    .error(TtsErrorKind::UnexpectedShape {
                        expected: format!("{want:?}"),
                        found: dims,
                    })
                    .subject(TtsSubject::Tensor(wn.clone())),
            ));
        }
        let scale = self.floats(sn, n)?;
        if self.ints(zn, DataType::INT8, n)?.iter().any(|&z| z != 0) {
            return Err(self.not_expected(zn, "weight zero points are not all 0".into()));
        }
        let mut out = vec![0i16; n * k];
        for (i, &v) in w.iter().enumerate() {
            let (r, c) = if transposed {
                (i / k, i % k)
            } else {
                (i % n, i / n)
            };
            out[r * k + c] = v as i16;
        }
        Ok(QWeight {
            n,
            k,
            w: out,
            scale,
        })
    }

    /// The `MatMul` whose output (after Q/DQ) gets `bias` added; None finds `x`'s consumer
    /// MatMul without a bias (the key projection).
    fn linear_by_bias(&self, bias: &str, n: usize, k: usize) -> Result<Linear> {
        let add = self.node("Add", |a| a.input.iter().any(|i| i == bias), bias)?;
        // Add <- DQ <- Q <- MatMul
        let dq = add
            .input
            .iter()
            .find_map(|i| {
                self.producer
                    .get(i.as_str())
                    .filter(|n| n.op_type == "DequantizeLinear")
            })
            .ok_or_else(|| self.missing(bias, "added to a dequantized MatMul output"))?;
        let q = self.producer(&dq.input[0], "QuantizeLinear")?;
        let mm = self.producer(&q.input[0], "MatMul")?;
        let mut lin = self.linear(mm, n, k)?;
        lin.bias = Some(self.floats(bias, n)?);
        Ok(lin)
    }

    fn linear(&self, mm: &NodeProto, n: usize, k: usize) -> Result<Linear> {
        let xdq = self.producer(&mm.input[0], "DequantizeLinear")?;
        Ok(Linear {
            x: self.qparam(xdq)?,
            w: self.weight(&mm.input[1], n, k, false)?,
            y: self.next_qparam(&mm.output[0])?,
            bias: None,
        })
    }

    fn layer_norm(&self, prefix: &str, n: usize) -> Result<(Norm, &'m NodeProto)> {
        let w = format!("{prefix}.weight");
        let b = format!("{prefix}.bias");
        let node = self.node("LayerNormalization", |x| x.input.get(1) == Some(&w), &w)?;
        Ok(((self.floats(&w, n)?, self.floats(&b, n)?), node))
    }

    fn conv(&self, prefix: &str, c_in: usize, stride: usize) -> Result<(Conv, &'m NodeProto)> {
        let wq = format!("{prefix}.weight_quantized");
        let node = self.node(
            "Conv",
            |c| {
                c.input
                    .get(1)
                    .and_then(|i| self.producer.get(i.as_str()))
                    .is_some_and(|dq| dq.input.first() == Some(&wq))
            },
            &wq,
        )?;
        let ints = |a: &str| node.attr(a).and_then(|x| x.as_ints()).map(<[i64]>::to_vec);
        if ints("strides") != Some(vec![stride as i64]) || ints("pads") != Some(vec![1, 1]) {
            return Err(Error::Tts(
                self.model
                    .error(TtsErrorKind::BadAttribute {
                        attribute: "strides/pads",
                        reason: format!(
                            "the Whisper encoder's convolution needs stride {stride}, pads [1, 1]"
                        ),
                    })
                    .subject(TtsSubject::Node(node.name.clone())),
            ));
        }
        let w = self.ints(&wq, DataType::INT8, D * c_in * 3)?;
        let scale = self.floats(&format!("{prefix}.weight_scale"), D)?;
        if self
            .ints(&format!("{prefix}.weight_zero_point"), DataType::INT8, D)?
            .iter()
            .any(|&z| z != 0)
        {
            return Err(self.not_expected(&wq, "weight zero points are not all 0".into()));
        }
        let bias: Vec<i32> = self
            .ints(&format!("{prefix}.bias_quantized"), DataType::INT32, D)?
            .iter()
            .map(|&b| b as i32)
            .collect();
        // [out][in][tap] -> [out][tap][in]
        let mut wr = vec![0i16; w.len()];
        for o in 0..D {
            for c in 0..c_in {
                for k in 0..3 {
                    wr[(o * 3 + k) * c_in + c] = w[(o * c_in + c) * 3 + k] as i16;
                }
            }
        }
        let xdq = self.producer(&node.input[0], "DequantizeLinear")?;
        Ok((
            Conv {
                x: self.qparam(xdq)?,
                w: wr,
                scale,
                bias,
                y: self.next_qparam(&node.output[0])?,
                stride,
            },
            node,
        ))
    }

    fn gemm(&self, prefix: &str, n: usize, k: usize) -> Result<Gemm> {
        let wq = format!("{prefix}.weight_quantized");
        let node = self.node(
            "Gemm",
            |g| {
                g.input
                    .get(1)
                    .and_then(|i| self.producer.get(i.as_str()))
                    .is_some_and(|dq| dq.input.first() == Some(&wq))
            },
            &wq,
        )?;
        if node.attr("transB").and_then(|a| a.as_int()) != Some(1) {
            return Err(self.not_expected(&node.name, "Gemm without transB = 1".into()));
        }
        let xdq = self.producer(&node.input[0], "DequantizeLinear")?;
        let bias = self
            .ints(&format!("{prefix}.bias_quantized"), DataType::INT32, n)?
            .iter()
            .map(|&b| b as i32)
            .collect();
        Ok(Gemm {
            x: self.qparam(xdq)?,
            w: self.weight(&node.input[1], n, k, true)?,
            bias,
            y: self.next_qparam(&node.output[0])?,
        })
    }
}

impl SmartTurn {
    /// Memory-maps, checks and loads the model at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_onnx(&OnnxModel::open(path)?)
    }

    /// Loads the model from a parsed ONNX file.
    pub fn from_onnx(model: &OnnxModel) -> Result<Self> {
        let g = Graph::new(model);
        let input = g
            .model
            .graph()
            .input
            .first()
            .map(|i| i.name.as_str())
            .unwrap_or("");
        if input != "input_features" {
            return Err(g.missing("input_features", "the graph input"));
        }
        let input_q = g.next_qparam("input_features")?;
        let (conv1, c1node) = g.conv("inner.encoder.conv1", N_MELS, 1)?;
        // conv1 -> Q -> DQ -> GELU -> Q(gelu)
        let (c1q, _) = g.next_q(&c1node.output[0])?;
        let gelu1 = g.next_qparam(&c1q.output[0])?;
        let (conv2, _) = g.conv("inner.encoder.conv2", D, 2)?;
        let pos = g.floats("inner.encoder.embed_positions.weight", T * D)?;
        let mut layers = Vec::with_capacity(LAYERS);
        for l in 0..LAYERS {
            let p = format!("inner.encoder.layers.{l}");
            let (ln1, ln1node) = g.layer_norm(&format!("{p}.self_attn_layer_norm"), D)?;
            let q = g.linear_by_bias(&format!("{p}.self_attn.q_proj.bias"), D, D)?;
            let v = g.linear_by_bias(&format!("{p}.self_attn.v_proj.bias"), D, D)?;
            // The key projection: the third MatMul reading the dequantized layer norm.
            let (lnq, _) = g.next_q(&ln1node.output[0])?;
            let lndq = g
                .consumers
                .get(lnq.output[0].as_str())
                .and_then(|c| c.iter().find(|n| n.op_type == "DequantizeLinear"))
                .ok_or_else(|| g.missing(&lnq.output[0], "a DequantizeLinear after it"))?;
            let mms: Vec<&NodeProto> = g
                .consumers
                .get(lndq.output[0].as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|n| n.op_type == "MatMul")
                .collect();
            if mms.len() != 3 {
                return Err(g.not_expected(
                    &lndq.output[0],
                    format!(
                        "layer {l}: {} projections read the layer norm, expected 3",
                        mms.len()
                    ),
                ));
            }
            let q_bias_add = format!("{p}.self_attn.q_proj.bias");
            let v_bias_add = format!("{p}.self_attn.v_proj.bias");
            // k: the projection whose output is not followed by a bias Add.
            let mut k = None;
            for mm in &mms {
                let (qn, _) = g.next_q(&mm.output[0])?;
                let dq = g
                    .consumers
                    .get(qn.output[0].as_str())
                    .and_then(|c| c.first())
                    .copied();
                let biased = dq.is_some_and(|dq| {
                    g.consumers.get(dq.output[0].as_str()).is_some_and(|c| {
                        c.iter().any(|n| {
                            n.op_type == "Add"
                                && n.input.iter().any(|i| *i == q_bias_add || *i == v_bias_add)
                        })
                    })
                });
                if !biased {
                    k = Some((g.linear(mm, D, D)?, dq));
                }
            }
            let Some((k, Some(kdq))) = k else {
                return Err(
                    g.not_expected(&lndq.output[0], format!("layer {l}: no key projection"))
                );
            };
            let q_add = g.node("Add", |a| a.input.contains(&q_bias_add), &q_bias_add)?;
            let v_add = g.node("Add", |a| a.input.contains(&v_bias_add), &v_bias_add)?;
            let (qs_node, q_mul) = g.next_q(&q_add.output[0])?;
            let (ks_node, k_mul) = g.next_q(&kdq.output[0])?;
            let q_scaled = g.qparam(qs_node)?;
            let k_scaled = g.qparam(ks_node)?;
            let v_q = g.next_qparam(&v_add.output[0])?;
            let (scores_node, _) = g.next_q(&qs_node.output[0])?;
            let scores = g.qparam(scores_node)?;
            let (probs_node, _) = g.next_q(&scores_node.output[0])?;
            let probs = g.qparam(probs_node)?;
            let (attn_node, _) = g.next_q(&probs_node.output[0])?;
            let attn = g.qparam(attn_node)?;
            let out = g.linear_by_bias(&format!("{p}.self_attn.out_proj.bias"), D, D)?;
            let (ln2, _) = g.layer_norm(&format!("{p}.final_layer_norm"), D)?;
            let fc1 = g.linear_by_bias(&format!("{p}.fc1.bias"), FF, D)?;
            let fc1_add = g.node(
                "Add",
                |a| a.input.iter().any(|i| *i == format!("{p}.fc1.bias")),
                "fc1",
            )?;
            let gelu_q = g.next_qparam(&fc1_add.output[0])?;
            let fc2 = g.linear_by_bias(&format!("{p}.fc2.bias"), D, FF)?;
            let (Some(q_mul), Some(k_mul)) = (q_mul, k_mul) else {
                return Err(g.not_expected(&p, "no scaling of queries and keys".into()));
            };
            layers.push(Layer {
                ln1,
                q,
                k,
                v,
                q_scaled,
                k_scaled,
                q_mul,
                k_mul,
                v_q,
                scores,
                probs,
                softmax: QSoftmax::new(scores.scale, probs, T),
                attn,
                out,
                ln2,
                fc1,
                gelu: gelu_q,
                fc2,
                q_tab: Vec::new(),
                k_tab: [0; 256],
                v_tab: Vec::new(),
                gelu_tab: Vec::new(),
            });
            if let Some(l) = layers.last_mut() {
                l.build_tables();
            }
        }
        let extra = format!("inner.encoder.layers.{LAYERS}.self_attn_layer_norm.weight");
        if g.model.initializer(&extra).is_some() {
            return Err(g.not_expected(&extra, format!("more than {LAYERS} encoder layers")));
        }
        let (ln_final, lnf_node) = g.layer_norm("inner.encoder.layer_norm", D)?;
        let ln_final_q = g.next_qparam(&lnf_node.output[0])?;
        let pool1 = g.linear_by_bias("inner.pool_attention.0.bias", POOL, D)?;
        let p1_add = g.node(
            "Add",
            |a| a.input.iter().any(|i| i == "inner.pool_attention.0.bias"),
            "pool",
        )?;
        let tanh_q = g.next_qparam(&p1_add.output[0])?;
        let pool2 = g.linear_by_bias("inner.pool_attention.2.bias", 1, POOL)?;
        let rs = g.node("ReduceSum", |_| true, "ReduceSum")?;
        let pooled_q = g.next_qparam(&rs.output[0])?;
        let cls0 = g.gemm("inner.classifier.0", POOL, D)?;
        let (cls_ln, cls_ln_node) = g.layer_norm("inner.classifier.1", POOL)?;
        let gelu6 = g.next_qparam(&cls_ln_node.output[0])?;
        let cls4 = g.gemm("inner.classifier.4", CLS, POOL)?;
        let gemm4 = g.node(
            "Gemm",
            |n| {
                n.input
                    .get(2)
                    .is_some_and(|b| b == "inner.classifier.4.bias")
            },
            "inner.classifier.4.bias",
        )?;
        let (q27, _) = g.next_q(&gemm4.output[0])?;
        let gelu7 = g.next_qparam(&q27.output[0])?;
        let cls6 = g.gemm("inner.classifier.6", 1, CLS)?;
        Ok(Self {
            features: Features::new(),
            input: input_q,
            conv1,
            gelu1,
            conv2,
            pos,
            layers,
            ln_final,
            ln_final_q,
            pool1,
            tanh_q,
            pool2,
            pooled_q,
            cls0,
            cls_ln,
            gelu6,
            cls4,
            gelu7,
            cls6,
        })
    }

    /// The probability that the utterance `samples` (16 kHz mono; the last 8 s count) is a
    /// finished turn.
    pub fn probability(&self, samples: &[f32]) -> f32 {
        let feats = self.features.compute(samples);
        self.probability_of_features(&feats)
    }

    /// The probability for precomputed features `[80][800]` (band-major).
    ///
    /// # Panics
    /// If `feats` does not hold exactly 80 × 800 values.
    pub fn probability_of_features(&self, feats: &[f32]) -> f32 {
        self.run(feats, &mut Tracer(None))
    }

    /// [`Self::probability`], showing every intermediate tensor to `trace` (its name and
    /// values), for comparing with onnxruntime's (`examples/turn_trace.rs`); not for serving.
    #[doc(hidden)]
    pub fn probability_traced(&self, samples: &[f32], trace: &mut dyn FnMut(&str, Traced)) -> f32 {
        let feats = self.features.compute(samples);
        trace("features", Traced::F32(&feats));
        self.run(&feats, &mut Tracer(Some(trace)))
    }

    fn run(&self, feats: &[f32], trace: &mut Tracer) -> f32 {
        assert_eq!(
            feats.len(),
            N_MELS * N_FRAMES,
            "Smart Turn features are 80 x 800"
        );
        let mut xi = Vec::new();
        // Input: quantize, time-major, centred.
        let mut xq = vec![0u8; N_FRAMES * N_MELS];
        for m in 0..N_MELS {
            for t in 0..N_FRAMES {
                xq[t * N_MELS + m] = self.input.quantize(feats[m * N_FRAMES + t]);
            }
        }
        trace.emit("input [t][m]", Traced::U8(&xq));
        self.conv1.x.centered(&xq, &mut xi);
        let c1 = conv(&self.conv1, &xi, N_MELS, N_FRAMES);
        trace.emit("conv1 [t][c]", Traced::U8(&c1));
        let g1_tab = self.conv1.y.table(self.gelu1, gelu);
        let g1: Vec<u8> = c1.iter().map(|&q| g1_tab[usize::from(q)]).collect();
        trace.emit("gelu1 [t][c]", Traced::U8(&g1));
        self.conv2.x.centered(&g1, &mut xi);
        let c2 = conv(&self.conv2, &xi, D, N_FRAMES);
        trace.emit("conv2 [t][c]", Traced::U8(&c2));
        let g2: [f32; 256] = std::array::from_fn(|q| gelu(self.conv2.y.dequantize(q as u8)));
        let mut h: Vec<f32> = c2
            .iter()
            .zip(&self.pos)
            .map(|(&q, &p)| g2[usize::from(q)] + p)
            .collect();
        let n_layers = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            trace.emit("h [t][c]", Traced::F32(&h));
            layer.forward(&mut h, i + 1 == n_layers, trace);
        }
        trace.emit("h [t][c]", Traced::F32(&h));
        // Head: final layer norm, attention pooling over time, classifier.
        let mut ln = Vec::new();
        layer_norm(&h, D, &self.ln_final.0, &self.ln_final.1, &mut ln);
        let lnq: Vec<u8> = ln.iter().map(|&v| self.ln_final_q.quantize(v)).collect();
        trace.emit("ln_final [t][c]", Traced::U8(&lnq));
        let mut p1 = Vec::new();
        self.pool1.x.centered(&lnq, &mut xi);
        qmatmul(
            &xi,
            self.pool1.x.scale,
            &self.pool1.w,
            None,
            self.pool1.y,
            &mut p1,
        );
        let b1 = self.pool1.bias.as_deref().unwrap_or_default();
        let th: Vec<u8> = p1
            .chunks_exact(POOL)
            .flat_map(|r| {
                r.iter().zip(b1).map(|(&q, &b)| {
                    self.tanh_q
                        .quantize(kernels::tanh(self.pool1.y.dequantize(q) + b))
                })
            })
            .collect();
        trace.emit("pool1 [t][c]", Traced::U8(&p1));
        trace.emit("tanh [t][c]", Traced::U8(&th));
        let mut p2 = Vec::new();
        self.pool2.x.centered(&th, &mut xi);
        qmatmul(
            &xi,
            self.pool2.x.scale,
            &self.pool2.w,
            None,
            self.pool2.y,
            &mut p2,
        );
        let b2 = self
            .pool2
            .bias
            .as_deref()
            .and_then(|b| b.first())
            .copied()
            .unwrap_or(0.0);
        let logits: Vec<f32> = p2
            .iter()
            .map(|&q| self.pool2.y.dequantize(q) + b2)
            .collect();
        trace.emit("pool2 [t]", Traced::U8(&p2));
        let mut weights = logits;
        kernels::softmax_row(&mut weights);
        let mut pooled = vec![0.0f32; D];
        for (t, &w) in weights.iter().enumerate() {
            for (p, &q) in pooled.iter_mut().zip(&lnq[t * D..(t + 1) * D]) {
                *p += self.ln_final_q.dequantize(q) * w;
            }
        }
        let pq: Vec<u8> = pooled.iter().map(|&v| self.pooled_q.quantize(v)).collect();
        trace.emit("pooled", Traced::F32(&pooled));
        trace.emit("pooled_q", Traced::U8(&pq));
        let y0 = gemm(&self.cls0, &pq);
        trace.emit("cls0", Traced::U8(&y0));
        let f0: Vec<f32> = y0.iter().map(|&q| self.cls0.y.dequantize(q)).collect();
        layer_norm(&f0, POOL, &self.cls_ln.0, &self.cls_ln.1, &mut ln);
        let g6: Vec<u8> = ln.iter().map(|&v| self.gelu6.quantize(gelu(v))).collect();
        trace.emit("gelu6", Traced::U8(&g6));
        let y4 = gemm(&self.cls4, &g6);
        trace.emit("cls4", Traced::U8(&y4));
        let g7: Vec<u8> = y4
            .iter()
            .map(|&q| self.gelu7.quantize(gelu(self.cls4.y.dequantize(q))))
            .collect();
        trace.emit("gelu7", Traced::U8(&g7));
        let y6 = gemm(&self.cls6, &g7);
        trace.emit("cls6", Traced::U8(&y6));
        let logit = self.cls6.y.dequantize(y6[0]);
        1.0 / (1.0 + (-logit).exp())
    }
}

fn gemm(g: &Gemm, x: &[u8]) -> Vec<u8> {
    let mut xi = Vec::new();
    g.x.centered(x, &mut xi);
    let mut out = Vec::new();
    qmatmul(&xi, g.x.scale, &g.w, Some(&g.bias), g.y, &mut out);
    out
}

/// `QLinearConv`, kernel 3, padding 1 (the zero point, i.e. 0 once centred), time-major
/// `[t][c_in]` in: an im2col copy `[t_out][3][c_in]`, then one integer matrix product.
fn conv(c: &Conv, x: &[i16], c_in: usize, t_in: usize) -> Vec<u8> {
    let t_out = (t_in + 2 - 3) / c.stride + 1;
    let mut cols = vec![0i16; t_out * 3 * c_in];
    for t in 0..t_out {
        for k in 0..3 {
            let src = (t * c.stride + k) as isize - 1;
            if src >= 0 && (src as usize) < t_in {
                let s = src as usize;
                cols[(t * 3 + k) * c_in..(t * 3 + k + 1) * c_in]
                    .copy_from_slice(&x[s * c_in..(s + 1) * c_in]);
            }
        }
    }
    let scales: Vec<f32> = c.scale.iter().map(|&s| c.x.scale * s / c.y.scale).collect();
    let mut out = Vec::new();
    kernels::matmul_i16(&cols, &c.w, 3 * c_in, &mut out, |o, acc| {
        c.y.requantize(acc + c.bias[o], scales[o])
    });
    out
}

impl Layer {
    fn forward(&self, h: &mut [f32], last: bool, trace: &mut Tracer) {
        let mut ln = Vec::new();
        let mut xi = Vec::new();
        layer_norm(h, D, &self.ln1.0, &self.ln1.1, &mut ln);
        let lnq: Vec<u8> = ln.iter().map(|&v| self.q.x.quantize(v)).collect();
        trace.emit("ln1 [t][c]", Traced::U8(&lnq));
        self.q.x.centered(&lnq, &mut xi);
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        qmatmul(&xi, self.q.x.scale, &self.q.w, None, self.q.y, &mut q);
        qmatmul(&xi, self.k.x.scale, &self.k.w, None, self.k.y, &mut k);
        qmatmul(&xi, self.v.x.scale, &self.v.w, None, self.v.y, &mut v);
        trace.emit("q [t][c]", Traced::U8(&q));
        trace.emit("k [t][c]", Traced::U8(&k));
        trace.emit("v [t][c]", Traced::U8(&v));
        // Centred, head-major copies: q' [h][t][d], k' [h][t][d], v' transposed [h][d][t].
        let mut qs = vec![0i16; T * D];
        let mut ks = vec![0i16; T * D];
        let mut vt = vec![0i16; T * D];
        for t in 0..T {
            for c in 0..D {
                let (hh, d) = (c / HD, c % HD);
                let i = t * D + c;
                let qv = self.q_tab[c][usize::from(q[i])];
                qs[(hh * T + t) * HD + d] = i16::from(qv) - self.q_scaled.zp as i16;
                let kv = self.k_tab[usize::from(k[i])];
                ks[(hh * T + t) * HD + d] = i16::from(kv) - self.k_scaled.zp as i16;
                let vv = self.v_tab[c][usize::from(v[i])];
                vt[(hh * HD + d) * T + t] = i16::from(vv) - self.v_q.zp as i16;
            }
        }
        let s_scale = self.q_scaled.scale * self.k_scaled.scale / self.scores.scale;
        let a_scale = self.probs.scale * self.v_q.scale / self.attn.scale;
        // attn [t][c], u8
        let mut attn = vec![0u8; T * D];
        let mut per_head = Vec::with_capacity(HEADS);
        let mut scores = Vec::new();
        let mut probs = vec![0i16; T * T];
        let mut prow = vec![0u8; T * T];
        let (mut traced_scores, mut traced_probs) = (Vec::new(), Vec::new());
        for hh in 0..HEADS {
            let qh = &qs[hh * T * HD..(hh + 1) * T * HD];
            let kh = &ks[hh * T * HD..(hh + 1) * T * HD];
            kernels::matmul_i16(qh, kh, HD, &mut scores, |_, acc| {
                self.scores.requantize(acc, s_scale)
            });
            if trace.on() {
                traced_scores.extend_from_slice(&scores);
            }
            self.softmax.rows(&scores, T, &mut prow);
            for (c, &v) in probs.iter_mut().zip(&prow) {
                *c = i16::from(v) - self.probs.zp as i16;
            }
            if trace.on() {
                traced_probs.extend_from_slice(&prow);
            }
            let vh = &vt[hh * HD * T..(hh + 1) * HD * T];
            let mut out = Vec::new();
            kernels::matmul_i16(&probs, vh, T, &mut out, |_, acc| {
                self.attn.requantize(acc, a_scale)
            });
            per_head.push(out);
        }
        trace.emit("scores [h][t][s]", Traced::U8(&traced_scores));
        trace.emit("probs [h][t][s]", Traced::U8(&traced_probs));
        for (hh, o) in per_head.iter().enumerate() {
            for t in 0..T {
                attn[t * D + hh * HD..t * D + (hh + 1) * HD]
                    .copy_from_slice(&o[t * HD..(t + 1) * HD]);
            }
        }
        // Re-quantized to the output projection's input parameters (the same in this model).
        if self.out.x != self.attn {
            for a in &mut attn {
                *a = self.out.x.quantize(self.attn.dequantize(*a));
            }
        }
        trace.emit("attn [t][c]", Traced::U8(&attn));
        self.out.x.centered(&attn, &mut xi);
        let mut o = Vec::new();
        qmatmul(&xi, self.out.x.scale, &self.out.w, None, self.out.y, &mut o);
        let bo = self.out.bias.as_deref().unwrap_or_default();
        for (i, (hv, &q)) in h.iter_mut().zip(&o).enumerate() {
            *hv += self.out.y.dequantize(q) + bo[i % D];
        }
        layer_norm(h, D, &self.ln2.0, &self.ln2.1, &mut ln);
        let lnq: Vec<u8> = ln.iter().map(|&v| self.fc1.x.quantize(v)).collect();
        trace.emit("out [t][c]", Traced::U8(&o));
        trace.emit("ln2 [t][c]", Traced::U8(&lnq));
        self.fc1.x.centered(&lnq, &mut xi);
        let mut f = Vec::new();
        qmatmul(&xi, self.fc1.x.scale, &self.fc1.w, None, self.fc1.y, &mut f);
        let g: Vec<u8> = f
            .iter()
            .enumerate()
            .map(|(i, &q)| self.gelu_tab[i % FF][usize::from(q)])
            .collect();
        trace.emit("fc1 [t][c]", Traced::U8(&f));
        trace.emit("gelu [t][c]", Traced::U8(&g));
        self.fc2.x.centered(&g, &mut xi);
        qmatmul(&xi, self.fc2.x.scale, &self.fc2.w, None, self.fc2.y, &mut f);
        trace.emit("fc2 [t][c]", Traced::U8(&f));
        let b2 = self.fc2.bias.as_deref().unwrap_or_default();
        for (i, (hv, &q)) in h.iter_mut().zip(&f).enumerate() {
            if last {
                // onnxruntime fuses the last residual into SkipLayerNormalization:
                // (h + dq) + bias.
                *hv = (*hv + self.fc2.y.dequantize(q)) + b2[i % D];
            } else {
                *hv += self.fc2.y.dequantize(q) + b2[i % D];
            }
        }
    }
}
