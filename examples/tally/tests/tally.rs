//! tally on three real nodes (troupe-testkit): votes through every node add up, a bad
//! vote is refused with the reason, and killing a node loses no acknowledged vote.

use std::path::Path;
use std::time::Duration;
use troupe_testkit::{Options, TestCluster, http, http_auth, wait_for};

fn start() -> TestCluster {
    let c = TestCluster::start(Options {
        bin: env!("CARGO_BIN_EXE_tally").into(),
        topologies: Path::new(env!("CARGO_MANIFEST_DIR")).join("systems"),
        systems: vec!["tally".into()],
        ..Options::default()
    });
    c.wait_converged(&[], Duration::from_secs(30));
    c
}

/// One vote through `node`; `Some(total)` when acknowledged.
fn vote(c: &TestCluster, node: &str, poll: &str, option: &str) -> Option<u64> {
    let body = serde_json::json!({ "option": option }).to_string();
    // A vote changes state: the route asks for the cluster's service token.
    let url = c.port(node, "tally");
    let (code, body) = http_auth(url, "POST", &format!("/polls/{poll}/vote"), &c.service_auth(), Some(&body)).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["Counted"]["total"].as_u64()
}

/// The poll's counts as `node` answers them.
fn results(c: &TestCluster, node: &str, poll: &str) -> Option<serde_json::Value> {
    let (code, body) = http(c.port(node, "tally"), "GET", &format!("/polls/{poll}"), None).ok()?;
    (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).ok()).flatten().map(|v| v["Results"].clone())
}

#[test]
fn votes_through_every_node_add_up_and_survive_a_killed_node() {
    let mut c = start();
    let names = c.names.clone();
    // Nine votes, three through each node; a vote that races the cluster's start is
    // retried (it was not acknowledged, so it was not counted).
    for (i, option) in
        ["pizza", "sushi", "pizza", "tacos", "pizza", "sushi", "pizza", "tacos", "pizza"].iter().enumerate()
    {
        let node = &names[i % names.len()];
        wait_for(&format!("vote {i} through {node}"), Duration::from_secs(20), || vote(&c, node, "lunch", option));
    }
    for n in &names {
        let r = wait_for(&format!("results from {n}"), Duration::from_secs(20), || results(&c, n, "lunch"));
        assert_eq!(r["total"], 9, "{n}: {r}");
        assert_eq!((r["counts"]["pizza"].as_u64(), r["counts"]["sushi"].as_u64()), (Some(5), Some(2)), "{n}: {r}");
    }
    // Kill a node: a majority of every poll's three replicas is still up, so every
    // acknowledged vote is still counted, and voting goes on.
    c.kill("n1");
    c.wait_converged(&["n1"], Duration::from_secs(30));
    let r = wait_for("results after n1 died", Duration::from_secs(30), || results(&c, "n2", "lunch"));
    assert_eq!(r["total"], 9, "no acknowledged vote lost: {r}");
    let total = wait_for("a vote after n1 died", Duration::from_secs(30), || vote(&c, "n3", "lunch", "sushi"));
    assert_eq!(total, 10);
}

#[test]
fn a_bad_vote_is_refused_with_its_reason_and_counts_nothing() {
    let c = start();
    let url = c.port("n1", "tally");
    let auth = c.service_auth();
    let (code, body) = http(url, "POST", "/polls/lunch/vote", Some(r#"{"option":"pizza"}"#)).expect("request");
    assert_eq!(code, 401, "a vote without the service token: {body}");
    assert!(body.contains("a service token is required"), "{body}");
    let (code, body) = http_auth(url, "POST", "/polls/lunch/vote", &auth, Some(r#"{"option":""}"#)).expect("request");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("option must be 1 to 64 bytes, not 0"), "{body}");
    let (code, body) =
        http_auth(url, "POST", "/polls/lunch/vote", &auth, Some(r#"{"choice":"pizza"}"#)).expect("request");
    assert_eq!(code, 400, "a body without the message's fields: {body}");
    let r = wait_for("results", Duration::from_secs(20), || results(&c, "n2", "lunch"));
    assert_eq!(r["total"], 0, "{r}");
}
