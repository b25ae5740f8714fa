//! The node's side of the transport: what arrives on a link for this node's actors.
//! A request goes to its actor in the stream's order without waiting — one whose
//! target must be activated first is parked (`parking.rs`); a client's request is
//! forwarded to the owner (`client.rs`). The transport sees only the `Inbound` trait.

use super::client;
use super::parking::{Parked, Parking};
use super::transport::{ClientCall, Inbound, LaneInbound, Link};
use crate::node::{Located, Node, NodeInner};
use crate::slot::WireRequest;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use troupe_wire::{ActorPath, Envelope, RemoteError, RequestKind, TraceId};

/// The node, as the transport's `Inbound`.
pub(crate) struct NodeInbound(Weak<NodeInner>);

impl NodeInbound {
    pub(crate) fn new(node: &Node) -> Arc<NodeInbound> {
        Arc::new(NodeInbound(node.downgrade()))
    }
}

impl Inbound for NodeInbound {
    fn lane(&self) -> Option<Box<dyn LaneInbound>> {
        Some(Box::new(Lane { node: self.0.clone(), parking: Parking::default() }))
    }
}

/// One incoming stream: requests parked for activation keep their order here.
struct Lane {
    node: Weak<NodeInner>,
    parking: Parking,
}

impl Lane {
    fn node(&self) -> Option<Node> {
        self.node.upgrade().map(Node::from_inner)
    }
}

impl LaneInbound for Lane {
    fn request(&mut self, env: Envelope, request: WireRequest, client: Option<ClientCall>) {
        let Some(node) = self.node() else { return };
        if let Some(call) = client {
            // Clients do not know placement: this node forwards for them, holding the
            // request's slot on the client's connection until it is answered.
            tokio::spawn(async move {
                client::forward(node, call.peer.clone(), env, request).await;
                drop(call);
            });
            return;
        }
        // Inline (not spawned): frames of one lane are handled in order.
        let start = node.clock_us();
        let expires = match env.request {
            RequestKind::Ask { timeout_ms, .. } => {
                Some((Instant::now() + Duration::from_millis(u64::from(timeout_ms)), u64::from(timeout_ms)))
            }
            _ => None,
        };
        let p = Parked { path: env.target, payload: env.payload, request, trace: env.trace, expires };
        let Some(p) = self.parking.try_join(&node, p) else { return };
        match node.locate(&p.path) {
            Ok(Located::Live(slot)) => {
                if let Err(e) = slot.deliver_bytes(&p.payload, p.request, p.trace) {
                    tracing::debug!(target = %p.path, error = %e, "message not delivered");
                }
                // Arrival from another node: decoding, resolution and enqueueing.
                node.record_span(p.trace, "remote-in", &p.path, start);
            }
            Ok(Located::Remote(owner)) => {
                if let Some(c) = node.cluster() {
                    c.transport.note_wrong_owner();
                }
                p.request.fail(RemoteError::WrongOwner { path: p.path.to_string(), owner });
            }
            Ok(Located::ActivateHere) => self.parking.start(node, p),
            Err(e) => p.request.fail(e),
        }
    }

    fn json_ask(
        &mut self,
        link: Arc<Link>,
        target: ActorPath,
        corr: u64,
        timeout_ms: u32,
        json: String,
        stream: bool,
        trace: TraceId,
    ) {
        let Some(node) = self.node() else { return };
        tokio::spawn(client::json_request(node, link, target, corr, timeout_ms, json, stream, trace));
    }

    fn json_tell(&mut self, call: ClientCall, target: ActorPath, json: String, trace: TraceId) {
        let Some(node) = self.node() else { return };
        tokio::spawn(async move {
            client::json_tell(node, call.peer.clone(), target, json, trace).await;
            drop(call);
        });
    }
}
