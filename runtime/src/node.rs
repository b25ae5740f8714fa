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

use crate::agent::NodeAgentBehavior;
use crate::cluster::Cluster;
use crate::cluster::replica::ReplicaAgent;
use crate::config::{KindSpec, Loaded, Placement};
use crate::handle::ActorHandle;
use crate::kinds::{KindInstance, KindRegistry};
use crate::metrics::Metrics;
use crate::placement::Candidate;
use crate::registry::Registry;
use crate::reply::{ReplySink, ReplyStream, StreamEvent};
use crate::retry::{Retry, rerouted};
use crate::slot::{ErasedSlot, WireRequest};
use crate::stats::{ActorEntry, ActorStats};
use crate::store::{Recovered, Store, StoreError, WriteOp};
use crate::supervision::{ChildSpec, Intensity, Restart, StartFn, Strategy, SupMsg, Supervisor, SupervisorConfig};
use parking_lot::{Mutex, RwLock};
use ractor::{ActorCell, ActorRef};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use troupe_core::directory::{self, Route};
use troupe_wire::introspect::{ActorInfo, Health, MemberInfo, MemberState, SpanRecord, SystemHealth};
use troupe_wire::{ActorPath, Protocol, RemoteError, TraceId};

/// Spans kept per node for `troupe trace` (oldest dropped first).
pub const SPANS_MAX: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node `{0}` is not in the cluster file")]
    UnknownNode(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build kind `{kind}` of system `{system}`: {reason}")]
    Kind { system: String, kind: String, reason: String },
    #[error("cannot start the supervision tree: {0}")]
    Tree(String),
    #[error("{0}")]
    Cluster(String),
}

/// A raw stream: its events and a hook that cancels it.
pub type RawStream = (mpsc::Receiver<StreamEvent<Vec<u8>>>, Box<dyn FnOnce() + Send>);

type RawReplyTx = oneshot::Sender<Result<Vec<u8>, RemoteError>>;

/// Answers a local raw ask through a oneshot.
struct OnceSink(Mutex<Option<RawReplyTx>>);

impl ReplySink for OnceSink {
    fn reply(&self, _corr: u64, result: Result<Vec<u8>, RemoteError>) {
        if let Some(tx) = self.0.lock().take() {
            let _ = tx.send(result);
        }
    }
    fn stream_item(&self, _corr: u64, _payload: Vec<u8>) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
    fn stream_end(&self, _corr: u64, _result: Result<(), RemoteError>) {}
}

/// Feeds a local raw stream.
struct ChanSink(mpsc::Sender<StreamEvent<Vec<u8>>>);

impl ReplySink for ChanSink {
    fn reply(&self, _corr: u64, _result: Result<Vec<u8>, RemoteError>) {}
    fn stream_item(&self, _corr: u64, payload: Vec<u8>) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async move { self.0.send(StreamEvent::Item(payload)).await.is_ok() })
    }
    fn stream_end(&self, _corr: u64, result: Result<(), RemoteError>) {
        let _ = self.0.try_send(StreamEvent::End(result));
    }
}

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
    spans: Mutex<VecDeque<SpanRecord>>,
    started: Instant,
    started_unix_us: u64,
    cluster: OnceLock<Arc<Cluster>>,
    /// This node as the only placement candidate, when not clustered.
    alone: OnceLock<Arc<Vec<Candidate>>>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The built-in kinds of the `troupe` system (not from a topology file): the node
/// agent and the replica agent, one of each per node.
fn builtin_specs() -> Vec<KindSpec> {
    vec![builtin_spec("node"), builtin_spec("replica")]
}

fn builtin_spec(kind: &str) -> KindSpec {
    KindSpec {
        system: "troupe".into(),
        name: kind.into(),
        factory: format!("troupe.{kind}"),
        placement: Placement::PerNode,
        role: None,
        mailbox_cap: 1024,
        passivate_after_ms: None,
        replication_factor: 1,
        supervision: Default::default(),
        params: toml::Table::new(),
    }
}

impl Node {
    /// Starts node `name` of `loaded` on its own (no membership, no transport):
    /// every path resolves here. For tests and single-process tools.
    pub async fn start(loaded: Arc<Loaded>, kinds: KindRegistry, name: &str) -> Result<Node, NodeError> {
        Self::start_with(loaded, kinds, name, false).await
    }

