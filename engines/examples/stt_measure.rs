//! Time and memory of one Whisper model (any format) on the five LibriVox clips:
//! `cargo run --release -p sotad-engines --example stt_measure -- MODEL [RUNS]`.
//! Prints the resident memory after load and after the runs, and per clip the median total
//! and encoder times. `STT_QUANT_ENCODER=1` keeps a GGUF model's encoder quantized;
//! `STT_F32_DECODER=1` turns the Q8_0 decoder off.
use sotad_engines::audio::{read_wav, resample::to_mono_16k};
use sotad_engines::stt::{LoadOptions, TranscribeOptions, Whisper};

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned() + " kB")
        .unwrap_or_default()
}

fn mem() -> String {
    format!(
        "VmRSS {}, RssAnon {}, RssFile {}, VmHWM {}",
        status("VmRSS:"),
        status("RssAnon:"),
        status("RssFile:"),
        status("VmHWM:")
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_path = args.first().ok_or("usage: stt_measure MODEL [RUNS]")?;
    let runs: usize = args.get(1).map_or(Ok(5), |r| r.parse())?;
    let speech = std::path::PathBuf::from(std::env::var("HOME")?)
        .join(".cache/sotad/models/speech/librivox");
    let mut ids: Vec<String> = std::fs::read_dir(&speech)?
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_suffix(".wav").map(str::to_owned)
        })
        .collect();
    ids.sort();
    let t = std::time::Instant::now();
    let model = Whisper::load(
        model_path,
        &LoadOptions {
            threads: 2,
            quantized_decoder: std::env::var_os("STT_F32_DECODER").is_none(),
            quantized_encoder: std::env::var_os("STT_QUANT_ENCODER").is_some(),
            ..Default::default()
        },
    )?;
    println!(
        "{model_path}: loaded {} in {:.2?}; {}",
        model.name(),
        t.elapsed(),
        mem()
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut sum_total, mut sum_enc) = (0.0, 0.0);
    for id in &ids {
        let wav = read_wav(speech.join(format!("{id}.wav")))?;
        let s = to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)?.into_owned();
        let mut total = Vec::new();
        let mut enc = Vec::new();
        let mut text = String::new();
        for _ in 0..runs {
            let r = model.transcribe(&s, &TranscribeOptions::default())?;
            total.push(r.timings.total_ms);
            enc.push(r.timings.encode_ms);
            text = r.text;
        }
        let (t, e) = (median(total), median(enc));
        sum_total += t;
        sum_enc += e;
        println!("{id}: total {t:7.1} ms, encoder {e:7.1} ms: {text}");
    }
    println!(
        "sum of medians: total {sum_total:.1} ms, encoder {sum_enc:.1} ms; {}",
        mem()
    );
    Ok(())
}
