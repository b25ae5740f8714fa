//! Remembered entities and durable reminders on real node processes: a remembered
//! entity whose node is killed with SIGKILL runs again on a survivor without any
//! message sent to it; a whole cluster killed and started again, one node late, starts
//! each remembered entity once, on its owner; a reminder set before its bucket's node is killed fires after it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{TestCluster, request};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use troupe_client::{Client, ClientConfig};
use troupe_diag::{Keeper, KeeperMsg, KeeperReply};
use troupe_runtime::ActorPath;
use troupe_runtime::wire::introspect::{ActorInfo, ActorState};

const WAIT: Duration = Duration::from_secs(60);

fn keeper(k: &str) -> ActorPath {
    ActorPath::new("diag", "keeper", k).unwrap()
}

fn cluster() -> TestCluster {
    let c = TestCluster::start(common::Options { systems: vec!["diag"], nodes: 3, ..common::Options::default() });
    c.wait_converged(&[], Duration::from_secs(30));
    c
}

/// The paths running on `node`, from its admin API (`None` while it does not answer).
fn running(c: &TestCluster, node: &str) -> Option<BTreeSet<String>> {
    let r = request(c.admin(node), "GET", "/v1/tree", &[], b"").ok()?;
    let tree: ActorInfo = serde_json::from_str(&r.body).ok()?;
    Some(tree.walk().into_iter().filter(|a| a.state == ActorState::Running).map(|a| a.path.clone()).collect())
}

/// Which live node runs `path`, if any.
fn runs(c: &TestCluster, path: &str) -> Option<String> {
    c.alive().into_iter().find(|n| running(c, n).is_some_and(|r| r.contains(path)))
}

