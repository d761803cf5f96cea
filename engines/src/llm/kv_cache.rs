//! The KV cache: every layer's keys and values, rounded to f16 as llama.cpp's f16 cache
//! stores them.

use super::config::Config;
use super::ggml_math::round_f16;

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

    /// Stores the keys `k` (`[token][kv_head][hd]`) and values `v` (`[token][kv_head][hdv]`)
    /// of the tokens at positions `pos0..` in layer `layer`, rounded to f16.
    pub(super) fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (nkv, hd, hdv) = (self.n_kv, self.hd, self.hdv);
        let (kv_dim, v_dim) = (nkv * hd, nkv * hdv);
        let n = k.len() / kv_dim;
        assert!(k.len() == n * kv_dim && v.len() == n * v_dim);
        for i in 0..n {
            let p = pos0 + i;
            for hk in 0..nkv {
                let kb = self.k_base(layer, hk) + p * hd;
                let src = &k[i * kv_dim + hk * hd..i * kv_dim + (hk + 1) * hd];
                self.k[kb..kb + hd]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, &x)| *o = round_f16(x));
                let vb = self.v_base(layer, hk) + p * hdv;
                let src = &v[i * v_dim + hk * hdv..i * v_dim + (hk + 1) * hdv];
                self.v[vb..vb + hdv]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, &x)| *o = round_f16(x));
            }
        }
    }

    /// The keys of kv head `head` in layer `layer` at positions `0..n_pos`, `[position][hd]`.
    pub(super) fn keys(&self, layer: usize, head: usize, n_pos: usize) -> &[f32] {
        let b = self.k_base(layer, head);
        &self.k[b..b + n_pos * self.hd]
    }

    /// The values of kv head `head` in layer `layer` at positions `0..n_pos`, `[position][hdv]`.
    pub(super) fn values(&self, layer: usize, head: usize, n_pos: usize) -> &[f32] {
        let b = self.v_base(layer, head);
        &self.v[b..b + n_pos * self.hdv]
    }
}
