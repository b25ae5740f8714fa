//! Token sampling: greedy, temperature, top-k, top-p, with a per-request seeded
//! generator (xoshiro256**, so a seed gives the same tokens on every platform and
//! every version of this crate — no dependency on an RNG crate's stream).
//!
//! Invariants: temperature 0 is exactly argmax (lowest id on ties); the sampled
//! token is always one that survived the top-k/top-p filters; the candidate set
//! is never empty.

/// Bounds on sampling parameters (validated by `SamplingParams::validate`).
pub const TOP_K_MAX: usize = 1 << 16;
pub const TEMPERATURE_MAX: f32 = 100.0;
pub const STOP_STRINGS_MAX: usize = 16;
pub const STOP_STRING_BYTES_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// None: derived from the engine seed and the request id.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these (not included).
    pub stop: Vec<String>,
    /// Token ids that end generation (in addition to EOS unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            max_tokens: 128,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { max_tokens, ..Default::default() }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=TEMPERATURE_MAX).contains(&self.temperature) {
            return Err(format!("temperature {} not in 0..={TEMPERATURE_MAX}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p {} not in (0, 1]", self.top_p));
        }
        if self.top_k > TOP_K_MAX {
            return Err(format!("top_k {} over {TOP_K_MAX}", self.top_k));
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        if self.stop.len() > STOP_STRINGS_MAX
            || self.stop.iter().any(|s| s.is_empty() || s.len() > STOP_STRING_BYTES_MAX)
        {
            return Err(format!("at most {STOP_STRINGS_MAX} non-empty stop strings of {STOP_STRING_BYTES_MAX} bytes"));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Sample one token. `scratch` is reused between calls.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut Rng, scratch: &mut Vec<(f32, u32)>) -> u32 {
    if p.temperature <= 0.0 || logits.len() <= 1 {
        return argmax(logits);
    }
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
    // Higher logit first; ties by lower id so that results are deterministic.
    let cmp = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if p.top_k > 0 && p.top_k < scratch.len() {
        scratch.select_nth_unstable_by(p.top_k - 1, cmp);
        scratch.truncate(p.top_k);
    }
    scratch.sort_unstable_by(cmp);
    let inv_t = 1.0 / p.temperature as f64;
    let mx = scratch[0].0 as f64;
    let mut total = 0.0;
    let probs: Vec<f64> = scratch
        .iter()
        .map(|&(l, _)| {
            let e = ((l as f64 - mx) * inv_t).exp();
            total += e;
            e
        })
        .collect();
    // Top-p: smallest prefix whose mass reaches top_p (at least one token).
    let mut keep = probs.len();
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, pr) in probs.iter().enumerate() {
            acc += pr / total;
            if acc >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let mass: f64 = probs[..keep].iter().sum();
    let mut u = rng.next_f64() * mass;
    for (i, pr) in probs[..keep].iter().enumerate() {
        u -= pr;
        if u < 0.0 {
            return scratch[i].1;
        }
    }
    scratch[keep - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_with_lowest_tie() {
        let mut r = Rng::new(1);
        let mut s = Vec::new();
        assert_eq!(sample(&[1.0, 3.0, 3.0, 0.0], &SamplingParams::greedy(1), &mut r, &mut s), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_is_deterministic() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32).collect();
        let p = SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() };
        let mut s = Vec::new();
        assert_eq!(sample(&logits, &p, &mut Rng::new(5), &mut s), argmax(&logits));
        let p = SamplingParams { temperature: 0.8, top_k: 20, top_p: 0.9, ..Default::default() };
        let a: Vec<u32> = {
            let mut r = Rng::new(42);
            (0..50).map(|_| sample(&logits, &p, &mut r, &mut s)).collect()
        };
        let b: Vec<u32> = {
            let mut r = Rng::new(42);
            (0..50).map(|_| sample(&logits, &p, &mut r, &mut s)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| logits[t as usize] >= 9.0), "only high logits survive top-p 0.9");
    }

    #[test]
    fn top_p_keeps_the_head_of_the_distribution() {
        // One token has ~all the mass: top_p 0.5 must always pick it.
        let mut logits = vec![0.0f32; 50];
        logits[17] = 20.0;
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, ..Default::default() };
        let mut r = Rng::new(9);
        let mut s = Vec::new();
        assert!((0..100).all(|_| sample(&logits, &p, &mut r, &mut s) == 17));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let p = SamplingParams { temperature: 1.0, ..Default::default() };
        let mut r = Rng::new(3);
        let mut s = Vec::new();
        let ones = (0..10_000).filter(|_| sample(&logits, &p, &mut r, &mut s) == 1).count();
        assert!((7300..7700).contains(&ones), "{ones}");
    }
}
