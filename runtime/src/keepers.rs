//! The built-in actors behind remembered entities and reminders: the registry
//! (`/troupe/remembered/_`, [`crate::remember`]), the per-node wake agents
//! (`/troupe/wake/<node>`) and the reminder buckets (`/troupe/reminders/b<NN>`,
//! [`crate::reminders`]). Each keeps its state with `Ctx::persist` like any actor, so
//! it is replicated on the kind's replica set and recovered by its next owner.

use crate::actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf, fail, store_failed};
use crate::config::KindSpec;
use crate::node::Node;
use crate::remember::{
    CHECK_EVERY, FORMATION_WAIT, Incarnation, REMEMBERED_BYTES_MAX, REMEMBERED_MAX, RegistryMsg, RegistryProto,
    RegistryReply, RememberedEntity, WakeMsg, WakeProto, Woken, wake_path,
};
use crate::reminders::{
    BUCKET_BYTES_MAX, PER_BUCKET_MAX, RESOLUTION, ReminderInfo, ReminderMsg, ReminderProto, ReminderReply,
};
use crate::reply::Reply;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use troupe_wire::introspect::MemberState;
use troupe_wire::{ActorPath, RemoteError, codec};

/// Log entries between two snapshots of a keeper's state.
const SNAPSHOT_EVERY: u64 = 1024;
/// Paths in one wake request.
const WAKE_BATCH: usize = 512;
/// Entities one wake agent starts at once.
const WAKE_PARALLEL: usize = 16;

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ActorError> {
    codec::decode(bytes).map_err(|e| fail(format!("a corrupt {what}: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ActorError> {
    codec::encode(v).map_err(|e| fail(e.to_string()))
}

// ---------------------------------------------------------------------------------
// The registry of remembered entities.

/// One change to the registry's durable state.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Remembered {
    Set(String, Incarnation),
    Unset(String),
}

impl Remembered {
    fn path(&self) -> &str {
        match self {
            Remembered::Set(p, _) | Remembered::Unset(p) => p,
        }
    }
}

/// Changes written in one batch at most (a batch stays far below the frame limit).
const FLUSH_MAX: usize = 1024;
/// The longest pause between two wakes of an entity that does not come back.
const WAKE_BACKOFF_MAX: Duration = Duration::from_secs(60);

pub(crate) struct RegistryBehavior;

impl FromParams for RegistryBehavior {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(RegistryBehavior)
    }
}

pub(crate) struct RegistryState {
    entities: BTreeMap<String, Incarnation>,
    /// Bytes the entities take in a snapshot (about).
    bytes: usize,
    /// Changes waiting for the next flush, with the asks they answer (each answered
    /// only once its change is durable).
    pending: Vec<(Remembered, Reply<RegistryReply>)>,
    since_snapshot: u64,
    /// The round of wakes out, if any (its end is read from the handle).
    waking: Option<tokio::task::JoinHandle<()>>,
    /// Entities woken that have not registered again since: how often, and not
    /// before when again.
    backoff: HashMap<String, (u32, tokio::time::Instant)>,
}

/// What one entry costs in a snapshot (about).
fn entry_bytes(path: &str, at: &Incarnation) -> usize {
    path.len() + at.node.len() + 32
}

impl RegistryState {
    fn apply(&mut self, change: Remembered) {
        match change {
            Remembered::Set(path, at) => {
                self.bytes += entry_bytes(&path, &at);
                if let Some(old) = self.entities.insert(path.clone(), at) {
                    self.bytes -= entry_bytes(&path, &old);
                }
            }
            Remembered::Unset(path) => {
                if let Some(old) = self.entities.remove(&path) {
                    self.bytes -= entry_bytes(&path, &old);
                }
            }
        }
    }

    /// The incarnation `path` will have once the pending changes are written.
    fn latest(&self, path: &str) -> Option<&Incarnation> {
        let pending = self.pending.iter().rev().find(|(c, _)| c.path() == path);
        match pending {
            Some((Remembered::Set(_, at), _)) => Some(at),
            Some((Remembered::Unset(_), _)) => None,
            None => self.entities.get(path),
        }
    }
}

impl Behavior for RegistryBehavior {
    type Proto = RegistryProto;
    type State = RegistryState;

    async fn init(&self, ctx: &Ctx<RegistryProto>) -> Result<RegistryState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering the registry: {e}")))?;
        let mut st = RegistryState {
            entities: BTreeMap::new(),
            bytes: 0,
            pending: Vec::new(),
            since_snapshot: r.entries.len() as u64,
            waking: None,
            backoff: HashMap::new(),
        };
        if let Some((_, bytes)) = &r.snapshot {
            let all: Vec<(String, Incarnation)> = decode("registry snapshot", bytes)?;
            for (path, at) in all {
                st.apply(Remembered::Set(path, at));
            }
        }
        for (_, bytes) in &r.entries {
            st.apply(decode("registry entry", bytes)?);
        }
        // Look at once (a new owner after a failure wakes what died with the old
        // one), then after every placement change and every CHECK_EVERY.
        ctx.send_after(Duration::ZERO, RegistryMsg::Check);
        ctx.tick_every(CHECK_EVERY);
        let mut events = ctx.node().placement_events();
        let me = ctx.myself();
        ctx.link(tokio::spawn(async move {
            // A change, or changes missed: either way look again.
            while events.next().await.is_some() {
                if me.tell(RegistryMsg::Check).await.is_err() {
                    return;
                }
            }
        }));
        tracing::debug!(entities = st.entities.len(), "registry of remembered entities recovered");
        Ok(st)
    }

    async fn handle(
        &self,
        ctx: &Ctx<RegistryProto>,
        st: &mut RegistryState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            RegistryMsg::Started { path, at } => {
                st.backoff.remove(&path);
                let durable = st.entities.get(&path) == Some(&at) && st.latest(&path) == Some(&at);
                let new = !st.entities.contains_key(&path) && st.latest(&path).is_none();
                // A late registration of an older incarnation on the same boot of the
                // same node (its retries outlived it) does not replace a newer one.
                let older = st.latest(&path).is_some_and(|l| l.node == at.node && l.epoch == at.epoch && l.id > at.id);
                let troupe_own = path.starts_with("/troupe/");
                if durable || older {
                    reply.send(RegistryReply::Done).await;
                } else if new
                    && !troupe_own
                    && (st.entities.len() >= REMEMBERED_MAX || st.bytes >= REMEMBERED_BYTES_MAX)
                {
                    reply.fail(RemoteError::Invalid(format!(
                        "the cluster remembers at most {REMEMBERED_MAX} entities ({REMEMBERED_BYTES_MAX} bytes of \
                         paths); passivate some, or do not set remember on kinds with that many live entities"
                    )));
                } else {
                    // Queued even when an equal change is pending: its answer waits
                    // for the write like the first one's.
                    queue(ctx, st, Remembered::Set(path, at), reply);
                }
            }
            RegistryMsg::Passivated { path, at } => {
                // Only the incarnation remembered last is forgotten: a late passivation
                // of an older one never drops a newer one.
                if st.latest(&path) == Some(&at) {
                    queue(ctx, st, Remembered::Unset(path), reply);
                } else {
                    reply.send(RegistryReply::Done).await;
                }
            }
            RegistryMsg::List => {
                let all = st.entities.iter().map(|(path, at)| RememberedEntity { path: path.clone(), at: at.clone() });
                reply.send(RegistryReply::Remembered(all.collect())).await;
            }
            RegistryMsg::Flush => flush(ctx, st).await?,
            RegistryMsg::Check => check(ctx, st),
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<RegistryProto>, st: &mut RegistryState) -> Result<(), ActorError> {
        // Also here, in case a scheduled flush was refused by a full mailbox.
        flush(ctx, st).await?;
        check(ctx, st);
        Ok(())
    }
}

