//! SWIM membership: foca plus troupe's glue — one ordered timer queue, join retries,
//! Lifeguard-style local health ([`crate::health`]), the watchdog for suspicions foca
//! strands on rejoin, and the membership [`View`] with an event per change.
//!
//! Sans-IO, like foca itself: no socket, no clock, no randomness of its own. The shell
//! (the node's gossip driver, or the simulator) calls [`Membership::handle`] with the
//! current time and an [`Input`], sends the packets of the returned [`Effects`], and
//! calls again with [`Input::Tick`] at [`Membership::next_wake`]. The same seed, inputs
//! and times give the same outputs.
//!
//! Identity = node name + gossip address + boot epoch (+ a bump foca uses to rejoin
//! after a false death). A restarted node has a new epoch and wins the name over its
//! old incarnation, so it rejoins as a new member.
//!
//! Invariants:
//! - Timers fire in due order, one queue; a timer that fires late counts against this
//!   node's local health, which stretches probe and suspicion timeouts.
//! - The view keeps one entry per name (the newest incarnation); a member foca forgot
//!   stays listed as down. Every change of a member's state or epoch is one event.
//! - A suspicion older than the suspicion timeout (stretched) plus two probe periods is
//!   resolved as down, as foca would have.

use crate::health::LocalHealth;
use bytes::{Buf, BufMut};
use foca::{AccumulatingRuntime, Config, Foca, Header, Member, OwnedNotification, PeriodicParams, State, Timer};
use rand010::SeedableRng;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};
use troupe_wire::introspect::MemberState;

/// How often a node that is not alone announces to seeds it does not see alive: ten
/// join retries, at least a second (a time, not a count, so a small `join_retry_ms`
/// cannot turn it into a flood).
fn seed_retry_every(t: &MembershipTuning) -> Duration {
    Duration::from_millis((10 * t.join_retry_ms).max(1000))
}

/// SWIM settings of a cluster (`[membership]` of the cluster file).
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipTuning {
    pub probe_period_ms: u64,
    pub probe_rtt_ms: u64,
    pub suspect_to_down_ms: u64,
    pub remove_down_after_ms: u64,
    pub indirect_probes: u64,
    /// Largest gossip datagram, bytes. The shell gives foca what is left after the
    /// seal, the node's certificate and its signature (about 490 bytes).
    pub packet_bytes_max: u64,
    pub gossip_period_ms: u64,
    pub join_retry_ms: u64,
    /// Lifeguard-style local health: at most this many extra probe periods of
    /// slack when this node itself looks slow.
    pub local_health_max: u64,
}

impl Default for MembershipTuning {
    fn default() -> Self {
        Self {
            probe_period_ms: 1000,
            probe_rtt_ms: 500,
            suspect_to_down_ms: 3000,
            remove_down_after_ms: 60_000,
            indirect_probes: 3,
            packet_bytes_max: 1400,
            gossip_period_ms: 200,
            join_retry_ms: 500,
            local_health_max: 8,
        }
    }
}

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
#[derive(Debug, Clone, Copy, Default)]
pub struct BinCodec;

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

/// The sender named in a gossip payload's header (for chaos rules in the shell).
pub fn packet_sender(payload: &[u8]) -> Option<String> {
    troupe_wire::codec::decode_prefix::<Header<NodeId>>(payload).ok().map(|(h, _)| h.src.name)
}

/// Every member identity a gossip payload names, as foca will read them.
#[derive(Debug, Clone, PartialEq)]
pub struct PacketIds {
    /// Who the header says sent it.
    pub src: NodeId,
    /// Whom the header says it is for.
    pub dst: NodeId,
    /// The probe's target or origin (indirect probes) and every piggybacked member
    /// update.
    pub others: Vec<NodeId>,
}

