//! VITS inference (Piper's generator) on plain `[channels, length]` f32 buffers, CPU, batch 1.
//!
//! The stages follow the PyTorch model Piper exports (`SynthesizerTrn.infer`):
//!
//! 1. text encoder (`enc_p`): phoneme embedding times `sqrt(hidden)`, transformer layers with
//!    relative-position multi-head attention (window `w`: key `j` of query `i` adds
//!    `q_i . emb_rel_k[j - i + w]` to the score and `p_ij * emb_rel_v[j - i + w]` to the
//!    output when `|j - i| <= w`) and a convolutional feed-forward, post-norm layer norms,
//!    then a 1x1 projection to the prior's mean `m_p` and log-deviation `logs_p`;
//! 2. durations (`dp`): the stochastic predictor run in reverse from noise (`noise_w`; 0 makes
//!    it deterministic) through its conv flows (rational-quadratic splines) and elementwise
//!    affine flow, or the plain convolutional predictor; `ceil(exp(logw) * length_scale)`;
//! 3. length regulation: each phoneme's prior column repeated for its frames, and
//!    `z_p = m_p + eps * exp(logs_p) * noise_scale`;
//! 4. the residual coupling flow in reverse (WaveNet couplings, mean-only, channel flips);
//! 5. the HiFi-GAN decoder: `conv_pre`, transposed-convolution upsampling after leaky ReLU
//!    (0.1), multi-receptive-field residual blocks averaged, leaky ReLU (0.01), `conv_post`,
//!    `tanh`.
//!
//! With batch 1 and no padding every sequence mask is all ones, so masks are not materialized.
//! A multi-speaker voice adds its speaker embedding (`emb_g`) through the `cond` layers of the
//! duration predictor, the flow's WaveNets and the decoder.

use std::ops::ControlFlow;

use super::conv::{Act, Conv1d, ConvTranspose1d, gemm_strided};
use super::error::{TtsError, TtsErrorKind, TtsFile};
use super::piper_voice::{DurationPredictorConfig, PiperVoice, ResBlockKind, VitsConfig};
use crate::error::Result;
use crate::par::SendPtr;

/// Inference scales of one utterance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Noise of the prior (`z_p`).
    pub noise_scale: f32,
    /// Duration multiplier.
    pub length_scale: f32,
    /// Noise of the stochastic duration predictor.
    pub noise_w: f32,
}

/// A small deterministic Gaussian source (SplitMix64 and Box-Muller).
#[derive(Debug, Clone)]
pub struct Noise {
    state: u64,
    spare: Option<f32>,
}

impl Noise {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // 53 bits
        let u = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        u
    }

    /// A standard normal sample.
    pub fn gaussian(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform();
        #[allow(clippy::cast_possible_truncation)]
        {
            self.spare = Some((r * theta.sin()) as f32);
            (r * theta.cos()) as f32
        }
    }

    fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.gaussian() * scale).collect()
    }
}

// ----- building blocks -------------------------------------------------------------------

fn load_vec(voice: &PiperVoice, name: &str) -> Result<Vec<f32>> {
    voice.param(name)?.to_f32_vec()
}

// ----- text encoder ------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct AttnLayer {
    q: Conv1d,
    k: Conv1d,
    v: Conv1d,
    o: Conv1d,
    /// `[heads or 1][2w + 1][kc]`.
    rel_k: Vec<f32>,
    rel_v: Vec<f32>,
    rel_heads: usize,
    norm1: (Vec<f32>, Vec<f32>),
    ffn1: Conv1d,
    ffn2: Conv1d,
    norm2: (Vec<f32>, Vec<f32>),
}

fn load_norm(voice: &PiperVoice, name: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        load_vec(voice, &format!("{name}.gamma"))?,
        load_vec(voice, &format!("{name}.beta"))?,
    ))
}

/// Layer norm over the channels of `x` `[C, T]`, in place (eps 1e-5).
fn layer_norm(x: &mut [f32], t: usize, (gamma, beta): &(Vec<f32>, Vec<f32>)) {
    let c = gamma.len();
    #[allow(clippy::cast_precision_loss)]
    let inv_c = 1.0 / c as f32;
    let mut mean = vec![0f32; t];
    let mut var = vec![0f32; t];
    for row in x.chunks_exact(t) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m *= inv_c);
    for row in x.chunks_exact(t) {
        for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    var.iter_mut()
        .for_each(|s| *s = 1.0 / (*s * inv_c + 1e-5).sqrt());
    for (ch, row) in x.chunks_exact_mut(t).enumerate() {
        let (g, b) = (gamma[ch], beta[ch]);
        for ((v, &m), &r) in row.iter_mut().zip(&mean).zip(&var) {
            *v = (*v - m) * r * g + b;
        }
    }
}

#[derive(Debug, Clone)]
struct TextEncoder {
    /// `[n_vocab][hidden]`.
    emb: Vec<f32>,
    hidden: usize,
    scale: f32,
    layers: Vec<AttnLayer>,
    proj: Conv1d,
    n_heads: usize,
    window: usize,
    inter: usize,
}

