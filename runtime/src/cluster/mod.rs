//! Clustering: SWIM membership (`gossip`), QUIC transport (`transport`), mutual
//! TLS ([`tls`]), sealed gossip ([`seal`]), replication (`replica`), the rebuild of
//! a node that lost its disk (`rebuild`) and fault injection ([`chaos`]). The node
//! holds a [`Cluster`]; the cluster does not name the node (arrivals go to the
//! transport's `Inbound` trait; re-homing is the node's).
//!
//! Invariants:
//! - Placement reads the membership view; when the view changes, every node stops
//!   the entities and singletons it no longer owns (they re-activate on their new
//!   owner and recover their state there) and starts the singletons it now owns
//!   (`Node::rehome`, in node/locate.rs, run by the node's membership watch).
//! - A member declared down fails every request still waiting for it, and nothing
//!   more is sent to it until it rejoins (the gossip driver tells the transport of
//!   each change before it is broadcast).

pub use troupe_core::chaos;
pub mod api_keys;
pub(crate) mod client;
pub(crate) mod gossip;
pub(crate) mod inbound;
pub mod tokens;
pub use troupe_core::health;
mod parking;
pub(crate) mod rebuild;
pub(crate) mod replica;
pub mod seal;
pub mod tls;
pub(crate) mod transport;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::placement::Candidate;
use chaos::ChaosRules;
use gossip::{Gossip, GossipConfig, NodeId};
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::Transport;
use troupe_core::downing::{self, Member, Side, SplitBrain};
use troupe_core::rebuild::Standing;
use troupe_wire::introspect::{ChaosCommand, MemberInfo, MemberState, Metric};

/// Stripes of the per-path lock that replication holds across a check and its write.
pub(crate) const LOCK_STRIPES: usize = 256;

/// This node's part in the cluster: membership, transport, fault injection and the
/// placement view built from them.
pub struct Cluster {
    me: String,
    /// SWIM membership: this node's view of the members.
    pub gossip: Gossip,
    /// QUIC links to the other nodes and to clients.
    pub transport: Arc<Transport>,
    chaos: Arc<RwLock<ChaosRules>>,
    roles: std::collections::HashMap<String, (Vec<String>, f64, String)>,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Placement candidates, and this node's side of a partition, of the view
    /// version they were built from.
    cand_cache: parking_lot::Mutex<(u64, Arc<Vec<Candidate>>, Side)>,
    /// The cluster file's nodes, in its order (the split-brain resolver's roster).
    roster: Vec<String>,
    split_brain: SplitBrain,
    /// Whether this node votes on replicated paths, or is rebuilding after losing its
    /// disk (troupe-core's `rebuild`; the driver is `rebuild.rs`).
    standing: parking_lot::Mutex<Standing>,
    /// Set once a rebuilding node has every other node's inventory: from then on it
    /// may relearn paths (every election that could have counted a promise it gave
    /// before losing its disk has stopped counting).
    inventoried: std::sync::atomic::AtomicBool,
    /// Held (shared) by each election while it counts promises; an inventory answer
    /// takes it exclusively first, so it is given only once every election that began
    /// before it has stopped counting.
    pub(crate) counting: tokio::sync::RwLock<()>,
}

impl Cluster {
    /// Joins the cluster as node `name` (boot epoch `epoch`): binds the QUIC endpoint
    /// and the gossip socket and announces to the seeds. Nothing is served until
    /// [`Cluster::open`].
    pub(crate) async fn join(
        cfg: &ClusterConfig,
        name: &str,
        epoch: u64,
        metrics: &Metrics,
    ) -> Result<Arc<Cluster>, String> {
        let me = cfg.node(name).ok_or_else(|| format!("node `{name}` is not in the cluster file"))?.clone();
        let err = |e: String| e;
        let id = tls::load_identity(&tls::TlsDir(cfg.tls_dir.clone()), &tls::PeerId::Node(me.name.clone()))
            .map_err(|e| err(e.to_string()))?;
        let key = seal::load_key(&cfg.key_file, false).map_err(err)?;
        let chaos = Arc::new(RwLock::new(ChaosRules::default()));
        let peers: Vec<(String, std::net::SocketAddr)> = cfg.nodes.iter().map(|n| (n.name.clone(), n.addr)).collect();
        let transport =
            Transport::bind(&me.name, me.addr, &id, &cfg.transport, &peers, metrics, chaos.clone()).map_err(err)?;
        let my_id = NodeId { name: me.name.clone(), gossip: me.gossip, epoch, bump: 0 };
        let seeds = cfg
            .seeds
            .iter()
            .filter_map(|s| cfg.node(s))
            .map(|n| NodeId { name: n.name.clone(), gossip: n.gossip, epoch: 0, bump: 0 })
            .collect();
        let gcfg = GossipConfig {
            me: my_id,
            members: cfg.nodes.iter().map(|n| (n.name.clone(), n.gossip)).collect(),
            seeds,
            tuning: cfg.membership.clone(),
            cluster_size: cfg.nodes.len(),
            sealer: seal::Sealer::new(&key, &cfg.name, seal::GossipIdentity::new(&id).map_err(err)?),
            listener: Some({
                let t = transport.clone();
                Arc::new(move |e: &gossip::MemberEvent| t.note_member(&e.name, e.epoch, e.state))
            }),
        };
        let gossip = Gossip::start(gcfg, metrics, chaos.clone())
            .await
            .map_err(|e| err(format!("cannot bind gossip socket {}: {e}", me.gossip)))?;
        let roles = cfg
            .nodes
            .iter()
            .map(|n| (n.name.clone(), (n.placement_roles.clone(), n.weight, n.addr.to_string())))
            .collect();
        let cluster = Arc::new(Cluster {
            me: me.name.clone(),
            gossip,
            transport: transport.clone(),
            chaos,
            roles,
            locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            cand_cache: parking_lot::Mutex::new((0, Arc::new(Vec::new()), Side::Serving)),
            roster: cfg.nodes.iter().map(|n| n.name.clone()).collect(),
            split_brain: cfg.split_brain,
            standing: parking_lot::Mutex::new(Standing::Voter),
            inventoried: std::sync::atomic::AtomicBool::new(false),
            counting: tokio::sync::RwLock::new(()),
        });
        Ok(cluster)
    }

