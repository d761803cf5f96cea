//! Piper voices: a VITS generator exported to ONNX (`*.onnx`) plus its config
//! (`*.onnx.json`).
//!
//! # Parameters
//!
//! [`PiperVoice::open`] maps every weight the inference graph uses to its PyTorch module
//! parameter name (`flow.flows.0.enc.in_layers.0.weight`), so a model written against the
//! VITS module tree can load it. Three kinds of initializer occur:
//!
//! - **Named**: the exporter kept the parameter's name (`dec.ups.0.weight`).
//! - **Anonymous**: weights that were computed at export time get names like
//!   `onnx::Conv_8168` (the flows' WaveNet convolutions: PyTorch folds their weight norm
//!   into a plain tensor), or the name of a graph input (`sid` holds `enc_p.emb.weight` in
//!   Piper exports). They are resolved through the graph: the node that consumes them,
//!   `/flow/flows.0/enc/in_layers.0/Conv`, names the module (`flow.flows.0.enc.in_layers.0`)
//!   and the input slot names the parameter (Conv input 1 is `weight`, 2 is `bias`; Gather
//!   input 0 is an embedding's `weight`).
//! - **Folded**: the duration predictor's first flow (an elementwise affine,
//!   `x = (x - m) * exp(-logs)` at inference) is exported with `exp(-logs)` precomputed.
//!   It is found by following the graph from `dp.flows.0.m` (Sub, then Mul) and listed as
//!   `dp.flows.0.logs` with [`ParamSource::FoldedExpNeg`]: its stored values are
//!   `exp(-logs)`, not `logs`.
//!
//! # Hyperparameters
//!
//! [`VitsConfig`] is inferred from tensor shapes and node attributes, never from
//! assumptions: channel counts from weight shapes, the number of heads and the attention
//! window from `emb_rel_k` (`[1, 2 * window + 1, hidden / n_heads]`), layer and flow counts by
//! counting modules, the decoder's upsample rates from its ConvTranspose `strides`, and the
//! residual blocks' dilations from their Conv `dilations`. Then the complete list of
//! parameters that architecture needs is derived ([`VitsConfig::expected_params`]) and every
//! one must be present with exactly the expected shape. A missing or misshapen tensor, or a
//! graph that is not a VITS generator, is an error naming the file and the parameter.
//!
//! Only what inference uses is in the graph: the posterior encoder (`enc_q`), the
//! duration predictor's posterior flows (`dp.post_*`) and its unused first conv flow
//! (`dp.flows.1`) are not exported.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::error::{TtsError, TtsErrorKind, TtsFile, TtsSubject};
use super::onnx::{DataType, NodeProto, OnnxModel, Tensor};
use crate::error::{Error, Result};
use crate::json::{self, JsonValue as Value};

type PResult<T> = std::result::Result<T, Box<TtsError>>;

/// The top-level VITS modules whose parameters are named after their PyTorch path.
const MODULE_ROOTS: [&str; 6] = ["enc_p", "dp", "flow", "dec", "emb_g", "enc_q"];

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

// ----- voice config --------------------------------------------------------------------

/// The voice config (`*.onnx.json`), the fields Piper's inference uses.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceConfig {
    /// Output sample rate in Hz (`audio.sample_rate`).
    pub sample_rate: u32,
    /// Piper's quality tier (`audio.quality`: `x_low`, `low`, `medium`, `high`), if given.
    pub quality: Option<String>,
    /// The espeak-ng voice to phonemize with (`espeak.voice`, e.g. `en-us`).
    pub espeak_voice: String,
    /// `inference.noise_scale` (default 0.667): noise added to the prior.
    pub noise_scale: f32,
    /// `inference.length_scale` (default 1.0): duration multiplier (higher is slower).
    pub length_scale: f32,
    /// `inference.noise_w` (default 0.8): noise of the stochastic duration predictor.
    pub noise_w: f32,
    /// How text becomes phonemes (`phoneme_type`: `espeak` (default) or `text`).
    pub phoneme_type: String,
    /// Phoneme (a string, normally one code point) to model input ids.
    pub phoneme_id_map: BTreeMap<String, Vec<i64>>,
    /// `num_symbols`: the size of the model's symbol table, if given.
    pub num_symbols: Option<u32>,
    /// `num_speakers` (default 1).
    pub num_speakers: u32,
    /// Speaker name to id, for multi-speaker voices.
    pub speaker_id_map: BTreeMap<String, u32>,
    /// `piper_version`, if given.
    pub piper_version: Option<String>,
}

impl VoiceConfig {
    /// Reads and parses the voice config at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes).map_err(|e| match e {
            Error::Tts(t) => t.path(Some(path.to_owned())).into(),
            other => other,
        })
    }

    /// Parses a voice config.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        Ok(parse_config(bytes)?)
    }

    /// The ids of `phoneme`, if the voice knows it.
    pub fn phoneme_ids(&self, phoneme: &str) -> Option<&[i64]> {
        self.phoneme_id_map.get(phoneme).map(Vec::as_slice)
    }
}

fn cfg_err(kind: TtsErrorKind, key: &str) -> Box<TtsError> {
    TtsError::new(TtsFile::VoiceConfig, kind).subject(TtsSubject::Key(key.to_owned()))
}

struct Cfg<'a> {
    root: &'a Value,
}

impl<'a> Cfg<'a> {
    /// The value at the dotted `path`, if present and not null.
    fn get(&self, path: &str) -> Option<&'a Value> {
        let mut v = self.root;
        for part in path.split('.') {
            v = v.get(part)?;
        }
        (!matches!(v, Value::Null)).then_some(v)
    }

    fn wrong(path: &str, v: &Value, expected: &'static str) -> Box<TtsError> {
        cfg_err(
            TtsErrorKind::WrongType {
                expected,
                found: v.type_name(),
            },
            path,
        )
    }

    fn missing(&self, path: &str) -> Box<TtsError> {
        cfg_err(TtsErrorKind::MissingKey, path)
    }

    fn str(&self, path: &str) -> PResult<Option<&'a str>> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong(path, v, "string")),
        }
    }

    fn f32(&self, path: &str, default: f32) -> PResult<f32> {
        match self.get(path) {
            None => Ok(default),
            #[allow(clippy::cast_possible_truncation)] // documented rounding
            Some(Value::Number(n)) => {
                if n.is_finite() && *n >= 0.0 {
                    Ok(*n as f32)
                } else {
                    Err(cfg_err(
                        TtsErrorKind::BadValue {
                            reason: format!("{n} is not a non-negative number"),
                        },
                        path,
                    ))
                }
            }
            Some(v) => Err(Self::wrong(path, v, "number")),
        }
    }

    fn uint(path: &str, v: &Value, max: u64) -> PResult<u64> {
        match *v {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked
            Value::Number(n) if n.fract() == 0.0 && n >= 0.0 && n <= max as f64 => Ok(n as u64),
            Value::Number(n) => Err(cfg_err(
                TtsErrorKind::BadValue {
                    reason: format!("{n} is not an integer in 0..={max}"),
                },
                path,
            )),
            _ => Err(Self::wrong(path, v, "integer")),
        }
    }

    fn u32(&self, path: &str) -> PResult<Option<u32>> {
        self.get(path)
            .map(|v| {
                Self::uint(path, v, u64::from(u32::MAX))
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            })
            .transpose()
    }

    fn object(&self, path: &str) -> PResult<Option<&'a [(String, Value)]>> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(Self::wrong(path, v, "object")),
        }
    }
}