/// Queues `change`; the flush after the messages already waiting writes them as one
/// batch (the tick flushes too, should that message be refused).
fn queue(ctx: &Ctx<RegistryProto>, st: &mut RegistryState, change: Remembered, reply: Reply<RegistryReply>) {
    if st.pending.is_empty() {
        ctx.send_after(Duration::ZERO, RegistryMsg::Flush);
    }
    st.pending.push((change, reply));
}

async fn flush(ctx: &Ctx<RegistryProto>, st: &mut RegistryState) -> Result<(), ActorError> {
    while !st.pending.is_empty() {
        let take = st.pending.len().min(FLUSH_MAX);
        let batch: Vec<(Remembered, Reply<RegistryReply>)> = st.pending.drain(..take).collect();
        let entries = batch.iter().map(|(c, _)| encode(c)).collect::<Result<Vec<_>, _>>()?;
        match ctx.persist_batch(entries).await {
            Ok(_) => {
                st.since_snapshot += batch.len() as u64;
                for (change, reply) in batch {
                    st.apply(change);
                    reply.send(RegistryReply::Done).await;
                }
            }
            Err(e) => {
                // Nothing of it is answered as done; the askers try again. The actor
                // restarts after this message (a failed write), recovering its state.
                let err = store_failed(ctx.path(), &e);
                for (_, reply) in batch.into_iter().chain(st.pending.drain(..)) {
                    reply.fail(err.clone());
                }
                return Ok(());
            }
        }
    }
    if st.since_snapshot >= SNAPSHOT_EVERY {
        let all: Vec<(&String, &Incarnation)> = st.entities.iter().collect();
        // A failed snapshot loses nothing: the log still holds every entry.
        if ctx.snapshot(encode(&all)?).await.is_ok() {
            st.since_snapshot = 0;
        }
    }
    Ok(())
}

