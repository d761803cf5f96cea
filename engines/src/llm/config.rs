//! Hyper-parameters read from the GGUF metadata (`{arch}.*` keys, as llama.cpp names them).

use std::fmt;

use super::{LlmError, LlmErrorKind};
use crate::error::Result;
use crate::gguf::GgufFile;

/// Largest context used when the caller asks for the model's own (0).
const DEFAULT_MAX_CONTEXT: usize = 4096;

/// The architectures this engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: SmolLM2, Llama 3.x.
    Llama,
    /// `qwen2`: Qwen2.5 (q/k/v biases).
    Qwen2,
    /// `qwen3`: Qwen3 (q/k norm, thinking).
    Qwen3,
    /// `gemma3`: Gemma 3 text models.
    Gemma3,
}

impl Arch {
    /// The `general.architecture` string.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    fn from_name(s: &str) -> Option<Arch> {
        Some(match s {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Model hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Architecture.
    pub arch: Arch,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention).
    pub n_head_kv: usize,
    /// Dimension of a query/key head.
    pub head_dim: usize,
    /// Dimension of a value head.
    pub head_dim_v: usize,
    /// FFN inner size.
    pub n_ff: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Rope base of the (global) attention layers.
    pub rope_base: f32,
    /// Rope base of sliding-window layers (Gemma 3: 10000).
    pub rope_base_local: f32,
    /// Linear rope scale of global layers (1 / `rope.scaling.factor`).
    pub rope_freq_scale: f32,
    /// Dimensions of each head that rope rotates.
    pub rope_dim: usize,
    /// Rope on pairs `(i, i + d/2)` (NeoX) instead of adjacent pairs.
    pub rope_neox: bool,
    /// Sliding window of local layers (0 = none).
    pub sliding_window: usize,
    /// Every `swa_pattern`-th layer is global, the others use the window (0 = all global).
    pub swa_pattern: usize,
    /// Scale applied to attention scores.
    pub attn_scale: f32,
    /// Training context length from the file.
    pub context_train: usize,
    /// Context length of sessions (KV cache, rope tables).
    pub context_len: usize,
}

impl Config {
    /// Reads the hyper-parameters; `context_len` 0 means the model's own, capped at 4096.
    pub fn from_gguf(file: &GgufFile, context_len: usize) -> Result<Config> {
        let path = file.path();
        let arch_name = file.get_str("general.architecture")?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| {
            LlmError::error(
                path,
                Some("key \"general.architecture\"".into()),
                LlmErrorKind::UnknownArchitecture(arch_name.to_owned()),
            )
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| -> Result<usize> { Ok(file.get_u32(&key(k))? as usize) };
        let get_or = |k: &str, d: usize| -> Result<usize> {
            if file.contains_key(&key(k)) {
                get(k)
            } else {
                Ok(d)
            }
        };
        let getf_or = |k: &str, d: f32| -> Result<f32> {
            if file.contains_key(&key(k)) {
                file.get_f32(&key(k))
            } else {
                Ok(d)
            }
        };
        let n_layer = get("block_count")?;
        let n_embd = get("embedding_length")?;
        let n_head = get("attention.head_count")?;
        let n_head_kv = get_or("attention.head_count_kv", n_head)?;
        let n_ff = get("feed_forward_length")?;
        let bad = |k: &str, msg: String| {
            LlmError::error(
                path,
                Some(format!("key {:?}", key(k))),
                LlmErrorKind::BadConfig(msg),
            )
        };
        if n_layer == 0 || n_embd == 0 || n_ff == 0 {
            return Err(bad(
                "block_count",
                "block count, embedding length and FFN length must be > 0".into(),
            ));
        }
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_head} query heads cannot be grouped over {n_head_kv} key/value heads"),
            ));
        }
        let head_dim = get_or("attention.key_length", n_embd / n_head)?;
        let head_dim_v = get_or("attention.value_length", head_dim)?;
        let rope_dim = get_or("rope.dimension_count", head_dim)?;
        if head_dim == 0 || head_dim_v == 0 || rope_dim % 2 != 0 || rope_dim > head_dim {
            return Err(bad(
                "rope.dimension_count",
                format!("head size {head_dim}/{head_dim_v} with rope dimensions {rope_dim}"),
            ));
        }
        let eps = getf_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        let rope_base = getf_or("rope.freq_base", 10000.0)?;
        let scaling_factor = getf_or("rope.scaling.factor", 1.0)?;
        let linear = file
            .get("rope.scaling.type")
            .and_then(|v| v.as_str())
            .is_some_and(|t| t == "linear")
            || file
                .get(&key("rope.scaling.type"))
                .and_then(|v| v.as_str())
                .is_some_and(|t| t == "linear");
        let rope_freq_scale = if linear && scaling_factor > 0.0 {
            1.0 / scaling_factor
        } else {
            1.0
        };
        let context_train = get_or("context_length", 2048)?;
        let context_len = if context_len == 0 {
            context_train.min(DEFAULT_MAX_CONTEXT)
        } else {
            context_len
        };
        if context_len < 2 * super::SINK_TOKENS + 2 {
            return Err(LlmError::request(format!(
                "context length {context_len} is too small"
            )));
        }

        let (sliding_window, swa_pattern, rope_base_local, attn_scale) = match arch {
            Arch::Gemma3 => {
                // llama.cpp: query_pre_attn_scalar is the head size except for the 27B model.
                let scalar = if n_layer == 62 {
                    (n_embd / n_head) as f32
                } else {
                    head_dim as f32
                };
                (
                    get_or("attention.sliding_window", 0)?,
                    6,
                    10000.0,
                    1.0 / scalar.sqrt(),
                )
            }
            _ => (0, 0, rope_base, 1.0 / (head_dim as f32).sqrt()),
        };
        Ok(Config {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            n_ff,
            eps,
            rope_base,
            rope_base_local,
            rope_freq_scale,
            rope_dim,
            rope_neox: arch != Arch::Llama,
            sliding_window,
            swa_pattern,
            attn_scale,
            context_train,
            context_len,
        })
    }

    /// Whether layer `il` uses the sliding window.
    pub fn is_local(&self, il: usize) -> bool {
        self.sliding_window > 0
            && self.swa_pattern > 0
            && il % self.swa_pattern < self.swa_pattern - 1
    }
}
