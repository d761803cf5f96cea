//! Whisper's weights in a CTranslate2 model directory (faster-whisper format).
//!
//! [`WhisperWeights`] resolves every tensor a Whisper model needs from a [`Ct2Model`],
//! checking names, shapes and dtypes, and derives the model's dimensions ([`WhisperDims`])
//! from the tensor shapes and the `encoder/num_heads`/`decoder/num_heads` attributes. Tensors
//! are [`TensorSlice`]s of the memory-mapped file: nothing is copied, and the fused
//! projections are split as row ranges of the fused matrix.
//!
//! # Variable names (`WhisperSpec`, revision 3)
//!
//! `S` is `n_audio_state`, `D` `n_text_state` (equal in every released model), `M`
//! `n_mels`, `F` the MLP width (`4 S`), `V` the vocabulary, `i` a layer index. Shapes are
//! row-major, outermost first; a linear layer's weight is `[out, in]`, as in PyTorch.
//!
//! | OpenAI Whisper | CTranslate2 variable | shape |
//! |---|---|---|
//! | `encoder.conv1.{weight,bias}` | `encoder/conv1/{weight,bias}` | `[S, M, 3]`, `[S]` |
//! | `encoder.conv2.{weight,bias}` | `encoder/conv2/{weight,bias}` | `[S, S, 3]`, `[S]` |
//! | `encoder.positional_embedding` (sinusoids) | `encoder/position_encodings/encodings` | `[1500, S]` |
//! | `encoder.blocks.i.attn_ln` | `encoder/layer_i/self_attention/layer_norm/{gamma,beta}` | `[S]` |
//! | `encoder.blocks.i.attn.{query,key,value}` | `encoder/layer_i/self_attention/linear_0/{weight,bias}`, fused: rows `0..S` query, `S..2S` key, `2S..3S` value | `[3S, S]`, `[3S]` |
//! | `encoder.blocks.i.attn.out` | `encoder/layer_i/self_attention/linear_1/{weight,bias}` | `[S, S]`, `[S]` |
//! | `encoder.blocks.i.mlp_ln` | `encoder/layer_i/ffn/layer_norm/{gamma,beta}` | `[S]` |
//! | `encoder.blocks.i.mlp.0` | `encoder/layer_i/ffn/linear_0/{weight,bias}` | `[F, S]`, `[F]` |
//! | `encoder.blocks.i.mlp.2` | `encoder/layer_i/ffn/linear_1/{weight,bias}` | `[S, F]`, `[S]` |
//! | `encoder.ln_post` | `encoder/layer_norm/{gamma,beta}` | `[S]` |
//! | (attribute) | `encoder/num_heads` (int16 scalar) | `[]` |
//! | `decoder.token_embedding` | `decoder/embeddings/weight` | `[V, D]` |
//! | `decoder.positional_embedding` (learned) | `decoder/position_encodings/encodings` | `[448, D]` |
//! | `decoder.blocks.i.attn_ln` | `decoder/layer_i/self_attention/layer_norm/{gamma,beta}` | `[D]` |
//! | `decoder.blocks.i.attn.{query,key,value}` | `decoder/layer_i/self_attention/linear_0/*`, fused like the encoder's | `[3D, D]`, `[3D]` |
//! | `decoder.blocks.i.attn.out` | `decoder/layer_i/self_attention/linear_1/*` | `[D, D]`, `[D]` |
//! | `decoder.blocks.i.cross_attn_ln` | `decoder/layer_i/attention/layer_norm/{gamma,beta}` | `[D]` |
//! | `decoder.blocks.i.cross_attn.query` | `decoder/layer_i/attention/linear_0/*` | `[D, D]`, `[D]` |
//! | `decoder.blocks.i.cross_attn.{key,value}` | `decoder/layer_i/attention/linear_1/*`, fused: rows `0..D` key, `D..2D` value | `[2D, S]`, `[2D]` |
//! | `decoder.blocks.i.cross_attn.out` | `decoder/layer_i/attention/linear_2/*` | `[D, D]`, `[D]` |
//! | `decoder.blocks.i.mlp_ln`, `.mlp.0`, `.mlp.2` | `decoder/layer_i/ffn/{layer_norm,linear_0,linear_1}/*` | as the encoder's |
//! | `decoder.ln` | `decoder/layer_norm/{gamma,beta}` | `[D]` |
//! | output projection (tied to the embedding) | `decoder/projection/weight`, an alias of `decoder/embeddings/weight` | `[V, D]` |
//! | (attribute) | `decoder/num_heads` (int16 scalar) | `[]` |
//!
//! Whisper's key projections have no bias; the converter stores zeros in the key rows of the
//! fused bias. Other attributes are scalars: `decoder/activation` (int8, 3 = GELU),
//! `decoder/pre_norm` (1), `decoder/scale_embeddings` (0), `decoder/alibi` (0),
//! `decoder/start_from_zero_embedding` (0), `decoder/alignment_heads` and
//! `decoder/alignment_layer` (int16); the first four are checked when present.
//!
//! Weights may be float32, float16 or bfloat16, or int8/int16 with a `<name>_scale`
//! variable (per output row for int8, one scalar for int16), which [`Linear::scale`] holds
//! (split with the rows for fused projections). Layer norms, biases and position encodings
//! must be floats.
//!
//! # Model sizes
//!
//! | model | layers (enc/dec) | state | heads | mels | vocab |
//! |---|---|---|---|---|---|
//! | tiny, tiny.en | 4/4 | 384 | 6 | 80 | 51865 / 51864 |
//! | base, base.en | 6/6 | 512 | 8 | 80 | 51865 / 51864 |
//! | small, small.en | 12/12 | 768 | 12 | 80 | 51865 / 51864 |
//! | medium, medium.en | 24/24 | 1024 | 16 | 80 | 51865 / 51864 |
//! | large-v1, large-v2 | 32/32 | 1280 | 20 | 80 | 51865 |
//! | large-v3 | 32/32 | 1280 | 20 | 128 | 51866 |
//! | large-v3-turbo | 32/4 | 1280 | 20 | 128 | 51866 |
//!
//! Nothing here is keyed on the size: any consistent set of shapes is accepted.

