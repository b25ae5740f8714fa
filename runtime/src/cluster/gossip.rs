//! SWIM membership with foca, driven by troupe: foca is sans-IO, so this module owns
//! the UDP socket, the one ordered timer queue, packet sealing, chaos rules and the
//! local-health stretch of SWIM's timeouts. It publishes a membership [`View`] and
//! an event on every change.
//!
//! Identity = node name + gossip address + boot epoch (+ a bump foca uses to rejoin
//! after a false death). A restarted node has a new epoch and wins the name over its
//! old incarnation, so it rejoins as a new member.

use super::chaos::{ChaosRules, Verdict};
use super::health::LocalHealth;
use super::seal::Sealer;
use crate::config::MembershipTuning;
use crate::metrics::{Counter, Gauge, Metrics};
use bytes::{Buf, BufMut};
use foca::{AccumulatingRuntime, Config, Foca, Header, Member, OwnedNotification, PeriodicParams, State, Timer};
use parking_lot::RwLock;
use rand010::SeedableRng;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use troupe_wire::introspect::MemberState;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub gossip: SocketAddr,
    /// Boot epoch: ms since the Unix epoch when the node process started.
    pub epoch: u64,
    pub bump: u16,
}

impl foca::Identity for NodeId {
    type Addr = String;
    fn renew(&self) -> Option<Self> {
        Some(Self { bump: self.bump.wrapping_add(1), ..self.clone() })
    }
    fn addr(&self) -> String {
        self.name.clone()
    }
    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.epoch, self.bump) > (other.epoch, other.bump)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GossipCodecError {
    #[error("gossip encode: {0}")]
    Encode(String),
    #[error("gossip decode: {0}")]
    Decode(String),
    #[error("gossip packet full")]
    NoSpace,
}

/// foca's codec over bincode. Never writes partially: a value is encoded first and
/// copied only if it fits.
struct BinCodec;

impl BinCodec {
    fn put<T: Serialize>(v: &T, mut buf: impl BufMut) -> Result<(), GossipCodecError> {
        let bytes = troupe_wire::codec::encode(v).map_err(|e| GossipCodecError::Encode(e.to_string()))?;
        if buf.remaining_mut() < bytes.len() {
            return Err(GossipCodecError::NoSpace);
        }
        buf.put_slice(&bytes);
        Ok(())
    }
    fn get<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, GossipCodecError> {
        let (v, used) =
            troupe_wire::codec::decode_prefix::<T>(buf.chunk()).map_err(|e| GossipCodecError::Decode(e.to_string()))?;
        buf.advance(used);
        Ok(v)
    }
}

impl foca::Codec<NodeId> for BinCodec {
    type Error = GossipCodecError;
    fn encode_header(&mut self, header: &Header<NodeId>, buf: impl BufMut) -> Result<(), Self::Error> {
        Self::put(header, buf)
    }
    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeId>, Self::Error> {
        Self::get(buf)
    }
    fn encode_member(&mut self, member: &Member<NodeId>, buf: impl BufMut) -> Result<(), Self::Error> {
        Self::put(member, buf)
    }
    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeId>, Self::Error> {
        Self::get(buf)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViewMember {
    pub id: NodeId,
    pub state: MemberState,
    pub incarnation: u16,
}

/// Membership as this node sees it; `version` grows on every change.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub members: BTreeMap<String, ViewMember>,
    pub version: u64,
    /// foca reports us connected to at least one member.
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberEvent {
    pub name: String,
    pub epoch: u64,
    pub state: MemberState,
}

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
pub type MemberListener = Arc<dyn Fn(&MemberEvent) + Send + Sync>;

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

fn foca_config(t: &MembershipTuning, n: usize) -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(n.max(1) as u32).unwrap_or(NonZeroU32::MIN));
    c.probe_period = Duration::from_millis(t.probe_period_ms);
    c.probe_rtt = Duration::from_millis(t.probe_rtt_ms);
    c.num_indirect_probes = NonZeroUsize::new(t.indirect_probes as usize).unwrap_or(NonZeroUsize::MIN);
    c.suspect_to_down_after = Duration::from_millis(t.suspect_to_down_ms);
    c.remove_down_after = Some(Duration::from_millis(t.remove_down_after_ms));
    c.max_packet_size = NonZeroUsize::new(t.packet_bytes_max as usize).unwrap_or(NonZeroUsize::MIN);
    c.notify_down_members = true;
    c.max_transmissions = NonZeroU8::new(c.max_transmissions.get().max(6)).unwrap_or(NonZeroU8::MIN);
    c.periodic_gossip = Some(PeriodicParams {
        frequency: Duration::from_millis(t.gossip_period_ms),
        num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
    });
    c
}

