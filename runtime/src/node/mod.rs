//! A node: one process's share of the cluster. It owns the registry, the durable
//! store, the supervision tree of every enabled system, metrics, recorded spans, and
//! (when clustered) membership and transport. Everything an actor or a handle needs
//! from "the runtime" goes through [`Node`].
//!
//! Supervision tree of a node:
//! ```text
//! /                        root (one_for_one)
//! ├── /<system>            one per enabled system (strategy from [system.supervision])
//! │   └── /<system>/<kind> one per kind (strategy from [kinds.<kind>.supervision])
//! │       └── /<system>/<kind>/<key>   actors (singleton, per-node, or sharded entities)
//! └── /troupe              built-in: the node agent /troupe/node/<name>
//! ```

use crate::cluster::Cluster;
use crate::config::{KindCatalog, KindSpec, Loaded, Placement};
use crate::metrics::Metrics;
use crate::placement::Candidate;
use crate::registry::Registry;
use crate::reply::StreamEvent;
use crate::slot::ErasedSlot;
use crate::stats::ActorEntry;
use crate::store::{Store, StoreError};
use crate::supervision::SupMsg;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use ractor::ActorCell;
use ractor::ActorRef;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use troupe_wire::{ActorPath, JsonCodec};

mod boot;
mod introspect;
mod locate;
mod routing;

/// Why a node failed to start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node name given is not one of the cluster file's `[[nodes]]`.
    #[error("node `{0}` is not in the cluster file")]
    UnknownNode(String),
    /// The node's state file could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A kind's factory is not registered in this binary, or refused to build it.
    #[error("cannot build kind `{kind}` of system `{system}`: {reason}")]
    Kind {
        /// The system the kind belongs to.
        system: String,
        /// The kind's name.
        kind: String,
        /// Why it could not be built.
        reason: String,
    },
    /// The root supervisor did not start.
    #[error("cannot start the supervision tree: {0}")]
    Tree(String),
    /// Joining the cluster failed (certificates, transport or membership).
    #[error("{0}")]
    Cluster(String),
}

/// A raw stream: its events and a hook that cancels it.
pub(crate) type RawStream = (mpsc::Receiver<StreamEvent<Vec<u8>>>, Box<dyn FnOnce() + Send>);

/// A map keyed by (system, kind) that looks up with `&str`s, without building an
/// owned key on every message.
struct KindMap<V>(HashMap<String, HashMap<String, V>>);

impl<V> Default for KindMap<V> {
    fn default() -> Self {
        KindMap(HashMap::new())
    }
}

impl<V> KindMap<V> {
    fn get(&self, system: &str, kind: &str) -> Option<&V> {
        self.0.get(system)?.get(kind)
    }
    fn insert(&mut self, system: &str, kind: &str, v: V) {
        self.0.entry(system.to_string()).or_default().insert(kind.to_string(), v);
    }
    fn len(&self) -> usize {
        self.0.values().map(|m| m.len()).sum()
    }
}

/// Where a path lives right now.
pub enum Target {
    Local(Arc<dyn ErasedSlot>),
    Remote(String),
}

/// Where a path is, as [`Node::locate`] finds it.
pub(crate) enum Located {
    Live(Arc<dyn ErasedSlot>),
    Remote(String),
    /// This node owns it and it is not running: it must be activated here first
    /// (which may take a while: activation recovers its durable state).
    ActivateHere,
}

/// A running node; cheap to clone, every clone is the same node.
#[derive(Clone)]
pub struct Node(Arc<NodeInner>);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({})", self.0.name)
    }
}

