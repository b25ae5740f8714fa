//! `gateway` (factory `llm.gateway`): the OpenAI-compatible HTTP API on the node's
//! `ports."llm-serving"` listener, one per node with role `gateway`.
//!
//! Per request: API key → account (user, org, tier) → parse and validate (400s name the
//! parameter) → tokenize with the model's own tokenizer and chat template → the pool's
//! circuit breaker (503 while open) → the rate limiter, requests/min AND tokens/min for
//! the user and the org, reserving prompt + max_tokens (429 with `Retry-After` and the
//! rate-limit headers) → the local router picks a worker → the worker's token stream is
//! forwarded as SSE or collected into one JSON response. Before the first token a failed
//! worker is replaced by another (`retries_max`); after it, the client gets a clear
//! error. When the client disconnects, dropping the worker stream cancels the request in
//! the engine (a remote worker gets a `Cancel` frame). At the end the limiter is settled
//! with the real token count.
//!
//! Invariants: a body is read up to `body_bytes_max` and no further; every request ends
//! with exactly one outcome (response, SSE error event, or cancellation) and settles its
//! rate-limit reservation; the listener lives exactly as long as the actor's state.

mod http;
mod serve;

use super::breaker::Breaker;
use super::config::{GatewayParams, PoolSpec, RouterParams, SYSTEM, kind_params, pools};
use super::metrics::RequestMetrics;
use super::proto::{GatewayMsg, GatewayProto, GatewayReply, RouterProto};
use super::queue::Tier;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use troupe_limiter_shell::{Limiter, LimiterError};
use troupe_llm::{ChatTemplate, Tokenizer};
use troupe_runtime::cluster::api_keys::{Account as ApiAccount, ApiKeys};
use troupe_runtime::{
    ActorError, ActorHandle, ActorPath, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail,
};

pub use http::router as http_router;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub org: String,
    pub tier: Tier,
}

/// A served model, as the gateway needs it.
pub struct Model {
    pub name: String,
    pub pool: String,
    pub tokenizer: Arc<Tokenizer>,
    pub chat: ChatTemplate,
    /// Chat turns end on these (EOS and `<|im_end|>`).
    pub chat_stop_ids: Vec<u32>,
    /// Longest prompt + completion, tokens.
    pub max_len: usize,
    pub default_max_tokens: u32,
    pub max_tokens_max: u32,
    pub default_temperature: f32,
    pub vocab: usize,
    pub metrics: RequestMetrics,
}

/// Everything a request handler needs, shared by all of this gateway's connections.
pub struct App {
    pub node: Node,
    pub params: GatewayParams,
    pub models: Vec<Arc<Model>>,
    /// Who may call, by API key; no keys at all (an api-keys.toml without any) =
    /// anyone, as `anonymous` on the free tier.
    pub keys: ApiKeys,
    pub limiter: Option<Limiter>,
    pub breakers: Mutex<HashMap<String, Breaker>>,
    pub router: ActorHandle<RouterProto>,
    pub prefix_blocks_max: usize,
    pub started: Instant,
    pub created: u64,
    pub next_id: AtomicU64,
}

