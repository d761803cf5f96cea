//! Header parsing and validation.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;

use super::types::{GgmlType, ValueType};
use super::value::{Cursor, Node, to_u64};
use super::{DEFAULT_ALIGNMENT, MAX_DIMS, TensorInfo};
use crate::error::{GgufError, GgufErrorKind, GgufSubject};

/// Upper bound on capacity reserved from a count read from the file; larger vectors grow as
/// entries are actually parsed.
const MAX_PREALLOC: usize = 1024;

/// Smallest encoding of a metadata entry: key length, value type, one byte of value.
const MIN_KV_SIZE: usize = 8 + 4 + 1;
/// Smallest encoding of a tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_SIZE: usize = 8 + 4 + 4 + 8;

/// One metadata entry, validated.
#[derive(Debug, Clone)]
pub(crate) struct MetaEntry {
    pub(crate) key: String,
    /// Where the entry (its key's length prefix) starts.
    pub(crate) offset: u64,
    pub(crate) node: Node,
}

/// Everything in a GGUF file except the tensor data, validated against the file's length.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) alignment: u64,
    pub(crate) data_offset: u64,
    pub(crate) metadata: Vec<MetaEntry>,
    pub(crate) keys: HashMap<String, usize>,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) names: HashMap<String, usize>,
}

/// Parses and validates the header of a GGUF file held in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Header, Box<GgufError>> {
    let mut c = Cursor::new(buf);

    let magic: [u8; 4] = match c.take(4, "magic") {
        Ok(m) => <[u8; 4]>::try_from(m).unwrap_or_default(),
        Err(_) => {
            // Show what little there is, padded with zeros.
            let mut found = [0u8; 4];
            for (dst, src) in found.iter_mut().zip(buf) {
                *dst = *src;
            }
            if !b"GGUF".starts_with(buf) {
                return Err(GgufError::new(GgufErrorKind::BadMagic { found }).at(0));
            }
            return Err(GgufError::new(GgufErrorKind::Truncated {
                what: "magic",
                needed: 4,
                available: to_u64(buf.len()),
            })
            .at(0));
        }
    };
    if &magic != b"GGUF" {
        return Err(GgufError::new(GgufErrorKind::BadMagic { found: magic }).at(0));
    }

    let version_at = c.offset();
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::new(GgufErrorKind::UnsupportedVersion { version }).at(version_at));
    }

    // Both counts are read before either section, so each is bounded by the bytes left
    // after the header, and the metadata count additionally by what the tensors need.
    let tensors_at = c.offset();
    let n_tensors_raw = c.u64("tensor count")?;
    let kv_at = c.offset();
    let n_kv_raw = c.u64("metadata entry count")?;
    let n_tensors = c
        .check_count("tensor count", n_tensors_raw, MIN_TENSOR_INFO_SIZE, 0)
        .map_err(|e| e.at(tensors_at))?;
    let tensors_min = n_tensors.saturating_mul(MIN_TENSOR_INFO_SIZE);
    let n_kv = c
        .check_count("metadata entry count", n_kv_raw, MIN_KV_SIZE, tensors_min)
        .map_err(|e| e.at(kv_at))?;

    let mut metadata = Vec::with_capacity(n_kv.min(MAX_PREALLOC));
    let mut keys = HashMap::with_capacity(n_kv.min(MAX_PREALLOC));
    for _ in 0..n_kv {
        let entry = read_kv(&mut c)?;
        match keys.entry(entry.key.clone()) {
            MapEntry::Occupied(first) => {
                let first_offset = metadata
                    .get(*first.get())
                    .map_or(0, |e: &MetaEntry| e.offset);
                return Err(GgufError::new(GgufErrorKind::DuplicateKey { first_offset })
                    .at(entry.offset)
                    .key(&entry.key));
            }
            MapEntry::Vacant(slot) => {
                slot.insert(metadata.len());
                metadata.push(entry);
            }
        }
    }

    let alignment = match keys
        .get(super::ALIGNMENT_KEY)
        .and_then(|&i| metadata.get(i))
    {
        None => DEFAULT_ALIGNMENT,
        Some(entry) => alignment_from(entry, buf)?,
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(MAX_PREALLOC));
    let mut names = HashMap::with_capacity(n_tensors.min(MAX_PREALLOC));
    for _ in 0..n_tensors {
        let info = read_tensor_info(&mut c)?;
        match names.entry(info.name.clone()) {
            MapEntry::Occupied(first) => {
                let first_offset = tensors
                    .get(*first.get())
                    .map_or(0, |t: &TensorInfo| t.info_offset);
                return Err(
                    GgufError::new(GgufErrorKind::DuplicateTensor { first_offset })
                        .at(info.info_offset)
                        .tensor(&info.name),
                );
            }
            MapEntry::Vacant(slot) => {
                slot.insert(tensors.len());
                tensors.push(info);
            }
        }
    }

    let data_offset = align_up(c.offset(), alignment).ok_or_else(|| {
        GgufError::new(GgufErrorKind::BadAlignment { value: alignment }).at(c.offset())
    })?;
    place_tensors(&mut tensors, data_offset, alignment, buf.len())?;

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        keys,
        tensors,
        names,
    })
}

