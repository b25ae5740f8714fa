//! Pure parts of `troupe lab llm-serving` (the CLI in `src/cli/lab/llm_serving.rs` drives
//! the real engine with them): seeded workloads with Poisson arrivals, the request driver
//! that implements continuous vs static batching over any step-wise engine, latency
//! summaries, and [`route_sim`], a simulated cluster for comparing routing policies.
//!
//! Invariants: nothing here reads a clock or does I/O (time comes from a [`Clock`]); the
//! same seed gives the same workload; static batching never hands a request to an engine
//! that is still running or holding an earlier batch.

pub mod driver;
pub mod route_sim;

use troupe_llm::sampler::Rng;

/// One request of a workload: when it arrives (seconds from the start) and its shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Req {
    pub id: u64,
    pub arrival_s: f64,
    pub prompt_len: usize,
    pub max_tokens: usize,
}

/// Exponential inter-arrival time of a Poisson process of `rate` per second.
pub fn exp_gap(rng: &mut Rng, rate: f64) -> f64 {
    -(1.0 - rng.next_f64()).ln() / rate.max(1e-9)
}

/// `n` requests with Poisson arrivals at `rate` per second, prompt lengths uniform in
/// `prompt` and output lengths uniform in `output` (both inclusive).
pub fn mixed_workload(n: usize, rate: f64, prompt: (usize, usize), output: (usize, usize), seed: u64) -> Vec<Req> {
    let mut rng = Rng::new(seed);
    let mut t = 0.0;
    let uni =
        |rng: &mut Rng, (lo, hi): (usize, usize)| lo + (rng.next_u64() % (hi.saturating_sub(lo) as u64 + 1)) as usize;
    (0..n as u64)
        .map(|id| {
            t += exp_gap(&mut rng, rate);
            Req { id, arrival_s: t, prompt_len: uni(&mut rng, prompt), max_tokens: uni(&mut rng, output) }
        })
        .collect()
}

/// How the driver hands requests to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Batching {
    /// Iteration-level: every arrived request goes to the engine at once; the engine's
    /// scheduler admits it into the running batch at the next step with room.
    Continuous,
    /// A batch of up to `batch` arrived requests is formed only when the engine is idle;
    /// it runs until its longest member finishes, then the next batch is formed.
    Static { batch: usize },
}

impl Batching {
    /// How many of the `arrived` (not yet submitted) requests to submit now.
    pub fn admit(&self, arrived: usize, engine_idle: bool) -> usize {
        match *self {
            Batching::Continuous => arrived,
            Batching::Static { batch } if engine_idle => arrived.min(batch.max(1)),
            Batching::Static { .. } => 0,
        }
    }
}

/// What one engine step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub id: u64,
    pub tokens: Vec<u32>,
    pub finished: bool,
}

/// The engine as the driver sees it (the real one is `troupe_llm::Engine`).
pub trait StepEngine {
    fn submit(&mut self, r: &Req) -> Result<(), String>;
    fn step(&mut self) -> Result<Vec<Produced>, String>;
    /// Nothing running, waiting or pending.
    fn idle(&self) -> bool;
}

/// Time for the driver: wall clock in the lab, virtual in tests.
pub trait Clock {
    /// Seconds since the run started.
    fn now(&mut self) -> f64;
    /// Blocks (or advances virtual time) until `t`.
    fn wait_until(&mut self, t: f64);
}

/// One request's timeline, seconds from the start of the run.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Timeline {
    pub id: u64,
    pub arrival_s: f64,
    pub submitted_s: f64,
    pub first_token_s: Option<f64>,
    pub finish_s: Option<f64>,
    pub tokens: Vec<u32>,
    /// Index of the submission group (a static batch; one group per submit in continuous).
    pub group: usize,
}

impl Timeline {
    pub fn ttft(&self) -> Option<f64> {
        self.first_token_s.map(|f| f - self.arrival_s)
    }
    /// Mean time per output token after the first.
    pub fn tpot(&self) -> Option<f64> {
        match (self.first_token_s, self.finish_s) {
            (Some(f), Some(e)) if self.tokens.len() > 1 => Some((e - f) / (self.tokens.len() - 1) as f64),
            _ => None,
        }
    }
}

