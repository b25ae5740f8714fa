//! Remembered entities and durable reminders on one node: the registry holds the
//! entities that run and forgets the ones that passivated; reminders fire once or
//! every period until cancelled, are retried while the target fails, refuse bad input
//! with the reason, and a bucket with nothing left stops. (Crashes and failover are
//! tested on real processes in tests/remembered.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_runtime::reminders::{self, Schedule};
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, Protocol, RemoteError,
    Reply, ReplyOf, config, fail, remember,
};

struct Mem;
impl Protocol for Mem {
    type Msg = MemMsg;
    type Reply = String;
    const NAME: &'static str = "test.mem";
}
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum MemMsg {
    Hello,
    Sleep,
    /// A reminder arrived; the first `fail_first` of each id fail the handler.
    Reminded {
        id: String,
        fail_first: u32,
    },
    Remind {
        id: String,
        schedule_ms: (u64, Option<u64>),
        fail_first: u32,
    },
    Cancel(String),
}

/// Every reminder any `mem` actor handled: (path key, id, handled ok).
static GOT: Mutex<Vec<(String, String, bool)>> = Mutex::new(Vec::new());

fn got(key: &str, id: &str) -> (usize, usize) {
    let g = GOT.lock();
    let all = g.iter().filter(|(k, i, _)| k == key && i == id);
    let ok = all.clone().filter(|(_, _, ok)| *ok).count();
    (all.count(), ok)
}

struct MemActor;
impl FromParams for MemActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(MemActor)
    }
}
impl Behavior for MemActor {
    type Proto = Mem;
    type State = ();
    async fn init(&self, _: &Ctx<Mem>) -> Result<(), ActorError> {
        Ok(())
    }
    async fn handle(
        &self,
        ctx: &Ctx<Mem>,
        _: &mut (),
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            MemMsg::Hello => reply.send(ctx.node().name().to_string()).await,
            MemMsg::Sleep => {
                ctx.passivate();
                reply.send("sleeping".into()).await;
            }
            MemMsg::Reminded { id, fail_first } => {
                let key = ctx.key().to_string();
                let (before, _) = got(&key, &id);
                let ok = before as u32 >= fail_first;
                GOT.lock().push((key, id.clone(), ok));
                if !ok {
                    return Err(fail(format!("failing reminder {id} on purpose")));
                }
                reply.send(id).await;
            }
            MemMsg::Remind { id, schedule_ms: (first, period), fail_first } => {
                let schedule =
                    Schedule { first: Duration::from_millis(first), period: period.map(Duration::from_millis) };
                match ctx.remind(&id, schedule, MemMsg::Reminded { id: id.clone(), fail_first }).await {
                    Ok(()) => reply.send("set".into()).await,
                    Err(e) => reply.fail(e),
                }
            }
            MemMsg::Cancel(id) => match ctx.cancel_reminder(&id).await {
                Ok(existed) => reply.send(existed.to_string()).await,
                Err(e) => reply.fail(e),
            },
        }
        Ok(())
    }
}

