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
use troupe_core::membership::{Effects, Input, Membership, packet_identities};
pub(crate) use troupe_core::membership::{MemberEvent, MembershipTuning, NodeId, View};
use troupe_wire::introspect::MemberState;

pub struct GossipConfig {
    pub me: NodeId,
    /// Every node of the cluster file and its gossip address: per-member metrics, and
    /// the only identities a packet may name.
    pub members: Vec<(String, std::net::SocketAddr)>,
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
        // `packet_bytes_max` is the whole datagram: foca gets what the seal, the
        // certificate and the signature leave.
        let mut tuning = cfg.tuning.clone();
        let overhead = cfg.sealer.identity().overhead() as u64;
        if tuning.packet_bytes_max < overhead + 256 {
            return Err(std::io::Error::other(format!(
                "[membership] packet_bytes_max = {} leaves {} bytes for SWIM after the seal, certificate and signature ({overhead} bytes); raise it to at least {}",
                tuning.packet_bytes_max,
                tuning.packet_bytes_max.saturating_sub(overhead),
                overhead + 256
            )));
        }
        tuning.packet_bytes_max -= overhead;
        let sock = UdpSocket::bind(cfg.me.gossip).await?;
        let core = Membership::new(
            cfg.me.clone(),
            cfg.seeds.clone(),
            tuning,
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
                "Gossip packets dropped because they were not sealed with the cluster key, not signed by the node they speak for, stale, replayed or malformed.",
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
                .map(|(m, _)| m)
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
            roster: cfg.members.into_iter().collect(),
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
    /// The cluster file's nodes and their gossip addresses.
    roster: BTreeMap<String, std::net::SocketAddr>,
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
        let opened = match self.sealer.open(packet, unix_ms()) {
            Ok(p) => p,
            Err(e) => {
                self.stats.rejected.inc();
                tracing::debug!(error = %e, "gossip packet rejected");
                return None;
            }
        };
        if let Err(why) = self.check_identities(&opened) {
            self.stats.rejected.inc();
            tracing::warn!(signer = %opened.sender, why = %why, "gossip packet rejected");
            return None;
        }
        let src = Some(opened.sender.clone());
        let payload = opened.payload;
        // Chaos applies to what we hear from a node too, so a partition is symmetric
        // even if only one side was told.
        if let Some(src) = src {
            let chaos = self.chaos.read();
            if !chaos.is_empty() && chaos.verdict(&src, Instant::now(), rand::random()) == Verdict::Drop {
                self.stats.dropped_chaos.inc();
                return None;
            }
        }
        self.stats.packets_in.inc();
        Some(payload)
    }

