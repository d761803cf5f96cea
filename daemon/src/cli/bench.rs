//! `sotad bench`: what the configured models do on this board, for users (no Python, no
//! repository): the LLM's prefill and decode rates, Whisper's and Piper's real-time factors,
//! Piper's first audio, and the voice loop's end of speech → first audio through the demo's
//! path ([`super::demo::one_turn`]); medians of `--runs`, a table or one JSON object.
//!
//! The LLM is measured as llama.cpp's `llama-bench` measures it, so that
//! `llama-bench -m MODEL -p 128 -n TOKENS` on the same GGUF compares: prefill is one
//! evaluation of [`PREFILL_TOKENS`] tokens into an empty cache; decode is `TOKENS`
//! evaluations of one token each, from an empty cache (each token the greedy choice after the
//! previous one). A warm-up evaluation comes first, as `llama-bench` makes one.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use sotad::config::Config;
use sotad::stages::{llm, stt, tts, worker::threads};
use sotad_engines::audio;

/// Tokens of the prefill measurement (`llama-bench -p 128`).
pub const PREFILL_TOKENS: usize = 128;
/// The prefill's text, repeated to [`PREFILL_TOKENS`] tokens of the model's tokenizer.
const PROMPT: &str = "A small robot lives in a kitchen. Every morning it checks the weather, \
    reads the shopping list aloud, waters the plants by the window and answers questions \
    about the capital cities of Europe, the boiling point of water and the time of sunrise.";
/// Piper's sentence.
const SENTENCE: &str = "The quick brown fox jumps over the lazy dog, and then it runs back \
    home before the rain starts.";
/// Whisper's bundled clip: LibriVox, public domain (daemon/data/bench/README.md).
const CLIP: &[u8] = include_bytes!("../../data/bench/librivox-0880.wav");
const CLIP_NAME: &str = "bundled LibriVox clip sense_and_sensibility_01_austen_64kb-0880";
/// The voice loop's spoken question, said by Piper's en_US-joe-medium (README beside it).
const QUESTION: &[u8] = include_bytes!("../../data/bench/question.wav");
const QUESTION_TEXT: &str = "What is the capital of France?";

/// Everything checked before a model loads: the clip, the model files, the microphone's files.
pub struct Prepared {
    clip_name: String,
    clip: Vec<f32>,
    clip_secs: f64,
    /// The temporary directory of the voice loop's microphone (removed on drop).
    dir: TempDir,
    question: PathBuf,
}

