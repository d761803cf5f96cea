//! Fast 1-D convolutions for the VITS decoder and flows, on plain `[channels, length]`
//! row-major buffers.
//!
//! Profiling candle 0.11's `conv1d` on the decoder showed most of the time outside the
//! matrix product: the im2col copy, the transposed copy of the result, and its thread pool
//! spinning between small element-wise ops. Here a convolution is `K` accumulating matrix
//! products, one per tap, each reading a shifted window of the zero-padded input in place
//! (no im2col). The bias, an optional leaky ReLU on the input and an optional residual are
//! fused into the copies that happen anyway. A transposed convolution is computed by output
//! phases (one product per block of input columns, see [`ConvTranspose1d`]). Work is split by
//! output columns over the current rayon pool, or by output channels when the input is too
//! short to split (a sentence's phonemes); each part runs `gemm` single-threaded.

/// The activation applied to the input before convolving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Act {
    /// None.
    Identity,
    /// `max(x, slope * x)`.
    Leaky(f32),
}

impl Act {
    /// `dst[i] = act(src[i])`.
    #[inline]
    fn copy(self, src: &[f32], dst: &mut [f32]) {
        match self {
            Act::Identity => dst.copy_from_slice(src),
            Act::Leaky(slope) => {
                for (r, &v) in dst.iter_mut().zip(src) {
                    *r = if v >= 0.0 { v } else { v * slope };
                }
            }
        }
    }
}

/// Columns below which a part is not split further.
const MIN_COLS: usize = 96;

/// Output channels below which a convolution too short to split by columns is not split by
/// rows either.
const MIN_ROWS: usize = 32;

/// Multiply-adds below which a short convolution runs on one thread (a fork-join costs a few
/// microseconds).
const MIN_ROW_SPLIT_MACS: usize = 1 << 20;

/// Floats of padded input (256 KiB) up to which the direct path splits a convolution by
/// output channels rather than by columns: one slab shared by the threads, even parts.
const DIRECT_ROW_SPLIT_SLAB: usize = 65_536;

use std::mem::MaybeUninit;

use crate::mapped::Frozen;
use crate::par::SendPtr;

/// Runs `f(l0, l1)` over parts of `0..l`, in parallel on the current rayon pool.
fn par_columns(l: usize, f: impl Fn(usize, usize) + Sync) {
    par_columns_by(l, 1, f);
}

