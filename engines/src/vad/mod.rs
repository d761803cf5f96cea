//! Voice activity detection and endpointing.
//!
//! Three parts, usable alone or together through [`VoiceDetector`]:
//!
//! - [`gate::EnergyGate`]: an RMS gate with an adaptive noise floor, so the model sleeps in
//!   silence and steady background noise.
//! - [`silero::SileroVad`]: Silero VAD v5 (16 kHz), read from the ONNX file of the
//!   `silero-vad` package; one speech probability per 512-sample window, with the recurrent
//!   state in a [`silero::VadState`] per stream.
//! - [`endpoint::Endpointer`]: a pure state machine from (window, probability) to
//!   [`VadEvent::SpeechStart`] / [`VadEvent::SpeechEnd`], with pre-roll, minimum speech,
//!   trailing silence and a maximum utterance length.
//!
//! ```no_run
//! use sotad_engines::vad::{SileroVad, VadEvent, VoiceDetector, VoiceDetectorConfig};
//!
//! # fn main() -> sotad_engines::Result<()> {
//! let model = SileroVad::load("silero-vad/silero_vad_16k_op15.onnx")?;
//! let mut det = VoiceDetector::new(model, VoiceDetectorConfig::default());
//! let window = [0.0f32; 512]; // 32 ms at 16 kHz, from the capture thread
//! if let Some(VadEvent::SpeechEnd { utterance, .. }) = det.push_window(&window) {
//!     println!("utterance of {} samples", utterance.len());
//! }
//! # Ok(())
//! # }
//! ```

pub mod endpoint;
pub mod gate;
pub mod silero;

pub use self::endpoint::{EndReason, EndpointConfig, Endpointer, VadEvent};
pub use self::gate::{EnergyGate, GateConfig, GateDecision, rms_db};
pub use self::silero::{SAMPLE_RATE, SileroVad, VadState, WINDOW};

/// Settings of a [`VoiceDetector`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VoiceDetectorConfig {
    /// The energy gate; `None` runs the model on every window.
    pub gate: Option<GateConfig>,
    /// The endpointer (its `sample_rate` must be 16 000).
    pub endpoint: EndpointConfig,
}

/// Counters of a [`VoiceDetector`], for telemetry and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectorStats {
    /// Windows pushed.
    pub windows: u64,
    /// Windows the model ran on (the rest were gated out).
    pub model_runs: u64,
}

/// Gate, model and endpointer for one 16 kHz mono stream.
#[derive(Debug)]
pub struct VoiceDetector {
    model: SileroVad,
    state: VadState,
    gate: Option<EnergyGate>,
    endpointer: Endpointer,
    /// Samples of an incomplete window ([`VoiceDetector::push`]).
    pending: Vec<f32>,
    stats: DetectorStats,
    last_probability: f32,
}

impl VoiceDetector {
    /// A detector at the start of a stream.
    pub fn new(model: SileroVad, mut cfg: VoiceDetectorConfig) -> Self {
        cfg.endpoint.sample_rate = SAMPLE_RATE;
        Self {
            model,
            state: VadState::new(),
            gate: cfg.gate.map(|g| EnergyGate::new(g, SAMPLE_RATE)),
            endpointer: Endpointer::new(cfg.endpoint),
            pending: Vec::with_capacity(WINDOW),
            stats: DetectorStats::default(),
            last_probability: 0.0,
        }
    }

    /// One 512-sample window: gate, model (if the gate is open), endpointer.
    pub fn push_window(&mut self, window: &[f32; WINDOW]) -> Option<VadEvent> {
        self.stats.windows += 1;
        let open = match &mut self.gate {
            Some(g) => g.push(window, self.endpointer.active()).open,
            None => true,
        };
        let p = if open {
            self.stats.model_runs += 1;
            self.model.probability(&mut self.state, window)
        } else {
            self.state.skip(window);
            0.0
        };
        self.last_probability = p;
        self.endpointer.push(window, p)
    }

    /// Any number of samples; complete windows are processed, the rest is kept for the next
    /// call. Events are appended to `events`.
    pub fn push(&mut self, samples: &[f32], events: &mut Vec<VadEvent>) {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (WINDOW - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == WINDOW {
                let mut w = [0f32; WINDOW];
                w.copy_from_slice(&self.pending);
                self.pending.clear();
                if let Some(e) = self.push_window(&w) {
                    events.push(e);
                }
            }
        }
    }

    /// End of stream: ends an utterance under way ([`EndReason::Flushed`]).
    pub fn flush(&mut self) -> Option<VadEvent> {
        self.pending.clear();
        self.endpointer.flush()
    }

    /// Ends the utterance under way during a pause ([`Endpointer::end_paused`]).
    pub fn end_paused(&mut self) -> Option<VadEvent> {
        self.endpointer.end_paused()
    }

    /// Ends the utterance under way during any silence ([`Endpointer::end_silent`]).
    pub fn end_silent(&mut self) -> Option<VadEvent> {
        self.endpointer.end_silent()
    }

    /// Starts a new, unrelated stream: model state and endpointer are reset; the gate keeps
    /// the noise floor it has learnt (same room, same microphone).
    pub fn reset(&mut self) {
        self.state.reset();
        self.pending.clear();
        let cfg = self.endpointer.config().clone();
        self.endpointer = Endpointer::new(cfg);
        self.last_probability = 0.0;
    }

    /// The probability of the last window (0 when gated out).
    pub fn last_probability(&self) -> f32 {
        self.last_probability
    }

    /// Counters.
    pub fn stats(&self) -> DetectorStats {
        self.stats
    }

    /// The endpointer (state queries).
    pub fn endpointer(&self) -> &Endpointer {
        &self.endpointer
    }
}