fn read_kv(c: &mut Cursor<'_>) -> Result<MetaEntry, Box<GgufError>> {
    let offset = c.offset();
    let key = c.string("metadata key")?;
    let key = utf8("metadata key", key).map_err(|e| e.at(offset))?;
    let ty_at = c.offset();
    let node = ValueType::from_id(c.u32("metadata value type").map_err(|e| e.key(&key))?)
        .map_err(|kind| GgufError::new(kind).at(ty_at))
        .and_then(|ty| Node::read(c, ty, 0))
        .map_err(|e| e.key(&key))?;
    Ok(MetaEntry { key, offset, node })
}

fn alignment_from(entry: &MetaEntry, buf: &[u8]) -> Result<u64, Box<GgufError>> {
    let value = entry.node.value(buf);
    let err = |kind| GgufError::new(kind).at(entry.offset).key(&entry.key);
    let Some(n) = value.as_integer() else {
        return Err(err(GgufErrorKind::WrongType {
            expected: "u32",
            found: value.describe_type(),
        }));
    };
    match u64::try_from(n) {
        Ok(a) if a.is_power_of_two() && usize::try_from(a).is_ok() => Ok(a),
        _ => Err(err(GgufErrorKind::BadAlignment {
            value: u64::try_from(n).unwrap_or(0),
        })),
    }
}

