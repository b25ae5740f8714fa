//! `worker` (factory `llm.worker`): one per node with the pool's role. It owns one
//! engine on its own OS thread ([`EngineThread`]) and serves token streams to gateways
//! anywhere in the cluster.
//!
//! - `Generate` streams `Tokens` then `Done` (with `Waiting` heartbeats before the first
//!   token, which also reveal a vanished consumer). In a disaggregated pool the decode
//!   worker first streams the prompt's KV from the prefill worker the router chose
//!   (`Prefill`), then imports it and decodes; if the prefill worker fails it prefills
//!   itself.
//! - Every `report_ms` it tells the routers (every gateway node) and the scaler its load.
//! - `SetActive` from the scaler moves it between active (admitting) and warm (loaded,
//!   routed to only when no active worker is left).
//!
//! Invariants: the engine never runs on the async executor; a stream's consumer going
//! away (client disconnect, remote `Cancel`) cancels the request in the engine; a dead
//! engine thread fails the actor, whose supervisor restarts it (reloading the model).

use super::config::{BackendParam, SYSTEM, WorkerParams};
use super::engine_thread::{Cmd, EngineThread, Out, ThreadMetrics, sink_for};
use super::metrics::{counter, gauge, latency};
use super::proto::{
    Blob, GenRequest, RouterMsg, RouterProto, ScalerMsg, ScalerProto, TransferInfo, WorkerMsg, WorkerProto,
    WorkerReply, WorkerStatus,
};
use super::queue::{Class, QueueConfig};
use super::route::{Load, Stage, WorkerKey};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use troupe_llm::{BackendChoice, EngineConfig, KvBlocks};
use troupe_runtime::metrics::{Counter, Gauge, Histogram};
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, StreamTo,
    fail,
};

pub struct WorkerActor {
    params: WorkerParams,
}

impl FromParams for WorkerActor {
    type Params = WorkerParams;
    fn from_params(params: WorkerParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(WorkerActor { params })
    }
    fn check(p: &WorkerParams) -> Result<(), String> {
        p.validate()
    }
}

/// Where the weights are: a pulled model by name, or a GGUF path.
pub fn model_path(file: &str) -> Result<PathBuf, String> {
    if let Some(p) = troupe_llm::fetch::locate(file) {
        return Ok(p);
    }
    let p = PathBuf::from(file);
    if p.is_file() {
        return Ok(p);
    }
    if troupe_llm::fetch::spec(file).is_ok() {
        Err(troupe_llm::fetch::missing_model_help(file))
    } else {
        Err(format!("model file `{file}` not found: name a model of `troupe models pull` or a GGUF path"))
    }
}

pub fn engine_config(p: &WorkerParams) -> EngineConfig {
    EngineConfig {
        max_num_seqs: p.max_num_seqs,
        max_batched_tokens: p.max_batched_tokens,
        num_kv_blocks: p.num_kv_blocks,
        max_model_len: p.max_model_len,
        max_waiting: p.engine_inflight_max + 16,
        enable_prefix_caching: p.enable_prefix_caching,
        threads: p.threads,
        seed: 0,
        f32_activations: false,
    }
}

struct WorkerMetrics {
    running: Gauge,
    waiting: Gauge,
    queued: Gauge,
    kv_usage: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    tokens_per_s: Gauge,
    active: Gauge,
    preemptions: Counter,
    kv_transfer: Histogram,
    kv_bytes: Counter,
    prefill_fallbacks: Counter,
}

pub struct WorkerState {
    thread: EngineThread,
    next_id: Arc<AtomicU64>,
    key: WorkerKey,
    stage: Stage,
    active: Arc<AtomicBool>,
    backend: String,
    model_load_ms: f64,
    m: Arc<WorkerMetrics>,
    last: (Instant, u64, u64, u64),
}

/// Sends `Waiting` every `every` until `rx` yields; `None` when the consumer is gone.
async fn recv_or_heartbeat<T>(
    rx: &mut mpsc::Receiver<T>,
    stream: &StreamTo<WorkerReply>,
    every: Duration,
) -> Option<Option<T>> {
    loop {
        match tokio::time::timeout(every, rx.recv()).await {
            Ok(v) => return Some(v),
            Err(_) => {
                if !stream.send(WorkerReply::Waiting).await {
                    return None;
                }
            }
        }
    }
}

