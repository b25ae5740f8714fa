//! WebSockets on real node processes: the diag gateway's echo (`GET /ws/echo` on
//! `ports.diag`, each message through the node's counter actor) driven by the SDK's
//! client and by the test harness's; a missing token is refused with the reason; a
//! killed node's sessions end instead of hanging.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;
use troupe_client::ws::{WsError, WsFrame, connect};
use troupe_testkit::TestCluster;
use troupe_testkit::ws::{WsConnectError, WsRead, ws_connect};

const WAIT: Duration = Duration::from_secs(20);

fn cluster() -> TestCluster {
    let c = TestCluster::start(common::Options { systems: vec!["diag"], nodes: 2, ..common::Options::default() });
    c.wait_converged(&[], Duration::from_secs(30));
    c
}

/// Connects with the harness's client, retrying while the gateway starts.
fn harness_connect(c: &TestCluster, node: &str) -> troupe_testkit::ws::WsConn {
    let auth = c.service_auth();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match ws_connect(c.port(node, "diag"), "/ws/echo", Some(&auth), WAIT) {
            Ok(conn) => return conn,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "the diag gateway on {node} never accepted: {e:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn a_websocket_round_trip_through_the_sdk() {
    let c = cluster();
    // Wait for the gateway with the harness's client, then talk through the SDK's.
    harness_connect(&c, "n1").close();
    let url = format!("ws://{}/ws/echo", c.port("n1", "diag"));
    let auth = c.service_auth();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut ws = connect(&url, Some(&auth), WAIT).await.unwrap();
        for i in 0..100 {
            ws.send_text(format!("hello {i}")).await.unwrap();
            assert_eq!(ws.next_within(WAIT).await.unwrap(), Some(WsFrame::Text(format!("hello {i}"))));
        }
        let bytes: Vec<u8> = (0..=255).collect();
        ws.send_binary(bytes.clone()).await.unwrap();
        assert_eq!(ws.next_within(WAIT).await.unwrap(), Some(WsFrame::Binary(bytes)));
        ws.close().await.unwrap();

        // Without the service token: 401, and the reason.
        match connect(&url, None, WAIT).await {
            Err(WsError::Refused { status, body }) => {
                assert_eq!(status, 401);
                assert!(body.contains("Authorization"), "{body}");
            }
            other => panic!("expected 401, got {other:?}"),
        }
        match connect(&url, Some("Bearer not-the-token"), WAIT).await {
            Err(WsError::Refused { status, body }) => {
                assert_eq!(status, 401);
                assert!(body.contains("does not match"), "{body}");
            }
            other => panic!("expected 401, got {other:?}"),
        }
    });
}

#[test]
fn the_harness_client_and_a_killed_node() {
    let mut c = cluster();
    let mut ws = harness_connect(&c, "n2");
    ws.send_text("before").unwrap();
    assert_eq!(ws.read_within(WAIT), WsRead::Text("before".into()));
    match ws_connect(c.port("n2", "diag"), "/ws/echo", None, WAIT) {
        Err(WsConnectError::Refused { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // kill -9: the session ends at once (the kernel closes the socket), no hang.
    c.kill("n2");
    match ws.read_within(WAIT) {
        WsRead::Gone(_) | WsRead::Closed { .. } => {}
        other => panic!("a dead node's session should end, got {other:?}"),
    }
    // The other node's gateway still serves.
    let mut other = harness_connect(&c, "n1");
    other.send_text("after").unwrap();
    assert_eq!(other.read_within(WAIT), WsRead::Text("after".into()));
    other.close();
}
