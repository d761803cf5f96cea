//! The model's tensors, looked up by llama.cpp's names and checked for type and shape.
//!
//! Matrices are kept as byte ranges of the mapped file (no copy); only the small vectors
//! (norm weights, biases, rope factors) are converted to `f32`.

use std::ops::Range;

use super::config::{Arch, Config};
use super::{LlmError, LlmErrorKind};
use crate::error::Result;
use crate::gguf::{GgmlType, GgufFile, TensorView};
use crate::quant::{self, QMatrix};

/// A quantized matrix: `rows` × `cols` of `ty`, at `range` in the mapped file.
#[derive(Debug, Clone)]
pub(crate) struct Mat {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub range: Range<usize>,
}

impl Mat {
    /// The matrix over the file's bytes.
    pub fn view<'a>(&self, file: &'a [u8]) -> Result<QMatrix<'a>> {
        QMatrix::new(self.ty, self.rows, self.cols, &file[self.range.clone()])
    }

    /// Activation format of this matrix' inputs.
    pub fn act_type(&self) -> GgmlType {
        quant::activation_type(self.ty).unwrap_or(GgmlType::Q8_0)
    }
}

pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Mat,
    pub wk: Mat,
    pub wv: Mat,
    pub wo: Mat,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Mat,
    pub w_up: Mat,
    pub w_down: Mat,
    pub post_ffn_norm: Option<Vec<f32>>,
}

pub(crate) struct Weights {
    /// Token embeddings, `vocab` rows of `n_embd` (any type `dequantize_row` reads).
    pub embd_ty: GgmlType,
    pub embd_range: Range<usize>,
    pub embd_row_bytes: usize,
    pub output_norm: Vec<f32>,
    /// The output projection (`output.weight`, or the embeddings when tied).
    pub output: Mat,
    pub layers: Vec<Layer>,
    /// Llama 3 rope frequency factors (`rope_freqs.weight`), one per rotated pair.
    pub rope_freqs: Option<Vec<f32>>,
}

struct Loader<'a> {
    file: &'a GgufFile,
}

impl Loader<'_> {
    fn err(&self, name: &str, kind: LlmErrorKind) -> crate::Error {
        LlmError::error(self.file.path(), Some(format!("tensor {name:?}")), kind)
    }

    fn get(&self, name: &str, dims: &[usize]) -> Result<TensorView> {
        let t = self.file.tensor(name)?;
        let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims() != expected.as_slice() {
            return Err(self.err(
                name,
                LlmErrorKind::WrongShape {
                    expected,
                    found: t.dims().to_vec(),
                },
            ));
        }
        Ok(t)
    }

    fn opt(&self, name: &str, dims: &[usize]) -> Result<Option<TensorView>> {
        if self.file.tensor_info(name).is_some() {
            self.get(name, dims).map(Some)
        } else {
            Ok(None)
        }
    }

    fn mat_of(&self, t: &TensorView) -> Result<Mat> {
        if quant::activation_type(t.ggml_type()).is_none() {
            return Err(self.err(
                t.name(),
                LlmErrorKind::UnsupportedType(format!(
                    "{} (matrices must be Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K)",
                    t.ggml_type()
                )),
            ));
        }
        QMatrix::from_tensor(t)?; // validates block sizes and byte length
        let start = t.info().file_offset() as usize;
        Ok(Mat {
            ty: t.ggml_type(),
            rows: t.rows() as usize,
            cols: t.cols() as usize,
            range: start..start + t.bytes().len(),
        })
    }

    /// A matrix of `rows` outputs by `cols` inputs (ggml dims `[cols, rows]`).
    fn mat(&self, name: &str, cols: usize, rows: usize) -> Result<Mat> {
        let t = self.get(name, &[cols, rows])?;
        self.mat_of(&t)
    }

    fn vec_of(&self, t: &TensorView) -> Result<Vec<f32>> {
        let mut out = vec![0f32; t.n_elements() as usize];
        match t.ggml_type() {
            GgmlType::F32 | GgmlType::F16 => {
                quant::dequantize_row(t.ggml_type(), t.bytes(), &mut out)?;
            }
            other => {
                return Err(self.err(
                    t.name(),
                    LlmErrorKind::UnsupportedType(format!("{other} (vectors must be F32 or F16)")),
                ));
            }
        }
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(self.err(
                t.name(),
                LlmErrorKind::BadConfig(format!("element {i} is not finite")),
            ));
        }
        Ok(out)
    }

    fn vec(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.get(name, &[len])?;
        self.vec_of(&t)
    }

    fn opt_vec(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match self.opt(name, &[len])? {
            Some(t) => self.vec_of(&t).map(Some),
            None => Ok(None),
        }
    }
}