/// Forwards a request's outputs to its stream; cancels it when the consumer goes away.
async fn forward(
    mut rx: mpsc::Receiver<Out>,
    stream: StreamTo<WorkerReply>,
    tx: mpsc::Sender<Cmd>,
    id: u64,
    heartbeat: Duration,
    transfer: Option<TransferInfo>,
) {
    let cancel = |tx: &mpsc::Sender<Cmd>| {
        let _ = tx.try_send(Cmd::Cancel(id));
    };
    let mut started = false;
    let mut held: Option<Out> = None;
    loop {
        let ev = match held.take() {
            Some(ev) => Some(ev),
            None if started => rx.recv().await,
            None => match recv_or_heartbeat(&mut rx, &stream, heartbeat).await {
                Some(ev) => ev,
                None => return cancel(&tx),
            },
        };
        let Some(ev) = ev else {
            let reason = "the engine thread stopped".to_string();
            stream.end(Err(RemoteError::ActorFailed { path: format!("worker request {id}"), reason }));
            return;
        };
        match ev {
            Out::Tokens { mut text, mut n } => {
                started = true;
                // Merge what is already there (a slow consumer gets fewer, larger items).
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Out::Tokens { text: t, n: k } => {
                            text.push_str(&t);
                            n += k;
                        }
                        other => {
                            held = Some(other);
                            break;
                        }
                    }
                }
                if !stream.send(WorkerReply::Tokens { text, n }).await {
                    return cancel(&tx);
                }
            }
            Out::Done { finish, prompt_tokens, completion_tokens, queue_ms } => {
                let _ = stream
                    .send(WorkerReply::Done { finish, prompt_tokens, completion_tokens, queue_ms, transfer })
                    .await;
                stream.end(Ok(()));
                return;
            }
            Out::Failed { message, retryable } => {
                let _ = stream.send(WorkerReply::Failed { message, retryable }).await;
                stream.end(Ok(()));
                return;
            }
            Out::Kv { .. } => {}
        }
    }
}

/// Decode side of a disaggregated request: streams the KV from `prefill`.
async fn fetch_prefill(
    node: &Node,
    prefill: &WorkerKey,
    req: &GenRequest,
    stream: &StreamTo<WorkerReply>,
    heartbeat: Duration,
    timeout: Duration,
) -> Result<Option<(u32, KvBlocks, TransferInfo)>, String> {
    let path = ActorPath::new(SYSTEM, &prefill.kind, &prefill.node).map_err(|e| e.to_string())?;
    let h = node.handle::<WorkerProto>(path);
    let deadline = Instant::now() + timeout;
    let mut s = h
        .stream(WorkerMsg::Prefill { prompt: req.prompt.clone(), sampling: req.sampling.clone(), class: req.class })
        .await
        .map_err(|e| e.to_string())?;
    let mut header = None;
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut first_byte = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = match tokio::time::timeout(left.min(heartbeat), s.next()).await {
            Ok(item) => item,
            Err(_) if left <= heartbeat => return Err(format!("prefill took longer than {} ms", timeout.as_millis())),
            Err(_) => {
                if header.is_none() && !stream.send(WorkerReply::Waiting).await {
                    return Ok(None); // our consumer left: dropping `s` cancels the prefill
                }
                continue;
            }
        };
        match item {
            None => break,
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(WorkerReply::Waiting)) => {
                if !stream.send(WorkerReply::Waiting).await {
                    return Ok(None);
                }
            }
            Some(Ok(WorkerReply::KvHeader {
                first_token,
                n_tokens,
                n_layer,
                kv_dim,
                chunks,
                prefill_ms,
                export_ms,
            })) => {
                first_byte = Some(Instant::now());
                header = Some((first_token, n_tokens, n_layer, kv_dim, chunks, prefill_ms, export_ms));
            }
            Some(Ok(WorkerReply::KvPart(Blob(b)))) => parts.push(b),
            Some(Ok(WorkerReply::Failed { message, .. })) => return Err(message),
            Some(Ok(other)) => return Err(format!("unexpected prefill reply {other:?}")),
        }
    }
    let transfer_ms = first_byte.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
    let Some((first, n_tokens, n_layer, kv_dim, chunks, prefill_ms, export_ms)) = header else {
        return Err("the prefill stream ended without KV".into());
    };
    if parts.len() != chunks as usize {
        return Err(format!("got {} of {chunks} KV chunks", parts.len()));
    }
    let bytes = parts.iter().map(|p| p.len() as u64).sum();
    let kv = KvBlocks::from_chunks(n_tokens as usize, n_layer as usize, kv_dim as usize, &parts)
        .map_err(|e| e.to_string())?;
    Ok(Some((first, kv, TransferInfo { bytes, prefill_ms, export_ms, transfer_ms, import_ms: 0.0 })))
}

