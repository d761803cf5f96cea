//! Whisper's audio encoder in `f32` on plain slices, with its own work split over the
//! calling rayon pool (the model's threads).
//!
//! The candle version this replaces spent about as much time around its matrix products as
//! in them: every candle `matmul` allocated its result (fresh multi-megabyte buffers, so
//! page faults on every product), counted the cores, and let gemm fork and join the pool
//! once per depth block; the attention copied the heads apart and back together and ran
//! 12 × heads small products per layer through the same machinery. Here:
//!
//! - every matrix product is split by rows into tasks of [`ROWS`] rows, each one
//!   single-threaded gemm call followed by its epilogue (bias, GELU, position embedding)
//!   while the rows are still in the cache: one fork-join per product;
//! - the residual products accumulate straight into the residual stream (gemm's
//!   `dst += lhs · rhs`), then add their bias;
//! - the two convolutions are products without an im2col copy: the input is stored
//!   time-major with a zero row before and after, so the three frames a kernel reads are
//!   adjacent in memory, and the weights are reordered to `[tap, in, out]` at load;
//! - weights are stored transposed (`[in, out]`), the layout gemm reads without packing;
//! - self-attention runs per head and block of [`Q_BLOCK`] queries: the block's scores
//!   (`Q_BLOCK × frames`) stay in a per-thread buffer in the cache through the softmax
//!   and the value product, whose output is written into its place in the merged
//!   `(frames, state)` matrix; queries and keys are read in place from the fused
//!   query/key/value matrix, the keys from a per-head transposed copy (so gemm does not
//!   repack them for every block);
//! - the activation buffers are kept between calls.
//!
//! The arithmetic is the same as the candle graph's (same products, same softmax and GELU
//! kernels); only the summation order inside the products may differ.

use std::cell::RefCell;
use std::sync::Mutex;

use rayon::prelude::*;

use super::int8::{self, I8Matrix};
use super::ops::{LayerNorm, Softmax};

/// Rows of the output per task of a matrix product. gemm computes a row-major product as
/// the transposed column-major one, with our rows as its columns; up to 48 (8 × its
/// 6-column micro-tile) it reads the weights in place, above that it packs them per call.
/// Measured on tiny.en (x86, 2 threads, `STT_ENC_ROWS`): 96 rows 5–8 % faster than 48
/// (fewer tasks, the packing pays for itself), 32 slower, 144 no better.
const ROWS: usize = 96;

/// Query rows per attention task: at most 48 lets gemm read the keys and values in place
/// (see [`ROWS`]); the block's scores (`48 × 1504` for the full window, 289 KB) stay in a
/// core's L2 cache. 96 measured the same within noise (`STT_ENC_QBLOCK`).
const Q_BLOCK: usize = 48;

/// `name` from the environment (for tuning experiments), else `default`.
fn tunable(name: &str, default: usize, cell: &'static std::sync::OnceLock<usize>) -> usize {
    *cell.get_or_init(|| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(default)
    })
}

fn rows_per_task() -> usize {
    static CELL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    tunable("STT_ENC_ROWS", ROWS, &CELL)
}

fn q_block() -> usize {
    static CELL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    tunable("STT_ENC_QBLOCK", Q_BLOCK, &CELL)
}

/// `[rows, cols]` row-major to `[cols, rows]`.
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; w.len()];
    for (r, row) in w.chunks_exact(cols).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// A dense layer: `weight` is `[in, out]` row-major (the transpose of PyTorch's and
/// CTranslate2's `[out, in]`), which gemm reads in place.
pub(crate) struct Dense {
    pub weight: crate::mapped::Frozen<f32>,
    pub bias: Vec<f32>,
    pub out: usize,
    pub inp: usize,
    /// The weights in int8 ([`Encoder::into_int8`]); `weight` is then empty.
    pub int8: Option<I8Matrix>,
}

pub(crate) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

pub(crate) struct Layer {
    pub attn_ln: Norm,
    /// Query, key and value rows, fused.
    pub qkv: Dense,
    pub out: Dense,
    pub mlp_ln: Norm,
    pub fc1: Dense,
    pub fc2: Dense,
}

/// The encoder's weights. The convolution weights are `[tap · in, out]` (reordered from
/// PyTorch's `[out, in, tap]` at load).
pub(crate) struct Encoder {
    pub n_mels: usize,
    pub state: usize,
    pub heads: usize,
    pub conv1: Dense,
    pub conv2: Dense,
    /// `[n_ctx, state]`.
    pub pos: Vec<f32>,
    pub layers: Vec<Layer>,
    pub ln_post: Norm,
    pub eps: f32,
    scratch: Mutex<Option<Scratch>>,
}

