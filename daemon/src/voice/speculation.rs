//! Speculation: work started at a pause in speech, before the endpoint knows whether the
//! utterance is over.
//!
//! A pause of `vad.speculate_ms` starts Whisper on the utterance so far. When its transcript
//! is in (often before the endpoint), the LLM either evaluates the prompt it would answer
//! from (`vad.speculate_answer = false`), or answers it at once with the audio held behind a
//! gate (a [`Held`] answer). Speech that comes back abandons all of it (transcription and LLM
//! cancelled, audio dropped); the endpoint's turn adopts it when nothing was said since the
//! pause (same utterance start, same end of speech). A transcript that reads as a finished
//! sentence lets the VAD thread end the utterance after `vad.complete_silence_ms`.
//!
//! The decisions are pure and tested here: [`PauseTracker`] (the VAD thread's view: start,
//! abandon, adopt, end early) and [`on_transcript`] (what a transcript starts). The rest of
//! this file carries them out on the stages.
//!
//! Lock order: none. The speculation slot here, a speculation's `held` slot, the turn in
//! progress and the turns waiting for an intent's answer (`turn.rs`) and the LLM stage's
//! table of cancel flags are each locked alone, never one inside another.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sotad_engines::intent::IntentSet;
use sotad_engines::llm::StopReason;
use tokio::sync::oneshot;

use super::answer::{Answer, Answerer};
use super::sentences;
use crate::stages::llm::Ask;
use crate::stages::stt::{SttWorker, Task};

/// What a transcription gives a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub language: String,
    /// From the start of the transcription to its end.
    pub ms: f64,
}

pub type TranscriptResult = Result<Transcript, String>;

/// Queues a transcription of 16 kHz `samples` on the STT worker, stopped by `cancel`, with
/// Whisper's `initial_prompt` (`intents.stt_prompt`); the future gives its result.
pub fn transcribe(
    stt: Option<&SttWorker>,
    samples: Vec<f32>,
    prompt: Option<Arc<str>>,
    cancel: Arc<AtomicBool>,
) -> Result<impl Future<Output = TranscriptResult> + Send + use<>, String> {
    let Some(stt) = stt else {
        return Err("speech-to-text is off: configuration key `stt.model` is empty".into());
    };
    let started = Instant::now();
    let pending = stt
        .submit(move |engine| {
            engine.transcribe_samples(
                &samples,
                None,
                Task::Transcribe,
                None,
                prompt.as_deref(),
                Some(cancel),
            )
        })
        .map_err(|e| e.to_string())?;
    Ok(async move {
        let t = pending.await.map_err(|e| e.to_string())??;
        Ok(Transcript {
            text: t.text.trim().to_string(),
            language: t.language.clone(),
            ms: started.elapsed().as_secs_f64() * 1e3,
        })
    })
}

/// An utterance as the endpointer numbers it: (start, end of speech), stream positions.
pub type UtteranceKey = (u64, u64);

/// The VAD thread's side of speculation: the latest pause of the utterance under way.
#[derive(Debug, Default)]
pub struct PauseTracker {
    last: Option<(UtteranceKey, usize)>,
}

/// What the endpoint does with the latest pause's speculation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEndpoint {
    /// Nothing was said since the pause: the turn transcribes the same audio (the utterance
    /// cut to `len` samples) and takes the speculation's result.
    Adopt { key: UtteranceKey, len: usize },
    /// Speech came after the pause: its speculation is stale.
    Abandon,
    /// There was no pause.
    Nothing,
}

impl PauseTracker {
    /// A pause in `key`'s speech, `len` samples into the utterance: a speculation starts.
    pub fn pause(&mut self, key: UtteranceKey, len: usize) {
        self.last = Some((key, len));
    }

    /// Speech came back, or the utterance was dropped (mute, listen off, push-to-talk):
    /// whether a speculation is to be abandoned.
    pub fn abandon(&mut self) -> bool {
        self.last.take().is_some()
    }

    /// The utterance `key` ended.
    pub fn endpoint(&mut self, key: UtteranceKey) -> AtEndpoint {
        match self.last.take() {
            Some((paused, len)) if paused == key => AtEndpoint::Adopt { key, len },
            Some(_) => AtEndpoint::Abandon,
            None => AtEndpoint::Nothing,
        }
    }

    /// Whether to end the utterance now, before the whole trailing silence: the pause has
    /// lasted `complete_silence` samples (0: never) and its transcript reads as complete.
    pub fn ends_early(
        &self,
        paused_for: Option<u64>,
        complete_silence: u64,
        transcript_complete: impl FnOnce(UtteranceKey) -> bool,
    ) -> bool {
        match self.last {
            Some((key, _)) if complete_silence > 0 => {
                paused_for.is_some_and(|s| s >= complete_silence) && transcript_complete(key)
            }
            _ => false,
        }
    }
}

