//! An answer, spoken: the LLM's text cut into sentences ([`super::sentences`]), each sent to
//! the TTS worker as soon as it is complete, the audio to the speaker and to MQTT.
//! [`send_audio`] is also what `tts/say` uses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sotad_engines::llm::StopReason;
use tokio::sync::{mpsc, oneshot};

use super::sentences::SentenceSplitter;
use super::speaker::{PlayChunk, Speaker};
use crate::capacity;
use crate::mqtt::Publisher;
use crate::stages::hold::Hold;
use crate::stages::llm::Ask;
use crate::stages::{Stages, tts};
use crate::telemetry::Metrics;

/// Speaks answers: what a turn and a speculative answer share.
#[derive(Clone)]
pub struct Answerer {
    pub stages: Stages,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub speaker: Option<Speaker>,
    /// `voice.first_piece_words`: the answer's first spoken piece ends after this many
    /// words when no clause has ended before (0: no limit).
    pub first_piece_words: usize,
    /// `voice.first_audio_priority`: whether an answer's generation waits while its first
    /// spoken piece is synthesized.
    pub first_audio_priority: bool,
}

/// A spoken answer.
pub struct Answer {
    pub text: String,
    pub stop_reason: StopReason,
    /// When the first token arrived (before the turn started, for an adopted answer).
    pub first_token: Option<Instant>,
    pub first_audio: Option<Instant>,
    /// When the first audio was synthesized: for an answer held behind its gate, before it
    /// went out (`first_audio`).
    pub audio_ready: Option<Instant>,
    pub audio_s: f64,
    pub sentences: usize,
}

/// What [`send_audio`] sent.
#[derive(Debug, Default)]
pub struct AudioSent {
    pub first: Option<Instant>,
    pub samples: usize,
    pub sample_rate: Option<u32>,
    pub sentences: usize,
}

impl AudioSent {
    pub fn seconds(&self) -> f64 {
        self.sample_rate
            .map_or(0.0, |rate| self.samples as f64 / f64::from(rate))
    }
}

/// Sends every chunk of `audio`, in order, to the speaker (if any; skipped there once
/// `cancel` is set) and as a WAV on `topic`.
pub async fn send_audio(
    audio: &mut mpsc::Receiver<tts::Chunk>,
    topic: &str,
    publisher: &Publisher,
    speaker: Option<&Speaker>,
    cancel: &Arc<AtomicBool>,
) -> AudioSent {
    let mut sent = AudioSent::default();
    while let Some(chunk) = audio.recv().await {
        sent.first.get_or_insert_with(Instant::now);
        sent.samples += chunk.samples.len();
        sent.sample_rate = Some(chunk.sample_rate);
        sent.sentences += usize::from(chunk.sentence_end);
        if let Some(speaker) = speaker {
            speaker.play(PlayChunk {
                samples: chunk.samples.clone(),
                sample_rate: chunk.sample_rate,
                cancel: cancel.clone(),
                more: !chunk.sentence_end,
            });
        }
        publisher.bytes(topic, chunk.wav()).await;
    }
    sent
}

impl Answerer {
    /// Speaks `text` (an integration's answer to an intent): synthesized sentence by
    /// sentence, played, and published on `turn`'s `tts/audio` topic. Nothing without TTS.
    pub async fn speak(
        &self,
        turn: &str,
        text: String,
        cancel: &Arc<AtomicBool>,
    ) -> Result<AudioSent, String> {
        let Some(tts) = &self.stages.tts else {
            return Ok(AudioSent::default());
        };
        let say = tts::Say {
            text,
            ..Default::default()
        };
        let (audio_tx, mut audio_rx) = mpsc::channel::<tts::Chunk>(capacity::AUDIO);
        let engine_cancel = cancel.clone();
        let done = tts
            .submit(move |engine| engine.say(&say, &audio_tx, &engine_cancel, || {}))
            .map_err(|e| e.to_string())?;
        let topic = self.publisher.topics().tts_audio(turn);
        let forward = send_audio(
            &mut audio_rx,
            &topic,
            &self.publisher,
            self.speaker.as_ref(),
            cancel,
        );
        let (result, sent) = tokio::join!(done, forward);
        result.map_err(|e| e.to_string())?.map_err(|e| e.message)?;
        Ok(sent)
    }

