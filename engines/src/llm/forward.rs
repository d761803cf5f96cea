//! The forward pass over plain `f32` slices, with scratch buffers reused across calls.
//!
//! Numerics follow ggml's CPU backend where it matters for greedy decoding: activations are
//! quantized to the weights' activation format before every product (the `quant` kernels),
//! RMS norms square in f32 and sum in f64 (as ggml), the KV cache is f16 and queries and softmax weights are
//! rounded to f16 before the products with it, the rope angles are built by repeated
//! multiplication in f32, and Gemma's GELU goes through f16 as ggml's lookup table does.

use std::sync::Mutex;

use half::f16;

use super::ModelInner;
use super::config::{Arch, Config};
use super::pool::Pool;
use super::weights::Mat;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::quant::{self, Kernel, QMatrix};

/// Below this many weight bytes × tokens a product runs on the calling thread alone.
const MIN_PARALLEL_BYTES: usize = 48 * 1024;

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Keys and values of every layer, rounded to f16 and stored as f32, laid out
/// `[layer][kv_head][position][dim]`.
pub(crate) struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: usize,
    n_kv: usize,
    hd: usize,
    hdv: usize,
}

impl KvCache {
    pub fn new(c: &Config) -> Self {
        let n = c.n_layer * c.n_head_kv * c.context_len;
        KvCache {
            k: vec![0.0; n * c.head_dim],
            v: vec![0.0; n * c.head_dim_v],
            ctx: c.context_len,
            n_kv: c.n_head_kv,
            hd: c.head_dim,
            hdv: c.head_dim_v,
        }
    }

    fn k_base(&self, layer: usize, head: usize) -> usize {
        (layer * self.n_kv + head) * self.ctx * self.hd
    }

    fn v_base(&self, layer: usize, head: usize) -> usize {
        (layer * self.n_kv + head) * self.ctx * self.hdv
    }
}

/// Quantized copies of one activation matrix, one per activation format in use.
#[derive(Default)]
struct Acts {
    bufs: [(Vec<u8>, bool); 3],
}

impl Acts {
    fn slot(ty: GgmlType) -> usize {
        match ty {
            GgmlType::Q8_0 => 0,
            GgmlType::Q8_1 => 1,
            _ => 2,
        }
    }

    fn invalidate(&mut self) {
        for b in &mut self.bufs {
            b.1 = false;
        }
    }

    /// `x` (rows of `cols`) in the activation format `ty`, quantized on first use; a batch's
    /// rows are split between the pool's threads (each row is quantized on its own, so the
    /// bytes do not depend on the split).
    fn get(&mut self, ty: GgmlType, x: &[f32], cols: usize, pool: &mut Pool) -> Result<&[u8]> {
        let b = &mut self.bufs[Self::slot(ty)];
        if !b.1 {
            let n = x.len() / cols.max(1);
            let threads = pool.threads();
            if n < 8 || threads < 2 || n * cols != x.len() {
                quant::quantize_activation_into(ty, x, &mut b.0)?;
            } else {
                let row = quant::row_bytes(ty, cols)?;
                b.0.clear();
                b.0.resize(n * row, 0);
                let per = n.div_ceil(threads);
                let tasks = n.div_ceil(per);
                let optr = b.0.as_mut_ptr() as usize;
                let err: Mutex<Option<Error>> = Mutex::new(None);
                pool.run(tasks, &|t| {
                    let (r0, r1) = (t * per, ((t + 1) * per).min(n));
                    // SAFETY: task `t` alone writes rows r0..r1 of the buffer, which outlives
                    // `run` and holds `n` rows of `row` bytes.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            (optr as *mut u8).add(r0 * row),
                            (r1 - r0) * row,
                        )
                    };
                    if let Err(e) = quant::quantize_activation_to(ty, &x[r0 * cols..r1 * cols], out)
                    {
                        *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                });
                if let Some(e) = err.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    return Err(e);
                }
            }
            b.1 = true;
        }
        Ok(&b.0)
    }
}

/// Scratch buffers; they grow to the largest batch and are then reused.
#[derive(Default)]
pub(crate) struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Per query head: softmax scores, the f16-rounded query, lane accumulators.
    heads: Vec<HeadScratch>,
    acts: Acts,
    /// Rope tables `[pos][pair]` for global and local layers, built on first use.
    rope_global: Vec<(f32, f32)>,
    rope_local: Vec<(f32, f32)>,
    pub logits: Vec<f32>,
    /// A debugging probe that sees named intermediates (ggml's tensor names) of every layer;
    /// see [`super::Session::set_probe`].
    pub probe: Option<Probe>,
}

/// Callback for intermediates: `(name, layer, values)`, values `[token][dim]`.
pub type Probe = Box<dyn FnMut(&str, usize, &[f32]) + Send>;

/// Hands an intermediate to the probe, if one is set (a branch on `None` otherwise).
macro_rules! probe {
    ($s:expr, $name:expr, $layer:expr, $data:expr) => {
        if let Some(p) = $s.as_mut() {
            p($name, $layer, $data);
        }
    };
}

type HeadScratch = (Vec<f32>, Vec<f32>, Vec<f32>);

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Rope `(cos, sin)` for `ctx` positions and `dim / 2` pairs, as ggml's rope cache builds
/// them: `θ = p · base^(-2i/dim) / factor_i · freq_scale`, the powers by repeated f32 products.
fn rope_table(
    ctx: usize,
    dim: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
) -> Vec<(f32, f32)> {
    let half = dim / 2;
    let theta_scale = base.powf(-2.0 / dim as f32);
    let mut t = Vec::with_capacity(ctx * half);
    for p in 0..ctx {
        let mut theta = p as f32;
        for i in 0..half {
            let ff = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
            let th = freq_scale * (theta / ff);
            t.push((th.cos(), th.sin()));
            theta *= theta_scale;
        }
    }
    t
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * w;
    }
}

fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(w) {
        *v = (*v * scale) * w;
    }
}

/// Rotates pairs; written as the fused multiply-adds a C compiler makes of ggml's
/// `x0·cos − x1·sin`, `x0·sin + x1·cos` (this matters for matching llama.cpp bit for bit).
fn rope(x: &mut [f32], table: &[(f32, f32)], rope_dim: usize, neox: bool) {
    let half = rope_dim / 2;
    if neox {
        for (i, &(c, s)) in table.iter().enumerate().take(half) {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a.mul_add(c, -(b * s));
            x[i + half] = a.mul_add(s, b * c);
        }
    } else {
        for (i, &(c, s)) in table.iter().enumerate().take(half) {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a.mul_add(c, -(b * s));
            x[2 * i + 1] = a.mul_add(s, b * c);
        }
    }
}

/// Horizontal sum of up to eight lanes as x86 does it (`hi + lo`, then `movehl`, then
/// `movehdup`): `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`; missing lanes are 0.
#[inline]
fn hsum8(x: &[f32]) -> f32 {
    let g = |i: usize| x.get(i).copied().unwrap_or(0.0);
    let s: [f32; 4] = std::array::from_fn(|i| g(i + 4) + g(i));
    (s[0] + s[2]) + (s[1] + s[3])
}

/// ggml's reduction of four 8-lane accumulators (`lane = 8·k + l`).
#[inline]
fn reduce32(l: &[f32; 32]) -> f32 {
    let x: [f32; 8] = std::array::from_fn(|i| (l[i] + l[16 + i]) + (l[8 + i] + l[24 + i]));
    let t: [f32; 4] = std::array::from_fn(|i| x[i] + x[i + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// Dot product in the order of ggml's `ggml_vec_dot_f16` (x86: four 8-lane FMA
/// accumulators over blocks of 32, then [`reduce32`]; the tail summed in f64).
#[inline]
fn dot_f16_ggml(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 32];
    let np = a.len() & !31;
    for (ca, cb) in a[..np].chunks_exact(32).zip(b[..np].chunks_exact(32)) {
        for k in 0..32 {
            l[k] = ca[k].mul_add(cb[k], l[k]);
        }
    }
    let mut s = f64::from(reduce32(&l));
    for (x, y) in a[np..].iter().zip(&b[np..]) {
        s += f64::from(x * y);
    }
    s as f32
}

/// Dot product in the order of llamafile's tiled GEMM: one 8-lane FMA accumulator, then
/// [`hsum8`].
#[inline]
fn dot_gemm8(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            l[k] = ca[k].mul_add(cb[k], l[k]);
        }
    }
    let mut s = hsum8(&l);
    let r = a.len() & !7;
    for (x, y) in a[r..].iter().zip(&b[r..]) {
        s += x * y;
    }
    s
}

/// The batch (8-lane) attention loops with AVX2 intrinsics: the same operations per output, in
/// the same order, as [`dot_gemm8`] and the lane accumulation in [`forward`], but for a block
/// of `Q` queries at once, so that each key and value row is read from cache once per block
/// instead of once per query (a head's keys and values outgrow L2 at a few hundred
/// positions), with independent FMA chains and the accumulators in registers.
mod attn_x86 {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// Queries per block in the batch loops.
    pub(super) const QB: usize = 4;