/// Runs `reqs` (sorted by arrival) through `engine` until all finish. `max_steps` bounds
/// the loop (an engine that never finishes a request is an error, not a hang).
pub fn drive<E: StepEngine, C: Clock>(
    engine: &mut E,
    reqs: &[Req],
    batching: Batching,
    clock: &mut C,
    max_steps: u64,
) -> Result<Vec<Timeline>, String> {
    let mut tl: Vec<Timeline> =
        reqs.iter().map(|r| Timeline { id: r.id, arrival_s: r.arrival_s, ..Timeline::default() }).collect();
    let index: std::collections::HashMap<u64, usize> = reqs.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let (mut next, mut done, mut steps, mut group) = (0usize, 0usize, 0u64, 0usize);
    while done < reqs.len() {
        let now = clock.now();
        let arrived = reqs[next..].iter().take_while(|r| r.arrival_s <= now).count();
        let n = batching.admit(arrived, engine.idle());
        for r in &reqs[next..next + n] {
            engine.submit(r)?;
            let t = &mut tl[next];
            t.submitted_s = now;
            t.group = group;
            next += 1;
        }
        if n > 0 {
            group += 1;
        }
        if engine.idle() {
            match reqs.get(next) {
                Some(r) => clock.wait_until(r.arrival_s),
                None => return Err(format!("engine idle with {} requests unfinished", reqs.len() - done)),
            }
            continue;
        }
        steps += 1;
        if steps > max_steps {
            return Err(format!("no progress after {max_steps} steps ({done}/{} finished)", reqs.len()));
        }
        let out = engine.step()?;
        let t = clock.now();
        for p in out {
            let Some(&i) = index.get(&p.id) else { continue };
            let x = &mut tl[i];
            if !p.tokens.is_empty() && x.first_token_s.is_none() {
                x.first_token_s = Some(t);
            }
            x.tokens.extend_from_slice(&p.tokens);
            if p.finished && x.finish_s.is_none() {
                x.finish_s = Some(t);
                done += 1;
            }
        }
    }
    Ok(tl)
}

/// The `p` quantile (0..=1) of `v` by nearest rank; 0 for an empty slice.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Throughput and latency of one run.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct RunSummary {
    pub requests: usize,
    pub output_tokens: usize,
    /// First arrival to last finish, s.
    pub total_s: f64,
    pub output_tok_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub ttft_mean_ms: f64,
    pub tpot_p50_ms: f64,
    pub tpot_p99_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
}

pub fn summarize(tl: &[Timeline]) -> RunSummary {
    let ttft: Vec<f64> = tl.iter().filter_map(Timeline::ttft).map(|s| s * 1e3).collect();
    let tpot: Vec<f64> = tl.iter().filter_map(Timeline::tpot).map(|s| s * 1e3).collect();
    let e2e: Vec<f64> = tl.iter().filter_map(|t| t.finish_s.map(|f| (f - t.arrival_s) * 1e3)).collect();
    let start = tl.iter().map(|t| t.arrival_s).fold(f64::INFINITY, f64::min);
    let end = tl.iter().filter_map(|t| t.finish_s).fold(0.0, f64::max);
    let total_s = if start.is_finite() { (end - start).max(0.0) } else { 0.0 };
    let output_tokens = tl.iter().map(|t| t.tokens.len()).sum();
    RunSummary {
        requests: tl.len(),
        output_tokens,
        total_s,
        output_tok_s: if total_s > 0.0 { output_tokens as f64 / total_s } else { 0.0 },
        ttft_p50_ms: quantile(&ttft, 0.5),
        ttft_p99_ms: quantile(&ttft, 0.99),
        ttft_mean_ms: mean(&ttft),
        tpot_p50_ms: quantile(&tpot, 0.5),
        tpot_p99_ms: quantile(&tpot, 0.99),
        e2e_p50_ms: quantile(&e2e, 0.5),
        e2e_p99_ms: quantile(&e2e, 0.99),
    }
}