/// Wakes, on their owners, the entities not running where they should: their node
/// is gone or restarted, or another node owns them now. One round at a time, every
/// owner at once; an entity woken that does not register again is woken less and
/// less often (up to once a minute).
fn check(ctx: &Ctx<RegistryProto>, st: &mut RegistryState) {
    if st.waking.as_ref().is_some_and(|h| !h.is_finished()) || st.entities.is_empty() {
        return;
    }
    st.waking = None;
    let node = ctx.node();
    if let Some(unseen) = forming(node) {
        tracing::debug!(%unseen, "waiting for the cluster to form before waking remembered entities");
        return;
    }
    let mut live: BTreeSet<(String, u64)> =
        node.members().into_iter().filter(|m| m.state != MemberState::Down).map(|m| (m.name, m.epoch)).collect();
    live.insert((node.name().to_string(), node.epoch()));
    let now = tokio::time::Instant::now();
    let mut by_owner: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut gone = Vec::new();
    for (path, at) in &st.entities {
        if st.backoff.get(path).is_some_and(|(_, next)| *next > now) {
            continue;
        }
        let ks = ActorPath::parse(path).ok().and_then(|p| Some((node.kind_spec(p.system(), p.kind())?, p)));
        let Some((ks, p)) = ks.filter(|(ks, _)| ks.remember) else {
            // Its kind is gone from the topology, or no longer remembered.
            gone.push(path.clone());
            continue;
        };
        let Ok(owner) = node.owner_of(ks, &p) else { continue };
        if owner != at.node || !live.contains(&(at.node.clone(), at.epoch)) {
            by_owner.entry(owner).or_default().push(path.clone());
        }
    }
    for path in gone {
        tracing::info!(%path, "forgetting a remembered entity whose kind is not remembered any more");
        queue(ctx, st, Remembered::Unset(path), Reply::None);
    }
    if by_owner.is_empty() {
        return;
    }
    for path in by_owner.values().flatten() {
        let (tries, next) = st.backoff.entry(path.clone()).or_insert((0, now));
        *tries += 1;
        *next = now + (CHECK_EVERY * 2u32.saturating_pow((*tries).min(8))).min(WAKE_BACKOFF_MAX);
    }
    let node = node.clone();
    st.waking = Some(tokio::spawn(async move {
        let rounds = by_owner.into_iter().map(|(owner, paths)| {
            let node = node.clone();
            async move {
                let Ok(agent) = wake_path(&owner) else { return };
                let agent = node.handle::<WakeProto>(agent);
                for chunk in paths.chunks(WAKE_BATCH) {
                    match agent.ask(WakeMsg::Wake { paths: chunk.to_vec() }).await {
                        Ok(w) if w.started > 0 || !w.failed.is_empty() => tracing::info!(
                            node = %owner, started = w.started, running = w.running, elsewhere = w.elsewhere,
                            failed = ?w.failed, "woke remembered entities"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            // The next round tries this owner again.
                            tracing::debug!(node = %owner, error = %e, "could not wake remembered entities yet");
                            return;
                        }
                    }
                }
            }
        });
        futures::future::join_all(rounds).await;
    }));
}