pub(crate) struct NodeInner {
    name: String,
    epoch: u64,
    loaded: Arc<Loaded>,
    kinds: KindRegistry,
    registry: Registry,
    store: Store,
    metrics: Metrics,
    /// Kind supervisors by (system, kind), updated when one restarts.
    kind_sups: RwLock<KindMap<ActorRef<SupMsg>>>,
    instances: OnceLock<KindMap<Arc<dyn KindInstance>>>,
    root_entry: Arc<ActorEntry>,
    root: Mutex<Option<ActorRef<SupMsg>>>,
    /// Spans of sampled requests, durable ([`crate::traces`]).
    traces: Arc<crate::traces::TraceStore>,
    started: Instant,
    started_unix_us: u64,
    cluster: OnceLock<Arc<Cluster>>,
    /// This node as the only placement candidate, when not clustered.
    alone: OnceLock<Arc<Vec<Candidate>>>,
    /// Systems' per-node state by type ([`Node::extension`]); cleared at shutdown.
    extensions: Mutex<HashMap<TypeId, Arc<ExtensionSlot>>>,
    /// Placement changes as this node applies them ([`Node::placement_events`]).
    placement_tx: tokio::sync::broadcast::Sender<PlacementChange>,
}

/// One extension: empty until its first user made it.
type ExtensionSlot = Mutex<Option<Arc<dyn Any + Send + Sync>>>;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The built-in kinds of the `troupe` system (not from a topology file): the node
/// agent, the replica agent and the pub/sub broker, one of each per node.
/// The built-in kinds of system `troupe`: per-node agents, and the cluster-wide
/// registry of remembered entities and the reminder buckets, replicated on up to three
/// nodes of the cluster file (`nodes`) like any actor state.
pub(crate) fn builtin_specs(nodes: usize) -> Vec<KindSpec> {
    let rf = nodes.clamp(1, 3) as u64;
    let mut registry = builtin_spec("remembered", Placement::Singleton);
    registry.replication_factor = rf;
    registry.mailbox_cap = 65_536;
    let mut reminders = builtin_spec("reminders", Placement::Sharded);
    reminders.replication_factor = rf;
    reminders.remember = true;
    reminders.mailbox_cap = 65_536;
    vec![
        builtin_spec("node", Placement::PerNode),
        builtin_spec("replica", Placement::PerNode),
        builtin_spec("pubsub", Placement::PerNode),
        builtin_spec("wake", Placement::PerNode),
        builtin_spec("blobs", Placement::PerNode),
        registry,
        reminders,
    ]
}

fn builtin_spec(kind: &str, placement: Placement) -> KindSpec {
    KindSpec {
        system: "troupe".into(),
        name: kind.into(),
        factory: format!("troupe.{kind}"),
        placement,
        role: None,
        mailbox_cap: 1024,
        passivate_after_ms: None,
        remember: false,
        replication_factor: 1,
        supervision: Default::default(),
        params: toml::Table::new(),
        // The replica agent loads and writes any path's replicated state, the pub/sub
        // broker takes other nodes' announcements and deliveries, and the registry,
        // wake agents and reminder buckets start actors and send them messages: nodes
        // only. The node agent answers introspection (troupe tree, top) for every client.
        allow: if kind == "node" { vec!["client".into(), "admin".into()] } else { Vec::new() },
    }
}

