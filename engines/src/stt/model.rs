//! Whisper's network on candle-core (CPU, `f32`): the audio encoder and the text decoder
//! with a self-attention KV cache and per-segment cross-attention keys and values.
//!
//! The CTranslate2 weights (float16 in the released faster-whisper models) are converted to
//! `f32` candle tensors once, at load. Linear layers keep CTranslate2's `[out, in]` layout and
//! multiply by its transposed view (gemm reads either order); fused projections stay fused, so
//! the self-attention's query, key and value come from one matrix product (the key rows' bias
//! is zero in Whisper, as the converter stores it). The tied output projection is also kept
//! as Q8_0 blocks (when the width is a multiple of 32) and multiplied with the crate's quantized
//! matrix-vector kernels: it is the largest matrix of the decoder (`n_vocab × state`), read once
//! per generated token.

use candle_core::{CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;

use super::ct2::{DType as CtType, TensorSlice};
use super::encoder;
use super::ops::{AddAssign, BiasGelu, LayerNorm, Softmax, dot};
use super::weights::{self, WhisperDims, WhisperWeights};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::mapped::Frozen;
use crate::quant::{self, QMatrix};

/// Layer-norm epsilon of Whisper (PyTorch's default).
const LN_EPS: f32 = 1e-5;

pub(crate) fn candle_err(what: &str) -> impl FnOnce(candle_core::Error) -> Error + '_ {
    move |e| Error::Stt {
        reason: format!("{what}: {e}"),
    }
}

type CResult<T> = candle_core::Result<T>;

/// A tensor's values as `f32`, applying an int8/int16 quantization scale if there is one.
pub(crate) fn floats(t: &TensorSlice, scale: Option<&TensorSlice>) -> Vec<f32> {
    let mut v = t.to_f32_vec();
    if let Some(s) = scale {
        let s = s.to_f32_vec();
        let row = t.row_len().max(1);
        if t.dtype() == CtType::I8 && s.len() * row == v.len() {
            for (chunk, &sc) in v.chunks_exact_mut(row).zip(&s) {
                let inv = if sc != 0.0 { 1.0 / sc } else { 0.0 };
                chunk.iter_mut().for_each(|x| *x *= inv);
            }
        } else if let Some(&sc) = s.first() {
            let inv = if sc != 0.0 { 1.0 / sc } else { 0.0 };
            v.iter_mut().for_each(|x| *x *= inv);
        }
    }
    v
}

fn tensor(t: &TensorSlice, scale: Option<&TensorSlice>) -> Result<Tensor> {
    Tensor::from_vec(floats(t, scale), t.shape(), &Device::Cpu)
        .map_err(candle_err(&format!("tensor {:?}", t.name())))
}

/// Input rows from which an `f32` [`Linear`] runs [`encoder::linear_raw`] instead of a
/// candle product.
const FAST_MIN_ROWS: usize = 64;

/// A linear layer: `weight` is `[out, in]`, as an `f32` tensor (encoder) or as Q8_0
/// blocks (decoder, when quantized and `in` is a multiple of 32).
struct Linear {
    weight: Option<Tensor>,
    /// `[in, out]`: the weight transposed, for layers fed many rows at once (the
    /// cross-attention keys and values), multiplied by [`encoder::linear_raw`].
    wt: Option<Frozen<f32>>,
    q: Option<(GgmlType, QBytes)>,
    rows: usize,
    cols: usize,
    bias: Vec<f32>,
    threads: usize,
}

impl Linear {
    /// Keeps an `f32` weight transposed, for [`encoder::linear_raw`] (quantized weights
    /// stay as they are).
    fn transposed(mut self) -> CResult<Self> {
        if let Some(w) = self.weight.take() {
            let v = w.flatten_all()?.to_vec1::<f32>()?;
            self.wt = Some(encoder::transpose(&v, self.rows, self.cols).into());
        }
        Ok(self)
    }
}

/// Quantized weight rows: made at load, or borrowed from a memory-mapped GGUF file.
enum QBytes {
    Owned(Frozen<u8>),
    Mapped(TensorSlice),
}

impl QBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            QBytes::Owned(v) => v,
            QBytes::Mapped(t) => t.bytes(),
        }
    }
}

/// The parts as one file-backed quantized matrix, if they are consecutive rows of one
/// quantized variable (a GGUF fused projection, or a single matrix).
fn mapped_rows(parts: &[&weights::Linear]) -> Option<(GgmlType, TensorSlice)> {
    let first = parts.first()?;
    let ty = first.weight.quant()?;
    let var = first.weight.variable();
    let mut end = first.weight.row_range().start;
    for p in parts {
        let r = p.weight.row_range();
        if p.weight.quant() != Some(ty) || p.weight.name() != var.name() || r.start != end {
            return None;
        }
        end = r.end;
    }
    Some((ty, var.rows(first.weight.row_range().start..end)?))
}

fn quantize_q8_0(w: &[f32], cols: usize) -> Vec<u8> {
    let mut q = Vec::with_capacity(w.len() / 32 * 34);
    for row in w.chunks_exact(cols) {
        q.extend(quant::quantize_row_q8_0(row));
    }
    q
}