impl Gossip {
    /// Binds the gossip socket and starts the SWIM driver.
    pub async fn start(
        cfg: GossipConfig,
        metrics: &Metrics,
        chaos: Arc<RwLock<ChaosRules>>,
    ) -> std::io::Result<Gossip> {
        let sock = UdpSocket::bind(cfg.me.gossip).await?;
        let view = Arc::new(RwLock::new(View::default()));
        {
            let mut v = view.write();
            v.members.insert(
                cfg.me.name.clone(),
                ViewMember { id: cfg.me.clone(), state: MemberState::Alive, incarnation: 0 },
            );
            v.version = 1;
        }
        let version = Arc::new(std::sync::atomic::AtomicU64::new(1));
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
            foca: Foca::new(
                cfg.me.clone(),
                foca_config(&cfg.tuning, cfg.cluster_size),
                rand010::rngs::SmallRng::seed_from_u64(rand::random()),
                BinCodec,
            ),
            rt: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            sock: Arc::new(sock),
            sealer: Arc::new(cfg.sealer),
            health: LocalHealth::new(cfg.tuning.local_health_max as u32, cfg.tuning.probe_rtt_ms),
            view: view.clone(),
            version: version.clone(),
            events: events.clone(),
            seeds: cfg.seeds,
            me: cfg.me,
            tuning: cfg.tuning,
            chaos,
            stats,
            suspect_since: BTreeMap::new(),
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
    foca: Foca<NodeId, BinCodec, rand010::rngs::SmallRng, foca::NoCustomBroadcast>,
    rt: AccumulatingRuntime<NodeId>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer<NodeId>)>>,
    timer_seq: u64,
    sock: Arc<UdpSocket>,
    sealer: Arc<Sealer>,
    health: LocalHealth,
    view: Arc<RwLock<View>>,
    version: Arc<std::sync::atomic::AtomicU64>,
    events: broadcast::Sender<MemberEvent>,
    seeds: Vec<NodeId>,
    me: NodeId,
    tuning: MembershipTuning,
    chaos: Arc<RwLock<ChaosRules>>,
    stats: Stats,
    /// When each member currently suspected was first seen suspected.
    suspect_since: BTreeMap<String, Instant>,
    listener: Option<MemberListener>,
}