impl Node {
    /// This node's name, as in the cluster file.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn instances(&self) -> &KindMap<Arc<dyn KindInstance>> {
        static EMPTY: OnceLock<KindMap<Arc<dyn KindInstance>>> = OnceLock::new();
        self.0.instances.get().unwrap_or_else(|| EMPTY.get_or_init(KindMap::default))
    }

    /// Boot epoch (ms since the Unix epoch): a restarted node is a new incarnation.
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// The configuration the node was started with.
    pub fn loaded(&self) -> &Arc<Loaded> {
        &self.0.loaded
    }

    /// The kinds registered in this binary.
    pub fn kinds(&self) -> &KindRegistry {
        &self.0.kinds
    }

    /// This node's durable store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Time since the node started.
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }

    /// Membership and transport, when the node was started clustered; `None` for a
    /// node running alone.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.0.cluster.get()
    }

    /// Membership changes as this node sees them, from now on: a member joins (or
    /// rejoins with a new boot epoch), becomes suspect, or goes down (a member that
    /// leaves goes down at once). `None` on a node running alone. Events come in the
    /// order this node saw them, each after the view already shows it (so
    /// [`Node::members`] and placement agree with it); a subscriber that falls 1,024
    /// events behind is told how many it missed, and should re-read [`Node::members`].
    pub fn member_events(&self) -> Option<MemberEvents> {
        self.cluster().map(|c| Events(c.gossip.events.subscribe()))
    }

    /// Placement changes as this node applies them, from now on: after each
    /// membership change settles, the view version, the nodes placement draws from,
    /// and the singletons this node took over and the actors it handed off.
    pub fn placement_events(&self) -> PlacementEvents {
        Events(self.0.placement_tx.subscribe())
    }

    pub(crate) fn announce_placement(&self, change: PlacementChange) {
        // No subscriber is not an error.
        let _ = self.0.placement_tx.send(change);
    }

    pub(crate) fn set_cluster(&self, c: Arc<Cluster>) -> bool {
        self.0.cluster.set(c).is_ok()
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<NodeInner> {
        Arc::downgrade(&self.0)
    }

    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> Node {
        Node(inner)
    }

    /// The cluster's default ask timeout (`[transport] ask_timeout_ms`).
    pub fn default_ask_timeout(&self) -> Duration {
        Duration::from_millis(self.0.loaded.cluster.transport.ask_timeout_ms)
    }

    /// Undelivered items one reply stream buffers (`[transport] stream_buffer`).
    pub fn stream_buffer(&self) -> usize {
        self.0.loaded.cluster.transport.stream_buffer as usize
    }

    pub(crate) fn register(&self, path: ActorPath, slot: Arc<dyn ErasedSlot>) {
        self.0.registry.insert(path, slot);
    }

    pub(crate) fn unregister(&self, path: &ActorPath, slot: &Arc<dyn ErasedSlot>) {
        slot.mark_removed();
        self.0.registry.remove_if(path, slot);
    }

    /// The cluster's HTTP credentials (admin and service tokens beside the cluster key),
    /// read once per node and shared by every listener that checks them.
    pub fn credentials(&self) -> Arc<crate::cluster::tokens::Credentials> {
        let key_file = self.0.loaded.cluster.key_file.clone();
        match self.extension(|| Ok::<_, std::convert::Infallible>(crate::cluster::tokens::Credentials::load(&key_file)))
        {
            Ok(c) => c,
            Err(never) => match never {},
        }
    }

    /// This node's one instance of `T`, made by `init` on its first use: a system's
    /// per-node state (its caches, leases, metrics), shared by every actor and service
    /// of the system on this node. Several nodes in one process each have their own.
    /// `init` runs once per node and type; it may ask for extensions of other types
    /// (only the slot of `T` is held meanwhile), and when it fails the next use tries
    /// again. Extensions live until [`Node::shutdown`].
    pub fn extension<T, E>(&self, init: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E>
    where
        T: Any + Send + Sync,
    {
        let slot = self.0.extensions.lock().entry(TypeId::of::<T>()).or_default().clone();
        let mut slot = slot.lock();
        if let Some(made) = slot.as_ref()
            && let Ok(t) = made.clone().downcast::<T>()
        {
            return Ok(t);
        }
        let made = Arc::new(init()?);
        *slot = Some(made.clone());
        Ok(made)
    }
}

/// What a node needs of a kind before it runs: its name, JSON codec and param check,
/// and an instance built for the node. Defined beside [`Node`] (and implemented for
/// behaviors in kinds.rs) so the node does not name the actor layer.
pub trait KindFactory: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// JSON conversions of the kind's protocol (CLI and HTTP routes).
    fn json(&self) -> &dyn JsonCodec;
    fn check_params(&self, params: &toml::Table) -> Result<(), String>;
    fn instantiate(&self, node: &Node, spec: Arc<KindSpec>) -> Result<Arc<dyn KindInstance>, String>;
}

