//! The CTranslate2 reader and the Whisper weight mapping: on the real tiny.en model that
//! scripts/install-models.sh installs (it must be there: a missing model fails with the
//! command that installs it), on damaged copies of it, and on small synthetic models made
//! with `Ct2Writer`, including a deterministic mutation fuzzer asserting that no input makes
//! the reader panic.

mod common;

use common::{Rng, models_dir};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sotad_engines::Error;
use sotad_engines::stt::ct2::json::{self, JsonValue};
use sotad_engines::stt::ct2::{Ct2ErrorKind, Ct2Model, Ct2Writer, DType};
use sotad_engines::stt::weights::{WhisperDims, WhisperWeights};

// ----- helpers ---------------------------------------------------------------------------

fn tiny_en_dir() -> PathBuf {
    let dir = models_dir().join("whisper-tiny.en-ct2");
    assert!(
        dir.join("model.bin").exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A directory in the system temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sotad-ct2-test-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ct2_err(e: &Error) -> &sotad_engines::stt::ct2::Ct2Error {
    match e {
        Error::Ct2(c) => c,
        other => panic!("expected a CTranslate2 error, got {other}"),
    }
}

/// Dimensions of a small synthetic Whisper.
#[derive(Clone, Copy)]
struct Synth {
    n_mels: u32,
    state: u32,
    heads: i16,
    enc_layers: u32,
    dec_layers: u32,
    vocab: u32,
    audio_ctx: u32,
    text_ctx: u32,
    int8: bool,
}

const SYNTH: Synth = Synth {
    n_mels: 8,
    state: 8,
    heads: 2,
    enc_layers: 2,
    dec_layers: 1,
    vocab: 20,
    audio_ctx: 6,
    text_ctx: 5,
    int8: false,
};

/// Builds a WhisperSpec revision 3 model with every variable the real converter writes.
fn synth_writer(s: Synth) -> Ct2Writer {
    let mut rng = Rng(7);
    let mut w = Ct2Writer::new("WhisperSpec", 3);
    let mut vals = |n: u32| (0..n).map(|_| rng.f32()).collect::<Vec<f32>>();
    let d = s.state;
    let f = 4 * d;
    let linear = |w: &mut Ct2Writer,
                  prefix: &str,
                  out: u32,
                  inp: u32,
                  vals: &mut dyn FnMut(u32) -> Vec<f32>| {
        if s.int8 {
            let q: Vec<i8> = (0..out * inp)
                .map(|i| ((i % 200) as i32 - 100) as i8)
                .collect();
            w.add_i8(&format!("{prefix}/weight"), &[out, inp], &q);
            w.add_f32(
                &format!("{prefix}/weight_scale"),
                &[out],
                &vec![127.0; out as usize],
            );
        } else {
            w.add_f16(&format!("{prefix}/weight"), &[out, inp], &vals(out * inp));
        }
        w.add_f16(&format!("{prefix}/bias"), &[out], &vals(out));
    };
    let ln = |w: &mut Ct2Writer, prefix: &str, vals: &mut dyn FnMut(u32) -> Vec<f32>| {
        w.add_f16(&format!("{prefix}/gamma"), &[d], &vals(d));
        w.add_f16(&format!("{prefix}/beta"), &[d], &vals(d));
    };
    w.add_i8_scalar("decoder/activation", 3);
    w.add_i8_scalar("decoder/alibi", 0);
    w.add_i16_scalar("decoder/alignment_heads", 1);
    w.add_i16_scalar("decoder/alignment_layer", -1);
    w.add_f16(
        "decoder/embeddings/weight",
        &[s.vocab, d],
        &vals(s.vocab * d),
    );
    for i in 0..s.dec_layers {
        let p = format!("decoder/layer_{i}");
        ln(&mut w, &format!("{p}/attention/layer_norm"), &mut vals);
        linear(&mut w, &format!("{p}/attention/linear_0"), d, d, &mut vals);
        linear(
            &mut w,
            &format!("{p}/attention/linear_1"),
            2 * d,
            d,
            &mut vals,
        );
        linear(&mut w, &format!("{p}/attention/linear_2"), d, d, &mut vals);
        ln(&mut w, &format!("{p}/ffn/layer_norm"), &mut vals);
        linear(&mut w, &format!("{p}/ffn/linear_0"), f, d, &mut vals);
        linear(&mut w, &format!("{p}/ffn/linear_1"), d, f, &mut vals);
        ln(&mut w, &format!("{p}/self_attention/layer_norm"), &mut vals);
        linear(
            &mut w,
            &format!("{p}/self_attention/linear_0"),
            3 * d,
            d,
            &mut vals,
        );
        linear(
            &mut w,
            &format!("{p}/self_attention/linear_1"),
            d,
            d,
            &mut vals,
        );
    }
    ln(&mut w, "decoder/layer_norm", &mut vals);
    w.add_i16_scalar("decoder/num_heads", s.heads);
    w.add_f16(
        "decoder/position_encodings/encodings",
        &[s.text_ctx, d],
        &vals(s.text_ctx * d),
    );
    w.add_i8_scalar("decoder/pre_norm", 1);
    w.add_i8_scalar("decoder/scale_embeddings", 0);
    w.add_i8_scalar("decoder/start_from_zero_embedding", 0);
    w.add_f16("encoder/conv1/bias", &[d], &vals(d));
    w.add_f16(
        "encoder/conv1/weight",
        &[d, s.n_mels, 3],
        &vals(d * s.n_mels * 3),
    );
    w.add_f16("encoder/conv2/bias", &[d], &vals(d));
    w.add_f16("encoder/conv2/weight", &[d, d, 3], &vals(d * d * 3));
    for i in 0..s.enc_layers {
        let p = format!("encoder/layer_{i}");
        ln(&mut w, &format!("{p}/ffn/layer_norm"), &mut vals);
        linear(&mut w, &format!("{p}/ffn/linear_0"), f, d, &mut vals);
        linear(&mut w, &format!("{p}/ffn/linear_1"), d, f, &mut vals);
        ln(&mut w, &format!("{p}/self_attention/layer_norm"), &mut vals);
        linear(
            &mut w,
            &format!("{p}/self_attention/linear_0"),
            3 * d,
            d,
            &mut vals,
        );
        linear(
            &mut w,
            &format!("{p}/self_attention/linear_1"),
            d,
            d,
            &mut vals,
        );
    }
    ln(&mut w, "encoder/layer_norm", &mut vals);
    w.add_i16_scalar("encoder/num_heads", s.heads);
    w.add_f32(
        "encoder/position_encodings/encodings",
        &[s.audio_ctx, d],
        &vals(s.audio_ctx * d),
    );
    w.alias("decoder/projection/weight", "decoder/embeddings/weight");
    w.sort();
    w
}

const SYNTH_CONFIG: &str = r#"{
  "alignment_heads": [[0, 1], [0, 0]],
  "lang_ids": [3, 4],
  "suppress_ids": [1, 2, 19],
  "suppress_ids_begin": [5, 6]
}
"#;

fn vocabulary(n: u32) -> String {
    (0..n).map(|i| format!("tok{i}\n")).collect()
}

/// Writes a synthetic model directory.
fn synth_dir(tag: &str, w: &Ct2Writer, config: Option<&str>, vocab: Option<&str>) -> TempDir {
    let dir = TempDir::new(tag);
    w.write(dir.path().join("model.bin")).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.path().join("config.json"), c).unwrap();
    }
    if let Some(v) = vocab {
        std::fs::write(dir.path().join("vocabulary.txt"), v).unwrap();
    }
    dir
}

