//! The GGUF reader on the real model files that scripts/install-models.sh installs (the test
//! set; scripts/test.sh runs it first). The file must be there: a missing model fails the test
//! with the command that installs it, rather than skipping.

mod common;

use common::models_dir;

use sotad_engines::gguf::{GgmlType, GgufFile};

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn smollm2_opens_by_memory_map_without_copying_weights() {
    let path = models_dir().join("smollm2-135m-instruct-q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        path.display()
    );
    let anon_before = rss_kib("RssAnon:");
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert!(
        file.get_str("tokenizer.chat_template")
            .unwrap()
            .contains("im_start")
    );
    assert_eq!(file.tensor_count(), 272);
    // Tied output: no output.weight; the embedding is Q8_0, the blocks Q4_1.
    assert!(file.tensor("output.weight").is_err());
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.ggml_type(), GgmlType::Q8_0);
    assert_eq!(embd.shape(), vec![49152, 576]);
    assert_eq!(
        file.tensor("blk.0.attn_q.weight").unwrap().ggml_type(),
        GgmlType::Q4_1
    );

    // Zero copy: tensor bytes lie inside the mapping, and reading every weight (faulting in
    // ~96 MB of file pages) grows file-backed memory, not the heap.
    let mapping = file.as_bytes().as_ptr_range();
    let mut checksum = 0u64;
    for t in file.tensors() {
        let bytes = t.bytes();
        assert!(
            mapping.contains(&bytes.as_ptr()),
            "{} is not in the mapping",
            t.name()
        );
        checksum = bytes
            .iter()
            .step_by(64)
            .fold(checksum, |a, &b| a.wrapping_add(u64::from(b)));
    }
    std::hint::black_box(checksum);
    let anon_growth = rss_kib("RssAnon:").saturating_sub(anon_before);
    assert!(
        anon_growth < 8 * 1024,
        "heap grew by {anon_growth} KiB while reading 96 MB of weights: something copied them"
    );
}
