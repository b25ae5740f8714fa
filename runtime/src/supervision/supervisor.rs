//! The supervisor actor: starts children in order, watches them, and applies its
//! [`RestartPolicy`] when one fails — restarting after a backoff timer (never a sleep
//! in a handler), or escalating by failing itself so its own supervisor decides.
//!
//! ractor's default `handle_supervisor_evt` would stop the supervisor on any child
//! exit; this one overrides it and is the only supervisor type troupe uses.
//!
//! A kind supervisor also activates entities on demand (`Activate`): activations of
//! one kind on one node are serialized through its mailbox, so a key never gets two
//! live incarnations on a node, and a key being passivated is re-activated only
//! after the old incarnation has stopped.

use super::msg::{ActivateReply, SupMsg};
use super::policy::{Decision, Intensity, RestartPolicy, Strategy};
use crate::actor::PASSIVATED;
use crate::node::KindInstance;
use crate::node::Node;
use crate::slot::ErasedSlot;
use crate::stats::{ActorEntry, ActorStats};
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_wire::introspect::ActorState;
use troupe_wire::{ActorPath, RemoteError};

pub(crate) type StartFn = Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, String>> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Restarted whenever it stops (static children: singletons, per-node actors,
    /// kind supervisors).
    Permanent,
    /// Restarted only when it fails; a normal stop (passivation) removes it.
    Transient,
}

pub(crate) struct ChildSpec {
    /// Unique among siblings: the child's path.
    pub key: String,
    pub entry: Arc<ActorEntry>,
    pub start: StartFn,
    pub restart: Restart,
    /// The entity's slot, for kind supervisors (removed from the registry with it).
    pub slot: Option<Arc<dyn ErasedSlot>>,
}

pub(crate) struct SupervisorConfig {
    pub path: String,
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub entry: Arc<ActorEntry>,
    pub initial: Vec<ChildSpec>,
    /// Set for kind supervisors of sharded kinds.
    pub activator: Option<(Node, Arc<dyn KindInstance>)>,
}

impl SupervisorConfig {
    pub(crate) fn new(
        path: impl Into<String>,
        kind: impl Into<String>,
        strategy: Strategy,
        intensity: Intensity,
    ) -> Self {
        let path = path.into();
        let entry =
            ActorEntry::new(path.clone(), kind.into(), strategy.to_string(), Arc::new(ActorStats::new(u64::MAX)));
        Self { path, strategy, intensity, entry, initial: Vec::new(), activator: None }
    }
}

pub(crate) struct Supervisor;

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    /// The attempt id of a start running in the background.
    starting: Option<u64>,
    /// Position in start order (rest-for-one and one-for-all restart in it).
    seq: u64,
    /// The restart round that last scheduled this child's restart: a `RestartDue` of
    /// an older round was superseded (a later decision covers this child).
    restart_round: u64,
}

/// The children of a supervisor, by key, with their start order and an index from
/// live actor ids: a kind supervisor may hold many thousands of entities, and every
/// activation, start and failure must find its child without scanning them all.
#[derive(Default)]
struct Children {
    by_key: HashMap<String, Child>,
    by_cell: HashMap<ractor::ActorId, String>,
    next_seq: u64,
}

impl Children {
    fn get(&self, key: &str) -> Option<&Child> {
        self.by_key.get(key)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Child> {
        self.by_key.get_mut(key)
    }
    fn insert(&mut self, spec: ChildSpec) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_key.insert(spec.key.clone(), Child { spec, cell: None, starting: None, seq, restart_round: 0 });
    }
    fn remove(&mut self, key: &str) -> Option<Child> {
        let c = self.by_key.remove(key)?;
        if let Some(cell) = &c.cell {
            self.by_cell.remove(&cell.get_id());
        }
        Some(c)
    }
    /// Sets (or clears) the live actor of `key`, keeping the id index in step.
    fn set_cell(&mut self, key: &str, cell: Option<ActorCell>) -> Option<ActorCell> {
        let c = self.by_key.get_mut(key)?;
        let old = std::mem::replace(&mut c.cell, cell);
        if let Some(o) = &old {
            self.by_cell.remove(&o.get_id());
        }
        if let Some(n) = &c.cell {
            self.by_cell.insert(n.get_id(), key.to_string());
        }
        old
    }
    fn key_of_cell(&self, cell: &ActorCell) -> Option<String> {
        self.by_cell.get(&cell.get_id()).cloned()
    }
    /// Keys in start order (only the rarer strategies need it).
    fn ordered_keys(&self) -> Vec<String> {
        let mut v: Vec<(&u64, &String)> = self.by_key.values().map(|c| (&c.seq, &c.spec.key)).collect();
        v.sort();
        v.into_iter().map(|(_, k)| k.clone()).collect()
    }
}