fn parse_config(bytes: &[u8]) -> PResult<VoiceConfig> {
    let root = json::parse_slice(bytes).map_err(|e| {
        TtsError::new(
            TtsFile::VoiceConfig,
            TtsErrorKind::Json { reason: e.message },
        )
        .at(to_u64(e.offset))
    })?;
    if !matches!(root, Value::Object(_)) {
        return Err(TtsError::new(
            TtsFile::VoiceConfig,
            TtsErrorKind::WrongType {
                expected: "object",
                found: root.type_name(),
            },
        ));
    }
    let c = Cfg { root: &root };

    let sample_rate = c
        .u32("audio.sample_rate")?
        .ok_or_else(|| c.missing("audio.sample_rate"))?;
    if !(1000..=192_000).contains(&sample_rate) {
        return Err(cfg_err(
            TtsErrorKind::BadValue {
                reason: format!("sample rate {sample_rate} Hz is outside 1000..=192000"),
            },
            "audio.sample_rate",
        ));
    }
    let phoneme_type = c.str("phoneme_type")?.unwrap_or("espeak").to_owned();
    let espeak_voice = match c.str("espeak.voice")? {
        Some(v) => v.to_owned(),
        None if phoneme_type == "espeak" => return Err(c.missing("espeak.voice")),
        None => String::new(),
    };

    let key = "phoneme_id_map";
    let members = c.object(key)?.ok_or_else(|| c.missing(key))?;
    let mut phoneme_id_map = BTreeMap::new();
    for (phoneme, v) in members {
        let path = format!("{key}.{phoneme}");
        let Value::Array(items) = v else {
            return Err(Cfg::wrong(&path, v, "array of ids"));
        };
        let ids = items
            .iter()
            .map(|item| {
                Cfg::uint(&path, item, u64::from(u32::MAX))
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
            })
            .collect::<PResult<Vec<i64>>>()?;
        if ids.is_empty() {
            return Err(cfg_err(
                TtsErrorKind::BadValue {
                    reason: "phoneme maps to no ids".to_owned(),
                },
                &path,
            ));
        }
        phoneme_id_map.insert(phoneme.clone(), ids);
    }
    if phoneme_id_map.is_empty() {
        return Err(cfg_err(
            TtsErrorKind::BadValue {
                reason: "phoneme_id_map is empty".to_owned(),
            },
            key,
        ));
    }

    let mut speaker_id_map = BTreeMap::new();
    if let Some(members) = c.object("speaker_id_map")? {
        for (name, v) in members {
            let path = format!("speaker_id_map.{name}");
            let id = Cfg::uint(&path, v, u64::from(u32::MAX))?;
            speaker_id_map.insert(name.clone(), u32::try_from(id).unwrap_or(u32::MAX));
        }
    }

    Ok(VoiceConfig {
        sample_rate,
        quality: c.str("audio.quality")?.map(str::to_owned),
        espeak_voice,
        noise_scale: c.f32("inference.noise_scale", 0.667)?,
        length_scale: c.f32("inference.length_scale", 1.0)?,
        noise_w: c.f32("inference.noise_w", 0.8)?,
        phoneme_type,
        phoneme_id_map,
        num_symbols: c.u32("num_symbols")?,
        num_speakers: c.u32("num_speakers")?.unwrap_or(1),
        speaker_id_map,
        piper_version: c.str("piper_version")?.map(str::to_owned),
    })
}

// ----- VITS hyperparameters ------------------------------------------------------------

/// VITS hyperparameters, inferred from the graph (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VitsConfig {
    /// Output sample rate (from the voice config).
    pub sample_rate: u32,
    /// Rows of the phoneme embedding (`enc_p.emb.weight`); every phoneme id must be below.
    pub n_vocab: usize,
    /// Text encoder width.
    pub hidden_channels: usize,
    /// Latent width (the flow and decoder input).
    pub inter_channels: usize,
    /// Text encoder feed-forward width.
    pub filter_channels: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Text encoder layers.
    pub n_layers: usize,
    /// Text encoder feed-forward kernel size.
    pub kernel_size: usize,
    /// Relative attention window (positions each side).
    pub window_size: usize,
    /// Whether the relative position embeddings are shared by all heads.
    pub heads_share: bool,
    /// The normalizing flow.
    pub flow: FlowConfig,
    /// The duration predictor.
    pub duration_predictor: DurationPredictorConfig,
    /// The HiFi-GAN decoder.
    pub decoder: DecoderConfig,
    /// Speaker embedding width; 0 for a single-speaker voice.
    pub gin_channels: usize,
    /// Number of speakers (rows of `emb_g.weight`, or 1).
    pub n_speakers: usize,
}

/// The residual coupling flow (`flow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowConfig {
    /// Coupling layers (`flow.flows.0`, `.2`, ...; the odd indices are parameter-free flips).
    pub n_flows: usize,
    /// WaveNet width.
    pub hidden_channels: usize,
    /// WaveNet kernel size.
    pub kernel_size: usize,
    /// WaveNet dilation rate (layer `i` uses `dilation_rate^i`).
    pub dilation_rate: usize,
    /// WaveNet layers per coupling layer.
    pub n_layers: usize,
    /// Whether the coupling only shifts (VITS: true).
    pub mean_only: bool,
}

