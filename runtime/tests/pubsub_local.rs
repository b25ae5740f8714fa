//! Pub/sub on one node: subscriptions end when dropped, a full subscriber misses
//! messages (counted) without slowing the publisher, an acknowledged publish waits for
//! room instead, numbering is per publisher, groups follow their members' guards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Arc;
use std::time::Duration;
use troupe_runtime::pubsub::PubSub;
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, Protocol, Reply, ReplyOf,
    config,
};

struct Nop;
impl Protocol for Nop {
    type Msg = ();
    type Reply = ();
    const NAME: &'static str = "test.nop";
}
struct NopActor;
impl FromParams for NopActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(NopActor)
    }
}
impl Behavior for NopActor {
    type Proto = Nop;
    type State = ();
    async fn init(&self, _: &Ctx<Nop>) -> Result<(), ActorError> {
        Ok(())
    }
    async fn handle(
        &self,
        _: &Ctx<Nop>,
        _: &mut (),
        _: MsgOf<Self>,
        _: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        Ok(())
    }
}

/// Set once a `Hold` has begun.
static HOLDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Subscribes to "flood" in init; `Hold` blocks it; `Count` answers what it got.
struct Sub;
impl Protocol for Sub {
    type Msg = SubMsg;
    type Reply = u64;
    const NAME: &'static str = "test.sub";
}
#[derive(serde::Serialize, serde::Deserialize)]
enum SubMsg {
    Hold(u64),
    Got,
    Count,
}
struct SubActor;
impl FromParams for SubActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(SubActor)
    }
}
impl Behavior for SubActor {
    type Proto = Sub;
    type State = u64;
    async fn init(&self, ctx: &Ctx<Sub>) -> Result<u64, ActorError> {
        ctx.subscribe("flood", |_| SubMsg::Got);
        Ok(0)
    }
    async fn handle(
        &self,
        _: &Ctx<Sub>,
        got: &mut u64,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            SubMsg::Hold(ms) => {
                HOLDING.store(true, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.send(0).await;
            }
            SubMsg::Got => *got += 1,
            SubMsg::Count => reply.send(*got).await,
        }
        Ok(())
    }
}

