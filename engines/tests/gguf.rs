//! GGUF reader/writer tests: round trips through real files, one test per kind of
//! corruption (checking that errors name the file, the tensor or key, and the offset), and a
//! deterministic mutation fuzzer asserting that no input makes the parser panic.

mod common;

use common::{Rng, TempFile};

use sotad_engines::Error;
use sotad_engines::gguf::{
    GgmlType, GgufErrorKind, GgufFile, GgufSubject, GgufWriter, MetaArray, MetaValue, QK_K, Value,
    ValueType,
};

// ----- helpers ---------------------------------------------------------------------------

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A small model-like file: metadata of every kind and tensors of several types.
fn sample_writer() -> GgufWriter {
    let mut rng = Rng(0x5eed);
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", "llama")
        .metadata("general.name", "tiny test model")
        .metadata("llama.block_count", 2u32)
        .metadata("llama.context_length", 256u64)
        .metadata("llama.embedding_length", 64u16)
        .metadata("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .metadata("llama.rope.freq_base", 10000.0f64)
        .metadata("general.file_type", 3i32)
        .metadata("test.u8", 7u8)
        .metadata("test.i8", -7i8)
        .metadata("test.i16", -300i16)
        .metadata("test.i64", -5_000_000_000i64)
        .metadata("test.bool", true)
        .metadata(
            "tokenizer.ggml.tokens",
            vec!["<s>", "</s>", "hello", "wörld"],
        )
        .metadata("tokenizer.ggml.scores", vec![0.0f32, -1.0, -2.5, -3.0])
        .metadata("tokenizer.ggml.token_type", vec![3i32, 3, 1, 1])
        .metadata("test.u8_array", vec![1u8, 2, 3])
        .metadata("test.bool_array", vec![true, false])
        .metadata(
            "test.nested",
            MetaArray::Array(vec![
                MetaArray::U32(vec![1, 2]),
                MetaArray::String(vec!["x".into()]),
                MetaArray::Array(vec![MetaArray::F64(vec![0.5])]),
            ]),
        );
    w.tensor(
        "token_embd.weight",
        &[64, 16],
        GgmlType::Q4_1,
        rng.bytes(16 * 2 * 20),
    )
    .tensor(
        "output_norm.weight",
        &[64],
        GgmlType::F32,
        f32_bytes(&[1.5; 64]),
    )
    .tensor(
        "blk.0.attn_q.weight",
        &[64, 64],
        GgmlType::Q8_0,
        rng.bytes(64 * 2 * 34),
    )
    .tensor(
        "blk.0.ffn_down.weight",
        &[256, 4],
        GgmlType::Q6_K,
        rng.bytes(4 * 210),
    )
    .tensor(
        "blk.0.ffn_up.weight",
        &[256, 2, 1, 2],
        GgmlType::Q4_K,
        rng.bytes(4 * 144),
    )
    .tensor("blk.1.attn_norm.weight", &[3], GgmlType::F16, rng.bytes(6));
    w
}

fn sample_bytes() -> Vec<u8> {
    sample_writer().to_bytes().expect("sample file encodes")
}

/// Position of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Offset just past a GGUF string (length prefix + bytes) equal to `s`.
fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut pat = (s.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(s.as_bytes());
    find(bytes, &pat) + pat.len()
}

/// Offset of the start of a GGUF string equal to `s` (its length prefix).
fn string_at(bytes: &[u8], s: &str) -> usize {
    after_string(bytes, s) - 8 - s.len()
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offsets of the fields of a tensor info record in a file.
struct InfoFields {
    start: usize,
    n_dims: usize,
    dims: usize,
    ty: usize,
    offset: usize,
}

fn tensor_fields(bytes: &[u8], name: &str) -> InfoFields {
    let start = string_at(bytes, name);
    let n_dims = after_string(bytes, name);
    let nd = u32::from_le_bytes(bytes[n_dims..n_dims + 4].try_into().unwrap()) as usize;
    let dims = n_dims + 4;
    let ty = dims + 8 * nd;
    InfoFields {
        start,
        n_dims,
        dims,
        ty,
        offset: ty + 4,
    }
}

/// Writes `bytes` to a temp file, opens it, and returns the error message, checking that it
/// names the file.
fn open_err(bytes: &[u8]) -> (Error, String) {
    let f = TempFile::with_bytes("corrupt", bytes);
    let err = GgufFile::open(f.path()).expect_err("corrupt file must be rejected");
    let msg = err.to_string();
    let path = format!("{:?}", f.path());
    assert!(
        msg.contains(&path),
        "message does not name the file {path}: {msg}"
    );
    let g = err.as_gguf().expect("a GGUF error");
    assert_eq!(g.path.as_deref(), Some(f.path()));
    // The same bytes from memory give the same error, without a path.
    let mem = GgufFile::parse_bytes(bytes).expect_err("rejected from memory too");
    let mem = mem.as_gguf().expect("a GGUF error");
    assert_eq!(mem.path, None);
    assert_eq!(mem.kind, g.kind);
    assert_eq!(mem.offset, g.offset);
    (err, msg)
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in: {msg}");
    }
}

/// Minimal raw encoder for crafting files the writer refuses to produce.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw::default();
        r.0.extend_from_slice(b"GGUF");
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
}