fn synth_weights(tag: &str, w: &Ct2Writer) -> Result<WhisperWeights, Error> {
    let dir = synth_dir(tag, w, Some(SYNTH_CONFIG), Some(&vocabulary(SYNTH.vocab)));
    WhisperWeights::open(dir.path())
}

// ----- the real tiny.en model ------------------------------------------------------------

#[test]
fn tiny_en_header_and_variables() {
    let model = Ct2Model::open(tiny_en_dir()).unwrap();
    assert_eq!(model.binary_version(), 6);
    assert_eq!(model.spec_name(), "WhisperSpec");
    assert_eq!(model.spec_revision(), 3);
    assert_eq!(model.variables().len(), 148);
    assert_eq!(model.aliases().len(), 1);
    assert_eq!(model.aliases()[0].alias, "decoder/projection/weight");
    assert_eq!(model.aliases()[0].target, "decoder/embeddings/weight");

    // Sorted by name, as the converter writes them; data ends exactly at the aliases.
    let names: Vec<&str> = model.variables().iter().map(|v| v.name()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);

    println!("tiny.en model.bin: {} variables", model.variables().len());
    for v in model.variables() {
        println!(
            "  {:<55} {:>9} {:?} at byte {}",
            v.name(),
            v.dtype().name(),
            v.shape(),
            v.data_offset()
        );
    }
    let emb = model.variable_info("decoder/embeddings/weight").unwrap();
    assert_eq!((emb.dtype(), emb.shape()), (DType::F16, &[51_864, 384][..]));
    assert_eq!(
        emb.data_offset(),
        187,
        "weights start at an odd offset: the format has no alignment"
    );
    let via_alias = model.variable("decoder/projection/weight").unwrap();
    assert_eq!(via_alias.name(), "decoder/embeddings/weight");
    assert_eq!(
        model.variable("encoder/num_heads").unwrap().scalar_i64(),
        Some(6)
    );
    assert_eq!(
        model.variable("decoder/activation").unwrap().scalar_i64(),
        Some(3)
    );

    let (path, vocab) = model.vocabulary().unwrap();
    assert!(path.ends_with("vocabulary.txt"));
    assert_eq!(vocab.len(), 51_864);
    assert_eq!(vocab[50_256], "<|endoftext|>");
    assert_eq!(vocab[50_362], "<|notimestamps|>");
    assert_eq!(vocab[50_363], "<|0.00|>");
    assert_eq!(vocab[51_863], "<|30.00|>");
}