async fn node() -> Node {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d =
        std::env::temp_dir().join(format!("troupe-pubsub-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("systems")).unwrap();
    std::fs::write(
        d.join("cluster.toml"),
        "[cluster]\nname = \"t\"\nsystems = [\"nop\"]\nseeds = [\"n1\"]\n[[nodes]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\ngossip = \"127.0.0.1:2\"\nadmin = \"127.0.0.1:3\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("systems/nop.toml"),
        "[system]\nname = \"nop\"\n[kinds.nop]\nfactory = \"test.nop\"\nplacement = \"sharded\"\n[kinds.sub]\nfactory = \"test.sub\"\nplacement = \"sharded\"\nmailbox_cap = 4\n",
    )
    .unwrap();
    let mut kinds = KindRegistry::new();
    kinds.register::<NopActor>("test.nop");
    kinds.register::<SubActor>("test.sub");
    let loaded = config::load(&d.join("cluster.toml"), &kinds).unwrap_or_else(|e| panic!("{e}"));
    Node::start(Arc::new(loaded), kinds, "n1").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publish_and_unsubscribe_on_drop() {
    let n = node().await;
    let ps = PubSub::of(&n);
    let mut a = ps.subscribe("t");
    let mut b = ps.subscribe("t");
    assert_eq!(ps.nodes_for("t"), vec!["n1".to_string()]);
    let p = ps.publisher("p");
    let d = p.publish("t", &"hello".to_string()).await.unwrap();
    assert_eq!((d.seq, d.nodes.clone()), (1, vec!["n1".to_string()]));
    for s in [&mut a, &mut b] {
        let got = s.recv().await.unwrap();
        assert_eq!((got.publisher.as_str(), got.seq), ("n1/p", 1));
        assert_eq!(got.decode::<String>().unwrap(), "hello");
    }
    drop(a);
    assert_eq!(ps.nodes_for("t"), vec!["n1".to_string()], "b still subscribes");
    drop(b);
    assert!(ps.nodes_for("t").is_empty(), "the last subscription's drop unsubscribes");
    let d = p.publish("t", &1u64).await.unwrap();
    assert_eq!((d.seq, d.nodes.len()), (2, 0), "numbered on, sent nowhere");
    // A new publisher of the same name numbers from 1 again, and is still delivered
    // (duplicates are told apart by publisher instance, not by name).
    let mut c = ps.subscribe("t");
    let again = ps.publisher("p");
    assert_eq!(again.publish("t", &7u64).await.unwrap().subscribers, 0, "plain: not counted");
    let got = c.recv().await.unwrap();
    assert_eq!((got.publisher.as_str(), got.seq, got.decode::<u64>().unwrap()), ("n1/p", 1, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscriber_misses_messages_and_an_acked_publish_waits() {
    let n = node().await;
    let ps = PubSub::of(&n);
    let mut slow = ps.subscribe_with("t", 2);
    let p = ps.publisher("p");
    for i in 0..10u64 {
        p.publish("t", &i).await.unwrap();
    }
    // The queue held two; the publisher did not wait for the rest.
    assert_eq!(slow.recv().await.unwrap().seq, 1);
    assert_eq!(slow.recv().await.unwrap().seq, 2);
    assert!(tokio::time::timeout(Duration::from_millis(100), slow.recv()).await.is_err());
    let dropped = n.metrics_snapshot().into_iter().find(|m| m.name == "troupe_pubsub_dropped_total").unwrap();
    assert_eq!(dropped.value, 8.0);
    // Acknowledged: waits for room, so nothing is missed.
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < 10 {
            seqs.push(slow.recv().await.unwrap().seq);
        }
        seqs
    });
    for i in 0..10u64 {
        assert_eq!(p.publish_acked("t", &i).await.unwrap().subscribers, 1);
    }
    assert_eq!(reader.await.unwrap(), (11..=20).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_follow_their_members() {
    let n = node().await;
    let ps = PubSub::of(&n);
    let a = ActorPath::new("nop", "nop", "a").unwrap();
    let b = ActorPath::new("nop", "nop", "b").unwrap();
    let ga = ps.join("g", &a);
    let gb = ps.join("g", &b);
    assert_eq!(ps.members("g"), vec![a.clone(), b.clone()]);
    drop(ga);
    assert_eq!(ps.members("g"), vec![b]);
    drop(gb);
    assert!(ps.members("g").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_actor_with_a_full_mailbox_misses_messages_and_they_are_counted() {
    let n = node().await;
    let ps = PubSub::of(&n);
    let path = ActorPath::new("nop", "sub", "s").unwrap();
    let h = n.handle::<Sub>(path.clone());
    assert_eq!(h.ask(SubMsg::Count).await.unwrap(), 0, "started and subscribed");
    // Busy for a while, with a mailbox of 4: most of 50 messages find it full.
    let busy = n.handle::<Sub>(path);
    let hold = tokio::spawn(async move { busy.ask_timeout(SubMsg::Hold(2000), Duration::from_secs(30)).await });
    while !HOLDING.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let p = ps.publisher("p");
    for i in 0..50u64 {
        p.publish("flood", &i).await.unwrap();
    }
    hold.await.unwrap().unwrap();
    let dropped = || {
        n.metrics_snapshot().into_iter().find(|m| m.name == "troupe_pubsub_dropped_total").map_or(0.0, |m| m.value)
            as u64
    };
    // Every message is either handled or counted as missed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = h.ask(SubMsg::Count).await.unwrap();
        if got + dropped() == 50 {
            assert!(dropped() > 0, "nothing was missed: the mailbox never filled");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "got {got}, dropped {}", dropped());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
