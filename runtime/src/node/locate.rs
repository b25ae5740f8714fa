//! Where a path lives: the owner in the current view (troupe-core's directory), the
//! local registry, activation and handoff.

use super::*;
use crate::config::KindSpec;
use crate::placement::Candidate;
use crate::slot::ErasedSlot;
use crate::supervision::SupMsg;
use std::sync::Arc;
use tokio::sync::oneshot;
use troupe_core::directory::{self, Route};
use troupe_core::downing::Side;
use troupe_wire::{ActorPath, RemoteError};

impl Node {
    /// The spec of kind `kind` of system `system` on this node (built-in `troupe`
    /// kinds included); `None` for an unknown kind.
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

    pub(super) fn alone_candidates(&self) -> Vec<Candidate> {
        match self.cluster() {
            Some(c) => c.candidates(),
            None => {
                let spec = self.0.loaded.cluster.node(&self.0.name);
                vec![Candidate {
                    name: self.0.name.clone(),
                    roles: spec.map(|s| s.placement_roles.clone()).unwrap_or_default(),
                    weight: spec.map(|s| s.weight).unwrap_or(1.0),
                }]
            }
        }
    }

    /// The node that should own `path` in the current view (the directory's answer);
    /// an error on the minority side of a partition, which owns nothing but per-node
    /// paths (the split-brain resolver, [`Node::side`]).
    pub fn owner_of(&self, ks: &KindSpec, path: &ActorPath) -> Result<String, RemoteError> {
        let (live, side) = self.view();
        self.standing_down(ks, side)?;
        directory::owner_of(&ks.place(), path, &live, &self.0.loaded.cluster)
    }

    /// Whether this node's side of a partition serves (always, when not clustered).
    pub fn side(&self) -> Side {
        self.view().1
    }

    /// The live placement candidates and this node's side, from one look at the view
    /// (every send routes through this).
    fn view(&self) -> (Arc<Vec<Candidate>>, Side) {
        match self.cluster() {
            Some(c) => c.placement_view(),
            None => (self.candidates_shared(), Side::Serving),
        }
    }

    /// `Err` when this node is on the minority side and `ks` is not per-node: the
    /// refusal a client reads (a 503 with Retry-After from a gateway).
    fn standing_down(&self, ks: &KindSpec, side: Side) -> Result<(), RemoteError> {
        if ks.placement == Placement::PerNode {
            return Ok(());
        }
        match side {
            Side::Serving => Ok(()),
            Side::Minority(why) => Err(RemoteError::Unreachable {
                node: self.0.name.clone(),
                reason: format!("{why}; it serves again once the partition heals, or ask a node of the majority"),
            }),
        }
    }

    /// The nodes that hold `path`'s durable state: the kind's `replication_factor`
    /// first nodes of the cluster file in the path's rendezvous order, live or not.
    pub fn replica_set(&self, ks: &KindSpec, path: &ActorPath) -> Vec<String> {
        directory::replica_set(&ks.place(), path, &self.0.loaded.cluster)
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
        let (live, side) = self.view();
        self.standing_down(ks, side)?;
        match directory::route(&self.0.name, &ks.place(), path, &live, &self.0.loaded.cluster)? {
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

    /// Paths of the actors of one kind registered on this node.
    pub fn local_paths(&self, system: &str, kind: &str) -> Vec<ActorPath> {
        self.0.registry.paths_of(system, kind)
    }

    /// Stops what this node no longer owns and starts the singletons it now owns.
    pub(crate) async fn rehome(&self) {
        let node = self;
        let mut started = Vec::new();
        let mut handed_off = Vec::new();
        let mut specs: Vec<KindSpec> = node.loaded().topologies.iter().flat_map(|t| t.kinds.clone()).collect();
        specs.extend(super::builtin_specs(node.loaded().cluster.nodes.len()));
        for ks in specs {
            match ks.placement {
                Placement::PerNode => {}
                Placement::Singleton => {
                    let mine = !node.static_paths(&ks).is_empty();
                    let path = match ActorPath::new(&ks.system, &ks.name, KindSpec::singleton_key()) {
                        Ok(p) => p,
                        Err(_) => continue,
                    };
                    let running = node.local_slot(&path).is_some();
                    if mine && !running {
                        tracing::info!(%path, "taking over singleton");
                        match node.activate_local(&path).await {
                            Ok(_) => started.push(path),
                            Err(e) => tracing::warn!(%path, error = %e, "singleton did not start"),
                        }
                    } else if !mine && running {
                        tracing::info!(%path, "handing off singleton");
                        node.stop_local(&path);
                        handed_off.push(path);
                    }
                }
                Placement::Sharded => {
                    for path in node.local_paths(&ks.system, &ks.name) {
                        // Not the owner any more, or standing down on a minority side.
                        if node.owner_of(&ks, &path).is_ok_and(|o| o != node.name())
                            || matches!(node.side(), Side::Minority(_))
                        {
                            tracing::debug!(%path, "handing off entity");
                            node.stop_local(&path);
                            handed_off.push(path);
                        }
                    }
                }
            }
        }
        let nodes = match node.side() {
            Side::Minority(_) => Vec::new(),
            _ => node.candidates_shared().iter().map(|c| c.name.clone()).collect(),
        };
        node.announce_placement(PlacementChange { version: node.placement_version(), nodes, started, handed_off });
    }
}
