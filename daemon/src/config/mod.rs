//! Configuration: one serde tree that mirrors `configs/default.toml`.
//!
//! Layers, each overriding the one before: the built-in defaults (that very file, embedded),
//! then `/etc/sotad/sotad.toml` or `--config PATH`, then `SOTAD__SECTION__KEY` environment
//! variables. Every key that the defaults do not have is rejected, and every value is checked
//! here, at start-up, so that a mistake names its key, its source and what is allowed.
//!
//! This file is the tree, its error type and accessors; `layers.rs` loads and merges the
//! layers, `check.rs` checks the values, one function per section.

mod check;
mod layers;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The fully commented default configuration, printed by `sotad config default`.
pub const DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");

/// Where sotad looks for its configuration when no `--config` is given.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/sotad/sotad.toml";

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SOTAD";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device: Device,
    pub mqtt: Mqtt,
    pub broker: Broker,
    pub service: Service,
    pub telemetry: Telemetry,
    pub models: Models,
    pub stt: Stt,
    pub llm: Llm,
    pub tts: Tts,
    pub log: Log,
    pub audio: Audio,
    pub voice: Voice,
    pub vad: Vad,
    pub turn: Turn,
    pub intents: Intents,
    pub homeassistant: HomeAssistant,
    pub wyoming: Wyoming,
    pub http: Http,
}

/// Home Assistant's MQTT device discovery (`mqtt/discovery.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    /// Publish the retained device discovery document; off: clear it.
    pub discovery: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    pub prefix: String,
}

/// `[wyoming]`: the Wyoming protocol server for Home Assistant (`wyoming/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wyoming {
    pub enabled: bool,
    /// Address and port to listen on.
    pub listen: String,
    /// Announce `_wyoming._tcp.local.` by mDNS.
    pub zeroconf: bool,
    /// The zeroconf instance name; empty: `sotad-<device id>`.
    pub name: String,
    /// Connections served at once; more are answered `busy` and closed.
    pub max_connections: usize,
    /// Audio one transcription may buffer, in seconds.
    pub max_audio_s: u32,
}