// ----- round trips ---------------------------------------------------------------------

#[test]
fn round_trip_through_a_file() {
    let w = sample_writer();
    let f = TempFile::new("roundtrip");
    w.write_file(f.path()).unwrap();
    let file = GgufFile::open(f.path()).unwrap();

    assert_eq!(file.path(), Some(f.path()));
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.data_offset() % 32, 0);
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.metadata_count(), 19);
    assert_eq!(file.tensor_count(), 6);

    // Typed accessors, including integer widening/narrowing that fits.
    assert_eq!(file.get_str("general.name").unwrap(), "tiny test model");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(file.get_u32("llama.context_length").unwrap(), 256);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 64);
    assert_eq!(file.get_u32("general.file_type").unwrap(), 3);
    assert_eq!(file.get_u32("test.u8").unwrap(), 7);
    assert_eq!(file.get_u64("llama.context_length").unwrap(), 256);
    assert_eq!(file.get_i64("test.i64").unwrap(), -5_000_000_000);
    assert_eq!(file.get_i64("test.i8").unwrap(), -7);
    assert_eq!(
        file.get_f32("llama.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-5
    );
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert!(file.get_bool("test.bool").unwrap());
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "</s>", "hello", "wörld"]
    );
    assert_eq!(
        file.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.0, -1.0, -2.5, -3.0]
    );
    assert_eq!(
        file.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [3, 3, 1, 1]
    );
    assert_eq!(file.get_i32_array("test.u8_array").unwrap(), [1, 2, 3]);

    // Generic values, including nested arrays, in file order.
    assert_eq!(file.get("test.i16"), Some(Value::I16(-300)));
    let bools: Vec<_> = file.get_array("test.bool_array").unwrap().iter().collect();
    assert_eq!(bools, [Value::Bool(true), Value::Bool(false)]);
    let nested = file.get_array("test.nested").unwrap();
    assert_eq!(nested.elem_type(), ValueType::Array);
    let inner: Vec<String> = nested.iter().map(|v| v.to_string()).collect();
    assert_eq!(inner, ["[1, 2]", "[\"x\"]", "[[0.5]]"]);
    let keys: Vec<&str> = file.metadata().map(|(k, _)| k).collect();
    assert_eq!(keys.first(), Some(&"general.architecture"));
    assert_eq!(keys.last(), Some(&"test.nested"));

    // Tensors: infos, shapes and bytes identical to what was written.
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.ggml_type(), GgmlType::Q8_0);
    assert_eq!(q.dims(), [64, 64]);
    assert_eq!(q.n_elements(), 64 * 64);
    assert_eq!(q.bytes().len(), 64 * 2 * 34);
    let up = file.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(up.dims(), [256, 2, 1, 2]);
    assert_eq!(up.shape(), [2, 1, 2, 256]);
    assert_eq!(up.rows(), 4);
    assert_eq!(up.cols(), 256);
    assert_eq!(up.info().row_bytes(), 144);
    let norm = file.tensor("output_norm.weight").unwrap();
    assert_eq!(norm.bytes(), f32_bytes(&[1.5; 64]).as_slice());
    assert_eq!(norm.rows(), 1);
    for t in file.tensors() {
        assert_eq!(t.info().file_offset() % 32, 0, "{} misaligned", t.name());
        assert_eq!(t.bytes().len() as u64, t.info().n_bytes());
    }

    // Identical to parsing the same bytes from memory.
    let mem = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
    assert_eq!(mem.tensor_infos(), file.tensor_infos());
    for (a, b) in mem.tensors().zip(file.tensors()) {
        assert_eq!(a.bytes(), b.bytes());
    }
}

