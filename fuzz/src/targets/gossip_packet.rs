//! Gossip decoding and handling: the SWIM membership core (foca plus our local health,
//! watchdog and view) fed packets a member of the cluster could send — after the seal
//! is opened, so this is what a compromised or buggy node can reach — interleaved with
//! the passing of time. It must never panic, every packet it asks to send fits
//! `packet_bytes_max`, and it always lists itself in its view.
//!
//! Input: records `[op][len: u16 LE][len bytes]`; op 0 = a packet, 1 = time passes by
//! `len` ms, 2 = leave.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use troupe_core::membership::{Input, Membership, MembershipTuning, NodeId};

fn node(i: u8) -> NodeId {
    NodeId {
        name: format!("n{i}"),
        gossip: SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 7000 + u16::from(i))),
        epoch: 1_000 + u64::from(i),
        bump: 0,
    }
}

fn member(i: u8, now: Instant) -> Membership {
    let seeds = (1..=3).map(node).collect();
    Membership::new(node(i), seeds, MembershipTuning::default(), 3, u64::from(i), now)
}

pub fn run(data: &[u8]) {
    let tuning = MembershipTuning::default();
    let mut now = Instant::now();
    let mut m = member(1, now);
    let mut rest = data;
    while let [op, lo, hi, tail @ ..] = rest {
        let len = (u16::from_le_bytes([*lo, *hi]) as usize).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let fx = match op % 3 {
            0 => m.handle(now, Input::Packet(body)),
            1 => {
                now += Duration::from_millis(len as u64);
                m.handle(now, Input::Tick)
            }
            _ => m.handle(now, Input::Leave),
        };
        for (_, packet) in &fx.send {
            assert!(packet.len() as u64 <= tuning.packet_bytes_max, "a {} byte packet", packet.len());
        }
        assert!(m.view().members.contains_key("n1"), "the view lost its own node");
    }
}

/// Real packets to n1 from a 3-node cluster forming, suspecting and healing: the seed
/// corpus (each seed is one record, op 0).
pub fn seed_packets() -> Vec<Vec<u8>> {
    let start = Instant::now();
    let mut ms: Vec<Membership> = (1..=3).map(|i| member(i, start)).collect();
    let mut inbox: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut to_n1 = Vec::new();
    for step in 0..400u64 {
        let now = start + Duration::from_millis(step * 50);
        let mut out = Vec::new();
        for (i, m) in ms.iter_mut().enumerate() {
            // n3 goes quiet for a while, so suspicion and refutation packets appear.
            if i == 2 && (100..200).contains(&step) {
                continue;
            }
            out.push(m.handle(now, Input::Tick).send);
        }
        for (dst, p) in inbox.drain(..) {
            if dst == 2 && (100..200).contains(&step) {
                continue;
            }
            out.push(ms[dst].handle(now, Input::Packet(&p)).send);
        }
        for (to, p) in out.into_iter().flatten() {
            let dst = ms.iter().position(|m| m.me().name == to.name).unwrap_or(0);
            if dst == 0 {
                to_n1.push(p.clone());
            }
            inbox.push((dst, p));
        }
    }
    to_n1.sort();
    to_n1.dedup();
    to_n1
        .into_iter()
        .map(|p| {
            let mut rec = vec![0u8];
            rec.extend_from_slice(&(p.len() as u16).to_le_bytes());
            rec.extend_from_slice(&p);
            rec
        })
        .collect()
}