async fn status(client: &Client, k: &str) -> (String, u64, Vec<(String, u64)>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.ask_timeout::<Keeper>(&keeper(k), &KeeperMsg::Status, Duration::from_secs(5)).await {
            Ok(KeeperReply::Status { node, activations, reminded }) => return (node, activations, reminded),
            other => {
                assert!(Instant::now() < deadline, "keeper {k} never answered: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits until the registry holds every keeper of `keys` where it runs.
async fn registered(client: &Client, keys: &BTreeMap<String, String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let asked =
            client.ask_timeout::<Keeper>(&keeper("probe"), &KeeperMsg::Remembered, Duration::from_secs(5)).await;
        if let Ok(KeeperReply::Remembered(all)) = &asked {
            let held: BTreeMap<&str, &str> = all.iter().map(|(p, n)| (p.as_str(), n.as_str())).collect();
            if keys.iter().all(|(k, n)| held.get(keeper(k).to_string().as_str()) == Some(&n.as_str())) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the registry never held every keeper: {asked:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn connect(c: &TestCluster) -> Client {
    Client::connect(ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap()).await.unwrap()
}

#[test]
fn a_remembered_entity_runs_again_after_its_node_is_killed_without_a_message() {
    let mut c = cluster();
    let rt = runtime();
    // Keepers on every node; the victim is one the client does not talk to.
    let (victim, on_victim, client) = rt.block_on(async {
        let client = connect(&c).await;
        let mut at: BTreeMap<String, String> = BTreeMap::new();
        for i in 0..12 {
            let k = format!("k{i}");
            let (node, activations, _) = status(&client, &k).await;
            assert_eq!(activations, 1);
            at.insert(k, node);
        }
        let mine = client.node().await.unwrap();
        let victim = at.values().find(|n| **n != mine).cloned().expect("every keeper landed on the client's node");
        // `probe` (the keeper that lists the registry) is remembered too.
        let (probe_node, ..) = status(&client, "probe").await;
        at.insert("probe".into(), probe_node);
        registered(&client, &at).await;
        let on_victim: Vec<String> = at.iter().filter(|(_, n)| **n == victim).map(|(k, _)| k.clone()).collect();
        (victim, on_victim, client)
    });
    let killed = Instant::now();
    c.kill(&victim);
    // Seen down by a survivor (the failure detection), then the keepers run again.
    let survivor = c.alive()[0].clone();
    let down = common::wait_for("the victim seen down", WAIT, || {
        let m = c.members(&survivor)?;
        (m.get(&victim).is_none_or(|(s, _)| s == "Down")).then(Instant::now)
    });
    let paths: Vec<String> = on_victim.iter().map(|k| keeper(k).to_string()).collect();
    let back = common::wait_for("the victim's keepers running again", WAIT, || {
        paths.iter().all(|p| runs(&c, p).is_some()).then(Instant::now)
    });
    let (detect, wake) = (down - killed, back.saturating_duration_since(down));
    eprintln!(
        "{} keepers of {victim} running again {:?} after the kill: down seen after {detect:?}, running {wake:?} later",
        paths.len(),
        back - killed
    );
    // Woken by the registry after the placement change, not by its periodic check:
    // well within one check period once the node is down (polling adds ~100 ms).
    assert!(
        wake <= troupe_runtime::remember::CHECK_EVERY * 3,
        "woken {wake:?} after the node was seen down (the check runs every {:?})",
        troupe_runtime::remember::CHECK_EVERY
    );
    rt.block_on(async {
        for k in &on_victim {
            let (node, activations, _) = status(&client, k).await;
            assert_ne!(node, victim);
            // Its first activation and the wake, its count read back from the replicas.
            assert_eq!(activations, 2, "keeper {k} was not recovered or was started more than once");
        }
    });
}

#[test]
fn a_whole_cluster_killed_and_started_again_starts_its_remembered_entities() {
    let mut c = cluster();
    let rt = runtime();
    let keys: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    let late = rt.block_on(async {
        let client = connect(&c).await;
        let mut at = BTreeMap::new();
        for k in keys.iter().chain(std::iter::once(&"probe".to_string())) {
            at.insert(k.clone(), status(&client, k).await.0);
        }
        registered(&client, &at).await;
        // One passivates: it is forgotten, and stays stopped after the restart.
        let asked = client.ask_timeout::<Keeper>(&keeper("w0"), &KeeperMsg::Sleep, Duration::from_secs(5)).await;
        assert!(matches!(asked, Ok(KeeperReply::Done)), "{asked:?}");
        let deadline = Instant::now() + WAIT;
        loop {
            let asked =
                client.ask_timeout::<Keeper>(&keeper("probe"), &KeeperMsg::Remembered, Duration::from_secs(5)).await;
            if let Ok(KeeperReply::Remembered(all)) = &asked
                && !all.iter().any(|(p, _)| *p == keeper("w0").to_string())
            {
                break;
            }
            assert!(Instant::now() < deadline, "w0 was never forgotten: {asked:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The node that comes back last owns (ran) at least one remembered keeper.
        at.get("w1").cloned().unwrap()
    });
    for n in c.names.clone() {
        c.kill(&n);
    }
    // The cluster comes back one node late, as nodes started by hand or by a slow
    // scheduler do: the two first form a majority and run the registry, which must not
    // wake on them what the late node owns (it would run twice: there, then handed off).
    for n in c.names.clone().into_iter().filter(|n| *n != late) {
        c.spawn(&n);
    }
    c.wait_converged(&[], Duration::from_secs(30));
    let registry = troupe_runtime::remember::registry_path().to_string();
    common::wait_for("the registry running on the first two nodes", WAIT, || runs(&c, &registry));
    std::thread::sleep(troupe_runtime::remember::CHECK_EVERY * 2);
    c.spawn(&late);
    c.wait_converged(&[], Duration::from_secs(30));
    let paths: Vec<String> = keys[1..].iter().map(|k| keeper(k).to_string()).collect();
    common::wait_for("every remembered keeper running after the restart", WAIT, || {
        paths.iter().all(|p| runs(&c, p).is_some()).then_some(())
    });
    assert_eq!(runs(&c, &keeper("w0").to_string()), None, "the passivated keeper was started again");
    rt.block_on(async {
        let client = connect(&c).await;
        for k in &keys[1..] {
            assert_eq!(status(&client, k).await.1, 2, "keeper {k}: one activation before the restart, one after");
        }
    });
}

#[test]
fn a_reminder_set_before_its_buckets_node_is_killed_fires_after_it() {
    let mut c = cluster();
    let rt = runtime();
    let target = keeper("r1");
    let bucket = troupe_runtime::reminders::bucket_of(&target).to_string();
    const AFTER_MS: u64 = 4000;
    let client = rt.block_on(async {
        let client = connect(&c).await;
        let set = KeeperMsg::RemindMe { id: "after-kill".into(), after_ms: AFTER_MS, every_ms: None };
        // A bucket acknowledges a reminder only once the registry holds it (it may
        // refuse while the registry is still being elected): setting it again is safe.
        let deadline = Instant::now() + WAIT;
        loop {
            let asked = client.ask_timeout::<Keeper>(&target, &set, Duration::from_secs(10)).await;
            if matches!(asked, Ok(KeeperReply::Done)) {
                break;
            }
            assert!(Instant::now() < deadline, "the reminder was never set: {asked:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client
    });
    let set_at = Instant::now();
    let holder = common::wait_for("the reminder's bucket running", WAIT, || runs(&c, &bucket));
    let killed_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    c.kill(&holder);
    assert!(set_at.elapsed() < Duration::from_millis(AFTER_MS), "killed only after the reminder was due");
    let reminded = rt.block_on(async {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, _, reminded) = status(&client, "r1").await;
            if !reminded.is_empty() {
                break reminded;
            }
            assert!(Instant::now() < deadline, "the reminder never fired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert!(reminded.iter().all(|(id, _)| id == "after-kill"), "{reminded:?}");
    assert!(reminded[0].1 >= killed_unix_ms, "fired before the kill: {reminded:?} vs {killed_unix_ms}");
    let now = runs(&c, &bucket);
    eprintln!("bucket {bucket} moved from {holder} to {now:?}; reminded {reminded:?}");
    assert_ne!(now.as_deref(), Some(holder.as_str()));
}
