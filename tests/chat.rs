//! Chat (system 08) on real node processes: real WebSocket clients (the SDK's), the
//! HTTP API, and a Jepsen-style check of every delivered history after a gateway node
//! that also owns a busy conversation is SIGKILLed mid-traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{TestCluster, request, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_chat::EventBody;
use troupe_chat::checker::{self, Acked, ClientHistory, Received};
use troupe_chat::frames::{ClientFrame, ServerFrame};
use troupe_client::ws::{WsClient, WsError, WsFrame, connect_with};

const WAIT: Duration = Duration::from_secs(30);

fn cluster(extra: &str) -> TestCluster {
    cluster_with(&["chat"], extra)
}

fn cluster_with(systems: &[&'static str], extra: &str) -> TestCluster {
    let c = TestCluster::start(common::Options {
        systems: systems.to_vec(),
        nodes: 3,
        extra: extra.to_string(),
        ..common::Options::default()
    });
    c.wait_converged(&[], WAIT);
    for n in &c.names {
        let addr = c.port(n, "chat");
        wait_for(&format!("{n}'s chat gateway"), WAIT, || {
            request(addr, "GET", "/v1/health", &[], b"").ok().filter(|r| r.status == 200).map(|_| ())
        });
    }
    c
}

/// The headers of an authenticating proxy speaking for `user`.
fn as_user(c: &TestCluster, user: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), c.service_auth()), ("x-user-id".into(), user.into())]
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    h.push(("content-type", "application/json"));
    let r = request(addr, method, path, &h, body.as_bytes()).unwrap();
    (r.status, r.json())
}

async fn open(addr: SocketAddr, headers: &[(String, String)]) -> Result<WsClient, WsError> {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    connect_with(&format!("ws://{addr}/v1/ws"), &h, Duration::from_secs(5)).await
}

async fn say(ws: &mut WsClient, f: &ClientFrame) {
    ws.send_text(serde_json::to_string(f).unwrap()).await.unwrap();
}

/// The next frame that `pick` keeps, within `WAIT`.
async fn next_where<T>(ws: &mut WsClient, mut pick: impl FnMut(ServerFrame) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_within(left).await {
            Ok(Some(WsFrame::Text(t))) => {
                let f: ServerFrame = serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t}: {e}"));
                if let Some(v) = pick(f) {
                    return v;
                }
            }
            other => panic!("no expected frame: {other:?}"),
        }
    }
}