/// [`par_columns`] with parts starting at multiples of `align` columns.
fn par_columns_by(l: usize, align: usize, f: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.min(l.div_ceil(MIN_COLS)).max(1);
    if parts == 1 {
        f(0, l);
        return;
    }
    let per = l.div_ceil(parts).div_ceil(align.max(1)) * align.max(1);
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
    /// Gathered path: `[C_out][K][C_in]`, row `o` the left operand's row for the gathered
    /// input. Direct path ([`direct`]): `[ceil(C_out / MR)][K][C_in][MR]`, zero rows past
    /// `C_out`.
    w: Frozen<f32>,
    bias: Vec<f32>,
    /// Whether the direct kernel runs this convolution (see [`direct::available`]).
    direct: bool,
    /// Tap `t` reads the padded input `t * dilation` columns further (the direct path).
    offs: Vec<usize>,
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
        Self::with_path(w, c_out, c_in, k, bias, dilation, direct::suits(c_out))
    }

    /// [`Conv1d::new`] on the given path (`direct` only where [`direct::available`]).
    fn with_path(
        w: &[f32],
        c_out: usize,
        c_in: usize,
        k: usize,
        bias: Option<Vec<f32>>,
        dilation: usize,
        direct: bool,
    ) -> Self {
        let direct = direct && direct::available();
        let wt = if direct {
            let depth = k * c_in;
            let mut wt = vec![0f32; c_out.div_ceil(direct::MR) * depth * direct::MR];
            for o in 0..c_out {
                let (tile, r) = (o / direct::MR, o % direct::MR);
                for i in 0..c_in {
                    for t in 0..k {
                        wt[(tile * depth + t * c_in + i) * direct::MR + r] =
                            w[(o * c_in + i) * k + t];
                    }
                }
            }
            wt
        } else {
            let mut wt = vec![0f32; k * c_out * c_in];
            for o in 0..c_out {
                for i in 0..c_in {
                    for t in 0..k {
                        wt[(o * k + t) * c_in + i] = w[(o * c_in + i) * k + t];
                    }
                }
            }
            wt
        };
        let span = (k - 1) * dilation;
        Self {
            c_out,
            c_in,
            k,
            dilation,
            pad_l: span / 2,
            w: Frozen::new(wt),
            bias: bias.unwrap_or_else(|| vec![0.0; c_out]),
            direct,
            offs: (0..k).map(|t| t * dilation).collect(),
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
        if self.direct {
            let n = self.c_out * l;
            let mut y = Vec::<f32>::with_capacity(n);
            self.forward_direct(x, l, act, residual, SendPtr(y.as_mut_ptr()), false);
            // SAFETY: forward_direct wrote every element.
            unsafe { y.set_len(n) };
            return y;
        }
        // Not zeroed: every element is written by `init_rows` before the product adds to it
        // (zeroing and first-touch page faults of the fresh buffer cost about 8% of the
        // decoder's time).
        let n = self.c_out * l;
        let mut y = Vec::<f32>::with_capacity(n);
        let depth = self.k * self.c_in;
        let threads = rayon::current_num_threads().max(1);
        if threads > 1
            && l <= MIN_COLS
            && self.c_out >= 2 * MIN_ROWS
            && self.c_out * depth * l >= MIN_ROW_SPLIT_MACS
        {
            self.forward_rows(x, l, act, residual, SendPtr(y.as_mut_ptr()), threads);
            // SAFETY: forward_rows wrote all c_out * l elements.
            unsafe { y.set_len(n) };
            return y;
        }
        // About 256 KiB of gathered input per block, a multiple of 16 columns.
        let block = ((65_536 / depth.max(1)) / 16 * 16).clamp(16, 1024);
        let dst = SendPtr(y.as_mut_ptr());
        par_columns(l, |l0, l1| {
            let mut col = vec![0f32; depth * block.min(l1 - l0)];
            let mut b0 = l0;
            while b0 < l1 {
                let bw = block.min(l1 - b0);
                self.gather(x, l, act, b0, bw, &mut col[..depth * bw]);
                // SAFETY: columns b0..b0 + bw of every row belong to this part alone.
                unsafe { self.init_rows(dst, l, b0, bw, 0, self.c_out, residual) };
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
        // SAFETY: the parts cover columns 0..l, and init_rows wrote every row of each block.
        unsafe { y.set_len(n) };
        y
    }

    /// [`Conv1d::forward`] on the direct kernel: each block of columns is copied once into a
    /// zero-padded slab with the activation applied (`C_in` rows, not `K * C_in` as gathered),
    /// and the kernel reads every tap's window from it in place; bias and residual are added
    /// as the tiles are stored.
    ///
    /// Writes `dst` `[C_out, l]` (uninitialized unless `accumulate`, which adds to it).
    fn forward_direct(
        &self,
        x: &[f32],
        l: usize,
        act: Act,
        residual: Option<&[f32]>,
        dst: SendPtr,
        accumulate: bool,
    ) {
        let (pl, pr) = self.reach();
        let conv = direct::Weights {
            w: &self.w,
            depth: self.k * self.c_in,
            c_in: self.c_in,
            offs: &self.offs,
            bias: &self.bias,
            rows: self.c_out,
        };
        let res = residual.map(|r| SendPtr(r.as_ptr().cast_mut()));
        let tiles = self.c_out.div_ceil(direct::MR);
        let threads = rayon::current_num_threads().max(1);
        if threads > 1
            && tiles >= 2 * threads
            && self.c_out * conv.depth * l >= MIN_ROW_SPLIT_MACS
            && (l <= MIN_COLS
                || self.c_in * direct::slab_width(l, pl + pr) <= DIRECT_ROW_SPLIT_SLAB)
        {
            // Too short to split by columns, or short enough for one cache-sized slab: the
            // output tiles split over the threads (even parts, one shared slab).
            let rs = direct::slab_width(l, pl + pr);
            let mut slab = vec![0f32; self.c_in * rs];
            direct::fill_slab(x, l, self.c_in, act, -(pl as isize), rs, &mut slab);
            let parts = threads.min(tiles);
            let per = tiles.div_ceil(parts);
            let (slab, conv) = (&slab, &conv);
            let work = move |t0: usize, t1: usize| {
                // SAFETY: tiles t0..t1 cover output rows of this part alone; the slab is
                // [c_in, rs] with rs >= round_up(l, 16) + span; dst and residual are
                // [c_out, l].
                unsafe {
                    direct::block(
                        conv,
                        slab,
                        rs,
                        l,
                        t0..t1,
                        dst.get(),
                        l,
                        res.map(|r| (r.get().cast_const(), l)),
                        accumulate,
                    );
                }
            };
            let work = &work;
            rayon::scope(|s| {
                for p in 1..parts {
                    let (t0, t1) = ((p * per).min(tiles), ((p + 1) * per).min(tiles));
                    if t0 < t1 {
                        s.spawn(move |_| work(t0, t1));
                    }
                }
                work(0, per.min(tiles));
            });
        } else {
            // About 256 KiB of slab per block, a multiple of the kernel's columns.
            let block =
                ((65_536 / self.c_in.max(1)) / direct::NC * direct::NC).clamp(direct::NC, 4096);
            let conv = &conv;
            par_columns_by(l, direct::LANES, |l0, l1| {
                let cap = block.min(l1 - l0);
                let mut slab = vec![0f32; self.c_in * direct::slab_width(cap, pl + pr)];
                let mut b0 = l0;
                while b0 < l1 {
                    let bw = block.min(l1 - b0);
                    let rs = direct::slab_width(bw, pl + pr);
                    let slab = &mut slab[..self.c_in * rs];
                    #[allow(clippy::cast_possible_wrap)]
                    let start = b0 as isize - pl as isize;
                    direct::fill_slab(x, l, self.c_in, act, start, rs, slab);
                    // SAFETY: columns b0..b0 + bw of every row belong to this part alone; the
                    // slab is [c_in, rs] as the kernel needs; dst and residual are [c_out, l].
                    unsafe {
                        direct::block(
                            conv,
                            slab,
                            rs,
                            bw,
                            0..tiles,
                            dst.get().add(b0),
                            l,
                            res.map(|r| (r.get().cast_const().add(b0), l)),
                            accumulate,
                        );
                    }
                    b0 += bw;
                }
            });
        }
    }

    /// [`Conv1d::forward`] into `out` (cleared; its allocation reused when large enough:
    /// fresh multi-megabyte buffers cost a page fault per 4 KiB).
    pub fn forward_to(
        &self,
        x: &[f32],
        l: usize,
        act: Act,
        residual: Option<&[f32]>,
        out: &mut Vec<f32>,
    ) {
        if !self.direct {
            *out = self.forward(x, l, act, residual);
            return;
        }
        let n = self.c_out * l;
        out.clear();
        if out.capacity() < n {
            *out = Vec::with_capacity(n);
        }
        self.forward_direct(x, l, act, residual, SendPtr(out.as_mut_ptr()), false);
        // SAFETY: forward_direct wrote every element.
        unsafe { out.set_len(n) };
    }

    /// `acc += residual + bias + conv(act(x))` for `x` `[C_in, l]` and `acc` `[C_out, l]`.
    pub fn forward_acc(
        &self,
        x: &[f32],
        l: usize,
        act: Act,
        residual: Option<&[f32]>,
        acc: &mut [f32],
    ) {
        assert_eq!(acc.len(), self.c_out * l);
        if self.direct {
            self.forward_direct(x, l, act, residual, SendPtr(acc.as_mut_ptr()), true);
        } else {
            let y = self.forward(x, l, act, residual);
            acc.iter_mut().zip(&y).for_each(|(a, &v)| *a += v);
        }
    }

    /// [`Conv1d::forward`] for short inputs (a sentence's phonemes, a streamed window's
    /// first layers), too narrow to split by columns: the input is gathered once, and the
    /// threads split the output channels.
    fn forward_rows(
        &self,
        x: &[f32],
        l: usize,
        act: Act,
        residual: Option<&[f32]>,
        dst: SendPtr,
        threads: usize,
    ) {
        let depth = self.k * self.c_in;
        let mut col = vec![0f32; depth * l];
        self.gather(x, l, act, 0, l, &mut col);
        let parts = threads.min(self.c_out / MIN_ROWS).max(1);
        // Parts of whole 16-row tiles.
        let per = self.c_out.div_ceil(parts).div_ceil(16) * 16;
        let col = &col;
        let work = |o0: usize, o1: usize| {
            // SAFETY: rows o0..o1 of dst belong to this part alone; the weights' rows o0..o1
            // are [o1 - o0, depth] at o0 * depth, col is [depth, l].
            unsafe {
                self.init_rows(dst, l, 0, l, o0, o1, residual);
                gemm_acc(
                    o1 - o0,
                    l,
                    depth,
                    dst.get().add(o0 * l),
                    l,
                    self.w.as_ptr().add(o0 * depth),
                    depth,
                    1,
                    col.as_ptr(),
                    l,
                );
            }
        };
        let work = &work;
        rayon::scope(|s| {
            for p in 1..parts {
                let (o0, o1) = ((p * per).min(self.c_out), ((p + 1) * per).min(self.c_out));
                if o0 < o1 {
                    s.spawn(move |_| work(o0, o1));
                }
            }
            work(0, per.min(self.c_out));
        });
    }

    /// Gathers `col[(t * c_in + i) * bw + j] = act(x[i, b0 + j + t * d - pad_l])` (zero
    /// outside the input) for the `bw` columns from `b0`.
    fn gather(&self, x: &[f32], l: usize, act: Act, b0: usize, bw: usize, col: &mut [f32]) {
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
                act.copy(src, seg);
            }
        }
    }

    /// Sets columns `b0..b0 + bw` of output rows `o0..o1` to the bias plus the residual
    /// (the buffer may be uninitialized before).
    ///
    /// # Safety
    /// `dst` is `[c_out, l]` (allocated, maybe uninitialized), and those columns of those
    /// rows are the caller's alone.
    #[allow(clippy::too_many_arguments)]
    unsafe fn init_rows(
        &self,
        dst: SendPtr,
        l: usize,
        b0: usize,
        bw: usize,
        o0: usize,
        o1: usize,
        residual: Option<&[f32]>,
    ) {
        for o in o0..o1 {
            // SAFETY: as the caller promises.
            let row = unsafe {
                std::slice::from_raw_parts_mut(
                    dst.get().add(o * l + b0).cast::<MaybeUninit<f32>>(),
                    bw,
                )
            };
            let bias = self.bias[o];
            match residual {
                Some(r) => {
                    for (d, &rv) in row.iter_mut().zip(&r[o * l + b0..o * l + b0 + bw]) {
                        d.write(rv + bias);
                    }
                }
                None => row.iter_mut().for_each(|d| {
                    d.write(bias);
                }),
            }
        }
    }
}

/// A 1-D transposed convolution (`ConvTranspose1d`, dilation 1).
///
/// Computed by phases: output `n` with `n + pad = q * stride + r` (`0 <= r < stride`) is
/// `sum_m sum_i w[i, o, r + m * stride] * x[i, q - m]`, an ordinary convolution of the input
/// with `ceil(K / stride)` taps for each phase `r`. All phases share one gathered input, so
/// a block of input columns is one product `[stride * C_out, taps * C_in] x [taps * C_in, B]`
/// whose rows are then interleaved into the output: no `[C_out * K, L]` intermediate and no
/// scatter-add.
#[derive(Debug, Clone)]
pub(crate) struct ConvTranspose1d {
    pub c_in: usize,
    pub c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// Taps per phase, `ceil(K / stride)`.
    taps: usize,
    /// `[stride][C_out][taps][C_in]`: row `r * C_out + o`, column `m * C_in + i` is
    /// `w[i, o, r + m * stride]` (0 past the kernel). On the direct path the same rows in
    /// tiles, `[ceil(stride * C_out / MR)][taps][C_in][MR]`.
    w: Frozen<f32>,
    bias: Vec<f32>,
    /// Whether the direct kernel runs the product (see [`direct::available`]).
    direct: bool,
    /// The bias of each product row `r * C_out + o` (the direct path).
    bias_rows: Vec<f32>,
    /// Tap `m` reads the slab `taps - 1 - m` columns further (the direct path).
    offs: Vec<usize>,
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
        let direct = direct::suits(stride.max(1) * c_out);
        Self::with_path(w, c_in, c_out, k, bias, stride, pad, direct)
    }

    /// [`ConvTranspose1d::new`], on the direct path if `direct` and the CPU has it.
    #[allow(clippy::too_many_arguments)]
    fn with_path(
        w: Vec<f32>,
        c_in: usize,
        c_out: usize,
        k: usize,
        bias: Vec<f32>,
        stride: usize,
        pad: usize,
        direct: bool,
    ) -> Self {
        let stride = stride.max(1);
        let taps = k.div_ceil(stride);
        let depth = taps * c_in;
        let mut wp = vec![0f32; stride * c_out * depth];
        let rows = stride * c_out;
        for r in 0..stride {
            for o in 0..c_out {
                for m in 0..taps {
                    let t = r + m * stride;
                    if t >= k {
                        continue;
                    }
                    for i in 0..c_in {
                        wp[(r * c_out + o) * depth + m * c_in + i] = w[(i * c_out + o) * k + t];
                    }
                }
            }
        }
        let direct = direct && direct::available();
        if direct {
            let mut wt = vec![0f32; rows.div_ceil(direct::MR) * depth * direct::MR];
            for row in 0..rows {
                let (tile, r) = (row / direct::MR, row % direct::MR);
                for d in 0..depth {
                    wt[(tile * depth + d) * direct::MR + r] = wp[row * depth + d];
                }
            }
            wp = wt;
        }
        Self {
            c_in,
            c_out,
            k,
            stride,
            pad,
            taps,
            w: Frozen::new(wp),
            bias_rows: (0..rows).map(|r| bias[r % c_out]).collect(),
            bias,
            direct,
            offs: (0..taps).map(|m| taps - 1 - m).collect(),
        }
    }

    /// Kernel size, stride and padding (trimmed from each end).
    pub fn geometry(&self) -> (usize, usize, usize) {
        (self.k, self.stride, self.pad)
    }

    /// The gathered path's product for the block of phase columns `b0..b0 + bw`: `tmp`
    /// `[rows, bw]` gets the bias plus the product.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        x: &[f32],
        l: usize,
        act: Act,
        b0: usize,
        bw: usize,
        col: &mut [f32],
        tmp: &mut [f32],
    ) {
        let (c_in, c_out) = (self.c_in, self.c_out);
        let depth = self.taps * c_in;
        let rows = self.stride * c_out;
        // col[(m * c_in + i) * bw + j] = act(x[i, b0 + j - m]), 0 outside.
        for m in 0..self.taps {
            for i in 0..c_in {
                let row = &mut col[(m * c_in + i) * bw..(m * c_in + i + 1) * bw];
                let src = &x[i * l..(i + 1) * l];
                // Valid j: 0 <= b0 + j - m < l.
                let j_lo = m.saturating_sub(b0).min(bw);
                let j_hi = (l + m).saturating_sub(b0).min(bw).max(j_lo);
                row[..j_lo].fill(0.0);
                row[j_hi..].fill(0.0);
                if j_lo == j_hi {
                    continue;
                }
                let from = b0 + j_lo - m;
                let seg = &mut row[j_lo..j_hi];
                let src = &src[from..from + seg.len()];
                act.copy(src, seg);
            }
        }
        let tmp = &mut tmp[..rows * bw];
        for (rr, row) in tmp.chunks_exact_mut(bw).enumerate() {
            row.fill(self.bias[rr % c_out]);
        }
        // SAFETY: tmp is [rows, bw], the weights [rows, depth], col [depth, bw], all
        // contiguous and distinct.
        unsafe {
            gemm_acc(
                rows,
                bw,
                depth,
                tmp.as_mut_ptr(),
                bw,
                self.w.as_ptr(),
                depth,
                1,
                col.as_ptr(),
                bw,
            );
        }
    }

    /// Output length for input length `l`.
    pub fn out_len(&self, l: usize) -> usize {
        ((l.saturating_sub(1)) * self.stride + self.k).saturating_sub(2 * self.pad)
    }

    /// `bias + convtranspose(act(x))` for `x` `[C_in, l]`; returns `[C_out, out_len(l)]`.
    pub fn forward(&self, x: &[f32], l: usize, act: Act) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.c_in * l);
        let lo = self.out_len(l);
        // Not zeroed: the blocks write every output once (see the interleave).
        let n = self.c_out * lo;
        let mut y = Vec::<f32>::with_capacity(n);
        if lo == 0 {
            return y;
        }
        let (s, p, c_in, c_out) = (self.stride, self.pad, self.c_in, self.c_out);
        let depth = self.taps * c_in;
        let rows = s * c_out;
        // Phase columns q: n = q * s + r - p for 0 <= n < lo.
        let nq = (lo - 1 + p) / s + 1;
        // About 256 KiB of gathered input and of product per block, 16-column multiples.
        let block = ((65_536 / depth.max(rows).max(1)) / 16 * 16).clamp(16, 1024);
        let dst = SendPtr(y.as_mut_ptr());
        let conv = direct::Weights {
            w: &self.w,
            depth,
            c_in,
            offs: &self.offs,
            bias: &self.bias_rows,
            rows,
        };
        let conv = &conv;
        let align = if self.direct { direct::LANES } else { 1 };
        // The direct path: blocks of whole NC-column tiles, about 512 KiB of product (its slab
        // is C_in rows, not taps * C_in).
        let block = if self.direct {
            ((131_072 / rows.max(c_in).max(1)) / direct::NC * direct::NC).clamp(direct::NC, 1008)
        } else {
            block
        };
        par_columns_by(nq, align, |q0, q1| {
            let cap = block.min(q1 - q0);
            let span = self.taps - 1;
            let mut col = vec![
                0f32;
                if self.direct {
                    c_in * direct::slab_width(cap, span)
                } else {
                    depth * cap
                }
            ];
            let mut tmp = vec![0f32; rows * cap];
            let mut b0 = q0;
            while b0 < q1 {
                let bw = block.min(q1 - b0);
                let tmp = &mut tmp[..rows * bw];
                if self.direct {
                    let rs = direct::slab_width(bw, span);
                    let slab = &mut col[..c_in * rs];
                    #[allow(clippy::cast_possible_wrap)]
                    let start = b0 as isize - span as isize;
                    direct::fill_slab(x, l, c_in, act, start, rs, slab);
                    // SAFETY: tmp is [rows, bw], the slab [c_in, rs] as the kernel needs.
                    unsafe {
                        direct::block(
                            conv,
                            slab,
                            rs,
                            bw,
                            0..rows.div_ceil(direct::MR),
                            tmp.as_mut_ptr(),
                            bw,
                            None,
                            false,
                        );
                    }
                } else {
                    self.product(x, l, act, b0, bw, &mut col[..depth * bw], tmp);
                }
                // Interleave the phases: y[o, q * s + r - p] = tmp[r * c_out + o, q - b0].
                // Outputs n with (n + p) / s in b0..b0 + bw are this block's alone.
                let n_lo = (b0 * s).saturating_sub(p);
                let n_hi = ((b0 + bw) * s).saturating_sub(p).min(lo);
                // Phase r's column j goes to n = (b0 + j) * s + r - p, kept if n_lo <= n < n_hi
                // (no division per element).
                for o in 0..c_out {
                    // SAFETY: row o's outputs n_lo..n_hi belong to this block alone.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst.get().add(o * lo + n_lo).cast::<MaybeUninit<f32>>(),
                            n_hi - n_lo,
                        )
                    };
                    for r in 0..s {
                        let src = &tmp[(r * c_out + o) * bw..(r * c_out + o + 1) * bw];
                        let first = b0 * s + r; // n + p at j = 0
                        let j_lo = if first >= p {
                            0
                        } else {
                            (p - first).div_ceil(s)
                        };
                        let j_hi = (n_hi + p)
                            .saturating_sub(r)
                            .div_ceil(s)
                            .saturating_sub(b0)
                            .min(bw);
                        for j in j_lo..j_hi {
                            out[(b0 + j) * s + r - p - n_lo].write(src[j]);
                        }
                    }
                }
                b0 += bw;
            }
        });
        // SAFETY: the blocks' output ranges [max(0, b0 * s - p), min(lo, (b0 + bw) * s - p))
        // follow each other from 0, and the last block (q up to nq - 1) reaches lo, since
        // nq * s - p >= lo.
        unsafe { y.set_len(n) };
        y
    }
}

