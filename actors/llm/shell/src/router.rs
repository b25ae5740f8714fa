//! `router` (factory `llm.router`): one per gateway node. It holds the routing core
//! ([`Router`]) fed by the workers' load reports and by membership, and answers the
//! local gateway's `Route` asks (microseconds: a local ask, no I/O).
//!
//! Disaggregated pools get two answers per request: a prefill worker chosen with prefix
//! affinity (that is where the prefix cache pays) and a decode worker chosen by session
//! affinity and load.

use super::config::{PoolSpec, RouterParams, pools};
use super::metrics::{counter, gauge};
use super::proto::{Routed, RouterMsg, RouterProto, RouterReply};
use super::route::{Reason, RouteQuery, Router, Stage};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use troupe_runtime::metrics::{Counter, Gauge};
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf};

pub struct RouterActor {
    params: RouterParams,
}

impl FromParams for RouterActor {
    type Params = RouterParams;
    fn from_params(params: RouterParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(RouterActor { params })
    }
    fn check(p: &RouterParams) -> Result<(), String> {
        p.validate()
    }
}

pub struct RouterState {
    core: Router,
    started: Instant,
    pools: Vec<PoolSpec>,
    decisions: HashMap<(String, Reason), Counter>,
    depth: HashMap<String, Gauge>,
}

impl RouterState {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
}

impl Behavior for RouterActor {
    type Proto = RouterProto;
    type State = RouterState;

    async fn init(&self, ctx: &Ctx<RouterProto>) -> Result<RouterState, ActorError> {
        let cfg = self.params.core().map_err(troupe_runtime::fail)?;
        let mut core = Router::new(cfg);
        let pools = pools(ctx.node().loaded());
        let mut depth = HashMap::new();
        for p in &pools {
            for (key, stage) in p.workers(ctx.node().loaded()) {
                core.add_worker(key, &p.kind, stage);
            }
            let g = gauge(
                ctx.node().metrics(),
                "troupe_llm_queue_depth",
                "Requests queued in a pool's workers (as this router last heard).",
                &[("pool", &p.kind), ("model_name", &p.params.model)],
            );
            depth.insert(p.kind.clone(), g);
        }
        ctx.tick_every(Duration::from_millis(250));
        Ok(RouterState { core, started: Instant::now(), pools, decisions: HashMap::new(), depth })
    }

    async fn handle(
        &self,
        ctx: &Ctx<RouterProto>,
        st: &mut RouterState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let now = st.now_ms();
        match msg {
            RouterMsg::Report { worker, load } => st.core.on_report(&worker, load, now),
            RouterMsg::Failed { worker } => st.core.on_failure(&worker, now),
            RouterMsg::Workers => {
                let all = st.pools.iter().flat_map(|p| st.core.workers_of(&p.kind, now)).collect();
                reply.send(RouterReply::Workers(all)).await;
            }
            RouterMsg::Route { pool, prefix, session, exclude } => {
                let disagg = st
                    .pools
                    .iter()
                    .find(|p| p.kind == pool)
                    .is_some_and(|p| p.params.mode == super::config::Mode::Disaggregated);
                let routed = if disagg {
                    let decode = st.core.route(
                        &RouteQuery { pool: &pool, stage: Stage::Decode, prefix: &[], session, exclude: &exclude },
                        now,
                    );
                    let prefill = st.core.route(
                        &RouteQuery {
                            pool: &pool,
                            stage: Stage::Prefill,
                            prefix: &prefix,
                            session: None,
                            exclude: &exclude,
                        },
                        now,
                    );
                    match (decode, prefill) {
                        (Some((d, why)), p) => Some((d, p.map(|x| x.0), why)),
                        // No decode worker: a prefill worker can do it all (unified).
                        (None, Some((p, why))) => Some((p, None, why)),
                        (None, None) => None,
                    }
                } else {
                    let q =
                        RouteQuery { pool: &pool, stage: Stage::Unified, prefix: &prefix, session, exclude: &exclude };
                    st.core.route(&q, now).map(|(w, why)| (w, None, why))
                };
                let out = routed.map(|(worker, prefill, why)| {
                    let c = st.decisions.entry((pool.clone(), why)).or_insert_with(|| {
                        counter(
                            ctx.node().metrics(),
                            "troupe_llm_router_decisions_total",
                            "Routing decisions by reason (session, prefix, least_loaded, round_robin).",
                            &[("pool", &pool), ("reason", why.name())],
                        )
                    });
                    c.inc();
                    Routed { worker, prefill, reason: why.name().to_string() }
                });
                reply.send(RouterReply::Routed(out)).await;
            }
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<RouterProto>, st: &mut RouterState) -> Result<(), ActorError> {
        let alive: Vec<String> = ctx.node().candidates().into_iter().map(|c| c.name).collect();
        st.core.set_alive(Some(alive));
        for p in &st.pools {
            if let Some(g) = st.depth.get(&p.kind) {
                g.set(f64::from(st.core.pool_queue_depth(&p.kind)));
            }
        }
        Ok(())
    }
}
