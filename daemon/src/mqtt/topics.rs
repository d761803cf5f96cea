//! Topic names: the only place that spells them out.
//!
//! Every topic sits under `<prefix>/<device_id>/`. See docs/protocol.md for payloads.

/// A request kind that sotad subscribes to and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// `ping`: answered on `pong` with version and uptime.
    Ping,
    /// `stt/transcribe`: a WAV (raw bytes, or base64 in JSON); answered on `stt/transcript`.
    SttTranscribe,
    /// `llm/ask`: a prompt or messages; tokens stream on `llm/tokens`, the answer on `llm/reply`.
    LlmAsk,
    /// `llm/cancel`: stops a running `llm/ask`, which then replies with stop reason `cancelled`.
    LlmCancel,
    /// `tts/say`: text; audio on `tts/audio/<id>` (one WAV per sentence), then `tts/done`.
    TtsSay,
    /// `tts/cancel`: stops a queued or running `tts/say`, whose `tts/done` then says
    /// `cancelled`.
    TtsCancel,
    /// `turn/text`: a typed question through the voice loop's LLM → TTS path; events on `turn/*`.
    TurnText,
    /// `listen/start`, `listen/stop`, `mute`, `unmute`: the microphone switches; the retained
    /// `voice/state` answers.
    ListenStart,
    ListenStop,
    Mute,
    Unmute,
    /// `ptt/start`, `ptt/stop`: push-to-talk. While held, the microphone's audio is one
    /// utterance (no VAD); the release makes it a turn. Works with `listen` off; `mute` wins.
    PttStart,
    PttStop,
    /// `turn/answer`: an integration's answer to a published intent (the turn's id and the
    /// text to speak); no reply, `error` when no turn waits for it.
    TurnAnswer,
    /// `listen/set`, `mute/set`: a switch set to `on` (what Home Assistant's switches send).
    ListenSet,
    MuteSet,
    /// `stop`: whatever sotad is saying stops (the turn's answer, every `tts/say`).
    Stop,
}

impl Command {
    /// Every command, in subscription order.
    pub const ALL: [Command; 17] = [
        Command::Ping,
        Command::SttTranscribe,
        Command::LlmAsk,
        Command::LlmCancel,
        Command::TtsSay,
        Command::TtsCancel,
        Command::TurnText,
        Command::ListenStart,
        Command::ListenStop,
        Command::Mute,
        Command::Unmute,
        Command::PttStart,
        Command::PttStop,
        Command::TurnAnswer,
        Command::ListenSet,
        Command::MuteSet,
        Command::Stop,
    ];

    /// The topic suffix the request arrives on.
    pub fn request_suffix(self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::SttTranscribe => "stt/transcribe",
            Command::LlmAsk => "llm/ask",
            Command::LlmCancel => "llm/cancel",
            Command::TtsSay => "tts/say",
            Command::TtsCancel => "tts/cancel",
            Command::TurnText => "turn/text",
            Command::ListenStart => "listen/start",
            Command::ListenStop => "listen/stop",
            Command::Mute => "mute",
            Command::Unmute => "unmute",
            Command::PttStart => "ptt/start",
            Command::PttStop => "ptt/stop",
            Command::TurnAnswer => "turn/answer",
            Command::ListenSet => "listen/set",
            Command::MuteSet => "mute/set",
            Command::Stop => "stop",
        }
    }

    /// The topic suffix the successful reply goes to.
    pub fn reply_suffix(self) -> &'static str {
        match self {
            Command::Ping => "pong",
            Command::SttTranscribe => "stt/transcript",
            Command::LlmAsk | Command::LlmCancel => "llm/reply",
            Command::TtsSay | Command::TtsCancel => "tts/done",
            Command::TurnText | Command::TurnAnswer => "turn/done",
            Command::ListenStart
            | Command::ListenStop
            | Command::Mute
            | Command::Unmute
            | Command::PttStart
            | Command::PttStop
            | Command::ListenSet
            | Command::MuteSet
            | Command::Stop => "voice/state",
        }
    }

    /// Name used in telemetry and logs.
    pub fn name(self) -> &'static str {
        self.request_suffix()
    }
}

