//! The forward pass over plain `f32` slices, with scratch buffers reused across calls.
//!
//! Numerics follow ggml's CPU backend where it matters for greedy decoding: activations are
//! quantized to the weights' activation format before every product (the `quant` kernels),
//! RMS norms square in f32 and sum in f64 (as ggml), the KV cache is f16 and queries and softmax weights are
//! rounded to f16 before the products with it, the rope angles are built by repeated
//! multiplication in f32, and Gemma's GELU goes through f16 as ggml's lookup table does.
//!
//! This file is the layer loop and its steps (embeddings, the attention and feed-forward
//! blocks, the output), the scratch buffers and the pooled matrix products; attention itself
//! is in [`super::attention`], the cache in [`super::kv_cache`], and the ggml-compatible math
//! in [`super::ggml_math`].

use std::sync::Mutex;

use super::ModelInner;
use super::attention::{Attention, HeadScratch, QUERY_BLOCK};
use super::config::{Arch, Config};
use super::ggml_math::{
    geglu_f16, gelu_table, rms_norm, rms_norm_inplace, rope, rope_table, silu_ggml,
};
use super::kv_cache::KvCache;
use super::pool::Pool;
use super::weights::{Layer, Mat, Weights};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::par::SendPtr;
use crate::quant::{self, Kernel, QMatrix};

