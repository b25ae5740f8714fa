//! The runtime's JSON gateway: the `[[routes]]` of each topology, served on the
//! node's `ports.<system>` listener. A route turns an HTTP request into one message
//! (path parameters and JSON body fields fill the message variant named by the
//! route), asks the actor, and answers with the reply as JSON. Systems with their
//! own protocol (OpenAI API, redirects, WebSocket) run gateway actors instead.
//!
//! **Invariant:** a route that changes state asks for a credential (the route's
//! `auth`; by default the service token for every method but GET) and a request
//! without it is answered 401 with the reason before its body is read.

use crate::cluster::tokens::Credentials;
use crate::config::RouteSpec;
use crate::node::Node;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use troupe_wire::{ActorPath, RemoteError};

/// Largest accepted request body, in bytes.
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// Maps a request failure to an HTTP status a client can act on.
pub fn status_of(e: &RemoteError) -> StatusCode {
    match e {
        RemoteError::UnknownPath { .. } => StatusCode::NOT_FOUND,
        RemoteError::Invalid(_) | RemoteError::BadMessage { .. } => StatusCode::BAD_REQUEST,
        RemoteError::Unauthorized(_) => StatusCode::FORBIDDEN,
        RemoteError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        RemoteError::NoReply { .. } => StatusCode::BAD_GATEWAY,
        RemoteError::ActorFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        RemoteError::Cancelled => StatusCode::BAD_REQUEST,
        RemoteError::MailboxFull { .. }
        | RemoteError::QueueFull { .. }
        | RemoteError::Restarting { .. }
        | RemoteError::WrongOwner { .. }
        | RemoteError::Unreachable { .. }
        | RemoteError::NodeDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON error response; retryable errors carry `Retry-After`.
pub fn error_response(e: &RemoteError) -> Response {
    let code = status_of(e);
    let mut r = (code, Json(serde_json::json!({ "error": e.to_string() }))).into_response();
    if code == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    }
    r
}

#[derive(Clone)]
struct RouteState {
    node: Node,
    system: String,
    route: Arc<RouteSpec>,
    credentials: Arc<Credentials>,
}

/// Starts the gateway listeners of this node. Returns (system, bound address).
pub async fn serve_routes(node: &Node) -> std::io::Result<Vec<(String, SocketAddr)>> {
    let mut out = Vec::new();
    let spec = node.loaded().cluster.node(node.name()).cloned();
    let Some(spec) = spec else { return Ok(out) };
    for t in &node.loaded().topologies {
        if t.routes.is_empty() {
            continue;
        }
        let Some(port) = spec.ports.get(&t.name) else { continue };
        let mut app = axum::Router::new();
        let credentials = node.credentials();
        let mut by_path: HashMap<String, Vec<Arc<RouteSpec>>> = HashMap::new();
        for r in &t.routes {
            by_path.entry(r.path.clone()).or_default().push(Arc::new(r.clone()));
        }
        for (path, routes) in by_path {
            let mut mr = axum::routing::MethodRouter::new();
            for r in routes {
                let method = Method::from_bytes(r.method.as_bytes()).unwrap_or(Method::GET);
                let filter = axum::routing::MethodFilter::try_from(method).unwrap_or(axum::routing::MethodFilter::GET);
                let st = RouteState {
                    node: node.clone(),
                    system: t.name.clone(),
                    route: r,
                    credentials: credentials.clone(),
                };
                mr = mr.merge(on(filter, handle).with_state(st));
            }
            app = app.route(&path, mr);
        }
        let app = app.layer(DefaultBodyLimit::max(BODY_BYTES_MAX));
        let addr = SocketAddr::new(spec.addr.ip(), *port);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        out.push((t.name.clone(), listener.local_addr()?));
        let (_, served) = crate::http::serve(listener, app, crate::http::HttpLimits::default());
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(error = %e, "gateway stopped");
            }
        });
    }
    Ok(out)
}

fn fill(template: &str, params: &HashMap<String, String>) -> String {
    let mut out = template.to_string();
    for (k, v) in params {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

async fn handle(
    State(st): State<RouteState>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let route = &st.route;
    // The route's credential first, before the request is looked at.
    if let Some(need) = route.auth {
        let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(why) = st.credentials.check(need, auth) {
            return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": why }))).into_response();
        }
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let why = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the request body is over {BODY_BYTES_MAX} bytes")
            } else {
                format!("the request body could not be read: {}", e.body_text())
            };
            return (e.status(), Json(serde_json::json!({ "error": why }))).into_response();
        }
    };
    let key = fill(&route.key, &params);
    let path = match ActorPath::new(&st.system, &route.kind, &key) {
        Ok(p) => p,
        Err(e) => return error_response(&RemoteError::Invalid(e.to_string())),
    };
    let mut fields = serde_json::Map::new();
    if route.body && !body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(m)) => fields = m,
            Ok(_) => return error_response(&RemoteError::Invalid("the request body must be a JSON object".into())),
            Err(e) => return error_response(&RemoteError::Invalid(format!("the request body is not valid JSON: {e}"))),
        }
    }
    for (k, v) in &params {
        fields.entry(k.clone()).or_insert(serde_json::Value::String(v.clone()));
    }
    let codec = match st.node.json_codec(&path) {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    // A struct variant takes the fields; a unit variant is just its name.
    let as_struct = serde_json::json!({ route.message.clone(): fields }).to_string();
    let payload = match codec.msg_from_json(&as_struct) {
        Ok(p) => p,
        Err(first) => match codec.msg_from_json(&serde_json::Value::String(route.message.clone()).to_string()) {
            Ok(p) if fields.len() <= params.len() => p,
            _ => return error_response(&RemoteError::Invalid(format!("bad request for `{}`: {first}", route.message))),
        },
    };
    let trace = crate::current::current_trace() | 1;
    match st.node.ask_raw(&path, payload, trace, st.node.default_ask_timeout().min(Duration::from_secs(30))).await {
        Ok(bytes) => match codec.reply_to_json(&bytes) {
            Ok(json) => ([("content-type", "application/json")], json).into_response(),
            Err(e) => error_response(&RemoteError::BadMessage { path: path.to_string(), reason: e }),
        },
        Err(e) => error_response(&e),
    }
}
