//! The LLM serving panel's numbers, from one node's metrics snapshot and an earlier one:
//! per model, requests running and waiting, KV cache use, prefix cache hit rate,
//! generated tokens/s, TTFT and TPOT p50/p99 and errors; per pool, queue depth, breaker
//! state and active/warm workers. Metric names and labels are those of
//! this crate (workers label `model_name`, `worker` (= pool) and `stage`; the
//! router `pool` and `model_name`; the breaker and the scaler `pool` only).
//!
//! Invariants: pure (no I/O, no clock). Windowed figures (percentiles, hit rate) cover
//! the interval between the two snapshots; where nothing happened in it they fall back
//! to the totals since the node started and say so (`recent: false`), never mixing the
//! two silently. A counter or histogram that went backwards restarted in between: its
//! current reading is all growth, as with Prometheus's `increase()`, never a negative.

use std::collections::{BTreeMap, BTreeSet};
use troupe_runtime::wire::introspect::{Metric, MetricsSnapshot};
use troupe_system::counter_increase;

mod view;

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod snapshot_tests;

/// The system's name, as in its `system` label.
pub const SYSTEM: &str = "llm-serving";

const TTFT: &str = "troupe_llm_time_to_first_token_seconds_bucket";
const TPOT: &str = "troupe_llm_time_per_output_token_seconds_bucket";

/// A figure over the window, or (`recent: false`) since the node started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Windowed<T> {
    pub value: T,
    pub recent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelStats {
    pub model: String,
    /// Summed over this node's workers of the model; `None` when it has none.
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    /// The fullest worker's KV cache, 0..1.
    pub kv_usage: Option<f64>,
    pub prefix_hit: Option<Windowed<f64>>,
    /// Needs an earlier snapshot.
    pub tokens_per_s: Option<f64>,
    pub ttft: Option<Windowed<Percentiles>>,
    pub tpot: Option<Windowed<Percentiles>>,
    /// Since the node started, all types and statuses.
    pub errors: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed,
    Open,
    HalfOpen,
    Unknown,
}

impl Breaker {
    fn from_code(v: f64) -> Breaker {
        match v as i64 {
            0 => Breaker::Closed,
            1 => Breaker::Open,
            2 => Breaker::HalfOpen,
            _ => Breaker::Unknown,
        }
    }

    /// A word, so the state reads without color.
    pub fn word(self) -> &'static str {
        match self {
            Breaker::Closed => "closed",
            Breaker::Open => "OPEN",
            Breaker::HalfOpen => "half-open",
            Breaker::Unknown => "?",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolStats {
    pub pool: String,
    /// From the router's or a worker's labels; `None` when this node does not say.
    pub model: Option<String>,
    pub queue_depth: Option<f64>,
    pub breaker: Option<Breaker>,
    /// Summed over stages (a disaggregated pool has prefill and decode workers).
    pub active: Option<f64>,
    pub warm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Serving {
    pub models: Vec<ModelStats>,
    pub pools: Vec<PoolStats>,
    /// Seconds between the two snapshots, when there was an earlier one.
    pub window_s: Option<f64>,
}

impl Serving {
    /// Whether some figure fell back to the totals since start (the panel says so).
    pub fn any_since_start(&self) -> bool {
        self.models.iter().any(|m| {
            m.prefix_hit.is_some_and(|w| !w.recent)
                || m.ttft.is_some_and(|w| !w.recent)
                || m.tpot.is_some_and(|w| !w.recent)
        })
    }
}

fn label<'a>(m: &'a Metric, k: &str) -> Option<&'a str> {
    m.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn is_llm(m: &Metric) -> bool {
    m.name.starts_with("troupe_llm_") && label(m, "system") == Some(SYSTEM)
}

/// The same series (name and labels) in `prev`.
fn find<'a>(prev: Option<&'a MetricsSnapshot>, m: &Metric) -> Option<&'a Metric> {
    prev?.metrics.iter().find(|o| o.name == m.name && o.labels == m.labels)
}

/// Value at quantile `q` (0..1) of a histogram given as cumulative `(le, count)`
/// buckets, the way Prometheus's `histogram_quantile` estimates it: linear
/// interpolation inside the bucket holding the rank, the first bucket starting at 0,
/// and a rank in the `+Inf` bucket answered with the highest finite bound. `None` with
/// no observations or without a `+Inf` bucket (the total is unknown then).
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.iter().copied().filter(|(le, c)| !le.is_nan() && !c.is_nan()).collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    if b.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
        return None;
    }
    // Counts scraped while observations land may be slightly out of order.
    let mut max = 0.0f64;
    for (_, c) in &mut b {
        max = max.max(*c);
        *c = max;
    }
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let i = b.iter().position(|(_, c)| *c >= rank)?;
    if i == b.len() - 1 {
        return if i == 0 { None } else { Some(b[i - 1].0) };
    }
    let (hi, count) = b[i];
    let (lo, below) = if i == 0 {
        if hi <= 0.0 {
            return Some(hi);
        }
        (0.0, 0.0)
    } else {
        b[i - 1]
    };
    if count <= below {
        return Some(hi);
    }
    Some(lo + (hi - lo) * (rank - below) / (count - below))
}

