//! Starting and stopping a node: its store, kinds, supervision tree and cluster.

use super::*;
use crate::agent::NodeAgentBehavior;
use crate::cluster::Cluster;
use crate::cluster::replica::ReplicaAgent;
use crate::config::{KindSpec, Loaded, Placement};
use crate::metrics::Metrics;
use crate::node::{KindInstance, KindRegistry};
use crate::registry::Registry;
use crate::stats::{ActorEntry, ActorStats};
use crate::store::{Store, StoreError};
use crate::supervision::{ChildSpec, Intensity, Restart, StartFn, Strategy, SupMsg, Supervisor, SupervisorConfig};
use parking_lot::{Mutex, RwLock};
use ractor::ActorCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use troupe_wire::ActorPath;

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
        let metrics = Metrics::new();
        let (started, started_unix_us) = (Instant::now(), unix_ms() * 1000);
        let traces_file = loaded.cluster.node_data_dir(name).join("traces.redb");
        let file = traces_file.clone();
        let db = tokio::task::spawn_blocking(move || crate::traces::open_file(&file, started_unix_us))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| StoreError::Open { path: traces_file.clone(), reason })?;
        let clock = (started_unix_us, started);
        let traces =
            crate::traces::TraceStore::with_file(db, loaded.cluster.tracing.clone(), &metrics, &spec.name, clock);
        let traces = Arc::new(traces);
        crate::traces::TraceStore::run(&traces);
        let mut kinds = kinds;
        kinds.register::<NodeAgentBehavior>("troupe.node");
        kinds.register::<ReplicaAgent>("troupe.replica");
        kinds.register::<crate::broker::BrokerBehavior>("troupe.pubsub");
        kinds.register::<crate::keepers::WakeBehavior>("troupe.wake");
        kinds.register::<crate::keepers::RegistryBehavior>("troupe.remembered");
        kinds.register::<crate::keepers::ReminderBucket>("troupe.reminders");
        kinds.register::<crate::blobs::BlobAgent>("troupe.blobs");
        let root_entry =
            ActorEntry::new("/", "node", Strategy::OneForOne.to_string(), Arc::new(ActorStats::new(u64::MAX)));
        let inner = NodeInner {
            name: spec.name.clone(),
            epoch: unix_ms(),
            loaded: loaded.clone(),
            kinds,
            registry: Registry::default(),
            store,
            metrics,
            kind_sups: RwLock::new(KindMap::default()),
            instances: OnceLock::new(),
            root_entry,
            root: Mutex::new(None),
            traces,
            started,
            started_unix_us,
            cluster: OnceLock::new(),
            alone: OnceLock::new(),
            extensions: Mutex::new(HashMap::new()),
            placement_tx: tokio::sync::broadcast::channel(256).0,
        };
        let node = Node(Arc::new(inner));

        // Build each kind once for this node (checks resources such as model files).
        let mut instances = KindMap::default();
        let mut all_specs: Vec<KindSpec> = loaded.topologies.iter().flat_map(|t| t.kinds.clone()).collect();
        all_specs.extend(builtin_specs(loaded.cluster.nodes.len()));
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

        let cluster = if clustered {
            let cfg = &node.0.loaded.cluster;
            let c =
                Cluster::join(cfg, &node.0.name, node.0.epoch, &node.0.metrics).await.map_err(NodeError::Cluster)?;
            if !node.set_cluster(c.clone()) {
                return Err(NodeError::Cluster("node is already clustered".into()));
            }
            let standing = crate::cluster::rebuild::standing_at_boot(&node).await?;
            let rebuilding = standing.is_rebuilding();
            c.set_standing(standing);
            c.open(cfg, crate::cluster::inbound::NodeInbound::new(&node)).await;
            Some((c, rebuilding))
        } else {
            None
        };
        let root_cfg = node.root_config();
        let root = Supervisor::start(root_cfg, None).await.map_err(NodeError::Tree)?;
        *node.0.root.lock() = Some(root);
        // Kind supervisors activate their static actors as they start; wait until
        // every kind supervisor is up so the node answers as soon as start returns.
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.0.kind_sups.read().len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some((c, rebuilding)) = cluster {
            if rebuilding {
                tokio::spawn(crate::cluster::rebuild::run(node.clone()));
            }
            node.watch(&c);
            // Re-home once now, in case membership moved while the tree started.
            node.rehome().await;
        }
        tracing::info!(node = %node.0.name, epoch = node.0.epoch, systems = loaded.topologies.len(), "node started");
        Ok(node)
    }

    pub(super) fn root_config(&self) -> SupervisorConfig {
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

    pub(super) fn system_config(
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
            builtin_specs(self.0.loaded.cluster.nodes.len())
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

    pub(super) async fn start_kind_supervisor(
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

    pub(super) fn has_role(&self, role: Option<&str>) -> bool {
        match role {
            None => true,
            Some(r) => {
                self.0.loaded.cluster.node(&self.0.name).is_some_and(|n| n.placement_roles.iter().any(|x| x == r))
            }
        }
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
        // Extensions usually hold the node: dropping them here ends that cycle.
        self.0.extensions.lock().clear();
        // The spans recorded since the last flush, so a stop loses none.
        let traces = self.0.traces.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || traces.flush()).await {
            tracing::warn!(error = %e, "the last spans were not written");
        }
    }

    /// Resolves when the root supervisor has stopped (it escalated: the node is dead).
    pub async fn wait_root(&self) {
        let root = self.0.root.lock().clone();
        if let Some(root) = root {
            let _ = root.get_cell().wait(None).await;
        }
    }

    /// Watches membership and re-homes actors after every change. (The transport
    /// already followed the change: the gossip driver tells it first, synchronously.)
    pub(super) fn watch(&self, cluster: &Cluster) {
        let mut events = cluster.gossip.events.subscribe();
        let weak = self.downgrade();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    // A lagged receiver missed changes: re-homing reads the current
                    // view, so it is enough to re-home now.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let node = Node::from_inner(inner);
                // Let a burst of changes settle before re-homing.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while events.try_recv().is_ok() {}
                node.rehome().await;
            }
        });
    }
}
