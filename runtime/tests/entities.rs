//! Handles and entities inside one node: ask / tell / stream, the distinct errors a
//! caller sees (unknown path, timeout, full mailbox), passivation of idle entities
//! and recovery of their durable state when they come back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_runtime::config;
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, Protocol, RemoteError,
    Reply, ReplyOf, fail,
};

struct Acc;
impl Protocol for Acc {
    type Msg = AccMsg;
    type Reply = u64;
    const NAME: &'static str = "test.acc";
}

#[derive(Serialize, Deserialize)]
enum AccMsg {
    /// Adds durably; answers the new total.
    Add(u64),
    Total,
    /// Streams 1..=n.
    Count(u64),
    /// Blocks the actor for this long.
    Sleep(u64),
    /// Never answers (the reply port is dropped).
    Ignore,
}

struct AccActor;
impl FromParams for AccActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(AccActor)
    }
}

impl Behavior for AccActor {
    type Proto = Acc;
    type State = u64;
    async fn init(&self, ctx: &Ctx<Acc>) -> Result<u64, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(e.to_string()))?;
        Ok(r.entries.iter().map(|(_, b)| u64::from_le_bytes(b[..8].try_into().unwrap())).sum())
    }
    async fn handle(
        &self,
        ctx: &Ctx<Acc>,
        st: &mut u64,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            AccMsg::Add(n) => {
                ctx.persist(n.to_le_bytes().to_vec()).await.map_err(|e| fail(e.to_string()))?;
                *st += n;
                reply.send(*st).await;
            }
            AccMsg::Total => reply.send(*st).await,
            AccMsg::Count(n) => {
                if let Reply::Stream(s) = reply {
                    for i in 1..=n {
                        if !s.send(i).await {
                            break;
                        }
                    }
                    s.end(Ok(()));
                }
            }
            AccMsg::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.send(0).await;
            }
            AccMsg::Ignore => drop(reply),
        }
        Ok(())
    }
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("troupe-ent-{}-{}", std::process::id(), rand_id()));
    std::fs::create_dir_all(d.join("systems")).unwrap();
    d
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

async fn node(passivate_ms: u64, mailbox_cap: u64) -> Node {
    let d = dir();
    std::fs::write(
        d.join("cluster.toml"),
        "[cluster]\nname = \"t\"\nsystems = [\"acc\"]\nseeds = [\"n1\"]\n[[nodes]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\ngossip = \"127.0.0.1:2\"\nadmin = \"127.0.0.1:3\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("systems/acc.toml"),
        format!(
            "[system]\nname = \"acc\"\n[kinds.acc]\nfactory = \"test.acc\"\nplacement = \"sharded\"\nmailbox_cap = {mailbox_cap}\npassivate_after_ms = {passivate_ms}\n"
        ),
    )
    .unwrap();
    let mut kinds = KindRegistry::new();
    kinds.register::<AccActor>("test.acc");
    let loaded = config::load(&d.join("cluster.toml"), &kinds).unwrap_or_else(|e| panic!("{e}"));
    Node::start(Arc::new(loaded), kinds, "n1").await.unwrap()
}

