//! Wake and stop words in the voice loop (`voice.wake_words`, `voice.follow_up_s`,
//! `voice.stop_words`).
//!
//! With wake words, the `sotad-vad` thread gives the microphone's frames to the wake word
//! detectors, not to the VAD, until one of them fires; then the VAD listens as it does without
//! wake words, and the utterance that follows becomes a turn (no speech within
//! [`WAKE_LISTEN`]: back to waiting). After an answer has played, [`WakeGate`] keeps the VAD
//! listening for `voice.follow_up_s` more. While sotad speaks, stop word detectors (when
//! configured) cancel the answer; without them, speech is transcribed and a stop phrase
//! ([`is_stop_phrase`]) cancels it.
//!
//! The gate's decisions are pure (time is given) and unit-tested here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sotad_engines::wake::{Detection, WakeWord};

/// After the wake word, how long the VAD waits for speech before the microphone waits for the
/// wake word again.
pub const WAKE_LISTEN: Duration = Duration::from_secs(4);

/// What a transcript must be (after [`normalize`]) to stop an answer when no stop word model
/// is configured. Documented in configs/default.toml.
pub const STOP_PHRASES: [&str; 10] = [
    "stop",
    "stop it",
    "stop that",
    "stop talking",
    "be quiet",
    "quiet",
    "cancel",
    "shut up",
    "enough",
    "that's enough",
];

/// Lower case, apostrophes kept, other punctuation as spaces, single spaces.
fn normalize(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| match c {
            '\u{2019}' | '\'' => '\'',
            c if c.is_alphanumeric() => c.to_ascii_lowercase(),
            _ => ' ',
        })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a transcript is a stop phrase: one of [`STOP_PHRASES`], said once or repeated
/// ("stop, stop"), with "please" before or after allowed.
pub fn is_stop_phrase(text: &str) -> bool {
    let text = normalize(text);
    let mut t = text.as_str();
    for p in ["please ", "okay ", "ok "] {
        t = t.strip_prefix(p).unwrap_or(t);
    }
    t = t.strip_suffix(" please").unwrap_or(t);
    if t.is_empty() {
        return false;
    }
    STOP_PHRASES.iter().any(|p| {
        // The phrase, once or several times in a row.
        let mut rest = t;
        loop {
            match rest.strip_prefix(p) {
                Some("") => return true,
                Some(r) if r.starts_with(' ') => rest = &r[1..],
                _ => return false,
            }
        }
    })
}

/// A detection with the configuration value that named its model.
#[derive(Debug, Clone)]
pub struct Heard {
    /// The `voice.wake_words` (or `voice.stop_words`) value, e.g. `hey_jarvis`.
    pub model: String,
    pub detection: Detection,
}

/// Several streaming detectors fed the same audio.
pub struct Detectors {
    words: Vec<(String, WakeWord)>,
    pcm: Vec<i16>,
}

