//! Configuration: one serde tree that mirrors `configs/default.toml`.
//!
//! Layers, each overriding the one before: the built-in defaults (that very file, embedded),
//! then `/etc/sotad/sotad.toml` or `--config PATH`, then `SOTAD__SECTION__KEY` environment
//! variables. Every key that the defaults do not have is rejected, and every value is checked
//! here, at start-up, so that a mistake names its key, its source and what is allowed.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use config::{Config as Layers, Environment, File, FileFormat, Map, Source, Value, ValueKind};
use serde::Deserialize;

/// The fully commented default configuration, printed by `sotad config default`.
pub const DEFAULT_TOML: &str = include_str!("../../configs/default.toml");

/// Where sotad looks for its configuration when no `--config` is given.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/sotad/sotad.toml";

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SOTAD";

const DEFAULTS_ORIGIN: &str = "the built-in defaults";

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

/// Checks that an integer key lies within bounds: (key, value, lowest, highest).
type RangeCheck<'a> = dyn Fn(&str, u64, u64, u64) -> Result<(), ConfigError> + 'a;

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
    /// Loads the layers from the process environment.
    pub fn load(file: FileLayer) -> Result<Config, ConfigError> {
        let env: Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        Self::load_with_env(file, env)
    }

    /// Loads the layers with an explicit set of environment variables (for tests).
    pub fn load_with_env(file: FileLayer, env: Map<String, String>) -> Result<Config, ConfigError> {
        let mut builder =
            Layers::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        match &file {
            FileLayer::Explicit(path) => {
                check_readable(path)?;
                builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
            }
            FileLayer::System => {
                let path = Path::new(SYSTEM_CONFIG_PATH);
                if path.exists() {
                    check_readable(path)?;
                    builder = builder.add_source(File::from(path).format(FileFormat::Toml));
                }
            }
            FileLayer::None => {}
        }
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("telemetry.thermal_zones")
                .try_parsing(true)
                .source(Some(env)),
        );
        let layers = builder.build().map_err(|e| from_config_error(&file, e))?;

        let merged = layers.collect().map_err(|e| from_config_error(&file, e))?;
        reject_unknown_keys(&merged, &file)?;

        let config: Config = layers.try_deserialize().map_err(|e| {
            let mut error = from_config_error(&file, e);
            // Conversion errors (e.g. 99999 for a u16) come without an origin; look it up.
            if !error.key.is_empty() && error.origin == DEFAULTS_ORIGIN {
                error.origin = origin_of(&merged, &error.key, &file);
            }
            error
        })?;
        config.validate(&|key| origin_of(&merged, key, &file))?;
        Ok(config)
    }

    /// Checks every value against what is allowed. `origin` names the source of a key.
    fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| ConfigError {
            key: key.to_string(),
            origin: origin(key),
            message,
        };
        let range = |key: &str, value: u64, lo: u64, hi: u64| {
            if value < lo || value > hi {
                Err(fail(
                    key,
                    format!("{value} is out of range; allowed: {lo} to {hi}"),
                ))
            } else {
                Ok(())
            }
        };

        if !self.device.id.is_empty() && !is_valid_device_id(&self.device.id) {
            return Err(fail(
                "device.id",
                format!(
                    "{:?} is not allowed; allowed: 1-64 characters from A-Z a-z 0-9 _ . - (or empty for the hostname)",
                    self.device.id
                ),
            ));
        }
        let m = &self.mqtt;
        if !m.host.is_empty() && (m.host.contains(char::is_whitespace) || m.host.contains('/')) {
            return Err(fail(
                "mqtt.host",
                format!(
                    "{:?} is not a host name or address (write it without scheme or port; the port is mqtt.port)",
                    m.host
                ),
            ));
        }
        range("mqtt.port", u64::from(m.port), 1, 65535)?;
        if !is_valid_topic_level(&m.prefix) {
            return Err(fail(
                "mqtt.prefix",
                format!(
                    "{:?} is not allowed; allowed: 1-64 characters without '+', '#', '/', NUL or spaces",
                    m.prefix
                ),
            ));
        }
        if m.client_id.len() > 128 {
            return Err(fail(
                "mqtt.client_id",
                "is longer than 128 bytes; allowed: up to 128 bytes, or empty for sotad-<device id>"
                    .to_string(),
            ));
        }
        if !m.password.is_empty() && !m.password_file.is_empty() {
            return Err(fail(
                "mqtt.password_file",
                "is set together with mqtt.password; set one of them".to_string(),
            ));
        }
        if (!m.password.is_empty() || !m.password_file.is_empty()) && m.username.is_empty() {
            let key = if m.password.is_empty() {
                "mqtt.password_file"
            } else {
                "mqtt.password"
            };
            return Err(fail(
                key,
                "is set but mqtt.username is empty; MQTT sends a password only with a user name"
                    .to_string(),
            ));
        }
        if !m.password_file.is_empty() {
            check_readable(Path::new(&m.password_file))
                .map_err(|e| fail("mqtt.password_file", e.message))?;
        }
        range("mqtt.keep_alive_secs", m.keep_alive_secs, 5, 3600)?;
        range("mqtt.connect_timeout_secs", m.connect_timeout_secs, 1, 300)?;
        range(
            "mqtt.max_packet_bytes",
            m.max_packet_bytes as u64,
            65_536,
            268_435_455,
        )?;
        range(
            "mqtt.max_request_bytes",
            m.max_request_bytes as u64,
            1024,
            m.max_packet_bytes as u64,
        )?;
        range("mqtt.reconnect_min_ms", m.reconnect_min_ms, 10, 600_000)?;
        range(
            "mqtt.reconnect_max_ms",
            m.reconnect_max_ms,
            m.reconnect_min_ms,
            3_600_000,
        )?;
        if m.tls.enabled {
            if m.host.is_empty() {
                return Err(fail(
                    "mqtt.tls.enabled",
                    "is true but mqtt.host is empty: the embedded broker speaks plain MQTT on loopback; set mqtt.host or turn TLS off".to_string(),
                ));
            }
            check_readable(Path::new(&m.tls.ca_file))
                .map_err(|e| fail("mqtt.tls.ca_file", e.message))?;
            match (
                m.tls.client_cert_file.is_empty(),
                m.tls.client_key_file.is_empty(),
            ) {
                (true, true) => {}
                (false, false) => {
                    check_readable(Path::new(&m.tls.client_cert_file))
                        .map_err(|e| fail("mqtt.tls.client_cert_file", e.message))?;
                    check_readable(Path::new(&m.tls.client_key_file))
                        .map_err(|e| fail("mqtt.tls.client_key_file", e.message))?;
                }
                (true, false) => {
                    return Err(fail(
                        "mqtt.tls.client_cert_file",
                        "is empty but mqtt.tls.client_key_file is set; set both or neither"
                            .to_string(),
                    ));
                }
                (false, true) => {
                    return Err(fail(
                        "mqtt.tls.client_key_file",
                        "is empty but mqtt.tls.client_cert_file is set; set both or neither"
                            .to_string(),
                    ));
                }
            }
        }
        if self.broker.listen.parse::<SocketAddr>().is_err() {
            return Err(fail(
                "broker.listen",
                format!(
                    "{:?} is not an address:port; allowed e.g. \"127.0.0.1:1883\" or \"[::1]:1883\"",
                    self.broker.listen
                ),
            ));
        }
        range(
            "service.request_queue",
            self.service.request_queue as u64,
            1,
            4096,
        )?;
        range(
            "service.shutdown_timeout_secs",
            self.service.shutdown_timeout_secs,
            0,
            300,
        )?;
        range(
            "telemetry.interval_secs",
            self.telemetry.interval_secs,
            1,
            86_400,
        )?;
        if !self.stt.language.is_empty()
            && !(self.stt.language.len() <= 3
                && self.stt.language.chars().all(|c| c.is_ascii_lowercase()))
        {
            return Err(fail(
                "stt.language",
                format!(
                    "{:?} is not a language code; allowed: an ISO 639-1 code such as \"en\" or \"de\", or empty to detect",
                    self.stt.language
                ),
            ));
        }
        if !matches!(self.stt.encoder_window.as_str(), "full" | "fit") {
            return Err(fail(
                "stt.encoder_window",
                format!(
                    "{:?} is not an encoder window; allowed: \"full\" (the 30 s window, transcripts as faster-whisper's) or \"fit\" (the audio plus 2 s, at least 5 s: faster, transcripts change)",
                    self.stt.encoder_window
                ),
            ));
        }
        range("stt.beam_size", self.stt.beam_size as u64, 1, 8)?;
        range("stt.threads", self.stt.threads as u64, 0, 256)?;
        range(
            "stt.decoder_threads",
            self.stt.decoder_threads as u64,
            0,
            256,
        )?;
        let l = &self.llm;
        range("llm.context", l.context as u64, 64, 131_072)?;
        range("llm.threads", l.threads as u64, 0, 256)?;
        range("llm.max_tokens", l.max_tokens as u64, 1, l.context as u64)?;
        let float = |key: &str, value: f32, lo: f32, hi: f32| {
            if value.is_finite() && value >= lo && value <= hi {
                Ok(())
            } else {
                Err(fail(
                    key,
                    format!("{value} is out of range; allowed: {lo} to {hi}"),
                ))
            }
        };
        float("llm.temperature", l.temperature, 0.0, 5.0)?;
        range("llm.top_k", l.top_k as u64, 0, 100_000)?;
        float("llm.top_p", l.top_p, 0.0, 1.0)?;
        float("llm.min_p", l.min_p, 0.0, 1.0)?;
        float("llm.repeat_penalty", l.repeat_penalty, 0.5, 3.0)?;
        range("llm.sessions", l.sessions as u64, 0, 1024)?;
        range("llm.session_turns", l.session_turns as u64, 1, 256)?;
        range("tts.threads", self.tts.threads as u64, 0, 256)?;
        let first = self.tts.first_chunk_ms;
        if first != 0 && !(50..=10_000).contains(&first) {
            return Err(fail(
                "tts.first_chunk_ms",
                format!("{first} is out of range; allowed: 0 (whole sentences) or 50 to 10000"),
            ));
        }
        self.validate_audio(&fail, &range)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(fail(
                "log.level",
                format!(
                    "{:?} is not a log filter ({e}); allowed: error, warn, info, debug, trace, or e.g. \"info,sotad=debug\"",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    fn validate_audio(
        &self,
        fail: &dyn Fn(&str, String) -> ConfigError,
        range: &RangeCheck<'_>,
    ) -> Result<(), ConfigError> {
        let frange = |key: &str, value: f64, lo: f64, hi: f64| {
            if !(lo..=hi).contains(&value) {
                Err(fail(
                    key,
                    format!("{value} is out of range; allowed: {lo} to {hi}"),
                ))
            } else {
                Ok(())
            }
        };
        let a = &self.audio;
        for (key, name) in [
            ("audio.capture_device", &a.capture_device),
            ("audio.playback_device", &a.playback_device),
        ] {
            if name.len() > 256 || name.contains(char::is_control) {
                return Err(fail(
                    key,
                    format!(
                        "{name:?} is not an ALSA PCM name; allowed: up to 256 characters without control characters, e.g. \"default\" or \"plughw:CARD=Device,DEV=0\", or empty for none"
                    ),
                ));
            }
        }
        range(
            "audio.capture_buffer_ms",
            u64::from(a.capture_buffer_ms),
            20,
            2000,
        )?;
        range(
            "audio.playback_buffer_ms",
            u64::from(a.playback_buffer_ms),
            20,
            2000,
        )?;
        range("audio.frame_queue", a.frame_queue as u64, 1, 4096)?;
        range("audio.playback_queue", a.playback_queue as u64, 1, 4096)?;
        range("audio.retry_min_ms", a.retry_min_ms, 10, 60_000)?;
        range(
            "audio.retry_max_ms",
            a.retry_max_ms,
            a.retry_min_ms,
            600_000,
        )?;

        let v = &self.vad;
        if v.model.is_empty() || !v.model.ends_with(".onnx") {
            return Err(fail(
                "vad.model",
                format!(
                    "{:?} is not an ONNX file name; allowed: a path ending in .onnx (relative: under the models directory), e.g. \"silero-vad/silero_vad_16k_op15.onnx\"",
                    v.model
                ),
            ));
        }
        frange("vad.threshold", v.threshold, 0.05, 0.95)?;
        frange("vad.neg_threshold", v.neg_threshold, 0.01, v.threshold)?;
        range("vad.min_speech_ms", u64::from(v.min_speech_ms), 32, 5000)?;
        range("vad.pre_roll_ms", u64::from(v.pre_roll_ms), 0, 2000)?;
        range(
            "vad.trailing_silence_ms",
            u64::from(v.trailing_silence_ms),
            96,
            10_000,
        )?;
        // At or above the trailing silence it never fires (the endpoint comes first); not an
        // error, so that shortening `trailing_silence_ms` alone stays valid.
        range("vad.speculate_ms", u64::from(v.speculate_ms), 0, 10_000)?;
        range(
            "voice.first_piece_words",
            self.voice.first_piece_words as u64,
            0,
            100,
        )?;
        // Likewise: it only acts after a pause (`speculate_ms`) and before the endpoint.
        range(
            "vad.complete_silence_ms",
            u64::from(v.complete_silence_ms),
            0,
            10_000,
        )?;
        range(
            "vad.max_utterance_ms",
            u64::from(v.max_utterance_ms),
            1000,
            120_000,
        )?;
        frange("vad.gate_min_db", v.gate_min_db, -100.0, 0.0)?;
        frange("vad.gate_margin_db", v.gate_margin_db, 0.0, 40.0)?;
        frange("vad.gate_rise_db_per_s", v.gate_rise_db_per_s, 0.1, 60.0)?;
        range(
            "vad.gate_hangover_ms",
            u64::from(v.gate_hangover_ms),
            0,
            5000,
        )?;
        Ok(())
    }

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

fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigError {
            key: String::new(),
            origin: path.display().to_string(),
            message: format!("cannot read {}: {e}", path.display()),
        })
}

/// Names a value's source for the user: the config crate records files by a path relative to
/// the working directory, so the file layer is shown as it was given instead.
fn display_origin(origin: Option<&str>, file: &FileLayer) -> String {
    match (origin, file) {
        (None, _) => DEFAULTS_ORIGIN.to_string(),
        (Some("the environment"), _) => "the environment".to_string(),
        (Some(_), FileLayer::Explicit(path)) => path.display().to_string(),
        (Some(_), FileLayer::System) => SYSTEM_CONFIG_PATH.to_string(),
        (Some(other), FileLayer::None) => other.to_string(),
    }
}

fn from_config_error(file: &FileLayer, error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => ConfigError {
            key: key.unwrap_or_default(),
            origin: display_origin(origin.as_deref(), file),
            message: format!("has the wrong type: found {unexpected}, expected {expected}"),
        },
        config::ConfigError::FileParse { uri, cause } => ConfigError {
            key: String::new(),
            origin: display_origin(uri.as_deref(), file),
            message: format!("is not valid TOML: {cause}"),
        },
        config::ConfigError::NotFound(key) => ConfigError {
            key,
            origin: DEFAULTS_ORIGIN.to_string(),
            message: "is missing".to_string(),
        },
        other => ConfigError {
            key: String::new(),
            origin: match file {
                FileLayer::Explicit(p) => p.display().to_string(),
                FileLayer::System => SYSTEM_CONFIG_PATH.to_string(),
                FileLayer::None => "the environment".to_string(),
            },
            message: other.to_string(),
        },
    }
}