#[test]
fn tiny_en_weights_resolve() {
    let model = Ct2Model::open(tiny_en_dir()).unwrap();
    let w = WhisperWeights::from_model(&model).unwrap();
    assert_eq!(
        w.dims,
        WhisperDims {
            n_mels: 80,
            n_audio_ctx: 1500,
            n_audio_state: 384,
            n_audio_head: 6,
            n_audio_layer: 4,
            n_audio_mlp: 1536,
            n_text_ctx: 448,
            n_text_state: 384,
            n_text_head: 6,
            n_text_layer: 4,
            n_text_mlp: 1536,
            n_vocab: 51_864,
        }
    );
    assert!(!w.dims.is_multilingual());
    assert_eq!(w.dims.size_name(), "tiny.en");
    assert_eq!(w.vocabulary().len(), 51_864);
    assert_eq!(w.config.suppress_ids_begin, [220, 50_256]);
    assert_eq!(w.config.suppress_ids.len(), 90);
    assert_eq!(w.config.lang_ids.len(), 98);
    assert_eq!(w.config.alignment_heads.len(), 8);
    assert_eq!(w.config.alignment_heads[0], (1, 0));

    // 5 encoder tensors + 4 × 16 per encoder block + 2 (ln_post) + 2 decoder embeddings
    // + 4 × 26 per decoder block + 2 (ln) + projection.
    let tensors = w.tensors();
    assert_eq!(tensors.len(), 5 + 4 * 16 + 2 + 2 + 4 * 26 + 2 + 1);

    // Zero copy: every tensor's bytes lie inside the mapped model.bin.
    let file = model.as_bytes().as_ptr_range();
    for (name, t) in &tensors {
        let b = t.bytes().as_ptr_range();
        assert!(
            file.start <= b.start && b.end <= file.end,
            "{name} is not in the mapping"
        );
        let n: usize = t.shape().iter().product();
        assert_eq!(t.bytes().len(), n * t.dtype().size(), "{name}");
    }

    // Every variable of the file is used, except the model attributes (scalars).
    let used: BTreeSet<&str> = tensors.iter().map(|(_, t)| t.name()).collect();
    let unused: Vec<&str> = model
        .variables()
        .iter()
        .map(|v| v.name())
        .filter(|n| !used.contains(n))
        .collect();
    assert!(
        unused
            .iter()
            .all(|n| model.variable_info(n).unwrap().shape().is_empty()),
        "unused non-scalar variables: {unused:?}"
    );
    assert_eq!(unused.len(), 9, "{unused:?}");

    // The fused projections are split as row ranges, and the key rows of the fused bias are
    // the zeros the converter stored (Whisper's key projections have no bias).
    let l0 = &w.encoder.layers[0].attn;
    assert_eq!(l0.query.weight.row_range(), 0..384);
    assert_eq!(l0.key.weight.row_range(), 384..768);
    assert_eq!(l0.value.weight.row_range(), 768..1152);
    assert_eq!(l0.key.weight.shape(), [384, 384]);
    assert_eq!(
        l0.key.weight.name(),
        "encoder/layer_0/self_attention/linear_0/weight"
    );
    for layer in &w.encoder.layers {
        let key_bias = layer.attn.key.bias.as_ref().unwrap().to_f32_vec();
        assert!(key_bias.iter().all(|&x| x == 0.0));
        let q_bias = layer.attn.query.bias.as_ref().unwrap().to_f32_vec();
        assert!(q_bias.iter().any(|&x| x != 0.0));
    }
    for layer in &w.decoder.layers {
        let ca = &layer.cross_attn;
        assert_eq!(ca.key.weight.row_range(), 0..384);
        assert_eq!(ca.value.weight.row_range(), 384..768);
        assert_eq!(ca.key.weight.name(), ca.value.weight.name());
        assert!(
            ca.key
                .bias
                .as_ref()
                .unwrap()
                .to_f32_vec()
                .iter()
                .all(|&x| x == 0.0)
        );
        assert!(
            layer
                .attn
                .key
                .bias
                .as_ref()
                .unwrap()
                .to_f32_vec()
                .iter()
                .all(|&x| x == 0.0)
        );
        assert!(ca.query.weight.is_whole());
    }
    // The projection is the (tied) embedding.
    assert_eq!(w.decoder.projection.name(), "decoder/embeddings/weight");
    assert_eq!(
        w.decoder.projection.bytes().as_ptr(),
        w.decoder.token_embedding.bytes().as_ptr()
    );
    // Encoder position encodings are Whisper's sinusoids: position 0 is sin(0) = 0 for the
    // first half and cos(0) = 1 for the second.
    let pe = w.encoder.positional_embedding.to_f32_vec();
    assert!(pe[..192].iter().all(|&x| x.abs() < 1e-6));
    assert!(pe[192..384].iter().all(|&x| (x - 1.0).abs() < 1e-6));
}

