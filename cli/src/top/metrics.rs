//! Groups a node's metrics by system for the metrics panel, generically: a series
//! belongs to system `s` if it carries the label `system="s"` or its name starts with
//! `troupe_<s>_`; everything else (gossip, transport, the built-in `troupe` system) is
//! `runtime`. Systems add their own metrics later without any change here.
//!
//! Invariants: pure (no I/O, no clock); histogram buckets are left out (one line per
//! bucket would crowd out everything else; `_count` and `_sum` stay); series within
//! a group are ordered busiest first so the top ones are the ones shown.

use troupe_runtime::wire::introspect::{Metric, MetricsSnapshot};

/// The group for metrics that belong to no system.
pub const RUNTIME: &str = "runtime";

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name without `troupe_`, the system prefix and a counter's `_total`, e.g. `messages_handled`.
    pub name: String,
    /// Labels other than `system`, as `k=v` joined by spaces.
    pub labels: String,
    pub value: f64,
    /// Per second, for counters seen in the previous snapshot too.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub system: String,
    pub series: Vec<Series>,
}

/// Which system a series belongs to. `systems` are the node's system names.
pub fn system_of(m: &Metric, systems: &[String]) -> String {
    if let Some((_, s)) = m.labels.iter().find(|(k, _)| k == "system") {
        return if s == "troupe" { RUNTIME.to_string() } else { s.clone() };
    }
    // Longest name first, so `quiz` does not claim `troupe_quiz_rooms_...` of a `quiz_rooms` system.
    let mut by_len: Vec<&String> = systems.iter().collect();
    by_len.sort_by_key(|s| std::cmp::Reverse(s.len()));
    by_len
        .into_iter()
        .find(|s| *s != "troupe" && m.name.starts_with(&format!("troupe_{s}_")))
        .cloned()
        .unwrap_or_else(|| RUNTIME.to_string())
}

/// Drops what the panel already says: `troupe_`, the system, and a counter's `_total`
/// (counters are the ones with a rate).
fn short_name(name: &str, system: &str, counter: bool) -> String {
    let n = name.strip_prefix("troupe_").unwrap_or(name);
    let n = n.strip_prefix(&format!("{system}_")).unwrap_or(n);
    let n = if counter { n.strip_suffix("_total").unwrap_or(n) } else { n };
    n.to_string()
}

fn labels_of(m: &Metric) -> String {
    m.labels.iter().filter(|(k, _)| k != "system").map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Groups `now` by system, systems in the order given then `runtime`; counters get a
/// rate from `prev` (the previous snapshot of the same node) when there is one.
pub fn group(now: &MetricsSnapshot, prev: Option<&MetricsSnapshot>, systems: &[String]) -> Vec<Group> {
    let dt = prev.map(|p| now.unix_ms.saturating_sub(p.unix_ms) as f64 / 1000.0).filter(|dt| *dt > 0.0);
    let mut groups: Vec<Group> = systems
        .iter()
        .filter(|s| *s != "troupe")
        .chain(std::iter::once(&RUNTIME.to_string()))
        .map(|s| Group { system: s.clone(), series: Vec::new() })
        .collect();
    for m in now.metrics.iter().filter(|m| !m.name.ends_with("_bucket")) {
        let system = system_of(m, systems);
        let rate = match (prev, dt) {
            (Some(p), Some(dt)) if m.kind == "counter" => p
                .metrics
                .iter()
                .find(|o| o.name == m.name && o.labels == m.labels)
                .map(|o| ((m.value - o.value) / dt).max(0.0)),
            _ => None,
        };
        let series = Series {
            name: short_name(&m.name, &system, m.kind == "counter"),
            labels: labels_of(m),
            value: m.value,
            rate,
        };
        match groups.iter_mut().find(|g| g.system == system) {
            Some(g) => g.series.push(series),
            None => groups.push(Group { system, series: vec![series] }),
        }
    }
    for g in &mut groups {
        g.series.sort_by(|a, b| {
            let ra = a.rate.unwrap_or(0.0);
            let rb = b.rate.unwrap_or(0.0);
            rb.total_cmp(&ra).then(b.value.abs().total_cmp(&a.value.abs())).then(a.name.cmp(&b.name))
        });
    }
    groups.retain(|g| !g.series.is_empty());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, kind: &str, labels: &[(&str, &str)], value: f64) -> Metric {
        Metric {
            name: name.into(),
            help: String::new(),
            kind: kind.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
        }
    }

    fn snap(unix_ms: u64, metrics: Vec<Metric>) -> MetricsSnapshot {
        MetricsSnapshot { node: "n1".into(), unix_ms, metrics }
    }

    #[test]
    fn groups_by_label_then_prefix_then_runtime() {
        let systems = vec!["demo".to_string(), "quiz".to_string(), "troupe".to_string()];
        let now = snap(
            2000,
            vec![
                m("troupe_messages_handled_total", "counter", &[("system", "demo"), ("kind", "store")], 50.0),
                m("troupe_quiz_rooms", "gauge", &[], 3.0),
                m("troupe_gossip_packets_sent_total", "counter", &[], 9.0),
                m("troupe_actors", "gauge", &[("system", "troupe"), ("kind", "node")], 1.0),
                m("troupe_quiz_latency_seconds_bucket", "histogram", &[("le", "0.1")], 1.0),
            ],
        );
        let g = group(&now, None, &systems);
        let names: Vec<&str> = g.iter().map(|g| g.system.as_str()).collect();
        assert_eq!(names, ["demo", "quiz", "runtime"]);
        assert_eq!(g[0].series[0].name, "messages_handled");
        assert_eq!(g[0].series[0].labels, "kind=store");
        assert_eq!(g[1].series[0].name, "rooms", "prefix stripped");
        assert_eq!(g[1].series.len(), 1, "buckets are left out");
        assert_eq!(g[2].series.len(), 2, "gossip and the built-in system are runtime");
    }

    #[test]
    fn counters_get_rates_and_busiest_come_first() {
        let systems = vec!["demo".to_string()];
        let prev = snap(
            1000,
            vec![m("troupe_demo_puts_total", "counter", &[], 10.0), m("troupe_demo_gets_total", "counter", &[], 100.0)],
        );
        let now = snap(
            3000,
            vec![
                m("troupe_demo_puts_total", "counter", &[], 50.0),
                m("troupe_demo_gets_total", "counter", &[], 102.0),
                m("troupe_demo_keys", "gauge", &[], 7.0),
            ],
        );
        let g = group(&now, Some(&prev), &systems);
        let demo = &g[0];
        assert_eq!(demo.series[0].name, "puts");
        assert_eq!(demo.series[0].rate, Some(20.0));
        assert_eq!(demo.series[1].rate, Some(1.0));
        assert_eq!(demo.series[2].rate, None, "gauges have no rate");
    }
}
