//! Durable traces: the spans of sampled requests, with their fields. Every sampled
//! span (odd trace ids) is kept in memory (the newest [`RING_MAX`]); the spans of
//! *kept* traces are also written to the node's own redb file
//! (`<data_dir>/<node>/traces.redb`) for `[tracing] retention_ms` (and at most
//! `spans_max` spans), so `troupe trace <id>` and the SDK read them back from any node,
//! also after the nodes that recorded them restarted; and, when `[tracing]
//! otlp_endpoint` is set, exported over OTLP/HTTP ([`crate::otlp`]).
//!
//! A trace is kept when its id says so (bit 1 set as well as bit 0: `troupe ask` and
//! `Client::new_kept_trace` make such ids) or, for the rest, one in `[tracing]
//! keep_one_in` by id (default 64), so a node under heavy sampled traffic (every SDK
//! and gateway request is sampled) writes a bounded share of it.
//!
//! Recording never waits on a disk or the network: a kept span goes to a buffer
//! bounded in spans and bytes (past it the oldest are dropped and counted), written
//! every [`FLUSH_EVERY`] in one durable commit on a blocking thread, then handed to the
//! exporter's bounded queue.
//!
//! Invariants: a flushed span survives a crash of its node; a failed write is counted
//! as dropped; spans older than the retention, and the oldest past `spans_max`, are
//! deleted by the next prune, at most [`PRUNE_CHUNK`] per transaction; a query answers
//! at most [`QUERY_BYTES_MAX`] bytes of spans (well below the frame limit).

use crate::config::cluster::TracingConfig;
use crate::metrics::{Counter, Gauge, Metrics};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_wire::introspect::SpanRecord;
use troupe_wire::{TraceId, codec};

/// (trace id, start µs, sequence) → the span (bincode).
const SPANS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("spans");
/// (start µs, trace id, sequence): the spans in age order, for the retention.
const BY_TIME: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("spans_by_time");

/// How often kept spans are written (and exported).
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often spans past the retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Spans one prune transaction deletes at most (a long backlog takes several).
pub const PRUNE_CHUNK: usize = 10_000;
/// Kept spans waiting for the next write at most, in spans and in bytes.
pub const PENDING_MAX: usize = 65_536;
/// See [`PENDING_MAX`].
pub const PENDING_BYTES_MAX: usize = 32 << 20;
/// Sampled spans kept in memory only (the newest).
pub const RING_MAX: usize = 50_000;
/// Bytes of spans one query answers at most.
pub const QUERY_BYTES_MAX: usize = 8 << 20;
/// Fields one span keeps at most.
pub const FIELDS_MAX: usize = 32;
/// The longest field key, in bytes.
pub const FIELD_KEY_MAX: usize = 64;
/// The longest field value, in bytes (longer ones are cut, marked with `…`).
pub const FIELD_VALUE_MAX: usize = 1024;
/// The redb page cache of the span file (the state file has its own).
const CACHE_BYTES: usize = 32 << 20;

/// About what a span costs in memory and on the wire.
pub(crate) fn span_bytes(s: &SpanRecord) -> usize {
    64 + s.node.len()
        + s.name.len()
        + s.target.len()
        + s.fields.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>()
}

/// Whether `trace`'s spans are written to disk: asked for (bit 1), or one in
/// `keep_one_in` by id (0: only those asked for).
pub fn is_kept(trace: TraceId, keep_one_in: u64) -> bool {
    trace & 3 == 3 || (keep_one_in > 0 && (trace >> 2).is_multiple_of(keep_one_in))
}

#[derive(Default)]
struct Buffers {
    /// Kept spans waiting for the next write, with their sequence numbers.
    pending: VecDeque<(u64, SpanRecord)>,
    pending_bytes: usize,
    /// Sampled spans of traces not kept: memory only.
    ring: VecDeque<SpanRecord>,
}

/// A node's span store.
pub struct TraceStore {
    db: Database,
    buf: Mutex<Buffers>,
    next_seq: std::sync::atomic::AtomicU64,
    cfg: TracingConfig,
    /// The node's clock: wall time at boot plus the monotonic time since.
    clock: (u64, Instant),
    dropped: Counter,
    stored: Counter,
    pending_gauge: Gauge,
    export: Option<crate::otlp::Exporter>,
}

impl TraceStore {
    /// Opens (or creates) the span file (blocking; see [`open_file`]) and starts the
    /// store over it.
    pub fn open(
        path: &Path,
        cfg: TracingConfig,
        metrics: &Metrics,
        node: &str,
        clock: (u64, Instant),
    ) -> Result<TraceStore, String> {
        Ok(TraceStore::with_file(open_file(path, clock.0)?, cfg, metrics, node, clock))
    }

