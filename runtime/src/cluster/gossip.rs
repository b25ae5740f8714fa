//! SWIM membership, the shell: owns the UDP socket, the wake-ups, packet sealing
//! (`seal.rs`), chaos rules and metrics, and feeds the sans-IO membership core
//! ([`troupe_core::membership`]: foca, the timer queue, local health, the view). It
//! publishes the core's [`View`] and an event on every change, telling the
//! [`GossipConfig::listener`] first.
//!
//! Identity = node name + gossip address + boot epoch (+ a bump foca uses to rejoin
//! after a false death). A restarted node has a new epoch and wins the name over its
//! old incarnation, so it rejoins as a new member.

use super::chaos::{ChaosRules, Verdict};
use super::seal::Sealer;
use crate::metrics::{Counter, Gauge, Metrics};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use troupe_core::membership::{Effects, Input, Membership, packet_sender};
pub(crate) use troupe_core::membership::{MemberEvent, MembershipTuning, NodeId, View};
use troupe_wire::introspect::MemberState;

pub struct GossipConfig {
    pub me: NodeId,
    /// Every node name of the cluster file (for per-member metrics).
    pub members: Vec<String>,
    pub seeds: Vec<NodeId>,
    pub tuning: MembershipTuning,
    pub cluster_size: usize,
    pub sealer: Sealer,
    /// Told of every membership change synchronously, before the change is broadcast
    /// on [`Gossip::events`] (the transport stops sending to a member held down
    /// without waiting for a subscriber task to run).
    pub listener: Option<MemberListener>,
}

/// A synchronous observer of membership changes.
pub(crate) type MemberListener = Arc<dyn Fn(&MemberEvent) + Send + Sync>;

enum Cmd {
    Leave(oneshot::Sender<()>),
}

pub struct Gossip {
    pub view: Arc<RwLock<View>>,
    /// `view.version`, readable without the lock (hot paths compare it to a cache).
    pub version: Arc<std::sync::atomic::AtomicU64>,
    pub events: broadcast::Sender<MemberEvent>,
    cmd: mpsc::Sender<Cmd>,
}

struct Stats {
    packets_in: Counter,
    packets_out: Counter,
    rejected: Counter,
    dropped_chaos: Counter,
    local_health: Gauge,
    stale_suspicions: Counter,
    /// Suspect transitions per member name (for nodes in the cluster file).
    suspicions: BTreeMap<String, Counter>,
    downs: Counter,
    refuted: Counter,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Gossip {
    /// Binds the gossip socket and starts the SWIM driver.
    pub async fn start(
        cfg: GossipConfig,
        metrics: &Metrics,
        chaos: Arc<RwLock<ChaosRules>>,
    ) -> std::io::Result<Gossip> {
        let sock = UdpSocket::bind(cfg.me.gossip).await?;
        let core = Membership::new(
            cfg.me.clone(),
            cfg.seeds.clone(),
            cfg.tuning.clone(),
            cfg.cluster_size,
            rand::random(),
            Instant::now(),
        );
        let view = Arc::new(RwLock::new(core.view().clone()));
        let version = Arc::new(std::sync::atomic::AtomicU64::new(core.view().version));
        let (events, _) = broadcast::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let stats = Stats {
            packets_in: metrics.counter(
                "troupe_gossip_packets_received_total",
                "SWIM packets received and accepted.",
                &[],
            ),
            packets_out: metrics.counter("troupe_gossip_packets_sent_total", "SWIM packets sent.", &[]),
            rejected: metrics.counter(
                "troupe_gossip_packets_rejected_total",
                "Gossip packets dropped because they were not sealed with the cluster key, stale, or malformed.",
                &[],
            ),
            dropped_chaos: metrics.counter(
                "troupe_gossip_packets_chaos_dropped_total",
                "Gossip packets dropped by chaos rules.",
                &[],
            ),
            local_health: metrics.gauge(
                "troupe_gossip_local_health",
                "Lifeguard local health score (0 = healthy).",
                &[],
            ),
            suspicions: cfg
                .members
                .iter()
                .filter(|m| **m != cfg.me.name)
                .map(|m| {
                    let c = metrics.counter(
                        "troupe_gossip_suspicions_total",
                        "Times this node saw a member become suspect, by member.",
                        &[("member", m)],
                    );
                    (m.clone(), c)
                })
                .collect(),
            downs: metrics.counter("troupe_gossip_downs_total", "Times this node saw another member go down.", &[]),
            refuted: metrics.counter(
                "troupe_gossip_refuted_suspicions_total",
                "Suspicions this node held that the member refuted (it was alive).",
                &[],
            ),
            stale_suspicions: metrics.counter(
                "troupe_gossip_stale_suspicions_total",
                "Suspicions whose timeout foca dropped (after a rejoin) and the driver resolved as down.",
                &[],
            ),
        };
        let driver = Driver {
            core,
            sock: Arc::new(sock),
            sealer: Arc::new(cfg.sealer),
            view: view.clone(),
            version: version.clone(),
            events: events.clone(),
            me: cfg.me.name,
            chaos,
            stats,
            listener: cfg.listener,
        };
        tokio::spawn(driver.run(cmd_rx));
        Ok(Gossip { view, version, events, cmd: cmd_tx })
    }

    /// Announces our departure, so peers mark us down at once instead of suspecting.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), rx).await;
        }
    }
}