impl App {
    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Builds the app for `node`: loads every pool's tokenizer (once per file).
    pub async fn build(node: &Node, params: GatewayParams) -> Result<App, String> {
        let ps: Vec<PoolSpec> = pools(node.loaded());
        if ps.is_empty() {
            return Err("the llm-serving topology declares no `llm.worker` kind (no model to serve)".into());
        }
        let mut files: HashMap<String, (Arc<Tokenizer>, ChatTemplate, usize, usize)> = HashMap::new();
        let mut models = Vec::new();
        for p in ps {
            if !files.contains_key(&p.params.file) {
                let path = super::worker::model_path(&p.params.file)?;
                let m = tokio::task::spawn_blocking(move || troupe_llm::ModelFile::open(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("reading model `{}`: {e}", p.params.file))?;
                let entry = (Arc::new(m.tokenizer), m.chat, m.config.context_len, m.config.vocab);
                files.insert(p.params.file.clone(), entry);
            }
            let Some((tok, chat, ctx_len, vocab)) = files.get(&p.params.file).cloned() else { continue };
            let chat_stop_ids = tok.eos.into_iter().chain(tok.special_id("<|im_end|>")).collect();
            models.push(Arc::new(Model {
                metrics: RequestMetrics::new(node.metrics(), &p.params.model),
                name: p.params.model.clone(),
                pool: p.kind.clone(),
                tokenizer: tok,
                chat,
                chat_stop_ids,
                max_len: p.params.len_cap().min(ctx_len.max(1)),
                default_max_tokens: p.params.default_max_tokens,
                max_tokens_max: p.params.max_tokens_max,
                default_temperature: p.params.default_temperature,
                vocab,
            }));
        }
        let limiter = if params.rate_limit {
            match Limiter::new(node) {
                Ok(l) => Some(l),
                Err(LimiterError::NotEnabled(why)) => {
                    return Err(format!(
                        "rate_limit = true needs the rate-limiter system ({why}); enable it or set rate_limit = false"
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
        } else {
            None
        };
        // The cluster's API keys (`api-keys.toml` beside the cluster key), plus any a
        // deployment lists in this topology's parameters.
        let mut keys = node.credentials().api_keys().clone();
        keys.extend(params.api_keys.iter().map(|k| {
            let tier = if k.tier == Tier::Paid { "paid" } else { "free" };
            (k.key.clone(), ApiAccount { user: k.user.clone(), org: k.org.clone(), tier: tier.into() })
        }));
        let rp: Option<RouterParams> = kind_params(node.loaded(), super::config::ROUTER_KIND);
        let router = ActorPath::new(SYSTEM, super::config::ROUTER_KIND, node.name()).map_err(|e| e.to_string())?;
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(App {
            node: node.clone(),
            router: node.handle::<RouterProto>(router),
            prefix_blocks_max: rp.map_or(8, |r| r.prefix_blocks_max),
            params,
            models,
            keys,
            limiter,
            breakers: Mutex::new(HashMap::new()),
            started: Instant::now(),
            created,
            next_id: AtomicU64::new(1),
        })
    }
}

pub struct GatewayActor {
    params: GatewayParams,
}

impl FromParams for GatewayActor {
    type Params = GatewayParams;
    fn from_params(params: GatewayParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(GatewayActor { params })
    }
    fn check(p: &GatewayParams) -> Result<(), String> {
        p.validate()
    }
}

/// The actor's state: the server task, aborted on drop (a restart can re-bind).
pub struct GatewayState {
    addr: Option<SocketAddr>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for GatewayState {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

impl Behavior for GatewayActor {
    type Proto = GatewayProto;
    type State = GatewayState;

    async fn init(&self, ctx: &Ctx<GatewayProto>) -> Result<GatewayState, ActorError> {
        let node = ctx.node();
        let spec = node.loaded().cluster.node(node.name()).cloned();
        let Some((ip, port)) = spec.and_then(|s| s.ports.get(SYSTEM).map(|p| (s.addr.ip(), *p))) else {
            tracing::warn!(node = %node.name(), "no ports.\"{SYSTEM}\" for this node: the OpenAI API is off here");
            return Ok(GatewayState { addr: None, server: None });
        };
        let app = Arc::new(App::build(node, self.params.clone()).await.map_err(fail)?);
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .map_err(|e| fail(format!("cannot listen on {ip}:{port} (ports.\"{SYSTEM}\"): {e}")))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let names: Vec<String> = app.models.iter().map(|m| m.name.clone()).collect();
        let svc = http_router(app);
        let (_, served) = troupe_runtime::http::serve(listener, svc, troupe_runtime::http::HttpLimits::default());
        let server = tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(error = %e, "LLM gateway stopped");
            }
        });
        tracing::info!(%addr, models = ?names, "OpenAI-compatible API listening");
        Ok(GatewayState { addr: Some(addr), server: Some(server) })
    }

    async fn handle(
        &self,
        _: &Ctx<GatewayProto>,
        s: &mut GatewayState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            GatewayMsg::Address => reply.send(GatewayReply::Address(s.addr.map(|a| a.to_string()))).await,
        }
        Ok(())
    }
}