    /// The store over an opened span file; `clock` is the node's (wall time at boot in
    /// µs, and the instant of boot).
    pub fn with_file(
        db: Database,
        cfg: TracingConfig,
        metrics: &Metrics,
        node: &str,
        clock: (u64, Instant),
    ) -> TraceStore {
        let export =
            cfg.otlp_endpoint.as_ref().map(|url| crate::otlp::Exporter::start(url, &cfg.service_name, node, metrics));
        TraceStore {
            db,
            buf: Mutex::new(Buffers::default()),
            next_seq: std::sync::atomic::AtomicU64::new(u64::from(rand::random::<u32>()) << 20),
            dropped: metrics.counter("troupe_spans_dropped_total", "Kept spans lost before they were written", &[]),
            stored: metrics.counter("troupe_spans_stored_total", "Spans written to this node's span store", &[]),
            pending_gauge: metrics.gauge("troupe_spans_pending", "Kept spans recorded and not yet written", &[]),
            cfg,
            clock,
            export,
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.0 + self.clock.1.elapsed().as_micros() as u64
    }

    /// Keeps `span`: in memory, and written at the next flush when its trace is kept.
    pub fn record(&self, span: SpanRecord) {
        let kept = is_kept(span.trace, self.cfg.keep_one_in);
        let mut b = self.buf.lock();
        if !kept {
            if b.ring.len() >= RING_MAX {
                b.ring.pop_front();
            }
            b.ring.push_back(span);
            return;
        }
        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b.pending_bytes += span_bytes(&span);
        b.pending.push_back((seq, span));
        while b.pending.len() > PENDING_MAX || b.pending_bytes > PENDING_BYTES_MAX {
            let Some((_, old)) = b.pending.pop_front() else { break };
            b.pending_bytes -= span_bytes(&old);
            self.dropped.inc();
        }
        self.pending_gauge.set(b.pending.len() as f64);
    }

    /// Writes the kept spans recorded since the last flush, in one durable commit, and
    /// hands them to the exporter. Blocking: call it off the async executor.
    pub fn flush(&self) -> Result<usize, String> {
        let batch: Vec<(u64, SpanRecord)> = {
            let mut b = self.buf.lock();
            b.pending_bytes = 0;
            b.pending.drain(..).collect()
        };
        if batch.is_empty() {
            self.pending_gauge.set(0.0);
            return Ok(0);
        }
        let n = batch.len();
        let written = self.write(&batch);
        self.pending_gauge.set(self.buf.lock().pending.len() as f64);
        if let Err(e) = written {
            self.dropped.add(n as u64);
            return Err(e);
        }
        self.stored.add(n as u64);
        if let Some(x) = &self.export {
            x.send(batch);
        }
        Ok(n)
    }

    fn write(&self, batch: &[(u64, SpanRecord)]) -> Result<(), String> {
        let mut w = self.db.begin_write().map_err(|e| e.to_string())?;
        w.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
        {
            let mut spans = w.open_table(SPANS).map_err(|e| e.to_string())?;
            let mut by_time = w.open_table(BY_TIME).map_err(|e| e.to_string())?;
            for (seq, s) in batch {
                let bytes = codec::encode(s).map_err(|e| e.to_string())?;
                spans.insert((s.trace, s.start_unix_us, *seq), bytes.as_slice()).map_err(|e| e.to_string())?;
                by_time.insert((s.start_unix_us, s.trace, *seq), ()).map_err(|e| e.to_string())?;
            }
        }
        w.commit().map_err(|e| e.to_string())
    }

    /// Deletes spans older than the retention (`now_us` on the node's clock), then the
    /// oldest past `spans_max`, [`PRUNE_CHUNK`] per transaction. Returns how many went.
    /// Blocking.
    pub fn prune(&self, now_us: u64) -> Result<u64, String> {
        let cutoff = now_us.saturating_sub(self.cfg.retention_ms.saturating_mul(1000));
        let mut gone = 0u64;
        loop {
            let w = self.db.begin_write().map_err(|e| e.to_string())?;
            let n;
            {
                let mut spans = w.open_table(SPANS).map_err(|e| e.to_string())?;
                let mut by_time = w.open_table(BY_TIME).map_err(|e| e.to_string())?;
                let over = by_time.len().map_err(|e| e.to_string())?.saturating_sub(self.cfg.spans_max);
                let mut old: Vec<(u64, u64, u64)> = Vec::new();
                for (i, e) in by_time.iter().map_err(|e| e.to_string())?.enumerate() {
                    let (k, _) = e.map_err(|e| e.to_string())?;
                    let key = k.value();
                    if (key.0 >= cutoff && i as u64 >= over) || old.len() >= PRUNE_CHUNK {
                        break;
                    }
                    old.push(key);
                }
                n = old.len();
                for (start, trace, seq) in old {
                    by_time.remove((start, trace, seq)).map_err(|e| e.to_string())?;
                    spans.remove((trace, start, seq)).map_err(|e| e.to_string())?;
                }
            }
            w.commit().map_err(|e| e.to_string())?;
            gone += n as u64;
            if n < PRUNE_CHUNK {
                return Ok(gone);
            }
        }
    }

    /// The spans of `trace` this node holds (written, waiting, or in memory), by start
    /// time; at most [`QUERY_BYTES_MAX`] bytes of them. Blocking.
    pub fn spans(&self, trace: TraceId) -> Result<Vec<SpanRecord>, String> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut take = |s: SpanRecord, out: &mut Vec<SpanRecord>| {
            bytes += span_bytes(&s);
            if bytes > QUERY_BYTES_MAX {
                return false;
            }
            out.push(s);
            true
        };
        {
            let b = self.buf.lock();
            let waiting = b.pending.iter().map(|(_, s)| s).chain(b.ring.iter()).filter(|s| s.trace == trace);
            let mine: Vec<SpanRecord> = waiting.cloned().collect();
            drop(b);
            for s in mine {
                if !take(s, &mut out) {
                    break;
                }
            }
        }
        if is_kept(trace, self.cfg.keep_one_in) {
            let r = self.db.begin_read().map_err(|e| e.to_string())?;
            let t = r.open_table(SPANS).map_err(|e| e.to_string())?;
            for e in t.range((trace, 0, 0)..=(trace, u64::MAX, u64::MAX)).map_err(|e| e.to_string())? {
                let (_, v) = e.map_err(|e| e.to_string())?;
                if !take(codec::decode::<SpanRecord>(v.value()).map_err(|e| e.to_string())?, &mut out) {
                    break;
                }
            }
        }
        out.sort_by_key(|s| s.start_unix_us);
        // A span is in the buffer or on disk, not both, unless a flush ran between
        // the two looks.
        out.dedup();
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

    /// Writes and prunes on blocking threads, every [`FLUSH_EVERY`], until the store is
    /// dropped; a run of failures is logged once.
    pub(crate) fn run(store: &Arc<TraceStore>) {
        let weak = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut since_prune = Duration::ZERO;
            let mut failing = false;
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(s) = weak.upgrade() else { return };
                since_prune += FLUSH_EVERY;
                let prune = since_prune >= PRUNE_EVERY;
                if prune {
                    since_prune = Duration::ZERO;
                }
                let r = tokio::task::spawn_blocking(move || {
                    let written = s.flush();
                    let pruned = if prune { s.prune(s.now_us()).map(Some) } else { Ok(None) };
                    written.and(pruned)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match r {
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "span store: writing or pruning failed; spans are dropped meanwhile");
                        failing = true;
                    }
                    Err(_) => {}
                    Ok(_) => failing = false,
                }
            }
        });
    }
}