impl Linear {
    fn load(l: &weights::Linear, mapped: Option<usize>) -> Result<Self> {
        Self::load_fused(&[l], None, mapped)
    }

    /// Layers with the same input fused by concatenating their rows (e.g. attention query,
    /// key and value); `Some(threads)` keeps them as Q8_0 when the width allows.
    /// `mapped: Some(threads)` keeps already-quantized (GGUF) weights file-backed.
    fn load_fused(
        parts: &[&weights::Linear],
        q8_threads: Option<usize>,
        mapped: Option<usize>,
    ) -> Result<Self> {
        let mut w = Vec::new();
        let quantized = mapped.and_then(|t| mapped_rows(parts).map(|q| (t, q)));
        let mut bias = Vec::new();
        let mut rows = 0;
        let mut cols = 0;
        for l in parts {
            let shape = l.weight.shape();
            let (r, c) = (shape.first().copied().unwrap_or(0), l.weight.row_len());
            if quantized.is_none() {
                w.extend(floats(&l.weight, l.scale.as_ref()));
            }
            match &l.bias {
                Some(b) => bias.extend(b.to_f32_vec()),
                None => bias.extend(std::iter::repeat_n(0.0, r)),
            }
            rows += r;
            cols = c;
        }
        if bias.iter().all(|&b| b == 0.0) {
            bias.clear();
        }
        let name = parts.first().map_or("", |l| l.weight.name());
        if let Some((threads, (ty, slice))) = quantized {
            return Ok(Self {
                weight: None,
                wt: None,
                q: Some((ty, QBytes::Mapped(slice))),
                rows,
                cols,
                bias,
                threads,
            });
        }
        match q8_threads {
            Some(threads) if cols % 32 == 0 && cols > 0 => Ok(Self {
                weight: None,
                wt: None,
                q: Some((
                    GgmlType::Q8_0,
                    QBytes::Owned(quantize_q8_0(&w, cols).into()),
                )),
                rows,
                cols,
                bias,
                threads,
            }),
            _ => Ok(Self {
                weight: Some(
                    Tensor::from_vec(w, (rows, cols), &Device::Cpu)
                        .map_err(candle_err(&format!("tensor {name:?}")))?,
                ),
                wt: None,
                q: None,
                rows,
                cols,
                bias,
                threads: 1,
            }),
        }
    }

    /// `x · Wᵀ + b` (and GELU if asked) for `x` of shape `(rows, in)`.
    fn forward(&self, x: &Tensor, gelu: bool) -> CResult<Tensor> {
        if let Some(wt) = &self.wt {
            let (n, cols) = x.dims2()?;
            if cols != self.cols {
                candle_core::bail!("linear layer of width {} fed rows of {cols}", self.cols);
            }
            let y = if n >= FAST_MIN_ROWS {
                let x = x.contiguous()?;
                let mut out = vec![0.0f32; n * self.rows];
                with_f32(&x, |xs| {
                    encoder::linear_raw(
                        n,
                        xs,
                        self.cols,
                        wt,
                        self.rows,
                        self.cols,
                        &mut out,
                        false,
                        &|_, o| encoder::add_bias(&self.bias, o),
                    )
                })?;
                let y = Tensor::from_vec(out, (n, self.rows), &Device::Cpu)?;
                if !gelu {
                    return Ok(y);
                }
                y.inplace_op1(&BiasGelu {
                    bias: &[],
                    per_row: false,
                    gelu,
                })?;
                return Ok(y);
            } else {
                x.matmul(&Tensor::from_slice(
                    &wt[..],
                    (self.cols, self.rows),
                    &Device::Cpu,
                )?)?
            };
            if !self.bias.is_empty() || gelu {
                y.inplace_op1(&BiasGelu {
                    bias: &self.bias,
                    per_row: false,
                    gelu,
                })?;
            }
            return Ok(y);
        }
        let y = match (&self.weight, &self.q) {
            (Some(w), _) => x.matmul(&w.t()?)?,
            (None, Some((ty, q))) => {
                let n = x.dim(0)?;
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let m = QMatrix::new(*ty, self.rows, self.cols, q.bytes())
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                // Rows are whole blocks, so the concatenation quantizes as one.
                let xq = m
                    .quantize_activation(&xs)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                let mut out = vec![0.0f32; n * self.rows];
                m.matmul(&xq, &mut out, self.threads)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                Tensor::from_vec(out, (n, self.rows), &Device::Cpu)?
            }
            (None, None) => candle_core::bail!("linear layer without weights"),
        };
        if !self.bias.is_empty() || gelu {
            y.inplace_op1(&BiasGelu {
                bias: &self.bias,
                per_row: false,
                gelu,
            })?;
        }
        Ok(y)
    }
}

