//! Click analytics off the redirect path: a bounded buffer the redirect hands its click
//! to (`try_send`, never awaited), and a shipper task that sends batches to the
//! `clicklog` shards and resends what was not acknowledged.
//!
//! Invariants:
//! - a redirect never waits: a full buffer drops the click and counts it
//!   (`troupe_shortener_clicks_dropped_total`);
//! - memory is bounded: the channel holds at most `click_buffer_events` events and the
//!   shipper takes more from it only while its unacknowledged batches hold fewer;
//! - every event has an id unique in the cluster (a minter per gateway incarnation, a
//!   sequence inside it), the same in every resent copy, so the shard counts it once;
//! - a click is lost only if this process dies while the click is in its memory (at most
//!   `ship_every_ms` plus one round trip after the redirect, when the shards are healthy).

use crate::clicklog::{ClickLog, ClickLogMsg, ClickLogReply};
use crate::{KIND_CLICKLOG, shard_of};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use troupe_runtime::metrics::{Counter, Gauge};
use troupe_runtime::{ActorPath, Node};
use troupe_shortener::analytics::{ClickEvent, EventId};
use troupe_shortener::geo::CountryCode;

/// Gateway incarnations in this process, so a restarted gateway never reuses a minter.
static INCARNATIONS: AtomicU64 = AtomicU64::new(0);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 64-bit minter for this gateway incarnation: node name, boot epoch, process id,
/// incarnation and the clock, mixed. Two incarnations share one with probability ~2^-64.
pub fn new_minter(node: &Node) -> u64 {
    let n = INCARNATIONS.fetch_add(1, Ordering::SeqCst);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    let mut z = mix(crate::stable_hash(node.name().as_bytes()));
    for part in [node.epoch(), u64::from(std::process::id()), n, clock.unwrap_or(0)] {
        z = mix(z ^ part);
    }
    z
}

pub struct ClickMetrics {
    pub recorded: Counter,
    pub dropped: Counter,
    pub shipped: Counter,
    pub duplicates: Counter,
    pub late: Counter,
    pub ship_failures: Counter,
    pub unacked: Gauge,
}

impl ClickMetrics {
    pub fn new(node: &Node) -> Self {
        let m = node.metrics();
        let c = |name: &str, help: &str| m.counter(name, help, &[]);
        Self {
            recorded: c("troupe_shortener_clicks_recorded_total", "Clicks handed to the click buffer."),
            dropped: c("troupe_shortener_clicks_dropped_total", "Clicks dropped because the click buffer was full."),
            shipped: c("troupe_shortener_clicks_shipped_total", "Clicks acknowledged by a click-log shard."),
            duplicates: c("troupe_shortener_clicks_duplicate_total", "Shipped clicks a shard had already counted."),
            late: c("troupe_shortener_clicks_late_total", "Shipped clicks older than a shard's dedup window."),
            ship_failures: c("troupe_shortener_click_ship_failures_total", "Click batches not acknowledged (resent)."),
            unacked: m.gauge(
                "troupe_shortener_clicks_unacked",
                "Clicks taken from the buffer, not yet acknowledged.",
                &[],
            ),
        }
    }
}

/// The redirect side: mints the event and hands it over without waiting.
pub struct ClickSink {
    tx: mpsc::Sender<ClickEvent>,
    minter: u64,
    seq: AtomicU64,
    metrics: std::sync::Arc<ClickMetrics>,
}

impl ClickSink {
    pub fn record(
        &self,
        code: &str,
        now_ms: u64,
        referer: Option<&str>,
        user_agent: Option<&str>,
        country: Option<CountryCode>,
    ) {
        let id = EventId::from_parts(self.minter, self.seq.fetch_add(1, Ordering::Relaxed));
        let ev = ClickEvent::from_request(id, code, now_ms, referer, user_agent, country);
        self.metrics.recorded.inc();
        if self.tx.try_send(ev).is_err() {
            self.metrics.dropped.inc();
        }
    }
}

pub struct ShipConfig {
    pub system: String,
    pub shards: u32,
    pub batch_events: usize,
    pub every: Duration,
    pub buffer_events: usize,
    pub timeout: Duration,
}

/// The buffer and its shipper task (which ends once the sink is dropped and everything
/// it holds is acknowledged, or after `DRAIN_AFTER_CLOSE` of trying).
pub fn start(node: &Node, cfg: ShipConfig, metrics: std::sync::Arc<ClickMetrics>) -> ClickSink {
    let (tx, rx) = mpsc::channel(cfg.buffer_events);
    let sink = ClickSink { tx, minter: new_minter(node), seq: AtomicU64::new(0), metrics: metrics.clone() };
    tokio::spawn(ship(node.clone(), cfg, rx, metrics));
    sink
}

/// How long a closed buffer keeps trying to deliver what it holds.
const DRAIN_AFTER_CLOSE: Duration = Duration::from_secs(30);

async fn ship(node: Node, cfg: ShipConfig, mut rx: mpsc::Receiver<ClickEvent>, m: std::sync::Arc<ClickMetrics>) {
    let mut pending: BTreeMap<u32, Vec<ClickEvent>> = BTreeMap::new();
    let mut held = 0usize;
    let mut closed_at: Option<Instant> = None;
    let mut failures_logged = 0u64;
    loop {
        tokio::time::sleep(cfg.every).await;
        while held < cfg.buffer_events {
            match rx.try_recv() {
                Ok(ev) => {
                    pending.entry(shard_of(&ev.code, cfg.shards)).or_default().push(ev);
                    held += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        let sends = pending.iter().filter(|(_, v)| !v.is_empty()).map(|(shard, events)| {
            let node = node.clone();
            let batch: Vec<ClickEvent> = events.iter().take(cfg.batch_events).cloned().collect();
            let system = cfg.system.clone();
            let timeout = cfg.timeout;
            let shard = *shard;
            async move {
                let n = batch.len();
                let path = ActorPath::new(&system, KIND_CLICKLOG, &shard.to_string());
                let r = match path {
                    Ok(p) => {
                        node.handle::<ClickLog>(p).ask_timeout(ClickLogMsg::Ingest { events: batch }, timeout).await
                    }
                    Err(e) => Err(troupe_runtime::RemoteError::Invalid(e.to_string())),
                };
                (shard, n, r)
            }
        });
        for (shard, n, r) in futures::future::join_all(sends).await {
            match r {
                Ok(ClickLogReply::Ingested { duplicates, late, .. }) => {
                    if let Some(v) = pending.get_mut(&shard) {
                        v.drain(..n.min(v.len()));
                    }
                    held -= n;
                    m.shipped.add(n as u64);
                    m.duplicates.add(u64::from(duplicates));
                    m.late.add(u64::from(late));
                }
                other => {
                    m.ship_failures.inc();
                    // Log the first few and then every 100th: a dead shard owner fails every tick.
                    if failures_logged < 5 || failures_logged.is_multiple_of(100) {
                        tracing::warn!(shard, events = n, answer = ?other.err(), "click batch not acknowledged; will resend");
                    }
                    failures_logged += 1;
                }
            }
        }
        m.unacked.set(held as f64);
        if let Some(at) = closed_at
            && (held == 0 || at.elapsed() > DRAIN_AFTER_CLOSE)
        {
            if held > 0 {
                tracing::error!(events = held, "gateway stopped with unacknowledged clicks; they are lost");
            }
            return;
        }
    }
}
