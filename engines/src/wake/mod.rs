//! Wake word detection: microWakeWord models on sotad's own kernels.
//!
//! - [`frontend`]: TensorFlow Lite Micro's audio front end, bit-exact with PyPI
//!   `pymicro-features` (40 features every 10 ms from 16 kHz audio).
//! - `tflite`: a bounds-checked reader of the TensorFlow Lite flatbuffer.
//! - `graph`: the model as a plan of int8 streaming operators (CONV_2D, DEPTHWISE_CONV_2D,
//!   FULLY_CONNECTED, LOGISTIC, QUANTIZE, RESHAPE, STRIDED_SLICE, CONCATENATION, SPLIT_V and
//!   the resource variables that carry the streaming state), with TensorFlow Lite's integer
//!   arithmetic.
//! - [`WakeModel`] (a model file and its JSON settings) and [`WakeWord`] (the streaming
//!   detector): feed 16 kHz samples, get [`Detection`]s.
//!
//! The detector follows the reference driver, PyPI `pymicro-wakeword` 2.5.0: the model runs
//! every `stride` frames (its input's frame count, 3 for the shipped models) on those frames'
//! features quantized as `round(feature * 0.0390625 / input_scale + zero_point)`; its output
//! is a probability in steps of 1/256; a detection is a step where the mean of the last
//! `sliding_window_size` probabilities exceeds `probability_cutoff`. One difference: a feature
//! that quantizes beyond the int8 range saturates here, where the reference's numpy cast
//! wraps around (real speech stays well inside the range).
//!
//! No I/O beyond memory-mapping the model file, no threads.

mod error;
pub mod frontend;
mod frontend_tables;
mod graph;
mod tflite;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::error::WakeError;
use self::frontend::{CHANNELS, FEATURE_SCALE, Frontend, STEP, WINDOW};
use self::graph::{Graph, State};
use crate::audio::SAMPLE_RATE;
use crate::error::Result;
use crate::json;
use crate::located::Format;
use crate::mapped::Backing;

/// A model's settings, from the JSON file microWakeWord ships beside each `.tflite`.
#[derive(Debug, Clone, PartialEq)]
pub struct WakeSettings {
    /// The phrase, e.g. "Hey Jarvis".
    pub wake_word: String,
    /// The model file, relative to the JSON file.
    pub model: String,
    /// A detection needs the mean probability above this.
    pub probability_cutoff: f64,
    /// How many step probabilities are averaged.
    pub sliding_window_size: usize,
}

impl WakeSettings {
    /// Parses microWakeWord's JSON settings (`wake_word`, `model`,
    /// `micro.probability_cutoff`, `micro.sliding_window_size`, `micro.feature_step_size`).
    pub fn parse(bytes: &[u8], path: Option<&Path>) -> Result<WakeSettings> {
        let err = |key: &str, m: String| {
            let mut e = WakeError::new(m).table(format!("settings key {key:?}"));
            e.file = Format::WakeSettings;
            e.path = path.map(Path::to_owned);
            crate::Error::Wake(e)
        };
        let root = json::parse_slice(bytes).map_err(|e| {
            let mut w = WakeError::new(e.message).at(e.offset);
            w.file = Format::WakeSettings;
            w.path = path.map(Path::to_owned);
            crate::Error::Wake(w)
        })?;
        let string = |key: &str| {
            root.get(key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| err(key, "missing, or not a string".into()))
        };
        let micro = root
            .get("micro")
            .ok_or_else(|| err("micro", "missing".into()))?;
        let cutoff = match micro.get("probability_cutoff") {
            Some(json::JsonValue::Number(n)) if (0.0..=1.0).contains(n) => *n,
            _ => {
                return Err(err(
                    "micro.probability_cutoff",
                    "missing, or not a number from 0 to 1".into(),
                ));
            }
        };
        let window = micro
            .get("sliding_window_size")
            .and_then(|v| v.as_u32())
            .filter(|&n| (1..=1000).contains(&n))
            .ok_or_else(|| {
                err(
                    "micro.sliding_window_size",
                    "missing, or not an integer from 1 to 1000".into(),
                )
            })?;
        if let Some(step) = micro
            .get("feature_step_size")
            .filter(|s| s.as_u32() != Some(10))
        {
            return Err(err(
                "micro.feature_step_size",
                format!("is {step:?}; only 10 (ms) is supported"),
            ));
        }
        Ok(WakeSettings {
            wake_word: string("wake_word")?,
            model: string("model")?,
            probability_cutoff: cutoff,
            sliding_window_size: window as usize,
        })
    }
}