#[test]
fn tensor_bytes_borrow_from_the_mapping() {
    let f = TempFile::new("zerocopy");
    sample_writer().write_file(f.path()).unwrap();
    let file = GgufFile::open(f.path()).unwrap();
    let mapping = file.as_bytes().as_ptr_range();
    let views: Vec<_> = file.tensors().collect();
    // Views keep the mapping alive after the file handle is gone.
    drop(file);
    for v in &views {
        let bytes = v.bytes().as_ptr_range();
        assert!(
            mapping.start <= bytes.start && bytes.end <= mapping.end,
            "{} is not inside the mapping",
            v.name()
        );
        assert_eq!(
            bytes.start as usize - mapping.start as usize,
            v.info().file_offset() as usize
        );
        // The mapping is page-aligned, so data is aligned in memory as in the file.
        assert_eq!(bytes.start as usize % 32, 0);
    }
    // Repeated lookups return the same memory.
    let file = views[0].file();
    let a = file.tensor("token_embd.weight").unwrap();
    let b = file.tensor("token_embd.weight").unwrap();
    assert_eq!(a.bytes().as_ptr(), b.bytes().as_ptr());
}

#[test]
fn version_2_and_custom_alignment() {
    let mut w = sample_writer();
    w.version(2).alignment(64);
    let file = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
    assert_eq!(file.version(), 2);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    for t in file.tensor_infos() {
        assert_eq!(t.file_offset() % 64, 0);
        assert_eq!(t.relative_offset() % 64, 0);
    }
}

#[test]
fn empty_file_with_no_tensors() {
    let bytes = GgufWriter::new().to_bytes().unwrap();
    assert_eq!(bytes.len(), 24);
    let f = TempFile::with_bytes("empty-gguf", &bytes);
    let file = GgufFile::open(f.path()).unwrap();
    assert_eq!(file.tensor_count(), 0);
    assert_eq!(file.metadata_count(), 0);
    assert_eq!(file.architecture(), None);
}

#[test]
fn ggml_type_table() {
    let expect = [
        (GgmlType::F32, 0, 1, 4),
        (GgmlType::F16, 1, 1, 2),
        (GgmlType::Q4_0, 2, 32, 18),
        (GgmlType::Q4_1, 3, 32, 20),
        (GgmlType::Q5_0, 6, 32, 22),
        (GgmlType::Q5_1, 7, 32, 24),
        (GgmlType::Q8_0, 8, 32, 34),
        (GgmlType::Q8_1, 9, 32, 36),
        (GgmlType::Q2_K, 10, 256, 84),
        (GgmlType::Q3_K, 11, 256, 110),
        (GgmlType::Q4_K, 12, 256, 144),
        (GgmlType::Q5_K, 13, 256, 176),
        (GgmlType::Q6_K, 14, 256, 210),
        (GgmlType::Q8_K, 15, 256, 292),
        (GgmlType::I8, 24, 1, 1),
        (GgmlType::I16, 25, 1, 2),
        (GgmlType::I32, 26, 1, 4),
        (GgmlType::I64, 27, 1, 8),
        (GgmlType::F64, 28, 1, 8),
        (GgmlType::BF16, 30, 1, 2),
    ];
    assert_eq!(expect.len(), GgmlType::ALL.len());
    for (ty, id, block, size) in expect {
        assert_eq!(ty.id(), id);
        assert_eq!(GgmlType::from_id(id), Ok(ty));
        assert_eq!((ty.block_size(), ty.type_size()), (block, size), "{ty}");
    }
    assert_eq!(QK_K, 256);
    assert_eq!(GgmlType::Q4_K.tensor_bytes(&[512, 3]), Some(2 * 144 * 3));
    assert_eq!(GgmlType::Q4_K.tensor_bytes(&[100]), None);
    assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
    assert_eq!(GgmlType::F32.tensor_bytes(&[]), Some(4));

    let unsupported = GgmlType::from_id(16).unwrap_err();
    assert_eq!(
        unsupported.to_string(),
        "unsupported quant type IQ2_XXS (id 16)"
    );
    assert!(
        GgmlType::from_id(31)
            .unwrap_err()
            .to_string()
            .contains("Q4_0_4_4")
    );
    assert_eq!(
        GgmlType::from_id(1000).unwrap_err().to_string(),
        "unknown ggml type id 1000"
    );
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let mut w = GgufWriter::new();
    w.tensor("t", &[32], GgmlType::Q4_0, vec![0; 17]);
    let e = w.to_bytes().unwrap_err().to_string();
    assert_contains(&e, &["tensor \"t\"", "needs 18 bytes"]);

    let mut w = GgufWriter::new();
    w.tensor("t", &[33], GgmlType::Q4_0, vec![0; 18]);
    let e = w.to_bytes().unwrap_err().to_string();
    assert_contains(
        &e,
        &["tensor \"t\"", "not a multiple of the Q4_0 block size 32"],
    );

    let mut w = GgufWriter::new();
    w.alignment(48);
    let e = w.to_bytes().unwrap_err().to_string();
    assert_contains(&e, &["general.alignment", "48"]);

    let mut w = GgufWriter::new();
    w.tensor("a", &[1], GgmlType::F32, vec![0; 4])
        .tensor("a", &[1], GgmlType::F32, vec![0; 4]);
    assert!(w.to_bytes().is_err());

    // Replacing metadata keeps one entry.
    let mut w = GgufWriter::new();
    w.metadata("k", 1u32)
        .metadata("k", MetaValue::String("two".into()));
    let file = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
    assert_eq!(file.metadata_count(), 1);
    assert_eq!(file.get_str("k").unwrap(), "two");
}

