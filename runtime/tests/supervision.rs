//! Supervision end to end inside one process: a child is crashed repeatedly and each
//! strategy, the backoff and the restart limit are observed through introspection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use troupe_runtime::config;
use troupe_runtime::wire::introspect::{ActorInfo, ActorState};
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, Protocol, Reply, ReplyOf,
    fail,
};

static INCARNATIONS: AtomicU64 = AtomicU64::new(0);
/// While set, every start fails (as a recovery does on the minority side of a partition).
static FAIL_STARTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Probe;
impl Protocol for Probe {
    type Msg = ProbeMsg;
    type Reply = u64;
    const NAME: &'static str = "test.probe";
}

#[derive(Serialize, Deserialize)]
enum ProbeMsg {
    /// Fails the actor.
    Crash,
    /// Answers this incarnation's id.
    Incarnation,
}

struct ProbeActor;

impl FromParams for ProbeActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(ProbeActor)
    }
}

impl Behavior for ProbeActor {
    type Proto = Probe;
    type State = u64;
    async fn init(&self, _: &Ctx<Probe>) -> Result<u64, ActorError> {
        if FAIL_STARTS.load(Ordering::SeqCst) {
            return Err(fail("cannot start now"));
        }
        Ok(INCARNATIONS.fetch_add(1, Ordering::SeqCst))
    }
    async fn handle(
        &self,
        _: &Ctx<Probe>,
        st: &mut u64,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            ProbeMsg::Crash => Err(fail("crash requested")),
            ProbeMsg::Incarnation => {
                reply.send(*st).await;
                Ok(())
            }
        }
    }
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "troupe-sup-{}-{}",
        std::process::id(),
        INCARNATIONS.fetch_add(1000, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(d.join("systems")).unwrap();
    d
}

async fn node_with(strategy: &str, max_restarts: u32, system_max: u32) -> (Node, PathBuf) {
    let dir = tempdir();
    std::fs::write(
        dir.join("cluster.toml"),
        r#"
[cluster]
name = "t"
systems = ["sup"]
seeds = ["n1"]
[[nodes]]
name = "n1"
addr = "127.0.0.1:1"
gossip = "127.0.0.1:2"
admin = "127.0.0.1:3"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("systems/sup.toml"),
        format!(
            r#"
[system]
name = "sup"
[system.supervision]
max_restarts = {system_max}
within_ms = 60000
[kinds.probe]
factory = "test.probe"
placement = "sharded"
[kinds.probe.supervision]
strategy = "{strategy}"
max_restarts = {max_restarts}
within_ms = 60000
backoff_initial_ms = 10
backoff_max_ms = 40
"#
        ),
    )
    .unwrap();
    let mut kinds = KindRegistry::new();
    kinds.register::<ProbeActor>("test.probe");
    let loaded = config::load(&dir.join("cluster.toml"), &kinds).unwrap_or_else(|e| panic!("{e}"));
    (Node::start(Arc::new(loaded), kinds, "n1").await.unwrap(), dir)
}

fn path(key: &str) -> ActorPath {
    ActorPath::new("sup", "probe", key).unwrap()
}

async fn incarnation(node: &Node, key: &str) -> u64 {
    node.handle::<Probe>(path(key)).ask_timeout(ProbeMsg::Incarnation, Duration::from_secs(5)).await.unwrap()
}

fn find<'a>(t: &'a ActorInfo, path: &str) -> Option<&'a ActorInfo> {
    t.walk().into_iter().find(|a| a.path == path)
}