impl Detectors {
    /// Loads the models (settings files as [`crate::config::Config::wake_model`] resolves
    /// them), named by `key` in errors.
    pub fn load(key: &str, models: &[(String, PathBuf)]) -> Result<Detectors, String> {
        let mut words = Vec::new();
        for (value, path) in models {
            let word = WakeWord::load(path)
                .map_err(|e| format!("configuration key `{key}`: {value:?}: {e}"))?;
            words.push((value.clone(), word));
        }
        Ok(Detectors {
            words,
            pcm: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Feeds 16 kHz samples in [-1, 1]; the first detection they complete, if any.
    pub fn feed(&mut self, samples: &[f32]) -> Option<Heard> {
        self.pcm.clear();
        self.pcm.extend(
            samples
                .iter()
                .map(|&x| (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16),
        );
        let mut heard = None;
        for (model, word) in &mut self.words {
            if let Some(d) = word.process(&self.pcm).into_iter().next()
                && heard.is_none()
            {
                heard = Some(Heard {
                    model: model.clone(),
                    detection: d,
                });
            }
        }
        heard
    }

    /// Forgets all audio (the stream had a gap).
    pub fn reset(&mut self) {
        for (_, word) in &mut self.words {
            word.reset();
        }
    }
}

/// Whether the microphone's speech can become a turn without the wake word now: after a
/// detection (for [`WAKE_LISTEN`], or until the utterance that began in it ends) and after an
/// answered turn's audio (for `voice.follow_up_s`).
#[derive(Debug)]
pub struct WakeGate {
    open_until: Option<Instant>,
    was_speaking: bool,
    follow_up: Duration,
}

impl WakeGate {
    pub fn new(follow_up: Duration) -> WakeGate {
        WakeGate {
            open_until: None,
            was_speaking: false,
            follow_up,
        }
    }

    /// Called for every frame with whether sotad speaks and whether the last turn that ended
    /// was answered: the end of an answered turn's speech opens the follow-up window.
    pub fn speaking(&mut self, speaking: bool, last_answered: bool, now: Instant) {
        if self.was_speaking && !speaking && last_answered && !self.follow_up.is_zero() {
            self.open_until = Some(now + self.follow_up);
        }
        self.was_speaking = speaking;
    }

    /// The wake word was heard at `now`.
    pub fn woken(&mut self, now: Instant) {
        self.open_until = Some(now + WAKE_LISTEN);
    }

    /// An utterance was handed over as a turn (or cancelled): wait for the wake word again.
    pub fn close(&mut self) {
        self.open_until = None;
    }

    /// Whether speech may start a turn now. `in_utterance`: the VAD has heard speech that has
    /// not ended; the window does not close under it. Returns `(open, closed_now)`.
    pub fn open(&mut self, now: Instant, in_utterance: bool) -> (bool, bool) {
        match self.open_until {
            Some(until) if now >= until && !in_utterance => {
                self.open_until = None;
                (false, true)
            }
            Some(_) => (true, false),
            None => (false, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_phrases_are_recognized_in_whisper_forms() {
        for yes in [
            "Stop.",
            " stop!",
            "Stop it.",
            "Stop, stop.",
            "Be quiet!",
            "Cancel.",
            "That's enough.",
            "That\u{2019}s enough.",
            "Please stop.",
            "Stop, please.",
            "Okay, stop.",
        ] {
            assert!(is_stop_phrase(yes), "{yes:?}");
        }
        for no in [
            "",
            ".",
            "Please.",
            "Stop the music and play jazz.",
            "Don't stop.",
            "What time is it?",
            "stopwatch",
            "Enough about that, tell me more.",
        ] {
            assert!(!is_stop_phrase(no), "{no:?}");
        }
    }

    #[test]
    fn the_gate_opens_on_the_word_and_after_an_answer_and_closes_on_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = WakeGate::new(s(6));
        assert_eq!(g.open(t0, false), (false, false));
        // The word opens it for WAKE_LISTEN; speech under way keeps it open past that.
        g.woken(t0);
        assert_eq!(g.open(t0 + s(1), false), (true, false));
        assert_eq!(g.open(t0 + WAKE_LISTEN, true), (true, false));
        assert_eq!(g.open(t0 + WAKE_LISTEN, false), (false, true));
        assert_eq!(g.open(t0 + s(5), false), (false, false));
        // An answered turn's speech ends: the follow-up window; a cancelled one: none.
        g.speaking(true, false, t0 + s(10));
        g.speaking(false, true, t0 + s(12));
        assert_eq!(g.open(t0 + s(17), false), (true, false));
        assert_eq!(g.open(t0 + s(18), false), (false, true));
        g.speaking(true, true, t0 + s(20));
        g.speaking(false, false, t0 + s(21));
        assert_eq!(g.open(t0 + s(21), false), (false, false));
        // A turn handed over closes it at once; no follow-up window with 0 s.
        g.woken(t0 + s(30));
        g.close();
        assert_eq!(g.open(t0 + s(30), false), (false, false));
        let mut none = WakeGate::new(Duration::ZERO);
        none.speaking(true, true, t0);
        none.speaking(false, true, t0);
        assert_eq!(none.open(t0, false), (false, false));
    }
}
