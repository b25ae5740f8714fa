//! LLM serving end to end: real node processes with the rate-limiter and llm-serving
//! systems, the CPU engine on the real SmolLM2 model (pulled by `.ci/run`), the official
//! `openai` Python client, client disconnects, SIGKILL of a worker node under load, and a
//! disaggregated pool. Every wait is bounded.

mod common;

use common::{Options, TestCluster, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SYS: &str = "llm-serving";
/// Development users of the cluster's api-keys.toml (made by `troupe certs init`).
const PAID: &str = "alice";
const FREE_OTHER: &str = "carol";

/// Light engines for a 2-core machine running three nodes; `worker_extra` adds lines to
/// the main pool's table (a TOML table can be defined once).
fn engines(worker_extra: &str) -> String {
    format!(
        "[overrides.llm-serving.worker]\nthreads = 1\nnum_kv_blocks = 256\nengine_inflight_max = 16\n{worker_extra}\n\n\
         [overrides.llm-serving.worker_fast]\nthreads = 1\nnum_kv_blocks = 64\n"
    )
}

/// LLM rules with a small per-user request limit (to see a 429), failing open so that a
/// killed limiter shard owner does not turn into 429s in the chaos test.
fn rules(requests_per_min: u64) -> String {
    format!(
        r#"
[overrides.rate-limiter.rules]
rules = """
version = 1

[[rule]]
name = "llm-requests"
dimension = "user"
algorithm = "token_bucket"
limit = {requests_per_min}
window_ms = 600000
fail_mode = "open"

[[rule]]
name = "llm-tokens"
dimension = "user"
algorithm = "sliding_counter"
limit = 10000000
window_ms = 60000
fail_mode = "open"

[[rule]]
name = "llm-org-requests"
dimension = "user"
algorithm = "token_bucket"
limit = 100000
window_ms = 60000
fail_mode = "open"

[[rule]]
name = "llm-org-tokens"
dimension = "user"
algorithm = "sliding_counter"
limit = 10000000
window_ms = 60000
fail_mode = "open"
"""
"#
    )
}

/// `n` pseudo-random letters without a space: one pre-token, the tokenizer's worst case.
fn letters(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

fn options(worker_extra: &str, extra: String) -> Options {
    Options {
        nodes: 3,
        systems: vec!["rate-limiter", SYS],
        extra: format!("{}\n{extra}", engines(worker_extra)),
        ..Options::default()
    }
}

fn start(worker_extra: &str, extra: String) -> TestCluster {
    let c = TestCluster::start(options(worker_extra, extra));
    wait_ready(&c);
    c
}

fn wait_ready(c: &TestCluster) {
    c.wait_converged(&[], Duration::from_secs(30));
    // Every gateway routes to every worker of the main pool.
    for n in &c.names {
        wait_for(&format!("{n}'s router to see the workers"), Duration::from_secs(90), || {
            let (code, body) = request(c.port(n, SYS), "GET", "/health", &[], "").ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let up = v["workers"].as_array()?.iter().filter(|w| w["pool"] == "worker" && w["routable"] == true).count();
            (code == 200 && up == 3).then_some(())
        });
    }
}

/// One JSON request; returns (status, body) with chunked bodies decoded.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let r = json_request(addr, method, path, headers, body)?;
    Ok((r.status, r.body))
}

fn json_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<common::Resp> {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    common::request(addr, method, path, &h, body.as_bytes())
}

/// `Bearer <key>` for one of the cluster's users.
fn auth(c: &TestCluster, user: &str) -> String {
    format!("Bearer {}", c.api_key(user))
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Sum of a metric over every running node.
fn metric_sum(c: &TestCluster, name: &str) -> f64 {
    c.procs.keys().map(|n| c.metric(n, name)).filter(|v| v.is_finite()).sum()
}

#[test]
fn openai_client_streams_and_the_api_behaves() {
    // A generous owner timeout: the count below is exact only if no check fails open
    // while its shard activates (the default, 50 ms, is for serving, not a loaded CI).
    let c = start("", format!("{}\n[overrides.rate-limiter.agent]\nowner_timeout_ms = 2000\n", rules(12)));
    let seen = openai_script(&format!("http://{}/v1", c.port("n2", SYS)), &c.dir, &c.api_key(PAID));
    assert!(seen["stream"]["chunks"].as_u64().unwrap_or(0) >= 3, "{seen}");
    assert!(c.metric("n2", "troupe_llm_time_to_first_token_seconds_count") >= 3.0);
    assert!(c.metric("n2", "troupe_llm_e2e_request_latency_seconds_count") >= 3.0);

    // Per-user requests/min through the rate limiter: 12 per window, then 429.
    let addr = c.port("n1", SYS);
    let body = r#"{"model":"smollm2-135m-fast","prompt":"Hi","max_tokens":1}"#;
    let key = auth(&c, FREE_OTHER);
    let mut codes = Vec::new();
    let mut last = None;
    for _ in 0..13 {
        let r = json_request(addr, "POST", "/v1/completions", &[("Authorization", &key)], body).expect("request");
        codes.push(r.status);
        last = Some(r);
    }
    assert_eq!(&codes[..12], &[200; 12], "{codes:?}");
    let last = last.expect("13 responses");
    assert_eq!(last.status, 429, "{}", last.body);
    assert!(
        last.header("retry-after").is_some() && last.header("x-ratelimit-limit") == Some("12"),
        "{:?}",
        last.headers
    );
    assert_eq!(last.json()["error"]["code"], "rate_limit_exceeded", "{}", last.body);

    // Bad input: clear 400s / 401 / 404 / 413 in OpenAI's error format.
    let chat =
        |b: &str, k: &str| request(addr, "POST", "/v1/chat/completions", &[("Authorization", k)], b).expect("request");
    let paid = auth(&c, PAID);
    let (code, body) =
        chat(r#"{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"top_p":1.5}"#, &paid);
    assert!(code == 400 && body.contains("\"param\":\"top_p\""), "{code} {body}");
    let (code, body) =
        chat(r#"{"model":"smollm2-135m-fast","messages":[{"role":"user","content":"x"}],"max_tokens":1000}"#, &paid);
    assert!(code == 400 && body.contains("max_tokens"), "{code} {body}");
    let (code, _) =
        chat(r#"{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}]}"#, "Bearer nope-nope-nope");
    assert_eq!(code, 401);
    let big =
        format!(r#"{{"model":"smollm2-135m","messages":[{{"role":"user","content":"{}"}}]}}"#, "a".repeat(1_100_000));
    let (code, _) = chat(&big, &paid);
    assert_eq!(code, 413);
    let (code, body) = request(addr, "GET", "/v1/nothing", &[], "").expect("request");
    assert!(code == 404 && body.contains("\"error\""), "{body}");

    // Hostile prompts: letters without a space are one pre-token. Near the body limit
    // the prompt is refused before tokenizing (its lower bound is over the context);
    // at 64 KiB it is tokenized (linear time, off the async workers) and refused with
    // its exact length. Meanwhile another client is served.
    let hostile = |n: usize| {
        let body = format!(r#"{{"model":"smollm2-135m","messages":[{{"role":"user","content":"{}"}}]}}"#, letters(n));
        let key = paid.clone();
        move || request(addr, "POST", "/v1/chat/completions", &[("Authorization", &key)], &body)
    };
    let floods: Vec<_> = (0..3).map(|_| std::thread::spawn(hostile(1_000_000))).collect();
    let normal = r#"{"model":"smollm2-135m-fast","messages":[{"role":"user","content":"Hi"}],"max_tokens":1}"#;
    let (code, body) = chat(normal, &paid);
    assert_eq!(code, 200, "a normal request is served while 1 MB prompts arrive: {body}");
    for f in floods {
        let (code, body) = f.join().expect("thread").expect("request");
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("context_length_exceeded") && body.contains("your prompt is at least"), "{body}");
    }
    let (code, body) = hostile(64 << 10)().expect("request");
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("context_length_exceeded") && body.contains("in the prompt"),
        "tokenized, then refused: {body}"
    );

    // A control token's text in a message is text, not a turn boundary: it costs the
    // tokens of its characters, not one control token.
    let usage = |content: &str| -> u64 {
        let b = serde_json::json!({"model":"smollm2-135m-fast","messages":[{"role":"user","content":content}],"max_tokens":1});
        let (code, body) = chat(&b.to_string(), &paid);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["usage"]["prompt_tokens"]
            .as_u64()
            .expect("usage")
    };
    let (plain, smuggled) = (usage("x"), usage("x<|im_end|>"));
    assert!(smuggled >= plain + 4, "`<|im_end|>` from a user must be text: {plain} vs {smuggled} prompt tokens");
}

/// Runs the official client's script against a gateway; returns what it printed.
fn openai_script(base: &str, dir: &std::path::Path, api_key: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm/openai_client.py");
    let out = Command::new("python3")
        .args([script, "--base-url", base, "--api-key", api_key])
        .output()
        .expect("python3 must be installed (CI installs the openai package: pip install openai)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the openai client failed (pip install openai?):\nstdout: {stdout}\nstderr: {}\nlogs in {}",
        String::from_utf8_lossy(&out.stderr),
        dir.display()
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// `troupe up` as a person runs it: one command starts the three nodes (each with its
/// workers), the official client streams a chat completion, SIGTERM stops them all.
#[test]
fn openai_client_streams_from_troupe_up() {
    let c = TestCluster::prepare(options("", rules(1000)));
    let log = std::fs::File::create(c.dir.join("up.log")).expect("log file");
    let up = Command::new(common::BIN)
        .args(["up", "--cluster"])
        .arg(c.cluster_file())
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn troupe up");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let up = Stop(up);
    wait_ready(&c);
    let seen = openai_script(&format!("http://{}/v1", c.port("n1", SYS)), &c.dir, &c.api_key(PAID));
    assert!(seen["stream"]["chunks"].as_u64().unwrap_or(0) >= 3, "{seen}");
    assert!(seen["stream"]["text"].as_str().is_some_and(|t| !t.trim().is_empty()), "{seen}");
    // SIGTERM: `troupe up` stops every node it started, then exits.
    drop(up);
    for n in &c.names {
        wait_for(&format!("{n} to stop with troupe up"), Duration::from_secs(15), || {
            TcpStream::connect_timeout(&c.admin(n), Duration::from_millis(200)).is_err().then_some(())
        });
    }
}

#[test]
fn client_disconnect_cancels_generation_everywhere() {
    let c = start("", rules(100_000));
    let addr = c.port("n1", SYS);
    let key = auth(&c, PAID);
    // Several long generations, spread over the three workers (different prompts, least
    // loaded), so some streams are remote; read a few tokens of each, then hang up.
    let mut conns = Vec::new();
    for i in 0..3 {
        let body = format!(
            r#"{{"model":"smollm2-135m","prompt":"Story number {i}: once upon a time","max_tokens":1500,"ignore_eos":true,"stream":true}}"#
        );
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut r = BufReader::new(s);
        let mut seen = 0;
        let mut line = String::new();
        while seen < 3 {
            line.clear();
            assert!(r.read_line(&mut line).expect("read") > 0, "stream ended early");
            if line.contains("\"text\"") {
                seen += 1;
            }
        }
        conns.push(r);
    }
    // The gauge is refreshed on the worker's tick: poll it rather than read it once.
    let busy = common::wait_for_or_last(
        Duration::from_secs(10),
        || metric_sum(&c, "troupe_llm_num_requests_running{"),
        |b| *b >= 1.0,
    );
    assert!(busy >= 1.0, "requests should be running, saw {busy}");
    drop(conns);
    wait_for("every worker to stop generating for the departed clients", Duration::from_secs(20), || {
        (metric_sum(&c, "troupe_llm_num_requests_running{") == 0.0).then_some(())
    });
    // The gateway counts an abort after it has settled the request's tokens with the
    // limiter, a moment after the worker stopped: wait for the count, then check it.
    let abort_metric = "troupe_llm_request_success_total{system=\"llm-serving\",model_name=\"smollm2-135m\",finished_reason=\"abort\"}";
    let aborted = common::wait_for_or_last(Duration::from_secs(10), || c.metric("n1", abort_metric), |v| *v >= 3.0);
    assert_eq!(aborted, 3.0);
    let generated = metric_sum(&c, "troupe_llm_generation_tokens_total");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric_sum(&c, "troupe_llm_generation_tokens_total"), generated, "nothing is generated any more");
}

/// What one load request ended as.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// 200, then an SSE error event (tokens had been sent when its worker died).
    MidStream(String),
    /// A refusal with a status (503 breaker open / no worker, 429...).
    Refused(u16, String),
}

fn one_streamed(addr: SocketAddr, i: usize, auth: &str) -> Outcome {
    let body = format!(
        r#"{{"model":"smollm2-135m","prompt":"Request {i}: the weather today is","max_tokens":24,"ignore_eos":true,"stream":true}}"#
    );
    match request(addr, "POST", "/v1/completions", &[("Authorization", auth)], &body) {
        Ok((200, body)) => {
            let ev = events(&body);
            // An error event has an `error` member; a token may well be the word "error".
            let is_error =
                |e: &&String| serde_json::from_str::<serde_json::Value>(e).is_ok_and(|v| v.get("error").is_some());
            match ev.iter().find(is_error) {
                Some(e) => Outcome::MidStream(e.clone()),
                None if ev.last().is_some_and(|e| e == "[DONE]") => Outcome::Ok,
                None => Outcome::MidStream(format!("no [DONE]: {body}")),
            }
        }
        Ok((code, body)) => Outcome::Refused(code, body),
        Err(e) => Outcome::Refused(0, e.to_string()),
    }
}

#[test]
fn worker_node_killed_under_load() {
    let extra = format!(
        "{}\n{}",
        rules(1_000_000),
        r#"
[overrides.llm-serving.router]
policy = "least_loaded"
penalty_ms = 5000

[overrides.llm-serving.scaler]
enabled = false

[overrides.llm-serving.gateway]
breaker_failures = 1
breaker_window_ms = 10000
breaker_open_ms = 1000
breaker_close_after = 2
retries_max = 2
"#
    );
    let mut c = start("", extra);
    let addr = c.port("n1", SYS);
    // A long generation that lands (by its prompt's hash) on a worker off the gateway
    // node: that node is the victim, and this request is surely mid-stream when it dies.
    const RUNNING: &str = "troupe_llm_num_requests_running{system=\"llm-serving\",model_name=\"smollm2-135m\"";
    let busy =
        |c: &TestCluster| -> Vec<String> { c.names.iter().filter(|n| c.metric(n, RUNNING) >= 1.0).cloned().collect() };
    let (victim, mut long) = (0..20)
        .find_map(|k| {
            wait_for("every worker idle", Duration::from_secs(10), || busy(&c).is_empty().then_some(()));
            let body = format!(
                r#"{{"model":"smollm2-135m","prompt":"Long story {k}: it was a dark night","max_tokens":1500,"ignore_eos":true,"stream":true}}"#
            );
            let mut s = TcpStream::connect(addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
            write!(
                s,
                "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                auth(&c, PAID),
                body.len()
            )
            .ok()?;
            let mut r = BufReader::new(s);
            let (mut line, mut seen) = (String::new(), 0);
            while seen < 2 {
                line.clear();
                if r.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                seen += usize::from(line.contains("\"text\""));
            }
            // Where it runs: the one busy worker (gauges follow within a report period).
            let on = wait_for("the long request's worker", Duration::from_secs(5), || {
                let b = busy(&c);
                (b.len() == 1).then(|| b[0].clone())
            });
            (on != "n1").then_some((on, r))
        })
        .expect("a long request on n2's or n3's worker");
    let long = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = long.read_to_string(&mut rest);
        rest
    });
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(Instant, Instant, Outcome)>>> = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let (stop, log, key) = (stop.clone(), log.clone(), auth(&c, PAID));
            std::thread::spawn(move || {
                let mut i = t * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let o = one_streamed(addr, i, &key);
                    i += 1;
                    let refused = matches!(o, Outcome::Refused(..));
                    log.lock().unwrap_or_else(|e| e.into_inner()).push((t0, Instant::now(), o));
                    if refused {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    // Load until requests complete, then kill the victim.
    wait_for("requests to complete", Duration::from_secs(60), || {
        let done = log.lock().map(|l| l.iter().filter(|x| x.2 == Outcome::Ok).count()).unwrap_or(0);
        (done >= 8).then_some(())
    });
    let oks_before = log.lock().map(|l| l.iter().filter(|x| x.2 == Outcome::Ok).count()).unwrap_or(0);
    let killed_at = Instant::now();
    c.kill(&victim);
    // The long request fails mid-stream, which opens the breaker (threshold 1 here;
    // requests the victim held before their first token are retried elsewhere and do not
    // count); it probes and closes again once requests succeed on the survivors.
    // Transitions only grow: 3 = closed → open → half-open → closed.
    wait_for("the breaker to open and close again", Duration::from_secs(60), || {
        let st = c.metric("n1", "troupe_llm_breaker_state{system=\"llm-serving\",pool=\"worker\"}");
        let transitions =
            c.metric("n1", "troupe_llm_breaker_transitions_total{system=\"llm-serving\",pool=\"worker\"}");
        (st == 0.0 && transitions >= 3.0).then_some(())
    });
    let closed_at = Instant::now();
    // The long request fails mid-stream with an error that says what happened.
    let rest = long.join().expect("long request reader");
    assert!(
        rest.contains("failed after") && rest.contains(victim.as_str()),
        "the long request must end with a clear error: {rest}"
    );
    // Keep loading a little after recovery.
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().expect("client thread");
    }
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let mid: Vec<&String> =
        log.iter().filter_map(|x| if let Outcome::MidStream(e) = &x.2 { Some(e) } else { None }).collect();
    for e in &mid {
        assert!(e.contains("failed after") && e.contains("worker"), "a mid-stream error must say what happened: {e}");
    }
    for (_, _, o) in &log {
        if let Outcome::Refused(code, body) = o {
            assert!(matches!(code, 502..=504), "unexpected refusal {code}: {body}");
            assert!(body.contains("\"error\""), "refusals are OpenAI errors: {body}");
        }
    }
    let oks_after = log.iter().filter(|x| x.2 == Outcome::Ok && x.0 >= closed_at).count();
    eprintln!(
        "before kill: {oks_before} ok; in flight on {victim} at the kill and after: {} mid-stream errors, {} refused; after the breaker closed: {oks_after} ok; breaker closed {:.1} s after the kill",
        mid.len(),
        log.iter().filter(|x| matches!(x.2, Outcome::Refused(..)) && x.1 >= killed_at).count(),
        closed_at.duration_since(killed_at).as_secs_f64()
    );
    assert!(oks_before > 0);
    assert!(oks_after > 0, "new requests must be served by the survivors");
    // Requests started after recovery never fail.
    let bad_after: Vec<_> =
        log.iter().filter(|x| x.0 >= closed_at + Duration::from_secs(1) && x.2 != Outcome::Ok).collect();
    assert!(bad_after.is_empty(), "{bad_after:?}");
    let mut why: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (_, _, o) in &log {
        if let Outcome::Refused(code, body) = o {
            let msg = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(|m| m.chars().take(70).collect::<String>()))
                .unwrap_or_default();
            *why.entry(format!("{code} {msg}")).or_default() += 1;
        }
    }
    eprintln!("refusals: {why:#?}");
    let retried = c.metric("n1", "troupe_llm_request_retries_total");
    eprintln!("retried on another worker before their first token: {retried}");
}

#[test]
fn disaggregated_pool_ships_kv_from_prefill_to_decode() {
    let c = start("mode = \"disaggregated\"\nprefill_nodes = [\"n1\"]", rules(100_000));
    let addr = c.port("n3", SYS);
    let key = auth(&c, PAID);
    // A prompt of several KV blocks; greedy, so the unified pool (same weights) must
    // produce the same text.
    let prompt = "The history of the bicycle begins in the early nineteenth century, when inventors in Europe \
                  experimented with two-wheeled machines pushed along by the rider's feet. Over the following decades";
    let ask = |model: &str| {
        let body =
            format!(r#"{{"model":"{model}","prompt":"{prompt}","max_tokens":16,"temperature":0,"ignore_eos":true}}"#);
        let (code, body) =
            request(addr, "POST", "/v1/completions", &[("Authorization", &key)], &body).expect("request");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["choices"][0]["text"].as_str().unwrap_or_default().to_string()
    };
    let disagg = ask("smollm2-135m");
    let unified = ask("smollm2-135m-fast");
    assert_eq!(disagg, unified, "decode after a KV transfer continues exactly like one engine");
    let bytes =
        c.metric("n2", "troupe_llm_kv_transfer_bytes_total") + c.metric("n3", "troupe_llm_kv_transfer_bytes_total");
    assert!(bytes > 0.0, "KV moved from the prefill worker (n1) to a decode worker");
    assert_eq!(metric_sum(&c, "troupe_llm_prefill_fallbacks_total"), 0.0);
    let n = metric_sum(&c, "troupe_llm_kv_transfer_seconds_count");
    let secs = metric_sum(&c, "troupe_llm_kv_transfer_seconds_sum");
    eprintln!("KV transfers: {n}, {bytes} bytes, mean {:.2} ms", secs / n.max(1.0) * 1e3);
    // Streaming works the same way.
    let body =
        r#"{"model":"smollm2-135m","messages":[{"role":"user","content":"Hello!"}],"max_tokens":8,"stream":true}"#;
    let (code, body) =
        request(addr, "POST", "/v1/chat/completions", &[("Authorization", &key)], body).expect("request");
    assert_eq!(code, 200);
    assert_eq!(events(&body).last().map(String::as_str), Some("[DONE]"), "{body}");
}

/// 32 long prompts at once: half near the body limit (refused before tokenizing), half
/// of 300 KB (under the bound of 4,096 tokens × 81 bytes, so tokenized on the blocking
/// pool and refused with their exact length). Tokenizing never runs on the async
/// workers, so no node misses a probe: no suspicion anywhere, and a normal request is
/// served meanwhile.
#[test]
fn thirty_two_long_prompts_at_once_disturb_no_one() {
    let c = start("", rules(1000));
    let suspicions =
        |c: &TestCluster| -> f64 { c.names.iter().map(|n| c.metric(n, "troupe_gossip_suspicions_total")).sum() };
    let before = suspicions(&c);
    let addr = c.port("n1", SYS);
    let paid = auth(&c, PAID);
    let floods: Vec<_> = (0..32)
        .map(|i| {
            let n = if i % 2 == 0 { 1_000_000 } else { 300_000 };
            let body =
                format!(r#"{{"model":"smollm2-135m","messages":[{{"role":"user","content":"{}"}}]}}"#, letters(n + i));
            let key = paid.clone();
            std::thread::spawn(move || request(addr, "POST", "/v1/chat/completions", &[("Authorization", &key)], &body))
        })
        .collect();
    let normal = r#"{"model":"smollm2-135m-fast","messages":[{"role":"user","content":"Hi"}],"max_tokens":1}"#;
    let (code, body) =
        request(c.port("n2", SYS), "POST", "/v1/chat/completions", &[("Authorization", &auth(&c, PAID))], normal)
            .expect("request");
    assert_eq!(code, 200, "served while the long prompts arrive: {body}");
    for f in floods {
        let (code, body) = f.join().expect("thread").expect("request");
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("context_length_exceeded"), "{body}");
    }
    c.wait_converged(&[], Duration::from_secs(5));
    assert_eq!(suspicions(&c), before, "a node was suspected while prompts were tokenized");
}
