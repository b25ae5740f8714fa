//! Shared helpers for troupe's benchmarks: latency summaries and result files.
//! Benchmarks run troupe and the real peer side by side in one run and report
//! ratios; nothing here asserts a timing.

pub mod cluster;
pub mod sys;

use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::Duration;

/// Percentiles of a latency sample, in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(d.as_nanos().max(1) as u64);
}

pub fn summarize(h: &Histogram<u64>) -> Latency {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency { samples: h.len(), p50_us: us(0.5), p99_us: us(0.99), p999_us: us(0.999), max_us: h.max() as f64 / 1000.0 }
}

/// Where result files go: `bench/results/` of the repository.
pub fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

pub fn write_result(name: &str, value: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_string_pretty(value)?)?;
    Ok(p)
}

/// Machine description for result files.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    serde_json::json!({ "cpu": cpu, "cores": cores })
}
