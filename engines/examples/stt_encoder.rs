//! Times Whisper's encoder alone on the full 30 s window (the default), 2 threads:
//! `cargo run --release -p sotad-engines --example stt_encoder -- MODEL_DIR CLIP.wav [RUNS]`.
//! Prints each run's time and the median. `STT_ENC_DUMP=FILE` writes the encoder output
//! (little-endian `f32`) of the last run; `STT_ENC_CMP=FILE` compares it with such a dump
//! (largest absolute difference), so that two builds can be checked against each other.
//! `STT_INT8_ENCODER=1`: the encoder's linear layers in int8 (`LoadOptions::encoder_int8`).
use sotad_engines::audio::{read_wav, resample::to_mono_16k};
use sotad_engines::stt::mel::MelFrontEnd;
use sotad_engines::stt::model::WhisperNet;
use sotad_engines::stt::weights::WhisperWeights;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, clip, rest @ ..] = args.as_slice() else {
        return Err("usage: stt_encoder MODEL_DIR CLIP.wav [RUNS]".into());
    };
    let runs: usize = rest.first().map_or(Ok(5), |r| r.parse())?;
    let (weights, _, _) = WhisperWeights::open_any(dir)?;
    let opts = sotad_engines::stt::LoadOptions {
        threads: 2,
        encoder_int8: std::env::var_os("STT_INT8_ENCODER").is_some(),
        ..Default::default()
    };
    let net = WhisperNet::load_opts(&weights, &opts, 2)?;
    let dims = *net.dims();
    let wav = read_wav(clip)?;
    let mono = to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)?;
    let mel = MelFrontEnd::new(dims.n_mels).compute(&mono);
    let frames = 2 * dims.n_audio_ctx;
    let seg = mel.n_frames().min(frames);
    let part = mel.segment(0, seg);
    let mut window = vec![0.0f32; dims.n_mels * frames];
    for (dst, src) in window.chunks_exact_mut(frames).zip(part.chunks_exact(seg)) {
        dst[..seg].copy_from_slice(src);
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    let mut times = Vec::new();
    let mut out = Vec::new();
    for _ in 0..runs {
        let t = std::time::Instant::now();
        let enc = pool.install(|| net.encode(window.clone(), frames))?;
        let encoded = t.elapsed().as_secs_f64() * 1e3;
        let _cross = pool.install(|| net.cross_kv(&enc))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        out = enc.flatten_all()?.to_vec1::<f32>()?;
        eprintln!(
            "run: {:.1} ms (encoder {encoded:.1} ms, cross-attention keys and values {:.1} ms)",
            times.last().unwrap(),
            times.last().unwrap() - encoded
        );
    }
    times.sort_by(f64::total_cmp);
    println!("median encoder+cross_kv: {:.1} ms", times[times.len() / 2]);
    if let Some(p) = std::env::var_os("STT_ENC_DUMP") {
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(p, bytes)?;
    }
    if let Some(p) = std::env::var_os("STT_ENC_CMP") {
        let b = std::fs::read(p)?;
        let r: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let d = out
            .iter()
            .zip(&r)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let s = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        println!("max |diff| {d:e} (largest value {s}), {} values", r.len());
    }
    Ok(())
}
