//! The microphone side of the voice loop: capture thread → VAD thread → turns, and the
//! player thread for what sotad says.
//!
//! Threads and edges (see `pipeline.rs` for the turn itself):
//! - `sotad-capture` (audio::Capture) sends 32 ms frames with `try_send`; a full queue drops
//!   and counts frames, so capture never blocks.
//! - `sotad-vad` runs the energy gate, Silero and the endpointer on each frame. Finished
//!   utterances go to the turn task with `try_send` into a queue of [`UTTERANCE_QUEUE`];
//!   when full, the utterance is dropped and counted.
//! - While sotad speaks, the microphone is ignored (it would hear itself), unless barge-in
//!   is on: then the start of speech stops playback and cancels the turn, and the utterance
//!   becomes the next turn.
//! - Speculative transcription (`vad.speculate_ms`): a pause in speech starts Whisper on the
//!   utterance so far, before the endpoint; speech that comes back cancels it, and the
//!   endpoint's turn takes it over when nothing was said since (same start, same end of
//!   speech). Either way a turn transcribes the utterance up to the pause point.
//! - Early endpoint (`vad.complete_silence_ms`): when that speculative transcript is ready
//!   and reads as a finished sentence, the utterance ends once the silence has lasted
//!   `complete_silence_ms`, without waiting for the whole `trailing_silence_ms`.
//! - Push-to-talk (`ptt/start` … `ptt/stop`): while held, frames skip the VAD and collect into
//!   one utterance (bounded by `vad.max_utterance_ms`), handed over on release; the press
//!   cancels the turn in progress.
//! - `sotad-play` plays sentences in order from a queue of `audio.playback_queue`; when it is
//!   full (a stalled device), new sentences are dropped and counted; a cancelled turn's audio
//!   is skipped at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use sotad_engines::vad::{EndReason, SileroVad, VadEvent, VoiceDetector};
use tokio::sync::mpsc;

use crate::audio::{self, Capture, CaptureHandle, CaptureStatus, Player, Samples};
use crate::config::Config;
use crate::pipeline::{Input, PlayItem, PlaybackSender, Speculation, Turns};

/// Utterances waiting for a turn.
pub const UTTERANCE_QUEUE: usize = 2;

/// Switches and counters shared by MQTT, the VAD thread and telemetry.
#[derive(Debug)]
pub struct VoiceControl {
    pub listening: AtomicBool,
    pub muted: AtomicBool,
    pub barge_in: bool,
    /// Push-to-talk held (`ptt/start` until `ptt/stop`).
    pub ptt: AtomicBool,
    /// Set by the player while it plays.
    pub playing: AtomicBool,
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
    /// Set when the VAD model could not be loaded.
    pub vad_error: std::sync::Mutex<Option<String>>,
}

/// The retained `voice/state` document.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceState {
    pub listening: bool,
    pub muted: bool,
    pub barge_in: bool,
    /// Push-to-talk is held.
    pub ptt: bool,
    /// `off` (no capture device), or the capture thread's state (`open`, `missing`, ...).
    pub capture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vad_error: Option<String>,
    pub speaking: bool,
}

/// Voice-loop counters for telemetry.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceSample {
    pub capture: String,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub overruns: u64,
    pub utterances: u64,
    pub utterances_dropped: u64,
    pub ignored_while_speaking: u64,
    pub barge_ins: u64,
    pub speculations: u64,
    pub speculations_abandoned: u64,
    pub complete_endpoints: u64,
    pub vad_windows: u64,
    pub vad_model_runs: u64,
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
        }
    }
}

/// The running voice side; dropping it stops capture (the VAD and player threads end when
/// their channels close).
pub struct Voice {
    pub control: Arc<VoiceControl>,
    _capture: Option<CaptureHandle>,
}

