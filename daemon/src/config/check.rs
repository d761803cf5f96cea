//! The checks of every value, one function per section, run in a fixed order at start-up: the
//! first mistake found is reported, naming its key, its source and what is allowed.

use std::net::SocketAddr;
use std::path::Path;

use super::{Config, ConfigError};

/// Builds the errors of one validation: `origin` names the source of a key.
struct Checker<'a> {
    origin: &'a dyn Fn(&str) -> String,
}

impl Checker<'_> {
    /// The error for `key`, with the source it came from.
    fn fail(&self, key: &str, message: String) -> ConfigError {
        ConfigError {
            key: key.to_string(),
            origin: (self.origin)(key),
            message,
        }
    }

    /// Checks that an integer key lies within `lo..=hi`.
    fn range(&self, key: &str, value: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
        if value < lo || value > hi {
            Err(self.fail(
                key,
                format!("{value} is out of range; allowed: {lo} to {hi}"),
            ))
        } else {
            Ok(())
        }
    }

    /// Checks that an `f32` key is finite and lies within `lo..=hi`.
    fn float(&self, key: &str, value: f32, lo: f32, hi: f32) -> Result<(), ConfigError> {
        if value.is_finite() && value >= lo && value <= hi {
            Ok(())
        } else {
            Err(self.fail(
                key,
                format!("{value} is out of range; allowed: {lo} to {hi}"),
            ))
        }
    }

    /// Checks that an `f64` key lies within `lo..=hi`.
    fn frange(&self, key: &str, value: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
        if !(lo..=hi).contains(&value) {
            Err(self.fail(
                key,
                format!("{value} is out of range; allowed: {lo} to {hi}"),
            ))
        } else {
            Ok(())
        }
    }
}