use std::path::{Path, PathBuf};

use super::ct2::{Ct2Error, Ct2ErrorKind, Ct2Model, DType, JsonValue, TensorSlice, VariableView};
use crate::error::Result;
use crate::located::Format;

/// The spec name faster-whisper models have.
pub const WHISPER_SPEC: &str = "WhisperSpec";
/// The spec revision whose layout this module knows.
pub const WHISPER_SPEC_REVISION: u32 = 3;

/// A Whisper model's dimensions, derived from its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperDims {
    /// Mel bands of the input (80, or 128 for large-v3).
    pub n_mels: usize,
    /// Encoder positions (1500 = 3000 mel frames after the stride-2 convolution).
    pub n_audio_ctx: usize,
    /// Encoder width.
    pub n_audio_state: usize,
    /// Encoder attention heads.
    pub n_audio_head: usize,
    /// Encoder layers.
    pub n_audio_layer: usize,
    /// Encoder MLP width.
    pub n_audio_mlp: usize,
    /// Decoder positions (448).
    pub n_text_ctx: usize,
    /// Decoder width.
    pub n_text_state: usize,
    /// Decoder attention heads.
    pub n_text_head: usize,
    /// Decoder layers.
    pub n_text_layer: usize,
    /// Decoder MLP width.
    pub n_text_mlp: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
}

impl WhisperDims {
    /// Whether the model is multilingual (OpenAI's rule: `n_vocab >= 51865`).
    pub fn is_multilingual(&self) -> bool {
        self.n_vocab >= 51_865
    }

    /// Number of language tokens (OpenAI's rule: `n_vocab - 51765 - is_multilingual`).
    pub fn num_languages(&self) -> usize {
        self.n_vocab
            .saturating_sub(51_765 + usize::from(self.is_multilingual()))
    }

    /// The released model these dimensions match (`"tiny"`, `"base.en"`, `"large-v3"`, ...),
    /// or `"custom"`.
    pub fn size_name(&self) -> &'static str {
        let en = !self.is_multilingual();
        match (
            self.n_audio_layer,
            self.n_text_layer,
            self.n_audio_state,
            self.n_mels,
        ) {
            (4, 4, 384, 80) if en => "tiny.en",
            (4, 4, 384, 80) => "tiny",
            (6, 6, 512, 80) if en => "base.en",
            (6, 6, 512, 80) => "base",
            (12, 12, 768, 80) if en => "small.en",
            (12, 12, 768, 80) => "small",
            (24, 24, 1024, 80) if en => "medium.en",
            (24, 24, 1024, 80) => "medium",
            (32, 32, 1280, 80) => "large-v2",
            (32, 32, 1280, 128) => "large-v3",
            (32, 4, 1280, 128) => "large-v3-turbo",
            _ => "custom",
        }
    }
}

/// The decoding configuration from `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WhisperConfig {
    /// Tokens never to sample (`suppress_ids`).
    pub suppress_ids: Vec<u32>,
    /// Tokens not to sample at the first step (`suppress_ids_begin`).
    pub suppress_ids_begin: Vec<u32>,
    /// Language token ids (`lang_ids`).
    pub lang_ids: Vec<u32>,
    /// `(layer, head)` pairs whose cross-attention aligns with time (`alignment_heads`).
    pub alignment_heads: Vec<(u32, u32)>,
}

/// A linear layer `y = x Wᵀ + b`; `weight` is `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: TensorSlice,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<TensorSlice>,
    /// For int8 weights: `[out]` per-row scales (`w = q / scale`); for int16: a scalar.
    pub scale: Option<TensorSlice>,
}

/// Layer normalisation parameters.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale, `[width]`.
    pub gamma: TensorSlice,
    /// Shift, `[width]`.
    pub beta: TensorSlice,
}

/// A 1-D convolution with kernel 3 and padding 1 (`weight` is `[out, in, 3]`).
#[derive(Debug, Clone)]
pub struct Conv1d {
    /// `[out, in, 3]`.
    pub weight: TensorSlice,
    /// `[out]`.
    pub bias: TensorSlice,
}

/// Multi-head attention projections.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query projection.
    pub query: Linear,
    /// Key projection (its bias rows are zeros in Whisper).
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    /// Output projection.
    pub out: Linear,
}

/// The two-layer GELU MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[mlp, state]`.
    pub fc1: Linear,
    /// `[state, mlp]`.
    pub fc2: Linear,
}

/// One encoder block (pre-norm self-attention, then pre-norm MLP).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    /// Norm before self-attention.
    pub attn_ln: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm before the MLP.
    pub mlp_ln: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

/// One decoder block (self-attention, cross-attention, MLP; each pre-norm).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Norm before self-attention.
    pub attn_ln: LayerNorm,
    /// Causal self-attention.
    pub attn: Attention,
    /// Norm before cross-attention.
    pub cross_attn_ln: LayerNorm,
    /// Cross-attention over the encoder output.
    pub cross_attn: Attention,
    /// Norm before the MLP.
    pub mlp_ln: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

/// The audio encoder.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// First convolution (stride 1).
    pub conv1: Conv1d,
    /// Second convolution (stride 2).
    pub conv2: Conv1d,
    /// Sinusoidal position encodings, `[n_audio_ctx, state]`.
    pub positional_embedding: TensorSlice,
    /// The blocks.
    pub layers: Vec<EncoderLayer>,
    /// Final norm.
    pub ln_post: LayerNorm,
}

