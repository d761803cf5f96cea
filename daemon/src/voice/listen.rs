//! The `sotad-vad` thread: frames from the microphone through the energy gate, Silero and
//! the endpointer into utterances; push-to-talk; barge-in; speculation at pauses; wake and
//! stop words ([`super::wake`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sotad_engines::audio::SAMPLE_RATE;
use sotad_engines::vad::{EndReason, VadEvent, VoiceDetector};
use tokio::sync::mpsc;

use super::control::VoiceControl;
use super::endturn::{EndTurn, WINDOW_SAMPLES};
use super::speculation::{AtEndpoint, PauseTracker};
use super::turn::{Input, Turns, Utterance};
use super::wake::{Detectors, Heard, WakeGate};
use crate::audio;
use crate::mqtt::payloads::{Endpoint, SmartTurnVerdict};

/// Samples in `ms` milliseconds of 16 kHz audio.
pub fn samples_in(ms: u64) -> u64 {
    ms * u64::from(SAMPLE_RATE) / 1000
}

/// What the VAD thread needs besides its detector and channels.
pub struct Listen {
    /// A held push-to-talk button keeps at most this many samples (`vad.max_utterance_ms`).
    pub max_ptt_samples: usize,
    /// `vad.complete_silence_ms` in samples (0: no early endpoint).
    pub complete_silence: u64,
}

/// What the VAD thread tells the voice task besides utterances.
pub enum WakeEvent {
    /// A wake word (`stop`: false) or a stop word heard; `time_s` in the capture stream.
    Detected {
        heard: Heard,
        time_s: f64,
        stop: bool,
    },
    /// Speech while sotad spoke (wake words, no stop word model, no barge-in): a stop phrase?
    Check(Vec<f32>),
}

/// The wake side of the VAD thread: detectors, the gate and the way out.
pub struct Wake {
    /// `voice.wake_words` (none: every utterance is a turn).
    pub words: Detectors,
    /// `voice.stop_words`.
    pub stops: Detectors,
    pub gate: WakeGate,
    pub events: mpsc::Sender<WakeEvent>,
}

/// The next frame of a stream fed to some detectors: resets them after a gap.
fn feed(
    detectors: &mut Detectors,
    last: &mut Option<u64>,
    frame: &audio::AudioFrame,
) -> Option<Heard> {
    if last.is_none_or(|s| s + 1 != frame.seq) {
        detectors.reset();
    }
    *last = Some(frame.seq);
    detectors.feed(&frame.samples[..])
}

/// Seconds of audio captured up to the end of `frame`.
fn frame_end_s(frame: &audio::AudioFrame) -> f64 {
    ((frame.seq + 1) * audio::FRAME_SAMPLES as u64) as f64 / f64::from(SAMPLE_RATE)
}

/// Hands a finished utterance to the turn task; a full queue drops it and counts.
fn send_utterance(utterances: &mpsc::Sender<Input>, control: &VoiceControl, utterance: Utterance) {
    control.utterances.fetch_add(1, Ordering::Relaxed);
    if utterances.try_send(Input::Speech(utterance)).is_err() {
        control.utterances_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("an utterance was dropped: turns are falling behind");
    }
}