impl Prepared {
    /// The ALSA configuration that defines the demo's devices (for `ALSA_CONFIG_PATH`).
    pub fn alsa_conf(&self) -> PathBuf {
        self.dir.0.join("asound.conf")
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks the input before anything loads: the clip (`--clip`, else the bundled one) is
/// audio; every model the bench needs is configured and opens. Writes the voice loop's
/// microphone into a temporary directory.
pub fn prepare(config: &Config, clip: Option<&Path>) -> anyhow::Result<Prepared> {
    let (clip_name, wav) = match clip {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("--clip {}: cannot read the file", path.display()))?;
            let wav = audio::parse_wav(&bytes).map_err(|e| {
                anyhow!(
                    "--clip {}: not audio sotad can read (a WAV file: PCM or float, any rate \
                     and channels): {e}",
                    path.display()
                )
            })?;
            (path.display().to_string(), wav)
        }
        None => (
            CLIP_NAME.to_string(),
            audio::parse_wav(CLIP).context("the bundled clip")?,
        ),
    };
    let clip_secs = wav.duration_secs();
    let samples = audio::to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)
        .with_context(|| format!("--clip {clip_name}"))?;
    if samples.is_empty() || clip_secs <= 0.0 {
        bail!("--clip {clip_name}: the WAV file holds no samples");
    }
    if let Some(bad) = samples.iter().position(|x| !x.is_finite()) {
        bail!("--clip {clip_name}: sample {bad} is not a finite number");
    }

    for (key, value) in [
        ("stt.model", &config.stt.model),
        ("llm.model", &config.llm.model),
        ("tts.voice", &config.tts.voice),
        ("vad.model", &config.vad.model),
    ] {
        if value.is_empty() {
            bail!("configuration key `{key}` is empty: `sotad bench` measures every stage");
        }
    }
    // Every model file, the VAD's too (the voice loop listens).
    let mut listening = config.clone();
    listening.audio.capture_device = "sotad-bench".into();
    let problems = sotad::stages::files::check_configured(&listening);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }

    let dir = std::env::temp_dir().join(format!("sotad-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = TempDir(dir);
    let question = dir.0.join("question.wav");
    std::fs::write(&question, QUESTION)
        .with_context(|| format!("cannot write {}", question.display()))?;
    super::demo::prepare_devices(&dir.0, &question)?;
    Ok(Prepared {
        clip_name,
        clip: samples.into_owned(),
        clip_secs,
        dir,
        question,
    })
}

/// Runs the measurements and prints the table (or, with `json`, one JSON object).
pub fn run(
    config: Config,
    prepared: Prepared,
    tokens: usize,
    runs: usize,
    json: bool,
) -> anyhow::Result<()> {
    let load_before = load_average();
    let progress = |what: &str| eprintln!("sotad bench: {what}");

    progress("LLM prefill and decode");
    let llm = bench_llm(&config, tokens, runs)?;
    progress("Whisper");
    let stt = bench_stt(&config, &prepared, runs)?;
    progress("Piper");
    let tts = bench_tts(&config, runs)?;
    progress("voice loop (the demo's path: embedded broker, file microphone)");
    let voice = bench_voice(&config, &prepared, runs)?;

    let report = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "runs": runs,
        "cpu": {
            "model": cpu_model(),
            "arch": std::env::consts::ARCH,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "features": sotad::cpu_features(),
            "kernels": {
                "llm": sotad_engines::quant::Kernel::best().name(),
                "whisper": sotad_engines::stt::vmath::kernel(),
                "piper": "gemm",
            },
        },
        "load_average": { "before": load_before, "after": load_average() },
        "llm": llm,
        "stt": stt,
        "tts": tts,
        "voice": voice,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The median of `xs` (the mean of the middle two for an even count); NaN when empty.
fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Rounded for the report.
fn r(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn bench_llm(config: &Config, tokens: usize, runs: usize) -> anyhow::Result<Value> {
    let path = config.model_path(&config.llm.model);
    let stage = llm::load(path.clone(), &config.llm).map_err(|e| anyhow!(e))?;
    let model = stage.model().clone();
    drop(stage);
    let context = model.config().context_len;
    if tokens > context || PREFILL_TOKENS > context {
        bail!(
            "--tokens {tokens}: the model's context holds {context} tokens \
             (configuration key `llm.context`); the bench needs {} at once",
            tokens.max(PREFILL_TOKENS)
        );
    }
    let text = model.tokenizer().encode(PROMPT, false, false);
    if text.is_empty() {
        bail!("the LLM's tokenizer made no tokens of the bench's prompt");
    }
    let prompt: Vec<u32> = text.iter().cycle().take(PREFILL_TOKENS).copied().collect();
    let mut session = model.session();
    // Warm-up: the weights' pages and the thread pool.
    session.eval(&prompt[..16]).map_err(llm_failed)?;
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        session.reset();
        let t = Instant::now();
        session.eval(&prompt).map_err(llm_failed)?;
        prefill.push(PREFILL_TOKENS as f64 / t.elapsed().as_secs_f64());

        session.reset();
        let mut token = prompt[0];
        let t = Instant::now();
        for _ in 0..tokens {
            let logits = session.eval(&[token]).map_err(llm_failed)?;
            token = argmax(logits);
        }
        decode.push(tokens as f64 / t.elapsed().as_secs_f64());
    }
    Ok(json!({
        "model": path.map(|p| p.display().to_string()),
        "threads": model.threads(),
        "context": context,
        "prefill_tokens": PREFILL_TOKENS,
        "prefill_tok_s": r(median(prefill), 1),
        "decode_tokens": tokens,
        "decode_tok_s": r(median(decode), 1),
    }))
}

fn llm_failed(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("the LLM failed: {e}")
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn bench_stt(config: &Config, prepared: &Prepared, runs: usize) -> anyhow::Result<Value> {
    let path = config.model_path(&config.stt.model);
    let mut stage = stt::load(path.clone(), &config.stt).map_err(|e| anyhow!(e))?;
    let mut transcribe = |samples: &[f32]| {
        stage
            .transcribe_samples(samples, None, stt::Task::Transcribe, None, None, None)
            .map_err(|e| anyhow!("Whisper failed on {}: {e}", prepared.clip_name))
    };
    // Warm-up on the first second.
    let second = prepared.clip.len().min(audio::SAMPLE_RATE as usize);
    transcribe(&prepared.clip[..second])?;
    let mut ms = Vec::new();
    let mut text = String::new();
    for _ in 0..runs {
        let t = Instant::now();
        let transcript = transcribe(&prepared.clip)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        text = transcript.text.trim().to_string();
    }
    let ms = median(ms);
    Ok(json!({
        "model": path.map(|p| p.display().to_string()),
        "threads": threads(config.stt.threads),
        "decoder_threads": threads(config.stt.decoder_threads),
        "encoder_window": config.stt.encoder_window,
        "clip": prepared.clip_name,
        "audio_s": r(prepared.clip_secs, 2),
        "processing_ms": r(ms, 1),
        "rtf": r(ms / 1e3 / prepared.clip_secs, 4),
        "transcript": text,
    }))
}

fn bench_tts(config: &Config, runs: usize) -> anyhow::Result<Value> {
    let path = config.model_path(&config.tts.voice);
    let mut stage =
        tts::load(path.clone(), &config.tts, config.models_dir()).map_err(|e| anyhow!(e))?;
    // Synthesizes `text` as the voice loop does (the first piece streamed), the audio drained
    // on another thread as the player would take it.
    let mut say = |text: &str| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<tts::Chunk>(sotad::capacity::CLI_STREAM);
        let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        let job = tts::Say {
            text: text.to_string(),
            ..Default::default()
        };
        let done = stage.say(&job, &tx, &AtomicBool::new(false), || {});
        drop(tx);
        let _ = drain.join();
        done.map_err(|e| anyhow!("Piper failed: {}", e.message))
    };
    say("Hello.")?;
    let (mut total, mut first, mut audio_s) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..runs {
        let done = say(SENTENCE)?;
        total.push(done.total_ms);
        first.push(done.first_audio_ms);
        audio_s = done.audio_s;
    }
    if audio_s <= 0.0 {
        bail!("Piper made no audio of the bench's sentence");
    }
    let total = median(total);
    Ok(json!({
        "model": path.map(|p| p.display().to_string()),
        "threads": threads(config.tts.threads),
        "first_chunk_ms": config.tts.first_chunk_ms,
        "text": SENTENCE,
        "audio_s": r(audio_s, 2),
        "synthesis_ms": r(total, 1),
        "rtf": r(total / 1e3 / audio_s, 4),
        "first_audio_ms": r(median(first), 1),
    }))
}

fn bench_voice(config: &Config, prepared: &Prepared, runs: usize) -> anyhow::Result<Value> {
    let mut config = config.clone();
    // A turn from the microphone alone, and nothing that listens on a port a running sotad
    // may hold.
    config.voice.wake_words.clear();
    config.voice.stop_words.clear();
    config.http.enabled = false;
    config.wyoming.enabled = false;
    config.homeassistant.discovery = false;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sotad-io")
        .enable_all()
        .build()?;
    let keys = [
        "endpoint_ms",
        "stt_ms",
        "ttft_ms",
        "first_audio_ms",
        "response_ms",
    ];
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    let (mut transcript, mut reply) = (String::new(), String::new());
    for _ in 0..runs {
        // A daemon per run, so that each turn starts alike (no conversation before it).
        let turn = runtime.block_on(super::demo::one_turn(
            config.clone(),
            &prepared.question,
            false,
        ))?;
        let latency = &turn.done["latency"];
        if latency["response_ms"].as_f64().is_none() {
            bail!(
                "the voice turn gave no audio (outcome {}, transcript {:?}): {}",
                turn.done["outcome"],
                turn.transcript,
                turn.done
            );
        }
        for (key, v) in keys.iter().zip(values.iter_mut()) {
            if let Some(x) = latency[*key].as_f64() {
                v.push(x);
            }
        }
        transcript = turn.transcript;
        reply = turn.reply;
    }
    let at = |i: usize| (values[i].len() == runs).then(|| r(median(values[i].clone()), 1));
    Ok(json!({
        "question": QUESTION_TEXT,
        "vad_model": config.model_path(&config.vad.model).map(|p| p.display().to_string()),
        "transcript": transcript,
        "reply": reply,
        "endpoint_ms": at(0),
        "stt_ms": at(1),
        "first_token_ms": at(2),
        "first_audio_ms": at(3),
        "end_of_speech_to_first_audio_ms": at(4),
    }))
}

/// The CPU's name: `model name` of /proc/cpuinfo (x86), else the cores' parts and the board
/// (aarch64 kernels name no model).
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let fields = |name: &str| -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for line in info.lines() {
            if let Some((k, v)) = line.split_once(':')
                && k.trim() == name
                && !v.trim().is_empty()
                && !found.iter().any(|f| f == v.trim())
            {
                found.push(v.trim().to_string());
            }
        }
        found
    };
    if let Some(name) = fields("model name").into_iter().next() {
        return name;
    }
    let parts: Vec<String> = fields("CPU part")
        .iter()
        .map(|p| arm_core(p).map_or_else(|| format!("CPU part {p}"), str::to_string))
        .collect();
    let board = std::fs::read_to_string("/proc/device-tree/model")
        .ok()
        .map(|m| m.trim_end_matches('\0').trim().to_string())
        .or_else(|| fields("Model").into_iter().next())
        .filter(|m| !m.is_empty());
    let mut name = parts.join(" + ");
    if let Some(board) = board {
        name = if name.is_empty() {
            board
        } else {
            format!("{name} ({board})")
        };
    }
    if name.is_empty() {
        std::env::consts::ARCH.to_string()
    } else {
        name
    }
}

