//! Whisper model formats besides CTranslate2: a Hugging Face directory (`model.safetensors`,
//! transformers' `config.json`, `tokenizer.json` only) and quantized GGUF files from
//! `sotad quantize whisper`, all made here from the real tiny.en that
//! scripts/install-models.sh installs.
//!
//! The Hugging Face directory is written by this test in Rust from the CTranslate2 weights
//! (same fp16 values, transformers' names and layout: separate q/k/v, no key bias).
//! `scripts/reference/whisper_ct2_to_hf.py` is the independent cross-check with the
//! `safetensors` Python package; its output loads to the same transcripts (run once by hand,
//! see its header).
//!
//! Under emulation (aarch64 CI) the transcription checks use one clip.

mod common;

use std::path::{Path, PathBuf};

use common::{TempFile, edit_distance, models_dir, normalize};
use sotad_engines::gguf::GgmlType;
use sotad_engines::quant::{self, QMatrix};
use sotad_engines::stt::ct2::{DType, TensorSlice};
use sotad_engines::stt::quantize::quantize_whisper;
use sotad_engines::stt::weights::{self, WhisperWeights};
use sotad_engines::stt::{LoadOptions, TranscribeOptions, Whisper, safetensors};

fn tiny() -> PathBuf {
    let dir = models_dir().join("whisper-tiny.en-ct2");
    assert!(
        dir.join("model.bin").exists(),
        "{} is missing: run scripts/install-models.sh",
        dir.display()
    );
    dir
}

fn clips() -> Vec<(String, Vec<f32>, String)> {
    let mut out: Vec<_> = common::librivox_clips()
        .into_iter()
        .map(|c| (c.id, c.samples, c.reference))
        .collect();
    if cfg!(target_arch = "aarch64") {
        out.retain(|c| c.0.ends_with("0880"));
    }
    out
}