/// The prefix cache hit rate from `(hits, queries)`: over the window (the counters'
/// growth in it) when there were queries in it, else since start; `None` before the
/// first query.
pub fn hit_rate(window: Option<(f64, f64)>, total: (f64, f64)) -> Option<Windowed<f64>> {
    let ratio = |(h, q): (f64, f64)| (h / q).clamp(0.0, 1.0);
    match window {
        Some(w) if w.1 > 0.0 => Some(Windowed { value: ratio(w), recent: true }),
        _ => (total.1 > 0.0).then(|| Windowed { value: ratio(total), recent: false }),
    }
}

/// A histogram's buckets for one model: `(le, count)` summed over its series, over the
/// window (`window`) and since start (`total`).
#[derive(Debug, Default)]
struct Buckets {
    window: Vec<(f64, f64)>,
    total: Vec<(f64, f64)>,
}

fn add(v: &mut Vec<(f64, f64)>, le: f64, c: f64) {
    match v.iter_mut().find(|(l, _)| *l == le) {
        Some((_, x)) => *x += c,
        None => v.push((le, c)),
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        _ => s.parse().ok(),
    }
}

/// Per model: the buckets of histogram `name`.
fn histograms(now: &MetricsSnapshot, prev: Option<&MetricsSnapshot>, name: &str) -> BTreeMap<String, Buckets> {
    // One series is a label set without `le`; a reset is judged per series.
    type Key = (String, Vec<(String, String)>);
    let mut series: BTreeMap<Key, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for m in now.metrics.iter().filter(|m| m.name == name && is_llm(m)) {
        let (Some(model), Some(le)) = (label(m, "model_name"), label(m, "le").and_then(parse_le)) else { continue };
        let rest = m.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        let before = find(prev, m).map_or(0.0, |o| o.value);
        series.entry((model.to_string(), rest)).or_default().push((le, before, m.value));
    }
    let mut out: BTreeMap<String, Buckets> = BTreeMap::new();
    for ((model, _), bs) in series {
        let reset = bs.iter().any(|(_, before, now)| now < before);
        let b = out.entry(model).or_default();
        for (le, before, now) in bs {
            add(&mut b.total, le, now);
            add(&mut b.window, le, if reset { now } else { now - before });
        }
    }
    out
}

fn percentiles(b: &Buckets, windowed: bool) -> Option<Windowed<Percentiles>> {
    let pick = |v: &[(f64, f64)], recent| {
        Some(Windowed {
            value: Percentiles { p50: histogram_quantile(0.5, v)?, p99: histogram_quantile(0.99, v)? },
            recent,
        })
    };
    windowed.then(|| pick(&b.window, true)).flatten().or_else(|| pick(&b.total, false))
}

fn sum_into(map: &mut BTreeMap<String, f64>, key: &str, v: f64) {
    *map.entry(key.to_string()).or_default() += v;
}