#[test]
fn conversations_over_websockets_and_http_with_refusals_that_say_why() {
    // Gateways whose largest frame is 16 KiB, so one event can be too big to send.
    let c = cluster("[overrides.chat.gateway]\nmessage_bytes_max = 16384\n");
    let (n1, n2) = (c.port("n1", "chat"), c.port("n2", "chat"));
    let alice_key = vec![("authorization".to_string(), format!("Bearer {}", c.api_key("alice")))];
    let bob = as_user(&c, "bob");

    // Refusals, each with its reason.
    let (s, b) = call(n1, "GET", "/v1/conversations", &[], "");
    assert_eq!(s, 401, "{b}");
    assert!(b["error"].as_str().unwrap().contains("API key"), "{b}");
    let (s, b) = call(n1, "GET", "/v1/conversations", &[("x-user-id".into(), "bob".into())], "");
    assert_eq!(s, 401, "{b}");
    assert!(b["error"].as_str().unwrap().contains("service token"), "{b}");
    let (s, b) = call(n1, "GET", "/v1/conversations", &as_user(&c, "bad:user"), "");
    assert_eq!(s, 400, "{b}");
    let (s, b) = call(n1, "POST", "/v1/conversations", &bob, r#"{"conv":"dm:x","members":[]}"#);
    assert_eq!(s, 400, "{b}");
    assert!(b["error"].as_str().unwrap().contains("dm:<a>:<b>"), "{b}");
    let (s, b) = call(n1, "POST", "/v1/conversations", &bob, r#"{"conv":"team","members":"x"}"#);
    assert_eq!(s, 400, "a body of the wrong shape: {b}");

    // bob makes a group over HTTP; alice (by her API key) is in it.
    let (s, b) = call(n1, "POST", "/v1/conversations", &bob, r#"{"conv":"team","members":["alice","carol"]}"#);
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["members"], serde_json::json!(["alice", "bob", "carol"]));
    let (s, b) = call(n2, "GET", "/v1/conversations", &alice_key, "");
    assert_eq!((s, b["user"].as_str()), (200, Some("alice")), "{b}");
    assert_eq!(b["conversations"], serde_json::json!(["team"]));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Without credentials the WebSocket is refused with the reason.
        match open(n1, &[]).await {
            Err(WsError::Refused { status, body }) => assert!(status == 401 && body.contains("API key"), "{body}"),
            other => panic!("{other:?}"),
        }
        let mut a = open(n2, &alice_key).await.unwrap();
        say(&mut a, &ClientFrame::Hello { cursors: BTreeMap::new() }).await;
        let convs = next_where(&mut a, |f| match f {
            ServerFrame::Ready { user, conversations, more: false } => Some((user, conversations)),
            _ => None,
        })
        .await;
        assert_eq!(convs, ("alice".to_string(), vec!["team".to_string()]));
        // alice gets the group's first event, its creation.
        let first = next_where(&mut a, |f| match f {
            ServerFrame::Event { conv, seq, body: EventBody::Created { by, .. }, .. } => Some((conv, seq, by)),
            _ => None,
        })
        .await;
        assert_eq!(first, ("team".to_string(), 1, "bob".to_string()));

        // bob sends over HTTP on another node; alice's session has it pushed.
        let (s, b) = call(n1, "POST", "/v1/conversations/team/messages", &bob, r#"{"id":"b1","text":"hello team"}"#);
        assert_eq!((s, b["seq"].as_u64()), (200, Some(2)), "{b}");
        let (s, b) = call(n1, "POST", "/v1/conversations/team/messages", &bob, r#"{"id":"b1","text":"hello team"}"#);
        assert_eq!((s, b["seq"].as_u64(), b["duplicate"].as_bool()), (200, Some(2), Some(true)), "a resend: {b}");
        let got = next_where(&mut a, |f| match f {
            ServerFrame::Event { seq, body: EventBody::Message { from, text, .. }, .. } => Some((seq, from, text)),
            _ => None,
        })
        .await;
        assert_eq!(got, (2, "bob".to_string(), "hello team".to_string()));

        // alice starts a direct conversation with carol by sending to it.
        say(&mut a, &ClientFrame::Send { conv: "dm:alice:carol".into(), id: "a1".into(), text: "hi carol".into() })
            .await;
        let seq = next_where(&mut a, |f| match f {
            ServerFrame::Accepted { id, seq, .. } if id == "a1" => Some(seq),
            ServerFrame::Rejected { reason, .. } => panic!("{reason}"),
            _ => None,
        })
        .await;
        assert_eq!(seq, 2, "the direct conversation's creation is #1");
        // Not a member, a bad frame, a message too long: refused with the reason.
        say(&mut a, &ClientFrame::Send { conv: "dm:bob:carol".into(), id: "a2".into(), text: "x".into() }).await;
        let why = next_where(&mut a, |f| match f {
            ServerFrame::Rejected { id, reason } if id == "a2" => Some(reason),
            _ => None,
        })
        .await;
        assert!(why.contains("not a member"), "{why}");
        a.send_text("{\"type\":\"shout\"}").await.unwrap();
        let why = next_where(&mut a, |f| match f {
            ServerFrame::Error { reason } => Some(reason),
            _ => None,
        })
        .await;
        assert!(why.contains("unknown variant"), "{why}");
        let long = serde_json::json!({ "id": "a3", "text": "x".repeat(20_000) }).to_string();
        let (s, b) = call(n1, "POST", "/v1/conversations/team/messages", &alice_key, &long);
        assert_eq!(s, 400, "{b}");
        assert!(b["error"].as_str().unwrap().contains("at most 16384 bytes"), "{b}");

        // An event too big for the gateway's frames is named, not sent, and the
        // session goes on (16 KiB of control characters is ~96 KiB of JSON).
        let control = serde_json::json!({ "id": "b3", "text": "\u{1}".repeat(16_000) }).to_string();
        let (s, b) = call(n1, "POST", "/v1/conversations/team/messages", &bob, &control);
        assert_eq!((s, b["seq"].as_u64()), (200, Some(3)), "{b}");
        let seq = next_where(&mut a, |f| match f {
            ServerFrame::TooBig { conv, seq, bytes } if conv == "team" => Some((seq, bytes)),
            _ => None,
        })
        .await;
        assert!(seq.0 == 3 && seq.1 > 16384, "{seq:?}");

        // carol, connecting later, is told of both conversations and catches up on
        // each from her cursor; her receipt reaches the sender.
        let carol = as_user(&c, "carol");
        wait_for("carol's directory to list the direct conversation", WAIT, || {
            let (s, b) = call(n1, "GET", "/v1/conversations", &carol, "");
            (s == 200 && b["conversations"].as_array().is_some_and(|l| l.len() == 2)).then_some(())
        });
        let mut cw = open(n1, &carol).await.unwrap();
        say(&mut cw, &ClientFrame::Hello { cursors: [("team".to_string(), 1)].into() }).await;
        let convs = next_where(&mut cw, |f| match f {
            ServerFrame::Ready { conversations, more: false, .. } => Some(conversations),
            _ => None,
        })
        .await;
        assert_eq!(convs, ["dm:alice:carol", "team"]);
        let mut seen = BTreeSet::new();
        while seen.len() < 4 {
            let e = next_where(&mut cw, |f| match f {
                ServerFrame::Event { conv, seq, .. } | ServerFrame::TooBig { conv, seq, .. } => Some((conv, seq)),
                _ => None,
            })
            .await;
            assert!(seen.insert(e.clone()), "{e:?} twice");
        }
        let want: BTreeSet<(String, u64)> = [
            ("dm:alice:carol".to_string(), 1),
            ("dm:alice:carol".to_string(), 2),
            ("team".to_string(), 2),
            ("team".to_string(), 3),
        ]
        .into();
        assert_eq!(seen, want, "team from cursor 1: #2 and #3 (too big)");
        say(&mut cw, &ClientFrame::Read { conv: "dm:alice:carol".into(), seq: 2 }).await;
        let receipts = next_where(&mut a, |f| match f {
            ServerFrame::Receipts { conv, receipts } if conv == "dm:alice:carol" => Some(receipts),
            _ => None,
        })
        .await;
        assert!(receipts.contains(&("carol".to_string(), 2, 2)), "{receipts:?}");

        // Membership changes are events in the same sequence.
        say(
            &mut cw,
            &ClientFrame::Members { id: "m1".into(), conv: "team".into(), add: vec![], remove: vec!["bob".into()] },
        )
        .await;
        let why = next_where(&mut cw, |f| match f {
            ServerFrame::Rejected { id, reason } if id == "m1" => Some(reason),
            ServerFrame::Done { id, .. } if id == "m1" => panic!("carol may not remove bob"),
            _ => None,
        })
        .await;
        assert!(why.contains("only bob"), "{why}");
        say(
            &mut cw,
            &ClientFrame::Members { id: "m2".into(), conv: "team".into(), add: vec![], remove: vec!["carol".into()] },
        )
        .await;
        next_where(&mut cw, |f| matches!(f, ServerFrame::Done { ref id, .. } if id == "m2").then_some(())).await;
        let left = next_where(&mut a, |f| match f {
            ServerFrame::Event { conv, seq, body: EventBody::Left { users, .. }, .. } if conv == "team" => {
                Some((seq, users))
            }
            _ => None,
        })
        .await;
        assert_eq!(left, (4, vec!["carol".to_string()]));
        // carol, gone, reads up to her leaving and no further.
        let (s, b) = call(n2, "GET", "/v1/conversations/team/messages?after=0", &carol, "");
        assert_eq!((s, b["head"].as_u64()), (200, Some(4)), "carol left: {b}");
        let (s, b) = call(n2, "GET", "/v1/conversations/team/messages?after=0", &as_user(&c, "dan"), "");
        assert_eq!(s, 403, "never a member: {b}");
        assert!(b["error"].as_str().unwrap().contains("not a member"), "{b}");
        // carol sees her own leaving, then nothing more of the group.
        next_where(&mut cw, |f| {
            matches!(f, ServerFrame::Event { ref conv, seq: 4, .. } if conv == "team").then_some(())
        })
        .await;
        say(&mut a, &ClientFrame::Send { conv: "team".into(), id: "a5".into(), text: "carol is gone".into() }).await;
        next_where(&mut a, |f| matches!(f, ServerFrame::Event { seq: 5, .. }).then_some(())).await;
        let quiet = Instant::now() + Duration::from_secs(3);
        while let Ok(Some(WsFrame::Text(t))) = cw.next_within(quiet.saturating_duration_since(Instant::now())).await {
            assert!(!t.contains("\"team\""), "carol left the group but got {t}");
        }
        // A cursor past the head is answered with the reason, and events go on from
        // the head.
        let mut cw = open(n2, &carol).await.unwrap();
        say(&mut cw, &ClientFrame::Hello { cursors: [("dm:alice:carol".to_string(), u64::MAX)].into() }).await;
        let why = next_where(&mut cw, |f| match f {
            ServerFrame::Error { reason } => Some(reason),
            _ => None,
        })
        .await;
        assert!(why.contains("past its last event 2"), "{why}");
        say(&mut a, &ClientFrame::Send { conv: "dm:alice:carol".into(), id: "a6".into(), text: "still here".into() })
            .await;
        let got = next_where(&mut cw, |f| match f {
            ServerFrame::Event { conv, seq, .. } => Some((conv, seq)),
            _ => None,
        })
        .await;
        assert_eq!(got, ("dm:alice:carol".to_string(), 3));
    });

    // A long poll waits for the next message and returns it.
    let poller = std::thread::spawn({
        let bob = bob.clone();
        move || call(n2, "GET", "/v1/conversations/team/messages?after=5&wait_ms=20000", &bob, "")
    });
    std::thread::sleep(Duration::from_millis(500));
    let (s, b) = call(n1, "POST", "/v1/conversations/team/messages", &bob, r#"{"id":"b2","text":"later"}"#);
    assert_eq!(s, 200, "{b}");
    let (s, b) = poller.join().unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"][0]["seq"], 6, "{b}");
    assert_eq!(b["events"][0]["body"]["message"]["text"], "later", "{b}");
}

/// One client device's whole history, shared with the test's checker.
#[derive(Default)]
struct Log {
    received: Vec<Received>,
    cursors: BTreeMap<String, u64>,
    acked: Vec<Acked>,
    /// Sent and not yet accepted: id → (conversation, text).
    pending: BTreeMap<String, (String, String)>,
    /// Refused as not stored: sent again on the next tick.
    resend: BTreeSet<String>,
    errors: Vec<String>,
    reconnects: u32,
}

struct Device {
    user: String,
    name: String,
    headers: Vec<(String, String)>,
    /// Gateways to try, from the first.
    gateways: Vec<SocketAddr>,
    /// Conversations it sends to, in turn.
    sends_to: Vec<String>,
    log: Arc<Mutex<Log>>,
}

fn handle_frame(d: &Device, text: &str) -> bool {
    let f: ServerFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            d.log.lock().unwrap().errors.push(format!("{text}: {e}"));
            return true;
        }
    };
    let mut log = d.log.lock().unwrap();
    match f {
        ServerFrame::Event { conv, seq, body, .. } => {
            let (from, id) = match body {
                EventBody::Message { from, id, .. } => (from, id),
                _ => (String::new(), format!("event-{seq}")),
            };
            let cursor = log.cursors.entry(conv.clone()).or_insert(0);
            *cursor = (*cursor).max(seq);
            log.received.push(Received { conv, seq, from, id });
        }
        ServerFrame::Accepted { id, conv, seq } => {
            log.pending.remove(&id);
            log.resend.remove(&id);
            log.acked.push(Acked { conv, from: d.user.clone(), id, seq });
        }
        ServerFrame::Rejected { id, reason } if reason.contains("not stored") => {
            log.resend.insert(id);
        }
        ServerFrame::Error { reason } if reason.contains("say hello again") => return false,
        ServerFrame::Rejected { .. }
        | ServerFrame::Gap { .. }
        | ServerFrame::TooBig { .. }
        | ServerFrame::Error { .. } => {
            log.errors.push(text.to_string());
        }
        ServerFrame::Ready { .. }
        | ServerFrame::Done { .. }
        | ServerFrame::Receipts { .. }
        | ServerFrame::Presence { .. } => {}
    }
    true
}

/// Drives one device until `stop`: connects (to the next gateway after a failure),
/// says hello with its cursors, resends what was not acknowledged, sends a message
/// every `every` while `sending`.
async fn drive(d: Device, every: Duration, sending: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let mut next_gateway = 0usize;
    let mut sent = 0u64;
    'connect: while !stop.load(Ordering::SeqCst) {
        let addr = d.gateways[next_gateway % d.gateways.len()];
        let mut ws = match open(addr, &d.headers).await {
            Ok(ws) => ws,
            Err(_) => {
                next_gateway += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (cursors, pending) = {
            let log = d.log.lock().unwrap();
            (log.cursors.clone(), log.pending.clone())
        };
        let mut frames = vec![ClientFrame::Hello { cursors }];
        frames.extend(pending.into_iter().map(|(id, (conv, text))| ClientFrame::Send { conv, id, text }));
        for f in frames {
            if ws.send_text(serde_json::to_string(&f).unwrap()).await.is_err() {
                next_gateway += 1;
                d.log.lock().unwrap().reconnects += 1;
                continue 'connect;
            }
        }
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                f = ws.next() => match f {
                    Some(Ok(WsFrame::Text(t))) => {
                        if !handle_frame(&d, &t) {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            d.log.lock().unwrap().reconnects += 1;
                            continue 'connect;
                        }
                    }
                    _ => {
                        next_gateway += 1;
                        d.log.lock().unwrap().reconnects += 1;
                        continue 'connect;
                    }
                },
                _ = tick.tick() => {
                    if stop.load(Ordering::SeqCst) {
                        let _ = ws.close().await;
                        break 'connect;
                    }
                    let mut out = Vec::new();
                    {
                        let mut log = d.log.lock().unwrap();
                        for id in std::mem::take(&mut log.resend) {
                            if let Some((conv, text)) = log.pending.get(&id) {
                                out.push(ClientFrame::Send { conv: conv.clone(), id: id.clone(), text: text.clone() });
                            }
                        }
                        if sending.load(Ordering::SeqCst) && log.pending.len() < 4 {
                            let conv = d.sends_to[sent as usize % d.sends_to.len()].clone();
                            let id = format!("{}-{sent}", d.name);
                            let text = format!("{} says {sent}", d.name);
                            sent += 1;
                            log.pending.insert(id.clone(), (conv.clone(), text.clone()));
                            out.push(ClientFrame::Send { conv, id, text });
                        }
                    }
                    for f in out {
                        if ws.send_text(serde_json::to_string(&f).unwrap()).await.is_err() {
                            next_gateway += 1;
                            d.log.lock().unwrap().reconnects += 1;
                            continue 'connect;
                        }
                    }
                }
            }
        }
    }
}

