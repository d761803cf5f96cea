//! Fast 1-D convolutions for the VITS decoder and flows, on plain `[channels, length]`
//! row-major buffers.
//!
//! Profiling candle 0.11's `conv1d` on the decoder showed most of the time outside the
//! matrix product: the im2col copy, the transposed copy of the result, and its thread pool
//! spinning between small element-wise ops. Here a convolution is `K` accumulating matrix
//! products, one per tap, each reading a shifted window of the zero-padded input in place
//! (no im2col). The bias, an optional leaky ReLU on the input and an optional residual are
//! fused into the copies that happen anyway. A transposed convolution is one product
//! (`[C_out * K, C_in] x [C_in, L]`) and a scatter-add of its columns (col2im). Work is split by
//! output columns over the current rayon pool; each part runs `gemm` single-threaded.

/// The activation applied to the input before convolving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Act {
    /// None.
    Identity,
    /// `max(x, slope * x)`.
    Leaky(f32),
}

impl Act {
    #[inline]
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Leaky(s) => {
                if v >= 0.0 {
                    v
                } else {
                    v * s
                }
            }
        }
    }
}

/// Columns below which a part is not split further.
const MIN_COLS: usize = 96;

use crate::mapped::Frozen;
use crate::par::SendPtr;

/// Runs `f(l0, l1)` over parts of `0..l`, in parallel on the current rayon pool.
fn par_columns(l: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.min(l.div_ceil(MIN_COLS)).max(1);
    if parts == 1 {
        f(0, l);
        return;
    }
    let per = l.div_ceil(parts);
    let f = &f;
    rayon::scope(|s| {
        for p in 1..parts {
            let (l0, l1) = (p * per, ((p + 1) * per).min(l));
            if l0 < l1 {
                s.spawn(move |_| f(l0, l1));
            }
        }
        f(0, per.min(l));
    });
}

/// `dst[m x n] += lhs[m x k] * rhs[k x n]`, row-major with the given row strides (columns
/// contiguous in `dst` and `rhs`).
///
/// # Safety
/// The pointers must cover the described matrices, and `dst` must not alias the others.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_strided(m, n, k, dst, dst_rs, 1, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, 1) }
}

/// `dst[m x n] += lhs[m x k] * rhs[k x n]` with arbitrary row and column strides, one thread.
///
/// # Safety
/// The pointers must cover the described matrices, and `dst` must not alias the others.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    let s = |v: usize| isize::try_from(v).unwrap_or(isize::MAX);
    // SAFETY: forwarded from the caller.
    unsafe {
        crate::cpu::sgemm(
            m,
            n,
            k,
            dst,
            s(dst_cs),
            s(dst_rs),
            true,
            lhs,
            s(lhs_cs),
            s(lhs_rs),
            rhs,
            s(rhs_cs),
            s(rhs_rs),
            1.0f32,
            1.0f32,
            gemm::Parallelism::None,
        );
    }
}

/// A 1-D convolution, stride 1, "same" padding (`(K - 1) * dilation`, the odd one on the
/// right).
#[derive(Debug, Clone)]
pub(crate) struct Conv1d {
    pub c_out: usize,
    pub c_in: usize,
    k: usize,
    dilation: usize,
    pad_l: usize,
    /// `[C_out][K][C_in]`: row `o` is the left operand's row for the gathered input.
    w: Frozen<f32>,
    bias: Vec<f32>,
}

impl Conv1d {
    /// From PyTorch's weight layout `[C_out, C_in, K]`.
    pub fn new(
        w: &[f32],
        c_out: usize,
        c_in: usize,
        k: usize,
        bias: Option<Vec<f32>>,
        dilation: usize,
    ) -> Self {
        let mut wt = vec![0f32; k * c_out * c_in];
        for o in 0..c_out {
            for i in 0..c_in {
                for t in 0..k {
                    wt[(o * k + t) * c_in + i] = w[(o * c_in + i) * k + t];
                }
            }
        }
        let span = (k - 1) * dilation;
        Self {
            c_out,
            c_in,
            k,
            dilation,
            pad_l: span / 2,
            w: Frozen::new(wt),
            bias: bias.unwrap_or_else(|| vec![0.0; c_out]),
        }
    }

    /// Input positions each output depends on, left and right of its own: the "same"
    /// padding, `(K - 1) * dilation` split with the odd one on the right.
    pub fn reach(&self) -> (usize, usize) {
        let span = (self.k - 1) * self.dilation;
        (self.pad_l, span - self.pad_l)
    }

