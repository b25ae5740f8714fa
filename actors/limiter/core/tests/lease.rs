//! Quota leasing: the cluster never admits more than the global limit per owner window, with
//! message delays, clock offsets, duplicated messages, node deaths and false death reports.

use std::collections::BTreeMap;

use proptest::prelude::*;
use troupe_limiter::{LeaseConfig, LeaseError, LeaseGrant, LeaseRequest, QuotaConfig, QuotaLease, QuotaOwner};

const W: u64 = 1_000_000;

fn owner(limit: u64, slice_min: u64, slice_max: u64) -> QuotaOwner {
    QuotaOwner::new(QuotaConfig { limit, window_ns: W, slice_min, slice_max, nodes_max: 16 }).expect("config")
}

fn lease(node: u64, low_watermark: u64) -> QuotaLease {
    QuotaLease::new(LeaseConfig {
        node,
        low_watermark,
        horizon_ns: W / 4,
        request_timeout_ns: W / 2,
        want_max: 1_000,
        drift_margin_ns: 0,
    })
}

#[derive(Debug, Clone)]
enum Op {
    Traffic { node: usize, cost: u64 },
    Advance(u64),
    Kill { node: usize, zombie: bool },
    Release { node: usize },
    Duplicate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0usize..4, 1u64..4).prop_map(|(node, cost)| Op::Traffic { node, cost }),
        4 => (0u64..W / 20).prop_map(Op::Advance),
        1 => (0usize..4, any::<bool>()).prop_map(|(node, zombie)| Op::Kill { node, zombie }),
        1 => (0usize..4).prop_map(|node| Op::Release { node }),
        1 => Just(Op::Duplicate),
    ]
}

enum Msg {
    ToOwner(LeaseRequest),
    ToNode(usize, LeaseGrant),
}

struct Node {
    lease: QuotaLease,
    offset_ns: u64,
    /// Process is gone (crashed): takes no traffic, its messages are lost.
    crashed: bool,
    /// Membership said it died (true for a crash, and for a zombie false positive).
    reported: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn cluster_never_exceeds_the_global_limit(
        limit in 3u64..20,
        slice in (1u64..10, 0u64..10),
        delays in prop::collection::vec(prop_oneof![6 => 0u64..W / 50, 1 => W / 50..W / 2], 64),
        offsets in prop::collection::vec(0u64..10 * W, 4),
        ops in prop::collection::vec(op(), 1..800),
    ) {
        let (smin, sextra) = slice;
        let smax = (smin + sextra).min(limit);
        let smin = smin.min(smax);
        let mut own = owner(limit, smin, smax);
        let mut nodes: Vec<Node> = offsets.iter().enumerate()
            .map(|(i, off)| Node { lease: lease(i as u64 + 1, smin / 2), offset_ns: *off, crashed: false, reported: false })
            .collect();
        let mut now = 3 * W; // owner (true) time
        let mut in_transit: Vec<(u64, Msg)> = Vec::new();
        let mut last_request: Option<LeaseRequest> = None;
        let mut admitted: BTreeMap<u64, u64> = BTreeMap::new();
        let mut d = 0usize;
        let mut delay = || { d += 1; delays[d % delays.len()] };
        for op in ops {
            match op {
                Op::Advance(dt) => now += dt,
                Op::Traffic { node, cost } => {
                    let n = &mut nodes[node];
                    if n.crashed { continue; }
                    let local = now + n.offset_ns;
                    let c = n.lease.check(local, cost);
                    if c.admitted { *admitted.entry(now / W).or_default() += cost; }
                    if c.should_refill && let Some(req) = n.lease.poll_refill(local) {
                        in_transit.push((now + delay(), Msg::ToOwner(req)));
                    }
                }
                Op::Kill { node, zombie } => {
                    let n = &mut nodes[node];
                    n.crashed |= !zombie;
                    if !n.reported {
                        n.reported = true;
                        own.node_down(node as u64 + 1, now);
                    }
                }
                Op::Release { node } => {
                    let n = &mut nodes[node];
                    if n.crashed { continue; }
                    if let Some(req) = n.lease.release(now + n.offset_ns) {
                        in_transit.push((now + delay(), Msg::ToOwner(req)));
                    }
                }
                Op::Duplicate => {
                    // The network delivers an old request again: must not grant or credit twice.
                    if let Some(req) = last_request {
                        prop_assert!(own.handle_request(&req, now).is_err());
                    }
                }
            }
            // Deliver everything due by now, in due order.
            in_transit.sort_by_key(|(t, _)| *t);
            while in_transit.first().is_some_and(|(t, _)| *t <= now) {
                let (at, msg) = in_transit.remove(0);
                match msg {
                    Msg::ToOwner(req) => {
                        last_request = Some(req);
                        if let Ok(g) = own.handle_request(&req, at) {
                            in_transit.push((at + delay(), Msg::ToNode(req.node as usize - 1, g)));
                        }
                    }
                    Msg::ToNode(i, g) => {
                        let n = &mut nodes[i];
                        if !n.crashed { n.lease.on_grant(&g, at + n.offset_ns); }
                    }
                }
            }
            prop_assert!(own.outstanding() <= limit);
        }
        for (w, n) in &admitted {
            prop_assert!(*n <= limit, "window {} admitted {} > {}", w, n, limit);
        }
    }
}

