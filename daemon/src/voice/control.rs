//! [`VoiceControl`]: the voice loop's switches and counters, shared by MQTT, the VAD and
//! player threads and telemetry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::audio::CaptureStatus;
use crate::config::Config;
use crate::mqtt::payloads::VoiceState;
use crate::telemetry::VoiceSample;

/// Switches and counters shared by MQTT, the VAD thread and telemetry.
#[derive(Debug)]
pub struct VoiceControl {
    pub listening: AtomicBool,
    pub muted: AtomicBool,
    pub barge_in: bool,
    /// Push-to-talk held (`ptt/start` until `ptt/stop`).
    pub ptt: AtomicBool,
    /// Set by the player while it plays.
    pub playing: Arc<AtomicBool>,
    pub capture: Option<Arc<CaptureStatus>>,
    pub utterances: AtomicU64,
    pub utterances_dropped: AtomicU64,
    pub ignored_while_speaking: AtomicU64,
    pub barge_ins: AtomicU64,
    /// Transcriptions started at a pause, and those cancelled because speech came back.
    pub speculations: AtomicU64,
    pub speculations_abandoned: AtomicU64,
    /// Utterances ended early because their speculative transcript read as complete.
    pub complete_endpoints: AtomicU64,
    pub vad_windows: AtomicU64,
    pub vad_model_runs: AtomicU64,
    /// Wake words heard (`wake/detected`), and turns cancelled by a stop word or phrase.
    pub wake_detections: AtomicU64,
    pub stops: AtomicU64,
    /// Set when the VAD model could not be loaded.
    pub vad_error: std::sync::Mutex<Option<String>>,
}

impl VoiceControl {
    pub fn state(&self, speaking: bool) -> VoiceState {
        let snapshot = self.capture.as_ref().map(|c| c.snapshot());
        VoiceState {
            listening: self.listening.load(Ordering::Relaxed),
            muted: self.muted.load(Ordering::Relaxed),
            barge_in: self.barge_in,
            ptt: self.ptt.load(Ordering::Relaxed),
            capture: snapshot
                .as_ref()
                .map_or("off".to_string(), |s| s.state.as_str().to_string()),
            capture_error: snapshot.and_then(|s| s.last_error),
            vad_error: self
                .vad_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            speaking: speaking || self.playing.load(Ordering::Relaxed),
        }
    }

    pub fn sample(&self) -> VoiceSample {
        let s = self.capture.as_ref().map(|c| c.snapshot());
        VoiceSample {
            capture: s
                .as_ref()
                .map_or("off".to_string(), |s| s.state.as_str().to_string()),
            frames_sent: s.as_ref().map_or(0, |s| s.frames_sent),
            frames_dropped: s.as_ref().map_or(0, |s| s.frames_dropped),
            overruns: s.as_ref().map_or(0, |s| s.overruns),
            utterances: self.utterances.load(Ordering::Relaxed),
            utterances_dropped: self.utterances_dropped.load(Ordering::Relaxed),
            ignored_while_speaking: self.ignored_while_speaking.load(Ordering::Relaxed),
            barge_ins: self.barge_ins.load(Ordering::Relaxed),
            speculations: self.speculations.load(Ordering::Relaxed),
            speculations_abandoned: self.speculations_abandoned.load(Ordering::Relaxed),
            complete_endpoints: self.complete_endpoints.load(Ordering::Relaxed),
            vad_windows: self.vad_windows.load(Ordering::Relaxed),
            vad_model_runs: self.vad_model_runs.load(Ordering::Relaxed),
            wake_detections: self.wake_detections.load(Ordering::Relaxed),
            stops: self.stops.load(Ordering::Relaxed),
        }
    }
}

/// Creates the shared control block (capture status included when a microphone is set).
pub fn control(config: &Config) -> Arc<VoiceControl> {
    Arc::new(VoiceControl {
        listening: AtomicBool::new(config.voice.listen),
        muted: AtomicBool::new(false),
        barge_in: config.voice.barge_in,
        ptt: AtomicBool::new(false),
        playing: Arc::new(AtomicBool::new(false)),
        capture: (!config.audio.capture_device.is_empty()).then(|| Arc::new(CaptureStatus::new())),
        utterances: AtomicU64::new(0),
        utterances_dropped: AtomicU64::new(0),
        ignored_while_speaking: AtomicU64::new(0),
        barge_ins: AtomicU64::new(0),
        speculations: AtomicU64::new(0),
        speculations_abandoned: AtomicU64::new(0),
        complete_endpoints: AtomicU64::new(0),
        vad_windows: AtomicU64::new(0),
        vad_model_runs: AtomicU64::new(0),
        wake_detections: AtomicU64::new(0),
        stops: AtomicU64::new(0),
        vad_error: std::sync::Mutex::new(None),
    })
}