    /// Whether the functions below can run (AVX2 and FMA, detected at run time).
    pub(super) fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `out[q·stride + j] = dot_gemm8(qs[q·hd..(q+1)·hd], keys[j·hd..(j+1)·hd])` for the `Q`
    /// queries in `qs` and every key `j` in `lo..hi`, `hd = qs.len() / Q`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA (the lengths are checked).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores<const Q: usize>(
        qs: &[f32],
        keys: &[f32],
        lo: usize,
        hi: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let hd = qs.len() / Q;
        assert!(hd % 8 == 0 && qs.len() == Q * hd && keys.len() >= hi * hd);
        assert!(lo <= hi && hi <= stride && out.len() >= (Q - 1) * stride + hi);
        // SAFETY: AVX2 and FMA by the caller; the bounds were checked above.
        unsafe {
            if Q == 1 {
                scores_tile::<Q, 4>(qs, keys, lo, hi, out, stride);
            } else {
                scores_tile::<Q, 2>(qs, keys, lo, hi, out, stride);
            }
        }
    }

    /// [`scores`] with `K` keys per step (`Q·K` accumulators), the last keys one at a time.
    ///
    /// # Safety
    ///
    /// As [`scores`], with the bounds checked there.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_tile<const Q: usize, const K: usize>(
        qs: &[f32],
        keys: &[f32],
        lo: usize,
        hi: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let hd = qs.len() / Q;
        let (qp, kp, op) = (qs.as_ptr(), keys.as_ptr(), out.as_mut_ptr());
        // SAFETY: query `q < Q` and key `j < hi` rows and output `q·stride + j` are in bounds
        // (checked by `scores`).
        unsafe {
            let mut j = lo;
            while j + K <= hi {
                let a = score_tile::<Q, K>(qp, kp.add(j * hd), hd);
                for (q, a) in a.iter().enumerate() {
                    for (t, &a) in a.iter().enumerate() {
                        *op.add(q * stride + j + t) = hsum(a);
                    }
                }
                j += K;
            }
            while j < hi {
                let a = score_tile::<Q, 1>(qp, kp.add(j * hd), hd);
                for (q, a) in a.iter().enumerate() {
                    *op.add(q * stride + j) = hsum(a[0]);
                }
                j += 1;
            }
        }
    }

    /// The 8-lane accumulators of `Q` queries (rows of `hd` at `qp`) against `K` keys (rows
    /// of `hd` at `kp`).
    ///
    /// # Safety
    ///
    /// AVX2 and FMA; `qp` valid for `Q·hd` floats, `kp` for `K·hd`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_tile<const Q: usize, const K: usize>(
        qp: *const f32,
        kp: *const f32,
        hd: usize,
    ) -> [[__m256; K]; Q] {
        let mut a = [[_mm256_setzero_ps(); K]; Q];
        // SAFETY: as the caller guarantees.
        unsafe {
            for c in (0..hd).step_by(8) {
                let kv: [__m256; K] = std::array::from_fn(|t| _mm256_loadu_ps(kp.add(t * hd + c)));
                for (q, a) in a.iter_mut().enumerate() {
                    let qv = _mm256_loadu_ps(qp.add(q * hd + c));
                    for t in 0..K {
                        a[t] = _mm256_fmadd_ps(qv, kv[t], a[t]);
                    }
                }
            }
        }
        a
    }

    /// `outs[q] = Σ_{lo ≤ j < hi} w[q·stride + j]·v_j` for `Q` queries, where `v_j` is row `j`
    /// of `v` (rows of `hdv = outs[q].len()`): one accumulator per lane `j mod 8`, each summed
    /// in `j` order with fused multiply-adds, and the lanes added as [`super::hsum8`] does.
    ///
    /// The lanes are summed one after the other (positions `l, l+8, …`), so a block of
    /// queries needs one accumulator per query and column register, not eight. Zero weights
    /// (positions outside a query's causal window) add exact zeros and leave its sums as they
    /// would be without those positions, as long as the values are finite.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA (the lengths are checked).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_values<const Q: usize>(
        w: &[f32],
        stride: usize,
        lo: usize,
        hi: usize,
        v: &[f32],
        outs: [&mut [f32]; Q],
    ) {
        let hdv = outs[0].len();
        assert!(hdv % 8 == 0 && outs.iter().all(|o| o.len() == hdv));
        assert!(lo <= hi && hi <= stride && w.len() >= (Q - 1) * stride + hi);
        assert!(v.len() >= hi * hdv);
        let op = outs.map(|o| o.as_mut_ptr());
        let mut c = 0;
        // SAFETY: AVX2 and FMA by the caller; bounds as checked above.
        unsafe {
            while c + 16 <= hdv {
                values_chunk::<Q, 2>(w, stride, lo, hi, v, hdv, c, op);
                c += 16;
            }
            if c < hdv {
                values_chunk::<Q, 1>(w, stride, lo, hi, v, hdv, c, op);
            }
        }
    }

    /// Columns `c..c + 8·H` of [`weighted_values`].
    ///
    /// # Safety
    ///
    /// As [`weighted_values`], with `c + 8·H ≤ hdv` and every `op[q]` valid for `hdv` floats.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn values_chunk<const Q: usize, const H: usize>(
        w: &[f32],
        stride: usize,
        lo: usize,
        hi: usize,
        v: &[f32],
        hdv: usize,
        c: usize,
        op: [*mut f32; Q],
    ) {
        let (wp, vp) = (w.as_ptr(), v.as_ptr());
        // SAFETY: weight `q·stride + j` and value row `j < hi` are in bounds (checked by
        // `weighted_values`), as are columns `c..c + 8·H` of each output.
        unsafe {
            let mut lanes = [[[_mm256_setzero_ps(); H]; Q]; 8];
            for (l, lane) in lanes.iter_mut().enumerate() {
                // The first position at or after `lo` that falls in lane `l`.
                let mut j = lo + (l + 8 - lo % 8) % 8;
                while j < hi {
                    let row = vp.add(j * hdv + c);
                    let x: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(row.add(8 * h)));
                    for (q, acc) in lane.iter_mut().enumerate() {
                        let wj = _mm256_broadcast_ss(&*wp.add(q * stride + j));
                        for h in 0..H {
                            acc[h] = _mm256_fmadd_ps(wj, x[h], acc[h]);
                        }
                    }
                    j += 8;
                }
            }
            for (q, &o) in op.iter().enumerate() {
                for h in 0..H {
                    let sum = reduce_lanes(std::array::from_fn(|l| lanes[l][q][h]));
                    _mm256_storeu_ps(o.add(c + 8 * h), sum);
                }
            }
        }
    }

    /// The eight lane accumulators added per column as [`super::hsum8`] adds lanes.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce_lanes(acc: [__m256; 8]) -> __m256 {
        let s04 = _mm256_add_ps(acc[4], acc[0]);
        let s15 = _mm256_add_ps(acc[5], acc[1]);
        let s26 = _mm256_add_ps(acc[6], acc[2]);
        let s37 = _mm256_add_ps(acc[7], acc[3]);
        _mm256_add_ps(_mm256_add_ps(s04, s26), _mm256_add_ps(s15, s37))
    }

    /// Horizontal sum in the order of [`super::hsum8`].
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn scores<const Q: usize>(
        _: &[f32],
        _: &[f32],
        _: usize,
        _: usize,
        _: &mut [f32],
        _: usize,
    ) {
        unreachable!("available() is false")
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn weighted_values<const Q: usize>(
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
        _: &[f32],
        _: [&mut [f32]; Q],
    ) {
        unreachable!("available() is false")
    }
}