impl Linear {
    /// [`Linear::forward`] on plain rows: `x` is `n × in`; returns `n × out`. Quantized
    /// weights go straight to the kernels, without a candle tensor on either side.
    fn forward_slice(&self, x: &[f32], n: usize, gelu: bool) -> CResult<Vec<f32>> {
        let mut y = match &self.q {
            Some((ty, q)) if self.weight.is_none() && self.wt.is_none() => {
                let m = QMatrix::new(*ty, self.rows, self.cols, q.bytes())
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                let xq = m
                    .quantize_activation(x)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                let mut out = vec![0.0f32; n * self.rows];
                m.matmul(&xq, &mut out, self.threads)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                out
            }
            _ => {
                let t = Tensor::from_slice(x, (n, self.cols), &Device::Cpu)?;
                return self.forward(&t, gelu)?.flatten_all()?.to_vec1::<f32>();
            }
        };
        if gelu {
            super::vmath::bias_gelu(&self.bias, &mut y);
        } else if !self.bias.is_empty() {
            for row in y.chunks_exact_mut(self.rows) {
                row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
            }
        }
        Ok(y)
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    /// Layer norm of each row of `x` (rows of `gamma.len()` values).
    fn apply_rows(&self, x: &[f32]) -> Vec<f32> {
        let ln = LayerNorm {
            gamma: &self.gamma,
            beta: &self.beta,
            eps: LN_EPS,
        };
        let d = self.gamma.len().max(1);
        let mut y = vec![0.0f32; x.len()];
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            ln.row(xr, yr);
        }
        y
    }
}

impl Norm {
    fn load(n: &weights::LayerNorm) -> Self {
        Self {
            gamma: n.gamma.to_f32_vec(),
            beta: n.beta.to_f32_vec(),
        }
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&LayerNorm {
            gamma: &self.gamma,
            beta: &self.beta,
            eps: LN_EPS,
        })
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(m: &weights::Mlp, q8: Option<usize>, mapped: Option<usize>) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load_fused(&[&m.fc1], q8, mapped)?,
            fc2: Linear::load_fused(&[&m.fc2], q8, mapped)?,
        })
    }
}

/// `(rows, parts · heads · dh)` → `parts` tensors of `(heads, rows, dh)`, contiguous.
fn split_heads(x: &Tensor, parts: usize, heads: usize) -> CResult<Vec<Tensor>> {
    let (rows, width) = x.dims2()?;
    let dh = width / (parts * heads);
    let x = x
        .reshape((rows, parts, heads, dh))?
        .permute((1, 2, 0, 3))?
        .contiguous()?;
    (0..parts).map(|p| x.get(p)).collect()
}

/// `(heads, rows, dh)` → `(rows, heads · dh)`.
fn merge_heads(x: &Tensor) -> CResult<Tensor> {
    let (h, rows, dh) = x.dims3()?;
    x.transpose(0, 1)?.contiguous()?.reshape((rows, h * dh))
}

/// Query rows per block in [`attention`]: a block's scores (`heads × 128 × keys`) stay in
/// the cache between the two products and the softmax (for the encoder's 1500 keys, the
/// whole score matrix would be 54 MB for tiny, larger than the last-level cache).
const Q_BLOCK: usize = 128;

/// Query rows up to which [`attention`] runs [`attention_direct`] (a decoding step)
/// instead of matrix products.
const DIRECT_MAX_Q: usize = 4;

/// Runs `f` on the values of a contiguous `f32` CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> CResult<R> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*s else {
        candle_core::bail!("expected an f32 tensor on the CPU");
    };
    let Some(vals) = l.contiguous_offsets().and_then(|(a, b)| v.get(a..b)) else {
        candle_core::bail!("expected a contiguous tensor");
    };
    Ok(f(vals))
}

/// Attention for a few query rows (a decoding step), head by head, without matrix
/// products: for one query row, candle's product costs more in set-up than in arithmetic.
fn attention_direct(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal_offset: Option<usize>,
) -> CResult<Tensor> {
    let (h, tq, dh) = q.dims3()?;
    let tk = k.dim(1)?;
    if k.dims3()? != (h, tk, dh) || v.dims3()? != (h, tk, dh) {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0f32; h * tq * dh];
    with_f32(&q, |qs| {
        with_f32(&k, |ks| {
            with_f32(&v, |vs| {
                let head = |(hi, o): (usize, &mut [f32])| {
                    let kh = &ks[hi * tk * dh..(hi + 1) * tk * dh];
                    let vh = &vs[hi * tk * dh..(hi + 1) * tk * dh];
                    let mut p = vec![0.0f32; tk];
                    for i in 0..tq {
                        let qi = &qs[(hi * tq + i) * dh..(hi * tq + i + 1) * dh];
                        let visible = causal_offset.map_or(tk, |off| (i + off + 1).min(tk));
                        let p = &mut p[..visible];
                        for (s, kj) in p.iter_mut().zip(kh.chunks_exact(dh)) {
                            *s = dot(qi, kj) * scale;
                        }
                        let max = super::vmath::max(p);
                        let sum = super::vmath::exp_scaled_sum(p, 1.0, -max);
                        let oi = &mut o[i * dh..(i + 1) * dh];
                        for (&w, vj) in p.iter().zip(vh.chunks_exact(dh)) {
                            for (a, &b) in oi.iter_mut().zip(vj) {
                                *a += w * b;
                            }
                        }
                        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                        oi.iter_mut().for_each(|a| *a *= inv);
                    }
                };
                // One thread: a step's attention is a few hundred microseconds of work, less
                // than what a fork-join costs when the cores are shared (measured under load).
                out.chunks_mut(tq * dh).enumerate().for_each(head);
            })
        })
    })???;
    Tensor::from_vec(out, (h, tq, dh), &Device::Cpu)
}

