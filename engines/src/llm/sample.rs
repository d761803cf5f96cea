//! Token sampling: repetition penalty, then greedy (temperature 0) or top-k, top-p, min-p
//! and temperature followed by a seeded draw.

/// Chooses the next token from logits; owns its random state and work buffer.
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    repeat_last_n: usize,
    state: u64,
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for these settings; `seed` makes draws reproducible.
    pub fn new(
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        repeat_last_n: usize,
        seed: u64,
    ) -> Self {
        Sampler {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
            cand: Vec::new(),
        }
    }

    fn next_f32(&mut self) -> f32 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The index of the largest logit (the first one on ties).
    pub fn argmax(logits: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    }

    /// Picks a token. `history` is the tokens so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let penalize = self.repeat_penalty != 1.0 && self.repeat_last_n > 0;
        let recent = &history[history.len().saturating_sub(self.repeat_last_n)..];
        let penalized = |id: u32, v: f32, p: f32| {
            if recent.contains(&id) {
                if v > 0.0 { v / p } else { v * p }
            } else {
                v
            }
        };
        if self.temperature <= 0.0 || self.top_k == 1 {
            if !penalize {
                return Self::argmax(logits);
            }
            let mut best = (0u32, f32::NEG_INFINITY);
            for (i, &v) in logits.iter().enumerate() {
                let v = penalized(i as u32, v, self.repeat_penalty);
                if v > best.1 {
                    best = (i as u32, v);
                }
            }
            return best.0;
        }
        let p = self.repeat_penalty;
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &v)| {
            let v = if penalize {
                penalized(i as u32, v, p)
            } else {
                v
            };
            (i as u32, v)
        }));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.top_k > 0 && self.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(self.top_k - 1, by_logit);
            self.cand.truncate(self.top_k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Softmax at temperature 1 for top-p / min-p, as llama.cpp filters before scaling.
        let max = self.cand[0].1;
        let mut probs: Vec<f32> = self.cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        let mut keep = self.cand.len();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.min_p > 0.0 {
            let floor = probs[0] * self.min_p;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        self.cand.truncate(keep);
        // Temperature, then draw.
        let t = self.temperature;
        let mut w: Vec<f32> = self.cand.iter().map(|c| ((c.1 - max) / t).exp()).collect();
        let total: f32 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= total);
        let r = self.next_f32();
        let mut acc = 0.0;
        for (c, &p) in self.cand.iter().zip(&w) {
            acc += p;
            if r < acc {
                return c.0;
            }
        }
        self.cand.last().map_or(0, |c| c.0)
    }
}