impl Driver {
    async fn run(mut self, mut cmd: mpsc::Receiver<Cmd>) {
        let mut buf = vec![0u8; 65_536];
        let mut join_tick = tokio::time::interval(Duration::from_millis(self.tuning.join_retry_ms));
        let mut period_tick = tokio::time::interval(Duration::from_millis(self.tuning.probe_period_ms));
        loop {
            let next_timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
            let sleep = tokio::time::sleep_until(
                next_timer.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into(),
            );
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, _from)) = r {
                        self.on_packet(&buf[..n]);
                    }
                }
                _ = sleep => self.fire_due_timers(),
                _ = join_tick.tick() => {
                    // Retry the first announce until foca is connected; keep
                    // re-announcing to seeds while we know no other member.
                    let alone = self.view.read().members.values().filter(|m| m.state != MemberState::Down).count() <= 1;
                    if alone {
                        for s in self.seeds.clone() {
                            if s.name != self.me.name {
                                let _ = self.foca.announce(s, &mut self.rt);
                            }
                        }
                    }
                }
                _ = period_tick.tick() => {
                    self.health.on_period();
                    self.stats.local_health.set(self.health.score() as f64);
                    self.resolve_stale_suspicions();
                }
                c = cmd.recv() => match c {
                    Some(Cmd::Leave(done)) => {
                        let _ = self.foca.leave_cluster(&mut self.rt);
                        self.drain();
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
            self.drain();
        }
    }

    fn on_packet(&mut self, packet: &[u8]) {
        let payload = match self.sealer.open(packet, unix_ms()) {
            Ok(p) => p,
            Err(e) => {
                self.stats.rejected.inc();
                tracing::debug!(error = %e, "gossip packet rejected");
                return;
            }
        };
        // Chaos applies to what we hear from a node too, so a partition is symmetric
        // even if only one side was told.
        if let Ok((h, _)) = troupe_wire::codec::decode_prefix::<Header<NodeId>>(&payload) {
            let chaos = self.chaos.read();
            if !chaos.is_empty() && chaos.verdict(&h.src.name, Instant::now(), rand::random()) == Verdict::Drop {
                self.stats.dropped_chaos.inc();
                return;
            }
        }
        self.stats.packets_in.inc();
        if let Err(e) = self.foca.handle_data(&payload, &mut self.rt) {
            tracing::debug!(error = %e, "gossip packet not handled");
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, _, timer))) = self.timers.pop() else { break };
            self.health.on_timer(0, now.saturating_duration_since(due).as_millis() as u64);
            tracing::trace!(?timer, "gossip timer fired");
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                tracing::debug!(error = %e, "gossip timer not handled");
            }
        }
    }

    /// Sends what foca produced, schedules its timers and publishes membership changes.
    fn drain(&mut self) {
        while let Some((dst, data)) = self.rt.to_send() {
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
        while let Some((after, timer)) = self.rt.to_schedule() {
            // Local health: a slow node waits longer before it probes again, before
            // it gives up on an ack, and before it declares a suspect down.
            let after = match timer {
                Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } | Timer::ChangeSuspectToDown { .. } => {
                    self.health.stretch(after)
                }
                _ => after,
            };
            tracing::trace!(?timer, ?after, "gossip timer scheduled");
            self.timer_seq += 1;
            self.timers.push(Reverse((Instant::now() + after, self.timer_seq, timer)));
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::Active => {
                    self.view.write().active = true;
                    tracing::info!(node = %self.me.name, "joined the cluster");
                }
                OwnedNotification::Idle => self.view.write().active = false,
                OwnedNotification::Defunct => {
                    tracing::warn!(node = %self.me.name, "declared down by the cluster; rejoining");
                }
                _ => {}
            }
        }
        // Suspicion and incarnation changes come without a notification: rebuild
        // the (small) view after every step.
        self.refresh_view();
    }

    /// foca invalidates its pending timers when this node rejoins (its timer token
    /// changes), which can strand a suspicion forever: nobody refutes it and no
    /// timeout declares the member down. A suspicion older than the suspicion timeout
    /// plus slack is resolved here as foca would have: the member is declared down,
    /// and if it is in fact alive it learns so and rejoins with a new identity.
    fn resolve_stale_suspicions(&mut self) {
        let limit = self.health.stretch(Duration::from_millis(self.tuning.suspect_to_down_ms))
            + Duration::from_millis(2 * self.tuning.probe_period_ms);
        let now = Instant::now();
        let stale: Vec<Member<NodeId>> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .filter(|m| self.suspect_since.get(&m.id().name).is_some_and(|t| now.duration_since(*t) > limit))
            .map(|m| Member::new(m.id().clone(), m.incarnation(), State::Down))
            .collect();
        if stale.is_empty() {
            return;
        }
        for m in &stale {
            tracing::warn!(member = %m.id().name, "suspicion outlived its timeout; declaring the member down");
            self.stats.stale_suspicions.inc();
        }
        if let Err(e) = self.foca.apply_many(stale.into_iter(), true, &mut self.rt) {
            tracing::debug!(error = %e, "could not resolve stale suspicions");
        }
    }

    /// Rebuilds the view from foca's membership table and emits the differences.
    fn refresh_view(&mut self) {
        let mut fresh: BTreeMap<String, ViewMember> = BTreeMap::new();
        for m in self.foca.iter_membership_state() {
            let state = match m.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down => MemberState::Down,
            };
            let id = m.id().clone();
            // Keep the newest incarnation of a name.
            let newer = fresh.get(&id.name).is_none_or(|cur| (id.epoch, id.bump) > (cur.id.epoch, cur.id.bump));
            if newer {
                fresh.insert(id.name.clone(), ViewMember { id, state, incarnation: m.incarnation() });
            }
        }
        let me = self.foca.identity().clone();
        fresh.insert(me.name.clone(), ViewMember { id: me, state: MemberState::Alive, incarnation: 0 });
        let now = Instant::now();
        self.suspect_since.retain(|name, _| fresh.get(name).is_some_and(|m| m.state == MemberState::Suspect));
        for (name, m) in &fresh {
            if m.state == MemberState::Suspect {
                self.suspect_since.entry(name.clone()).or_insert(now);
            }
        }
        let mut v = self.view.write();
        // Members foca forgot (removed after remove_down_after) stay listed as down.
        for (name, old) in &v.members {
            if !fresh.contains_key(name) {
                fresh.insert(name.clone(), ViewMember { state: MemberState::Down, ..old.clone() });
            }
        }
        let mut events = Vec::new();
        for (name, m) in &fresh {
            let before = v.members.get(name);
            // A suspect that comes back alive with a higher incarnation refuted the
            // suspicion: if we were among the accusers, our own view was wrong.
            if before.is_some_and(|b| {
                b.state == MemberState::Suspect && m.state == MemberState::Alive && m.incarnation > b.incarnation
            }) {
                self.health.on_refuted();
                self.stats.refuted.inc();
            }
            if before.is_none_or(|b| b.state != m.state || b.id.epoch != m.id.epoch) {
                events.push(MemberEvent { name: name.clone(), epoch: m.id.epoch, state: m.state });
            }
        }
        if !events.is_empty() || v.members.values().zip(fresh.values()).any(|(a, b)| a.incarnation != b.incarnation) {
            v.members = fresh;
            v.version += 1;
            self.version.store(v.version, std::sync::atomic::Ordering::Release);
        }
        drop(v);
        for e in events {
            if e.name != self.me.name {
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
    use foca::{Codec, Message};

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