impl Wyoming {
    /// The zeroconf instance name.
    pub fn instance_name(&self, device_id: &str) -> String {
        if self.name.is_empty() {
            format!("sotad-{device_id}")
        } else {
            self.name.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intents {
    /// The intents file (TOML); relative to the configuration file that names it; empty:
    /// no intents (every turn is answered by the LLM).
    pub file: String,
    /// How long a turn waits for an integration's answer to a published intent.
    pub reply_timeout_ms: u64,
    /// Spoken when no answer came in time; empty: nothing.
    pub fallback: String,
    /// A question no template matches goes to the LLM with the intents as tools.
    pub llm_fallback: bool,
    /// Whisper's `initial_prompt` for spoken turns: "auto" (example commands made from the
    /// intents file), "" (none) or the text itself.
    pub stt_prompt: String,
    /// A transcript no template matches gets the tolerant match (recognizer "fuzzy").
    pub fuzzy: bool,
    /// The lowest confidence a tolerant match is published with (0-1).
    pub fuzzy_min_confidence: f64,
    /// The parsed file, loaded and checked with the configuration.
    #[serde(skip)]
    pub set: Option<std::sync::Arc<sotad_engines::intent::IntentSet>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voice {
    /// Listen to the microphone from the start.
    pub listen: bool,
    /// Speech during playback interrupts it.
    pub barge_in: bool,
    /// The answer's first spoken piece ends after this many words at the latest (0: at the
    /// first clause or sentence end).
    pub first_piece_words: usize,
    /// The answer's generation waits while its first spoken piece is synthesized.
    pub first_audio_priority: bool,
    /// Wake words: names of installed microWakeWord models (`<models.dir>/microwakeword/
    /// <name>.json`) or paths to a model's `.json` or `.tflite`; empty: always listening.
    pub wake_words: Vec<String>,
    /// After an answer has played, speech within this many seconds needs no wake word.
    pub follow_up_s: f64,
    /// Stop words, as `wake_words`: heard while sotad speaks, they cancel the answer.
    pub stop_words: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// Relative model paths are resolved against this directory.
    pub dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stt {
    /// Whisper model directory; empty: STT off.
    pub model: String,
    /// ISO language code; empty: detect.
    pub language: String,
    pub beam_size: usize,
    pub threads: usize,
    /// Threads of one decoding step (0 = one per core).
    pub decoder_threads: usize,
    /// GGUF models: multiply the encoder's matrices quantized (less memory, slower).
    pub quantized_encoder: bool,
    /// `full` (the 30 s window the model was trained on) or `fit` (the audio plus 2 s,
    /// at least 5 s: faster for short commands, but transcripts change).
    pub encoder_window: String,
    /// `f32` or `int8`: the encoder's linear layers as int8 products (faster, transcripts
    /// may change).
    pub encoder_precision: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// GGUF file; empty: LLM off.
    pub model: String,
    pub context: usize,
    pub threads: usize,
    pub system_prompt: String,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub sessions: usize,
    pub session_turns: usize,
    /// A conversation not continued for this many seconds is forgotten (0: never).
    pub conversation_idle_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tts {
    /// Piper voice `.onnx`; empty: TTS off.
    pub voice: String,
    pub speaker: u32,
    pub threads: usize,
    /// Audio in the first piece of a request's first sentence, ms; 0: whole sentences.
    pub first_chunk_ms: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Topic level that identifies this device; empty means the hostname.
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// Empty: use the embedded broker.
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub password_file: String,
    pub keep_alive_secs: u64,
    pub connect_timeout_secs: u64,
    pub persistent_session: bool,
    pub max_packet_bytes: usize,
    pub max_request_bytes: usize,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub tls: Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub enabled: bool,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub request_queue: usize,
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub interval_secs: u64,
    pub thermal_zones: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audio {
    /// ALSA PCM names.
    pub capture_device: String,
    pub playback_device: String,
    pub capture_buffer_ms: u32,
    pub playback_buffer_ms: u32,
    /// Frames (32 ms each) between the capture thread and the pipeline.
    pub frame_queue: usize,
    /// Sentences of speech waiting for the speaker.
    pub playback_queue: usize,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

impl Audio {
    /// The capture thread's settings.
    pub fn capture_config(&self) -> crate::audio::CaptureConfig {
        crate::audio::CaptureConfig {
            device: self.capture_device.clone(),
            buffer_ms: self.capture_buffer_ms,
            retry_min_ms: self.retry_min_ms,
            retry_max_ms: self.retry_max_ms,
        }
    }

    /// The player's settings.
    pub fn playback_config(&self) -> crate::audio::PlaybackConfig {
        crate::audio::PlaybackConfig {
            device: self.playback_device.clone(),
            buffer_ms: self.playback_buffer_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vad {
    /// Silero VAD ONNX file; relative paths are under the models directory.
    pub model: String,
    pub threshold: f64,
    pub neg_threshold: f64,
    pub min_speech_ms: u32,
    pub pre_roll_ms: u32,
    pub trailing_silence_ms: u32,
    /// A pause this long starts transcription before the endpoint; 0 waits for it.
    pub speculate_ms: u32,
    /// A transcript ready before the endpoint is answered at once, held back until then.
    pub speculate_answer: bool,
    /// A speculative transcript that reads as complete ends the utterance after this much
    /// silence instead of `trailing_silence_ms`; 0 never does.
    pub complete_silence_ms: u32,
    pub max_utterance_ms: u32,
    pub gate: bool,
    pub gate_min_db: f64,
    pub gate_margin_db: f64,
    pub gate_rise_db_per_s: f64,
    pub gate_hangover_ms: u32,
}

impl Vad {
    /// The detector's settings (gate, endpointer).
    pub fn detector_config(&self) -> sotad_engines::vad::VoiceDetectorConfig {
        use sotad_engines::vad::{EndpointConfig, GateConfig, VoiceDetectorConfig};
        VoiceDetectorConfig {
            gate: self.gate.then_some(GateConfig {
                min_db: self.gate_min_db as f32,
                margin_db: self.gate_margin_db as f32,
                rise_db_per_s: self.gate_rise_db_per_s as f32,
                hangover_ms: self.gate_hangover_ms,
            }),
            endpoint: EndpointConfig {
                sample_rate: sotad_engines::audio::SAMPLE_RATE,
                threshold: self.threshold as f32,
                neg_threshold: self.neg_threshold as f32,
                min_speech_ms: self.min_speech_ms,
                pre_roll_ms: self.pre_roll_ms,
                trailing_silence_ms: self.trailing_silence_ms,
                max_utterance_ms: self.max_utterance_ms,
                pause_ms: self.speculate_ms,
            },
        }
    }
}

/// `[turn]`: Smart Turn, the learned end of turn (`voice/endturn.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// The Smart Turn ONNX file; relative paths are under the models directory; empty: off.
    pub model: String,
    /// Silence after speech before the model is asked, ms.
    pub pause_ms: u32,
    /// A probability above this ends the utterance.
    pub threshold: f64,
    /// The model, loaded and checked with the configuration (`None`: off).
    #[serde(skip)]
    pub engine: Option<std::sync::Arc<sotad_engines::turn::SmartTurn>>,
}

/// A configuration mistake: which key, which source, and what is wrong or allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `mqtt.port`; empty when the problem is a whole source.
    pub key: String,
    /// Where the offending value came from: a file path, "the environment", or the defaults.
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration ({}): {}", self.origin, self.message)
        } else {
            write!(
                f,
                "configuration key `{}` (from {}): {}",
                self.key, self.origin, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the file layer comes from.
#[derive(Debug, Clone)]
pub enum FileLayer {
    /// `--config PATH`: the file must exist.
    Explicit(PathBuf),
    /// `/etc/sotad/sotad.toml` if it exists.
    System,
    /// Defaults and environment only (tests, `sotad demo`).
    None,
}

impl Config {
    /// The device id used in topics: the configured one, or the hostname made topic-safe.
    pub fn device_id(&self) -> String {
        if !self.device.id.is_empty() {
            return self.device.id.clone();
        }
        device_id_from_hostname(&hostname())
    }

    /// The MQTT client id: the configured one, or `sotad-<device id>`.
    pub fn client_id(&self) -> String {
        if self.mqtt.client_id.is_empty() {
            format!("sotad-{}", self.device_id())
        } else {
            self.mqtt.client_id.clone()
        }
    }

    /// A model path from the configuration: absolute as given, relative under `models.dir`.
    /// `None` when the value is empty (the stage is off).
    pub fn model_path(&self, value: &str) -> Option<PathBuf> {
        if value.is_empty() {
            return None;
        }
        let path = Path::new(value);
        Some(if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.models_dir().join(path)
        })
    }

    /// `models.dir`, or when it is empty `$SOTAD_MODELS_DIR`, or `~/.cache/sotad/models`
    /// (where scripts/install-models.sh puts the models).
    pub fn models_dir(&self) -> PathBuf {
        if !self.models.dir.is_empty() {
            return PathBuf::from(&self.models.dir);
        }
        if let Some(dir) = std::env::var_os("SOTAD_MODELS_DIR") {
            return PathBuf::from(dir);
        }
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache/sotad/models")
    }

    /// True when sotad must start its own broker.
    pub fn uses_embedded_broker(&self) -> bool {
        self.mqtt.host.is_empty()
    }
}

/// Where installed microWakeWord models are, under `models.dir` (scripts/install-models.sh).
pub const WAKE_MODELS_DIR: &str = "microwakeword";

impl Config {
    /// The settings file (`.json`) of a wake or stop word as `voice.wake_words` gives it: a
    /// name of an installed model, or a path to a model's `.json` or `.tflite` (absolute, or
    /// under `models.dir`; a `.tflite` needs its `.json` beside it). The error says what is
    /// missing and which models are installed.
    pub fn wake_model(&self, value: &str) -> Result<PathBuf, String> {
        let installed_dir = self.models_dir().join(WAKE_MODELS_DIR);
        let installed = || {
            let mut names: Vec<String> = std::fs::read_dir(&installed_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".json").map(str::to_owned)
                })
                .collect();
            names.sort();
            if names.is_empty() {
                format!(
                    "no models are installed in {} (scripts/install-models.sh microwakeword)",
                    installed_dir.display()
                )
            } else {
                format!(
                    "installed in {}: {}",
                    installed_dir.display(),
                    names.join(", ")
                )
            }
        };
        if value.trim().is_empty() {
            return Err(format!("an empty name; {}", installed()));
        }
        let json = if value.ends_with(".json") || value.ends_with(".tflite") {
            let path = self.model_path(value).unwrap_or_default();
            let json = path.with_extension("json");
            if !path.is_file() {
                return Err(format!(
                    "{} does not exist; {}",
                    path.display(),
                    installed()
                ));
            }
            if !json.is_file() {
                return Err(format!(
                    "{} needs its settings file {} beside it (microWakeWord's JSON: wake_word, model, micro.probability_cutoff, micro.sliding_window_size)",
                    path.display(),
                    json.display()
                ));
            }
            json
        } else {
            if value.contains('/') {
                return Err(format!(
                    "neither a model name nor a path to a .json or .tflite file; {}",
                    installed()
                ));
            }
            let json = installed_dir.join(format!("{value}.json"));
            if !json.is_file() {
                return Err(format!("no such wake word model; {}", installed()));
            }
            json
        };
        Ok(json)
    }
}

/// The kernel's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Turns a host name into a valid device id: invalid characters become '-', and an empty
/// result becomes "sotad".
pub fn device_id_from_hostname(host: &str) -> String {
    let id: String = host
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "sotad".to_string()
    } else {
        id
    }
}

/// `[http]`: the OpenAI-compatible HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub enabled: bool,
    /// Address and port to listen on.
    pub listen: String,
    /// Bearer token required on every request but `/health`; empty: none.
    pub api_key: String,
    /// Largest JSON body, bytes.
    pub max_request_bytes: usize,
    /// Largest multipart upload, bytes.
    pub max_upload_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use config::Map;

    fn env(pairs: &[(&str, &str)]) -> Map<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load_file(text: &str) -> (tempfile::NamedTempFile, Result<Config, ConfigError>) {
        let f = file_with(text);
        let r = Config::load_with_env(FileLayer::Explicit(f.path().into()), env(&[]));
        (f, r)
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_with_env(FileLayer::None, env(&[])).unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.mqtt.prefix, "sotad");
        assert!(c.uses_embedded_broker());
        assert!(
            c.mqtt.max_packet_bytes >= 1_300_000,
            "fits a 30 s WAV as base64"
        );
        assert!(!c.device_id().is_empty());
        assert_eq!(c.audio.capture_config().device, "default");
        assert_eq!(c.audio.playback_config().device, "default");
        let d = c.vad.detector_config();
        assert!(d.gate.is_some());
        assert!(d.endpoint.neg_threshold < d.endpoint.threshold);
        assert!(
            c.model_path(&c.vad.model)
                .unwrap()
                .ends_with("silero-vad/silero_vad_16k_op15.onnx")
        );
    }

    #[test]
    fn shipped_board_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load_with_env(FileLayer::Explicit(path.clone()), env(&[]))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 4, "default + three boards, found {seen}");
    }

    #[test]
    fn the_low_latency_profile_sets_the_voice_loop_trades() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/low-latency.toml");
        let c = Config::load_with_env(FileLayer::Explicit(path), env(&[])).unwrap();
        let d = Config::load_with_env(FileLayer::None, env(&[])).unwrap();
        assert_eq!(c.stt.encoder_window, "fit");
        assert_eq!(d.stt.encoder_window, "full");
        assert!(c.voice.first_piece_words > 0 && d.voice.first_piece_words == 0);
        assert!(c.vad.speculate_ms < d.vad.speculate_ms);
        assert!(c.voice.first_audio_priority && d.voice.first_audio_priority);
        // Everything else is the defaults' (the profile is meant to be merged into a file).
        assert_eq!(c.mqtt.host, d.mqtt.host);
        assert_eq!(c.stt.model, d.stt.model);
        assert_eq!(c.llm.model, d.llm.model);
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let f = file_with("[mqtt]\nhost = \"broker.lan\"\nport = 8883\n");
        let c = Config::load_with_env(
            FileLayer::Explicit(f.path().into()),
            env(&[
                ("SOTAD__MQTT__PORT", "1884"),
                ("SOTAD__MQTT__TLS__ENABLED", "false"),
                ("SOTAD__TELEMETRY__THERMAL_ZONES", "cpu-thermal,gpu-thermal"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mqtt.host, "broker.lan");
        assert_eq!(c.mqtt.port, 1884);
        assert_eq!(
            c.telemetry.thermal_zones,
            vec!["cpu-thermal", "gpu-thermal"]
        );
        assert!(!c.uses_embedded_broker());
    }

    #[test]
    fn unknown_key_in_file_names_key_file_and_siblings() {
        let (f, r) = load_file("[mqtt]\nhots = \"x\"\n");
        let e = r.unwrap_err();
        assert_eq!(e.key, "mqtt.hots");
        assert_eq!(e.origin, f.path().display().to_string());
        assert!(e.message.contains("host"), "{e}");
        let (_f, r) = load_file("[mqttt]\nhost = \"x\"\n");
        assert_eq!(r.unwrap_err().key, "mqttt");
    }

    #[test]
    fn unknown_key_in_environment_is_rejected() {
        let e =
            Config::load_with_env(FileLayer::None, env(&[("SOTAD__MQTT__HOTS", "x")])).unwrap_err();
        assert_eq!(e.key, "mqtt.hots");
        assert_eq!(e.origin, "the environment");
    }

    #[test]
    fn wrong_type_names_key_and_source() {
        for text in ["[mqtt]\nport = \"abc\"\n", "[mqtt]\nport = 99999\n"] {
            let (f, r) = load_file(text);
            let e = r.unwrap_err();
            assert_eq!(e.key, "mqtt.port", "{text}");
            assert_eq!(e.origin, f.path().display().to_string(), "{text}");
            assert!(e.to_string().contains("wrong type"), "{e}");
        }
    }

    #[test]
    fn out_of_range_values_name_key_source_and_range() {
        for (text, key, allowed) in [
            ("[mqtt]\nport = 0\n", "mqtt.port", "1 to 65535"),
            (
                "[telemetry]\ninterval_secs = 0\n",
                "telemetry.interval_secs",
                "1 to 86400",
            ),
            (
                "[mqtt]\nmax_packet_bytes = 10\n",
                "mqtt.max_packet_bytes",
                "65536",
            ),
            (
                "[mqtt]\nreconnect_min_ms = 5000\nreconnect_max_ms = 100\n",
                "mqtt.reconnect_max_ms",
                "5000",
            ),
            ("[device]\nid = \"a/b\"\n", "device.id", "A-Z"),
            (
                "[llm]\nconversation_idle_s = 604801\n",
                "llm.conversation_idle_s",
                "0 to 604800",
            ),
            (
                "[voice]\nfirst_piece_words = 101\n",
                "voice.first_piece_words",
                "0 to 100",
            ),
            (
                "[stt]\nencoder_window = \"short\"\n",
                "stt.encoder_window",
                "\"fit\"",
            ),
            (
                "[stt]\nencoder_precision = \"int4\"\n",
                "stt.encoder_precision",
                "\"int8\"",
            ),
            ("[mqtt]\nprefix = \"a/#\"\n", "mqtt.prefix", "'+'"),
            (
                "[broker]\nlisten = \"localhost\"\n",
                "broker.listen",
                "address:port",
            ),
            ("[log]\nlevel = \"loud=???\"\n", "log.level", "debug"),
            (
                "[mqtt]\npassword = \"x\"\n",
                "mqtt.password",
                "mqtt.username",
            ),
            (
                "[audio]\ncapture_device = \"x\\u0001\"\n",
                "audio.capture_device",
                "ALSA PCM name",
            ),
            (
                "[audio]\nplayback_device = \"a\\nb\"\n",
                "audio.playback_device",
                "control",
            ),
            (
                "[audio]\nframe_queue = 0\n",
                "audio.frame_queue",
                "1 to 4096",
            ),
            (
                "[audio]\nretry_min_ms = 500\nretry_max_ms = 100\n",
                "audio.retry_max_ms",
                "500",
            ),
            ("[vad]\nmodel = \"vad.bin\"\n", "vad.model", ".onnx"),
            ("[vad]\nthreshold = 1.5\n", "vad.threshold", "0.05 to 0.95"),
            (
                "[vad]\nthreshold = 0.3\nneg_threshold = 0.4\n",
                "vad.neg_threshold",
                "0.3",
            ),
            (
                "[vad]\ntrailing_silence_ms = 10\n",
                "vad.trailing_silence_ms",
                "96",
            ),
            (
                "[vad]\nspeculate_ms = 10001\n",
                "vad.speculate_ms",
                "0 to 10000",
            ),
            (
                "[vad]\ncomplete_silence_ms = 20000\n",
                "vad.complete_silence_ms",
                "0 to 10000",
            ),
            ("[vad]\ngate_min_db = 3.0\n", "vad.gate_min_db", "-100 to 0"),
            (
                "[tts]\nfirst_chunk_ms = 20\n",
                "tts.first_chunk_ms",
                "50 to 10000",
            ),
        ] {
            let (f, r) = load_file(text);
            let e = r.unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert_eq!(e.origin, f.path().display().to_string(), "{text}");
            assert!(e.message.contains(allowed), "{text}: {e}");
        }
    }

    #[test]
    fn tls_files_are_checked_at_start_up() {
        let (_f, r) = load_file(
            "[mqtt]\nhost = \"b\"\n[mqtt.tls]\nenabled = true\nca_file = \"/nonexistent/ca.pem\"\n",
        );
        let e = r.unwrap_err();
        assert_eq!(e.key, "mqtt.tls.ca_file");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn the_intents_file_is_found_beside_the_config_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sotad.toml");
        std::fs::write(&config, "[intents]\nfile = \"robot.toml\"\n").unwrap();
        let load = || Config::load_with_env(FileLayer::Explicit(config.clone()), env(&[]));
        let intents = dir.path().join("robot.toml");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/intents/robot.toml"),
            &intents,
        )
        .unwrap();
        let c = load().unwrap();
        assert!(c.intents.set.as_ref().unwrap().intents.len() >= 8);
        for (text, says) in [
            (
                "[[intent]]\nname = \"go\"\nsentences = [\"go {where}\"]\n",
                ":3:18: in template \"go {where}\": slot `where` is referenced but not declared",
            ),
            (
                "[[intent]]\nname = \"go/left\"\nsentences = [\"go\"]\n",
                ":2: intent name \"go/left\" cannot be a topic level",
            ),
        ] {
            std::fs::write(&intents, text).unwrap();
            let e = load().unwrap_err();
            assert_eq!(e.key, "intents.file");
            assert_eq!(e.origin, config.display().to_string());
            let want = format!("{}{says}", intents.display());
            assert!(e.message.contains(&want), "{e}\nwanted {want}");
        }
        std::fs::remove_file(&intents).unwrap();
        assert!(
            load()
                .unwrap_err()
                .message
                .contains("cannot read the intents file")
        );
        // Off by default.
        let d = Config::load_with_env(FileLayer::None, env(&[])).unwrap();
        assert!(d.intents.set.is_none());
    }

    #[test]
    fn missing_explicit_file_and_bad_toml_are_reported() {
        let e = Config::load_with_env(
            FileLayer::Explicit("/nonexistent/sotad.toml".into()),
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/sotad.toml"), "{e}");
        let (_f, r) = load_file("[mqtt\nhost=");
        assert!(r.unwrap_err().message.contains("TOML"));
    }

    #[test]
    fn hostname_becomes_a_topic_safe_device_id() {
        assert_eq!(device_id_from_hostname("pi 4/kitchen"), "pi-4-kitchen");
        assert_eq!(device_id_from_hostname(""), "sotad");
        assert_eq!(device_id_from_hostname("robot-1.lan"), "robot-1.lan");
    }
}