/// The identities in a gossip payload (foca's layout: the header, then a big-endian
/// `u16` count of member updates and the updates); `None` when it does not decode,
/// which foca would refuse too.
pub fn packet_identities(payload: &[u8]) -> Option<PacketIds> {
    use troupe_wire::codec::decode_prefix;
    let (header, used) = decode_prefix::<Header<NodeId>>(payload).ok()?;
    let mut others = Vec::new();
    match &header.message {
        foca::Message::PingReq { target, .. } | foca::Message::IndirectAck { target, .. } => {
            others.push(target.clone())
        }
        foca::Message::IndirectPing { origin, .. } | foca::Message::ForwardedAck { origin, .. } => {
            others.push(origin.clone())
        }
        _ => {}
    }
    let mut rest = &payload[used..];
    if rest.len() >= 2 && header.message != foca::Message::Broadcast {
        let n = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        for _ in 0..n {
            let (m, used) = decode_prefix::<foca::Member<NodeId>>(rest).ok()?;
            others.push(m.id().clone());
            rest = &rest[used..];
        }
    }
    Some(PacketIds { src: header.src, dst: header.dst, others })
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViewMember {
    pub id: NodeId,
    pub state: MemberState,
    pub incarnation: u16,
}

/// Membership as this node sees it; `version` grows on every change.
#[derive(Debug, Clone, Default, PartialEq)]
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

/// What the shell feeds the core.
#[derive(Debug)]
pub enum Input<'a> {
    /// A gossip payload the shell received, opened and admitted (seal, chaos).
    Packet(&'a [u8]),
    /// Time passed: run whatever is due (timers, join retries, the probe-period tick).
    Tick,
    /// Announce our departure, so peers mark us down at once instead of suspecting.
    Leave,
}

/// What the core asks of the shell after one input.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Gossip payloads to seal and send.
    pub send: Vec<(NodeId, Vec<u8>)>,
    /// Membership changes, in order (the view already reflects them).
    pub events: Vec<MemberEvent>,
    /// foca declared this node down and it is rejoining with a new identity.
    pub defunct: bool,
    /// Suspicions this node held that the member refuted.
    pub refuted: u32,
    /// Members whose stranded suspicion the watchdog resolved as down.
    pub stale_resolved: Vec<String>,
    /// Packets or timers foca could not handle (malformed, stale): a count.
    pub errors: u32,
}

pub struct Membership {
    foca: Foca<NodeId, BinCodec, rand010::rngs::SmallRng, foca::NoCustomBroadcast>,
    rt: AccumulatingRuntime<NodeId>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer<NodeId>)>>,
    timer_seq: u64,
    health: LocalHealth,
    view: View,
    seeds: Vec<NodeId>,
    me: NodeId,
    tuning: MembershipTuning,
    /// When each member currently suspected was first seen suspected.
    suspect_since: BTreeMap<String, Instant>,
    next_join: Instant,
    next_period: Instant,
    next_seed_retry: Instant,
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
    // Heal partitions: keep talking to members held down. One that is alive learns it
    // was declared down and rejoins with a new identity (found by the simulator: after
    // a 2 | 2 split neither side was alone, so neither re-announced, and the cluster
    // stayed split for good).
    // And ask a random member for its roster now and then: a member this node forgot
    // (held down past `remove_down_after_ms`) while others kept it alive is news to
    // nobody, so no gossip would ever bring it back.
    c.periodic_announce = Some(PeriodicParams {
        frequency: Duration::from_millis(t.probe_period_ms * 10),
        num_members: NonZeroUsize::MIN,
    });
    c.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: Duration::from_millis(t.probe_period_ms * 3),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    c
}