    /// Serves the links (what arrives goes to `inbound`) and waits, bounded, until
    /// membership is known, so placement decisions at start (singletons) are made
    /// with a real view. The first node gives up waiting.
    pub(crate) async fn open(&self, cfg: &ClusterConfig, inbound: Arc<dyn transport::Inbound>) {
        self.transport.serve(inbound);
        let others = cfg.nodes.len() > 1;
        let deadline = Instant::now() + Duration::from_millis(cfg.membership.probe_period_ms * 3);
        while others && !self.gossip.view.read().active && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Live members for placement (members not down), as an owned copy.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.candidates_shared().as_ref().clone()
    }

    /// Live members for placement, rebuilt only when the view changes: placement
    /// runs on every remote send and must not allocate each time.
    pub fn candidates_shared(&self) -> Arc<Vec<Candidate>> {
        self.placement_view().0
    }

    /// Whether this node's side of a partition serves (the split-brain resolver,
    /// troupe-core's `downing`, on the current view).
    pub fn side(&self) -> Side {
        self.placement_view().1
    }

    /// The placement candidates and this node's side, of one view version.
    pub(crate) fn placement_view(&self) -> (Arc<Vec<Candidate>>, Side) {
        let version = self.view_version();
        {
            let c = self.cand_cache.lock();
            if c.0 == version {
                return (c.1.clone(), c.2.clone());
            }
        }
        let fresh = Arc::new(self.build_candidates());
        let side = self.build_side();
        *self.cand_cache.lock() = (version, fresh.clone(), side.clone());
        (fresh, side)
    }

    fn build_side(&self) -> Side {
        let v = self.gossip.view.read();
        let members: Vec<Member> = v
            .members
            .values()
            .map(|m| Member { name: &m.id.name, epoch: m.id.epoch, live: m.state != MemberState::Down })
            .collect();
        let roster: Vec<&str> = self.roster.iter().map(String::as_str).collect();
        let side = downing::side(self.split_brain, &roster, &self.me, &members);
        if let Side::Minority(why) = &side {
            tracing::warn!(reason = %why, "not serving: singletons, entity owners and gateways stand down");
        }
        side
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

    /// Every member in this node's view, down ones included, for introspection.
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

    /// Version of the membership view; it changes whenever the view does.
    pub fn view_version(&self) -> u64 {
        self.gossip.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies a fault-injection command to this node's links and gossip (expired
    /// rules are dropped first) and returns what it did, in words.
    pub fn chaos(&self, cmd: ChaosCommand) -> String {
        let mut c = self.chaos.write();
        c.expire(Instant::now());
        let out = c.apply(&cmd, Instant::now());
        tracing::warn!(node = %self.me, "chaos: {out}");
        out
    }

    /// The `troupe_members` gauges: members by state (alive, suspect, down) in this
    /// node's view.
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
            .chain({
                let s = self.standing.lock();
                [
                    Metric {
                        name: "troupe_replica_rebuilding".into(),
                        help: "1 while this node rebuilds its replicas after losing its disk.".into(),
                        kind: "gauge".into(),
                        labels: vec![],
                        value: if s.is_rebuilding() { 1.0 } else { 0.0 },
                    },
                    Metric {
                        name: "troupe_replica_relearned_paths".into(),
                        help: "Replicated paths relearned so far by a rebuilding node.".into(),
                        kind: "gauge".into(),
                        labels: vec![],
                        value: s.learned_count() as f64,
                    },
                ]
            })
            .collect()
    }

    /// Whether this node's answers about replicated `path` count (false while it
    /// rebuilds after losing its disk and has not relearned `path`).
    pub(crate) fn may_vote(&self, path: &str) -> bool {
        self.standing.lock().may_vote(path)
    }

    /// Whether this node is rebuilding after losing its disk.
    pub fn rebuilding(&self) -> bool {
        self.standing.lock().is_rebuilding()
    }

    pub(crate) fn set_standing(&self, s: Standing) {
        *self.standing.lock() = s;
    }

    /// Whether a rebuilding node has every other node's inventory.
    pub(crate) fn inventoried(&self) -> bool {
        self.inventoried.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_inventoried(&self) {
        self.inventoried.store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn learned(&self, path: &str) {
        self.standing.lock().learned(path);
    }

    pub(crate) fn path_lock(&self, path: &str) -> &tokio::sync::Mutex<()> {
        let h = crate::placement::stable_hash(&[path.as_bytes()]) as usize;
        &self.locks[h % self.locks.len()]
    }

    /// Leaves the cluster: announces the departure over gossip, then closes the
    /// transport.
    pub async fn shutdown(&self) {
        self.gossip.leave().await;
        self.transport.close().await;
    }
}
