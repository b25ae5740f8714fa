//! Node labels and GPUs in placement: a kind whose `role` is `"key=value"` runs only on
//! nodes whose `[nodes.labels]` carry that label, and one whose `role` is
//! `"gpu=<model>"` only on nodes with such a GPU in `[[nodes.gpus]]`
//! (docs/writing-a-system.md, placements), on real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::time::Duration;
use troupe_client::{Client, ClientConfig};
use troupe_diag::{Counter, CounterMsg, CounterReply};
use troupe_runtime::ActorPath;
use troupe_testkit::TestCluster;

/// The diag system with both kinds kept to nodes labelled `zone = "b"`.
const TOPOLOGY: &str = r#"
[system]
name = "diag"
description = "diag, placed by label"

[kinds.counter]
factory = "diag.counter"
placement = "per_node"
role = "zone=b"

[kinds.shard]
factory = "diag.counter"
placement = "sharded"
role = "zone=b"
"#;

/// A converged three-node cluster of diag under `topology`, with these labels and
/// GPUs; its topology folder (removed by the caller); a runtime; a client entering at n1.
fn start(
    name: &str,
    topology: &str,
    labels: Vec<(String, String, String)>,
    gpus: Vec<(String, String, u64, u64)>,
) -> (TestCluster, std::path::PathBuf, tokio::runtime::Runtime, Client) {
    let dir = std::env::temp_dir().join(format!("troupe-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("diag.toml"), topology).unwrap();
    let c = TestCluster::start(troupe_testkit::Options {
        bin: common::BIN.into(),
        topologies: dir.clone(),
        systems: vec!["diag".into()],
        labels,
        gpus,
        ..troupe_testkit::Options::default()
    });
    c.wait_converged(&[], Duration::from_secs(30));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cfg = ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap().prefer("n1");
    let client = rt.block_on(Client::connect(cfg)).unwrap();
    (c, dir, rt, client)
}

/// The nodes that `n` sharded diag entities (keys `{prefix}0`…) land on.
async fn shard_hosts(client: &Client, prefix: &str, n: usize) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for i in 0..n {
        let path = ActorPath::new("diag", "shard", &format!("{prefix}{i}")).unwrap();
        match client.ask::<Counter>(&path, &CounterMsg::Get).await.unwrap() {
            CounterReply::Count { node, .. } => hosts.insert(node),
            other => panic!("unexpected {other:?}"),
        };
    }
    hosts
}

#[test]
fn a_kind_placed_by_label_runs_only_on_labelled_nodes() {
    let label = |n: &str, zone: &str| (n.to_string(), "zone".to_string(), zone.to_string());
    let labels = vec![label("n1", "a"), label("n2", "b"), label("n3", "b")];
    let (_c, dir, rt, client) = start("labels", TOPOLOGY, labels, Vec::new());
    rt.block_on(async move {
        // Sharded entities land on n2 and n3 only, wherever the request enters.
        let hosts = shard_hosts(&client, "k", 24).await;
        assert_eq!(hosts, BTreeSet::from(["n2".to_string(), "n3".to_string()]), "shards landed on {hosts:?}");
        // The per-node kind exists on the labelled nodes; n1's is refused with why.
        let on = |n: &str| ActorPath::new("diag", "counter", n).unwrap();
        assert!(client.ask::<Counter>(&on("n2"), &CounterMsg::Get).await.is_ok());
        let err = client.ask::<Counter>(&on("n1"), &CounterMsg::Get).await.expect_err("n1 has no zone=b");
        assert!(err.to_string().contains("does not have role `zone=b`"), "{err}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// diag's shards kept to nodes with an H100.
const GPU_TOPOLOGY: &str = r#"
[system]
name = "diag"
description = "diag, placed by GPU model"

[kinds.counter]
factory = "diag.counter"
placement = "per_node"

[kinds.shard]
factory = "diag.counter"
placement = "sharded"
role = "gpu=H100"
"#;

#[test]
fn a_kind_placed_by_gpu_model_runs_only_where_that_gpu_is() {
    let gpu = |n: &str, model: &str| (n.to_string(), model.to_string(), 80, 1);
    let (_c, dir, rt, client) = start("gpus", GPU_TOPOLOGY, Vec::new(), vec![gpu("n1", "A100"), gpu("n3", "H100")]);
    rt.block_on(async move {
        let hosts = shard_hosts(&client, "g", 16).await;
        assert_eq!(hosts, BTreeSet::from(["n3".to_string()]), "shards landed on {hosts:?}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}
