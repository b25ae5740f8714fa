//! `scaler` (factory `llm.scaler`): a singleton that decides, per pool and stage, which
//! workers admit requests and which keep warm ([`Scaler`]), from the workers' load
//! reports, and tells them (`SetActive`). It re-sends a worker's wanted state whenever
//! the worker's report disagrees (a lost tell, a restarted worker), and adopts the
//! workers' reported states after it moves to another node.

use super::config::{PoolSpec, SYSTEM, ScalerParams, pools};
use super::metrics::{counter, gauge};
use super::proto::{ScalerMsg, ScalerProto, ScalerReply, WorkerMsg, WorkerProto};
use super::route::{Load, Stage, WorkerKey};
use super::scale::{Scaler, WorkerView};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use troupe_runtime::{ActorError, ActorPath, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf};

pub struct ScalerActor {
    params: ScalerParams,
}

impl FromParams for ScalerActor {
    type Params = ScalerParams;
    fn from_params(params: ScalerParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(ScalerActor { params })
    }
    fn check(p: &ScalerParams) -> Result<(), String> {
        p.validate()
    }
}

struct Group {
    pool: String,
    stage: Stage,
    workers: Vec<WorkerKey>,
    scaler: Scaler,
}

pub struct ScalerState {
    groups: Vec<Group>,
    reports: HashMap<WorkerKey, (Load, Instant)>,
    wanted: HashMap<WorkerKey, bool>,
}

impl Behavior for ScalerActor {
    type Proto = ScalerProto;
    type State = ScalerState;

    async fn init(&self, ctx: &Ctx<ScalerProto>) -> Result<ScalerState, ActorError> {
        let mut groups: BTreeMap<(String, Stage), Vec<WorkerKey>> = BTreeMap::new();
        let ps: Vec<PoolSpec> = pools(ctx.node().loaded());
        for p in &ps {
            for (k, stage) in p.workers(ctx.node().loaded()) {
                groups.entry((p.kind.clone(), stage)).or_default().push(k);
            }
        }
        let groups = groups
            .into_iter()
            .map(|((pool, stage), workers)| Group { pool, stage, workers, scaler: Scaler::new(self.params.core()) })
            .collect();
        ctx.tick_every(Duration::from_millis(self.params.tick_ms));
        Ok(ScalerState { groups, reports: HashMap::new(), wanted: HashMap::new() })
    }

    async fn handle(
        &self,
        _: &Ctx<ScalerProto>,
        st: &mut ScalerState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            ScalerMsg::Report { worker, load } => {
                // Adopt what a worker says until this scaler has decided about it.
                st.wanted.entry(worker.clone()).or_insert(load.active);
                st.reports.insert(worker, (load, Instant::now()));
            }
            ScalerMsg::Status => {
                let out = st
                    .groups
                    .iter()
                    .map(|g| {
                        let (act, warm): (Vec<&WorkerKey>, Vec<&WorkerKey>) = g
                            .workers
                            .iter()
                            .filter(|w| st.reports.contains_key(w))
                            .partition(|w| st.wanted.get(w).copied().unwrap_or(true));
                        (
                            g.pool.clone(),
                            g.stage,
                            act.iter().map(|w| w.node.clone()).collect(),
                            warm.iter().map(|w| w.node.clone()).collect(),
                        )
                    })
                    .collect();
                reply.send(ScalerReply::Status(out)).await;
            }
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<ScalerProto>, st: &mut ScalerState) -> Result<(), ActorError> {
        let node = ctx.node();
        let alive: Vec<String> = node.candidates().into_iter().map(|c| c.name).collect();
        let stale = Duration::from_millis(self.params.stale_ms);
        let now_ms = node.uptime().as_millis() as u64;
        let mx = node.metrics();
        for g in &mut st.groups {
            let views: Vec<WorkerView> = g
                .workers
                .iter()
                .map(|w| {
                    let rep = st.reports.get(w).filter(|(_, t)| t.elapsed() <= stale);
                    WorkerView {
                        id: w.node.clone(),
                        alive: rep.is_some() && alive.contains(&w.node),
                        active: if self.params.enabled { st.wanted.get(w).copied().unwrap_or(false) } else { true },
                        queued: rep.map_or(0, |r| r.0.queued),
                        running: rep.map_or(0, |r| r.0.running),
                    }
                })
                .collect();
            let stage = format!("{:?}", g.stage).to_lowercase();
            let l = [("pool", g.pool.as_str()), ("stage", stage.as_str())];
            if self.params.enabled {
                for (id, active) in g.scaler.decide(&views, now_ms) {
                    if let Some(w) = g.workers.iter().find(|w| w.node == id) {
                        tracing::info!(worker = ?w, active, "scaling {}", if active { "up" } else { "down" });
                        st.wanted.insert(w.clone(), active);
                        let dir = if active { "up" } else { "down" };
                        counter(
                            mx,
                            "troupe_llm_scale_events_total",
                            "Workers moved between warm and active.",
                            &[l[0], l[1], ("direction", dir)],
                        )
                        .inc();
                    }
                }
            }
            let mut n_active = 0;
            let mut n_warm = 0;
            for w in &g.workers {
                let Some((load, t)) = st.reports.get(w) else { continue };
                if t.elapsed() > stale || !alive.contains(&w.node) {
                    continue;
                }
                let want = if self.params.enabled { st.wanted.get(w).copied().unwrap_or(load.active) } else { true };
                if want {
                    n_active += 1
                } else {
                    n_warm += 1
                }
                if load.active != want
                    && let Ok(path) = ActorPath::new(SYSTEM, &w.kind, &w.node)
                {
                    let h = node.handle::<WorkerProto>(path);
                    tokio::spawn(async move {
                        let _ = h.tell(WorkerMsg::SetActive { active: want }).await;
                    });
                }
            }
            gauge(mx, "troupe_llm_active_workers", "Workers admitting requests.", &l).set(f64::from(n_active));
            gauge(mx, "troupe_llm_warm_workers", "Workers loaded but not admitting (the warm pool).", &l)
                .set(f64::from(n_warm));
        }
        Ok(())
    }
}