    /// `residual + bias + conv(act(x))` for `x` `[C_in, l]`; returns `[C_out, l]`.
    ///
    /// Columns are processed in cache-sized blocks: each block's input windows for all taps
    /// are gathered (with the activation and the zero padding) into a `[K * C_in, B]` matrix,
    /// and one product with the `[C_out, K * C_in]` weights accumulates onto the block's
    /// bias and residual. Reading the output and input once per block, not once per tap,
    /// is what makes the narrow, long layers at the end of the decoder fast.
    pub fn forward(&self, x: &[f32], l: usize, act: Act, residual: Option<&[f32]>) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.c_in * l);
        let mut y = vec![0f32; self.c_out * l];
        let depth = self.k * self.c_in;
        // About 256 KiB of gathered input per block, a multiple of 16 columns.
        let block = ((65_536 / depth.max(1)) / 16 * 16).clamp(16, 1024);
        let dst = SendPtr(y.as_mut_ptr());
        par_columns(l, |l0, l1| {
            let mut col = vec![0f32; depth * block.min(l1 - l0)];
            let mut b0 = l0;
            while b0 < l1 {
                let bw = block.min(l1 - b0);
                // Gather: col[(t * c_in + i) * bw + j] = act(x[i, b0 + j + t * d - pad_l]).
                for t in 0..self.k {
                    let shift = t * self.dilation;
                    for i in 0..self.c_in {
                        let row = &mut col[(t * self.c_in + i) * bw..(t * self.c_in + i + 1) * bw];
                        let src = &x[i * l..(i + 1) * l];
                        // Valid j: 0 <= b0 + j + shift - pad_l < l.
                        let start = b0 + shift; // position + pad_l
                        let j_lo = self.pad_l.saturating_sub(start).min(bw);
                        let j_hi = (l + self.pad_l).saturating_sub(start).min(bw).max(j_lo);
                        row[..j_lo].fill(0.0);
                        row[j_hi..].fill(0.0);
                        if j_lo == j_hi {
                            continue;
                        }
                        let from = start + j_lo - self.pad_l;
                        let seg = &mut row[j_lo..j_hi];
                        let src = &src[from..from + seg.len()];
                        match act {
                            Act::Identity => seg.copy_from_slice(src),
                            Act::Leaky(slope) => {
                                for (r, &v) in seg.iter_mut().zip(src) {
                                    *r = if v >= 0.0 { v } else { v * slope };
                                }
                            }
                        }
                    }
                }
                // Bias and residual.
                for o in 0..self.c_out {
                    // SAFETY: columns b0..b0 + bw of row o belong to this part alone.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(dst.get().add(o * l + b0), bw) };
                    match residual {
                        Some(r) => {
                            let bias = self.bias[o];
                            for (d, &rv) in row.iter_mut().zip(&r[o * l + b0..o * l + b0 + bw]) {
                                *d = rv + bias;
                            }
                        }
                        None => row.fill(self.bias[o]),
                    }
                }
                // SAFETY: dst rows have stride l and this block's columns are this part's; the
                // weights are [c_out, depth] and col is [depth, bw], both contiguous.
                unsafe {
                    gemm_acc(
                        self.c_out,
                        bw,
                        depth,
                        dst.get().add(b0),
                        l,
                        self.w.as_ptr(),
                        depth,
                        1,
                        col.as_ptr(),
                        bw,
                    );
                }
                b0 += bw;
            }
        });
        y
    }
}

/// A 1-D transposed convolution (`ConvTranspose1d`, dilation 1).
#[derive(Debug, Clone)]
pub(crate) struct ConvTranspose1d {
    pub c_in: usize,
    pub c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// PyTorch's layout `[C_in, C_out, K]`: row `i` of the `[C_out * K, C_in]` product's
    /// left operand is column `i` here.
    w: Frozen<f32>,
    bias: Vec<f32>,
}

impl ConvTranspose1d {
    /// From PyTorch's weight layout `[C_in, C_out, K]`.
    pub fn new(
        w: Vec<f32>,
        c_in: usize,
        c_out: usize,
        k: usize,
        bias: Vec<f32>,
        stride: usize,
        pad: usize,
    ) -> Self {
        Self {
            c_in,
            c_out,
            k,
            stride,
            pad,
            w: Frozen::new(w),
            bias,
        }
    }

    /// Kernel size, stride and padding (trimmed from each end).
    pub fn geometry(&self) -> (usize, usize, usize) {
        (self.k, self.stride, self.pad)
    }

    /// Output length for input length `l`.
    pub fn out_len(&self, l: usize) -> usize {
        ((l.saturating_sub(1)) * self.stride + self.k).saturating_sub(2 * self.pad)
    }

