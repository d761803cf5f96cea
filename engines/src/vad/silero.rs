//! Silero VAD v5 (16 kHz), loaded from the `silero-vad` package's ONNX export.
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

use std::path::Path;

use crate::error::{Error, Result};
use crate::tts::onnx::{NodeProto, OnnxModel};
use crate::tts::{TtsErrorKind, TtsSubject};

/// Sample rate the model runs at: the speech path's one rate.
pub use crate::audio::SAMPLE_RATE;
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
    scratch: Scratch,
}

impl Default for VadState {
    fn default() -> Self {
        Self {
            h: vec![0.0; HIDDEN],
            c: vec![0.0; HIDDEN],
            context: [0.0; CONTEXT],
            input: Vec::with_capacity(CONTEXT + WINDOW + PAD),
            scratch: Scratch::default(),
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
    /// `[out][in][3]`, row-major: row `o` is contiguous and matches an im2col column.
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    stride: usize,
}

impl ConvBlock {
    /// `input` is `[c_in][l_in]`; returns `[c_out][l_out]` after ReLU. `col` is scratch.
    fn forward(&self, input: &[f32], l_in: usize, col: &mut Vec<f32>, out: &mut Vec<f32>) -> usize {
        let l_out = (l_in + 2 - 3) / self.stride + 1;
        let width = self.c_in * 3;
        // im2col: column t holds input[c][t*stride + k - 1] for c, k (zero outside).
        col.clear();
        col.resize(l_out * width, 0.0);
        for t in 0..l_out {
            let dst = &mut col[t * width..(t + 1) * width];
            for c in 0..self.c_in {
                for k in 0..3 {
                    let pos = (t * self.stride + k) as isize - 1;
                    if pos >= 0 && (pos as usize) < l_in {
                        dst[c * 3 + k] = input[c * l_in + pos as usize];
                    }
                }
            }
        }
        out.clear();
        out.resize(self.c_out * l_out, 0.0);
        for o in 0..self.c_out {
            let w = &self.weight[o * width..(o + 1) * width];
            for t in 0..l_out {
                let v = self.bias[o] + dot(w, &col[t * width..(t + 1) * width]);
                out[o * l_out + t] = v.max(0.0);
            }
        }
        l_out
    }
}

/// Scratch buffers of one stream, reused between windows (no allocation per window).
#[derive(Debug, Clone, Default)]
struct Scratch {
    spec: Vec<f32>,
    a: Vec<f32>,
    col: Vec<f32>,
    gates: Vec<f32>,
}

/// The Silero VAD network, weights converted once to f32 (about 1.2 MB).
///
/// The kernels are plain Rust loops over contiguous rows (dot products the compiler
/// vectorizes), single-threaded and allocation-free per window: at 31 windows a second the
/// model must not wake a thread pool that the LLM and STT engines are using.
#[derive(Debug)]
pub struct SileroVad {
    /// `[258][256]`: rows 0..129 real, 129..258 imaginary parts of the STFT basis.
    stft_basis: Vec<f32>,
    encoder: Vec<ConvBlock>,
    /// `[512][128]` each, PyTorch LSTMCell gate order i, f, g, o.
    w_ih: Vec<f32>,
    w_hh: Vec<f32>,
    /// `bias_ih + bias_hh`, `[512]`.
    lstm_b: Vec<f32>,
    /// Decoder 1x1 conv: `[128]` and a scalar.
    dec_w: Vec<f32>,
    dec_b: f32,
}

impl SileroVad {
    /// Loads `silero_vad_16k_op15.onnx` (or an export with the same initializers).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_onnx(&OnnxModel::open(path)?)
    }

    /// Builds the network from a parsed ONNX model.
    pub fn from_onnx(model: &OnnxModel) -> Result<Self> {
        let stft_basis = weight(
            model,
            "model.stft.forward_basis_buffer",
            &[2 * BINS, 1, N_FFT],
        )?;
        check_conv(
            model,
            "model.stft.forward_basis_buffer",
            N_FFT as i64,
            HOP as i64,
            0,
        )?;
        check_reflect_pad(model)?;

        let layers = [
            (BINS, 128usize, 1usize),
            (128, 64, 2),
            (64, 64, 2),
            (64, 128, 1),
        ];
        let mut encoder = Vec::with_capacity(layers.len());
        for (i, &(c_in, c_out, stride)) in layers.iter().enumerate() {
            let wname = format!("model.encoder.{i}.reparam_conv.weight");
            let bname = format!("model.encoder.{i}.reparam_conv.bias");
            let weight_v = weight(model, &wname, &[c_out, c_in, 3])?;
            let bias = weight(model, &bname, &[c_out])?;
            check_conv(model, &wname, 3, stride as i64, 1)?;
            encoder.push(ConvBlock {
                weight: weight_v,
                bias,
                c_in,
                c_out,
                stride,
            });
        }

        let w_ih = weight(model, "model.decoder.rnn.weight_ih", &[4 * HIDDEN, HIDDEN])?;
        let w_hh = weight(model, "model.decoder.rnn.weight_hh", &[4 * HIDDEN, HIDDEN])?;
        let b_ih = weight(model, "model.decoder.rnn.bias_ih", &[4 * HIDDEN])?;
        let b_hh = weight(model, "model.decoder.rnn.bias_hh", &[4 * HIDDEN])?;
        let lstm_b = b_ih.iter().zip(&b_hh).map(|(a, b)| a + b).collect();

        let dec_w = weight(model, "model.decoder.decoder.2.weight", &[1, HIDDEN, 1])?;
        check_conv(model, "model.decoder.decoder.2.weight", 1, 1, 0)?;
        let dec_b = weight(model, "model.decoder.decoder.2.bias", &[1])?[0];

        Ok(Self {
            stft_basis,
            encoder,
            w_ih,
            w_hh,
            lstm_b,
            dec_w,
            dec_b,
        })
    }

    /// The speech probability of `window` (the next 512 samples of the stream, 16 kHz, f32
    /// in [-1, 1]), updating `state`. Non-finite samples are treated as 0.
    pub fn probability(&self, state: &mut VadState, window: &[f32; WINDOW]) -> f32 {
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

        // STFT as a strided conv: frames t of 256 samples, hop 128; magnitude per bin.
        let frames = (input.len() - N_FFT) / HOP + 1;
        let sc = &mut state.scratch;
        sc.spec.clear();
        sc.spec.resize(BINS * frames, 0.0);
        for t in 0..frames {
            let x = &input[t * HOP..t * HOP + N_FFT];
            for bin in 0..BINS {
                let re = dot(&self.stft_basis[bin * N_FFT..(bin + 1) * N_FFT], x);
                let im = dot(
                    &self.stft_basis[(BINS + bin) * N_FFT..(BINS + bin + 1) * N_FFT],
                    x,
                );
                sc.spec[bin * frames + t] = (re * re + im * im).sqrt();
            }
        }
        let mut len = frames;
        let (mut cur, mut next) = (std::mem::take(&mut sc.spec), std::mem::take(&mut sc.a));
        for block in &self.encoder {
            len = block.forward(&cur, len, &mut sc.col, &mut next);
            std::mem::swap(&mut cur, &mut next);
        }
        // cur is [128][len]; the export squeezes the time axis, which is 1 here.
        let feat = &cur[..HIDDEN.min(cur.len())];

        sc.gates.clear();
        for g in 0..4 * HIDDEN {
            let row = g * HIDDEN..(g + 1) * HIDDEN;
            sc.gates.push(
                self.lstm_b[g]
                    + dot(&self.w_ih[row.clone()], feat)
                    + dot(&self.w_hh[row], &state.h),
            );
        }
        let mut logit = self.dec_b;
        for k in 0..HIDDEN {
            let g = |q: usize| sc.gates[q * HIDDEN + k];
            let (i, f, c_hat, o) = (sigmoid(g(0)), sigmoid(g(1)), g(2).tanh(), sigmoid(g(3)));
            let c = f * state.c[k] + i * c_hat;
            let hk = o * c.tanh();
            state.c[k] = c;
            state.h[k] = hk;
            logit += self.dec_w[k] * hk.max(0.0);
        }
        sc.spec = cur;
        sc.a = next;
        sigmoid(logit)
    }
}

/// Dot product of two equally long rows. SIMD with four independent accumulators (AVX+FMA
/// on x86-64 when the CPU has them, NEON on aarch64), scalar otherwise.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_avx_fma() {
            // SAFETY: the CPU supports AVX and FMA (checked at run time).
            return unsafe { simd::dot_avx_fma(a, b) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline.
        return unsafe { simd::dot_neon(a, b) };
    }
    #[allow(unreachable_code)]
    dot_scalar(a, b)
}

fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

mod simd {
    #[cfg(target_arch = "x86_64")]
    pub(super) fn has_avx_fma() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx") && is_x86_feature_detected!("fma"))
    }

    /// # Safety
    /// The CPU must support AVX and FMA; `a` and `b` have the same length.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx,fma")]
    pub(super) unsafe fn dot_avx_fma(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n, resp. i + 8 <= n, within both slices.
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let x = unsafe { _mm256_loadu_ps(pa.add(i + 8 * k)) };
                let y = unsafe { _mm256_loadu_ps(pb.add(i + 8 * k)) };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = unsafe { _mm256_loadu_ps(pa.add(i)) };
            let y = unsafe { _mm256_loadu_ps(pb.add(i)) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut total = _mm_cvtss_f32(s);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }

    /// # Safety
    /// `a` and `b` have the same length (NEON is always there on aarch64).
    #[cfg(target_arch = "aarch64")]
    pub(super) unsafe fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::aarch64::*;
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY (all loads): i + 16 <= n, resp. i + 4 <= n, within both slices.
        unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut i = 0;
            while i + 16 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let x = vld1q_f32(pa.add(i + 4 * k));
                    let y = vld1q_f32(pb.add(i + 4 * k));
                    *acc = vfmaq_f32(*acc, x, y);
                }
                i += 16;
            }
            while i + 4 <= n {
                acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
                i += 4;
            }
            let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
            let mut total = vaddvq_f32(s);
            while i < n {
                total += a[i] * b[i];
                i += 1;
            }
            total
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn tensor_err(model: &OnnxModel, name: &str, kind: TtsErrorKind) -> Error {
    Error::Tts(
        model
            .error(kind)
            .subject(TtsSubject::Tensor(name.to_owned())),
    )
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
fn check_conv(model: &OnnxModel, weight: &str, kernel: i64, stride: i64, pad: i64) -> Result<()> {
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
            context: "a reflect-mode Pad node on the graph input (Silero VAD STFT padding)".into(),
        })));
    }
    Ok(())
}
