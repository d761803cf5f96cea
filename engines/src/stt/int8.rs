//! Int8 matrix products for the encoder's linear layers (opt-in: `LoadOptions::encoder_int8`,
//! `stt.encoder_precision = "int8"`), the scheme of CTranslate2's int8 compute type: one scale
//! per output (weight row), one per activation row, every dot product of a whole row summed
//! exactly in `i32`, one multiplication by the two scales at the end.
//!
//! - Weights: `q = round(w / s)` with `s = max |w| / 63` per output, so `|q| ≤ 63` (7 bits).
//!   That bound is what lets AVX2's `vpmaddubsw` (unsigned 8-bit × signed 8-bit, pairs summed
//!   with *saturation* into 16 bits) never saturate: `2 · 255 · 63 = 32130 < 32767`.
//! - Activations: `q = round(x / s)` with `s = max |x| / 127` per row (8 bits). The x86
//!   kernels need them unsigned, so they get `q + 128` and take `128 · Σ q_w` back off.
//! - Every kernel (scalar, AVX2, AVX-512 VNNI, NEON) computes the same exact integer sums,
//!   and the scaling is one shared scalar epilogue, so all give bit-identical results.
//!
//! Weights are packed in panels of [`NR`] outputs: for each group of four inputs, the four
//! weights of output 0, then of output 1, … (64 bytes a group), the order `vpdpbusd` and
//! `vpmaddubsw`+`vpmaddwd` consume (four bytes per 32-bit lane).

use std::sync::OnceLock;

/// Outputs per weight panel.
pub(crate) const NR: usize = 16;

/// Largest magnitude of a quantized weight (7 bits, see the module doc).
const W_MAX: f32 = 63.0;

/// A `k × n` weight matrix (inputs × outputs) in int8 panels.
pub(crate) struct I8Matrix {
    /// `n_pad / NR` panels of `k4 / 4` groups of `NR × 4` bytes.
    packed: Vec<i8>,
    /// Per output: the weight scale.
    scale: Vec<f32>,
    /// Per output: `128 · Σ_k q`, taken off the x86 kernels' sums.
    shift: Vec<i32>,
    /// Inputs.
    pub k: usize,
    /// Inputs rounded up to 4 (zero weights in the padding).
    k4: usize,
    /// Outputs.
    pub n: usize,
}

impl I8Matrix {
    /// Quantizes `w`, `k × n` row-major (the encoder's `[in, out]` layout).
    pub(crate) fn from_kn(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "I8Matrix: shape");
        let k4 = k.next_multiple_of(4);
        let n_pad = n.next_multiple_of(NR);
        let mut scale = vec![0.0f32; n];
        for row in w.chunks_exact(n) {
            for (s, &v) in scale.iter_mut().zip(row) {
                *s = s.max(v.abs());
            }
        }
        let inv: Vec<f32> = scale
            .iter_mut()
            .map(|s| {
                *s /= W_MAX;
                if *s > 0.0 { 1.0 / *s } else { 0.0 }
            })
            .collect();
        let mut packed = vec![0i8; n_pad * k4];
        let mut shift = vec![0i32; n];
        for (kk, row) in w.chunks_exact(n).enumerate() {
            let (g, t) = (kk / 4, kk % 4);
            for (o, (&v, &iv)) in row.iter().zip(&inv).enumerate() {
                let q = (v * iv).round_ties_even().clamp(-W_MAX, W_MAX) as i8;
                let (p, j) = (o / NR, o % NR);
                packed[((p * (k4 / 4) + g) * NR + j) * 4 + t] = q;
                shift[o] += 128 * i32::from(q);
            }
        }
        Self {
            packed,
            scale,
            shift,
            k,
            k4,
            n,
        }
    }

    /// Bytes of one quantized activation row.
    pub(crate) fn row_bytes(&self) -> usize {
        self.k4
    }
}

/// The kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// The fastest this CPU may run (`SOTAD_MAX_ISA` honoured), chosen once.
    pub(crate) fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::available()
                .into_iter()
                .last()
                .unwrap_or(Kernel::Scalar)
        })
    }

    /// The kernels this CPU can run, the reference first.
    pub(crate) fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut v = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
            if crate::cpu::avx512_allowed()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vnni")
            {
                v.push(Kernel::Avx512Vnni);
            }
        }
        #[cfg(target_arch = "aarch64")]
        v.push(Kernel::Neon);
        v
    }

    /// Whether the kernel reads activations as `q + 128` (unsigned).
    fn unsigned(self) -> bool {
        match self {
            Kernel::Scalar => false,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512Vnni => true,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => false,
        }
    }

    /// Rows of a tile.
    fn rows(self) -> usize {
        match self {
            Kernel::Scalar => 4,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 4,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => 8,
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => 2,
        }
    }
}

