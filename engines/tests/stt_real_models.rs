//! Zero copy on the real Whisper tiny.en model that scripts/install-models.sh installs (it
//! must be there: a missing model fails with the command that installs it). A test binary of
//! its own, so that no other test's allocations disturb the heap measurement.

use std::path::PathBuf;

use sotad_engines::stt::weights::WhisperWeights;

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
fn whisper_tiny_en_weights_are_not_copied() {
    let dir = std::env::var_os("SOTAD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sotad/models")
        })
        .join("whisper-tiny.en-ct2");
    assert!(
        dir.join("model.bin").exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        dir.display()
    );
    let anon_before = rss_kib("RssAnon:");
    let weights = WhisperWeights::open(&dir).unwrap();
    let mapping = weights.model().as_bytes().as_ptr_range();
    let mut checksum = 0u64;
    let mut total = 0usize;
    for (name, t) in weights.tensors() {
        let bytes = t.bytes();
        assert!(
            mapping.contains(&bytes.as_ptr()),
            "{name} is not in the mapping"
        );
        total += bytes.len();
        checksum = bytes
            .iter()
            .step_by(64)
            .fold(checksum, |a, &b| a.wrapping_add(u64::from(b)));
    }
    std::hint::black_box(checksum);
    // Every non-scalar variable is used exactly once (the split projections add up to their
    // fused matrices), plus the tied projection, which is the embedding again.
    let embedding = weights.decoder.token_embedding.bytes().len();
    let tensor_bytes: usize = weights
        .model()
        .variables()
        .iter()
        .filter(|v| !v.shape().is_empty())
        .map(|v| v.n_bytes())
        .sum();
    assert_eq!(total - embedding, tensor_bytes);
    assert!(total > 75_000_000);
    // The vocabulary (51864 strings) and the parsed header are on the heap; the 75 MB of
    // weights must not be.
    let anon_growth = rss_kib("RssAnon:").saturating_sub(anon_before);
    println!("read {total} bytes of tensors; heap grew by {anon_growth} KiB");
    assert!(
        anon_growth < 8 * 1024,
        "heap grew by {anon_growth} KiB while reading 75 MB of weights: something copied them"
    );
}