/// The duration predictor (`dp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationPredictorConfig {
    /// VITS's stochastic duration predictor (what Piper trains).
    Stochastic {
        /// Width.
        filter_channels: usize,
        /// Kernel size of the dilated depth-separable convolutions.
        kernel_size: usize,
        /// Layers of each dilated depth-separable convolution stack.
        n_dds_layers: usize,
        /// Conv flows at training time (`dp.flows.1`, `.3`, ...); the graph holds those that
        /// inference uses, all but the first.
        n_flows: usize,
        /// Rational-quadratic spline bins of the conv flows.
        num_bins: usize,
        /// Whether `dp.flows.0.logs` is stored as `exp(-logs)` ([`ParamSource::FoldedExpNeg`]).
        logs_folded: bool,
    },
    /// The deterministic duration predictor of VITS with `use_sdp=False`.
    Deterministic {
        /// Width.
        filter_channels: usize,
        /// Kernel size.
        kernel_size: usize,
    },
}

/// The HiFi-GAN decoder (`dec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Channels after `conv_pre`.
    pub upsample_initial_channel: usize,
    /// Upsampling factor of each transposed convolution.
    pub upsample_rates: Vec<usize>,
    /// Kernel size of each transposed convolution.
    pub upsample_kernel_sizes: Vec<usize>,
    /// The residual block design.
    pub resblock: ResBlockKind,
    /// Kernel sizes of the residual blocks at each scale.
    pub resblock_kernel_sizes: Vec<usize>,
    /// Dilations of each residual block's convolutions.
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
    /// Kernel size of `conv_pre`.
    pub pre_kernel_size: usize,
    /// Kernel size of `conv_post`.
    pub post_kernel_size: usize,
}

impl DecoderConfig {
    /// Audio samples per latent frame (the product of the upsample rates).
    pub fn hop_length(&self) -> usize {
        self.upsample_rates.iter().product()
    }
}

/// HiFi-GAN residual block variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResBlockKind {
    /// `ResBlock1`: `convs1` (dilated) and `convs2` (dilation 1), three of each.
    One,
    /// `ResBlock2`: `convs`, one dilated convolution per dilation (Piper's low/medium voices).
    Two,
}