fn path(k: &str) -> ActorPath {
    ActorPath::new("acc", "acc", k).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_tell_stream_and_distinct_errors() {
    let n = node(60_000, 1024).await;
    let h = n.handle::<Acc>(path("a"));
    assert_eq!(h.ask(AccMsg::Add(2)).await.unwrap(), 2);
    h.tell(AccMsg::Add(3)).await.unwrap();
    assert_eq!(h.ask(AccMsg::Total).await.unwrap(), 5);
    let items = h.stream(AccMsg::Count(100)).await.unwrap().collect().await.unwrap();
    assert_eq!(items, (1..=100).collect::<Vec<u64>>());
    // A stream the caller drops stops its producer (bounded buffer, no leak).
    let mut s = h.stream(AccMsg::Count(1_000_000)).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), 1);
    drop(s);
    assert_eq!(
        h.ask_timeout(AccMsg::Total, Duration::from_secs(5)).await.unwrap(),
        5,
        "the actor moved on after the cancel"
    );

    let unknown = n.handle::<Acc>(ActorPath::new("acc", "nope", "x").unwrap()).ask(AccMsg::Total).await.unwrap_err();
    assert!(matches!(unknown, RemoteError::UnknownPath { .. }), "{unknown:?}");
    let nosys = n.handle::<Acc>(ActorPath::new("zzz", "acc", "x").unwrap()).ask(AccMsg::Total).await.unwrap_err();
    assert!(nosys.to_string().contains("no system `zzz`"), "{nosys}");
    let timeout = h.ask_timeout(AccMsg::Sleep(500), Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(timeout, RemoteError::Timeout { .. }), "{timeout:?}");
    let noreply = h.ask(AccMsg::Ignore).await.unwrap_err();
    assert!(matches!(noreply, RemoteError::NoReply { .. }), "{noreply:?}");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_is_an_error_not_memory() {
    let n = node(60_000, 4).await;
    let h = n.handle::<Acc>(path("busy"));
    assert_eq!(h.ask(AccMsg::Total).await.unwrap(), 0);
    // Occupy the actor, then fill its 4 places.
    h.tell(AccMsg::Sleep(300)).await.unwrap();
    // Until the actor has taken the Sleep off its mailbox (it then sleeps with an
    // empty mailbox), not for a fixed time.
    let depth = |n: &Node| n.tree().walk().iter().find(|a| a.path == "/acc/acc/busy").map(|a| a.mailbox_len);
    let deadline = Instant::now() + Duration::from_secs(5);
    while depth(&n) != Some(0) {
        assert!(Instant::now() < deadline, "the actor never took its Sleep");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut refused = 0;
    for _ in 0..10 {
        match h.tell(AccMsg::Total).await {
            Ok(()) => {}
            Err(RemoteError::MailboxFull { cap, .. }) => {
                assert_eq!(cap, 4);
                refused += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(refused, 6, "exactly mailbox_cap messages are accepted while the actor is busy");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entities_passivate_and_come_back_with_their_state() {
    let n = node(200, 1024).await;
    let h = n.handle::<Acc>(path("p"));
    assert_eq!(h.ask(AccMsg::Add(7)).await.unwrap(), 7);
    let live = |n: &Node| n.tree().walk().iter().any(|a| a.path == "/acc/acc/p");
    assert!(live(&n));
    let t = Instant::now();
    while live(&n) {
        assert!(t.elapsed() < Duration::from_secs(5), "the idle entity was never passivated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next message re-activates it, and it recovers its durable state.
    assert_eq!(h.ask(AccMsg::Total).await.unwrap(), 7);
    assert_eq!(h.ask(AccMsg::Add(1)).await.unwrap(), 8);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_are_one_per_node_made_once_and_retried_after_a_failure() {
    use std::sync::atomic::{AtomicU64, Ordering};
    struct Counter(AtomicU64);
    struct Other(u64);
    let (a, b) = (node(60_000, 1024).await, node(60_000, 1024).await);
    let made = AtomicU64::new(0);
    let make = || {
        made.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(Counter(AtomicU64::new(0)))
    };
    let a1 = a.extension(make).unwrap();
    a1.0.fetch_add(5, Ordering::SeqCst);
    let a2 = a.extension(make).unwrap();
    assert!(Arc::ptr_eq(&a1, &a2), "one instance per node");
    assert_eq!(made.load(Ordering::SeqCst), 1, "made once");
    let b1 = b.extension(make).unwrap();
    assert_eq!(b1.0.load(Ordering::SeqCst), 0, "another node has its own");
    // A failed init leaves nothing behind: the next use tries again. An init may ask for
    // an extension of another type.
    assert_eq!(a.extension::<Other, String>(|| Err("not yet".into())).err().as_deref(), Some("not yet"));
    let o = a.extension::<Other, String>(|| Ok(Other(a.extension(make)?.0.load(Ordering::SeqCst)))).unwrap();
    assert_eq!(o.0, 5);
    // Shutdown drops them (they usually hold the node).
    let weak = Arc::downgrade(&a1);
    drop((a1, a2, o));
    a.shutdown().await;
    assert!(weak.upgrade().is_none(), "the node let go of its extension at shutdown");
    b.shutdown().await;
}
