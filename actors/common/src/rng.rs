//! A seeded SplitMix64 generator for the labs' traces and simulations: deterministic across platforms and
//! releases (unlike `rand`'s unspecified `StdRng`), and one dependency fewer.

/// SplitMix64 (Steele, Lea, Flood 2014). Not cryptographic; only for reproducible traces.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator for `seed`; the same seed always gives the same sequence.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)`; `n == 0` gives 0. (Multiply-shift: bias below 2^-32 for our `n`.)
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Exponential inter-arrival with the given mean (a Poisson process), at least 1.
    pub fn exp_ns(&mut self, mean_ns: f64) -> u64 {
        let u = 1.0 - self.unit(); // in (0, 1]
        ((-u.ln() * mean_ns) as u64).max(1)
    }
}
