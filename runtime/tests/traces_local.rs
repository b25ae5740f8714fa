//! The span store on its own: spans with fields read back by trace id, durable across
//! a reopen, the retention and the cap applied by a prune.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use troupe_runtime::config::TracingConfig;
use troupe_runtime::metrics::Metrics;
use troupe_runtime::traces::TraceStore;
use troupe_runtime::wire::introspect::SpanRecord;

fn span(trace: u64, start_unix_us: u64, fields: &[(&str, &str)]) -> SpanRecord {
    SpanRecord {
        trace,
        node: "n1".into(),
        name: "handle".into(),
        target: "/t/k/a".into(),
        start_unix_us,
        duration_us: 10,
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "troupe-traces-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const NOW: u64 = 1_800_000_000_000_000; // µs

fn clock() -> (u64, std::time::Instant) {
    (NOW, std::time::Instant::now())
}

#[test]
fn spans_are_read_back_by_trace_with_their_fields_and_survive_a_reopen() {
    let d = dir();
    let cfg = TracingConfig::new("t");
    {
        let s = TraceStore::open(&d.join("traces.redb"), cfg.clone(), &Metrics::new(), "n1", clock()).unwrap();
        s.record(span(3, NOW + 2, &[("k", "v")]));
        s.record(span(7, NOW, &[]));
        // Sampled but not kept (bit 1 clear, not one in 64): memory only.
        s.record(span(0b1_0101, NOW, &[]));
        s.record(span(3, NOW + 1, &[]));
        // Waiting ones are answered too.
        assert_eq!(s.spans(3).unwrap().len(), 2);
        assert_eq!(s.spans(0b1_0101).unwrap().len(), 1);
        assert_eq!(s.flush().unwrap(), 3, "the kept spans are written, the other is not");
        let got = s.spans(3).unwrap();
        assert_eq!(got.iter().map(|s| s.start_unix_us).collect::<Vec<_>>(), [NOW + 1, NOW + 2], "by start time");
        assert_eq!(got[1].fields, [("k".to_string(), "v".to_string())]);
    }
    let s = TraceStore::open(&d.join("traces.redb"), cfg, &Metrics::new(), "n1", clock()).unwrap();
    assert_eq!(s.spans(3).unwrap().len(), 2, "spans lost across a reopen");
    assert_eq!(s.spans(7).unwrap().len(), 1);
    assert!(s.spans(0b1_0101).unwrap().is_empty(), "a span of a trace not kept was written");
    assert!(s.spans(11).unwrap().is_empty());
}

#[test]
fn a_prune_deletes_what_is_past_the_retention_then_the_oldest_past_the_cap() {
    let d = dir();
    let mut cfg = TracingConfig::new("t");
    cfg.retention_ms = 60_000;
    cfg.spans_max = 1000;
    let s = TraceStore::open(&d.join("traces.redb"), cfg, &Metrics::new(), "n1", clock()).unwrap();
    // Two minutes old: past the retention.
    s.record(span(403, NOW - 120_000_000, &[]));
    for i in 0..1200u64 {
        s.record(span(3 + 4 * (i % 7), NOW - 1_000_000 + i, &[]));
    }
    s.flush().unwrap();
    assert_eq!(s.len().unwrap(), 1201);
    assert_eq!(s.prune(NOW).unwrap(), 201);
    assert_eq!(s.len().unwrap(), 1000);
    assert!(s.spans(403).unwrap().is_empty(), "the expired span is still there");
    let kept: Vec<u64> = (0..7).flat_map(|t| s.spans(3 + 4 * t).unwrap()).map(|s| s.start_unix_us).collect();
    assert_eq!(kept.iter().min().copied(), Some(NOW - 1_000_000 + 200), "the oldest past the cap go first");
    assert_eq!(s.prune(NOW).unwrap(), 0);
}
