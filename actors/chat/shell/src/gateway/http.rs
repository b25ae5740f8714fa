//! The chat HTTP API beside the WebSocket (docs/chat.md lists it): the WebSocket at
//! `GET /v1/ws`, and for clients that cannot hold one (and for scripts) sends,
//! conversation changes and a long poll. Every route but `/v1/health` needs a user
//! (`App::who`); errors are JSON `{"error": reason}` with the status that fits.

use super::App;
use super::hub::{Note, TopicOf};
use crate::Published as Pub;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use troupe_chat::ids;
use troupe_chat::keys::{DeviceKeys, OneTimeKey};
use troupe_chat::proto::ConvMsg;
use troupe_chat::proto::ConvReply;
use troupe_chat::proto::{KeysMsg, KeysReply};
use troupe_runtime::RemoteError;
use troupe_runtime::ws::WsUpgrade;

pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .route("/v1/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/v1/ws", get(ws))
        .route("/v1/conversations", get(list).post(create))
        .route("/v1/conversations/{conv}/members", post(members))
        .route("/v1/conversations/{conv}/messages", get(messages).post(send))
        .route("/v1/presence", get(presence))
        .route("/v1/keys", post(keys_publish))
        .route("/v1/keys/inbox/{device}", get(keys_mailbox))
        .route("/v1/keys/inbox/{device}/ack", post(keys_ack))
        .route("/v1/keys/devices/{device}", axum::routing::delete(keys_revoke))
        .route("/v1/keys/{user}", get(keys_devices))
        .route("/v1/keys/{user}/{device}/claim", post(keys_claim))
        .route("/v1/keys/{user}/{device}/inbox", post(keys_deliver))
        .with_state(app)
}

fn error(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(json!({ "error": why.into() }))).into_response()
}

fn refused(why: (StatusCode, String)) -> Response {
    error(why.0, why.1)
}

/// The status for a conversation's refusal or a failed request.
fn failed(answer: Result<ConvReply, RemoteError>) -> Response {
    match answer {
        Ok(ConvReply::Refused(why)) if why.contains("not a member") => error(StatusCode::FORBIDDEN, why),
        Ok(ConvReply::Refused(why)) if why.starts_with("no conversation") => error(StatusCode::NOT_FOUND, why),
        Ok(ConvReply::Refused(why)) => error(StatusCode::BAD_REQUEST, why),
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; try again (a resend with the same id is safe)")),
    }
}

async fn ws(State(app): State<Arc<App>>, headers: HeaderMap, upgrade: WsUpgrade) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let a = app.clone();
    app.sessions.accept(upgrade, move |tx, rx| super::session::run(a, user, tx, rx))
}

async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    match app.conversations_of(&user).await {
        Ok(list) => Json(json!({ "user": user, "conversations": list })).into_response(),
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read your conversations now: {why}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    conv: String,
    members: Vec<String>,
}

