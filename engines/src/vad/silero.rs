//! Silero VAD v5 (16 kHz) on candle, loaded from the `silero-vad` package's ONNX export.
//!
//! # The graph (as exported in `silero_vad_16k_op15.onnx`)
//!
//! ```text
//! input [1, 64 + 512]    the previous window's last 64 samples, then the new 512
//!   Pad reflect (0, 64)  -> [1, 640]
//!   Conv basis [258, 1, 256], stride 128, no padding      -> [1, 258, 4]   (STFT as conv1d)
//!   magnitude sqrt(re^2 + im^2), re = rows 0..129, im = rows 129..258 -> [1, 129, 4]
//!   encoder: 4 x (Conv k=3 pad=1, strides 1, 2, 2, 1; ReLU)           -> [1, 128, 1]
//!   LSTMCell(128 -> 128), state (h, c) carried between calls (gates i, f, g, o)
//!   ReLU(h), Conv 1x1 128 -> 1, Sigmoid, mean over time (one step)    -> probability
//! ```
//!
//! The reader checks this against the file: every initializer's name and shape, and the
//! kernel, stride and padding attributes of the `Conv` node that consumes each weight, so a
//! different export fails at load time with the tensor or node named, instead of computing
//! nonsense. The model that packs the 8 kHz and 16 kHz branches into `If` subgraphs
//! (`silero_vad.onnx`) keeps its weights as anonymous `Constant`s and is not read; onnxruntime
//! gives bit-identical probabilities for both files (see `scripts/reference/vad_reference.py`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::tts::onnx::{NodeProto, OnnxModel};
use crate::tts::{TtsError, TtsErrorKind, TtsSubject};

/// Sample rate the model runs at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per window (32 ms at 16 kHz).
pub const WINDOW: usize = 512;
/// Samples carried over from the previous window.
pub const CONTEXT: usize = 64;
/// LSTM width.
const HIDDEN: usize = 128;
/// STFT: frame length, hop, number of frequency bins.
const N_FFT: usize = 256;
const HOP: usize = 128;
const BINS: usize = N_FFT / 2 + 1;
/// Right reflection padding before the STFT.
const PAD: usize = 64;

/// The recurrent state of one audio stream: the LSTM's `h` and `c`, and the last
/// [`CONTEXT`] samples seen. One per stream; [`VadState::reset`] between utterances is not
/// needed (the model expects a continuous stream), only between unrelated streams.
#[derive(Debug, Clone)]
pub struct VadState {
    h: Vec<f32>,
    c: Vec<f32>,
    context: [f32; CONTEXT],
    /// `[context | window]`, reused between calls.
    input: Vec<f32>,
}

impl Default for VadState {
    fn default() -> Self {
        Self {
            h: vec![0.0; HIDDEN],
            c: vec![0.0; HIDDEN],
            context: [0.0; CONTEXT],
            input: Vec::with_capacity(CONTEXT + WINDOW + PAD),
        }
    }
}

impl VadState {
    /// A fresh state (zeros), as at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Back to the start-of-stream state.
    pub fn reset(&mut self) {
        self.h.fill(0.0);
        self.c.fill(0.0);
        self.context = [0.0; CONTEXT];
    }

    /// Records `window` as seen without running the model: the next call sees its last 64
    /// samples as context. Used when an energy gate skips a quiet window.
    pub fn skip(&mut self, window: &[f32; WINDOW]) {
        self.context.copy_from_slice(&window[WINDOW - CONTEXT..]);
    }
}

/// One encoder block: `Conv1d(k=3, pad=1, stride)` then ReLU.
#[derive(Debug)]
struct ConvBlock {
    weight: Tensor,
    /// `[1, out, 1]`, for broadcasting.
    bias: Tensor,
    stride: usize,
}

/// The Silero VAD network, weights converted once to f32 candle tensors (about 1.2 MB).
#[derive(Debug)]
pub struct SileroVad {
    path: Option<PathBuf>,
    /// `[258, 1, 256]`.
    stft_basis: Tensor,
    encoder: Vec<ConvBlock>,
    /// `[weight_ih | weight_hh]` transposed: `[256, 512]`, so `[x | h] @ w` gives the gates.
    lstm_w: Tensor,
    /// `bias_ih + bias_hh`, `[512]`.
    lstm_b: Vec<f32>,
    /// Decoder 1x1 conv: `[128]` and a scalar.
    dec_w: Vec<f32>,
    dec_b: f32,
    device: Device,
}

fn candle_err(path: Option<&Path>, e: candle_core::Error) -> Error {
    let mut err = TtsError::new(
        crate::tts::TtsFile::Onnx,
        TtsErrorKind::BadValue {
            reason: format!("Silero VAD inference failed: {e}"),
        },
    );
    err.path = path.map(Path::to_owned);
    Error::Tts(err)
}