fn load(path: &Path, opts: LoadOptions) -> Whisper {
    Whisper::load(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn opts() -> LoadOptions {
    LoadOptions {
        threads: 2,
        ..Default::default()
    }
}

fn texts(m: &Whisper) -> Vec<String> {
    clips()
        .iter()
        .map(|(_, s, _)| m.transcribe(s, &TranscribeOptions::default()).unwrap().text)
        .collect()
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = TempFile::new(tag).path().to_owned();
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Tensors = Vec<(String, DType, Vec<usize>, Vec<u8>)>;

fn push(out: &mut Tensors, name: String, t: &TensorSlice) {
    out.push((name, t.dtype(), t.shape(), t.bytes().to_vec()));
}

fn push_attn(out: &mut Tensors, p: &str, a: &weights::Attention) {
    for (n, l) in [
        ("q_proj", &a.query),
        ("k_proj", &a.key),
        ("v_proj", &a.value),
        ("out_proj", &a.out),
    ] {
        push(out, format!("{p}.{n}.weight"), &l.weight);
        if n != "k_proj" {
            push(out, format!("{p}.{n}.bias"), l.bias.as_ref().unwrap());
        } else {
            assert!(
                l.bias
                    .as_ref()
                    .unwrap()
                    .to_f32_vec()
                    .iter()
                    .all(|&b| b == 0.0),
                "Whisper's key projections have no bias"
            );
        }
    }
}

fn push_ln(out: &mut Tensors, p: &str, n: &weights::LayerNorm) {
    push(out, format!("{p}.weight"), &n.gamma);
    push(out, format!("{p}.bias"), &n.beta);
}

/// Writes tiny.en as a Hugging Face directory: transformers' names and config.json, the
/// CTranslate2 fp16 values, `tokenizer.json` (no vocabulary.txt).
fn write_hf(dir: &Path) {
    let w = WhisperWeights::open(tiny()).unwrap();
    let mut t: Tensors = Vec::new();
    let e = &w.encoder;
    push(&mut t, "model.encoder.conv1.weight".into(), &e.conv1.weight);
    push(&mut t, "model.encoder.conv1.bias".into(), &e.conv1.bias);
    push(&mut t, "model.encoder.conv2.weight".into(), &e.conv2.weight);
    push(&mut t, "model.encoder.conv2.bias".into(), &e.conv2.bias);
    push(
        &mut t,
        "model.encoder.embed_positions.weight".into(),
        &e.positional_embedding,
    );
    for (i, l) in e.layers.iter().enumerate() {
        let p = format!("model.encoder.layers.{i}");
        push_ln(&mut t, &format!("{p}.self_attn_layer_norm"), &l.attn_ln);
        push_attn(&mut t, &format!("{p}.self_attn"), &l.attn);
        push_ln(&mut t, &format!("{p}.final_layer_norm"), &l.mlp_ln);
        push(&mut t, format!("{p}.fc1.weight"), &l.mlp.fc1.weight);
        push(
            &mut t,
            format!("{p}.fc1.bias"),
            l.mlp.fc1.bias.as_ref().unwrap(),
        );
        push(&mut t, format!("{p}.fc2.weight"), &l.mlp.fc2.weight);
        push(
            &mut t,
            format!("{p}.fc2.bias"),
            l.mlp.fc2.bias.as_ref().unwrap(),
        );
    }
    push_ln(&mut t, "model.encoder.layer_norm", &e.ln_post);
    let d = &w.decoder;
    push(
        &mut t,
        "model.decoder.embed_tokens.weight".into(),
        &d.token_embedding,
    );
    push(
        &mut t,
        "model.decoder.embed_positions.weight".into(),
        &d.positional_embedding,
    );
    for (i, l) in d.layers.iter().enumerate() {
        let p = format!("model.decoder.layers.{i}");
        push_ln(&mut t, &format!("{p}.self_attn_layer_norm"), &l.attn_ln);
        push_attn(&mut t, &format!("{p}.self_attn"), &l.attn);
        push_ln(
            &mut t,
            &format!("{p}.encoder_attn_layer_norm"),
            &l.cross_attn_ln,
        );
        push_attn(&mut t, &format!("{p}.encoder_attn"), &l.cross_attn);
        push_ln(&mut t, &format!("{p}.final_layer_norm"), &l.mlp_ln);
        push(&mut t, format!("{p}.fc1.weight"), &l.mlp.fc1.weight);
        push(
            &mut t,
            format!("{p}.fc1.bias"),
            l.mlp.fc1.bias.as_ref().unwrap(),
        );
        push(&mut t, format!("{p}.fc2.weight"), &l.mlp.fc2.weight);
        push(
            &mut t,
            format!("{p}.fc2.bias"),
            l.mlp.fc2.bias.as_ref().unwrap(),
        );
    }
    push_ln(&mut t, "model.decoder.layer_norm", &d.ln);
    // transformers sorts the names; the order must not matter to the reader.
    t.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::write(&dir.join("model.safetensors"), &t).unwrap();

    let dims = w.dims;
    let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let config = format!(
        r#"{{
  "_name_or_path": "openai/whisper-tiny.en",
  "activation_function": "gelu",
  "architectures": ["WhisperForConditionalGeneration"],
  "begin_suppress_tokens": [{}],
  "bos_token_id": 50257,
  "d_model": {},
  "decoder_attention_heads": {},
  "decoder_ffn_dim": {},
  "decoder_layers": {},
  "decoder_start_token_id": 50257,
  "encoder_attention_heads": {},
  "encoder_ffn_dim": {},
  "encoder_layers": {},
  "eos_token_id": 50256,
  "max_source_positions": {},
  "max_target_positions": {},
  "model_type": "whisper",
  "num_hidden_layers": {},
  "num_mel_bins": {},
  "pad_token_id": 50256,
  "scale_embedding": false,
  "suppress_tokens": [{}],
  "torch_dtype": "float16",
  "use_cache": true,
  "vocab_size": {}
}}
"#,
        ids(&w.config.suppress_ids_begin),
        dims.n_audio_state,
        dims.n_text_head,
        dims.n_text_mlp,
        dims.n_text_layer,
        dims.n_audio_head,
        dims.n_audio_mlp,
        dims.n_audio_layer,
        dims.n_audio_ctx,
        dims.n_text_ctx,
        dims.n_audio_layer,
        dims.n_mels,
        ids(&w.config.suppress_ids),
        dims.n_vocab,
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::copy(tiny().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
}

#[test]
fn hugging_face_directory_transcribes_like_ctranslate2() {
    let dir = TempDir::new("hf");
    write_hf(&dir.0);
    assert!(!dir.0.join("vocabulary.txt").exists());
    let hf = load(&dir.0, opts());
    let ct2 = load(&tiny(), opts());
    assert_eq!(hf.name(), "tiny.en");
    // The vocabulary from tokenizer.json (plus the timestamp tokens it lacks) is
    // vocabulary.txt's, token for token.
    assert_eq!(hf.tokenizer().len(), ct2.tokenizer().len());
    for id in (0..ct2.tokenizer().len() as u32).step_by(7).chain([51_863]) {
        assert_eq!(
            hf.tokenizer().symbol(id),
            ct2.tokenizer().symbol(id),
            "id {id}"
        );
    }
    assert_eq!(hf.tokenizer().specials(), ct2.tokenizer().specials());
    let a = texts(&hf);
    assert_eq!(a, texts(&ct2));
    assert!(a.iter().all(|t| !t.trim().is_empty()), "{a:?}");
    // Prompts encode through tokenizer.json's merges.
    assert!(hf.tokenizer().encode(" Dashwood").unwrap().len() < 6);
}

#[test]
fn hugging_face_directory_errors_name_file_and_tensor() {
    let dir = TempDir::new("hfbad");
    write_hf(&dir.0);
    let st = dir.0.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let msg = |b: &[u8]| {
        std::fs::write(&st, b).unwrap();
        Whisper::load(&dir.0, &opts()).unwrap_err().to_string()
    };
    // Truncated data: the last tensor's range leaves the file.
    let e = msg(&bytes[..bytes.len() - 100]);
    assert!(
        e.contains("model.safetensors") && e.contains("data_offsets"),
        "{e}"
    );
    // A missing tensor.
    let name = b"model.encoder.layers.3.fc2.weight";
    let mut renamed = bytes.clone();
    let at = renamed.windows(name.len()).position(|w| w == name).unwrap();
    renamed[at + name.len() - 6] = b'X';
    let e = msg(&renamed);
    assert!(
        e.contains("model.safetensors") && e.contains("model.encoder.layers.3.fc2.weight"),
        "{e}"
    );
    // A header length beyond the file.
    let mut long = bytes.clone();
    long[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = msg(&long);
    assert!(e.contains("header length"), "{e}");
    // A config that disagrees with the tensors.
    std::fs::write(&st, &bytes).unwrap();
    let cfg = dir.0.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"d_model\": 384", "\"d_model\": 768")).unwrap();
    let e = Whisper::load(&dir.0, &opts()).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("d_model"),
        "{e}"
    );
}

#[test]
fn weight_quantizers_round_trip() {
    let mut rng = common::Rng(7);
    let cols = 512;
    let x: Vec<f32> = (0..cols * 4).map(|_| rng.f32() * 2.0).collect();
    let a: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
    for (ty, max_rel) in [
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_0, 0.05),
        (GgmlType::Q5_1, 0.05),
        (GgmlType::Q5_K, 0.06),
        (GgmlType::Q4_0, 0.10),
        (GgmlType::Q4_1, 0.10),
        (GgmlType::Q4_K, 0.12),
    ] {
        let q = quant::quantize_weights(ty, &x).unwrap();
        let mut back = vec![0.0f32; x.len()];
        quant::dequantize_row(ty, &q, &mut back).unwrap();
        let err: f32 = x.iter().zip(&back).map(|(a, b)| (a - b).powi(2)).sum();
        let norm: f32 = x.iter().map(|a| a * a).sum();
        let rel = (err / norm).sqrt();
        assert!(rel < max_rel, "{ty}: relative RMS error {rel}");
        // The kernels read the blocks as the dequantizer does (against the activations as
        // they were quantized).
        let m = QMatrix::new(ty, 4, cols, &q).unwrap();
        let xq = m.quantize_activation(&a).unwrap();
        let mut a_back = vec![0.0f32; cols];
        quant::dequantize_row(m.activation_type(), &xq, &mut a_back).unwrap();
        let mut y = vec![0.0f32; 4];
        m.matvec(&xq, &mut y, 1).unwrap();
        for (r, &yr) in y.iter().enumerate() {
            let exact: f32 = back[r * cols..(r + 1) * cols]
                .iter()
                .zip(&a_back)
                .map(|(w, v)| w * v)
                .sum();
            assert!(
                (yr - exact).abs() < 5e-3 * (1.0 + exact.abs()),
                "{ty} row {r}: {yr} vs {exact}"
            );
        }
    }
}