/// Below this many weight bytes × tokens a product runs on the calling thread alone.
const MIN_PARALLEL_BYTES: usize = 48 * 1024;

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
                let optr = SendPtr(b.0.as_mut_ptr());
                let err: Mutex<Option<Error>> = Mutex::new(None);
                pool.run(tasks, &|t| {
                    let (r0, r1) = (t * per, ((t + 1) * per).min(n));
                    // SAFETY: task `t` alone writes rows r0..r1 of the buffer, which outlives
                    // `run` and holds `n` rows of `row` bytes.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(optr.at(r0 * row), (r1 - r0) * row)
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

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Scratch {
    /// Frees the buffers sized by the largest batch so far (activations, queries, keys and
    /// values, the per-head scores); the next evaluation grows them again to its own batch.
    /// The rope tables (sized by the context, built once), the logits and the probe stay.
    pub(crate) fn release(&mut self) {
        *self = Scratch {
            rope_global: std::mem::take(&mut self.rope_global),
            rope_local: std::mem::take(&mut self.rope_local),
            logits: std::mem::take(&mut self.logits),
            probe: self.probe.take(),
            ..Default::default()
        };
    }

    /// Bytes held by the buffers [`Scratch::release`] frees (capacity, not length).
    pub(crate) fn batch_bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.capacity() * 4;
        [
            &self.x, &self.xn, &self.q, &self.k, &self.v, &self.att, &self.proj, &self.gate,
            &self.up,
        ]
        .into_iter()
        .map(f)
        .sum::<usize>()
            + self
                .heads
                .iter()
                .map(|(a, b, c)| f(a) + f(b) + f(c))
                .sum::<usize>()
            + self.acts.bufs.iter().map(|b| b.0.capacity()).sum::<usize>()
    }

    /// Builds the rope tables on first use and grows the buffers for `n` tokens at positions
    /// `pos0..`.
    fn prepare(&mut self, c: &Config, rope_freqs: Option<&[f32]>, n: usize, pos0: usize) {
        let d = c.n_embd;
        let (hd, hdv) = (c.head_dim, c.head_dim_v);
        let (nh, nkv) = (c.n_head, c.n_head_kv);
        let n_pos = pos0 + n;
        if self.rope_global.is_empty() {
            self.rope_global = rope_table(
                c.context_len,
                c.rope_dim,
                c.rope_base,
                c.rope_freq_scale,
                rope_freqs,
            );
            if c.sliding_window > 0 {
                self.rope_local =
                    rope_table(c.context_len, c.rope_dim, c.rope_base_local, 1.0, None);
            }
        }
        grow(&mut self.x, n * d);
        grow(&mut self.xn, n * d);
        grow(&mut self.q, n * nh * hd);
        grow(&mut self.k, n * nkv * hd);
        grow(&mut self.v, n * nkv * hdv);
        grow(&mut self.att, n * nh * hdv);
        grow(&mut self.proj, n * d);
        grow(&mut self.gate, n * c.n_ff);
        grow(&mut self.up, n * c.n_ff);
        self.heads.resize_with(nh, Default::default);
        for (sc, qh, acc) in &mut self.heads {
            grow(sc, QUERY_BLOCK * n_pos);
            grow(qh, QUERY_BLOCK * hd);
            grow(acc, 32 * hdv);
        }
    }
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
    let optr = SendPtr(out.as_mut_ptr());
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

/// What every step of one call shares: the model's shape, the mapped file and the batch
/// (`n` tokens at positions `pos0..`).
struct Batch<'a> {
    c: &'a Config,
    file: &'a [u8],
    n: usize,
    pos0: usize,
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

    s.prepare(c, w.rope_freqs.as_deref(), n, pos0);
    embed(c, w, file, tokens, &mut s.x[..n * d])?;
    probe!(s.probe, "inp_scaled", 0, &s.x[..n * d]);
    let b = Batch { c, file, n, pos0 };
    for (il, l) in w.layers.iter().enumerate() {
        attention_block(&b, il, l, kv, s, pool)?;
        feed_forward_block(&b, il, l, s, pool)?;
    }
    output(&b, w, s, pool)
}

/// Embeddings: dequantizes the rows of `tokens` into `x` (scaled by `√d` for Gemma).
fn embed(c: &Config, w: &Weights, file: &[u8], tokens: &[u32], x: &mut [f32]) -> Result<()> {
    let d = c.n_embd;
    let embd = &file[w.embd_range.clone()];
    for (i, &t) in tokens.iter().enumerate() {
        let row = &embd[t as usize * w.embd_row_bytes..(t as usize + 1) * w.embd_row_bytes];
        let x = &mut x[i * d..(i + 1) * d];
        quant::dequantize_row(w.embd_ty, row, x)?;
        if c.arch == Arch::Gemma3 {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(())
}

/// Layer `il`'s attention block: norm, q/k/v, rope, the new keys and values into the cache,
/// attention, the output projection (and Gemma's post-norm), added to `s.x`.
fn attention_block(
    b: &Batch,
    il: usize,
    l: &Layer,
    kv: &mut KvCache,
    s: &mut Scratch,
    pool: &mut Pool,
) -> Result<()> {
    let (c, n, pos0) = (b.c, b.n, b.pos0);
    let d = c.n_embd;
    let (hd, hdv) = (c.head_dim, c.head_dim_v);
    let (nh, nkv) = (c.n_head, c.n_head_kv);
    let (q_dim, kv_dim, v_dim) = (nh * hd, nkv * hd, nkv * hdv);
    project_qkv(b, il, l, s, pool)?;
    let q = &mut s.q[..n * q_dim];
    let k = &mut s.k[..n * kv_dim];
    let v = &s.v[..n * v_dim];
    let local = c.is_local(il);
    let table = if local { &s.rope_local } else { &s.rope_global };
    rope_qk(c, l, table, pos0, q, k);
    probe!(s.probe, "Qrope", il, q);
    probe!(s.probe, "Krope", il, k);
    // Store keys and values (f16).
    kv.store(il, pos0, k, v);
    // Gemma scales the queries before the product; the others scale the scores.
    let (q_scale, kq_scale) = if c.arch == Arch::Gemma3 {
        (c.attn_scale, 1.0)
    } else {
        (1.0, c.attn_scale)
    };
    let att = &mut s.att[..n * nh * hdv];
    let attention = Attention {
        q,
        kv,
        layer: il,
        pos0,
        n,
        n_head: nh,
        group: nh / nkv,
        hd,
        hdv,
        q_scale,
        kq_scale,
        local,
        window: c.sliding_window,
    };
    attention.run(&mut s.heads, att, pool);
    probe!(s.probe, "kqv_out", il, att);
    s.acts.invalidate();
    let proj = &mut s.proj[..n * d];
    matmul(b.file, &l.wo, &mut s.acts, att, proj, pool)?;
    probe!(s.probe, "attn_out", il, proj);
    if let Some(pw) = &l.post_attn_norm {
        for r in proj.chunks_exact_mut(d) {
            rms_norm_inplace(r, pw, c.eps);
        }
    }
    probe!(s.probe, "attn_post_norm", il, proj);
    let x = &mut s.x[..n * d];
    x.iter_mut().zip(proj.iter()).for_each(|(a, &b)| *a += b);
    probe!(s.probe, "sa_out", il, x);
    Ok(())
}

/// The attention norm of `s.x` and the q, k and v projections (with their biases) into
/// `s.q`, `s.k`, `s.v`.
fn project_qkv(b: &Batch, il: usize, l: &Layer, s: &mut Scratch, pool: &mut Pool) -> Result<()> {
    let (c, n) = (b.c, b.n);
    let d = c.n_embd;
    let (q_dim, kv_dim, v_dim) = (
        c.n_head * c.head_dim,
        c.n_head_kv * c.head_dim,
        c.n_head_kv * c.head_dim_v,
    );
    let x = &s.x[..n * d];
    let xn = &mut s.xn[..n * d];
    for (xr, or) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)) {
        rms_norm(xr, &l.attn_norm, c.eps, or);
    }
    probe!(s.probe, "attn_norm", il, xn);
    s.acts.invalidate();
    let q = &mut s.q[..n * q_dim];
    let k = &mut s.k[..n * kv_dim];
    let v = &mut s.v[..n * v_dim];
    matmul(b.file, &l.wq, &mut s.acts, xn, q, pool)?;
    matmul(b.file, &l.wk, &mut s.acts, xn, k, pool)?;
    matmul(b.file, &l.wv, &mut s.acts, xn, v, pool)?;
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
    Ok(())
}

/// The q and k norms (if the layer has them) and rope, head by head, of the queries `q` and
/// keys `k` of the tokens at positions `pos0..`, with the layer's rope `table`.
fn rope_qk(c: &Config, l: &Layer, table: &[(f32, f32)], pos0: usize, q: &mut [f32], k: &mut [f32]) {
    let hd = c.head_dim;
    let (q_dim, kv_dim) = (c.n_head * hd, c.n_head_kv * hd);
    let half = c.rope_dim / 2;
    let n = q.len() / q_dim;
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
}

/// Layer `il`'s feed-forward block: norm, gate and up, the activation, down (and Gemma's
/// post-norm), added to `s.x`.
fn feed_forward_block(
    b: &Batch,
    il: usize,
    l: &Layer,
    s: &mut Scratch,
    pool: &mut Pool,
) -> Result<()> {
    let (c, n) = (b.c, b.n);
    let d = c.n_embd;
    let x = &mut s.x[..n * d];
    let xn = &mut s.xn[..n * d];
    for (xr, or) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)) {
        rms_norm(xr, &l.ffn_norm, c.eps, or);
    }
    probe!(s.probe, "ffn_norm", il, xn);
    s.acts.invalidate();
    let gate = &mut s.gate[..n * c.n_ff];
    let up = &mut s.up[..n * c.n_ff];
    matmul(b.file, &l.w_gate, &mut s.acts, xn, gate, pool)?;
    matmul(b.file, &l.w_up, &mut s.acts, xn, up, pool)?;
    probe!(s.probe, "ffn_gate", il, gate);
    probe!(s.probe, "ffn_up", il, up);
    ffn_activation(c, n, gate, up, pool);
    probe!(s.probe, "ffn_act", il, gate);
    s.acts.invalidate();
    let proj = &mut s.proj[..n * d];
    matmul(b.file, &l.w_down, &mut s.acts, gate, proj, pool)?;
    probe!(s.probe, "ffn_out", il, proj);
    if let Some(pw) = &l.post_ffn_norm {
        for r in proj.chunks_exact_mut(d) {
            rms_norm_inplace(r, pw, c.eps);
        }
    }
    probe!(s.probe, "ffn_post_norm", il, proj);
    x.iter_mut().zip(proj.iter()).for_each(|(a, &b)| *a += b);
    probe!(s.probe, "l_out", il, x);
    Ok(())
}