/// The direct convolution kernel: output tiles of `MR` channels by up to `NC` columns,
/// accumulated in registers over every tap and input channel, reading the taps' shifted
/// windows straight from a zero-padded copy of the input (the slab) and broadcasting the
/// weights. No gathered `[K * C_in, B]` matrix, no packing, and the bias and residual are
/// added as the tile is stored. Each output column is summed in the same order wherever it
/// lies in a block, so decoding in chunks stays bit-identical to decoding whole.
///
/// AVX-512 only for now; elsewhere (NEON, AVX2) the convolutions keep the gathered gemm path.
mod direct {
    use std::ops::Range;

    use super::Act;

    /// Output channels per tile.
    pub(super) const MR: usize = 8;
    /// Columns per tile (three 16-lane vectors).
    pub(super) const NC: usize = 48;
    /// Columns per vector; the slab's widths are multiples of it.
    pub(super) const LANES: usize = 16;

    /// Whether this CPU runs the kernel: AVX-512 F, unless `SOTAD_MAX_ISA` caps it
    /// ([`crate::cpu`]).
    pub(super) fn available() -> bool {
        crate::cpu::avx512_allowed()
    }

    /// Whether a convolution with `rows` outputs should take the direct path: fewer rows
    /// than a tile would be mostly zero padding (Piper's last layer has one).
    pub(super) fn suits(rows: usize) -> bool {
        rows >= MR
    }