/// The node whose tree holds `path` now.
fn host_of(c: &TestCluster, path: &str) -> Option<String> {
    c.alive().into_iter().find(|n| {
        request(c.admin(n), "GET", "/v1/tree", &[], b"").is_ok_and(|r| r.status == 200 && r.body.contains(path))
    })
}

#[test]
fn a_killed_gateway_and_conversation_owner_lose_duplicate_and_reorder_nothing() {
    let mut c = cluster("");
    let users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let n1 = c.port("n1", "chat");
    let members: Vec<String> = users[1..].to_vec();
    let body = serde_json::json!({ "conv": "team", "members": members }).to_string();
    let (s, b) = call(n1, "POST", "/v1/conversations", &as_user(&c, "u0"), &body);
    assert_eq!(s, 201, "{b}");

    // Each user is in the group and in a direct conversation with each neighbour; u0
    // has two devices.
    let dm = |a: usize, b: usize| troupe_chat::ids::direct(&users[a % 6], &users[b % 6]);
    let gateways: Vec<SocketAddr> = c.names.iter().map(|n| c.port(n, "chat")).collect();
    let mut devices = Vec::new();
    let mut histories_of = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let convs = vec!["team".to_string(), dm(i, i + 1), dm(i + 5, i)];
        for d in 0..if i == 0 { 2 } else { 1 } {
            let name = format!("{u}.d{d}");
            let log = Arc::new(Mutex::new(Log::default()));
            let k = devices.len();
            let mut g = gateways.clone();
            let n = g.len();
            g.rotate_left(k % n);
            histories_of.push((name.clone(), convs.clone(), log.clone()));
            devices.push(Device {
                user: u.clone(),
                name,
                headers: as_user(&c, u),
                gateways: g,
                sends_to: convs.clone(),
                log,
            });
        }
    }
    let sending = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|d| rt.spawn(drive(d, Duration::from_millis(50), sending.clone(), stop.clone())))
        .collect();
    let acked = || histories_of.iter().map(|(_, _, l)| l.lock().unwrap().acked.len()).sum::<usize>();

    // Traffic for a while, then SIGKILL the node that owns the group (it is also the
    // gateway of about a third of the devices).
    wait_for("traffic to flow", WAIT, || (acked() >= 150).then_some(()));
    let victim = wait_for("the group's owner", WAIT, || host_of(&c, "/chat/conversation/team"));
    let before = acked();
    c.kill(&victim);
    let killed_at = Instant::now();
    // More traffic through the failover.
    wait_for("traffic after the kill", WAIT * 2, || (acked() >= before + 300).then_some(()));
    sending.store(false, Ordering::SeqCst);
    eprintln!("killed {victim} after {before} acks; {} acks {:?} later", acked(), killed_at.elapsed());

    // Every device ends with nothing pending and every acknowledged message received.
    let histories = || -> (Vec<Acked>, Vec<ClientHistory>, usize) {
        let mut acked = Vec::new();
        let mut clients = Vec::new();
        let mut pending = 0;
        for (name, convs, log) in &histories_of {
            let l = log.lock().unwrap();
            acked.extend(l.acked.iter().cloned());
            pending += l.pending.len();
            clients.push(ClientHistory {
                name: name.clone(),
                conversations: convs.clone(),
                received: l.received.clone(),
            });
        }
        (acked, clients, pending)
    };
    let settled = common::wait_for_or_last(
        Duration::from_secs(60),
        || {
            let (a, h, pending) = histories();
            (checker::check(&a, &h), pending)
        },
        |(r, pending)| *pending == 0 && r.lost == 0,
    );
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    let (a, h, pending) = histories();
    let report = checker::check(&a, &h);
    let errors: Vec<String> = histories_of.iter().flat_map(|(_, _, l)| l.lock().unwrap().errors.clone()).collect();
    let reconnects: u32 = histories_of.iter().map(|(_, _, l)| l.lock().unwrap().reconnects).sum();
    eprintln!(
        "{} acknowledged, {} deliveries checked, {reconnects} reconnects, {pending} pending: {report:?}",
        a.len(),
        report.expected_deliveries
    );
    assert_eq!(settled.1, 0, "messages never acknowledged");
    assert!(errors.is_empty(), "frames the clients did not expect: {errors:?}");
    assert!(report.ok(), "{report:#?}");
    assert!(reconnects >= 1, "the kill reached no device's gateway");
    assert!(a.len() >= 450, "{} acknowledged", a.len());
}

