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
