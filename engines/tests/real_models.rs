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

/// The tests here measure the process's memory: one at a time.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn smollm2_opens_by_memory_map_without_copying_weights() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
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

/// glibc's `struct mallinfo2` (glibc 2.33 and later; Debian 12 has 2.36).
#[repr(C)]
#[derive(Default)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    /// Bytes in blocks malloc mapped on their own (large allocations).
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    /// Bytes allocated from the arenas, summed over all arenas.
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

unsafe extern "C" {
    fn mallinfo2() -> MallInfo2;
}

/// Kibibytes the allocator has handed out and not had back: the heap that loading grew.
/// Counted by malloc itself, not from `RssAnon`, because under qemu-user (the aarch64 tests)
/// `RssAnon` also holds qemu's translated code, which grows as the loaders run new code.
fn heap_in_use_kib() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { mallinfo2() };
    ((m.uordblks + m.hblkhd) / 1024) as u64
}

/// Kilobytes of this process's mappings of the weights file (`sotad-weights-*`, unlinked):
/// (size, anonymous).
fn weights_mappings_kib() -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut size, mut anon, mut ours) = (0, 0, false);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) if ours => size += v.parse::<u64>().unwrap(),
            (Some("Anonymous:"), Some(v)) if ours => anon += v.parse::<u64>().unwrap(),
            (Some(first), _) if first.contains('-') && !first.ends_with(':') => {
                ours = line.contains("sotad-weights-");
            }
            _ => {}
        }
    }
    (size, anon)
}

/// Whisper tiny.en (CTranslate2, float16) and Piper joe-medium make weights at load (the
/// encoder's transposed f32 matrices, the decoder's Q8_0 blocks, Piper's re-laid-out
/// convolutions; the token embedding is read in place): with a weights directory they go
/// to a file-backed mapping, not to the heap.
#[test]
fn whisper_and_piper_weights_made_at_load_are_file_backed() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let whisper = models_dir().join("whisper-tiny.en-ct2");
    let piper = models_dir().join("piper/en_US-joe-medium.onnx");
    for p in [&whisper, &piper] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
            p.display()
        );
    }
    let dir = common::TempFile::new("weights");
    sotad_engines::mapped::spill_to(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the weights file is unlinked at once"
    );
    let heap_before = heap_in_use_kib();
    let stt = sotad_engines::stt::Whisper::load(
        &whisper,
        &sotad_engines::stt::LoadOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let tts = sotad_engines::tts::Voice::load(
        &piper,
        &sotad_engines::tts::LoadOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let heap_growth = heap_in_use_kib().saturating_sub(heap_before);
    eprintln!("heap grew by {heap_growth} KiB");
    let (mapped, mapped_anon) = weights_mappings_kib();
    // On the heap they were 76 MiB (the token embedding as f32) + 63 MiB (Whisper's
    // matrices) + 57 MiB (Piper's convolutions).
    assert!(
        mapped > 100 * 1024 && mapped_anon == 0,
        "{mapped} KiB of weights mapped from the weights file ({mapped_anon} KiB anonymous)"
    );
    assert!(
        heap_growth < 24 * 1024,
        "the heap grew by {heap_growth} KiB loading Whisper tiny.en and Piper: weights were copied onto it"
    );
    drop((stt, tts));
    std::fs::remove_dir(dir.path()).unwrap();
}
