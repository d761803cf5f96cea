//! Writes every intermediate tensor of Smart Turn for one utterance (the first SAMPLES samples
//! of a 16 kHz mono WAV or raw s16 file), one file per tensor in OUT_DIR (`NNN name.bin`: u8
//! or f32 little-endian values), for comparing with onnxruntime's. A debugging probe.
//!
//! ```text
//! cargo run --release -p sotad-engines --example turn_trace -- MODEL AUDIO SAMPLES OUT_DIR
//! ```

use sotad_engines::audio::read_wav;
use sotad_engines::turn::{SmartTurn, Traced};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, audio, samples, out] = args.as_slice() else {
        panic!("usage: turn_trace MODEL AUDIO SAMPLES OUT_DIR");
    };
    let model = SmartTurn::load(model).expect("load the model");
    let pcm: Vec<f32> = if audio.ends_with(".raw") {
        std::fs::read(audio)
            .expect("read the audio")
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect()
    } else {
        read_wav(audio).expect("read the audio").samples
    };
    let n: usize = samples.parse().expect("SAMPLES");
    std::fs::create_dir_all(out).expect("create OUT_DIR");
    let mut i = 0;
    let p = model.probability_traced(&pcm[..n], &mut |name, t| {
        let bytes: Vec<u8> = match t {
            Traced::U8(v) => v.to_vec(),
            Traced::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let kind = if matches!(t, Traced::U8(_)) {
            "u8"
        } else {
            "f32"
        };
        let path = format!("{out}/{i:03} {name} {kind}.bin");
        std::fs::write(&path, bytes).expect("write a tensor");
        i += 1;
    });
    println!("{p}");
}