    /// `bias + convtranspose(act(x))` for `x` `[C_in, l]`; returns `[C_out, out_len(l)]`.
    pub fn forward(&self, x: &[f32], l: usize, act: Act) -> Vec<f32> {
        let xa: Vec<f32> = x.iter().map(|&v| act.apply(v)).collect();
        let rows = self.c_out * self.k;
        let mut col = vec![0f32; rows * l];
        let dst = SendPtr(col.as_mut_ptr());
        let rhs = SendPtr(xa.as_ptr().cast_mut());
        par_columns(l, |l0, l1| {
            // SAFETY: col is [rows, l], this part writes columns l0..l1; w is [c_in, rows],
            // read transposed (row stride 1, column stride rows); xa is [c_in, l].
            unsafe {
                gemm_acc(
                    rows,
                    l1 - l0,
                    self.c_in,
                    dst.get().add(l0),
                    l,
                    self.w.as_ptr(),
                    1,
                    rows,
                    rhs.get().add(l0),
                    l,
                );
            }
        });
        let lo = self.out_len(l);
        let mut y = vec![0f32; self.c_out * lo];
        let (k, s, p) = (self.k, self.stride, self.pad);
        let out = SendPtr(y.as_mut_ptr());
        let col = &col;
        let c_out = self.c_out;
        let bias = &self.bias;
        // Scatter-add, split by output channel.
        let threads = rayon::current_num_threads().max(1);
        let per = c_out.div_ceil(threads);
        let work = |o0: usize, o1: usize| {
            for o in o0..o1 {
                // SAFETY: channel rows o0..o1 are this task's alone.
                let row = unsafe { std::slice::from_raw_parts_mut(out.get().add(o * lo), lo) };
                row.fill(bias[o]);
                for t in 0..k {
                    let c = &col[(o * k + t) * l..(o * k + t + 1) * l];
                    for (j, &v) in c.iter().enumerate() {
                        let pos = j * s + t;
                        if pos >= p && pos - p < lo {
                            row[pos - p] += v;
                        }
                    }
                }
            }
        };
        if threads == 1 || c_out < 2 {
            work(0, c_out);
        } else {
            let work = &work;
            rayon::scope(|sc| {
                for q in 1..threads {
                    let (o0, o1) = ((q * per).min(c_out), ((q + 1) * per).min(c_out));
                    if o0 < o1 {
                        sc.spawn(move |_| work(o0, o1));
                    }
                }
                work(0, per.min(c_out));
            });
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct definition, for comparison.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        w: &[f32],
        b: &[f32],
        x: &[f32],
        c_out: usize,
        c_in: usize,
        k: usize,
        l: usize,
        d: usize,
    ) -> Vec<f32> {
        let span = (k - 1) * d;
        let pad_l = span / 2;
        let mut y = vec![0f32; c_out * l];
        for o in 0..c_out {
            for p in 0..l {
                let mut acc = b[o];
                for i in 0..c_in {
                    for t in 0..k {
                        let pos = (p + t * d) as isize - pad_l as isize;
                        if pos >= 0 && (pos as usize) < l {
                            let v = x[i * l + pos as usize];
                            acc += w[(o * c_in + i) * k + t] * if v >= 0.0 { v } else { 0.1 * v };
                        }
                    }
                }
                y[o * l + p] = acc;
            }
        }
        y
    }

    #[test]
    fn conv_matches_the_definition() {
        let mut seed = 1u32;
        let mut r = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        // Lengths shorter than the padding, around the block size and the part split.
        for (c_out, c_in, k, d, l) in [
            (3, 2, 7, 3, 1),
            (3, 2, 7, 12, 5),
            (4, 5, 3, 1, 100),
            (8, 16, 5, 2, 700),
            (2, 3, 4, 1, 9),
            (5, 3, 1, 1, 33),
        ] {
            let w: Vec<f32> = (0..c_out * c_in * k).map(|_| r()).collect();
            let b: Vec<f32> = (0..c_out).map(|_| r()).collect();
            let x: Vec<f32> = (0..c_in * l).map(|_| r()).collect();
            let conv = Conv1d::new(&w, c_out, c_in, k, Some(b.clone()), d);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let y = pool.install(|| conv.forward(&x, l, Act::Leaky(0.1), None));
                let want = naive_conv(&w, &b, &x, c_out, c_in, k, l, d);
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{c_out} {c_in} {k} {d} {l}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn conv_transpose_matches_the_definition() {
        let (c_in, c_out, k, s, p, l) = (3, 2, 16, 8, 4, 7);
        let w: Vec<f32> = (0..c_in * c_out * k)
            .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let b = vec![0.5, -0.25];
        let x: Vec<f32> = (0..c_in * l)
            .map(|i| ((i * 5) % 11) as f32 * 0.2 - 1.0)
            .collect();
        let ct = ConvTranspose1d::new(w.clone(), c_in, c_out, k, b.clone(), s, p);
        let lo = ct.out_len(l);
        assert_eq!(lo, l * s);
        let y = ct.forward(&x, l, Act::Identity);
        let mut want = vec![0f32; c_out * lo];
        for o in 0..c_out {
            for v in &mut want[o * lo..(o + 1) * lo] {
                *v = b[o];
            }
            for i in 0..c_in {
                for j in 0..l {
                    for t in 0..k {
                        let pos = j * s + t;
                        if pos >= p && pos - p < lo {
                            want[o * lo + pos - p] += x[i * l + j] * w[(i * c_out + o) * k + t];
                        }
                    }
                }
            }
        }
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