/// Every dotted key of a value tree, tables included.
fn keys_of(map: &Map<String, Value>, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push((key.clone(), v.clone()));
        if let ValueKind::Table(t) = &v.kind {
            keys_of(t, &key, out);
        }
    }
}

fn default_keys() -> BTreeSet<String> {
    let defaults = File::from_str(DEFAULT_TOML, FileFormat::Toml)
        .collect()
        .expect("the embedded default config is valid TOML (checked by a unit test)");
    let mut all = Vec::new();
    keys_of(&defaults, "", &mut all);
    all.into_iter().map(|(k, _)| k).collect()
}

fn reject_unknown_keys(merged: &Map<String, Value>, file: &FileLayer) -> Result<(), ConfigError> {
    let known = default_keys();
    let mut all = Vec::new();
    keys_of(merged, "", &mut all);
    for (key, value) in all {
        if known.contains(&key) {
            continue;
        }
        let (section, _) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        let siblings: Vec<&str> = known
            .iter()
            .filter_map(|k| {
                let (s, leaf) = k.rsplit_once('.').unwrap_or(("", k.as_str()));
                (s == section).then_some(leaf)
            })
            .collect();
        let where_ = if section.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in [{section}]")
        };
        return Err(ConfigError {
            key: key.clone(),
            origin: display_origin(value.origin(), file),
            message: format!(
                "is not a known key; known keys {where_}: {}",
                siblings.join(", ")
            ),
        });
    }
    Ok(())
}

fn origin_of(merged: &Map<String, Value>, key: &str, file: &FileLayer) -> String {
    let mut parts = key.split('.');
    let mut value = parts.next().and_then(|first| merged.get(first));
    for part in parts {
        value = match value.map(|v| &v.kind) {
            Some(ValueKind::Table(t)) => t.get(part),
            _ => None,
        };
    }
    display_origin(value.and_then(Value::origin), file)
}

fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_valid_topic_level(level: &str) -> bool {
    !level.is_empty()
        && level.len() <= 64
        && !level
            .chars()
            .any(|c| matches!(c, '+' | '#' | '/' | '\0') || c.is_whitespace())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
                "[voice]\nfirst_piece_words = 101\n",
                "voice.first_piece_words",
                "0 to 100",
            ),
            (
                "[stt]\nencoder_window = \"short\"\n",
                "stt.encoder_window",
                "\"fit\"",
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
