//! URL shortener bench: redirects/s and latency with `wrk` against a gateway of a 3-node
//! troupe cluster and, in the same run with the same wrk settings and the same codes,
//! against nginx answering `return 302` from a `map` (the ceiling on this machine);
//! then creates/s. Writes bench/results/url-shortener.json.
//!
//! Needs `wrk` and `nginx` (Debian: `apt-get install -y wrk nginx-light`) and a release
//! build: `cargo build --release -p troupe` (or `TROUPE_BIN`).
//!
//! Usage: `cargo run --release -p troupe-bench --bin url_shortener -- [--duration-s 10]
//! [--connections 64] [--threads 2] [--links 1000] [--rounds 3]`
//!
//! The machine is shared and noisy, so the redirect runs are interleaved: each round runs
//! wrk against troupe, nginx with 1 worker and nginx with 2 workers back to back, and the
//! summary takes the median over rounds.

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use troupe_bench::cluster::{LocalCluster, http};

struct Args {
    duration_s: u64,
    connections: u32,
    threads: u32,
    links: usize,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { duration_s: 5, connections: 64, threads: 2, links: 1000, rounds: 3 };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).context("every flag takes a value")?;
        match pair[0].as_str() {
            "--duration-s" => a.duration_s = val.parse()?,
            "--connections" => a.connections = val.parse()?,
            "--threads" => a.threads = val.parse()?,
            "--links" => a.links = val.parse()?,
            "--rounds" => a.rounds = val.parse::<usize>()?.max(1),
            other => bail!("unknown flag {other}; see the module docs"),
        }
    }
    Ok(a)
}

/// What wrk printed, parsed.
#[derive(Debug, Clone, serde::Serialize)]
struct WrkResult {
    requests_per_s: f64,
    requests: u64,
    p50_ms: f64,
    p75_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    non_2xx_3xx: u64,
    socket_errors: String,
}

fn ms(text: &str) -> f64 {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (t, 1.0)
    };
    num.trim().parse::<f64>().map(|v| v * scale).unwrap_or(f64::NAN)
}

fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult {
        requests_per_s: 0.0,
        requests: 0,
        p50_ms: f64::NAN,
        p75_ms: f64::NAN,
        p90_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx_3xx: 0,
        socket_errors: String::new(),
    };
    for line in out.lines() {
        let l = line.trim();
        let mut parts = l.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("50%"), Some(v)) => r.p50_ms = ms(v),
            (Some("75%"), Some(v)) => r.p75_ms = ms(v),
            (Some("90%"), Some(v)) => r.p90_ms = ms(v),
            (Some("99%"), Some(v)) => r.p99_ms = ms(v),
            (Some("Requests/sec:"), Some(v)) => r.requests_per_s = v.parse().unwrap_or(0.0),
            _ => {}
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx_3xx = rest.trim().parse().unwrap_or(0);
        }
        if l.starts_with("Socket errors:") {
            r.socket_errors = l.to_string();
        }
        if l.contains("requests in") {
            r.requests = l.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    r
}

