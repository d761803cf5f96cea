//! Feeds arbitrary bytes to the GGUF parser. Anything it accepts is then fully exercised:
//! every metadata value decoded and every typed accessor tried, every tensor's bytes read.
//! The parser must never panic, overflow, or allocate in proportion to a count it read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotad_engines::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::parse_bytes(data) else {
        return;
    };
    for (key, value) in file.metadata() {
        let _ = value.to_string();
        let _ = file.get_str(key);
        let _ = file.get_u32(key);
        let _ = file.get_u64(key);
        let _ = file.get_i64(key);
        let _ = file.get_f32(key);
        let _ = file.get_bool(key);
        let _ = file.get_str_array(key);
        let _ = file.get_i32_array(key);
        let _ = file.get_f32_array(key);
    }
    let mut sum = 0u64;
    for t in file.tensors() {
        assert_eq!(t.bytes().len() as u64, t.info().n_bytes());
        sum = sum.wrapping_add(t.bytes().iter().map(|&b| u64::from(b)).sum::<u64>());
        let _ = (t.shape(), t.rows(), t.cols(), t.info().row_bytes());
    }
    std::hint::black_box(sum);
    let _ = file.tensor("missing").map(|_| ()).unwrap_err().to_string();
});
