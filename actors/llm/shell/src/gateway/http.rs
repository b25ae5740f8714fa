//! The gateway's HTTP surface: routes, authentication, tokenization, and rendering the
//! request's events as SSE chunks or one JSON body (OpenAI's shapes, `openai.rs`).

use super::serve::{Event, Job, admit, run, session_hash};
use super::{Account, App};
use crate::openai::{self, ApiError, ApiRequest, Endpoint, Limits, Prompt, ResponseId};
use crate::proto::{Finish, RouterMsg, RouterReply, Sampling};
use crate::queue::Tier;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events buffered between a request's task and its HTTP body.
const EVENTS_BUFFER: usize = 64;

/// The gateway's routes (also used in-process by tests and the lab).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .fallback(not_found)
        .with_state(app)
}

fn respond(e: &ApiError, extra: &[(&'static str, String)]) -> Response {
    let code = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, axum::Json(e.body())).into_response();
    set_headers(&mut r, extra);
    if let Some(s) = e.retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(s));
    }
    r
}

fn set_headers(r: &mut Response, extra: &[(&'static str, String)]) {
    for (k, v) in extra {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(*k), HeaderValue::from_str(v)) {
            r.headers_mut().insert(n, v);
        }
    }
}

async fn not_found() -> Response {
    respond(
        &ApiError::status(
            404,
            "invalid_request_error",
            Some("unknown_url"),
            "Unknown request URL: see /v1/models, /v1/chat/completions, /v1/completions",
        ),
        &[],
    )
}

fn auth(app: &App, headers: &HeaderMap) -> Result<Account, ApiError> {
    if app.keys.is_empty() {
        return Ok(Account { user: "anonymous".into(), org: "anonymous".into(), tier: Tier::Free });
    }
    let unauthorized =
        |msg: String, code: Option<&'static str>| ApiError::status(401, "invalid_request_error", code, msg);
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(unauthorized(
            "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).".into(),
            None,
        ));
    };
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or("").trim();
    match app.keys.account_of(key) {
        Ok(a) => match a.tier.as_str() {
            "paid" => Ok(Account { user: a.user.clone(), org: a.org.clone(), tier: Tier::Paid }),
            "free" => Ok(Account { user: a.user.clone(), org: a.org.clone(), tier: Tier::Free }),
            other => Err(ApiError::status(
                403,
                "permission_error",
                Some("unknown_tier"),
                format!(
                    "this API key's tier `{other}` is not one this server serves (free, paid); ask the operator to fix api-keys.toml"
                ),
            )),
        },
        Err(why) => {
            let shown: String = if key.len() > 8 && key.is_char_boundary(3) && key.is_char_boundary(key.len() - 4) {
                format!("{}...{}", &key[..3], &key[key.len() - 4..])
            } else {
                "***".into()
            };
            Err(unauthorized(format!("Incorrect API key provided: {shown} ({why})."), Some("invalid_api_key")))
        }
    }
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = auth(&app, &headers) {
        return respond(&e, &[]);
    }
    let names: Vec<(String, u64)> = app.models.iter().map(|m| (m.name.clone(), app.created)).collect();
    axum::Json(openai::models(&names)).into_response()
}

async fn model(State(app): State<Arc<App>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(e) = auth(&app, &headers) {
        return respond(&e, &[]);
    }
    match app.model(&name) {
        Some(m) => axum::Json(json!({ "id": m.name, "object": "model", "created": app.created, "owned_by": "troupe" }))
            .into_response(),
        None => respond(&no_model(&name), &[]),
    }
}