/// Scaled dot-product attention of `(H, Tq, dh)` queries over `(H, Tk, dh)` keys/values,
/// in blocks of query rows.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal_offset: Option<usize>) -> CResult<Tensor> {
    let (_, tq, dh) = q.dims3()?;
    if tq <= DIRECT_MAX_Q {
        return attention_direct(q, k, v, causal_offset);
    }
    let kt = k.t()?;
    let scale = 1.0 / (dh as f32).sqrt();
    let block = |qb: &Tensor, offset: Option<usize>| -> CResult<Tensor> {
        let scores = qb.matmul(&kt)?;
        scores.inplace_op1(&Softmax {
            scale,
            q_len: qb.dim(1)?,
            causal_offset: offset,
        })?;
        scores.matmul(v)
    };
    if tq <= Q_BLOCK {
        return block(q, causal_offset);
    }
    let mut outs = Vec::with_capacity(tq.div_ceil(Q_BLOCK));
    let mut start = 0;
    while start < tq {
        let len = Q_BLOCK.min(tq - start);
        let qb = q.narrow(1, start, len)?.contiguous()?;
        outs.push(block(&qb, causal_offset.map(|p| p + start))?);
        start += len;
    }
    Tensor::cat(&outs, 1)
}

struct EncoderLayer {
    attn_ln: Norm,
    qkv: Linear,
    out: Linear,
    mlp_ln: Norm,
    mlp: Mlp,
}

struct DecoderLayer {
    attn_ln: Norm,
    qkv: Linear,
    out: Linear,
    cross_ln: Norm,
    cross_q: Linear,
    cross_kv: Linear,
    cross_out: Linear,
    mlp_ln: Norm,
    mlp: Mlp,
}

/// The tied output projection.
enum Projection {
    /// Q8_0 blocks (made at load) or a GGUF file's blocks, `n_vocab` rows.
    Q8(GgmlType, QBytes),
    /// `[n_vocab, state]`.
    F32(Tensor),
}

/// The network, ready to run. `Send + Sync`; all state lives in [`DecoderCache`] and
/// [`CrossKv`].
pub struct WhisperNet {
    dims: WhisperDims,
    encoder: EncoderImpl,
    /// The token embedding, read in place from the mapped file (one row per token fed).
    tok_emb: TensorSlice,
    dec_pos: Vec<f32>,
    dec_layers: Vec<DecoderLayer>,
    dec_ln: Norm,
    projection: Projection,
}

/// The encoder: `f32` on slices ([`super::encoder`], the default), or on candle with
/// quantized (GGUF) matrices kept file-backed (`quantized_encoder`).
enum EncoderImpl {
    Fast(encoder::Encoder),
    Candle(Box<CandleEncoder>),
}

struct CandleEncoder {
    conv1_w: Tensor,
    conv1_b: Vec<f32>,
    conv2_w: Tensor,
    conv2_b: Vec<f32>,
    enc_pos: Tensor,
    layers: Vec<EncoderLayer>,
    ln_post: Norm,
}

/// An `f32` dense layer of the fast encoder (fused parts concatenated by rows).
fn dense(parts: &[&weights::Linear]) -> encoder::Dense {
    let mut weight = Vec::new();
    let mut bias = Vec::new();
    let (mut out, mut inp) = (0, 0);
    for l in parts {
        let r = l.weight.shape().first().copied().unwrap_or(0);
        weight.extend(floats(&l.weight, l.scale.as_ref()));
        match &l.bias {
            Some(b) => bias.extend(b.to_f32_vec()),
            None => bias.extend(std::iter::repeat_n(0.0, r)),
        }
        out += r;
        inp = l.weight.row_len();
    }
    if bias.iter().all(|&b| b == 0.0) {
        bias.clear();
    }
    encoder::Dense {
        weight: encoder::transpose(&weight, out, inp).into(),
        bias,
        out,
        inp,
        int8: None,
    }
}

fn enc_norm(n: &weights::LayerNorm) -> encoder::Norm {
    encoder::Norm {
        gamma: n.gamma.to_f32_vec(),
        beta: n.beta.to_f32_vec(),
    }
}

/// Cross-attention keys and values of one encoded window, per decoder layer, laid out
/// for [`cross_attention`].
pub struct CrossKv {
    layers: Vec<LayerKv>,
}

/// One decoder layer's cross-attention keys and values over `frames` encoder frames.
struct LayerKv {
    /// Keys transposed per head: `(heads, dh, frames)`, so that a query's scores are a sum of
    /// `dh` scaled rows (vector operations over the frames, no horizontal sums).
    kt: Vec<f32>,
    /// Values per head: `(heads, frames, dh)`.
    v: Vec<f32>,
    frames: usize,
}

