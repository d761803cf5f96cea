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
        /// The clip to play into the microphone (WAV; default: a LibriVox clip from the models).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Where to put the microphone file, the ALSA configuration and reply.wav.
        #[arg(long, default_value = "sotad-demo")]
        dir: PathBuf,
    },
    /// Transcribe a WAV file with the configured Whisper model and print the text.
    Transcribe {
        /// WAV file (any rate and channel count; PCM 8/16/24/32-bit or float).
        file: PathBuf,
        /// Language code; default `stt.language` (empty: detect).
        #[arg(long)]
        language: Option<String>,
        /// Translate to English instead of transcribing.
        #[arg(long)]
        translate: bool,
        /// Print segments with timestamps and the timings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Convert a model to a quantized, self-contained GGUF file.
    Quantize {
        #[command(subcommand)]
        what: QuantizeCmd,
    },
    /// A conversation with the configured LLM in the terminal (one line per turn; empty line or EOF ends).
    Chat {
        /// Think before answering (models that can, e.g. Qwen3); the thinking is printed dimmed.
        #[arg(long)]
        thinking: bool,
    },
    /// Speak TEXT with the configured Piper voice into a WAV file.
    Say {
        text: String,
        /// Output WAV file.
        #[arg(long, short, default_value = "sotad-say.wav")]
        output: PathBuf,
        /// Voice name (default `tts.voice`).
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
    let cli = Cli::parse();
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
            file: path,
            language,
            translate,
            json,
        } => with_config(file, |config| {
            cli::transcribe(&config, &path, language, translate, json)
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
        Cmd::Chat { thinking } => with_config(file, |config| cli::chat(&config, thinking)),
        Cmd::Say {
            text,
            output,
            voice,
        } => with_config(file, |config| cli::say(&config, &text, &output, voice)),
        Cmd::Demo { clip, dir } => {
            let config = match Config::load(file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sotad: {e}");
                    return ExitCode::from(2);
                }
            };
            let clip = clip.unwrap_or_else(|| config.models_dir().join(cli::demo::DEFAULT_CLIP));
            let conf = match std::fs::create_dir_all(&dir)
                .map_err(anyhow::Error::from)
                .and_then(|()| cli::demo::prepare_devices(&dir, &clip))
            {
                Ok(conf) => conf,
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
            // rumqttd reports clients it has already dropped as errors at shutdown; hide them here.
            init_logging(if std::env::var_os("RUST_LOG").is_some() {
                &config.log.level
            } else {
                "warn,rumqttd=off"
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

/// Logs as `key=value` text on stderr; under systemd (journald) without timestamps or colour,
/// since the journal adds its own.
fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(&f).unwrap_or_else(|_| EnvFilter::new(level)),
        // rumqttd logs every connection at info; its warnings are what matter here.
        _ => EnvFilter::new(format!("rumqttd=warn,{level}")),
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    if journald {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}