// ----- metadata accessor errors --------------------------------------------------------

#[test]
fn accessor_errors_name_key_file_and_what_was_found() {
    let f = TempFile::new("accessors");
    sample_writer().write_file(f.path()).unwrap();
    let file = GgufFile::open(f.path()).unwrap();
    let path = format!("{:?}", f.path());

    let e = file
        .get_u32("llama.feed_forward_length")
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            &path,
            "metadata key \"llama.feed_forward_length\"",
            "missing",
            "llama",
        ],
    );

    let offset = string_at(file.as_bytes(), "general.name");
    let e = file.get_u32("general.name").unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            &path,
            "metadata key \"general.name\"",
            &format!("at byte {offset}"),
            "expected u32, found string",
        ],
    );

    let e = file.get_u32("test.i8").unwrap_err().to_string();
    assert_contains(&e, &["\"test.i8\"", "value -7 (i8) does not fit in u32"]);

    let e = file.get_u32("test.i64").unwrap_err().to_string();
    assert_contains(&e, &["value -5000000000 (i64) does not fit in u32"]);

    let e = file.get_str("llama.block_count").unwrap_err().to_string();
    assert_contains(&e, &["expected string, found u32"]);

    let e = file.get_f32("llama.block_count").unwrap_err().to_string();
    assert_contains(&e, &["expected f32, found u32"]);

    let e = file.get_bool("test.u8").unwrap_err().to_string();
    assert_contains(&e, &["expected bool, found u8"]);

    let e = file
        .get_str_array("tokenizer.ggml.scores")
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "\"tokenizer.ggml.scores\"",
            "expected array of string, found array of f32 (4 elements)",
        ],
    );

    let e = file
        .get_f32_array("tokenizer.ggml.tokens")
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &["expected array of f32, found array of string (4 elements)"],
    );

    let e = file.get_i32_array("general.name").unwrap_err().to_string();
    assert_contains(&e, &["expected array of i32, found string"]);
}

#[test]
fn accessor_rejects_out_of_range_array_elements_and_invalid_utf8() {
    let mut w = GgufWriter::new();
    w.metadata("big", vec![1u64, 1 << 40])
        .metadata("name", "abcdef")
        .metadata("tokens", vec!["ok", "bad!"]);
    let mut bytes = w.to_bytes().unwrap();
    let e = GgufFile::parse_bytes(&bytes)
        .unwrap()
        .get_i32_array("big")
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &["\"big\"", "1099511627776 at index 1", "does not fit in i32"],
    );

    // Invalid UTF-8 in values is only an error when read as text.
    let at = after_string(&bytes, "abcdef") - 3;
    bytes[at] = 0xff;
    let at = after_string(&bytes, "bad!") - 1;
    bytes[at] = 0xc3;
    let file = GgufFile::parse_bytes(&bytes).unwrap();
    assert!(matches!(file.get("name"), Some(Value::Str(b"abc\xffef"))));
    let e = file.get_str("name").unwrap_err().to_string();
    assert_contains(
        &e,
        &["\"name\"", "string value is not valid UTF-8 at byte 3"],
    );
    let e = file.get_str_array("tokens").unwrap_err().to_string();
    assert_contains(&e, &["\"tokens\"", "array element 1 is not valid UTF-8"]);
}

// ----- one test per corruption ---------------------------------------------------------