    /// Starts node `name` of `loaded`: opens its store, builds every enabled
    /// system's kinds, joins the cluster when `clustered` (SWIM + QUIC, certificates
    /// and key from the cluster file), and starts the supervision tree.
    pub async fn start_with(
        loaded: Arc<Loaded>,
        kinds: KindRegistry,
        name: &str,
        clustered: bool,
    ) -> Result<Node, NodeError> {
        let spec = loaded.cluster.node(name).ok_or_else(|| NodeError::UnknownNode(name.to_string()))?.clone();
        let store = Store::open(&loaded.cluster.node_data_dir(name).join("state.redb"))?;
        let mut kinds = kinds;
        kinds.register::<NodeAgentBehavior>("troupe.node");
        kinds.register::<ReplicaAgent>("troupe.replica");
        let root_entry =
            ActorEntry::new("/", "node", Strategy::OneForOne.to_string(), Arc::new(ActorStats::new(u64::MAX)));
        let inner = NodeInner {
            name: spec.name.clone(),
            epoch: unix_ms(),
            loaded: loaded.clone(),
            kinds,
            registry: Registry::default(),
            store,
            metrics: Metrics::new(),
            kind_sups: RwLock::new(KindMap::default()),
            instances: OnceLock::new(),
            root_entry,
            root: Mutex::new(None),
            spans: Mutex::new(VecDeque::new()),
            started: Instant::now(),
            started_unix_us: unix_ms() * 1000,
            cluster: OnceLock::new(),
            alone: OnceLock::new(),
        };
        let node = Node(Arc::new(inner));

        // Build each kind once for this node (checks resources such as model files).
        let mut instances = KindMap::default();
        let mut all_specs: Vec<KindSpec> = loaded.topologies.iter().flat_map(|t| t.kinds.clone()).collect();
        all_specs.extend(builtin_specs());
        for ks in all_specs {
            let factory = node.0.kinds.get(&ks.factory).ok_or_else(|| NodeError::Kind {
                system: ks.system.clone(),
                kind: ks.name.clone(),
                reason: format!("factory `{}` is not registered", ks.factory),
            })?;
            let inst = factory.instantiate(&node, Arc::new(ks.clone())).map_err(|reason| NodeError::Kind {
                system: ks.system.clone(),
                kind: ks.name.clone(),
                reason,
            })?;
            instances.insert(&ks.system, &ks.name, inst);
        }
        let want = instances.len();
        let _ = node.0.instances.set(instances);

        let cluster = if clustered { Some(Cluster::join(&node).await?) } else { None };
        let root_cfg = node.root_config();
        let root = Supervisor::start(root_cfg, None).await.map_err(NodeError::Tree)?;
        *node.0.root.lock() = Some(root);
        // Kind supervisors activate their static actors as they start; wait until
        // every kind supervisor is up so the node answers as soon as start returns.
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.0.kind_sups.read().len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(c) = cluster {
            c.watch(&node);
            // Re-home once now, in case membership moved while the tree started.
            crate::cluster::rehome(&node).await;
        }
        tracing::info!(node = %node.0.name, epoch = node.0.epoch, systems = loaded.topologies.len(), "node started");
        Ok(node)
    }

    fn root_config(&self) -> SupervisorConfig {
        let intensity =
            Intensity { max_restarts: 10, within_ms: 60_000, backoff_initial_ms: 100, backoff_max_ms: 5_000 };
        let mut cfg = SupervisorConfig::new("/", "node", Strategy::OneForOne, intensity);
        cfg.entry = self.0.root_entry.clone();
        let mut systems: Vec<(String, Strategy, Intensity)> = self
            .0
            .loaded
            .topologies
            .iter()
            .map(|t| (t.name.clone(), t.supervision.strategy, t.supervision.intensity))
            .collect();
        systems.push(("troupe".into(), Strategy::OneForOne, Intensity::default()));
        for (system, strategy, intensity) in systems {
            let entry = ActorEntry::new(
                format!("/{system}"),
                "system",
                strategy.to_string(),
                Arc::new(ActorStats::new(u64::MAX)),
            );
            let node = self.clone();
            let sys = system.clone();
            let e2 = entry.clone();
            let make = Arc::new(move || node.system_config(&sys, strategy, intensity, e2.clone()));
            cfg.initial.push(Supervisor::child_spec(make, entry, format!("/{system}")));
        }
        cfg
    }