/// Points of the empirical CDF of `v` (x = value, y = fraction ≤ x), for plots.
pub fn cdf(v: &[f64]) -> Vec<(f64, f64)> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.iter().enumerate().map(|(i, x)| (*x, (i + 1) as f64 / n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A toy engine: `slots` sequences decode one token per step (a step takes 10 ms);
    /// extra submissions wait. It records, per step, which requests ran.
    struct Toy {
        slots: usize,
        now: Rc<Cell<f64>>,
        waiting: Vec<(u64, usize)>,
        running: Vec<(u64, usize)>,
        ran: Vec<Vec<u64>>,
    }

    impl StepEngine for Toy {
        fn submit(&mut self, r: &Req) -> Result<(), String> {
            self.waiting.push((r.id, r.max_tokens));
            Ok(())
        }
        fn step(&mut self) -> Result<Vec<Produced>, String> {
            while self.running.len() < self.slots && !self.waiting.is_empty() {
                self.running.push(self.waiting.remove(0));
            }
            self.now.set(self.now.get() + 0.01);
            self.ran.push(self.running.iter().map(|r| r.0).collect());
            let out = self
                .running
                .iter_mut()
                .map(|r| {
                    r.1 -= 1;
                    Produced { id: r.0, tokens: vec![1], finished: r.1 == 0 }
                })
                .collect();
            self.running.retain(|r| r.1 > 0);
            Ok(out)
        }
        fn idle(&self) -> bool {
            self.running.is_empty() && self.waiting.is_empty()
        }
    }

    struct Virtual(Rc<Cell<f64>>);
    impl Clock for Virtual {
        fn now(&mut self) -> f64 {
            self.0.get()
        }
        fn wait_until(&mut self, t: f64) {
            self.0.set(self.0.get().max(t));
        }
    }

    fn run(reqs: &[Req], b: Batching, slots: usize) -> (Vec<Timeline>, Vec<Vec<u64>>) {
        let now = Rc::new(Cell::new(0.0));
        let mut e = Toy { slots, now: now.clone(), waiting: vec![], running: vec![], ran: vec![] };
        let tl = drive(&mut e, reqs, b, &mut Virtual(now), 1_000_000).expect("drive");
        (tl, e.ran)
    }

    #[test]
    fn workload_is_deterministic_for_a_seed() {
        let a = mixed_workload(50, 3.0, (16, 192), (8, 128), 9);
        assert_eq!(a, mixed_workload(50, 3.0, (16, 192), (8, 128), 9));
        assert_ne!(a, mixed_workload(50, 3.0, (16, 192), (8, 128), 10));
        assert!(a.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
        assert!(a.iter().all(|r| (16..=192).contains(&r.prompt_len) && (8..=128).contains(&r.max_tokens)));
        let mean_gap = a.last().map_or(0.0, |r| r.arrival_s) / 50.0;
        assert!((0.15..0.6).contains(&mean_gap), "Poisson at 3/s has mean gap 1/3 s, got {mean_gap}");
    }

    #[test]
    fn continuous_beats_static_on_mixed_lengths() {
        let reqs = mixed_workload(40, 50.0, (16, 64), (2, 60), 3);
        let (c, _) = run(&reqs, Batching::Continuous, 8);
        let (s, _) = run(&reqs, Batching::Static { batch: 8 }, 8);
        let (c, s) = (summarize(&c), summarize(&s));
        assert_eq!(c.output_tokens, s.output_tokens);
        assert!(c.total_s < s.total_s, "continuous {} s vs static {} s", c.total_s, s.total_s);
    }

    proptest! {
        /// Static batching never admits into a running batch: while any member of a batch
        /// is still running, no step contains a request of a later batch, and a batch
        /// never exceeds its size.
        #[test]
        fn static_never_admits_into_a_running_batch(seed in 0u64..500, batch in 1usize..9, rate in 1.0f64..200.0) {
            let reqs = mixed_workload(30, rate, (4, 8), (1, 40), seed);
            let (tl, ran) = run(&reqs, Batching::Static { batch }, batch);
            let group: std::collections::HashMap<u64, usize> = tl.iter().map(|t| (t.id, t.group)).collect();
            for step in &ran {
                let gs: std::collections::BTreeSet<usize> = step.iter().map(|id| group[id]).collect();
                prop_assert!(gs.len() <= 1, "a step mixes batches {:?}", gs);
            }
            let mut sizes = std::collections::HashMap::new();
            for t in &tl {
                *sizes.entry(t.group).or_insert(0usize) += 1;
            }
            prop_assert!(sizes.values().all(|&n| n <= batch));
            for g in 1..sizes.len() {
                let prev_end = tl.iter().filter(|t| t.group == g - 1).filter_map(|t| t.finish_s).fold(0.0, f64::max);
                let start = tl.iter().filter(|t| t.group == g).map(|t| t.submitted_s).fold(f64::INFINITY, f64::min);
                prop_assert!(start >= prev_end);
            }
            prop_assert!(tl.iter().all(|t| t.tokens.len() == reqs[t.id as usize].max_tokens));
        }
    }

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