#[test]
fn base_weights_resolve() {
    // whisper-base (multilingual) is in the test set of scripts/install-models.sh.
    let dir = models_dir().join("whisper-base-ct2");
    assert!(
        dir.join("model.bin").exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        dir.display()
    );
    let w = WhisperWeights::open(&dir).unwrap();
    assert_eq!(w.dims.size_name(), "base");
    assert_eq!(
        (
            w.dims.n_audio_layer,
            w.dims.n_audio_state,
            w.dims.n_audio_head
        ),
        (6, 512, 8)
    );
    assert_eq!(w.dims.n_vocab, 51_865);
    assert!(w.dims.is_multilingual());
    assert_eq!(w.dims.num_languages(), 99);
    assert_eq!(w.config.lang_ids.len(), 99);
}

#[test]
fn truncated_tiny_en_gives_located_errors() {
    let dir = tiny_en_dir();
    let bytes = std::fs::read(dir.join("model.bin")).unwrap();
    let len = bytes.len();
    let model = Ct2Model::from_vec(bytes.clone()).unwrap();
    let emb = model
        .variable_info("decoder/embeddings/weight")
        .unwrap()
        .clone();
    let beta = model
        .variable_info("decoder/layer_0/attention/layer_norm/beta")
        .unwrap()
        .clone();
    let last = model.variables().last().unwrap().clone();
    let alias_at = model.aliases()[0].record_offset as usize;
    let (beta_rec, beta_data) = (beta.record_offset() as usize, beta.data_offset() as usize);

    // (cut, expected kind, variable named in the error, error offset)
    type Check = fn(&Ct2ErrorKind) -> bool;
    let truncated: Check = |k| matches!(k, Ct2ErrorKind::Truncated { .. });
    let bad_string: Check = |k| matches!(k, Ct2ErrorKind::BadString { .. });
    let count: Check = |k| matches!(k, Ct2ErrorKind::CountTooLarge { .. });
    let past_end: Check = |k| matches!(k, Ct2ErrorKind::DataPastEnd { .. });
    let cases: Vec<(usize, Check, Option<&str>, usize)> = vec![
        (0, truncated, None, 0),
        (3, truncated, None, 0),
        (5, truncated, None, 4),
        (10, bad_string, None, 4),
        (20, truncated, None, 18),
        (25, truncated, None, 22),
        // The count is checked against the bytes left before any record is read: 148 records
        // of at least 10 bytes after the 26-byte header.
        (50, count, None, 22),
        (1505, count, None, 22),
        (emb.data_offset() as usize - 1, count, None, 22),
        (
            1506,
            past_end,
            Some("decoder/embeddings/weight"),
            emb.record_offset() as usize,
        ),
        (
            emb.data_offset() as usize + 100_000,
            past_end,
            Some("decoder/embeddings/weight"),
            emb.record_offset() as usize,
        ),
        (beta_rec + 1, truncated, None, beta_rec),
        (beta_rec + 10, bad_string, None, beta_rec),
        (
            beta_data - 7,
            truncated,
            Some("decoder/layer_0/attention/layer_norm/beta"),
            beta_data - 9,
        ),
        (
            beta_data - 2,
            truncated,
            Some("decoder/layer_0/attention/layer_norm/beta"),
            beta_data - 4,
        ),
        (len / 2, past_end, None, 0),
        (
            last.data_offset() as usize + 10,
            past_end,
            Some(last.name()),
            last.record_offset() as usize,
        ),
        (alias_at - 2, truncated, None, alias_at - 4),
        (alias_at + 5, count, None, alias_at - 4),
        (alias_at + 20, bad_string, None, alias_at),
        // The alias record is 2 + 26 + 2 + 26 bytes; the target starts 28 bytes from the end.
        (len - 1, bad_string, None, len - 28),
    ];
    for (cut, check, subject, offset) in cases {
        let err = Ct2Model::from_vec(bytes[..cut].to_vec()).unwrap_err();
        let e = ct2_err(&err);
        assert!(check(&e.kind), "cut at {cut}: {err}");
        if subject.is_some() {
            assert_eq!(e.subject.as_deref(), subject, "cut at {cut}: {err}");
        }
        if offset > 0 {
            assert_eq!(e.offset, Some(offset as u64), "cut at {cut}: {err}");
        }
        assert!(
            e.offset.unwrap() <= cut as u64,
            "cut at {cut}: offset past the end: {err}"
        );
    }

    // From a file, the error names it, the variable and the offset of its record.
    let tmp = TempDir::new("truncated");
    std::fs::write(
        tmp.path().join("model.bin"),
        &bytes[..emb.data_offset() as usize + 100_000],
    )
    .unwrap();
    let err = Ct2Model::open(tmp.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("model.bin"), "{msg}");
    assert!(
        msg.contains("variable \"decoder/embeddings/weight\""),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("at byte {}", emb.record_offset())),
        "{msg}"
    );
    println!("{msg}");
}

