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

/// A raw pointer that may cross threads: each part writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint column ranges of one buffer to scoped rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

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

/// `dst[m x n] += lhs[m x k] * rhs[k x n]`, all row-major with the given row strides.
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
    let s = |v: usize| isize::try_from(v).unwrap_or(isize::MAX);
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            s(dst_rs),
            true,
            lhs,
            s(lhs_cs),
            s(lhs_rs),
            rhs,
            1,
            s(rhs_rs),
            1.0f32,
            1.0f32,
            false,
            false,
            false,
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
    span: usize,
    /// `[K][C_out][C_in]`.
    taps: Vec<f32>,
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
        let mut taps = vec![0f32; k * c_out * c_in];
        for o in 0..c_out {
            for i in 0..c_in {
                for t in 0..k {
                    taps[(t * c_out + o) * c_in + i] = w[(o * c_in + i) * k + t];
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
            span,
            taps,
            bias: bias.unwrap_or_else(|| vec![0.0; c_out]),
        }
    }

    /// `residual + bias + conv(act(x))` for `x` `[C_in, l]`; returns `[C_out, l]`.
    pub fn forward(&self, x: &[f32], l: usize, act: Act, residual: Option<&[f32]>) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.c_in * l);
        let lp = l + self.span;
        let xp: Vec<f32> = if self.span == 0 && act == Act::Identity {
            Vec::new()
        } else {
            let mut xp = vec![0f32; self.c_in * lp];
            for (dst, src) in xp.chunks_exact_mut(lp).zip(x.chunks_exact(l)) {
                for (d, &s) in dst[self.pad_l..self.pad_l + l].iter_mut().zip(src) {
                    *d = act.apply(s);
                }
            }
            xp
        };
        let src: &[f32] = if xp.is_empty() { x } else { &xp };
        let mut y = vec![0f32; self.c_out * l];
        for (o, row) in y.chunks_exact_mut(l).enumerate() {
            match residual {
                Some(r) => {
                    let b = self.bias[o];
                    for (d, &rv) in row.iter_mut().zip(&r[o * l..(o + 1) * l]) {
                        *d = rv + b;
                    }
                }
                None => row.fill(self.bias[o]),
            }
        }
        let dst = SendPtr(y.as_mut_ptr());
        let rhs = SendPtr(src.as_ptr().cast_mut());
        let (c_out, c_in) = (self.c_out, self.c_in);
        par_columns(l, |l0, l1| {
            let (dst, rhs) = (dst, rhs);
            for t in 0..self.k {
                let lhs = &self.taps[t * c_out * c_in..(t + 1) * c_out * c_in];
                // SAFETY: dst is [c_out, l] and this part writes columns l0..l1 only; rhs is
                // [c_in, lp] and tap t reads columns t*d + l0 .. t*d + l1 <= lp.
                unsafe {
                    gemm_acc(
                        c_out,
                        l1 - l0,
                        c_in,
                        dst.0.add(l0),
                        l,
                        lhs.as_ptr(),
                        c_in,
                        1,
                        rhs.0.add(t * self.dilation + l0),
                        lp,
                    );
                }
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
    w: Vec<f32>,
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
            w,
            bias,
        }
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
            let (dst, rhs) = (dst, rhs);
            // SAFETY: col is [rows, l], this part writes columns l0..l1; w is [c_in, rows],
            // read transposed (row stride 1, column stride rows); xa is [c_in, l].
            unsafe {
                gemm_acc(
                    rows,
                    l1 - l0,
                    self.c_in,
                    dst.0.add(l0),
                    l,
                    self.w.as_ptr(),
                    1,
                    rows,
                    rhs.0.add(l0),
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
            let out = out;
            for o in o0..o1 {
                // SAFETY: channel rows o0..o1 are this task's alone.
                let row = unsafe { std::slice::from_raw_parts_mut(out.0.add(o * lo), lo) };
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
