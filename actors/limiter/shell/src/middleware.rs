//! [`RateLimitLayer`]: tower/axum middleware that checks a request's limits with the cluster's
//! rate limiter before the handler runs.
//!
//! ```no_run
//! # fn demo(node: &troupe_runtime::Node, app: axum::Router) -> Result<(), troupe_limiter_shell::LimiterError> {
//! use troupe_limiter_shell::{Limiter, RateLimitConfig, RateLimitLayer};
//! let layer = RateLimitLayer::new(
//!     Limiter::new(node)?,
//!     RateLimitConfig::new(["api-per-ip", "api-per-user", "api-per-endpoint", "api-global"])
//!         .user_header("x-api-key"),
//! );
//! let app = app.layer(layer);
//! // Serve with ConnectInfo so `ip` rules see the peer address:
//! // troupe_runtime::http::serve(listener, app, HttpLimits::default()) gives handlers ConnectInfo
//! # let _ = app; Ok(()) }
//! ```
//!
//! What each rule's dimension counts by:
//! - `user`: the configured header (default `x-user-id`); a request without it skips the rule
//!   (anonymous traffic is what `ip` rules are for);
//! - `ip`: the peer address from `ConnectInfo`; the leftmost `X-Forwarded-For` entry only when
//!   `trust_forwarded_for` is set (behind a proxy you control: otherwise any client picks its
//!   own IP and escapes its limit);
//! - `endpoint`: `METHOD /matched/route` (axum's `MatchedPath`, so `/links/{code}` is one
//!   endpoint, not one per code);
//! - `global`: one cluster-wide counter.
//!
//! Allowed: the handler runs and the response carries the rate-limit headers. Denied: 429 with
//! a JSON body, the headers and `Retry-After`. A header value the limiter refuses (too long):
//! 400. The limiter not running: the request passes (fail open) and a warning is logged.

use super::client::{Limiter, LimiterError};
use super::http::set_headers;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use troupe_limiter::Dimension;
use troupe_limiter::json;
use troupe_limiter::proto::CheckItem;

/// Which rules the middleware checks and where it finds their values.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    rules: Vec<String>,
    user_header: HeaderName,
    trust_forwarded_for: bool,
}

impl RateLimitConfig {
    /// Checks `rules` (by name; each rule's dimension says what it counts) on every request.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(rules: I) -> Self {
        RateLimitConfig {
            rules: rules.into_iter().map(Into::into).collect(),
            user_header: HeaderName::from_static("x-user-id"),
            trust_forwarded_for: false,
        }
    }
    /// The header naming the user (or API key) for `user` rules. An invalid name keeps the
    /// default `x-user-id`.
    pub fn user_header(mut self, name: &str) -> Self {
        if let Ok(h) = HeaderName::try_from(name.to_ascii_lowercase()) {
            self.user_header = h;
        }
        self
    }
    /// Take `ip` from the leftmost `X-Forwarded-For` entry (only behind a trusted proxy).
    pub fn trust_forwarded_for(mut self, yes: bool) -> Self {
        self.trust_forwarded_for = yes;
        self
    }
}

/// The layer; see the module docs.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Limiter,
    cfg: Arc<RateLimitConfig>,
}

impl RateLimitLayer {
    /// Checks `cfg`'s rules through `limiter` on every request.
    pub fn new(limiter: Limiter, cfg: RateLimitConfig) -> Self {
        RateLimitLayer { limiter, cfg: Arc::new(cfg) }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner, limiter: self.limiter.clone(), cfg: self.cfg.clone() }
    }
}

/// The service the layer wraps around a handler.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Limiter,
    cfg: Arc<RateLimitConfig>,
}

/// The checks for one request: one per configured rule whose value the request has.
fn checks_for(limiter: &Limiter, cfg: &RateLimitConfig, req: &Request) -> Vec<CheckItem> {
    let rules = limiter.rules();
    let mut out = Vec::with_capacity(cfg.rules.len());
    for name in &cfg.rules {
        let Some(rule) = rules.get(name) else {
            tracing::warn!(rule = %name, version = rules.version(), "RateLimitLayer: no such rule; skipped");
            continue;
        };
        let value = match rule.dimension() {
            Dimension::User => match req.headers().get(&cfg.user_header).and_then(|v| v.to_str().ok()) {
                Some(u) if !u.is_empty() => u.to_string(),
                _ => continue,
            },
            Dimension::Ip => {
                let forwarded = cfg
                    .trust_forwarded_for
                    .then(|| req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()))
                    .flatten()
                    .and_then(|v| v.split(',').next())
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty());
                match forwarded
                    .or_else(|| req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()))
                {
                    Some(ip) => ip,
                    None => continue,
                }
            }
            Dimension::Endpoint => {
                let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
                format!("{} {route}", req.method())
            }
            Dimension::Global => String::new(),
        };
        out.push(CheckItem { rule: name.clone(), key: value, cost: None });
    }
    out
}

impl<S> tower::Service<Request> for RateLimitService<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone that was polled ready is the one that must serve this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (limiter, cfg) = (self.limiter.clone(), self.cfg.clone());
        Box::pin(async move {
            let checks = checks_for(&limiter, &cfg, &req);
            if checks.is_empty() {
                return inner.call(req).await;
            }
            match limiter.check(&checks).await {
                Ok(v) if v.allowed => {
                    let mut resp = inner.call(req).await?;
                    set_headers(&mut resp, &v);
                    Ok(resp)
                }
                Ok(v) => {
                    let body = serde_json::json!({
                        "error": "rate limited",
                        "rule": v.binding().map(|r| r.rule.clone()),
                        "retry_after_s": v.retry_after_secs(),
                        "limits": json::verdict(&v)["results"].clone(),
                    });
                    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
                    set_headers(&mut resp, &v);
                    Ok(resp)
                }
                Err(LimiterError::Invalid(m)) => {
                    Ok((StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "error": m }))).into_response())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rate limiter unavailable; request passed unchecked");
                    inner.call(req).await
                }
            }
        })
    }
}
