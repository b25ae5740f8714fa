//! Requests from clients (SDK, CLI): clients do not know placement, so the node they
//! are connected to resolves the target and forwards, relaying the answer back. JSON
//! requests are converted with the target kind's protocol ("JSON for people, bincode
//! on the wire").

use super::tls::PeerId;
use super::transport::Link;
use crate::node::Node;
use crate::reply::StreamEvent;
use crate::slot::WireRequest;
use std::sync::Arc;
use std::time::Duration;
use troupe_wire::{ActorPath, Envelope, Frame, RemoteError, RequestKind, TraceId};

/// Forwards a client's binary request to wherever its target lives.
pub(crate) async fn forward(node: Node, peer: PeerId, env: Envelope, request: WireRequest) {
    let start = node.clock_us();
    let (trace, target) = (env.trace, env.target.clone());
    forward_inner(&node, &peer, env, request).await;
    // For asks this spans the whole round trip seen from the client's node.
    node.record_span(trace, "client", &target, start);
}

/// Whether `peer` may tell, ask or stream `target`: cluster nodes always; a client
/// certificate only a kind whose `allow` names its role (`client`, `admin`). The
/// replica agent allows nobody else: a client must not read or write the replicated
/// state of other entities through `/troupe/replica/<node>` (its `Load`, `Append`,
/// `Adopt` would bypass every owner). An unknown kind passes here and is refused with
/// its own reason when it is resolved.
fn authorize(node: &Node, peer: &PeerId, target: &ActorPath) -> Result<(), RemoteError> {
    let role = peer.role();
    let Some(ks) = node.kind_spec(target.system(), target.kind()) else { return Ok(()) };
    if role == "node" || ks.allow.iter().any(|r| r == role) {
        return Ok(());
    }
    let who = match ks.allow.as_slice() {
        [] => "cluster nodes only".to_string(),
        roles => format!("cluster nodes and {} certificates only", roles.join(" or ")),
    };
    Err(RemoteError::Unauthorized(format!(
        "{target} ({}.{}) accepts requests from {who}, not from {peer}'s {role} certificate",
        ks.system, ks.name
    )))
}

async fn forward_inner(node: &Node, peer: &PeerId, env: Envelope, request: WireRequest) {
    let node = node.clone();
    if let Err(e) = authorize(&node, peer, &env.target) {
        tracing::warn!(target = %env.target, %peer, "client request refused: its role may not address this kind");
        match request {
            WireRequest::Tell => {}
            WireRequest::Ask { sink, corr } => sink.reply(corr, Err(e)),
            WireRequest::Stream { sink, corr } => sink.stream_end(corr, Err(e)),
        }
        return;
    }
    match request {
        WireRequest::Tell => {
            if let Err(e) = node.tell_raw(&env.target, env.payload, env.trace).await {
                tracing::debug!(target = %env.target, error = %e, "client tell not delivered");
            }
        }
        WireRequest::Ask { sink, corr } => {
            let timeout = match env.request {
                RequestKind::Ask { timeout_ms, .. } => Duration::from_millis(timeout_ms as u64),
                _ => node.default_ask_timeout(),
            };
            let r = node.ask_raw(&env.target, env.payload, env.trace, timeout).await;
            sink.reply(corr, r);
        }
        WireRequest::Stream { sink, corr } => match node.stream_raw(&env.target, env.payload, env.trace).await {
            Err(e) => sink.stream_end(corr, Err(e)),
            Ok((mut rx, cancel)) => {
                let mut cancel = Some(cancel);
                while let Some(ev) = rx.recv().await {
                    match ev {
                        StreamEvent::Item(bytes) => {
                            if !sink.stream_item(corr, bytes).await {
                                if let Some(c) = cancel.take() {
                                    c();
                                }
                                return;
                            }
                        }
                        StreamEvent::End(r) => {
                            cancel.take();
                            sink.stream_end(corr, r);
                            return;
                        }
                    }
                }
                cancel.take();
                sink.stream_end(corr, Err(RemoteError::NoReply { path: env.target.to_string() }));
            }
        },
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn json_request(
    node: Node,
    link: Arc<Link>,
    target: ActorPath,
    corr: u64,
    timeout_ms: u32,
    json: String,
    stream: bool,
    trace: TraceId,
) {
    let start = node.clock_us();
    let span_target = target.clone();
    let span_node = node.clone();
    let _span = SpanGuard { node: &span_node, trace, target: &span_target, start };
    let send = |result: Result<String, RemoteError>, last: bool| {
        let link = link.clone();
        async move { link.send_frame_wait(corr, Frame::JsonReply { corr, result, last }).await }
    };
    // One slot on the client's connection while this request is served.
    let _slot = match link.client_slot(node.name()) {
        Ok(s) => s,
        Err(e) => {
            send(Err(e), true).await;
            return;
        }
    };
    let codec = match authorize(&node, &link.peer, &target).and_then(|()| node.json_codec(&target)) {
        Ok(c) => c,
        Err(e) => {
            send(Err(e), true).await;
            return;
        }
    };
    let payload = match codec.msg_from_json(&json) {
        Ok(p) => p,
        Err(e) => {
            send(
                Err(RemoteError::Invalid(format!(
                    "{} is not a valid `{}` message: {e}",
                    json_preview(&json),
                    codec.name()
                ))),
                true,
            )
            .await;
            return;
        }
    };
    if !stream {
        let timeout = Duration::from_millis(timeout_ms.max(1) as u64);
        let r = node.ask_raw(&target, payload, trace, timeout).await.and_then(|b| {
            codec.reply_to_json(&b).map_err(|e| RemoteError::BadMessage { path: target.to_string(), reason: e })
        });
        send(r, true).await;
        return;
    }
    match node.stream_raw(&target, payload, trace).await {
        Err(e) => {
            send(Err(e), true).await;
        }
        Ok((mut rx, cancel)) => {
            let mut cancel = Some(cancel);
            while let Some(ev) = rx.recv().await {
                match ev {
                    StreamEvent::Item(b) => {
                        let item = codec
                            .reply_to_json(&b)
                            .map_err(|e| RemoteError::BadMessage { path: target.to_string(), reason: e });
                        if !send(item, false).await {
                            if let Some(c) = cancel.take() {
                                c();
                            }
                            return;
                        }
                    }
                    StreamEvent::End(r) => {
                        cancel.take();
                        send(r.map(|()| String::new()), true).await;
                        return;
                    }
                }
            }
            cancel.take();
            send(Err(RemoteError::NoReply { path: target.to_string() }), true).await;
        }
    }
}

pub(crate) async fn json_tell(node: Node, peer: PeerId, target: ActorPath, json: String, trace: TraceId) {
    let payload = match authorize(&node, &peer, &target)
        .and_then(|()| node.json_codec(&target))
        .and_then(|c| c.msg_from_json(&json).map_err(RemoteError::Invalid))
    {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%target, error = %e, "client JSON tell refused");
            return;
        }
    };
    if let Err(e) = node.tell_raw(&target, payload, trace).await {
        tracing::debug!(%target, error = %e, "client JSON tell not delivered");
    }
}

/// Records a span for a client request when it is dropped (every exit path).
struct SpanGuard<'a> {
    node: &'a Node,
    trace: TraceId,
    target: &'a ActorPath,
    start: u64,
}

impl Drop for SpanGuard<'_> {
    fn drop(&mut self) {
        self.node.record_span(self.trace, "client", self.target, self.start);
    }
}

fn json_preview(s: &str) -> String {
    let t: String = s.chars().take(80).collect();
    if t.len() < s.len() { format!("`{t}…`") } else { format!("`{t}`") }
}