impl TextEncoder {
    fn load(voice: &PiperVoice, c: &VitsConfig) -> Result<Self> {
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let a = format!("enc_p.encoder.attn_layers.{l}");
            let f = format!("enc_p.encoder.ffn_layers.{l}");
            layers.push(AttnLayer {
                q: fast_conv(voice, &format!("{a}.conv_q"), 1, true)?,
                k: fast_conv(voice, &format!("{a}.conv_k"), 1, true)?,
                v: fast_conv(voice, &format!("{a}.conv_v"), 1, true)?,
                o: fast_conv(voice, &format!("{a}.conv_o"), 1, true)?,
                rel_k: load_vec(voice, &format!("{a}.emb_rel_k"))?,
                rel_v: load_vec(voice, &format!("{a}.emb_rel_v"))?,
                rel_heads: if c.heads_share { 1 } else { c.n_heads },
                norm1: load_norm(voice, &format!("enc_p.encoder.norm_layers_1.{l}"))?,
                ffn1: fast_conv(voice, &format!("{f}.conv_1"), 1, true)?,
                ffn2: fast_conv(voice, &format!("{f}.conv_2"), 1, true)?,
                norm2: load_norm(voice, &format!("enc_p.encoder.norm_layers_2.{l}"))?,
            });
        }
        #[allow(clippy::cast_precision_loss)]
        let scale = (c.hidden_channels as f32).sqrt();
        Ok(Self {
            emb: load_vec(voice, "enc_p.emb.weight")?,
            hidden: c.hidden_channels,
            scale,
            layers,
            proj: fast_conv(voice, "enc_p.proj", 1, true)?,
            n_heads: c.n_heads,
            window: c.window_size,
            inter: c.inter_channels,
        })
    }

    /// Returns the encoder output `x` `[hidden, T]`, `m_p` and `logs_p` `[inter, T]`.
    fn forward(&self, ids: &[u32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let t = ids.len();
        let h = self.hidden;
        let mut x = vec![0f32; h * t];
        for (i, &id) in ids.iter().enumerate() {
            let row = &self.emb[id as usize * h..(id as usize + 1) * h];
            for (ch, &v) in row.iter().enumerate() {
                x[ch * t + i] = v * self.scale;
            }
        }
        for layer in &self.layers {
            let attn = self.attention(layer, &x, t);
            x = layer.o.forward(&attn, t, Act::Identity, Some(&x));
            layer_norm(&mut x, t, &layer.norm1);
            let y = layer.ffn1.forward(&x, t, Act::Identity, None);
            x = layer.ffn2.forward(&y, t, Act::Leaky(0.0), Some(&x)); // relu, then + x
            layer_norm(&mut x, t, &layer.norm2);
        }
        let stats = self.proj.forward(&x, t, Act::Identity, None);
        let logs = stats[self.inter * t..].to_vec();
        let mut m = stats;
        m.truncate(self.inter * t);
        (x, m, logs)
    }

    /// Multi-head attention with relative positions; returns the heads' outputs `[hidden, T]`
    /// (before `conv_o`).
    fn attention(&self, l: &AttnLayer, x: &[f32], t: usize) -> Vec<f32> {
        let h = self.hidden;
        let nh = self.n_heads;
        let kc = h / nh;
        let w = self.window;
        let nr = 2 * w + 1;
        #[allow(clippy::cast_precision_loss)]
        let inv = 1.0 / (kc as f32).sqrt();
        let mut q = l.q.forward(x, t, Act::Identity, None);
        q.iter_mut().for_each(|v| *v *= inv);
        let k = l.k.forward(x, t, Act::Identity, None);
        let v = l.v.forward(x, t, Act::Identity, None);
        let mut out = vec![0f32; h * t];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let (q, k, v) = (&q, &k, &v);
        // One head per task: each writes its own rows of `out`.
        let head = move |hd: usize| {
            let mut scores = vec![0f32; t * t];
            let mut rel = vec![0f32; t * nr];
            let mut rel_w = vec![0f32; t * nr];
            let rh = if l.rel_heads == 1 { 0 } else { hd };
            let rk = &l.rel_k[rh * nr * kc..(rh + 1) * nr * kc];
            let rv = &l.rel_v[rh * nr * kc..(rh + 1) * nr * kc];
            let qh = &q[hd * kc * t..(hd + 1) * kc * t]; // [kc, T]
            let kh = &k[hd * kc * t..(hd + 1) * kc * t];
            let vh = &v[hd * kc * t..(hd + 1) * kc * t];
            // SAFETY: every matrix below lies inside its buffer: qh, kh, vh are [kc, T],
            // scores [T, T], rel and rel_w [T, nr], rk and rv [nr, kc], out's head rows [kc, T].
            unsafe {
                // scores[i, j] = sum_c q[c, i] k[c, j]
                gemm_strided(
                    t,
                    t,
                    kc,
                    scores.as_mut_ptr(),
                    t,
                    1,
                    qh.as_ptr(),
                    1,
                    t,
                    kh.as_ptr(),
                    t,
                    1,
                );
                // rel[i, r] = sum_c q[c, i] rel_k[r, c]
                gemm_strided(
                    t,
                    nr,
                    kc,
                    rel.as_mut_ptr(),
                    nr,
                    1,
                    qh.as_ptr(),
                    1,
                    t,
                    rk.as_ptr(),
                    1,
                    kc,
                );
            }
            for i in 0..t {
                let row = &mut scores[i * t..(i + 1) * t];
                let lo = i.saturating_sub(w);
                let hi = (i + w).min(t - 1);
                for j in lo..=hi {
                    row[j] += rel[i * nr + j + w - i];
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv_sum = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv_sum);
                for j in lo..=hi {
                    rel_w[i * nr + j + w - i] = row[j];
                }
            }
            let oh = out_ptr.at(hd * kc * t);
            // SAFETY: as above; out's head block is [kc, T], written as dst[i, c] at c * T + i,
            // and no other task writes it.
            unsafe {
                // out[c, i] = sum_j p[i, j] v[c, j]
                gemm_strided(t, kc, t, oh, 1, t, scores.as_ptr(), t, 1, vh.as_ptr(), 1, t);
                // out[c, i] += sum_r w[i, r] rel_v[r, c]
                gemm_strided(
                    t,
                    kc,
                    nr,
                    oh,
                    1,
                    t,
                    rel_w.as_ptr(),
                    nr,
                    1,
                    rv.as_ptr(),
                    kc,
                    1,
                );
            }
        };
        if t * t * kc < 4096 || rayon::current_num_threads() < 2 {
            (0..nh).for_each(head);
        } else {
            let head = &head;
            rayon::scope(|s| {
                for hd in 1..nh {
                    s.spawn(move |_| head(hd));
                }
                head(0);
            });
        }
        out
    }
}

// ----- duration predictors -------------------------------------------------------------------

/// Dilated depth-separable convolutions (`DDSConv`), on `[C, T]` data.
#[derive(Debug, Clone)]
struct Dds {
    layers: Vec<DdsLayer>,
}

#[derive(Debug, Clone)]
struct DdsLayer {
    /// Depthwise weights `[C, k]` and bias.
    sep_w: Vec<f32>,
    sep_b: Vec<f32>,
    k: usize,
    dilation: usize,
    pw: Conv1d,
    norm1: (Vec<f32>, Vec<f32>),
    norm2: (Vec<f32>, Vec<f32>),
}

impl Dds {
    fn load(voice: &PiperVoice, prefix: &str, n_layers: usize, k: usize) -> Result<Self> {
        let mut layers = Vec::with_capacity(n_layers);
        let mut dilation = 1;
        for l in 0..n_layers {
            layers.push(DdsLayer {
                sep_w: load_vec(voice, &format!("{prefix}.convs_sep.{l}.weight"))?,
                sep_b: load_vec(voice, &format!("{prefix}.convs_sep.{l}.bias"))?,
                k,
                dilation,
                pw: fast_conv(voice, &format!("{prefix}.convs_1x1.{l}"), 1, true)?,
                norm1: load_norm(voice, &format!("{prefix}.norms_1.{l}"))?,
                norm2: load_norm(voice, &format!("{prefix}.norms_2.{l}"))?,
            });
            dilation = dilation.saturating_mul(k);
        }
        Ok(Self { layers })
    }

    /// In place on `x` `[C, T]`.
    fn forward(&self, x: &mut [f32], t: usize) {
        for l in &self.layers {
            let mut y = l.depthwise(x, t);
            layer_norm(&mut y, t, &l.norm1);
            par_halves(&mut y, None, |y, _| {
                y.iter_mut().for_each(|v| *v = gelu(*v))
            });
            let mut y = l.pw.forward(&y, t, Act::Identity, None);
            layer_norm(&mut y, t, &l.norm2);
            par_halves(x, Some(&y), |x, y| {
                for (xv, &yv) in x.iter_mut().zip(y) {
                    *xv += gelu(yv);
                }
            });
        }
    }
}

