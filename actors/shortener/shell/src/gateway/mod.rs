//! `gateway`: one per node with role `gateway`. It serves the public HTTP API on the
//! node's `ports."url-shortener"` port and owns the node's share of the system: the
//! cache of resolved links, the counter blocks codes are minted from, the creation rate
//! limiter, the abuse policy, the geo table and the click buffer.
//!
//! The actor itself only receives control messages (`Invalidate`, published by link
//! entities on the system's invalidation topic, `crate::invalidation_topic`; `Status`);
//! requests run as tasks of the HTTP server it started, which share its state.
//!
//! Invariants:
//! - the HTTP server and the click shipper live exactly as long as the incarnation that
//!   started them: the state holds an abort-on-drop guard, so a restarted gateway binds a
//!   fresh listener and the old one is gone;
//! - `Invalidate` drops the code from this node's cache (see `cache` for the race with a
//!   lookup in flight).

pub mod api;
pub mod cache;
pub mod clicks;
pub mod http;
pub mod ids;
pub mod params;

use crate::limiter::{ClusterCreateLimiter, CreateLimiter, LocalCreateLimiter};
use cache::LinkCache;
use clicks::{ClickMetrics, ClickSink, ShipConfig};
use ids::IdSource;
use params::GatewayParams;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use troupe_runtime::metrics::Counter;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail};
use troupe_shortener::abuse::{AbuseConfig, AbusePolicy, DomainBlocklist};
use troupe_shortener::geo::GeoDb;
use troupe_shortener::ids::CodeGen;
pub use troupe_shortener::proto::{Gateway, GatewayMsg, GatewayReply};

/// Request counters of one gateway node.
pub struct GatewayMetrics {
    pub redirects: Counter,
    pub not_found: Counter,
    pub gone: Counter,
    pub unavailable: Counter,
    pub creates: Counter,
    pub creates_limited: Counter,
}

impl GatewayMetrics {
    fn new(node: &Node) -> Self {
        let m = node.metrics();
        let r = |status: &str| {
            m.counter(
                "troupe_shortener_redirect_requests_total",
                "GET /{code} answers by status.",
                &[("status", status)],
            )
        };
        Self {
            redirects: r("3xx"),
            not_found: r("404"),
            gone: r("410"),
            unavailable: r("5xx"),
            creates: m.counter("troupe_shortener_links_created_total", "Links created (acknowledged).", &[]),
            creates_limited: m.counter(
                "troupe_shortener_creates_limited_total",
                "Creations refused by rate limits.",
                &[],
            ),
        }
    }
}

/// What the HTTP tasks of one incarnation share.
pub struct Shared {
    pub node: Node,
    pub system: String,
    pub addr: SocketAddr,
    pub params: GatewayParams,
    pub link_timeout: Duration,
    pub cache: LinkCache,
    pub ids: Arc<IdSource>,
    pub clicks: ClickSink,
    pub limiter: Arc<dyn CreateLimiter>,
    pub abuse: Arc<AbusePolicy>,
    pub geo: Option<Arc<GeoDb>>,
    pub metrics: GatewayMetrics,
    /// The cluster's tokens: `X-User-Id` counts only from a caller with the service
    /// token (the authenticating proxy in front).
    pub credentials: Arc<troupe_runtime::cluster::tokens::Credentials>,
}

pub struct GatewayActor {
    params: GatewayParams,
    codes: CodeGen,
    abuse: Arc<AbusePolicy>,
    geo: Option<Arc<GeoDb>>,
}

/// Loads the geo table if present. Absent: countries are unknown (logged), unless
/// `TROUPE_REQUIRE_GEO` is set, when it is an error.
fn load_geo(configured: Option<&str>) -> Result<Option<Arc<GeoDb>>, String> {
    let path = match configured {
        Some(p) => Path::new(p).to_path_buf(),
        None => super::geo::default_db_path(),
    };
    match super::geo::load(&path) {
        Ok(db) => {
            let (v4, v6) = db.range_counts();
            tracing::info!(path = %path.display(), v4, v6, source = db.source(), "geo table loaded");
            Ok(Some(Arc::new(db)))
        }
        Err(e) if std::env::var_os("TROUPE_REQUIRE_GEO").is_some() => Err(format!("TROUPE_REQUIRE_GEO is set: {e}")),
        Err(e) => {
            tracing::warn!(error = %e, "no geo table: click countries will be `unknown`");
            Ok(None)
        }
    }
}