#[test]
fn wrong_magic_shows_the_bytes_found() {
    let mut bytes = sample_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let (err, msg) = open_err(&bytes);
    assert_eq!(
        err.as_gguf().unwrap().kind,
        GgufErrorKind::BadMagic { found: *b"GGML" }
    );
    assert_contains(&msg, &["at byte 0", "47 47 4d 4c", "\"GGML\"", "expected"]);

    let (_, msg) = open_err(b"\x7fELF");
    assert_contains(&msg, &["not a GGUF file", "7f 45 4c 46"]);
    let (_, msg) = open_err(b"PK");
    assert_contains(&msg, &["50 4b 00 00"]);
}

#[test]
fn empty_and_short_files_are_truncated() {
    let (_, msg) = open_err(b"");
    assert_contains(
        &msg,
        &["truncated", "magic needs 4 bytes but only 0 remain"],
    );
    let (_, msg) = open_err(b"GGU");
    assert_contains(&msg, &["magic needs 4 bytes but only 3 remain"]);
}

#[test]
fn unsupported_versions() {
    let mut bytes = sample_bytes();
    put_u32(&mut bytes, 4, 1);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &["at byte 4", "unsupported GGUF version 1", "2 and 3"],
    );

    put_u32(&mut bytes, 4, 4);
    let (_, msg) = open_err(&bytes);
    assert_contains(&msg, &["unsupported GGUF version 4"]);

    // A big-endian v3 file reads as version 0x03000000.
    put_u32(&mut bytes, 4, 3u32.swap_bytes());
    let (_, msg) = open_err(&bytes);
    assert_contains(&msg, &["version 50331648", "big-endian"]);
}

#[test]
fn counts_that_cannot_fit_are_rejected_before_allocating() {
    let mut bytes = sample_bytes();
    put_u64(&mut bytes, 8, u64::MAX);
    let (err, msg) = open_err(&bytes);
    assert!(matches!(
        err.as_gguf().unwrap().kind,
        GgufErrorKind::CountTooLarge {
            what: "tensor count",
            count: u64::MAX,
            ..
        }
    ));
    assert_contains(
        &msg,
        &["at byte 8", "tensor count 18446744073709551615 cannot fit"],
    );

    let mut bytes = sample_bytes();
    put_u64(&mut bytes, 16, 1 << 40);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "at byte 16",
            "metadata entry count 1099511627776 cannot fit",
        ],
    );

    // Just too many for the size: every entry needs at least 13 bytes.
    let mut bytes = sample_bytes();
    let n = (bytes.len() as u64 - 24) / 13 + 1;
    put_u64(&mut bytes, 16, n);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "at byte 16",
            &format!("metadata entry count {n} cannot fit"),
        ],
    );

    // An array length.
    let mut bytes = sample_bytes();
    let len_at = after_string(&bytes, "tokenizer.ggml.scores") + 4 + 4;
    put_u64(&mut bytes, len_at, 1 << 61);
    let (err, msg) = open_err(&bytes);
    assert_eq!(
        err.as_gguf().unwrap().subject,
        Some(GgufSubject::Key("tokenizer.ggml.scores".into()))
    );
    assert_contains(
        &msg,
        &[
            "metadata key \"tokenizer.ggml.scores\"",
            &format!("at byte {len_at}"),
            "array length 2305843009213693952 cannot fit",
        ],
    );
}

#[test]
fn string_lengths_past_the_end() {
    // A metadata value.
    let mut bytes = sample_bytes();
    let len_at = after_string(&bytes, "general.name") + 4;
    put_u64(&mut bytes, len_at, 1_000_000);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "metadata key \"general.name\"",
            &format!("at byte {len_at}"),
            "string of length 1000000 runs past the end",
        ],
    );

    // A key.
    let mut bytes = sample_bytes();
    let key_at = string_at(&bytes, "general.name");
    put_u64(&mut bytes, key_at, u64::MAX);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            &format!("at byte {key_at}"),
            "string of length 18446744073709551615 runs past the end",
        ],
    );

    // A tensor name.
    let mut bytes = sample_bytes();
    let name_at = string_at(&bytes, "output_norm.weight");
    let len = bytes.len() as u64;
    put_u64(&mut bytes, name_at, len);
    let (_, msg) = open_err(&bytes);
    assert_contains(&msg, &[&format!("at byte {name_at}"), "runs past the end"]);
}

