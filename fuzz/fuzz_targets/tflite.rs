//! Feeds arbitrary bytes to the wake word engine's TensorFlow Lite reader and operator plan
//! (`WakeModel::from_bytes`). Whatever loads is then run on a second of noise-like audio and
//! reset. Must never panic, overflow, or allocate more than the engine's tensor limits allow.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotad_engines::wake::{WakeModel, WakeSettings, WakeWord};

fuzz_target!(|data: &[u8]| {
    let settings = WakeSettings {
        wake_word: "fuzz".into(),
        model: "fuzz.tflite".into(),
        probability_cutoff: 0.5,
        sliding_window_size: 2,
    };
    let model = match WakeModel::from_bytes(data.to_vec(), settings) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut w = WakeWord::new(model);
    let audio: Vec<i16> = (0..16_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 17) as i16)
        .collect();
    std::hint::black_box(w.process(&audio));
    w.reset();
    std::hint::black_box(w.process(&audio[..4000]));
});