impl Membership {
    /// A member `me` of a cluster of `cluster_size` nodes that will announce itself to
    /// `seeds`; `rng_seed` drives every random choice SWIM makes (whom to probe).
    pub fn new(
        me: NodeId,
        seeds: Vec<NodeId>,
        tuning: MembershipTuning,
        cluster_size: usize,
        rng_seed: u64,
        now: Instant,
    ) -> Self {
        let mut view = View::default();
        view.members.insert(me.name.clone(), ViewMember { id: me.clone(), state: MemberState::Alive, incarnation: 0 });
        view.version = 1;
        Membership {
            foca: Foca::new(
                me.clone(),
                foca_config(&tuning, cluster_size),
                rand010::rngs::SmallRng::seed_from_u64(rng_seed),
                BinCodec,
            ),
            rt: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            health: LocalHealth::new(tuning.local_health_max as u32, tuning.probe_rtt_ms),
            view,
            seeds,
            me,
            // The first join attempt is due at once; the first period one period in.
            next_join: now,
            next_period: now + Duration::from_millis(tuning.probe_period_ms),
            next_seed_retry: now + seed_retry_every(&tuning),
            tuning,
            suspect_since: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn health_score(&self) -> u32 {
        self.health.score()
    }

    /// When the shell must call again with [`Input::Tick`] at the latest.
    pub fn next_wake(&self) -> Instant {
        let timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let periodic = self.next_join.min(self.next_period);
        timer.map_or(periodic, |t| t.min(periodic))
    }

    /// Handles one input at time `now` (never earlier than a previous call's).
    pub fn handle(&mut self, now: Instant, input: Input<'_>) -> Effects {
        let mut fx = Effects::default();
        match input {
            Input::Packet(payload) => {
                if let Err(e) = self.foca.handle_data(payload, &mut self.rt) {
                    fx.errors += 1;
                    tracing::debug!(error = %e, "gossip packet not handled");
                }
            }
            Input::Tick => self.tick(now, &mut fx),
            Input::Leave => {
                let _ = self.foca.leave_cluster(&mut self.rt);
            }
        }
        self.drain(now, &mut fx);
        fx
    }

    fn tick(&mut self, now: Instant, fx: &mut Effects) {
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, _, timer))) = self.timers.pop() else { break };
            self.health.on_timer(0, now.saturating_duration_since(due).as_millis() as u64);
            tracing::trace!(?timer, "gossip timer fired");
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                fx.errors += 1;
                tracing::debug!(error = %e, "gossip timer not handled");
            }
        }
        if now >= self.next_join {
            self.next_join = now + Duration::from_millis(self.tuning.join_retry_ms);
            // Retry the first announce until foca is connected; keep re-announcing to
            // seeds while we know no other live member.
            let alone = self.view.members.values().filter(|m| m.state != MemberState::Down).count() <= 1;
            // Seeds we do not see alive get an announce now and then even when we are
            // not alone: after a partition longer than `remove_down_after_ms` both
            // sides have forgotten each other, and foca's announces to down members no
            // longer reach the other side.
            let lost_seeds = now >= self.next_seed_retry;
            if lost_seeds {
                self.next_seed_retry = now + seed_retry_every(&self.tuning);
            }
            for s in self.seeds.clone() {
                let seen_alive = self.view.members.get(&s.name).is_some_and(|m| m.state == MemberState::Alive);
                if s.name != self.me.name && (alone || (lost_seeds && !seen_alive)) {
                    let _ = self.foca.announce(s, &mut self.rt);
                }
            }
            // Alone, foca stops its own announces to down members (it only runs them
            // while connected): if every seed is dead, the survivors of a partition
            // would never find each other again (found by the simulator). So a lone
            // node also announces to every member it knows of.
            if alone {
                let known: Vec<NodeId> = self
                    .view
                    .members
                    .values()
                    .filter(|m| m.id.name != self.me.name && !self.seeds.iter().any(|s| s.name == m.id.name))
                    .map(|m| m.id.clone())
                    .collect();
                for id in known {
                    let _ = self.foca.announce(id, &mut self.rt);
                }
            }
        }
        if now >= self.next_period {
            self.next_period = now + Duration::from_millis(self.tuning.probe_period_ms);
            // foca returns to probing only when a membership update arrives after it
            // changed identity (a rejoin resets it to "disconnected" with its members
            // still listed); with nothing new to hear it never probed again, and a
            // peer that held it down stayed wrong (found by the simulator). Applying
            // no updates re-runs foca's connection check.
            if let Err(e) = self.foca.apply_many(std::iter::empty(), false, &mut self.rt) {
                fx.errors += 1;
                tracing::debug!(error = %e, "connection check failed");
            }
            self.health.on_period();
            self.resolve_stale_suspicions(now, fx);
        }
    }

    /// Collects what foca produced: packets to send, timers to schedule (stretched by
    /// local health), notifications; then rebuilds the view.
    fn drain(&mut self, now: Instant, fx: &mut Effects) {
        while let Some((dst, data)) = self.rt.to_send() {
            fx.send.push((dst, data.to_vec()));
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
            self.timers.push(Reverse((now + after, self.timer_seq, timer)));
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::Active => {
                    if !self.view.active {
                        tracing::info!(node = %self.me.name, "joined the cluster");
                    }
                    self.view.active = true;
                }
                OwnedNotification::Idle => self.view.active = false,
                OwnedNotification::Defunct => {
                    tracing::warn!(node = %self.me.name, "declared down by the cluster; rejoining");
                    fx.defunct = true;
                }
                _ => {}
            }
        }
        // Suspicion and incarnation changes come without a notification: rebuild the
        // (small) view after every step.
        self.refresh_view(now, fx);
    }

    /// foca invalidates its pending timers when this node rejoins (its timer token
    /// changes), which can strand a suspicion forever: nobody refutes it and no
    /// timeout declares the member down. A suspicion older than the suspicion timeout
    /// plus slack is resolved here as foca would have: the member is declared down,
    /// and if it is in fact alive it learns so and rejoins with a new identity.
    fn resolve_stale_suspicions(&mut self, now: Instant, fx: &mut Effects) {
        let limit = self.health.stretch(Duration::from_millis(self.tuning.suspect_to_down_ms))
            + Duration::from_millis(2 * self.tuning.probe_period_ms);
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
            fx.stale_resolved.push(m.id().name.clone());
        }
        if let Err(e) = self.foca.apply_many(stale.into_iter(), true, &mut self.rt) {
            fx.errors += 1;
            tracing::debug!(error = %e, "could not resolve stale suspicions");
        }
    }

    /// Rebuilds the view from foca's membership table and records the differences.
    fn refresh_view(&mut self, now: Instant, fx: &mut Effects) {
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
        self.suspect_since.retain(|name, _| fresh.get(name).is_some_and(|m| m.state == MemberState::Suspect));
        for (name, m) in &fresh {
            if m.state == MemberState::Suspect {
                self.suspect_since.entry(name.clone()).or_insert(now);
            }
        }
        // Members foca forgot (removed after remove_down_after) stay listed as down.
        for (name, old) in &self.view.members {
            if !fresh.contains_key(name) {
                fresh.insert(name.clone(), ViewMember { state: MemberState::Down, ..old.clone() });
            }
        }
        let mut events = Vec::new();
        for (name, m) in &fresh {
            let before = self.view.members.get(name);
            // A suspect that comes back alive with a higher incarnation refuted the
            // suspicion: if we were among the accusers, our own view was wrong.
            if before.is_some_and(|b| {
                b.state == MemberState::Suspect && m.state == MemberState::Alive && m.incarnation > b.incarnation
            }) {
                self.health.on_refuted();
                fx.refuted += 1;
            }
            if before.is_none_or(|b| b.state != m.state || b.id.epoch != m.id.epoch) {
                events.push(MemberEvent { name: name.clone(), epoch: m.id.epoch, state: m.state });
            }
        }
        let incarnations_moved = self.view.members.len() != fresh.len()
            || self.view.members.values().zip(fresh.values()).any(|(a, b)| a.incarnation != b.incarnation);
        if !events.is_empty() || incarnations_moved {
            self.view.members = fresh;
            self.view.version += 1;
        }
        fx.events.extend(events);
    }
}