    /// Answers `question`: the LLM's tokens cut into sentences, each synthesized as soon as
    /// it is complete, the audio played and published on `turn`'s topic. With a `gate` (a
    /// speculative answer), no audio goes out and nothing is remembered until the gate gives
    /// the id of the turn that adopts it; if the gate closes instead, the audio is dropped.
    pub async fn answer(
        &self,
        turn: &str,
        llm_id: &str,
        question: String,
        session: Option<String>,
        cancel: &Arc<AtomicBool>,
        gate: Option<oneshot::Receiver<String>>,
    ) -> Result<Answer, String> {
        let inner = self;
        let Some(llm) = &inner.stages.llm else {
            return Err("the LLM is off: configuration key `llm.model` is empty".into());
        };
        let ask = Ask::question(llm_id.to_string(), question, session);
        // Held while the first spoken piece is synthesized (`voice.first_audio_priority`).
        let hold = (inner.first_audio_priority && inner.stages.tts.is_some())
            .then(|| Arc::new(Hold::default()));
        let (mut tokens_rx, done) = llm
            .ask_streaming(
                ask,
                capacity::SPOKEN_TOKENS,
                hold.clone(),
                gate.is_none(),
                cancel.load(Ordering::Relaxed),
            )
            .map_err(|e| e.to_string())?;

        // Speech for the sentences, in order, as they complete.
        let (audio_tx, mut audio_rx) = mpsc::channel::<tts::Chunk>(capacity::AUDIO);
        // When the first audio was synthesized (a held answer's waits behind the gate).
        let audio_ready = Arc::new(OnceLock::new());
        let mut ttft = None;
        let tokens = async {
            // Owns the audio sender: the channel closes once every sentence is synthesized.
            let audio_tx = audio_tx;
            let mut jobs = Vec::new();
            let mut splitter = SentenceSplitter::new()
                .early_first_clause()
                .first_piece_words(inner.first_piece_words);
            let mut speak = |sentence: String| {
                let Some(tts) = &inner.stages.tts else {
                    return;
                };
                let say = tts::Say {
                    text: sentence,
                    ..Default::default()
                };
                let tx = audio_tx.clone();
                let cancel = cancel.clone();
                // The first piece has the CPU to itself until its first audio is out; the
                // guard goes with the job, so a job that is refused or ends without audio
                // releases the hold too.
                let first = hold.clone().filter(|_| jobs.is_empty()).map(Hold::guard);
                let ready = audio_ready.clone();
                let first_audio = move || {
                    let _ = ready.set(Instant::now());
                    drop(first);
                };
                match tts.submit(move |engine| engine.say(&say, &tx, &cancel, first_audio)) {
                    Ok(job) => jobs.push(job),
                    Err(e) => {
                        inner.metrics.queue_dropped("tts");
                        tracing::warn!(turn, error = %e, "a sentence was not spoken");
                    }
                }
            };
            while let Some(piece) = tokens_rx.recv().await {
                if ttft.is_none() {
                    ttft = Some(Instant::now());
                }
                for sentence in splitter.push(&piece) {
                    speak(sentence);
                }
            }
            if let Some(rest) = splitter.finish() {
                speak(rest);
            }
            for job in jobs {
                if let Ok(Err(e)) = job.await {
                    tracing::warn!(turn, error = %e, "a sentence could not be synthesized");
                }
            }
        };
        let forward = async {
            let topic = match gate {
                None => inner.publisher.topics().tts_audio(turn),
                Some(gate) => match gate.await {
                    Ok(adopted_by) => inner.publisher.topics().tts_audio(&adopted_by),
                    Err(_) => {
                        // Abandoned: let the synthesis finish (it stops on the cancel flag)
                        // and drop its audio.
                        while audio_rx.recv().await.is_some() {}
                        return AudioSent::default();
                    }
                },
            };
            send_audio(
                &mut audio_rx,
                &topic,
                &inner.publisher,
                inner.speaker.as_ref(),
                cancel,
            )
            .await
        };
        let (result, (), sent) = tokio::join!(done, tokens, forward);
        llm.finish(llm_id);
        let reply = result.map_err(|e| e.to_string())?.map_err(|e| e.message)?;
        // Every sentence is synthesized; while it plays, evaluate the conversation for the
        // next question.
        llm.warm();
        Ok(Answer {
            text: reply.text,
            stop_reason: reply.stop_reason,
            first_token: ttft,
            first_audio: sent.first,
            audio_ready: audio_ready.get().copied(),
            audio_s: sent.seconds(),
            sentences: sent.sentences,
        })
    }
}
