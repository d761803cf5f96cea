//! Whisper in a GGUF file, as `sotad quantize whisper` writes it ([`super::quantize`]).
//!
//! # Layout
//!
//! The tensors keep the CTranslate2 variable names and layout of [`super::weights`]
//! (`encoder/layer_0/self_attention/linear_0/weight` with query, key and value fused, the
//! cross-attention key and value fused, `gamma`/`beta` norms), so that one resolver checks
//! every format. GGUF dimensions are innermost first: a `[out, in]` matrix is stored with
//! dims `[in, out]`. Matrices are ggml blocks (Q8_0, Q4_0, ..., Q6_K); linear biases are
//! F32; convolutions, norms and position encodings F16 or F32 (as the source had them). The output projection is the token
//! embedding (`decoder/projection/weight` is an alias when absent).
//!
//! Metadata makes the file self-contained:
//!
//! | key | value |
//! |---|---|
//! | `general.architecture` | `"whisper"` |
//! | `general.name` | the released size (`"tiny.en"`) |
//! | `whisper.encoder.attention.head_count`, `whisper.decoder.attention.head_count` | u32 |
//! | `whisper.encoder.block_count`, `whisper.decoder.block_count`, `whisper.embedding_length`, `whisper.n_mels`, `whisper.vocab_size` | u32, informative (the tensors' shapes decide) |
//! | `whisper.config_json` | the decoding configuration as faster-whisper's `config.json` text (`suppress_ids`, `suppress_ids_begin`, `lang_ids`, `alignment_heads`) |
//! | `tokenizer.ggml.tokens` | the token of each id |
//! | `tokenizer.huggingface.json` | `tokenizer.json` (for the BPE merges of initial prompts), if the source had one |
//!
//! # Loading
//!
//! The file is memory-mapped; quantized matrices stay in the mapping and are multiplied with
//! the [`crate::quant`] kernels (see [`crate::stt::model`]); the rest is converted to `f32`.

use std::collections::HashMap;
use std::path::Path;

use super::ct2::{Ct2Error, Ct2ErrorKind, Ct2Model, DType, VariableInfo};
use crate::error::Result;
use crate::gguf::{GgmlType, GgufFile};
use crate::located::Format;
use crate::mapped::Backing;
use crate::quant::WEIGHT_TYPES;

/// `general.architecture` of a Whisper GGUF file.
pub const ARCHITECTURE: &str = "whisper";
/// Metadata key of the decoding configuration (JSON text).
pub const CONFIG_KEY: &str = "whisper.config_json";
/// Metadata key of the vocabulary.
pub const TOKENS_KEY: &str = "tokenizer.ggml.tokens";
/// Metadata key of `tokenizer.json`.
pub const TOKENIZER_JSON_KEY: &str = "tokenizer.huggingface.json";

fn err(path: &Path, subject: &str, kind: Ct2ErrorKind) -> crate::Error {
    Ct2Error::new(kind)
        .path(Some(path))
        .format(Format::Gguf)
        .subject(subject)
        .into()
}

/// Opens a Whisper GGUF file as a [`Ct2Model`] over its memory map, with its configuration,
/// vocabulary and `tokenizer.json` text (if any).
pub fn open(path: &Path) -> Result<(Ct2Model, Option<String>)> {
    let file = GgufFile::open(path)?;
    let config_err = |key: &str, reason: String| err(path, key, Ct2ErrorKind::Config { reason });
    match file.architecture() {
        Some(ARCHITECTURE) => {}
        other => {
            return Err(config_err(
                "general.architecture",
                format!("expected \"{ARCHITECTURE}\", found {other:?}"),
            ));
        }
    }
    let mut attributes = HashMap::new();
    for (side, var) in [
        ("encoder", "encoder/num_heads"),
        ("decoder", "decoder/num_heads"),
    ] {
        let key = format!("whisper.{side}.attention.head_count");
        let h = file
            .get_u32(&key)
            .map_err(|e| config_err(&key, e.to_string()))?;
        attributes.insert(var.to_owned(), i64::from(h));
    }
    let config_text = file
        .get_str(CONFIG_KEY)
        .map_err(|e| config_err(CONFIG_KEY, e.to_string()))?;
    let config = crate::json::parse(config_text).map_err(|e| {
        config_err(
            CONFIG_KEY,
            format!("JSON error at byte {}: {}", e.offset, e.message),
        )
    })?;
    let tokens: Vec<String> = file
        .get_str_array(TOKENS_KEY)
        .map_err(|e| config_err(TOKENS_KEY, e.to_string()))?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let tokenizer_json = file.get_str(TOKENIZER_JSON_KEY).ok().map(str::to_owned);

    let mut variables = Vec::with_capacity(file.tensor_count());
    for t in file.tensor_infos() {
        let ty = t.ggml_type();
        let shape: Vec<usize> = t.dims().iter().rev().map(|&d| d as usize).collect();
        let (dtype, quant) = match ty {
            GgmlType::F32 => (DType::F32, None),
            GgmlType::F16 => (DType::F16, None),
            GgmlType::BF16 => (DType::BF16, None),
            _ if WEIGHT_TYPES.contains(&ty) && shape.len() == 2 => (DType::I8, Some(ty)),
            _ => {
                return Err(err(
                    path,
                    t.name(),
                    Ct2ErrorKind::Inconsistent {
                        what: format!(
                            "tensor type {ty} with {} dimensions is not supported for Whisper (F32, F16, BF16, or a quantized matrix)",
                            shape.len()
                        ),
                    },
                ));
            }
        };
        let start = t.file_offset() as usize;
        variables.push(VariableInfo::external(
            t.name().to_owned(),
            dtype,
            shape,
            start..start + t.n_bytes() as usize,
            quant,
        ));
    }
    let mut aliases = Vec::new();
    if file.tensor_info("decoder/projection/weight").is_none() {
        aliases.push((
            "decoder/projection/weight".to_owned(),
            "decoder/embeddings/weight".to_owned(),
        ));
    }
    // The header's mapping carries on as the model's (a clone elsewhere would force a second
    // mapping of the same file; the page cache is shared either way, nothing is copied).
    let backing = match file.into_backing() {
        Some(b) => b,
        None => Backing::map(path)?,
    };
    let model = Ct2Model::from_parts(
        Format::Gguf,
        backing,
        path,
        (
            super::weights::WHISPER_SPEC,
            super::weights::WHISPER_SPEC_REVISION,
        ),
        variables,
        &aliases,
        Some((path.to_owned(), config)),
        Some((path.to_owned(), tokens)),
        attributes,
    )?;
    Ok((model, tokenizer_json))
}