/// Activation buffers, reused from call to call (sized for the largest window seen).
#[derive(Default)]
struct Scratch {
    mel_t: Vec<f32>,
    conv1: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    kt: Vec<f32>,
    attn: Vec<f32>,
    ff: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Reorders a convolution weight from `[out, in, tap]` to `[tap, in, out]` (a dense
/// layer's `[in, out]` over the three frames side by side).
pub(crate) fn conv_weight_tap_major(w: &[f32], out: usize, inp: usize, taps: usize) -> Vec<f32> {
    let mut r = vec![0.0f32; w.len()];
    for o in 0..out {
        for c in 0..inp {
            for j in 0..taps {
                r[(j * inp + c) * out + o] = w[o * inp * taps + c * taps + j];
            }
        }
    }
    r
}

use crate::par::SendPtr;

/// `dst (m × n, row stride dst_rs) = [dst +] lhs (m × k) · rhs (k × n)`, one thread.
///
/// # Safety
/// The pointers and strides must describe matrices inside live buffers, and `dst` must not
/// overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm1(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    let s = |v: usize| v as isize;
    // SAFETY: forwarded from the caller.
    unsafe {
        crate::cpu::sgemm(
            m,
            n,
            k,
            dst,
            1,
            s(dst_rs),
            accumulate,
            lhs,
            s(lhs_cs),
            s(lhs_rs),
            rhs,
            s(rhs_cs),
            s(rhs_rs),
            if accumulate { 1.0f32 } else { 0.0 },
            1.0f32,
            gemm::Parallelism::None,
        );
    }
}

/// `out[r] = [out[r] +] lhs[r] · W` for `m` rows (lhs row `r` starts at `r · lhs_rs` and
/// has `w.inp` values), in tasks of [`ROWS`] rows; `epi(first_row, rows)` runs on each
/// task's output rows right after its product.
fn linear(
    m: usize,
    lhs: &[f32],
    lhs_rs: usize,
    w: &Dense,
    out: &mut [f32],
    accumulate: bool,
    epi: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    if let Some(q) = &w.int8 {
        return linear_i8(m, lhs, lhs_rs, q, out, accumulate, epi);
    }
    linear_raw(
        m, lhs, lhs_rs, &w.weight, w.out, w.inp, out, accumulate, epi,
    );
}

thread_local! {
    /// One task's quantized activation rows and their scales, per pool thread.
    static QROWS: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// [`linear`] on int8 weights: each task quantizes its rows (one scale per row), then
/// [`int8::product`].
fn linear_i8(
    m: usize,
    lhs: &[f32],
    lhs_rs: usize,
    w: &I8Matrix,
    out: &mut [f32],
    accumulate: bool,
    epi: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let (n, k) = (w.n, w.k);
    assert!(
        m == 0 || lhs.len() >= (m - 1) * lhs_rs + k,
        "linear: input too short"
    );
    assert!(out.len() >= m * n, "linear: shapes");
    let kernel = int8::Kernel::best();
    let chunk = rows_per_task();
    out[..m * n]
        .par_chunks_mut(chunk * n)
        .enumerate()
        .for_each(|(i, o)| {
            let r0 = i * chunk;
            let rows = o.len() / n;
            QROWS.with(|b| {
                let mut b = b.borrow_mut();
                let (q, s) = &mut *b;
                let need = rows * w.row_bytes();
                if q.len() < need {
                    q.resize(need, 0);
                }
                if s.len() < rows {
                    s.resize(rows, 0.0);
                }
                int8::quantize_rows(kernel, &lhs[r0 * lhs_rs..], lhs_rs, rows, w, q, s);
                int8::product(kernel, q, s, rows, w, o, accumulate);
            });
            epi(r0, o);
        });
}

/// [`linear`] with the weight as a slice, `k × n` row-major (inputs × outputs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_raw(
    m: usize,
    lhs: &[f32],
    lhs_rs: usize,
    weight: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
    accumulate: bool,
    epi: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    assert!(
        m == 0 || lhs.len() >= (m - 1) * lhs_rs + k,
        "linear: input too short"
    );
    assert!(
        weight.len() == n * k && out.len() >= m * n,
        "linear: shapes"
    );
    let chunk = rows_per_task();
    out[..m * n]
        .par_chunks_mut(chunk * n)
        .enumerate()
        .for_each(|(i, o)| {
            let r0 = i * chunk;
            let rows = o.len() / n;
            // SAFETY: `o` is `rows × n`; the lhs rows `r0 .. r0 + rows` are inside `lhs`
            // (asserted above); the weight is `k × n`, row-major. `o` is a fresh mutable borrow, so it
            // overlaps neither input.
            unsafe {
                gemm1(
                    rows,
                    n,
                    k,
                    o.as_mut_ptr(),
                    n,
                    accumulate,
                    lhs.as_ptr().add(r0 * lhs_rs),
                    lhs_rs,
                    1,
                    weight.as_ptr(),
                    n,
                    1,
                );
            }
            epi(r0, o);
        });
}

pub(crate) fn add_bias(bias: &[f32], rows: &mut [f32]) {
    if bias.is_empty() {
        return;
    }
    for row in rows.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

fn bias_gelu(bias: &[f32], rows: &mut [f32]) {
    super::vmath::bias_gelu(bias, rows);
}

impl Norm {
    fn apply(&self, x: &[f32], y: &mut [f32], eps: f32) {
        let ln = LayerNorm {
            gamma: &self.gamma,
            beta: &self.beta,
            eps,
        };
        let d = self.gamma.len();
        x.par_chunks(rows_per_task() * d)
            .zip(y.par_chunks_mut(rows_per_task() * d))
            .for_each(|(xs, ys)| {
                for (xr, yr) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)) {
                    ln.row(xr, yr);
                }
            });
    }
}

