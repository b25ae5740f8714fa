//! `clicklog`: a shard of the durable click log and the aggregator that folds it.
//!
//! Gateways send each shard the clicks of the codes that hash to it
//! ([`super::shard_of`]). A shard appends the batch to its replicated log
//! (`ctx.persist`, on disk on two nodes) and only then applies it to its
//! [`Aggregator`] and acknowledges. Its snapshot is the aggregator itself, written with
//! `ctx.snapshot`, which atomically replaces the log entries it covers.
//!
//! Invariants:
//! - exactly once: a batch is acknowledged only after it is durable; a gateway resends
//!   what was not acknowledged; the aggregator admits each event id once (within its dedup
//!   window), so a resent, replayed or recovered event is never counted twice;
//! - recovery = snapshot + replay of the log after it through the same `apply`;
//! - bounded: a batch holds at most `ingest_events_max` events; the dedup memory at most
//!   `dedup_ids_max` ids, which also bounds the snapshot (it must fit a frame to
//!   replicate).

use serde::{Deserialize, Serialize};
use troupe_runtime::wire::codec;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail};
use troupe_shortener::analytics::{Admission, Aggregator, AggregatorConfig, ClickEvent, StatsLimits};
pub use troupe_shortener::proto::{ClickLog, ClickLogMsg, ClickLogReply};

/// One entry of the durable log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ShardOp {
    Clicks(Vec<ClickEvent>),
    Forget(String),
}