#[test]
fn q8_0_gguf_transcribes_within_one_word_of_f32() {
    let out = TempFile::new("tiny-q8.gguf");
    let report = quantize_whisper(&tiny(), out.path(), GgmlType::Q8_0).unwrap();
    eprintln!("{report:?}");
    // Every matrix of tiny (widths 384 and 1536) is Q8_0.
    assert!(
        report
            .by_type
            .iter()
            .all(|(t, _, _)| matches!(t, GgmlType::Q8_0 | GgmlType::F32 | GgmlType::F16))
    );
    let q8 = report
        .by_type
        .iter()
        .find(|(t, _, _)| *t == GgmlType::Q8_0)
        .unwrap();
    assert_eq!(q8.1, 4 * 4 + 4 * 7 + 1, "matrices quantized");
    let f32_model = load(
        &tiny(),
        LoadOptions {
            quantized_decoder: false,
            ..opts()
        },
    );
    let errors = |texts: &[String]| -> usize {
        clips()
            .iter()
            .zip(texts)
            .map(|((_, _, r), t)| edit_distance(&normalize(r), &normalize(t)))
            .sum()
    };
    let base = errors(&texts(&f32_model));
    let m = load(out.path(), opts());
    assert_eq!(m.name(), "tiny.en");
    let t = texts(&m);
    let e = errors(&t);
    eprintln!("f32: {base} errors; q8_0 GGUF: {e}: {t:?}");
    assert!(e <= base + 1, "{e} word errors vs {base} for f32: {t:?}");
    // Prompts still encode (tokenizer.json is inside the file).
    assert!(m.tokenizer().encode(" Dashwood").unwrap().len() < 6);
    drop(m);
    // The encoder multiplied in Q8_0 too (file-backed), on the shortest clip.
    let m = load(
        out.path(),
        LoadOptions {
            quantized_encoder: true,
            ..opts()
        },
    );
    let c = clips();
    let (_, s, r) = c.iter().find(|c| c.0.ends_with("0880")).unwrap();
    let t = m.transcribe(s, &TranscribeOptions::default()).unwrap().text;
    assert!(edit_distance(&normalize(r), &normalize(&t)) <= 2, "{t:?}");
}