/// What a speculative transcript starts before the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTranscript {
    /// Nothing: no words, speech came back, or no LLM.
    Nothing,
    /// The LLM evaluates the prompt the answer would start from (`vad.speculate_answer`
    /// off).
    Prepare,
    /// The LLM answers at once, the audio held until a turn adopts it.
    Answer,
}

/// Decides what a speculative transcript `text` starts.
pub fn on_transcript(
    text: &str,
    cancelled: bool,
    speculate_answers: bool,
    llm: bool,
) -> OnTranscript {
    if text.trim().is_empty() || cancelled || !llm {
        OnTranscript::Nothing
    } else if speculate_answers {
        OnTranscript::Answer
    } else {
        OnTranscript::Prepare
    }
}

/// A transcription started at a pause in speech (`vad.speculate_ms`), before the endpoint
/// knew whether the utterance was over. Cancelled when speech comes back.
pub struct Speculation {
    /// The endpoint's utterance must have the same key to use this transcript.
    key: UtteranceKey,
    pub cancel: Arc<AtomicBool>,
    pub started: Instant,
    pub result: Pin<Box<dyn Future<Output = TranscriptResult> + Send>>,
    /// The answer started from the transcript before the endpoint, if any: set before
    /// `result` resolves.
    pub held: Arc<Mutex<Option<Held>>>,
    /// Set once the transcript is ready and reads as a finished sentence
    /// ([`sentences::reads_complete`]): the VAD thread may end the utterance early.
    complete: Arc<AtomicBool>,
}

/// An answer generated from a speculative transcript before the endpoint confirmed it: the
/// LLM and TTS run, but no audio is played or published (and nothing is remembered) until
/// the turn sends its id through `commit`. Dropping `commit` abandons it.
pub struct Held {
    llm_id: String,
    commit: oneshot::Sender<String>,
    done: tokio::task::JoinHandle<Result<Answer, String>>,
}

impl Held {
    /// The id its generation can be cancelled by.
    pub fn llm_id(&self) -> &str {
        &self.llm_id
    }
}

/// Starts, keeps and hands over the speculation of the utterance under way.
#[derive(Clone)]
pub struct Speculator {
    inner: Arc<Inner>,
}

struct Inner {
    answerer: Answerer,
    /// `vad.speculate_answer`: whether a transcript made before the endpoint is answered at
    /// once (held back until the endpoint), or only has its prompt evaluated.
    speculate_answers: bool,
    /// The LLM session of spoken questions.
    session: String,
    /// The transcription started at the latest pause, if speech has not come back since.
    /// Locked alone.
    speculation: Mutex<Option<Speculation>>,
    /// Numbers the speculative answers (their LLM request ids).
    seq: AtomicU64,
    /// The runtime, for the tasks that follow a speculation from the VAD thread.
    runtime: Option<tokio::runtime::Handle>,
    /// A transcript that matches one of these is a command: the LLM does not start on it.
    intents: Option<Arc<IntentSet>>,
    /// Whisper's `initial_prompt` for spoken turns (`intents.stt_prompt`).
    stt_prompt: Option<Arc<str>>,
}

