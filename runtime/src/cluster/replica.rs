//! Replication of durable state: primary-backup over the placement order, fenced by
//! the membership view. The argument is in docs/replication.md; in short:
//!
//! - The owner of a path (first in the rendezvous order of live nodes) writes
//!   locally and then to the next `replication_factor - 1` nodes, and acknowledges
//!   only when all of them have the entry on disk.
//! - A replica accepts a write only if, in its own view, the writer owns the path,
//!   and only if the entry extends its log without a gap (else it asks for a full
//!   sync). A new owner recovers by asking every live node for its copy and taking
//!   the newest — and a node answers only if it, too, sees the asker as the owner.
//! - On each node, the owner check and the disk write (or the read of a copy) happen
//!   under one per-path lock, so a node cannot accept a write from an old owner after
//!   it has handed its copy to a new one.
//!
//! Replication messages go to the built-in per-node actor `/troupe/replica/<node>`.

use crate::actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf};
use crate::config::KindSpec;
use crate::node::Node;
use crate::reply::Reply;
use crate::store::{Recovered, StoreError, WriteOp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use troupe_core::replication::{self, FAILOVER_ROUNDS_MAX, Recovery, RecoveryRound, WriteCheck, WriteRound, WriteStep};
use troupe_wire::{ActorPath, Protocol, RemoteError};

pub(crate) struct ReplicaProto;

impl Protocol for ReplicaProto {
    type Msg = ReplicaMsg;
    type Reply = ReplicaReply;
    const NAME: &'static str = "troupe.replica";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ReplicaMsg {
    /// Apply these operations for `path`, written by its owner `owner`.
    Write { path: String, owner: String, ops: Vec<WriteOp> },
    /// Hand over your copy of `path` to its new owner `owner`.
    Load { path: String, owner: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ReplicaReply {
    Written,
    Loaded(Recovered),
    /// The entry would leave a hole: the log here ends at `have`.
    Gap {
        have: u64,
    },
    /// This node does not see the sender as the owner.
    Refused(String),
}

/// How long one replication round trip may take.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(3);
/// A replica ask that takes this long is logged.
const SLOW_REPLICA_ASK: Duration = Duration::from_millis(250);
/// How long recovery waits for every live node to agree on the new owner.
const RECOVER_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) struct ReplicaAgent;

impl FromParams for ReplicaAgent {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(ReplicaAgent)
    }
}

impl Behavior for ReplicaAgent {
    type Proto = ReplicaProto;
    type State = ();

    async fn init(&self, _: &Ctx<ReplicaProto>) -> Result<(), ActorError> {
        Ok(())
    }

    async fn handle(
        &self,
        ctx: &Ctx<ReplicaProto>,
        _: &mut (),
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        // Each request runs on its own task: writes of different paths proceed in
        // parallel and are group-committed by the store.
        let node = ctx.node().clone();
        tokio::spawn(async move {
            let answer = match msg {
                ReplicaMsg::Write { path, owner, ops } => apply(&node, &path, &owner, ops).await,
                ReplicaMsg::Load { path, owner } => load(&node, &path, &owner).await,
            };
            reply.send(answer).await;
        });
        Ok(())
    }
}

/// The owner of `path` in this node's view, or why there is none.
fn view_owner(node: &Node, path: &str) -> Result<String, String> {
    let p = ActorPath::parse(path).map_err(|e| e.to_string())?;
    let ks = node.kind_spec(p.system(), p.kind()).ok_or_else(|| format!("no kind for {path} here"))?;
    node.owner_of(ks, &p).map_err(|e| e.to_string())
}

fn last_seq(node: &Node, path: &str) -> Result<u64, StoreError> {
    node.store().load(path).map(|r| r.last_seq())
}

/// Applies a write here, under the path lock, if the writer owns the path in our
/// view and the write leaves no gap.
pub(crate) async fn apply(node: &Node, path: &str, owner: &str, ops: Vec<WriteOp>) -> ReplicaReply {
    let Some(cluster) = node.cluster() else { return ReplicaReply::Refused("not clustered".into()) };
    let _guard = cluster.path_lock(path).lock().await;
    let first_append = match ops.first() {
        Some(WriteOp::Append { seq, .. }) => Some(*seq),
        _ => None,
    };
    let have = match first_append {
        Some(_) => match last_seq(node, path) {
            Ok(have) => have,
            Err(e) => return ReplicaReply::Refused(e.to_string()),
        },
        None => 0,
    };
    let owner_here = view_owner(node, path);
    match replication::check_write(
        node.name(),
        path,
        owner,
        owner_here.as_deref().map_err(Clone::clone),
        first_append,
        have,
    ) {
        WriteCheck::Accept => {}
        WriteCheck::Gap { have } => return ReplicaReply::Gap { have },
        WriteCheck::Refuse(why) => return ReplicaReply::Refused(why),
    }
    match node.store().write(ops).await {
        Ok(()) => ReplicaReply::Written,
        Err(e) => ReplicaReply::Refused(e.to_string()),
    }
}

async fn load(node: &Node, path: &str, owner: &str) -> ReplicaReply {
    let Some(cluster) = node.cluster() else { return ReplicaReply::Refused("not clustered".into()) };
    let _guard = cluster.path_lock(path).lock().await;
    let owner_here = view_owner(node, path);
    if let Err(why) = replication::check_owner(node.name(), path, owner, owner_here.as_deref().map_err(Clone::clone)) {
        return ReplicaReply::Refused(why);
    }
    match node.store().load(path) {
        Ok(r) => ReplicaReply::Loaded(r),
        Err(e) => ReplicaReply::Refused(e.to_string()),
    }
}

fn agent_path(node: &str) -> Result<ActorPath, StoreError> {
    ActorPath::new("troupe", "replica", node).map_err(|e| StoreError::Write(e.to_string()))
}

async fn ask(node: &Node, to: &str, msg: ReplicaMsg) -> Result<ReplicaReply, RemoteError> {
    let path = agent_path(to).map_err(|e| RemoteError::Invalid(e.to_string()))?;
    let (what, of) = match &msg {
        ReplicaMsg::Write { path, .. } => ("write", path.clone()),
        ReplicaMsg::Load { path, .. } => ("load", path.clone()),
    };
    let started = Instant::now();
    let r = node.handle::<ReplicaProto>(path).ask_timeout(msg, REPLICA_TIMEOUT).await;
    let took = started.elapsed();
    // A replica round trip is normally a few ms; one that waited or failed is what an
    // operator needs to see to explain a slow owner.
    if r.is_err() || took >= SLOW_REPLICA_ASK {
        tracing::warn!(replica = %to, path = %of, op = what, took_ms = took.as_millis() as u64,
            outcome = ?r.as_ref().map(|_| "answered"), "slow or failed replica ask");
    }
    r
}

/// The nodes that hold `path`, owner first, in this node's view.
fn replica_set(node: &Node, path: &ActorPath, rf: u64) -> Result<Vec<String>, StoreError> {
    let ks =
        node.kind_spec(path.system(), path.kind()).ok_or_else(|| StoreError::Write(format!("no kind for {path}")))?;
    node.replica_set(ks, path, rf).map_err(|e| StoreError::Write(e.to_string()))
}

/// Makes `op` durable on the replica set of `path`; this node must own it.
pub(crate) async fn replicate(node: &Node, path: &ActorPath, rf: u64, op: WriteOp) -> Result<(), StoreError> {
    let key = path.to_string();
    let set = replica_set(node, path, rf)?;
    let Some((mut round, mut step)) = WriteRound::start(node.name(), set) else {
        return Err(StoreError::Write(format!("{} does not own {key} in its view; the write is refused", node.name())));
    };
    match apply(node, &key, node.name(), vec![op.clone()]).await {
        ReplicaReply::Written => {}
        ReplicaReply::Gap { have } => return Err(StoreError::Write(format!("local log of {key} ends at {have}: gap"))),
        other => return Err(StoreError::Write(format!("local write refused: {other:?}"))),
    }
    // Every replica of the set must hold the entry; one the view drops meanwhile is
    // replaced by the current set's (troupe_core::replication::WriteRound decides).
    // Acknowledging then is safe for the same reason as before: the entry is on disk on
    // every member of the owner's replica set *as of the ack*; copies left on members
    // that dropped out are extra and harmless (recovery takes the newest copy of every
    // live node).
    let mut errors: HashMap<String, StoreError> = HashMap::new();
    loop {
        let todo = match step {
            WriteStep::Send(todo) => todo,
            WriteStep::Ack => return Ok(()),
            WriteStep::LostOwnership => {
                return Err(StoreError::Write(format!(
                    "{} lost ownership of {key} while writing; the write is not acknowledged",
                    node.name()
                )));
            }
            WriteStep::ReplicaFailed(r) => {
                return Err(errors.remove(&r).unwrap_or_else(|| StoreError::Write(format!("replica {r} failed"))));
            }
            WriteStep::SetKeptChanging => {
                return Err(StoreError::Write(format!(
                    "the replica set of {key} kept changing during the write ({FAILOVER_ROUNDS_MAX} rounds); not acknowledged"
                )));
            }
        };
        let writes = todo.iter().map(|r| write_to(node, r, &key, op.clone()));
        let mut results = Vec::with_capacity(todo.len());
        for (r, res) in todo.iter().zip(futures::future::join_all(writes).await) {
            if let Err(e) = res {
                errors.insert(r.clone(), e);
                results.push((r.clone(), false));
            } else {
                results.push((r.clone(), true));
            }
        }
        let from = round.set().to_vec();
        let fresh = replica_set(node, path, rf)?;
        step = round.round_done(&results, fresh);
        if matches!(step, WriteStep::Send(_)) {
            tracing::info!(path = %key, from = ?from, to = ?round.set(), "replica held down; the write fails over");
        }
    }
}

/// Writes one op to replica `to`, syncing it first if its log has a gap.
async fn write_to(node: &Node, to: &str, key: &str, op: WriteOp) -> Result<(), StoreError> {
    let msg = ReplicaMsg::Write { path: key.to_string(), owner: node.name().to_string(), ops: vec![op.clone()] };
    match ask(node, to, msg).await {
        Ok(ReplicaReply::Written) => Ok(()),
        Ok(ReplicaReply::Gap { .. }) => {
            // The replica missed earlier entries (it joined the set later): send it
            // our whole copy, which already includes `op`.
            let full = node.store().load(key)?;
            let msg =
                ReplicaMsg::Write { path: key.to_string(), owner: node.name().to_string(), ops: full.as_ops(key) };
            match ask(node, to, msg).await {
                Ok(ReplicaReply::Written) => Ok(()),
                Ok(other) => Err(StoreError::Write(format!("replica {to} refused a full sync of {key}: {other:?}"))),
                Err(e) => Err(StoreError::Write(format!("replica {to}: {e}"))),
            }
        }
        Ok(ReplicaReply::Refused(why)) => Err(StoreError::Write(format!("replica {to} refused: {why}"))),
        Ok(other) => Err(StoreError::Write(format!("replica {to} answered {other:?}"))),
        Err(e) => Err(StoreError::Write(format!("replica {to}: {e}"))),
    }
}

/// Recovers `path` as its new owner: the newest copy among all live nodes, once
/// every one of them sees this node as the owner; then brings the replicas level.
pub(crate) async fn recover(node: &Node, path: &ActorPath, rf: u64) -> Result<Recovered, StoreError> {
    let key = path.to_string();
    let deadline = Instant::now() + RECOVER_DEADLINE;
    let mut first_round = true;
    loop {
        let set = replica_set(node, path, rf)?;
        if set.first().map(String::as_str) != Some(node.name()) {
            return Err(StoreError::Read(format!("{} does not own {key} in its view", node.name())));
        }
        let live: Vec<String> = node.candidates().into_iter().map(|c| c.name).collect();
        let asks = live.iter().map(|n| {
            let key = key.clone();
            async move {
                if n == node.name() {
                    Ok(load(node, &key, n).await)
                } else {
                    ask(node, n, ReplicaMsg::Load { path: key, owner: node.name().to_string() }).await
                }
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut round = RecoveryRound::new(node.name());
        for (n, a) in live.iter().zip(answers) {
            match a {
                Ok(ReplicaReply::Loaded(r)) => round.copy(n, r),
                Ok(other) => round.problem(n, format!("{other:?}")),
                Err(e) => round.problem(n, e),
            }
        }
        let problems = match round.outcome(&set) {
            Recovery::Adopt { best, adopt_locally, sync } => {
                if adopt_locally {
                    apply_local_full(node, &key, &best).await?;
                }
                for r in &sync {
                    let msg =
                        ReplicaMsg::Write { path: key.clone(), owner: node.name().to_string(), ops: best.as_ops(&key) };
                    match ask(node, r, msg).await {
                        Ok(ReplicaReply::Written) => {}
                        other => {
                            tracing::warn!(replica = %r, path = %key, answer = ?other, "replica not synced at recovery")
                        }
                    }
                }
                return Ok(best);
            }
            Recovery::Retry(problems) => problems,
        };
        // The first incomplete round says why recovery waits; the retries after it would
        // only repeat it every 100 ms.
        if first_round {
            tracing::info!(path = %key, problems = %problems.join("; "), "recovery round incomplete; retrying");
            first_round = false;
        } else {
            tracing::debug!(path = %key, problems = %problems.join("; "), "recovery round incomplete; retrying");
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Read(format!(
                "cannot recover {key}: live nodes do not agree yet ({})",
                problems.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn apply_local_full(node: &Node, key: &str, r: &Recovered) -> Result<(), StoreError> {
    match apply(node, key, node.name(), r.as_ops(key)).await {
        ReplicaReply::Written => Ok(()),
        other => Err(StoreError::Write(format!("could not adopt the recovered copy of {key}: {other:?}"))),
    }
}
