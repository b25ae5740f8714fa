//! Durable traces: the spans of sampled requests, with their fields, kept per node in
//! their own redb file (`<data_dir>/<node>/traces.redb`) for `[tracing] retention_ms`
//! (and at most `spans_max` spans), so `troupe trace <id>` and the SDK read a trace
//! back from any node, also after the nodes that recorded it restarted; and, when
//! `[tracing] otlp_endpoint` is set, exported over OTLP/HTTP (protobuf, the
//! `opentelemetry-proto` messages) to a collector.
//!
//! Recording never waits on a disk or the network: a span goes to a bounded buffer
//! (past `PENDING_MAX` the oldest is dropped and counted), written every
//! [`FLUSH_EVERY`] in one transaction, and handed to the exporter's bounded queue (a
//! collector that is down or slow loses batches, counted, never memory).
//!
//! Invariants: a span returned by a query is on disk or in the buffer; a flushed span
//! survives a crash of its node (each flush is a durable commit); spans older than the
//! retention, and the oldest past `spans_max`, are deleted by the next prune.

use crate::config::cluster::TracingConfig;
use crate::metrics::{Counter, Gauge, Metrics};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use troupe_wire::introspect::SpanRecord;
use troupe_wire::{TraceId, codec};

/// (trace id, start µs, sequence) → the span (bincode).
const SPANS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("spans");
/// (start µs, trace id, sequence): the spans in age order, for the retention.
const BY_TIME: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("spans_by_time");

/// How often recorded spans are written (and exported).
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often spans past the retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Spans waiting for the next write at most.
pub const PENDING_MAX: usize = 65_536;
/// Spans one query returns at most.
pub const QUERY_MAX: usize = 10_000;
/// Fields one span keeps at most, and the longest key and value.
pub const FIELDS_MAX: usize = 32;
/// The longest field key, in bytes.
pub const FIELD_KEY_MAX: usize = 64;
/// The longest field value, in bytes (longer ones are cut, marked with `…`).
pub const FIELD_VALUE_MAX: usize = 1024;

/// A node's span store.
pub struct TraceStore {
    db: Database,
    pending: Mutex<Vec<(u64, SpanRecord)>>,
    next_seq: std::sync::atomic::AtomicU64,
    cfg: TracingConfig,
    dropped: Counter,
    stored: Counter,
    pending_gauge: Gauge,
    export: Option<crate::otlp::Exporter>,
}

impl TraceStore {
    /// Opens (or creates) the span file.
    pub fn open(path: &Path, cfg: TracingConfig, metrics: &Metrics, node: &str) -> Result<TraceStore, String> {
        let db = Database::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let w = db.begin_write().map_err(|e| e.to_string())?;
        {
            w.open_table(SPANS).map_err(|e| e.to_string())?;
            w.open_table(BY_TIME).map_err(|e| e.to_string())?;
        }
        w.commit().map_err(|e| e.to_string())?;
        let export =
            cfg.otlp_endpoint.as_ref().map(|url| crate::otlp::Exporter::start(url, &cfg.service_name, node, metrics));
        Ok(TraceStore {
            db,
            pending: Mutex::new(Vec::new()),
            next_seq: std::sync::atomic::AtomicU64::new(rand::random::<u32>() as u64),
            dropped: metrics.counter("troupe_spans_dropped_total", "Spans dropped before they were written", &[]),
            stored: metrics.counter("troupe_spans_stored_total", "Spans written to this node's span store", &[]),
            pending_gauge: metrics.gauge("troupe_spans_pending", "Spans recorded and not yet written", &[]),
            cfg,
            export,
        })
    }

    /// Keeps `span` (written at the next flush).
    pub fn record(&self, span: SpanRecord) {
        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut p = self.pending.lock();
        if p.len() >= PENDING_MAX {
            p.remove(0);
            self.dropped.inc();
        }
        p.push((seq, span));
        self.pending_gauge.set(p.len() as f64);
    }