/// Starts the player thread if `audio.playback_device` is set; returns its queue.
pub fn spawn_player(config: &Config, control: &Arc<VoiceControl>) -> Option<PlaybackSender> {
    if config.audio.playback_device.is_empty() {
        return None;
    }
    let player = Player::open(config.audio.playback_config());
    let (tx, rx) = std_mpsc::sync_channel::<PlayItem>(config.audio.playback_queue);
    let control = control.clone();
    let spawned = std::thread::Builder::new()
        .name("sotad-play".into())
        .spawn(move || {
            let mut reported = false;
            // An item taken while waiting for the rest of a sentence that belongs elsewhere.
            let mut pending: Option<PlayItem> = None;
            loop {
                let Some(PlayItem::Audio {
                    samples,
                    sample_rate,
                    cancel,
                    more,
                }) = pending.take().or_else(|| rx.recv().ok())
                else {
                    break;
                };
                if cancel.load(Ordering::Relaxed) {
                    continue;
                }
                control.playing.store(true, Ordering::Relaxed);
                // The rest of the sentence (items with `more`), played on the open device.
                let mut open = more;
                let mut next = || {
                    while open {
                        if cancel.load(Ordering::Relaxed) {
                            return None;
                        }
                        match rx.recv_timeout(std::time::Duration::from_millis(20)) {
                            Ok(PlayItem::Audio {
                                samples,
                                sample_rate: r,
                                cancel: c,
                                more,
                            }) => {
                                if Arc::ptr_eq(&c, &cancel) && r == sample_rate {
                                    open = more;
                                    return Some(samples);
                                }
                                // Another turn's audio: the sentence ended early (cancelled).
                                pending = Some(PlayItem::Audio {
                                    samples,
                                    sample_rate: r,
                                    cancel: c,
                                    more,
                                });
                                open = false;
                            }
                            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                            Err(std_mpsc::RecvTimeoutError::Disconnected) => open = false,
                        }
                    }
                    None
                };
                match player.play_stream(Samples::F32(&samples), sample_rate, &mut next, &cancel) {
                    Ok(_) => reported = false,
                    Err(e) => {
                        // A busy or missing speaker is reported once per outage, not fatal:
                        // the audio still went out on MQTT.
                        if !reported {
                            tracing::warn!(device = player.device(), error = %e, "playback failed");
                            reported = true;
                        }
                    }
                }
                control.playing.store(false, Ordering::Relaxed);
            }
            control.playing.store(false, Ordering::Relaxed);
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "could not start the playback thread");
            None
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
        playing: AtomicBool::new(false),
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
        vad_error: std::sync::Mutex::new(None),
    })
}

/// Starts capture, the VAD thread and the task that turns utterances into turns.
/// Without a capture device, only the control block exists (text turns still work).
pub fn start(config: &Config, control: Arc<VoiceControl>, turns: Turns) -> Voice {
    let Some(status) = control.capture.clone() else {
        return Voice {
            control,
            _capture: None,
        };
    };
    let (frames_tx, mut frames_rx) = audio::frame_channel(config.audio.frame_queue);
    let capture = match Capture::spawn(config.audio.capture_config(), frames_tx, status) {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!(error = %e, "could not start the capture thread");
            None
        }
    };
    let (utter_tx, mut utter_rx) = mpsc::channel::<Input>(UTTERANCE_QUEUE);
    let vad_path = config.model_path(&config.vad.model);
    let detector_config = config.vad.detector_config();
    // A held push-to-talk button keeps at most as much audio as one VAD utterance.
    let max_ptt_samples = config.vad.max_utterance_ms as usize * 16;
    let complete_silence = u64::from(config.vad.complete_silence_ms) * 16;
    let vad_control = control.clone();
    let vad_turns = turns.clone();
    let spawned = std::thread::Builder::new()
        .name("sotad-vad".into())
        .spawn(move || {
            let model = match vad_path
                .ok_or_else(|| "configuration key `vad.model` is empty".to_string())
                .and_then(|p| {
                    SileroVad::load(&p).map_err(|e| {
                        format!("voice activity detection is not available: configuration key `vad.model`: {e}")
                    })
                }) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = e, "microphone input is off");
                    *vad_control.vad_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    // Keep draining so the capture thread's counters stay meaningful.
                    while frames_rx.blocking_recv().is_some() {}
                    return;
                }
            };
            let mut detector = VoiceDetector::new(model, detector_config);
            run_vad(
                &mut detector,
                max_ptt_samples,
                complete_silence,
                &mut frames_rx,
                &utter_tx,
                &vad_control,
                &vad_turns,
            );
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the VAD thread");
    }
    tokio::spawn(async move {
        while let Some(input) = utter_rx.recv().await {
            let turns = turns.clone();
            let id = turns.next_id();
            // A turn runs as its own task so that a barge-in utterance can start the next
            // one (which cancels this one) without waiting for it.
            tokio::spawn(async move { turns.run(id, input).await });
        }
    });
    Voice {
        control,
        _capture: capture,
    }
}

/// Hands a finished utterance to the turn task; a full queue drops it and counts.
fn send_utterance(
    utterances: &mpsc::Sender<Input>,
    control: &VoiceControl,
    samples: Vec<f32>,
    endpoint: Duration,
    speculation: Option<Speculation>,
    reason: &'static str,
    speech_end_s: Option<f64>,
) {
    control.utterances.fetch_add(1, Ordering::Relaxed);
    let input = Input::Speech {
        samples,
        endpoint_ms: endpoint.as_secs_f64() * 1e3,
        endpointed_at: Instant::now(),
        speculation,
        endpoint: reason,
        speech_end_s,
    };
    if utterances.try_send(input).is_err() {
        control.utterances_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("an utterance was dropped: turns are falling behind");
    }
}