/// The VAD thread's loop, until the capture channel closes.
pub fn run(
    listen: &Listen,
    detector: &mut VoiceDetector,
    frames: &mut audio::FrameReceiver,
    utterances: &mpsc::Sender<Input>,
    control: &VoiceControl,
    turns: &Turns,
    wake: &mut Wake,
    mut end_turn: Option<&mut EndTurn>,
) {
    let mut active = false;
    // The last frame given to the wake and stop word detectors (a gap resets them).
    let (mut words_fed, mut stops_fed) = (None, None);
    let mut last_windows = 0;
    // Push-to-talk: the audio while the button is held, bounded.
    let mut held: Vec<f32> = Vec::new();
    let mut holding = false;
    let mut pauses = PauseTracker::default();
    let abandon = |pauses: &mut PauseTracker, end_turn: &mut Option<&mut EndTurn>| {
        if let Some(e) = end_turn.as_deref_mut() {
            e.asker.finish(None);
        }
        if pauses.abandon() && turns.speculator().abandon() {
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
                abandon(&mut pauses, &mut end_turn);
            }
            holding = true;
            let room = listen.max_ptt_samples.saturating_sub(held.len());
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
                    Utterance {
                        samples,
                        endpoint_delay: frame.captured_at.elapsed(),
                        endpointed_at: Instant::now(),
                        speculation: None,
                        endpoint: Endpoint::PushToTalk,
                        speech_end_s: None,
                        smart_turn: None,
                    },
                );
            }
        }
        let listening = control.listening.load(Ordering::Relaxed) && !muted;
        let speaking = turns.speaking() || control.playing.load(Ordering::Relaxed);
        let now = Instant::now();
        let waking = !wake.words.is_empty();
        wake.gate.speaking(speaking, turns.last_answered(), now);
        // A stop word while sotad speaks cancels the answer.
        if speaking
            && listening
            && !wake.stops.is_empty()
            && let Some(heard) = feed(&mut wake.stops, &mut stops_fed, &frame)
        {
            // Counted when it cancels a turn (not, e.g., during a `tts/say`).
            let turn = turns.cancel_current();
            if turn.is_some() {
                control.stops.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                word = heard.model,
                turn,
                "stop word: playback stopped, turn cancelled"
            );
            let _ = wake.events.try_send(WakeEvent::Detected {
                heard,
                time_s: frame_end_s(&frame),
                stop: true,
            });
        }
        // With wake words (and no stop word model, no barge-in), speech while sotad speaks is
        // transcribed for a stop phrase instead of being ignored.
        let stop_check = speaking && waking && wake.stops.is_empty() && !control.barge_in;
        if !listening || (speaking && !control.barge_in && !stop_check) {
            if speaking && listening {
                control
                    .ignored_while_speaking
                    .fetch_add(1, Ordering::Relaxed);
            }
            if active {
                detector.reset();
                active = false;
                abandon(&mut pauses, &mut end_turn);
            }
            continue;
        }
        // Waiting for the wake word: the frames go to its detectors, not to the VAD.
        if waking && !speaking {
            let (open, closed) = wake.gate.open(now, detector.endpointer().active());
            if closed {
                tracing::debug!("no speech after the wake word (or the follow-up): waiting for it");
            }
            if !open {
                if active {
                    detector.reset();
                    active = false;
                    abandon(&mut pauses, &mut end_turn);
                }
                if let Some(heard) = feed(&mut wake.words, &mut words_fed, &frame) {
                    control.wake_detections.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        word = heard.model,
                        probability = heard.detection.probability,
                        "wake word"
                    );
                    // The VAD starts afresh on the next frame: the utterance is what follows
                    // the word.
                    wake.gate.woken(now);
                    let _ = wake.events.try_send(WakeEvent::Detected {
                        heard,
                        time_s: frame_end_s(&frame),
                        stop: false,
                    });
                }
                continue;
            }
        }
        active = true;
        let mut event = detector.push_window(&frame.samples);
        // Early endpoint: the pause's transcript is in and reads as a finished sentence.
        if event.is_none()
            && pauses.ends_early(
                detector.endpointer().paused_for(),
                listen.complete_silence,
                |key| turns.speculator().complete(key),
            )
        {
            event = detector.end_paused();
        }
        // The learned end of turn: Smart Turn, asked at a short pause, says it is finished.
        let mut smart_ended = false;
        if event.is_none()
            && !stop_check
            && let Some(e) = end_turn.as_deref_mut()
        {
            let endpointer = detector.endpointer();
            let verdict = e.poll(endpointer.silence(), || endpointer.tail(WINDOW_SAMPLES));
            if verdict.is_some() {
                event = detector.end_silent();
                smart_ended = event.is_some();
            }
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
            Some(VadEvent::SpeechStart { .. }) if speaking && control.barge_in => {
                // Barge-in: the person talks over sotad.
                control.barge_ins.fetch_add(1, Ordering::Relaxed);
                if let Some(turn) = turns.cancel_current() {
                    tracing::info!(turn, "barge-in: playback stopped, turn cancelled");
                }
                // With wake words, the utterance that barged in is the next turn's question.
                wake.gate.woken(now);
            }
            Some(VadEvent::SpeechEnd { utterance, .. }) if stop_check => {
                // A full queue (earlier checks still being transcribed) drops it.
                let sent = wake.events.try_send(WakeEvent::Check(utterance));
                if sent.is_err() {
                    tracing::debug!("a stop check was dropped: the last is still running");
                }
            }
            Some(VadEvent::Pause { .. }) if stop_check => {}
            Some(VadEvent::Pause {
                utterance,
                start,
                speech_end,
            }) => {
                control.speculations.fetch_add(1, Ordering::Relaxed);
                pauses.pause((start, speech_end), utterance.len());
                turns.speculator().speculate((start, speech_end), utterance);
            }
            Some(VadEvent::Resume { .. }) => abandon(&mut pauses, &mut end_turn),
            Some(VadEvent::SpeechEnd {
                mut utterance,
                start,
                speech_end,
                at,
                reason,
            }) => {
                // From the true end of speech to now: the trailing silence the endpointer
                // waited for, plus the time the last frame spent in the queue.
                let silence = at.saturating_sub(speech_end);
                let waited = Duration::from_secs_f64(silence as f64 / f64::from(SAMPLE_RATE));
                let queued = frame.captured_at.elapsed();
                // The detector's positions count only the windows it was given; the frame's
                // sequence number counts every frame captured, so the end of speech in the
                // capture stream is this frame's end minus the silence since.
                let captured = (frame.seq + 1) * audio::FRAME_SAMPLES as u64;
                let speech_end_s = captured.saturating_sub(silence) as f64 / f64::from(SAMPLE_RATE);
                let speculation = match pauses.endpoint((start, speech_end)) {
                    AtEndpoint::Adopt { key, len } => {
                        utterance.truncate(len);
                        turns.speculator().take(key)
                    }
                    AtEndpoint::Abandon => {
                        turns.speculator().abandon();
                        None
                    }
                    AtEndpoint::Nothing => None,
                };
                let verdict = end_turn
                    .as_deref_mut()
                    .and_then(|e| e.asker.finish(Some((start, speech_end))));
                let endpoint = if smart_ended {
                    Endpoint::SmartTurn
                } else {
                    if reason == EndReason::Complete {
                        control.complete_endpoints.fetch_add(1, Ordering::Relaxed);
                    }
                    Endpoint::Vad(reason)
                };
                send_utterance(
                    utterances,
                    control,
                    Utterance {
                        samples: utterance,
                        endpoint_delay: waited + queued,
                        endpointed_at: Instant::now(),
                        speculation,
                        endpoint,
                        speech_end_s: Some(speech_end_s),
                        smart_turn: verdict.map(|v| SmartTurnVerdict {
                            probability: (f64::from(v.probability) * 1e4).round() / 1e4,
                            ms: (v.ms * 10.0).round() / 10.0,
                        }),
                    },
                );
                // The next turn needs the wake word again (or the follow-up after its answer).
                wake.gate.close();
            }
            _ => {}
        }
    }
}
