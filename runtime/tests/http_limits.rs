//! The node's HTTP listeners under slow and greedy clients (runtime/src/http.rs): a
//! slowloris from one address fills only its own connection slots and is cut off at
//! the header timeout, a normal client from elsewhere is served meanwhile, and a body
//! that trickles in is answered 400 with the reason; 1,000 slow connections from many
//! addresses do not stop a normal client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use troupe_runtime::http::{HttpLimits, serve};

const LIMITS: HttpLimits = HttpLimits {
    header_timeout: Duration::from_millis(400),
    body_timeout: Duration::from_millis(400),
    connections_per_ip_max: 8,
    connections_max: 1000,
};

async fn start() -> (SocketAddr, std::sync::Arc<troupe_runtime::http::Refusals>) {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route("/echo", axum::routing::post(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }))
        .route(
            "/peer",
            axum::routing::get(|axum::extract::ConnectInfo(p): axum::extract::ConnectInfo<SocketAddr>| async move {
                p.ip().to_string()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (refusals, served) = serve(listener, app, LIMITS);
    tokio::spawn(served);
    (addr, refusals)
}

/// A connection to `addr` from source address `from`.
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(addr).await.unwrap()
}

/// Reads until the server closes; what it sent.
async fn read_all(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

async fn get(addr: SocketAddr, from: [u8; 4], path: &str) -> String {
    let mut s = connect_from(from, addr).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    read_all(&mut s, Duration::from_secs(10)).await.expect("an answer")
}

#[tokio::test]
async fn a_slowloris_holds_only_its_own_slots_and_is_cut_off() {
    let (addr, refusals) = start().await;
    // 40 connections from 127.0.0.2 that send half a request head and stop.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = connect_from([127, 0, 0, 2], addr).await;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(s);
    }
    // Another client is served while they hang, and sees its own address.
    let r = get(addr, [127, 0, 0, 1], "/peer").await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("127.0.0.1"), "{r}");
    // Past 8 from one address, connections are closed without an answer, at once.
    assert_eq!(refusals.per_ip.load(Ordering::Relaxed), 32, "the 32 connections over the per-IP cap");
    // The 8 that were admitted are cut off at the header timeout (hyper answers 408 or
    // closes): none is still open long after it.
    for (i, mut s) in slow.into_iter().enumerate() {
        let got = read_all(&mut s, LIMITS.header_timeout * 10).await;
        let got = got.unwrap_or_else(|| panic!("connection {i} still open after 10 header timeouts"));
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "connection {i}: {got}");
    }
    // Their slots are free again: the same address is served now.
    let r = get(addr, [127, 0, 0, 2], "/").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn a_body_that_trickles_in_is_refused_with_the_reason() {
    let (addr, _) = start().await;
    let mut s = connect_from([127, 0, 0, 1], addr).await;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789")
        .await
        .unwrap();
    let r = read_all(&mut s, Duration::from_secs(10)).await.expect("an answer before the test gives up");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("did not arrive within"), "the reason: {r}");
    // A body that arrives in time is read whole.
    let mut s = connect_from([127, 0, 0, 1], addr).await;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789")
        .await
        .unwrap();
    let r = read_all(&mut s, Duration::from_secs(10)).await.expect("an answer");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("10 bytes"), "{r}");
}

/// 1,000 slowloris connections spread over 250 addresses (4 each, under the per-IP
/// cap, as a botnet would), with the listeners' default limits: a normal client is
/// still served, and every request of it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_do_not_stop_a_normal_client() {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = HttpLimits::default();
    let header_timeout = limits.header_timeout;
    let (refusals, served) = serve(listener, app, limits);
    tokio::spawn(served);
    let mut slow = Vec::new();
    let opened = std::time::Instant::now();
    for i in 0..1000u32 {
        let from = [127, 0, 1 + (i / 4 / 250) as u8, 1 + ((i / 4) % 250) as u8];
        let hint = |e: std::io::Error| {
            format!("connection {i} of 1,000 failed ({e}): raise the open-file limit (ulimit -n 4096)")
        };
        let s = TcpSocket::new_v4().map_err(hint).unwrap();
        s.bind(SocketAddr::from((from, 0))).map_err(hint).unwrap();
        let mut s = s.connect(addr).await.map_err(hint).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        slow.push(s);
    }
    assert_eq!(refusals.per_ip.load(Ordering::Relaxed), 0, "4 per address is under the per-IP cap");
    // The normal client is served, request after request, while all 1,000 hang.
    for _ in 0..20 {
        let r = get(addr, [127, 0, 0, 1], "/").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r}");
    }
    // Still inside the first slow connection's header timeout: none of them had been
    // cut off yet, so the client was served beside all 1,000, not after them.
    assert!(opened.elapsed() < header_timeout, "took {:?}", opened.elapsed());
    assert_eq!(refusals.total.load(Ordering::Relaxed), 0, "no connection was refused for the total cap");
    drop(slow);
}