#[test]
fn wrong_version_or_magic() {
    let good = synth_writer(SYNTH).to_bytes();
    for (version, hint) in [
        (0u32, false),
        (3, false),
        (7, false),
        (6u32.swap_bytes(), true),
    ] {
        let mut bytes = good.clone();
        bytes[..4].copy_from_slice(&version.to_le_bytes());
        let err = Ct2Model::from_vec(bytes).unwrap_err();
        let e = ct2_err(&err);
        assert_eq!(e.kind, Ct2ErrorKind::UnsupportedBinaryVersion { version });
        assert_eq!(e.offset, Some(0));
        assert_eq!(err.to_string().contains("byte-swapped"), hint, "{err}");
    }
    // A GGUF file (or anything else) fails on its first bytes.
    let err = Ct2Model::parse_bytes(b"GGUF\x03\x00\x00\x00rest").unwrap_err();
    assert!(matches!(
        ct2_err(&err).kind,
        Ct2ErrorKind::UnsupportedBinaryVersion { .. }
    ));
    // Not a Whisper model: the mapping layer says what it expected.
    let mut w = synth_writer(SYNTH);
    w.spec = "TransformerSpec".into();
    let err = synth_weights("spec", &w).unwrap_err();
    assert!(
        matches!(ct2_err(&err).kind, Ct2ErrorKind::UnsupportedSpec { .. }),
        "{err}"
    );
    let mut w = synth_writer(SYNTH);
    w.revision = 2;
    let err = synth_weights("revision", &w).unwrap_err();
    assert!(
        err.to_string()
            .contains("WhisperSpec revision 2, expected WhisperSpec revision 3"),
        "{err}"
    );
}

// ----- synthetic models ------------------------------------------------------------------

#[test]
fn synthetic_model_resolves_with_derived_dims() {
    let w = synth_weights("ok", &synth_writer(SYNTH)).unwrap();
    assert_eq!(
        w.dims,
        WhisperDims {
            n_mels: 8,
            n_audio_ctx: 6,
            n_audio_state: 8,
            n_audio_head: 2,
            n_audio_layer: 2,
            n_audio_mlp: 32,
            n_text_ctx: 5,
            n_text_state: 8,
            n_text_head: 2,
            n_text_layer: 1,
            n_text_mlp: 32,
            n_vocab: 20,
        }
    );
    assert_eq!(w.dims.size_name(), "custom");
    assert_eq!(w.config.suppress_ids, [1, 2, 19]);
    assert_eq!(w.config.alignment_heads, [(0, 1), (0, 0)]);
    assert_eq!(w.vocabulary()[19], "tok19");
    // Row slices decode to the right rows of the fused matrix.
    let layer = &w.encoder.layers[1].attn;
    let fused = w
        .model()
        .variable("encoder/layer_1/self_attention/linear_0/weight")
        .unwrap()
        .to_f32_vec();
    assert_eq!(layer.value.weight.to_f32_vec(), &fused[2 * 64..3 * 64]);
    assert_eq!(layer.key.bias.as_ref().unwrap().shape(), [8]);
}

#[test]
fn int8_weights_carry_split_scales() {
    let s = Synth {
        int8: true,
        ..SYNTH
    };
    let w = synth_weights("int8", &synth_writer(s)).unwrap();
    let attn = &w.decoder.layers[0].cross_attn;
    assert_eq!(attn.key.weight.dtype(), DType::I8);
    let scale = attn.value.scale.as_ref().unwrap();
    assert_eq!(
        scale.name(),
        "decoder/layer_0/attention/linear_1/weight_scale"
    );
    assert_eq!(scale.row_range(), 8..16);
    assert!(
        w.tensors()
            .iter()
            .any(|(n, _)| n == "decoder.blocks.0.cross_attn.value.weight_scale")
    );

    // An int8 weight without its scale is reported.
    let mut writer = synth_writer(s);
    assert!(writer.remove("encoder/layer_0/ffn/linear_1/weight_scale"));
    let err = synth_weights("int8-noscale", &writer).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"encoder/layer_0/ffn/linear_1/weight_scale\""),
        "{err}"
    );
}

#[test]
fn missing_variables_are_named() {
    for name in [
        "encoder/conv1/weight",
        "encoder/conv2/bias",
        "encoder/layer_1/self_attention/linear_0/weight",
        "encoder/layer_0/ffn/layer_norm/beta",
        "encoder/layer_norm/gamma",
        "encoder/num_heads",
        "decoder/layer_0/attention/linear_1/bias",
        "decoder/layer_0/attention/linear_2/weight",
        "decoder/position_encodings/encodings",
        "decoder/projection/weight",
    ] {
        let mut w = synth_writer(SYNTH);
        assert!(w.remove(name), "{name}");
        let err = synth_weights("missing", &w).unwrap_err();
        let e = ct2_err(&err);
        assert!(
            matches!(e.kind, Ct2ErrorKind::MissingVariable { .. }),
            "{name}: {err}"
        );
        assert_eq!(e.subject.as_deref(), Some(name));
        assert!(e.path.as_ref().unwrap().ends_with("model.bin"));
        let msg = err.to_string();
        assert!(msg.contains("model.bin") && msg.contains(name), "{msg}");
    }
    // A layer in the middle: layer_0 removed entirely while layer_1 exists.
    let mut w = synth_writer(SYNTH);
    w.variables
        .retain(|v| !v.name.starts_with("encoder/layer_0/"));
    let err = synth_weights("gap", &w).unwrap_err();
    assert!(err.to_string().contains("encoder/layer_0/"), "{err}");
}