/// A loaded microWakeWord model: the memory-mapped `.tflite`, its operator plan, its settings.
pub struct WakeModel {
    backing: Backing,
    graph: Graph,
    settings: WakeSettings,
    path: Option<PathBuf>,
}

impl WakeModel {
    /// Loads the JSON settings at `json_path` and the model file they name (relative to it).
    pub fn load(json_path: &Path) -> Result<WakeModel> {
        let bytes = std::fs::read(json_path).map_err(|source| crate::Error::Io {
            action: "read",
            path: json_path.to_owned(),
            source,
        })?;
        let settings = WakeSettings::parse(&bytes, Some(json_path))?;
        let model_path = json_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&settings.model);
        Self::load_tflite(&model_path, settings)
    }

    /// Loads (memory-maps) the model file at `path` with the given settings.
    pub fn load_tflite(path: &Path, settings: WakeSettings) -> Result<WakeModel> {
        let backing = Backing::map(path)?;
        Self::build(backing, settings, Some(path.to_owned()))
    }

    /// A model from bytes in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>, settings: WakeSettings) -> Result<WakeModel> {
        Self::build(Backing::Owned(bytes), settings, None)
    }

    fn build(backing: Backing, settings: WakeSettings, path: Option<PathBuf>) -> Result<WakeModel> {
        let graph = {
            let fb = tflite::Fb {
                data: backing.bytes(),
            };
            tflite::Model::parse(&fb)
                .and_then(|m| Graph::build(&fb, &m))
                .map_err(|mut e| {
                    e.path = path.clone();
                    e
                })?
        };
        if graph.input_features != CHANNELS {
            let mut e = WakeError::new(format!(
                "the input has {} features per frame; the front end gives {CHANNELS}",
                graph.input_features
            ))
            .table("SubGraph #0");
            e.path = path;
            return Err(e.into());
        }
        Ok(WakeModel {
            backing,
            graph,
            settings,
            path,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &WakeSettings {
        &self.settings
    }

    /// The model file, when loaded from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Frames of features per inference step (the model's input length).
    pub fn stride(&self) -> usize {
        self.graph.input_frames
    }
}

/// One inference step of a [`WakeWord`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Index of the last feature frame of the step (frame k ends at sample 480 + 160·k).
    pub frame: u64,
    /// The model's raw output (probability × 256 for the shipped models).
    pub raw: u8,
    /// The output as a probability.
    pub probability: f32,
    /// The mean over the sliding window, once it is full.
    pub mean: Option<f64>,
    /// Whether the mean exceeds the cutoff (the reference reports a detection at every such
    /// step).
    pub above_cutoff: bool,
    /// Whether this step is a [`Detection`]: the first of a run above the cutoff.
    pub detection: bool,
}

/// A wake word heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The phrase from the settings.
    pub word: String,
    /// The mean probability over the sliding window.
    pub probability: f32,
    /// Audio time of the end of the detecting frame, since the detector started or was reset.
    pub time: Duration,
    /// The detecting frame's index.
    pub frame: u64,
}

/// A streaming detector for one wake word.
///
/// Detections are reported once per crossing: after one, the detector waits for the mean to
/// fall back to the cutoff before it reports again.
pub struct WakeWord {
    model: WakeModel,
    state: State,
    frontend: Frontend,
    frames: Vec<[u16; CHANNELS]>,
    fresh: Vec<[u16; CHANNELS]>,
    frame_count: u64,
    window: VecDeque<u8>,
    above: bool,
    /// Feature value → quantized model input, for every `u16` the front end can produce
    /// that maps inside the int8 range; values beyond saturate.
    quantized: Vec<i8>,
}

impl WakeWord {
    /// A detector with fresh state.
    pub fn new(model: WakeModel) -> WakeWord {
        let state = model.graph.state(model.backing.bytes());
        let (scale, zp) = (
            model.graph.input_scale as f64,
            model.graph.input_zero_point as f64,
        );
        let quantized = (0..=u16::MAX)
            .map(|v| {
                let q = (v as f64 * FEATURE_SCALE / scale + zp).round_ties_even();
                q.clamp(-128.0, 127.0) as i8
            })
            .collect();
        WakeWord {
            state,
            frontend: Frontend::new(),
            frames: Vec::with_capacity(model.graph.input_frames),
            fresh: Vec::new(),
            frame_count: 0,
            window: VecDeque::with_capacity(model.settings.sliding_window_size),
            above: false,
            quantized,
            model,
        }
    }

