//! The built-in actors behind remembered entities and reminders: the registry
//! (`/troupe/remembered/_`, [`crate::remember`]), the per-node wake agents
//! (`/troupe/wake/<node>`) and the reminder buckets (`/troupe/reminders/b<NN>`,
//! [`crate::reminders`]). Each keeps its state with `Ctx::persist` like any actor, so
//! it is replicated on the kind's replica set and recovered by its next owner.

use crate::actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf, fail, store_failed};
use crate::config::KindSpec;
use crate::node::Node;
use crate::remember::{
    CHECK_EVERY, Incarnation, REMEMBERED_MAX, RegistryMsg, RegistryProto, RegistryReply, RememberedEntity, WakeMsg,
    WakeProto, Woken, wake_path,
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

pub(crate) struct RegistryBehavior;

impl FromParams for RegistryBehavior {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(RegistryBehavior)
    }
}

pub(crate) struct RegistryState {
    entities: BTreeMap<String, Incarnation>,
    /// Changes waiting for the next flush, with the asks they answer.
    pending: Vec<(Remembered, Reply<RegistryReply>)>,
    flush_scheduled: bool,
    since_snapshot: u64,
    /// A round of wakes is out.
    waking: bool,
}

impl RegistryState {
    fn apply(&mut self, change: Remembered) {
        match change {
            Remembered::Set(path, at) => {
                self.entities.insert(path, at);
            }
            Remembered::Unset(path) => {
                self.entities.remove(&path);
            }
        }
    }

    /// Whether `change` changes anything, counting the changes not yet flushed.
    fn changes(&self, change: &Remembered) -> bool {
        let last = self.pending.iter().rev().find_map(|(c, _)| match c {
            Remembered::Set(p, at) if Some(p) == path_of(change) => Some(Some(at)),
            Remembered::Unset(p) if Some(p) == path_of(change) => Some(None),
            _ => None,
        });
        let now = match (last, change) {
            (Some(v), _) => v,
            (None, Remembered::Set(p, _) | Remembered::Unset(p)) => self.entities.get(p),
        };
        match change {
            Remembered::Set(_, at) => now != Some(at),
            Remembered::Unset(_) => now.is_some(),
        }
    }
}

fn path_of(c: &Remembered) -> Option<&String> {
    match c {
        Remembered::Set(p, _) | Remembered::Unset(p) => Some(p),
    }
}

impl Behavior for RegistryBehavior {
    type Proto = RegistryProto;
    type State = RegistryState;

    async fn init(&self, ctx: &Ctx<RegistryProto>) -> Result<RegistryState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering the registry: {e}")))?;
        let mut st = RegistryState {
            entities: BTreeMap::new(),
            pending: Vec::new(),
            flush_scheduled: false,
            since_snapshot: r.entries.len() as u64,
            waking: false,
        };
        if let Some((_, bytes)) = &r.snapshot {
            let all: Vec<(String, Incarnation)> = decode("registry snapshot", bytes)?;
            st.entities = all.into_iter().collect();
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
                let change = Remembered::Set(path, at);
                if !st.changes(&change) {
                    reply.send(RegistryReply::Done).await;
                } else if !st.entities.contains_key(path_of(&change).map_or("", |p| p.as_str()))
                    && st.entities.len() + st.pending.len() >= REMEMBERED_MAX
                {
                    reply.fail(RemoteError::Invalid(format!(
                        "the cluster remembers at most {REMEMBERED_MAX} entities; passivate some, or do not \
                         set remember on kinds with that many live entities"
                    )));
                } else {
                    queue(ctx, st, change, reply);
                }
            }
            RegistryMsg::Passivated { path, at } => {
                let same = st.entities.get(&path).is_some_and(|held| *held == at)
                    || st.pending.iter().any(|(c, _)| matches!(c, Remembered::Set(p, a) if *p == path && *a == at));
                let change = Remembered::Unset(path);
                if same && st.changes(&change) {
                    queue(ctx, st, change, reply);
                } else {
                    // Another incarnation is remembered now, or none: nothing to forget.
                    reply.send(RegistryReply::Done).await;
                }
            }
            RegistryMsg::List => {
                let all = st.entities.iter().map(|(path, at)| RememberedEntity { path: path.clone(), at: at.clone() });
                reply.send(RegistryReply::Remembered(all.collect())).await;
            }
            RegistryMsg::Flush => flush(ctx, st).await?,
            RegistryMsg::Check => check(ctx, st),
            RegistryMsg::WakeDone => st.waking = false,
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<RegistryProto>, st: &mut RegistryState) -> Result<(), ActorError> {
        check(ctx, st);
        Ok(())
    }
}