/// Every file under `dir` (data, logs), recursively.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Which files under `dir` contain `needle`.
fn holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .map(|f| f.display().to_string())
        .collect()
}

#[test]
fn end_to_end_encrypted_messages_leave_no_plaintext_on_any_node() {
    use troupe_chat_e2e::{Api, Device, E2eError};
    let c = cluster("");
    let api = |user: &str, node: &str| Api { addr: c.port(node, "chat"), headers: as_user(&c, user) };
    let mut devices: Vec<(Device, Api)> = vec![
        (Device::new("alice", "a1"), api("alice", "n1")),
        (Device::new("alice", "a2"), api("alice", "n2")),
        (Device::new("bob", "b1"), api("bob", "n3")),
        (Device::new("bob", "b2"), api("bob", "n1")),
        (Device::new("carol", "c1"), api("carol", "n2")),
    ];
    for (d, a) in &mut devices {
        d.publish(a).unwrap();
    }
    let members: Vec<String> = ["alice", "bob", "carol"].iter().map(|s| s.to_string()).collect();
    let (s, b) = call(
        c.port("n1", "chat"),
        "POST",
        "/v1/conversations",
        &as_user(&c, "alice"),
        r#"{"conv":"secret","members":["bob","carol"]}"#,
    );
    assert_eq!(s, 201, "{b}");

    // Canaries through real E2E clients: alice's first device, then bob's, then
    // alice's again (one Megolm session each, its key shared once per device).
    let tag = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let canary = |i: usize| format!("CANARY-{tag}-{i}");
    let mut sent = Vec::new();
    for (i, who) in [0usize, 2, 0, 4, 0].iter().enumerate() {
        let (d, a) = &mut devices[*who];
        let text = d.encrypt(a, "secret", &members, &canary(i)).unwrap();
        assert!(!text.contains("CANARY"), "the text on the wire is ciphertext");
        let body = serde_json::json!({ "id": format!("e{i}"), "text": text }).to_string();
        let (s, b) = call(a.addr, "POST", "/v1/conversations/secret/messages", &a.headers, &body);
        assert_eq!(s, 200, "{b}");
        sent.push((d.user.clone(), canary(i)));
    }
    // Every device of every member reads every canary, its own included.
    let read_all = |d: &mut Device, a: &Api| -> Vec<Result<String, E2eError>> {
        let (s, b) = call(a.addr, "GET", "/v1/conversations/secret/messages?after=0", &a.headers, "");
        assert_eq!(s, 200, "{b}");
        b["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["body"].get("message"))
            .map(|m| d.decrypt(a, "secret", m["from"].as_str().unwrap(), m["text"].as_str().unwrap()))
            .collect()
    };
    for (d, a) in &mut devices {
        let got: Vec<String> = read_all(d, a).into_iter().map(|r| r.unwrap()).collect();
        let want: Vec<String> = sent.iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(got, want, "{} {}", d.user, d.device);
    }

    // bob revokes his second device: what alice writes next is not for it.
    Device::revoke(&devices[3].1, "b2").unwrap();
    {
        let (d, a) = &mut devices[0];
        let text = d.encrypt(a, "secret", &members, &canary(99)).unwrap();
        let body = serde_json::json!({ "id": "e99", "text": text }).to_string();
        assert_eq!(call(a.addr, "POST", "/v1/conversations/secret/messages", &a.headers, &body).0, 200);
    }
    let (d, a) = &mut devices[2];
    assert_eq!(read_all(d, a).pop().unwrap().unwrap(), canary(99), "bob's first device reads it");
    let (d, a) = &mut devices[3];
    match read_all(d, a).pop().unwrap() {
        Err(E2eError::NoKey(_)) => {}
        other => panic!("a revoked device read a later message: {other:?}"),
    }

    // A control sent in the clear is found on disk, so the scan can see a plaintext;
    // no canary is in any node's data or log.
    let control = format!("CONTROL-{tag}");
    let body = serde_json::json!({ "id": "plain", "text": control }).to_string();
    assert_eq!(
        call(c.port("n1", "chat"), "POST", "/v1/conversations/secret/messages", &as_user(&c, "bob"), &body).0,
        200
    );
    let found = wait_for_found(&c.dir, control.as_bytes());
    assert!(!found.is_empty(), "the scan finds the plaintext control");
    for i in [0, 1, 2, 3, 4, 99] {
        let hits = holding(&c.dir, canary(i).as_bytes());
        assert!(hits.is_empty(), "canary {i} in plaintext: {hits:?}");
    }
}

/// Files holding `needle`, waiting (bounded) for a write to reach the disk.
fn wait_for_found(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    common::wait_for_or_last(Duration::from_secs(20), || holding(dir, needle), |f| !f.is_empty())
}

/// `troupe chat` as a process whose stdin the test types into; its stdout lines
/// arrive on the returned channel.
struct Terminal {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Terminal {
    fn open(c: &TestCluster, user: &str, node: &str) -> Terminal {
        use std::io::BufRead;
        let mut child = std::process::Command::new(common::BIN)
            // The key comes from the cluster's api-keys.toml, not the environment.
            .env_remove("TROUPE_API_KEY")
            .args(["chat", "--as", user, "--cluster"])
            .arg(c.cluster_file())
            .args(["--node", node])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Terminal { child, lines }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The first printed line containing `needle`, within `WAIT`.
    fn expect(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("`troupe chat` never printed {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn troupe_chat_in_two_terminals() {
    let c = cluster("");
    let mut alice = Terminal::open(&c, "alice", "n1");
    let mut bob = Terminal::open(&c, "bob", "n2");
    alice.type_line("/dm bob");
    alice.type_line("hello bob, from a terminal");
    let line = bob.expect("alice: hello bob, from a terminal");
    assert!(line.starts_with("[dm:alice:bob #2 "), "{line}");
    bob.type_line("/dm alice");
    bob.type_line("hi alice");
    alice.expect("bob: hi alice");
    // A group made from the terminal reaches its members.
    alice.type_line("/create crew bob carol");
    alice.type_line("welcome, crew");
    bob.expect("[crew #1 ");
    bob.expect("alice: welcome, crew");
}

#[test]
fn sends_are_rate_limited_per_user_and_presence_follows_sessions() {
    let c = cluster_with(&["rate-limiter", "chat"], "");
    let (n1, n2) = (c.port("n1", "chat"), c.port("n2", "chat"));
    let bob = as_user(&c, "bob");

    // Presence: alice's session on n1 is seen from n2 within a digest or two, and her
    // leaving with a last-seen time.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let presence = |addr| {
        let (s, b) = call(addr, "GET", "/v1/presence?users=alice,zed", &bob, "");
        assert_eq!(s, 200, "{b}");
        b["presence"].clone()
    };
    let ws = rt.block_on(async {
        let mut ws = open(n1, &as_user(&c, "alice")).await.unwrap();
        say(&mut ws, &ClientFrame::Hello { cursors: BTreeMap::new() }).await;
        ws
    });
    let p = wait_for("alice online as seen from n2", WAIT, || {
        let p = presence(n2);
        (p[0]["online"] == true).then_some(p)
    });
    assert_eq!(p[1]["online"], false, "{p}");
    rt.block_on(async {
        let _ = ws.close().await;
    });
    let p = wait_for("alice offline as seen from n2", WAIT, || {
        let p = presence(n2);
        (p[0]["online"] == false && p[0]["last_seen_ms"].as_u64().is_some()).then_some(p)
    });
    assert!(p[0]["last_seen_ms"].as_u64().unwrap() > 0, "{p}");

    // The send limit (chat-send: bursts of 50, 10 a second per user) holds across
    // gateways and says why. The limiter answers on every node first (else sends
    // would pass, failing open).
    for n in &c.names {
        let lim = c.port(n, "rate-limiter");
        wait_for(&format!("{n}'s rate limiter"), WAIT, || {
            request(lim, "GET", "/v1/health", &[], b"").ok().filter(|r| r.status == 200).map(|_| ())
        });
    }
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..120 {
        let body = serde_json::json!({ "id": format!("r{i}"), "text": "spam" }).to_string();
        let gw = if i % 2 == 0 { n1 } else { n2 };
        let (s, b) = call(gw, "POST", "/v1/conversations/dm:bob:carol/messages", &bob, &body);
        match s {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(b["error"].as_str().unwrap().contains("rate limited by rule chat-send"), "{b}");
            }
            _ => panic!("{s} {b}"),
        }
    }
    // One bucket for the user across both gateways: at most the burst plus the refill
    // over the time taken (one per gateway would let twice through).
    let most = 50.0 + 10.0 * started.elapsed().as_secs_f64() + 2.0;
    assert!(ok >= 50 && f64::from(ok) <= most, "{ok} sent, {limited} limited, at most {most:.0} expected");
    assert_eq!(ok + limited, 120);
    // carol was offline for all of it: the push hook (the default log sink) told of
    // her once for the conversation (at most once per 30 s), and never of bob, who sent.
    let pushes = |who: &str| -> usize {
        c.names
            .iter()
            .map(|n| std::fs::read_to_string(c.dir.join(format!("{n}.log"))).unwrap_or_default())
            .map(|log| {
                log.lines()
                    .filter(|l| {
                        l.contains("push: a new message for an offline user") && l.contains(&format!("user={who}"))
                    })
                    .count()
            })
            .sum()
    };
    let n = wait_for("carol's push", WAIT, || Some(pushes("carol")).filter(|n| *n > 0));
    assert!(n <= 2, "{n} pushes for carol in well under 30 s");
    assert_eq!(pushes("bob"), 0, "the sender is not pushed");
    // Another user is not held back by bob's limit.
    let body = serde_json::json!({ "id": "c1", "text": "hi" }).to_string();
    assert_eq!(call(n1, "POST", "/v1/conversations/dm:bob:carol/messages", &as_user(&c, "carol"), &body).0, 200);
}
