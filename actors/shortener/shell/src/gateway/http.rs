//! The public HTTP API of a gateway node.
//!
//! `GET /{code}` is the hot path: the node's cache, else one ask to the link entity; the
//! click goes to the buffer without waiting. Everything else talks to the entities
//! directly (authoritative reads, durable writes).
//!
//! Invariant: every error is JSON with a kind and a sentence saying what to change.

use super::Shared;
use super::api::{ApiError, CreateBody, LinkView, UpdateBody, parse_json, redirect_kind};
use super::cache::Entry;
use crate::clicklog::{ClickLog, ClickLogMsg, ClickLogReply};
use crate::link::{Link, LinkChange, LinkMsg, LinkRecord, LinkReply, Requester};
use crate::{KIND_CLICKLOG, KIND_LINK, shard_of};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use troupe_runtime::cluster::tokens::Role;
use troupe_runtime::{ActorHandle, ActorPath, RemoteError};
use troupe_shortener::abuse::AbusePolicy;
use troupe_shortener::validate::{ExpiryError, check_expiry, parse_expiry, validate_alias, validate_url};

type S = State<Arc<Shared>>;

pub fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.params.body_bytes_max;
    Router::new()
        .route("/api/links", post(create))
        .route("/api/links/{code}", get(read).delete(delete).patch(update))
        .route("/api/links/{code}/stats", get(stats))
        .route("/{code}", get(redirect))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see docs/url-shortener.md for the API")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether `code` could name a link at all (generated codes and aliases share the
/// alphabet and length range); anything else is a 404 without touching the cluster.
pub fn plausible_code(code: &str) -> bool {
    (3..=32).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Shared {
    fn link(&self, code: &str) -> Result<ActorHandle<Link>, ApiError> {
        let p = ActorPath::new(&self.system, KIND_LINK, code).map_err(|_| ApiError::not_found(code))?;
        Ok(self.node.handle(p))
    }

    fn shard(&self, code: &str) -> Result<ActorHandle<ClickLog>, ApiError> {
        let key = shard_of(code, self.params.click_shards).to_string();
        let p = ActorPath::new(&self.system, KIND_CLICKLOG, &key)
            .map_err(|e| ApiError::upstream("finding the click shard", &RemoteError::Invalid(e.to_string())))?;
        Ok(self.node.handle(p))
    }

    async fn ask_link(&self, code: &str, msg: LinkMsg, what: &str) -> Result<LinkReply, ApiError> {
        let started = Instant::now();
        self.link(code)?.ask_timeout(msg, self.link_timeout).await.map_err(|e| {
            tracing::warn!(%code, took_ms = started.elapsed().as_millis() as u64, error = %e, "{what} failed");
            ApiError::upstream(what, &e)
        })
    }

    fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        if self.params.trust_forwarded_for
            && let Some(ip) = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
        {
            return ip;
        }
        peer.ip()
    }

    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(b) = &self.params.public_base_url {
            return b.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)));
        format!("http://{}", host.map(str::to_string).unwrap_or_else(|| self.addr.to_string()))
    }

    /// What the gateway knows about `code`: the cache, else the link entity.
    async fn resolve(self: &Arc<Self>, code: &str) -> Result<Entry, ApiError> {
        if let Some(hit) = self.cache.lookup(code, Instant::now()) {
            if hit.refresh {
                // Refresh ahead of expiry, off this request: hot links never miss.
                let (me, code) = (self.clone(), code.to_string());
                tokio::spawn(async move {
                    if let Err(e) = me.fetch(&code).await {
                        tracing::debug!(%code, error = %e.message, "cache refresh failed; the entry expires");
                    }
                });
            }
            return Ok(hit.entry);
        }
        self.fetch(code).await
    }

    /// Asks the link entity and caches the answer.
    async fn fetch(&self, code: &str) -> Result<Entry, ApiError> {
        let generation = self.cache.generation();
        let entry = match self.ask_link(code, LinkMsg::Get, "looking up the link").await? {
            LinkReply::Found(rec) if rec.deleted_ms.is_some() => Entry::Gone,
            LinkReply::Found(rec) => Entry::Link {
                location: HeaderValue::from_str(&rec.target).map_err(|_| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the stored target is not a valid header",
                    )
                })?,
                permanent: rec.permanent,
                expires_ms: rec.expires_ms,
            },
            _ => Entry::Missing,
        };
        self.cache.fill(code, entry.clone(), generation, Instant::now());
        Ok(entry)
    }
}

