//! [`QMatrix`], a validated view of a quantized weight matrix, and the multi-threaded
//! matrix-vector ([`matvec`]) and matrix-matrix ([`matmul`]) products.

use super::{
    Kernel, QuantError, QuantErrorKind, activation_type, dot_n, dot_rows, dot_tile, layout,
    matmul_rows, tiles_rows,
};
use crate::error::Result;
use crate::gguf::{GgmlType, TensorView};

/// Work (weight bytes × activation rows) below which [`QMatrix::matvec`] and
/// [`QMatrix::matmul`] do not start another thread: they use
/// `min(n_threads, rows, max(1, work / MIN_BYTES_PER_THREAD))` threads. Threads are started
/// per call (`std::thread::scope`); starting and joining one costs tens of microseconds (see
/// the `quant` benchmark), as long as streaming a few hundred kilobytes. The `*_with`
/// variants use exactly the number of threads asked for (at most `rows`).
pub const MIN_BYTES_PER_THREAD: usize = 256 * 1024;

/// Activation rows processed together against each weight block.
const TILE: usize = 4;

/// Weight rows processed together by the kernels that tile rows ([`tiles_rows`]).
const ROW_TILE: usize = 4;

/// Writes the tile `v` (`v[k][j]` = weight row `r0 + k`, input row `t + j`) into `outs`.
fn store<const N: usize>(outs: &mut [&mut [f32]], t: usize, r0: usize, v: &[[f32; N]]) {
    for (k, v) in v.iter().enumerate() {
        for (j, &v) in v.iter().enumerate() {
            outs[t + j][r0 + k] = v;
        }
    }
}

