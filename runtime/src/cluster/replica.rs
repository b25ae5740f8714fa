//! Replication of durable state: majority quorums over a fixed replica set, owners
//! fenced by terms. The argument is in docs/replication.md and the decisions are
//! troupe-core's (`troupe_core::replication`, which the simulator runs too); in short:
//!
//! - A replicated path lives on the first `replication_factor` nodes of the cluster
//!   file in its rendezvous order; its owner is the first of them that is live.
//! - A new owner is elected: it asks the set to promise a term above every term it has
//!   seen, takes the copy of the newest term from a majority of promises, and writes
//!   that copy under its term to a majority before it serves.
//! - A write goes to the owner's disk, then to the others; it is acknowledged once a
//!   majority holds it. A replica takes it only under the term it holds a copy of and
//!   without a gap (else the owner sends its whole copy), and refuses an older owner.
//! - A read barrier (`confirm`) asks a majority whether the owner's term is still the
//!   newest they promised.
//! - On each node the check and the disk write (or the read of a copy) happen under one
//!   per-path lock, so a promise and a write of one path never interleave.
//!
//! Unreplicated kinds (rf 1) keep their copy on the owner; a new owner gathers the
//! newest copy from every live node (the entity may have moved).
//!
//! Replication messages go to the built-in per-node actor `/troupe/replica/<node>`.

use crate::actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf};
use crate::config::KindSpec;
use crate::node::Node;
use crate::reply::Reply;
use crate::store::{Recovered, StoreError, WriteOp};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use troupe_core::rebuild::{Learned, Learning};
use troupe_core::replication::{
    self, Check, Elected, Election, Entries, Quorum, Recovery, RecoveryRound, Tally, Term, Terms,
};
use troupe_wire::{ActorPath, Protocol, RemoteError};

pub(crate) struct ReplicaProto;

impl Protocol for ReplicaProto {
    type Msg = ReplicaMsg;
    type Reply = ReplicaReply;
    const NAME: &'static str = "troupe.replica";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ReplicaMsg {
    /// Unreplicated paths: hand over your copy of `path` to its new owner `owner`.
    Load { path: String, owner: String },
    /// Promise `term` to `owner`, then hand over your copy.
    Prepare { path: String, owner: String, term: Term },
    /// Hold this copy under `term` (`None`: yours is it already; only the terms change).
    Adopt { path: String, term: Term, ops: Option<Vec<WriteOp>> },
    /// Apply these operations of the owner of `term`.
    Append { path: String, term: Term, ops: Vec<WriteOp> },
    /// Do you still back the owner of `term`? (a read barrier)
    Confirm { path: String, term: Term },
    /// From a node that lost its disk: list the replicated paths you hold that
    /// `for_node` replicates too, after `after` (one page).
    /// `store`: the identity of the asker's current store (a wiped disk gets a new one).
    Inventory { for_node: String, after: Option<String>, store: u64 },
    /// From a node that lost its disk and replicates `path`: hand over your copy and
    /// your terms for it (nothing is promised).
    Learn { path: String, from: String },
    /// `Adopt` with a copy larger than half `frame_bytes_max`: the copy's operations
    /// (encoded) are in the blob store; the replica reads them and adopts as for
    /// `Adopt`. Added last (bincode numbers variants by position).
    AdoptBlob { path: String, term: Term, blob: troupe_wire::Blob },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ReplicaReply {
    Written,
    /// A copy, with this replica's terms for it.
    Loaded(Recovered),
    /// This replica cannot place the write: it needs the owner's whole copy.
    NeedCopy(String),
    /// This replica promised the newer term: the asker is no longer the owner.
    Fenced(Term),
    Refused(String),
    Confirmed,
    /// One page of an inventory; `next`: ask again after it. `blank`: this node holds
    /// no replicated state at all. `vouch`: this node formed a new cluster after it saw
    /// the asker's current store empty (the asker may vote at once). `store`: this
    /// node's store identity; `rebuilding`: this node has not voted since its store was
    /// made (only such a node counts as empty towards a new cluster: a voter that holds
    /// no path, as with a kind placed on other nodes, may still be owed writes).
    Inventory {
        paths: Vec<String>,
        next: Option<String>,
        blank: bool,
        vouch: bool,
        store: u64,
        rebuilding: bool,
    },
    /// A copy larger than half `frame_bytes_max`, handed over through the blob store
    /// (released at once: it lives `[blobs] grace_ms`); the asker reads it from there
    /// and treats it as `Loaded`. Added last (bincode numbers variants by position).
    LoadedBlob(troupe_wire::Blob),
}

/// Paths in one page of an inventory (a frame stays far below the frame limit).
const INVENTORY_PAGE: usize = 1024;

/// How long one replication round trip may take.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(3);
/// A replica ask that takes this long is logged.
const SLOW_REPLICA_ASK: Duration = Duration::from_millis(250);
/// How long an election (or an unreplicated path's gathering) keeps trying.
const RECOVER_DEADLINE: Duration = Duration::from_secs(10);
const RECOVER_RETRY: Duration = Duration::from_millis(100);

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
            let answer = offload(&node, serve(&node, msg).await).await;
            reply.send(answer).await;
        });
        Ok(())
    }
}

