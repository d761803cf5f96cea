//! The `sotad` command line: parse arguments, load configuration, set up logging, then hand
//! over to `sotad::run` with SIGTERM/SIGINT as the shutdown signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sotad::config::{self, Config, FileLayer};

mod cli;

#[derive(Parser)]
#[command(
    name = "sotad",
    version,
    about = "On-device voice daemon: hear, think and speak, driven over MQTT"
)]
struct Cli {
    /// Configuration file (default: /etc/sotad/sotad.toml if it exists).
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default).
    Run,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// The voice loop on embedded defaults: embedded broker, a speech clip as the microphone
    /// (alsa-lib file plugin); prints the transcript, the reply, its WAV and the latencies.
    Demo {
        /// The clip to play into the microphone (WAV; default: `--question` said by the
        /// configured Piper voice).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// The question the microphone says when no clip is given.
        #[arg(long, default_value = cli::demo::DEFAULT_QUESTION)]
        question: String,
        /// Where to put the microphone file, the ALSA configuration and reply.wav.
        #[arg(long, default_value = "sotad-demo")]
        dir: PathBuf,
    },
    /// Measure the configured models on this board: LLM prefill and decode tok/s, Whisper's and
    /// Piper's real-time factors, Piper's first audio, and the voice loop's end of speech to
    /// first audio (the demo's path); medians of --runs.
    Bench {
        /// Tokens of the LLM's decode measurement (as `llama-bench -n`; the prefill is 128
        /// tokens, `-p 128`).
        #[arg(long, default_value_t = 64, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=65536))]
        tokens: u32,
        /// Times each measurement runs; the median is reported.
        #[arg(long, default_value_t = 3, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
        /// Whisper's clip (WAV; default: a bundled 3 s LibriVox clip).
        #[arg(long, value_name = "FILE.wav")]
        clip: Option<PathBuf>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Transcribe WAV files with the configured Whisper model and print the text.
    Transcribe {
        /// WAV files (any rate and channel count; PCM 8/16/24/32-bit or float). With several,
        /// each line starts with the file's name and `--json` prints an array.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Whisper model: a path, or a name in the models directory (default `stt.model`).
        #[arg(long, short)]
        model: Option<String>,
        /// Language code; default `stt.language` (empty: detect).
        #[arg(long)]
        language: Option<String>,
        /// Translate to English instead of transcribing.
        #[arg(long)]
        translate: bool,
        /// Text that conditions the decoder (names, spellings), as `initial_prompt` over MQTT;
        /// only its last 223 tokens are used, as Whisper's prompt window holds.
        #[arg(long)]
        prompt: Option<String>,
        /// Print segments with timestamps and the timings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Convert a model to a quantized, self-contained GGUF file.
    Quantize {
        #[command(subcommand)]
        what: QuantizeCmd,
    },
    /// A conversation with the configured LLM in the terminal (one line per turn; empty line or
    /// EOF ends), or one answer to `--prompt`.
    Chat {
        /// Answer this one message and exit instead of reading standard input.
        #[arg(long, short)]
        prompt: Option<String>,
        /// GGUF model: a path, or a name in the models directory (default `llm.model`).
        #[arg(long, short)]
        model: Option<String>,
        /// System prompt ("" for none; default `llm.system_prompt`).
        #[arg(long)]
        system: Option<String>,
        /// Sampling temperature, 0-5 (0: greedy; default `llm.temperature`).
        #[arg(long)]
        temperature: Option<f32>,
        /// Most tokens to generate (default `llm.max_tokens`).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Think before answering (models that can, e.g. Qwen3); the thinking is printed dimmed.
        #[arg(long)]
        thinking: bool,
        /// An intents file (default `intents.file`): a line that matches one of its sentences
        /// prints the intent as sotad would publish it, instead of the LLM's answer.
        #[arg(long)]
        intents: Option<PathBuf>,
    },
    /// Speak TEXT with the configured Piper voice into a WAV file.
    Say {
        text: String,
        /// Output WAV file.
        #[arg(long, short, default_value = "sotad-say.wav")]
        output: PathBuf,
        /// Piper voice (.onnx): a path, or a name in the models directory (default `tts.voice`).
        #[arg(long, short)]
        model: Option<String>,
        /// Voice name in the models directory (default `tts.voice`).
        #[arg(long)]
        voice: Option<String>,
    },
}

#[derive(Subcommand)]
enum QuantizeCmd {
    /// A Whisper model (faster-whisper / CTranslate2 or Hugging Face directory) to GGUF.
    Whisper {
        /// Block type of the matrices: q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k or q6_k.
        #[arg(long = "type", value_name = "TYPE", default_value = "q8_0")]
        ty: String,
        /// The model directory.
        input: PathBuf,
        /// The GGUF file to write.
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the fully commented default configuration.
    Default,
    /// Load and check the configuration layers; print the result.
    Check,
}

fn main() -> ExitCode {
    // A model file truncated under a running job is named in the log before sotad exits.
    sotad::fatal::install_sigbus_handler();
    // Before any thread: glibc's arenas bounded (docs/benchmarks.md, "Memory").
    sotad::heap::bound_arenas();
    let cli = Cli::parse();
    // Weights made at load go to a file-backed mapping (docs/benchmarks.md, "Memory").
    if !matches!(
        cli.command,
        Some(Cmd::Config { .. }) | Some(Cmd::Quantize { .. })
    ) && let Some(warning) = sotad::heap::spill_weights()
    {
        eprintln!("sotad: warning: {warning}");
    }
    let file = match &cli.config {
        Some(path) => FileLayer::Explicit(path.clone()),
        None => FileLayer::System,
    };
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Config {
            action: ConfigCmd::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Cmd::Config {
            action: ConfigCmd::Check,
        } => match Config::load(file) {
            Ok(config) => {
                // Every configured model file, opened as far as checking it takes.
                let problems = sotad::stages::files::check_configured(&config);
                if !problems.is_empty() {
                    for p in &problems {
                        eprintln!("sotad: {p}");
                    }
                    eprintln!(
                        "sotad: {} model file problem(s); the stages they belong to would be off",
                        problems.len()
                    );
                    return ExitCode::from(2);
                }
                println!(
                    "configuration ok: device {}, broker {}, topics under {}/{}",
                    config.device_id(),
                    if config.uses_embedded_broker() {
                        format!("embedded on {}", config.broker.listen)
                    } else {
                        format!("{}:{}", config.mqtt.host, config.mqtt.port)
                    },
                    config.mqtt.prefix,
                    config.device_id()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sotad: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run => {
            let config = match Config::load(file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sotad: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log.level);
            run_daemon(config)
        }
        Cmd::Transcribe {
            files,
            model,
            language,
            translate,
            prompt,
            json,
        } => with_config(file, |mut config| {
            if let Some(model) = model {
                config.stt.model = cli::model_override(&config, &model)?;
            }
            cli::transcribe(&config, &files, language, translate, prompt, json)
        }),
        Cmd::Quantize {
            what: QuantizeCmd::Whisper { ty, input, output },
        } => match cli::quantize_whisper(&ty, &input, &output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sotad: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Chat {
            prompt,
            model,
            system,
            temperature,
            max_tokens,
            thinking,
            intents,
        } => with_config(file, |mut config| {
            if let Some(model) = model {
                config.llm.model = cli::model_override(&config, &model)?;
            }
            let options = sotad::mqtt::payloads::Options {
                thinking: Some(thinking),
                system_prompt: system,
                temperature,
                max_tokens,
                ..Default::default()
            };
            cli::chat(&config, prompt, options, intents.as_deref())
        }),
        Cmd::Say {
            text,
            output,
            model,
            voice,
        } => with_config(file, |mut config| {
            if let Some(model) = model {
                config.tts.voice = cli::model_override(&config, &model)?;
            }
            cli::say(&config, &text, &output, voice)
        }),
        Cmd::Bench {
            tokens,
            runs,
            clip,
            json,
        } => {
            let config = match Config::load(file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sotad: {e}");
                    return ExitCode::from(2);
                }
            };
            let prepared = match cli::bench::prepare(&config, clip.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("sotad bench: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            // The voice loop's microphone, as `sotad demo`'s (alsa-lib reads the path at the
            // first open). SAFETY: no other thread exists yet.
            unsafe {
                std::env::set_var(
                    "ALSA_CONFIG_PATH",
                    format!(
                        "/usr/share/alsa/alsa.conf:{}",
                        prepared.alsa_conf().display()
                    ),
                );
            }
            init_logging(if std::env::var_os("RUST_LOG").is_some() {
                &config.log.level
            } else {
                "warn"
            });
            match cli::bench::run(config, prepared, tokens as usize, runs as usize, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sotad bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo {
            clip,
            question,
            dir,
        } => {
            let config = match Config::load(file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sotad: {e}");
                    return ExitCode::from(2);
                }
            };
            let prepared = std::fs::create_dir_all(&dir)
                .map_err(anyhow::Error::from)
                .and_then(|()| match clip {
                    Some(clip) => Ok(clip),
                    None => cli::demo::speak_question(&config, &dir, &question),
                })
                .and_then(|clip| Ok((cli::demo::prepare_devices(&dir, &clip)?, clip)));
            let (conf, clip) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    eprintln!(
                        "sotad demo: {e:#} (scripts/install-models.sh installs the models and the clip)"
                    );
                    return ExitCode::FAILURE;
                }
            };
            // alsa-lib reads its configuration path from the environment at the first open.
            // SAFETY: no other thread exists yet (the runtime is built below).
            unsafe {
                std::env::set_var(
                    "ALSA_CONFIG_PATH",
                    format!("/usr/share/alsa/alsa.conf:{}", conf.display()),
                );
            }
            // The demo prints its own story; keep the daemon's logs to warnings.
            init_logging(if std::env::var_os("RUST_LOG").is_some() {
                &config.log.level
            } else {
                "warn"
            });
            match runtime().and_then(|rt| rt.block_on(cli::demo::run(config, dir, clip))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sotad demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the configuration, logs warnings only, and runs a one-shot command.
fn with_config(file: FileLayer, f: impl FnOnce(Config) -> anyhow::Result<()>) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sotad: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(if std::env::var_os("RUST_LOG").is_some() {
        &config.log.level
    } else {
        "warn"
    });
    match f(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers are plenty for MQTT and coordination; inference runs on its own threads.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sotad-io")
        .enable_all()
        .build()?)
}

fn run_daemon(config: Config) -> ExitCode {
    let result = runtime().and_then(|rt| rt.block_on(sotad::run(config, shutdown_signal())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sotad failed");
            eprintln!("sotad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop sotad with SIGKILL");
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
}

/// Logs as `key=value` text on stderr; colour only when stderr is a terminal (a file, a pipe or
/// the journal gets plain text); under systemd (journald) without timestamps, since the journal
/// adds its own.
fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(&f).unwrap_or_else(|_| EnvFilter::new(level)),
        // rumqttd logs every connection at info; its warnings are what matter here.
        _ => EnvFilter::new(format!("rumqttd=warn,{level}")),
    };
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(DoubleDisconnect);
    if journald {
        registry.with(format.without_time()).init();
    } else {
        registry.with(format).init();
    }
}

/// Drops the embedded broker's reports of ordinary disconnections, which rumqttd 0.20 logs as
/// ERRORs: a client's clean DISCONNECT followed by its closed socket counts as two
/// disconnections ("no-connection id N is already gone"; rumqttd's own comment calls it a
/// double disconnect), and the link the router closed after a DISCONNECT ends with "router-drop"
/// `Recv(Disconnected)`. Every client that said goodbye properly, sotad's own at shutdown
/// included, left one or both in the log. rumqttd's other messages pass.
struct DoubleDisconnect;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DoubleDisconnect {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        /// The event's message and `error` field, as text.
        #[derive(Default)]
        struct Fields {
            message: String,
            error: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "error" => self.error = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let target = event.metadata().target();
        if !target.starts_with("rumqttd::") {
            return true;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let ordinary = match target {
            "rumqttd::router::routing" => {
                f.message.starts_with("no-connection id") && f.message.ends_with("already gone")
            }
            "rumqttd::server::broker" => {
                f.message == "router-drop" && f.error == "Recv(Disconnected)"
            }
            _ => false,
        };
        !ordinary
    }
}