/// The hot path. It takes the request whole and reads the code, the peer and the headers
/// by reference: the `Path` and `HeaderMap` extractors would allocate and copy them.
async fn redirect(State(s): S, req: Request) -> Response {
    let code = req.uri().path().trim_start_matches('/');
    let headers = req.headers();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    if !plausible_code(code) {
        s.metrics.not_found.inc();
        return ApiError::not_found(code).into_response();
    }
    let entry = match s.resolve(code).await {
        Ok(e) => e,
        Err(e) => {
            s.metrics.unavailable.inc();
            return e.into_response();
        }
    };
    let now = now_ms();
    match entry {
        Entry::Link { expires_ms, .. } if expires_ms.is_some_and(|at| now >= at) => {
            s.metrics.gone.inc();
            ApiError::gone(code, "expired").into_response()
        }
        Entry::Link { location, permanent, .. } => {
            let header_str = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
            let country = s.geo.as_ref().and_then(|g| g.lookup(s.client_ip(peer, headers)));
            s.clicks.record(code, now, header_str(header::REFERER), header_str(header::USER_AGENT), country);
            let status = if permanent { StatusCode::MOVED_PERMANENTLY } else { StatusCode::FOUND };
            s.metrics.redirects.inc();
            (status, [(header::LOCATION, location)]).into_response()
        }
        Entry::Missing => {
            s.metrics.not_found.inc();
            ApiError::not_found(code).into_response()
        }
        Entry::Gone => {
            s.metrics.gone.inc();
            ApiError::gone(code, "deleted").into_response()
        }
    }
}

fn body_or_error(body: Result<Bytes, BytesRejection>, max: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over {max} bytes; send only the fields of the API"),
            )
        } else {
            ApiError::bad_request("invalid_body", format!("the request body could not be read: {rej}"))
        }
    })
}

/// Who the request is for:
/// - a user's API key (`Authorization: Bearer sk-…`, from the cluster's api-keys.toml)
///   names that user;
/// - `X-User-Id`, set by an authenticating proxy in front, counts only when the proxy
///   proves it is one with the cluster's service token (anyone can set a header);
/// - neither: anonymous.
fn user_of(s: &Shared, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(v) = headers.get("x-user-id") else {
        return match s.credentials.account(auth) {
            Ok(account) => Ok(account.map(|a| a.user.clone())),
            // The proxy's own token without a user: an anonymous request through it.
            Err(_) if s.credentials.check(Role::Service, auth).is_ok() => Ok(None),
            Err(why) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!(
                    "{why}: send your API key as `Authorization: Bearer <key>` (`troupe certs api-key USER`), or no Authorization header for an anonymous link"
                ),
            )),
        };
    };
    if let Err(why) = s.credentials.check(Role::Service, auth) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!(
                "X-User-Id is accepted only from the authenticating proxy, which presents the service token: {why}"
            ),
        ));
    }
    // A proxy that appends its header instead of replacing the client's would let the
    // client's own come first: name one user or none.
    if headers.get_all("x-user-id").iter().count() > 1 {
        return Err(ApiError::bad_request("invalid_user", "send one X-User-Id header, not several"));
    }
    let u = v.to_str().unwrap_or("");
    let ok = (1..=64).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(Some(u.to_string()))
    } else {
        Err(ApiError::bad_request("invalid_user", "X-User-Id must be 1..=64 characters of A-Z a-z 0-9 . _ @ -"))
    }
}

fn requester(s: &Shared, headers: &HeaderMap) -> Result<Requester, ApiError> {
    // The cluster's admin token may edit or delete any link (abuse takedowns).
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let admin = auth.is_some() && s.credentials.check(Role::Admin, auth).is_ok();
    Ok(Requester { user: if admin { None } else { user_of(s, headers)? }, admin })
}

/// A validated, screened target URL.
fn checked_url(abuse: &AbusePolicy, raw: &str) -> Result<String, ApiError> {
    let url = validate_url(raw).map_err(|e| ApiError::bad_request("invalid_url", e.to_string()))?;
    if let Some(reason) = abuse.assess(&url).blocked_reason() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "blocked_url",
            format!("this link cannot be shortened: {reason}"),
        ));
    }
    Ok(url.as_str().to_string())
}