/// A quantized weight matrix of `rows` × `cols` in ggml's block layout, borrowed (typically
/// from a memory-mapped GGUF file). Row `r` is bytes `r·row_bytes .. (r+1)·row_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    blocks: usize,
    bytes: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Validates and wraps `bytes` as a `rows` × `cols` matrix of `ty`: `ty` must be one of
    /// the [`WEIGHT_TYPES`](super::WEIGHT_TYPES), `cols` a non-zero multiple of its block
    /// size, and `bytes.len()` exactly `rows` × the row size.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: &'a [u8]) -> Result<Self> {
        Self::validate(ty, rows, cols, bytes)
            .map_err(|kind| QuantError { tensor: None, kind }.into())
    }

    /// A matrix view of a tensor's mapped bytes: `cols` is its first (innermost) dimension,
    /// `rows` the product of the others. Errors name the tensor.
    pub fn from_tensor(t: &'a TensorView) -> Result<Self> {
        let err = |kind| -> crate::Error {
            QuantError {
                tensor: Some(t.name().to_owned()),
                kind,
            }
            .into()
        };
        let too_large = || {
            err(QuantErrorKind::TooLarge {
                ty: t.ggml_type(),
                rows: usize::MAX,
                cols: usize::MAX,
            })
        };
        let rows = usize::try_from(t.rows()).map_err(|_| too_large())?;
        let cols = usize::try_from(t.cols()).map_err(|_| too_large())?;
        Self::validate(t.ggml_type(), rows, cols, t.bytes()).map_err(err)
    }

    fn validate(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
    ) -> Result<Self, QuantErrorKind> {
        if activation_type(ty).is_none() {
            return Err(QuantErrorKind::UnsupportedType {
                ty,
                role: "weights",
            });
        }
        let (block, block_bytes) = layout::block_shape(ty);
        if cols == 0 {
            return Err(QuantErrorKind::EmptyRows { ty });
        }
        if cols % block != 0 {
            return Err(QuantErrorKind::PartialBlock {
                ty,
                cols,
                block_size: block,
            });
        }
        let blocks = cols / block;
        let row_bytes = blocks * block_bytes;
        let expected = rows
            .checked_mul(row_bytes)
            .ok_or(QuantErrorKind::TooLarge { ty, rows, cols })?;
        if bytes.len() != expected {
            return Err(QuantErrorKind::WrongLength {
                what: format!("{ty} matrix of {rows} x {cols}"),
                expected,
                found: bytes.len(),
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            blocks,
            bytes,
        })
    }

    /// The weight type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Number of rows (output length).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input length).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Row `r`'s bytes.
    ///
    /// # Panics
    ///
    /// If `r >= rows`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The activation format the input must be in (see the module docs).
    pub fn activation_type(&self) -> GgmlType {
        activation_type(self.ty).unwrap_or(GgmlType::Q8_0)
    }

    /// Bytes of one input row in [`Self::activation_type`].
    pub fn activation_row_bytes(&self) -> usize {
        let (_, bytes) = layout::block_shape(self.activation_type());
        self.blocks * bytes
    }

    /// Quantizes one or more input rows (`x.len()` a multiple of `cols`) to
    /// [`Self::activation_type`].
    pub fn quantize_activation(&self, x: &[f32]) -> Result<Vec<u8>> {
        if x.len() % self.cols != 0 {
            return Err(QuantErrorKind::WrongLength {
                what: format!("input rows of {} elements", self.cols),
                expected: x.len().div_ceil(self.cols) * self.cols,
                found: x.len(),
            }
            .into());
        }
        super::quantize_activation(self.activation_type(), x)
    }

    /// `out = W · x` for one quantized input row `x` (`activation_row_bytes` bytes), with at
    /// most `n_threads` threads (fewer for small matrices, see [`MIN_BYTES_PER_THREAD`]) and
    /// the fastest kernel.
    pub fn matvec(&self, x: &[u8], out: &mut [f32], n_threads: usize) -> Result<()> {
        let n_threads = self.auto_threads(1, n_threads);
        self.matvec_with(Kernel::best(), x, out, n_threads)
    }

    /// As [`Self::matvec`], with a chosen kernel and exactly `min(n_threads, rows)` threads.
    ///
    /// # Panics
    ///
    /// If `kernel` is not available on this CPU.
    pub fn matvec_with(
        &self,
        kernel: Kernel,
        x: &[u8],
        out: &mut [f32],
        n_threads: usize,
    ) -> Result<()> {
        if x.len() != self.activation_row_bytes() {
            return Err(QuantErrorKind::WrongLength {
                what: format!("{} input row", self.activation_type()),
                expected: self.activation_row_bytes(),
                found: x.len(),
            }
            .into());
        }
        self.matmul_with(kernel, x, out, n_threads)
    }

    /// `out[t] = W · x[t]` for `n` quantized input rows concatenated in `xs`
    /// (`n · activation_row_bytes` bytes); `out` is `n` rows of `rows` values, token-major.
    /// Each weight block is unpacked once per group of four input rows. Uses at most
    /// `n_threads` threads (see [`MIN_BYTES_PER_THREAD`]) and the fastest kernel.
    pub fn matmul(&self, xs: &[u8], out: &mut [f32], n_threads: usize) -> Result<()> {
        let n_tok = xs.len() / self.activation_row_bytes();
        let n_threads = self.auto_threads(n_tok, n_threads);
        self.matmul_with(Kernel::best(), xs, out, n_threads)
    }

    /// The thread count for `n_tok` input rows: `n_threads`, reduced for small work.
    fn auto_threads(&self, n_tok: usize, n_threads: usize) -> usize {
        let work = self.bytes.len().saturating_mul(n_tok);
        n_threads.min((work / MIN_BYTES_PER_THREAD).max(1))
    }

    /// As [`Self::matmul`], with a chosen kernel and exactly `min(n_threads, rows)` threads.
    ///
    /// # Panics
    ///
    /// If `kernel` is not available on this CPU.
    pub fn matmul_with(
        &self,
        kernel: Kernel,
        xs: &[u8],
        out: &mut [f32],
        n_threads: usize,
    ) -> Result<()> {
        assert!(
            kernel.is_available(),
            "the {kernel} kernels are not available on this CPU"
        );
        let act_row = self.activation_row_bytes();
        if xs.len() % act_row != 0 {
            return Err(QuantErrorKind::PartialRow {
                ty: self.activation_type(),
                len: xs.len(),
                row_bytes: act_row,
            }
            .into());
        }
        let n_tok = xs.len() / act_row;
        if out.len() != n_tok * self.rows {
            return Err(QuantErrorKind::WrongLength {
                what: format!(
                    "output for {n_tok} input rows of a {}-row matrix",
                    self.rows
                ),
                expected: n_tok * self.rows,
                found: out.len(),
            }
            .into());
        }
        if n_tok == 0 || self.rows == 0 {
            return Ok(());
        }

        let many: Vec<&[u8]>;
        let x_rows: &[&[u8]] = if n_tok == 1 {
            std::slice::from_ref(&xs)
        } else {
            many = xs.chunks_exact(act_row).collect();
            &many
        };

        let threads = n_threads.clamp(1, self.rows);
        if threads == 1 {
            if n_tok == 1 {
                self.compute_rows(kernel, 0, x_rows, std::slice::from_mut(&mut &mut *out));
            } else {
                let mut outs: Vec<&mut [f32]> = out.chunks_exact_mut(self.rows).collect();
                self.compute_rows(kernel, 0, x_rows, &mut outs);
            }
            return Ok(());
        }

        // Contiguous row ranges, one per thread; each thread gets its range of every
        // output row. With a row-tiling kernel the ranges are whole tiles (but the last), so
        // which rows are tiled does not depend on the thread count (for `NeonI8mm`, whose
        // tiles round differently from its one-row products, neither do the results).
        let mut chunk = self.rows.div_ceil(threads);
        if n_tok > 1 && tiles_rows(kernel) {
            chunk = chunk.next_multiple_of(ROW_TILE);
        }
        let threads = self.rows.div_ceil(chunk);
        let mut parts: Vec<Vec<&mut [f32]>> =
            (0..threads).map(|_| Vec::with_capacity(n_tok)).collect();
        for tok in out.chunks_exact_mut(self.rows) {
            for (part, piece) in parts.iter_mut().zip(tok.chunks_mut(chunk)) {
                part.push(piece);
            }
        }
        std::thread::scope(|s| {
            let mut parts = parts.into_iter().enumerate();
            let first = parts.next();
            for (k, mut outs) in parts {
                s.spawn(move || self.compute_rows(kernel, k * chunk, x_rows, &mut outs));
            }
            // The calling thread takes the first range.
            if let Some((_, mut outs)) = first {
                self.compute_rows(kernel, 0, x_rows, &mut outs);
            }
        });
        Ok(())
    }

    /// Rows `first .. first + outs[t].len()` of `W · xs[t]`, written to `outs[t]`.
    fn compute_rows(&self, kernel: Kernel, first: usize, xs: &[&[u8]], outs: &mut [&mut [f32]]) {
        let n = outs.first().map_or(0, |o| o.len());
        let (ty, nb) = (self.ty, self.blocks);
        if xs.len() == 1 {
            let w = &self.bytes[first * self.row_bytes..(first + n) * self.row_bytes];
            dot_rows(kernel, ty, nb, w, xs[0], &mut outs[0][..]);
            return;
        }
        let w = &self.bytes[first * self.row_bytes..(first + n) * self.row_bytes];
        if matmul_rows(kernel, ty, nb, w, xs, outs) {
            return;
        }
        let row = |r: usize| &self.bytes[(first + r) * self.row_bytes..][..self.row_bytes];
        let mut r0 = 0;
        if tiles_rows(kernel) {
            // Tiles of ROW_TILE weight rows × TILE input rows.
            while r0 + ROW_TILE <= n {
                let ws: [&[u8]; ROW_TILE] = std::array::from_fn(|k| row(r0 + k));
                let mut t = 0;
                while t + TILE <= xs.len() {
                    let v = dot_tile(kernel, ty, nb, ws, [xs[t], xs[t + 1], xs[t + 2], xs[t + 3]]);
                    store(outs, t, r0, &v);
                    t += TILE;
                }
                match xs.len() - t {
                    3 => {
                        let v = dot_tile(kernel, ty, nb, ws, [xs[t], xs[t + 1], xs[t + 2]]);
                        store(outs, t, r0, &v);
                    }
                    2 => {
                        let v = dot_tile(kernel, ty, nb, ws, [xs[t], xs[t + 1]]);
                        store(outs, t, r0, &v);
                    }
                    1 => {
                        let v = dot_tile(kernel, ty, nb, ws, [xs[t]]);
                        store(outs, t, r0, &v);
                    }
                    _ => {}
                }
                r0 += ROW_TILE;
            }
        }
        for r in r0..n {
            let w = row(r);
            let mut t = 0;
            while t + TILE <= xs.len() {
                let v = dot_n(kernel, ty, nb, w, [xs[t], xs[t + 1], xs[t + 2], xs[t + 3]]);
                for (k, v) in v.into_iter().enumerate() {
                    outs[t + k][r] = v;
                }
                t += TILE;
            }
            let v: &[f32] = match xs.len() - t {
                3 => &dot_n(kernel, ty, nb, w, [xs[t], xs[t + 1], xs[t + 2]]),
                2 => &dot_n(kernel, ty, nb, w, [xs[t], xs[t + 1]]),
                1 => &dot_n(kernel, ty, nb, w, [xs[t]]),
                _ => &[],
            };
            for (k, &v) in v.iter().enumerate() {
                outs[t + k][r] = v;
            }
        }
    }
}

/// `out = W · x` for a `rows` × `cols` matrix `weights` of type `ty` and one input row `x` in
/// its activation format; see [`QMatrix::matvec`].
pub fn matvec(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[u8],
    out: &mut [f32],
    n_threads: usize,
) -> Result<()> {
    QMatrix::new(ty, rows, cols, weights)?.matvec(x, out, n_threads)
}

/// `out[t] = W · x[t]` for several input rows; see [`QMatrix::matmul`].
pub fn matmul(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    xs: &[u8],
    out: &mut [f32],
    n_threads: usize,
) -> Result<()> {
    QMatrix::new(ty, rows, cols, weights)?.matmul(xs, out, n_threads)
}