/// Causal self-attention of `n` new query rows (`q`: `n × heads · dh`) at positions
/// `past ..`, over the cached keys and values of positions `0 .. past + n` (`k`, `v`: rows of
/// `heads · dh`); returns `n × heads · dh`.
fn self_attention_step(
    q: &[f32],
    n: usize,
    past: usize,
    k: &[f32],
    v: &[f32],
    heads: usize,
) -> Vec<f32> {
    let width = q.len() / n.max(1);
    let dh = width / heads.max(1);
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0f32; n * width];
    let mut p = vec![0.0f32; past + n];
    for (i, (qi, oi)) in q
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        let visible = past + i + 1;
        for h in 0..heads {
            let qh = &qi[h * dh..(h + 1) * dh];
            let p = &mut p[..visible];
            for (s, kr) in p.iter_mut().zip(k.chunks_exact(width)) {
                *s = dot(qh, &kr[h * dh..(h + 1) * dh]) * scale;
            }
            let max = super::vmath::max(p);
            let sum = super::vmath::exp_scaled_sum(p, 1.0, -max);
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            let oh = &mut oi[h * dh..(h + 1) * dh];
            for (&w, vr) in p.iter().zip(v.chunks_exact(width)) {
                oh.iter_mut()
                    .zip(&vr[h * dh..(h + 1) * dh])
                    .for_each(|(o, &x)| *o += w * x);
            }
            oh.iter_mut().for_each(|o| *o *= inv);
        }
    }
    out
}

/// Cross-attention of `n` query rows (`q`: `n × heads · dh`, heads side by side) over one
/// layer's keys and values; returns `n × heads · dh` in the same layout. Runs on the
/// calling thread: a decoding step's share is a fraction of a millisecond.
fn cross_attention(q: &[f32], n: usize, heads: usize, kv: &LayerKv) -> Vec<f32> {
    let width = q.len() / n.max(1);
    let dh = width / heads.max(1);
    let t = kv.frames;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0f32; n * width];
    let mut p = vec![0.0f32; t];
    for (qi, oi) in q.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        for h in 0..heads {
            let qh = &qi[h * dh..(h + 1) * dh];
            let kt = &kv.kt[h * dh * t..(h + 1) * dh * t];
            p.fill(0.0);
            for (&a, krow) in qh.iter().zip(kt.chunks_exact(t)) {
                let a = a * scale;
                p.iter_mut().zip(krow).for_each(|(s, &k)| *s += a * k);
            }
            let max = super::vmath::max(&p);
            let sum = super::vmath::exp_scaled_sum(&mut p, 1.0, -max);
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            let oh = &mut oi[h * dh..(h + 1) * dh];
            let vh = &kv.v[h * t * dh..(h + 1) * t * dh];
            for (&w, vj) in p.iter().zip(vh.chunks_exact(dh)) {
                oh.iter_mut().zip(vj).for_each(|(o, &v)| *o += w * v);
            }
            oh.iter_mut().for_each(|o| *o *= inv);
        }
    }
    out
}

/// The decoder's self-attention cache for one sequence: per layer, the keys and the values
/// of the tokens fed so far, `len × state` each (heads side by side).
#[derive(Default, Clone)]
pub struct DecoderCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl DecoderCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl WhisperNet {
    /// Converts the weights to candle tensors. With `quantized_decoder`, the decoder's
    /// per-token linear layers and the output projection are kept as Q8_0 blocks instead
    /// (when the width is a multiple of 32) and multiplied with `threads` threads (as the
    /// encoder; [`WhisperNet::load_opts`] sets them apart).
    pub fn load(w: &WhisperWeights, quantized_decoder: bool, threads: usize) -> Result<Self> {
        Self::load_inner(w, quantized_decoder, false, false, threads, threads)
    }

    /// [`WhisperNet::load`] with the options of [`super::LoadOptions`]: quantized (GGUF)
    /// decoder matrices always stay file-backed; encoder ones too with `quantized_encoder`,
    /// else they are dequantized to `f32`.
    pub fn load_opts(
        w: &WhisperWeights,
        opts: &super::LoadOptions,
        threads: usize,
    ) -> Result<Self> {
        Self::load_inner(
            w,
            opts.quantized_decoder,
            opts.quantized_encoder,
            opts.encoder_int8,
            threads,
            opts.decoder_threads.max(1),
        )
    }

