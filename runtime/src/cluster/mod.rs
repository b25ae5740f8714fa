//! Clustering: SWIM membership ([`gossip`]), QUIC transport ([`transport`]), mutual
//! TLS ([`tls`]), sealed gossip ([`seal`]), replication ([`replica`]) and fault
//! injection ([`chaos`]), tied to a [`Node`].
//!
//! Invariants:
//! - Placement reads the membership view; when the view changes, every node stops
//!   the entities and singletons it no longer owns (they re-activate on their new
//!   owner and recover their state there) and starts the singletons it now owns.
//! - A member declared down fails every request still waiting for it, and nothing
//!   more is sent to it until it rejoins (the gossip driver tells the transport of
//!   each change before it is broadcast).

pub use troupe_core::chaos;
pub(crate) mod client;
pub(crate) mod gossip;
pub(crate) mod inbound;
pub use troupe_core::health;
mod parking;
pub(crate) mod replica;
pub mod seal;
pub mod tls;
pub(crate) mod transport;

use crate::config::{KindSpec, Placement};
use crate::node::{Node, NodeError};
use crate::placement::Candidate;
use crate::store::{Recovered, StoreError, WriteOp};
use chaos::ChaosRules;
use gossip::{Gossip, GossipConfig, NodeId};
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::Transport;
use troupe_wire::ActorPath;
use troupe_wire::introspect::{ChaosCommand, MemberInfo, MemberState, Metric};

pub struct Cluster {
    me: String,
    pub gossip: Gossip,
    pub transport: Arc<Transport>,
    chaos: Arc<RwLock<ChaosRules>>,
    roles: std::collections::HashMap<String, (Vec<String>, f64, String)>,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Placement candidates of the view version they were built from.
    cand_cache: parking_lot::Mutex<(u64, Arc<Vec<Candidate>>)>,
}

impl Cluster {
    /// Joins `node` to its cluster: binds the QUIC endpoint and the gossip socket,
    /// announces to the seeds, and waits (bounded) until membership is known.
    /// Joins the cluster as `node`; what arrives on its links goes to `inbound`.
    pub(crate) async fn join(node: &Node, inbound: Arc<dyn transport::Inbound>) -> Result<Arc<Cluster>, NodeError> {
        let cfg = node.loaded().cluster.clone();
        let me = cfg.node(node.name()).ok_or_else(|| NodeError::UnknownNode(node.name().into()))?.clone();
        let err = |e: String| NodeError::Cluster(e);
        let id = tls::load_identity(&tls::TlsDir(cfg.tls_dir.clone()), &tls::PeerId::Node(me.name.clone()))
            .map_err(|e| err(e.to_string()))?;
        let key = seal::load_key(&cfg.key_file, false).map_err(err)?;
        let chaos = Arc::new(RwLock::new(ChaosRules::default()));
        let peers: Vec<(String, std::net::SocketAddr)> = cfg.nodes.iter().map(|n| (n.name.clone(), n.addr)).collect();
        let transport = Transport::bind(&me.name, me.addr, &id, &cfg.transport, &peers, node.metrics(), chaos.clone())
            .map_err(err)?;
        let my_id = NodeId { name: me.name.clone(), gossip: me.gossip, epoch: node.epoch(), bump: 0 };
        let seeds = cfg
            .seeds
            .iter()
            .filter_map(|s| cfg.node(s))
            .map(|n| NodeId { name: n.name.clone(), gossip: n.gossip, epoch: 0, bump: 0 })
            .collect();
        let gcfg = GossipConfig {
            me: my_id,
            members: cfg.nodes.iter().map(|n| n.name.clone()).collect(),
            seeds,
            tuning: cfg.membership.clone(),
            cluster_size: cfg.nodes.len(),
            sealer: seal::Sealer::new(&key, &cfg.name),
            listener: Some({
                let t = transport.clone();
                Arc::new(move |e: &gossip::MemberEvent| t.note_member(&e.name, e.epoch, e.state))
            }),
        };
        let gossip = Gossip::start(gcfg, node.metrics(), chaos.clone())
            .await
            .map_err(|e| err(format!("cannot bind gossip socket {}: {e}", me.gossip)))?;
        let roles =
            cfg.nodes.iter().map(|n| (n.name.clone(), (n.roles.clone(), n.weight, n.addr.to_string()))).collect();
        let cluster = Arc::new(Cluster {
            me: me.name.clone(),
            gossip,
            transport: transport.clone(),
            chaos,
            roles,
            locks: (0..replica::LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            cand_cache: parking_lot::Mutex::new((0, Arc::new(Vec::new()))),
        });
        if !node.set_cluster(cluster.clone()) {
            return Err(err("node is already clustered".into()));
        }
        transport.serve(inbound);
        // Wait until we have heard from the cluster, so placement decisions at start
        // (singletons) are made with a real view. The first node gives up waiting.
        let others = cfg.nodes.len() > 1;
        let deadline = Instant::now() + Duration::from_millis(cfg.membership.probe_period_ms * 3);
        while others && !cluster.gossip.view.read().active && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cluster)
    }

