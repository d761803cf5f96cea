//! `sotad quantize whisper`: a CTranslate2 or Hugging Face Whisper model to a self-contained
//! GGUF file (layout in [`super::gguf`]).
//!
//! Every linear layer's matrix and the token embedding (which is also the output
//! projection) are quantized to the requested type. A k-quant needs rows that are whole
//! 256-element super-blocks; matrices whose width is not (tiny's 384, base's 512 is) fall back
//! as llama.cpp's quantizer does: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0. The other tensors
//! (convolutions, norms, position encodings) keep F16 when the source has F16 and are F32
//! otherwise; linear biases are F32.

use std::path::Path;

use super::ct2::{DType, TensorSlice};
use super::gguf::{ARCHITECTURE, CONFIG_KEY, TOKENIZER_JSON_KEY, TOKENS_KEY};
use super::weights::{self, TokenizerJson, WhisperWeights};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufWriter, MetaValue};
use crate::quant;
use crate::stt::model::floats;

/// What [`quantize_whisper`] wrote.
#[derive(Debug, Clone, Default)]
pub struct QuantizeReport {
    /// Tensors written, by type: `(type, count, bytes)`.
    pub by_type: Vec<(GgmlType, usize, u64)>,
    /// Size of the output file in bytes.
    pub file_bytes: u64,
}

/// Parses a quantization type name as the command line gives it (`q8_0`, `q4_k`, ...).
pub fn parse_type(name: &str) -> Option<GgmlType> {
    Some(match name.to_ascii_lowercase().as_str() {
        "q8_0" => GgmlType::Q8_0,
        "q4_0" => GgmlType::Q4_0,
        "q4_1" => GgmlType::Q4_1,
        "q5_0" => GgmlType::Q5_0,
        "q5_1" => GgmlType::Q5_1,
        "q4_k" => GgmlType::Q4_K,
        "q5_k" => GgmlType::Q5_K,
        "q6_k" => GgmlType::Q6_K,
        _ => return None,
    })
}

/// The type a `cols`-wide matrix gets when `ty` is asked for.
fn type_for(ty: GgmlType, cols: usize) -> GgmlType {
    let fits = |t: GgmlType| quant::row_bytes(t, cols).is_ok();
    let t = if fits(ty) {
        ty
    } else {
        match ty {
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            _ => GgmlType::Q8_0,
        }
    };
    if fits(t) { t } else { GgmlType::F16 }
}

struct Out {
    w: GgufWriter,
    report: QuantizeReport,
}

impl Out {
    fn add(&mut self, name: &str, shape: &[usize], ty: GgmlType, data: Vec<u8>) {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        match self.report.by_type.iter_mut().find(|(t, _, _)| *t == ty) {
            Some(e) => {
                e.1 += 1;
                e.2 += data.len() as u64;
            }
            None => self.report.by_type.push((ty, 1, data.len() as u64)),
        }
        self.w.tensor(name, &dims, ty, data);
    }

    fn f32(&mut self, name: &str, shape: &[usize], v: &[f32]) {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add(name, shape, GgmlType::F32, data);
    }

    /// Float tensors: F16 sources copied as they are, others as F32.
    fn float(&mut self, name: &str, t: &TensorSlice) {
        if t.dtype() == DType::F16 && t.quant().is_none() {
            self.add(name, &t.shape(), GgmlType::F16, t.bytes().to_vec());
        } else {
            self.f32(name, &t.shape(), &t.to_f32_vec());
        }
    }

    fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        v: &[f32],
        ty: GgmlType,
    ) -> Result<()> {
        let t = type_for(ty, cols);
        let data = if t == GgmlType::F16 {
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect()
        } else {
            quant::quantize_weights(t, v)?
        };
        self.add(name, &[rows, cols], t, data);
        Ok(())
    }

    /// A linear layer made of `parts` fused by rows, as `{prefix}/weight` and `/bias`.
    fn linear(&mut self, prefix: &str, parts: &[&weights::Linear], ty: GgmlType) -> Result<()> {
        let mut w = Vec::new();
        let mut b = Vec::new();
        let (mut rows, mut cols) = (0, 0);
        for l in parts {
            let r = l.weight.shape().first().copied().unwrap_or(0);
            cols = l.weight.row_len();
            rows += r;
            w.extend(floats(&l.weight, l.scale.as_ref()));
            match &l.bias {
                Some(x) => b.extend(x.to_f32_vec()),
                None => b.extend(std::iter::repeat_n(0.0, r)),
            }
        }
        self.matrix(&format!("{prefix}/weight"), rows, cols, &w, ty)?;
        self.f32(&format!("{prefix}/bias"), &[rows], &b);
        Ok(())
    }

    fn norm(&mut self, prefix: &str, n: &weights::LayerNorm) {
        self.float(&format!("{prefix}/gamma"), &n.gamma);
        self.float(&format!("{prefix}/beta"), &n.beta);
    }

    fn attention_block(
        &mut self,
        p: &str,
        ln: &weights::LayerNorm,
        a: &weights::Attention,
        ty: GgmlType,
    ) -> Result<()> {
        self.norm(&format!("{p}/self_attention/layer_norm"), ln);
        self.linear(
            &format!("{p}/self_attention/linear_0"),
            &[&a.query, &a.key, &a.value],
            ty,
        )?;
        self.linear(&format!("{p}/self_attention/linear_1"), &[&a.out], ty)
    }

    fn mlp(
        &mut self,
        p: &str,
        ln: &weights::LayerNorm,
        m: &weights::Mlp,
        ty: GgmlType,
    ) -> Result<()> {
        self.norm(&format!("{p}/ffn/layer_norm"), ln);
        self.linear(&format!("{p}/ffn/linear_0"), &[&m.fc1], ty)?;
        self.linear(&format!("{p}/ffn/linear_1"), &[&m.fc2], ty)
    }
}

