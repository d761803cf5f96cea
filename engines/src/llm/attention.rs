//! Attention over the KV cache, one pool task per query head: the scores, ggml's softmax and
//! the weighted sum of the values, in the summation orders llama.cpp uses (ggml's f16 dot
//! product for one token, llamafile's tiled f16 GEMM for a batch). On x86 a batch runs the
//! AVX2 loops of [`attn_x86`], blocks of four queries at a time, with the same bits.

use super::ggml_math::{axpy, dot_f16_ggml, dot_gemm8, hsum8, reduce32, round_f16, softmax_exp};
use super::kv_cache::KvCache;
use super::pool::Pool;
use crate::par::SendPtr;

/// Per query head: softmax scores, the f16-rounded query, lane accumulators.
pub(super) type HeadScratch = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Queries per block in the batch loops (the scratch of a head holds this many queries and
/// rows of scores).
pub(super) const QUERY_BLOCK: usize = attn_x86::QB;

/// One layer's attention for a batch of `n` tokens at positions `pos0..`, whose keys and
/// values are already in the cache.
pub(super) struct Attention<'a> {
    /// The roped queries, `[token][head][hd]` (not yet scaled).
    pub q: &'a [f32],
    pub kv: &'a KvCache,
    pub layer: usize,
    pub pos0: usize,
    pub n: usize,
    pub n_head: usize,
    /// Query heads per key/value head.
    pub group: usize,
    pub hd: usize,
    pub hdv: usize,
    /// Gemma scales the queries before the product (`q_scale`); the others scale the scores
    /// (`kq_scale`).
    pub q_scale: f32,
    pub kq_scale: f32,
    /// Whether the layer attends to a sliding window of `window` positions only.
    pub local: bool,
    pub window: usize,
}

impl Attention<'_> {
    /// Writes every head's output into its columns of `att` (`[token][head][hdv]`), one pool
    /// task per head, each with its own `heads[h]`.
    pub(super) fn run(&self, heads: &mut [HeadScratch], att: &mut [f32], pool: &mut Pool) {
        assert!(heads.len() >= self.n_head && att.len() == self.n * self.n_head * self.hdv);
        let aptr = SendPtr(att.as_mut_ptr());
        let hptr = SendPtr(heads.as_mut_ptr());
        let (hdv, o_in) = (self.hdv, self.n_head * self.hdv);
        let simd8 = attn_x86::available() && self.hd % 8 == 0 && hdv % 8 == 0;
        pool.run(self.n_head, &|h| {
            // SAFETY: task `h` alone uses `heads[h]` and writes head `h`'s columns of `att`.
            let scratch = unsafe { &mut *hptr.at(h) };
            // The output row of token `i` for this head.
            let out_row = |i: usize| {
                // SAFETY: head `h`'s columns of token `i` are written by this task alone.
                unsafe { std::slice::from_raw_parts_mut(aptr.at(i * o_in + h * hdv), hdv) }
            };
            if self.n != 1 && simd8 {
                self.head_blocks(h, scratch, out_row);
            } else {
                self.head_plain(h, scratch, out_row);
            }
        });
    }

    /// The first position a query at position `p` attends to.
    fn first_of(&self, p: usize) -> usize {
        if self.local {
            (p + 1).saturating_sub(self.window)
        } else {
            0
        }
    }

    /// Head `h`'s keys and values of positions `0..pos0 + n`.
    fn keys_values(&self, h: usize) -> (&[f32], &[f32]) {
        let (hk, n_pos) = (h / self.group, self.pos0 + self.n);
        (
            self.kv.keys(self.layer, hk, n_pos),
            self.kv.values(self.layer, hk, n_pos),
        )
    }

    /// The query of token `i` for head `h`, scaled and rounded to f16 as llama.cpp's graph
    /// does.
    fn load_query(&self, h: usize, i: usize, out: &mut [f32]) {
        let (hd, q_dim) = (self.hd, self.n_head * self.hd);
        let qs = &self.q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
        for (o, &x) in out.iter_mut().zip(qs) {
            *o = round_f16(x * self.q_scale);
        }
    }

    /// A batch with AVX2 (`hd` and `hdv` multiples of 8): the order of llama.cpp's tiled f16
    /// GEMM, blocks of [`attn_x86::QB`] queries.
    fn head_blocks<'o>(
        &self,
        h: usize,
        (scores, qh, _): &mut HeadScratch,
        out_row: impl Fn(usize) -> &'o mut [f32],
    ) {
        let (n, pos0, hd) = (self.n, self.pos0, self.hd);
        let n_pos = pos0 + n;
        let (kf, vf) = self.keys_values(h);
        let mut i0 = 0;
        while i0 < n {
            let qn = if n - i0 >= attn_x86::QB {
                attn_x86::QB
            } else {
                1
            };
            let (lo, hi) = (self.first_of(pos0 + i0), pos0 + i0 + qn);
            for (t, row) in qh.chunks_exact_mut(hd).take(qn).enumerate() {
                self.load_query(h, i0 + t, row);
            }
            // SAFETY: AVX2 and FMA were detected (`simd8` in `run`); `hd` and `hdv` are
            // multiples of 8; the functions check every length.
            unsafe {
                if qn == attn_x86::QB {
                    attn_x86::scores::<{ attn_x86::QB }>(&qh[..qn * hd], kf, lo, hi, scores, n_pos);
                } else {
                    attn_x86::scores::<1>(&qh[..hd], kf, lo, hi, scores, n_pos);
                }
            }
            for t in 0..qn {
                let p = pos0 + i0 + t;
                let first = self.first_of(p);
                let row = &mut scores[t * n_pos..(t + 1) * n_pos];
                row[..first].fill(f32::NEG_INFINITY);
                let mut max = f32::NEG_INFINITY;
                for sc in &mut row[first..=p] {
                    *sc *= self.kq_scale;
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
                    attn_x86::weighted_values::<{ attn_x86::QB }>(scores, n_pos, lo, hi, vf, outs);
                } else {
                    attn_x86::weighted_values::<1>(scores, n_pos, lo, hi, vf, [out_row(i0)]);
                }
            }
            i0 += qn;
        }
    }

    /// One token (decode), or no AVX2: the same orders in plain code, one query at a time.
    fn head_plain<'o>(
        &self,
        h: usize,
        (scores, qh, acc): &mut HeadScratch,
        out_row: impl Fn(usize) -> &'o mut [f32],
    ) {
        let (hd, hdv) = (self.hd, self.hdv);
        let decode = self.n == 1;
        let (kf, vf) = self.keys_values(h);
        let lanes = if decode { 32 } else { 8 };
        for i in 0..self.n {
            let p = self.pos0 + i;
            let first = self.first_of(p);
            self.load_query(h, i, &mut qh[..hd]);
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
                *sc = d * self.kq_scale;
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
    }
}

/// The batch (8-lane) attention loops with AVX2 intrinsics: the same operations per output, in
/// the same order, as [`dot_gemm8`] and the lane accumulation in [`Attention::head_plain`], but for a block
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
    /// in `j` order with fused multiply-adds, and the lanes added as [`hsum8`](super::hsum8) does.
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

    /// The eight lane accumulators added per column as [`hsum8`](super::hsum8) adds lanes.
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

    /// Horizontal sum in the order of [`hsum8`](super::hsum8).
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
}