pub(crate) struct SupState {
    cfg_path: String,
    entry: Arc<ActorEntry>,
    children: Children,
    policy: RestartPolicy,
    /// Bumped by every restart decision, so an older pending restart is dropped.
    round: u64,
    attempts: u64,
    epoch: Instant,
    activator: Option<(Node, Arc<dyn KindInstance>)>,
    /// Waiting for a start to finish, by child key.
    /// Activations waiting for a child's start to finish.
    waiters: HashMap<String, Vec<ActivateReply>>,
    /// Activations waiting for a passivating incarnation to stop.
    parked: Vec<(ActorPath, ActivateReply)>,
}

impl Supervisor {
    /// Spawns a supervisor, linked to `parent` when there is one.
    pub(crate) async fn start(cfg: SupervisorConfig, parent: Option<ActorCell>) -> Result<ActorRef<SupMsg>, String> {
        let r = match parent {
            Some(p) => Actor::spawn_linked(None, Supervisor, cfg, p).await,
            None => Actor::spawn(None, Supervisor, cfg).await,
        };
        r.map(|(a, _)| a).map_err(|e| e.to_string())
    }

    /// A child spec that runs a supervisor under another supervisor.
    pub(crate) fn child_spec(
        cfg_fn: Arc<dyn Fn() -> SupervisorConfig + Send + Sync>,
        entry: Arc<ActorEntry>,
        key: String,
    ) -> ChildSpec {
        let start: StartFn = Arc::new(move |parent: ActorCell| {
            let cfg = cfg_fn();
            Box::pin(async move { Supervisor::start(cfg, Some(parent)).await.map(|a| a.get_cell()) })
        });
        ChildSpec { key, entry, start, restart: Restart::Permanent, slot: None }
    }
}

