//! The energy gate in front of the model: a window whose level is not clearly above the
//! background is not worth running the network on.
//!
//! The level of a window is its RMS in dBFS (full scale = 1.0; digital silence is clamped to
//! [`SILENCE_DB`]). The gate opens when the level is at least `min_db` *and* at least
//! `margin_db` above the tracked noise floor, and stays open `hangover_ms` after the last
//! window that opened it, so soft word endings still reach the model.
//!
//! The noise floor falls at once to any quieter window (but not below `min_db - margin_db`) and rises slowly (`rise_db_per_s`)
//! towards louder windows, but only while the caller reports no speech: a steady fan or hum
//! is learnt within seconds, a long utterance is not learnt as noise.

/// The level reported for digital silence.
pub const SILENCE_DB: f32 = -120.0;

/// Gate settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// Absolute level below which the gate never opens, dBFS (e.g. -55).
    pub min_db: f32,
    /// How far above the noise floor a window must be, dB (e.g. 9).
    pub margin_db: f32,
    /// How fast the floor may rise towards louder non-speech windows, dB per second.
    pub rise_db_per_s: f32,
    /// How long the gate stays open after the last loud window, ms.
    pub hangover_ms: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            min_db: -55.0,
            margin_db: 9.0,
            rise_db_per_s: 3.0,
            hangover_ms: 300,
        }
    }
}

/// The gate's state.
#[derive(Debug, Clone)]
pub struct EnergyGate {
    cfg: GateConfig,
    /// Tracked noise floor, dBFS. It starts at `min_db - margin_db`, so until the
    /// background has been heard, "loud" means at least `min_db`.
    floor_db: f32,
    /// Samples of hangover left.
    hangover_left: u64,
    hangover_samples: u64,
    sample_rate: u32,
}

/// What the gate decided for one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateDecision {
    /// Run the model on this window.
    pub open: bool,
    /// The window's RMS level, dBFS.
    pub level_db: f32,
    /// The noise floor after this window, dBFS.
    pub floor_db: f32,
}

/// RMS level of `samples` in dBFS; non-finite samples count as 0.
pub fn rms_db(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return SILENCE_DB;
    }
    let sum: f64 = samples
        .iter()
        .map(|&s| {
            if s.is_finite() {
                f64::from(s) * f64::from(s)
            } else {
                0.0
            }
        })
        .sum();
    let ms = sum / samples.len() as f64;
    if ms <= 0.0 {
        return SILENCE_DB;
    }
    ((10.0 * ms.log10()) as f32).max(SILENCE_DB)
}

impl EnergyGate {
    /// A gate for audio at `sample_rate`.
    pub fn new(cfg: GateConfig, sample_rate: u32) -> Self {
        let hangover_samples = u64::from(cfg.hangover_ms) * u64::from(sample_rate) / 1000;
        Self {
            floor_db: cfg.min_db - cfg.margin_db,
            cfg,
            hangover_left: 0,
            hangover_samples,
            sample_rate: sample_rate.max(1),
        }
    }

    /// Decides for one window. `speech_active` is whether the endpointer is inside an
    /// utterance (the floor does not rise then).
    pub fn push(&mut self, window: &[f32], speech_active: bool) -> GateDecision {
        let level = rms_db(window);
        let secs = window.len() as f32 / self.sample_rate as f32;
        // Judge against the floor as it was before this window.
        let before = self.floor_db;
        let loud = level >= self.cfg.min_db && level >= before + self.cfg.margin_db;
        // The floor never goes below min_db - margin_db: quieter than that, the absolute
        // threshold decides anyway, and a floor learnt from digital silence would take
        // minutes to climb back to a real room's noise.
        let lowest = self.cfg.min_db - self.cfg.margin_db;
        self.floor_db = if level < before {
            level.max(lowest)
        } else if speech_active {
            before
        } else {
            before + (level - before).min(self.cfg.rise_db_per_s * secs)
        };
        let n = window.len() as u64;
        let open = if loud {
            self.hangover_left = self.hangover_samples;
            true
        } else if self.hangover_left > 0 {
            self.hangover_left = self.hangover_left.saturating_sub(n);
            true
        } else {
            false
        };
        GateDecision {
            open,
            level_db: level,
            floor_db: self.floor_db,
        }
    }

    /// The current noise floor, dBFS.
    pub fn floor_db(&self) -> f32 {
        self.floor_db
    }
}