#[test]
fn k_quant_gguf_falls_back_for_narrow_rows_and_transcribes() {
    let out = TempFile::new("tiny-q4k.gguf");
    let report = quantize_whisper(&tiny(), out.path(), GgmlType::Q4_K).unwrap();
    // fc2 of each layer (1536 wide) is Q4_K; the 384-wide rows fall back to Q5_0.
    let count = |ty| {
        report
            .by_type
            .iter()
            .find(|(t, _, _)| *t == ty)
            .map_or(0, |e| e.1)
    };
    assert_eq!(count(GgmlType::Q4_K), 8, "{report:?}");
    assert_eq!(count(GgmlType::Q5_0), 4 * 3 + 4 * 6 + 1, "{report:?}");
    let m = load(out.path(), opts());
    let c = clips();
    let (_, s, r) = c.iter().find(|c| c.0.ends_with("0880")).unwrap();
    let t = m.transcribe(s, &TranscribeOptions::default()).unwrap().text;
    assert!(edit_distance(&normalize(r), &normalize(&t)) <= 2, "{t:?}");
}

#[test]
fn damaged_gguf_errors_name_file_and_tensor() {
    let out = TempFile::new("tiny-q8-bad.gguf");
    quantize_whisper(&tiny(), out.path(), GgmlType::Q8_0).unwrap();
    let bytes = std::fs::read(out.path()).unwrap();
    let bad = TempFile::new("bad.gguf");
    let msg = |b: &[u8]| {
        std::fs::write(bad.path(), b).unwrap();
        Whisper::load(bad.path(), &opts()).unwrap_err().to_string()
    };
    let file = bad.path().file_name().unwrap().to_str().unwrap().to_owned();
    // Truncated.
    let e = msg(&bytes[..bytes.len() / 2]);
    assert!(e.contains(&file), "{e}");
    // Wrong architecture.
    let mut arch = bytes.clone();
    let key = b"general.architecture";
    let at = arch.windows(key.len()).position(|w| w == key).unwrap();
    let val = arch[at..].windows(7).position(|w| w == b"whisper").unwrap() + at;
    arch[val..val + 7].copy_from_slice(b"llamaXX");
    let e = msg(&arch);
    assert!(
        e.contains(&file) && e.contains("general.architecture") && e.contains("llamaXX"),
        "{e}"
    );
    // A missing tensor.
    let name = b"encoder/layer_3/ffn/linear_1/weight";
    let mut renamed = bytes.clone();
    let at = renamed.windows(name.len()).position(|w| w == name).unwrap();
    renamed[at + name.len() - 6] = b'X';
    let e = msg(&renamed);
    assert!(
        e.contains(&file) && e.contains("encoder/layer_3/ffn/linear_1/weight"),
        "{e}"
    );
    // Not a quantization type.
    let e = quantize_whisper(&tiny(), bad.path(), GgmlType::F16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("q8_0"), "{e}");
}