impl SupState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Starts child `key` in the background: starts can be slow (recovering state,
    /// loading a model) and the supervisor must keep answering meanwhile. The result
    /// comes back as `Started`.
    fn launch(&mut self, key: &str, myself: &ActorRef<SupMsg>) {
        self.attempts += 1;
        let attempt = self.attempts;
        let Some(c) = self.children.get_mut(key) else { return };
        c.starting = Some(attempt);
        c.spec.entry.stats.set_state(ActorState::Starting);
        let start = c.spec.start.clone();
        let key = c.spec.key.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let result = start(me.get_cell()).await;
            if let Err(ractor::MessagingErr::SendErr(SupMsg::Started { result: Ok(cell), .. })) =
                me.send_message(SupMsg::Started { key, attempt, result })
            {
                // The supervisor is gone: do not leave an orphan running.
                cell.stop(Some("supervisor stopped".into()));
            }
        });
    }

    fn answer(&mut self, key: &str, outcome: Result<Option<Arc<dyn ErasedSlot>>, String>) {
        for w in self.waiters.remove(key).unwrap_or_default() {
            match (w, &outcome) {
                (tx, Ok(slot)) => {
                    let r = slot.clone().ok_or_else(|| RemoteError::UnknownPath {
                        path: key.to_string(),
                        reason: "not an entity".into(),
                    });
                    let _ = tx.send(r);
                }
                (tx, Err(e)) => {
                    let _ = tx.send(Err(RemoteError::ActorFailed {
                        path: key.to_string(),
                        reason: format!("activation failed: {e}"),
                    }));
                }
            }
        }
    }

    fn on_started(
        &mut self,
        key: String,
        attempt: u64,
        result: Result<ActorCell, String>,
        myself: &ActorRef<SupMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let current = self.children.get(&key).is_some_and(|c| c.starting == Some(attempt));
        if !current {
            // Superseded: a restart decision or a stop came first.
            if let Ok(cell) = result {
                cell.stop(Some("superseded start".into()));
            }
            return Ok(());
        }
        if let Some(c) = self.children.get_mut(&key) {
            c.starting = None;
        }
        match result {
            Ok(cell) => {
                let dead = cell.get_status() >= ractor::ActorStatus::Stopping;
                self.children.set_cell(&key, Some(cell));
                let slot = self.children.get(&key).and_then(|c| {
                    c.spec.entry.stats.set_state(ActorState::Running);
                    c.spec.slot.clone()
                });
                if let (Some(slot), Some((node, _))) = (&slot, &self.activator) {
                    node.register(slot.path().clone(), slot.clone());
                }
                self.answer(&key, Ok(slot));
                if dead {
                    return self.on_failure(&key, "stopped right after it started", myself);
                }
                Ok(())
            }
            Err(e) => {
                let transient = self.children.get(&key).is_some_and(|c| {
                    c.spec.entry.stats.record_error(&format!("start: {e}"));
                    c.spec.restart == Restart::Transient
                });
                self.answer(&key, Err(e.clone()));
                if transient {
                    // An entity that cannot start is not kept: the next message tries again.
                    // A restart that fails must also take its slot out of the registry
                    // (the first start registered it), or every later message meets a
                    // slot with no actor behind it and is told to retry, forever.
                    self.remove_child(&key, true);
                    Ok(())
                } else {
                    self.on_failure(&key, &format!("start failed: {e}"), myself)
                }
            }
        }
    }

    fn remove_child(&mut self, key: &str, node_unregister: bool) {
        let Some(child) = self.children.remove(key) else { return };
        self.entry.remove_child(&child.spec.key);
        child.spec.entry.stats.set_state(ActorState::Stopped);
        if node_unregister && let (Some((node, _)), Some(slot)) = (&self.activator, &child.spec.slot) {
            node.unregister(slot.path(), slot);
        }
    }

    /// Applies the policy to the failure of child `key`.
    fn on_failure(&mut self, key: &str, reason: &str, myself: &ActorRef<SupMsg>) -> Result<(), ActorProcessingErr> {
        let now = self.now_ms();
        self.children.set_cell(key, None);
        if let Some(c) = self.children.get(key) {
            c.spec.entry.stats.record_error(reason);
            c.spec.entry.stats.set_state(ActorState::Restarting);
        }
        // The policy reasons in start order; one-for-one needs no ordering.
        let (order, failed) = match self.policy.strategy() {
            Strategy::OneForOne => (vec![key.to_string()], 0),
            _ => {
                let order = self.children.ordered_keys();
                let i = order.iter().position(|k| k == key).unwrap_or(0);
                (order, i)
            }
        };
        match self.policy.on_failure(now, failed, order.len().max(1)) {
            Decision::Restart { children, delay_ms } => {
                let mut keys = Vec::new();
                for j in children {
                    let Some(k) = order.get(j).cloned() else { continue };
                    if let Some(c) = self.children.get_mut(&k) {
                        c.starting = None;
                    }
                    if let Some(cell) = self.children.set_cell(&k, None) {
                        // Forgetting the cell first makes its termination event unknown
                        // to us, so stopping it here is not counted as a failure.
                        cell.stop(Some("restarting with a failed sibling".into()));
                        if let Some(c) = self.children.get(&k) {
                            c.spec.entry.stats.set_state(ActorState::Restarting);
                        }
                    }
                    keys.push(k);
                }
                self.round += 1;
                let round = self.round;
                for k in &keys {
                    if let Some(c) = self.children.get_mut(k) {
                        c.restart_round = round;
                    }
                }
                tracing::warn!(supervisor = %self.cfg_path, child = %key, %reason, delay_ms, restarting = keys.len(), "child failed; restarting");
                myself.send_after(Duration::from_millis(delay_ms), move || SupMsg::RestartDue { keys, round });
                Ok(())
            }
            Decision::Escalate { restarts, within_ms } => {
                let msg = format!(
                    "{}: {restarts} restarts within {within_ms} ms (max_restarts exceeded); last failure of {key}: {reason}",
                    self.cfg_path
                );
                tracing::error!(supervisor = %self.cfg_path, "{msg}; escalating");
                self.entry.stats.record_error(&msg);
                self.entry.stats.set_state(ActorState::Failed);
                for k in self.children.ordered_keys() {
                    if let Some(c) = self.children.get_mut(&k) {
                        c.starting = None;
                        c.spec.entry.stats.set_state(ActorState::Failed);
                    }
                    if let Some(cell) = self.children.set_cell(&k, None) {
                        cell.stop(Some("supervisor escalating".into()));
                    }
                    // Entities die with their supervisor: unregister their slots so the
                    // next message activates a fresh incarnation under the restarted one.
                    if self.children.get(&k).is_some_and(|c| c.spec.slot.is_some()) {
                        self.remove_child(&k, true);
                    }
                }
                Err(msg.into())
            }
        }
    }

    fn activate(&mut self, path: ActorPath, reply: ActivateReply, myself: &ActorRef<SupMsg>) {
        let key = path.to_string();
        if let Some(c) = self.children.get(&key) {
            let closing = c.spec.slot.as_ref().is_some_and(|s| s.is_closing());
            match &c.spec.slot {
                None => {
                    let _ = reply.send(Err(RemoteError::UnknownPath { path: key, reason: "not an entity".into() }));
                }
                Some(_) if closing => self.parked.push((path, reply)),
                Some(_) if c.starting.is_some() || c.cell.is_none() => {
                    self.waiters.entry(key).or_default().push(reply);
                }
                Some(slot) => {
                    let _ = reply.send(Ok(slot.clone()));
                }
            }
            return;
        }
        let Some((node, kind)) = self.activator.clone() else {
            let _ = reply.send(Err(RemoteError::UnknownPath { path: key, reason: "kind is not sharded".into() }));
            return;
        };
        let entry = ActorEntry::new(
            key.clone(),
            kind.spec().name.clone(),
            "",
            Arc::new(ActorStats::new(kind.spec().mailbox_cap)),
        );
        let slot = kind.new_slot(path.clone(), entry.clone());
        let start_slot = slot.clone();
        let start: StartFn = Arc::new(move |sup: ActorCell| kind.start(node.clone(), start_slot.clone(), sup));
        self.children.insert(ChildSpec {
            key: key.clone(),
            entry: entry.clone(),
            start,
            restart: Restart::Transient,
            slot: Some(slot),
        });
        self.entry.add_child(entry);
        self.waiters.entry(key.clone()).or_default().push(reply);
        self.launch(&key, myself);
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupervisorConfig;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupMsg>,
        cfg: SupervisorConfig,
    ) -> Result<SupState, ActorProcessingErr> {
        cfg.entry.stats.set_state(ActorState::Running);
        let mut children = Children::default();
        for spec in cfg.initial {
            cfg.entry.add_child(spec.entry.clone());
            children.insert(spec);
        }
        Ok(SupState {
            cfg_path: cfg.path,
            entry: cfg.entry,
            children,
            policy: RestartPolicy::new(cfg.strategy, cfg.intensity),
            round: 0,
            attempts: 0,
            epoch: Instant::now(),
            activator: cfg.activator,
            waiters: HashMap::new(),
            parked: Vec::new(),
        })
    }

    async fn post_start(&self, myself: ActorRef<SupMsg>, st: &mut SupState) -> Result<(), ActorProcessingErr> {
        for key in st.children.ordered_keys() {
            st.launch(&key, &myself);
        }
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<SupMsg>, msg: SupMsg, st: &mut SupState) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Activate { path, reply } => st.activate(path, reply, &myself),
            SupMsg::StopChild { key } => {
                if st.children.get(&key).is_some() {
                    if let Some(cell) = st.children.set_cell(&key, None) {
                        cell.stop(Some("stopped by its supervisor".into()));
                    }
                    st.answer(&key, Err("stopped by its supervisor".into()));
                    st.remove_child(&key, true);
                }
            }
            SupMsg::RestartDue { keys, round } => {
                // Per child, not per supervisor: another child's failure meanwhile (many
                // entities fail together when a partition starts) must not cancel this
                // one's restart, or it stays down with requests waiting on it.
                for key in keys {
                    let idle = st
                        .children
                        .get(&key)
                        .is_some_and(|c| c.restart_round == round && c.cell.is_none() && c.starting.is_none());
                    if !idle {
                        continue;
                    }
                    if let Some(c) = st.children.get(&key) {
                        c.spec.entry.stats.record_restart();
                    }
                    st.launch(&key, &myself);
                }
            }
            SupMsg::Started { key, attempt, result } => return st.on_started(key, attempt, result, &myself),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(key) = st.children.key_of_cell(&cell) {
                    st.on_failure(&key, &err.to_string(), &myself)?;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(key) = st.children.key_of_cell(&cell) else {
                    return Ok(());
                };
                let passivated = reason.as_deref() == Some(PASSIVATED);
                if passivated || st.children.get(&key).is_some_and(|c| c.spec.restart == Restart::Transient) {
                    st.remove_child(&key, true);
                    // Activations that waited for this incarnation to stop.
                    let parked = std::mem::take(&mut st.parked);
                    for (path, reply) in parked {
                        st.activate(path, reply, &myself);
                    }
                } else {
                    let why = format!("stopped unexpectedly ({})", reason.unwrap_or_else(|| "no reason".into()));
                    st.on_failure(&key, &why, &myself)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