/// Waits until every key answers with an incarnation (restarts done).
async fn settle(node: &Node, keys: &[&str]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut out = Vec::new();
        for k in keys {
            match node.handle::<Probe>(path(k)).ask_timeout(ProbeMsg::Incarnation, Duration::from_millis(500)).await {
                Ok(i) => out.push(i),
                Err(_) => break,
            }
        }
        if out.len() == keys.len() {
            return out;
        }
        assert!(Instant::now() < deadline, "children did not come back: {:#?}", node.tree());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn crash_middle(strategy: &str) -> (Vec<u64>, Vec<u64>, Node) {
    let (node, _dir) = node_with(strategy, 5, 5).await;
    let keys = ["a", "b", "c"];
    let mut before = Vec::new();
    for k in keys {
        before.push(incarnation(&node, k).await);
    }
    node.handle::<Probe>(path("b")).tell(ProbeMsg::Crash).await.unwrap();
    // Wait for the supervisor's decision to show (every child the strategy restarts
    // has counted its restart), not for a fixed time: a child not yet stopped would
    // still answer as its old incarnation.
    let restarted: &[&str] = match strategy {
        "one_for_one" => &["b"],
        "rest_for_one" => &["b", "c"],
        _ => &["a", "b", "c"],
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !restarted.iter().all(|k| find(&node.tree(), &format!("/sup/probe/{k}")).is_some_and(|a| a.restarts >= 1)) {
        assert!(Instant::now() < deadline, "the {strategy} restarts never showed: {:#?}", node.tree());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = settle(&node, &keys).await;
    (before, after, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_only_the_failed_child() {
    let (before, after, node) = crash_middle("one_for_one").await;
    assert_eq!(before[0], after[0]);
    assert_ne!(before[1], after[1]);
    assert_eq!(before[2], after[2]);
    let t = node.tree();
    let b = find(&t, "/sup/probe/b").unwrap();
    assert_eq!(b.restarts, 1);
    assert!(b.last_error.as_deref().unwrap_or("").contains("crash requested"), "{b:?}");
    node.shutdown().await;
}

/// Many children failing at once, each while the others' restarts are pending (as
/// every entity of a node does when a partition starts): every one comes back. A
/// later failure used to cancel the earlier children's pending restarts, leaving them
/// down with every request to them waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_failing_together_all_restart() {
    let (node, _dir) = node_with("one_for_one", 50, 50).await;
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(incarnation(&node, k).await);
    }
    for k in &keys {
        node.handle::<Probe>(path(k)).tell(ProbeMsg::Crash).await.unwrap();
    }
    let after = settle(&node, &keys).await;
    for (i, k) in keys.iter().enumerate() {
        assert_ne!(before[i], after[i], "{k} answered as its old incarnation");
        let info = find(&node.tree(), &format!("/sup/probe/{k}")).cloned();
        assert!(info.as_ref().is_some_and(|a| a.restarts >= 1), "{k} was never restarted: {info:?}");
    }
    node.shutdown().await;
}

/// An entity whose restart fails is dropped, slot and all: the next message activates
/// it afresh. Its slot used to stay registered with no actor behind it, and every
/// message was told "restarting; retry" for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_whose_restart_fails_is_activated_again_by_the_next_message() {
    let (node, _dir) = node_with("one_for_one", 50, 50).await;
    let first = incarnation(&node, "r").await;
    FAIL_STARTS.store(true, Ordering::SeqCst);
    node.handle::<Probe>(path("r")).tell(ProbeMsg::Crash).await.unwrap();
    // The restart (after its backoff) fails and the entity leaves the tree.
    let deadline = Instant::now() + Duration::from_secs(10);
    while find(&node.tree(), "/sup/probe/r").is_some() {
        assert!(Instant::now() < deadline, "the failed restart kept the entity: {:#?}", node.tree());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    FAIL_STARTS.store(false, Ordering::SeqCst);
    let again = node.handle::<Probe>(path("r")).ask_timeout(ProbeMsg::Incarnation, Duration::from_secs(5)).await;
    assert!(again.as_ref().is_ok_and(|i| *i != first), "the next message found {again:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_restarts_every_child() {
    let (before, after, node) = crash_middle("one_for_all").await;
    for i in 0..3 {
        assert_ne!(before[i], after[i], "child {i} should have restarted");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_failed_and_later_children() {
    let (before, after, node) = crash_middle("rest_for_one").await;
    assert_eq!(before[0], after[0], "a was started before b and must keep running");
    assert_ne!(before[1], after[1]);
    assert_ne!(before[2], after[2]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_limit_escalates_to_the_system_supervisor() {
    let (node, _dir) = node_with("one_for_one", 2, 5).await;
    let kind_restarts = |node: &Node| find(&node.tree(), "/sup/probe").map(|k| k.restarts).unwrap_or(0);
    assert_eq!(kind_restarts(&node), 0);
    // Two crashes are within the limit: the child comes back each time.
    for _ in 0..2 {
        incarnation(&node, "x").await;
        node.handle::<Probe>(path("x")).tell(ProbeMsg::Crash).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    settle(&node, &["x"]).await;
    assert_eq!(kind_restarts(&node), 0, "the kind supervisor itself has not failed yet");
    // The third crash inside the window exceeds max_restarts = 2: the kind supervisor
    // gives up, and the system supervisor restarts it.
    node.handle::<Probe>(path("x")).tell(ProbeMsg::Crash).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while kind_restarts(&node) == 0 {
        assert!(Instant::now() < deadline, "kind supervisor was never restarted: {:#?}", node.tree());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kind = find(&node.tree(), "/sup/probe").cloned().unwrap();
    assert!(kind.last_error.as_deref().unwrap_or("").contains("max_restarts exceeded"), "{kind:?}");
    // The entity is activated again on demand after the kind supervisor restarted.
    settle(&node, &["x"]).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_gives_up_after_its_own_limit() {
    // The kind escalates after 0 restarts, and the system tolerates none either, so
    // the failure climbs to the root, which restarts the whole system.
    let (node, _dir) = node_with("one_for_one", 0, 0).await;
    let before = incarnation(&node, "x").await;
    node.handle::<Probe>(path("x")).tell(ProbeMsg::Crash).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sys = find(&node.tree(), "/sup").unwrap().clone();
        if sys.restarts >= 1 {
            let err = sys.last_error.unwrap_or_default();
            assert!(err.contains("max_restarts exceeded"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "system never escalated: {:#?}", node.tree());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // After the root restarted the system, the entity is a fresh incarnation.
    let after = settle(&node, &["x"]).await;
    assert_ne!(before, after[0]);
    let sys = find(&node.tree(), "/sup").unwrap().clone();
    assert_ne!(sys.state, ActorState::Failed);
    node.shutdown().await;
}
