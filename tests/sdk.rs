//! The client SDK against a real 3-node cluster: it reaches an actor on every node
//! through whichever node it is connected to, and fails over when that node is
//! killed with SIGKILL. A client with a certificate from another CA is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Options, TestCluster};
use std::time::{Duration, Instant};
use troupe_client::{Client, ClientConfig};
use troupe_kv::store::{KvMsg, KvReply, KvStore};
use troupe_runtime::ActorPath;
use troupe_runtime::wire::introspect::{NodeReply, NodeRequest};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn sdk_reaches_every_node_and_fails_over() {
    let mut c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(20));
    rt().block_on(async {
        let cfg = ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap().prefer("n2");
        let client = Client::connect(cfg).await.unwrap();
        assert_eq!(client.node().await.as_deref(), Some("n2"));
        // An actor on each node: its node agent answers with its own name.
        for n in ["n1", "n2", "n3"] {
            match client.node_request(n, NodeRequest::Health).await.unwrap() {
                NodeReply::Health(h) => assert_eq!(h.node, n),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Typed messages to sharded entities wherever they live.
        for i in 0..10 {
            let path = ActorPath::new("kv", "store", &format!("sdk{i}")).unwrap();
            let r = client.ask::<KvStore>(&path, &KvMsg::Put { value: format!("v{i}") }).await.unwrap();
            assert!(matches!(r, KvReply::Written { .. }), "{r:?}");
        }
        // Kill the node the client talks to; the client must move on.
        c.kill("n2");
        let t = Instant::now();
        let mut failures = 0;
        let path = ActorPath::new("kv", "store", "sdk3").unwrap();
        loop {
            match client.ask_timeout::<KvStore>(&path, &KvMsg::Get, Duration::from_secs(2)).await {
                Ok(KvReply::Value { value, .. }) => {
                    assert_eq!(value.as_deref(), Some("v3"));
                    break;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    failures += 1;
                    assert!(t.elapsed() < Duration::from_secs(20), "no failover after {failures} failures: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let now = client.node().await.unwrap();
        assert_ne!(now, "n2", "the client still talks to the dead node");
        eprintln!("failed over to {now} after {:?} and {failures} failed asks", t.elapsed());
    });
}

#[test]
fn a_client_certificate_cannot_address_the_replicas() {
    let c = TestCluster::start(Options { nodes: 1, ..Options::default() });
    c.wait_converged(&[], Duration::from_secs(20));
    rt().block_on(async {
        let cfg = ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap();
        let client = Client::connect(cfg).await.unwrap();
        let replica = ActorPath::new("troupe", "replica", "n1").unwrap();
        let refused = |e: &troupe_client::ClientError| {
            matches!(e.remote(), Some(troupe_runtime::RemoteError::Unauthorized(r)) if r.contains("cluster nodes only"))
        };
        // JSON and encoded asks, whatever they carry, are refused with the reason.
        let json = r#"{"Load":{"path":"/kv/store/a"}}"#;
        let e = client.ask_json(&replica, json, Duration::from_secs(5), Client::new_trace()).await.unwrap_err();
        assert!(refused(&e), "{e}");
        let e = client.ask_raw(&replica, vec![0, 1, 2, 3], Duration::from_secs(5), Client::new_trace()).await.unwrap_err();
        assert!(refused(&e), "{e}");
        // The node agent still answers clients (troupe tree, troupe top), and so do
        // the systems' kinds.
        assert!(matches!(client.node_request("n1", NodeRequest::Health).await.unwrap(), NodeReply::Health(_)));
        let kv = ActorPath::new("kv", "store", "ok").unwrap();
        assert!(client.ask::<KvStore>(&kv, &KvMsg::Get).await.is_ok());
    });
}

/// A kind's topology says which certificate roles may address it: the rate limiter's
/// rules (`allow = ["admin"]`) refuse a client certificate, with the reason, and answer
/// one issued with `troupe certs client NAME --admin`.
#[test]
fn a_kind_for_admins_refuses_a_client_certificate_and_answers_an_admin_one() {
    let c = TestCluster::start(Options { nodes: 1, systems: vec!["rate-limiter"], ..Options::default() });
    c.wait_converged(&[], Duration::from_secs(20));
    let out = std::process::Command::new(common::BIN)
        .args(["certs", "client", "ops", "--admin", "--cluster"])
        .arg(c.cluster_file())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules = ActorPath::new("rate-limiter", "rules", troupe_runtime::KindSpec::singleton_key()).unwrap();
    rt().block_on(async {
        let cli = Client::connect(ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap()).await.unwrap();
        let put = r#"{"Put":{"toml":"version = 999"}}"#;
        let e = cli.ask_json(&rules, put, Duration::from_secs(5), Client::new_trace()).await.unwrap_err();
        let why = match e.remote() {
            Some(troupe_runtime::RemoteError::Unauthorized(r)) => r.clone(),
            _ => panic!("expected Unauthorized, got {e}"),
        };
        assert!(why.contains("cluster nodes and admin certificates only") && why.contains("client cli"), "{why}");
        // Encoded asks and tells are held to the same rule.
        let e = cli.ask_raw(&rules, vec![0], Duration::from_secs(5), Client::new_trace()).await.unwrap_err();
        assert!(matches!(e.remote(), Some(troupe_runtime::RemoteError::Unauthorized(_))), "{e}");
        let ops = Client::connect(ClientConfig::from_cluster_file(&c.cluster_file(), "ops").unwrap()).await.unwrap();
        let got = ops.ask_json(&rules, r#"{"GetIfNewer":{"have":0}}"#, Duration::from_secs(10), Client::new_trace());
        let got = got.await.unwrap();
        assert!(got.contains("Current"), "the admin certificate is answered: {got}");
        // Other kinds still answer a client certificate.
        assert!(matches!(cli.node_request("n1", NodeRequest::Health).await.unwrap(), NodeReply::Health(_)));
    });
}

/// One client connection cannot keep more than `client_in_flight_max` requests in
/// flight at a node: past it each request is refused at once with `QueueFull` (it is
/// not queued or spawned), and the slots come back as answers go out.
#[test]
fn a_client_connection_has_a_bounded_number_of_requests_in_flight() {
    // Appended right after the test cluster file's [transport] keys, so it is one of them.
    let c = TestCluster::start(Options { nodes: 1, extra: "client_in_flight_max = 4\n".into(), ..Options::default() });
    c.wait_converged(&[], Duration::from_secs(20));
    rt().block_on(async {
        let client = Client::connect(ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap()).await.unwrap();
        let warm = ActorPath::new("kv", "store", "warm").unwrap();
        assert!(client.ask::<KvStore>(&warm, &KvMsg::Put { value: "x".into() }).await.is_ok());
        let asks = (0..200).map(|i| {
            let client = &client;
            async move {
                let path = ActorPath::new("kv", "store", &format!("burst-{i}")).unwrap();
                client.ask::<KvStore>(&path, &KvMsg::Put { value: "v".into() }).await
            }
        });
        let results = futures::future::join_all(asks).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let mut refused = 0;
        for r in &results {
            if let Err(e) = r {
                match e.remote() {
                    Some(troupe_runtime::RemoteError::QueueFull { node, cap }) if node == "n1" && *cap == 4 => {
                        refused += 1
                    }
                    _ => panic!("a request past the bound must be refused with QueueFull (cap 4): {e}"),
                }
            }
        }
        assert!(refused > 0 && ok > 0, "200 concurrent asks over one connection: {ok} answered, {refused} refused");
        // The slots are back: asks one at a time all succeed.
        for i in 0..10 {
            let path = ActorPath::new("kv", "store", &format!("after-{i}")).unwrap();
            assert!(client.ask::<KvStore>(&path, &KvMsg::Get).await.is_ok());
        }
        eprintln!(
            "200 concurrent asks on one connection with client_in_flight_max = 4: {ok} answered, {refused} refused"
        );
    });
}

#[test]
fn client_from_another_ca_is_refused() {
    let c = TestCluster::start(Options { nodes: 1, ..Options::default() });
    c.wait_converged(&[], Duration::from_secs(20));
    // A second cluster folder with the same node names but its own CA.
    let other = TestCluster::start(Options { nodes: 1, ..Options::default() });
    let mut cfg = ClientConfig::from_cluster_file(&other.cluster_file(), "cli").unwrap();
    let real = ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap();
    cfg.nodes = real.nodes.clone();
    cfg.connect_timeout = Duration::from_secs(2);
    rt().block_on(async {
        match Client::connect(cfg).await {
            Err(e) => assert!(e.to_string().contains("no node of the cluster answered"), "{e}"),
            Ok(client) => {
                // TLS 1.3 may finish the client side before the server rejects the
                // certificate; then no request may succeed.
                let r = client.node_request("n1", NodeRequest::Health).await;
                assert!(r.is_err(), "an outsider was served: {r:?}");
            }
        }
    });
    // Counted by the node's accept task, which may run just after the client saw the
    // refusal.
    let refused = common::wait_for_or_last(
        Duration::from_secs(5),
        || c.metric("n1", "troupe_transport_refused_total"),
        |v| *v >= 1.0,
    );
    assert!(refused >= 1.0, "the node did not count the refused connection: {refused}");
}