    /// A convolution's operands for [`block`] (read only by the x86-64 kernel).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) struct Weights<'a> {
        /// `[ceil(rows / MR)][depth][MR]`.
        pub w: &'a [f32],
        /// `taps * c_in`.
        pub depth: usize,
        pub c_in: usize,
        /// Per tap, the slab column offset of its window.
        pub offs: &'a [usize],
        /// Per output row.
        pub bias: &'a [f32],
        pub rows: usize,
    }

    /// Row stride of a slab for `cols` output columns and `span` extra input columns.
    pub(super) fn slab_width(cols: usize, span: usize) -> usize {
        cols.div_ceil(LANES) * LANES + span
    }

    /// `slab[i * rs + c] = act(x[i, start + c])`, 0 outside `0..l`, for `c < rs`.
    pub(super) fn fill_slab(
        x: &[f32],
        l: usize,
        c_in: usize,
        act: Act,
        start: isize,
        rs: usize,
        slab: &mut [f32],
    ) {
        // Valid c: 0 <= start + c < l.
        let c_lo = usize::try_from(-start).unwrap_or(0).min(rs);
        let c_hi = usize::try_from(l as isize - start)
            .unwrap_or(0)
            .min(rs)
            .max(c_lo);
        for (i, row) in slab.chunks_exact_mut(rs).take(c_in).enumerate() {
            row[..c_lo].fill(0.0);
            row[c_hi..].fill(0.0);
            if c_lo < c_hi {
                let from = (start + c_lo as isize) as usize;
                act.copy(
                    &x[i * l + from..i * l + from + (c_hi - c_lo)],
                    &mut row[c_lo..c_hi],
                );
            }
        }
    }

    /// Output rows of tiles `tiles`, columns `0..cols`: `dst[o * dst_rs + j] = bias[o] +
    /// residual[o * res_rs + j] + sum_{t, i} w[o, t, i] * slab[i * rs + offs[t] + j]`, or
    /// `+=` that if `accumulate`.
    ///
    /// # Safety
    /// The slab is `[c_in, rs]` with `rs >= slab_width(cols, max(offs))`; `dst` (and the
    /// residual) cover those rows and columns, and the rows' columns are the caller's alone.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        conv: &Weights<'_>,
        slab: &[f32],
        rs: usize,
        cols: usize,
        tiles: Range<usize>,
        dst: *mut f32,
        dst_rs: usize,
        res: Option<(*const f32, usize)>,
        accumulate: bool,
    ) {
        debug_assert!(slab.len() >= conv.c_in * rs);
        debug_assert!(rs >= slab_width(cols, conv.offs.iter().copied().max().unwrap_or(0)));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller; `Weights` is only built where `available()`.
        unsafe {
            avx512::block(
                conv,
                slab.as_ptr(),
                rs,
                cols,
                tiles,
                dst,
                dst_rs,
                res,
                accumulate,
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (conv, rs, cols, tiles, dst, dst_rs, res, accumulate);
            unreachable!("the direct kernel is only chosen where available() holds");
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use std::arch::x86_64::*;
        use std::ops::Range;

        use super::{LANES, MR, NC, Weights};

        /// See [`super::block`].
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn block(
            conv: &Weights<'_>,
            slab: *const f32,
            rs: usize,
            cols: usize,
            tiles: Range<usize>,
            dst: *mut f32,
            dst_rs: usize,
            res: Option<(*const f32, usize)>,
            accumulate: bool,
        ) {
            for tile in tiles {
                let o0 = tile * MR;
                let rows = MR.min(conv.rows - o0);
                // SAFETY: the tile's weights are [depth][MR] at tile * depth * MR.
                let w = unsafe { conv.w.as_ptr().add(tile * conv.depth * MR) };
                let bias = &conv.bias[o0..o0 + rows];
                let mut j = 0;
                while j < cols {
                    let n = (cols - j).min(NC);
                    // SAFETY: columns j..j + n of the tile's rows, within the caller's ranges;
                    // the slab reads stay below round_up(cols, 16) + max(offs) <= rs.
                    unsafe {
                        let out = dst.add(o0 * dst_rs + j);
                        let r = res.map(|(p, s)| (p.add(o0 * s + j), s));
                        let x = slab.add(j);
                        match n.div_ceil(LANES) {
                            3 => tile_n::<3>(w, x, rs, conv, out, dst_rs, r, bias, n, accumulate),
                            2 => tile_n::<2>(w, x, rs, conv, out, dst_rs, r, bias, n, accumulate),
                            _ => tile_n::<1>(w, x, rs, conv, out, dst_rs, r, bias, n, accumulate),
                        }
                    }
                    j += n;
                }
            }
        }

        /// One tile of `bias.len()` rows and `n <= V * 16` columns.
        #[allow(clippy::too_many_arguments)]
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn tile_n<const V: usize>(
            w: *const f32,
            x: *const f32,
            rs: usize,
            conv: &Weights<'_>,
            dst: *mut f32,
            dst_rs: usize,
            res: Option<(*const f32, usize)>,
            bias: &[f32],
            n: usize,
            accumulate: bool,
        ) {
            let mut acc = [[_mm512_setzero_ps(); V]; MR];
            let c_in = conv.c_in;
            for (t, &off) in conv.offs.iter().enumerate() {
                // SAFETY: row i of the slab at column off + j.. is inside it (see block); the
                // tap's weights are [c_in][MR] at t * c_in * MR.
                unsafe {
                    let mut xp = x.add(off);
                    let mut wp = w.add(t * c_in * MR);
                    for _ in 0..c_in {
                        let mut xv = [_mm512_setzero_ps(); V];
                        for (v, xv) in xv.iter_mut().enumerate() {
                            *xv = _mm512_loadu_ps(xp.add(v * LANES));
                        }
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let b = _mm512_set1_ps(*wp.add(r));
                            for (a, &xv) in acc.iter_mut().zip(&xv) {
                                *a = _mm512_fmadd_ps(b, xv, *a);
                            }
                        }
                        xp = xp.add(rs);
                        wp = wp.add(MR);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(bias.len()) {
                let b = _mm512_set1_ps(bias[r]);
                for (v, &a) in acc.iter().enumerate() {
                    let m = n.saturating_sub(v * LANES).min(LANES);
                    if m == 0 {
                        break;
                    }
                    #[allow(clippy::cast_possible_truncation)]
                    let mask: __mmask16 = ((1u32 << m) - 1) as u16;
                    let mut val = _mm512_add_ps(a, b);
                    // SAFETY: row r's columns v * 16.. + m are inside dst and the residual.
                    unsafe {
                        if let Some((p, s)) = res {
                            val = _mm512_add_ps(
                                val,
                                _mm512_maskz_loadu_ps(mask, p.add(r * s + v * LANES)),
                            );
                        }
                        let d = dst.add(r * dst_rs + v * LANES);
                        if accumulate {
                            val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, d));
                        }
                        _mm512_mask_storeu_ps(d, mask, val);
                    }
                }
            }
        }
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
            // Short and wide: split by output channels on 2 threads.
            (80, 64, 3, 1, 70),
            // Several blocks of columns per part.
            (16, 128, 3, 2, 1300),
        ] {
            let w: Vec<f32> = (0..c_out * c_in * k).map(|_| r()).collect();
            let b: Vec<f32> = (0..c_out).map(|_| r()).collect();
            let x: Vec<f32> = (0..c_in * l).map(|_| r()).collect();
            let res: Vec<f32> = (0..c_out * l).map(|_| r()).collect();
            let mut want = naive_conv(&w, &b, &x, c_out, c_in, k, l, d);
            for (v, &rv) in want.iter_mut().zip(&res) {
                *v += rv;
            }
            // Both paths: the direct kernel (where the CPU has it) and the gathered gemm.
            for direct in [true, false] {
                let conv = Conv1d::with_path(&w, c_out, c_in, k, Some(b.clone()), d, direct);
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let y = pool.install(|| conv.forward(&x, l, Act::Leaky(0.1), Some(&res)));
                    assert_eq!(y.len(), want.len());
                    for (a, b) in y.iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 1e-4,
                            "{c_out} {c_in} {k} {d} {l} direct {direct}: {a} vs {b}"
                        );
                    }
                    // Added onto a buffer: res + (res + conv).
                    let mut acc = res.clone();
                    pool.install(|| {
                        conv.forward_acc(&x, l, Act::Leaky(0.1), Some(&res), &mut acc);
                    });
                    for ((a, b), &rv) in acc.iter().zip(&want).zip(&res) {
                        assert!(
                            (a - (b + rv)).abs() < 1e-4,
                            "{c_out} {c_in} {k} {d} {l} acc"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn conv_transpose_matches_the_definition() {
        // Piper's geometries (k = s + 2p), an uneven one, and a long input that crosses
        // blocks and parts.
        for (c_in, c_out, k, s, p, l) in [
            (3, 2, 16, 8, 4, 7),
            (3, 2, 8, 4, 2, 1),
            (2, 3, 5, 2, 1, 9),
            (3, 2, 16, 8, 4, 2500),
        ] {
            let w: Vec<f32> = (0..c_in * c_out * k)
                .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let b: Vec<f32> = (0..c_out).map(|o| 0.5 - 0.75 * o as f32).collect();
            let x: Vec<f32> = (0..c_in * l)
                .map(|i| ((i * 5) % 11) as f32 * 0.2 - 1.0)
                .collect();
            let ct = ConvTranspose1d::new(w.clone(), c_in, c_out, k, b.clone(), s, p);
            let lo = ct.out_len(l);
            assert_eq!(lo, ((l - 1) * s + k) - 2 * p);
            let mut want = vec![0f32; c_out * lo];
            for o in 0..c_out {
                for v in &mut want[o * lo..(o + 1) * lo] {
                    *v = b[o];
                }
                for i in 0..c_in {
                    for j in 0..l {
                        let xv = x[i * l + j];
                        let xv = if xv >= 0.0 { xv } else { 0.1 * xv };
                        for t in 0..k {
                            let pos = j * s + t;
                            if pos >= p && pos - p < lo {
                                want[o * lo + pos - p] += xv * w[(i * c_out + o) * k + t];
                            }
                        }
                    }
                }
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            // Both paths: the direct kernel (where the CPU has it) and the gathered gemm.
            for direct in [true, false] {
                let ct =
                    ConvTranspose1d::with_path(w.clone(), c_in, c_out, k, b.clone(), s, p, direct);
                let y = pool.install(|| ct.forward(&x, l, Act::Leaky(0.1)));
                assert_eq!(y.len(), want.len());
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{k} {s} {p} {l} direct {direct}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
