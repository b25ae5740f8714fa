//! The root crate's test harness: troupe-testkit with the `troupe` binary and the
//! topologies of `systems/` (every wait bounded; logs kept in the cluster's folder when
//! a test panics).
#![allow(dead_code)]

use std::path::Path;

pub mod linearizable;

#[allow(unused_imports)] // each test file uses a part
pub use troupe_testkit::{Resp, TestCluster, dechunk, http, http_auth, request, wait_for, wait_for_or_last};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_troupe");

/// A cluster of this repository's systems (kv by default).
pub struct Options {
    pub nodes: usize,
    pub systems: Vec<&'static str>,
    pub probe_period_ms: u64,
    pub probe_rtt_ms: u64,
    pub suspect_to_down_ms: u64,
    pub extra: String,
}

impl Default for Options {
    fn default() -> Self {
        let d = troupe_testkit::Options::default();
        Options {
            nodes: d.nodes,
            systems: vec!["kv"],
            probe_period_ms: d.probe_period_ms,
            probe_rtt_ms: d.probe_rtt_ms,
            suspect_to_down_ms: d.suspect_to_down_ms,
            extra: d.extra,
        }
    }
}

impl From<Options> for troupe_testkit::Options {
    fn from(o: Options) -> Self {
        troupe_testkit::Options {
            bin: BIN.into(),
            topologies: Path::new(env!("CARGO_MANIFEST_DIR")).join("systems"),
            nodes: o.nodes,
            systems: o.systems.iter().map(|s| s.to_string()).collect(),
            probe_period_ms: o.probe_period_ms,
            probe_rtt_ms: o.probe_rtt_ms,
            suspect_to_down_ms: o.suspect_to_down_ms,
            extra: o.extra,
            labels: Vec::new(),
            gpus: Vec::new(),
        }
    }
}

/// A cluster of kv, the rate limiter and the URL shortener, converged, with every node's
/// limiter and shortener answering HTTP (the security and hostile-input tests' cluster).
pub fn start_http_services() -> TestCluster {
    use std::time::Duration;
    let c = TestCluster::start(Options { systems: vec!["kv", "rate-limiter", "url-shortener"], ..Options::default() });
    c.wait_converged(&[], Duration::from_secs(30));
    for n in &c.names {
        let (lim, gw) = (c.port(n, "rate-limiter"), c.port(n, "url-shortener"));
        wait_for(&format!("{n}'s services"), Duration::from_secs(30), || {
            let up = |a, p| request(a, "GET", p, &[], b"").is_ok_and(|r| r.status == 200 || r.status == 404);
            (up(lim, "/v1/health") && up(gw, "/api/links/nope")).then_some(())
        });
    }
    c
}