/// One node with steady demand gets most of the limit: the protocol is not trivially safe by
/// admitting nothing.
#[test]
fn a_busy_node_uses_most_of_the_limit() {
    let limit = 100;
    let mut own = owner(limit, 5, 40);
    let mut node = lease(1, 10);
    let rtt = W / 100;
    let mut pending: Option<(u64, LeaseRequest)> = None;
    let mut admitted = BTreeMap::<u64, u64>::new();
    let mut grants = 0;
    let mut t = 0;
    while t < 20 * W {
        t += W / 200; // 200 offered per window, twice the limit
        if node.check(t, 1).admitted {
            *admitted.entry(t / W).or_default() += 1;
        }
        if pending.is_none()
            && let Some(req) = node.poll_refill(t)
        {
            pending = Some((t + rtt, req));
        }
        if let Some((at, req)) = pending
            && at <= t
        {
            let g = own.handle_request(&req, at - rtt / 2).expect("grant");
            assert!(node.on_grant(&g, t));
            grants += 1;
            pending = None;
        }
    }
    let steady: Vec<u64> = admitted.range(2..19).map(|(_, n)| *n).collect();
    assert!(steady.iter().all(|&n| n <= limit));
    assert!(steady.iter().all(|&n| n >= 80), "utilisation too low: {steady:?}");
    assert!(grants < 20 * 10, "round trips not amortised: {grants}");
}

#[test]
fn dead_nodes_quota_is_written_off_not_regranted() {
    let mut own = owner(10, 1, 10);
    let req = |node, seq, want| LeaseRequest { node, seq, want, returned: 0, returned_window: 0 };
    let g = own.handle_request(&req(1, 1, 8), 5).expect("grant");
    assert_eq!(g.amount, 8);
    assert_eq!(own.node_down(1, 6), 8, "the dead node's slice is written off");
    assert_eq!(own.handle_request(&req(2, 1, 8), 7).expect("grant").amount, 2, "only the rest of the window");
    assert_eq!(own.handle_request(&req(1, 2, 1), 8), Err(LeaseError::NodeDown { node: 1 }));
    // Next window: full quota again.
    assert_eq!(own.handle_request(&req(2, 2, 8), W + 1).expect("grant").amount, 8);
}

#[test]
fn released_quota_is_credited_once() {
    let mut own = owner(10, 1, 10);
    let mut a = lease(1, 0);
    a.check(0, 1);
    let r = a.poll_refill(1).expect("demand");
    let g = own.handle_request(&r, 2).expect("grant");
    assert!(a.on_grant(&g, 3));
    let rel = a.release(4).expect("unused slice");
    assert_eq!(a.remaining(), 0, "discarded locally before it is returned");
    own.handle_request(&rel, 5).expect("credit");
    let before = own.outstanding();
    assert!(matches!(own.handle_request(&rel, 6), Err(LeaseError::StaleSeq { .. })));
    assert_eq!(own.outstanding(), before);
    assert!(QuotaOwner::new(QuotaConfig { limit: 5, window_ns: W, slice_min: 6, slice_max: 6, nodes_max: 1 }).is_err());
}