async fn node() -> Node {
    let d = std::env::temp_dir().join(format!("troupe-remembered-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(d.join("systems")).unwrap();
    std::fs::write(
        d.join("cluster.toml"),
        "[cluster]\nname = \"t\"\nsystems = [\"m\"]\nseeds = [\"n1\"]\n[[nodes]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\ngossip = \"127.0.0.1:2\"\nadmin = \"127.0.0.1:3\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("systems/m.toml"),
        "[system]\nname = \"m\"\n[kinds.mem]\nfactory = \"test.mem\"\nplacement = \"sharded\"\nremember = true\n",
    )
    .unwrap();
    let mut kinds = KindRegistry::new();
    kinds.register::<MemActor>("test.mem");
    let loaded = config::load(&d.join("cluster.toml"), &kinds).unwrap_or_else(|e| panic!("{e}"));
    Node::start(Arc::new(loaded), kinds, "n1").await.unwrap()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_003
        + std::time::SystemTime::now().elapsed().map_or(0, |d| d.as_nanos() as u64)
}

fn path(k: &str) -> ActorPath {
    ActorPath::new("m", "mem", k).unwrap()
}

async fn eventually<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn remembered(list: &[remember::RememberedEntity]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|e| e.path.clone()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_entities_are_remembered_and_passivated_ones_forgotten() {
    let n = node().await;
    for k in ["a", "b"] {
        assert_eq!(n.handle::<Mem>(path(k)).ask(MemMsg::Hello).await.unwrap(), "n1");
    }
    let want = vec!["/m/mem/a".to_string(), "/m/mem/b".to_string()];
    eventually("both entities remembered", Duration::from_secs(10), async || {
        let l = remember::list(&n).await.ok()?;
        (remembered(&l) == want).then_some(())
    })
    .await;
    let l = remember::list(&n).await.unwrap();
    assert!(l.iter().all(|e| e.at.node == "n1" && e.at.epoch == n.epoch()), "{l:?}");
    // A passivation forgets; the other stays.
    n.handle::<Mem>(path("b")).ask(MemMsg::Sleep).await.unwrap();
    eventually("the passivated entity forgotten", Duration::from_secs(10), async || {
        let l = remember::list(&n).await.ok()?;
        (remembered(&l) == want[..1]).then_some(())
    })
    .await;
    // Woken again by a message, it is remembered again (a new incarnation).
    n.handle::<Mem>(path("b")).ask(MemMsg::Hello).await.unwrap();
    eventually("the woken entity remembered again", Duration::from_secs(10), async || {
        let l = remember::list(&n).await.ok()?;
        (remembered(&l) == want).then_some(())
    })
    .await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_once_or_every_period_until_cancelled() {
    let n = node().await;
    let h = n.handle::<Mem>(path("r"));
    let t0 = Instant::now();
    let set = |id: &str, first, period| MemMsg::Remind { id: id.into(), schedule_ms: (first, period), fail_first: 0 };
    assert_eq!(h.ask(set("once", 300, None)).await.unwrap(), "set");
    assert_eq!(h.ask(set("tick", 200, Some(200))).await.unwrap(), "set");
    let listed = reminders::list(&n, &path("r")).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["once", "tick"], "{listed:?}");
    eventually("the one-shot reminder", Duration::from_secs(10), async || (got("r", "once").1 == 1).then_some(()))
        .await;
    assert!(t0.elapsed() >= Duration::from_millis(300), "fired early: {:?}", t0.elapsed());
    eventually("three periodic firings", Duration::from_secs(10), async || (got("r", "tick").1 >= 3).then_some(()))
        .await;
    assert_eq!(h.ask(MemMsg::Cancel("tick".into())).await.unwrap(), "true");
    assert_eq!(h.ask(MemMsg::Cancel("tick".into())).await.unwrap(), "false", "cancelled twice");
    let after_cancel = got("r", "tick").1;
    // A sending already out when it was cancelled may still land; nothing after it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(got("r", "tick").1 <= after_cancel + 1, "the cancelled reminder kept firing");
    assert_eq!(got("r", "once").1, 1, "the one-shot reminder fired again");
    assert!(reminders::list(&n, &path("r")).await.unwrap().is_empty());
    // Nothing left: the bucket stops (a passivation), and so it is forgotten too.
    let bucket = reminders::bucket_of(&path("r"));
    eventually("the empty bucket stopped", Duration::from_secs(10), async || {
        n.local_slot(&bucket).is_none().then_some(())
    })
    .await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_gets_its_reminder_again_until_it_handles_it() {
    let n = node().await;
    let h = n.handle::<Mem>(path("f"));
    let msg = MemMsg::Remind { id: "flaky".into(), schedule_ms: (50, None), fail_first: 2 };
    assert_eq!(h.ask(msg).await.unwrap(), "set");
    eventually("delivered after two failures", Duration::from_secs(20), async || {
        (got("f", "flaky") == (3, 1)).then_some(())
    })
    .await;
    eventually("removed once delivered", Duration::from_secs(10), async || {
        reminders::list(&n, &path("f")).await.ok()?.is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got("f", "flaky"), (3, 1), "delivered more than once with no failure in between");
    let retried = n.metrics_snapshot().into_iter().find(|m| m.name == "troupe_reminders_retried_total");
    assert!(retried.is_some_and(|m| m.value >= 2.0), "retries not counted");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reminders_are_refused_with_the_reason() {
    let n = node().await;
    let target = path("x");
    let why = |e: RemoteError| match e {
        RemoteError::Invalid(why) => why,
        other => panic!("not refused as invalid: {other:?}"),
    };
    let hello = MemMsg::Hello;
    let e = reminders::set::<Mem>(&n, &target, "", Schedule::once(Duration::ZERO), &hello).await.unwrap_err();
    assert!(why(e).contains("reminder id is 1 to 256 bytes"));
    let long = "i".repeat(300);
    let e = reminders::set::<Mem>(&n, &target, &long, Schedule::once(Duration::ZERO), &hello).await.unwrap_err();
    assert!(why(e).contains("not 300"));
    let e = reminders::set::<Mem>(&n, &target, "fast", Schedule::every(Duration::from_millis(5)), &hello)
        .await
        .unwrap_err();
    assert!(why(e).contains("period is at least"));
    let year = Duration::from_secs(400 * 24 * 3600);
    let e = reminders::set::<Mem>(&n, &target, "late", Schedule::once(year), &hello).await.unwrap_err();
    assert!(why(e).contains("at most"));
    let e = reminders::set::<Mem>(&n, &target, "rare", Schedule::every(year), &hello).await.unwrap_err();
    assert!(why(e).contains("at most"));
    let huge = vec![7u8; reminders::MESSAGE_BYTES_MAX + 1];
    let e = reminders::set_encoded(&n, &target, "big", Schedule::once(Duration::ZERO), huge).await.unwrap_err();
    assert!(why(e).contains("keep large data in the actor's state"));
    // A message its target cannot read is dropped as undeliverable, not retried forever.
    reminders::set_encoded(&n, &target, "garbage", Schedule::once(Duration::ZERO), vec![0xff; 3]).await.unwrap();
    eventually("the undeliverable reminder dropped", Duration::from_secs(10), async || {
        reminders::list(&n, &target).await.ok()?.is_empty().then_some(())
    })
    .await;
    let dropped = n.metrics_snapshot().into_iter().find(|m| m.name == "troupe_reminders_dropped_total");
    assert!(dropped.is_some_and(|m| m.value >= 1.0), "the drop was not counted");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_message_of_an_older_incarnation_never_forgets_a_newer_one() {
    use remember::{Incarnation, RegistryMsg, RegistryProto, RegistryReply};
    let n = node().await;
    let registry = n.handle::<RegistryProto>(remember::registry_path());
    let path = "/m/mem/ghost".to_string();
    let inc = |id| Incarnation { node: "n1".into(), epoch: n.epoch(), id };
    let started = |id| RegistryMsg::Started { path: path.clone(), at: inc(id) };
    let passivated = |id| RegistryMsg::Passivated { path: path.clone(), at: inc(id) };
    let held = async || -> Option<Incarnation> {
        match registry.ask(RegistryMsg::List).await.unwrap() {
            RegistryReply::Remembered(all) => all.into_iter().find(|e| e.path == path).map(|e| e.at),
            other => panic!("{other:?}"),
        }
    };
    // Incarnation 1_000_002 runs; then the retried messages of 1_000_001 arrive late.
    assert!(matches!(registry.ask(started(1_000_002)).await.unwrap(), RegistryReply::Done));
    assert!(matches!(registry.ask(passivated(1_000_001)).await.unwrap(), RegistryReply::Done));
    assert_eq!(held().await, Some(inc(1_000_002)), "a stale passivation forgot the running incarnation");
    assert!(matches!(registry.ask(started(1_000_001)).await.unwrap(), RegistryReply::Done));
    assert_eq!(held().await, Some(inc(1_000_002)), "a stale registration replaced the running incarnation");
    // Its own passivation forgets it; asked again at once, both answers mean durable.
    let (a, b) = tokio::join!(registry.ask(passivated(1_000_002)), registry.ask(passivated(1_000_002)));
    assert!(matches!((a.unwrap(), b.unwrap()), (RegistryReply::Done, RegistryReply::Done)));
    assert_eq!(held().await, None);
    n.shutdown().await;
}
