//! A small fake cluster for the TUI's tests: three nodes (the tests take n2 down), the
//! a made-up `demo` system with a few entities, one of them failed with a last error, the built-in
//! `troupe` system, and a handful of metrics from the runtime and from demo.

use super::data::NodeData;
use troupe_runtime::wire::introspect::{
    ActorInfo, ActorState, Health, MemberInfo, MemberState, Metric, MetricsSnapshot, SystemHealth,
};

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
pub const FAILED_ERROR: &str = "disk full: cannot append to the log";

pub fn actor(path: &str, kind: &str, state: ActorState, handled: u64, children: Vec<ActorInfo>) -> ActorInfo {
    let supervisor = matches!(kind, "node" | "system" | "kind");
    ActorInfo {
        path: path.into(),
        kind: kind.into(),
        state,
        strategy: if supervisor { "one_for_one".into() } else { String::new() },
        mailbox_len: 0,
        mailbox_cap: if supervisor { u64::MAX } else { 1024 },
        handled,
        restarts: 0,
        last_error: None,
        children,
    }
}

/// `n` demo entities named `key0000`.., all running, for paging tests.
pub fn entities(n: usize) -> Vec<ActorInfo> {
    (0..n).map(|i| actor(&format!("/demo/store/key{i:04}"), "store", ActorState::Running, i as u64, vec![])).collect()
}

pub fn tree(node: &str, handled: u64, store_entities: Vec<ActorInfo>) -> ActorInfo {
    use ActorState::Running;
    let mut failed = actor("/demo/store/cart-7", "store", ActorState::Failed, 3, vec![]);
    failed.restarts = 5;
    failed.last_error = Some(FAILED_ERROR.into());
    let mut hello = actor("/demo/store/hello", "store", Running, handled, vec![]);
    hello.mailbox_len = 2;
    let mut store = vec![hello, actor("/demo/store/world", "store", Running, 4, vec![]), failed];
    store.extend(store_entities);
    actor(
        "/",
        "node",
        Running,
        0,
        vec![
            actor(
                "/demo",
                "system",
                Running,
                0,
                vec![
                    actor("/demo/store", "kind", Running, 0, store),
                    actor(
                        "/demo/ranges",
                        "kind",
                        Running,
                        0,
                        vec![actor("/demo/ranges/ranges", "ranges", Running, 1, vec![])],
                    ),
                ],
            ),
            actor(
                "/troupe",
                "system",
                Running,
                0,
                vec![actor(
                    "/troupe/node",
                    "kind",
                    Running,
                    0,
                    vec![actor(&format!("/troupe/node/{node}"), "troupe.node", Running, 40, vec![])],
                )],
            ),
        ],
    )
}

fn metric(name: &str, kind: &str, labels: &[(&str, &str)], value: f64) -> Metric {
    Metric {
        name: name.into(),
        help: String::new(),
        kind: kind.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        value,
    }
}

/// One node's answer; `handled` feeds `/demo/store/hello` so tests can make rates.
pub fn node(name: &str, handled: u64, down: &[&str]) -> NodeData {
    let members = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| MemberInfo {
            name: n.to_string(),
            addr: format!("127.0.0.1:710{}", i + 1),
            epoch: 1_700_000_000_000,
            state: if down.contains(n) { MemberState::Down } else { MemberState::Alive },
            incarnation: 0,
            roles: vec!["gateway".into()],
        })
        .collect();
    NodeData {
        health: Health {
            node: name.into(),
            epoch: 1_700_000_000_000,
            uptime_ms: 3_723_000,
            systems: vec![SystemHealth { name: "demo".into(), status: "running".into() }],
        },
        members,
        tree: tree(name, handled, vec![]),
        metrics: MetricsSnapshot {
            node: name.into(),
            unix_ms: 1_700_000_000_000 + handled,
            metrics: vec![
                metric(
                    "troupe_messages_handled_total",
                    "counter",
                    &[("system", "demo"), ("kind", "store")],
                    handled as f64,
                ),
                metric("troupe_demo_puts_total", "counter", &[], 12.0),
                metric("troupe_mailbox_depth", "gauge", &[("system", "demo"), ("kind", "store")], 2.0),
                metric("troupe_gossip_packets_sent_total", "counter", &[], 4242.0),
                metric("troupe_node_uptime_seconds", "gauge", &[], 3723.0),
            ],
        },
        spans: Vec::new(),
    }
}

/// The three nodes as they answer when all are up.
pub fn cluster() -> Vec<NodeData> {
    NODES.iter().map(|n| node(n, 100, &[])).collect()
}