/// A node of the cluster file this node has not seen yet, while the cluster may still
/// be forming (its node booted less than [`FORMATION_WAIT`] ago).
fn forming(node: &Node) -> Option<String> {
    if node.uptime() >= FORMATION_WAIT {
        return None;
    }
    let seen: BTreeSet<String> = node.members().into_iter().map(|m| m.name).collect();
    node.loaded()
        .cluster
        .nodes
        .iter()
        .map(|n| &n.name)
        .find(|n| n.as_str() != node.name() && !seen.contains(n.as_str()))
        .cloned()
}

// ---------------------------------------------------------------------------------
// The wake agent of each node.

pub(crate) struct WakeBehavior;

impl FromParams for WakeBehavior {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(WakeBehavior)
    }
}

impl Behavior for WakeBehavior {
    type Proto = WakeProto;
    type State = ();

    async fn init(&self, _: &Ctx<WakeProto>) -> Result<(), ActorError> {
        Ok(())
    }

    async fn handle(
        &self,
        ctx: &Ctx<WakeProto>,
        _: &mut (),
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let WakeMsg::Wake { paths } = msg;
        let node = ctx.node().clone();
        // Activations recover state (an election each): not on this actor's turn.
        tokio::spawn(async move {
            let outcomes: Vec<Result<&'static str, (String, String)>> = futures::stream::iter(paths)
                .map(|path| wake_one(&node, path))
                .buffer_unordered(WAKE_PARALLEL)
                .collect()
                .await;
            let mut w = Woken::default();
            for o in outcomes {
                match o {
                    Ok("started") => w.started += 1,
                    Ok("running") => w.running += 1,
                    Ok(_) => w.elsewhere += 1,
                    Err(f) => w.failed.push(f),
                }
            }
            if w.started > 0 {
                node.metrics()
                    .counter("troupe_remembered_woken_total", "Remembered entities started without a message", &[])
                    .add(w.started);
            }
            reply.send(w).await;
        });
        Ok(())
    }
}

async fn wake_one(node: &Node, path: String) -> Result<&'static str, (String, String)> {
    let p = ActorPath::parse(&path).map_err(|e| (path.clone(), e.to_string()))?;
    if !node.kind_spec(p.system(), p.kind()).is_some_and(|ks| ks.remember) {
        return Err((path, "not a remembered kind here".into()));
    }
    if node.local_slot(&p).is_some() {
        return Ok("running");
    }
    match node.locate(&p) {
        Ok(crate::node::Located::Live(_)) => Ok("running"),
        Ok(crate::node::Located::Remote(_)) => Ok("elsewhere"),
        Ok(crate::node::Located::ActivateHere) => match node.activate_local(&p).await {
            Ok(_) => Ok("started"),
            Err(e) => Err((path, e.to_string())),
        },
        Err(e) => Err((path, e.to_string())),
    }
}

// ---------------------------------------------------------------------------------
// Reminder buckets.

/// One reminder as a bucket keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    due_unix_ms: u64,
    period_ms: Option<u64>,
    msg: Vec<u8>,
    /// Which setting this is (the log sequence number it was set at): a sending of an
    /// earlier setting does not remove a newer one.
    generation: u64,
}

/// One change to a bucket's durable state.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum BucketOp {
    Set { target: String, id: String, r: Stored },
    Remove { target: String, id: String },
}

pub(crate) struct ReminderBucket;