/// The topic tree of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `<prefix>/<device_id>`
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, device_id: &str) -> Topics {
        Topics {
            base: format!("{prefix}/{device_id}"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn join(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.base)
    }

    /// Retained `online` / `offline`; `offline` is also the broker-held last will.
    pub fn status(&self) -> String {
        self.join("status")
    }

    /// Retained JSON describing version, engines, audio devices and features.
    pub fn capabilities(&self) -> String {
        self.join("capabilities")
    }

    /// Retained JSON naming the process that serves this device id (see `payloads::Instance`):
    /// how two daemons with the same device id find each other.
    pub fn instance(&self) -> String {
        self.join("instance")
    }

    /// Periodic JSON samples.
    pub fn telemetry(&self) -> String {
        self.join("telemetry")
    }

    /// Errors about requests that could not be handled, and problems that belong to no request.
    pub fn error(&self) -> String {
        self.join("error")
    }

    /// A voice-loop event's topic.
    pub fn turn(&self, event: TurnEvent) -> String {
        self.join(match event {
            TurnEvent::Started => "turn/started",
            TurnEvent::Transcript => "turn/transcript",
            TurnEvent::Reply => "turn/reply",
            TurnEvent::Done => "turn/done",
        })
    }

    /// A recognized intent (QoS 1, not retained). `name` is a valid topic level (checked
    /// when the intents file is loaded).
    pub fn intent(&self, name: &str) -> String {
        self.join(&format!("intent/{name}"))
    }

    /// A wake or stop word heard by the microphone (QoS 1, not retained).
    pub fn wake_detected(&self) -> String {
        self.join("wake/detected")
    }

    /// The token stream of `llm/ask` (QoS 0).
    pub fn llm_tokens(&self) -> String {
        self.join("llm/tokens")
    }

    /// One WAV per synthesized sentence of the `tts/say` request `id`, in order (QoS 1).
    pub fn tts_audio(&self, id: &str) -> String {
        self.join(&format!("tts/audio/{id}"))
    }

    pub fn request(&self, command: Command) -> String {
        self.join(command.request_suffix())
    }

    pub fn reply(&self, command: Command) -> String {
        self.join(command.reply_suffix())
    }

    /// Which command a received topic is, if any.
    pub fn route(&self, topic: &str) -> Option<Command> {
        let suffix = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        Command::ALL
            .into_iter()
            .find(|c| c.request_suffix() == suffix)
    }
}

/// The events of a voice-loop turn, in the order they are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    Started,
    Transcript,
    Reply,
    Done,
}

/// Home Assistant's device discovery topic for this device (`mqtt/discovery.rs`).
pub fn ha_discovery(ha_prefix: &str, device_id: &str) -> String {
    format!("{ha_prefix}/device/{device_id}/config")
}

/// Home Assistant's birth and will topic.
pub fn ha_status(ha_prefix: &str) -> String {
    format!("{ha_prefix}/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_under_prefix_and_device() {
        let t = Topics::new("sotad", "kitchen");
        assert_eq!(t.status(), "sotad/kitchen/status");
        assert_eq!(t.request(Command::Ping), "sotad/kitchen/ping");
        assert_eq!(t.reply(Command::Ping), "sotad/kitchen/pong");
        assert_eq!(t.intent("move"), "sotad/kitchen/intent/move");
        assert_eq!(t.request(Command::TurnAnswer), "sotad/kitchen/turn/answer");
    }

    #[test]
    fn routing_matches_only_own_request_topics() {
        let t = Topics::new("sotad", "kitchen");
        assert_eq!(t.route("sotad/kitchen/ping"), Some(Command::Ping));
        assert_eq!(t.route("sotad/kitchen/pong"), None);
        assert_eq!(t.route("sotad/kitchenette/ping"), None);
        assert_eq!(t.route("sotad/kitchen/ping/x"), None);
        assert_eq!(t.route("other/kitchen/ping"), None);
    }
}