impl WorkerActor {
    fn generate(&self, ctx: &Ctx<WorkerProto>, st: &WorkerState, req: GenRequest, stream: StreamTo<WorkerReply>) {
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        let tx = st.thread.tx.clone();
        let heartbeat = Duration::from_millis(self.params.heartbeat_ms);
        let prefill_timeout = Duration::from_millis(self.params.prefill_timeout_ms);
        let node = ctx.node().clone();
        let m = st.m.clone();
        tokio::spawn(async move {
            let (sink, rx) = sink_for(req.sampling.max_tokens);
            let params = req.sampling.to_engine();
            let mut transfer = None;
            let cmd = match &req.prefill {
                Some(p) => match fetch_prefill(&node, p, &req, &stream, heartbeat, prefill_timeout).await {
                    Ok(None) => return,
                    Ok(Some((first_token, kv, info))) => {
                        m.kv_transfer.observe(info.transfer_ms / 1e3);
                        m.kv_bytes.add(info.bytes);
                        transfer = Some(info);
                        Cmd::Import { id, prompt: req.prompt, first_token, kv, params, class: req.class, sink }
                    }
                    Err(e) => {
                        tracing::warn!(prefill = ?p, error = %e, "prefill failed; prefilling here");
                        m.prefill_fallbacks.inc();
                        Cmd::Generate { id, prompt: req.prompt, params, class: req.class, sink }
                    }
                },
                None => Cmd::Generate { id, prompt: req.prompt, params, class: req.class, sink },
            };
            if let Err(e) = tx.try_send(cmd) {
                let full = matches!(e, mpsc::error::TrySendError::Full(_));
                let message = if full { "the worker's command queue is full" } else { "the engine thread stopped" };
                let _ = stream.send(WorkerReply::Failed { message: message.into(), retryable: true }).await;
                stream.end(Ok(()));
                return;
            }
            forward(rx, stream, tx, id, heartbeat, transfer).await;
        });
    }

    fn prefill(
        &self,
        st: &WorkerState,
        prompt: Vec<u32>,
        sampling: super::proto::Sampling,
        class: Class,
        stream: StreamTo<WorkerReply>,
    ) {
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        let tx = st.thread.tx.clone();
        let heartbeat = Duration::from_millis(self.params.heartbeat_ms);
        let chunk_blocks = self.params.kv_chunk_blocks;
        tokio::spawn(async move {
            let (sink, mut rx) = sink_for(1);
            let params = sampling.to_engine();
            if tx.try_send(Cmd::Prefill { id, prompt, params, class, sink }).is_err() {
                let _ = stream
                    .send(WorkerReply::Failed { message: "the prefill worker is saturated".into(), retryable: true })
                    .await;
                stream.end(Ok(()));
                return;
            }
            let ev = match recv_or_heartbeat(&mut rx, &stream, heartbeat).await {
                None => {
                    let _ = tx.try_send(Cmd::Cancel(id));
                    return;
                }
                Some(ev) => ev,
            };
            match ev {
                Some(Out::Kv { first_token, kv, prefill_ms, export_ms }) => {
                    let t = Instant::now();
                    let chunks = kv.chunks(chunk_blocks);
                    let export_ms = export_ms + t.elapsed().as_secs_f64() * 1e3;
                    let header = WorkerReply::KvHeader {
                        first_token,
                        n_tokens: kv.n_tokens as u32,
                        n_layer: kv.n_layer as u32,
                        kv_dim: kv.kv_dim as u32,
                        chunks: chunks.len() as u32,
                        prefill_ms,
                        export_ms,
                    };
                    drop(kv);
                    if !stream.send(header).await {
                        return;
                    }
                    for c in chunks {
                        if !stream.send(WorkerReply::KvPart(Blob(c))).await {
                            return;
                        }
                    }
                    stream.end(Ok(()));
                }
                Some(Out::Failed { message, retryable }) => {
                    let _ = stream.send(WorkerReply::Failed { message, retryable }).await;
                    stream.end(Ok(()));
                }
                Some(_) => {
                    let _ = stream
                        .send(WorkerReply::Failed { message: "prefill was cancelled".into(), retryable: true })
                        .await;
                    stream.end(Ok(()));
                }
                None => stream.end(Err(RemoteError::ActorFailed {
                    path: "prefill".into(),
                    reason: "the engine thread stopped".into(),
                })),
            }
        });
    }

    fn load(&self, st: &WorkerState) -> Load {
        let s = st.thread.stats();
        Load {
            queued: s.queued,
            running: s.in_engine,
            kv_usage: if s.kv_blocks_total > 0 { s.kv_blocks_used as f32 / s.kv_blocks_total as f32 } else { 0.0 },
            active: st.active.load(Ordering::Relaxed),
        }
    }
}