/// The text decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Token embeddings, `[n_vocab, state]`.
    pub token_embedding: TensorSlice,
    /// Learned position embeddings, `[n_text_ctx, state]`.
    pub positional_embedding: TensorSlice,
    /// The blocks.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub ln: LayerNorm,
    /// Output projection to logits, `[n_vocab, state]` (the token embedding, tied).
    pub projection: TensorSlice,
}

/// Every tensor of a Whisper model, resolved from a CTranslate2 model and checked.
#[derive(Debug, Clone)]
pub struct WhisperWeights {
    /// The dimensions.
    pub dims: WhisperDims,
    /// The decoding configuration.
    pub config: WhisperConfig,
    /// The encoder.
    pub encoder: Encoder,
    /// The decoder.
    pub decoder: Decoder,
    model: Ct2Model,
}

/// Where a model's `tokenizer.json` (BPE merges, for prompts) comes from.
#[derive(Debug, Clone)]
pub enum TokenizerJson {
    /// A file (CTranslate2 and Hugging Face directories).
    File(std::path::PathBuf),
    /// Text stored inside the model file (GGUF), with that file's path.
    Text(String, std::path::PathBuf),
    /// None: prompts cannot be encoded.
    None,
}

/// The formats [`WhisperWeights::open_any`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A faster-whisper (CTranslate2) directory with `model.bin`.
    Ct2,
    /// A Hugging Face directory with `model.safetensors` and transformers' `config.json`.
    HuggingFace,
    /// A GGUF file written by `sotad quantize whisper`.
    Gguf,
}

impl WhisperWeights {
    /// Opens a model in any supported format, decided by what is on disk: a file is GGUF;
    /// a directory with `model.bin` is CTranslate2, one with `model.safetensors` Hugging
    /// Face.
    pub fn open_any(path: impl AsRef<Path>) -> Result<(Self, ModelFormat, TokenizerJson)> {
        let path = path.as_ref();
        if path.is_file() {
            let (model, tj) = super::gguf::open(path)?;
            let w = Self::from_model(&model)?;
            let tj = match tj {
                Some(t) => TokenizerJson::Text(t, path.to_owned()),
                None => TokenizerJson::None,
            };
            return Ok((w, ModelFormat::Gguf, tj));
        }
        let tj = path.join("tokenizer.json");
        let tj = if tj.is_file() {
            TokenizerJson::File(tj)
        } else {
            TokenizerJson::None
        };
        if path.join(super::ct2::MODEL_FILE).exists() {
            return Ok((Self::open(path)?, ModelFormat::Ct2, tj));
        }
        if path.join(super::safetensors::SAFETENSORS_FILE).exists() {
            let model = super::safetensors::open_dir(path)?;
            return Ok((from_hf(&model)?, ModelFormat::HuggingFace, tj));
        }
        // Neither: report the CTranslate2 file as missing (the common case), naming the path.
        Ok((Self::open(path)?, ModelFormat::Ct2, tj))
    }

    /// Opens a faster-whisper model directory and resolves its weights.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_model(&Ct2Model::open(dir)?)
    }

    /// Resolves the weights of an opened model. It needs `config.json` and the vocabulary
    /// too, so `model` must come from [`Ct2Model::open`].
    pub fn from_model(model: &Ct2Model) -> Result<Self> {
        if model.spec_name() != WHISPER_SPEC || model.spec_revision() != WHISPER_SPEC_REVISION {
            return Err(model
                .error(Ct2ErrorKind::UnsupportedSpec {
                    spec: model.spec_name().to_owned(),
                    revision: model.spec_revision(),
                    expected: "WhisperSpec revision 3",
                })
                .into());
        }
        let r = Resolver { model };
        r.check_attributes()?;
        let dims = r.dims()?;
        let encoder = r.encoder(&dims)?;
        let decoder = r.decoder(&dims)?;
        let config = r.config(&dims)?;
        r.check_vocabulary(&dims)?;
        Ok(Self {
            dims,
            config,
            encoder,
            decoder,
            model: model.clone(),
        })
    }

    /// The model the tensors come from.
    pub fn model(&self) -> &Ct2Model {
        &self.model
    }

    /// The vocabulary: the token string of each id (byte-level BPE symbols, plus special
    /// tokens such as `<|endoftext|>` and timestamps `<|0.00|>`).
    pub fn vocabulary(&self) -> &[String] {
        self.model.vocabulary().map_or(&[], |(_, v)| v)
    }

    /// Every tensor with its OpenAI Whisper name (e.g. `encoder.blocks.0.attn.key.weight`),
    /// in a fixed order. Quantization scales are named `<weight name>_scale`.
    pub fn tensors(&self) -> Vec<(String, &TensorSlice)> {
        let mut out = Vec::new();
        let e = &self.encoder;
        out.push(("encoder.conv1.weight".into(), &e.conv1.weight));
        out.push(("encoder.conv1.bias".into(), &e.conv1.bias));
        out.push(("encoder.conv2.weight".into(), &e.conv2.weight));
        out.push(("encoder.conv2.bias".into(), &e.conv2.bias));
        out.push((
            "encoder.positional_embedding".into(),
            &e.positional_embedding,
        ));
        for (i, l) in e.layers.iter().enumerate() {
            let p = format!("encoder.blocks.{i}");
            push_ln(&mut out, format!("{p}.attn_ln"), &l.attn_ln);
            for (n, lin) in attention_parts(&l.attn) {
                push_linear(&mut out, format!("{p}.attn.{n}"), lin);
            }
            push_ln(&mut out, format!("{p}.mlp_ln"), &l.mlp_ln);
            push_linear(&mut out, format!("{p}.mlp.0"), &l.mlp.fc1);
            push_linear(&mut out, format!("{p}.mlp.2"), &l.mlp.fc2);
        }
        push_ln(&mut out, "encoder.ln_post".into(), &e.ln_post);
        let d = &self.decoder;
        out.push(("decoder.token_embedding.weight".into(), &d.token_embedding));
        out.push((
            "decoder.positional_embedding".into(),
            &d.positional_embedding,
        ));
        for (i, l) in d.layers.iter().enumerate() {
            let p = format!("decoder.blocks.{i}");
            push_ln(&mut out, format!("{p}.attn_ln"), &l.attn_ln);
            for (n, lin) in attention_parts(&l.attn) {
                push_linear(&mut out, format!("{p}.attn.{n}"), lin);
            }
            push_ln(&mut out, format!("{p}.cross_attn_ln"), &l.cross_attn_ln);
            for (n, lin) in attention_parts(&l.cross_attn) {
                push_linear(&mut out, format!("{p}.cross_attn.{n}"), lin);
            }
            push_ln(&mut out, format!("{p}.mlp_ln"), &l.mlp_ln);
            push_linear(&mut out, format!("{p}.mlp.0"), &l.mlp.fc1);
            push_linear(&mut out, format!("{p}.mlp.2"), &l.mlp.fc2);
        }
        push_ln(&mut out, "decoder.ln".into(), &d.ln);
        out.push(("decoder.projection.weight".into(), &d.projection));
        out
    }
}