/// Applies an entry; returns (new, duplicates, late).
fn apply(agg: &mut Aggregator, op: &ShardOp) -> (u32, u32, u32) {
    let mut n = (0, 0, 0);
    match op {
        ShardOp::Clicks(events) => {
            for e in events {
                match agg.apply(e) {
                    Admission::New => n.0 += 1,
                    Admission::Duplicate => n.1 += 1,
                    Admission::TooLate => n.2 += 1,
                }
            }
        }
        ShardOp::Forget(code) => {
            agg.remove_link(code);
        }
    }
    n
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickLogParams {
    /// Largest batch one `Ingest` may carry, in events.
    #[serde(default = "default_ingest_events_max")]
    pub ingest_events_max: usize,
    /// Snapshot the aggregator after this many log entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// How far behind the newest event a copy is still recognized, in milliseconds.
    #[serde(default = "default_dedup_window_ms")]
    pub dedup_window_ms: u64,
    /// Most event ids remembered per shard (~24 bytes each in a snapshot).
    #[serde(default = "default_dedup_ids_max")]
    pub dedup_ids_max: usize,
}

fn default_ingest_events_max() -> usize {
    1024
}
fn default_snapshot_every() -> u64 {
    32
}
fn default_dedup_window_ms() -> u64 {
    3_600_000
}
fn default_dedup_ids_max() -> usize {
    200_000
}

pub struct ClickLogActor {
    params: ClickLogParams,
}

impl FromParams for ClickLogActor {
    type Params = ClickLogParams;
    fn from_params(params: ClickLogParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(Self { params })
    }
    fn check(p: &ClickLogParams) -> Result<(), String> {
        if !(1..=8192).contains(&p.ingest_events_max) {
            return Err("ingest_events_max must be 1..=8192 events".into());
        }
        if !(1..=1024).contains(&p.snapshot_every) {
            return Err("snapshot_every must be 1..=1024 log entries".into());
        }
        if p.dedup_window_ms < 60_000 {
            return Err("dedup_window_ms must be at least 60000 ms (longer than any redelivery delay)".into());
        }
        // A snapshot is replicated in one frame (16 MiB by default): ~24 bytes per id.
        if !(1_000..=400_000).contains(&p.dedup_ids_max) {
            return Err("dedup_ids_max must be 1000..=400000 ids (the snapshot must fit one frame)".into());
        }
        Ok(())
    }
}

impl ClickLogActor {
    fn config(&self) -> AggregatorConfig {
        AggregatorConfig {
            dedup_window_ms: self.params.dedup_window_ms,
            dedup_ids_max: self.params.dedup_ids_max,
            limits: StatsLimits::default(),
        }
    }

    /// Persists `op` on two nodes, then applies it. On failure the shard reloads from the
    /// durable copies, because the entry may have reached some of them.
    async fn write(
        &self,
        ctx: &Ctx<ClickLog>,
        st: &mut ShardState,
        op: ShardOp,
    ) -> Result<(u32, u32, u32), RemoteError> {
        let bytes = codec::encode(&op).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        if let Err(e) = ctx.persist(bytes).await {
            tracing::warn!(path = %ctx.path(), error = %e, "click batch not acknowledged");
            // If recovering fails too, the runtime ends this incarnation after the
            // message (`Ctx::must_recover`) and its restart recovers.
            match self.init(ctx).await {
                Ok(fresh) => *st = fresh,
                Err(e) => tracing::warn!(path = %ctx.path(), error = %e, "recovery after a failed write failed"),
            }
            return Err(RemoteError::ActorFailed { path: ctx.path().to_string(), reason: e.to_string() });
        }
        let counts = apply(&mut st.agg, &op);
        st.since_snapshot += 1;
        if st.since_snapshot >= self.params.snapshot_every
            && let Ok(snap) = codec::encode(&st.agg.snapshot())
            && ctx.snapshot(snap).await.is_ok()
        {
            st.since_snapshot = 0;
        }
        Ok(counts)
    }
}

pub struct ShardState {
    agg: Aggregator,
    since_snapshot: u64,
}

impl Behavior for ClickLogActor {
    type Proto = ClickLog;
    type State = ShardState;

    async fn init(&self, ctx: &Ctx<ClickLog>) -> Result<ShardState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut agg = match &r.snapshot {
            Some((_, b)) => Aggregator::restore(
                codec::decode(b).map_err(|e| fail(format!("corrupt snapshot of {}: {e}", ctx.path())))?,
            ),
            None => Aggregator::new(self.config()),
        };
        for (_, b) in &r.entries {
            let op: ShardOp = codec::decode(b).map_err(|e| fail(format!("corrupt click log entry: {e}")))?;
            apply(&mut agg, &op);
        }
        Ok(ShardState { agg, since_snapshot: r.entries.len() as u64 })
    }

    async fn handle(
        &self,
        ctx: &Ctx<ClickLog>,
        st: &mut ShardState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            ClickLogMsg::Ingest { events } => {
                if events.len() > self.params.ingest_events_max {
                    reply.fail(RemoteError::Invalid(format!(
                        "a batch of {} events is over ingest_events_max ({})",
                        events.len(),
                        self.params.ingest_events_max
                    )));
                    return Ok(());
                }
                match self.write(ctx, st, ShardOp::Clicks(events)).await {
                    Ok((new, duplicates, late)) => reply.send(ClickLogReply::Ingested { new, duplicates, late }).await,
                    Err(e) => reply.fail(e),
                }
            }
            ClickLogMsg::Stats { code, top_n } => {
                let report = st.agg.link(&code).map(|s| s.report(top_n.clamp(1, 100) as usize));
                reply.send(ClickLogReply::Stats(report)).await;
            }
            ClickLogMsg::Forget { code } => {
                if st.agg.link(&code).is_none() {
                    reply.send(ClickLogReply::Forgotten).await;
                    return Ok(());
                }
                match self.write(ctx, st, ShardOp::Forget(code)).await {
                    Ok(_) => reply.send(ClickLogReply::Forgotten).await,
                    Err(e) => reply.fail(e),
                }
            }
            ClickLogMsg::Status => {
                reply
                    .send(ClickLogReply::Status {
                        links: st.agg.links().count() as u64,
                        duplicate_events: st.agg.duplicate_events(),
                        late_events: st.agg.late_events(),
                        dedup_ids: st.agg.dedup().len() as u64,
                    })
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_shortener::analytics::EventId;

    fn click(id: u64, code: &str) -> ClickEvent {
        ClickEvent::from_request(EventId::from_parts(7, id), code, 1_767_225_600_000 + id, None, Some("curl/8"), None)
    }

    #[test]
    fn replayed_log_with_redelivered_batches_counts_each_click_once() {
        let ops = vec![
            ShardOp::Clicks(vec![click(1, "a"), click(2, "a"), click(3, "b")]),
            // A gateway resent the batch after a timeout; one event is new.
            ShardOp::Clicks(vec![click(2, "a"), click(3, "b"), click(4, "b")]),
            ShardOp::Forget("zzz".into()),
        ];
        let mut live = Aggregator::new(AggregatorConfig::default());
        let counts: Vec<_> = ops.iter().map(|op| apply(&mut live, op)).collect();
        assert_eq!(counts, vec![(3, 0, 0), (1, 2, 0), (0, 0, 0)]);
        // Crash after the first entry: snapshot + the rest of the log through the codec.
        let mut early = Aggregator::new(AggregatorConfig::default());
        apply(&mut early, &ops[0]);
        let snap = codec::encode(&early.snapshot()).unwrap_or_default();
        let mut recovered = Aggregator::restore(codec::decode(&snap).unwrap_or_else(|_| early.clone()));
        for op in &ops {
            // Replaying from before the snapshot is safe too.
            let bytes = codec::encode(op).unwrap_or_default();
            let op: ShardOp = codec::decode(&bytes).unwrap_or(ShardOp::Forget(String::new()));
            apply(&mut recovered, &op);
        }
        assert_eq!(recovered.link("a").map(|s| s.total), Some(2));
        assert_eq!(recovered.link("b").map(|s| s.total), Some(2));
        assert_eq!(recovered.links().count(), live.links().count());
    }

    #[test]
    fn forget_drops_a_link() {
        let mut agg = Aggregator::new(AggregatorConfig::default());
        apply(&mut agg, &ShardOp::Clicks(vec![click(1, "gone")]));
        apply(&mut agg, &ShardOp::Forget("gone".into()));
        assert!(agg.link("gone").is_none());
    }
}