fn abuse_policy(p: &GatewayParams) -> Result<AbusePolicy, String> {
    let mut lines = p.blocked_domains.join("\n");
    if let Some(f) = &p.blocklist_file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("blocklist_file `{f}`: {e}"))?;
        lines.push('\n');
        lines.push_str(&text);
    }
    let blocklist = DomainBlocklist::from_lines(&lines).map_err(|e| format!("blocklist: {e}"))?;
    let config = AbuseConfig { own_domains: p.own_domains.clone(), ..AbuseConfig::default() };
    Ok(AbusePolicy::new(blocklist, config))
}

impl FromParams for GatewayActor {
    type Params = GatewayParams;
    fn from_params(params: GatewayParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        let codes = CodeGen::new(&params::parse_key(&params.id_key)?);
        let abuse = Arc::new(abuse_policy(&params)?);
        let geo = load_geo(params.geo_db.as_deref())?;
        Ok(Self { params, codes, abuse, geo })
    }
    fn check(p: &GatewayParams) -> Result<(), String> {
        p.check()?;
        abuse_policy(p).map(|_| ())
    }
}

pub struct GatewayState {
    shared: Arc<Shared>,
    /// The HTTP server, stopped when the state is dropped (on stop and on failure).
    _server: troupe_runtime::http::Served,
}

impl Behavior for GatewayActor {
    type Proto = Gateway;
    type State = GatewayState;

    async fn init(&self, ctx: &Ctx<Gateway>) -> Result<GatewayState, ActorError> {
        let node = ctx.node().clone();
        let system = ctx.path().system().to_string();
        let spec = node
            .loaded()
            .cluster
            .node(node.name())
            .cloned()
            .ok_or_else(|| fail("this node is not in the cluster file"))?;
        let port = spec.ports.get(&system).copied().ok_or_else(|| {
            fail(format!(
                "node `{}` has no port for `{system}`; add `\"{system}\" = <port>` to its `ports` in the cluster file",
                node.name()
            ))
        })?;
        let at = SocketAddr::new(spec.addr.ip(), port);
        let listener = troupe_runtime::http::bind(at)
            .await
            .map_err(|e| fail(format!("cannot bind the url-shortener HTTP port {at}: {e}")))?;
        // Link entities publish invalidations; one message reaches each gateway node.
        ctx.subscribe(&crate::invalidation_topic(&system), |p| GatewayMsg::Invalidate {
            code: p.decode::<String>().unwrap_or_default(),
        });
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let p = self.params.clone();
        // Cluster-wide limits when system 10 runs; per-node buckets otherwise.
        let limiter: Arc<dyn CreateLimiter> = match ClusterCreateLimiter::new(&node, &p.ip_rule, &p.user_rule) {
            Some(c) => Arc::new(c),
            None => {
                tracing::warn!("rate-limiter system not enabled: link creation is limited per gateway node");
                Arc::new(
                    LocalCreateLimiter::new(&p.create_per_ip, &p.create_per_user, p.limiter_keys_max).map_err(fail)?,
                )
            }
        };
        let ship = ShipConfig {
            system: system.clone(),
            shards: p.click_shards,
            batch_events: p.ship_batch_events,
            every: Duration::from_millis(p.ship_every_ms),
            buffer_events: p.click_buffer_events,
            timeout: Duration::from_millis(p.link_timeout_ms),
        };
        let shared = Arc::new(Shared {
            node: node.clone(),
            system,
            addr,
            link_timeout: Duration::from_millis(p.link_timeout_ms),
            cache: LinkCache::new(
                p.cache_entries,
                Duration::from_millis(p.cache_ttl_ms),
                Duration::from_millis(p.negative_ttl_ms),
            ),
            ids: Arc::new(IdSource::new(self.codes.clone(), p.id_counter.clone(), p.id_block_size)),
            clicks: clicks::start(&node, ship, Arc::new(ClickMetrics::new(&node))),
            limiter,
            abuse: self.abuse.clone(),
            geo: self.geo.clone(),
            metrics: GatewayMetrics::new(&node),
            credentials: node.credentials(),
            params: p,
        });
        let app = http::router(shared.clone());
        let (_, server) = troupe_runtime::http::spawn(
            listener,
            app,
            troupe_runtime::http::HttpLimits::default(),
            "url-shortener HTTP server",
        );
        tracing::info!(%addr, "url-shortener gateway listening");
        Ok(GatewayState { shared, _server: server })
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Gateway>,
        st: &mut GatewayState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            GatewayMsg::Invalidate { code } => st.shared.cache.invalidate(&code),
            GatewayMsg::Status => {
                let s = st.shared.cache.stats();
                reply
                    .send(GatewayReply::Status {
                        http: format!("http://{}", st.shared.addr),
                        cache_entries: st.shared.cache.len() as u64,
                        cache_hits: s.hits,
                        cache_misses: s.misses,
                        geo: st.shared.geo.as_ref().map(|g| g.source().to_string()),
                    })
                    .await;
            }
        }
        Ok(())
    }
}