struct Driver {
    core: Membership,
    sock: Arc<UdpSocket>,
    sealer: Arc<Sealer>,
    view: Arc<RwLock<View>>,
    version: Arc<std::sync::atomic::AtomicU64>,
    events: broadcast::Sender<MemberEvent>,
    me: String,
    chaos: Arc<RwLock<ChaosRules>>,
    stats: Stats,
    listener: Option<MemberListener>,
}

impl Driver {
    async fn run(mut self, mut cmd: mpsc::Receiver<Cmd>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let wake = tokio::time::sleep_until(self.core.next_wake().into());
            let fx = tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, _from)) => match self.admit(&buf[..n]) {
                        Some(payload) => self.core.handle(Instant::now(), Input::Packet(&payload)),
                        None => continue,
                    },
                    Err(_) => continue,
                },
                _ = wake => self.core.handle(Instant::now(), Input::Tick),
                c = cmd.recv() => match c {
                    Some(Cmd::Leave(done)) => {
                        let fx = self.core.handle(Instant::now(), Input::Leave);
                        self.apply(fx);
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            };
            self.apply(fx);
        }
    }

    /// Opens a sealed packet and applies chaos rules to its sender: the payload for
    /// the core, or `None` when it is rejected or dropped.
    fn admit(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let payload = match self.sealer.open(packet, unix_ms()) {
            Ok(p) => p,
            Err(e) => {
                self.stats.rejected.inc();
                tracing::debug!(error = %e, "gossip packet rejected");
                return None;
            }
        };
        // Chaos applies to what we hear from a node too, so a partition is symmetric
        // even if only one side was told.
        if let Some(src) = packet_sender(&payload) {
            let chaos = self.chaos.read();
            if !chaos.is_empty() && chaos.verdict(&src, Instant::now(), rand::random()) == Verdict::Drop {
                self.stats.dropped_chaos.inc();
                return None;
            }
        }
        self.stats.packets_in.inc();
        Some(payload)
    }

    /// Carries out what the core decided: sends (sealed, through chaos), publishes the
    /// view, tells the listener and then everyone else of each change, counts.
    fn apply(&mut self, fx: Effects) {
        for (dst, data) in fx.send {
            let verdict = {
                let chaos = self.chaos.read();
                if chaos.is_empty() { Verdict::Pass } else { chaos.verdict(&dst.name, Instant::now(), rand::random()) }
            };
            let sealed = self.sealer.seal(&data, unix_ms());
            match verdict {
                Verdict::Drop => self.stats.dropped_chaos.inc(),
                Verdict::Pass => {
                    self.stats.packets_out.inc();
                    let _ = self.sock.try_send_to(&sealed, dst.gossip);
                }
                Verdict::Delay(d) => {
                    self.stats.packets_out.inc();
                    let sock = self.sock.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = sock.send_to(&sealed, dst.gossip).await;
                    });
                }
            }
        }
        self.stats.local_health.set(self.core.health_score() as f64);
        self.stats.refuted.add(u64::from(fx.refuted));
        self.stats.stale_suspicions.add(fx.stale_resolved.len() as u64);
        // Publish the view before anyone hears of a change, so placement already reads
        // the new one.
        let fresh = self.core.view();
        {
            let mut v = self.view.write();
            if v.version != fresh.version || v.active != fresh.active {
                *v = fresh.clone();
                self.version.store(fresh.version, std::sync::atomic::Ordering::Release);
            }
        }
        for e in fx.events {
            if e.name != self.me {
                match e.state {
                    MemberState::Suspect => {
                        if let Some(c) = self.stats.suspicions.get(&e.name) {
                            c.inc();
                        }
                    }
                    MemberState::Down => self.stats.downs.inc(),
                    MemberState::Alive => {}
                }
            }
            tracing::info!(member = %e.name, epoch = e.epoch, state = ?e.state, "membership changed");
            if let Some(l) = &self.listener {
                l(&e);
            }
            let _ = self.events.send(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{Codec, Header, Member, Message, State};
    use troupe_core::membership::BinCodec;

    fn id(name: &str, port: u16) -> NodeId {
        NodeId { name: name.into(), gossip: ([127, 0, 0, 1], port).into(), epoch: 1, bump: 0 }
    }

    fn free_udp() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn tuning() -> MembershipTuning {
        MembershipTuning {
            probe_period_ms: 200,
            probe_rtt_ms: 80,
            suspect_to_down_ms: 600,
            join_retry_ms: 100,
            ..Default::default()
        }
    }

    async fn start(me: NodeId, seeds: Vec<NodeId>, key: &[u8], metrics: &Metrics) -> Gossip {
        let members = vec!["n1".into(), "n2".into(), "n9".into()];
        let cfg = GossipConfig {
            me,
            members,
            seeds,
            tuning: tuning(),
            cluster_size: 2,
            sealer: Sealer::new(key, "t"),
            listener: None,
        };
        Gossip::start(cfg, metrics, Arc::new(RwLock::new(ChaosRules::default()))).await.unwrap()
    }

    /// A foca packet from `src` to `dst` that claims `victim` is down.
    fn forged_death(src: &NodeId, dst: &NodeId, victim: &NodeId) -> Vec<u8> {
        let mut buf = Vec::new();
        let header = Header { src: src.clone(), src_incarnation: 0, dst: dst.clone(), message: Message::Gossip };
        BinCodec.encode_header(&header, &mut buf).unwrap();
        // foca's gossip payload: a u16 member count, then the members.
        buf.extend_from_slice(&1u16.to_be_bytes());
        BinCodec.encode_member(&Member::new(victim.clone(), 5, State::Down), &mut buf).unwrap();
        buf
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outsiders_cannot_join_or_forge_a_death() {
        let key = [42u8; 32];
        let (p1, p2, p3) = (free_udp(), free_udp(), free_udp());
        let (a, b) = (id("n1", p1), id("n2", p2));
        let m1 = Metrics::new();
        let g1 = start(a.clone(), vec![b.clone()], &key, &m1).await;
        let _g2 = start(b.clone(), vec![a.clone()], &key, &Metrics::new()).await;
        let alive = |g: &Gossip, n: &str| g.view.read().members.get(n).is_some_and(|m| m.state == MemberState::Alive);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !alive(&g1, "n2") {
            assert!(Instant::now() < deadline, "n1 and n2 never met");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // An outsider with another key tries to join through n1.
        let _outsider = start(id("n9", p3), vec![a.clone()], &[7u8; 32], &Metrics::new()).await;
        // And forges n2's death, sealed with the wrong key, and replayed with the
        // right key but an old timestamp.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forged = forged_death(&id("n9", p3), &a, &b);
        sock.send_to(&Sealer::new(&[7u8; 32], "t").seal(&forged, unix_ms()), a.gossip).await.unwrap();
        sock.send_to(&Sealer::new(&key, "t").seal(&forged, unix_ms() - 10 * super::super::seal::SKEW_MS_MAX), a.gossip)
            .await
            .unwrap();
        sock.send_to(b"not even a packet", a.gossip).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rejected = m1
            .snapshot()
            .iter()
            .filter(|m| m.name == "troupe_gossip_packets_rejected_total")
            .map(|m| m.value)
            .sum::<f64>();
        assert!(rejected >= 3.0, "rejected packets were not counted: {rejected}");
        let v = g1.view.read().clone();
        assert!(!v.members.contains_key("n9"), "an outsider joined: {v:?}");
        // Not down (a late ack on a loaded machine may make n2 briefly suspect, which
        // is not what this checks).
        assert!(
            v.members.get("n2").is_some_and(|m| m.state != MemberState::Down),
            "a forged death was believed: {v:?}"
        );
        // Control: the same forged packet sealed with the cluster key *is* believed,
        // so the test forges a real message and the seal is what stops it.
        sock.send_to(&Sealer::new(&key, "t").seal(&forged, unix_ms()), a.gossip).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while alive(&g1, "n2") {
            assert!(Instant::now() < deadline, "the control packet was not believed; the forgery test proves nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