impl SileroVad {
    /// Loads `silero_vad_16k_op15.onnx` (or an export with the same initializers).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_onnx(&OnnxModel::open(path)?)
    }

    /// Builds the network from a parsed ONNX model.
    pub fn from_onnx(model: &OnnxModel) -> Result<Self> {
        let device = Device::Cpu;
        let path = model.path().map(Path::to_owned);
        let cerr = |e| candle_err(model.path(), e);

        let stft = weight(model, "model.stft.forward_basis_buffer", &[2 * BINS, 1, N_FFT])?;
        check_conv(model, "model.stft.forward_basis_buffer", N_FFT as i64, HOP as i64, 0)?;
        let stft_basis =
            Tensor::from_vec(stft, (2 * BINS, 1, N_FFT), &device).map_err(cerr)?;
        check_reflect_pad(model)?;

        let layers = [(BINS, 128usize, 1usize), (128, 64, 2), (64, 64, 2), (64, 128, 1)];
        let mut encoder = Vec::with_capacity(layers.len());
        for (i, &(c_in, c_out, stride)) in layers.iter().enumerate() {
            let wname = format!("model.encoder.{i}.reparam_conv.weight");
            let bname = format!("model.encoder.{i}.reparam_conv.bias");
            let w = weight(model, &wname, &[c_out, c_in, 3])?;
            let b = weight(model, &bname, &[c_out])?;
            check_conv(model, &wname, 3, stride as i64, 1)?;
            encoder.push(ConvBlock {
                weight: Tensor::from_vec(w, (c_out, c_in, 3), &device).map_err(cerr)?,
                bias: Tensor::from_vec(b, (1, c_out, 1), &device).map_err(cerr)?,
                stride,
            });
        }

        let w_ih = weight(model, "model.decoder.rnn.weight_ih", &[4 * HIDDEN, HIDDEN])?;
        let w_hh = weight(model, "model.decoder.rnn.weight_hh", &[4 * HIDDEN, HIDDEN])?;
        let b_ih = weight(model, "model.decoder.rnn.bias_ih", &[4 * HIDDEN])?;
        let b_hh = weight(model, "model.decoder.rnn.bias_hh", &[4 * HIDDEN])?;
        // [x | h] (1 x 256) @ W (256 x 512): row k of W is column k of [w_ih | w_hh].
        let mut w = vec![0f32; 2 * HIDDEN * 4 * HIDDEN];
        for gate in 0..4 * HIDDEN {
            for k in 0..HIDDEN {
                w[k * 4 * HIDDEN + gate] = w_ih[gate * HIDDEN + k];
                w[(HIDDEN + k) * 4 * HIDDEN + gate] = w_hh[gate * HIDDEN + k];
            }
        }
        let lstm_w = Tensor::from_vec(w, (2 * HIDDEN, 4 * HIDDEN), &device).map_err(cerr)?;
        let lstm_b = b_ih.iter().zip(&b_hh).map(|(a, b)| a + b).collect();

        let dec_w = weight(model, "model.decoder.decoder.2.weight", &[1, HIDDEN, 1])?;
        check_conv(model, "model.decoder.decoder.2.weight", 1, 1, 0)?;
        let dec_b = weight(model, "model.decoder.decoder.2.bias", &[1])?[0];

        Ok(Self {
            path,
            stft_basis,
            encoder,
            lstm_w,
            lstm_b,
            dec_w,
            dec_b,
            device,
        })
    }

    /// The speech probability of `window` (the next 512 samples of the stream, 16 kHz, f32
    /// in [-1, 1]), updating `state`. Non-finite samples are treated as 0.
    pub fn probability(&self, state: &mut VadState, window: &[f32; WINDOW]) -> Result<f32> {
        let cerr = |e| candle_err(self.path.as_deref(), e);
        // [context | window], then reflect-pad 64 on the right: x[n-2-j] for j in 0..64.
        let input = &mut state.input;
        input.clear();
        input.extend_from_slice(&state.context);
        input.extend(window.iter().map(|&s| if s.is_finite() { s } else { 0.0 }));
        let n = input.len();
        for j in 0..PAD {
            input.push(input[n - 2 - j]);
        }
        state.context.copy_from_slice(&input[n - CONTEXT..n]);

        let x = Tensor::from_slice(input.as_slice(), (1, 1, input.len()), &self.device)
            .map_err(cerr)?;
        let spec = x.conv1d(&self.stft_basis, 0, HOP, 1, 1).map_err(cerr)?;
        let re = spec.narrow(1, 0, BINS).map_err(cerr)?;
        let im = spec.narrow(1, BINS, BINS).map_err(cerr)?;
        let mut h = (re.sqr().map_err(cerr)? + im.sqr().map_err(cerr)?)
            .and_then(|t| t.sqrt())
            .map_err(cerr)?;
        for block in &self.encoder {
            h = h
                .conv1d(&block.weight, 1, block.stride, 1, 1)
                .and_then(|t| t.broadcast_add(&block.bias))
                .and_then(|t| t.relu())
                .map_err(cerr)?;
        }
        // [1, 128, 1] -> the LSTM input.
        let feat = h.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(cerr)?;
        if feat.len() != HIDDEN {
            return Err(cerr(candle_core::Error::Msg(format!(
                "encoder produced {} features, expected {HIDDEN}",
                feat.len()
            ))));
        }
        let mut xh = Vec::with_capacity(2 * HIDDEN);
        xh.extend_from_slice(&feat);
        xh.extend_from_slice(&state.h);
        let gates = Tensor::from_vec(xh, (1, 2 * HIDDEN), &self.device)
            .and_then(|t| t.matmul(&self.lstm_w))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cerr)?;
        let mut logit = self.dec_b;
        for k in 0..HIDDEN {
            let g = |q: usize| gates[q * HIDDEN + k] + self.lstm_b[q * HIDDEN + k];
            let (i, f, c_hat, o) = (sigmoid(g(0)), sigmoid(g(1)), g(2).tanh(), sigmoid(g(3)));
            let c = f * state.c[k] + i * c_hat;
            let hk = o * c.tanh();
            state.c[k] = c;
            state.h[k] = hk;
            logit += self.dec_w[k] * hk.max(0.0);
        }
        Ok(sigmoid(logit))
    }

    /// The dtype the network computes in.
    pub fn dtype(&self) -> DType {
        DType::F32
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn tensor_err(model: &OnnxModel, name: &str, kind: TtsErrorKind) -> Error {
    Error::Tts(model.error(kind).subject(TtsSubject::Tensor(name.to_owned())))
}

/// The initializer `name` as f32, checked to have shape `dims`.
fn weight(model: &OnnxModel, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
    let t = model.initializer(name).ok_or_else(|| {
        tensor_err(
            model,
            name,
            TtsErrorKind::Missing {
                context: "Silero VAD 16 kHz initializers (use silero_vad_16k_op15.onnx)".into(),
            },
        )
    })?;
    let found = t.dims();
    if found.len() != dims.len() || found.iter().zip(dims).any(|(&f, &d)| f != d as i64) {
        return Err(tensor_err(
            model,
            name,
            TtsErrorKind::UnexpectedShape {
                expected: format!("{dims:?}"),
                found: found.to_vec(),
            },
        ));
    }
    let v = t.to_f32_vec()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(tensor_err(
            model,
            name,
            TtsErrorKind::BadValue {
                reason: format!("element {i} is {}", v[i]),
            },
        ));
    }
    Ok(v)
}