impl Behavior for WorkerActor {
    type Proto = WorkerProto;
    type State = WorkerState;

    async fn init(&self, ctx: &Ctx<WorkerProto>) -> Result<WorkerState, ActorError> {
        let p = self.params.clone();
        let node = ctx.node().clone();
        let key = WorkerKey { kind: ctx.spec().name.clone(), node: node.name().to_string() };
        let stage = p.stage_on(node.name());
        let path = model_path(&p.file).map_err(fail)?;
        let choice = match p.backend {
            BackendParam::Auto => BackendChoice::Auto,
            BackendParam::Cpu => BackendChoice::Cpu,
            BackendParam::Cuda => BackendChoice::Cuda,
        };
        let started = Instant::now();
        let cfg = engine_config(&p);
        let engine = tokio::task::spawn_blocking(move || troupe_llm::load_engine_with(&path, cfg, choice))
            .await
            .map_err(|e| fail(format!("loading the model: {e}")))?
            .map_err(|e| fail(format!("loading the model `{}`: {e}", p.file)))?;
        let model_load_ms = started.elapsed().as_secs_f64() * 1e3;
        let backend = engine.backend_name();
        let mx = node.metrics();
        let stage_s = format!("{stage:?}").to_lowercase();
        let l = [("model_name", p.model.as_str()), ("worker", key.kind.as_str()), ("stage", stage_s.as_str())];
        let m = Arc::new(WorkerMetrics {
            running: gauge(
                mx,
                "troupe_llm_num_requests_running",
                "Requests in the engine (running or in its batch queue).",
                &l,
            ),
            waiting: gauge(
                mx,
                "troupe_llm_num_requests_waiting",
                "Requests waiting in the worker's priority queue.",
                &l,
            ),
            queued: gauge(
                mx,
                "troupe_llm_engine_waiting",
                "Sequences admitted to the engine but not yet scheduled.",
                &l,
            ),
            kv_usage: gauge(mx, "troupe_llm_kv_cache_usage_perc", "KV cache blocks in use, 0..1.", &l),
            prefix_queries: counter(
                mx,
                "troupe_llm_prefix_cache_queries_total",
                "Prompt blocks looked up in the prefix cache.",
                &l,
            ),
            prefix_hits: counter(
                mx,
                "troupe_llm_prefix_cache_hits_total",
                "Prompt blocks found in the prefix cache.",
                &l,
            ),
            tokens_per_s: gauge(
                mx,
                "troupe_llm_generation_tokens_per_second",
                "Tokens generated per second over the last report period.",
                &l,
            ),
            active: gauge(
                mx,
                "troupe_llm_worker_active",
                "1 when the worker admits requests, 0 when it keeps warm.",
                &l,
            ),
            preemptions: counter(
                mx,
                "troupe_llm_num_preemptions_total",
                "Sequences preempted for lack of KV blocks.",
                &l,
            ),
            kv_transfer: latency(
                mx,
                "troupe_llm_kv_transfer_seconds",
                "Disaggregated: time to receive a prompt's KV from the prefill worker.",
                &l,
            ),
            kv_bytes: counter(
                mx,
                "troupe_llm_kv_transfer_bytes_total",
                "Disaggregated: KV bytes received from prefill workers.",
                &l,
            ),
            prefill_fallbacks: counter(
                mx,
                "troupe_llm_prefill_fallbacks_total",
                "Disaggregated: prefills done locally because the prefill worker failed.",
                &l,
            ),
        });
        gauge(mx, "troupe_llm_model_load_seconds", "Time the worker took to load its model.", &l)
            .set(model_load_ms / 1e3);
        if backend.to_lowercase().contains("cuda")
            && let Ok(d) = troupe_llm::cuda::device_info(0)
        {
            gauge(mx, "troupe_llm_gpu_memory_total_bytes", "GPU memory of the worker's device.", &l)
                .set(d.total_bytes as f64);
            gauge(
                mx,
                "troupe_llm_gpu_memory_used_bytes",
                "GPU memory in use after the model and KV cache were allocated.",
                &l,
            )
            .set((d.total_bytes - d.free_bytes) as f64);
        }
        let qcfg = QueueConfig { cap: p.queue_cap, aging_ms: p.aging_ms, short_tokens_max: p.short_tokens_max };
        let tm = ThreadMetrics {
            queue_time: latency(
                mx,
                "troupe_llm_request_queue_time_seconds",
                "Time a request waited in the worker's priority queue.",
                &l,
            ),
            step_time: latency(
                mx,
                "troupe_llm_engine_step_seconds",
                "Duration of one engine step (a batch of prefill chunks and decodes).",
                &l,
            ),
        };
        let thread = EngineThread::start(&key.kind, engine, qcfg, p.engine_inflight_max, tm)
            .map_err(|e| fail(format!("starting the engine thread: {e}")))?;
        tracing::info!(worker = ?key, ?stage, %backend, load_ms = model_load_ms as u64, "LLM worker ready");
        ctx.tick_every(Duration::from_millis(p.report_ms));
        let active = Arc::new(AtomicBool::new(p.start_active));
        m.active.set(if p.start_active { 1.0 } else { 0.0 });
        Ok(WorkerState {
            thread,
            next_id: Arc::new(AtomicU64::new(1)),
            key,
            stage,
            active,
            backend,
            model_load_ms,
            m,
            last: (Instant::now(), 0, 0, 0),
        })
    }