#[test]
fn truncation_anywhere_in_the_header_is_an_error() {
    let bytes = sample_bytes();
    let data_start = GgufFile::parse_bytes(&bytes).unwrap().data_offset() as usize;
    for len in 0..data_start {
        let e = GgufFile::parse_bytes(&bytes[..len]).unwrap_err();
        let g = e.as_gguf().unwrap();
        assert!(g.offset.is_some(), "no offset for truncation at {len}: {e}");
    }
    // Truncated inside a tensor info: names the tensor and the field.
    let f = tensor_fields(&bytes, "blk.0.ffn_up.weight");
    let (_, msg) = open_err(&bytes[..f.dims + 12]);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.ffn_up.weight\"",
            &format!("at byte {}", f.dims + 8),
            "tensor dimension needs 8 bytes but only 4 remain",
        ],
    );
}

#[test]
fn unknown_and_invalid_metadata_values() {
    let mut bytes = sample_bytes();
    let ty_at = after_string(&bytes, "test.u8");
    put_u32(&mut bytes, ty_at, 13);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "metadata key \"test.u8\"",
            &format!("at byte {ty_at}"),
            "unknown metadata value type id 13",
        ],
    );

    let mut bytes = sample_bytes();
    let at = after_string(&bytes, "test.bool") + 4;
    bytes[at] = 2;
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "\"test.bool\"",
            &format!("at byte {at}"),
            "invalid boolean byte 0x02",
        ],
    );

    let mut bytes = sample_bytes();
    let at = after_string(&bytes, "test.bool_array") + 4 + 4 + 8 + 1;
    bytes[at] = 7;
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "\"test.bool_array\"",
            &format!("at byte {at}"),
            "invalid boolean byte 0x07",
        ],
    );

    let mut bytes = sample_bytes();
    let at = after_string(&bytes, "test.u8_array") + 4;
    put_u32(&mut bytes, at, 99);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &["\"test.u8_array\"", "unknown metadata value type id 99"],
    );
}

#[test]
fn arrays_nested_too_deeply() {
    let mut r = Raw::header(3, 0, 1);
    r.str(b"deep").u32(ValueType::Array.id());
    for _ in 0..100 {
        r.u32(ValueType::Array.id()).u64(1);
    }
    r.u32(ValueType::U8.id()).u64(0);
    let (_, msg) = open_err(&r.0);
    assert_contains(
        &msg,
        &["metadata key \"deep\"", "nested more than 8 levels"],
    );

    // Eight levels are fine.
    let mut r = Raw::header(3, 0, 1);
    r.str(b"deep").u32(ValueType::Array.id());
    for _ in 0..7 {
        r.u32(ValueType::Array.id()).u64(1);
    }
    r.u32(ValueType::U8.id()).u64(1).u8(42);
    let file = GgufFile::parse_bytes(&r.0).unwrap();
    assert_eq!(file.get("deep").unwrap().to_string(), "[[[[[[[[42]]]]]]]]");
}

#[test]
fn duplicate_metadata_keys() {
    let mut bytes = sample_bytes();
    let first = string_at(&bytes, "test.u8");
    let second = string_at(&bytes, "test.i8");
    bytes[second + 8 + 5] = b'u';
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "metadata key \"test.u8\"",
            &format!("at byte {second}"),
            &format!("duplicate metadata key (first defined at byte {first})"),
        ],
    );
}

#[test]
fn invalid_utf8_in_names() {
    let mut bytes = sample_bytes();
    let at = string_at(&bytes, "general.name");
    bytes[at + 8] = 0xfe;
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[&format!("at byte {at}"), "metadata key is not valid UTF-8"],
    );

    let mut bytes = sample_bytes();
    let at = string_at(&bytes, "output_norm.weight");
    bytes[at + 8] = 0xfe;
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[&format!("at byte {at}"), "tensor name is not valid UTF-8"],
    );
}

#[test]
fn bad_alignment() {
    let mut w = sample_writer();
    w.alignment(64);
    let mut bytes = w.to_bytes().unwrap();
    let at = string_at(&bytes, "general.alignment");
    let value_at = after_string(&bytes, "general.alignment") + 4;
    put_u32(&mut bytes, value_at, 48);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "metadata key \"general.alignment\"",
            &format!("at byte {at}"),
            "alignment 48 is not a non-zero power of two",
        ],
    );
    put_u32(&mut bytes, value_at, 0);
    let (_, msg) = open_err(&bytes);
    assert_contains(&msg, &["alignment 0 is not"]);

    let mut r = Raw::header(3, 0, 1);
    r.str(b"general.alignment")
        .u32(ValueType::String.id())
        .str(b"32");
    let (_, msg) = open_err(&r.0);
    assert_contains(
        &msg,
        &["\"general.alignment\"", "expected u32, found string"],
    );
}