/// An expiry from JSON: a string (duration, RFC 3339, date), Unix ms, or null (none).
pub fn parse_expires(v: &serde_json::Value, now: u64, min_ahead_ms: u64) -> Result<Option<u64>, ApiError> {
    let r = match v {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(t) => parse_expiry(t, now),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(ms) => check_expiry(ms, now),
            None => {
                return Err(ApiError::bad_request(
                    "invalid_expiry",
                    format!(
                        "expires in Unix milliseconds must be a whole number from now to ten years ahead, got {n}; or send a duration such as \"30d\""
                    ),
                ));
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_expiry",
                "expires must be a string (\"30d\", \"2027-01-31T12:00:00Z\", \"2027-01-31\") or Unix milliseconds",
            ));
        }
    };
    match r {
        Ok(at) => Ok(Some(at)),
        // The core's minimum is one minute; the deployment's may be lower (tests).
        Err(ExpiryError::NotInFuture { at_unix_ms, .. }) if at_unix_ms > now.saturating_add(min_ahead_ms) => {
            Ok(Some(at_unix_ms))
        }
        Err(e) => Err(ApiError::bad_request("invalid_expiry", e.to_string())),
    }
}

async fn create(
    State(s): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, s.params.body_bytes_max)?;
    let user = user_of(&s, &headers)?;
    if let Err(l) = s.limiter.admit(s.client_ip(peer, &headers), user.as_deref()).await {
        s.metrics.creates_limited.inc();
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many links created from this {}; wait and retry (see Retry-After)",
                if l.scope == "ip" { "address" } else { "user" }
            ),
        );
        e.headers = troupe_limiter::headers::x_ratelimit_headers(&l.decision)
            .into_iter()
            .map(|(k, v)| (if k == "Retry-After" { "retry-after" } else { lower(k) }, v))
            .collect();
        return Err(e);
    }
    let req: CreateBody = parse_json(&body)?;
    let target = checked_url(&s.abuse, &req.url)?;
    let now = now_ms();
    let expires_ms = match &req.expires {
        Some(v) => parse_expires(v, now, s.params.expiry_min_ahead_ms)?,
        None => None,
    };
    let permanent = redirect_kind(req.redirect)?.unwrap_or(false);
    let (code, custom) = match &req.alias {
        Some(a) => {
            (validate_alias(a).map_err(|e| ApiError::bad_request("invalid_alias", e.to_string()))?.into_string(), true)
        }
        None => {
            let c = s.ids.next(&s.node, s.link_timeout).await.map_err(|e| ApiError::upstream("minting a code", &e))?;
            (c.to_string(), false)
        }
    };
    let rec =
        LinkRecord { target, created_ms: now, updated_ms: now, expires_ms, permanent, owner: user, deleted_ms: None };
    let generation = s.cache.generation();
    match s.ask_link(&code, LinkMsg::Create { link: rec }, "storing the link").await? {
        LinkReply::Created(rec) => {
            s.metrics.creates.inc();
            // Links are often followed first where they were made: no lookup needed then.
            if let Ok(location) = HeaderValue::from_str(&rec.target) {
                let entry = Entry::Link { location, permanent: rec.permanent, expires_ms: rec.expires_ms };
                s.cache.fill(&code, entry, generation, Instant::now());
            }
            let view = LinkView::of(&code, &s.base_url(&headers), &rec, now);
            let location = HeaderValue::from_str(&view.short_url).unwrap_or(HeaderValue::from_static("/"));
            Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(view)).into_response())
        }
        LinkReply::Taken { deleted } if custom => Err(ApiError::new(
            StatusCode::CONFLICT,
            "alias_taken",
            if deleted {
                format!("the alias `{code}` belonged to a deleted link and is never reused; choose another")
            } else {
                format!("the alias `{code}` is taken; choose another or omit `alias` for a generated code")
            },
        )),
        other => {
            tracing::error!(%code, answer = ?other, "unexpected answer to Create");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the link could not be stored; retry"))
        }
    }
}