impl VitsConfig {
    /// Every parameter the inference graph of this architecture uses, with its shape, in
    /// module order.
    pub fn expected_params(&self) -> Vec<(String, Vec<i64>)> {
        let mut out: Vec<(String, Vec<i64>)> = Vec::new();
        let i = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let conv = |out: &mut Vec<(String, Vec<i64>)>,
                    name: String,
                    o: usize,
                    inp: usize,
                    k: usize,
                    bias: bool| {
            out.push((format!("{name}.weight"), vec![i(o), i(inp), i(k)]));
            if bias {
                out.push((format!("{name}.bias"), vec![i(o)]));
            }
        };
        let norm = |out: &mut Vec<(String, Vec<i64>)>, name: String, c: usize| {
            out.push((format!("{name}.gamma"), vec![i(c)]));
            out.push((format!("{name}.beta"), vec![i(c)]));
        };
        let h = self.hidden_channels;
        let gin = self.gin_channels;

        // Text encoder.
        out.push(("enc_p.emb.weight".to_owned(), vec![i(self.n_vocab), i(h)]));
        let k_channels = h / self.n_heads.max(1);
        let rel_heads = if self.heads_share { 1 } else { self.n_heads };
        for l in 0..self.n_layers {
            let a = format!("enc_p.encoder.attn_layers.{l}");
            for p in ["conv_q", "conv_k", "conv_v"] {
                conv(&mut out, format!("{a}.{p}"), h, h, 1, true);
            }
            out.push((
                format!("{a}.emb_rel_k"),
                vec![
                    i(rel_heads),
                    i(self.window_size.saturating_mul(2).saturating_add(1)),
                    i(k_channels),
                ],
            ));
            out.push((
                format!("{a}.emb_rel_v"),
                vec![
                    i(rel_heads),
                    i(self.window_size.saturating_mul(2).saturating_add(1)),
                    i(k_channels),
                ],
            ));
            conv(&mut out, format!("{a}.conv_o"), h, h, 1, true);
            norm(&mut out, format!("enc_p.encoder.norm_layers_1.{l}"), h);
            let f = format!("enc_p.encoder.ffn_layers.{l}");
            conv(
                &mut out,
                format!("{f}.conv_1"),
                self.filter_channels,
                h,
                self.kernel_size,
                true,
            );
            conv(
                &mut out,
                format!("{f}.conv_2"),
                h,
                self.filter_channels,
                self.kernel_size,
                true,
            );
            norm(&mut out, format!("enc_p.encoder.norm_layers_2.{l}"), h);
        }
        conv(
            &mut out,
            "enc_p.proj".to_owned(),
            self.inter_channels.saturating_mul(2),
            h,
            1,
            true,
        );

        // Duration predictor.
        match &self.duration_predictor {
            DurationPredictorConfig::Stochastic {
                filter_channels: fc,
                kernel_size,
                n_dds_layers,
                n_flows,
                num_bins,
                logs_folded: _,
            } => {
                let (fc, k) = (*fc, *kernel_size);
                let dds = |out: &mut Vec<(String, Vec<i64>)>, prefix: &str| {
                    for l in 0..*n_dds_layers {
                        out.push((
                            format!("{prefix}.convs_sep.{l}.weight"),
                            vec![i(fc), 1, i(k)],
                        ));
                        out.push((format!("{prefix}.convs_sep.{l}.bias"), vec![i(fc)]));
                        out.push((
                            format!("{prefix}.convs_1x1.{l}.weight"),
                            vec![i(fc), i(fc), 1],
                        ));
                        out.push((format!("{prefix}.convs_1x1.{l}.bias"), vec![i(fc)]));
                        out.push((format!("{prefix}.norms_1.{l}.gamma"), vec![i(fc)]));
                        out.push((format!("{prefix}.norms_1.{l}.beta"), vec![i(fc)]));
                        out.push((format!("{prefix}.norms_2.{l}.gamma"), vec![i(fc)]));
                        out.push((format!("{prefix}.norms_2.{l}.beta"), vec![i(fc)]));
                    }
                };
                conv(&mut out, "dp.pre".to_owned(), fc, h, 1, true);
                if gin > 0 {
                    conv(&mut out, "dp.cond".to_owned(), fc, gin, 1, true);
                }
                dds(&mut out, "dp.convs");
                conv(&mut out, "dp.proj".to_owned(), fc, fc, 1, true);
                out.push(("dp.flows.0.m".to_owned(), vec![2, 1]));
                out.push(("dp.flows.0.logs".to_owned(), vec![2, 1]));
                // Conv flow j sits at index 2j + 1; inference skips the first one (j = 0).
                for j in 1..*n_flows {
                    let f = format!("dp.flows.{}", 2 * j + 1);
                    conv(&mut out, format!("{f}.pre"), fc, 1, 1, true);
                    dds(&mut out, &format!("{f}.convs"));
                    conv(
                        &mut out,
                        format!("{f}.proj"),
                        num_bins.saturating_mul(3).saturating_sub(1),
                        fc,
                        1,
                        true,
                    );
                }
            }
            DurationPredictorConfig::Deterministic {
                filter_channels: fc,
                kernel_size,
            } => {
                conv(&mut out, "dp.conv_1".to_owned(), *fc, h, *kernel_size, true);
                norm(&mut out, "dp.norm_1".to_owned(), *fc);
                conv(
                    &mut out,
                    "dp.conv_2".to_owned(),
                    *fc,
                    *fc,
                    *kernel_size,
                    true,
                );
                norm(&mut out, "dp.norm_2".to_owned(), *fc);
                conv(&mut out, "dp.proj".to_owned(), 1, *fc, 1, true);
                if gin > 0 {
                    conv(&mut out, "dp.cond".to_owned(), h, gin, 1, true);
                }
            }
        }

        // Flow.
        let fl = &self.flow;
        let half = self.inter_channels / 2;
        for c in 0..fl.n_flows {
            let f = format!("flow.flows.{}", 2 * c);
            conv(
                &mut out,
                format!("{f}.pre"),
                fl.hidden_channels,
                half,
                1,
                true,
            );
            if gin > 0 {
                conv(
                    &mut out,
                    format!("{f}.enc.cond_layer"),
                    fl.hidden_channels
                        .saturating_mul(2)
                        .saturating_mul(fl.n_layers),
                    gin,
                    1,
                    true,
                );
            }
            for l in 0..fl.n_layers {
                conv(
                    &mut out,
                    format!("{f}.enc.in_layers.{l}"),
                    fl.hidden_channels.saturating_mul(2),
                    fl.hidden_channels,
                    fl.kernel_size,
                    true,
                );
                let res = if l + 1 < fl.n_layers {
                    fl.hidden_channels.saturating_mul(2)
                } else {
                    fl.hidden_channels
                };
                conv(
                    &mut out,
                    format!("{f}.enc.res_skip_layers.{l}"),
                    res,
                    fl.hidden_channels,
                    1,
                    true,
                );
            }
            let post = if fl.mean_only {
                half
            } else {
                half.saturating_mul(2)
            };
            conv(
                &mut out,
                format!("{f}.post"),
                post,
                fl.hidden_channels,
                1,
                true,
            );
        }

        // Decoder.
        let d = &self.decoder;
        conv(
            &mut out,
            "dec.conv_pre".to_owned(),
            d.upsample_initial_channel,
            self.inter_channels,
            d.pre_kernel_size,
            true,
        );
        if gin > 0 {
            conv(
                &mut out,
                "dec.cond".to_owned(),
                d.upsample_initial_channel,
                gin,
                1,
                true,
            );
        }
        let mut ch = d.upsample_initial_channel;
        let nk = d.resblock_kernel_sizes.len();
        for (u, &k) in d.upsample_kernel_sizes.iter().enumerate() {
            // ConvTranspose1d weights are [in, out, k], its bias [out].
            out.push((format!("dec.ups.{u}.weight"), vec![i(ch), i(ch / 2), i(k)]));
            out.push((format!("dec.ups.{u}.bias"), vec![i(ch / 2)]));
            ch /= 2;
            for (r, (&rk, dil)) in d
                .resblock_kernel_sizes
                .iter()
                .zip(&d.resblock_dilation_sizes)
                .enumerate()
            {
                let b = format!("dec.resblocks.{}", u.saturating_mul(nk).saturating_add(r));
                match d.resblock {
                    ResBlockKind::One => {
                        for m in 0..dil.len() {
                            conv(&mut out, format!("{b}.convs1.{m}"), ch, ch, rk, true);
                        }
                        for m in 0..dil.len() {
                            conv(&mut out, format!("{b}.convs2.{m}"), ch, ch, rk, true);
                        }
                    }
                    ResBlockKind::Two => {
                        for m in 0..dil.len() {
                            conv(&mut out, format!("{b}.convs.{m}"), ch, ch, rk, true);
                        }
                    }
                }
            }
        }
        conv(
            &mut out,
            "dec.conv_post".to_owned(),
            1,
            ch,
            d.post_kernel_size,
            false,
        );
        if gin > 0 {
            out.push(("emb_g.weight".to_owned(), vec![i(self.n_speakers), i(gin)]));
        }
        out
    }
}

// ----- parameter map -------------------------------------------------------------------

/// How a module parameter was found in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamSource {
    /// The initializer carries the parameter's name.
    Named,
    /// An anonymous initializer, named after the node that consumes it.
    Consumer {
        /// The consuming node's name (`/flow/flows.0/enc/in_layers.0/Conv`).
        node: String,
        /// The input slot it is consumed at.
        input: usize,
    },
    /// A constant the exporter folded: the initializer holds `exp(-parameter)`.
    FoldedExpNeg {
        /// The node consuming the folded constant.
        node: String,
    },
}

/// One module parameter and the initializer that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The PyTorch parameter name.
    pub name: String,
    /// The initializer's name in the ONNX graph.
    pub initializer: String,
    /// How it was found.
    pub source: ParamSource,
    /// Whether the VITS architecture needs it (false for extra tensors the graph happens to
    /// contain, such as an unpruned export's unused flow).
    pub expected: bool,
}

/// A loaded Piper voice: the validated ONNX model, its config, the module parameter map
/// and the inferred hyperparameters.
#[derive(Clone)]
pub struct PiperVoice {
    model: OnnxModel,
    config: VoiceConfig,
    config_path: Option<PathBuf>,
    vits: VitsConfig,
    params: BTreeMap<String, Param>,
}

impl PiperVoice {
    /// Loads the voice `onnx_path` with its config at `<onnx_path>.json` (Piper's layout).
    pub fn open(onnx_path: impl AsRef<Path>) -> Result<Self> {
        let onnx_path = onnx_path.as_ref();
        let mut json = onnx_path.as_os_str().to_owned();
        json.push(".json");
        Self::open_with_config(onnx_path, PathBuf::from(json))
    }