impl FromParams for ReminderBucket {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(ReminderBucket)
    }
}

type Key = (String, String);

pub(crate) struct BucketState {
    reminders: BTreeMap<Key, Stored>,
    bytes: usize,
    /// Sendings out, since when (one whose `Sent` never came back counts as lost after
    /// the ask timeout and a margin, and is sent again).
    sending: BTreeMap<Key, tokio::time::Instant>,
    /// This incarnation, in its `Sent` messages: one that a previous owner's task sends
    /// here after the bucket moved is ignored.
    incarnation: u64,
    /// Failed sendings since the last delivery.
    attempts: HashMap<Key, u32>,
    since_snapshot: u64,
}

impl BucketState {
    fn apply(&mut self, op: BucketOp) {
        match op {
            BucketOp::Set { target, id, r } => {
                self.bytes += r.msg.len();
                let key = (target, id);
                self.attempts.remove(&key);
                if let Some(old) = self.reminders.insert(key, r) {
                    self.bytes -= old.msg.len();
                }
            }
            BucketOp::Remove { target, id } => {
                let key = (target, id);
                self.attempts.remove(&key);
                if let Some(old) = self.reminders.remove(&key) {
                    self.bytes -= old.msg.len();
                }
            }
        }
    }
}

/// How long a bucket waits to be remembered before it refuses a reminder.
const REGISTERED_WITHIN: Duration = Duration::from_secs(3);

/// How long past the ask timeout a sending whose outcome never came back is waited for.
const SENT_MARGIN: Duration = Duration::from_secs(5);

/// Pause before sending again after `attempts` failures.
fn backoff(attempts: u32) -> u64 {
    (100u64 << attempts.min(9)).min(30_000)
}

impl Behavior for ReminderBucket {
    type Proto = ReminderProto;
    type State = BucketState;