fn lower(k: &'static str) -> &'static str {
    match k {
        "X-RateLimit-Limit" => "x-ratelimit-limit",
        "X-RateLimit-Remaining" => "x-ratelimit-remaining",
        "X-RateLimit-Reset" => "x-ratelimit-reset",
        _ => "x-ratelimit",
    }
}

/// The link's record for the management endpoints: 404 / 410 when it is not live.
/// The link as of every acknowledged change (a read barrier at its owner).
async fn live_record(s: &Shared, code: &str) -> Result<LinkRecord, ApiError> {
    if !plausible_code(code) {
        return Err(ApiError::not_found(code));
    }
    match s.ask_link(code, LinkMsg::Read, "reading the link").await? {
        LinkReply::Found(rec) if rec.deleted_ms.is_some() => Err(ApiError::gone(code, "deleted")),
        LinkReply::Found(rec) => Ok(rec),
        _ => Err(ApiError::not_found(code)),
    }
}

async fn read(State(s): S, Path(code): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let rec = live_record(&s, &code).await?;
    Ok(axum::Json(LinkView::of(&code, &s.base_url(&headers), &rec, now_ms())).into_response())
}

async fn stats(
    State(s): S,
    Path(code): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    live_record(&s, &code).await?;
    let top_n = q.get("top").and_then(|t| t.parse::<u32>().ok()).unwrap_or(10).clamp(1, 100);
    let reply = s
        .shard(&code)?
        .ask_timeout(ClickLogMsg::Stats { code: code.clone(), top_n }, s.link_timeout)
        .await
        .map_err(|e| ApiError::upstream("reading the statistics", &e))?;
    let report = match reply {
        ClickLogReply::Stats(r) => r,
        _ => None,
    };
    let clicks = match report {
        Some(r) => serde_json::to_value(r).unwrap_or_default(),
        None => serde_json::json!({ "total": 0 }),
    };
    Ok(axum::Json(serde_json::json!({ "code": code, "geo": s.geo.is_some(), "clicks": clicks })).into_response())
}

async fn delete(State(s): S, Path(code): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let by = requester(&s, &headers)?;
    if !plausible_code(&code) {
        return Err(ApiError::not_found(&code));
    }
    match s.ask_link(&code, LinkMsg::Delete { by, at_ms: now_ms() }, "deleting the link").await? {
        LinkReply::Deleted => {
            s.cache.invalidate(&code);
            // Best effort: statistics of a deleted link are no longer reachable anyway.
            if let Ok(h) = s.shard(&code) {
                let _ = h.tell(ClickLogMsg::Forget { code: code.clone() }).await;
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        LinkReply::Forbidden(why) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why)),
        _ => Err(ApiError::not_found(&code)),
    }
}

async fn update(
    State(s): S,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, s.params.body_bytes_max)?;
    let by = requester(&s, &headers)?;
    if !plausible_code(&code) {
        return Err(ApiError::not_found(&code));
    }
    let req: UpdateBody = parse_json(&body)?;
    let now = now_ms();
    let change = LinkChange {
        target: req.url.as_deref().map(|u| checked_url(&s.abuse, u)).transpose()?,
        expires_ms: req.expires.as_ref().map(|v| parse_expires(v, now, s.params.expiry_min_ahead_ms)).transpose()?,
        permanent: redirect_kind(req.redirect)?,
    };
    match s.ask_link(&code, LinkMsg::Update { change, by, at_ms: now }, "updating the link").await? {
        LinkReply::Updated(rec) => {
            s.cache.invalidate(&code);
            Ok(axum::Json(LinkView::of(&code, &s.base_url(&headers), &rec, now)).into_response())
        }
        LinkReply::Forbidden(why) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why)),
        _ => Err(ApiError::not_found(&code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_shapes() {
        assert!(plausible_code("aZ3_-x7"));
        assert!(!plausible_code("ab"));
        assert!(!plausible_code("favicon.ico"));
        assert!(!plausible_code(&"a".repeat(33)));
    }

    #[test]
    fn expiry_forms_and_the_lowered_minimum() {
        let now = 1_767_225_600_000;
        let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
        assert_eq!(parse_expires(&j("null"), now, 60_000).ok(), Some(None));
        assert_eq!(parse_expires(&j("\"1h\""), now, 60_000).ok(), Some(Some(now + 3_600_000)));
        assert_eq!(parse_expires(&j(&(now + 120_000).to_string()), now, 60_000).ok(), Some(Some(now + 120_000)));
        // 5 s ahead: refused by default, accepted when the deployment lowers the minimum.
        assert!(parse_expires(&j(&(now + 5_000).to_string()), now, 60_000).is_err());
        assert_eq!(parse_expires(&j(&(now + 5_000).to_string()), now, 1_000).ok(), Some(Some(now + 5_000)));
        assert!(parse_expires(&j("\"soon\""), now, 1_000).is_err());
        assert!(parse_expires(&j("true"), now, 1_000).is_err());
        assert!(parse_expires(&j(&(now - 1).to_string()), now, 1_000).is_err());
    }
}