impl Config {
    /// Checks every value against what is allowed. `origin` names the source of a key.
    pub(super) fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let c = &Checker { origin };
        self.device(c)?;
        self.mqtt(c)?;
        self.broker(c)?;
        self.service(c)?;
        self.telemetry(c)?;
        self.stt(c)?;
        self.llm(c)?;
        self.tts(c)?;
        self.audio(c)?;
        // `voice.first_piece_words` has always been checked between `vad.speculate_ms` and
        // `vad.complete_silence_ms`; the split keeps which mistake is reported first.
        self.vad(c)?;
        self.voice(c)?;
        self.vad_rest(c)?;
        self.turn(c)?;
        self.log(c)?;
        self.intents(c)?;
        self.homeassistant(c)?;
        self.wyoming(c)?;
        self.http(c)?;
        self.wake(c)
    }

    fn homeassistant(&self, c: &Checker) -> Result<(), ConfigError> {
        if !is_valid_topic_level(&self.homeassistant.prefix) {
            return Err(c.fail(
                "homeassistant.prefix",
                format!(
                    "{:?} is not allowed; allowed: 1-64 characters without '+', '#', '/', NUL or spaces (Home Assistant's default is \"homeassistant\")",
                    self.homeassistant.prefix
                ),
            ));
        }
        Ok(())
    }

    fn wyoming(&self, c: &Checker) -> Result<(), ConfigError> {
        let w = &self.wyoming;
        if w.listen.parse::<SocketAddr>().is_err() {
            return Err(c.fail(
                "wyoming.listen",
                format!(
                    "{:?} is not an address:port; allowed e.g. \"0.0.0.0:10700\" or \"127.0.0.1:10700\"",
                    w.listen
                ),
            ));
        }
        if w.name.len() > 63 || w.name.contains('.') {
            return Err(c.fail(
                "wyoming.name",
                format!(
                    "{:?} is not a zeroconf instance name; allowed: up to 63 bytes without '.' (empty: sotad-<device id>)",
                    w.name
                ),
            ));
        }
        c.range("wyoming.max_connections", w.max_connections as u64, 1, 1024)?;
        c.range("wyoming.max_audio_s", u64::from(w.max_audio_s), 1, 600)
    }

    fn http(&self, c: &Checker) -> Result<(), ConfigError> {
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(c.fail(
                "http.listen",
                format!(
                    "{:?} is not an address:port; allowed e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    self.http.listen
                ),
            ));
        }
        if self.http.api_key.chars().any(|ch| !ch.is_ascii_graphic()) {
            return Err(c.fail(
                "http.api_key",
                "has a character that cannot go in an HTTP header; allowed: printable ASCII without spaces".into(),
            ));
        }
        c.range(
            "http.max_request_bytes",
            self.http.max_request_bytes as u64,
            1024,
            64 << 20,
        )?;
        c.range(
            "http.max_upload_bytes",
            self.http.max_upload_bytes as u64,
            1024,
            256 << 20,
        )
    }

    fn intents(&self, c: &Checker) -> Result<(), ConfigError> {
        c.range(
            "intents.reply_timeout_ms",
            self.intents.reply_timeout_ms,
            100,
            600_000,
        )?;
        let m = self.intents.fuzzy_min_confidence;
        if !(0.5..=1.0).contains(&m) {
            return Err(c.fail(
                "intents.fuzzy_min_confidence",
                format!("{m} is not allowed; allowed: 0.5 to 1.0 (below 0.8 ordinary sentences may become commands: docs/benchmarks.md)"),
            ));
        }
        Ok(())
    }

    fn device(&self, c: &Checker) -> Result<(), ConfigError> {
        if !self.device.id.is_empty() && !is_valid_device_id(&self.device.id) {
            return Err(c.fail(
                "device.id",
                format!(
                    "{:?} is not allowed; allowed: 1-64 characters from A-Z a-z 0-9 _ . - (or empty for the hostname)",
                    self.device.id
                ),
            ));
        }
        Ok(())
    }

    fn mqtt(&self, c: &Checker) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if !m.host.is_empty() && (m.host.contains(char::is_whitespace) || m.host.contains('/')) {
            return Err(c.fail(
                "mqtt.host",
                format!(
                    "{:?} is not a host name or address (write it without scheme or port; the port is mqtt.port)",
                    m.host
                ),
            ));
        }
        c.range("mqtt.port", u64::from(m.port), 1, 65535)?;
        if !is_valid_topic_level(&m.prefix) {
            return Err(c.fail(
                "mqtt.prefix",
                format!(
                    "{:?} is not allowed; allowed: 1-64 characters without '+', '#', '/', NUL or spaces",
                    m.prefix
                ),
            ));
        }
        if m.client_id.len() > 128 {
            return Err(c.fail(
                "mqtt.client_id",
                "is longer than 128 bytes; allowed: up to 128 bytes, or empty for sotad-<device id>"
                    .to_string(),
            ));
        }
        if !m.password.is_empty() && !m.password_file.is_empty() {
            return Err(c.fail(
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
            return Err(c.fail(
                key,
                "is set but mqtt.username is empty; MQTT sends a password only with a user name"
                    .to_string(),
            ));
        }
        if !m.password_file.is_empty() {
            check_readable(Path::new(&m.password_file))
                .map_err(|e| c.fail("mqtt.password_file", e.message))?;
        }
        c.range("mqtt.keep_alive_secs", m.keep_alive_secs, 5, 3600)?;
        c.range("mqtt.connect_timeout_secs", m.connect_timeout_secs, 1, 300)?;
        c.range(
            "mqtt.max_packet_bytes",
            m.max_packet_bytes as u64,
            65_536,
            268_435_455,
        )?;
        c.range(
            "mqtt.max_request_bytes",
            m.max_request_bytes as u64,
            1024,
            m.max_packet_bytes as u64,
        )?;
        c.range("mqtt.reconnect_min_ms", m.reconnect_min_ms, 10, 600_000)?;
        c.range(
            "mqtt.reconnect_max_ms",
            m.reconnect_max_ms,
            m.reconnect_min_ms,
            3_600_000,
        )?;
        self.tls(c)
    }

    fn tls(&self, c: &Checker) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if m.tls.enabled {
            if m.host.is_empty() {
                return Err(c.fail(
                    "mqtt.tls.enabled",
                    "is true but mqtt.host is empty: the embedded broker speaks plain MQTT on loopback; set mqtt.host or turn TLS off".to_string(),
                ));
            }
            check_readable(Path::new(&m.tls.ca_file))
                .map_err(|e| c.fail("mqtt.tls.ca_file", e.message))?;
            match (
                m.tls.client_cert_file.is_empty(),
                m.tls.client_key_file.is_empty(),
            ) {
                (true, true) => {}
                (false, false) => {
                    check_readable(Path::new(&m.tls.client_cert_file))
                        .map_err(|e| c.fail("mqtt.tls.client_cert_file", e.message))?;
                    check_readable(Path::new(&m.tls.client_key_file))
                        .map_err(|e| c.fail("mqtt.tls.client_key_file", e.message))?;
                }
                (true, false) => {
                    return Err(c.fail(
                        "mqtt.tls.client_cert_file",
                        "is empty but mqtt.tls.client_key_file is set; set both or neither"
                            .to_string(),
                    ));
                }
                (false, true) => {
                    return Err(c.fail(
                        "mqtt.tls.client_key_file",
                        "is empty but mqtt.tls.client_cert_file is set; set both or neither"
                            .to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn broker(&self, c: &Checker) -> Result<(), ConfigError> {
        if self.broker.listen.parse::<SocketAddr>().is_err() {
            return Err(c.fail(
                "broker.listen",
                format!(
                    "{:?} is not an address:port; allowed e.g. \"127.0.0.1:1883\" or \"[::1]:1883\"",
                    self.broker.listen
                ),
            ));
        }
        Ok(())
    }

    fn service(&self, c: &Checker) -> Result<(), ConfigError> {
        c.range(
            "service.request_queue",
            self.service.request_queue as u64,
            1,
            4096,
        )?;
        c.range(
            "service.shutdown_timeout_secs",
            self.service.shutdown_timeout_secs,
            0,
            300,
        )
    }

    fn telemetry(&self, c: &Checker) -> Result<(), ConfigError> {
        c.range(
            "telemetry.interval_secs",
            self.telemetry.interval_secs,
            1,
            86_400,
        )
    }

    fn stt(&self, c: &Checker) -> Result<(), ConfigError> {
        if !self.stt.language.is_empty()
            && !(self.stt.language.len() <= 3
                && self.stt.language.chars().all(|ch| ch.is_ascii_lowercase()))
        {
            return Err(c.fail(
                "stt.language",
                format!(
                    "{:?} is not a language code; allowed: an ISO 639-1 code such as \"en\" or \"de\", or empty to detect",
                    self.stt.language
                ),
            ));
        }
        if !matches!(self.stt.encoder_window.as_str(), "full" | "fit") {
            return Err(c.fail(
                "stt.encoder_window",
                format!(
                    "{:?} is not an encoder window; allowed: \"full\" (the 30 s window, transcripts as faster-whisper's) or \"fit\" (the audio plus 2 s, at least 5 s: faster, transcripts change)",
                    self.stt.encoder_window
                ),
            ));
        }
        if !matches!(self.stt.encoder_precision.as_str(), "f32" | "int8") {
            return Err(c.fail(
                "stt.encoder_precision",
                format!(
                    "{:?} is not an encoder precision; allowed: \"f32\" (transcripts as faster-whisper float32's) or \"int8\" (the linear layers in int8: faster, transcripts may change)",
                    self.stt.encoder_precision
                ),
            ));
        }
        c.range("stt.beam_size", self.stt.beam_size as u64, 1, 8)?;
        c.range("stt.threads", self.stt.threads as u64, 0, 256)?;
        c.range(
            "stt.decoder_threads",
            self.stt.decoder_threads as u64,
            0,
            256,
        )
    }

    fn llm(&self, c: &Checker) -> Result<(), ConfigError> {
        let l = &self.llm;
        c.range("llm.context", l.context as u64, 64, 131_072)?;
        c.range("llm.threads", l.threads as u64, 0, 256)?;
        c.range("llm.max_tokens", l.max_tokens as u64, 1, l.context as u64)?;
        c.float("llm.temperature", l.temperature, 0.0, 5.0)?;
        c.range("llm.top_k", l.top_k as u64, 0, 100_000)?;
        c.float("llm.top_p", l.top_p, 0.0, 1.0)?;
        c.float("llm.min_p", l.min_p, 0.0, 1.0)?;
        c.float("llm.repeat_penalty", l.repeat_penalty, 0.5, 3.0)?;
        c.range("llm.sessions", l.sessions as u64, 0, 1024)?;
        c.range("llm.session_turns", l.session_turns as u64, 1, 256)?;
        c.range("llm.conversation_idle_s", l.conversation_idle_s, 0, 604_800)
    }

    fn tts(&self, c: &Checker) -> Result<(), ConfigError> {
        c.range("tts.threads", self.tts.threads as u64, 0, 256)?;
        let first = self.tts.first_chunk_ms;
        if first != 0 && !(50..=10_000).contains(&first) {
            return Err(c.fail(
                "tts.first_chunk_ms",
                format!("{first} is out of range; allowed: 0 (whole sentences) or 50 to 10000"),
            ));
        }
        Ok(())
    }

    fn audio(&self, c: &Checker) -> Result<(), ConfigError> {
        let a = &self.audio;
        for (key, name) in [
            ("audio.capture_device", &a.capture_device),
            ("audio.playback_device", &a.playback_device),
        ] {
            if name.len() > 256 || name.contains(char::is_control) {
                return Err(c.fail(
                    key,
                    format!(
                        "{name:?} is not an ALSA PCM name; allowed: up to 256 characters without control characters, e.g. \"default\" or \"plughw:CARD=Device,DEV=0\", or empty for none"
                    ),
                ));
            }
        }
        c.range(
            "audio.capture_buffer_ms",
            u64::from(a.capture_buffer_ms),
            20,
            2000,
        )?;
        c.range(
            "audio.playback_buffer_ms",
            u64::from(a.playback_buffer_ms),
            20,
            2000,
        )?;
        c.range("audio.frame_queue", a.frame_queue as u64, 1, 4096)?;
        c.range("audio.playback_queue", a.playback_queue as u64, 1, 4096)?;
        c.range("audio.retry_min_ms", a.retry_min_ms, 10, 60_000)?;
        c.range(
            "audio.retry_max_ms",
            a.retry_max_ms,
            a.retry_min_ms,
            600_000,
        )
    }

    /// `[vad]` up to `speculate_ms`; the rest is `vad_rest`, after `[voice]`.
    fn vad(&self, c: &Checker) -> Result<(), ConfigError> {
        let v = &self.vad;
        if v.model.is_empty() || !v.model.ends_with(".onnx") {
            return Err(c.fail(
                "vad.model",
                format!(
                    "{:?} is not an ONNX file name; allowed: a path ending in .onnx (relative: under the models directory), e.g. \"silero-vad/silero_vad_16k_op15.onnx\"",
                    v.model
                ),
            ));
        }
        c.frange("vad.threshold", v.threshold, 0.05, 0.95)?;
        c.frange("vad.neg_threshold", v.neg_threshold, 0.01, v.threshold)?;
        c.range("vad.min_speech_ms", u64::from(v.min_speech_ms), 32, 5000)?;
        c.range("vad.pre_roll_ms", u64::from(v.pre_roll_ms), 0, 2000)?;
        c.range(
            "vad.trailing_silence_ms",
            u64::from(v.trailing_silence_ms),
            96,
            10_000,
        )?;
        // At or above the trailing silence it never fires (the endpoint comes first); not an
        // error, so that shortening `trailing_silence_ms` alone stays valid.
        c.range("vad.speculate_ms", u64::from(v.speculate_ms), 0, 10_000)
    }

    fn voice(&self, c: &Checker) -> Result<(), ConfigError> {
        c.range(
            "voice.first_piece_words",
            self.voice.first_piece_words as u64,
            0,
            100,
        )
    }

    /// `[turn]` (the model itself is loaded by `load_turn`).
    fn turn(&self, c: &Checker) -> Result<(), ConfigError> {
        let t = &self.turn;
        if !t.model.is_empty() && !t.model.ends_with(".onnx") {
            return Err(c.fail(
                "turn.model",
                format!(
                    "{:?} is not an ONNX file name; allowed: a path ending in .onnx (relative: under the models directory), e.g. \"smart-turn/smart-turn-v3.2-cpu.onnx\", or \"\" (off)",
                    t.model
                ),
            ));
        }
        c.range("turn.pause_ms", u64::from(t.pause_ms), 0, 10_000)?;
        c.frange("turn.threshold", t.threshold, 0.01, 0.99)
    }

    /// `[vad]` from `complete_silence_ms` on.
    fn vad_rest(&self, c: &Checker) -> Result<(), ConfigError> {
        let v = &self.vad;
        // Likewise: it only acts after a pause (`speculate_ms`) and before the endpoint.
        c.range(
            "vad.complete_silence_ms",
            u64::from(v.complete_silence_ms),
            0,
            10_000,
        )?;
        c.range(
            "vad.max_utterance_ms",
            u64::from(v.max_utterance_ms),
            1000,
            120_000,
        )?;
        c.frange("vad.gate_min_db", v.gate_min_db, -100.0, 0.0)?;
        c.frange("vad.gate_margin_db", v.gate_margin_db, 0.0, 40.0)?;
        c.frange("vad.gate_rise_db_per_s", v.gate_rise_db_per_s, 0.1, 60.0)?;
        c.range(
            "vad.gate_hangover_ms",
            u64::from(v.gate_hangover_ms),
            0,
            5000,
        )
    }

    fn log(&self, c: &Checker) -> Result<(), ConfigError> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(c.fail(
                "log.level",
                format!(
                    "{:?} is not a log filter ({e}); allowed: error, warn, info, debug, trace, or e.g. \"info,sotad=debug\"",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }
}

/// Reads and checks the intents file `intents.file` names, if any: a relative path is taken
/// from `dir` (the directory of the configuration file that set it). Every intent name must
/// be usable as a topic level (the rule of request ids).
pub(super) fn load_intents(
    config: &mut Config,
    dir: Option<&Path>,
    origin: String,
) -> Result<(), ConfigError> {
    let value = &config.intents.file;
    if value.is_empty() {
        return Ok(());
    }
    let fail = |message: String| ConfigError {
        key: "intents.file".into(),
        origin: origin.clone(),
        message,
    };
    let path = Path::new(value);
    let path = match dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        fail(format!(
            "cannot read the intents file {}: {e}",
            path.display()
        ))
    })?;
    let name = path.display().to_string();
    let set = sotad_engines::intent::IntentSet::parse(&text, &name)
        .map_err(|e| fail(format!("the intents file is invalid: {e}")))?;
    for intent in &set.intents {
        if !crate::mqtt::request::valid_id(&intent.name) {
            return Err(fail(format!(
                "the intents file is invalid: {name}:{}: intent name {:?} cannot be a topic level: 1 to {} bytes without control characters, '+', '#' or '/'",
                intent.line,
                intent.name,
                crate::mqtt::request::MAX_ID_BYTES
            )));
        }
    }
    config.intents.set = Some(std::sync::Arc::new(set));
    Ok(())
}

/// Loads the Smart Turn model `turn.model` names, if any. The default file, when it is not
/// installed, leaves Smart Turn off; a file the user named that is missing or is not the
/// model is an error naming the key and the file.
pub(super) fn load_turn(
    config: &mut Config,
    default: bool,
    origin: String,
) -> Result<(), ConfigError> {
    let Some(path) = config.model_path(&config.turn.model) else {
        return Ok(());
    };
    if default && !path.exists() {
        return Ok(());
    }
    let model = sotad_engines::turn::SmartTurn::load(&path).map_err(|e| ConfigError {
        key: "turn.model".into(),
        origin,
        message: format!(
            "{} is not a Smart Turn v3 model ({e}); allowed: Pipecat's smart-turn-v3.2-cpu.onnx (scripts/install-models.sh smart-turn), or \"\" for no learned end of turn",
            path.display()
        ),
    })?;
    config.turn.engine = Some(std::sync::Arc::new(model));
    Ok(())
}

pub(super) fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigError {
            key: String::new(),
            origin: path.display().to_string(),
            message: format!("cannot read {}: {e}", path.display()),
        })
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

/// `voice.wake_words`, `voice.follow_up_s` and `voice.stop_words`: every model named is found
/// and loads (see [`super::wake_model`]).
impl Config {
    fn wake(&self, c: &Checker) -> Result<(), ConfigError> {
        c.frange("voice.follow_up_s", self.voice.follow_up_s, 0.0, 600.0)?;
        for (key, values) in [
            ("voice.wake_words", &self.voice.wake_words),
            ("voice.stop_words", &self.voice.stop_words),
        ] {
            if values.len() > 8 {
                return Err(c.fail(key, format!("{} models; allowed: up to 8", values.len())));
            }
            for value in values {
                self.wake_model(value)
                    .and_then(|path| {
                        sotad_engines::wake::WakeModel::load(&path)
                            .map(|_| ())
                            .map_err(|e| format!("the model does not load: {e}"))
                    })
                    .map_err(|message| c.fail(key, format!("{value:?}: {message}")))?;
            }
        }
        Ok(())
    }
}
