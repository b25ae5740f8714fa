//! Metrics: counters, gauges and histograms that any layer or system registers by
//! name, rendered as Prometheus text for `/metrics` and as a snapshot for the CLI and
//! the TUI. Names follow Prometheus conventions (`_total` counters, base units).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use troupe_wire::introspect::Metric;

type Labels = Vec<(String, String)>;

/// A monotonic u64 counter; clones share the same value.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge holding an f64.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value to `v`.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    /// Adds `d` (negative to subtract), atomically.
    pub fn add(&self, d: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((f64::from_bits(b) + d).to_bits()));
    }
}

/// The shared state of a [`Histogram`]: bucket bounds, per-bucket counts, sum and
/// count.
#[derive(Debug)]
pub struct HistogramCore {
    /// Upper bounds, ascending; +Inf is implicit.
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// A histogram with fixed bucket upper bounds (Prometheus style); clones share the
/// same buckets.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCore>);

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram(Arc::new(HistogramCore {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }))
    }

    /// Records one value, in the histogram's unit (seconds for latencies).
    pub fn observe(&self, v: f64) {
        let h = &self.0;
        let i = h.bounds.iter().position(|b| v <= *b).unwrap_or(h.bounds.len());
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
        let _ =
            h.sum_bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((f64::from_bits(b) + v).to_bits()));
    }

    /// How many values have been recorded.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Estimated quantile from the buckets (upper bound of the bucket holding it).
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        for (i, c) in self.0.counts.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            if acc >= target {
                return self.0.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            }
        }
        f64::INFINITY
    }
}

/// Latency buckets in seconds, 100 µs to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug)]
enum Cell {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// A registry of metrics series, keyed by name and labels. Registering the same
/// series twice returns the same handle.
#[derive(Default, Debug)]
pub struct Metrics {
    cells: Mutex<BTreeMap<(String, Labels), Cell>>,
    help: Mutex<BTreeMap<String, (&'static str, String)>>,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn cell(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        l: &[(&str, &str)],
        make: impl FnOnce() -> Cell,
    ) -> Cell {
        self.help.lock().entry(name.to_string()).or_insert_with(|| (kind, help.to_string()));
        self.cells.lock().entry((name.to_string(), labels(l))).or_insert_with(make).clone()
    }

    /// The counter `name` with labels `l`, registered on first use. `help` is kept
    /// from the first registration of `name`. If the series exists as another type,
    /// the counter returned is not registered (it counts, but is never rendered).
    pub fn counter(&self, name: &str, help: &str, l: &[(&str, &str)]) -> Counter {
        match self.cell(name, help, "counter", l, || Cell::Counter(Counter::default())) {
            Cell::Counter(c) => c,
            _ => Counter::default(),
        }
    }

    /// The gauge `name` with labels `l`, registered on first use; same rules as
    /// [`Metrics::counter`].
    pub fn gauge(&self, name: &str, help: &str, l: &[(&str, &str)]) -> Gauge {
        match self.cell(name, help, "gauge", l, || Cell::Gauge(Gauge::default())) {
            Cell::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    /// The histogram `name` with labels `l`, registered on first use with bucket
    /// upper bounds `bounds` (ascending; later calls keep the first bounds). Same
    /// rules as [`Metrics::counter`].
    pub fn histogram(&self, name: &str, help: &str, l: &[(&str, &str)], bounds: &[f64]) -> Histogram {
        match self.cell(name, help, "histogram", l, || Cell::Histogram(Histogram::new(bounds))) {
            Cell::Histogram(h) => h,
            _ => Histogram::new(bounds),
        }
    }

    /// Every series as flat metrics (histograms as `_bucket`, `_sum`, `_count`).
    pub fn snapshot(&self) -> Vec<Metric> {
        let help = self.help.lock().clone();
        let mut out = Vec::new();
        for ((name, l), cell) in self.cells.lock().iter() {
            let (kind, h) = help.get(name).cloned().unwrap_or(("gauge", String::new()));
            let m = |n: String, labels: Labels, v: f64| Metric {
                name: n,
                help: h.clone(),
                kind: kind.to_string(),
                labels,
                value: v,
            };
            match cell {
                Cell::Counter(c) => out.push(m(name.clone(), l.clone(), c.get() as f64)),
                Cell::Gauge(g) => out.push(m(name.clone(), l.clone(), g.get())),
                Cell::Histogram(hist) => {
                    let core = &hist.0;
                    let mut acc = 0;
                    for (i, c) in core.counts.iter().enumerate() {
                        acc += c.load(Ordering::Relaxed);
                        let le = core.bounds.get(i).map(|b| b.to_string()).unwrap_or_else(|| "+Inf".into());
                        let mut lb = l.clone();
                        lb.push(("le".into(), le));
                        out.push(m(format!("{name}_bucket"), lb, acc as f64));
                    }
                    out.push(m(
                        format!("{name}_sum"),
                        l.clone(),
                        f64::from_bits(core.sum_bits.load(Ordering::Relaxed)),
                    ));
                    out.push(m(format!("{name}_count"), l.clone(), core.count.load(Ordering::Relaxed) as f64));
                }
            }
        }
        out
    }
}

/// Renders metrics in the Prometheus text exposition format.
pub fn render_prometheus(metrics: &[Metric]) -> String {
    let mut out = String::new();
    let mut last_family = String::new();
    let mut sorted: Vec<&Metric> = metrics.iter().collect();
    sorted.sort_by(|a, b| family(&a.name, &a.kind).cmp(family(&b.name, &b.kind)).then(a.name.cmp(&b.name)));
    for m in sorted {
        let fam = family(&m.name, &m.kind);
        if fam != last_family {
            let _ = writeln!(out, "# HELP {fam} {}", m.help.replace('\n', " "));
            let _ = writeln!(out, "# TYPE {fam} {}", m.kind);
            last_family = fam.to_string();
        }
        out.push_str(&m.name);
        if !m.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in m.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", fmt_value(m.value));
    }
    out
}

fn family<'a>(name: &'a str, kind: &str) -> &'a str {
    if kind == "histogram" {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                return base;
            }
        }
    }
    name
}

fn fmt_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.counter("troupe_x_total", "Things.", &[("kind", "a")]).add(3);
        let h = m.histogram("troupe_lat_seconds", "Latency.", &[], &[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let text = render_prometheus(&m.snapshot());
        assert!(text.contains("# TYPE troupe_x_total counter\ntroupe_x_total{kind=\"a\"} 3\n"), "{text}");
        assert!(text.contains("troupe_lat_seconds_bucket{le=\"0.1\"} 1"), "{text}");
        assert!(text.contains("troupe_lat_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("troupe_lat_seconds_count 3"), "{text}");
        assert_eq!(text.matches("# TYPE troupe_lat_seconds histogram").count(), 1);
        assert_eq!(h.quantile(0.5), 1.0);
    }
}
