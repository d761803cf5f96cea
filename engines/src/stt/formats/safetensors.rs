//! Hugging Face Whisper directories: `model.safetensors`, transformers' `config.json` and
//! `tokenizer.json`.
//!
//! # `model.safetensors`
//!
//! An 8-byte little-endian header length `n`, then `n` bytes of JSON: an object mapping each
//! tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the
//! end of the header) and an optional `"__metadata__"` object of strings; then the data,
//! row-major, little-endian. The reader memory-maps the file; the `safetensors` crate's
//! `TensorInfo` reads each header entry (through `serde_json`, on the mapped bytes), and this
//! module checks every entry before anything is used: a float dtype (`F32`, `F16`, `BF16`),
//! `end - begin` equal to the shape's byte size, and the range within the file. Those checks
//! stay here, rather than in `SafeTensors::read_metadata`, so that errors name the file and
//! the tensor (the crate's do not); everything else (views, f16 decoding, row splitting) is the
//! CTranslate2 reader's, which this module feeds.
//!
//! # Names (transformers' `WhisperForConditionalGeneration`)
//!
//! | tensor | shape |
//! |---|---|
//! | `model.encoder.conv1.{weight,bias}`, `conv2` | `[S, M, 3]`, `[S, S, 3]`, `[S]` |
//! | `model.encoder.embed_positions.weight` | `[max_source_positions, S]` |
//! | `model.encoder.layers.i.self_attn.{q,v,out}_proj.{weight,bias}`, `k_proj.weight` (no bias) | `[S, S]`, `[S]` |
//! | `model.encoder.layers.i.{self_attn_layer_norm,final_layer_norm}.{weight,bias}` | `[S]` |
//! | `model.encoder.layers.i.fc1`, `fc2` | `[F, S]`, `[S, F]` |
//! | `model.encoder.layer_norm` | `[S]` |
//! | `model.decoder.embed_tokens.weight` | `[vocab_size, S]` |
//! | `model.decoder.embed_positions.weight` | `[max_target_positions, S]` |
//! | `model.decoder.layers.i.self_attn.*`, `encoder_attn.*` (as the encoder's), `*_layer_norm`, `fc1`, `fc2` | |
//! | `model.decoder.layer_norm` | `[S]` |
//! | `proj_out.weight` (usually absent: tied to `embed_tokens`) | `[vocab_size, S]` |
//!
//! A bare `WhisperModel` checkpoint has the same names without `model.`. Hyper-parameters come
//! from `config.json` (`d_model`, `encoder_layers`, `encoder_attention_heads`,
//! `encoder_ffn_dim`, the decoder's, `num_mel_bins`, `vocab_size`, `max_source_positions`,
//! `max_target_positions`, `suppress_tokens`, `begin_suppress_tokens`) and are checked against
//! every tensor's shape.
//!
//! # Vocabulary
//!
//! `tokenizer.json`'s `model.vocab` and `added_tokens` give the id of each token. Some
//! releases (tiny.en among them) stop at `<|notimestamps|>`; the 1501 timestamp tokens
//! `<|0.00|>` ... `<|30.00|>` that follow it in every Whisper vocabulary are then added, up
//! to `vocab_size`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorInfo;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use super::ct2::{self, Ct2Error, Ct2ErrorKind, Ct2Model, DType, VariableInfo};
use crate::error::{Error, Result};
use crate::json::JsonValue;
use crate::located::Format;
use crate::mapped::Backing;

/// The weights file of a Hugging Face directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";

/// The largest header accepted (real ones are tens of kilobytes).
const MAX_HEADER: u64 = 64 << 20;

fn fail(path: &Path, subject: Option<&str>, offset: Option<usize>, reason: String) -> Error {
    let mut e = Ct2Error::new(Ct2ErrorKind::Inconsistent { what: reason })
        .path(Some(path))
        .format(Format::Safetensors);
    if let Some(s) = subject {
        e = e.subject(s);
    }
    if let Some(o) = offset {
        e = e.at(o);
    }
    e.into()
}

/// A safetensors header: its tensors in file order, each read as the `safetensors` crate's
/// `TensorInfo`; `__metadata__` is skipped. An entry that does not read names its tensor.
struct Header(Vec<(String, TensorInfo)>);

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Header;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of tensors")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Header, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let info = map
                        .next_value::<TensorInfo>()
                        .map_err(|e| de::Error::custom(format_args!("tensor {name:?}: {e}")))?;
                    out.push((name, info));
                }
                Ok(Header(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// Parses the header of a safetensors file held in `bytes`: the tensors, with absolute byte
/// ranges. `path` is for messages.
pub(crate) fn parse_header(bytes: &[u8], path: &Path) -> Result<Vec<VariableInfo>> {
    let Some(len) = bytes.get(..8) else {
        return Err(fail(
            path,
            None,
            Some(0),
            format!(
                "truncated: {} bytes, the header length alone needs 8",
                bytes.len()
            ),
        ));
    };
    let n = u64::from_le_bytes(len.try_into().unwrap_or_default());
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(fail(
            path,
            None,
            Some(0),
            format!(
                "header length {n} exceeds the file ({} bytes) or the {MAX_HEADER}-byte limit",
                bytes.len()
            ),
        ));
    }
    let data_start = 8 + n as usize;
    let header = &bytes[8..data_start];
    let mut de = serde_json::Deserializer::from_slice(header);
    let Header(entries) = Header::deserialize(&mut de)
        .and_then(|h| de.end().map(|()| h))
        .map_err(|e| {
            let e = crate::json::from_serde(header, &e);
            fail(
                path,
                None,
                Some(8 + e.offset),
                format!("header JSON: {}", e.message),
            )
        })?;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::with_capacity(entries.len());
    for (name, info) in entries {
        let bad = |reason: String| fail(path, Some(&name), None, reason);
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(bad(format!(
                    "dtype {other} is not supported (F32, F16 or BF16)"
                )));
            }
        };
        let TensorInfo {
            shape,
            data_offsets: (b, e),
            ..
        } = info;
        let Some(need) = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        else {
            return Err(bad(format!("shape {shape:?} is oversized")));
        };
        if b > e || e > data_len || e - b != need {
            return Err(bad(format!(
                "data_offsets [{b}, {e}] do not hold shape {shape:?} of {} ({need} bytes) within the {data_len} data bytes",
                dtype.name()
            )));
        }
        out.push(VariableInfo::external(
            name.clone(),
            dtype,
            shape,
            data_start + b..data_start + e,
            None,
        ));
    }
    Ok(out)
}