fn wrk(a: &Args, script: &Path, url: &str) -> anyhow::Result<(WrkResult, String)> {
    let out = Command::new("wrk")
        .args(["-t", &a.threads.to_string(), "-c", &a.connections.to_string()])
        .args(["-d", &format!("{}s", a.duration_s), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk (apt-get install -y wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok((parse_wrk(&text), text))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn post(addr: SocketAddr, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /api/links HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Creates `n` links through `gw` on 8 threads; returns (code, target).
fn seed_links(gw: SocketAddr, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let per = n.div_ceil(8);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || -> anyhow::Result<Vec<(String, String)>> {
                let mut out = Vec::new();
                for i in (t * per)..((t + 1) * per).min(n) {
                    let url = format!("https://example.com/bench/{i}?utm_source=wrk");
                    let (code, body) = post(gw, &format!(r#"{{"url": "{url}"}}"#))?;
                    anyhow::ensure!(code == 201, "create answered {code}: {body}");
                    let v: serde_json::Value = serde_json::from_str(&body)?;
                    out.push((v["code"].as_str().unwrap_or_default().to_string(), url));
                }
                Ok(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("seed thread panicked"))??);
    }
    Ok(all)
}

fn redirect_script(dir: &Path, links: &[(String, String)]) -> anyhow::Result<std::path::PathBuf> {
    let codes: Vec<String> = links.iter().map(|(c, _)| format!("\"/{c}\"")).collect();
    let lua = format!(
        "local paths = {{{}}}\nlocal n = #paths\nlocal i = 0\nfunction setup(thread) thread:set(\"i\", 0) end\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % n) + 1])\nend\n",
        codes.join(",")
    );
    let p = dir.join("redirect.lua");
    std::fs::write(&p, lua)?;
    Ok(p)
}

fn create_script(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let lua = "wrk.method = \"POST\"\nwrk.body = '{\"url\": \"https://example.com/created/by/wrk?campaign=bench\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n";
    let p = dir.join("create.lua");
    std::fs::write(&p, lua)?;
    Ok(p)
}

/// nginx answering `return 302` from a `map` of the same codes.
fn nginx_conf(dir: &Path, port: u16, workers: u32, links: &[(String, String)]) -> String {
    let map: String = links.iter().map(|(c, u)| format!("        /{c} \"{u}\";\n")).collect();
    format!(
        "worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n    keepalive_requests 1000000;\n    map_hash_bucket_size 128;\n    map $uri $target {{\n        default \"\";\n{map}    }}\n    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n            if ($target = \"\") {{ return 404; }}\n            return 302 $target;\n        }}\n    }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        err = dir.join("nginx-error.log").display(),
    )
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_nginx(dir: &Path, port: u16, workers: u32, links: &[(String, String)]) -> anyhow::Result<(Nginx, String)> {
    let conf = nginx_conf(dir, port, workers, links);
    let path = dir.join(format!("nginx-{workers}.conf"));
    std::fs::write(&path, &conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install -y nginx-light)")?;
    let guard = Nginx(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + Duration::from_secs(10);
    while http(addr, "GET", &format!("/{}", links[0].0), None).map(|(c, _)| c).unwrap_or(0) != 302 {
        anyhow::ensure!(Instant::now() < end, "nginx did not answer on {addr}; see {}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((guard, conf))
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    for tool in ["wrk", "nginx"] {
        anyhow::ensure!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?.status.success(),
            "`{tool}` not found: apt-get install -y wrk nginx-light"
        );
    }
    let overrides = "[overrides.url-shortener.gateway]\ncreate_per_ip = { limit = 100000000, window_ms = 1000 }\ncreate_per_user = { limit = 100000000, window_ms = 1000 }\n";
    let cluster = LocalCluster::start(3, &["kv", "url-shortener"], overrides, &["url-shortener"])?;
    cluster.wait_all_alive(Duration::from_secs(30))?;
    let gw = SocketAddr::from(([127, 0, 0, 1], cluster.ports["n1"]["url-shortener"]));
    let end = Instant::now() + Duration::from_secs(30);
    while http(gw, "GET", "/api/links/nope", None).map(|(c, _)| c).unwrap_or(0) != 404 {
        anyhow::ensure!(Instant::now() < end, "gateway {gw} did not come up; logs in {}", cluster.dir.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    let tmp = cluster.dir.join("bench");
    // nginx opens <prefix>/logs/error.log before it reads the config.
    std::fs::create_dir_all(tmp.join("logs"))?;

    eprintln!("creating {} links ...", a.links);
    let links = seed_links(gw, a.links)?;
    for (code, _) in &links {
        http(gw, "GET", &format!("/{code}"), None)?; // warm the gateway's cache
    }
    let red = redirect_script(&tmp, &links)?;
    let (port1, port2) = (free_port()?, free_port()?);
    let (nginx1, conf1) = run_nginx(&tmp, port1, 1, &links)?;
    let (nginx2, _) = run_nginx(&tmp, port2, 2, &links)?;
    let targets = [
        ("troupe", format!("http://{gw}")),
        ("nginx_1_worker", format!("http://127.0.0.1:{port1}")),
        ("nginx_2_workers", format!("http://127.0.0.1:{port2}")),
    ];
    let mut runs: Vec<Vec<(WrkResult, String)>> = vec![Vec::new(); 3];
    for round in 0..a.rounds {
        for (i, (name, url)) in targets.iter().enumerate() {
            eprintln!("round {}/{}: wrk against {name} ...", round + 1, a.rounds);
            runs[i].push(wrk(&a, &red, url)?);
        }
    }
    drop((nginx1, nginx2));
    let median = |rs: &[(WrkResult, String)]| -> WrkResult {
        let mut v: Vec<&WrkResult> = rs.iter().map(|r| &r.0).collect();
        v.sort_by(|x, y| x.requests_per_s.total_cmp(&y.requests_per_s));
        let mut m = v[v.len() / 2].clone();
        let mut p99: Vec<f64> = v.iter().map(|r| r.p99_ms).collect();
        p99.sort_by(f64::total_cmp);
        m.p99_ms = p99[p99.len() / 2];
        m
    };
    let troupe = median(&runs[0]);
    let peers: Vec<(u32, WrkResult)> = vec![(1, median(&runs[1])), (2, median(&runs[2]))];
    let confs = [conf1];
    let ratios: Vec<f64> = runs[0].iter().zip(&runs[1]).map(|(t, n)| t.0.requests_per_s / n.0.requests_per_s).collect();
    let served: u64 = runs[0].iter().map(|r| r.0.requests.saturating_sub(r.0.non_2xx_3xx)).sum();
    eprintln!("wrk creates against troupe {gw} ...");
    let (creates, creates_raw) = wrk(&a, &create_script(&tmp)?, &format!("http://{gw}/api/links"))?;

    // Clicks: every 302 served in the redirect run should be counted once (allow the
    // shipper a moment; wrk's count misses requests still in flight when it stopped).
    std::thread::sleep(Duration::from_secs(3));
    let mut counted = 0u64;
    for (code, _) in &links {
        if let Ok((200, body)) = http(gw, "GET", &format!("/api/links/{code}/stats"), None) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            counted += v["clicks"]["total"].as_u64().unwrap_or(0);
        }
    }
    let warmup = links.len() as u64;
    let dropped = cluster.metric("n1", "troupe_shortener_clicks_dropped_total");

    let one = &peers[0].1;
    let mut sorted_ratios = ratios.clone();
    sorted_ratios.sort_by(f64::total_cmp);
    let ratio = sorted_ratios[sorted_ratios.len() / 2];
    let summary = serde_json::json!({
        "bench": "url-shortener",
        "machine": troupe_bench::machine(),
        "setup": {
            "cluster": "3 troupe nodes (release build) on this machine; wrk aims at n1's gateway",
            "wrk": format!("wrk -t{} -c{} -d{}s --latency -s redirect.lua (cycles through the same {} codes), {} interleaved rounds", a.threads, a.connections, a.duration_s, links.len(), a.rounds),
            "nginx": "nginx-light; `map $uri $target` of the same codes, `return 302 $target`; access_log off; runs with worker_processes 1 and 2",
            "nginx_conf_1_worker_head": confs[0].lines().filter(|l| !l.trim_start().starts_with("/")).collect::<Vec<_>>().join("\n"),
            "troupe_node_threads": "tokio multi-thread runtime, one worker per core (2)",
        },
        "redirects": {
            "troupe": troupe,
            "nginx_1_worker": peers[0].1,
            "nginx_2_workers": peers[1].1,
            "note": "medians over interleaved rounds (requests/s and p99 each the median; the other fields from the median-throughput round)",
            "rounds": a.rounds,
            "troupe_vs_nginx_1_worker": ratio,
            "troupe_vs_nginx_1_worker_per_round": ratios,
            "troupe_rounds": runs[0].iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            "nginx_1_worker_rounds": runs[1].iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            "nginx_2_workers_rounds": runs[2].iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            "troupe_vs_nginx_2_workers": troupe.requests_per_s / peers[1].1.requests_per_s,
        },
        "creates": creates,
        "clicks": {
            "served_302_in_wrk_runs": served,
            "warmup_redirects": warmup,
            "counted_total": counted,
            "dropped_by_full_buffer": dropped,
        },
        "goals": {
            "redirects_ge_50pct_of_nginx_1_worker": ratio >= 0.5,
            "redirect_p99_lt_10ms": troupe.p99_ms < 10.0,
            "creates_ge_2000_per_s": creates.requests_per_s >= 2000.0,
        },
        "raw": { "troupe_round_1": runs[0][0].1, "nginx_1_round_1": runs[1][0].1, "nginx_2_round_1": runs[2][0].1, "creates": creates_raw },
    });
    let path = troupe_bench::write_result("url-shortener", &summary)?;
    println!(
        "redirects (medians of {} rounds): troupe {:.0}/s p50 {:.2} ms p99 {:.2} ms | nginx 1w {:.0}/s p99 {:.2} ms | nginx 2w {:.0}/s p99 {:.2} ms | ratio(1w) {:.2} per round {ratios:.2?}",
        a.rounds,
        troupe.requests_per_s,
        troupe.p50_ms,
        troupe.p99_ms,
        one.requests_per_s,
        one.p99_ms,
        peers[1].1.requests_per_s,
        peers[1].1.p99_ms,
        ratio
    );
    println!(
        "creates: {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} non-2xx) | clicks counted {counted} (wrk saw {served} + {warmup} warm-up), dropped {dropped}",
        creates.requests_per_s, creates.p50_ms, creates.p99_ms, creates.non_2xx_3xx
    );
    println!("wrote {}", path.display());
    Ok(())
}