/// Runs `f(part of x, same part of y)` over two halves of `x` (and `y`, the same length, or
/// empty) on two threads when there is enough work (GELU's `erff` is ~20 ns an element), else
/// `f(x, y)`.
fn par_halves(x: &mut [f32], y: Option<&[f32]>, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    let y = y.unwrap_or(&[]);
    if x.len() < 4096 || rayon::current_num_threads() < 2 {
        f(x, y);
        return;
    }
    let mid = x.len() / 2;
    let (x0, x1) = x.split_at_mut(mid);
    let (y0, y1) = y.split_at(mid.min(y.len()));
    rayon::join(|| f(x0, y0), || f(x1, y1));
}

/// GELU with the exact error function (PyTorch's default; `libm::erff`, as candle's
/// `gelu_erf`).
#[inline]
fn gelu(v: f32) -> f32 {
    (libm::erff(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v
}

impl DdsLayer {
    fn depthwise(&self, x: &[f32], t: usize) -> Vec<f32> {
        let c = x.len() / t.max(1);
        let pad = (self.k * self.dilation - self.dilation) / 2;
        let mut out = vec![0f32; c * t];
        for ch in 0..c {
            let xin = &x[ch * t..(ch + 1) * t];
            let w = &self.sep_w[ch * self.k..(ch + 1) * self.k];
            let o = &mut out[ch * t..(ch + 1) * t];
            o.fill(self.sep_b[ch]);
            for (j, &wj) in w.iter().enumerate() {
                let off = j * self.dilation;
                // o[i] += wj * x[i + off - pad] for valid indices.
                for (i, oi) in o.iter_mut().enumerate() {
                    let src = i + off;
                    if src >= pad && src - pad < t {
                        *oi += wj * xin[src - pad];
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct ConvFlow {
    /// `pre`: a 1x1 conv from one channel: `[fc]` weights and bias.
    pre_w: Vec<f32>,
    pre_b: Vec<f32>,
    convs: Dds,
    proj: Conv1d,
}

#[derive(Debug, Clone)]
struct Sdp {
    pre: Conv1d,
    cond: Option<Conv1d>,
    convs: Dds,
    proj: Conv1d,
    /// Elementwise affine flow: `m` and `exp(-logs)`, 2 each.
    m: Vec<f32>,
    exp_neg_logs: Vec<f32>,
    /// Conv flows in the order inference runs them (`dp.flows.{2j+1}`, j descending).
    flows: Vec<ConvFlow>,
    fc: usize,
    num_bins: usize,
}

#[derive(Debug, Clone)]
struct Dp {
    conv1: Conv1d,
    norm1: (Vec<f32>, Vec<f32>),
    conv2: Conv1d,
    norm2: (Vec<f32>, Vec<f32>),
    proj: Conv1d,
    cond: Option<Conv1d>,
}

#[derive(Debug, Clone)]
enum DurationPredictor {
    Stochastic(Box<Sdp>),
    Deterministic(Box<Dp>),
}

const TAIL_BOUND: f32 = 5.0;
const MIN_BIN: f32 = 1e-3;
const MIN_DERIVATIVE: f32 = 1e-3;

impl Sdp {
    fn load(voice: &PiperVoice, c: &VitsConfig) -> Result<Self> {
        let DurationPredictorConfig::Stochastic {
            filter_channels,
            kernel_size,
            n_dds_layers,
            n_flows,
            num_bins,
            logs_folded,
        } = c.duration_predictor
        else {
            unreachable!("Sdp::load is called for stochastic predictors only")
        };
        let logs = load_vec(voice, "dp.flows.0.logs")?;
        let exp_neg_logs = if logs_folded {
            logs
        } else {
            logs.iter().map(|l| (-l).exp()).collect()
        };
        let mut flows = Vec::new();
        for j in (1..n_flows).rev() {
            let f = format!("dp.flows.{}", 2 * j + 1);
            flows.push(ConvFlow {
                pre_w: load_vec(voice, &format!("{f}.pre.weight"))?,
                pre_b: load_vec(voice, &format!("{f}.pre.bias"))?,
                convs: Dds::load(voice, &format!("{f}.convs"), n_dds_layers, kernel_size)?,
                proj: fast_conv(voice, &format!("{f}.proj"), 1, true)?,
            });
        }
        Ok(Self {
            pre: fast_conv(voice, "dp.pre", 1, true)?,
            cond: if c.gin_channels > 0 {
                Some(fast_conv(voice, "dp.cond", 1, true)?)
            } else {
                None
            },
            convs: Dds::load(voice, "dp.convs", n_dds_layers, kernel_size)?,
            proj: fast_conv(voice, "dp.proj", 1, true)?,
            m: load_vec(voice, "dp.flows.0.m")?,
            exp_neg_logs,
            flows,
            fc: filter_channels,
            num_bins,
        })
    }

    /// `logw` `[T]` of the encoder output `x` `[hidden, T]`; `g` is the speaker embedding.
    fn forward(
        &self,
        x: &[f32],
        t: usize,
        g: Option<&[f32]>,
        noise: &mut Noise,
        noise_w: f32,
    ) -> Vec<f32> {
        let mut h = self.pre.forward(x, t, Act::Identity, None);
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            add_per_channel(&mut h, t, &cond.forward(g, 1, Act::Identity, None));
        }
        self.convs.forward(&mut h, t);
        let h = self.proj.forward(&h, t, Act::Identity, None);
        let (mut z0, mut z1) = if noise_w > 0.0 {
            (noise.fill(t, noise_w), noise.fill(t, noise_w))
        } else {
            (vec![0f32; t], vec![0f32; t])
        };
        #[allow(clippy::cast_precision_loss)]
        let inv_sqrt_fc = 1.0 / (self.fc as f32).sqrt();
        let nb = self.num_bins;
        for flow in &self.flows {
            std::mem::swap(&mut z0, &mut z1); // Flip
            // pre: one input channel, then + h.
            let fc = flow.pre_w.len();
            let mut pre = vec![0f32; fc * t];
            for ch in 0..fc {
                for i in 0..t {
                    pre[ch * t + i] = flow.pre_w[ch] * z0[i] + flow.pre_b[ch] + h[ch * t + i];
                }
            }
            flow.convs.forward(&mut pre, t);
            let p = flow.proj.forward(&pre, t, Act::Identity, None); // [3nb - 1, T]
            let mut uw = vec![0f32; nb];
            let mut uh = vec![0f32; nb];
            let mut ud = vec![0f32; nb - 1];
            for i in 0..t {
                for b in 0..nb {
                    uw[b] = p[b * t + i] * inv_sqrt_fc;
                    uh[b] = p[(nb + b) * t + i] * inv_sqrt_fc;
                }
                for b in 0..nb - 1 {
                    ud[b] = p[(2 * nb + b) * t + i];
                }
                z1[i] = rq_spline_inverse(z1[i], &uw, &uh, &ud);
            }
        }
        std::mem::swap(&mut z0, &mut z1); // the Flip before the affine flow
        // Elementwise affine, reverse: (z - m) * exp(-logs); channel 0 is logw.
        z0.iter()
            .map(|&z| (z - self.m[0]) * self.exp_neg_logs[0])
            .collect()
    }
}

/// `x[c, :] += v[c]` for `x` `[C, T]`.
fn add_per_channel(x: &mut [f32], t: usize, v: &[f32]) {
    for (row, &a) in x.chunks_exact_mut(t).zip(v) {
        row.iter_mut().for_each(|x| *x += a);
    }
}

fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// Normalized bin edges from unnormalized widths (softmax, minimum bin size, scaled to
/// `[-B, B]`, exact ends).
fn bin_edges(u: &[f32], edges: &mut [f32]) {
    let nb = u.len();
    let max = u.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = u.iter().map(|&v| (v - max).exp()).sum();
    #[allow(clippy::cast_precision_loss)]
    let spread = 1.0 - MIN_BIN * nb as f32;
    let mut cum = 0f32;
    edges[0] = -TAIL_BOUND;
    for b in 0..nb {
        cum += MIN_BIN + spread * ((u[b] - max).exp() / sum);
        edges[b + 1] = 2.0 * TAIL_BOUND * cum - TAIL_BOUND;
    }
    edges[nb] = TAIL_BOUND;
}

/// The inverse of the rational-quadratic spline with linear tails (outside `[-B, B]` the
/// identity), as in Durkan et al.'s neural spline flows, which VITS uses.
fn rq_spline_inverse(y: f32, uw: &[f32], uh: &[f32], ud: &[f32]) -> f32 {
    if !(-TAIL_BOUND..=TAIL_BOUND).contains(&y) {
        return y;
    }
    let nb = uw.len();
    let mut cw = [0f32; 65];
    let mut chh = [0f32; 65];
    if nb + 1 > cw.len() {
        return y; // not reachable for real voices (10 bins); keeps the arrays fixed-size
    }
    bin_edges(uw, &mut cw[..=nb]);
    bin_edges(uh, &mut chh[..=nb]);
    // Derivatives at the knots: 1 at both ends (min_derivative + softplus(log(e^(1-min)-1))).
    let deriv = |k: usize| -> f32 {
        if k == 0 || k == nb {
            1.0
        } else {
            MIN_DERIVATIVE + softplus(ud[k - 1])
        }
    };
    // searchsorted with the last edge nudged up by 1e-6.
    let mut bin = 0usize;
    for (k, &c) in chh[..=nb].iter().enumerate() {
        let edge = if k == nb { c + 1e-6 } else { c };
        if y >= edge {
            bin = k;
        }
    }
    let bin = bin.min(nb - 1);
    let x_k = cw[bin];
    let w_k = cw[bin + 1] - cw[bin];
    let y_k = chh[bin];
    let h_k = chh[bin + 1] - chh[bin];
    let delta = h_k / w_k;
    let d0 = deriv(bin);
    let d1 = deriv(bin + 1);
    let dy = y - y_k;
    let a = dy * (d0 + d1 - 2.0 * delta) + h_k * (delta - d0);
    let b = h_k * d0 - dy * (d0 + d1 - 2.0 * delta);
    let c = -delta * dy;
    let disc = (b * b - 4.0 * a * c).max(0.0);
    let root = (2.0 * c) / (-b - disc.sqrt());
    root * w_k + x_k
}

impl Dp {
    fn load(voice: &PiperVoice, c: &VitsConfig) -> Result<Self> {
        Ok(Self {
            conv1: fast_conv(voice, "dp.conv_1", 1, true)?,
            norm1: load_norm(voice, "dp.norm_1")?,
            conv2: fast_conv(voice, "dp.conv_2", 1, true)?,
            norm2: load_norm(voice, "dp.norm_2")?,
            proj: fast_conv(voice, "dp.proj", 1, true)?,
            cond: if c.gin_channels > 0 {
                Some(fast_conv(voice, "dp.cond", 1, true)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &[f32], t: usize, g: Option<&[f32]>) -> Vec<f32> {
        let mut x = x.to_vec();
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            add_per_channel(&mut x, t, &cond.forward(g, 1, Act::Identity, None));
        }
        let mut y = self.conv1.forward(&x, t, Act::Identity, None);
        y.iter_mut().for_each(|v| *v = v.max(0.0));
        layer_norm(&mut y, t, &self.norm1);
        let mut y = self.conv2.forward(&y, t, Act::Identity, None);
        y.iter_mut().for_each(|v| *v = v.max(0.0));
        layer_norm(&mut y, t, &self.norm2);
        self.proj.forward(&y, t, Act::Identity, None)
    }
}

// ----- flow --------------------------------------------------------------------------------

fn fast_conv(voice: &PiperVoice, name: &str, dilation: usize, bias: bool) -> Result<Conv1d> {
    scaled_conv(voice, name, dilation, bias, 1.0)
}

/// [`fast_conv`] with the weights (not the bias) multiplied by `scale`.
fn scaled_conv(
    voice: &PiperVoice,
    name: &str,
    dilation: usize,
    bias: bool,
    scale: f32,
) -> Result<Conv1d> {
    let w = voice.param(&format!("{name}.weight"))?;
    let d: Vec<usize> = w
        .dims()
        .iter()
        .map(|&v| usize::try_from(v).unwrap_or(0))
        .collect();
    let [c_out, c_in, k] = d[..] else {
        return Err(TtsError::new(
            TtsFile::Request,
            TtsErrorKind::Inference {
                stage: "loading weights",
                reason: format!("{name}.weight has shape {d:?}, expected 3 dimensions"),
            },
        )
        .into());
    };
    let b = if bias {
        Some(load_vec(voice, &format!("{name}.bias"))?)
    } else {
        None
    };
    let mut w = w.to_f32_vec()?;
    if scale != 1.0 {
        w.iter_mut().for_each(|v| *v *= scale);
    }
    Ok(Conv1d::new(&w, c_out, c_in, k, b, dilation))
}

#[derive(Debug, Clone)]
struct Coupling {
    pre: Conv1d,
    in_layers: Vec<Conv1d>,
    res_skip: Vec<Conv1d>,
    cond: Option<Conv1d>,
    post: Conv1d,
    hidden: usize,
}

impl Coupling {
    fn load(voice: &PiperVoice, c: &VitsConfig, idx: usize) -> Result<Self> {
        let f = format!("flow.flows.{}", 2 * idx);
        let fl = &c.flow;
        let mut in_layers = Vec::with_capacity(fl.n_layers);
        let mut res_skip = Vec::with_capacity(fl.n_layers);
        let mut dilation = 1usize;
        for l in 0..fl.n_layers {
            in_layers.push(fast_conv(
                voice,
                &format!("{f}.enc.in_layers.{l}"),
                dilation,
                true,
            )?);
            res_skip.push(fast_conv(
                voice,
                &format!("{f}.enc.res_skip_layers.{l}"),
                1,
                true,
            )?);
            dilation = dilation.saturating_mul(fl.dilation_rate);
        }
        Ok(Self {
            pre: fast_conv(voice, &format!("{f}.pre"), 1, true)?,
            in_layers,
            res_skip,
            cond: if c.gin_channels > 0 {
                Some(fast_conv(voice, &format!("{f}.enc.cond_layer"), 1, true)?)
            } else {
                None
            },
            post: fast_conv(voice, &format!("{f}.post"), 1, true)?,
            hidden: fl.hidden_channels,
        })
    }

    /// The reverse pass on `z` `[C, F]` in place; `g` is the speaker embedding `[gin]`.
    fn reverse(&self, z: &mut [f32], f: usize, g: Option<&[f32]>) {
        let c = z.len() / f;
        let half = c / 2;
        let (x0, x1) = z.split_at_mut(half * f);
        let mut h = self.pre.forward(x0, f, Act::Identity, None);
        let gc = match (&self.cond, g) {
            (Some(cond), Some(g)) => Some(cond.forward(g, 1, Act::Identity, None)),
            _ => None,
        };
        let hd = self.hidden;
        let n = self.in_layers.len();
        // h and the skip sum `out`, one buffer `[2 * hd, F]`, so that each res/skip layer
        // adds onto both as its residual.
        h.resize(2 * hd * f, 0.0);
        let mut acts = vec![0f32; hd * f];
        for (l, (inl, rs)) in self.in_layers.iter().zip(&self.res_skip).enumerate() {
            let x_in = inl.forward(&h[..hd * f], f, Act::Identity, None);
            let gate = |ch0: usize, acts: &mut [f32]| {
                for (k, o_row) in acts.chunks_exact_mut(f).enumerate() {
                    let ch = ch0 + k;
                    let (gt, gs) = match &gc {
                        Some(gc) => (gc[l * 2 * hd + ch], gc[l * 2 * hd + hd + ch]),
                        None => (0.0, 0.0),
                    };
                    let a = &x_in[ch * f..(ch + 1) * f];
                    let b = &x_in[(hd + ch) * f..(hd + ch + 1) * f];
                    for ((o, &av), &bv) in o_row.iter_mut().zip(a).zip(b) {
                        *o = tanh_fast(av + gt) * sigmoid_fast(bv + gs);
                    }
                }
            };
            // tanh and exp per element: split the channels over the threads.
            if hd * f >= 16_384 && hd >= 2 && rayon::current_num_threads() > 1 {
                let (lo, hi) = acts.split_at_mut(hd / 2 * f);
                rayon::join(|| gate(0, lo), || gate(hd / 2, hi));
            } else {
                gate(0, &mut acts);
            }
            if l + 1 < n {
                h = rs.forward(&acts, f, Act::Identity, Some(&h));
            } else {
                let out = rs.forward(&acts, f, Act::Identity, Some(&h[hd * f..]));
                h[hd * f..].copy_from_slice(&out);
            }
        }
        let m = self.post.forward(&h[hd * f..], f, Act::Identity, None);
        for (v, &mv) in x1.iter_mut().zip(&m) {
            *v -= mv;
        }
    }
}

/// `e^x` within about 2 ulp, in plain arithmetic that the compiler vectorizes (AVX-512,
/// NEON): `2^n * p(r)` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`, `p` the degree-7 Taylor
/// polynomial. Inputs are clamped to `[-87, 88]` (no infinities, no denormals).
#[inline]
fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// The logistic function on [`exp_fast`].
#[inline]
fn sigmoid_fast(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// `tanh` on [`exp_fast`]: `1 - 2 / (1 + e^(2x))` (absolute error about 1e-7).
#[inline]
fn tanh_fast(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp_fast(2.0 * x))
}

// ----- decoder -----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum ResBlock {
    One(Vec<(Conv1d, Conv1d)>),
    Two(Vec<Conv1d>),
}

#[derive(Debug, Clone)]
struct Decoder {
    pre: Conv1d,
    cond: Option<Conv1d>,
    ups: Vec<ConvTranspose1d>,
    /// `n_kernels` blocks per upsampling layer.
    blocks: Vec<Vec<ResBlock>>,
    post: Conv1d,
}

impl Decoder {
    fn load(voice: &PiperVoice, c: &VitsConfig) -> Result<Self> {
        let d = &c.decoder;
        let nk = d.resblock_kernel_sizes.len();
        // Each level's output is the mean of its `nk` blocks; `forward` sums them and the
        // next layer's weights carry the 1 / nk.
        #[allow(clippy::cast_precision_loss)]
        let mean = if nk > 0 { 1.0 / nk as f32 } else { 1.0 };
        let mut ups = Vec::new();
        let mut blocks = Vec::new();
        let mut ch = d.upsample_initial_channel;
        for (u, (&rate, &k)) in d
            .upsample_rates
            .iter()
            .zip(&d.upsample_kernel_sizes)
            .enumerate()
        {
            let mut w = load_vec(voice, &format!("dec.ups.{u}.weight"))?;
            let b = load_vec(voice, &format!("dec.ups.{u}.bias"))?;
            if u > 0 {
                // The previous level's mean over its blocks (see `forward`).
                w.iter_mut().for_each(|v| *v *= mean);
            }
            ups.push(ConvTranspose1d::new(
                w,
                ch,
                ch / 2,
                k,
                b,
                rate,
                k.saturating_sub(rate) / 2,
            ));
            ch /= 2;
            let mut level = Vec::with_capacity(nk);
            for (r, dil) in d.resblock_dilation_sizes.iter().enumerate() {
                let bname = format!("dec.resblocks.{}", u * nk + r);
                level.push(match d.resblock {
                    ResBlockKind::One => ResBlock::One(
                        dil.iter()
                            .enumerate()
                            .map(|(m, &dl)| {
                                Ok((
                                    fast_conv(voice, &format!("{bname}.convs1.{m}"), dl, true)?,
                                    fast_conv(voice, &format!("{bname}.convs2.{m}"), 1, true)?,
                                ))
                            })
                            .collect::<Result<Vec<_>>>()?,
                    ),
                    ResBlockKind::Two => ResBlock::Two(
                        dil.iter()
                            .enumerate()
                            .map(|(m, &dl)| {
                                fast_conv(voice, &format!("{bname}.convs.{m}"), dl, true)
                            })
                            .collect::<Result<Vec<_>>>()?,
                    ),
                });
            }
            blocks.push(level);
        }
        let ups_n = ups.len();
        Ok(Self {
            pre: fast_conv(voice, "dec.conv_pre", 1, true)?,
            cond: if c.gin_channels > 0 {
                Some(fast_conv(voice, "dec.cond", 1, true)?)
            } else {
                None
            },
            ups,
            blocks,
            post: scaled_conv(
                voice,
                "dec.conv_post",
                1,
                false,
                if ups_n > 0 { mean } else { 1.0 },
            )?,
        })
    }

    /// Samples per latent frame.
    fn hop(&self) -> usize {
        self.ups.iter().map(|u| u.geometry().1).product()
    }

    /// The decoder's receptive field in latent frames: how many frames left and right of a
    /// frame its samples depend on. Worked out backwards from the output through every layer
    /// of the loaded graph: a "same" convolution adds its padding on each side, parallel
    /// residual blocks the largest of their chains, and a transposed convolution (kernel
    /// `k`, stride `s`, padding `p`, output block of an input frame starting at a multiple of
    /// `s`) maps `l` outputs of context on the left to `ceil((l + k - 1 - p) / s)` inputs and
    /// `r` on the right to `ceil((r + p) / s)`.
    ///
    /// `None` when an upsampling layer does not turn `n` inputs into exactly `n * s` outputs
    /// (`k - s != 2p`): then frames do not map to whole blocks of samples and the decoder is
    /// only run whole.
    fn context(&self) -> Option<(usize, usize)> {
        let (mut l, mut r) = self.post.reach();
        for (up, level) in self.ups.iter().zip(&self.blocks).rev() {
            let (k, s, p) = up.geometry();
            if s == 0 || k < s || k - s != 2 * p {
                return None;
            }
            let (bl, br) = level
                .iter()
                .map(ResBlock::reach)
                .fold((0, 0), |(a, b), (x, y)| (a.max(x), b.max(y)));
            l = (l + bl + k - 1).saturating_sub(p).div_ceil(s);
            r = (r + br + p).div_ceil(s);
        }
        let (pl, pr) = self.pre.reach();
        Some((l + pl, r + pr))
    }

    /// The waveform of latent `z` `[C, F]`.
    fn forward(&self, z: &[f32], f: usize, g: Option<&[f32]>) -> Vec<f32> {
        let mut x = self.pre.forward(z, f, Act::Identity, None);
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            let gc = cond.forward(g, 1, Act::Identity, None);
            for (o, row) in x.chunks_exact_mut(f).enumerate() {
                for v in row {
                    *v += gc[o];
                }
            }
        }
        let mut l = f;
        // Intermediate buffers of the blocks, reused by every block and level.
        let mut scratch = Scratch::default();
        for (up, level) in self.ups.iter().zip(&self.blocks) {
            let y = up.forward(&x, l, Act::Leaky(0.1));
            l = up.out_len(l);
            // The blocks' sum; the mean's 1 / n_kernels is folded into the next layer's
            // weights at load (the leaky ReLU before it commutes with a positive scale).
            if level.is_empty() {
                x = y;
                continue;
            }
            let mut sum = Vec::new();
            for (b, block) in level.iter().enumerate() {
                let out = if b == 0 {
                    Out::Write(&mut sum)
                } else {
                    Out::Acc(&mut sum)
                };
                block.run(&y, l, out, &mut scratch);
            }
            x = sum;
        }
        let mut out = self.post.forward(&x, l, Act::Leaky(0.01), None);
        out.iter_mut().for_each(|v| *v = tanh_fast(*v));
        out
    }
}

impl ResBlock {
    /// Inputs left and right of a position that its output depends on (the chain's
    /// paddings added up).
    fn reach(&self) -> (usize, usize) {
        let add = |(a, b): (usize, usize), (x, y): (usize, usize)| (a + x, b + y);
        match self {
            ResBlock::One(convs) => convs.iter().fold((0, 0), |acc, (c1, c2)| {
                add(add(acc, c1.reach()), c2.reach())
            }),
            ResBlock::Two(convs) => convs.iter().fold((0, 0), |acc, c| add(acc, c.reach())),
        }
    }

    /// The block on `x` `[C, l]`: its output written to (or added onto) `out`; the
    /// intermediate layers' outputs go to `s`'s buffers.
    fn run(&self, x: &[f32], l: usize, out: Out<'_>, s: &mut Scratch) {
        let act = Act::Leaky(0.1);
        // Which buffer holds the current input: 0 = x, 1 = s.a, 2 = s.b.
        let mut cur = 0u8;
        // The layer on the current input with the current input as residual; the last one
        // into `out`, the others into the other scratch buffer.
        let mut step = |conv: &Conv1d,
                        pre: Option<&Conv1d>,
                        last: bool,
                        cur: &mut u8,
                        out: &mut Option<Out<'_>>| {
            let Scratch { a, b, t } = &mut *s;
            let (input, dst): (&[f32], &mut Vec<f32>) = match *cur {
                0 => (x, a),
                1 => (a.as_slice(), b),
                _ => (b.as_slice(), a),
            };
            // ResBlock1's first convolution of a pair, into t.
            let src: &[f32] = match pre {
                Some(c1) => {
                    c1.forward_to(input, l, act, None, t);
                    t
                }
                None => input,
            };
            if last {
                match out.take() {
                    Some(Out::Write(o)) => conv.forward_to(src, l, act, Some(input), o),
                    Some(Out::Acc(o)) => conv.forward_acc(src, l, act, Some(input), o),
                    None => unreachable!("one last layer"),
                }
            } else {
                conv.forward_to(src, l, act, Some(input), dst);
                *cur = if *cur == 1 { 2 } else { 1 };
            }
        };
        let mut out = Some(out);
        let n = match self {
            ResBlock::One(convs) => convs.len(),
            ResBlock::Two(convs) => convs.len(),
        };
        for k in 0..n {
            let last = k + 1 == n;
            match self {
                ResBlock::One(convs) => {
                    step(&convs[k].1, Some(&convs[k].0), last, &mut cur, &mut out)
                }
                ResBlock::Two(convs) => step(&convs[k], None, last, &mut cur, &mut out),
            }
        }
        // No layers: the block is the identity.
        match out {
            Some(Out::Write(o)) => *o = x.to_vec(),
            Some(Out::Acc(o)) => o.iter_mut().zip(x).for_each(|(a, &v)| *a += v),
            None => {}
        }
    }
}

/// Where a residual block's output goes.
enum Out<'a> {
    /// Into this buffer (cleared first).
    Write(&'a mut Vec<f32>),
    /// Added onto this one.
    Acc(&'a mut [f32]),
}

/// A decoder call's intermediate buffers, reused across its blocks and levels.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    t: Vec<f32>,
}

// ----- the model ---------------------------------------------------------------------------

/// How [`Vits::infer_stream`] cuts the decoder's work along time.
///
/// Chunks start at `first_frames` latent frames and double up to `max_frames`; a remainder
/// shorter than half the chunk before it is joined to that chunk. Each chunk is decoded with
/// the decoder's receptive field of extra frames on both sides (about 14 frames each side for
/// Piper's medium voices), so smaller chunks cost more in total but give the first samples
/// sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeChunks {
    /// Latent frames of the first chunk (`hop_length` samples each); 0: the whole sentence
    /// in one piece.
    pub first_frames: usize,
    /// The largest chunk, in frames (at least `first_frames`).
    pub max_frames: usize,
}

impl DecodeChunks {
    /// The whole sentence in one piece.
    pub const WHOLE: Self = Self {
        first_frames: 0,
        max_frames: 0,
    };

    /// The chunks of `f` frames as `(start, end)` frame ranges, in order, covering `0..f`.
    pub fn plan(&self, f: usize) -> Vec<(usize, usize)> {
        if self.first_frames == 0 || f <= self.first_frames {
            return vec![(0, f)];
        }
        let max = self.max_frames.max(self.first_frames);
        let mut out = Vec::new();
        let (mut start, mut size) = (0, self.first_frames);
        while start < f {
            let mut end = (start + size).min(f);
            if f - end < size / 2 {
                end = f;
            }
            out.push((start, end));
            start = end;
            size = (size * 2).min(max);
        }
        out
    }
}

/// Per-stage wall times of one [`Vits::infer`] call, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Text encoder.
    pub encoder_ms: f64,
    /// Duration predictor and length regulation.
    pub durations_ms: f64,
    /// Reverse flow.
    pub flow_ms: f64,
    /// HiFi-GAN decoder.
    pub decoder_ms: f64,
}

/// The VITS generator of a Piper voice, its weights loaded (re-laid out for the convolutions).
#[derive(Debug, Clone)]
pub struct Vits {
    config: VitsConfig,
    enc: TextEncoder,
    dp: DurationPredictor,
    flows: Vec<Coupling>,
    dec: Decoder,
    /// `[n_speakers][gin_channels]`.
    emb_g: Option<Vec<f32>>,
}

impl Vits {
    /// Loads every weight of `voice` (copied into f32 tensors).
    pub fn load(voice: &PiperVoice) -> Result<Self> {
        let c = voice.vits().clone();
        let dp = match c.duration_predictor {
            DurationPredictorConfig::Stochastic { .. } => {
                DurationPredictor::Stochastic(Box::new(Sdp::load(voice, &c)?))
            }
            DurationPredictorConfig::Deterministic { .. } => {
                DurationPredictor::Deterministic(Box::new(Dp::load(voice, &c)?))
            }
        };
        let flows = (0..c.flow.n_flows)
            .map(|i| Coupling::load(voice, &c, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            enc: TextEncoder::load(voice, &c)?,
            dp,
            flows,
            dec: Decoder::load(voice, &c)?,
            emb_g: if c.gin_channels > 0 {
                let e = load_vec(voice, "emb_g.weight")?;
                if e.len() != c.n_speakers * c.gin_channels {
                    return Err(TtsError::new(
                        TtsFile::Request,
                        TtsErrorKind::Inference {
                            stage: "loading weights",
                            reason: format!(
                                "emb_g.weight has {} values, expected {} speakers x {} channels",
                                e.len(),
                                c.n_speakers,
                                c.gin_channels
                            ),
                        },
                    )
                    .into());
                }
                Some(e)
            } else {
                None
            },
            config: c,
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &VitsConfig {
        &self.config
    }

    /// Checks ids and speaker; see [`Vits::infer`].
    fn check(&self, ids: &[i64], speaker: Option<u32>) -> Result<Vec<u32>> {
        let bad = |name: &'static str, reason: String| -> crate::Error {
            TtsError::new(TtsFile::Request, TtsErrorKind::BadInput { name, reason }).into()
        };
        if ids.is_empty() {
            return Err(bad("phoneme_ids", "no ids".to_owned()));
        }
        let n = self.config.n_vocab;
        let ids = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                u32::try_from(id)
                    .ok()
                    .filter(|&v| (v as usize) < n)
                    .ok_or_else(|| {
                        bad(
                            "phoneme_ids",
                            format!("id {id} at position {i} is outside the voice's {n} symbols"),
                        )
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        if let Some(s) = speaker {
            let ns = if self.emb_g.is_some() {
                self.config.n_speakers
            } else {
                1
            };
            if s as usize >= ns {
                return Err(TtsError::new(
                    TtsFile::Request,
                    TtsErrorKind::UnknownSpeaker {
                        id: s,
                        n_speakers: ns,
                    },
                )
                .into());
            }
        }
        Ok(ids)
    }

    /// Synthesizes one sentence's phoneme ids: the waveform in `[-1, 1]` at the voice's sample
    /// rate, `hop_length` samples per frame. `noise` supplies the random draws (none are made
    /// when both noise scales are 0).
    pub fn infer(
        &self,
        ids: &[i64],
        speaker: Option<u32>,
        scales: Scales,
        noise: &mut Noise,
        times: Option<&mut StageTimes>,
    ) -> Result<Vec<f32>> {
        let mut audio = Vec::new();
        let mut st = StageTimes::default();
        let _done = self.infer_stream(
            ids,
            speaker,
            scales,
            noise,
            DecodeChunks::WHOLE,
            &mut st,
            &mut |samples, _| {
                audio.extend_from_slice(samples);
                ControlFlow::Continue(())
            },
        )?;
        if let Some(t) = times {
            *t = st;
        }
        Ok(audio)
    }

    /// The decoder's receptive field in latent frames, left and right (`None`: the decoder
    /// runs whole, see [`DecodeChunks`]).
    pub fn decoder_context(&self) -> Option<(usize, usize)> {
        self.dec.context()
    }

    /// Like [`Vits::infer`], but hands the waveform to `sink` piece by piece as the decoder
    /// produces it ([`Vits::latent`], then [`DecodeStream`]). `sink` gets each piece and
    /// whether it is the last; it may stop the stream with `ControlFlow::Break` (returned).
    /// `times` gets the stage times, the decoder's summed over chunks (time in `sink`
    /// excluded).
    #[allow(clippy::too_many_arguments)]
    pub fn infer_stream(
        &self,
        ids: &[i64],
        speaker: Option<u32>,
        scales: Scales,
        noise: &mut Noise,
        chunks: DecodeChunks,
        times: &mut StageTimes,
        sink: &mut dyn FnMut(&[f32], bool) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        let latent = self.latent(ids, speaker, scales, noise, times)?;
        let mut stream = self.decode_stream(latent, chunks);
        while let Some((audio, last)) = stream.next_piece(times) {
            if sink(&audio, last).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The decoder over `latent`, in the chunks of `chunks`.
    pub fn decode_stream(&self, latent: Latent, chunks: DecodeChunks) -> DecodeStream<'_> {
        let plan = match self.dec.context() {
            Some(_) => chunks.plan(latent.frames),
            None => vec![(0, latent.frames)],
        };
        DecodeStream {
            vits: self,
            latent,
            plan,
            next: 0,
        }
    }

    /// Text encoder, durations and flow for one sentence's phoneme ids: the latent the
    /// decoder turns into audio. `times` gets the first three stages' times.
    pub fn latent(
        &self,
        ids: &[i64],
        speaker: Option<u32>,
        scales: Scales,
        noise: &mut Noise,
        times: &mut StageTimes,
    ) -> Result<Latent> {
        let ids = self.check(ids, speaker)?;
        for (name, v) in [
            ("noise_scale", scales.noise_scale),
            ("length_scale", scales.length_scale),
            ("noise_w", scales.noise_w),
        ] {
            let ok =
                v.is_finite() && (0.0..=100.0).contains(&v) && (name != "length_scale" || v > 0.0);
            if !ok {
                return Err(TtsError::new(
                    TtsFile::Request,
                    TtsErrorKind::BadInput {
                        name,
                        reason: format!(
                            "{v} is outside the allowed range (finite, 0..=100, length_scale > 0)"
                        ),
                    },
                )
                .into());
            }
        }
        let st = times;
        *st = StageTimes::default();
        let clock = std::time::Instant::now();
        let lap = |since: &mut std::time::Instant| {
            let ms = since.elapsed().as_secs_f64() * 1e3;
            *since = std::time::Instant::now();
            ms
        };
        let mut since = clock;

        // The speaker's embedding row of a multi-speaker voice.
        let g_vec: Option<Vec<f32>> = self.emb_g.as_ref().map(|emb| {
            let gin = self.config.gin_channels;
            let s = speaker.unwrap_or(0) as usize;
            emb[s * gin..(s + 1) * gin].to_vec()
        });
        let g = g_vec.as_deref();
        let (x, m_p, logs_p) = self.enc.forward(&ids);
        let t_len = ids.len();
        st.encoder_ms = lap(&mut since);

        let logw = match &self.dp {
            DurationPredictor::Stochastic(sdp) => sdp.forward(&x, t_len, g, noise, scales.noise_w),
            DurationPredictor::Deterministic(dp) => dp.forward(&x, t_len, g),
        };
        // Frames of each phoneme, and the frame -> phoneme index.
        let mut frame_src: Vec<u32> = Vec::new();
        for (i, &lw) in logw.iter().enumerate() {
            let d = (lw.exp() * scales.length_scale).ceil();
            // A finite, sane duration: at most 1000 frames (~11 s) per phoneme.
            let d = if d.is_finite() {
                d.clamp(0.0, 1000.0)
            } else {
                0.0
            };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let d = d as usize;
            frame_src.extend(std::iter::repeat_n(u32::try_from(i).unwrap_or(u32::MAX), d));
        }
        if frame_src.is_empty() {
            frame_src.push(0); // y_lengths is clamped to at least 1; that frame is masked to 0
        }
        let f = frame_src.len();
        let c = self.config.inter_channels;
        let mut z = vec![0f32; c * f];
        let eps = if scales.noise_scale > 0.0 {
            noise.fill(c * f, scales.noise_scale)
        } else {
            Vec::new()
        };
        let silent = logw
            .iter()
            .all(|&lw| (lw.exp() * scales.length_scale).ceil() <= 0.0);
        if !silent {
            for ch in 0..c {
                let row = &mut z[ch * f..(ch + 1) * f];
                for (j, (zv, &src)) in row.iter_mut().zip(&frame_src).enumerate() {
                    let s = ch * t_len + src as usize;
                    *zv = m_p[s];
                    if !eps.is_empty() {
                        *zv += eps[ch * f + j] * logs_p[s].exp();
                    }
                }
            }
        }
        st.durations_ms = lap(&mut since);

        for coupling in self.flows.iter().rev() {
            // Flip: reverse the channel order.
            for ch in 0..c / 2 {
                let (a, b) = z.split_at_mut((c - 1 - ch) * f);
                a[ch * f..(ch + 1) * f].swap_with_slice(&mut b[..f]);
            }
            coupling.reverse(&mut z, f, g);
        }
        st.flow_ms = lap(&mut since);

        Ok(Latent {
            z,
            frames: f,
            g: g_vec,
        })
    }
}

/// One sentence's latent (`[inter_channels, frames]`), ready for the decoder.
#[derive(Debug, Clone)]
pub struct Latent {
    z: Vec<f32>,
    frames: usize,
    /// The speaker embedding of a multi-speaker voice.
    g: Option<Vec<f32>>,
}

impl Latent {
    /// Latent frames (`hop_length` samples of audio each).
    pub fn frames(&self) -> usize {
        self.frames
    }
}

/// The decoder over one sentence's latent, chunk by chunk: the text encoder, durations and
/// flow ran for the whole sentence ([`Vits::latent`]); each [`DecodeStream::next_piece`] runs
/// the decoder on the next chunk of frames with the decoder's receptive field
/// ([`Vits::decoder_context`]) of extra frames on both sides, whose samples are computed and
/// dropped. The pieces put together equal [`Vits::infer`]'s waveform up to float rounding.
#[derive(Debug)]
pub struct DecodeStream<'a> {
    vits: &'a Vits,
    latent: Latent,
    plan: Vec<(usize, usize)>,
    next: usize,
}

impl DecodeStream<'_> {
    /// The chunks, as latent frame ranges.
    pub fn plan(&self) -> &[(usize, usize)] {
        &self.plan
    }

    /// The next piece of audio and whether it is the last one; `None` after the last. Adds
    /// the decoder's time to `times.decoder_ms`. Runs on the current rayon pool.
    pub fn next_piece(&mut self, times: &mut StageTimes) -> Option<(Vec<f32>, bool)> {
        let &(c0, c1) = self.plan.get(self.next)?;
        self.next += 1;
        let t = std::time::Instant::now();
        let dec = &self.vits.dec;
        let Latent { z, frames: f, g } = &self.latent;
        let (f, g) = (*f, g.as_deref());
        let audio = if (c0, c1) == (0, f) {
            dec.forward(z, f, g)
        } else {
            let (cl, cr) = dec.context().unwrap_or((0, 0));
            let hop = dec.hop();
            // The window: the chunk and its context, within the sentence.
            let (a, b) = (c0.saturating_sub(cl), (c1 + cr).min(f));
            let w = b - a;
            let mut zw = Vec::with_capacity(z.len() / f.max(1) * w);
            for row in z.chunks_exact(f) {
                zw.extend_from_slice(&row[a..b]);
            }
            let out = dec.forward(&zw, w, g);
            debug_assert_eq!(out.len(), w * hop);
            out[(c0 - a) * hop..(c1 - a) * hop].to_vec()
        };
        times.decoder_ms += t.elapsed().as_secs_f64() * 1e3;
        Some((audio, self.next == self.plan.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_tanh_and_sigmoid_match_std() {
        let mut worst = (0f64, 0f64, 0f64);
        for i in -40_000..=40_000 {
            let x = i as f32 * 0.002_5; // -100 ..= 100
            let e = f64::from(x.clamp(-87.0, 88.0)).exp();
            let rel = (f64::from(exp_fast(x)) - e).abs() / e;
            let th = (f64::from(tanh_fast(x)) - f64::from(x).tanh()).abs();
            let sg = (f64::from(sigmoid_fast(x)) - 1.0 / (1.0 + (-f64::from(x)).exp())).abs();
            worst = (worst.0.max(rel), worst.1.max(th), worst.2.max(sg));
        }
        assert!(worst.0 < 4e-7, "exp relative error {}", worst.0);
        assert!(worst.1 < 3e-7, "tanh absolute error {}", worst.1);
        assert!(worst.2 < 3e-7, "sigmoid absolute error {}", worst.2);
    }
}
