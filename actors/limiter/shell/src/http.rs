//! `http`: the limiter's HTTP service, one per node with role `gateway`, on the node's
//! `ports."rate-limiter"` listener.
//!
//! - `POST /v1/check`: one check `{"rule","key","cost"}` or a batch `{"checks":[...]}`; 200 when
//!   allowed, 429 when denied, with `X-RateLimit-Limit/Remaining/Reset`, `RateLimit-Policy`,
//!   `RateLimit` and, on 429, `Retry-After`. Bad input is a 400 whose `error` says what is wrong.
//! - `GET /v1/rules`: the rule set this node enforces; `PUT /v1/rules` (TOML body): replace it
//!   cluster-wide (400 with every error, 409 when the version is not newer).
//! - `GET /v1/health`: node name and rule version (readiness).
//!
//! Credentials (runtime `cluster::tokens`): a check spends quota, so it needs the service
//! token; a rules change needs the admin token; both are 401 with the reason otherwise.
//!
//! Invariants: a body is read up to `body_bytes_max` and no further; the listener lives exactly
//! as long as the actor's state (dropping it aborts the server, so a restart can re-bind).

use super::client::{Limiter, LimiterError};
use super::config::HttpParams;
use super::state::NodeLimiter;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use troupe_limiter::json;
use troupe_limiter::proto::{SYSTEM, Verdict};
use troupe_runtime::cluster::tokens::{Credentials, Role};
use troupe_runtime::gateway::status_of;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Protocol, Reply, ReplyOf, fail};

/// Protocol of the HTTP actor: it only answers where it listens.
pub struct LimiterHttp;

impl Protocol for LimiterHttp {
    type Msg = HttpMsg;
    type Reply = HttpReply;
    const NAME: &'static str = "limiter.http";
}

/// Messages of [`LimiterHttp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HttpMsg {
    /// Where the service listens.
    Address,
}

/// Replies of [`LimiterHttp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HttpReply {
    /// The bound address, or `None` when this node has no `ports."rate-limiter"`.
    Address(Option<String>),
}

/// The `limiter.http` kind.
pub struct HttpActor {
    params: HttpParams,
}

impl FromParams for HttpActor {
    type Params = HttpParams;
    fn from_params(params: HttpParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(HttpActor { params })
    }
    fn check(p: &HttpParams) -> Result<(), String> {
        p.validate()
    }
}

/// The actor's state: the server task, aborted on drop.
pub struct HttpState {
    addr: Option<SocketAddr>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for HttpState {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

#[derive(Clone)]
struct App {
    limiter: Limiter,
    body_max: usize,
    credentials: std::sync::Arc<Credentials>,
}

/// `Some(401 with the reason)` unless the request carries a token of `need`.
fn refused(app: &App, headers: &HeaderMap, need: Role) -> Option<Response> {
    let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    app.credentials.check(need, auth).err().map(|why| error(StatusCode::UNAUTHORIZED, why))
}

/// Adds a verdict's rate-limit headers to a response.
pub fn set_headers(resp: &mut Response, v: &Verdict) {
    for (name, value) in v.headers() {
        if let (Ok(n), Ok(val)) = (HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            resp.headers_mut().insert(n, val);
        }
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": msg.into() }))).into_response()
}

fn limiter_error(e: LimiterError) -> Response {
    match e {
        LimiterError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        LimiterError::NotEnabled(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        LimiterError::Rules { conflict, errors } => {
            let code = if conflict { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
            (code, axum::Json(json!({ "error": "rules update refused", "errors": errors }))).into_response()
        }
        LimiterError::Remote(r) => error(status_of(&r), r.to_string()),
    }
}

async fn read_body(body: Body, max: usize) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {max} bytes (body_bytes_max)"))
    })
}

async fn check(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    // Checks spend quota: only trusted services (the service token) may ask.
    if let Some(r) = refused(&app, &headers, Role::Service) {
        return r;
    }
    let bytes = match read_body(body, app.body_max).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let checks = match json::parse_checks(&bytes) {
        Ok(c) => c,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match app.limiter.check(&checks).await {
        Ok(v) => {
            let code = if v.allowed { StatusCode::OK } else { StatusCode::TOO_MANY_REQUESTS };
            let mut resp = (code, axum::Json(json::verdict(&v))).into_response();
            set_headers(&mut resp, &v);
            resp
        }
        Err(e) => limiter_error(e),
    }
}

async fn get_rules(State(app): State<App>) -> Response {
    axum::Json(json::rules(&app.limiter.rules())).into_response()
}

async fn put_rules(
    State(app): State<App>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: Body,
) -> Response {
    if let Some(r) = refused(&app, &headers, Role::Admin) {
        return r;
    }
    let bytes = match read_body(body, app.body_max).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "the rules document must be UTF-8 TOML");
    };
    // `?force=true`: drop rules that a running system names anyway.
    let force = query.as_deref().is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force"));
    match app.limiter.put_rules(text, force).await {
        Ok(d) => axum::Json(json!({
            "version": d.to_version,
            "previous_version": d.from_version,
            "added": d.added,
            "changed": d.changed,
            "removed": d.removed,
        }))
        .into_response(),
        Err(e) => limiter_error(e),
    }
}

async fn health(State(app): State<App>) -> Response {
    let st = app.limiter.state();
    axum::Json(json!({ "node": st.node.name(), "rules_version": st.rules().version() })).into_response()
}

/// The service's routes (also used by tests and the lab, in process): `POST
/// /v1/check` needs the service token, `PUT /v1/rules` the admin token.
pub fn router(limiter: Limiter, body_max: usize, credentials: std::sync::Arc<Credentials>) -> Router {
    Router::new()
        .route("/v1/check", post(check))
        .route("/v1/rules", get(get_rules).put(put_rules))
        .route("/v1/health", get(health))
        .with_state(App { limiter, body_max, credentials })
}

impl Behavior for HttpActor {
    type Proto = LimiterHttp;
    type State = HttpState;

    async fn init(&self, ctx: &Ctx<LimiterHttp>) -> Result<HttpState, ActorError> {
        let node = ctx.node();
        let st = NodeLimiter::of(node).map_err(fail)?;
        let spec = node.loaded().cluster.node(node.name()).cloned();
        let Some((ip, port)) = spec.and_then(|s| s.ports.get(SYSTEM).map(|p| (s.addr.ip(), *p))) else {
            tracing::warn!(node = %node.name(), "no ports.\"{SYSTEM}\" for this node: the limiter's HTTP service is off");
            return Ok(HttpState { addr: None, server: None });
        };
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .map_err(|e| fail(format!("cannot listen on {ip}:{port} (ports.\"{SYSTEM}\"): {e}")))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let app = router(Limiter::from_state(st), self.params.body_bytes_max, node.credentials());
        let (_, served) = troupe_runtime::http::serve(listener, app, troupe_runtime::http::HttpLimits::default());
        let server = tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(error = %e, "rate-limiter HTTP service stopped");
            }
        });
        tracing::info!(%addr, "rate-limiter HTTP service listening");
        Ok(HttpState { addr: Some(addr), server: Some(server) })
    }

    async fn handle(
        &self,
        _: &Ctx<LimiterHttp>,
        s: &mut HttpState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            HttpMsg::Address => reply.send(HttpReply::Address(s.addr.map(|a| a.to_string()))).await,
        }
        Ok(())
    }
}