    /// Loads the voice `onnx_path` with the config at `config_path`.
    pub fn open_with_config(
        onnx_path: impl AsRef<Path>,
        config_path: impl AsRef<Path>,
    ) -> Result<Self> {
        let config_path = config_path.as_ref();
        let config = VoiceConfig::open(config_path)?;
        let model = OnnxModel::open(onnx_path)?;
        Self::build(model, config, Some(config_path.to_owned()))
    }

    /// Builds a voice from an already parsed model and config.
    pub fn from_parts(model: OnnxModel, config: VoiceConfig) -> Result<Self> {
        Self::build(model, config, None)
    }

    fn build(model: OnnxModel, config: VoiceConfig, config_path: Option<PathBuf>) -> Result<Self> {
        let g = Graph::new(&model);
        let mut params = g.resolve()?;
        let vits = g.infer(&mut params, &config)?;
        g.check_expected(&vits, &mut params)?;
        check_config(&config, config_path.as_deref(), &vits)?;
        tracing::debug!(
            path = ?model.path(),
            params = params.len(),
            hidden = vits.hidden_channels,
            sample_rate = vits.sample_rate,
            "loaded Piper voice"
        );
        Ok(Self {
            model,
            config,
            config_path,
            vits,
            params,
        })
    }

    /// The ONNX model.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// The voice config.
    pub fn config(&self) -> &VoiceConfig {
        &self.config
    }

    /// Where the config was read from, if from a file.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The inferred hyperparameters.
    pub fn vits(&self) -> &VitsConfig {
        &self.vits
    }

    /// Every module parameter found, by name.
    pub fn params(&self) -> impl ExactSizeIterator<Item = &Param> + '_ {
        self.params.values()
    }

    /// Information about the parameter `name`, if present.
    pub fn param_info(&self, name: &str) -> Option<&Param> {
        self.params.get(name)
    }

    /// The tensor holding parameter `name` (its bytes borrow from the mapping). For a
    /// [`ParamSource::FoldedExpNeg`] parameter the tensor holds `exp(-value)`.
    ///
    /// Fails naming the file and the parameter if there is no such parameter.
    pub fn param(&self, name: &str) -> Result<Tensor<'_>> {
        self.params
            .get(name)
            .and_then(|p| self.model.initializer(&p.initializer))
            .ok_or_else(|| {
                self.model
                    .error(TtsErrorKind::Missing {
                        context: format!("no such parameter; the voice has {}", self.params.len()),
                    })
                    .subject(TtsSubject::Param(name.to_owned()))
                    .into()
            })
    }

    /// Parameters present in the graph that the architecture does not use.
    pub fn unexpected_params(&self) -> impl Iterator<Item = &Param> + '_ {
        self.params.values().filter(|p| !p.expected)
    }
}

impl fmt::Debug for PiperVoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiperVoice")
            .field("model", &self.model)
            .field("config_path", &self.config_path)
            .field("params", &self.params.len())
            .field("vits", &self.vits)
            .finish()
    }
}

/// The module path a node's name encodes: `/flow/flows.0/enc/in_layers.0/Conv` is
/// `flow.flows.0.enc.in_layers.0`. `None` if the name is not such a path.
fn module_path(node_name: &str) -> Option<String> {
    let rest = node_name.strip_prefix('/')?;
    let (module, op) = rest.rsplit_once('/')?;
    if op.is_empty() || module.split('/').any(str::is_empty) {
        return None;
    }
    let path = module.replace('/', ".");
    MODULE_ROOTS
        .contains(&path.split('.').next().unwrap_or(""))
        .then_some(path)
}

fn is_module_param_name(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(root, rest)| MODULE_ROOTS.contains(&root) && !rest.is_empty())
}

/// The graph with its use lists.
struct Graph<'m> {
    model: &'m OnnxModel,
    /// Value name -> (node index, input slot) of every use.
    consumers: HashMap<&'m str, Vec<(usize, usize)>>,
}

impl<'m> Graph<'m> {
    fn new(model: &'m OnnxModel) -> Self {
        let mut consumers: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for (n, node) in model.graph().node.iter().enumerate() {
            for (slot, input) in node.input.iter().enumerate() {
                consumers.entry(input.as_str()).or_default().push((n, slot));
            }
        }
        Self { model, consumers }
    }

    fn err(&self, kind: TtsErrorKind) -> Box<TtsError> {
        self.model.error(kind)
    }

