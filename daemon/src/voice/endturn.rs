//! The learned end of turn: Smart Turn v3 (`[turn]`) asked at a short pause whether the
//! utterance is finished.
//!
//! The VAD thread never waits for the model: at `turn.pause_ms` of silence after speech it
//! hands the last (up to) 8 s of the utterance to the `sotad-endturn` thread and goes on with
//! the next frame; the verdict comes back on a channel it polls once a frame. A verdict
//! above `turn.threshold` ("complete") ends the utterance at once, if nothing was said since
//! the pause it was asked about; "incomplete" lets the endpoint wait for more speech or the
//! trailing silence, and the next pause asks again. One question at a time: a pause while
//! the model still runs for an earlier one is asked once it is free (if still silent).
//!
//! [`Asker`] is the pure bookkeeping (unit-tested); [`EndTurn`] carries it out on the thread.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::time::Instant;

use sotad_engines::audio::SAMPLE_RATE;
use sotad_engines::turn::SmartTurn;

use super::speculation::UtteranceKey;

/// The audio Smart Turn reads: the last 8 s of the utterance.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE as usize;

/// Smart Turn's answer about one pause.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The utterance and end of speech it was asked about.
    pub key: UtteranceKey,
    /// The probability that the turn is finished.
    pub probability: f32,
    /// From the question (handed to the thread) to the answer, ms.
    pub ms: f64,
}

/// What the VAD thread does after a frame, as [`Asker::step`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Ask about the pause `key` now (the model is free).
    Ask(UtteranceKey),
}

/// The pure side: which pause was asked about, whether the model is busy, the latest
/// verdict on the utterance under way.
#[derive(Debug, Default)]
pub struct Asker {
    /// The pause last asked about (one question per pause).
    asked: Option<UtteranceKey>,
    /// A question is with the model.
    busy: bool,
    /// The latest verdict that was about the utterance under way.
    last: Option<Verdict>,
}

impl Asker {
    /// After a frame: `pause` is the utterance's key and silence so far (samples) when it
    /// is in a pause, `pause_samples` is `turn.pause_ms`.
    pub fn step(&mut self, pause: Option<(UtteranceKey, u64)>, pause_samples: u64) -> Step {
        match pause {
            Some((key, silence))
                if silence >= pause_samples && !self.busy && self.asked != Some(key) =>
            {
                self.asked = Some(key);
                self.busy = true;
                Step::Ask(key)
            }
            _ => Step::Nothing,
        }
    }

    /// The question could not be handed over (the thread is gone): not busy.
    pub fn not_asked(&mut self) {
        self.busy = false;
    }

    /// A verdict came back: whether it ends the utterance now, i.e. it says complete
    /// (`> threshold`, as Pipecat) about the pause still under way (`pause`: its key).
    pub fn verdict(&mut self, v: Verdict, pause: Option<UtteranceKey>, threshold: f32) -> bool {
        self.busy = false;
        if pause != Some(v.key) {
            // Speech came back, or the utterance ended meanwhile: stale.
            return false;
        }
        self.last = Some(v);
        v.probability > threshold
    }

    /// The utterance `key` ended (any rule) or was dropped: its latest verdict, and a fresh
    /// start for the next one.
    pub fn finish(&mut self, key: Option<UtteranceKey>) -> Option<Verdict> {
        self.asked = None;
        self.last.take().filter(|v| Some(v.key) == key)
    }
}

struct Question {
    key: UtteranceKey,
    samples: Vec<f32>,
    asked_at: Instant,
}

/// Smart Turn for the VAD thread: the model on its own thread, and the [`Asker`].
pub struct EndTurn {
    pub asker: Asker,
    /// `turn.pause_ms` in samples.
    pause: u64,
    /// `turn.threshold`.
    threshold: f32,
    questions: SyncSender<Question>,
    verdicts: Receiver<Verdict>,
}

impl EndTurn {
    /// Starts the `sotad-endturn` thread with `model`.
    pub fn start(model: Arc<SmartTurn>, pause_ms: u32, threshold: f32) -> std::io::Result<Self> {
        let (questions, rx) = mpsc::sync_channel::<Question>(1);
        let (tx, verdicts) = mpsc::channel();
        std::thread::Builder::new()
            .name("sotad-endturn".into())
            .spawn(move || {
                while let Ok(q) = rx.recv() {
                    let probability = model.probability(&q.samples);
                    let v = Verdict {
                        key: q.key,
                        probability,
                        ms: q.asked_at.elapsed().as_secs_f64() * 1e3,
                    };
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            })?;
        Ok(EndTurn {
            asker: Asker::default(),
            pause: u64::from(pause_ms) * u64::from(SAMPLE_RATE) / 1000,
            threshold,
            questions,
            verdicts,
        })
    }

    /// After a frame without an event: `pause` is the utterance's key and silence so far
    /// when it is in a pause, `tail` its last 8 s. Returns the verdict that ends it now.
    pub fn poll(
        &mut self,
        pause: Option<(UtteranceKey, u64)>,
        tail: impl FnOnce() -> Vec<f32>,
    ) -> Option<Verdict> {
        let key = pause.map(|(k, _)| k);
        loop {
            match self.verdicts.try_recv() {
                Ok(v) => {
                    tracing::debug!(
                        probability = v.probability,
                        ms = v.ms,
                        current = key == Some(v.key),
                        "smart turn"
                    );
                    if self.asker.verdict(v, key, self.threshold) {
                        return Some(v);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.asker.not_asked();
                    break;
                }
            }
        }
        if let Step::Ask(key) = self.asker.step(pause, self.pause) {
            let q = Question {
                key,
                samples: tail(),
                asked_at: Instant::now(),
            };
            if self.questions.try_send(q).is_err() {
                // Cannot be full (one question at a time): the thread is gone.
                self.asker.not_asked();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: UtteranceKey, probability: f32) -> Verdict {
        Verdict {
            key,
            probability,
            ms: 10.0,
        }
    }

    #[test]
    fn one_question_per_pause_and_only_when_the_model_is_free() {
        let mut a = Asker::default();
        let k = (0, 1000);
        assert_eq!(a.step(None, 3200), Step::Nothing, "speaking");
        assert_eq!(a.step(Some((k, 3199)), 3200), Step::Nothing, "too short");
        assert_eq!(a.step(Some((k, 3200)), 3200), Step::Ask(k));
        assert_eq!(a.step(Some((k, 4000)), 3200), Step::Nothing, "asked");
        // Speech came back and paused again while the model still ran: wait for it.
        let k2 = (0, 9000);
        assert_eq!(a.step(Some((k2, 3200)), 3200), Step::Nothing, "busy");
        assert!(!a.verdict(v(k, 0.9), Some(k2), 0.5), "stale verdict");
        assert_eq!(a.step(Some((k2, 3500)), 3200), Step::Ask(k2));
    }

    #[test]
    fn a_complete_verdict_on_the_pause_under_way_ends_the_utterance() {
        let mut a = Asker::default();
        let k = (5, 100);
        assert_eq!(a.step(Some((k, 3200)), 3200), Step::Ask(k));
        assert!(!a.verdict(v(k, 0.5), Some(k), 0.5), "0.5 is not above 0.5");
        assert_eq!(a.finish(Some(k)), Some(v(k, 0.5)), "reported at the end");
        assert_eq!(a.finish(Some(k)), None);
        assert_eq!(a.step(Some((k, 3200)), 3200), Step::Ask(k), "fresh start");
        assert!(a.verdict(v(k, 0.51), Some(k), 0.5));
        // A verdict on another utterance is not reported on this one.
        assert_eq!(a.finish(Some((200, 300))), None);
    }
}
