//! The voice loop, in data-path order: the microphone's frames become utterances
//! (`listen`), utterances and typed questions become turns (`turn`, with the work started
//! ahead at pauses in `speculation`), a turn's answer becomes sentences (`sentences`) and
//! speech (`answer`), and speech goes to the speaker (`speaker`) and MQTT.
//!
//! Threads: `sotad-capture` (audio::Capture) → `sotad-vad` (`listen`) → turn tasks on tokio
//! → the engine workers (`stages`) → `sotad-play` (`speaker`).
//!
//! Every edge is bounded; what happens when one is full is written once, in
//! ARCHITECTURE.md ("Backpressure"): frames and utterances are dropped and counted, audio
//! from the TTS engine never is (the engine waits), the speaker's queue drops and counts.
//!
//! While sotad speaks, the microphone is ignored (it would hear itself), unless barge-in is
//! on: then the start of speech stops playback and cancels the turn, and the utterance
//! becomes the next turn. Push-to-talk (`ptt/start` … `ptt/stop`): while held, frames skip
//! the VAD and collect into one utterance (bounded by `vad.max_utterance_ms`), handed over on
//! release; the press cancels the turn in progress.
//!
//! With wake words (`voice.wake_words`), an utterance becomes a turn only after the word, or
//! in the follow-up window after an answer; stop words or phrases cancel an answer
//! ([`wake`]).

pub mod answer;
pub mod control;
pub mod endturn;
pub mod listen;
pub mod sentences;
pub mod speaker;
pub mod speculation;
pub mod turn;
pub mod wake;

use std::sync::Arc;

use sotad_engines::vad::{SileroVad, VoiceDetector};
use tokio::sync::mpsc;

use crate::audio::{self, Capture, CaptureHandle};
use crate::capacity;
use crate::config::Config;
use crate::mqtt::payloads::WakeDetected;
pub use control::{VoiceControl, control};
use listen::WakeEvent;
use turn::{Input, Turns};

/// The running voice side; dropping it stops capture (the VAD and player threads end when
/// their channels close).
pub struct Voice {
    pub control: Arc<VoiceControl>,
    _capture: Option<CaptureHandle>,
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
    let (utter_tx, mut utter_rx) = mpsc::channel::<Input>(capacity::UTTERANCES);
    let vad_path = config.model_path(&config.vad.model);
    let detector_config = config.vad.detector_config();
    let listen = listen::Listen {
        // A held push-to-talk button keeps at most as much audio as one VAD utterance.
        max_ptt_samples: listen::samples_in(u64::from(config.vad.max_utterance_ms)) as usize,
        complete_silence: listen::samples_in(u64::from(config.vad.complete_silence_ms)),
    };
    // The wake and stop word models, as the configuration check found them.
    let resolve = |key: &str, values: &[String]| -> Result<Vec<_>, String> {
        values
            .iter()
            .map(|v| {
                config
                    .wake_model(v)
                    .map(|p| (v.clone(), p))
                    .map_err(|e| format!("configuration key `{key}`: {v:?}: {e}"))
            })
            .collect()
    };
    let wake_models = resolve("voice.wake_words", &config.voice.wake_words)
        .and_then(|w| Ok((w, resolve("voice.stop_words", &config.voice.stop_words)?)));
    let follow_up = std::time::Duration::from_secs_f64(config.voice.follow_up_s);
    let smart_turn = config
        .turn
        .engine
        .clone()
        .map(|model| (model, config.turn.pause_ms, config.turn.threshold as f32));
    let (wake_tx, wake_rx) = mpsc::channel::<WakeEvent>(capacity::UTTERANCES);
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
            let wake = wake_models.and_then(|(words, stops)| {
                Ok(listen::Wake {
                    words: wake::Detectors::load("voice.wake_words", &words)?,
                    stops: wake::Detectors::load("voice.stop_words", &stops)?,
                    gate: wake::WakeGate::new(follow_up),
                    events: wake_tx,
                })
            });
            let mut wake = match wake {
                Ok(w) => w,
                Err(e) => {
                    // Never fall back to an always-open microphone.
                    tracing::error!(error = e, "microphone input is off");
                    *vad_control.vad_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    while frames_rx.blocking_recv().is_some() {}
                    return;
                }
            };
            let mut detector = VoiceDetector::new(model, detector_config);
            // Smart Turn on its own thread; without it, the endpoint is today's.
            let mut end_turn = smart_turn.and_then(|(model, pause_ms, threshold)| {
                endturn::EndTurn::start(model, pause_ms, threshold)
                    .map_err(|e| {
                        tracing::error!(error = %e, "could not start the Smart Turn thread: no learned end of turn");
                    })
                    .ok()
            });
            listen::run(
                &listen,
                &mut detector,
                &mut frames_rx,
                &utter_tx,
                &vad_control,
                &vad_turns,
                &mut wake,
                end_turn.as_mut(),
            );
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the VAD thread");
    }
    tokio::spawn(wake_events(wake_rx, turns.clone(), control.clone()));
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

/// Publishes wake and stop words (`wake/detected`) and checks speech heard while sotad spoke
/// for a stop phrase, one at a time.
async fn wake_events(
    mut events: mpsc::Receiver<WakeEvent>,
    turns: Turns,
    control: Arc<VoiceControl>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    while let Some(event) = events.recv().await {
        match event {
            WakeEvent::Detected {
                heard,
                time_s,
                stop,
            } => {
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let publisher = turns.publisher();
                publisher
                    .event(
                        &publisher.topics().wake_detected(),
                        &WakeDetected {
                            word: &heard.detection.word,
                            model: &heard.model,
                            probability: heard.detection.probability,
                            time_s: (time_s * 1e3).round() / 1e3,
                            at_ms,
                            stop,
                        },
                    )
                    .await;
            }
            WakeEvent::Check(samples) => {
                let pending = speculation::transcribe(
                    turns.stt(),
                    samples,
                    None,
                    Arc::new(AtomicBool::new(false)),
                );
                let text = match pending {
                    Ok(p) => p.await.map(|t| t.text),
                    Err(e) => Err(e),
                };
                match text {
                    Ok(text) if wake::is_stop_phrase(&text) => match turns.cancel_current() {
                        Some(turn) => {
                            control.stops.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                text,
                                turn,
                                "stop phrase: playback stopped, turn cancelled"
                            );
                        }
                        None => tracing::debug!(text, "stop phrase after the answer ended"),
                    },
                    Ok(text) => tracing::debug!(text, "speech while speaking: not a stop phrase"),
                    Err(e) => tracing::debug!(error = e, "speech while speaking not transcribed"),
                }
            }
        }
    }
}