fn no_model(name: &str) -> ApiError {
    let e = ApiError::status(
        404,
        "invalid_request_error",
        Some("model_not_found"),
        format!("The model `{name}` does not exist; GET /v1/models lists the served models."),
    );
    ApiError { param: Some("model".into()), ..e }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let workers = match app.router.ask_timeout(RouterMsg::Workers, Duration::from_secs(2)).await {
        Ok(RouterReply::Workers(w)) => w
            .into_iter()
            .map(|(k, stage, load, up)| {
                json!({
                    "pool": k.kind,
                    "node": k.node,
                    "stage": format!("{stage:?}").to_lowercase(),
                    "routable": up,
                    "active": load.active,
                    "queued": load.queued,
                    "running": load.running,
                    "kv_usage": load.kv_usage,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let breakers: serde_json::Map<String, serde_json::Value> =
        app.breakers.lock().iter().map(|(p, b)| (p.clone(), json!(b.state().name()))).collect();
    axum::Json(json!({
        "node": app.node.name(),
        "models": app.models.iter().map(|m| json!({ "name": m.name, "pool": m.pool, "max_model_len": m.max_len })).collect::<Vec<_>>(),
        "workers": workers,
        "breakers": breakers,
    }))
    .into_response()
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    serve(app, Endpoint::Chat, headers, body).await
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    serve(app, Endpoint::Completions, headers, body).await
}

/// Tokenizes and bounds the request for its model: the prompt, max_tokens, sampling.
fn prepare(req: &ApiRequest, m: &super::Model) -> Result<(Vec<u32>, Sampling), ApiError> {
    if let Some(mt) = req.max_tokens
        && mt > m.max_tokens_max
    {
        return Err(ApiError::invalid(
            format!("`max_tokens` is at most {} for `{}`, got {mt}", m.max_tokens_max, m.name),
            Some("max_tokens"),
        ));
    }
    // Before any tokenizing: a prompt that cannot fit whatever it tokenizes to is refused
    // in one linear pass (no token is longer than the tokenizer's longest).
    let floor = match &req.prompt {
        Prompt::Chat(msgs) => {
            msgs.iter().map(|x| m.tokenizer.min_tokens(&x.role) + m.tokenizer.min_tokens(&x.content)).sum()
        }
        Prompt::Text(t) => m.tokenizer.min_tokens(t),
        Prompt::Tokens(ids) => ids.len(),
    };
    if floor > m.max_len {
        let e = ApiError::invalid(
            format!(
                "This model's maximum context length is {} tokens. However, your prompt is at least {floor} tokens \
                 (no token is longer than {} bytes). Please reduce the length of the prompt.",
                m.max_len,
                m.tokenizer.max_token_bytes()
            ),
            Some(if req.endpoint == Endpoint::Chat { "messages" } else { "prompt" }),
        );
        return Err(e.with_code("context_length_exceeded"));
    }
    let (prompt, stop_ids) = match &req.prompt {
        Prompt::Chat(msgs) => {
            let msgs: Vec<troupe_llm::Message> =
                msgs.iter().map(|x| troupe_llm::Message::new(&x.role, &x.content)).collect();
            let (text, trusted) = m
                .chat
                .render_marked(&msgs, true)
                .map_err(|e| ApiError::invalid(format!("cannot render the chat: {e}"), Some("messages")))?;
            // Control tokens come from the template only: a user's `<|im_start|>` is text.
            let ids = m
                .tokenizer
                .encode_trusted(&text, &trusted)
                .map_err(|e| ApiError::invalid(format!("cannot tokenize the messages: {e}"), Some("messages")))?;
            (ids, m.chat_stop_ids.clone())
        }
        Prompt::Text(t) => (
            m.tokenizer
                .encode(t, false)
                .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}"), Some("prompt")))?,
            Vec::new(),
        ),
        Prompt::Tokens(ids) => {
            if let Some(t) = ids.iter().find(|&&t| t as usize >= m.vocab) {
                return Err(ApiError::invalid(
                    format!("token id {t} is outside the vocabulary ({} tokens)", m.vocab),
                    Some("prompt"),
                ));
            }
            (ids.clone(), Vec::new())
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "the prompt is empty",
            Some(if req.endpoint == Endpoint::Chat { "messages" } else { "prompt" }),
        ));
    }
    let room = m.max_len.saturating_sub(prompt.len());
    let max_tokens = match req.max_tokens {
        Some(mt) => mt,
        None => m.default_max_tokens.min(room as u32).max(1),
    };
    if prompt.len() + max_tokens as usize > m.max_len {
        let e = ApiError::invalid(
            format!(
                "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the prompt, {max_tokens} for the completion). Please reduce the length of the prompt or max_tokens.",
                m.max_len,
                prompt.len() + max_tokens as usize,
                prompt.len()
            ),
            Some(if req.endpoint == Endpoint::Chat { "messages" } else { "prompt" }),
        );
        return Err(e.with_code("context_length_exceeded"));
    }
    let sampling = Sampling {
        temperature: req.temperature.unwrap_or(m.default_temperature),
        top_p: req.top_p,
        top_k: req.top_k,
        seed: req.seed,
        max_tokens,
        stop: req.stop.clone(),
        stop_token_ids: stop_ids,
        ignore_eos: req.ignore_eos,
    };
    Ok((prompt, sampling))
}

async fn serve(app: Arc<App>, ep: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let arrived = Instant::now();
    let account = match auth(&app, &headers) {
        Ok(a) => a,
        Err(e) => return respond(&e, &[]),
    };
    let max = app.params.body_bytes_max;
    let bytes: Bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            let e = ApiError::status(
                413,
                "invalid_request_error",
                Some("request_too_large"),
                format!("the request body is larger than {max} bytes (body_bytes_max)"),
            );
            return respond(&e, &[]);
        }
    };
    let limits = Limits { messages_max: app.params.messages_max, max_tokens_max: u32::MAX };
    let req = match openai::parse(ep, &bytes, &limits) {
        Ok(r) => r,
        Err(e) => return respond(&e, &[]),
    };
    let Some(m) = app.model(&req.model).cloned() else {
        return respond(&no_model(&req.model), &[]);
    };
    // Tokenizing is CPU work proportional to the prompt: off the async workers, so a
    // long prompt never delays other connections or the node's heartbeats.
    let pm = m.clone();
    let (req, prepared) = match tokio::task::spawn_blocking(move || {
        let r = prepare(&req, &pm);
        (req, r)
    })
    .await
    {
        Ok(x) => x,
        Err(e) => {
            let e = ApiError::status(500, "server_error", None, format!("tokenizing failed: {e}"));
            return respond(&e, &[]);
        }
    };
    let (prompt, sampling) = match prepared {
        Ok(x) => x,
        Err(e) => {
            crate::metrics::RequestMetrics::error(app.node.metrics(), &m.name, e.kind, e.status).inc();
            return respond(&e, &[]);
        }
    };
    let session = ["x-session-id", "x-conversation-id"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .filter(|s| !s.is_empty())
        .map(session_hash);
    let job = Job { model: m.clone(), account, prompt, sampling, session, arrived };
    let adm = match admit(&app, &job).await {
        Ok(a) => a,
        Err((e, h)) => return respond(&e, &h),
    };
    let rl_headers = adm.headers.clone();
    let (tx, mut rx) = mpsc::channel(EVENTS_BUFFER);
    tokio::spawn(run(app.clone(), job, adm, tx));
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let prefix = if ep == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let rid = ResponseId {
        endpoint: ep,
        id: format!("{prefix}-{}-{:x}{n:06x}", app.node.name(), app.created & 0xffff),
        created: app.created + app.started.elapsed().as_secs(),
        model: m.name.clone(),
    };
    if !req.stream {
        return collect(rid, &mut rx, &rl_headers).await;
    }
    // Wait for the first event so that a request that cannot be served at all still gets
    // its status (503...) rather than a 200 stream holding an error.
    let first = match rx.recv().await {
        Some(Event::Error(e)) => return respond(&e, &rl_headers),
        None => {
            return respond(
                &ApiError::status(500, "server_error", None, "the request ended without a result"),
                &rl_headers,
            );
        }
        Some(ev) => ev,
    };
    let st = Sse { rx, rid, include_usage: req.include_usage, role_sent: false, first: Some(first), done: false };
    let stream = futures::stream::unfold(st, |mut st| async move {
        let out = st.next().await?;
        Some((Ok::<_, std::convert::Infallible>(out), st))
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    set_headers(&mut r, &rl_headers);
    r
}

async fn collect(rid: ResponseId, rx: &mut mpsc::Receiver<Event>, extra: &[(&'static str, String)]) -> Response {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Waiting) => {}
            Some(Event::Text { text: t }) => text.push_str(&t),
            Some(Event::Done { finish, usage }) => {
                let mut r = axum::Json(rid.full(&text, finish.openai(), usage)).into_response();
                set_headers(&mut r, extra);
                return r;
            }
            Some(Event::Error(e)) => return respond(&e, extra),
            None => {
                return respond(
                    &ApiError::status(500, "server_error", None, "the request ended without a result"),
                    extra,
                );
            }
        }
    }
}

/// The SSE side of a streamed response.
struct Sse {
    rx: mpsc::Receiver<Event>,
    rid: ResponseId,
    include_usage: bool,
    role_sent: bool,
    first: Option<Event>,
    done: bool,
}

impl Sse {
    fn role(&mut self, out: &mut String) {
        if !self.role_sent && self.rid.endpoint == Endpoint::Chat {
            out.push_str(&openai::sse(&self.rid.chunk(true, Some(""), None, self.include_usage)));
        }
        self.role_sent = true;
    }

    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let ev = match self.first.take() {
            Some(e) => Some(e),
            None => self.rx.recv().await,
        };
        let mut out = String::new();
        match ev {
            Some(Event::Waiting) => out.push_str(": keep-alive\n\n"),
            Some(Event::Text { text }) => {
                self.role(&mut out);
                out.push_str(&openai::sse(&self.rid.chunk(false, Some(&text), None, self.include_usage)));
            }
            Some(Event::Done { finish, usage }) => {
                self.role(&mut out);
                let fin = finish_reason(finish);
                let text = if self.rid.endpoint == Endpoint::Completions { Some("") } else { None };
                out.push_str(&openai::sse(&self.rid.chunk(false, text, Some(fin), self.include_usage)));
                if self.include_usage {
                    out.push_str(&openai::sse(&self.rid.usage_chunk(usage)));
                }
                out.push_str(openai::SSE_DONE);
                self.done = true;
            }
            Some(Event::Error(e)) => {
                out.push_str(&openai::sse(&e.body()));
                out.push_str(openai::SSE_DONE);
                self.done = true;
            }
            None => {
                let e = ApiError::status(500, "server_error", None, "the request ended without a result");
                out.push_str(&openai::sse(&e.body()));
                self.done = true;
            }
        }
        Some(out)
    }
}

fn finish_reason(f: Finish) -> &'static str {
    f.openai()
}