    fn node(&self, n: usize) -> Option<&'m NodeProto> {
        self.model.graph().node.get(n)
    }

    fn uses(&self, value: &str) -> &[(usize, usize)] {
        self.consumers.get(value).map_or(&[], Vec::as_slice)
    }

    /// Maps initializers to module parameter names (named, then anonymous through their
    /// consumers).
    fn resolve(&self) -> PResult<BTreeMap<String, Param>> {
        let mut params = BTreeMap::new();
        let mut anonymous = Vec::new();
        for t in self.model.initializers() {
            if is_module_param_name(t.name()) {
                params.insert(
                    t.name().to_owned(),
                    Param {
                        name: t.name().to_owned(),
                        initializer: t.name().to_owned(),
                        source: ParamSource::Named,
                        expected: false,
                    },
                );
            } else if t.data_type() == DataType::FLOAT && !t.dims().is_empty() {
                anonymous.push(t);
            }
        }
        for t in anonymous {
            // Weight slots: Conv/ConvTranspose input 1 (weight) and 2 (bias), Gather input 0
            // (an embedding table).
            let mut found: Option<(String, &NodeProto, usize)> = None;
            for &(n, slot) in self.uses(t.name()) {
                let Some(node) = self.node(n) else { continue };
                let (suffix, is_conv) = match (node.op_type.as_str(), slot) {
                    ("Conv" | "ConvTranspose", 1) => ("weight", true),
                    ("Conv" | "ConvTranspose", 2) => ("bias", true),
                    // An embedding table: [rows, width].
                    ("Gather", 0) if t.dims().len() == 2 => ("weight", false),
                    _ => continue,
                };
                let unresolved = |reason: String| {
                    self.err(TtsErrorKind::Unresolved { reason })
                        .subject(TtsSubject::Tensor(t.name().to_owned()))
                        .at(t.proto().offset())
                };
                let Some(module) = module_path(&node.name) else {
                    if !is_conv {
                        continue; // a gathered constant outside any module
                    }
                    return Err(unresolved(format!(
                        "it is the {suffix} of {} node {:?}, whose name is not a module path like /flow/flows.0/enc/in_layers.0/Conv",
                        node.op_type, node.name
                    )));
                };
                let name = format!("{module}.{suffix}");
                if let Some((other, other_node, _)) = &found {
                    if *other != name {
                        return Err(unresolved(format!(
                            "it is shared by {:?} ({other}) and {:?} ({name})",
                            other_node.name, node.name
                        )));
                    }
                    continue;
                }
                if let Some(existing) = params.get(&name) {
                    return Err(unresolved(format!(
                        "node {:?} makes it {name}, which initializer {:?} already is",
                        node.name, existing.initializer
                    )));
                }
                found = Some((name, node, slot));
            }
            if let Some((name, node, slot)) = found {
                params.insert(
                    name.clone(),
                    Param {
                        name,
                        initializer: t.name().to_owned(),
                        source: ParamSource::Consumer {
                            node: node.name.clone(),
                            input: slot,
                        },
                        expected: false,
                    },
                );
            }
        }
        Ok(params)
    }

    fn dims(
        &self,
        params: &BTreeMap<String, Param>,
        name: &str,
        context: &str,
    ) -> PResult<&'m [i64]> {
        params
            .get(name)
            .and_then(|p| self.model.initializer(&p.initializer))
            .map(|t| t.dims())
            .ok_or_else(|| {
                self.err(TtsErrorKind::Missing {
                    context: context.to_owned(),
                })
                .subject(TtsSubject::Param(name.to_owned()))
            })
    }

    /// Dimension `axis` of parameter `name`, which must have rank `rank`.
    fn dim(
        &self,
        params: &BTreeMap<String, Param>,
        name: &str,
        rank: usize,
        axis: usize,
    ) -> PResult<usize> {
        let dims = self.dims(params, name, "needed to infer the VITS hyperparameters")?;
        let bad = || {
            self.err(TtsErrorKind::UnexpectedShape {
                expected: format!("rank {rank} with positive dimensions"),
                found: dims.to_vec(),
            })
            .subject(TtsSubject::Param(name.to_owned()))
        };
        if dims.len() != rank {
            return Err(bad());
        }
        dims.get(axis)
            .and_then(|&d| usize::try_from(d).ok())
            .filter(|&d| d > 0)
            .ok_or_else(bad)
    }

    fn count(params: &BTreeMap<String, Param>, f: impl Fn(usize) -> String) -> usize {
        (0..).take_while(|&i| params.contains_key(&f(i))).count()
    }

    /// The Conv/ConvTranspose node consuming parameter `name`.
    fn conv_node(&self, params: &BTreeMap<String, Param>, name: &str) -> PResult<&'m NodeProto> {
        let init = params.get(name).map_or(name, |p| p.initializer.as_str());
        self.uses(init)
            .iter()
            .filter_map(|&(n, slot)| self.node(n).filter(|_| slot == 1))
            .find(|node| matches!(node.op_type.as_str(), "Conv" | "ConvTranspose"))
            .ok_or_else(|| {
                self.err(TtsErrorKind::NotVits {
                    reason: "no Conv or ConvTranspose node uses it as its weight".to_owned(),
                })
                .subject(TtsSubject::Param(name.to_owned()))
            })
    }

    /// The first value of the ints attribute `attr` of the node consuming `name` (ONNX's
    /// default of 1 if absent).
    fn conv_attr(
        &self,
        params: &BTreeMap<String, Param>,
        name: &str,
        attr: &'static str,
    ) -> PResult<usize> {
        let node = self.conv_node(params, name)?;
        let Some(a) = node.attr(attr) else {
            return Ok(1);
        };
        let bad = |reason: String| {
            self.err(TtsErrorKind::BadAttribute {
                attribute: attr,
                reason,
            })
            .subject(TtsSubject::Node(node.name.clone()))
        };
        let ints = a
            .as_ints()
            .ok_or_else(|| bad(format!("is {:?}, expected ints", a.r#type)))?;
        match ints {
            [v] => usize::try_from(*v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(format!("value {v} is not positive"))),
            other => Err(bad(format!(
                "has {} values, expected 1 (a 1-D convolution)",
                other.len()
            ))),
        }
    }

    fn not_vits(&self, reason: String) -> Box<TtsError> {
        self.err(TtsErrorKind::NotVits { reason })
    }

    /// Infers the hyperparameters; also resolves the folded `dp.flows.0.logs`.
    fn infer(
        &self,
        params: &mut BTreeMap<String, Param>,
        config: &VoiceConfig,
    ) -> PResult<VitsConfig> {
        if !params.contains_key("enc_p.emb.weight") && !params.keys().any(|k| k.starts_with("dec."))
        {
            return Err(self.not_vits(format!(
                "no text encoder embedding (enc_p.emb.weight) and no decoder (dec.*) among {} initializers",
                self.model.graph().initializer.len()
            )));
        }
        let p = &*params;
        let n_vocab = self.dim(p, "enc_p.emb.weight", 2, 0)?;
        let hidden = self.dim(p, "enc_p.emb.weight", 2, 1)?;
        let n_layers = Self::count(p, |l| {
            format!("enc_p.encoder.attn_layers.{l}.conv_q.weight")
        });
        if n_layers == 0 {
            return Err(self.not_vits(
                "no text encoder layers (enc_p.encoder.attn_layers.0.conv_q.weight)".to_owned(),
            ));
        }
        let rel = "enc_p.encoder.attn_layers.0.emb_rel_k";
        let rel_heads = self.dim(p, rel, 3, 0)?;
        let rel_len = self.dim(p, rel, 3, 1)?;
        let k_channels = self.dim(p, rel, 3, 2)?;
        let rel_dims = self.dims(p, rel, "")?;
        let bad_rel = |reason: &str| {
            self.err(TtsErrorKind::UnexpectedShape {
                expected: format!("[1 or n_heads, 2 * window + 1, {hidden} / n_heads] ({reason})"),
                found: rel_dims.to_vec(),
            })
            .subject(TtsSubject::Param(rel.to_owned()))
        };
        if hidden % k_channels != 0 {
            return Err(bad_rel(
                "the last dimension does not divide the hidden width",
            ));
        }
        if rel_len % 2 == 0 {
            return Err(bad_rel("the window length is even"));
        }
        let n_heads = hidden / k_channels;
        let heads_share = rel_heads == 1;
        if !heads_share && rel_heads != n_heads {
            return Err(bad_rel("the first dimension is neither 1 nor n_heads"));
        }
        let ffn = "enc_p.encoder.ffn_layers.0.conv_1.weight";
        let filter_channels = self.dim(p, ffn, 3, 0)?;
        let kernel_size = self.dim(p, ffn, 3, 2)?;
        let proj = self.dim(p, "enc_p.proj.weight", 3, 0)?;
        if proj % 2 != 0 {
            return Err(self
                .err(TtsErrorKind::UnexpectedShape {
                    expected: "[2 * inter_channels, hidden, 1]".to_owned(),
                    found: self.dims(p, "enc_p.proj.weight", "")?.to_vec(),
                })
                .subject(TtsSubject::Param("enc_p.proj.weight".to_owned())));
        }
        let inter = proj / 2;

        let (gin_channels, n_speakers) = if p.contains_key("emb_g.weight") {
            (
                self.dim(p, "emb_g.weight", 2, 1)?,
                self.dim(p, "emb_g.weight", 2, 0)?,
            )
        } else {
            (0, 1)
        };

        // Flow.
        let n_flows = Self::count(p, |c| format!("flow.flows.{}.pre.weight", 2 * c));
        if n_flows == 0 {
            return Err(self.not_vits("no flow (flow.flows.0.pre.weight)".to_owned()));
        }
        let wn_layers = Self::count(p, |l| format!("flow.flows.0.enc.in_layers.{l}.weight"));
        if wn_layers == 0 {
            return Err(self.not_vits(
                "no WaveNet layers in the flow (flow.flows.0.enc.in_layers.0.weight)".to_owned(),
            ));
        }
        let in0 = "flow.flows.0.enc.in_layers.0.weight";
        let flow = FlowConfig {
            n_flows,
            hidden_channels: self.dim(p, "flow.flows.0.pre.weight", 3, 0)?,
            kernel_size: self.dim(p, in0, 3, 2)?,
            dilation_rate: if wn_layers > 1 {
                self.conv_attr(p, "flow.flows.0.enc.in_layers.1.weight", "dilations")?
            } else {
                1
            },
            n_layers: wn_layers,
            mean_only: self.dim(p, "flow.flows.0.post.weight", 3, 0)? == inter / 2,
        };

        // Duration predictor.
        let duration_predictor = if p.contains_key("dp.flows.0.m") {
            let n_dds_layers = Self::count(p, |l| format!("dp.convs.convs_sep.{l}.weight"));
            let last_flow = (0..64)
                .rev()
                .find(|j| p.contains_key(&format!("dp.flows.{}.pre.weight", 2 * j + 1)));
            let Some(last_flow) = last_flow else {
                return Err(self.not_vits(
                    "stochastic duration predictor without conv flows (dp.flows.3.pre.weight)"
                        .to_owned(),
                ));
            };
            let proj_name = format!("dp.flows.{}.proj.weight", 2 * last_flow + 1);
            let proj_out = self.dim(p, &proj_name, 3, 0)?;
            if proj_out % 3 != 2 {
                return Err(self
                    .err(TtsErrorKind::UnexpectedShape {
                        expected:
                            "[num_bins.saturating_mul(3).saturating_sub(1), filter_channels, 1]"
                                .to_owned(),
                        found: self.dims(p, &proj_name, "")?.to_vec(),
                    })
                    .subject(TtsSubject::Param(proj_name)));
            }
            let logs_folded = !p.contains_key("dp.flows.0.logs");
            let cfg = DurationPredictorConfig::Stochastic {
                filter_channels: self.dim(p, "dp.pre.weight", 3, 0)?,
                kernel_size: self.dim(p, "dp.convs.convs_sep.0.weight", 3, 2)?,
                n_dds_layers,
                n_flows: last_flow + 1,
                num_bins: proj_out / 3 + 1,
                logs_folded,
            };
            if logs_folded {
                let param = self.find_folded_logs(p)?;
                params.insert(param.name.clone(), param);
            }
            cfg
        } else if p.contains_key("dp.conv_1.weight") {
            DurationPredictorConfig::Deterministic {
                filter_channels: self.dim(p, "dp.conv_1.weight", 3, 0)?,
                kernel_size: self.dim(p, "dp.conv_1.weight", 3, 2)?,
            }
        } else {
            return Err(self
                .not_vits("no duration predictor (dp.flows.0.m or dp.conv_1.weight)".to_owned()));
        };

        let p = &*params;
        // Decoder.
        let n_ups = Self::count(p, |u| format!("dec.ups.{u}.weight"));
        if n_ups == 0 {
            return Err(self.not_vits("no decoder upsampling layers (dec.ups.0.weight)".to_owned()));
        }
        let mut upsample_rates = Vec::with_capacity(n_ups);
        let mut upsample_kernel_sizes = Vec::with_capacity(n_ups);
        for u in 0..n_ups {
            let w = format!("dec.ups.{u}.weight");
            upsample_kernel_sizes.push(self.dim(p, &w, 3, 2)?);
            upsample_rates.push(self.conv_attr(p, &w, "strides")?);
        }
        let (resblock, first) = if p.contains_key("dec.resblocks.0.convs1.0.weight") {
            (ResBlockKind::One, "convs1")
        } else if p.contains_key("dec.resblocks.0.convs.0.weight") {
            (ResBlockKind::Two, "convs")
        } else {
            return Err(self.not_vits("no decoder residual blocks (dec.resblocks.0.convs1.0.weight or dec.resblocks.0.convs.0.weight)".to_owned()));
        };
        let n_resblocks = Self::count(p, |r| format!("dec.resblocks.{r}.{first}.0.weight"));
        if n_resblocks % n_ups != 0 {
            return Err(self.not_vits(format!(
                "{n_resblocks} decoder residual blocks do not divide evenly among {n_ups} upsampling layers"
            )));
        }
        let n_kernels = n_resblocks / n_ups;
        let mut resblock_kernel_sizes = Vec::with_capacity(n_kernels);
        let mut resblock_dilation_sizes = Vec::with_capacity(n_kernels);
        for r in 0..n_kernels {
            resblock_kernel_sizes.push(self.dim(
                p,
                &format!("dec.resblocks.{r}.{first}.0.weight"),
                3,
                2,
            )?);
            let n_dil = Self::count(p, |m| format!("dec.resblocks.{r}.{first}.{m}.weight"));
            let dil = (0..n_dil)
                .map(|m| {
                    self.conv_attr(
                        p,
                        &format!("dec.resblocks.{r}.{first}.{m}.weight"),
                        "dilations",
                    )
                })
                .collect::<PResult<Vec<_>>>()?;
            resblock_dilation_sizes.push(dil);
        }
        let decoder = DecoderConfig {
            upsample_initial_channel: self.dim(p, "dec.conv_pre.weight", 3, 0)?,
            upsample_rates,
            upsample_kernel_sizes,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            pre_kernel_size: self.dim(p, "dec.conv_pre.weight", 3, 2)?,
            post_kernel_size: self.dim(p, "dec.conv_post.weight", 3, 2)?,
        };
        let halved = u32::try_from(n_ups)
            .ok()
            .and_then(|n| decoder.upsample_initial_channel.checked_shr(n));
        if halved.unwrap_or(0) == 0 {
            return Err(self.not_vits(format!(
                "{} decoder channels cannot be halved {n_ups} times",
                decoder.upsample_initial_channel
            )));
        }

        Ok(VitsConfig {
            sample_rate: config.sample_rate,
            n_vocab,
            hidden_channels: hidden,
            inter_channels: inter,
            filter_channels,
            n_heads,
            n_layers,
            kernel_size,
            window_size: rel_len / 2,
            heads_share,
            flow,
            duration_predictor,
            decoder,
            gin_channels,
            n_speakers,
        })
    }

    /// Finds `exp(-dp.flows.0.logs)`: the Sub node subtracting `dp.flows.0.m` feeds a Mul
    /// whose other input is an initializer shaped like `m`.
    fn find_folded_logs(&self, params: &BTreeMap<String, Param>) -> PResult<Param> {
        let m = params
            .get("dp.flows.0.m")
            .map_or("dp.flows.0.m", |p| p.initializer.as_str());
        let m_dims = self.dims(params, "dp.flows.0.m", "")?;
        for &(n, slot) in self.uses(m) {
            let Some(sub) = self.node(n) else { continue };
            if sub.op_type != "Sub" || slot != 1 {
                continue;
            }
            for out in &sub.output {
                for &(k, _) in self.uses(out) {
                    let Some(mul) = self.node(k) else { continue };
                    if mul.op_type != "Mul" {
                        continue;
                    }
                    let other = mul.input.iter().find(|i| *i != out);
                    let Some(t) = other.and_then(|i| self.model.initializer(i)) else {
                        continue;
                    };
                    if t.dims() == m_dims && t.data_type() == DataType::FLOAT {
                        return Ok(Param {
                            name: "dp.flows.0.logs".to_owned(),
                            initializer: t.name().to_owned(),
                            source: ParamSource::FoldedExpNeg {
                                node: mul.name.clone(),
                            },
                            expected: false,
                        });
                    }
                }
            }
        }
        Err(self
            .err(TtsErrorKind::Missing {
                context: "neither a dp.flows.0.logs initializer nor a folded exp(-logs) constant multiplying (x - dp.flows.0.m)".to_owned(),
            })
            .subject(TtsSubject::Param("dp.flows.0.logs".to_owned())))
    }

    /// Checks that every parameter the architecture needs is present with its shape, and
    /// marks them expected.
    fn check_expected(
        &self,
        vits: &VitsConfig,
        params: &mut BTreeMap<String, Param>,
    ) -> PResult<()> {
        let context = || {
            format!(
                "the VITS architecture inferred from the graph needs it (hidden {}, {} encoder layers, {} flows, {} upsampling layers)",
                vits.hidden_channels,
                vits.n_layers,
                vits.flow.n_flows,
                vits.decoder.upsample_rates.len()
            )
        };
        for (name, shape) in vits.expected_params() {
            let Some(param) = params.get_mut(&name) else {
                return Err(self
                    .err(TtsErrorKind::Missing { context: context() })
                    .subject(TtsSubject::Param(name)));
            };
            let Some(t) = self.model.initializer(&param.initializer) else {
                return Err(self
                    .err(TtsErrorKind::Missing { context: context() })
                    .subject(TtsSubject::Param(name)));
            };
            if t.dims() != shape.as_slice() {
                return Err(self
                    .err(TtsErrorKind::UnexpectedShape {
                        expected: format!("{shape:?}"),
                        found: t.dims().to_vec(),
                    })
                    .subject(TtsSubject::Param(name))
                    .at(t.proto().offset()));
            }
            if t.data_type() != DataType::FLOAT {
                return Err(self
                    .err(TtsErrorKind::UnsupportedDataType {
                        found: t.data_type().0,
                        found_name: t.data_type().name(),
                        wanted: "FLOAT (fp32 voice)",
                    })
                    .subject(TtsSubject::Param(name))
                    .at(t.proto().offset()));
            }
            param.expected = true;
        }
        Ok(())
    }
}

/// Cross-checks the config against the model.
fn check_config(
    config: &VoiceConfig,
    config_path: Option<&Path>,
    vits: &VitsConfig,
) -> PResult<()> {
    let bad = |key: &str, reason: String| {
        TtsError::new(TtsFile::VoiceConfig, TtsErrorKind::BadValue { reason })
            .path(config_path.map(Path::to_path_buf))
            .subject(TtsSubject::Key(key.to_owned()))
    };
    for (phoneme, ids) in &config.phoneme_id_map {
        if let Some(&id) = ids
            .iter()
            .find(|&&id| usize::try_from(id).map_or(true, |id| id >= vits.n_vocab))
        {
            return Err(bad(
                &format!("phoneme_id_map.{phoneme}"),
                format!(
                    "id {id} is outside the model's embedding of {} symbols",
                    vits.n_vocab
                ),
            ));
        }
    }
    for (phoneme, key) in [("_", "pad"), ("^", "bos"), ("$", "eos")] {
        if !config.phoneme_id_map.contains_key(phoneme) {
            return Err(bad(
                "phoneme_id_map",
                format!("has no {key} symbol {phoneme:?}, which Piper's id scheme needs"),
            ));
        }
    }
    let n = usize::try_from(config.num_speakers).unwrap_or(usize::MAX);
    if n > 1 && vits.gin_channels == 0 {
        return Err(bad(
            "num_speakers",
            format!("{n} speakers, but the model has no speaker embedding (emb_g.weight)"),
        ));
    }
    if vits.gin_channels > 0 && n != vits.n_speakers {
        return Err(bad(
            "num_speakers",
            format!(
                "{n} speakers, but the model's speaker embedding has {} rows",
                vits.n_speakers
            ),
        ));
    }
    Ok(())
}
