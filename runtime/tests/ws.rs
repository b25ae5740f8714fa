//! WebSocket sessions (`troupe_runtime::ws`) served by `http::serve`, driven by the SDK's
//! client: echo and the close handshake, heartbeats that close a silent peer and keep a
//! live one, both kinds of backpressure (in bytes), a session function that stops
//! reading or panics, the size limit both ways, the listener's connection caps held by
//! an upgraded connection, the session cap, and closing every session when the gateway
//! stops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use troupe_client::ws::{WsClient, WsError, WsFrame, connect};
use troupe_runtime::http::{HttpLimits, Refusals, serve};
use troupe_runtime::ws::{WsLimits, WsMessage, WsSendError, WsSessions, WsUpgrade, close_code};

type Sessions = Arc<WsSessions>;

/// Messages the `/ws/count` producer has queued so far.
static PRODUCED: AtomicU64 = AtomicU64::new(0);

async fn echo(State(s): State<Sessions>, up: WsUpgrade) -> Response {
    s.accept(up, |tx, mut rx| async move {
        while let Some(msg) = rx.recv().await {
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    })
}

/// Pushes `n` messages of `bytes` bytes without waiting (`try_send`).
async fn flood(State(s): State<Sessions>, Query(q): Query<HashMap<String, usize>>, up: WsUpgrade) -> Response {
    let (n, bytes) = (q["n"], q["bytes"]);
    s.accept(up, move |tx, _rx| async move {
        for i in 0..n {
            let text = format!("{i:>width$}", width = bytes);
            if tx.try_send(WsMessage::Text(text)).is_err() {
                break;
            }
        }
        // Keep the session open until the peer or a limit ends it.
        while !tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Sends 0..n, each padded to `bytes`, waiting for room (`send`): a slow reader slows
/// the producer down.
async fn count(State(s): State<Sessions>, Query(q): Query<HashMap<String, usize>>, up: WsUpgrade) -> Response {
    let (n, bytes) = (q["n"], q["bytes"]);
    s.accept(up, move |tx, _rx| async move {
        for i in 0..n {
            if tx.send(WsMessage::Text(format!("{i:<bytes$}"))).await.is_err() {
                return;
            }
            PRODUCED.fetch_add(1, Ordering::SeqCst);
        }
        tx.close(close_code::NORMAL, "done").await;
    })
}

/// Holds its receiver and never reads it.
async fn stall(State(s): State<Sessions>, up: WsUpgrade) -> Response {
    s.accept(up, |tx, rx| async move {
        tx.closed().await;
        drop(rx);
    })
}

async fn panics(State(s): State<Sessions>, up: WsUpgrade) -> Response {
    s.accept(up, |_tx, _rx| async move { panic!("a bug in the session function") })
}

/// Tries one message over the limit, then says what happened.
async fn too_big(State(s): State<Sessions>, up: WsUpgrade) -> Response {
    let max = s.limits().message_bytes_max;
    s.accept(up, move |tx, _rx| async move {
        let r = tx.send(WsMessage::Binary(vec![0u8; max + 1].into())).await;
        let _ = tx.send(WsMessage::Text(format!("{r:?}"))).await;
        tx.closed().await;
    })
}

struct Server {
    addr: SocketAddr,
    sessions: Sessions,
    refusals: Arc<Refusals>,
    task: tokio::task::JoinHandle<()>,
}

async fn server(limits: WsLimits, http: HttpLimits) -> Server {
    let sessions = Arc::new(WsSessions::new(limits));
    let app = axum::Router::new()
        .route("/ws/echo", get(echo))
        .route("/ws/flood", get(flood))
        .route("/ws/count", get(count))
        .route("/ws/stall", get(stall))
        .route("/ws/panic", get(panics))
        .route("/ws/too-big", get(too_big))
        .route("/plain", get(|| async { "plain" }))
        .with_state(sessions.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (refusals, served) = serve(listener, app, http);
    let task = tokio::spawn(async move {
        let _ = served.await;
    });
    Server { addr, sessions, refusals, task }
}

const WAIT: Duration = Duration::from_secs(20);

async fn open(s: &Server, path: &str) -> WsClient {
    connect(&format!("ws://{}{path}", s.addr), None, WAIT).await.unwrap()
}

/// Reads until the server's close frame, skipping data; returns its code and reason.
async fn closed(c: &mut WsClient) -> (u16, String) {
    loop {
        match c.next_within(WAIT).await.unwrap() {
            Some(WsFrame::Closed { code, reason }) => return (code, reason),
            Some(_) => continue,
            None => panic!("the connection ended without a close frame"),
        }
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip_and_a_normal_close() {
    let s = server(WsLimits::default(), HttpLimits::default()).await;
    let mut c = open(&s, "/ws/echo").await;
    c.send_text("hello").await.unwrap();
    assert_eq!(c.next_within(WAIT).await.unwrap(), Some(WsFrame::Text("hello".into())));
    c.send_binary(vec![0u8, 1, 2, 255]).await.unwrap();
    assert_eq!(c.next_within(WAIT).await.unwrap(), Some(WsFrame::Binary(vec![0, 1, 2, 255])));
    assert_eq!(s.sessions.open(), 1);
    // The server answers the close: a clean close handshake.
    assert_eq!(c.close().await.unwrap(), Some((close_code::NORMAL, String::new())));
    wait_until("the session was not counted closed", || s.sessions.open() == 0).await;
    assert_eq!(s.sessions.closed_with(close_code::NORMAL), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_and_a_reading_one_is_kept() {
    let limits = WsLimits {
        ping_every: Duration::from_millis(200),
        // Generous: a loaded CI machine must not make the live peer look silent.
        pong_timeout: Duration::from_millis(2800),
        ..WsLimits::default()
    };
    let silence = limits.ping_every + limits.pong_timeout;
    let s = server(limits, HttpLimits::default()).await;

    // A client that keeps reading answers every ping: after many heartbeat periods
    // nothing has closed it and it still echoes.
    let mut live = open(&s, "/ws/echo").await;
    assert!(matches!(live.next_within(silence * 2).await, Err(WsError::Timeout(_))));
    live.send_text("still here").await.unwrap();
    assert_eq!(live.next_within(WAIT).await.unwrap(), Some(WsFrame::Text("still here".into())));
    assert_eq!(s.sessions.closed_with(close_code::HEARTBEAT), 0);
    // (Not read from now on, it would be closed as silent too: close it first.)
    live.close().await.unwrap();
    wait_until("the live session did not end", || s.sessions.open() == 0).await;

    // A client that stops reading sends no pongs, and is closed for it. (Its close
    // frame may not be readable: the client answers the pings queued before it, and
    // writing to a connection the server has left resets it.)
    let _silent = open(&s, "/ws/echo").await;
    wait_until("the silent peer was never closed", || {
        s.sessions.closed_with(close_code::HEARTBEAT) == 1 && s.sessions.open() == 0
    })
    .await;
    assert_eq!(s.sessions.closed_with(close_code::NORMAL), 1, "the live session's own close");
    assert_eq!(s.sessions.closed_with(close_code::ABNORMAL), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_keep_up_is_closed_with_1013() {
    let limits = WsLimits { outbound_bytes_max: 4096, ..WsLimits::default() };
    let s = server(limits, HttpLimits::default()).await;
    // 10,000 messages of 1 KB pushed at once into a queue of 4 KiB.
    let mut c = open(&s, "/ws/flood?n=10000&bytes=1000").await;
    let (code, reason) = closed(&mut c).await;
    assert_eq!(code, close_code::TRY_AGAIN_LATER, "{reason}");
    assert!(reason.contains("reading too slowly"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_producer_is_held_back_and_delivers_everything_in_order() {
    let limits = WsLimits { outbound_bytes_max: 256 << 10, message_bytes_max: 64 << 10, ..WsLimits::default() };
    let s = server(limits, HttpLimits::default()).await;
    // 2,000 messages of 64 KB (128 MB): far more than the queue and every socket buffer.
    let (n, bytes) = (2000u64, 64_000usize);
    let mut c = open(&s, &format!("/ws/count?n={n}&bytes={bytes}")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = PRODUCED.load(Ordering::SeqCst);
    assert!(before < n / 4, "the producer ran {before} messages ahead of a reader that had read none");
    for i in 0..n {
        match c.next_within(WAIT).await.unwrap() {
            Some(WsFrame::Text(t)) => assert_eq!(t.trim_end(), i.to_string()),
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert_eq!(closed(&mut c).await, (close_code::NORMAL, "done".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_reading_is_closed() {
    let limits = WsLimits {
        ping_every: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(800),
        inbound_bytes_max: 4096,
        message_bytes_max: 1024,
        ..WsLimits::default()
    };
    let s = server(limits, HttpLimits::default()).await;
    let mut c = open(&s, "/ws/stall").await;
    // Four fill the inbound budget; the rest wait in TCP.
    for _ in 0..20 {
        c.send_text("x".repeat(1000)).await.unwrap();
    }
    wait_until("a session that took none of its messages stayed open", || {
        s.sessions.closed_with(close_code::SERVER_ERROR) == 1 && s.sessions.open() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_function_closes_with_1011() {
    let s = server(WsLimits::default(), HttpLimits::default()).await;
    let mut c = open(&s, "/ws/panic").await;
    let (code, reason) = closed(&mut c).await;
    assert_eq!(code, close_code::SERVER_ERROR, "{reason}");
    assert_eq!(reason, "the session failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_message_over_the_limit_is_refused_to_its_sender() {
    let s = server(WsLimits { message_bytes_max: 1024, ..WsLimits::default() }, HttpLimits::default()).await;
    let mut c = open(&s, "/ws/too-big").await;
    let want = format!("{:?}", Err::<(), _>(WsSendError::TooBig));
    assert_eq!(c.next_within(WAIT).await.unwrap(), Some(WsFrame::Text(want)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_closes_with_1009() {
    let limits = WsLimits { message_bytes_max: 1024, ..WsLimits::default() };
    let s = server(limits, HttpLimits::default()).await;
    let mut c = open(&s, "/ws/echo").await;
    c.send_text("x".repeat(1024)).await.unwrap();
    assert_eq!(c.next_within(WAIT).await.unwrap(), Some(WsFrame::Text("x".repeat(1024))));
    c.send_text("y".repeat(4096)).await.unwrap();
    let (code, reason) = closed(&mut c).await;
    assert_eq!(code, close_code::TOO_BIG, "{reason}");
    assert!(reason.contains("4096 bytes; at most 1024"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_connection_slot() {
    let http = HttpLimits { connections_per_ip_max: 2, ..HttpLimits::default() };
    let s = server(WsLimits::default(), http).await;
    let a = open(&s, "/ws/echo").await;
    let _b = open(&s, "/ws/echo").await;
    // Both slots are held by upgraded connections: a third connection is turned away.
    let refused = connect(&format!("ws://{}/ws/echo", s.addr), None, WAIT).await;
    assert!(refused.is_err(), "a third connection was served");
    assert_eq!(s.refusals.per_ip.load(Ordering::Relaxed), 1);
    // Closing one gives its slot back.
    a.close().await.unwrap();

    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = connect(&format!("ws://{}/ws/echo", s.addr), None, WAIT).await {
            c.send_text("again").await.unwrap();
            assert_eq!(c.next_within(WAIT).await.unwrap(), Some(WsFrame::Text("again".into())));
            break;
        }
        assert!(Instant::now() < deadline, "the closed session's slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_cap_get_503() {
    let s = server(WsLimits { sessions_max: 1, ..WsLimits::default() }, HttpLimits::default()).await;
    let _first = open(&s, "/ws/echo").await;
    match connect(&format!("ws://{}/ws/echo", s.addr), None, WAIT).await {
        Err(WsError::Refused { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.contains("1 WebSocket sessions already"), "{body}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_gateway_closes_its_sessions_with_1001() {
    let s = server(WsLimits::default(), HttpLimits::default()).await;
    let mut a = open(&s, "/ws/echo").await;
    let mut b = open(&s, "/ws/echo").await;
    // The gateway stops: it closes its sessions (as the diag gateway's state does when
    // dropped) while other holders of the `WsSessions` still live.
    let kept = s.sessions.clone();
    s.sessions.close_all();
    for c in [&mut a, &mut b] {
        let (code, reason) = closed(c).await;
        assert_eq!(code, close_code::GOING_AWAY, "{reason}");
        assert!(reason.contains("the gateway is stopping"), "{reason}");
    }
    // A new upgrade on a stopped gateway is closed at once too.
    let mut late = open(&s, "/ws/echo").await;
    assert_eq!(closed(&mut late).await.0, close_code::GOING_AWAY);
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_sessions_closes_them_with_1001() {
    let s = server(WsLimits::default(), HttpLimits::default()).await;
    let mut a = open(&s, "/ws/echo").await;
    let mut b = open(&s, "/ws/echo").await;
    // The server task and, with it, the last `WsSessions` go.
    s.task.abort();
    drop(s.sessions);
    for c in [&mut a, &mut b] {
        let (code, reason) = closed(c).await;
        assert_eq!(code, close_code::GOING_AWAY, "{reason}");
        assert!(reason.contains("the gateway is stopping"), "{reason}");
    }
}