    fn load_inner(
        w: &WhisperWeights,
        quantized_decoder: bool,
        quantized_encoder: bool,
        encoder_int8: bool,
        threads: usize,
        decoder_threads: usize,
    ) -> Result<Self> {
        let dims = w.dims;
        let threads = threads.max(1);
        let enc_mapped = quantized_encoder.then_some(threads);
        let dec_mapped = Some(decoder_threads.max(1));
        let quantized_projection = quantized_decoder;
        let q8 = quantized_decoder.then_some(decoder_threads.max(1));
        let e = &w.encoder;
        let encoder = if quantized_encoder {
            let layers = e
                .layers
                .iter()
                .map(|l| {
                    Ok(EncoderLayer {
                        attn_ln: Norm::load(&l.attn_ln),
                        qkv: Linear::load_fused(
                            &[&l.attn.query, &l.attn.key, &l.attn.value],
                            None,
                            enc_mapped,
                        )?,
                        out: Linear::load(&l.attn.out, enc_mapped)?,
                        mlp_ln: Norm::load(&l.mlp_ln),
                        mlp: Mlp::load(&l.mlp, None, enc_mapped)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            EncoderImpl::Candle(Box::new(CandleEncoder {
                conv1_w: tensor(&e.conv1.weight, None)?,
                conv1_b: e.conv1.bias.to_f32_vec(),
                conv2_w: tensor(&e.conv2.weight, None)?,
                conv2_b: e.conv2.bias.to_f32_vec(),
                enc_pos: tensor(&e.positional_embedding, None)?,
                layers,
                ln_post: Norm::load(&e.ln_post),
            }))
        } else {
            let conv = |c: &weights::Conv1d, what: &str| -> Result<encoder::Dense> {
                let shape = c.weight.shape();
                let &[out, inp, taps] = shape.as_slice() else {
                    return Err(Error::Stt {
                        reason: format!("{what} weight has shape {shape:?}, expected 3 dimensions"),
                    });
                };
                let bias = c.bias.to_f32_vec();
                if taps != 3 || bias.len() != out {
                    return Err(Error::Stt {
                        reason: format!(
                            "{what}: weight {shape:?} and {} biases (expected 3 taps, one bias per output)",
                            bias.len()
                        ),
                    });
                }
                Ok(encoder::Dense {
                    weight: encoder::conv_weight_tap_major(
                        &floats(&c.weight, None),
                        out,
                        inp,
                        taps,
                    )
                    .into(),
                    bias,
                    out,
                    inp: inp * taps,
                    int8: None,
                })
            };
            let layers = e
                .layers
                .iter()
                .map(|l| encoder::Layer {
                    attn_ln: enc_norm(&l.attn_ln),
                    qkv: dense(&[&l.attn.query, &l.attn.key, &l.attn.value]),
                    out: dense(&[&l.attn.out]),
                    mlp_ln: enc_norm(&l.mlp_ln),
                    fc1: dense(&[&l.mlp.fc1]),
                    fc2: dense(&[&l.mlp.fc2]),
                })
                .collect();
            EncoderImpl::Fast(
                encoder::Encoder::new(
                    dims.n_mels,
                    dims.n_audio_state,
                    dims.n_audio_head,
                    dims.n_audio_ctx,
                    conv(&e.conv1, "conv1")?,
                    conv(&e.conv2, "conv2")?,
                    e.positional_embedding.to_f32_vec(),
                    layers,
                    enc_norm(&e.ln_post),
                    LN_EPS,
                )
                .map_err(|reason| Error::Stt {
                    reason: format!("encoder weights: {reason}"),
                })
                .map(|e| if encoder_int8 { e.into_int8() } else { e })?,
            )
        };
        let d = &w.decoder;
        let dec_layers = d
            .layers
            .iter()
            .map(|l| {
                Ok(DecoderLayer {
                    attn_ln: Norm::load(&l.attn_ln),
                    qkv: Linear::load_fused(
                        &[&l.attn.query, &l.attn.key, &l.attn.value],
                        q8,
                        dec_mapped,
                    )?,
                    out: Linear::load_fused(&[&l.attn.out], q8, dec_mapped)?,
                    cross_ln: Norm::load(&l.cross_attn_ln),
                    cross_q: Linear::load_fused(&[&l.cross_attn.query], q8, dec_mapped)?,
                    cross_kv: Linear::load_fused(
                        &[&l.cross_attn.key, &l.cross_attn.value],
                        None,
                        enc_mapped,
                    )?
                    .transposed()
                    .map_err(candle_err("cross-attention weights"))?,
                    cross_out: Linear::load_fused(&[&l.cross_attn.out], q8, dec_mapped)?,
                    mlp_ln: Norm::load(&l.mlp_ln),
                    mlp: Mlp::load(&l.mlp, q8, dec_mapped)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tok_emb = d.token_embedding.clone();
        let state = dims.n_text_state;
        let projection = if let Some(ty) = d.projection.quant() {
            Projection::Q8(ty, QBytes::Mapped(d.projection.clone()))
        } else if quantized_projection && state % 32 == 0 {
            let rows = floats(&d.projection, None);
            let mut q = Vec::with_capacity(dims.n_vocab * state / 32 * 34);
            for row in rows.chunks_exact(state) {
                q.extend(quant::quantize_row_q8_0(row));
            }
            Projection::Q8(GgmlType::Q8_0, QBytes::Owned(q.into()))
        } else {
            Projection::F32(tensor(&d.projection, None)?)
        };
        Ok(Self {
            dims,
            encoder,
            tok_emb,
            dec_pos: d.positional_embedding.to_f32_vec(),
            dec_layers,
            dec_ln: Norm::load(&d.ln),
            projection,
        })
    }

    /// The model's dimensions.
    pub fn dims(&self) -> &WhisperDims {
        &self.dims
    }

    /// Encodes `n_mels × frames` log-mel values (row-major; `frames` even, at most
    /// `2 · n_audio_ctx`) into `(frames / 2, n_audio_state)`.
    pub fn encode(&self, mel: Vec<f32>, frames: usize) -> Result<Tensor> {
        self.encode_inner(mel, frames)
            .map_err(candle_err("whisper encoder"))
    }

    fn encode_inner(&self, mel: Vec<f32>, frames: usize) -> CResult<Tensor> {
        let dims = &self.dims;
        if mel.len() != dims.n_mels * frames || frames > 2 * dims.n_audio_ctx || frames % 2 != 0 {
            candle_core::bail!(
                "expected {} mel bands × an even number of frames up to {}, got {} values for {frames} frames",
                dims.n_mels,
                2 * dims.n_audio_ctx,
                mel.len()
            );
        }
        let c = match &self.encoder {
            EncoderImpl::Fast(enc) => {
                let y = enc.encode(&mel, frames);
                return Tensor::from_vec(y, (frames / 2, dims.n_audio_state), &Device::Cpu);
            }
            EncoderImpl::Candle(c) => c,
        };
        let x = Tensor::from_vec(mel, (1, dims.n_mels, frames), &Device::Cpu)?;
        let x = x.conv1d(&c.conv1_w, 1, 1, 1, 1)?.squeeze(0)?;
        x.inplace_op1(&BiasGelu {
            bias: &c.conv1_b,
            per_row: true,
            gelu: true,
        })?;
        let x = x.unsqueeze(0)?.conv1d(&c.conv2_w, 1, 2, 1, 1)?.squeeze(0)?;
        x.inplace_op1(&BiasGelu {
            bias: &c.conv2_b,
            per_row: true,
            gelu: true,
        })?;
        let n = x.dim(1)?;
        let x = x.t()?.contiguous()?;
        x.inplace_op2(&c.enc_pos.narrow(0, 0, n)?, &AddAssign)?;
        let heads = dims.n_audio_head;
        let prof = std::env::var_os("STT_PROF").is_some();
        let mut t = std::time::Instant::now();
        let mut lap = |what: &str| {
            if prof {
                eprintln!("{what}: {:?}", t.elapsed());
            }
            t = std::time::Instant::now();
        };
        lap("conv");
        for l in &c.layers {
            let h = l.attn_ln.forward(&x)?;
            lap("ln");
            let qkv = l.qkv.forward(&h, false)?;
            lap("qkv");
            let qkv = split_heads(&qkv, 3, heads)?;
            lap("split");
            let a = attention(&qkv[0], &qkv[1], &qkv[2], None)?;
            lap("attn");
            let a = merge_heads(&a)?;
            lap("merge");
            x.inplace_op2(&l.out.forward(&a, false)?, &AddAssign)?;
            lap("out");
            let h = l.mlp_ln.forward(&x)?;
            let h = l.mlp.fc1.forward(&h, true)?;
            lap("fc1");
            let h = l.mlp.fc2.forward(&h, false)?;
            lap("fc2");
            x.inplace_op2(&h, &AddAssign)?;
            lap("add");
        }
        c.ln_post.forward(&x)
    }

    /// Cross-attention keys and values for an encoder output.
    pub fn cross_kv(&self, enc: &Tensor) -> Result<CrossKv> {
        let heads = self.dims.n_text_head;
        let state = self.dims.n_text_state;
        let dh = state / heads.max(1);
        let layers = self
            .dec_layers
            .iter()
            .map(|l| {
                // (frames, 2 · state): keys, then values, heads side by side.
                let kv = l.cross_kv.forward(enc, false)?.contiguous()?;
                let t = kv.dim(0)?;
                let mut kt = vec![0.0f32; heads * dh * t];
                let mut v = vec![0.0f32; heads * t * dh];
                with_f32(&kv, |kv| {
                    // One head per task; the keys in tiles of 16 frames, so that the
                    // transposed writes go to a few cache lines at a time.
                    kt.par_chunks_mut(dh * t.max(1))
                        .zip(v.par_chunks_mut(t.max(1) * dh))
                        .enumerate()
                        .for_each(|(h, (kth, vh))| {
                            for j0 in (0..t).step_by(16) {
                                let rows = &kv[j0 * 2 * state..(j0 + 16).min(t) * 2 * state];
                                for (dj, row) in rows.chunks_exact(2 * state).enumerate() {
                                    for (d, &x) in row[h * dh..(h + 1) * dh].iter().enumerate() {
                                        kth[d * t + j0 + dj] = x;
                                    }
                                }
                            }
                            for (vj, row) in vh.chunks_exact_mut(dh).zip(kv.chunks_exact(2 * state))
                            {
                                vj.copy_from_slice(&row[state + h * dh..state + (h + 1) * dh]);
                            }
                        });
                })?;
                Ok(LayerKv { kt, v, frames: t })
            })
            .collect::<CResult<Vec<_>>>()
            .map_err(candle_err("cross-attention keys"))?;
        Ok(CrossKv { layers })
    }

    /// Feeds `tokens` (after the `cache.len()` already fed) and returns the logits
    /// (`n_vocab` each) of the positions listed in `want` (indices into `tokens`).
    pub fn decode(
        &self,
        tokens: &[u32],
        cache: &mut DecoderCache,
        cross: &CrossKv,
        want: &[usize],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let dims = &self.dims;
        let state = dims.n_text_state;
        if cache.len + tokens.len() > dims.n_text_ctx {
            return Err(Error::Stt {
                reason: format!(
                    "decoder context full: {} + {} tokens exceed {} positions",
                    cache.len,
                    tokens.len(),
                    dims.n_text_ctx
                ),
            });
        }
        let mut x = Vec::with_capacity(tokens.len() * state);
        for (i, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            let (Some(emb), Some(pos)) = (
                self.tok_emb.row_f32(t).filter(|r| r.len() == state),
                self.dec_pos
                    .get((cache.len + i) * state..(cache.len + i + 1) * state),
            ) else {
                return Err(Error::Stt {
                    reason: format!("token id {t} is outside the vocabulary of {}", dims.n_vocab),
                });
            };
            x.extend(emb.iter().zip(pos).map(|(a, b)| a + b));
        }
        let hidden = self
            .decode_inner(x, tokens.len(), cache, cross, want)
            .map_err(candle_err("whisper decoder"))?;
        self.project(&hidden, threads)
    }

    /// The decoder layers on plain rows (candle only where a layer's weights are `f32`).
    fn decode_inner(
        &self,
        mut x: Vec<f32>,
        n: usize,
        cache: &mut DecoderCache,
        cross: &CrossKv,
        want: &[usize],
    ) -> CResult<Vec<Vec<f32>>> {
        let state = self.dims.n_text_state;
        let heads = self.dims.n_text_head;
        let layers = self.dec_layers.len();
        let past = cache.len;
        if cache.k.len() != layers || cache.v.len() != layers {
            if past != 0 {
                candle_core::bail!(
                    "decoder cache has {} layers, the model {layers}",
                    cache.k.len()
                );
            }
            cache.k = vec![Vec::new(); layers];
            cache.v = vec![Vec::new(); layers];
        }
        let add = |x: &mut [f32], y: &[f32]| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        for (i, l) in self.dec_layers.iter().enumerate() {
            let h = l.attn_ln.apply_rows(&x);
            let qkv = l.qkv.forward_slice(&h, n, false)?;
            let mut q = Vec::with_capacity(n * state);
            for row in qkv.chunks_exact(3 * state) {
                q.extend_from_slice(&row[..state]);
                cache.k[i].extend_from_slice(&row[state..2 * state]);
                cache.v[i].extend_from_slice(&row[2 * state..]);
            }
            let a = self_attention_step(&q, n, past, &cache.k[i], &cache.v[i], heads);
            add(&mut x, &l.out.forward_slice(&a, n, false)?);

            let h = l.cross_ln.apply_rows(&x);
            let q = l.cross_q.forward_slice(&h, n, false)?;
            let Some(kv) = cross.layers.get(i) else {
                candle_core::bail!("cross-attention cache has no layer {i}");
            };
            let a = cross_attention(&q, n, heads, kv);
            add(&mut x, &l.cross_out.forward_slice(&a, n, false)?);

            let h = l.mlp_ln.apply_rows(&x);
            let f = l.mlp.fc1.forward_slice(&h, n, true)?;
            add(&mut x, &l.mlp.fc2.forward_slice(&f, n, false)?);
        }
        cache.len += n;
        want.iter()
            .map(|&r| {
                let Some(row) = x.get(r * state..(r + 1) * state) else {
                    candle_core::bail!("no decoder row {r} of {n}");
                };
                Ok(self.dec_ln.apply_rows(row))
            })
            .collect()
    }

    fn project(&self, hidden: &[Vec<f32>], threads: usize) -> Result<Vec<Vec<f32>>> {
        let n_vocab = self.dims.n_vocab;
        let state = self.dims.n_text_state;
        hidden
            .iter()
            .map(|h| match &self.projection {
                Projection::Q8(ty, q) => {
                    let m = QMatrix::new(*ty, n_vocab, state, q.bytes())?;
                    let xq = m.quantize_activation(h)?;
                    let mut out = vec![0.0f32; n_vocab];
                    m.matvec(&xq, &mut out, threads.max(1))?;
                    Ok(out)
                }
                Projection::F32(w) => {
                    let x = Tensor::from_slice(h, (1, state), &Device::Cpu)
                        .and_then(|x| x.matmul(&w.t()?))
                        .and_then(|y| y.squeeze(0)?.to_vec1::<f32>())
                        .map_err(candle_err("output projection"))?;
                    Ok(x)
                }
            })
            .collect()
    }
}

/// `log_softmax` of a logit vector, in place.
pub fn log_softmax(x: &mut [f32]) {
    let max = super::vmath::max(x);
    if !max.is_finite() {
        return;
    }
    let sum = super::vmath::sum_exp(x, -max);
    let lse = max + sum.ln();
    for v in x.iter_mut() {
        *v -= lse;
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<WhisperNet>();
}