#[test]
fn misshaped_and_mistyped_variables_are_named() {
    // Wrong shape.
    let mut w = synth_writer(SYNTH);
    let v = w
        .variables
        .iter_mut()
        .find(|v| v.name == "decoder/layer_0/self_attention/linear_0/weight")
        .unwrap();
    v.shape = vec![16, 12]; // same byte count as [24, 8]
    let err = synth_weights("shape", &w).unwrap_err();
    let e = ct2_err(&err);
    assert_eq!(
        e.subject.as_deref(),
        Some("decoder/layer_0/self_attention/linear_0/weight")
    );
    assert!(matches!(&e.kind, Ct2ErrorKind::WrongShape { found, .. } if found == &[16, 12]));
    assert!(
        err.to_string()
            .contains("expected [24, 8] (3 × n_text_state, n_text_state)"),
        "{err}"
    );

    // Wrong dtype: a layer norm stored as int8.
    let mut w = synth_writer(SYNTH);
    let v = w
        .variables
        .iter_mut()
        .find(|v| v.name == "encoder/layer_norm/beta")
        .unwrap();
    v.dtype_id = DType::I8.id();
    v.data.truncate(8);
    let err = synth_weights("dtype", &w).unwrap_err();
    assert!(
        matches!(
            ct2_err(&err).kind,
            Ct2ErrorKind::WrongDType {
                found: DType::I8,
                ..
            }
        ),
        "{err}"
    );

    // Heads that do not divide the width.
    let mut w = synth_writer(SYNTH);
    w.remove("encoder/num_heads");
    w.add_i16_scalar("encoder/num_heads", 3);
    let err = synth_weights("heads", &w).unwrap_err();
    assert!(
        matches!(ct2_err(&err).kind, Ct2ErrorKind::WrongValue { .. }),
        "{err}"
    );

    // An attribute Whisper cannot have.
    let mut w = synth_writer(SYNTH);
    w.remove("decoder/pre_norm");
    w.add_i8_scalar("decoder/pre_norm", 0);
    let err = synth_weights("prenorm", &w).unwrap_err();
    assert!(err.to_string().contains("decoder/pre_norm"), "{err}");

    // Cross-attention key/value with the wrong input width.
    let mut w = synth_writer(SYNTH);
    let v = w
        .variables
        .iter_mut()
        .find(|v| v.name == "decoder/layer_0/attention/linear_1/weight")
        .unwrap();
    v.shape = vec![8, 16];
    let err = synth_weights("kv", &w).unwrap_err();
    assert!(
        err.to_string()
            .contains("[16, 8] (2 × n_text_state, n_audio_state)"),
        "{err}"
    );
}

#[test]
fn config_and_vocabulary_problems_name_their_file() {
    let w = synth_writer(SYNTH);
    let vocab = vocabulary(SYNTH.vocab);

    let dir = synth_dir("noconfig", &w, None, Some(&vocab));
    let err = WhisperWeights::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");

    let dir = synth_dir(
        "badjson",
        &w,
        Some("{\"suppress_ids\": [1, 2,]}"),
        Some(&vocab),
    );
    let err = WhisperWeights::open(dir.path()).unwrap_err();
    let e = ct2_err(&err);
    assert!(matches!(e.kind, Ct2ErrorKind::Json { .. }), "{err}");
    assert_eq!(e.offset, Some(23));
    assert!(e.path.as_ref().unwrap().ends_with("config.json"));

    let dir = synth_dir(
        "badid",
        &w,
        Some("{\"suppress_ids\": [1, 20]}"),
        Some(&vocab),
    );
    let err = WhisperWeights::open(dir.path()).unwrap_err();
    assert_eq!(ct2_err(&err).subject.as_deref(), Some("suppress_ids"));
    assert!(
        err.to_string()
            .contains("token id 20, outside the vocabulary of 20"),
        "{err}"
    );

    let dir = synth_dir(
        "badheads",
        &w,
        Some("{\"alignment_heads\": [[0, 2]]}"),
        Some(&vocab),
    );
    let err = WhisperWeights::open(dir.path()).unwrap_err();
    assert_eq!(
        ct2_err(&err).subject.as_deref(),
        Some("alignment_heads"),
        "{err}"
    );

    let dir = synth_dir("novocab", &w, Some(SYNTH_CONFIG), None);
    let err = WhisperWeights::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");

    let dir = synth_dir("shortvocab", &w, Some(SYNTH_CONFIG), Some(&vocabulary(19)));
    let err = WhisperWeights::open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("vocabulary.txt") && msg.contains("19 tokens") && msg.contains("20 rows"),
        "{msg}"
    );

    let dir = synth_dir("binvocab", &w, Some(SYNTH_CONFIG), None);
    std::fs::write(dir.path().join("vocabulary.txt"), b"a\nb\n\xff\n").unwrap();
    let err = Ct2Model::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("line 3 is not valid UTF-8"),
        "{err}"
    );

    // vocabulary.json works as well as vocabulary.txt.
    let dir = synth_dir("jsonvocab", &w, Some(SYNTH_CONFIG), None);
    let tokens: Vec<String> = (0..20).map(|i| format!("\"t{i}\"")).collect();
    std::fs::write(
        dir.path().join("vocabulary.json"),
        format!("[{}]", tokens.join(",")),
    )
    .unwrap();
    let weights = WhisperWeights::open(dir.path()).unwrap();
    assert_eq!(weights.vocabulary()[7], "t7");

    // A missing directory is an I/O error naming model.bin.
    let err = Ct2Model::open("/nonexistent/sotad-model").unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("model.bin"),
        "{err}"
    );
}

