//! Blob store throughput between two nodes on loopback, beside an encrypted copy of
//! the same bytes over TLS-over-TCP with rustls in the same run (the encrypted limit
//! of this machine).
//!
//! troupe: node n1 (in this process) puts a 256 MiB blob whose chunks all live on
//! node n2 (a real `troupe node` process: `[blobs] role` names a label only n2 has,
//! `replication_factor = 1`), so every byte crosses QUIC once and is hashed, synced
//! to disk and acknowledged by n2; then n1 reads it back, every chunk fetched from n2
//! and checked against its hash. Three rounds, fresh bytes each.
//! Peer: a rustls 0.23 client and server (defaults, TLS 1.3, ring) in two threads of
//! this process copy the same 256 MiB each way over one TCP connection on 127.0.0.1.
//!
//! `cargo build --release && cargo run --release -p troupe-bench --bin blob`
//! → bench/results/blob.json

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_bench::cluster::LocalCluster;
use troupe_bench::write_result;
use troupe_runtime::{KindRegistry, Node};

const MIB: usize = 1 << 20;

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    troupe_diag::bytes_of(seed, len as u64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn troupe_side(len: usize, rounds: u64) -> anyhow::Result<serde_json::Value> {
    let mut c = LocalCluster::prepare(2, &[], "", &[])?;
    // n2 is the last node table: the label lands on it; only it keeps chunks.
    let file = c.cluster_file();
    let mut text = std::fs::read_to_string(&file)?;
    text.push_str("[nodes.labels]\nstore = \"yes\"\n\n[blobs]\nreplication_factor = 1\nrole = \"store=yes\"\n");
    std::fs::write(&file, text)?;
    c.spawn("n2")?;
    let loaded = troupe_runtime::config::load(&file, &KindRegistry::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = Node::start_with(Arc::new(loaded), KindRegistry::new(), "n1", true).await?;
    let blobs = node.blobs()?;
    // Wait until n2 takes a chunk.
    let t0 = Instant::now();
    loop {
        match blobs.put(b"warm-up", "bench").await {
            Ok(_) => break,
            Err(e) => {
                anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "n2 never stored a chunk: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let (mut puts, mut gets) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let data = bytes_of(1000 + round, len);
        let t = Instant::now();
        let blob = blobs.put(&data, "bench").await?;
        let put_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let back = blobs.get(&blob).await?;
        let get_s = t.elapsed().as_secs_f64();
        anyhow::ensure!(back == data, "round {round}: the blob read back differs");
        let (p, g) = (len as f64 / MIB as f64 / put_s, len as f64 / MIB as f64 / get_s);
        eprintln!("troupe round {round}: put {p:.0} MiB/s, get {g:.0} MiB/s");
        puts.push(p);
        gets.push(g);
    }
    let m = troupe_runtime::metrics::render_prometheus(&node.metrics().snapshot());
    let remote_reads = m
        .lines()
        .find(|l| l.starts_with("troupe_blob_chunks_read_total{from=\"remote\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    anyhow::ensure!(
        remote_reads >= (rounds as usize * len / MIB) as f64,
        "the reads were not served by n2 ({remote_reads} remote chunk reads)"
    );
    node.shutdown().await;
    drop(c);
    Ok(serde_json::json!({
        "put_mib_s": median(puts.clone()), "get_mib_s": median(gets.clone()),
        "put_mib_s_rounds": puts, "get_mib_s_rounds": gets,
    }))
}

/// One direction of the peer: `len` bytes from the client to the server (`up`) or
/// back, encrypted by rustls over one TCP connection; MiB/s until the receiver has
/// every byte.
fn tls_copy(len: usize, up: bool) -> anyhow::Result<f64> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert_der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key)?,
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let client_cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let data = Arc::new(bytes_of(7, len));
    let sdata = data.clone();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let (tcp, _) = listener.accept()?;
        tcp.set_nodelay(true)?;
        let conn = rustls::ServerConnection::new(server_cfg)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        if up {
            let mut buf = vec![0u8; MIB];
            let mut got = 0;
            while got < len {
                let n = tls.read(&mut buf)?;
                anyhow::ensure!(n > 0, "the client closed early");
                got += n;
            }
            tls.write_all(b"k")?;
        } else {
            let mut go = [0u8; 1];
            tls.read_exact(&mut go)?;
            for piece in sdata.chunks(MIB) {
                tls.write_all(piece)?;
            }
        }
        tls.flush()?;
        Ok(())
    });
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(client_cfg, "localhost".try_into()?)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake before the clock starts.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let t = Instant::now();
    if up {
        for piece in data.chunks(MIB) {
            tls.write_all(piece)?;
        }
        tls.flush()?;
        let mut ack = [0u8; 1];
        tls.read_exact(&mut ack)?;
    } else {
        tls.write_all(b"g")?;
        tls.flush()?;
        let mut buf = vec![0u8; MIB];
        let mut got = 0;
        while got < len {
            let n = tls.read(&mut buf)?;
            anyhow::ensure!(n > 0, "the server closed early");
            got += n;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    server.join().map_err(|_| anyhow::anyhow!("the TLS server thread panicked"))??;
    Ok(len as f64 / MIB as f64 / secs)
}

fn main() -> anyhow::Result<()> {
    let len: usize = std::env::var("BLOB_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) * MIB;
    let rounds = 3;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let troupe = rt.block_on(troupe_side(len, rounds))?;
    drop(rt);
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (u, d) = (tls_copy(len, true)?, tls_copy(len, false)?);
        eprintln!("rustls round {round}: client→server {u:.0} MiB/s, server→client {d:.0} MiB/s");
        ups.push(u);
        downs.push(d);
    }
    let (tls_up, tls_down) = (median(ups.clone()), median(downs.clone()));
    let f = |k: &str| troupe.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    let (put_ratio, get_ratio) = (f("put_mib_s") / tls_up, f("get_mib_s") / tls_down);
    println!("\n{:<22} {:>12} {:>14} {:>8}", "", "troupe", "rustls TCP", "ratio");
    println!("{:<22} {:>12.0} {:>14.0} {:>8.2}", "put (MiB/s)", f("put_mib_s"), tls_up, put_ratio);
    println!("{:<22} {:>12.0} {:>14.0} {:>8.2}", "get (MiB/s)", f("get_mib_s"), tls_down, get_ratio);
    let path = write_result(
        "blob",
        &serde_json::json!({
            "benchmark": "blob put/get between two nodes on loopback vs an encrypted TLS-over-TCP copy (rustls) of the same bytes",
            "config": {
                "blob_mib": len / MIB,
                "rounds": rounds,
                "troupe": "n1 (in-process) puts to n2 (a troupe node process) that alone keeps chunks ([blobs] role, rf 1): 1 MiB chunks over QUIC, SHA-256 on both ends, each chunk synced to disk on n2 before it is acknowledged, 8 chunks in flight; get fetches every chunk from n2 and checks it",
                "peer": "rustls 0.23 (ring, TLS 1.3 defaults) client and server threads in one process, one TCP connection on 127.0.0.1, 1 MiB writes, nothing written to disk",
                "figure": "median of the rounds, MiB/s until the receiver has every byte",
            },
            "machine": troupe_bench::machine(),
            "load_average_before": load_before.split_whitespace().take(3).collect::<Vec<_>>(),
            "troupe": troupe,
            "rustls_tcp": { "client_to_server_mib_s": tls_up, "server_to_client_mib_s": tls_down, "client_to_server_rounds": ups, "server_to_client_rounds": downs },
            "ratios": { "put_vs_tls": put_ratio, "get_vs_tls": get_ratio },
            "goals": { "put_at_least_70pct_of_tls": put_ratio >= 0.7, "get_at_least_70pct_of_tls": get_ratio >= 0.7 },
        }),
    )?;
    println!("\nwrote {}", path.display());
    Ok(())
}