/// `exp(x)` computed as ggml's SIMD `ggml_v_expf` computes it on x86 (AVX2) and aarch64
/// (NEON): the same range reduction `x = n·ln2 + b`, the same degree-5 polynomial in fused
/// multiply-adds, the same scaling by `2^n` with its special cases for |n| > 126. llama.cpp
/// uses it in the softmax and in SiLU; libm's `expf` differs from it in the last bit for most
/// softmax inputs (about 60 % in a test), which is enough to flip near-tied greedy choices.
#[inline]
pub(crate) fn expf_ggml(x: f32) -> f32 {
    const SHIFT: f32 = f32::from_bits(0x4b40_0000); // 1.5·2^23: rounds to an integer
    const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
    const C1: f32 = f32::from_bits(0x3f7f_fff6);
    const C2: f32 = f32::from_bits(0x3eff_fedb);
    const C3: f32 = f32::from_bits(0x3e2a_af33);
    const C4: f32 = f32::from_bits(0x3d2b_9f17);
    const C5: f32 = f32::from_bits(0x3c07_2010);
    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // The integer n sits in z's low mantissa bits; shifted into the exponent field it
    // scales 1.0 by 2^n.
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1 * b);
    if n.abs() <= 126.0 || n.is_nan() {
        return j.mul_add(k, k);
    }
    // 2^n out of the normal range: split it in two factors (or saturate).
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    if n.abs() > 192.0 {
        return s1 * s1;
    }
    let s2 = f32::from_bits(e.wrapping_sub(g));
    s2.mul_add(j, s2) * s1
}

/// Softmax numerators in place as ggml_vec_soft_max_f32 computes them: `exp(s − max)` with
/// ggml's SIMD exp, summed eight at a time in f32 and the partial sums in f64. Returns
/// `1 / sum`.
fn softmax_exp(scores: &mut [f32], max: f32) -> f32 {
    let mut sum = 0f64;
    for chunk in scores.chunks_mut(8) {
        for sc in chunk.iter_mut() {
            *sc = expf_ggml(*sc - max);
        }
        sum += f64::from(hsum8(chunk));
    }
    (1.0 / sum) as f32
}

#[inline]
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = a.mul_add(v, *o);
    }
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// GELU (tanh form) of every f16 value, rounded to f16: ggml's `ggml_table_gelu_f16`,
/// built on first use (256 KiB). `1 + a·x²` is the fused multiply-add `(a·x)·x + 1` that the
/// C compiler makes of ggml's expression (with it all 65,536 entries equal the table in
/// llama-cpp-python's library; without it one differs, and Gemma 3's layer 0 with it).
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const COEF_A: f32 = 0.044_715;
        (0..=u16::MAX)
            .map(|bits| {
                let x = f16::from_bits(bits).to_f32();
                let inner = (COEF_A * x).mul_add(x, 1.0);
                let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh());
                round_f16(g)
            })
            .collect()
    })
}

/// ggml's GEGLU `gelu(x)·u` with GELU through its f16 table (input and output rounded to
/// f16); below −10 the result is +0 whatever the sign of `u`, as in ggml.
#[inline]
fn geglu_f16(table: &[f32], x: f32, u: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x * u
    } else {
        table[usize::from(f16::from_f32(x).to_bits())] * u
    }
}

/// SiLU exactly as ggml's `ggml_v_silu` computes it: `x / (1 + ggml_v_expf(−x))`. Checked
/// against llama.cpp's own `ffn_swiglu` tensor (SmolLM2 layer 0 on its chat prompt, all
/// 52,224 values equal bit for bit; libm's `expf` differs on a quarter of them).
#[inline]
fn silu_ggml(x: f32) -> f32 {
    x / (1.0 + expf_ggml(-x))
}