/// Quantizes `rows` activation rows (row `r` at `x[r · stride ..][.. k]`) for `kernel`: the
/// bytes into `q` (`rows × k4`, padding zero), the scales into `s`.
pub(crate) fn quantize_rows(
    kernel: Kernel,
    x: &[f32],
    stride: usize,
    rows: usize,
    w: &I8Matrix,
    q: &mut [u8],
    s: &mut [f32],
) {
    let (k, k4) = (w.k, w.k4);
    let flip = if kernel.unsigned() { 0x80u8 } else { 0 };
    for r in 0..rows {
        let xr = &x[r * stride..r * stride + k];
        let amax = xr.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        s[r] = d;
        let qr = &mut q[r * k4..(r + 1) * k4];
        for (o, &v) in qr.iter_mut().zip(xr) {
            *o = ((v * inv).round_ties_even().clamp(-127.0, 127.0) as i8 as u8) ^ flip;
        }
        qr[k..].fill(flip);
    }
}

/// `out[r · n + o] = [out +] s[r] · w.scale[o] · Σ_k x_q[r][k] · w_q[k][o]` for `rows` rows
/// quantized by [`quantize_rows`] with the same `kernel`.
pub(crate) fn product(
    kernel: Kernel,
    q: &[u8],
    s: &[f32],
    rows: usize,
    w: &I8Matrix,
    out: &mut [f32],
    accumulate: bool,
) {
    let (k4, n) = (w.k4, w.n);
    assert!(q.len() >= rows * k4 && s.len() >= rows && out.len() >= rows * n);
    let groups = k4 / 4;
    let mr = kernel.rows();
    let mut tile = [[0i32; NR]; 8];
    for p in 0..n.div_ceil(NR) {
        let panel = &w.packed[p * groups * NR * 4..(p + 1) * groups * NR * 4];
        let o0 = p * NR;
        let cols = NR.min(n - o0);
        let mut r0 = 0;
        while r0 < rows {
            let m = mr.min(rows - r0);
            let xs = &q[r0 * k4..(r0 + m) * k4];
            run(kernel, xs, k4, m, panel, groups, &mut tile);
            for (i, t) in tile.iter().enumerate().take(m) {
                let r = r0 + i;
                let orow = &mut out[r * n + o0..r * n + o0 + cols];
                for (j, o) in orow.iter_mut().enumerate() {
                    let mut acc = t[j];
                    if kernel.unsigned() {
                        acc -= w.shift[o0 + j];
                    }
                    let v = acc as f32 * (s[r] * w.scale[o0 + j]);
                    if accumulate {
                        *o += v;
                    } else {
                        *o = v;
                    }
                }
            }
            r0 += m;
        }
    }
}

