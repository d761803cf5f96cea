//! One-shot commands that use the stages directly, without MQTT: `transcribe`, `chat`,
//! `say`, `quantize whisper`; `demo`, the whole daemon on embedded defaults; and `bench`,
//! what the configured models do on this board.

pub mod bench;
pub mod demo;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, anyhow};
use sotad::config::Config;
use sotad::mqtt::payloads::{self, AskRequest, Options, SayRequest, Scales};
use sotad::service;
use sotad::stages::{llm, stt, tts};
use sotad_engines::intent::IntentSet;

/// A request check's error, naming the command-line flag of its field (`options.max_tokens`
/// is `--max-tokens`).
fn flag_error(e: sotad::mqtt::request::RequestError) -> anyhow::Error {
    match e.field.as_deref() {
        Some(field) => {
            let flag = match field.strip_prefix("options.").unwrap_or(field) {
                "system_prompt" => "system".to_string(),
                "text" => "TEXT".to_string(),
                other => other.replace('_', "-"),
            };
            let dashes = if flag == "TEXT" { "" } else { "--" };
            anyhow!("{dashes}{flag}: {}", e.message)
        }
        None => anyhow!(e.message),
    }
}

/// `--model VALUE` of the one-off commands: a path as given when it exists (relative to the
/// working directory, as `whisper-cli -m`, `llama-cli -m` and `piper --model` take it), else a
/// name in the models directory.
pub fn model_override(config: &Config, value: &str) -> anyhow::Result<String> {
    let given = Path::new(value);
    let path = if given.exists() {
        std::path::absolute(given)?
    } else {
        let in_dir = config.models_dir().join(given);
        if !in_dir.exists() {
            anyhow::bail!(
                "--model {value:?}: no such file or directory, neither here nor in the models \
                 directory {} (models.dir)",
                config.models_dir().display()
            );
        }
        in_dir
    };
    path.into_os_string()
        .into_string()
        .map_err(|p| anyhow!("--model {p:?}: the path is not valid UTF-8"))
}

/// `sotad transcribe FILE...`: the model is loaded once for all files. With several files
/// each line of text starts with its file's name, and `--json` prints an array.
pub fn transcribe(
    config: &Config,
    paths: &[PathBuf],
    language: Option<String>,
    translate: bool,
    prompt: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut engine =
        stt::load(config.model_path(&config.stt.model), &config.stt).map_err(|e| anyhow!(e))?;
    let mut transcripts = Vec::with_capacity(paths.len());
    for path in paths {
        let wav = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let job = stt::WavJob {
            wav,
            language: language.clone(),
            task: if translate {
                stt::Task::Translate
            } else {
                stt::Task::Transcribe
            },
            beam_size: None,
            initial_prompt: prompt.clone(),
        };
        let done = engine
            .run(&job)
            .map_err(|e| anyhow!("{}: {}", path.display(), e.message))?;
        let t = service::transcript(path.display().to_string(), &done);
        match (json, paths.len()) {
            (true, _) => transcripts.push(t),
            (false, 1) => println!("{}", t.text),
            (false, _) => println!("{}: {}", path.display(), t.text),
        }
    }
    match transcripts.as_slice() {
        [] => {}
        [one] => println!("{}", serde_json::to_string_pretty(one)?),
        all => println!("{}", serde_json::to_string_pretty(all)?),
    }
    Ok(())
}