    fn system_config(
        &self,
        system: &str,
        strategy: Strategy,
        intensity: Intensity,
        entry: Arc<ActorEntry>,
    ) -> SupervisorConfig {
        let mut cfg = SupervisorConfig::new(format!("/{system}"), "system", strategy, intensity);
        cfg.entry = entry;
        // Kinds in declaration (= start) order.
        let specs: Vec<KindSpec> = if system == "troupe" {
            builtin_specs()
        } else {
            self.0.loaded.topology(system).map(|t| t.kinds.clone()).unwrap_or_default()
        };
        for ks in specs {
            let Some(inst) = self.instances().get(&ks.system, &ks.name).cloned() else {
                continue;
            };
            let path = format!("/{}/{}", ks.system, ks.name);
            let entry = ActorEntry::new(
                path.clone(),
                "kind",
                ks.supervision.strategy.to_string(),
                Arc::new(ActorStats::new(u64::MAX)),
            );
            let node = self.clone();
            let e2 = entry.clone();
            let start: StartFn = Arc::new(move |parent: ActorCell| {
                let node = node.clone();
                let inst = inst.clone();
                let entry = e2.clone();
                Box::pin(async move { node.start_kind_supervisor(inst, entry, parent).await })
            });
            cfg.initial.push(ChildSpec { key: path, entry, start, restart: Restart::Permanent, slot: None });
        }
        cfg
    }