thread_local! {
    /// One attention block's scores and the reciprocals of its rows' sums, per pool thread.
    static SCORES: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether the softmax's division by the row sum is applied to the attention's output rows
/// (`dh` values) instead of the scores (`frames` values): `STT_ENC_FOLD=0` divides the
/// scores, as before.
fn fold_softmax() -> bool {
    static CELL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CELL.get_or_init(|| {
        std::env::var("STT_ENC_FOLD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }) != 0
}

/// Self-attention over `t` positions: `qkv` is `(t, 3 · state)` (queries, keys, values),
/// `out` receives `(t, state)` with the heads side by side. `kt` is scratch for the keys
/// per head, transposed to `(dh, t_pad)` with `t_pad = t` rounded up to 8 (zero keys in
/// the padding, left out of the softmax): gemm then reads both the keys and the values
/// (in place) without repacking them for every block of queries.
fn self_attention(
    qkv: &[f32],
    t: usize,
    state: usize,
    heads: usize,
    kt: &mut [f32],
    out: &mut [f32],
) {
    let dh = state / heads;
    let w3 = 3 * state;
    let t_pad = t.next_multiple_of(8);
    assert!(out.len() >= t * state && qkv.len() >= t * w3 && kt.len() >= heads * dh * t_pad);
    kt.par_chunks_mut(dh * t_pad)
        .enumerate()
        .for_each(|(h, kh)| {
            for (j, row) in qkv.chunks_exact(w3).take(t).enumerate() {
                let k = &row[state + h * dh..state + (h + 1) * dh];
                for (d, &x) in k.iter().enumerate() {
                    kh[d * t_pad + j] = x;
                }
            }
            for d in 0..dh {
                kh[d * t_pad + t..(d + 1) * t_pad].fill(0.0);
            }
        });
    let qb = q_block();
    let blocks = t.div_ceil(qb);
    let scale = 1.0 / (dh as f32).sqrt();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let kt = &*kt;
    (0..heads * blocks).into_par_iter().for_each(|task| {
        let (h, b) = (task / blocks, task % blocks);
        let r0 = b * qb;
        let q_len = qb.min(t - r0);
        let softmax = Softmax {
            scale,
            q_len,
            causal_offset: None,
        };
        SCORES.with(|s| {
            let mut s = s.borrow_mut();
            let (s, inv) = &mut *s;
            let scores = sized(s, q_len * t_pad);
            let inv = sized(inv, q_len);
            // SAFETY: query rows r0 .. r0 + q_len of head h are inside `qkv` (t rows of
            // 3·state, asserted); the keys of head h are kt[h·dh·t_pad ..], (dh, t_pad)
            // row-major. `scores` is this thread's own buffer.
            unsafe {
                gemm1(
                    q_len,
                    t_pad,
                    dh,
                    scores.as_mut_ptr(),
                    t_pad,
                    false,
                    qkv.as_ptr().add(r0 * w3 + h * dh),
                    w3,
                    1,
                    kt.as_ptr().add(h * dh * t_pad),
                    t_pad,
                    1,
                );
            }
            let fold = fold_softmax();
            for (i, row) in scores.chunks_exact_mut(t_pad).enumerate() {
                if !fold {
                    softmax.row(i, &mut row[..t]);
                    continue;
                }
                // Softmax::row without its last pass: e^(s - max) in place, 1 / Σ kept.
                let live = &mut row[..t];
                let max = super::vmath::max(live);
                if !max.is_finite() {
                    live.fill(0.0);
                    inv[i] = 0.0;
                    continue;
                }
                let sum = super::vmath::exp_scaled_sum(live, scale, -max * scale);
                inv[i] = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            }
            // SAFETY: the output block (rows r0 .. r0 + q_len, columns h·dh .. (h+1)·dh)
            // belongs to this task alone; `out` holds t × state values (asserted) and
            // lives past the loop. The values of head h are read in place from `qkv`,
            // (t, dh) with row stride 3·state.
            unsafe {
                gemm1(
                    q_len,
                    dh,
                    t,
                    out_ptr.get().add(r0 * state + h * dh),
                    state,
                    false,
                    scores.as_ptr(),
                    t_pad,
                    1,
                    qkv.as_ptr().add(2 * state + h * dh),
                    w3,
                    1,
                );
            }
            if fold {
                for (i, &f) in inv.iter().enumerate() {
                    // SAFETY: row r0 + i, columns h·dh .. (h+1)·dh of `out`: this task's
                    // block (see above), written by the product just before.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.get().add((r0 + i) * state + h * dh),
                            dh,
                        )
                    };
                    o.iter_mut().for_each(|v| *v *= f);
                }
            }
        });
    });
}

impl Encoder {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        n_mels: usize,
        state: usize,
        heads: usize,
        n_ctx: usize,
        conv1: Dense,
        conv2: Dense,
        pos: Vec<f32>,
        layers: Vec<Layer>,
        ln_post: Norm,
        eps: f32,
    ) -> Result<Self, String> {
        let check = |what: &str, d: &Dense, out: usize, inp: usize| {
            if d.out != out || d.inp != inp || d.weight.len() != out * inp {
                return Err(format!(
                    "{what}: {} × {} weights ({} values), expected {out} × {inp}",
                    d.out,
                    d.inp,
                    d.weight.len()
                ));
            }
            if !d.bias.is_empty() && d.bias.len() != out {
                return Err(format!("{what}: {} biases for {out} outputs", d.bias.len()));
            }
            Ok(())
        };
        let norm = |what: &str, n: &Norm| {
            if n.gamma.len() != state || n.beta.len() != state {
                return Err(format!(
                    "{what}: {} scales and {} shifts for width {state}",
                    n.gamma.len(),
                    n.beta.len()
                ));
            }
            Ok(())
        };
        if state == 0 || heads == 0 || state % heads != 0 {
            return Err(format!("width {state} does not split into {heads} heads"));
        }
        check("conv1", &conv1, state, 3 * n_mels)?;
        check("conv2", &conv2, state, 3 * state)?;
        if pos.len() < n_ctx * state {
            return Err(format!(
                "position embedding has {} values, expected {n_ctx} × {state}",
                pos.len()
            ));
        }
        norm("ln_post", &ln_post)?;
        for (i, l) in layers.iter().enumerate() {
            let ff = l.fc1.out;
            check(
                &format!("layer {i} attention qkv"),
                &l.qkv,
                3 * state,
                state,
            )?;
            check(&format!("layer {i} attention out"), &l.out, state, state)?;
            check(&format!("layer {i} fc1"), &l.fc1, ff, state)?;
            check(&format!("layer {i} fc2"), &l.fc2, state, ff)?;
            norm(&format!("layer {i} attention norm"), &l.attn_ln)?;
            norm(&format!("layer {i} mlp norm"), &l.mlp_ln)?;
        }
        Ok(Self {
            n_mels,
            state,
            heads,
            conv1,
            conv2,
            pos,
            layers,
            ln_post,
            eps,
            scratch: Mutex::new(None),
        })
    }

    /// The four linear layers of every block (query/key/value, attention output, fc1, fc2)
    /// in int8 ([`super::int8`]); the convolutions and the attention stay `f32`.
    pub(crate) fn into_int8(mut self) -> Self {
        for l in &mut self.layers {
            for d in [&mut l.qkv, &mut l.out, &mut l.fc1, &mut l.fc2] {
                d.int8 = Some(I8Matrix::from_kn(&d.weight, d.inp, d.out));
                d.weight = Vec::new().into();
            }
        }
        self
    }

    /// Encodes `n_mels × frames` log-mel values (row-major; the caller checked that
    /// `frames` is even and at most `2 · n_ctx`) into `(frames / 2) × state` values.
    /// Runs on the current rayon pool.
    pub(crate) fn encode(&self, mel: &[f32], frames: usize) -> Vec<f32> {
        let mut scratch = self
            .scratch
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .unwrap_or_default();
        let out = self.encode_with(&mut scratch, mel, frames);
        if let Ok(mut s) = self.scratch.lock() {
            *s = Some(scratch);
        }
        out
    }

    fn encode_with(&self, sc: &mut Scratch, mel: &[f32], frames: usize) -> Vec<f32> {
        let (nm, s) = (self.n_mels, self.state);
        let t = frames / 2;
        let prof = std::env::var_os("STT_PROF").is_some();
        let mut clock = std::time::Instant::now();
        let mut lap = |what: &str| {
            if prof {
                eprintln!("{what}: {:?}", clock.elapsed());
            }
            clock = std::time::Instant::now();
        };

        // Time-major mel with a zero frame on each side: frame f is row f + 1.
        let mel_t = sized(&mut sc.mel_t, (frames + 2) * nm);
        mel_t[..nm].fill(0.0);
        mel_t[(frames + 1) * nm..].fill(0.0);
        for (c, band) in mel.chunks_exact(frames).enumerate() {
            for (f, &v) in band.iter().enumerate() {
                mel_t[(f + 1) * nm + c] = v;
            }
        }
        // conv1 (stride 1, padding 1): output frame f reads rows f, f+1, f+2 of mel_t,
        // 3·n_mels adjacent values. Output also time-major with a zero row on each side.
        let y1 = sized(&mut sc.conv1, (frames + 2) * s);
        y1[..s].fill(0.0);
        y1[(frames + 1) * s..].fill(0.0);
        let b1 = &self.conv1.bias;
        linear(
            frames,
            mel_t,
            nm,
            &self.conv1,
            &mut y1[s..(frames + 1) * s],
            false,
            &|_, o| bias_gelu(b1, o),
        );
        lap("conv1");
        // conv2 (stride 2, padding 1): output t reads conv1 frames 2t-1, 2t, 2t+1, which
        // are rows 2t .. 2t+3 of y1.
        let mut x = vec![0.0f32; t * s];
        let (b2, pos) = (&self.conv2.bias, &self.pos);
        linear(t, y1, 2 * s, &self.conv2, &mut x, false, &|r0, o| {
            bias_gelu(b2, o);
            for (row, p) in o.chunks_exact_mut(s).zip(pos[r0 * s..].chunks_exact(s)) {
                row.iter_mut().zip(p).for_each(|(v, p)| *v += p);
            }
        });
        lap("conv2");

        let h = sized(&mut sc.h, t * s);
        let qkv = sized(&mut sc.qkv, t * 3 * s);
        let kt = sized(&mut sc.kt, t.next_multiple_of(8) * s);
        let attn = sized(&mut sc.attn, t * s);
        let ff_width = self.layers.iter().map(|l| l.fc1.out).max().unwrap_or(0);
        let ff_all = sized(&mut sc.ff, t * ff_width);
        for l in &self.layers {
            l.attn_ln.apply(&x, h, self.eps);
            let b = &l.qkv.bias;
            linear(t, h, s, &l.qkv, qkv, false, &|_, o| add_bias(b, o));
            lap("ln+qkv");
            self_attention(qkv, t, s, self.heads, kt, attn);
            lap("attention");
            let b = &l.out.bias;
            linear(t, attn, s, &l.out, &mut x, true, &|_, o| add_bias(b, o));
            lap("out");
            l.mlp_ln.apply(&x, h, self.eps);
            let ff = &mut ff_all[..t * l.fc1.out];
            let b = &l.fc1.bias;
            linear(t, h, s, &l.fc1, ff, false, &|_, o| bias_gelu(b, o));
            lap("ln+fc1");
            let b = &l.fc2.bias;
            linear(t, ff, l.fc2.inp, &l.fc2, &mut x, true, &|_, o| {
                add_bias(b, o)
            });
            lap("fc2");
        }
        let mut y = vec![0.0f32; t * s];
        self.ln_post.apply(&x, &mut y, self.eps);
        lap("ln_post");
        y
    }
}
