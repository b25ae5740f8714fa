//! `kv.store`: a replicated key-value store, one sharded entity per key. It is
//! the runtime's own end-to-end system — small, but every write goes through the
//! durable, replicated log, so tests can kill nodes and count what survived.
//!
//! Invariants (docs/replication.md): a write is acknowledged only after `ctx.persist`
//! returned, i.e. after it is on disk on a majority of the key's replica set; a read
//! is answered only after `ctx.confirm` — a majority still backs this owner's term —
//! so every key is linearizable, and a node cut off with a minority answers an error,
//! not a stale value.

use serde::{Deserialize, Serialize};
pub use troupe_kv::store::{KvMsg, KvReply, KvStore};
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail};

/// One entry of the durable log.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum KvOp {
    Set(String),
    Clear,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvParams {
    /// Largest value accepted, in bytes.
    #[serde(default = "default_value_bytes_max")]
    pub value_bytes_max: usize,
    /// Snapshot the entity after this many log entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

fn default_value_bytes_max() -> usize {
    64 << 10
}
fn default_snapshot_every() -> u64 {
    64
}

pub struct KvStoreActor {
    params: KvParams,
}

impl FromParams for KvStoreActor {
    type Params = KvParams;
    fn from_params(params: KvParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(Self { params })
    }
    fn check(p: &KvParams) -> Result<(), String> {
        if p.value_bytes_max == 0 || p.value_bytes_max > 8 << 20 {
            return Err("value_bytes_max must be between 1 and 8388608 bytes".into());
        }
        if p.snapshot_every == 0 {
            return Err("snapshot_every must be at least 1".into());
        }
        Ok(())
    }
}

pub struct KvState {
    value: Option<String>,
    version: u64,
    since_snapshot: u64,
}

fn apply(state: &mut KvState, op: KvOp) {
    state.value = match op {
        KvOp::Set(v) => Some(v),
        KvOp::Clear => None,
    };
}

impl KvStoreActor {
    async fn write(&self, ctx: &Ctx<KvStore>, st: &mut KvState, op: KvOp) -> Result<u64, ActorError> {
        let bytes = troupe_runtime::wire::codec::encode(&op).map_err(|e| fail(e.to_string()))?;
        let seq = ctx.persist(bytes).await.map_err(|e| fail(e.to_string()))?;
        apply(st, op);
        st.version = seq;
        st.since_snapshot += 1;
        if st.since_snapshot >= self.params.snapshot_every {
            let snap = troupe_runtime::wire::codec::encode(&st.value).map_err(|e| fail(e.to_string()))?;
            ctx.snapshot(snap).await.map_err(|e| fail(e.to_string()))?;
            st.since_snapshot = 0;
        }
        Ok(seq)
    }
}

impl Behavior for KvStoreActor {
    type Proto = KvStore;
    type State = KvState;

    async fn init(&self, ctx: &Ctx<KvStore>) -> Result<KvState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut st = KvState { value: None, version: r.last_seq(), since_snapshot: r.entries.len() as u64 };
        if let Some((_, bytes)) = &r.snapshot {
            st.value =
                troupe_runtime::wire::codec::decode(bytes).map_err(|e| fail(format!("corrupt snapshot: {e}")))?;
        }
        for (_, bytes) in &r.entries {
            let op: KvOp =
                troupe_runtime::wire::codec::decode(bytes).map_err(|e| fail(format!("corrupt log entry: {e}")))?;
            apply(&mut st, op);
        }
        Ok(st)
    }

    async fn handle(
        &self,
        ctx: &Ctx<KvStore>,
        st: &mut KvState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            KvMsg::Get => match ctx.confirm().await {
                Ok(()) => reply.send(KvReply::Value { value: st.value.clone(), version: st.version }).await,
                // Another owner may have taken over: re-elect (or fail to) before the
                // next request.
                Err(e) => self.fail_write(ctx, st, reply, fail(e.to_string())).await?,
            },
            KvMsg::Put { value } => {
                if value.len() > self.params.value_bytes_max {
                    reply.fail(RemoteError::Invalid(format!(
                        "value of {} bytes is over value_bytes_max ({} bytes)",
                        value.len(),
                        self.params.value_bytes_max
                    )));
                    return Ok(());
                }
                match self.write(ctx, st, KvOp::Set(value)).await {
                    Ok(version) => reply.send(KvReply::Written { version }).await,
                    Err(e) => self.fail_write(ctx, st, reply, e).await?,
                }
            }
            KvMsg::Delete => {
                let existed = st.value.is_some();
                match self.write(ctx, st, KvOp::Clear).await {
                    Ok(version) => reply.send(KvReply::Deleted { existed, version }).await,
                    Err(e) => self.fail_write(ctx, st, reply, e).await?,
                }
            }
            KvMsg::Incr { by } => {
                let cur = match st.value.as_deref().map(str::parse::<i64>) {
                    None => 0,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => {
                        reply.fail(RemoteError::Invalid(format!("{} does not hold an integer", ctx.key())));
                        return Ok(());
                    }
                };
                let Some(next) = cur.checked_add(by) else {
                    reply.fail(RemoteError::Invalid("integer overflow".into()));
                    return Ok(());
                };
                match self.write(ctx, st, KvOp::Set(next.to_string())).await {
                    Ok(version) => reply.send(KvReply::Counter { value: next, version }).await,
                    Err(e) => self.fail_write(ctx, st, reply, e).await?,
                }
            }
        }
        Ok(())
    }
}

impl KvStoreActor {
    /// A write that could not be made durable on a majority (or a read whose barrier
    /// failed) is not acknowledged: the caller gets an error and may retry. The entry
    /// may have reached some disks, and another owner may have taken over, so the
    /// entity recovers again instead of guessing.
    async fn fail_write(
        &self,
        ctx: &Ctx<KvStore>,
        st: &mut KvState,
        reply: Reply<KvReply>,
        e: ActorError,
    ) -> Result<(), ActorError> {
        tracing::warn!(path = %ctx.path(), error = %e, "write not acknowledged");
        reply.fail(RemoteError::ActorFailed { path: ctx.path().to_string(), reason: e.to_string() });
        *st = self.init(ctx).await?;
        Ok(())
    }
}