/// `gate = act(gate)·up` for the `n` tokens' rows: ggml's SiLU, or Gemma's GELU through its
/// f16 table.
fn ffn_activation(c: &Config, n: usize, gate: &mut [f32], up: &[f32], pool: &mut Pool) {
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
        let gptr = SendPtr(gate.as_mut_ptr());
        let len = gate.len();
        pool.run(tasks, &|t| {
            let (a, b) = (t * per, ((t + 1) * per).min(len));
            // SAFETY: task `t` alone writes elements a..b of `gate`, which outlives `run`.
            let g = unsafe { std::slice::from_raw_parts_mut(gptr.at(a), b - a) };
            act(g, &up[a..b]);
        });
    }
}

/// The output: the final norm and the output projection of the last token, into `s.logits`.
fn output(b: &Batch, w: &Weights, s: &mut Scratch, pool: &mut Pool) -> Result<()> {
    let (c, n) = (b.c, b.n);
    let d = c.n_embd;
    let last = &s.x[(n - 1) * d..n * d];
    let xn = &mut s.xn[..d];
    rms_norm(last, &w.output_norm, c.eps, xn);
    probe!(s.probe, "result_norm", 0, xn);
    s.acts.invalidate();
    s.logits.resize(w.output.rows, 0.0);
    matmul(b.file, &w.output, &mut s.acts, xn, &mut s.logits, pool)?;
    probe!(s.probe, "result_output", 0, &s.logits);
    Ok(())
}
