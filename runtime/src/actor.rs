//! Behaviors: how an actor kind is written, and the ractor shell that runs one.
//!
//! A kind implements [`Behavior`] (build state, handle a message, optionally tick)
//! and [`FromParams`] (build itself from its topology parameters). The shell around
//! it is the only code that touches ractor: it counts the mailbox down, records
//! errors and spans, carries the trace id, and passivates idle entities.
//!
//! Invariants:
//! - A handler error or panic fails the actor; its supervisor decides what follows.
//! - The trace id of the message being handled is the current trace id for every
//!   handle call the handler makes, so a request can be followed across nodes.

use crate::config::KindSpec;
use crate::handle::ActorHandle;
use crate::node::Node;
use crate::remember::Remembering;
use crate::reply::Reply;
use crate::slot::LocalSlot;
use crate::store::{Recovered, StoreError, WriteOp};
use ractor::{ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use troupe_core::replication::Term;
use troupe_wire::introspect::ActorState;
use troupe_wire::{ActorPath, Protocol, RemoteError};

/// What a handler returns on failure (the same as ractor's processing error).
pub type ActorError = ActorProcessingErr;

/// The message type of behavior `B`'s protocol.
pub type MsgOf<B> = <<B as Behavior>::Proto as Protocol>::Msg;
/// The reply type of behavior `B`'s protocol.
pub type ReplyOf<B> = <<B as Behavior>::Proto as Protocol>::Reply;

/// An actor kind's code.
pub trait Behavior: Send + Sync + Sized + 'static {
    /// The messages the kind accepts and the replies it gives.
    type Proto: Protocol;
    /// One actor's in-memory state, built by [`Behavior::init`].
    type State: Send + 'static;

    /// Builds the state when the actor starts, and again on every restart (read
    /// durable state back here with [`Ctx::recover`]).
    fn init(&self, ctx: &Ctx<Self::Proto>) -> impl Future<Output = Result<Self::State, ActorError>> + Send;

    /// Handles one message, answering through `reply` (dropping an ask's port
    /// unanswered answers `NoReply`). An error fails the actor.
    fn handle(
        &self,
        ctx: &Ctx<Self::Proto>,
        state: &mut Self::State,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> impl Future<Output = Result<(), ActorError>> + Send;

    /// Called every `tick` period set with [`Ctx::tick_every`].
    fn tick(
        &self,
        _ctx: &Ctx<Self::Proto>,
        _state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorError>> + Send {
        async { Ok(()) }
    }

    /// Called when the actor stops on purpose (not after a failure).
    fn stopping(&self, _ctx: &Ctx<Self::Proto>, _state: &mut Self::State) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Builds a behavior from the `params` table of its topology entry.
pub trait FromParams: Sized {
    /// The kind's parameters, deserialized from the `params` table (with the
    /// cluster's overrides merged in).
    type Params: DeserializeOwned;
    /// Builds the behavior, once per node when the node starts; an error stops the
    /// node from starting (`NodeError::Kind`).
    fn from_params(params: Self::Params, spec: &KindSpec, node: &Node) -> Result<Self, String>;
    /// Extra checks at config load time, beyond the params' types.
    fn check(_params: &Self::Params) -> Result<(), String> {
        Ok(())
    }
}

pub(crate) use crate::slot::Delivery;

pub use crate::current::current_trace;
pub(crate) use crate::current::{CURRENT, Current};

/// An actor's view of itself and of the node it runs on.
pub struct Ctx<P: Protocol> {
    node: Node,
    path: ActorPath,
    spec: Arc<KindSpec>,
    slot: Arc<LocalSlot<P>>,
    me: ActorRef<Delivery<P>>,
    passivate: AtomicBool,
    /// Next durable log sequence number.
    next_seq: AtomicU64,
    /// The term this actor owns its replicated state under (set by [`Ctx::recover`]).
    term: parking_lot::Mutex<Term>,
    /// A write failed (it may be on some disks and not in the actor's memory) or a
    /// newer owner holds the state: unless the actor recovers first, its incarnation
    /// ends after the current message and its supervisor restarts it (a new
    /// recovery), as Akka stops a persistent actor whose write failed.
    must_recover: AtomicBool,
    /// Tasks that live as long as this incarnation (its subscriptions).
    linked: LinkedTasks,
    /// For a remembered kind: whether the registry holds this incarnation yet.
    registered: parking_lot::Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

/// Tasks aborted when the incarnation that started them ends (stop or restart), so a
/// restarted actor that subscribes again does not get every message twice.
#[derive(Default)]
struct LinkedTasks(parking_lot::Mutex<Vec<tokio::task::AbortHandle>>);

impl Drop for LinkedTasks {
    fn drop(&mut self) {
        for task in self.0.get_mut().drain(..) {
            task.abort();
        }
    }
}

impl<P: Protocol> Ctx<P> {
    /// This actor's path.
    pub fn path(&self) -> &ActorPath {
        &self.path
    }
    /// This actor's key (the last segment of its path).
    pub fn key(&self) -> &str {
        self.path.key()
    }
    /// The node this actor runs on.
    pub fn node(&self) -> &Node {
        &self.node
    }
    /// This actor's kind, as configured.
    pub fn spec(&self) -> &KindSpec {
        &self.spec
    }

    /// A handle to this actor (e.g. to hand to another actor).
    pub fn myself(&self) -> ActorHandle<P> {
        self.node.handle::<P>(self.path.clone())
    }

    /// A handle to any actor, local or remote.
    pub fn handle<Q: Protocol>(&self, path: ActorPath) -> ActorHandle<Q> {
        self.node.handle::<Q>(path)
    }

    /// Sends `msg` to this actor after `delay` (a timer, not a sleep).
    pub fn send_after(&self, delay: Duration, msg: P::Msg) {
        let slot = self.slot.clone();
        let trace = current_trace();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = slot.enqueue(Delivery::Msg { msg, reply: Reply::None, trace });
        });
    }

    /// Runs a program ([`crate::process`]: process group, limits, timeout, optional
    /// sandbox) without blocking this actor: the job runs in the background and
    /// `done(outcome)` arrives in this actor's mailbox as a message when it ends.
    /// The returned canceller kills the job (its message then says
    /// [`crate::process::Exit::Cancelled`]); a job the actor does not cancel runs to
    /// its own timeout even if the actor stops first.
    pub fn run_process(
        &self,
        job: crate::process::Job,
        done: impl FnOnce(Result<crate::process::Outcome, crate::process::RunError>) -> P::Msg + Send + 'static,
    ) -> Result<crate::process::Canceller, crate::process::RunError> {
        let running = crate::process::spawn(job)?;
        let canceller = running.canceller();
        let slot = self.slot.clone();
        let trace = current_trace();
        tokio::spawn(async move {
            let msg = done(running.wait().await);
            let _ = slot.enqueue(Delivery::Msg { msg, reply: Reply::None, trace });
        });
        Ok(canceller)
    }

    /// Subscribes this actor to `topic` ([`crate::pubsub`]): each message published
    /// on it arrives in the mailbox as `map(published)`, until this incarnation ends
    /// (a restarted actor subscribes again in its `init`). A message that finds the
    /// mailbox full is missed (pub/sub is at most once) and counted in
    /// `troupe_pubsub_dropped_total`.
    pub fn subscribe(&self, topic: &str, map: impl Fn(crate::pubsub::Published) -> P::Msg + Send + 'static) {
        let pubsub = crate::pubsub::PubSub::of(&self.node);
        let mut sub = pubsub.subscribe(topic);
        let slot = Arc::downgrade(&self.slot);
        let task = tokio::spawn(async move {
            while let Some(published) = sub.recv().await {
                let mut delivery = Delivery::Msg { msg: map(published), reply: Reply::None, trace: 0 };
                // While the actor restarts its slot refuses; once it has stopped for
                // good the slot is gone, and so is the subscription.
                loop {
                    let Some(slot) = slot.upgrade() else { return };
                    match slot.enqueue(delivery) {
                        Ok(()) => break,
                        // Missed, as a full subscriber misses one, and counted so.
                        Err((RemoteError::MailboxFull { .. }, _)) | Err((_, Delivery::Tick)) => {
                            pubsub.dropped.inc();
                            break;
                        }
                        Err((_, d)) => {
                            delivery = d;
                            drop(slot);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        });
        self.linked.0.lock().push(task.abort_handle());
    }

    /// Ties `task` to this incarnation: it is aborted when the actor stops or restarts.
    pub(crate) fn link(&self, task: tokio::task::JoinHandle<()>) {
        self.linked.0.lock().push(task.abort_handle());
    }

    /// Sets durable reminder `id` of this actor ([`crate::reminders`]): `msg` comes
    /// back to it on `schedule`, at least once, even if nodes crash meanwhile (unlike
    /// [`Ctx::send_after`], a timer in memory). Setting an id again replaces the
    /// reminder. Returns once it is durable.
    pub async fn remind(&self, id: &str, schedule: crate::reminders::Schedule, msg: P::Msg) -> Result<(), RemoteError> {
        crate::reminders::set::<P>(&self.node, &self.path, id, schedule, &msg).await
    }

    /// Removes this actor's reminder `id`; `Ok(false)` when there was none.
    pub async fn cancel_reminder(&self, id: &str) -> Result<bool, RemoteError> {
        crate::reminders::cancel(&self.node, &self.path, id).await
    }

    /// For a remembered kind ([`crate::remember`]): waits at most `within` until the
    /// cluster's registry holds this incarnation durably, so its node's death will
    /// start it again elsewhere; `true` once it does (at once for a kind that is not
    /// remembered: there is nothing to wait for). An actor that promises work to come
    /// (as the reminder buckets do) waits for this before it acknowledges the promise.
    pub async fn remembered(&self, within: Duration) -> bool {
        let rx = self.registered.lock().clone();
        let Some(mut rx) = rx else { return !self.spec.remember };
        matches!(tokio::time::timeout(within, rx.wait_for(|r| *r)).await, Ok(Ok(_)))
    }

    /// Calls [`Behavior::tick`] every `period` until the actor stops.
    pub fn tick_every(&self, period: Duration) {
        self.me.send_interval(period, || Delivery::Tick);
    }

    /// Stops this actor after the current message, once its mailbox is empty.
    pub fn passivate(&self) {
        self.passivate.store(true, Ordering::Relaxed);
    }

    /// Reads back this actor's durable state (snapshot + log after it), and sets
    /// the next sequence number after it. Replicated on a cluster, this is an
    /// election: a majority of the kind's replica set promises this node a new term
    /// and the newest copy among them is adopted under it (docs/replication.md).
    pub async fn recover(&self) -> Result<Recovered, StoreError> {
        let mut r = self.node.recover(&self.path, self.spec.replication_factor).await?;
        self.next_seq.store(r.last_seq() + 1, Ordering::SeqCst);
        *self.term.lock() = r.terms.accepted.clone();
        self.must_recover.store(false, Ordering::SeqCst);
        // A tombstone left by `forget`: nothing before it counts.
        if r.snapshot.as_ref().is_some_and(|(_, b)| b.is_empty()) {
            r.snapshot = None;
        }
        Ok(r)
    }

    fn term(&self) -> Term {
        self.term.lock().clone()
    }

    /// Appends one entry to this actor's durable log. Returns after it is on disk on a
    /// majority of the kind's `replication_factor` replicas; only then may the actor
    /// acknowledge the write. An error means it may or may not be there: recover
    /// before serving again.
    pub async fn persist(&self, bytes: Vec<u8>) -> Result<u64, StoreError> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let op = WriteOp::Append { path: self.path.to_string(), seq, bytes };
        let r = self.node.persist(&self.path, self.spec.replication_factor, &self.term(), op).await;
        self.note(&r, true)?;
        Ok(seq)
    }

    /// Appends several entries to this actor's log in one atomic, replicated step
    /// (one store transaction on each replica): after a crash they are all there or
    /// none is. Returns their sequence numbers, consecutive. Fan-out systems write a
    /// batch of events this way.
    pub async fn persist_batch(&self, entries: Vec<Vec<u8>>) -> Result<Vec<u64>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.next_seq.fetch_add(entries.len() as u64, Ordering::SeqCst);
        let path = self.path.to_string();
        let seqs: Vec<u64> = (first..first + entries.len() as u64).collect();
        let ops =
            seqs.iter().zip(entries).map(|(&seq, bytes)| WriteOp::Append { path: path.clone(), seq, bytes }).collect();
        let r = self.node.persist_all(&self.path, self.spec.replication_factor, &self.term(), ops).await;
        self.note(&r, true)?;
        Ok(seqs)
    }

    /// Marks the incarnation for recovery after a failed write (`any_failure`) or a
    /// deposition.
    fn note<T>(&self, r: &Result<T, StoreError>, any_failure: bool) -> Result<(), StoreError> {
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                if any_failure || matches!(e, StoreError::Deposed(_)) {
                    self.must_recover.store(true, Ordering::SeqCst);
                }
                Err(e.clone())
            }
        }
    }

    /// Replaces the log up to now with `bytes`, a snapshot of the state.
    pub async fn snapshot(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        let seq = self.next_seq.load(Ordering::SeqCst).saturating_sub(1);
        let op = WriteOp::Snapshot { path: self.path.to_string(), seq, bytes };
        let r = self.node.persist(&self.path, self.spec.replication_factor, &self.term(), op).await;
        // A snapshot holds nothing the log does not: only a deposition matters.
        self.note(&r, false)
    }

    /// Deletes this actor's durable state everywhere: a tombstone (an empty snapshot)
    /// at the next sequence number, so the deletion orders after every write before it
    /// and no replica's older copy can win an election over it; `recover` reads it
    /// back as no state.
    pub async fn forget(&self) -> Result<(), StoreError> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let op = WriteOp::Snapshot { path: self.path.to_string(), seq, bytes: Vec::new() };
        let r = self.node.persist(&self.path, self.spec.replication_factor, &self.term(), op).await;
        self.note(&r, true)
    }

    /// A read barrier: returns once a majority of the replica set confirms that this
    /// actor's term is still the newest it promised, so what the actor answers from
    /// memory next is linearizable (a deposed owner on the minority side of a
    /// partition gets an error instead of serving a stale value). Immediate for
    /// unreplicated kinds.
    pub async fn confirm(&self) -> Result<(), StoreError> {
        let r = self.node.confirm(&self.path, self.spec.replication_factor, &self.term()).await;
        self.note(&r, false)
    }

    /// Sequence number the next `persist` will use.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }
}

/// Converts a typed error into a handler failure.
pub fn fail(msg: impl Into<String>) -> ActorError {
    msg.into().into()
}

pub(crate) struct Shell<B: Behavior> {
    pub behavior: Arc<B>,
}

pub(crate) struct ShellArgs<P: Protocol> {
    pub node: Node,
    pub path: ActorPath,
    pub spec: Arc<KindSpec>,
    pub slot: Arc<LocalSlot<P>>,
}

pub(crate) struct ShellState<B: Behavior> {
    ctx: Ctx<B::Proto>,
    state: B::State,
    last_active: Instant,
    /// The registration of a remembered entity ([`crate::remember`]).
    remembering: Option<Remembering>,
}

impl<B: Behavior> ractor::Actor for Shell<B> {
    type Msg = Delivery<B::Proto>;
    type State = ShellState<B>;
    type Arguments = ShellArgs<B::Proto>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = Ctx {
            node: args.node,
            path: args.path,
            spec: args.spec,
            slot: args.slot,
            me: myself.clone(),
            passivate: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
            term: parking_lot::Mutex::new(Term::default()),
            must_recover: AtomicBool::new(false),
            linked: LinkedTasks::default(),
            registered: parking_lot::Mutex::new(None),
        };
        let stats = ctx.slot.entry_stats();
        stats.set_state(ActorState::Starting);
        let state = match self.behavior.init(&ctx).await {
            Ok(s) => s,
            Err(e) => {
                stats.record_error(&format!("init: {e}"));
                return Err(e);
            }
        };
        if let Some(ms) = ctx.spec.passivate_after_ms {
            myself.send_interval(Duration::from_millis((ms / 2).max(50)), || Delivery::IdleCheck);
        }
        ctx.slot.attach(myself);
        stats.set_state(ActorState::Running);
        let remembering = ctx.spec.remember.then(|| Remembering::start(&ctx.node, &ctx.path));
        *ctx.registered.lock() = remembering.as_ref().map(|r| r.registered.clone());
        Ok(ShellState { ctx, state, last_active: Instant::now(), remembering })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        d: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let stats = st.ctx.slot.entry_stats();
        let result = match d {
            Delivery::Msg { msg, reply, trace } => {
                stats.dequeued();
                if st.ctx.spec.passivate_after_ms.is_some() {
                    st.last_active = Instant::now();
                }
                let fut = self.behavior.handle(&st.ctx, &mut st.state, msg, reply);
                if trace & 1 == 1 {
                    // Sampled: make the trace id (and this actor, for FIFO lanes) the
                    // context of every call the handler makes, and record a span.
                    let started = st.ctx.node.clock_us();
                    let fields = Arc::new(parking_lot::Mutex::new(Vec::new()));
                    let current = Current { trace, actor: st.ctx.slot.path_str().clone(), fields: fields.clone() };
                    let r = CURRENT.scope(current, fut).await;
                    let fields = std::mem::take(&mut *fields.lock());
                    st.ctx.node.record_span_with(trace, "handle", &st.ctx.path, started, fields);
                    r
                } else {
                    // Unsampled (most traffic): no task-local scope — it would copy the
                    // handler's future on every message. Calls made here get fresh
                    // unsampled ids, and remote lanes are chosen by target alone, which
                    // still keeps every sender's messages to a target in order.
                    fut.await
                }
            }
            Delivery::Tick => self.behavior.tick(&st.ctx, &mut st.state).await,
            Delivery::IdleCheck => {
                let idle = st.ctx.spec.passivate_after_ms.map(Duration::from_millis);
                if idle.is_some_and(|idle| st.last_active.elapsed() >= idle) {
                    st.ctx.passivate();
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            stats.record_error(&e.to_string());
            return Err(e);
        }
        if st.ctx.must_recover.load(Ordering::SeqCst) {
            // The handler did not recover after a failed write or a deposition: end this
            // incarnation; the supervisor's restart recovers the state afresh.
            let why =
                format!("{}: a write failed or a newer owner holds the state; restarting to recover", st.ctx.path);
            stats.record_error(&why);
            return Err(why.into());
        }
        if st.ctx.passivate.load(Ordering::Relaxed) {
            if st.ctx.slot.try_close() {
                if let Some(r) = st.remembering.as_mut() {
                    r.passivated();
                }
                myself.stop(Some(PASSIVATED.into()));
            } else {
                st.ctx.passivate.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        self.behavior.stopping(&st.ctx, &mut st.state).await;
        Ok(())
    }
}

/// The stop reason of a passivated entity.
pub(crate) const PASSIVATED: &str = "passivated";

/// Converts an actor-side store error into what a caller sees.
pub fn store_failed(path: &ActorPath, e: &StoreError) -> RemoteError {
    RemoteError::ActorFailed { path: path.to_string(), reason: e.to_string() }
}
