//! The HTTP API's shapes: JSON bodies in, JSON views out, and errors a person can act
//! on (`{"error": "<kind>", "message": "<what to do>"}` with the right status).

use crate::link::LinkRecord;
use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use troupe_runtime::RemoteError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), headers: Vec::new() }
    }
    pub fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }
    pub fn not_found(code: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no link has the code `{code}`; check the spelling (codes are case-sensitive)"),
        )
    }
    pub fn gone(code: &str, why: &'static str) -> Self {
        Self::new(
            StatusCode::GONE,
            why,
            format!("the link `{code}` {}", if why == "expired" { "has expired" } else { "was deleted" }),
        )
    }
    /// A failure of the cluster behind the gateway: retryable ones say so.
    pub fn upstream(what: &str, e: &RemoteError) -> Self {
        let status = troupe_runtime::gateway::status_of(e);
        let status = if status == StatusCode::NOT_FOUND { StatusCode::SERVICE_UNAVAILABLE } else { status };
        let mut err = Self::new(status, "unavailable", format!("{what} failed: {e}; retry shortly"));
        if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT) {
            err.kind = "unavailable";
            err.headers.push(("retry-after", "1".into()));
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.kind, "message": self.message });
        let mut r = (self.status, Json(body)).into_response();
        for (k, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                r.headers_mut().insert(HeaderName::from_static(k), v);
            }
        }
        r
    }
}

/// `POST /api/links`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub url: String,
    /// A custom code (3..=32 of `A-Za-z0-9_-`); omitted = a generated 7-character code.
    #[serde(default)]
    pub alias: Option<String>,
    /// `"30d"`, `"12h"`, an RFC 3339 time, a date, or Unix milliseconds.
    #[serde(default)]
    pub expires: Option<serde_json::Value>,
    /// 302 (default) or 301 (opt-in; browsers cache it and later clicks go uncounted).
    #[serde(default)]
    pub redirect: Option<u16>,
}

/// `PATCH /api/links/{code}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    #[serde(default)]
    pub url: Option<String>,
    /// As in create; JSON `null` removes the expiry.
    #[serde(default, deserialize_with = "some_value")]
    pub expires: Option<serde_json::Value>,
    #[serde(default)]
    pub redirect: Option<u16>,
}

/// Keeps an explicit `null` as `Some(Value::Null)` (absent stays `None`).
fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A link as the API shows it.
#[derive(Debug, Serialize)]
pub struct LinkView {
    pub code: String,
    pub short_url: String,
    pub url: String,
    pub redirect: u16,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub expired: bool,
    pub owned: bool,
}

impl LinkView {
    pub fn of(code: &str, base: &str, rec: &LinkRecord, now_ms: u64) -> Self {
        Self {
            code: code.to_string(),
            short_url: format!("{base}/{code}"),
            url: rec.target.clone(),
            redirect: if rec.permanent { 301 } else { 302 },
            created_at_ms: rec.created_ms,
            updated_at_ms: rec.updated_ms,
            expires_at_ms: rec.expires_ms,
            expired: rec.is_expired(now_ms),
            owned: rec.owner.is_some(),
        }
    }
}

/// `redirect` field → permanent?
pub fn redirect_kind(v: Option<u16>) -> Result<Option<bool>, ApiError> {
    match v {
        None => Ok(None),
        Some(302) => Ok(Some(false)),
        Some(301) => Ok(Some(true)),
        Some(other) => Err(ApiError::bad_request(
            "invalid_redirect",
            format!(
                "redirect must be 302 (default, every click counted) or 301 (cached by browsers: later clicks are not counted), not {other}"
            ),
        )),
    }
}

/// A JSON body, with errors that say where it went wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty; send a JSON object such as {\"url\": \"https://example.com/\"}",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let kind = if e.is_data() { "invalid_field" } else { "invalid_json" };
        ApiError::bad_request(kind, format!("the request body is not what this endpoint takes: {e}"))
    })
}