#[test]
fn too_many_dimensions() {
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "output_norm.weight");
    put_u32(&mut bytes, f.n_dims, 7);
    let (err, msg) = open_err(&bytes);
    assert_eq!(
        err.as_gguf().unwrap().kind,
        GgufErrorKind::TooManyDims { n_dims: 7, max: 4 }
    );
    assert_contains(
        &msg,
        &[
            "tensor \"output_norm.weight\"",
            &format!("at byte {}", f.n_dims),
            "has 7 dimensions, at most 4 are supported",
        ],
    );
}

#[test]
fn zero_and_overflowing_dimensions() {
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "blk.0.attn_q.weight");
    put_u64(&mut bytes, f.dims + 8, 0);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.attn_q.weight\"",
            &format!("at byte {}", f.n_dims),
            "dimension 1 is 0 (shape [64, 0])",
        ],
    );

    let mut bytes = sample_bytes();
    put_u64(&mut bytes, f.dims, 1 << 40);
    put_u64(&mut bytes, f.dims + 8, 1 << 40);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.attn_q.weight\"",
            "shape [1099511627776, 1099511627776] is too large",
        ],
    );

    // Element count fits but the byte size does not.
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "output_norm.weight");
    put_u64(&mut bytes, f.dims, 1 << 62);
    let (_, msg) = open_err(&bytes);
    assert_contains(&msg, &["tensor \"output_norm.weight\"", "is too large"]);
}

#[test]
fn unknown_and_unsupported_tensor_types() {
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "blk.0.ffn_down.weight");
    put_u32(&mut bytes, f.ty, 16);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.ffn_down.weight\"",
            &format!("at byte {}", f.ty),
            "unsupported quant type IQ2_XXS (id 16)",
        ],
    );

    put_u32(&mut bytes, f.ty, 4);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &["unsupported quant type Q4_2 (removed from ggml) (id 4)"],
    );

    put_u32(&mut bytes, f.ty, 0xdead);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.ffn_down.weight\"",
            "unknown ggml type id 57005",
        ],
    );
}

#[test]
fn partial_quantisation_block() {
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "blk.0.attn_q.weight");
    put_u64(&mut bytes, f.dims, 48);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.attn_q.weight\"",
            "first dimension 48 is not a multiple of the Q8_0 block size 32",
        ],
    );
}

#[test]
fn misaligned_tensor_offset() {
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "output_norm.weight");
    let old = u64::from_le_bytes(bytes[f.offset..f.offset + 8].try_into().unwrap());
    put_u64(&mut bytes, f.offset, old + 4);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"output_norm.weight\"",
            &format!("at byte {}", f.start),
            &format!(
                "data offset {} is not a multiple of the alignment 32",
                old + 4
            ),
        ],
    );
}

#[test]
fn tensor_data_past_end_of_file() {
    let bytes = sample_bytes();
    let (_, msg) = open_err(&bytes[..bytes.len() - 1]);
    let f = tensor_fields(&bytes, "blk.1.attn_norm.weight");
    assert_contains(
        &msg,
        &[
            "tensor \"blk.1.attn_norm.weight\"",
            &format!("at byte {}", f.start),
            &format!(
                "(6 bytes at file offset {}) runs past the end of the file ({} bytes)",
                bytes.len() - 6,
                bytes.len() - 1
            ),
        ],
    );

    // An offset so large that start + size overflows.
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "output_norm.weight");
    put_u64(&mut bytes, f.offset, u64::MAX - 31);
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"output_norm.weight\"",
            "runs past the end of the file",
        ],
    );
}

#[test]
fn overlapping_tensors() {
    let mut bytes = sample_bytes();
    let f = tensor_fields(&bytes, "blk.0.attn_q.weight");
    let file = GgufFile::parse_bytes(&bytes).unwrap();
    let embd = file.tensor_info("token_embd.weight").unwrap().clone();
    put_u64(&mut bytes, f.offset, embd.relative_offset());
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.attn_q.weight\"",
            &format!("at byte {}", f.start),
            "overlap tensor \"token_embd.weight\"",
        ],
    );

    // A small tensor inside a big one.
    let mut w = GgufWriter::new();
    w.tensor("big", &[64], GgmlType::F32, vec![0; 256])
        .tensor("small", &[8], GgmlType::F32, vec![0; 32])
        .tensor("later", &[8], GgmlType::F32, vec![0; 32]);
    let mut bytes = w.to_bytes().unwrap();
    let small = tensor_fields(&bytes, "small");
    put_u64(&mut bytes, small.offset, 192);
    let (_, msg) = open_err(&bytes);
    assert_contains(&msg, &["tensor \"small\"", "overlap tensor \"big\""]);
}

