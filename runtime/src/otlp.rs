//! OTLP/HTTP export of spans: each batch a node's span store writes is sent to the
//! configured collector as one `ExportTraceServiceRequest` (protobuf, the messages of
//! `opentelemetry-proto`), `POST <path>` with `Content-Type: application/x-protobuf`,
//! over HTTP/1.1 (hyper). Plain `http://` only: a collector or agent beside the node,
//! as OpenTelemetry deployments usually run one.
//!
//! A troupe span maps to an OTLP span with the trace id in the low 8 bytes of the
//! 16-byte OTLP trace id, a span id derived from (node, sequence number in the node's
//! span store), its name,
//! start and end, and attributes `troupe.node`, `troupe.target` and each of its fields;
//! the resource says `service.name` and `service.instance.id` (the node).
//!
//! Invariants: export never slows recording: batches wait in a bounded queue
//! ([`QUEUE_BATCHES`] written batches, each bounded by the span store's buffer) and are
//! encoded on a blocking thread, at most [`REQUEST_SPANS`] spans a request; a full
//! queue or a failed request drops its spans, counted in
//! `troupe_spans_export_dropped_total`; each request is bounded by [`REQUEST_TIMEOUT`].

use crate::metrics::{Counter, Metrics};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc;
use troupe_wire::introspect::SpanRecord;

/// Written batches waiting for the collector at most.
pub const QUEUE_BATCHES: usize = 8;
/// Spans in one export request at most (collectors cap request bodies).
pub const REQUEST_SPANS: usize = 2048;
/// How long one export request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go: host, port and path of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// The request path, e.g. `/v1/traces`.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host:port/path` (the port defaults to 4318, OTLP/HTTP's, and the
    /// path to `/v1/traces`).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if !url.starts_with("http://") {
            return Err(format!(
                "`{url}` is not an http:// URL (only plain HTTP to a collector or agent is supported)"
            ));
        }
        let uri: hyper::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("`{url}` names no host"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!("`{url}` carries credentials; give the collector's address only"));
        }
        let written = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        // After an IPv6 host's brackets, or in the whole authority: `:port` if any.
        let after_host = match written.strip_prefix('[') {
            Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
            None => written,
        };
        let port = match after_host.rsplit_once(':') {
            None => 4318,
            Some((_, p)) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("`{url}`: `{p}` is not a port number (1 to 65535)")),
            },
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("/") | Some("") => "/v1/traces".to_string(),
            Some(p) => p.to_string(),
        };
        Ok(Endpoint { authority: format!("{host}:{port}"), path })
    }
}

/// The export side of one node's span store.
pub(crate) struct Exporter {
    tx: mpsc::Sender<Vec<(u64, SpanRecord)>>,
    dropped: Counter,
}

impl Exporter {
    /// Starts sending batches to `url` (checked at config load) on a task of its own.
    pub(crate) fn start(url: &str, service: &str, node: &str, metrics: &Metrics) -> Exporter {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let dropped = metrics.counter(
            "troupe_spans_export_dropped_total",
            "Spans not exported: the collector refused or did not answer, or too many waited",
            &[],
        );
        let exported = metrics.counter("troupe_spans_exported_total", "Spans the collector accepted", &[]);
        match Endpoint::parse(url) {
            Ok(ep) => {
                tokio::spawn(run(ep, service.to_string(), node.to_string(), rx, exported, dropped.clone()));
            }
            Err(e) => tracing::error!(error = %e, "span export is off"),
        }
        Exporter { tx, dropped }
    }

    /// Queues a written batch (spans with their sequence numbers); a full queue drops
    /// it (counted).
    pub(crate) fn send(&self, batch: Vec<(u64, SpanRecord)>) {
        let n = batch.len() as u64;
        if self.tx.try_send(batch).is_err() {
            self.dropped.add(n);
        }
    }
}

async fn run(
    ep: Endpoint,
    service: String,
    node: String,
    mut rx: mpsc::Receiver<Vec<(u64, SpanRecord)>>,
    exported: Counter,
    dropped: Counter,
) {
    let mut failing = false;
    while let Some(batch) = rx.recv().await {
        for chunk in batch.chunks(REQUEST_SPANS) {
            let n = chunk.len() as u64;
            let (service, node, chunk) = (service.clone(), node.clone(), chunk.to_vec());
            let body = match tokio::task::spawn_blocking(move || request(&service, &node, &chunk).encode_to_vec()).await
            {
                Ok(b) => b,
                Err(_) => {
                    dropped.add(n);
                    continue;
                }
            };
            send_one(&ep, body, n, &exported, &dropped, &mut failing).await;
        }
    }
}

