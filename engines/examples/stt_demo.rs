//! Transcribes WAV files: `cargo run --release -p sotad-engines --example stt_demo -- MODEL_DIR FILE.wav...`
//! (2 threads, or `STT_THREADS`; decoder 1, or `STT_DECODER_THREADS`; `STT_F32_DECODER`, `STT_QUANT_ENCODER`, `STT_INT8_ENCODER` as in `LoadOptions`).
use sotad_engines::stt::{LoadOptions, TranscribeOptions, Whisper};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, files) = args
        .split_first()
        .ok_or("usage: stt_demo MODEL_DIR FILE.wav...")?;
    let t = std::time::Instant::now();
    let model = Whisper::load(
        dir,
        &LoadOptions {
            threads: std::env::var("STT_THREADS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2),
            quantized_decoder: std::env::var_os("STT_F32_DECODER").is_none(),
            quantized_encoder: std::env::var_os("STT_QUANT_ENCODER").is_some(),
            decoder_threads: std::env::var("STT_DECODER_THREADS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
            encoder_int8: std::env::var_os("STT_INT8_ENCODER").is_some(),
        },
    )?;
    eprintln!("loaded {} in {:?}", model.name(), t.elapsed());
    for f in files {
        let r = model.transcribe_wav(&std::fs::read(f)?, &TranscribeOptions::default())?;
        println!("{f}: [{}] {}", r.language, r.text);
        for s in &r.segments {
            println!("  {:6.2} {:6.2} {}", s.start, s.end, s.text);
        }
        println!("  {:?}", r.timings);
    }
    Ok(())
}