    async fn init(&self, ctx: &Ctx<ReminderProto>) -> Result<BucketState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut st = BucketState {
            reminders: BTreeMap::new(),
            bytes: 0,
            sending: BTreeMap::new(),
            incarnation: rand::random(),
            attempts: HashMap::new(),
            since_snapshot: r.entries.len() as u64,
        };
        if let Some((_, bytes)) = &r.snapshot {
            let all: Vec<(Key, Stored)> = decode("reminder snapshot", bytes)?;
            for ((target, id), r) in all {
                st.apply(BucketOp::Set { target, id, r });
            }
        }
        for (_, bytes) in &r.entries {
            st.apply(decode("reminder entry", bytes)?);
        }
        ctx.tick_every(RESOLUTION);
        Ok(st)
    }

    async fn handle(
        &self,
        ctx: &Ctx<ReminderProto>,
        st: &mut BucketState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            ReminderMsg::Set { target, id, due_unix_ms, period_ms, msg } => {
                let schedule =
                    crate::reminders::Schedule { first: Duration::ZERO, period: period_ms.map(Duration::from_millis) };
                if let Err(e) = crate::reminders::check(&id, &schedule, &msg) {
                    reply.fail(e);
                    return Ok(());
                }
                let key = (target.clone(), id.clone());
                let replacing = st.reminders.get(&key).map_or(0, |r| r.msg.len());
                if !st.reminders.contains_key(&key) && st.reminders.len() >= PER_BUCKET_MAX {
                    reply.fail(RemoteError::Invalid(format!(
                        "{} holds {PER_BUCKET_MAX} reminders, its most: cancel some first",
                        ctx.path()
                    )));
                    return Ok(());
                }
                if st.bytes - replacing + msg.len() > BUCKET_BYTES_MAX {
                    reply.fail(RemoteError::Invalid(format!(
                        "{} holds {BUCKET_BYTES_MAX} bytes of reminder messages, its most: cancel some or send \
                         smaller messages",
                        ctx.path()
                    )));
                    return Ok(());
                }
                // A reminder is acknowledged only once this bucket is remembered: were its
                // node to die first, nothing would start the bucket again to fire it.
                if !ctx.remembered(REGISTERED_WITHIN).await {
                    reply.fail(RemoteError::Unreachable {
                        node: ctx.node().name().to_string(),
                        reason: format!(
                            "{} is not yet held by the registry of remembered entities (it may be moving); \
                             set the reminder again",
                            ctx.path()
                        ),
                    });
                    return Ok(());
                }
                let r = Stored { due_unix_ms, period_ms, msg, generation: ctx.next_seq() };
                let op = BucketOp::Set { target, id, r };
                match write(ctx, st, op).await {
                    Ok(()) => reply.send(ReminderReply::Set).await,
                    Err(e) => reply.fail(e),
                }
            }
            ReminderMsg::Cancel { target, id } => {
                let existed = st.reminders.contains_key(&(target.clone(), id.clone()));
                if !existed {
                    reply.send(ReminderReply::Cancelled { existed }).await;
                    return Ok(());
                }
                match write(ctx, st, BucketOp::Remove { target, id }).await {
                    Ok(()) => reply.send(ReminderReply::Cancelled { existed }).await,
                    Err(e) => reply.fail(e),
                }
                passivate_if_empty(ctx, st);
            }
            ReminderMsg::List { target } => {
                let mine = st.reminders.range((target.clone(), String::new())..).take_while(|((t, _), _)| *t == target);
                let listed = mine
                    .map(|(k, r)| ReminderInfo {
                        id: k.1.clone(),
                        due_unix_ms: r.due_unix_ms,
                        period_ms: r.period_ms,
                        attempts: st.attempts.get(k).copied().unwrap_or(0),
                    })
                    .collect();
                reply.send(ReminderReply::Listed(listed)).await;
            }
            ReminderMsg::Fire => fire(ctx, st),
            ReminderMsg::Sent { incarnation, .. } if incarnation != st.incarnation => {
                reply.send(ReminderReply::Done).await;
            }
            ReminderMsg::Sent { target, id, generation, failed, .. } => {
                let key = (target, id);
                st.sending.remove(&key);
                sent(ctx, st, key, generation, failed).await?;
                reply.send(ReminderReply::Done).await;
                passivate_if_empty(ctx, st);
            }
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<ReminderProto>, st: &mut BucketState) -> Result<(), ActorError> {
        fire(ctx, st);
        // Woken with nothing left (its last removal landed, its forgetting did not).
        passivate_if_empty(ctx, st);
        Ok(())
    }
}

/// Persists `op` and applies it; snapshots now and then.
async fn write(ctx: &Ctx<ReminderProto>, st: &mut BucketState, op: BucketOp) -> Result<(), RemoteError> {
    let bytes = codec::encode(&op).map_err(|e| RemoteError::Invalid(e.to_string()))?;
    ctx.persist(bytes).await.map_err(|e| store_failed(ctx.path(), &e))?;
    st.apply(op);
    st.since_snapshot += 1;
    if st.since_snapshot >= SNAPSHOT_EVERY {
        let all: Vec<(&Key, &Stored)> = st.reminders.iter().collect();
        if let Ok(bytes) = codec::encode(&all)
            && ctx.snapshot(bytes).await.is_ok()
        {
            st.since_snapshot = 0;
        }
    }
    Ok(())
}

fn passivate_if_empty(ctx: &Ctx<ReminderProto>, st: &BucketState) {
    if st.reminders.is_empty() && st.sending.is_empty() {
        ctx.passivate();
    }
}