impl Weights {
    pub fn load(file: &GgufFile, c: &Config, vocab: usize) -> Result<Weights> {
        let l = Loader { file };
        let d = c.n_embd;
        let q_dim = c.n_head * c.head_dim;
        let kv_dim = c.n_head_kv * c.head_dim;
        let v_dim = c.n_head_kv * c.head_dim_v;
        let o_in = c.n_head * c.head_dim_v;

        let embd = l.get("token_embd.weight", &[d, vocab])?;
        let embd_ty = embd.ggml_type();
        let embd_row_bytes = quant::row_bytes(embd_ty, d).map_err(|_| {
            l.err(
                "token_embd.weight",
                LlmErrorKind::UnsupportedType(embd_ty.to_string()),
            )
        })?;
        let supported_embd = quant::WEIGHT_TYPES.contains(&embd_ty)
            || matches!(embd_ty, GgmlType::F32 | GgmlType::F16);
        if !supported_embd {
            return Err(l.err(
                "token_embd.weight",
                LlmErrorKind::UnsupportedType(embd_ty.to_string()),
            ));
        }
        let embd_start = embd.info().file_offset() as usize;
        let embd_range = embd_start..embd_start + embd.bytes().len();

        let output = match l.opt("output.weight", &[d, vocab])? {
            Some(t) => l.mat_of(&t)?,
            None => l.mat_of(&embd)?,
        };
        let output_norm = l.vec("output_norm.weight", d)?;
        let rope_freqs = l.opt_vec("rope_freqs.weight", c.rope_dim / 2)?;

        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let has_qk_norm = matches!(c.arch, Arch::Qwen3 | Arch::Gemma3);
            let gemma = c.arch == Arch::Gemma3;
            let layer = Layer {
                attn_norm: l.vec(&n("attn_norm.weight"), d)?,
                wq: l.mat(&n("attn_q.weight"), d, q_dim)?,
                wk: l.mat(&n("attn_k.weight"), d, kv_dim)?,
                wv: l.mat(&n("attn_v.weight"), d, v_dim)?,
                wo: l.mat(&n("attn_output.weight"), o_in, d)?,
                bq: l.opt_vec(&n("attn_q.bias"), q_dim)?,
                bk: l.opt_vec(&n("attn_k.bias"), kv_dim)?,
                bv: l.opt_vec(&n("attn_v.bias"), v_dim)?,
                q_norm: if has_qk_norm {
                    Some(l.vec(&n("attn_q_norm.weight"), c.head_dim)?)
                } else {
                    None
                },
                k_norm: if has_qk_norm {
                    Some(l.vec(&n("attn_k_norm.weight"), c.head_dim)?)
                } else {
                    None
                },
                post_attn_norm: if gemma {
                    Some(l.vec(&n("post_attention_norm.weight"), d)?)
                } else {
                    None
                },
                ffn_norm: l.vec(&n("ffn_norm.weight"), d)?,
                w_gate: l.mat(&n("ffn_gate.weight"), d, c.n_ff)?,
                w_up: l.mat(&n("ffn_up.weight"), d, c.n_ff)?,
                w_down: l.mat(&n("ffn_down.weight"), c.n_ff, d)?,
                post_ffn_norm: if gemma {
                    Some(l.vec(&n("post_ffw_norm.weight"), d)?)
                } else {
                    None
                },
            };
            layers.push(layer);
        }
        Ok(Weights {
            embd_ty,
            embd_range,
            embd_row_bytes,
            output_norm,
            output,
            layers,
            rope_freqs,
        })
    }
}