/// The decoding configuration as faster-whisper's `config.json` text.
fn config_json(c: &weights::WhisperConfig) -> String {
    let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let heads = c
        .alignment_heads
        .iter()
        .map(|(l, h)| format!("[{l},{h}]"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{{\"suppress_ids\":[{}],\"suppress_ids_begin\":[{}],\"lang_ids\":[{}],\"alignment_heads\":[{heads}]}}",
        ids(&c.suppress_ids),
        ids(&c.suppress_ids_begin),
        ids(&c.lang_ids)
    )
}

/// Converts the model at `input` (a CTranslate2 or Hugging Face directory) to a GGUF file
/// at `output` with matrices of type `ty`.
pub fn quantize_whisper(input: &Path, output: &Path, ty: GgmlType) -> Result<QuantizeReport> {
    if !quant::WEIGHT_TYPES.contains(&ty) {
        return Err(Error::Stt {
            reason: format!(
                "cannot quantize Whisper to {ty}: use one of q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k"
            ),
        });
    }
    let (wts, _, tj) = WhisperWeights::open_any(input)?;
    let tokenizer_json = match tj {
        TokenizerJson::File(p) => {
            Some(std::fs::read_to_string(&p).map_err(|source| Error::Io {
                action: "read",
                path: p.clone(),
                source,
            })?)
        }
        TokenizerJson::Text(t, _) => Some(t),
        TokenizerJson::None => None,
    };
    let d = wts.dims;
    let mut out = Out {
        w: GgufWriter::new(),
        report: QuantizeReport::default(),
    };
    out.w
        .metadata("general.architecture", ARCHITECTURE)
        .metadata("general.name", d.size_name())
        .metadata("general.quantization_version", 2u32)
        .metadata(
            "whisper.encoder.attention.head_count",
            d.n_audio_head as u32,
        )
        .metadata("whisper.decoder.attention.head_count", d.n_text_head as u32)
        .metadata("whisper.encoder.block_count", d.n_audio_layer as u32)
        .metadata("whisper.decoder.block_count", d.n_text_layer as u32)
        .metadata("whisper.embedding_length", d.n_audio_state as u32)
        .metadata("whisper.n_mels", d.n_mels as u32)
        .metadata("whisper.vocab_size", d.n_vocab as u32)
        .metadata(CONFIG_KEY, config_json(&wts.config).as_str())
        .metadata(
            TOKENS_KEY,
            MetaValue::from(
                wts.vocabulary()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
        );
    if let Some(t) = &tokenizer_json {
        out.w.metadata(TOKENIZER_JSON_KEY, t.as_str());
    }
    let e = &wts.encoder;
    out.float("encoder/conv1/weight", &e.conv1.weight);
    out.float("encoder/conv1/bias", &e.conv1.bias);
    out.float("encoder/conv2/weight", &e.conv2.weight);
    out.float("encoder/conv2/bias", &e.conv2.bias);
    out.f32(
        "encoder/position_encodings/encodings",
        &e.positional_embedding.shape(),
        &e.positional_embedding.to_f32_vec(),
    );
    for (i, l) in e.layers.iter().enumerate() {
        let p = format!("encoder/layer_{i}");
        out.attention_block(&p, &l.attn_ln, &l.attn, ty)?;
        out.mlp(&p, &l.mlp_ln, &l.mlp, ty)?;
    }
    out.norm("encoder/layer_norm", &e.ln_post);
    let dec = &wts.decoder;
    let emb = dec.token_embedding.to_f32_vec();
    out.matrix(
        "decoder/embeddings/weight",
        d.n_vocab,
        d.n_text_state,
        &emb,
        ty,
    )?;
    if dec.projection.name() != dec.token_embedding.name() {
        let proj = dec.projection.to_f32_vec();
        out.matrix(
            "decoder/projection/weight",
            d.n_vocab,
            d.n_text_state,
            &proj,
            ty,
        )?;
    }
    out.f32(
        "decoder/position_encodings/encodings",
        &dec.positional_embedding.shape(),
        &dec.positional_embedding.to_f32_vec(),
    );
    for (i, l) in dec.layers.iter().enumerate() {
        let p = format!("decoder/layer_{i}");
        out.attention_block(&p, &l.attn_ln, &l.attn, ty)?;
        let c = &l.cross_attn;
        out.norm(&format!("{p}/attention/layer_norm"), &l.cross_attn_ln);
        out.linear(&format!("{p}/attention/linear_0"), &[&c.query], ty)?;
        out.linear(&format!("{p}/attention/linear_1"), &[&c.key, &c.value], ty)?;
        out.linear(&format!("{p}/attention/linear_2"), &[&c.out], ty)?;
        out.mlp(&p, &l.mlp_ln, &l.mlp, ty)?;
    }
    out.norm("decoder/layer_norm", &dec.ln);
    out.w.write_file(output)?;
    out.report.file_bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    Ok(out.report)
}