// ----- format-level errors ---------------------------------------------------------------

#[test]
fn format_errors_are_located() {
    let parse = |w: &Ct2Writer| Ct2Model::from_vec(w.to_bytes());

    let mut w = Ct2Writer::new("WhisperSpec", 3);
    w.add_f32("a", &[2], &[1.0, 2.0]).add_f32("a", &[1], &[3.0]);
    let err = parse(&w).unwrap_err();
    let e = ct2_err(&err);
    // Header: version 4 + spec 2 + 12 + revision 4 + count 4 = 26; a record of "a" with one
    // dimension and 8 bytes of data is 2 + 2 + 1 + 4 + 1 + 4 + 8 = 22 bytes.
    assert_eq!(e.kind, Ct2ErrorKind::DuplicateName { first_offset: 26 });
    assert_eq!((e.subject.as_deref(), e.offset), (Some("a"), Some(48)));

    let mut w = Ct2Writer::new("WhisperSpec", 3);
    w.add_f32("a", &[1], &[1.0]).alias("b", "c");
    let err = parse(&w).unwrap_err();
    assert_eq!(
        ct2_err(&err).kind,
        Ct2ErrorKind::DanglingAlias { target: "c".into() }
    );
    let mut w = Ct2Writer::new("WhisperSpec", 3);
    w.add_f32("a", &[1], &[1.0]).alias("b", "a").alias("c", "b");
    let err = parse(&w).unwrap_err();
    assert!(
        matches!(ct2_err(&err).kind, Ct2ErrorKind::DanglingAlias { .. }),
        "alias of alias: {err}"
    );
    let mut w = Ct2Writer::new("WhisperSpec", 3);
    w.add_f32("a", &[1], &[1.0]).alias("a", "a");
    assert!(matches!(
        ct2_err(&parse(&w).unwrap_err()).kind,
        Ct2ErrorKind::DuplicateName { .. }
    ));

    let mut w = Ct2Writer::new("WhisperSpec", 3);
    w.add_f32("a", &[1], &[1.0]);
    w.variables[0].dtype_id = 9;
    let err = parse(&w).unwrap_err();
    let e = ct2_err(&err);
    assert_eq!(e.kind, Ct2ErrorKind::UnknownDType { id: 9 });
    assert_eq!(e.offset, Some(26 + 2 + 2 + 1 + 4));

    let mut w = Ct2Writer::new("WhisperSpec", 3);
    w.add_raw("a", DType::F16, &[3, 2], vec![0; 10]);
    let err = parse(&w).unwrap_err();
    assert_eq!(
        ct2_err(&err).kind,
        Ct2ErrorKind::SizeMismatch {
            shape: vec![3, 2],
            dtype: DType::F16,
            expected: 12,
            found: 10
        }
    );
    assert!(err.to_string().contains("variable \"a\""), "{err}");

    let mut w = Ct2Writer::new("WhisperSpec", 3);
    w.add_raw("huge", DType::F32, &[u32::MAX, u32::MAX, u32::MAX], vec![]);
    assert!(matches!(
        ct2_err(&parse(&w).unwrap_err()).kind,
        Ct2ErrorKind::ShapeOverflow { .. }
    ));

    // Strings: no NUL, zero length, not UTF-8.
    let mut bytes = synth_writer(SYNTH).to_bytes();
    bytes[4 + 2 + 11] = b'!'; // the NUL after "WhisperSpec"
    let err = Ct2Model::from_vec(bytes).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec name of length 12 has no NUL terminator"),
        "{err}"
    );
    let mut bytes = synth_writer(SYNTH).to_bytes();
    bytes[4..6].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(
        ct2_err(&Ct2Model::from_vec(bytes).unwrap_err()).kind,
        Ct2ErrorKind::BadString { .. }
    ));
    let mut bytes = synth_writer(SYNTH).to_bytes();
    bytes[6] = 0xff;
    let err = Ct2Model::from_vec(bytes).unwrap_err();
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");

    // Counts larger than the file.
    let mut bytes = synth_writer(SYNTH).to_bytes();
    bytes[22..26].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = Ct2Model::from_vec(bytes).unwrap_err();
    let e = ct2_err(&err);
    assert!(
        matches!(
            e.kind,
            Ct2ErrorKind::CountTooLarge {
                what: "variable count",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(e.offset, Some(22));

    // Trailing bytes after the aliases are ignored, as CTranslate2 ignores them.
    let mut bytes = synth_writer(SYNTH).to_bytes();
    bytes.extend_from_slice(b"trailing");
    assert!(Ct2Model::from_vec(bytes).is_ok());
}

#[test]
fn conversions() {
    let mut w = Ct2Writer::new("X", 1);
    w.add_f32("f32", &[2, 2], &[1.0, -2.0, 3.5, 0.25])
        .add_f16("f16", &[3], &[1.0, -0.5, 65504.0])
        .add_bf16("bf16", &[2], &[1.0, -3.0])
        .add_i8("i8", &[2], &[-128, 127])
        .add_i16_scalar("i16", -7)
        .add_raw("i32", DType::I32, &[], (-9i32).to_le_bytes().to_vec());
    let m = Ct2Model::from_vec(w.to_bytes()).unwrap();
    let v = |n: &str| m.variable(n).unwrap();
    assert_eq!(v("f32").to_f32_vec(), [1.0, -2.0, 3.5, 0.25]);
    assert_eq!(v("f32").rows(1..2).unwrap().to_f32_vec(), [3.5, 0.25]);
    assert!(v("f32").rows(1..3).is_none());
    assert_eq!(v("f16").to_f32_vec(), [1.0, -0.5, 65504.0]);
    assert_eq!(v("bf16").to_f32_vec(), [1.0, -3.0]);
    assert_eq!(v("i8").to_f32_vec(), [-128.0, 127.0]);
    assert_eq!(v("i16").scalar_i64(), Some(-7));
    assert_eq!(v("i32").scalar_i64(), Some(-9));
    assert_eq!(v("f32").scalar_i64(), None);
    assert!(v("i16").rows(0..1).is_none());
    let err = m.variable("nope").unwrap_err();
    assert!(
        err.to_string()
            .contains("variable \"nope\": not found (X revision 1, 6 variables)"),
        "{err}"
    );
}

#[test]
fn json_parser() {
    let v = json::parse(
        r#" {"a": [1, -2.5e3, true, null, "x\n\u00e9\ud83d\ude00"], "b": {}, "a": 3} "#,
    )
    .unwrap();
    assert_eq!(
        v.get("a"),
        Some(&JsonValue::Number(3.0)),
        "last duplicate wins"
    );
    let JsonValue::Object(members) = &v else {
        panic!()
    };
    let arr = members[0].1.as_array().unwrap();
    assert_eq!(arr[1], JsonValue::Number(-2500.0));
    assert_eq!(arr[4].as_str(), Some("x\né😀"));
    assert_eq!(JsonValue::Number(7.0).as_u32(), Some(7));
    assert_eq!(JsonValue::Number(7.5).as_u32(), None);
    assert_eq!(JsonValue::Number(-1.0).as_u32(), None);
    for (bad, offset) in [
        ("", 0),
        ("[1,]", 3),
        ("{\"a\" 1}", 5),
        ("[01]", 2),
        ("\"\\ud800\"", 7),
        ("\"a\u{1}\"", 2),
        ("[1] x", 4),
        ("-", 1),
        ("1.", 2),
        ("tru", 0),
    ] {
        let e = json::parse(bad).unwrap_err();
        assert_eq!(e.offset, offset, "{bad:?}: {e}");
    }
    let deep = "[".repeat(65) + &"]".repeat(65);
    assert!(json::parse(&deep).unwrap_err().message.contains("nested"));
    let ok = "[".repeat(64) + &"]".repeat(64);
    assert!(json::parse(&ok).is_ok());
}

// ----- no panics -------------------------------------------------------------------------

fn exercise(model: &Ct2Model) {
    for info in model.variables() {
        let v = model.variable(info.name()).unwrap();
        let _ = v.to_f32_vec();
        let _ = v.scalar_i64();
        assert_eq!(v.bytes().len(), info.n_bytes());
        if let Some(&n) = v.shape().first() {
            let _ = v.rows(0..n / 2).map(|s| s.to_f32_vec());
        }
    }
    for a in model.aliases() {
        assert!(model.variable(&a.alias).is_ok());
    }
    let _ = WhisperWeights::from_model(model).map(|w| w.tensors().len());
}

#[test]
fn mutated_and_truncated_files_never_panic() {
    let original = synth_writer(SYNTH).to_bytes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let interesting: [u32; 8] = [0, 1, 2, 3, 6, 0xff, 0xffff, u32::MAX];
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..20_000 {
        let mut bytes = original.clone();
        for _ in 0..=rng.below(3) {
            let at = rng.below(bytes.len());
            match rng.below(5) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.next() as u8,
                2 => {
                    let v = interesting[rng.below(interesting.len())];
                    let end = (at + 4).min(bytes.len());
                    bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                }
                3 => bytes.truncate(at),
                _ => {
                    let n = rng.below(8);
                    let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    bytes.splice(at..at, noise);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        match Ct2Model::parse_bytes(&bytes) {
            Ok(model) => {
                exercise(&model);
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
        }
    }
    assert!(accepted > 100, "only {accepted} mutants parsed");
    assert!(rejected > 1000, "only {rejected} mutants rejected");
}