/// Sends every due reminder that is not being sent already, each as an ask on its
/// own task; how it ended comes back as [`ReminderMsg::Sent`].
fn fire(ctx: &Ctx<ReminderProto>, st: &mut BucketState) {
    let now = ctx.node().clock_us() / 1000;
    let started = tokio::time::Instant::now();
    let lost_after = ctx.node().default_ask_timeout() + SENT_MARGIN;
    let out = |k: &Key| st.sending.get(k).is_some_and(|since| started.duration_since(*since) < lost_after);
    let due: Vec<(Key, Stored)> = st
        .reminders
        .iter()
        .filter(|(k, r)| r.due_unix_ms <= now && !out(k))
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    // Sendings of reminders that no longer exist are not waited for.
    st.sending.retain(|k, _| st.reminders.contains_key(k));
    let incarnation = st.incarnation;
    for ((target, id), r) in due {
        st.sending.insert((target.clone(), id.clone()), started);
        let node = ctx.node().clone();
        let me = ctx.myself();
        tokio::spawn(async move {
            let failed = match ActorPath::parse(&target) {
                Err(e) => Some((e.to_string(), false)),
                Ok(path) => match node.ask_raw(&path, r.msg, 0, node.default_ask_timeout()).await {
                    Ok(_) => None,
                    // A handler that failed, or one that answered nothing: the answer
                    // is the acknowledgement, so it gets the reminder again.
                    Err(RemoteError::NoReply { .. }) => Some((
                        "the target did not answer (its handler failed, or it answers a reminder with nothing: \
                         answer it to acknowledge it)"
                            .to_string(),
                        true,
                    )),
                    Err(e) => {
                        let permanent = matches!(
                            e,
                            RemoteError::UnknownPath { .. }
                                | RemoteError::BadMessage { .. }
                                | RemoteError::Unauthorized(_)
                                | RemoteError::Invalid(_)
                        );
                        Some((e.to_string(), !permanent))
                    }
                },
            };
            let sent = ReminderMsg::Sent { target, id, generation: r.generation, failed, incarnation };
            let _ = me.tell(sent).await;
        });
    }
}

/// Records how a sending ended: a delivered one-shot is removed, a periodic one is
/// due a period later, a failed one is tried again after a pause (or dropped when the
/// error says it never can be delivered).
async fn sent(
    ctx: &Ctx<ReminderProto>,
    st: &mut BucketState,
    key: Key,
    generation: u64,
    failed: Option<(String, bool)>,
) -> Result<(), ActorError> {
    let Some(r) = st.reminders.get(&key).filter(|r| r.generation == generation).cloned() else {
        // Cancelled or set again meanwhile: the newer setting stands.
        return Ok(());
    };
    let now = ctx.node().clock_us() / 1000;
    let metrics = ctx.node().metrics();
    match failed {
        None => {
            metrics.counter("troupe_reminders_fired_total", "Reminders delivered", &[]).inc();
            st.attempts.remove(&key);
            match r.period_ms {
                None => {
                    let (target, id) = key;
                    if let Err(e) = write(ctx, st, BucketOp::Remove { target, id }).await {
                        // Still stored: it will be sent again (at least once).
                        tracing::warn!(path = %ctx.path(), error = %e, "a delivered reminder was not removed");
                    }
                }
                Some(p) => {
                    // Next occurrence after now; missed ones coalesce into this one.
                    let p = p.max(1);
                    let behind = now.saturating_sub(r.due_unix_ms) / p + 1;
                    if let Some(stored) = st.reminders.get_mut(&key) {
                        stored.due_unix_ms = r.due_unix_ms.saturating_add(behind.saturating_mul(p));
                    }
                }
            }
        }
        Some((why, retry)) => {
            let (target, id) = &key;
            if !retry {
                tracing::error!(%target, %id, error = %why, "reminder dropped: it can never be delivered");
                metrics.counter("troupe_reminders_dropped_total", "Reminders that could never be delivered", &[]).inc();
                let (target, id) = key;
                if let Err(e) = write(ctx, st, BucketOp::Remove { target, id }).await {
                    tracing::warn!(path = %ctx.path(), error = %e, "an undeliverable reminder was not removed");
                }
                return Ok(());
            }
            let attempts = st.attempts.entry(key.clone()).or_insert(0);
            *attempts += 1;
            if *attempts == 1 || attempts.is_multiple_of(10) {
                tracing::warn!(%target, %id, attempts = *attempts, error = %why, "reminder not delivered; retrying");
            }
            metrics
                .counter("troupe_reminders_retried_total", "Reminder sendings that failed and are retried", &[])
                .inc();
            let pause = backoff(*attempts);
            if let Some(stored) = st.reminders.get_mut(&key) {
                stored.due_unix_ms = now.saturating_add(pause);
            }
        }
    }
    Ok(())
}
