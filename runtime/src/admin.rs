//! Admin HTTP, one per node: `/health`, Prometheus `/metrics`, and JSON
//! introspection and chaos endpoints for scripts (`curl`), next to the QUIC API the
//! CLI and TUI use. It reads the same node state as the node agent.

use crate::cluster::tokens::{self, Role};
use crate::metrics::render_prometheus;
use crate::node::Node;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use troupe_wire::introspect::ChaosCommand;

/// Serves the admin API on `addr` until the process ends. Returns the bound address.
pub async fn serve(node: Node, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(node);
    let (_, served) = crate::http::serve(listener, app, crate::http::HttpLimits::default());
    tokio::spawn(async move {
        if let Err(e) = served.await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(bound)
}

/// The admin routes, with the node as state: `/health` (503 when a system
/// has failed), `/metrics`, `/v1/tree`, `/v1/members`, `/v1/metrics`,
/// `/v1/trace/{id}` and `POST /v1/chaos`.
pub fn router(node: Node) -> axum::Router {
    let token = node.credentials();
    let chaos_route = post(move |st: State<Node>, headers: HeaderMap, body| chaos(st, headers, body, token.clone()));
    axum::Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/tree", get(tree))
        .route("/v1/members", get(members))
        .route("/v1/metrics", get(metrics_json))
        .route("/v1/trace/{id}", get(trace))
        .route("/v1/chaos", chaos_route)
        .with_state(node)
}

async fn health(State(node): State<Node>) -> Response {
    let h = node.health();
    let ok = h.systems.iter().all(|s| !s.status.starts_with("failed"));
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(h)).into_response()
}

async fn metrics(State(node): State<Node>) -> Response {
    let body = render_prometheus(&node.metrics_snapshot());
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

async fn metrics_json(State(node): State<Node>) -> Response {
    Json(node.metrics_snapshot()).into_response()
}

async fn tree(State(node): State<Node>) -> Response {
    Json(node.tree()).into_response()
}

async fn members(State(node): State<Node>) -> Response {
    Json(node.members()).into_response()
}

async fn trace(State(node): State<Node>, Path(id): Path<String>) -> Response {
    match u64::from_str_radix(id.trim_start_matches("0x"), 16) {
        Ok(t) => Json(node.spans(t).await).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "trace id must be hexadecimal"})))
            .into_response(),
    }
}

async fn chaos(
    State(node): State<Node>,
    headers: HeaderMap,
    body: Result<Json<ChaosCommand>, axum::extract::rejection::JsonRejection>,
    token: std::sync::Arc<tokens::Credentials>,
) -> Response {
    // State-changing: only with the cluster's admin token, before the command is looked at.
    let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Err(why) = token.check(Role::Admin, auth) {
        return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": why}))).into_response();
    }
    let Json(cmd) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": e.body_text()}))).into_response(),
    };
    match node.cluster() {
        Some(c) => Json(serde_json::json!({"result": c.chaos(cmd)})).into_response(),
        None => {
            (StatusCode::CONFLICT, Json(serde_json::json!({"error": "chaos needs a clustered node"}))).into_response()
        }
    }
}