/// Arm's part numbers of the cores found on boards.
fn arm_core(part: &str) -> Option<&'static str> {
    Some(match part {
        "0xd03" => "Cortex-A53",
        "0xd04" => "Cortex-A35",
        "0xd05" => "Cortex-A55",
        "0xd07" => "Cortex-A57",
        "0xd08" => "Cortex-A72",
        "0xd09" => "Cortex-A73",
        "0xd0a" => "Cortex-A75",
        "0xd0b" => "Cortex-A76",
        "0xd0c" => "Neoverse-N1",
        "0xd0d" => "Cortex-A77",
        "0xd40" => "Neoverse-V1",
        "0xd41" => "Cortex-A78",
        "0xd42" => "Cortex-A78AE",
        "0xd44" => "Cortex-X1",
        "0xd46" => "Cortex-A510",
        "0xd47" => "Cortex-A710",
        "0xd4b" => "Cortex-A78C",
        _ => return None,
    })
}

/// The 1-, 5- and 15-minute load averages (empty where /proc/loadavg is missing).
fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// The report as a table.
fn table(v: &Value) -> String {
    let s = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let list = |x: &Value| {
        x.as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let cpu = &v["cpu"];
    let k = &cpu["kernels"];
    let (llm, stt, tts, voice) = (&v["llm"], &v["stt"], &v["tts"], &v["voice"]);
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "sotad {} bench: medians of {} runs",
        s(&v["version"]),
        s(&v["runs"])
    ));
    line(format!(
        "CPU      {} ({} cores, {}); features: {}",
        s(&cpu["model"]),
        s(&cpu["cores"]),
        s(&cpu["arch"]),
        list(&cpu["features"])
    ));
    line(format!(
        "kernels  LLM {}, Whisper {}, Piper {}",
        s(&k["llm"]),
        s(&k["whisper"]),
        s(&k["piper"])
    ));
    line(format!(
        "load     {} before, {} after (1, 5, 15 min)",
        list(&v["load_average"]["before"]),
        list(&v["load_average"]["after"])
    ));
    line(String::new());
    line(format!(
        "{:<44} {:>10} {:<6} {}",
        "measurement", "median", "", "model, threads"
    ));
    line(format!(
        "{:<44} {:>10} tok/s  {}, {} threads",
        format!("LLM prefill, {} tokens", s(&llm["prefill_tokens"])),
        s(&llm["prefill_tok_s"]),
        s(&llm["model"]),
        s(&llm["threads"])
    ));
    line(format!(
        "{:<44} {:>10} tok/s",
        format!("LLM decode, {} tokens", s(&llm["decode_tokens"])),
        s(&llm["decode_tok_s"])
    ));
    line(format!(
        "{:<44} {:>10} RTF    {}, {} threads ({} decoding)",
        format!(
            "Whisper, {} s clip ({} ms)",
            s(&stt["audio_s"]),
            s(&stt["processing_ms"])
        ),
        s(&stt["rtf"]),
        s(&stt["model"]),
        s(&stt["threads"]),
        s(&stt["decoder_threads"])
    ));
    line(format!(
        "{:<44} {:>10} RTF    {}, {} threads",
        format!(
            "Piper, {} s sentence ({} ms)",
            s(&tts["audio_s"]),
            s(&tts["synthesis_ms"])
        ),
        s(&tts["rtf"]),
        s(&tts["model"]),
        s(&tts["threads"])
    ));
    line(format!(
        "{:<44} {:>10} ms",
        "Piper, first audio (streamed first piece)",
        s(&tts["first_audio_ms"])
    ));
    line(format!(
        "{:<44} {:>10} ms     endpoint {} ms, STT {} ms, first token {} ms, first audio {} ms",
        "voice loop, end of speech -> first audio",
        s(&voice["end_of_speech_to_first_audio_ms"]),
        s(&voice["endpoint_ms"]),
        s(&voice["stt_ms"]),
        s(&voice["first_token_ms"]),
        s(&voice["first_audio_ms"])
    ));
    line(String::new());
    line(format!("Whisper's clip: {}", s(&stt["clip"])));
    line(format!("  heard: {}", s(&stt["transcript"])));
    line(format!(
        "voice loop: asked {:?}, heard {:?}, answered {:?}",
        s(&voice["question"]),
        s(&voice["transcript"]),
        s(&voice["reply"])
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn bundled_clips_are_16k_mono_speech() {
        for (name, bytes, secs) in [("clip", CLIP, 2.99), ("question", QUESTION, 1.72)] {
            let wav = audio::parse_wav(bytes).unwrap();
            assert_eq!((wav.sample_rate, wav.channels), (16_000, 1), "{name}");
            assert!((wav.duration_secs() - secs).abs() < 0.01, "{name}");
        }
        assert_eq!(arm_core("0xd08"), Some("Cortex-A72"));
        assert!(!cpu_model().is_empty());
    }
}