/// Queues `change`; the flush after the messages already waiting writes them all as
/// one batch.
fn queue(ctx: &Ctx<RegistryProto>, st: &mut RegistryState, change: Remembered, reply: Reply<RegistryReply>) {
    st.pending.push((change, reply));
    if !st.flush_scheduled {
        st.flush_scheduled = true;
        ctx.send_after(Duration::ZERO, RegistryMsg::Flush);
    }
}

async fn flush(ctx: &Ctx<RegistryProto>, st: &mut RegistryState) -> Result<(), ActorError> {
    st.flush_scheduled = false;
    if st.pending.is_empty() {
        return Ok(());
    }
    let pending = std::mem::take(&mut st.pending);
    let entries = pending.iter().map(|(c, _)| encode(c)).collect::<Result<Vec<_>, _>>()?;
    match ctx.persist_batch(entries).await {
        Ok(_) => {
            st.since_snapshot += pending.len() as u64;
            for (change, reply) in pending {
                st.apply(change);
                reply.send(RegistryReply::Done).await;
            }
            if st.since_snapshot >= SNAPSHOT_EVERY {
                let all: Vec<(&String, &Incarnation)> = st.entities.iter().collect();
                // A failed snapshot loses nothing: the log still holds every entry.
                if ctx.snapshot(encode(&all)?).await.is_ok() {
                    st.since_snapshot = 0;
                }
            }
        }
        Err(e) => {
            let err = store_failed(ctx.path(), &e);
            for (_, reply) in pending {
                reply.fail(err.clone());
            }
        }
    }
    Ok(())
}

/// Wakes, on their owners, the entities not running where they should: their node
/// is gone or restarted, or another node owns them now. One round at a time.
fn check(ctx: &Ctx<RegistryProto>, st: &mut RegistryState) {
    if st.waking || st.entities.is_empty() {
        return;
    }
    let node = ctx.node();
    let mut live: BTreeSet<(String, u64)> =
        node.members().into_iter().filter(|m| m.state != MemberState::Down).map(|m| (m.name, m.epoch)).collect();
    live.insert((node.name().to_string(), node.epoch()));
    let mut by_owner: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, at) in &st.entities {
        let Ok(p) = ActorPath::parse(path) else { continue };
        let Some(ks) = node.kind_spec(p.system(), p.kind()) else { continue };
        let Ok(owner) = node.owner_of(ks, &p) else { continue };
        if owner != at.node || !live.contains(&(at.node.clone(), at.epoch)) {
            by_owner.entry(owner).or_default().push(path.clone());
        }
    }
    if by_owner.is_empty() {
        return;
    }
    st.waking = true;
    let node = node.clone();
    let me = ctx.myself();
    tokio::spawn(async move {
        for (owner, paths) in by_owner {
            let Ok(agent) = wake_path(&owner) else { continue };
            let agent = node.handle::<WakeProto>(agent);
            for chunk in paths.chunks(WAKE_BATCH) {
                match agent.ask(WakeMsg::Wake { paths: chunk.to_vec() }).await {
                    Ok(w) => {
                        if w.started > 0 || !w.failed.is_empty() {
                            tracing::info!(
                                node = %owner, started = w.started, running = w.running, elsewhere = w.elsewhere,
                                failed = ?w.failed, "woke remembered entities"
                            );
                        }
                    }
                    Err(e) => tracing::debug!(node = %owner, error = %e, "could not wake remembered entities yet"),
                }
            }
        }
        let _ = me.tell(RegistryMsg::WakeDone).await;
    });
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
    /// Sendings out.
    sending: BTreeSet<Key>,
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
            sending: BTreeSet::new(),
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
            ReminderMsg::Sent { target, id, generation, failed } => {
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
    let due: Vec<(Key, Stored)> = st
        .reminders
        .iter()
        .filter(|(k, r)| r.due_unix_ms <= now && !st.sending.contains(*k))
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    for ((target, id), r) in due {
        st.sending.insert((target.clone(), id.clone()));
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
            let _ = me.tell(ReminderMsg::Sent { target, id, generation: r.generation, failed }).await;
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
                        stored.due_unix_ms = r.due_unix_ms + behind * p;
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
                stored.due_unix_ms = now + pause;
            }
        }
    }
    Ok(())
}