/// The vocabulary (token of each id) of a `tokenizer.json`: `model.vocab` plus
/// `added_tokens`, then Whisper's timestamp tokens after `<|notimestamps|>` up to
/// `n_vocab` if the file stops there.
pub(crate) fn vocabulary_from_tokenizer_json(
    text: &str,
    path: &Path,
    n_vocab: usize,
) -> Result<Vec<String>> {
    let bad = |reason: String| -> Error {
        Ct2Error::new(Ct2ErrorKind::Vocabulary { reason })
            .path(Some(path))
            .format(Format::HuggingFace)
            .into()
    };
    let json = crate::json::parse(text)
        .map_err(|e| bad(format!("JSON error at byte {}: {}", e.offset, e.message)))?;
    let mut by_id: HashMap<usize, String> = HashMap::new();
    let Some(JsonValue::Object(vocab)) = json.get("model").and_then(|m| m.get("vocab")) else {
        return Err(bad("no model.vocab object".into()));
    };
    for (token, id) in vocab {
        let id = id
            .as_u32()
            .ok_or_else(|| bad(format!("model.vocab[{token:?}] is not a token id")))?;
        by_id.insert(id as usize, token.clone());
    }
    if let Some(added) = json.get("added_tokens").and_then(JsonValue::as_array) {
        for (i, t) in added.iter().enumerate() {
            match (
                t.get("id").and_then(JsonValue::as_u32),
                t.get("content").and_then(JsonValue::as_str),
            ) {
                (Some(id), Some(c)) => {
                    by_id.insert(id as usize, c.to_owned());
                }
                _ => return Err(bad(format!("added_tokens[{i}] has no id and content"))),
            }
        }
    }
    let len = by_id.keys().max().map_or(0, |&m| m + 1);
    if len > n_vocab {
        return Err(bad(format!(
            "token id {} is outside the model's vocabulary of {n_vocab}",
            len - 1
        )));
    }
    let mut out = Vec::with_capacity(n_vocab);
    for id in 0..len {
        match by_id.remove(&id) {
            Some(t) => out.push(t),
            None => return Err(bad(format!("no token has id {id}"))),
        }
    }
    if out.len() < n_vocab && out.last().map(String::as_str) == Some("<|notimestamps|>") {
        let mut cents = 0usize;
        while out.len() < n_vocab && cents <= 3000 {
            out.push(format!("<|{}.{:02}|>", cents / 100, cents % 100));
            cents += 2;
        }
    }
    Ok(out)
}

/// Opens a Hugging Face Whisper directory as a [`Ct2Model`] over the memory-mapped
/// `model.safetensors`, with transformers' tensor names, `config.json` and the vocabulary of
/// `tokenizer.json`.
pub fn open_dir(dir: &Path) -> Result<Ct2Model> {
    let path = dir.join(SAFETENSORS_FILE);
    let backing = Backing::map(&path)?;
    let variables = parse_header(backing.bytes(), &path)?;
    let config_path = dir.join(ct2::CONFIG_FILE);
    let bytes = std::fs::read(&config_path).map_err(|source| Error::Io {
        action: "read",
        path: config_path.clone(),
        source,
    })?;
    let config = ct2::parse_json_file(&bytes, &config_path)?;
    let n_vocab = config
        .get("vocab_size")
        .and_then(JsonValue::as_u32)
        .unwrap_or(0) as usize;
    let tok_path = dir.join("tokenizer.json");
    let vocabulary = match std::fs::read_to_string(&tok_path) {
        Ok(text) => Some((
            tok_path.clone(),
            vocabulary_from_tokenizer_json(&text, &tok_path, n_vocab)?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Io {
                action: "read",
                path: tok_path,
                source,
            });
        }
    };
    Ct2Model::from_parts(
        Format::Safetensors,
        backing,
        &path,
        ("WhisperForConditionalGeneration", 0),
        variables,
        &[],
        Some((config_path, config)),
        vocabulary,
        HashMap::new(),
    )
}

/// Writes a safetensors file (tests and the `whisper_ct2_to_hf` cross-check): tensors as
/// `(name, dtype, shape, little-endian data)`, in the order given.
pub fn write(path: &Path, tensors: &[(String, DType, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let mut header = String::from("{");
    let mut offset = 0usize;
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        let ty = match dtype {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::I32 => "I32",
        };
        if i > 0 {
            header.push(',');
        }
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        header.push_str(&format!(
            "{:?}:{{\"dtype\":\"{ty}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            name,
            dims.join(","),
            offset + data.len()
        ));
        offset += data.len();
    }
    header.push('}');
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    std::fs::write(path, out).map_err(|source| Error::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}
