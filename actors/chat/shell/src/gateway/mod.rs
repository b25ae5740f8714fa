//! `gateway`: one per node with role `gateway`. It serves the chat WebSocket and the
//! HTTP API on the node's `ports.chat` port. A connection is a task (`session`), not
//! an actor; the node's sessions share one subscription per conversation topic
//! (`hub`). The actor itself only answers `Status`.
//!
//! Who is calling: `Authorization: Bearer <API key>` (the cluster's `api-keys.toml`),
//! or the cluster's service token with `X-User-Id: <user>` (an authenticating proxy
//! in front vouching for its user). Anything else is refused with 401 and the reason.
//!
//! Invariants: the listener and every session live exactly as long as the incarnation
//! that started them (dropping the state closes the sessions with 1001 and stops the
//! server); the sessions are bounded by the runtime's WebSocket limits.

pub mod http;
pub mod hub;
pub mod presence;
pub mod session;

use axum::http::{HeaderMap, StatusCode};
use hub::Hub;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use troupe_chat::ids;
use troupe_chat::proto::{
    ConvMsg, ConvReply, Conversation, DirMsg, DirReply, Directory, Gateway, GatewayMsg, GatewayReply,
    KIND_CONVERSATION, KIND_DIRECTORY,
};
use troupe_runtime::cluster::tokens::{Credentials, Role};
use troupe_runtime::metrics::Counter;
use troupe_runtime::pubsub::PubSub;
use troupe_runtime::ws::{WsLimits, WsSessions};
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail,
};

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
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
    /// Deadline of one request to a conversation or a directory shard (ms).
    pub request_timeout_ms: u64,
    /// Events asked for at once when catching up.
    pub since_max: u32,
    /// How often a session writes receipts and retries a failed catch-up (ms).
    pub tick_ms: u64,
    /// Longest wait of an HTTP long poll (ms).
    pub poll_wait_max_ms: u64,
    /// How often a session reads its user's conversations again (ms), in case a note
    /// of a new one was lost.
    pub directory_every_ms: u64,
    /// How often this node publishes its presence digest (ms): the staleness of
    /// presence on other nodes.
    pub presence_every_ms: u64,
    /// The rule of the rate limiter (system 10) each send is checked against, per
    /// user; without that system in the cluster sends are not limited.
    pub send_rule: String,
}

impl Default for GatewayParams {
    fn default() -> Self {
        let d = WsLimits::default();
        let h = troupe_runtime::http::HttpLimits::default();
        GatewayParams {
            ping_every_ms: d.ping_every.as_millis() as u64,
            pong_timeout_ms: d.pong_timeout.as_millis() as u64,
            outbound_bytes_max: d.outbound_bytes_max,
            inbound_bytes_max: 64 << 10,
            message_bytes_max: 256 << 10,
            sessions_max: d.sessions_max,
            connections_max: h.connections_max,
            connections_per_ip_max: h.connections_per_ip_max,
            request_timeout_ms: 5000,
            since_max: 500,
            tick_ms: 500,
            poll_wait_max_ms: 30_000,
            directory_every_ms: 60_000,
            presence_every_ms: 2000,
            send_rule: "chat-send".into(),
        }
    }
}

impl GatewayParams {
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
    pub fn directory_every(&self) -> Duration {
        Duration::from_millis(self.directory_every_ms.max(1000))
    }
}

/// Counters of one gateway node.
pub struct GatewayMetrics {
    pub accepted: Counter,
    pub delivered: Counter,
    pub catch_ups: Counter,
    pub gaps: Counter,
    pub limited: Counter,
}

impl GatewayMetrics {
    fn new(node: &Node) -> Self {
        let m = node.metrics();
        GatewayMetrics {
            accepted: m.counter(
                "troupe_chat_messages_accepted_total",
                "Messages made durable through this gateway",
                &[],
            ),
            delivered: m.counter("troupe_chat_events_delivered_total", "Events sent to clients", &[]),
            catch_ups: m.counter("troupe_chat_catch_ups_total", "Times a session asked a conversation for events", &[]),
            gaps: m.counter("troupe_chat_gaps_total", "Catch-ups that found events no longer kept", &[]),
            limited: m.counter("troupe_chat_sends_limited_total", "Sends refused by the send rate limit", &[]),
        }
    }
}