    /// Writes what was recorded since the last flush, in one durable commit, and hands
    /// it to the exporter.
    pub fn flush(&self) -> Result<usize, String> {
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut spans = w.open_table(SPANS).map_err(|e| e.to_string())?;
            let mut by_time = w.open_table(BY_TIME).map_err(|e| e.to_string())?;
            for (seq, s) in &batch {
                let bytes = codec::encode(s).map_err(|e| e.to_string())?;
                spans.insert((s.trace, s.start_unix_us, *seq), bytes.as_slice()).map_err(|e| e.to_string())?;
                by_time.insert((s.start_unix_us, s.trace, *seq), ()).map_err(|e| e.to_string())?;
            }
        }
        let mut w = w;
        w.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
        w.commit().map_err(|e| e.to_string())?;
        self.stored.add(n as u64);
        self.pending_gauge.set(self.pending.lock().len() as f64);
        if let Some(x) = &self.export {
            x.send(batch.into_iter().map(|(_, s)| s).collect());
        }
        Ok(n)
    }

    /// Deletes spans older than the retention (`now_us` is the node's clock), then the
    /// oldest past `spans_max`. Returns how many went.
    pub fn prune(&self, now_us: u64) -> Result<u64, String> {
        let cutoff = now_us.saturating_sub(self.cfg.retention_ms.saturating_mul(1000));
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        let mut gone = 0u64;
        {
            let mut spans = w.open_table(SPANS).map_err(|e| e.to_string())?;
            let mut by_time = w.open_table(BY_TIME).map_err(|e| e.to_string())?;
            let total = by_time.len().map_err(|e| e.to_string())?;
            let over = total.saturating_sub(self.cfg.spans_max);
            let mut old: Vec<(u64, u64, u64)> = Vec::new();
            for (i, e) in by_time.iter().map_err(|e| e.to_string())?.enumerate() {
                let (k, _) = e.map_err(|e| e.to_string())?;
                let (start, trace, seq) = k.value();
                if start >= cutoff && i as u64 >= over {
                    break;
                }
                old.push((start, trace, seq));
            }
            for (start, trace, seq) in old {
                by_time.remove((start, trace, seq)).map_err(|e| e.to_string())?;
                spans.remove((trace, start, seq)).map_err(|e| e.to_string())?;
                gone += 1;
            }
        }
        w.commit().map_err(|e| e.to_string())?;
        Ok(gone)
    }

    /// The spans of `trace` this node holds (written or waiting), by start time; at
    /// most [`QUERY_MAX`].
    pub fn spans(&self, trace: TraceId) -> Result<Vec<SpanRecord>, String> {
        let mut out = Vec::new();
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(SPANS).map_err(|e| e.to_string())?;
        for e in t.range((trace, 0, 0)..=(trace, u64::MAX, u64::MAX)).map_err(|e| e.to_string())? {
            let (_, v) = e.map_err(|e| e.to_string())?;
            if out.len() >= QUERY_MAX {
                break;
            }
            out.push(codec::decode::<SpanRecord>(v.value()).map_err(|e| e.to_string())?);
        }
        for (_, s) in self.pending.lock().iter().filter(|(_, s)| s.trace == trace) {
            if out.len() >= QUERY_MAX {
                break;
            }
            out.push(s.clone());
        }
        out.sort_by_key(|s| s.start_unix_us);
        Ok(out)
    }

    /// Spans on disk.
    pub fn len(&self) -> Result<u64, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        r.open_table(BY_TIME).map_err(|e| e.to_string())?.len().map_err(|e| e.to_string())
    }

    /// Whether no span is on disk.
    pub fn is_empty(&self) -> Result<bool, String> {
        self.len().map(|n| n == 0)
    }

    /// Writes and prunes on a background task until the store is dropped.
    pub(crate) fn run(store: &Arc<TraceStore>) {
        let weak = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut since_prune = Duration::ZERO;
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(s) = weak.upgrade() else { return };
                since_prune += FLUSH_EVERY;
                let prune = since_prune >= PRUNE_EVERY;
                if prune {
                    since_prune = Duration::ZERO;
                }
                let now = unix_us();
                let r = tokio::task::spawn_blocking(move || {
                    let written = s.flush();
                    let pruned = if prune { s.prune(now).map(Some) } else { Ok(None) };
                    (written, pruned)
                })
                .await;
                match r {
                    Ok((Err(e), _)) | Ok((_, Err(e))) => tracing::warn!(error = %e, "span store"),
                    Err(e) => tracing::warn!(error = %e, "span store task"),
                    _ => {}
                }
            }
        });
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub('…'.len_utf8());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_and_values_are_cut_on_a_character_boundary_and_marked() {
        assert_eq!(bounded("short".into(), 64), "short");
        let cut = bounded("é".repeat(100), 9);
        assert!(cut.len() <= 9 && cut.ends_with('…'), "{cut}");
        assert_eq!(bounded("abcdefghij".into(), 5), "ab…");
    }
}