/// The panel's figures for one node, or `None` when it reports no LLM serving metrics.
/// `prev` is an earlier snapshot of the same node (the window's start).
pub fn summarize(now: &MetricsSnapshot, prev: Option<&MetricsSnapshot>) -> Option<Serving> {
    let llm: Vec<&Metric> = now.metrics.iter().filter(|m| is_llm(m)).collect();
    if llm.is_empty() {
        return None;
    }
    let window_s = prev.map(|p| now.unix_ms.saturating_sub(p.unix_ms) as f64 / 1000.0).filter(|dt| *dt > 0.0);
    let windowed = window_s.is_some();
    let mut models: BTreeSet<String> = BTreeSet::new();
    let mut pools: BTreeMap<String, PoolStats> = BTreeMap::new();
    let (mut running, mut waiting, mut kv, mut errors, mut tokens) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::<String, f64>::new(), BTreeMap::new(), BTreeMap::new());
    // Per model: hits and queries, grown over the window and since start.
    let mut cache: BTreeMap<String, [(f64, f64); 2]> = BTreeMap::new();
    for m in &llm {
        let model = label(m, "model_name");
        if let Some(model) = model {
            models.insert(model.to_string());
        }
        // Workers name their pool `worker`; the router, breaker and scaler `pool`.
        let pool_of_worker = label(m, "worker");
        if let (Some(p), Some(model)) = (pool_of_worker, model) {
            pools.entry(p.to_string()).or_default().model.get_or_insert_with(|| model.to_string());
        }
        let before = find(prev, m).map(|o| o.value);
        match (m.name.as_str(), model, label(m, "pool")) {
            ("troupe_llm_num_requests_running", Some(md), _) => sum_into(&mut running, md, m.value),
            ("troupe_llm_num_requests_waiting", Some(md), _) => sum_into(&mut waiting, md, m.value),
            ("troupe_llm_kv_cache_usage_perc", Some(md), _) => {
                let e = kv.entry(md.to_string()).or_insert(m.value);
                *e = e.max(m.value);
            }
            ("troupe_llm_request_errors_total", Some(md), _) => sum_into(&mut errors, md, m.value),
            // A series missing from `prev` appeared within the window: all of it is growth.
            ("troupe_llm_generation_tokens_total", Some(md), _) => {
                sum_into(&mut tokens, md, counter_increase(before.unwrap_or(0.0), m.value))
            }
            ("troupe_llm_prefix_cache_hits_total" | "troupe_llm_prefix_cache_queries_total", Some(md), _) => {
                let [window, total] = cache.entry(md.to_string()).or_default();
                let grew = counter_increase(before.unwrap_or(0.0), m.value);
                if m.name.ends_with("hits_total") {
                    window.0 += grew;
                    total.0 += m.value;
                } else {
                    window.1 += grew;
                    total.1 += m.value;
                }
            }
            ("troupe_llm_queue_depth", _, Some(p)) => {
                let ps = pools.entry(p.to_string()).or_default();
                *ps.queue_depth.get_or_insert(0.0) += m.value;
                if let Some(md) = model {
                    ps.model = Some(md.to_string());
                }
            }
            ("troupe_llm_breaker_state", _, Some(p)) => {
                pools.entry(p.to_string()).or_default().breaker = Some(Breaker::from_code(m.value))
            }
            ("troupe_llm_active_workers", _, Some(p)) => {
                *pools.entry(p.to_string()).or_default().active.get_or_insert(0.0) += m.value
            }
            ("troupe_llm_warm_workers", _, Some(p)) => {
                *pools.entry(p.to_string()).or_default().warm.get_or_insert(0.0) += m.value
            }
            _ => {}
        }
    }
    let ttft = histograms(now, prev, TTFT);
    let tpot = histograms(now, prev, TPOT);
    let models = models
        .into_iter()
        .map(|md| ModelStats {
            running: running.get(&md).copied(),
            waiting: waiting.get(&md).copied(),
            kv_usage: kv.get(&md).copied(),
            prefix_hit: cache.get(&md).and_then(|[w, t]| hit_rate(windowed.then_some(*w), *t)),
            tokens_per_s: window_s.filter(|_| tokens.contains_key(&md)).map(|dt| tokens[&md] / dt),
            ttft: ttft.get(&md).and_then(|b| percentiles(b, windowed)),
            tpot: tpot.get(&md).and_then(|b| percentiles(b, windowed)),
            // The error counter appears with the first error; a node whose gateway serves
            // the model (it has its TTFT) and has none has had none.
            errors: errors.get(&md).copied().or_else(|| ttft.contains_key(&md).then_some(0.0)),
            model: md,
        })
        .collect();
    let pools = pools
        .into_iter()
        .map(|(pool, s)| PoolStats { pool, ..s })
        .filter(|p| p.queue_depth.is_some() || p.breaker.is_some() || p.active.is_some() || p.warm.is_some())
        .collect();
    Some(Serving { models, pools, window_s })
}

/// LLM serving's `troupe top` panel: per model and per pool, on nodes that serve models.
pub struct LlmPanel;

impl troupe_system::Panel for LlmPanel {
    fn summarize(
        &self,
        now: &MetricsSnapshot,
        earlier: Option<&MetricsSnapshot>,
    ) -> Option<Box<dyn troupe_system::PanelView>> {
        summarize(now, earlier).map(|s| Box::new(s) as Box<dyn troupe_system::PanelView>)
    }
}

impl troupe_system::PanelView for Serving {
    fn height(&self) -> u16 {
        view::height(self)
    }
    fn draw(&self, f: &mut ratatui::Frame, area: ratatui::layout::Rect, node: &str, live: bool) {
        view::draw(f, area, node, self, live)
    }
}

#[cfg(test)]
mod tests;