impl Speculator {
    pub fn new(
        answerer: Answerer,
        speculate_answers: bool,
        session: String,
        intents: Option<Arc<IntentSet>>,
        stt_prompt: Option<Arc<str>>,
    ) -> Speculator {
        Speculator {
            inner: Arc::new(Inner {
                intents,
                stt_prompt,
                answerer,
                speculate_answers,
                session,
                speculation: Mutex::new(None),
                seq: AtomicU64::new(0),
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }

    /// Whisper's `initial_prompt` for spoken turns.
    pub fn stt_prompt(&self) -> Option<Arc<str>> {
        self.inner.stt_prompt.clone()
    }

    /// The LLM session of spoken questions.
    pub fn voice_session(&self) -> Option<String> {
        Some(self.inner.session.clone())
    }

    /// Starts transcribing the utterance so far at a pause (`VadEvent::Pause`), replacing
    /// (and cancelling) an earlier speculation.
    pub fn speculate(&self, key: UtteranceKey, samples: Vec<f32>) {
        let cancel = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(None));
        let complete = Arc::new(AtomicBool::new(false));
        let stt = self.inner.answerer.stages.stt.as_ref();
        let prompt = self.inner.stt_prompt.clone();
        let speculation = match transcribe(stt, samples, prompt, cancel.clone()) {
            Ok(pending) => Some(Speculation {
                key,
                cancel: cancel.clone(),
                started: Instant::now(),
                result: self.follow_speculation(pending, cancel, held.clone(), complete.clone()),
                held,
                complete,
            }),
            Err(e) => {
                tracing::debug!(error = e, "no speculative transcription");
                None
            }
        };
        let old = std::mem::replace(
            &mut *self
                .inner
                .speculation
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            speculation,
        );
        if let Some(old) = old {
            self.cancel_speculation(old);
        }
    }

    /// Speech came back after the pause (or the utterance was abandoned): the speculative
    /// transcription is cancelled. Returns whether there was one.
    pub fn abandon(&self) -> bool {
        let old = self
            .inner
            .speculation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        old.map(|s| self.cancel_speculation(s)).is_some()
    }

    /// Whether the speculative transcription of the utterance `key` is ready and reads as a
    /// finished sentence (then the endpoint need not wait for the whole trailing silence).
    pub fn complete(&self, key: UtteranceKey) -> bool {
        self.inner
            .speculation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| s.key == key && s.complete.load(Ordering::Relaxed))
    }

    /// The speculative transcription of the utterance `key`, if one is under way; any other
    /// is cancelled.
    pub fn take(&self, key: UtteranceKey) -> Option<Speculation> {
        let s = self
            .inner
            .speculation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        if s.key == key {
            Some(s)
        } else {
            self.cancel_speculation(s);
            None
        }
    }

    /// Cancels a speculation: its transcription and, if it has one, its held answer.
    fn cancel_speculation(&self, s: Speculation) {
        s.cancel.store(true, Ordering::Relaxed);
        let held = s.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = held {
            self.abandon_held(h);
        }
    }

    /// Stops a held answer that no turn will adopt: the LLM is cancelled, the audio is
    /// neither played nor published, nothing is remembered.
    pub fn abandon_held(&self, h: Held) {
        if let Some(llm) = &self.inner.answerer.stages.llm {
            llm.cancel(&h.llm_id);
        }
        drop(h.commit);
        self.inner.answerer.metrics.speculative_answer(false);
    }

    /// Makes a held answer the turn `turn`'s: its audio goes out under the turn's id from
    /// now on, and once it is complete the exchange is remembered in the voice session.
    pub async fn adopt(
        &self,
        turn: &str,
        h: Held,
        question: &str,
        session: Option<String>,
    ) -> Result<Answer, String> {
        self.inner.answerer.metrics.speculative_answer(true);
        let _ = h.commit.send(turn.to_string());
        let answer = h
            .done
            .await
            .unwrap_or_else(|e| Err(format!("the answer task failed: {e}")))?;
        if answer.stop_reason != StopReason::Cancelled
            && let Some(llm) = &self.inner.answerer.stages.llm
        {
            let ask = Ask::question(h.llm_id, question.to_string(), session);
            let reply = answer.text.clone();
            match llm
                .worker
                .submit(move |engine| engine.remember(&ask, &reply))
            {
                Ok(_) => llm.warm(),
                Err(e) => tracing::warn!(turn, error = %e, "the answer was not remembered"),
            }
        }
        Ok(answer)
    }

    /// Drives a speculative transcription on its own task, so that as soon as it has a
    /// transcript (often before the endpoint), what [`on_transcript`] decides starts at
    /// once. Nothing is published or remembered before the turn.
    fn follow_speculation(
        &self,
        pending: impl Future<Output = TranscriptResult> + Send + 'static,
        cancel: Arc<AtomicBool>,
        held: Arc<Mutex<Option<Held>>>,
        complete: Arc<AtomicBool>,
    ) -> Pin<Box<dyn Future<Output = TranscriptResult> + Send>> {
        let Some(runtime) = &self.inner.runtime else {
            return Box::pin(pending);
        };
        let this = self.clone();
        let spawner = runtime.clone();
        let task = runtime.spawn(async move {
            let result = pending.await;
            if let Ok(Transcript { text, .. }) = &result {
                // A command goes to its intent, never to the LLM: nothing to start early.
                let command = this
                    .inner
                    .intents
                    .as_ref()
                    .is_some_and(|set| set.recognize(text).is_some());
                let llm = this.inner.answerer.stages.llm.as_ref().filter(|_| !command);
                match on_transcript(
                    text,
                    cancel.load(Ordering::Relaxed),
                    this.inner.speculate_answers,
                    llm.is_some(),
                ) {
                    OnTranscript::Nothing => {}
                    OnTranscript::Prepare => {
                        // Only evaluate the prompt the answer would start from.
                        let ask =
                            Ask::question("prepare".into(), text.clone(), this.voice_session());
                        if let Some(llm) = llm
                            && let Err(e) = llm.worker.submit(move |engine| engine.prepare(&ask))
                        {
                            tracing::debug!(error = %e, "speculative prompt not evaluated");
                        }
                    }
                    OnTranscript::Answer => {
                        this.hold_answer(&spawner, text.clone(), &cancel, &held);
                    }
                }
            }
            // Last, so that an early endpoint finds the held answer in place.
            if let Ok(t) = &result
                && sentences::reads_complete(&t.text)
            {
                complete.store(true, Ordering::Relaxed);
            }
            result
        });
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the transcription task failed: {e}")))
        })
    }

    /// Answers a speculative transcript now, held back until the endpoint confirms the
    /// question, and puts it in `held` (or abandons it if speech came back meanwhile).
    fn hold_answer(
        &self,
        spawner: &tokio::runtime::Handle,
        question: String,
        cancel: &Arc<AtomicBool>,
        held: &Mutex<Option<Held>>,
    ) {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let label = format!("speculative-{n}");
        let llm_id = format!("{label}/llm");
        let (commit, gate) = oneshot::channel();
        let (answerer, id, flag) = (self.inner.answerer.clone(), llm_id.clone(), cancel.clone());
        let session = self.voice_session();
        let done = spawner.spawn(async move {
            answerer
                .answer(&label, &id, question, session, &flag, Some(gate))
                .await
        });
        let h = Held {
            llm_id,
            commit,
            done,
        };
        let mut slot = held.lock().unwrap_or_else(|e| e.into_inner());
        if cancel.load(Ordering::Relaxed) {
            // Abandoned meanwhile: nobody will look at the slot again.
            drop(slot);
            self.abandon_held(h);
        } else {
            *slot = Some(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_adopts_only_the_speculation_of_its_own_pause() {
        let mut p = PauseTracker::default();
        assert_eq!(
            p.endpoint((0, 100)),
            AtEndpoint::Nothing,
            "no pause, nothing to adopt"
        );

        p.pause((0, 100), 1600);
        assert_eq!(
            p.endpoint((0, 100)),
            AtEndpoint::Adopt {
                key: (0, 100),
                len: 1600
            }
        );
        assert_eq!(p.endpoint((0, 100)), AtEndpoint::Nothing, "adopted once");

        // Speech after the pause moved the end of speech: the speculation is stale.
        p.pause((0, 100), 1600);
        assert_eq!(p.endpoint((0, 180)), AtEndpoint::Abandon);
    }

    #[test]
    fn speech_that_comes_back_abandons_the_pause() {
        let mut p = PauseTracker::default();
        assert!(!p.abandon(), "nothing to abandon");
        p.pause((0, 100), 1600);
        assert!(p.abandon());
        assert!(!p.abandon());
        assert_eq!(p.endpoint((0, 100)), AtEndpoint::Nothing);
        // A later pause replaces an earlier one.
        p.pause((0, 100), 1600);
        p.pause((0, 200), 3200);
        assert_eq!(
            p.endpoint((0, 200)),
            AtEndpoint::Adopt {
                key: (0, 200),
                len: 3200
            }
        );
    }

    #[test]
    fn an_utterance_ends_early_only_on_a_complete_transcript_after_enough_silence() {
        let mut p = PauseTracker::default();
        let yes = |_| true;
        assert!(!p.ends_early(Some(10_000), 6400, yes), "no pause yet");
        p.pause((5, 100), 1600);
        assert!(p.ends_early(Some(6400), 6400, yes));
        assert!(!p.ends_early(Some(6399), 6400, yes), "silence too short");
        assert!(!p.ends_early(None, 6400, yes), "speaking again");
        assert!(
            !p.ends_early(Some(6400), 6400, |_| false),
            "transcript not complete"
        );
        assert!(!p.ends_early(Some(100_000), 0, yes), "early endpoint off");
        let mut asked = None;
        p.ends_early(Some(6400), 6400, |key| {
            asked = Some(key);
            true
        });
        assert_eq!(
            asked,
            Some((5, 100)),
            "asks about the pause's own utterance"
        );
    }

    #[test]
    fn a_transcript_starts_an_answer_a_preparation_or_nothing() {
        use OnTranscript::*;
        assert_eq!(on_transcript("What time is it?", false, true, true), Answer);
        assert_eq!(
            on_transcript("What time is it?", false, false, true),
            Prepare
        );
        assert_eq!(on_transcript("  ", false, true, true), Nothing, "no words");
        assert_eq!(
            on_transcript("Hello", true, true, true),
            Nothing,
            "speech came back"
        );
        assert_eq!(
            on_transcript("Hello", false, true, false),
            Nothing,
            "no LLM"
        );
    }
}