/// `out = W · x` for the rows of `x`, split over the pool: by rows for one token, by tokens
/// (in multiples of the kernels' four-row tiles) for several.
fn matmul(
    file: &[u8],
    m: &Mat,
    acts: &mut Acts,
    x: &[f32],
    out: &mut [f32],
    pool: &mut Pool,
) -> Result<()> {
    let q = m.view(file)?;
    let xq = acts.get(m.act_type(), x, q.cols(), pool)?;
    let kernel = Kernel::best();
    let act_row = q.activation_row_bytes();
    let n_tok = xq.len() / act_row;
    let threads = pool.threads();
    if threads == 1 || q.bytes().len() * n_tok < MIN_PARALLEL_BYTES || out.len() != n_tok * q.rows()
    {
        return q.matmul_with(kernel, xq, out, 1);
    }
    let err: Mutex<Option<Error>> = Mutex::new(None);
    let optr = SyncPtr(out.as_mut_ptr());
    let (rows, cols, row_bytes) = (q.rows(), q.cols(), q.row_bytes());
    if n_tok == 1 {
        let chunk = rows.div_ceil(threads);
        pool.run(threads, &|t| {
            let r0 = (t * chunk).min(rows);
            let r1 = (r0 + chunk).min(rows);
            if r0 == r1 {
                return;
            }
            // SAFETY: each task writes its own row range of `out`, which outlives `run`.
            let o = unsafe { std::slice::from_raw_parts_mut(optr.at(r0), r1 - r0) };
            let res = QMatrix::new(
                q.ty(),
                r1 - r0,
                cols,
                &q.bytes()[r0 * row_bytes..r1 * row_bytes],
            )
            .and_then(|sub| sub.matmul_with(kernel, xq, o, 1));
            if let Err(e) = res {
                *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
    } else {
        let per = n_tok.div_ceil(threads).next_multiple_of(4);
        let tasks = n_tok.div_ceil(per);
        pool.run(tasks, &|t| {
            let t0 = t * per;
            let t1 = (t0 + per).min(n_tok);
            // SAFETY: each task writes its own token rows of `out`.
            let o = unsafe { std::slice::from_raw_parts_mut(optr.at(t0 * rows), (t1 - t0) * rows) };
            if let Err(e) = q.matmul_with(kernel, &xq[t0 * act_row..t1 * act_row], o, 1) {
                *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
    }
    match err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Evaluates `tokens` at positions `pos0..`, writing their keys and values into the cache
/// and the logits of the last token into `s.logits`.
pub(crate) fn forward(
    model: &ModelInner,
    kv: &mut KvCache,
    s: &mut Scratch,
    tokens: &[u32],
    pos0: usize,
) -> Result<()> {
    let c = &model.config;
    let w = &model.weights;
    let file = model.file.as_bytes();
    let mut pool_guard = model.pool.lock().unwrap_or_else(|p| p.into_inner());
    let pool = &mut *pool_guard;
    let n = tokens.len();
    let d = c.n_embd;
    let (hd, hdv) = (c.head_dim, c.head_dim_v);
    let (nh, nkv) = (c.n_head, c.n_head_kv);
    let group = nh / nkv;
    let q_dim = nh * hd;
    let kv_dim = nkv * hd;
    let v_dim = nkv * hdv;
    let o_in = nh * hdv;
    let n_pos = pos0 + n;
    let half = c.rope_dim / 2;

    if s.rope_global.is_empty() {
        s.rope_global = rope_table(
            c.context_len,
            c.rope_dim,
            c.rope_base,
            c.rope_freq_scale,
            w.rope_freqs.as_deref(),
        );
        if c.sliding_window > 0 {
            s.rope_local = rope_table(c.context_len, c.rope_dim, c.rope_base_local, 1.0, None);
        }
    }
    grow(&mut s.x, n * d);
    grow(&mut s.xn, n * d);
    grow(&mut s.q, n * q_dim);
    grow(&mut s.k, n * kv_dim);
    grow(&mut s.v, n * v_dim);
    grow(&mut s.att, n * o_in);
    grow(&mut s.proj, n * d);
    grow(&mut s.gate, n * c.n_ff);
    grow(&mut s.up, n * c.n_ff);
    s.heads.resize_with(nh, Default::default);
    for (sc, qh, acc) in &mut s.heads {
        grow(sc, attn_x86::QB * n_pos);
        grow(qh, attn_x86::QB * hd);
        grow(acc, 32 * hdv);
    }

    // Embeddings: dequantize the rows in use.
    let embd = &file[w.embd_range.clone()];
    for (i, &t) in tokens.iter().enumerate() {
        let row = &embd[t as usize * w.embd_row_bytes..(t as usize + 1) * w.embd_row_bytes];
        let x = &mut s.x[i * d..(i + 1) * d];
        quant::dequantize_row(w.embd_ty, row, x)?;
        if c.arch == Arch::Gemma3 {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
    }

    probe!(s.probe, "inp_scaled", 0, &s.x[..n * d]);
    let x = &mut s.x[..n * d];
    for (il, l) in w.layers.iter().enumerate() {
        // ---- attention ----
        let xn = &mut s.xn[..n * d];
        for (xr, or) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)) {
            rms_norm(xr, &l.attn_norm, c.eps, or);
        }
        probe!(s.probe, "attn_norm", il, xn);
        s.acts.invalidate();
        let q = &mut s.q[..n * q_dim];
        let k = &mut s.k[..n * kv_dim];
        let v = &mut s.v[..n * v_dim];
        matmul(file, &l.wq, &mut s.acts, xn, q, pool)?;
        matmul(file, &l.wk, &mut s.acts, xn, k, pool)?;
        matmul(file, &l.wv, &mut s.acts, xn, v, pool)?;
        probe!(s.probe, "Qcur", il, q);
        probe!(s.probe, "Kcur", il, k);
        probe!(s.probe, "Vcur", il, v);
        for (buf, bias, dim) in [
            (&mut *q, &l.bq, q_dim),
            (&mut *k, &l.bk, kv_dim),
            (&mut *v, &l.bv, v_dim),
        ] {
            if let Some(b) = bias {
                for row in buf.chunks_exact_mut(dim) {
                    row.iter_mut().zip(b).for_each(|(o, &b)| *o += b);
                }
            }
        }
        let local = c.is_local(il);
        let table = if local { &s.rope_local } else { &s.rope_global };
        for i in 0..n {
            let p = pos0 + i;
            let tab = &table[p * half..(p + 1) * half];
            for h in q[i * q_dim..(i + 1) * q_dim].chunks_exact_mut(hd) {
                if let Some(nw) = &l.q_norm {
                    rms_norm_inplace(h, nw, c.eps);
                }
                rope(h, tab, c.rope_dim, c.rope_neox);
            }
            for h in k[i * kv_dim..(i + 1) * kv_dim].chunks_exact_mut(hd) {
                if let Some(nw) = &l.k_norm {
                    rms_norm_inplace(h, nw, c.eps);
                }
                rope(h, tab, c.rope_dim, c.rope_neox);
            }
        }
        probe!(s.probe, "Qrope", il, q);
        probe!(s.probe, "Krope", il, k);
        // Store keys and values (f16).
        for i in 0..n {
            let p = pos0 + i;
            for hk in 0..nkv {
                let kb = kv.k_base(il, hk) + p * hd;
                let src = &k[i * kv_dim + hk * hd..i * kv_dim + (hk + 1) * hd];
                kv.k[kb..kb + hd]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, &x)| *o = round_f16(x));
                let vb = kv.v_base(il, hk) + p * hdv;
                let src = &v[i * v_dim + hk * hdv..i * v_dim + (hk + 1) * hdv];
                kv.v[vb..vb + hdv]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, &x)| *o = round_f16(x));
            }
        }
        // Gemma scales the queries before the product; the others scale the scores.
        let (q_scale, kq_scale) = if c.arch == Arch::Gemma3 {
            (c.attn_scale, 1.0)
        } else {
            (1.0, c.attn_scale)
        };
        let att = &mut s.att[..n * o_in];
        let aptr = SyncPtr(att.as_mut_ptr());
        let hptr = s.heads.as_mut_ptr() as usize;
        let q: &[f32] = q;
        let (kc, vc) = (&kv.k, &kv.v);
        let window = c.sliding_window;
        let (k_base0, v_base0) = (kv.k_base(il, 0), kv.v_base(il, 0));
        let (k_stride, v_stride) = (kv.ctx * hd, kv.ctx * hdv);
        let decode = n == 1;
        let simd8 = attn_x86::available() && hd % 8 == 0 && hdv % 8 == 0;
        let first_of = |p: usize| {
            if local {
                (p + 1).saturating_sub(window)
            } else {
                0
            }
        };
        pool.run(nh, &|h| {
            // SAFETY: task `h` alone uses `heads[h]` and writes head `h`'s columns of `att`.
            let (scores, qh, acc) = unsafe { &mut *(hptr as *mut HeadScratch).add(h) };
            let hk = h / group;
            let kb = k_base0 + hk * k_stride;
            let vb = v_base0 + hk * v_stride;
            let kf = &kc[kb..kb + n_pos * hd];
            let vf = &vc[vb..vb + n_pos * hdv];
            // The query of token `i`, scaled and rounded to f16 as llama.cpp's graph does.
            let load_query = |i: usize, out: &mut [f32]| {
                let qs = &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
                for (o, &x) in out.iter_mut().zip(qs) {
                    *o = round_f16(x * q_scale);
                }
            };
            // The output row of token `i` for this head.
            let out_row = |i: usize| {
                // SAFETY: head `h`'s columns of token `i` are written by this task alone.
                unsafe { std::slice::from_raw_parts_mut(aptr.at(i * o_in + h * hdv), hdv) }
            };
            if !decode && simd8 {
                // A batch: the order of llama.cpp's tiled f16 GEMM, blocks of QB queries.
                let mut i0 = 0;
                while i0 < n {
                    let qn = if n - i0 >= attn_x86::QB {
                        attn_x86::QB
                    } else {
                        1
                    };
                    let (lo, hi) = (first_of(pos0 + i0), pos0 + i0 + qn);
                    for (t, row) in qh.chunks_exact_mut(hd).take(qn).enumerate() {
                        load_query(i0 + t, row);
                    }
                    // SAFETY: AVX2 and FMA were detected (`simd8`); `hd` and `hdv` are
                    // multiples of 8; the functions check every length.
                    unsafe {
                        if qn == attn_x86::QB {
                            attn_x86::scores::<{ attn_x86::QB }>(
                                &qh[..qn * hd],
                                kf,
                                lo,
                                hi,
                                scores,
                                n_pos,
                            );
                        } else {
                            attn_x86::scores::<1>(&qh[..hd], kf, lo, hi, scores, n_pos);
                        }
                    }
                    for t in 0..qn {
                        let p = pos0 + i0 + t;
                        let first = first_of(p);
                        let row = &mut scores[t * n_pos..(t + 1) * n_pos];
                        row[..first].fill(f32::NEG_INFINITY);
                        let mut max = f32::NEG_INFINITY;
                        for sc in &mut row[first..=p] {
                            *sc *= kq_scale;
                            max = max.max(*sc);
                        }
                        let inv = softmax_exp(&mut row[..=p], max);
                        for sc in &mut row[first..=p] {
                            *sc = round_f16(*sc * inv);
                        }
                        // Other queries' positions in the block weigh nothing for this one.
                        row[lo..first].fill(0.0);
                        row[p + 1..hi].fill(0.0);
                    }
                    // SAFETY: as above.
                    unsafe {
                        if qn == attn_x86::QB {
                            let outs = std::array::from_fn(|t| out_row(i0 + t));
                            attn_x86::weighted_values::<{ attn_x86::QB }>(
                                scores, n_pos, lo, hi, vf, outs,
                            );
                        } else {
                            attn_x86::weighted_values::<1>(
                                scores,
                                n_pos,
                                lo,
                                hi,
                                vf,
                                [out_row(i0)],
                            );
                        }
                    }
                    i0 += qn;
                }
                return;
            }
            // One token (decode), or no AVX2: the same orders in plain code, one query at a
            // time.
            let lanes = if decode { 32 } else { 8 };
            for i in 0..n {
                let p = pos0 + i;
                let first = first_of(p);
                load_query(i, &mut qh[..hd]);
                // Scores in the summation order of ggml's f16 dot product (one token) or of
                // its tiled f16 GEMM (a batch), which llama.cpp uses for these products.
                let scores = &mut scores[..=p];
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    if j < first {
                        *sc = f32::NEG_INFINITY;
                        continue;
                    }
                    let kj = &kf[j * hd..(j + 1) * hd];
                    let d = if decode {
                        dot_f16_ggml(&qh[..hd], kj)
                    } else {
                        dot_gemm8(&qh[..hd], kj)
                    };
                    *sc = d * kq_scale;
                    max = max.max(*sc);
                }
                let inv = softmax_exp(scores, max);
                // out = Σ_j p_j v_j, accumulated per lane (position mod 32 or 8) as ggml does.
                let acc = &mut acc[..lanes * hdv];
                acc.fill(0.0);
                for (j, &sc) in scores.iter().enumerate().skip(first) {
                    let lane = j % lanes;
                    axpy(
                        &mut acc[lane * hdv..(lane + 1) * hdv],
                        round_f16(sc * inv),
                        &vf[j * hdv..(j + 1) * hdv],
                    );
                }
                let out = out_row(i);
                for (dd, o) in out.iter_mut().enumerate() {
                    let mut l = [0f32; 32];
                    for (lane, v) in l.iter_mut().enumerate().take(lanes) {
                        *v = acc[lane * hdv + dd];
                    }
                    *o = if decode { reduce32(&l) } else { hsum8(&l[..8]) };
                }
            }
        });
        probe!(s.probe, "kqv_out", il, att);
        s.acts.invalidate();
        let proj = &mut s.proj[..n * d];
        matmul(file, &l.wo, &mut s.acts, att, proj, pool)?;
        probe!(s.probe, "attn_out", il, proj);
        if let Some(pw) = &l.post_attn_norm {
            for r in proj.chunks_exact_mut(d) {
                rms_norm_inplace(r, pw, c.eps);
            }
        }
        probe!(s.probe, "attn_post_norm", il, proj);
        x.iter_mut().zip(proj.iter()).for_each(|(a, &b)| *a += b);
        probe!(s.probe, "sa_out", il, x);

        // ---- feed-forward ----
        let xn = &mut s.xn[..n * d];
        for (xr, or) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)) {
            rms_norm(xr, &l.ffn_norm, c.eps, or);
        }
        probe!(s.probe, "ffn_norm", il, xn);
        s.acts.invalidate();
        let gate = &mut s.gate[..n * c.n_ff];
        let up = &mut s.up[..n * c.n_ff];
        matmul(file, &l.w_gate, &mut s.acts, xn, gate, pool)?;
        matmul(file, &l.w_up, &mut s.acts, xn, up, pool)?;
        probe!(s.probe, "ffn_gate", il, gate);
        probe!(s.probe, "ffn_up", il, up);
        // Element by element, so a batch's rows are split between the pool's threads.
        let gemma = c.arch == Arch::Gemma3;
        let act = |gate: &mut [f32], up: &[f32]| {
            if gemma {
                let table = gelu_table();
                gate.iter_mut()
                    .zip(up)
                    .for_each(|(g, &u)| *g = geglu_f16(table, *g, u));
            } else {
                gate.iter_mut()
                    .zip(up)
                    .for_each(|(g, &u)| *g = silu_ggml(*g) * u);
            }
        };
        if n < 8 || pool.threads() < 2 {
            act(gate, up);
        } else {
            let per = n.div_ceil(pool.threads()) * c.n_ff;
            let tasks = gate.len().div_ceil(per);
            let gptr = SyncPtr(gate.as_mut_ptr());
            let len = gate.len();
            let up: &[f32] = up;
            pool.run(tasks, &|t| {
                let (a, b) = (t * per, ((t + 1) * per).min(len));
                // SAFETY: task `t` alone writes elements a..b of `gate`, which outlives `run`.
                let g = unsafe { std::slice::from_raw_parts_mut(gptr.at(a), b - a) };
                act(g, &up[a..b]);
            });
        }
        probe!(s.probe, "ffn_act", il, gate);
        s.acts.invalidate();
        matmul(file, &l.w_down, &mut s.acts, gate, proj, pool)?;
        probe!(s.probe, "ffn_out", il, proj);
        if let Some(pw) = &l.post_ffn_norm {
            for r in proj.chunks_exact_mut(d) {
                rms_norm_inplace(r, pw, c.eps);
            }
        }
        probe!(s.probe, "ffn_post_norm", il, proj);
        x.iter_mut().zip(proj.iter()).for_each(|(a, &b)| *a += b);
        probe!(s.probe, "l_out", il, x);
    }

    // Output: the last token only.
    let last = &x[(n - 1) * d..n * d];
    let xn = &mut s.xn[..d];
    rms_norm(last, &w.output_norm, c.eps, xn);
    probe!(s.probe, "result_norm", 0, xn);
    s.acts.invalidate();
    s.logits.resize(w.output.rows, 0.0);
    matmul(file, &w.output, &mut s.acts, xn, &mut s.logits, pool)?;
    probe!(s.probe, "result_output", 0, &s.logits);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked AVX2 attention loops give, bit for bit, the plain loops' scores
    /// ([`dot_gemm8`]) and weighted sums (one accumulator per position mod 8, [`hsum8`]),
    /// for blocks of four queries and single queries, windows that start anywhere, and zero
    /// weights outside each query's own window.
    #[test]
    fn blocked_attention_matches_the_plain_order_bit_for_bit() {
        if !attn_x86::available() {
            eprintln!("no AVX2/FMA on this CPU: nothing to compare");
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // f16 values of widely spread magnitudes, so that sums round differently in
            // different orders.
            let scale = f32::powi(2.0, (state >> 20) as i32 % 16 - 8);
            round_f16(((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale)
        };
        let (hd, hdv, n_pos) = (64, 40, 53);
        let keys: Vec<f32> = (0..n_pos * hd).map(|_| rand()).collect();
        let values: Vec<f32> = (0..n_pos * hdv).map(|_| rand()).collect();
        const Q: usize = attn_x86::QB;
        let qs: Vec<f32> = (0..Q * hd).map(|_| rand()).collect();
        let mut differ = 0;
        for (lo, hi) in [(0, n_pos), (5, 37), (13, 14), (8, 48), (21, 29)] {
            // Scores.
            let mut got = vec![f32::NAN; Q * n_pos];
            // SAFETY: `available()` said AVX2 and FMA.
            unsafe { attn_x86::scores::<Q>(&qs, &keys, lo, hi, &mut got, n_pos) };
            let mut one = vec![f32::NAN; n_pos];
            // SAFETY: as above.
            unsafe { attn_x86::scores::<1>(&qs[hd..2 * hd], &keys, lo, hi, &mut one, n_pos) };
            for j in lo..hi {
                let k = &keys[j * hd..(j + 1) * hd];
                for q in 0..Q {
                    let want = dot_gemm8(&qs[q * hd..(q + 1) * hd], k);
                    assert_eq!(
                        got[q * n_pos + j].to_bits(),
                        want.to_bits(),
                        "score {q} {j}"
                    );
                }
                assert_eq!(
                    one[j].to_bits(),
                    got[n_pos + j].to_bits(),
                    "single score {j}"
                );
            }
            // Weighted values, each query with its own window inside lo..hi (zeros outside).
            let mut w = vec![f32::NAN; Q * n_pos];
            let windows: Vec<(usize, usize)> = (0..Q)
                .map(|q| {
                    (
                        lo + q.min(hi - lo - 1) / 2,
                        hi - (Q - 1 - q).min(hi - lo - 1),
                    )
                })
                .collect();
            for (q, &(a, b)) in windows.iter().enumerate() {
                for j in lo..hi {
                    w[q * n_pos + j] = if (a..b).contains(&j) {
                        rand().abs()
                    } else {
                        0.0
                    };
                }
            }
            let mut outs = vec![vec![f32::NAN; hdv]; Q];
            let [o0, o1, o2, o3] = &mut outs[..] else {
                unreachable!()
            };
            // SAFETY: as above.
            unsafe {
                attn_x86::weighted_values::<Q>(&w, n_pos, lo, hi, &values, [o0, o1, o2, o3]);
            }
            let mut single = vec![f32::NAN; hdv];
            // SAFETY: as above.
            unsafe {
                attn_x86::weighted_values::<1>(&w[n_pos..], n_pos, lo, hi, &values, [&mut single]);
            }
            for (q, &(a, b)) in windows.iter().enumerate() {
                let mut acc = vec![0f32; 8 * hdv];
                for j in a..b {
                    let lane = j % 8;
                    axpy(
                        &mut acc[lane * hdv..(lane + 1) * hdv],
                        w[q * n_pos + j],
                        &values[j * hdv..(j + 1) * hdv],
                    );
                }
                for dd in 0..hdv {
                    let l: [f32; 8] = std::array::from_fn(|lane| acc[lane * hdv + dd]);
                    let want = hsum8(&l);
                    assert_eq!(outs[q][dd].to_bits(), want.to_bits(), "value {q} {dd}");
                    // Summed in another order, the results would not all be these bits.
                    let other = l.iter().sum::<f32>();
                    differ += usize::from(other.to_bits() != want.to_bits());
                }
            }
            assert_eq!(single, outs[1]);
        }
        assert!(differ > 20, "{differ}");
    }

    /// `expf_ggml` and `silu` against ggml's own SIMD functions (values from
    /// scripts/reference/ggml_expf_reference.py): bit for bit.
    #[test]
    fn exp_and_silu_match_ggml_bit_for_bit() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/llm/ggml_expf.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let bits = |k: &str| -> Vec<f32> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|b| f32::from_bits(b.as_u64().unwrap() as u32))
                .collect()
        };
        let (x, e, s) = (bits("x"), bits("exp"), bits("silu"));
        assert!(x.len() > 800);
        let mut libm_differs = 0;
        for ((&x, &e), &s) in x.iter().zip(&e).zip(&s) {
            let got = expf_ggml(x);
            assert!(
                got.to_bits() == e.to_bits() || (got.is_nan() && e.is_nan()),
                "exp({x:e}): {got:e} vs ggml {e:e}"
            );
            let got = silu_ggml(x);
            assert!(
                got.to_bits() == s.to_bits() || (got.is_nan() && s.is_nan()),
                "silu({x:e}): {got:e} vs ggml {s:e}"
            );
            libm_differs += usize::from(x.exp().to_bits() != e.to_bits());
        }
        // The test can tell the two apart: libm's expf differs on many of these inputs.
        assert!(libm_differs > 50, "{libm_differs}");
    }
}
