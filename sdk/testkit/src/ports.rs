//! Ports for test nodes, shared by troupe-testkit (and so the root crate's tests) and the
//! runtime's multi-process tests (`runtime/tests/replica_down.rs` includes this file).

use std::net::{TcpListener, UdpSocket};

/// A port free for both TCP and UDP, never handed out twice by this process. Ports come
/// from below the OS's ephemeral range (32768 and up on Linux): a port from that range
/// can be taken by any socket bound to port 0 — a QUIC client, another test — while a
/// killed node is down, and its restart then fails with "address already in use".
/// Each process scans from its own random start, so concurrent tests rarely meet.
pub fn free_port() -> u16 {
    const LOW: u16 = 10_000;
    const HIGH: u16 = 32_000;
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let start = next.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
        LOW + (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as u16 % (HIGH - LOW)
    });
    let mut p = start;
    for _ in 0..(HIGH - LOW) {
        p = if p + 1 >= HIGH { LOW } else { p + 1 };
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            *next = Some(p);
            return p;
        }
    }
    panic!("no free port in {LOW}..{HIGH}");
}