    /// Watches membership and re-homes actors after every change. (The transport
    /// already followed the change: the gossip driver tells it first, synchronously.)
    pub(crate) fn watch(self: &Arc<Self>, node: &Node) {
        let mut events = self.gossip.events.subscribe();
        let weak = node.downgrade();
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
                rehome(&node).await;
            }
        });
    }

    pub fn candidates(&self) -> Vec<Candidate> {
        self.candidates_shared().as_ref().clone()
    }

    /// Live members for placement, rebuilt only when the view changes: placement
    /// runs on every remote send and must not allocate each time.
    pub fn candidates_shared(&self) -> Arc<Vec<Candidate>> {
        let version = self.view_version();
        {
            let c = self.cand_cache.lock();
            if c.0 == version {
                return c.1.clone();
            }
        }
        let fresh = Arc::new(self.build_candidates());
        *self.cand_cache.lock() = (version, fresh.clone());
        fresh
    }

    fn build_candidates(&self) -> Vec<Candidate> {
        let v = self.gossip.view.read();
        v.members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| {
                let (roles, weight, _) = self.roles.get(&m.id.name).cloned().unwrap_or_default();
                Candidate { name: m.id.name.clone(), roles, weight: if weight > 0.0 { weight } else { 1.0 } }
            })
            .collect()
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        let v = self.gossip.view.read();
        v.members
            .values()
            .map(|m| {
                let (roles, _, addr) = self.roles.get(&m.id.name).cloned().unwrap_or_default();
                MemberInfo {
                    name: m.id.name.clone(),
                    addr,
                    epoch: m.id.epoch,
                    state: m.state,
                    incarnation: m.incarnation,
                    roles,
                }
            })
            .collect()
    }

    pub fn view_version(&self) -> u64 {
        self.gossip.version.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn chaos(&self, cmd: ChaosCommand) -> String {
        let mut c = self.chaos.write();
        c.expire(Instant::now());
        let out = c.apply(&cmd, Instant::now());
        tracing::warn!(node = %self.me, "chaos: {out}");
        out
    }

    pub fn metrics(&self) -> Vec<Metric> {
        let v = self.gossip.view.read();
        let count = |s: MemberState| v.members.values().filter(|m| m.state == s).count() as f64;
        [("alive", MemberState::Alive), ("suspect", MemberState::Suspect), ("down", MemberState::Down)]
            .into_iter()
            .map(|(label, s)| Metric {
                name: "troupe_members".into(),
                help: "Cluster members by state, as this node sees them.".into(),
                kind: "gauge".into(),
                labels: vec![("state".into(), label.into())],
                value: count(s),
            })
            .collect()
    }

    pub(crate) fn path_lock(&self, path: &str) -> &tokio::sync::Mutex<()> {
        let h = crate::placement::stable_hash(&[path.as_bytes()]) as usize;
        &self.locks[h % self.locks.len()]
    }

    pub async fn replicate(&self, node: &Node, path: &ActorPath, rf: u64, op: WriteOp) -> Result<(), StoreError> {
        replica::replicate(node, path, rf, op).await
    }

    pub async fn recover(&self, node: &Node, path: &ActorPath, rf: u64) -> Result<Recovered, StoreError> {
        replica::recover(node, path, rf).await
    }

    pub async fn shutdown(&self) {
        self.gossip.leave().await;
        self.transport.close().await;
    }
}

/// Stops what this node no longer owns and starts the singletons it now owns.
pub(crate) async fn rehome(node: &Node) {
    let specs: Vec<KindSpec> = node.loaded().topologies.iter().flat_map(|t| t.kinds.clone()).collect();
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
                    if let Err(e) = node.activate_local(&path).await {
                        tracing::warn!(%path, error = %e, "singleton did not start");
                    }
                } else if !mine && running {
                    tracing::info!(%path, "handing off singleton");
                    node.stop_local(&path);
                }
            }
            Placement::Sharded => {
                for path in node.local_paths(&ks.system, &ks.name) {
                    if node.owner_of(&ks, &path).is_ok_and(|o| o != node.name()) {
                        tracing::debug!(%path, "handing off entity");
                        node.stop_local(&path);
                    }
                }
            }
        }
    }
}