async fn send_one(ep: &Endpoint, body: Vec<u8>, n: u64, exported: &Counter, dropped: &Counter, failing: &mut bool) {
    {
        match tokio::time::timeout(REQUEST_TIMEOUT, post(ep, body)).await {
            Ok(Ok(())) => {
                exported.add(n);
                if *failing {
                    tracing::info!(endpoint = %ep.authority, "span export works again");
                    *failing = false;
                }
            }
            outcome => {
                dropped.add(n);
                let why = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {REQUEST_TIMEOUT:?}"),
                };
                // Once per outage, not once per batch.
                if !*failing {
                    tracing::warn!(endpoint = %ep.authority, error = %why, "span export failed; spans are dropped until it works");
                    *failing = true;
                }
            }
        }
    }
}

/// One POST of `body`; `Ok` on a 2xx answer.
async fn post(ep: &Endpoint, body: Vec<u8>) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(&ep.authority).await.map_err(|e| format!("connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(&ep.path)
        .header(hyper::header::HOST, &ep.authority)
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string());
    conn.abort();
    let res = res?;
    if res.status().is_success() { Ok(()) } else { Err(format!("the collector answered {}", res.status())) }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

/// Placement's stable hash of the span's identity (its node and its sequence number
/// there): a span id that is the same however often it is sent (never zero, which
/// OTLP reads as "no span id").
fn span_id(node: &str, seq: u64) -> [u8; 8] {
    troupe_core::placement::stable_hash(&[node.as_bytes(), &seq.to_le_bytes()]).max(1).to_be_bytes()
}

/// The OTLP request for one batch of `node`'s spans (with their sequence numbers).
pub fn request(service: &str, node: &str, batch: &[(u64, SpanRecord)]) -> ExportTraceServiceRequest {
    let spans = batch
        .iter()
        .map(|(seq, s)| {
            let mut trace_id = vec![0u8; 8];
            trace_id.extend_from_slice(&s.trace.to_be_bytes());
            let mut attributes = vec![text("troupe.node", &s.node), text("troupe.target", &s.target)];
            attributes.extend(s.fields.iter().map(|(k, v)| text(k, v)));
            let start = s.start_unix_us.saturating_mul(1000);
            Span {
                trace_id,
                span_id: span_id(node, *seq).to_vec(),
                name: s.name.clone(),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start.saturating_add(s.duration_us.saturating_mul(1000)),
                attributes,
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", service), text("service.instance.id", node)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "troupe".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_defaults_and_refuse_what_is_not_plain_http() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:4318/v1/traces").unwrap(),
            Endpoint { authority: "127.0.0.1:4318".into(), path: "/v1/traces".into() }
        );
        assert_eq!(Endpoint::parse("http://collector").unwrap().authority, "collector:4318");
        assert_eq!(Endpoint::parse("http://collector").unwrap().path, "/v1/traces");
        assert!(Endpoint::parse("https://collector:4318").unwrap_err().contains("not an http:// URL"));
        assert!(Endpoint::parse("http:///v1/traces").is_err());
        assert!(Endpoint::parse("http://h:99999/v1/traces").is_err(), "a port out of range");
        assert!(Endpoint::parse("http://h:1/x\r\nEvil: 1").is_err(), "a header smuggled in the path");
        assert!(Endpoint::parse("http://user:pw@h:1/v1/traces").unwrap_err().contains("credentials"));
        assert_eq!(Endpoint::parse("http://[::1]:4000/t").unwrap().authority, "[::1]:4000");
    }

    #[test]
    fn a_span_maps_to_otlp_with_its_fields_as_attributes() {
        let s = SpanRecord {
            trace: 0xabc1,
            node: "n1".into(),
            name: "handle".into(),
            target: "/diag/counter/n1".into(),
            start_unix_us: 1_000,
            duration_us: 5,
            fields: vec![("diag.total".into(), "7".into())],
        };
        let r = request("troupe-it", "n1", &[(7, s)]);
        let bytes = r.encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let span = &back.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xc1]);
        assert_eq!((span.start_time_unix_nano, span.end_time_unix_nano), (1_000_000, 1_005_000));
        assert!(span.attributes.iter().any(|kv| kv.key == "diag.total"));
        assert_eq!(span.span_id.len(), 8);
    }
}