/// The `Conv` node of the main graph whose second input is `weight`.
fn conv_node<'m>(model: &'m OnnxModel, weight: &str) -> Result<&'m NodeProto> {
    model
        .graph()
        .node
        .iter()
        .find(|n| n.op_type == "Conv" && n.input.get(1).is_some_and(|i| i == weight))
        .ok_or_else(|| {
            tensor_err(
                model,
                weight,
                TtsErrorKind::Missing {
                    context: "no Conv node of the main graph uses it as its kernel".into(),
                },
            )
        })
}

/// Checks kernel size, stride and symmetric padding of the Conv consuming `weight`.
fn check_conv(
    model: &OnnxModel,
    weight: &str,
    kernel: i64,
    stride: i64,
    pad: i64,
) -> Result<()> {
    let node = conv_node(model, weight)?;
    let want: [(&'static str, &[i64], bool); 4] = [
        ("kernel_shape", &[kernel], false),
        ("strides", &[stride], true),
        ("pads", &[pad, pad], true),
        ("dilations", &[1], true),
    ];
    for (attr, expected, optional_default) in want {
        let found = node.attr(attr).and_then(|a| a.as_ints());
        let ok = match found {
            Some(v) => v == expected,
            // ONNX defaults: stride 1, no padding, dilation 1.
            None => optional_default && expected.iter().all(|&e| e == i64::from(attr != "pads")),
        };
        if !ok {
            return Err(Error::Tts(
                model
                    .error(TtsErrorKind::BadAttribute {
                        attribute: attr,
                        reason: format!("is {found:?}, the Silero VAD graph needs {expected:?}"),
                    })
                    .subject(TtsSubject::Node(node.name.clone())),
            ));
        }
    }
    if node.attr("group").and_then(|a| a.as_int()).unwrap_or(1) != 1 {
        return Err(Error::Tts(
            model
                .error(TtsErrorKind::BadAttribute {
                    attribute: "group",
                    reason: "grouped convolution, the Silero VAD graph has none".into(),
                })
                .subject(TtsSubject::Node(node.name.clone())),
        ));
    }
    Ok(())
}

/// The STFT's input must be padded by reflection (the amount comes from a constant folded
/// through a Slice/Transpose chain; it is checked against onnxruntime by the tests).
fn check_reflect_pad(model: &OnnxModel) -> Result<()> {
    let pad = model
        .graph()
        .node
        .iter()
        .find(|n| n.op_type == "Pad" && n.input.first().is_some_and(|i| i == "input"));
    let mode = pad
        .and_then(|n| n.attr("mode"))
        .and_then(|a| a.s.as_deref());
    if mode != Some(b"reflect".as_slice()) {
        return Err(Error::Tts(model.error(TtsErrorKind::Missing {
            context: "a reflect-mode Pad node on the graph input (Silero VAD STFT padding)"
                .into(),
        })));
    }
    Ok(())
}
