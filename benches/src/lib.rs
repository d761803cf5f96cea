//! Benchmarks of sotad against its peers. Each benchmark runs the peer side by side in one run and prints the ratio.
//!
//! What the benchmark binaries in `benches/` share.

use std::path::PathBuf;

/// The models directory: `$SOTAD_MODELS_DIR`, else `~/.cache/sotad/models` (where
/// `scripts/install-models.sh` puts them).
pub fn models_dir() -> PathBuf {
    std::env::var_os("SOTAD_MODELS_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sotad/models"),
        PathBuf::from,
    )
}

/// The median (the mean of the two middle values for an even count; NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(super::median(&[]).is_nan());
    }
}

/// A field of `/proc/self/status` in KiB (`"RssAnon:"`, `"RssFile:"`, `"VmRSS:"`); 0 if absent.
pub fn self_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the LLM benchmarks share: the model, the thread count and the prompt.
pub mod llm {
    use std::path::{Path, PathBuf};

    use sotad_engines::llm::{LoadOptions, Model};

    /// The GGUF (`SOTAD_BENCH_MODEL`, a file name in the models directory; default SmolLM2)
    /// and the thread count (`SOTAD_BENCH_THREADS`, default 2).
    pub fn model_and_threads() -> (PathBuf, usize) {
        let file =
            std::env::var("SOTAD_BENCH_MODEL").unwrap_or("smollm2-135m-instruct-q4_1.gguf".into());
        let threads = std::env::var("SOTAD_BENCH_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(2);
        (super::models_dir().join(file), threads)
    }

    /// The prompt both sides evaluate: a paragraph repeated, tokenized by sotad, cut to
    /// `tokens`. Written as space-separated ids to a temporary file named after `tag`, for
    /// the peer's process; returns the ids and the file.
    pub fn prompt_ids(model: &Path, tokens: usize, tag: &str) -> (Vec<u32>, PathBuf) {
        let probe = Model::load(
            model,
            &LoadOptions {
                context_len: 1024,
                threads: 1,
            },
        )
        .expect("load model");
        let para = "The small robot rolled across the kitchen floor, listening for its name. \
            It had learned to answer questions about the weather, to read recipes aloud, and to \
            remind the family when the plants needed water. ";
        let mut ids = probe.tokenizer().encode(&para.repeat(60), true, false);
        ids.truncate(tokens);
        let file = std::env::temp_dir().join(format!("{tag}-{}.txt", std::process::id()));
        let text: Vec<String> = ids.iter().map(|t| t.to_string()).collect();
        std::fs::write(&file, text.join(" ")).expect("write the prompt ids");
        (ids, file)
    }
}
