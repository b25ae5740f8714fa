//! Distributed pub/sub and process groups on real node processes: a topic with
//! subscribers on three nodes gets every message of two concurrent publishers, each
//! publisher's in order, sent once per node; an acknowledged publish counts its
//! subscribers; a killed node's subscribers and group members are dropped on its
//! member-down event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};
use troupe_client::{Client, ClientConfig};
use troupe_diag::{Topic, TopicMsg, TopicReply};
use troupe_runtime::ActorPath;
use troupe_testkit::TestCluster;

const WAIT: Duration = Duration::from_secs(30);
const COUNT: u64 = 500;

fn topic_actor(node: &str) -> ActorPath {
    ActorPath::new("diag", "topic", node).unwrap()
}

async fn ask(client: &Client, node: &str, msg: TopicMsg) -> TopicReply {
    client.ask_timeout::<Topic>(&topic_actor(node), &msg, WAIT).await.unwrap()
}

/// Polls `node` until `probe` answers `want` (bounded).
async fn until(client: &Client, node: &str, probe: TopicMsg, want: TopicReply) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = ask(client, node, probe.clone()).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{node} never answered {want:?} to {probe:?}; last {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(ns: &[&str]) -> Vec<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_topic_on_three_nodes_in_publisher_order_and_a_dead_nodes_subscribers_dropped() {
    let mut c = TestCluster::start(common::Options { systems: vec!["diag"], nodes: 3, ..common::Options::default() });
    c.wait_converged(&[], WAIT);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap().prefer("n1");
        let client = Client::connect(cfg).await.unwrap();
        for n in ["n1", "n2", "n3"] {
            assert_eq!(ask(&client, n, TopicMsg::Subscribe { topic: "news".into() }).await, TopicReply::Done);
            assert_eq!(ask(&client, n, TopicMsg::Join { group: "editors".into() }).await, TopicReply::Done);
        }
        let all = names(&["n1", "n2", "n3"]);
        // Each publisher's node has heard of every subscriber before it publishes.
        for n in ["n1", "n2"] {
            until(&client, n, TopicMsg::Nodes { topic: "news".into() }, TopicReply::Nodes(all.clone())).await;
        }
        let editors: Vec<String> = all.iter().map(|n| format!("/diag/topic/{n}")).collect();
        until(&client, "n1", TopicMsg::Members { group: "editors".into() }, TopicReply::Members(editors.clone())).await;

        // Two publishers at once, on two nodes.
        let publish = |node: &'static str, publisher: &'static str| {
            let client = &client;
            async move {
                let msg =
                    TopicMsg::Publish { topic: "news".into(), publisher: publisher.into(), count: COUNT, acked: false };
                ask(client, node, msg).await
            }
        };
        let (a, b) = tokio::join!(publish("n1", "a"), publish("n2", "b"));
        for r in [a, b] {
            match r {
                TopicReply::Published { nodes, failed, .. } => {
                    assert_eq!(nodes, all, "sent once to each node with subscribers");
                    assert!(failed.is_empty(), "{failed:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Every subscriber gets every message of each publisher, in that publisher's order.
        for n in ["n1", "n2", "n3"] {
            let deadline = Instant::now() + WAIT;
            let got = loop {
                let TopicReply::Received(got) = ask(&client, n, TopicMsg::Received { topic: "news".into() }).await
                else {
                    panic!("not a Received reply")
                };
                if got.len() as u64 >= 2 * COUNT || Instant::now() > deadline {
                    break got;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            for (publisher, id) in [("a", "n1/a"), ("b", "n2/b")] {
                let seqs: Vec<(u64, u64)> =
                    got.iter().filter(|(p, _, _)| p == id).map(|(_, seq, value)| (*seq, *value)).collect();
                let want: Vec<(u64, u64)> = (1..=COUNT).map(|i| (i, i)).collect();
                assert_eq!(seqs, want, "{n}: publisher {publisher}'s messages missing or out of order");
            }
            assert_eq!(got.len() as u64, 2 * COUNT, "{n}: a message came twice");
        }
        // An acknowledged publish counts the subscribers that have it.
        let acked = TopicMsg::Publish { topic: "news".into(), publisher: "c".into(), count: 3, acked: true };
        assert_eq!(
            ask(&client, "n1", acked.clone()).await,
            TopicReply::Published { nodes: all.clone(), subscribers: 3, failed: vec![] }
        );
        // ... and each subscriber has the acknowledged messages, in order.
        for n in ["n1", "n2", "n3"] {
            let TopicReply::Received(got) = ask(&client, n, TopicMsg::Received { topic: "news".into() }).await else {
                panic!("not a Received reply")
            };
            let c: Vec<u64> = got.iter().filter(|(p, _, _)| p == "n1/c").map(|(_, seq, _)| *seq).collect();
            assert_eq!(c, vec![1, 2, 3], "{n}");
        }

        // kill -9 n3: its subscribers and group members go with its member-down event.
        c.kill("n3");
        let two = names(&["n1", "n2"]);
        until(&client, "n1", TopicMsg::Nodes { topic: "news".into() }, TopicReply::Nodes(two.clone())).await;
        until(&client, "n1", TopicMsg::Members { group: "editors".into() }, TopicReply::Members(editors[..2].to_vec()))
            .await;
        assert_eq!(
            ask(&client, "n1", acked).await,
            TopicReply::Published { nodes: two, subscribers: 2, failed: vec![] }
        );
    });
}