/// The VAD thread's loop. `complete_silence` is `vad.complete_silence_ms` in samples.
fn run_vad(
    detector: &mut VoiceDetector,
    max_ptt_samples: usize,
    complete_silence: u64,
    frames: &mut audio::FrameReceiver,
    utterances: &mpsc::Sender<Input>,
    control: &VoiceControl,
    turns: &Turns,
) {
    let mut active = false;
    let mut last_windows = 0;
    // Push-to-talk: the audio while the button is held, bounded.
    let mut held: Vec<f32> = Vec::new();
    let mut holding = false;
    // The latest pause of the utterance under way: (start, end of speech), audio length.
    let mut last_pause: Option<((u64, u64), usize)> = None;
    let abandon = |last_pause: &mut Option<((u64, u64), usize)>| {
        if last_pause.take().is_some() && turns.abandon_speculation() {
            control
                .speculations_abandoned
                .fetch_add(1, Ordering::Relaxed);
        }
    };
    while let Some(frame) = frames.blocking_recv() {
        let muted = control.muted.load(Ordering::Relaxed);
        if control.ptt.load(Ordering::Relaxed) && !muted {
            // The VAD sleeps while the button is held; the press itself cancelled any turn.
            if active {
                detector.reset();
                active = false;
                abandon(&mut last_pause);
            }
            holding = true;
            let room = max_ptt_samples.saturating_sub(held.len());
            held.extend_from_slice(&frame.samples[..frame.samples.len().min(room)]);
            continue;
        }
        if holding {
            // Released (or muted meanwhile: then the audio is discarded).
            holding = false;
            let samples = std::mem::take(&mut held);
            if !muted && !samples.is_empty() {
                send_utterance(
                    utterances,
                    control,
                    samples,
                    frame.captured_at.elapsed(),
                    None,
                    "push_to_talk",
                    None,
                );
            }
        }
        let listening = control.listening.load(Ordering::Relaxed) && !muted;
        let speaking = turns.speaking() || control.playing.load(Ordering::Relaxed);
        if !listening || (speaking && !control.barge_in) {
            if speaking && listening {
                control
                    .ignored_while_speaking
                    .fetch_add(1, Ordering::Relaxed);
            }
            if active {
                detector.reset();
                active = false;
                abandon(&mut last_pause);
            }
            continue;
        }
        active = true;
        let mut event = detector.push_window(&frame.samples);
        // Early endpoint: the pause's transcript is in and reads as a finished sentence.
        if event.is_none()
            && complete_silence > 0
            && let Some((key, _)) = last_pause
            && detector
                .endpointer()
                .paused_for()
                .is_some_and(|s| s >= complete_silence)
            && turns.speculation_complete(key)
        {
            event = detector.end_paused();
        }
        let stats = detector.stats();
        control.vad_windows.fetch_add(
            stats.windows - last_windows.min(stats.windows),
            Ordering::Relaxed,
        );
        last_windows = stats.windows;
        control
            .vad_model_runs
            .store(stats.model_runs, Ordering::Relaxed);
        match event {
            Some(VadEvent::SpeechStart { .. }) if speaking => {
                // Barge-in: the person talks over sotad.
                control.barge_ins.fetch_add(1, Ordering::Relaxed);
                if let Some(turn) = turns.cancel_current() {
                    tracing::info!(turn, "barge-in: playback stopped, turn cancelled");
                }
            }
            Some(VadEvent::Pause {
                utterance,
                start,
                speech_end,
            }) => {
                control.speculations.fetch_add(1, Ordering::Relaxed);
                last_pause = Some(((start, speech_end), utterance.len()));
                turns.speculate((start, speech_end), utterance);
            }
            Some(VadEvent::Resume { .. }) => abandon(&mut last_pause),
            Some(VadEvent::SpeechEnd {
                mut utterance,
                start,
                speech_end,
                at,
                reason,
            }) => {
                // From the true end of speech to now: the trailing silence the endpointer
                // waited for, plus the time the last frame spent in the queue.
                let waited =
                    Duration::from_secs_f64(at.saturating_sub(speech_end) as f64 / 16_000.0);
                let queued = frame.captured_at.elapsed();
                // The detector's positions count only the windows it was given; the frame's
                // sequence number counts every frame captured, so the end of speech in the
                // capture stream is this frame's end minus the silence since.
                let captured = (frame.seq + 1) * audio::FRAME_SAMPLES as u64;
                let speech_end_s = captured.saturating_sub(at.saturating_sub(speech_end)) as f64
                    / f64::from(audio::SAMPLE_RATE);
                // Nothing was said since the last pause: the turn transcribes the same audio
                // as the speculation did (up to the pause point), and takes its result.
                let speculation = match last_pause.take() {
                    Some((key, len)) if key == (start, speech_end) => {
                        utterance.truncate(len);
                        turns.take_speculation(key)
                    }
                    Some(_) => {
                        turns.abandon_speculation();
                        None
                    }
                    None => None,
                };
                if reason == EndReason::Complete {
                    control.complete_endpoints.fetch_add(1, Ordering::Relaxed);
                }
                send_utterance(
                    utterances,
                    control,
                    utterance,
                    waited + queued,
                    speculation,
                    reason.as_str(),
                    Some(speech_end_s),
                );
            }
            _ => {}
        }
    }
}
