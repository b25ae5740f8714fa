//! The diag gateway: `GET /ws/echo` on `ports.diag`, a WebSocket whose every message
//! is answered with the same message after a round trip through this node's counter
//! actor (`CounterMsg::Echo`). It needs the service token (`Authorization: Bearer`).
//! It exists to exercise the runtime's WebSocket service (`troupe_runtime::ws`) end to
//! end in tests and benchmarks; a node without `ports.diag` runs it switched off.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use troupe_diag::{Counter, CounterMsg, CounterReply, Gateway, GatewayMsg, GatewayReply};
use troupe_runtime::cluster::tokens::{Credentials, Role};
use troupe_runtime::ws::{WsLimits, WsMessage, WsSessions, WsUpgrade, close_code};
use troupe_runtime::{ActorError, ActorPath, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail};

const SYSTEM: &str = "diag";

/// `[kinds.gateway.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayParams {
    pub ping_every_ms: u64,
    pub pong_timeout_ms: u64,
    pub outbound_bytes_max: usize,
    pub inbound_bytes_max: usize,
    pub message_bytes_max: usize,
    pub sessions_max: usize,
    /// Open HTTP connections the listener holds at most, and from one IP address (a
    /// WebSocket holds its connection for its life).
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
}

impl Default for GatewayParams {
    fn default() -> Self {
        let d = WsLimits::default();
        GatewayParams {
            ping_every_ms: d.ping_every.as_millis() as u64,
            pong_timeout_ms: d.pong_timeout.as_millis() as u64,
            outbound_bytes_max: d.outbound_bytes_max,
            inbound_bytes_max: d.inbound_bytes_max,
            message_bytes_max: d.message_bytes_max,
            sessions_max: d.sessions_max,
            connections_max: troupe_runtime::http::HttpLimits::default().connections_max,
            connections_per_ip_max: troupe_runtime::http::HttpLimits::default().connections_per_ip_max,
        }
    }
}

pub struct GatewayActor {
    limits: WsLimits,
    http: troupe_runtime::http::HttpLimits,
}

impl FromParams for GatewayActor {
    type Params = GatewayParams;
    fn from_params(p: GatewayParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        if p.ping_every_ms == 0 || p.pong_timeout_ms == 0 || p.message_bytes_max == 0 {
            return Err("ping_every_ms, pong_timeout_ms and message_bytes_max must be above 0".into());
        }
        if p.connections_max == 0 || p.connections_per_ip_max == 0 {
            return Err("connections_max and connections_per_ip_max must be above 0".into());
        }
        Ok(GatewayActor {
            limits: WsLimits {
                ping_every: Duration::from_millis(p.ping_every_ms),
                pong_timeout: Duration::from_millis(p.pong_timeout_ms),
                outbound_bytes_max: p.outbound_bytes_max,
                inbound_bytes_max: p.inbound_bytes_max,
                message_bytes_max: p.message_bytes_max,
                sessions_max: p.sessions_max,
                ..WsLimits::default()
            },
            http: troupe_runtime::http::HttpLimits {
                connections_max: p.connections_max,
                connections_per_ip_max: p.connections_per_ip_max,
                ..troupe_runtime::http::HttpLimits::default()
            },
        })
    }
}

pub struct GatewayState {
    addr: Option<SocketAddr>,
    sessions: Arc<WsSessions>,
    _server: Option<troupe_runtime::http::Served>,
}

impl Drop for GatewayState {
    fn drop(&mut self) {
        // The router holds the sessions too: close them now, not when the last
        // connection's task lets go of it.
        self.sessions.close_all();
    }
}

#[derive(Clone)]
struct App {
    node: Node,
    sessions: Arc<WsSessions>,
    credentials: Arc<Credentials>,
}

async fn echo(State(app): State<App>, headers: HeaderMap, upgrade: WsUpgrade) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err(why) = app.credentials.check(Role::Service, auth) {
        return (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": why }))).into_response();
    }
    let counter = match ActorPath::new(SYSTEM, "counter", app.node.name()) {
        Ok(path) => app.node.handle::<Counter>(path),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    app.sessions.accept(upgrade, move |tx, mut rx| async move {
        while let Some(msg) = rx.recv().await {
            let text = matches!(msg, WsMessage::Text(_));
            let bytes = msg.as_bytes().to_vec();
            let answer = match counter.ask(CounterMsg::Echo { bytes }).await {
                Ok(CounterReply::Echo { bytes }) if text => match String::from_utf8(bytes) {
                    Ok(t) => WsMessage::Text(t),
                    Err(_) => break,
                },
                Ok(CounterReply::Echo { bytes }) => WsMessage::Binary(bytes.into()),
                Ok(other) => {
                    tx.close(close_code::NORMAL, format!("unexpected answer {other:?}")).await;
                    break;
                }
                Err(e) => {
                    tx.close(close_code::SERVER_ERROR, format!("the counter actor did not answer: {e}")).await;
                    break;
                }
            };
            if tx.send(answer).await.is_err() {
                break;
            }
        }
    })
}

impl Behavior for GatewayActor {
    type Proto = Gateway;
    type State = GatewayState;

    async fn init(&self, ctx: &Ctx<Gateway>) -> Result<GatewayState, ActorError> {
        let node = ctx.node();
        let sessions = Arc::new(WsSessions::new(self.limits.clone()));
        let spec = node.loaded().cluster.node(node.name()).cloned();
        let Some(addr) = spec.and_then(|s| s.ports.get(SYSTEM).map(|p| SocketAddr::new(s.addr.ip(), *p))) else {
            tracing::warn!(node = %node.name(), "no ports.\"{SYSTEM}\" for this node: the diag gateway is off");
            return Ok(GatewayState { addr: None, sessions, _server: None });
        };
        let listener = troupe_runtime::http::bind(addr)
            .await
            .map_err(|e| fail(format!("cannot listen on {addr} (ports.\"{SYSTEM}\"): {e}")))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let app = App { node: node.clone(), sessions: sessions.clone(), credentials: node.credentials() };
        let router = axum::Router::new().route("/ws/echo", get(echo)).with_state(app);
        let (_, server) = troupe_runtime::http::spawn(listener, router, self.http.clone(), "diag gateway");
        tracing::info!(%addr, "diag gateway listening (WebSocket echo at /ws/echo)");
        Ok(GatewayState { addr: Some(addr), sessions, _server: Some(server) })
    }

    async fn handle(
        &self,
        _: &Ctx<Gateway>,
        st: &mut GatewayState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            GatewayMsg::Status => {
                reply
                    .send(GatewayReply::Status {
                        addr: st.addr.map(|a| a.to_string()),
                        sessions: st.sessions.open() as u64,
                    })
                    .await
            }
        }
        Ok(())
    }
}