#[test]
fn duplicate_tensor_names() {
    let mut bytes = sample_bytes();
    let first = string_at(&bytes, "blk.0.attn_q.weight");
    let second = string_at(&bytes, "blk.0.ffn_up.weight");
    bytes[second + 8..second + 8 + 19].copy_from_slice(b"blk.0.attn_q.weight");
    let (_, msg) = open_err(&bytes);
    assert_contains(
        &msg,
        &[
            "tensor \"blk.0.attn_q.weight\"",
            &format!("at byte {second}"),
            &format!("duplicate tensor name (first defined at byte {first})"),
        ],
    );
}

#[test]
fn missing_tensor_names_the_architecture() {
    let f = TempFile::new("missing");
    sample_writer().write_file(f.path()).unwrap();
    let file = GgufFile::open(f.path()).unwrap();
    let err = file.tensor("blk.7.attn_k.weight").unwrap_err();
    let msg = err.to_string();
    assert_contains(
        &msg,
        &[
            &format!("{:?}", f.path()),
            "tensor \"blk.7.attn_k.weight\"",
            "tensor is missing (architecture llama, file has 6 tensors)",
        ],
    );
    assert!(matches!(
        &err.as_gguf().unwrap().subject,
        Some(GgufSubject::Tensor(name)) if name == "blk.7.attn_k.weight"
    ));
}

#[test]
fn open_reports_io_errors_with_the_path() {
    let path = std::env::temp_dir().join("sotad-gguf-test-does-not-exist.gguf");
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, Error::Io { action: "open", .. }));
    assert_contains(&err.to_string(), &["cannot open", &format!("{path:?}")]);
}

// ----- no panics on any input ----------------------------------------------------------

/// Touches everything a user of the file could touch.
fn exercise(file: &GgufFile) {
    for (key, value) in file.metadata() {
        let _ = value.to_string();
        let _ = file.get_str(key);
        let _ = file.get_u32(key);
        let _ = file.get_f32(key);
        let _ = file.get_str_array(key);
        let _ = file.get_i32_array(key);
        let _ = file.get_f32_array(key);
    }
    let mut total = 0u64;
    for t in file.tensors() {
        total += t.bytes().iter().map(|&b| u64::from(b)).sum::<u64>();
        let _ = (t.shape(), t.rows(), t.cols(), t.info().row_bytes());
    }
    std::hint::black_box(total);
    let _ = file.tensor("nope").unwrap_err().to_string();
}

#[test]
fn mutated_and_truncated_files_never_panic() {
    let original = sample_bytes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let interesting: [u64; 10] = [
        0,
        1,
        4,
        31,
        32,
        0xff,
        u32::MAX as u64,
        i64::MAX as u64,
        u64::MAX,
        original.len() as u64,
    ];
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..20_000 {
        let mut bytes = original.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(6) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.next() as u8,
                2 => {
                    let v = interesting[rng.below(interesting.len())];
                    let end = (at + 8).min(bytes.len());
                    bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                }
                3 => {
                    let v = interesting[rng.below(interesting.len())] as u32;
                    let end = (at + 4).min(bytes.len());
                    bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                }
                4 => bytes.truncate(at),
                _ => {
                    let n = rng.below(16);
                    let noise = rng.bytes(n);
                    bytes.splice(at..at, noise);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        match GgufFile::parse_bytes(&bytes) {
            Ok(file) => {
                exercise(&file);
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
        }
    }
    // Both paths must actually have been exercised.
    assert!(accepted > 100, "only {accepted} mutants parsed");
    assert!(rejected > 1000, "only {rejected} mutants rejected");
}

#[test]
fn random_headers_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let n_tensors = rng.below(4) as u64;
        let n_kv = rng.below(4) as u64;
        let mut r = Raw::header(2 + rng.below(2) as u32, n_tensors, n_kv);
        let len = rng.below(200);
        r.0.extend(rng.bytes(len).into_iter().map(|b| b % 16));
        if let Ok(file) = GgufFile::parse_bytes(&r.0) {
            exercise(&file);
        }
    }
}