    /// The identities a signed packet names must be ones its signer may name: the
    /// header speaks for the signer itself (a node cannot probe, refute or leave as
    /// another), is meant for this node (a recorded packet is not replayed to a third
    /// node), and every member it names is a node of the cluster file at its own
    /// gossip address, with a boot epoch that is not in the future (a member cannot
    /// invent a newer incarnation of another node that would lock the real one out).
    fn check_identities(&self, opened: &super::seal::Opened) -> Result<(), String> {
        let ids = packet_identities(&opened.payload).ok_or("the SWIM payload does not decode")?;
        if ids.src.name != opened.sender {
            return Err(format!("signed by {} but speaks for {}", opened.sender, ids.src.name));
        }
        if ids.dst.name != self.me {
            return Err(format!("meant for {}, not this node", ids.dst.name));
        }
        let latest = unix_ms() + super::seal::SKEW_MS_MAX;
        for id in std::iter::once(&ids.src).chain(std::iter::once(&ids.dst)).chain(&ids.others) {
            match self.roster.get(&id.name) {
                None => return Err(format!("names {}, which is not in the cluster file", id.name)),
                Some(addr) if *addr != id.gossip => {
                    return Err(format!("names {} at {}, not its address {addr}", id.name, id.gossip));
                }
                Some(_) if id.epoch > latest => {
                    return Err(format!("names {} with a boot epoch in the future ({})", id.name, id.epoch));
                }
                Some(_) => {}
            }
        }
        Ok(())
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
    use crate::cluster::seal::testing;
    use crate::cluster::tls::TlsDir;
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

    async fn start(
        me: NodeId,
        seeds: Vec<NodeId>,
        key: &[u8],
        dir: &TlsDir,
        metrics: &Metrics,
        roster: &[&NodeId],
    ) -> Gossip {
        let members = roster.iter().map(|n| (n.name.clone(), n.gossip)).collect();
        let identity = testing::identity(dir, &me.name);
        let cfg = GossipConfig {
            me,
            members,
            seeds,
            tuning: tuning(),
            cluster_size: 2,
            sealer: Sealer::new(key, "t", identity),
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
    async fn outsiders_cannot_join_or_forge_a_death_and_members_cannot_speak_for_others() {
        let key = [42u8; 32];
        let dir = testing::tls_dir("t", &["n1", "n2", "n9"]);
        let foreign = testing::tls_dir("t", &["n9"]);
        let (p1, p2, p3) = (free_udp(), free_udp(), free_udp());
        let (a, b, n9) = (id("n1", p1), id("n2", p2), id("n9", p3));
        let roster = [&a, &b, &n9];
        let m1 = Metrics::new();
        let g1 = start(a.clone(), vec![b.clone()], &key, &dir, &m1, &roster).await;
        let _g2 = start(b.clone(), vec![a.clone()], &key, &dir, &Metrics::new(), &roster).await;
        let alive = |g: &Gossip, n: &str| g.view.read().members.get(n).is_some_and(|m| m.state == MemberState::Alive);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !alive(&g1, "n2") {
            assert!(Instant::now() < deadline, "n1 and n2 never met");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // An outsider with another key and another CA tries to join through n1.
        let _outsider = start(n9.clone(), vec![a.clone()], &[7u8; 32], &foreign, &Metrics::new(), &roster).await;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forged = forged_death(&n9, &a, &b);
        let seal = |k: &[u8], d: &TlsDir| Sealer::new(k, "t", testing::identity(d, "n9"));
        // n2's death: sealed with the wrong key; with the right key but an old stamp;
        // with the right key but signed by a node certificate of another CA.
        sock.send_to(&seal(&[7u8; 32], &dir).seal(&forged, unix_ms()), a.gossip).await.unwrap();
        sock.send_to(&seal(&key, &dir).seal(&forged, unix_ms() - 10 * super::super::seal::SKEW_MS_MAX), a.gossip)
            .await
            .unwrap();
        sock.send_to(&seal(&key, &foreign).seal(&forged, unix_ms()), a.gossip).await.unwrap();
        // A member of the cluster (n9's real certificate and the cluster key) speaking
        // for n2: a forged leave of n2, in n2's name.
        let impersonated = forged_death(&b, &a, &b);
        sock.send_to(&seal(&key, &dir).seal(&impersonated, unix_ms()), a.gossip).await.unwrap();
        // n9 in its own name, but: a packet meant for n2 replayed to n1; n2 at an
        // address that is not its own; an incarnation of n2 from the future (one that
        // would win over the real n2 until it restarted).
        sock.send_to(&seal(&key, &dir).seal(&forged_death(&n9, &b, &b), unix_ms()), a.gossip).await.unwrap();
        let elsewhere = NodeId { gossip: ([127, 0, 0, 1], 9).into(), ..b.clone() };
        sock.send_to(&seal(&key, &dir).seal(&forged_death(&n9, &a, &elsewhere), unix_ms()), a.gossip).await.unwrap();
        let future = NodeId { epoch: u64::MAX, ..b.clone() };
        sock.send_to(&seal(&key, &dir).seal(&forged_death(&n9, &a, &future), unix_ms()), a.gossip).await.unwrap();
        sock.send_to(b"not even a packet", a.gossip).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rejected = m1
            .snapshot()
            .iter()
            .filter(|m| m.name == "troupe_gossip_packets_rejected_total")
            .map(|m| m.value)
            .sum::<f64>();
        assert!(rejected >= 8.0, "rejected packets were not counted: {rejected}");
        let v = g1.view.read().clone();
        assert!(!v.members.contains_key("n9"), "an outsider joined: {v:?}");
        // Not down (a late ack on a loaded machine may make n2 briefly suspect, which
        // is not what this checks).
        assert!(
            v.members.get("n2").is_some_and(|m| m.state != MemberState::Down),
            "a forged death was believed: {v:?}"
        );
        // Control: the same rumour signed by the real n9 in its own name, sealed with
        // the cluster key, *is* believed (SWIM lets a member report another's death;
        // n2 would refute it), so the test forges a real message and the seal and
        // the signature are what stop the others.
        sock.send_to(&seal(&key, &dir).seal(&forged, unix_ms()), a.gossip).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while alive(&g1, "n2") {
            assert!(Instant::now() < deadline, "the control packet was not believed; the forgery test proves nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = (std::fs::remove_dir_all(&dir.0), std::fs::remove_dir_all(&foreign.0));
    }

    /// `packet_bytes_max` is the whole datagram; one too small for the certificate and
    /// signature is refused at start with the size it needs.
    #[tokio::test]
    async fn a_packet_size_without_room_for_the_signature_is_refused() {
        let dir = testing::tls_dir("t", &["n1"]);
        let cfg = GossipConfig {
            me: id("n1", free_udp()),
            members: vec![("n1".into(), ([127, 0, 0, 1], 1).into())],
            seeds: vec![],
            tuning: MembershipTuning { packet_bytes_max: 600, ..tuning() },
            cluster_size: 1,
            sealer: Sealer::new(&[1; 32], "t", testing::identity(&dir, "n1")),
            listener: None,
        };
        let Err(e) = Gossip::start(cfg, &Metrics::new(), Arc::new(RwLock::new(ChaosRules::default()))).await else {
            panic!("a 600-byte packet limit was accepted")
        };
        assert!(e.to_string().contains("packet_bytes_max = 600 leaves"), "{e}");
        let _ = std::fs::remove_dir_all(&dir.0);
    }
}