fn push_linear<'a>(out: &mut Vec<(String, &'a TensorSlice)>, name: String, l: &'a Linear) {
    if let Some(s) = &l.scale {
        out.push((format!("{name}.weight_scale"), s));
    }
    if let Some(b) = &l.bias {
        out.push((format!("{name}.bias"), b));
    }
    out.push((format!("{name}.weight"), &l.weight));
}

fn push_ln<'a>(out: &mut Vec<(String, &'a TensorSlice)>, name: String, n: &'a LayerNorm) {
    out.push((format!("{name}.weight"), &n.gamma));
    out.push((format!("{name}.bias"), &n.beta));
}

fn attention_parts(a: &Attention) -> [(&'static str, &Linear); 4] {
    [
        ("query", &a.query),
        ("key", &a.key),
        ("value", &a.value),
        ("out", &a.out),
    ]
}

struct Resolver<'a> {
    model: &'a Ct2Model,
}

fn shape_str(shape: &[usize], names: &str) -> String {
    format!("{shape:?} ({names})")
}

impl Resolver<'_> {
    fn var(&self, name: &str) -> Result<VariableView> {
        self.model.variable(name)
    }

    fn err(&self, name: &str, kind: Ct2ErrorKind) -> crate::Error {
        self.model.error(kind).subject(name).into()
    }

    /// A variable that must have exactly `shape` (described by `names`, e.g.
    /// `"n_audio_state, n_mels, 3"`).
    fn shaped(&self, name: &str, shape: &[usize], names: &str) -> Result<VariableView> {
        let v = self.var(name)?;
        if v.shape() != shape {
            return Err(self.err(
                name,
                Ct2ErrorKind::WrongShape {
                    expected: shape_str(shape, names),
                    found: v.shape().to_vec(),
                },
            ));
        }
        Ok(v)
    }

    /// A float tensor of exactly `shape`.
    fn float(&self, name: &str, shape: &[usize], names: &str) -> Result<TensorSlice> {
        let v = self.shaped(name, shape, names)?;
        if !v.dtype().is_float() && v.info().quant().is_none() {
            return Err(self.err(
                name,
                Ct2ErrorKind::WrongDType {
                    expected: "float32, float16 or bfloat16",
                    found: v.dtype(),
                },
            ));
        }
        Ok(v.all())
    }

    /// A variable of rank `rank` whose shape is read rather than checked.
    fn ranked(&self, name: &str, rank: usize, names: &str) -> Result<VariableView> {
        let v = self.var(name)?;
        if v.shape().len() != rank || v.shape().contains(&0) {
            return Err(self.err(
                name,
                Ct2ErrorKind::WrongShape {
                    expected: format!("{rank} non-zero dimensions ({names})"),
                    found: v.shape().to_vec(),
                },
            ));
        }
        Ok(v)
    }

    fn layer_norm(&self, prefix: &str, width: usize, names: &str) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.float(&format!("{prefix}/gamma"), &[width], names)?,
            beta: self.float(&format!("{prefix}/beta"), &[width], names)?,
        })
    }

    /// A linear layer `{prefix}/weight` `[out, in]` with `{prefix}/bias` `[out]` when
    /// `with_bias`.
    fn linear(
        &self,
        prefix: &str,
        out: usize,
        inp: usize,
        names: &str,
        with_bias: bool,
    ) -> Result<Linear> {
        let bias = format!("{prefix}/bias");
        self.linear_named(
            &format!("{prefix}/weight"),
            with_bias.then_some(bias.as_str()),
            out,
            inp,
            names,
        )
    }

    /// A linear layer from the weight `wname` `[out, in]` and the bias `bname` `[out]`.
    fn linear_named(
        &self,
        wname: &str,
        bname: Option<&str>,
        out: usize,
        inp: usize,
        names: &str,
    ) -> Result<Linear> {
        let w = self.shaped(wname, &[out, inp], names)?;
        let scale = match w.dtype() {
            _ if w.info().quant().is_some() => None,
            DType::F32 | DType::F16 | DType::BF16 => None,
            DType::I8 => Some(self.float(&format!("{wname}_scale"), &[out], "per-row scales")?),
            DType::I16 => Some(self.float(&format!("{wname}_scale"), &[], "one scale")?),
            DType::I32 => {
                return Err(self.err(
                    wname,
                    Ct2ErrorKind::WrongDType {
                        expected: "float32, float16, bfloat16, int8 or int16",
                        found: DType::I32,
                    },
                ));
            }
        };
        let bias = match bname {
            Some(b) => {
                let (first, _) = names.split_once(',').unwrap_or((names, ""));
                Some(self.float(b, &[out], first)?)
            }
            None => None,
        };
        Ok(Linear {
            weight: w.all(),
            bias,
            scale,
        })
    }

    /// Splits a fused linear layer into `parts` equal row ranges.
    fn split<const N: usize>(&self, fused: &Linear) -> Result<[Linear; N]> {
        let rows = fused.weight.row_range().len();
        let part = rows / N;
        let slice = |t: &TensorSlice, i: usize| -> Result<TensorSlice> {
            t.variable().rows(i * part..(i + 1) * part).ok_or_else(|| {
                self.err(
                    t.name(),
                    Ct2ErrorKind::Inconsistent {
                        what: format!(
                            "cannot take rows {}..{} of a fused projection",
                            i * part,
                            (i + 1) * part
                        ),
                    },
                )
            })
        };
        let mut out = Vec::with_capacity(N);
        for i in 0..N {
            out.push(Linear {
                weight: slice(&fused.weight, i)?,
                bias: fused.bias.as_ref().map(|b| slice(b, i)).transpose()?,
                scale: match &fused.scale {
                    Some(s) if !s.shape().is_empty() => Some(slice(s, i)?),
                    other => other.clone(),
                },
            });
        }
        out.try_into().map_err(|_| {
            self.err(
                fused.weight.name(),
                Ct2ErrorKind::Inconsistent {
                    what: "internal error splitting a fused projection".into(),
                },
            )
        })
    }

    fn scalar(&self, name: &str) -> Result<Option<i64>> {
        if !self.model.contains(name) {
            return Ok(self.model.attribute(name));
        }
        let v = self.var(name)?;
        match v.scalar_i64() {
            Some(x) => Ok(Some(x)),
            None => Err(self.err(
                name,
                Ct2ErrorKind::WrongShape {
                    expected: "an integer scalar".into(),
                    found: v.shape().to_vec(),
                },
            )),
        }
    }

    fn check_attributes(&self) -> Result<()> {
        for (name, expected, what) in [
            ("decoder/pre_norm", 1, "1 (Whisper blocks are pre-norm)"),
            ("decoder/activation", 3, "3 (GELU)"),
            (
                "decoder/scale_embeddings",
                0,
                "0 (Whisper does not scale embeddings)",
            ),
            ("decoder/alibi", 0, "0 (Whisper has no ALiBi)"),
        ] {
            match self.scalar(name)? {
                Some(v) if v != expected => {
                    return Err(self.err(
                        name,
                        Ct2ErrorKind::WrongValue {
                            expected: what.into(),
                            found: v.to_string(),
                        },
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn heads(&self, name: &str, state: usize) -> Result<usize> {
        let Some(h) = self.scalar(name)? else {
            return Err(self.model.missing(name).into());
        };
        match usize::try_from(h) {
            Ok(h) if h > 0 && state % h == 0 => Ok(h),
            _ => Err(self.err(
                name,
                Ct2ErrorKind::WrongValue {
                    expected: format!("a positive divisor of the state width {state}"),
                    found: h.to_string(),
                },
            )),
        }
    }

    /// Number of `{side}/layer_N/` blocks: one more than the largest N (at least 1, so that
    /// a model without layers fails naming `{side}/layer_0/...`).
    fn layer_count(&self, side: &str) -> usize {
        let prefix = format!("{side}/layer_");
        self.model
            .variables()
            .iter()
            .filter_map(|v| {
                let rest = v.name().strip_prefix(&prefix)?;
                let (n, _) = rest.split_once('/')?;
                n.parse::<usize>().ok()
            })
            .max()
            .map_or(1, |m| m.saturating_add(1))
    }

    fn dims(&self) -> Result<WhisperDims> {
        let conv1 = self.ranked("encoder/conv1/weight", 3, "n_audio_state, n_mels, 3")?;
        let (s, m) = (conv1.shape()[0], conv1.shape()[1]);
        if conv1.shape()[2] != 3 {
            return Err(self.err(
                "encoder/conv1/weight",
                Ct2ErrorKind::WrongShape {
                    expected: shape_str(&[s, m, 3], "n_audio_state, n_mels, 3"),
                    found: conv1.shape().to_vec(),
                },
            ));
        }
        let pos = self.ranked(
            "encoder/position_encodings/encodings",
            2,
            "n_audio_ctx, n_audio_state",
        )?;
        let a_ctx = pos.shape()[0];
        let a_mlp = self
            .ranked(
                "encoder/layer_0/ffn/linear_0/weight",
                2,
                "n_audio_mlp, n_audio_state",
            )?
            .shape()[0];
        let emb = self.ranked("decoder/embeddings/weight", 2, "n_vocab, n_text_state")?;
        let (v, d) = (emb.shape()[0], emb.shape()[1]);
        let t_ctx = self
            .ranked(
                "decoder/position_encodings/encodings",
                2,
                "n_text_ctx, n_text_state",
            )?
            .shape()[0];
        let t_mlp = self
            .ranked(
                "decoder/layer_0/ffn/linear_0/weight",
                2,
                "n_text_mlp, n_text_state",
            )?
            .shape()[0];
        Ok(WhisperDims {
            n_mels: m,
            n_audio_ctx: a_ctx,
            n_audio_state: s,
            n_audio_head: self.heads("encoder/num_heads", s)?,
            n_audio_layer: self.layer_count("encoder"),
            n_audio_mlp: a_mlp,
            n_text_ctx: t_ctx,
            n_text_state: d,
            n_text_head: self.heads("decoder/num_heads", d)?,
            n_text_layer: self.layer_count("decoder"),
            n_text_mlp: t_mlp,
            n_vocab: v,
        })
    }

    fn mlp(&self, prefix: &str, state: usize, mlp: usize, side: &str) -> Result<Mlp> {
        Ok(Mlp {
            fc1: self.linear(
                &format!("{prefix}/linear_0"),
                mlp,
                state,
                &format!("n_{side}_mlp, n_{side}_state"),
                true,
            )?,
            fc2: self.linear(
                &format!("{prefix}/linear_1"),
                state,
                mlp,
                &format!("n_{side}_state, n_{side}_mlp"),
                true,
            )?,
        })
    }

    fn self_attention(&self, prefix: &str, state: usize, side: &str) -> Result<Attention> {
        let fused = self.linear(
            &format!("{prefix}/linear_0"),
            3 * state,
            state,
            &format!("3 × n_{side}_state, n_{side}_state"),
            true,
        )?;
        let [query, key, value] = self.split::<3>(&fused)?;
        let out = self.linear(
            &format!("{prefix}/linear_1"),
            state,
            state,
            &format!("n_{side}_state, n_{side}_state"),
            true,
        )?;
        Ok(Attention {
            query,
            key,
            value,
            out,
        })
    }

    fn encoder(&self, dims: &WhisperDims) -> Result<Encoder> {
        let (s, m) = (dims.n_audio_state, dims.n_mels);
        let conv = |name: &str, inp: usize, names: &str| -> Result<Conv1d> {
            Ok(Conv1d {
                weight: self.float(&format!("encoder/{name}/weight"), &[s, inp, 3], names)?,
                bias: self.float(&format!("encoder/{name}/bias"), &[s], "n_audio_state")?,
            })
        };
        let conv1 = conv("conv1", m, "n_audio_state, n_mels, 3")?;
        let conv2 = conv("conv2", s, "n_audio_state, n_audio_state, 3")?;
        let positional_embedding = self.float(
            "encoder/position_encodings/encodings",
            &[dims.n_audio_ctx, s],
            "n_audio_ctx, n_audio_state",
        )?;
        let layers = (0..dims.n_audio_layer)
            .map(|i| {
                let p = format!("encoder/layer_{i}");
                Ok(EncoderLayer {
                    attn_ln: self.layer_norm(
                        &format!("{p}/self_attention/layer_norm"),
                        s,
                        "n_audio_state",
                    )?,
                    attn: self.self_attention(&format!("{p}/self_attention"), s, "audio")?,
                    mlp_ln: self.layer_norm(&format!("{p}/ffn/layer_norm"), s, "n_audio_state")?,
                    mlp: self.mlp(&format!("{p}/ffn"), s, dims.n_audio_mlp, "audio")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_post = self.layer_norm("encoder/layer_norm", s, "n_audio_state")?;
        Ok(Encoder {
            conv1,
            conv2,
            positional_embedding,
            layers,
            ln_post,
        })
    }

    fn decoder(&self, dims: &WhisperDims) -> Result<Decoder> {
        let (d, s, v) = (dims.n_text_state, dims.n_audio_state, dims.n_vocab);
        let token_embedding = self.float(
            "decoder/embeddings/weight",
            &[v, d],
            "n_vocab, n_text_state",
        )?;
        let positional_embedding = self.float(
            "decoder/position_encodings/encodings",
            &[dims.n_text_ctx, d],
            "n_text_ctx, n_text_state",
        )?;
        let layers = (0..dims.n_text_layer)
            .map(|i| {
                let p = format!("decoder/layer_{i}");
                let cross = format!("{p}/attention");
                let query = self.linear(
                    &format!("{cross}/linear_0"),
                    d,
                    d,
                    "n_text_state, n_text_state",
                    true,
                )?;
                let fused_kv = self.linear(
                    &format!("{cross}/linear_1"),
                    2 * d,
                    s,
                    "2 × n_text_state, n_audio_state",
                    true,
                )?;
                let [key, value] = self.split::<2>(&fused_kv)?;
                let out = self.linear(
                    &format!("{cross}/linear_2"),
                    d,
                    d,
                    "n_text_state, n_text_state",
                    true,
                )?;
                Ok(DecoderLayer {
                    attn_ln: self.layer_norm(
                        &format!("{p}/self_attention/layer_norm"),
                        d,
                        "n_text_state",
                    )?,
                    attn: self.self_attention(&format!("{p}/self_attention"), d, "text")?,
                    cross_attn_ln: self.layer_norm(
                        &format!("{cross}/layer_norm"),
                        d,
                        "n_text_state",
                    )?,
                    cross_attn: Attention {
                        query,
                        key,
                        value,
                        out,
                    },
                    mlp_ln: self.layer_norm(&format!("{p}/ffn/layer_norm"), d, "n_text_state")?,
                    mlp: self.mlp(&format!("{p}/ffn"), d, dims.n_text_mlp, "text")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln = self.layer_norm("decoder/layer_norm", d, "n_text_state")?;
        let projection = self
            .linear("decoder/projection", v, d, "n_vocab, n_text_state", false)?
            .weight;
        Ok(Decoder {
            token_embedding,
            positional_embedding,
            layers,
            ln,
            projection,
        })
    }

    fn config(&self, dims: &WhisperDims) -> Result<WhisperConfig> {
        let Some((path, json)) = self.model.config() else {
            let path = self.model.dir().map(|d| d.join(super::ct2::CONFIG_FILE));
            return Err(Ct2Error::new(Ct2ErrorKind::Config {
                reason: "config.json is missing (faster-whisper model directories have one)".into(),
            })
            .path(path.as_deref())
            .into());
        };
        let err = |key: &str, reason: String| -> crate::Error {
            Ct2Error::new(Ct2ErrorKind::Config { reason })
                .path(Some(path))
                .subject(key)
                .into()
        };
        if !matches!(json, JsonValue::Object(_)) {
            return Err(Ct2Error::new(Ct2ErrorKind::Config {
                reason: format!("expected a JSON object, found {}", json.type_name()),
            })
            .path(Some(path))
            .into());
        }
        let ids = |key: &str| -> Result<Vec<u32>> {
            let Some(v) = json.get(key) else {
                return Ok(Vec::new());
            };
            let items = v.as_array().ok_or_else(|| {
                err(
                    key,
                    format!("expected an array of token ids, found {}", v.type_name()),
                )
            })?;
            items
                .iter()
                .enumerate()
                .map(|(i, x)| match x.as_u32() {
                    Some(id) if (id as usize) < dims.n_vocab => Ok(id),
                    Some(id) => Err(err(
                        key,
                        format!(
                            "element {i} is token id {id}, outside the vocabulary of {}",
                            dims.n_vocab
                        ),
                    )),
                    None => Err(err(key, format!("element {i} is not a token id: {x:?}"))),
                })
                .collect()
        };
        let alignment_heads = match json.get("alignment_heads") {
            None | Some(JsonValue::Null) => Vec::new(),
            Some(v) => {
                let items = v.as_array().ok_or_else(|| {
                    err(
                        "alignment_heads",
                        format!(
                            "expected an array of [layer, head] pairs, found {}",
                            v.type_name()
                        ),
                    )
                })?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, p)| match p.as_array() {
                        Some([l, h]) => match (l.as_u32(), h.as_u32()) {
                            (Some(l), Some(h))
                                if (l as usize) < dims.n_text_layer && (h as usize) < dims.n_text_head =>
                            {
                                Ok((l, h))
                            }
                            _ => Err(err(
                                "alignment_heads",
                                format!(
                                    "element {i} is not a [layer, head] pair within {} layers and {} heads: {p:?}",
                                    dims.n_text_layer, dims.n_text_head
                                ),
                            )),
                        },
                        _ => Err(err(
                            "alignment_heads",
                            format!("element {i} is not a [layer, head] pair: {p:?}"),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(WhisperConfig {
            suppress_ids: ids("suppress_ids")?,
            suppress_ids_begin: ids("suppress_ids_begin")?,
            lang_ids: ids("lang_ids")?,
            alignment_heads,
        })
    }

    fn check_vocabulary(&self, dims: &WhisperDims) -> Result<()> {
        let Some((path, vocab)) = self.model.vocabulary() else {
            let path: Option<PathBuf> = self.model.dir().map(|d| d.join("vocabulary.txt"));
            return Err(Ct2Error::new(Ct2ErrorKind::Vocabulary {
                reason: "no vocabulary.txt or vocabulary.json in the model directory".into(),
            })
            .path(path.as_deref())
            .into());
        };
        if vocab.len() != dims.n_vocab {
            return Err(Ct2Error::new(Ct2ErrorKind::Inconsistent {
                what: format!(
                    "the vocabulary has {} tokens but decoder/embeddings/weight has {} rows",
                    vocab.len(),
                    dims.n_vocab
                ),
            })
            .path(Some(path))
            .into());
        }
        Ok(())
    }
}

// ----- Hugging Face (transformers) layout ------------------------------------------------

/// Resolves a Whisper model whose tensors have transformers' names
/// (`model.encoder.layers.N.self_attn.q_proj.weight`, ...), with the dimensions taken from
/// transformers' `config.json` and checked against every tensor's shape. See
/// [`super::safetensors`] for the names.
pub(crate) fn from_hf(model: &Ct2Model) -> Result<WhisperWeights> {
    let r = Resolver { model };
    let Some((path, json)) = model.config() else {
        let path = model.dir().map(|d| d.join(super::ct2::CONFIG_FILE));
        return Err(Ct2Error::new(Ct2ErrorKind::Config {
            reason: "config.json is missing (Hugging Face model directories have one)".into(),
        })
        .path(path.as_deref())
        .format(Format::HuggingFace)
        .into());
    };
    let err = |key: &str, reason: String| -> crate::Error {
        Ct2Error::new(Ct2ErrorKind::Config { reason })
            .path(Some(path))
            .format(Format::HuggingFace)
            .subject(key)
            .into()
    };
    let num = |key: &str| -> Result<usize> {
        match json.get(key).and_then(JsonValue::as_u32) {
            Some(v) if v > 0 => Ok(v as usize),
            Some(_) => Err(err(key, "must be positive".into())),
            None => Err(err(
                key,
                "missing or not a non-negative integer (transformers' WhisperConfig has it)".into(),
            )),
        }
    };
    if let Some(t) = json.get("model_type") {
        if t.as_str() != Some("whisper") {
            return Err(err(
                "model_type",
                format!("expected \"whisper\", found {t:?}"),
            ));
        }
    }
    let state = num("d_model")?;
    let dims = WhisperDims {
        n_mels: num("num_mel_bins")?,
        n_audio_ctx: num("max_source_positions")?,
        n_audio_state: state,
        n_audio_head: num("encoder_attention_heads")?,
        n_audio_layer: num("encoder_layers")?,
        n_audio_mlp: num("encoder_ffn_dim")?,
        n_text_ctx: num("max_target_positions")?,
        n_text_state: state,
        n_text_head: num("decoder_attention_heads")?,
        n_text_layer: num("decoder_layers")?,
        n_text_mlp: num("decoder_ffn_dim")?,
        n_vocab: num("vocab_size")?,
    };
    for (key, h) in [
        ("encoder_attention_heads", dims.n_audio_head),
        ("decoder_attention_heads", dims.n_text_head),
    ] {
        if state % h != 0 {
            return Err(err(key, format!("{h} heads do not divide d_model {state}")));
        }
    }
    if let Some(a) = json.get("activation_function") {
        if a.as_str() != Some("gelu") {
            return Err(err(
                "activation_function",
                format!("expected \"gelu\", found {a:?}"),
            ));
        }
    }
    let ids = |key: &str| -> Result<Vec<u32>> {
        let Some(v) = json.get(key) else {
            return Ok(Vec::new());
        };
        if matches!(v, JsonValue::Null) {
            return Ok(Vec::new());
        }
        let items = v.as_array().ok_or_else(|| {
            err(
                key,
                format!("expected an array of token ids, found {}", v.type_name()),
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_u32() {
                Some(id) if (id as usize) < dims.n_vocab => Ok(id),
                _ => Err(err(
                    key,
                    format!(
                        "element {i} is not a token id below {}: {x:?}",
                        dims.n_vocab
                    ),
                )),
            })
            .collect()
    };
    let config = WhisperConfig {
        suppress_ids: ids("suppress_tokens")?,
        suppress_ids_begin: ids("begin_suppress_tokens")?,
        lang_ids: Vec::new(),
        alignment_heads: Vec::new(),
    };

    // Whole-model checkpoints prefix the names with `model.`; a bare `WhisperModel` does not.
    let p = if model.contains("model.encoder.conv1.weight") {
        "model."
    } else {
        ""
    };
    let (s, m, d, v) = (state, dims.n_mels, state, dims.n_vocab);
    let norm = |name: &str, names: &str| -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: r.float(&format!("{name}.weight"), &[s], names)?,
            beta: r.float(&format!("{name}.bias"), &[s], names)?,
        })
    };
    let lin = |name: &str, out: usize, inp: usize, names: &str, bias: bool| -> Result<Linear> {
        let b = format!("{name}.bias");
        r.linear_named(
            &format!("{name}.weight"),
            bias.then_some(b.as_str()),
            out,
            inp,
            names,
        )
    };
    let attn = |prefix: &str, kv_in: usize, side: &str| -> Result<Attention> {
        let sq = format!("n_{side}_state, n_{side}_state");
        let kv = if kv_in == s && side == "text" && prefix.ends_with("encoder_attn") {
            "n_text_state, n_audio_state".to_owned()
        } else {
            sq.clone()
        };
        Ok(Attention {
            query: lin(&format!("{prefix}.q_proj"), s, s, &sq, true)?,
            key: lin(&format!("{prefix}.k_proj"), s, kv_in, &kv, false)?,
            value: lin(&format!("{prefix}.v_proj"), s, kv_in, &kv, true)?,
            out: lin(&format!("{prefix}.out_proj"), s, s, &sq, true)?,
        })
    };
    let mlp = |prefix: &str, width: usize, side: &str| -> Result<Mlp> {
        Ok(Mlp {
            fc1: lin(
                &format!("{prefix}.fc1"),
                width,
                s,
                &format!("{side}_ffn_dim, d_model"),
                true,
            )?,
            fc2: lin(
                &format!("{prefix}.fc2"),
                s,
                width,
                &format!("d_model, {side}_ffn_dim"),
                true,
            )?,
        })
    };
    let conv = |name: &str, inp: usize, names: &str| -> Result<Conv1d> {
        Ok(Conv1d {
            weight: r.float(&format!("{p}encoder.{name}.weight"), &[s, inp, 3], names)?,
            bias: r.float(&format!("{p}encoder.{name}.bias"), &[s], "d_model")?,
        })
    };
    let encoder = Encoder {
        conv1: conv("conv1", m, "d_model, num_mel_bins, 3")?,
        conv2: conv("conv2", s, "d_model, d_model, 3")?,
        positional_embedding: r.float(
            &format!("{p}encoder.embed_positions.weight"),
            &[dims.n_audio_ctx, s],
            "max_source_positions, d_model",
        )?,
        layers: (0..dims.n_audio_layer)
            .map(|i| {
                let l = format!("{p}encoder.layers.{i}");
                Ok(EncoderLayer {
                    attn_ln: norm(&format!("{l}.self_attn_layer_norm"), "d_model")?,
                    attn: attn(&format!("{l}.self_attn"), s, "audio")?,
                    mlp_ln: norm(&format!("{l}.final_layer_norm"), "d_model")?,
                    mlp: mlp(&l, dims.n_audio_mlp, "encoder")?,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        ln_post: norm(&format!("{p}encoder.layer_norm"), "d_model")?,
    };
    let token_embedding = r.float(
        &format!("{p}decoder.embed_tokens.weight"),
        &[v, d],
        "vocab_size, d_model",
    )?;
    let projection = if model.contains("proj_out.weight") {
        r.float("proj_out.weight", &[v, d], "vocab_size, d_model")?
    } else {
        token_embedding.clone()
    };
    let decoder = Decoder {
        positional_embedding: r.float(
            &format!("{p}decoder.embed_positions.weight"),
            &[dims.n_text_ctx, d],
            "max_target_positions, d_model",
        )?,
        layers: (0..dims.n_text_layer)
            .map(|i| {
                let l = format!("{p}decoder.layers.{i}");
                Ok(DecoderLayer {
                    attn_ln: norm(&format!("{l}.self_attn_layer_norm"), "d_model")?,
                    attn: attn(&format!("{l}.self_attn"), d, "text")?,
                    cross_attn_ln: norm(&format!("{l}.encoder_attn_layer_norm"), "d_model")?,
                    cross_attn: attn(&format!("{l}.encoder_attn"), s, "text")?,
                    mlp_ln: norm(&format!("{l}.final_layer_norm"), "d_model")?,
                    mlp: mlp(&l, dims.n_text_mlp, "decoder")?,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        ln: norm(&format!("{p}decoder.layer_norm"), "d_model")?,
        token_embedding,
        projection,
    };
    r.check_vocabulary(&dims)?;
    Ok(WhisperWeights {
        dims,
        config,
        encoder,
        decoder,
        model: model.clone(),
    })
}
