//! One request's life after parsing: admission (breaker, rate limits), routing with
//! retries, forwarding the worker's stream as [`Event`]s, and settling (limiter, breaker,
//! router, metrics) exactly once at the end, whatever happened.

use super::{Account, App, Model};
use crate::breaker::Permit;
use crate::config::SYSTEM;
use crate::openai::{ApiError, Usage};
use crate::proto::{Finish, GenRequest, RouterMsg, RouterReply, Sampling, WorkerMsg, WorkerProto, WorkerReply};
use crate::queue::Class;
use crate::route::WorkerKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use troupe_limiter_shell::{Check, Receipt};
use troupe_runtime::ActorPath;

/// What the HTTP side receives.
#[derive(Debug)]
pub enum Event {
    /// Nothing yet (queued, prefilling): a chance to send a keep-alive.
    Waiting,
    Text {
        text: String,
    },
    Done {
        finish: Finish,
        usage: Usage,
    },
    Error(ApiError),
}

/// A validated, tokenized request.
pub struct Job {
    pub model: Arc<Model>,
    pub account: Account,
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub session: Option<u64>,
    pub arrived: Instant,
}

/// What admission reserved: released by [`run`] at the end.
pub struct Admission {
    permit: Permit,
    receipts: Vec<Receipt>,
    /// The rate-limit headers of the admitting verdict (sent with the response).
    pub headers: Vec<(&'static str, String)>,
}

/// Breaker, then rate limits. An `Err` is the response to send (503 or 429 with headers).
pub async fn admit(app: &App, job: &Job) -> Result<Admission, (ApiError, Vec<(&'static str, String)>)> {
    let pool = &job.model.pool;
    let permit = {
        let mut b = app.breakers.lock();
        let br = b.entry(pool.clone()).or_insert_with(|| crate::breaker::Breaker::new(app.params.breaker()));
        let r = br.allow(app.now_ms());
        publish_breaker(app, pool, br);
        r
    };
    let permit = match permit {
        Ok(p) => p,
        Err(wait_ms) => {
            let e = ApiError::unavailable(
                format!("the `{}` pool is failing; retry in a moment (circuit breaker open)", job.model.name),
                wait_ms.div_ceil(1000),
            );
            job.model_error(app, &e);
            return Err((e, Vec::new()));
        }
    };
    let Some(limiter) = &app.limiter else {
        return Ok(Admission { permit, receipts: Vec::new(), headers: Vec::new() });
    };
    let estimate = job.prompt.len() as u64 + u64::from(job.sampling.max_tokens);
    let rules = limiter.rules();
    let p = &app.params;
    let a = &job.account;
    let checks: Vec<Check> = [
        (&p.requests_rule, &a.user, None),
        (&p.tokens_rule, &a.user, Some(estimate)),
        (&p.org_requests_rule, &a.org, None),
        (&p.org_tokens_rule, &a.org, Some(estimate)),
    ]
    .into_iter()
    .filter(|(rule, _, _)| !rule.is_empty() && rules.get(rule).is_some())
    .map(|(rule, key, cost)| {
        let c = Check::new(rule.as_str(), key.as_str());
        match cost {
            Some(n) => c.cost(n),
            None => c,
        }
    })
    .collect();
    if checks.is_empty() {
        return Ok(Admission { permit, receipts: Vec::new(), headers: Vec::new() });
    }
    let neutral = |app: &App| {
        let mut b = app.breakers.lock();
        if let Some(br) = b.get_mut(pool) {
            br.on_neutral(permit);
        }
    };
    match limiter.check(&checks).await {
        Ok(v) if v.allowed => Ok(Admission { permit, receipts: v.receipts().cloned().collect(), headers: v.headers() }),
        Ok(v) => {
            neutral(app);
            let binding = v.binding().map(|b| b.rule.clone()).unwrap_or_default();
            let kind = if binding.ends_with("tokens") { "tokens" } else { "requests" };
            let who =
                if binding.contains("org") { format!("organization {}", a.org) } else { format!("user {}", a.user) };
            let retry = v.retry_after_secs().unwrap_or(1);
            let mut e = ApiError::status(
                429,
                kind,
                Some("rate_limit_exceeded"),
                format!("Rate limit reached for {who} on {kind} per min ({binding}); please try again in {retry}s."),
            );
            e.retry_after = Some(retry);
            job.model_error(app, &e);
            Err((e, v.headers()))
        }
        Err(err) => {
            neutral(app);
            let e = ApiError::invalid(format!("rate limit: {err}"), Some("max_tokens")).with_code("request_too_large");
            job.model_error(app, &e);
            Err((e, Vec::new()))
        }
    }
}

fn publish_breaker(app: &App, pool: &str, br: &crate::breaker::Breaker) {
    let m = app.node.metrics();
    crate::metrics::gauge(
        m,
        "troupe_llm_breaker_state",
        "Circuit breaker per pool: 0 closed, 1 open, 2 half-open.",
        &[("pool", pool)],
    )
    .set(br.state().code());
    let c = crate::metrics::counter(
        m,
        "troupe_llm_breaker_transitions_total",
        "Circuit breaker state changes per pool.",
        &[("pool", pool)],
    );
    c.add(br.transitions.saturating_sub(c.get()));
}

impl Job {
    fn model_error(&self, app: &App, e: &ApiError) {
        crate::metrics::RequestMetrics::error(app.node.metrics(), &self.model.name, e.kind, e.status).inc();
    }
}

/// How the attempt loop ended.
enum Outcome {
    Finished {
        finish: Finish,
        usage: Usage,
    },
    Failed(ApiError),
    /// The client went away.
    Gone,
}

/// Serves an admitted job, sending events to `tx`; settles everything before returning.
pub async fn run(app: Arc<App>, job: Job, adm: Admission, tx: mpsc::Sender<Event>) {
    let m = job.model.metrics.clone();
    m.in_flight.add(1.0);
    let mut fwd = Forwarded { first: None, last: None, tokens: 0 };
    let outcome = attempts(&app, &job, &tx, &mut fwd).await;
    m.in_flight.add(-1.0);
    let prompt_tokens = job.prompt.len() as u32;
    // The pool's health is the requests' fate, not each worker's: a worker that fails a
    // request before its first token is avoided by the router (`penalty_ms`) and the
    // request retried elsewhere; only a request that ends in a 5xx (failed mid-stream,
    // every attempt failed, no worker, timeout) counts against the pool's breaker. So
    // one dead worker among live ones does not make the whole pool fail fast.
    let (health, used) = match &outcome {
        Outcome::Finished { usage, .. } => (Some(true), usage.prompt_tokens + usage.completion_tokens),
        Outcome::Failed(e) if e.status >= 500 => (Some(false), prompt_tokens + fwd.tokens),
        _ => (None, prompt_tokens + fwd.tokens),
    };
    {
        let mut b = app.breakers.lock();
        if let Some(br) = b.get_mut(&job.model.pool) {
            match health {
                Some(true) => br.on_success(adm.permit, app.now_ms()),
                Some(false) => br.on_failure(adm.permit, app.now_ms()),
                None => br.on_neutral(adm.permit),
            }
            publish_breaker(&app, &job.model.pool, br);
        }
    }
    if let Some(l) = &app.limiter {
        for r in adm.receipts.iter().filter(|r| r.rule.ends_with("tokens")) {
            if let Err(e) = l.adjust(r, u64::from(used)).await {
                tracing::debug!(error = %e, "settling a token reservation failed");
            }
        }
    }
    let mx = app.node.metrics();
    match outcome {
        Outcome::Finished { finish, usage } => {
            let now = Instant::now();
            m.e2e.observe(now.duration_since(job.arrived).as_secs_f64());
            if let Some(first) = fwd.first
                && usage.completion_tokens > 1
            {
                m.tpot.observe(now.duration_since(first).as_secs_f64() / f64::from(usage.completion_tokens - 1));
            }
            m.prompt_tokens.add(u64::from(usage.prompt_tokens));
            m.generation_tokens.add(u64::from(usage.completion_tokens));
            m.prompt_len.observe(f64::from(usage.prompt_tokens));
            m.generation_len.observe(f64::from(usage.completion_tokens));
            let reason = if finish == Finish::Cancelled { "abort" } else { finish.openai() };
            crate::metrics::RequestMetrics::success(mx, &job.model.name, reason).inc();
            let _ = tx.send(Event::Done { finish, usage }).await;
        }
        Outcome::Failed(e) => {
            job.model_error(&app, &e);
            let _ = tx.send(Event::Error(e)).await;
        }
        Outcome::Gone => {
            crate::metrics::RequestMetrics::success(mx, &job.model.name, "abort").inc();
        }
    }
}

struct Forwarded {
    first: Option<Instant>,
    last: Option<Instant>,
    tokens: u32,
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The hash a session header routes by.
pub fn session_hash(id: &str) -> u64 {
    fnv(id)
}

/// A worker failed this request: the router avoids it for `penalty_ms`. (The pool's
/// breaker hears about the request once, when it ends.)
fn worker_failed(app: &App, w: &WorkerKey) {
    let h = app.router.clone();
    let msg = RouterMsg::Failed { worker: w.clone() };
    tokio::spawn(async move {
        let _ = h.tell(msg).await;
    });
}

async fn attempts(app: &App, job: &Job, tx: &mpsc::Sender<Event>, fwd: &mut Forwarded) -> Outcome {
    let p = &app.params;
    let pool = job.model.pool.clone();
    let prefix = troupe_llm::kv::block_manager::hash_chain(&job.prompt, app.prefix_blocks_max);
    let first_deadline = job.arrived + Duration::from_millis(p.first_token_timeout_ms);
    let deadline = job.arrived + Duration::from_millis(p.request_timeout_ms);
    let class =
        Class { tier: job.account.tier, tokens: (job.prompt.len() as u32).saturating_add(job.sampling.max_tokens) };
    let mut exclude: Vec<WorkerKey> = Vec::new();
    let mut last_err: Option<String> = None;
    for attempt in 0..=p.retries_max {
        if attempt > 0 {
            job.model.metrics.retries.inc();
        }
        let ask = RouterMsg::Route {
            pool: pool.clone(),
            prefix: prefix.clone(),
            session: job.session,
            exclude: exclude.clone(),
        };
        let routed = match app.router.ask_timeout(ask, Duration::from_secs(2)).await {
            Ok(RouterReply::Routed(Some(r))) => r,
            Ok(_) => {
                let why = last_err.map(|e| format!(" (last failure: {e})")).unwrap_or_default();
                return Outcome::Failed(ApiError::unavailable(
                    format!("no worker of model `{}` is available{why}", job.model.name),
                    1,
                ));
            }
            Err(e) => return Outcome::Failed(ApiError::unavailable(format!("the router did not answer: {e}"), 1)),
        };
        let worker = routed.worker.clone();
        let req = GenRequest {
            prompt: job.prompt.clone(),
            sampling: job.sampling.clone(),
            class,
            prefill: routed.prefill.clone(),
        };
        let path = match ActorPath::new(SYSTEM, &worker.kind, &worker.node) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(ApiError::status(500, "server_error", None, e.to_string())),
        };
        let handle = app.node.handle::<WorkerProto>(path);
        let mut stream = match handle.stream(WorkerMsg::Generate(req)).await {
            Ok(s) => s,
            Err(e) => {
                worker_failed(app, &worker);
                last_err = Some(format!("{}@{}: {e}", worker.kind, worker.node));
                exclude.push(worker);
                continue;
            }
        };
        // Forward until done; before the first token, a failure moves to another worker.
        loop {
            let until = if fwd.first.is_none() { first_deadline.min(deadline) } else { deadline };
            let item = tokio::select! {
                item = tokio::time::timeout_at(until.into(), stream.next()) => item,
                _ = tx.closed() => return Outcome::Gone,
            };
            let item = match item {
                Ok(item) => item,
                Err(_) => {
                    let what = if fwd.first.is_none() { "first token" } else { "request" };
                    return Outcome::Failed(ApiError::status(
                        504,
                        "server_error",
                        Some("timeout"),
                        format!("the {what} took too long (the deployment's timeout)"),
                    ));
                }
            };
            let err = match item {
                Some(Ok(WorkerReply::Waiting)) => {
                    if tx.send(Event::Waiting).await.is_err() {
                        return Outcome::Gone;
                    }
                    continue;
                }
                Some(Ok(WorkerReply::Tokens { text, n })) => {
                    let now = Instant::now();
                    match fwd.last {
                        None => job.model.metrics.ttft.observe(now.duration_since(job.arrived).as_secs_f64()),
                        Some(last) if n > 0 => {
                            let gap = now.duration_since(last).as_secs_f64() / f64::from(n);
                            for _ in 0..n.min(64) {
                                job.model.metrics.itl.observe(gap);
                            }
                        }
                        Some(_) => {}
                    }
                    fwd.first.get_or_insert(now);
                    fwd.last = Some(now);
                    fwd.tokens += n;
                    if tx.send(Event::Text { text }).await.is_err() {
                        return Outcome::Gone;
                    }
                    continue;
                }
                Some(Ok(WorkerReply::Done { finish, prompt_tokens, completion_tokens, .. })) => {
                    return Outcome::Finished { finish, usage: Usage { prompt_tokens, completion_tokens } };
                }
                Some(Ok(WorkerReply::Failed { message, retryable })) => {
                    if !retryable {
                        return Outcome::Failed(ApiError::invalid(message, None));
                    }
                    // Refused for load (a full queue): not a health failure, try another.
                    format!("{}@{}: {message}", worker.kind, worker.node)
                }
                Some(Ok(other)) => {
                    worker_failed(app, &worker);
                    format!("{}@{}: unexpected reply {other:?}", worker.kind, worker.node)
                }
                Some(Err(e)) => {
                    worker_failed(app, &worker);
                    format!("{}@{}: {e}", worker.kind, worker.node)
                }
                None => {
                    worker_failed(app, &worker);
                    format!("{}@{}: the stream ended without a result", worker.kind, worker.node)
                }
            };
            if fwd.first.is_some() {
                // Tokens were already delivered: replaying elsewhere would repeat them.
                return Outcome::Failed(ApiError::status(
                    502,
                    "server_error",
                    Some("worker_failed"),
                    format!("the worker serving this request failed after {} tokens: {err}", fwd.tokens),
                ));
            }
            tracing::info!(attempt, error = %err, "request failed before its first token; trying another worker");
            last_err = Some(err);
            exclude.push(worker.clone());
            break;
        }
    }
    let why = last_err.unwrap_or_default();
    Outcome::Failed(ApiError::unavailable(format!("every attempt failed ({} tries): {why}", p.retries_max + 1), 1))
}