/// A copy too large for one frame goes through the blob store (its bytes are the
/// encoded `Recovered`); smaller answers go as they are.
async fn offload(node: &Node, answer: ReplicaReply) -> ReplicaReply {
    let ReplicaReply::Loaded(copy) = &answer else { return answer };
    let limit = node.loaded().cluster.transport.frame_bytes_max as usize / 2;
    let bytes = match troupe_wire::codec::encode(copy) {
        Ok(b) if b.len() > limit => b,
        Ok(_) => return answer,
        Err(e) => return ReplicaReply::Refused(e.to_string()),
    };
    let holder = format!("/troupe/replica/{}", node.name());
    let stored = match node.blobs() {
        Ok(blobs) => match blobs.put(&bytes, &holder).await {
            Ok(blob) => {
                // Released as of a minute from now, not awaited: collected a minute plus
                // `grace_ms` later, long after the asker read it.
                tokio::spawn(async move {
                    let _ = blobs.release_after(&blob, &holder, COPY_KEPT).await;
                });
                Ok(blob)
            }
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(blob) => {
            node.metrics()
                .counter(
                    "troupe_replica_copies_via_blob_total",
                    "Copies of actor state handed over through the blob store (larger than half a frame)",
                    &[],
                )
                .inc();
            ReplicaReply::LoadedBlob(blob)
        }
        Err(why) => ReplicaReply::Refused(format!(
            "a copy of {} bytes (over half of frame_bytes_max) could not go through the blob store: {why}",
            bytes.len()
        )),
    }
}

/// How long a copy handed over through the blob store is kept for its reader.
const COPY_KEPT: Duration = Duration::from_secs(60);

/// Reads a copy handed over through the blob store (bounded: an election waits on it).
async fn fetch_copy(node: &Node, blob: troupe_wire::Blob) -> Result<ReplicaReply, RemoteError> {
    let blobs = node.blobs().map_err(RemoteError::from)?;
    let bytes = tokio::time::timeout(COPY_KEPT, blobs.get(&blob))
        .await
        .map_err(|_| {
            RemoteError::Invalid(format!(
                "a copy of {} bytes was not read from the blob store in {COPY_KEPT:?}",
                blob.len
            ))
        })?
        .map_err(RemoteError::from)?;
    troupe_wire::codec::decode::<Recovered>(&bytes)
        .map(ReplicaReply::Loaded)
        .map_err(|e| RemoteError::Invalid(format!("a copy read from the blob store does not decode: {e}")))
}

/// An `Adopt` whose copy is larger than half a frame goes through the blob store, as
/// `AdoptBlob` (without it the copy never left: the frame was refused, and the new
/// owner could not bring a lagging replica up to date — seen in the suite as an
/// election retried for minutes).
async fn offload_adopt(node: &Node, msg: ReplicaMsg) -> Result<ReplicaMsg, RemoteError> {
    let ReplicaMsg::Adopt { path, term, ops: Some(ops) } = &msg else { return Ok(msg) };
    let limit = node.loaded().cluster.transport.frame_bytes_max as usize / 2;
    let bytes = troupe_wire::codec::encode(ops).map_err(|e| RemoteError::Invalid(e.to_string()))?;
    if bytes.len() <= limit {
        return Ok(msg);
    }
    let blobs = node.blobs().map_err(RemoteError::from)?;
    let holder = format!("/troupe/replica/{}", node.name());
    let blob = blobs.put(&bytes, &holder).await.map_err(RemoteError::from)?;
    tokio::spawn({
        let (blobs, holder) = (blobs.clone(), holder.clone());
        async move {
            let _ = blobs.release_after(&blob, &holder, COPY_KEPT).await;
        }
    });
    node.metrics()
        .counter(
            "troupe_replica_copies_via_blob_total",
            "Copies of actor state handed over through the blob store (larger than half a frame)",
            &[],
        )
        .inc();
    Ok(ReplicaMsg::AdoptBlob { path: path.clone(), term: term.clone(), blob })
}

/// Reads the copy of an `AdoptBlob` back into an `Adopt` (bounded like `fetch_copy`).
async fn fetch_adopt(node: &Node, path: String, term: Term, blob: troupe_wire::Blob) -> Result<ReplicaMsg, String> {
    let blobs = node.blobs().map_err(|e| e.to_string())?;
    let bytes = tokio::time::timeout(COPY_KEPT, blobs.get(&blob))
        .await
        .map_err(|_| format!("a copy of {} bytes was not read from the blob store in {COPY_KEPT:?}", blob.len))?
        .map_err(|e| e.to_string())?;
    let ops: Vec<WriteOp> = troupe_wire::codec::decode(&bytes)
        .map_err(|e| format!("a copy read from the blob store does not decode: {e}"))?;
    Ok(ReplicaMsg::Adopt { path, term, ops: Some(ops) })
}

/// A replica's side of every request, under the path's lock.
async fn serve(node: &Node, msg: ReplicaMsg) -> ReplicaReply {
    // A copy handed over through the blob store is read before the path's lock.
    let msg = match msg {
        ReplicaMsg::AdoptBlob { path, term, blob } => match fetch_adopt(node, path, term, blob).await {
            Ok(m) => m,
            Err(why) => return ReplicaReply::Refused(why),
        },
        m => m,
    };
    let Some(cluster) = node.cluster() else { return ReplicaReply::Refused("not clustered".into()) };
    let path = match &msg {
        ReplicaMsg::Inventory { for_node, after, store } => {
            // Every election of this node that began before this request stops
            // counting promises first (docs/replication.md, "A replica that lost its disk").
            drop(cluster.counting.write().await);
            return inventory(node, for_node, after.as_deref(), *store);
        }
        ReplicaMsg::AdoptBlob { .. } => unreachable!("read back into Adopt above"),
        ReplicaMsg::Load { path, .. }
        | ReplicaMsg::Prepare { path, .. }
        | ReplicaMsg::Adopt { path, .. }
        | ReplicaMsg::Append { path, .. }
        | ReplicaMsg::Confirm { path, .. }
        | ReplicaMsg::Learn { path, .. } => path.clone(),
    };
    // A node that lost its disk says nothing that counts about a path until it has
    // relearned it (docs/replication.md, "A replica that lost its disk").
    if !matches!(msg, ReplicaMsg::Load { .. }) && !cluster.may_vote(&path) {
        return ReplicaReply::Refused(format!(
            "{} is rebuilding after losing its disk and has not relearned {path} yet",
            node.name()
        ));
    }
    let _guard = cluster.path_lock(&path).lock().await;
    // The whole copy only where it is handed over; writes and read barriers check its
    // version alone (no entries copied: this runs on every replicated write).
    let whole = matches!(msg, ReplicaMsg::Learn { .. } | ReplicaMsg::Load { .. } | ReplicaMsg::Prepare { .. });
    let (stored, v) = if whole {
        match node.store().load(&path) {
            Ok(r) => {
                let v = r.version();
                (r, v)
            }
            Err(e) => return ReplicaReply::Refused(e.to_string()),
        }
    } else {
        match node.store().version(&path) {
            Ok(v) => (Recovered::default(), v),
            Err(e) => return ReplicaReply::Refused(e.to_string()),
        }
    };
    let me = node.name();
    let check = match &msg {
        ReplicaMsg::Inventory { .. } | ReplicaMsg::AdoptBlob { .. } => unreachable!("answered above"),
        ReplicaMsg::Learn { from, .. } => {
            return match in_set(node, &path, from) {
                Ok(()) => ReplicaReply::Loaded(stored),
                Err(why) => ReplicaReply::Refused(why),
            };
        }
        ReplicaMsg::Load { owner, .. } => {
            let view = view_owner(node, &path);
            return match replication::check_owner(me, &path, owner, view.as_deref().map_err(Clone::clone)) {
                Ok(()) => ReplicaReply::Loaded(stored),
                Err(why) => ReplicaReply::Refused(why),
            };
        }
        ReplicaMsg::Prepare { owner, term, .. } => {
            let view = view_owner(node, &path);
            replication::check_prepare(me, &path, owner, view.as_deref().map_err(Clone::clone), term, &v.terms)
        }
        ReplicaMsg::Adopt { term, ops, .. } => {
            let last = ops.as_ref().map(|ops| copy_last_seq(ops));
            replication::check_adopt(term, &v.terms, last, v.last_seq)
        }
        ReplicaMsg::Append { term, ops, .. } => {
            let entries = match ops.first() {
                Some(WriteOp::Append { seq, .. }) => Entries::Append { first: *seq },
                Some(WriteOp::Snapshot { seq, .. }) => Entries::Snapshot { seq: *seq },
                other => return ReplicaReply::Refused(format!("an owner's write carries {other:?}")),
            };
            replication::check_append(term, &v.terms, entries, v.last_seq, v.snapshot_at)
        }
        ReplicaMsg::Confirm { term, .. } => replication::check_confirm(term, &v.terms),
    };
    match check {
        Check::Accept => {}
        Check::NeedCopy(why) => return ReplicaReply::NeedCopy(why),
        Check::Fenced(t) => return ReplicaReply::Fenced(t),
        Check::NotOwner(why) => return ReplicaReply::Refused(why),
        Check::Duplicate => return duplicate(node, &path, &msg),
    }
    let (ops, answer) = match msg {
        ReplicaMsg::Load { .. }
        | ReplicaMsg::Inventory { .. }
        | ReplicaMsg::Learn { .. }
        | ReplicaMsg::AdoptBlob { .. } => {
            unreachable!("answered above")
        }
        ReplicaMsg::Confirm { .. } => return ReplicaReply::Confirmed,
        ReplicaMsg::Prepare { term, .. } => {
            let terms = Terms { promised: term, accepted: stored.terms.accepted.clone() };
            let answer = ReplicaReply::Loaded(Recovered { terms: terms.clone(), ..stored });
            (vec![WriteOp::Terms { path, terms }], answer)
        }
        ReplicaMsg::Adopt { term, ops, .. } => {
            let mut ops = ops.unwrap_or_default();
            ops.push(WriteOp::Terms { path, terms: Terms { promised: term.clone(), accepted: term } });
            (ops, ReplicaReply::Written)
        }
        ReplicaMsg::Append { ops, .. } => (ops, ReplicaReply::Written),
    };
    match node.store().write(ops).await {
        Ok(()) => answer,
        Err(e) => ReplicaReply::Refused(e.to_string()),
    }
}

/// The last sequence number a whole copy (as `Recovered::as_ops` makes it) covers.
fn copy_last_seq(ops: &[WriteOp]) -> u64 {
    ops.iter()
        .filter_map(|op| match op {
            WriteOp::Append { seq, .. } | WriteOp::Snapshot { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Entries sent again under the same term, or a late copy or snapshot of it: nothing is
/// applied, and appended entries must be the ones here (an op with the same term and
/// sequence number never replaces different content).
fn duplicate(node: &Node, path: &str, msg: &ReplicaMsg) -> ReplicaReply {
    let ReplicaMsg::Append { ops, .. } = msg else { return ReplicaReply::Written };
    let stored = match node.store().load(path) {
        Ok(r) => r,
        Err(e) => return ReplicaReply::Refused(e.to_string()),
    };
    for op in ops {
        if let WriteOp::Append { seq, bytes, .. } = op
            && let Some((_, here)) = stored.entries.iter().find(|(s, _)| s == seq)
            && here != bytes
        {
            tracing::error!(path, seq, "an entry sent again under one term differs from the one on disk");
            return ReplicaReply::Refused(format!(
                "entry {seq} of {path} differs from the one here under the same term"
            ));
        }
    }
    ReplicaReply::Written
}

/// `Ok` when `node` is in `path`'s replica set.
fn in_set(node: &Node, path: &str, member: &str) -> Result<(), String> {
    let p = ActorPath::parse(path).map_err(|e| e.to_string())?;
    let ks = node.kind_spec(p.system(), p.kind()).ok_or_else(|| format!("no kind for {path} here"))?;
    if node.replica_set(ks, &p).iter().any(|r| r == member) {
        Ok(())
    } else {
        Err(format!("{member} is not a replica of {path}"))
    }
}

/// A random identity of this store, made with it (a wiped disk gets a new one).
pub(crate) const STORE_ID_KEY: &str = "replica.store_id";
/// The nodes (and their store identities) this node saw empty when it formed a new
/// cluster: each may follow its decision (`troupe_core::rebuild::Inventory::vouched`).
pub(crate) const SEEN_BLANK_KEY: &str = "replica.new_cluster_saw";

/// This node's store identity (made at boot by `rebuild::standing_at_boot`).
pub(crate) fn store_id(node: &Node) -> Result<u64, StoreError> {
    let bytes = node.store().meta(STORE_ID_KEY)?.unwrap_or_default();
    Ok(bytes.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
}

/// The nodes, with their store identities, this node saw empty when it formed a new
/// cluster (none if it never did).
pub(crate) fn seen_blank(node: &Node) -> Result<Vec<(String, u64)>, StoreError> {
    match node.store().meta(SEEN_BLANK_KEY)? {
        None => Ok(Vec::new()),
        Some(b) => troupe_wire::codec::decode(&b).map_err(|e| StoreError::Read(e.to_string())),
    }
}

/// One page of the replicated paths this node holds that `for_node` replicates too.
fn inventory(node: &Node, for_node: &str, after: Option<&str>, store: u64) -> ReplicaReply {
    if node.loaded().cluster.node(for_node).is_none() {
        return ReplicaReply::Refused(format!("{for_node} is not in the cluster file"));
    }
    let mine = match store_id(node) {
        Ok(id) => id,
        Err(e) => return ReplicaReply::Refused(e.to_string()),
    };
    // A record that cannot be read vouches for nobody (the asker then relearns or
    // waits, as without it); it must not stop the inventory itself.
    let vouch = store != 0
        && match seen_blank(node) {
            Ok(seen) => seen.iter().any(|(n, s)| n == for_node && *s == store),
            Err(e) => {
                tracing::error!(error = %e, "cannot read whom this node saw empty; vouching for nobody");
                false
            }
        };
    let rebuilding = node.cluster().is_some_and(|c| c.rebuilding());
    let mut cursor = after.map(str::to_string);
    let mut paths = Vec::new();
    loop {
        let (page, more) = match node.store().replicated_paths(cursor.as_deref(), INVENTORY_PAGE) {
            Ok(p) => p,
            Err(e) => return ReplicaReply::Refused(e.to_string()),
        };
        let blank = after.is_none() && page.is_empty();
        cursor = page.last().cloned().or(cursor);
        paths.extend(page.into_iter().filter(|p| in_set(node, p, for_node).is_ok()));
        // Pages of paths the asker does not replicate are skipped here, not sent.
        if !more || paths.len() >= INVENTORY_PAGE / 2 {
            return ReplicaReply::Inventory {
                paths,
                next: if more { cursor } else { None },
                blank,
                vouch,
                store: mine,
                rebuilding,
            };
        }
    }
}

/// The owner of `path` in this node's view, or why there is none.
fn view_owner(node: &Node, path: &str) -> Result<String, String> {
    let p = ActorPath::parse(path).map_err(|e| e.to_string())?;
    let ks = node.kind_spec(p.system(), p.kind()).ok_or_else(|| format!("no kind for {path} here"))?;
    node.owner_of(ks, &p).map_err(|e| e.to_string())
}

fn agent_path(node: &str) -> Result<ActorPath, StoreError> {
    ActorPath::new("troupe", "replica", node).map_err(|e| StoreError::Write(e.to_string()))
}

/// Asks `to` (this node itself: served here, without a message).
pub(crate) async fn ask(node: &Node, to: &str, msg: ReplicaMsg) -> Result<ReplicaReply, RemoteError> {
    if to == node.name() {
        // Bounded like a remote ask, so an election stops counting promises within
        // REPLICA_TIMEOUT (a rebuilding node's inventory waits for that).
        return tokio::time::timeout(REPLICA_TIMEOUT, serve(node, msg))
            .await
            .map_err(|_| RemoteError::Invalid(format!("{to}'s own replica did not answer in {REPLICA_TIMEOUT:?}")));
    }
    let path = agent_path(to).map_err(|e| RemoteError::Invalid(e.to_string()))?;
    let msg = offload_adopt(node, msg).await?;
    let what = match &msg {
        ReplicaMsg::Load { path, .. } => ("load", path.clone()),
        ReplicaMsg::Prepare { path, .. } => ("prepare", path.clone()),
        ReplicaMsg::Adopt { path, .. } => ("adopt", path.clone()),
        ReplicaMsg::Append { path, .. } => ("append", path.clone()),
        ReplicaMsg::Confirm { path, .. } => ("confirm", path.clone()),
        ReplicaMsg::Learn { path, .. } => ("learn", path.clone()),
        ReplicaMsg::AdoptBlob { path, .. } => ("adopt", path.clone()),
        ReplicaMsg::Inventory { for_node, .. } => ("inventory", for_node.clone()),
    };
    let started = Instant::now();
    let r = node.handle::<ReplicaProto>(path).ask_timeout(msg, REPLICA_TIMEOUT).await;
    let took = started.elapsed();
    // A replica round trip is normally a few ms; one that waited or failed is what an
    // operator needs to see to explain a slow owner.
    // (A rebuilding node asks a down node for its inventory until it is back.)
    if (r.is_err() || took >= SLOW_REPLICA_ASK) && what.0 != "inventory" {
        tracing::warn!(replica = %to, path = %what.1, op = what.0, took_ms = took.as_millis() as u64,
            outcome = ?r.as_ref().map(|_| "answered"), "slow or failed replica ask");
    }
    match r {
        Ok(ReplicaReply::LoadedBlob(blob)) => fetch_copy(node, blob).await,
        other => other,
    }
}

/// The kind of `path` on this node (borrowed: this runs on every replicated write).
fn kind_of<'a>(node: &'a Node, path: &ActorPath) -> Result<&'a KindSpec, StoreError> {
    node.kind_spec(path.system(), path.kind()).ok_or_else(|| StoreError::Write(format!("no kind for {path}")))
}

/// Counts one answer to a round (a write, an adoption, a read barrier).
fn vote(votes: &mut Quorum, from: &str, answer: Result<ReplicaReply, RemoteError>, yes: fn(&ReplicaReply) -> bool) {
    match answer {
        Ok(r) if yes(&r) => votes.yes(from),
        Ok(ReplicaReply::Fenced(t)) => votes.fenced(from, t),
        Ok(ReplicaReply::Refused(why) | ReplicaReply::NeedCopy(why)) => votes.no(from, why),
        Ok(other) => votes.no(from, format!("answered {other:?}")),
        Err(e) => votes.no(from, e),
    }
}

/// Starts `asks`, one task each, so the ones still out when their round is decided
/// finish in the background.
fn launch<F>(
    asks: Vec<(String, F)>,
) -> FuturesUnordered<impl std::future::Future<Output = (String, Result<ReplicaReply, RemoteError>)>>
where
    F: std::future::Future<Output = Result<ReplicaReply, RemoteError>> + Send + 'static,
{
    // The asks carry the trace of the write they serve (a sampled request's trace then
    // shows the replicas' spans too).
    let current = crate::current::CURRENT.try_with(|c| c.clone()).ok();
    asks.into_iter()
        .map(|(to, f)| {
            let task = match current.clone() {
                Some(c) => tokio::spawn(crate::current::CURRENT.scope(c, f)),
                None => tokio::spawn(f),
            };
            async move { (to, task.await.unwrap_or_else(|e| Err(RemoteError::Invalid(e.to_string())))) }
        })
        .collect()
}

/// Counts the answers of launched asks until the round is won or lost.
async fn count<A>(votes: &mut Quorum, mut out: FuturesUnordered<A>, yes: fn(&ReplicaReply) -> bool) -> Tally
where
    A: std::future::Future<Output = (String, Result<ReplicaReply, RemoteError>)>,
{
    loop {
        let t = votes.tally();
        if t != Tally::Pending {
            return t;
        }
        let Some((to, answer)) = out.next().await else { return votes.tally() };
        vote(votes, &to, answer, yes);
    }
}

/// Runs `asks` until the round is won or lost.
async fn round<F>(votes: &mut Quorum, asks: Vec<(String, F)>, yes: fn(&ReplicaReply) -> bool) -> Tally
where
    F: std::future::Future<Output = Result<ReplicaReply, RemoteError>> + Send + 'static,
{
    count(votes, launch(asks), yes).await
}

fn won(t: Tally) -> Result<(), String> {
    match t {
        Tally::Won => Ok(()),
        Tally::Lost(why) => Err(why),
        // Every member answered: a quorum is then either won or out of reach.
        Tally::Pending => Err("the round ended undecided".into()),
    }
}

fn written(r: &ReplicaReply) -> bool {
    matches!(r, ReplicaReply::Written)
}

/// Makes `op` durable on a majority of `path`'s replica set under the owner's `term`.
/// The owner's own disk and the others' are written at once (a write costs about one
/// fsync and a round trip, not two fsyncs in a row), but the write is acknowledged only
/// once the owner's own disk holds it too, and a replica that needs the whole copy gets
/// it only after that (the copy is read from the owner's disk).
pub(crate) async fn replicate(node: &Node, path: &ActorPath, term: &Term, ops: Vec<WriteOp>) -> Result<(), StoreError> {
    let key = path.to_string();
    let set = node.replica_set(kind_of(node, path)?, path);
    let me = node.name().to_string();
    let (local_done, local_rx) = tokio::sync::watch::channel(None::<bool>);
    let asks = set
        .iter()
        .filter(|r| **r != me)
        .map(|r| {
            let f = append_to(node.clone(), r.clone(), key.clone(), term.clone(), ops.clone(), local_rx.clone());
            (r.clone(), f)
        })
        .collect();
    let out = launch(asks);
    // Several ops (a batched persist) travel and are applied as one: each replica
    // writes all of them in one transaction or none.
    let local = ReplicaMsg::Append { path: key.clone(), term: term.clone(), ops };
    let local = serve(node, local).await;
    let _ = local_done.send(Some(matches!(local, ReplicaReply::Written)));
    match local {
        ReplicaReply::Written => {}
        ReplicaReply::Fenced(t) => {
            return Err(StoreError::Deposed(format!("{me} no longer owns {key}: a newer owner (term {t}) holds it")));
        }
        other => return Err(StoreError::Write(format!("local write of {key} refused: {other:?}"))),
    }
    let mut votes = Quorum::new(&set);
    votes.yes(&me);
    let tally = count(&mut votes, out, written).await;
    won(tally).map_err(|why| match votes.newer() {
        Some(t) => StoreError::Deposed(format!("{me} no longer owns {key} (a replica promised term {t}): {why}")),
        None => StoreError::Write(format!("write of {key} not acknowledged: {why}")),
    })
}

/// Appends `op` at replica `to`; when it needs the whole copy, sends it once the
/// owner's own write is done (`local`: `Some(true)` once on the owner's disk).
async fn append_to(
    node: Node,
    to: String,
    key: String,
    term: Term,
    ops: Vec<WriteOp>,
    mut local: tokio::sync::watch::Receiver<Option<bool>>,
) -> Result<ReplicaReply, RemoteError> {
    let msg = ReplicaMsg::Append { path: key.clone(), term: term.clone(), ops };
    match ask(&node, &to, msg).await? {
        ReplicaReply::NeedCopy(why) => {
            let written = local.wait_for(Option::is_some).await.map(|v| *v == Some(true)).unwrap_or(false);
            if !written {
                return Err(RemoteError::Invalid(format!("the owner's own write of {key} failed")));
            }
            tracing::debug!(replica = %to, path = %key, why, "sending the whole copy");
            let full = node.store().load(&key).map_err(|e| RemoteError::Invalid(e.to_string()))?;
            ask(&node, &to, ReplicaMsg::Adopt { path: key.clone(), term, ops: Some(full.as_ops(&key)) }).await
        }
        other => Ok(other),
    }
}

/// Reads `path`'s durable state as its new owner. Replicated, an election: the copy of
/// the newest term among a majority, adopted under this node's new term by a majority;
/// the result's `terms` hold that term. Unreplicated, the newest copy of every live node.
pub(crate) async fn recover(node: &Node, path: &ActorPath, rf: u64) -> Result<Recovered, StoreError> {
    if rf > 1 { elect(node, path).await } else { gather(node, path).await }
}

async fn elect(node: &Node, path: &ActorPath) -> Result<Recovered, StoreError> {
    let key = path.to_string();
    let ks = kind_of(node, path)?;
    let me = node.name().to_string();
    let deadline = Instant::now() + RECOVER_DEADLINE;
    let mut seen = Term::default();
    let mut first_round = true;
    loop {
        let set = node.replica_set(ks, path);
        let owner = node.owner_of(ks, path).map_err(|e| StoreError::Read(e.to_string()))?;
        if owner != me {
            return Err(StoreError::Read(format!("{me} does not own {key} in its view ({owner} does)")));
        }
        // An owner that lost its disk relearns the path before it asks for promises.
        if let Some(c) = node.cluster().filter(|c| !c.may_vote(&key))
            && let Err(why) = learn(node, &key).await
        {
            // Until every inventory is in, the rebuild re-homes this node's singletons
            // when it ends; an entity's next request tries again.
            if !c.inventoried() || Instant::now() >= deadline {
                return Err(StoreError::Read(format!("cannot recover {key}: {why}")));
            }
            tokio::time::sleep(RECOVER_RETRY).await;
            continue;
        }
        let local = node.store().load(&key)?.terms.promised;
        let term = Term::after(&seen.clone().max(local), &me, node.epoch());
        let why = match election_round(node, &key, &set, term.clone()).await {
            Ok(best) => {
                tracing::debug!(path = %key, term = %term, seq = best.last_seq(), "owner elected");
                return Ok(Recovered { terms: Terms { promised: term.clone(), accepted: term }, ..best });
            }
            Err((newer, why)) => {
                seen = seen.max(newer);
                why
            }
        };
        // The first failed round says why recovery waits; the retries after it would
        // only repeat it every 100 ms.
        if first_round {
            tracing::info!(path = %key, problems = %why, "election round failed; retrying");
            first_round = false;
        } else {
            tracing::debug!(path = %key, problems = %why, "election round failed; retrying");
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Read(format!("cannot recover {key}: no majority of its replicas agreed ({why})")));
        }
        tokio::time::sleep(RECOVER_RETRY).await;
    }
}

/// One election under `term`: promises, then the adoption of the best copy. `Err`
/// carries the newest term seen and why the round failed.
async fn election_round(node: &Node, key: &str, set: &[String], term: Term) -> Result<Recovered, (Term, String)> {
    let me = node.name().to_string();
    let mut election: Election<Recovered> = Election::new(&me, term.clone(), set);
    // Held while promises are counted: a node that lost its disk gets this node's
    // inventory only once no election that may have counted its old promise still counts.
    let counting = match node.cluster() {
        Some(c) => Some(c.counting.read().await),
        None => None,
    };
    let mut out: FuturesUnordered<_> = set
        .iter()
        .map(|r| {
            let msg = ReplicaMsg::Prepare { path: key.to_string(), owner: me.clone(), term: term.clone() };
            let (node, r) = (node.clone(), r.clone());
            async move {
                let a = ask(&node, &r, msg).await;
                (r, a)
            }
        })
        .collect();
    let (best, send) = loop {
        match election.outcome(set) {
            Elected::Won { best, send } => break (best, send),
            Elected::Lost { seen, problems } => return Err((seen, problems)),
            Elected::Pending => {}
        }
        let Some((from, answer)) = out.next().await else {
            return Err((term, "every replica answered without a decision".into()));
        };
        match answer {
            Ok(ReplicaReply::Loaded(r)) => election.promised(&from, r.terms.accepted.clone(), r.data()),
            Ok(ReplicaReply::Fenced(t)) => election.fenced(&from, t),
            Ok(ReplicaReply::Refused(why)) => election.refused(&from, why),
            Ok(other) => election.refused(&from, format!("answered {other:?}")),
            Err(e) => election.refused(&from, e),
        }
    };
    drop(out);
    drop(counting);
    // This node's copy first: it is the source of every copy it sends later.
    let data_for = |r: &str| send.iter().find(|(n, _)| n == r).is_none_or(|(_, d)| *d);
    let ops = |r: &str| data_for(r).then(|| best.as_ops(key));
    match serve(node, ReplicaMsg::Adopt { path: key.to_string(), term: term.clone(), ops: ops(&me) }).await {
        ReplicaReply::Written => {}
        ReplicaReply::Fenced(t) => return Err((t, "a newer owner holds it".into())),
        other => return Err((term, format!("could not adopt the copy here: {other:?}"))),
    }
    let mut votes = Quorum::new(set);
    votes.yes(&me);
    let asks = set
        .iter()
        .filter(|r| **r != me)
        .map(|r| {
            let msg = ReplicaMsg::Adopt { path: key.to_string(), term: term.clone(), ops: ops(r) };
            let (node, r2) = (node.clone(), r.clone());
            (r.clone(), async move { ask(&node, &r2, msg).await })
        })
        .collect();
    match won(round(&mut votes, asks, written).await) {
        Ok(()) => Ok(best),
        Err(why) => Err((votes.newer().cloned().unwrap_or(term), why)),
    }
}

/// How long an election on a rebuilding node waits for the inventory to be complete.
const INVENTORY_WAIT: Duration = Duration::from_secs(2);

/// Relearns `key` on a node that lost its disk: the copies and terms of enough other
/// members of its replica set (troupe-core's `rebuild::Learning`), the newest kept,
/// then the path counts as relearned and this node votes on it again.
pub(crate) async fn learn(node: &Node, key: &str) -> Result<(), String> {
    let Some(cluster) = node.cluster() else { return Ok(()) };
    if cluster.may_vote(key) {
        return Ok(());
    }
    // Only once every other node answered the inventory (or the rebuild found a new
    // cluster and made this node a voter), which normally takes one round trip.
    let waiting_since = Instant::now();
    while !cluster.inventoried() {
        if cluster.may_vote(key) {
            return Ok(());
        }
        if waiting_since.elapsed() >= INVENTORY_WAIT {
            return Err(format!(
                "{me} is rebuilding after losing its disk and waits for every other node's inventory first",
                me = node.name()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = ActorPath::parse(key).map_err(|e| e.to_string())?;
    let ks = kind_of(node, &p).map_err(|e| e.to_string())?;
    let me = node.name().to_string();
    let set = node.replica_set(ks, &p);
    let others: Vec<String> = set.iter().filter(|r| **r != me).cloned().collect();
    let answers = futures::future::join_all(
        others.iter().map(|r| ask(node, r, ReplicaMsg::Learn { path: key.to_string(), from: me.clone() })),
    )
    .await;
    let mut learning: Learning<Recovered> = Learning::new(set.len());
    for (r, a) in others.iter().zip(answers) {
        match a {
            Ok(ReplicaReply::Loaded(c)) => learning.copy(r, c.terms.clone(), c.data()),
            Ok(other) => learning.problem(r, format!("{other:?}")),
            Err(e) => learning.problem(r, e),
        }
    }
    let (copy, terms) = match learning.outcome() {
        Learned::Hold { copy, terms } => (copy, terms),
        Learned::Retry(why) => return Err(format!("cannot relearn {key} yet: {why}")),
    };
    let _guard = cluster.path_lock(key).lock().await;
    if cluster.may_vote(key) {
        return Ok(());
    }
    let mut ops = copy.as_ops(key);
    ops.push(WriteOp::Terms { path: key.to_string(), terms });
    node.store().write(ops).await.map_err(|e| e.to_string())?;
    cluster.learned(key);
    Ok(())
}

/// A read barrier: `Ok` once a majority of `path`'s replica set still backs `term`,
/// so a read served after it is linearizable.
pub(crate) async fn confirm(node: &Node, path: &ActorPath, term: &Term) -> Result<(), StoreError> {
    let key = path.to_string();
    let set = node.replica_set(kind_of(node, path)?, path);
    let mut votes = Quorum::new(&set);
    let asks = set
        .iter()
        .map(|r| {
            let msg = ReplicaMsg::Confirm { path: key.clone(), term: term.clone() };
            let (node, r2) = (node.clone(), r.clone());
            (r.clone(), async move { ask(&node, &r2, msg).await })
        })
        .collect();
    let tally = round(&mut votes, asks, |r| matches!(r, ReplicaReply::Confirmed)).await;
    won(tally).map_err(|why| {
        let me = node.name();
        match votes.newer() {
            Some(t) => StoreError::Deposed(format!("{me} no longer owns {key} (a replica promised term {t}): {why}")),
            None => StoreError::Read(format!("{me} cannot serve a read of {key}: {why}")),
        }
    })
}

/// An unreplicated path's recovery: the newest copy among all live nodes, once every
/// one of them sees this node as the owner.
async fn gather(node: &Node, path: &ActorPath) -> Result<Recovered, StoreError> {
    let key = path.to_string();
    let ks = kind_of(node, path)?;
    let deadline = Instant::now() + RECOVER_DEADLINE;
    let mut first_round = true;
    loop {
        if node.owner_of(ks, path).ok().as_deref() != Some(node.name()) {
            return Err(StoreError::Read(format!("{} does not own {key} in its view", node.name())));
        }
        let live: Vec<String> = node.candidates().into_iter().map(|c| c.name).collect();
        let asks = live.iter().map(|n| ask(node, n, ReplicaMsg::Load { path: key.clone(), owner: node.name().into() }));
        let answers = futures::future::join_all(asks).await;
        let mut round = RecoveryRound::new(node.name());
        for (n, a) in live.iter().zip(answers) {
            match a {
                Ok(ReplicaReply::Loaded(r)) => round.copy(n, r.data()),
                Ok(other) => round.problem(n, format!("{other:?}")),
                Err(e) => round.problem(n, e),
            }
        }
        let problems = match round.outcome() {
            Recovery::Adopt { best, adopt_locally } => {
                if adopt_locally {
                    node.store().write(best.as_ops(&key)).await?;
                }
                return Ok(best);
            }
            Recovery::Retry(problems) => problems,
        };
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
        tokio::time::sleep(RECOVER_RETRY).await;
    }
}