/// A kind built for one node: its behavior and spec.
pub trait KindInstance: Send + Sync {
    fn spec(&self) -> &Arc<KindSpec>;
    /// A new empty slot for `path`.
    fn new_slot(&self, path: ActorPath, entry: Arc<ActorEntry>) -> Arc<dyn ErasedSlot>;
    /// Starts one incarnation into `slot`, linked to `supervisor`.
    fn start(
        &self,
        node: Node,
        slot: Arc<dyn ErasedSlot>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorCell, String>>;
}

/// Every kind this binary can run, by factory name (behaviors register with
/// `KindRegistry::register`, in kinds.rs).
#[derive(Clone, Default)]
pub struct KindRegistry {
    pub(crate) map: BTreeMap<String, Arc<dyn KindFactory>>,
}

impl std::fmt::Debug for KindRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

impl KindRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kind registered under factory name `name`, shared.
    pub fn get(&self, name: &str) -> Option<Arc<dyn KindFactory>> {
        self.map.get(name).cloned()
    }

    /// The kind registered under factory name `name`, borrowed.
    pub fn get_ref(&self, name: &str) -> Option<&dyn KindFactory> {
        self.map.get(name).map(|f| f.as_ref())
    }

    /// Every registered factory name, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.map.keys().map(|s| s.as_str()).collect()
    }
}

impl KindCatalog for KindRegistry {
    fn contains(&self, factory: &str) -> bool {
        self.map.contains_key(factory)
    }

    fn check_params(&self, factory: &str, params: &toml::Table) -> Result<(), String> {
        match self.map.get(factory) {
            Some(f) => f.check_params(params),
            None => Err(format!("unknown actor kind `{factory}`")),
        }
    }

    fn names(&self) -> Vec<&str> {
        KindRegistry::names(self)
    }
}

/// A change of placement, as this node applied it after a membership change.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementChange {
    /// The view version placement now reads ([`Node::placement_version`]).
    pub version: u64,
    /// The nodes placement draws from now, on this node's side (empty while this node
    /// stands down on a minority side).
    pub nodes: Vec<String>,
    /// Singletons this node took over.
    pub started: Vec<ActorPath>,
    /// Actors this node stopped because another node owns them now (or because it
    /// stands down on a minority side).
    pub handed_off: Vec<ActorPath>,
}

/// A subscription to a node's changes of one kind: [`MemberEvents`] from
/// [`Node::member_events`], [`PlacementEvents`] from [`Node::placement_events`].
#[derive(Debug)]
pub struct Events<T>(tokio::sync::broadcast::Receiver<T>);

/// What an [`Events`] subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// A change.
    Changed(T),
    /// This many changes were missed (the subscriber fell behind): re-read the
    /// current state ([`Node::members`], [`Node::placement_version`]) to catch up.
    Missed(u64),
}

/// Membership changes: a member alive, suspect or down (`event.state`).
pub type MemberEvents = Events<troupe_core::membership::MemberEvent>;
/// What a [`MemberEvents`] subscription yields.
pub type MemberChange = Change<troupe_core::membership::MemberEvent>;
/// Placement changes ([`PlacementChange`]).
pub type PlacementEvents = Events<PlacementChange>;
/// What a [`PlacementEvents`] subscription yields.
pub type PlacementUpdate = Change<PlacementChange>;

impl<T: Clone> Events<T> {
    /// The next change; `None` once the source is gone (the node and every handle to
    /// it dropped). A subscriber that must stop with the node stops on its own signal,
    /// as actors do when they stop.
    pub async fn next(&mut self) -> Option<Change<T>> {
        match self.0.recv().await {
            Ok(c) => Some(Change::Changed(c)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Some(Change::Missed(n)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    }
}