/// One tile: `tile[i][j] = Σ_g Σ_t x[i][4g + t] · panel[g][j][t]` for `m ≤ kernel.rows()`
/// activation rows of `k4` bytes.
fn run(
    kernel: Kernel,
    x: &[u8],
    k4: usize,
    m: usize,
    panel: &[i8],
    groups: usize,
    tile: &mut [[i32; NR]; 8],
) {
    debug_assert!(x.len() >= m * k4 && panel.len() >= groups * NR * 4);
    match kernel {
        Kernel::Scalar => scalar(x, k4, m, panel, groups, tile),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kernel was chosen by run-time detection; the lengths are checked above.
        Kernel::Avx2 => unsafe { x86::avx2(x.as_ptr(), k4, m, panel.as_ptr(), groups, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kernel::Avx512Vnni => unsafe { x86::vnni(x.as_ptr(), k4, m, panel.as_ptr(), groups, tile) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is baseline on aarch64; the lengths are checked above.
        Kernel::Neon => unsafe { arm::neon(x.as_ptr(), k4, m, panel.as_ptr(), groups, tile) },
    }
}

fn scalar(x: &[u8], k4: usize, m: usize, panel: &[i8], groups: usize, tile: &mut [[i32; NR]; 8]) {
    for (i, t) in tile.iter_mut().enumerate().take(m) {
        *t = [0; NR];
        let xr = &x[i * k4..(i + 1) * k4];
        for g in 0..groups {
            let wg = &panel[g * NR * 4..(g + 1) * NR * 4];
            let xg = &xr[g * 4..g * 4 + 4];
            for (j, acc) in t.iter_mut().enumerate() {
                *acc += xg
                    .iter()
                    .zip(&wg[j * 4..j * 4 + 4])
                    .map(|(&a, &b)| i32::from(a as i8) * i32::from(b))
                    .sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NR;
    use std::arch::x86_64::*;

    /// AVX2: rows × 16 outputs as two 8-lane `i32` accumulators per row;
    /// `vpmaddubsw` (u8 × i8 pairs → i16, no saturation for |w| ≤ 63), `vpmaddwd` by ones
    /// (→ i32), add.
    ///
    /// # Safety
    /// AVX2; `x` holds `m` rows of `k4` bytes, `w` `groups × 64` bytes, `m ≤ 8`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(
        x: *const u8,
        k4: usize,
        m: usize,
        w: *const i8,
        groups: usize,
        tile: &mut [[i32; NR]; 8],
    ) {
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(4);
            // SAFETY: forwarded; rows r0 .. r0 + rows are inside `x`.
            unsafe {
                match rows {
                    4 => avx2_rows::<4>(x.add(r0 * k4), k4, w, groups, &mut tile[r0..]),
                    3 => avx2_rows::<3>(x.add(r0 * k4), k4, w, groups, &mut tile[r0..]),
                    2 => avx2_rows::<2>(x.add(r0 * k4), k4, w, groups, &mut tile[r0..]),
                    _ => avx2_rows::<1>(x.add(r0 * k4), k4, w, groups, &mut tile[r0..]),
                }
            }
            r0 += rows;
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_rows<const R: usize>(
        x: *const u8,
        k4: usize,
        w: *const i8,
        groups: usize,
        tile: &mut [[i32; NR]],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..groups {
            // SAFETY: group g of the panel is 64 bytes at w + 64 g; row r's group g is four
            // bytes at x + r k4 + 4 g (the caller's bounds).
            unsafe {
                let w0 = _mm256_loadu_si256(w.add(g * 64) as *const __m256i);
                let w1 = _mm256_loadu_si256(w.add(g * 64 + 32) as *const __m256i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xb =
                        _mm256_set1_epi32((x.add(r * k4 + g * 4) as *const i32).read_unaligned());
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w0), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w1), ones);
                    a[0] = _mm256_add_epi32(a[0], p0);
                    a[1] = _mm256_add_epi32(a[1], p1);
                }
            }
        }
        for (a, t) in acc.iter().zip(tile.iter_mut()) {
            // SAFETY: `t` is 16 i32, two unaligned 8-lane stores.
            unsafe {
                _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, a[0]);
                _mm256_storeu_si256(t.as_mut_ptr().add(8) as *mut __m256i, a[1]);
            }
        }
    }

    /// AVX-512 VNNI: rows × 16 outputs, one 16-lane `vpdpbusd` accumulator per row (exact:
    /// the four u8 × i8 products are summed in 32 bits).
    ///
    /// # Safety
    /// AVX-512 F and VNNI; as [`avx2`].
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn vnni(
        x: *const u8,
        k4: usize,
        m: usize,
        w: *const i8,
        groups: usize,
        tile: &mut [[i32; NR]; 8],
    ) {
        // SAFETY: forwarded.
        unsafe {
            match m {
                8 => vnni_rows::<8>(x, k4, w, groups, tile),
                7 => vnni_rows::<7>(x, k4, w, groups, tile),
                6 => vnni_rows::<6>(x, k4, w, groups, tile),
                5 => vnni_rows::<5>(x, k4, w, groups, tile),
                4 => vnni_rows::<4>(x, k4, w, groups, tile),
                3 => vnni_rows::<3>(x, k4, w, groups, tile),
                2 => vnni_rows::<2>(x, k4, w, groups, tile),
                _ => vnni_rows::<1>(x, k4, w, groups, tile),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_rows<const R: usize>(
        x: *const u8,
        k4: usize,
        w: *const i8,
        groups: usize,
        tile: &mut [[i32; NR]; 8],
    ) {
        let mut acc = [_mm512_setzero_si512(); R];
        for g in 0..groups {
            // SAFETY: as in `avx2_rows`.
            unsafe {
                let wv = _mm512_loadu_si512(w.add(g * 64) as *const _);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xb =
                        _mm512_set1_epi32((x.add(r * k4 + g * 4) as *const i32).read_unaligned());
                    *a = _mm512_dpbusd_epi32(*a, xb, wv);
                }
            }
        }
        for (a, t) in acc.iter().zip(tile.iter_mut()) {
            // SAFETY: `t` is 16 i32.
            unsafe { _mm512_storeu_si512(t.as_mut_ptr() as *mut _, *a) };
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::NR;
    use std::arch::aarch64::*;

    /// Baseline NEON: per row, eight `i32x4` accumulators, accumulator `j` holding outputs
    /// `2j` (lanes 0, 1) and `2j + 1` (lanes 2, 3) as two partial sums each: `vmull_s8` of
    /// the row's four bytes (twice) by the eight bytes of two outputs, pairs added into 32
    /// bits by `vpadalq_s16` (|x · w| ≤ 127 · 63, no 16-bit overflow); `vpaddq_s32` folds
    /// the partial sums at the end.
    ///
    /// # Safety
    /// As the x86 kernels (`m ≤ 8`; rows of signed bytes).
    pub(super) unsafe fn neon(
        x: *const u8,
        k4: usize,
        m: usize,
        w: *const i8,
        groups: usize,
        tile: &mut [[i32; NR]; 8],
    ) {
        for (r, t) in tile.iter_mut().enumerate().take(m) {
            // SAFETY: row r is inside `x`, the panel has `groups × 64` bytes.
            unsafe {
                let mut acc = [vdupq_n_s32(0); 8];
                let xr = x.add(r * k4) as *const i8;
                for g in 0..groups {
                    let four = (xr.add(g * 4) as *const i32).read_unaligned();
                    let xv = vreinterpret_s8_s32(vdup_n_s32(four));
                    let wg = w.add(g * 64);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wv = vld1_s8(wg.add(j * 8));
                        *a = vpadalq_s16(*a, vmull_s8(xv, wv));
                    }
                }
                for j in 0..4 {
                    let lo = vpaddq_s32(acc[2 * j], acc[2 * j + 1]);
                    vst1q_s32(t.as_mut_ptr().add(4 * j), lo);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU has gives the scalar reference's sums bit for bit, on shapes
    /// with a partial group, a partial panel and every tile height; and the product is
    /// close to the `f32` one.
    #[test]
    fn kernels_agree_and_approximate_f32() {
        let (k, n) = (38, 21);
        let wf: Vec<f32> = (0..k * n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let w = I8Matrix::from_kn(&wf, k, n);
        for m in [1, 3, 9] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let mut want = vec![0.5f32; m * n];
            for r in 0..m {
                for o in 0..n {
                    want[r * n + o] += (0..k).map(|i| x[r * k + i] * wf[i * n + o]).sum::<f32>();
                }
            }
            let mut first: Option<Vec<f32>> = None;
            for kernel in Kernel::available() {
                let mut q = vec![0u8; m * w.row_bytes()];
                let mut s = vec![0.0f32; m];
                quantize_rows(kernel, &x, k, m, &w, &mut q, &mut s);
                let mut out = vec![0.5f32; m * n];
                product(kernel, &q, &s, m, &w, &mut out, true);
                for r in 0..m {
                    let xr = &x[r * k..(r + 1) * k];
                    let xmax = xr.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    for o in 0..n {
                        // Rounding bounds: |δw| ≤ max|w_o| / 126, |δx| ≤ max|x_r| / 254.
                        let wmax = (0..k).fold(0.0f32, |a, i| a.max(wf[i * n + o].abs()));
                        let bound: f32 = (0..k)
                            .map(|i| {
                                (xr[i].abs() * wmax / 126.0 + wf[i * n + o].abs() * xmax / 254.0)
                                    * 1.01
                                    + wmax * xmax / 126.0 / 254.0
                            })
                            .sum();
                        let (g, e) = (out[r * n + o], want[r * n + o]);
                        assert!(
                            (g - e).abs() <= bound + 1e-4,
                            "{kernel:?} m={m} ({r}, {o}): {g} against {e}, bound {bound}"
                        );
                    }
                }
                match &first {
                    None => first = Some(out),
                    Some(f) => assert_eq!(f, &out, "{kernel:?} m={m} differs from scalar"),
                }
            }
        }
    }
}