/// Opens (or creates) a span file; blocking. A file that cannot be opened (damaged) is
/// moved aside as `<file>.broken-<unix s>` (`now_us`: the node's clock) and a new one
/// started: losing old spans must not keep a node from starting.
pub fn open_file(path: &Path, now_us: u64) -> Result<Database, String> {
    match create(path) {
        Ok(db) => Ok(db),
        Err(e) if path.exists() && !e.contains("already open") => {
            let aside = path.with_extension(format!("redb.broken-{}", now_us / 1_000_000));
            tracing::warn!(file = %path.display(), error = %e, moved_to = %aside.display(), "span store unreadable; starting a new one");
            std::fs::rename(path, &aside).map_err(|e| format!("{}: {e}", path.display()))?;
            create(path)
        }
        Err(e) => Err(e),
    }
}

fn create(path: &Path) -> Result<Database, String> {
    let db =
        Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let w = db.begin_write().map_err(|e| e.to_string())?;
    {
        w.open_table(SPANS).map_err(|e| e.to_string())?;
        w.open_table(BY_TIME).map_err(|e| e.to_string())?;
    }
    w.commit().map_err(|e| e.to_string())?;
    Ok(db)
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

    #[test]
    fn traces_asked_to_be_kept_always_are_and_the_rest_one_in_n() {
        assert!(is_kept(0b11, 64) && is_kept(0b111, 0));
        assert!(!is_kept(0b101, 0), "keep_one_in = 0 keeps only the traces asked for");
        let kept = (0..64_000u64).map(|i| (i << 2) | 1).filter(|t| is_kept(*t, 64)).count();
        assert_eq!(kept, 1000);
        assert!((0..100u64).map(|i| (i << 2) | 1).all(|t| is_kept(t, 1)));
    }
}