    async fn handle(
        &self,
        ctx: &Ctx<WorkerProto>,
        st: &mut WorkerState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            WorkerMsg::Generate(req) => match reply {
                Reply::Stream(stream) => self.generate(ctx, st, req, stream),
                other => other.fail(RemoteError::Invalid("Generate is a stream request".into())),
            },
            WorkerMsg::Prefill { prompt, sampling, class } => match reply {
                Reply::Stream(stream) => self.prefill(st, prompt, sampling, class, stream),
                other => other.fail(RemoteError::Invalid("Prefill is a stream request".into())),
            },
            WorkerMsg::SetActive { active } => {
                if st.active.swap(active, Ordering::Relaxed) != active {
                    tracing::info!(worker = ?st.key, active, "scaler: worker {}", if active { "admits" } else { "keeps warm" });
                }
                st.m.active.set(if active { 1.0 } else { 0.0 });
            }
            WorkerMsg::Status => {
                let status = WorkerStatus {
                    key: st.key.clone(),
                    model: self.params.model.clone(),
                    stage: st.stage,
                    backend: st.backend.clone(),
                    load: self.load(st),
                    model_load_ms: st.model_load_ms,
                };
                reply.send(WorkerReply::Status(status)).await;
            }
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<WorkerProto>, st: &mut WorkerState) -> Result<(), ActorError> {
        if st.thread.is_finished() {
            return Err(fail("the engine thread stopped"));
        }
        let s = st.thread.stats();
        let load = self.load(st);
        st.m.running.set(f64::from(s.in_engine));
        st.m.waiting.set(f64::from(s.queued));
        st.m.queued.set(f64::from(s.waiting));
        st.m.kv_usage.set(f64::from(load.kv_usage));
        let (t, q, h, tok) = st.last;
        st.m.prefix_queries.add(s.prefix_queries.saturating_sub(q));
        st.m.prefix_hits.add(s.prefix_hits.saturating_sub(h));
        let dt = t.elapsed().as_secs_f64();
        if dt > 0.0 {
            st.m.tokens_per_s.set(s.tokens_generated.saturating_sub(tok) as f64 / dt);
        }
        let pre = st.m.preemptions.get();
        st.m.preemptions.add(s.preemptions.saturating_sub(pre));
        st.last = (Instant::now(), s.prefix_queries, s.prefix_hits, s.tokens_generated);
        report(ctx.node(), &st.key, load);
        Ok(())
    }
}

/// Tells every live router and the scaler this worker's load (in the background: a tell
/// to a node that just died may take retries, and a tick must not wait for it).
fn report(node: &Node, key: &WorkerKey, load: Load) {
    let loaded = node.loaded();
    let router_role = loaded.kind(SYSTEM, super::config::ROUTER_KIND).map(|k| k.role.clone());
    for c in node.candidates() {
        let Some(role) = &router_role else { break };
        if role.as_ref().is_some_and(|r| !c.roles.contains(r)) {
            continue;
        }
        let Ok(path) = ActorPath::new(SYSTEM, super::config::ROUTER_KIND, &c.name) else { continue };
        let h = node.handle::<RouterProto>(path);
        let msg = RouterMsg::Report { worker: key.clone(), load };
        tokio::spawn(async move {
            let _ = h.tell(msg).await;
        });
    }
    if loaded.kind(SYSTEM, super::config::SCALER_KIND).is_some()
        && let Ok(path) = ActorPath::new(SYSTEM, super::config::SCALER_KIND, KindSpec::singleton_key())
    {
        let h = node.handle::<ScalerProto>(path);
        let msg = ScalerMsg::Report { worker: key.clone(), load };
        tokio::spawn(async move {
            let _ = h.tell(msg).await;
        });
    }
}
