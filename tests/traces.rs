//! Durable traces on real node processes: a span with fields, recorded on one node,
//! is read back by `troupe trace` through another node after the first was killed
//! with SIGKILL and started again, and it reached an OTLP/HTTP receiver (this test's,
//! decoding the protobuf with `opentelemetry-proto`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use troupe_client::{Client, ClientConfig};
use troupe_runtime::ActorPath;

const WAIT: Duration = Duration::from_secs(60);

/// (node, trace id, span name, attributes) of every span the receiver got.
type Got = Arc<Mutex<Vec<(String, u64, String, Vec<(String, String)>)>>>;

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, answered 200.
fn receiver() -> (u16, Got) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Got = Arc::default();
    let store = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            let mut length = 0usize;
            let mut content_type = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("content-type:") {
                    content_type = v.trim().to_string();
                }
            }
            let mut body = vec![0u8; length];
            let ok = reader.read_exact(&mut body).is_ok()
                && request_line.starts_with("POST /v1/traces ")
                && content_type == "application/x-protobuf";
            let decoded = ok.then(|| ExportTraceServiceRequest::decode(body.as_slice()).ok()).flatten();
            let status = if decoded.is_some() { "200 OK" } else { "400 Bad Request" };
            if let Some(req) = decoded {
                for rs in req.resource_spans {
                    let node = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.instance.id")
                        .and_then(|kv| text(kv.value.as_ref()))
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let trace = u64::from_be_bytes(span.trace_id[8..16].try_into().unwrap());
                        let attrs = span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref()).unwrap_or_default()));
                        store.lock().unwrap().push((node.clone(), trace, span.name.clone(), attrs.collect()));
                    }
                }
            }
            let _ = conn
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    (port, got)
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match v?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[test]
fn a_span_with_fields_is_read_back_from_another_node_after_a_restart_and_reaches_otlp() {
    let (port, got) = receiver();
    let mut c = common::TestCluster::start(common::Options {
        systems: vec!["diag"],
        extra: format!("[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}/v1/traces\"\n"),
        ..common::Options::default()
    });
    c.wait_converged(&[], Duration::from_secs(30));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // n2's counter, asked through n1: its handler adds two fields to its span.
    let counter = ActorPath::new("diag", "counter", "n2").unwrap();
    let trace = rt.block_on(async {
        let cfg = ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap().prefer("n1");
        let client = Client::connect(cfg).await.unwrap();
        let timeout = Duration::from_secs(10);
        client.ask_json(&counter, r#"{"Add":{"n":5}}"#, timeout, Client::new_trace()).await.ok();
        let trace = Client::new_kept_trace();
        let reply = client.ask_json(&counter, r#""Get""#, timeout, trace).await.unwrap();
        assert!(reply.contains("\"total\": 5") || reply.contains("\"total\":5"), "{reply}");
        trace
    });
    // On n2's disk (nothing left waiting to be written), then n2 dies and comes back.
    common::wait_for("n2's spans written", WAIT, || {
        (c.metric("n2", "troupe_spans_pending") == 0.0 && c.metric("n2", "troupe_spans_stored_total") >= 1.0)
            .then_some(())
    });
    c.kill("n2");
    c.spawn("n2");
    c.wait_converged(&[], Duration::from_secs(30));
    let out = std::process::Command::new(common::BIN)
        .args(["trace", &format!("{trace:016x}"), "--via", "n3", "--cluster"])
        .arg(c.cluster_file())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "troupe trace: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    let handle = stdout.lines().find(|l| l.contains("/diag/counter/n2") && l.contains("handle"));
    let handle = handle.unwrap_or_else(|| panic!("no handle span of n2's counter:\n{stdout}"));
    assert!(
        handle.contains("n2") && handle.contains("diag.total=\"5\"") && handle.contains("diag.messages=\"1\""),
        "{handle}"
    );
    // A replicated write's trace shows its replicas too: a keeper (rf 3) persists what
    // it is reminded of, and its replicas' agents record their spans under the same
    // trace.
    let keeper = ActorPath::new("diag", "keeper", "traced").unwrap();
    let write = rt.block_on(async {
        let client = Client::connect(ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap()).await.unwrap();
        let trace = Client::new_kept_trace();
        // Activated first (its init writes outside any request), then one traced write.
        client.ask_json(&keeper, r#""Status""#, Duration::from_secs(10), Client::new_trace()).await.unwrap();
        client.ask_json(&keeper, r#"{"Reminded":{"id":"x"}}"#, Duration::from_secs(10), trace).await.unwrap();
        trace
    });
    let replicas = common::wait_for("the replicas' spans of the keeper's write", WAIT, || {
        let out = std::process::Command::new(common::BIN)
            .args(["trace", &format!("{write:016x}"), "--cluster"])
            .arg(c.cluster_file())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.matches("/troupe/replica/").count() >= 2).then_some(text)
    });
    assert!(replicas.contains("/diag/keeper/traced"), "{replicas}");
    // The same span reached the collector, with its fields as attributes.
    let span = common::wait_for("the span at the OTLP receiver", WAIT, || {
        got.lock().unwrap().iter().find(|(_, t, name, _)| *t == trace && name == "handle").cloned()
    });
    assert_eq!(span.0, "n2");
    assert!(span.3.contains(&("diag.total".into(), "5".into())), "{:?}", span.3);
    assert!(span.3.contains(&("troupe.target".into(), "/diag/counter/n2".into())), "{:?}", span.3);
}