    async fn start_kind_supervisor(
        &self,
        inst: Arc<dyn KindInstance>,
        entry: Arc<ActorEntry>,
        parent: ActorCell,
    ) -> Result<ActorCell, String> {
        let ks = inst.spec().clone();
        let mut cfg = SupervisorConfig::new(
            format!("/{}/{}", ks.system, ks.name),
            "kind",
            ks.supervision.strategy,
            ks.supervision.intensity,
        );
        cfg.entry = entry;
        cfg.activator = Some((self.clone(), inst));
        let sup = Supervisor::start(cfg, Some(parent)).await?;
        self.0.kind_sups.write().insert(&ks.system, &ks.name, sup.clone());
        // Static actors: the per-node actor on this node, the singleton if we own it.
        for path in self.static_paths(&ks) {
            let (tx, rx) = oneshot::channel();
            if sup.send_message(SupMsg::Activate { path: path.clone(), reply: tx }).is_ok() {
                match rx.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(%path, error = %e, "static actor did not start"),
                    Err(_) => tracing::warn!(%path, "kind supervisor stopped while starting"),
                }
            }
        }
        Ok(sup.get_cell())
    }

    /// Paths of this kind that should run on this node without being asked.
    pub fn static_paths(&self, ks: &KindSpec) -> Vec<ActorPath> {
        let me = &self.0.name;
        match ks.placement {
            Placement::PerNode if self.has_role(ks.role.as_deref()) => {
                ActorPath::new(&ks.system, &ks.name, me).into_iter().collect()
            }
            Placement::Singleton => ActorPath::new(&ks.system, &ks.name, KindSpec::singleton_key())
                .into_iter()
                .filter(|p| self.owner_of(ks, p).is_ok_and(|o| &o == me))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn has_role(&self, role: Option<&str>) -> bool {
        match role {
            None => true,
            Some(r) => self.0.loaded.cluster.node(&self.0.name).is_some_and(|n| n.roles.iter().any(|x| x == r)),
        }
    }

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
    pub fn loaded(&self) -> &Arc<Loaded> {
        &self.0.loaded
    }
    pub fn kinds(&self) -> &KindRegistry {
        &self.0.kinds
    }
    pub fn store(&self) -> &Store {
        &self.0.store
    }
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.0.cluster.get()
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

    pub fn default_ask_timeout(&self) -> Duration {
        Duration::from_millis(self.0.loaded.cluster.transport.ask_timeout_ms)
    }
    pub fn stream_buffer(&self) -> usize {
        self.0.loaded.cluster.transport.stream_buffer as usize
    }

    /// A typed handle to `path`.
    pub fn handle<P: Protocol>(&self, path: ActorPath) -> ActorHandle<P> {
        ActorHandle::new(self.clone(), path)
    }

    pub(crate) fn register(&self, path: ActorPath, slot: Arc<dyn ErasedSlot>) {
        self.0.registry.insert(path, slot);
    }

    pub(crate) fn unregister(&self, path: &ActorPath, slot: &Arc<dyn ErasedSlot>) {
        slot.mark_removed();
        self.0.registry.remove_if(path, slot);
    }

    pub fn local_paths(&self, system: &str, kind: &str) -> Vec<ActorPath> {
        self.0.registry.paths_of(system, kind)
    }

    pub fn kind_spec(&self, system: &str, kind: &str) -> Option<&KindSpec> {
        self.instances().get(system, kind).map(|i| i.spec().as_ref())
    }

    /// Live members placement may use (just this node when not clustered).
    pub fn candidates(&self) -> Vec<Candidate> {
        self.candidates_shared().as_ref().clone()
    }

    /// The same, shared: rebuilt only when membership changes.
    pub fn candidates_shared(&self) -> Arc<Vec<Candidate>> {
        match self.cluster() {
            Some(c) => c.candidates_shared(),
            None => self.0.alone.get_or_init(|| Arc::new(self.alone_candidates())).clone(),
        }
    }

    /// Version of the membership view placement reads (0 when not clustered):
    /// a cached placement decision is valid while it does not change.
    pub fn placement_version(&self) -> u64 {
        self.cluster().map(|c| c.view_version()).unwrap_or(0)
    }

    fn alone_candidates(&self) -> Vec<Candidate> {
        match self.cluster() {
            Some(c) => c.candidates(),
            None => {
                let spec = self.0.loaded.cluster.node(&self.0.name);
                vec![Candidate {
                    name: self.0.name.clone(),
                    roles: spec.map(|s| s.roles.clone()).unwrap_or_default(),
                    weight: spec.map(|s| s.weight).unwrap_or(1.0),
                }]
            }
        }
    }

    /// The node that should own `path` in the current view (the directory's answer).
    pub fn owner_of(&self, ks: &KindSpec, path: &ActorPath) -> Result<String, RemoteError> {
        directory::owner_of(&ks.place(), path, &self.candidates_shared(), &self.0.loaded.cluster)
    }

    /// The nodes that hold `path`'s durable state: its owner first, then the next
    /// `rf - 1` live nodes in rendezvous order.
    pub fn replica_set(&self, ks: &KindSpec, path: &ActorPath, rf: u64) -> Result<Vec<String>, RemoteError> {
        directory::replica_set(&ks.place(), path, rf, &self.candidates_shared(), &self.0.loaded.cluster)
    }

    /// Finds or activates `path`.
    pub async fn resolve(&self, path: &ActorPath) -> Result<Target, RemoteError> {
        match self.locate(path)? {
            Located::Live(slot) => Ok(Target::Local(slot)),
            Located::Remote(owner) => Ok(Target::Remote(owner)),
            Located::ActivateHere => self.activate_local(path).await.map(Target::Local),
        }
    }

    /// Where `path` is, without activating it (no waiting).
    pub(crate) fn locate(&self, path: &ActorPath) -> Result<Located, RemoteError> {
        if let Some(slot) = self.0.registry.get(path)
            && slot.is_live()
        {
            return Ok(Located::Live(slot));
        }
        let ks = self.kind_spec(path.system(), path.kind()).ok_or_else(|| RemoteError::UnknownPath {
            path: path.to_string(),
            reason: if self.0.loaded.topology(path.system()).is_some() || path.system() == "troupe" {
                format!("system `{}` has no kind `{}`", path.system(), path.kind())
            } else {
                format!("no system `{}` is enabled", path.system())
            },
        })?;
        match directory::route(&self.0.name, &ks.place(), path, &self.candidates_shared(), &self.0.loaded.cluster)? {
            Route::Remote(owner) => Ok(Located::Remote(owner)),
            Route::Here => Ok(Located::ActivateHere),
        }
    }

    /// Activates `path` on this node through its kind supervisor.
    pub async fn activate_local(&self, path: &ActorPath) -> Result<Arc<dyn ErasedSlot>, RemoteError> {
        let sup = self.0.kind_sups.read().get(path.system(), path.kind()).cloned();
        let restarting = || RemoteError::Restarting { path: path.to_string(), retry_after_ms: 50 };
        let sup = sup.ok_or_else(restarting)?;
        let (tx, rx) = oneshot::channel();
        sup.send_message(SupMsg::Activate { path: path.clone(), reply: tx }).map_err(|_| restarting())?;
        rx.await.map_err(|_| restarting())?
    }

    /// Stops the local actor at `path` (handoff after a membership change).
    pub fn stop_local(&self, path: &ActorPath) {
        let sup = self.0.kind_sups.read().get(path.system(), path.kind()).cloned();
        if let Some(sup) = sup {
            let _ = sup.send_message(SupMsg::StopChild { key: path.to_string() });
        }
    }

    /// Local actor for `path`, if live here (no activation).
    pub fn local_slot(&self, path: &ActorPath) -> Option<Arc<dyn ErasedSlot>> {
        self.0.registry.get(path).filter(|s| s.is_live())
    }

    fn not_clustered(node: &str) -> RemoteError {
        RemoteError::Unreachable { node: node.into(), reason: "this node is not clustered".into() }
    }

    pub(crate) async fn send_remote(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
    ) -> Result<(), RemoteError> {
        match self.cluster() {
            Some(c) => c.transport.tell(node, path, trace, payload).await,
            None => Err(Self::not_clustered(node)),
        }
    }

    pub(crate) async fn ask_remote(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        match self.cluster() {
            Some(c) => c.transport.ask(node, path, trace, payload, timeout).await,
            None => Err(Self::not_clustered(node)),
        }
    }

    pub(crate) async fn stream_remote<R: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
    ) -> Result<ReplyStream<R>, RemoteError> {
        match self.cluster() {
            Some(c) => {
                let (rx, cancel) = c.transport.stream(node, path, trace, payload).await?;
                Ok(ReplyStream::remote(rx, path.to_string().into(), cancel))
            }
            None => Err(Self::not_clustered(node)),
        }
    }

    /// Sends an encoded message to `path` wherever it lives (no type needed).
    pub async fn tell_raw(&self, path: &ActorPath, payload: Vec<u8>, trace: TraceId) -> Result<(), RemoteError> {
        let mut retry = Retry::new();
        loop {
            let routed_in = self.placement_version();
            let r = match self.resolve(path).await {
                Ok(Target::Local(slot)) => slot.deliver_bytes(&payload, WireRequest::Tell, trace),
                Ok(Target::Remote(n)) => self.send_remote(&n, path, trace, payload.clone()).await,
                Err(e) => Err(e),
            };
            match r {
                Err(e) => {
                    match retry.after(&rerouted(e.clone(), self.placement_version() != routed_in), Instant::now()) {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => return Err(e),
                    }
                }
                ok => return ok,
            }
        }
    }

    /// Asks `path` with an encoded message; returns the encoded reply.
    pub async fn ask_raw(
        &self,
        path: &ActorPath,
        payload: Vec<u8>,
        trace: TraceId,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        let deadline = Instant::now() + timeout;
        let mut retry = Retry::until(deadline);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RemoteError::Timeout { path: path.to_string(), ms: timeout.as_millis() as u64 });
            }
            let routed_in = self.placement_version();
            let r = match self.resolve(path).await {
                Ok(Target::Local(slot)) => {
                    let (tx, rx) = oneshot::channel();
                    let sink = Arc::new(OnceSink(Mutex::new(Some(tx))));
                    match slot.deliver_bytes(&payload, WireRequest::Ask { sink, corr: 0 }, trace) {
                        Err(e) => Err(e),
                        Ok(()) => match tokio::time::timeout(left, rx).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(_)) => Err(RemoteError::NoReply { path: path.to_string() }),
                            Err(_) => {
                                Err(RemoteError::Timeout { path: path.to_string(), ms: timeout.as_millis() as u64 })
                            }
                        },
                    }
                }
                Ok(Target::Remote(n)) => self.ask_remote(&n, path, trace, payload.clone(), left).await,
                Err(e) => Err(e),
            };
            match r {
                Err(e) => {
                    let now = Instant::now();
                    match retry.after(&rerouted(e.clone(), self.placement_version() != routed_in), now) {
                        Some(pause) => tokio::time::sleep(pause).await,
                        // Past the deadline a transient refusal is reported as the timeout it is.
                        None if now >= deadline && crate::retry::worth_retrying(&e) => {
                            return Err(RemoteError::Timeout {
                                path: path.to_string(),
                                ms: timeout.as_millis() as u64,
                            });
                        }
                        None => return Err(e),
                    }
                }
                ok => return ok,
            }
        }
    }

    /// Starts a stream from `path` with an encoded message.
    pub async fn stream_raw(
        &self,
        path: &ActorPath,
        payload: Vec<u8>,
        trace: TraceId,
    ) -> Result<RawStream, RemoteError> {
        let mut retry = Retry::new();
        loop {
            let routed_in = self.placement_version();
            let r: Result<RawStream, RemoteError> = match self.resolve(path).await {
                Ok(Target::Local(slot)) => {
                    let (tx, rx) = mpsc::channel(self.stream_buffer());
                    let sink = Arc::new(ChanSink(tx));
                    slot.deliver_bytes(&payload, WireRequest::Stream { sink, corr: 0 }, trace)
                        .map(|()| (rx, Box::new(|| {}) as Box<dyn FnOnce() + Send>))
                }
                Ok(Target::Remote(n)) => match self.cluster() {
                    Some(c) => c.transport.stream(&n, path, trace, payload.clone()).await,
                    None => Err(Self::not_clustered(&n)),
                },
                Err(e) => Err(e),
            };
            match r {
                Err(e) => {
                    match retry.after(&rerouted(e.clone(), self.placement_version() != routed_in), Instant::now()) {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => return Err(e),
                    }
                }
                ok => return ok,
            }
        }
    }

    /// The JSON conversions of the protocol spoken at `path`.
    pub fn json_codec(&self, path: &ActorPath) -> Result<&dyn troupe_wire::JsonCodec, RemoteError> {
        let ks = self.kind_spec(path.system(), path.kind()).ok_or_else(|| RemoteError::UnknownPath {
            path: path.to_string(),
            reason: format!("no kind `{}` in system `{}`", path.kind(), path.system()),
        })?;
        self.0
            .kinds
            .get_ref(&ks.factory)
            .map(|f| f.json())
            .ok_or_else(|| RemoteError::UnknownPath { path: path.to_string(), reason: "kind has no factory".into() })
    }

    /// Makes `op` durable on `rf` nodes (this one and the next owners of `path`).
    pub async fn persist(&self, path: &ActorPath, rf: u64, op: WriteOp) -> Result<(), StoreError> {
        match self.cluster() {
            Some(c) if rf > 1 => c.replicate(self, path, rf, op).await,
            _ => self.0.store.write(vec![op]).await,
        }
    }

    /// Reads `path`'s durable state; clustered, the newest copy among live replicas.
    pub async fn recover(&self, path: &ActorPath, rf: u64) -> Result<Recovered, StoreError> {
        match self.cluster() {
            // Clustered, recovery always looks at the live copies: even with one copy,
            // an entity that moved finds its state on the node it moved from.
            Some(c) => c.recover(self, path, rf).await,
            _ => {
                let store = self.0.store.clone();
                let p = path.to_string();
                tokio::task::spawn_blocking(move || store.load(&p))
                    .await
                    .map_err(|e| StoreError::Read(e.to_string()))?
            }
        }
    }

    /// Microseconds since the Unix epoch, monotonic within this process.
    pub fn clock_us(&self) -> u64 {
        self.0.started_unix_us + self.0.started.elapsed().as_micros() as u64
    }

    /// Records a span for `troupe trace` when the trace is sampled (odd ids).
    pub fn record_span(&self, trace: TraceId, name: &str, path: &ActorPath, start_us: u64) {
        if trace & 1 == 0 {
            return;
        }
        let end = self.clock_us();
        let rec = SpanRecord {
            trace,
            node: self.0.name.clone(),
            name: name.to_string(),
            target: path.to_string(),
            start_unix_us: start_us,
            duration_us: end.saturating_sub(start_us),
            fields: Vec::new(),
        };
        let mut s = self.0.spans.lock();
        if s.len() >= SPANS_MAX {
            s.pop_front();
        }
        s.push_back(rec);
    }

    pub fn spans(&self, trace: TraceId) -> Vec<SpanRecord> {
        self.0.spans.lock().iter().filter(|s| s.trace == trace).cloned().collect()
    }

    pub fn tree(&self) -> ActorInfo {
        self.0.root_entry.snapshot()
    }

    pub fn health(&self) -> Health {
        let systems = self
            .0
            .root_entry
            .children()
            .iter()
            .map(|e| SystemHealth {
                name: e.path.trim_start_matches('/').to_string(),
                status: match e.stats.state() {
                    troupe_wire::introspect::ActorState::Failed => {
                        format!("failed: {}", e.stats.last_error().unwrap_or_default())
                    }
                    s => format!("{s:?}").to_lowercase(),
                },
            })
            .collect();
        Health { node: self.0.name.clone(), epoch: self.0.epoch, uptime_ms: self.uptime().as_millis() as u64, systems }
    }

    /// Membership as this node sees it.
    pub fn members(&self) -> Vec<MemberInfo> {
        match self.cluster() {
            Some(c) => c.members(),
            None => {
                let spec = self.0.loaded.cluster.node(&self.0.name);
                vec![MemberInfo {
                    name: self.0.name.clone(),
                    addr: spec.map(|s| s.addr.to_string()).unwrap_or_default(),
                    epoch: self.0.epoch,
                    state: MemberState::Alive,
                    incarnation: 0,
                    roles: spec.map(|s| s.roles.clone()).unwrap_or_default(),
                }]
            }
        }
    }

    /// Per-kind actor statistics folded into metrics, plus every registered series.
    pub fn metrics_snapshot(&self) -> Vec<troupe_wire::introspect::Metric> {
        let mut out = self.0.metrics.snapshot();
        let mut per_kind: BTreeMap<(String, String), (f64, f64, f64, f64)> = BTreeMap::new();
        let tree = self.tree();
        for sys in &tree.children {
            for kind in &sys.children {
                let parts: Vec<&str> = kind.path.trim_start_matches('/').splitn(2, '/').collect();
                let key = (parts.first().unwrap_or(&"").to_string(), parts.get(1).unwrap_or(&"").to_string());
                let e = per_kind.entry(key).or_default();
                e.3 += kind.restarts as f64;
                for a in &kind.children {
                    e.0 += 1.0;
                    e.1 += a.mailbox_len as f64;
                    e.2 += a.handled as f64;
                    e.3 += a.restarts as f64;
                }
            }
        }
        let m = |name: &str, help: &str, kind: &str, sys: &str, k: &str, v: f64| troupe_wire::introspect::Metric {
            name: name.into(),
            help: help.into(),
            kind: kind.into(),
            labels: vec![("system".into(), sys.into()), ("kind".into(), k.into())],
            value: v,
        };
        for ((sys, k), (actors, depth, handled, restarts)) in per_kind {
            out.push(m("troupe_actors", "Live actors of a kind on this node.", "gauge", &sys, &k, actors));
            out.push(m(
                "troupe_mailbox_depth",
                "Messages waiting in the mailboxes of a kind.",
                "gauge",
                &sys,
                &k,
                depth,
            ));
            out.push(m(
                "troupe_messages_handled_total",
                "Messages handled by actors of a kind.",
                "counter",
                &sys,
                &k,
                handled,
            ));
            out.push(m(
                "troupe_actor_restarts_total",
                "Restarts of actors of a kind and of its supervisor.",
                "counter",
                &sys,
                &k,
                restarts,
            ));
        }
        out.push(troupe_wire::introspect::Metric {
            name: "troupe_node_uptime_seconds".into(),
            help: "Seconds since this node started.".into(),
            kind: "gauge".into(),
            labels: vec![],
            value: self.uptime().as_secs_f64(),
        });
        if let Some(c) = self.cluster() {
            out.extend(c.metrics());
        }
        out
    }

    /// A handle to the node agent of `node` (introspection, chaos).
    pub fn agent(&self, node: &str) -> Result<ActorHandle<troupe_wire::introspect::NodeAgent>, RemoteError> {
        let path = ActorPath::new("troupe", "node", node).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        Ok(self.handle(path))
    }

    /// Stops the supervision tree and the cluster links.
    pub async fn shutdown(&self) {
        if let Some(c) = self.cluster() {
            c.shutdown().await;
        }
        let root = self.0.root.lock().take();
        if let Some(root) = root {
            let _ = root.stop_and_wait(Some("node shutting down".into()), Some(Duration::from_secs(5))).await;
        }
    }

    /// Resolves when the root supervisor has stopped (it escalated: the node is dead).
    pub async fn wait_root(&self) {
        let root = self.0.root.lock().clone();
        if let Some(root) = root {
            let _ = root.get_cell().wait(None).await;
        }
    }
}