fn read_tensor_info(c: &mut Cursor<'_>) -> Result<TensorInfo, Box<GgufError>> {
    let info_offset = c.offset();
    let name = c.string("tensor name")?;
    let name = utf8("tensor name", name).map_err(|e| e.at(info_offset))?;
    let with_name =
        |e: Box<GgufError>| e.subject_if_none(|| Some(GgufSubject::Tensor(name.clone())));

    let dims_at = c.offset();
    let n_dims = c.u32("tensor n_dims").map_err(with_name)?;
    if n_dims > MAX_DIMS {
        return Err(with_name(
            GgufError::new(GgufErrorKind::TooManyDims {
                n_dims,
                max: MAX_DIMS,
            })
            .at(dims_at),
        ));
    }
    let mut ne = [1u64; 4];
    let mut n_used = 0;
    for slot in ne.iter_mut().take(n_dims as usize) {
        *slot = c.u64("tensor dimension").map_err(with_name)?;
        n_used += 1;
    }
    let dims = ne.get(..n_used).unwrap_or_default();

    let type_at = c.offset();
    let type_id = c.u32("tensor type").map_err(with_name)?;
    let offset = c.u64("tensor data offset").map_err(with_name)?;

    if let Some(index) = dims.iter().position(|&d| d == 0) {
        return Err(with_name(
            GgufError::new(GgufErrorKind::ZeroDim {
                index,
                dims: dims.to_vec(),
            })
            .at(dims_at),
        ));
    }
    // ggml stores dimensions and element counts as i64.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok());
    let Some(n_elements) = n_elements else {
        return Err(with_name(
            GgufError::new(GgufErrorKind::ShapeOverflow {
                dims: dims.to_vec(),
            })
            .at(dims_at),
        ));
    };

    let ty =
        GgmlType::from_id(type_id).map_err(|kind| with_name(GgufError::new(kind).at(type_at)))?;
    let ne0 = ne[0];
    if ne0 % ty.block_size() != 0 {
        return Err(with_name(
            GgufError::new(GgufErrorKind::PartialBlock {
                ne0,
                ty: ty.name(),
                block_size: ty.block_size(),
            })
            .at(dims_at),
        ));
    }
    let Some(n_bytes) = ty
        .tensor_bytes(dims)
        .filter(|&b| usize::try_from(b).is_ok() && i64::try_from(b).is_ok())
    else {
        return Err(with_name(
            GgufError::new(GgufErrorKind::ShapeOverflow {
                dims: dims.to_vec(),
            })
            .at(dims_at),
        ));
    };

    Ok(TensorInfo {
        name,
        ty,
        ne,
        n_dims: n_used,
        n_elements,
        n_bytes,
        offset,
        info_offset,
        start: 0,
        end: 0,
    })
}

/// Resolves each tensor's absolute byte range and checks alignment, bounds and overlap.
fn place_tensors(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    alignment: u64,
    file_len: usize,
) -> Result<(), Box<GgufError>> {
    let file_len_u64 = to_u64(file_len);
    for t in tensors.iter_mut() {
        let err = |kind| GgufError::new(kind).at(t.info_offset).tensor(&t.name);
        if t.offset % alignment != 0 {
            return Err(err(GgufErrorKind::MisalignedTensor {
                offset: t.offset,
                alignment,
            }));
        }
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        let range = start
            .zip(end)
            .filter(|&(_, e)| e <= file_len_u64)
            .and_then(|(s, e)| Some((usize::try_from(s).ok()?, usize::try_from(e).ok()?)));
        let Some((start, end)) = range else {
            return Err(err(GgufErrorKind::TensorPastEnd {
                start: data_offset.saturating_add(t.offset),
                size: t.n_bytes,
                file_len: file_len_u64,
            }));
        };
        t.start = start;
        t.end = end;
    }

    // Sort by start; a tensor overlaps an earlier one iff it starts before the furthest end
    // seen so far (all tensors are non-empty).
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors.get(i).map(|t| (t.start, t.end)));
    let mut furthest: Option<&TensorInfo> = None;
    for t in order.iter().filter_map(|&i| tensors.get(i)) {
        if let Some(prev) = furthest {
            if t.start < prev.end {
                return Err(GgufError::new(GgufErrorKind::OverlappingTensors {
                    start: to_u64(t.start),
                    end: to_u64(t.end),
                    other: prev.name.clone(),
                    other_start: to_u64(prev.start),
                    other_end: to_u64(prev.end),
                })
                .at(t.info_offset)
                .tensor(&t.name));
            }
        }
        if furthest.is_none_or(|p| t.end > p.end) {
            furthest = Some(t);
        }
    }
    Ok(())
}

fn utf8(what: &'static str, bytes: &[u8]) -> Result<String, Box<GgufError>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(GgufError::new(GgufErrorKind::InvalidUtf8 {
            what,
            lossy: String::from_utf8_lossy(bytes).into_owned(),
        })),
    }
}

/// Rounds `n` up to a multiple of `alignment` (a power of two), or `None` on overflow.
pub(crate) fn align_up(n: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    n.checked_add(mask).map(|v| v & !mask)
}