async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<CreateBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Err(why) = ids::check_conversation(&b.conv) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    if let Err(why) = app.admit_send(&user).await {
        return error(StatusCode::TOO_MANY_REQUESTS, why);
    }
    let msg = ConvMsg::Create { by: user, members: b.members, at_ms: super::now_ms() };
    match app.ask(&b.conv, msg).await {
        Ok(ConvReply::Created { members, head }) => {
            (StatusCode::CREATED, Json(json!({ "conv": b.conv, "members": members, "head": head }))).into_response()
        }
        other => failed(other),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn members(
    State(app): State<Arc<App>>,
    Path(conv): Path<String>,
    headers: HeaderMap,
    body: Result<Json<MembersBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Err(why) = ids::check_conversation(&conv) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    if let Err(why) = app.admit_send(&user).await {
        return error(StatusCode::TOO_MANY_REQUESTS, why);
    }
    let msg = ConvMsg::Members { by: user, add: b.add, remove: b.remove, at_ms: super::now_ms() };
    match app.ask(&conv, msg).await {
        Ok(ConvReply::MembersChanged { head, members }) => {
            Json(json!({ "conv": conv, "members": members, "head": head })).into_response()
        }
        other => failed(other),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    id: String,
    text: String,
}

async fn send(
    State(app): State<Arc<App>>,
    Path(conv): Path<String>,
    headers: HeaderMap,
    body: Result<Json<SendBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Err(why) = ids::check_conversation(&conv) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    if let Err(why) = app.admit_send(&user).await {
        return error(StatusCode::TOO_MANY_REQUESTS, why);
    }
    let msg = ConvMsg::Send { from: user, id: b.id.clone(), text: b.text, at_ms: super::now_ms() };
    match app.ask(&conv, msg).await {
        Ok(ConvReply::Accepted { seq, duplicate }) => {
            if !duplicate {
                app.metrics.accepted.inc();
            }
            Json(json!({ "conv": conv, "id": b.id, "seq": seq, "duplicate": duplicate })).into_response()
        }
        other => failed(other),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Poll {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    max: Option<u32>,
}

/// Events after `after`; with `wait_ms`, waits (at most that, and at most
/// `poll_wait_max_ms`) for one when there is none yet — a long poll.
async fn messages(
    State(app): State<Arc<App>>,
    Path(conv): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Poll>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Err(why) = ids::check_conversation(&conv) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let max = q.max.unwrap_or(app.params.since_max).clamp(1, app.params.since_max);
    let wait = Duration::from_millis(q.wait_ms.min(app.params.poll_wait_max_ms));
    let deadline = tokio::time::Instant::now() + wait;
    // Watch before asking, so an event that lands between the answer and the wait is
    // not slept through.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let _watch = (!wait.is_zero()).then(|| {
        let topic = ids::conversation_topic(&app.system, &conv);
        let missed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        app.hub.watch(topic, TopicOf::Conversation(conv.as_str().into()), app.hub.session_id(), tx, missed)
    });
    loop {
        let msg = ConvMsg::Since { user: user.clone(), after: q.after, max };
        match app.ask(&conv, msg).await {
            Ok(ConvReply::Events { events, oldest, head }) => {
                if !events.is_empty() || wait.is_zero() || tokio::time::Instant::now() >= deadline {
                    return Json(json!({ "conv": conv, "events": events, "oldest": oldest, "head": head }))
                        .into_response();
                }
            }
            other => return failed(other),
        }
        // Nothing yet: wait for the conversation to publish an event or a head past
        // `after` (receipts and old heads do not wake the poll), or the deadline.
        let woke = tokio::time::timeout_at(deadline, async {
            while let Some(note) = rx.recv().await {
                match note {
                    Note::Conv(_, p) => match &*p {
                        Pub::Event(e) if e.seq > q.after => return true,
                        Pub::Head(h) if *h > q.after => return true,
                        _ => {}
                    },
                    Note::User(_) => {}
                }
            }
            false
        })
        .await;
        if !matches!(woke, Ok(true)) {
            let msg = ConvMsg::Since { user: user.clone(), after: q.after, max };
            return match app.ask(&conv, msg).await {
                Ok(ConvReply::Events { events, oldest, head }) => {
                    Json(json!({ "conv": conv, "events": events, "oldest": oldest, "head": head })).into_response()
                }
                other => failed(other),
            };
        }
    }
}

// ---- end-to-end encryption: devices, public keys, to-device mailboxes -------------

/// The answer of a keys entity, as HTTP.
fn keys_answer(answer: Result<KeysReply, RemoteError>) -> Response {
    match answer {
        Ok(KeysReply::Published { one_time_keys }) => Json(json!({ "one_time_keys": one_time_keys })).into_response(),
        Ok(KeysReply::Devices(list)) => Json(json!({ "devices": list })).into_response(),
        Ok(KeysReply::Claimed { keys, key }) => Json(json!({ "device": keys, "key": key })).into_response(),
        Ok(KeysReply::Mailbox(list)) => Json(json!({ "messages": list })).into_response(),
        Ok(KeysReply::Done) => Json(json!({ "ok": true })).into_response(),
        Ok(KeysReply::Refused(why)) if why.contains("no device") => error(StatusCode::NOT_FOUND, why),
        Ok(KeysReply::Refused(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; try again")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    device: String,
    curve25519: String,
    ed25519: String,
    signature: String,
    #[serde(default)]
    one_time_keys: Vec<OneTimeKey>,
    #[serde(default)]
    fallback_key: Option<OneTimeKey>,
}

async fn keys_publish(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let keys = DeviceKeys { device: b.device, curve25519: b.curve25519, ed25519: b.ed25519, signature: b.signature };
    keys_answer(app.keys(&user, KeysMsg::Publish { keys, one_time: b.one_time_keys, fallback: b.fallback_key }).await)
}

async fn keys_devices(State(app): State<Arc<App>>, Path(of): Path<String>, headers: HeaderMap) -> Response {
    if let Err(why) = app.who(&headers) {
        return refused(why);
    }
    if let Err(why) = ids::check_user(&of) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    keys_answer(app.keys(&of, KeysMsg::Devices).await)
}

async fn keys_claim(
    State(app): State<Arc<App>>,
    Path((of, device)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = app.who(&headers) {
        return refused(why);
    }
    if let Err(why) = ids::check_user(&of) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    keys_answer(app.keys(&of, KeysMsg::Claim { device }).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliverBody {
    from_device: String,
    body: String,
}

async fn keys_deliver(
    State(app): State<Arc<App>>,
    Path((of, device)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<DeliverBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let from_user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Err(why) = ids::check_user(&of).and_then(|_| ids::check_user(&b.from_device)) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    // A to-device message is a durable write on the receiver's side: the sender pays
    // for it under the same limit as a chat message.
    if let Err(why) = app.admit_send(&from_user).await {
        return error(StatusCode::TOO_MANY_REQUESTS, why);
    }
    keys_answer(app.keys(&of, KeysMsg::Deliver { device, from_user, from_device: b.from_device, body: b.body }).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxQuery {
    #[serde(default)]
    after: u64,
}

async fn keys_mailbox(
    State(app): State<Arc<App>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    query: Result<Query<MailboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    keys_answer(app.keys(&user, KeysMsg::Mailbox { device, after: q.after, max: u32::MAX }).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    upto: u64,
}

async fn keys_ack(
    State(app): State<Arc<App>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Result<Json<AckBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    keys_answer(app.keys(&user, KeysMsg::Ack { device, upto: b.upto }).await)
}

async fn keys_revoke(State(app): State<Arc<App>>, Path(device): Path<String>, headers: HeaderMap) -> Response {
    let user = match app.who(&headers) {
        Ok(u) => u,
        Err(why) => return refused(why),
    };
    keys_answer(app.keys(&user, KeysMsg::Revoke { device }).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    users: String,
}

/// `GET /v1/presence?users=a,b`: who is online and when each was last seen.
async fn presence(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(why) = app.who(&headers) {
        return refused(why);
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let users: Vec<String> = q.users.split(',').filter(|u| !u.is_empty()).map(str::to_string).collect();
    if users.len() > super::presence::QUERY_MAX {
        return error(StatusCode::BAD_REQUEST, format!("at most {} users per request", super::presence::QUERY_MAX));
    }
    Json(json!({ "presence": app.presence.query(&users) })).into_response()
}
