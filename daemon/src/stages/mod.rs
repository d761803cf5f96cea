//! The engine stages: each engine on its own worker thread ([`worker::Worker`]), behind a
//! bounded queue, built from its own configuration section.
//!
//! Stages know nothing of MQTT: they take plain Rust values (a WAV and its options, a
//! conversation, a text to say) and answer with plain values or a [`StageError`];
//! `service` turns requests into those values and the results into replies.
//!
//! - `stt`: Whisper, `Stt::run` (a WAV) and `Stt::transcribe_samples` (the microphone).
//! - `llm`: the LLM with its conversations (`conversations`), the cancel flags of running
//!   generations, and the hold another stage may put on a generation (`hold`).
//! - `tts`: Piper voices, loaded on demand; `Tts::say` streams audio chunks.
//! - `files`: each stage's model files, checked before every job (a file changed in place
//!   turns the stage off with an error naming it).

pub mod conversations;
pub mod error;
pub mod files;
pub mod hold;
pub mod llm;
pub mod stt;
pub mod tts;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::telemetry::Metrics;
pub use error::{StageError, StageErrorKind};
use worker::{EngineState, Worker};

/// The engine stages; `None` where the configuration turned a stage off.
#[derive(Clone, Default)]
pub struct Stages {
    pub stt: Option<stt::SttWorker>,
    pub llm: Option<llm::LlmStage>,
    pub tts: Option<tts::TtsWorker>,
    /// `service.request_queue`: each stage's queue capacity.
    pub queue_capacity: usize,
    /// The cancel flags of queued and running `tts/say` requests, by id (`tts/cancel`).
    pub says: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
}

impl Stages {
    /// Starts a worker thread for every configured stage; loading happens on those threads.
    pub fn spawn(config: &Config) -> Stages {
        let models = config.models_dir();
        let queue = config.service.request_queue;
        Stages {
            stt: stt::spawn(
                config.model_path(&config.stt.model),
                config.stt.clone(),
                queue,
            ),
            llm: llm::spawn(
                config.model_path(&config.llm.model),
                config.llm.clone(),
                queue,
            ),
            tts: tts::spawn(
                config.model_path(&config.tts.voice),
                config.tts.clone(),
                models,
                queue,
            ),
            queue_capacity: queue,
            says: Arc::default(),
        }
    }

    /// Puts each engine's state and queue depth into the metrics for telemetry.
    pub fn report(&self, metrics: &Metrics) {
        fn one<E: 'static>(metrics: &Metrics, worker: &Worker<E>, capacity: usize) {
            let state = match worker.state() {
                EngineState::Loading => "loading".to_string(),
                EngineState::Ready { .. } => "ready".to_string(),
                EngineState::Failed(why) => format!("failed: {why}"),
            };
            metrics.engine_state(worker.name(), state);
            metrics.queue(worker.name(), worker.queued(), capacity);
        }
        let capacity = self.queue_capacity;
        if let Some(w) = &self.stt {
            one(metrics, w, capacity);
        }
        if let Some(l) = &self.llm {
            one(metrics, &l.worker, capacity);
        }
        if let Some(w) = &self.tts {
            one(metrics, w, capacity);
        }
    }
}