/// What the sessions and HTTP handlers of one incarnation share.
pub struct App {
    pub node: Node,
    pub system: String,
    pub params: GatewayParams,
    pub credentials: Arc<Credentials>,
    pub sessions: Arc<WsSessions>,
    pub hub: Arc<Hub>,
    pub presence: Arc<presence::Presence>,
    /// System 10's client when the cluster runs it (the `send_rule` limit per user).
    pub limiter: Option<troupe_limiter_shell::Limiter>,
    pub metrics: GatewayMetrics,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl App {
    fn conversation(&self, conv: &str) -> Result<troupe_runtime::ActorHandle<Conversation>, RemoteError> {
        let path =
            ActorPath::new(&self.system, KIND_CONVERSATION, conv).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        Ok(self.node.handle::<Conversation>(path))
    }

    /// Asks conversation `conv` within the request deadline.
    pub async fn ask(&self, conv: &str, msg: ConvMsg) -> Result<ConvReply, RemoteError> {
        let h = self.conversation(conv)?;
        h.ask_timeout(msg, Duration::from_millis(self.params.request_timeout_ms)).await
    }

    /// Tells conversation `conv` (at most once).
    pub async fn tell(&self, conv: &str, msg: ConvMsg) {
        if let Ok(h) = self.conversation(conv) {
            let _ = h.tell(msg).await;
        }
    }

    /// Admits one send by `user` under the rate limiter's `send_rule`, or says when
    /// to retry. Without the rate limiter, or when it cannot answer, the send goes on
    /// (availability of chat wins; the limiter's own fail mode decides otherwise).
    pub async fn admit_send(&self, user: &str) -> Result<(), String> {
        let Some(l) = &self.limiter else { return Ok(()) };
        match l.check(&[troupe_limiter_shell::Check::new(&self.params.send_rule, user)]).await {
            Ok(v) if v.allowed => Ok(()),
            Ok(v) => {
                self.metrics.limited.inc();
                let ms = v.binding().map_or(1000, |r| r.decision.retry_after_ns / 1_000_000);
                Err(format!("rate limited by rule {}: retry in {ms} ms", self.params.send_rule))
            }
            Err(e) => {
                tracing::warn!(error = %e, rule = %self.params.send_rule, "send limit not checked; admitting");
                Ok(())
            }
        }
    }

    /// Asks `user`'s keys entity within the request deadline.
    pub async fn keys(
        &self,
        user: &str,
        msg: troupe_chat::proto::KeysMsg,
    ) -> Result<troupe_chat::proto::KeysReply, RemoteError> {
        let path = ActorPath::new(&self.system, troupe_chat::proto::KIND_KEYS, user)
            .map_err(|e| RemoteError::Invalid(e.to_string()))?;
        let h = self.node.handle::<troupe_chat::proto::Keys>(path);
        h.ask_timeout(msg, Duration::from_millis(self.params.request_timeout_ms)).await
    }

    /// The conversations `user` is in, from the user's directory shard.
    pub async fn conversations_of(&self, user: &str) -> Result<Vec<String>, String> {
        let shard = ids::directory_shard(user, crate::DIRECTORY_SHARDS);
        let path = ActorPath::new(&self.system, KIND_DIRECTORY, &shard).map_err(|e| e.to_string())?;
        let h = self.node.handle::<Directory>(path);
        let msg = DirMsg::Conversations { user: user.to_string() };
        match h.ask_timeout(msg, Duration::from_millis(self.params.request_timeout_ms)).await {
            Ok(DirReply::Conversations(list)) => Ok(list),
            Ok(DirReply::Refused(why)) => Err(why),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Who the request is from, or the status and reason to refuse it with.
    pub fn who(&self, headers: &HeaderMap) -> Result<String, (StatusCode, String)> {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if let Some(user) = headers.get("x-user-id") {
            let user = user.to_str().map_err(|_| (StatusCode::BAD_REQUEST, "X-User-Id is not text".to_string()))?;
            self.credentials.check(Role::Service, auth).map_err(|why| {
                (StatusCode::UNAUTHORIZED, format!("X-User-Id counts only with the service token: {why}"))
            })?;
            ids::check_user(user).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
            return Ok(user.to_string());
        }
        match self.credentials.account(auth) {
            Ok(Some(account)) => {
                ids::check_user(&account.user)
                    .map_err(|why| (StatusCode::FORBIDDEN, format!("this key's user: {why}")))?;
                Ok(account.user.clone())
            }
            Ok(None) => Err((
                StatusCode::UNAUTHORIZED,
                "send your API key as `Authorization: Bearer <key>` (or the service token with X-User-Id)".into(),
            )),
            Err(why) => Err((StatusCode::UNAUTHORIZED, why)),
        }
    }
}

pub struct GatewayActor {
    params: GatewayParams,
    limits: WsLimits,
    http: troupe_runtime::http::HttpLimits,
}

impl FromParams for GatewayActor {
    type Params = GatewayParams;
    fn from_params(p: GatewayParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        let limits = WsLimits {
            ping_every: Duration::from_millis(p.ping_every_ms),
            pong_timeout: Duration::from_millis(p.pong_timeout_ms),
            outbound_bytes_max: p.outbound_bytes_max,
            inbound_bytes_max: p.inbound_bytes_max,
            message_bytes_max: p.message_bytes_max,
            sessions_max: p.sessions_max,
            ..WsLimits::default()
        };
        let http = troupe_runtime::http::HttpLimits {
            connections_max: p.connections_max,
            connections_per_ip_max: p.connections_per_ip_max,
            ..troupe_runtime::http::HttpLimits::default()
        };
        Ok(GatewayActor { params: p, limits, http })
    }
    fn check(p: &GatewayParams) -> Result<(), String> {
        if p.ping_every_ms == 0 || p.pong_timeout_ms == 0 || p.message_bytes_max < 1024 {
            return Err("ping_every_ms and pong_timeout_ms must be above 0 and message_bytes_max at least 1024".into());
        }
        if p.connections_max == 0 || p.connections_per_ip_max == 0 || p.sessions_max == 0 {
            return Err("connections_max, connections_per_ip_max and sessions_max must be above 0".into());
        }
        if p.request_timeout_ms == 0 || p.since_max == 0 || p.tick_ms == 0 || p.presence_every_ms == 0 {
            return Err("request_timeout_ms, since_max, tick_ms and presence_every_ms must be above 0".into());
        }
        Ok(())
    }
}

pub struct GatewayState {
    addr: Option<SocketAddr>,
    app: Option<Arc<App>>,
    _server: Option<troupe_runtime::http::Served>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for GatewayState {
    fn drop(&mut self) {
        if let Some(app) = &self.app {
            app.sessions.close_all();
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(app) = &self.app {
            app.presence.set_live(false);
        }
    }
}

impl Behavior for GatewayActor {
    type Proto = Gateway;
    type State = GatewayState;

    async fn init(&self, ctx: &Ctx<Gateway>) -> Result<GatewayState, ActorError> {
        let node = ctx.node();
        let system = ctx.path().system().to_string();
        let spec = node.loaded().cluster.node(node.name()).cloned();
        let Some(addr) = spec.and_then(|s| s.ports.get(&system).map(|p| SocketAddr::new(s.addr.ip(), *p))) else {
            tracing::warn!(node = %node.name(), "no ports.\"{system}\" for this node: its chat gateway is off");
            return Ok(GatewayState { addr: None, app: None, _server: None, tasks: Vec::new() });
        };
        let listener = troupe_runtime::http::bind(addr)
            .await
            .map_err(|e| fail(format!("cannot listen on {addr} (ports.\"{system}\"): {e}")))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let metrics = GatewayMetrics::new(node);
        let missed = node.metrics().counter(
            "troupe_chat_notes_missed_total",
            "Conversation notes a full session queue missed (the session catches up)",
            &[],
        );
        let hub = Arc::new(Hub::new(PubSub::of(node), &system, missed));
        let presence = presence::Presence::of(node);
        let mut tasks = presence.start(node, &system, Duration::from_millis(self.params.presence_every_ms));
        let app = Arc::new(App {
            node: node.clone(),
            system,
            params: self.params.clone(),
            credentials: node.credentials(),
            sessions: Arc::new(WsSessions::new(self.limits.clone())),
            hub,
            presence,
            limiter: troupe_limiter_shell::Limiter::new(node).ok(),
            metrics,
        });
        // Gauges of `troupe top`'s chat panel.
        let (a, m) = (app.clone(), node.metrics());
        let sessions_gauge = m.gauge(crate::top::SESSIONS, "WebSocket sessions open on this gateway", &[]);
        let online_gauge = m.gauge(crate::top::ONLINE, "Users with a session on this gateway", &[]);
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                sessions_gauge.set(a.sessions.open() as f64);
                online_gauge.set(a.presence.online_here() as f64);
            }
        }));
        let (_, server) =
            troupe_runtime::http::spawn(listener, http::router(app.clone()), self.http.clone(), "chat gateway");
        app.presence.set_live(true);
        tracing::info!(%addr, "chat gateway listening (WebSocket at /v1/ws)");
        Ok(GatewayState { addr: Some(addr), app: Some(app), _server: Some(server), tasks })
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
                let (sessions, topics) =
                    st.app.as_ref().map_or((0, 0), |a| (a.sessions.open() as u64, a.hub.topics() as u64));
                reply.send(GatewayReply::Status { addr: st.addr.map(|a| a.to_string()), sessions, topics }).await;
            }
        }
        Ok(())
    }
}