    /// Loads the JSON settings and model (see [`WakeModel::load`]) into a new detector.
    pub fn load(json_path: &Path) -> Result<WakeWord> {
        Ok(Self::new(WakeModel::load(json_path)?))
    }

    /// The model and settings.
    pub fn model(&self) -> &WakeModel {
        &self.model
    }

    /// The bytes of tensor `index` of the model's main subgraph after the last step (its
    /// activations; empty when there is no such tensor): for comparing a model's intermediate
    /// values with TensorFlow Lite's (the wake bench's `steps` mode).
    pub fn tensor(&self, index: usize) -> &[u8] {
        self.state
            .tensor(&self.model.graph, self.model.backing.bytes(), index)
    }

    /// Forgets all audio: front end, streaming variables, window, time.
    pub fn reset(&mut self) {
        self.frontend.reset();
        self.state
            .reset(&self.model.graph, self.model.backing.bytes());
        self.frames.clear();
        self.frame_count = 0;
        self.window.clear();
        self.above = false;
    }

    /// Feeds 16 kHz mono samples ([`SAMPLE_RATE`]); returns the detections they complete.
    pub fn process(&mut self, samples: &[i16]) -> Vec<Detection> {
        let mut found = Vec::new();
        let word = &self.model.settings.wake_word.clone();
        self.process_steps(samples, |step| {
            if let (Some(mean), true) = (step.mean, step.detection) {
                found.push(Detection {
                    word: word.clone(),
                    probability: mean as f32,
                    time: frame_end(step.frame),
                    frame: step.frame,
                });
            }
        });
        found
    }

    /// Feeds samples and calls `on_step` after every inference step.
    pub fn process_steps(&mut self, samples: &[i16], mut on_step: impl FnMut(Step)) {
        let stride = self.model.graph.input_frames;
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh.clear();
        self.frontend.push(samples, |f| fresh.push(*f));
        for f in &fresh {
            self.frames.push(*f);
            self.frame_count += 1;
            if self.frames.len() == stride {
                let step = self.step();
                on_step(step);
            }
        }
        self.fresh = fresh;
    }

    fn step(&mut self) -> Step {
        let graph = &self.model.graph;
        {
            let input = self.state.input_mut(graph);
            for (dst, frame) in input.chunks_exact_mut(CHANNELS).zip(&self.frames) {
                for (d, &v) in dst.iter_mut().zip(frame) {
                    *d = self.quantized[v as usize] as u8;
                }
            }
        }
        self.frames.clear();
        let raw = self.state.invoke(graph, self.model.backing.bytes());
        let value = if graph.output_unsigned {
            raw as i32
        } else {
            raw as i8 as i32
        };
        let probability = (value - graph.output_zero_point) as f32 * graph.output_scale;
        let size = self.model.settings.sliding_window_size;
        if self.window.len() == size {
            self.window.pop_front();
        }
        self.window.push_back(raw);
        let mean = (self.window.len() == size).then(|| {
            // The reference averages the float32 probabilities exactly (statistics.mean);
            // they are multiples of the output scale, so the sum is exact in f64.
            let sum: f64 = self
                .window
                .iter()
                .map(|&r| {
                    let v = if graph.output_unsigned {
                        r as i32
                    } else {
                        r as i8 as i32
                    };
                    ((v - graph.output_zero_point) as f32 * graph.output_scale) as f64
                })
                .sum();
            sum / size as f64
        });
        let above_cutoff = mean.is_some_and(|m| m > self.model.settings.probability_cutoff);
        let first = above_cutoff && !self.above;
        self.above = above_cutoff;
        Step {
            frame: self.frame_count - 1,
            raw,
            probability,
            mean,
            above_cutoff,
            detection: first,
        }
    }
}

/// Audio time at the end of feature frame `frame`.
pub fn frame_end(frame: u64) -> Duration {
    let samples = WINDOW as u64 + STEP as u64 * frame;
    Duration::from_micros(samples * 1_000_000 / SAMPLE_RATE as u64)
}