/// `sotad quantize whisper --type TYPE IN OUT`.
pub fn quantize_whisper(ty: &str, input: &Path, output: &Path) -> anyhow::Result<()> {
    use sotad_engines::stt::quantize;
    let t = quantize::parse_type(ty).ok_or_else(|| {
        anyhow!("unknown --type {ty:?}: use q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k or q6_k")
    })?;
    let start = std::time::Instant::now();
    let report = quantize::quantize_whisper(input, output, t)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("cannot quantize {}", input.display()))?;
    for (ty, n, bytes) in &report.by_type {
        println!("{n:4} tensors {ty:<5} {:8.1} MB", *bytes as f64 / 1e6);
    }
    println!(
        "wrote {} ({:.1} MB) in {:.1} s",
        output.display(),
        report.file_bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `sotad chat`: one answer to `--prompt`, or a conversation read from standard input. With
/// an intents file (`--intents`, default `intents.file`), a line that matches one of its
/// sentences prints its intent instead; the LLM loads at the first line that matches none.
pub fn chat(
    config: &Config,
    prompt: Option<String>,
    options: Options,
    intents: Option<&Path>,
) -> anyhow::Result<()> {
    let intents = match intents {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the intents file {}", path.display()))?;
            let set = IntentSet::parse(&text, &path.display().to_string())?;
            Some(Arc::new(set))
        }
        None => config.intents.set.clone(),
    };
    let mut engine = None;
    let stdin = std::io::stdin();
    let mut turn = 0u64;
    let once = prompt.is_some();
    let mut prompt = prompt;
    if !once {
        eprintln!("sotad chat: type a message and press Enter; an empty line ends.");
        if let Some(set) = &intents {
            eprintln!(
                "  ({} intents, {} sentence templates: a line that matches one prints its intent)",
                set.intents.len(),
                set.templates()
            );
        }
    }
    loop {
        let line = match prompt.take() {
            Some(p) => p,
            None if once => return Ok(()),
            None => {
                eprint!("> ");
                std::io::stderr().flush()?;
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
                line
            }
        };
        turn += 1;
        let started = std::time::Instant::now();
        let matched = intents.as_ref().and_then(|set| set.recognize(line.trim()));
        let took = started.elapsed();
        if let Some(m) = matched {
            // What sotad would publish on intent/<name>.
            let doc = serde_json::json!({
                "intent": m.name,
                "slots": payloads::intent_slots(&m.slots),
                "recognizer": m.recognizer.name(),
                "confidence": m.confidence,
            });
            println!("intent/{}: {doc}", m.name);
            eprintln!("  [matched in {:.0} µs]", took.as_secs_f64() * 1e6);
            continue;
        }
        let engine = match &mut engine {
            Some(e) => e,
            None => engine.insert(
                llm::load(config.model_path(&config.llm.model), &config.llm)
                    .map_err(|e| anyhow!(e))?,
            ),
        };
        let request = AskRequest {
            id: format!("chat-{turn}"),
            prompt: Some(line.trim().to_string()),
            messages: None,
            session: Some("terminal".into()),
            options: options.clone(),
            tools: None,
            response_format: None,
        };
        payloads::validate_ask(&request).map_err(flag_error)?;
        let ask = service::question(request);
        // Print pieces as they come, from the engine thread's callback.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(sotad::capacity::CLI_STREAM);
        let printer = std::thread::spawn(move || {
            let mut out = std::io::stdout();
            while let Some(piece) = rx.blocking_recv() {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
        });
        let mut stream = llm::Stream::new(Some(tx), Arc::new(AtomicBool::new(false)));
        let reply = engine.ask(&ask, &mut stream);
        drop(stream);
        let _ = printer.join();
        let reply = reply.map_err(|e| anyhow!(e.message))?;
        println!();
        eprintln!(
            "  [{} tokens, first after {:.0} ms, {:.1} tok/s, stop: {}]",
            reply.timings.generated_tokens,
            reply.timings.ttft_ms,
            reply.timings.decode_tok_s,
            payloads::stop_reason_name(reply.stop_reason)
        );
    }
}

pub fn say(
    config: &Config,
    text: &str,
    output: &Path,
    voice: Option<String>,
) -> anyhow::Result<()> {
    let mut engine = tts::load(
        config.model_path(&config.tts.voice),
        &config.tts,
        config.models_dir(),
    )
    .map_err(|e| anyhow!(e))?;
    let request = SayRequest {
        id: "say".into(),
        text: text.to_string(),
        voice,
        speaker: None,
        scales: Scales::default(),
        play: false,
    };
    payloads::validate_say(&request).map_err(flag_error)?;
    let job = service::speech(request);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<tts::Chunk>(sotad::capacity::CLI_STREAM);
    // Collected as it comes, so a text longer than the channel never makes synthesis wait.
    let collector = std::thread::spawn(move || {
        let mut samples = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            samples.extend_from_slice(&chunk.samples);
        }
        samples
    });
    let done = engine.say(&job, &tx, &AtomicBool::new(false), || {});
    drop(tx);
    let samples = collector
        .join()
        .map_err(|_| anyhow!("the audio collector thread panicked"))?;
    let done = done.map_err(|e| anyhow!(e.message))?;
    let wav = sotad_engines::audio::encode_wav_i16(&samples, done.sample_rate, 1);
    std::fs::write(output, wav).with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "{}: {:.2} s of speech ({} sentences), first audio after {:.0} ms, real-time factor {:.3}",
        output.display(),
        done.audio_s,
        done.sentences,
        done.first_audio_ms,
        payloads::real_time_factor(done.total_ms, done.audio_s)
    );
    Ok(())
}
