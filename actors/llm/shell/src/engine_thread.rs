//! The OS thread that owns one [`Engine`]: it drains a bounded command channel, keeps
//! the worker's priority queue ([`AdmissionQueue`]), feeds the engine up to
//! `engine_inflight_max` requests, calls `step()` and sends each request's output to its
//! own channel. Nothing here runs on the async executor (a step takes milliseconds of
//! CPU); the worker actor only moves messages between this thread and its streams.
//!
//! Invariants:
//! - Every command channel and output channel is bounded: commands by `CMD_QUEUE_CAP`,
//!   a request's outputs by its `max_tokens` + a few (one output per token at most, so a
//!   send never blocks the engine and never fails for lack of room).
//! - A request whose output channel is closed (its client went away) is cancelled in
//!   the engine at its next output, or dropped from the queue when it is popped.
//! - Every request gets exactly one final output (`Done` or `Failed`), unless the thread
//!   itself dies — then its channel closes and the stream reports the loss.

use super::queue::{AdmissionQueue, Class, QueueConfig, QueueError};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use troupe_llm::{Engine, EngineError, FinishReason, KvBlocks, SamplingParams, ScheduleError};
use troupe_runtime::metrics::Histogram;

/// Commands waiting for the engine thread.
pub const CMD_QUEUE_CAP: usize = 4096;
/// Commands handled between two engine steps (so a flood cannot starve decoding).
const CMDS_PER_STEP_MAX: usize = 256;

/// What a request's stream receives.
#[derive(Debug)]
pub enum Out {
    Tokens {
        text: String,
        n: u32,
    },
    Done {
        finish: super::proto::Finish,
        prompt_tokens: u32,
        completion_tokens: u32,
        queue_ms: f64,
    },
    Failed {
        message: String,
        retryable: bool,
    },
    /// Prefill stage: the prompt's KV and the first sampled token.
    Kv {
        first_token: u32,
        kv: KvBlocks,
        prefill_ms: f64,
        export_ms: f64,
    },
}

pub type Sink = mpsc::Sender<Out>;

/// A request's output channel, sized so that the engine never waits on it.
pub fn sink_for(max_tokens: u32) -> (Sink, mpsc::Receiver<Out>) {
    mpsc::channel(max_tokens as usize + 8)
}

#[derive(Debug)]
pub enum Cmd {
    Generate {
        id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        class: Class,
        sink: Sink,
    },
    /// Compute the prompt, sample one token, keep and export the KV.
    Prefill {
        id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        class: Class,
        sink: Sink,
    },
    /// Continue from another engine's KV.
    Import {
        id: u64,
        prompt: Vec<u32>,
        first_token: u32,
        kv: KvBlocks,
        params: SamplingParams,
        class: Class,
        sink: Sink,
    },
    Cancel(u64),
}

/// What the thread publishes after every step (read by the actor for reports and metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadStats {
    /// Requests in the priority queue (and imports waiting for room).
    pub queued: u32,
    /// Requests handed to the engine and not finished.
    pub in_engine: u32,
    pub running: u32,
    pub waiting: u32,
    pub kv_blocks_used: u32,
    pub kv_blocks_total: u32,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub tokens_generated: u64,
    pub prefill_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
}

/// Histograms the thread records into directly (they are shared, lock-free cells).
#[derive(Clone)]
pub struct ThreadMetrics {
    pub queue_time: Histogram,
    pub step_time: Histogram,
}

/// The actor's side of the thread.
pub struct EngineThread {
    pub tx: mpsc::Sender<Cmd>,
    pub stats: Arc<Mutex<ThreadStats>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl EngineThread {
    /// Starts the thread around `engine`.
    pub fn start(
        name: &str,
        engine: Engine,
        qcfg: QueueConfig,
        inflight_max: usize,
        m: ThreadMetrics,
    ) -> std::io::Result<EngineThread> {
        let (tx, rx) = mpsc::channel(CMD_QUEUE_CAP);
        let stats = Arc::new(Mutex::new(ThreadStats::default()));
        let st = stats.clone();
        let join = std::thread::Builder::new().name(format!("llm-{name}")).spawn(move || {
            let mut l = Loop {
                engine,
                rx,
                queue: AdmissionQueue::new(qcfg),
                imports: VecDeque::new(),
                reqs: HashMap::new(),
                inflight_max: inflight_max.max(1),
                started: Instant::now(),
                stats: st,
                m,
            };
            l.run();
            l.fail_all("the engine thread stopped");
        })?;
        Ok(EngineThread { tx, stats, join: Some(join) })
    }

    /// Whether the thread has ended (a failed engine): the actor restarts.
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(|j| j.is_finished())
    }

    pub fn stats(&self) -> ThreadStats {
        *self.stats.lock()
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        // Closing the command channel ends the loop once the engine is idle; in-flight
        // requests are failed by the thread itself. Do not join: a step may be running.
        self.join.take();
    }
}

/// A request waiting in the priority queue.
#[derive(Debug)]
enum Queued {
    Generate { prompt: Vec<u32>, params: SamplingParams, sink: Sink, class: Class },
    Prefill { prompt: Vec<u32>, params: SamplingParams, sink: Sink, class: Class },
}

#[derive(Debug)]
struct Import {
    id: u64,
    prompt: Vec<u32>,
    first_token: u32,
    kv: KvBlocks,
    params: SamplingParams,
    class: Class,
    sink: Sink,
    arrived: Instant,
}

#[derive(Debug)]
struct Live {
    sink: Sink,
    prefill: bool,
    prompt_tokens: u32,
    completion_tokens: u32,
    arrived: Instant,
    admitted: Instant,
}

struct Loop {
    engine: Engine,
    rx: mpsc::Receiver<Cmd>,
    queue: AdmissionQueue<(Queued, Instant)>,
    imports: VecDeque<Import>,
    reqs: HashMap<u64, Live>,
    inflight_max: usize,
    started: Instant,
    stats: Arc<Mutex<ThreadStats>>,
    m: ThreadMetrics,
}

fn priority(c: &Class, short_tokens_max: u32) -> i32 {
    i32::from(c.level(short_tokens_max))
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Loop {
    fn idle(&self) -> bool {
        !self.engine.has_work() && self.queue.is_empty() && self.imports.is_empty()
    }

    fn run(&mut self) {
        loop {
            if self.idle() {
                self.publish();
                match self.rx.blocking_recv() {
                    Some(c) => self.command(c),
                    None => return,
                }
            }
            for _ in 0..CMDS_PER_STEP_MAX {
                match self.rx.try_recv() {
                    Ok(c) => self.command(c),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if self.idle() {
                            return;
                        }
                        break;
                    }
                }
            }
            self.admit();
            if self.engine.has_work() {
                let t = Instant::now();
                match self.engine.step() {
                    Ok(outs) => {
                        self.m.step_time.observe(t.elapsed().as_secs_f64());
                        for o in outs {
                            self.output(o);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "engine step failed; the worker restarts");
                        return;
                    }
                }
            }
            self.publish();
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn command(&mut self, c: Cmd) {
        let now = Instant::now();
        let now_ms = self.now_ms();
        let (id, class, item) = match c {
            Cmd::Cancel(id) => {
                if let Some((q, _)) = self.queue.remove(id) {
                    let sink = match q {
                        Queued::Generate { sink, .. } | Queued::Prefill { sink, .. } => sink,
                    };
                    let _ = sink.try_send(done(super::proto::Finish::Cancelled, 0, 0, 0.0));
                } else if let Some(pos) = self.imports.iter().position(|i| i.id == id) {
                    self.imports.remove(pos);
                } else {
                    self.engine.cancel(id);
                    self.engine.drop_held(id);
                }
                return;
            }
            Cmd::Generate { id, prompt, params, class, sink } => {
                (id, class, Queued::Generate { prompt, params, sink, class })
            }
            Cmd::Prefill { id, prompt, params, class, sink } => {
                (id, class, Queued::Prefill { prompt, params, sink, class })
            }
            Cmd::Import { id, prompt, first_token, kv, params, class, sink } => {
                if self.imports.len() >= self.queue.config().cap {
                    let message = format!("worker refused the request: {} imports waiting", self.imports.len());
                    let _ = sink.try_send(Out::Failed { message, retryable: true });
                    return;
                }
                self.imports.push_back(Import { id, prompt, first_token, kv, params, class, sink, arrived: now });
                return;
            }
        };
        if let Err((e, (item, _))) = self.queue.push(id, class, now_ms, (item, now)) {
            let (Queued::Generate { sink, .. } | Queued::Prefill { sink, .. }) = item;
            let retryable = matches!(e, QueueError::Full(_));
            let _ = sink.try_send(Out::Failed { message: format!("worker refused the request: {e}"), retryable });
        }
    }

    fn admit(&mut self) {
        let short = self.queue.config().short_tokens_max;
        // Imports first: their prompts are already computed elsewhere.
        while let Some(imp) = self.imports.pop_front() {
            if imp.sink.is_closed() {
                continue;
            }
            let prio = priority(&imp.class, short);
            match self.engine.import_request(
                imp.id,
                imp.prompt.clone(),
                imp.first_token,
                &imp.kv,
                imp.params.clone(),
                prio,
            ) {
                Ok(()) => {
                    self.m.queue_time.observe(imp.arrived.elapsed().as_secs_f64());
                    let live = Live {
                        sink: imp.sink,
                        prefill: false,
                        prompt_tokens: imp.prompt.len() as u32,
                        completion_tokens: 0,
                        arrived: imp.arrived,
                        admitted: Instant::now(),
                    };
                    self.reqs.insert(imp.id, live);
                }
                Err(EngineError::Schedule(ScheduleError::NoRoom { .. } | ScheduleError::Busy(_))) => {
                    // Room comes back as requests finish: retry after the next step.
                    self.imports.push_front(imp);
                    break;
                }
                Err(e) => {
                    let _ =
                        imp.sink.try_send(Out::Failed { message: format!("import refused: {e}"), retryable: false });
                }
            }
        }
        while self.reqs.len() < self.inflight_max {
            let Some((id, (item, arrived))) = self.queue.pop() else { break };
            let (prompt, params, sink, class, prefill) = match item {
                Queued::Generate { prompt, params, sink, class } => (prompt, params, sink, class, false),
                Queued::Prefill { prompt, params, sink, class } => (prompt, params, sink, class, true),
            };
            if sink.is_closed() {
                continue; // its client went away while it waited
            }
            let n = prompt.len() as u32;
            let prio = priority(&class, short);
            let r = if prefill {
                self.engine.add_request_held(id, prompt, SamplingParams { max_tokens: 1, ..params }, prio)
            } else {
                self.engine.add_request(id, prompt, params, prio)
            };
            match r {
                Ok(()) => {
                    self.m.queue_time.observe(arrived.elapsed().as_secs_f64());
                    let live = Live {
                        sink,
                        prefill,
                        prompt_tokens: n,
                        completion_tokens: 0,
                        arrived,
                        admitted: Instant::now(),
                    };
                    self.reqs.insert(id, live);
                }
                Err(e) => {
                    let retryable =
                        matches!(e, EngineError::Schedule(ScheduleError::QueueFull(_) | ScheduleError::Busy(_)));
                    let _ = sink.try_send(Out::Failed { message: e.to_string(), retryable });
                }
            }
        }
    }

    fn output(&mut self, o: troupe_llm::StepOutput) {
        let Some(live) = self.reqs.get_mut(&o.id) else {
            self.engine.drop_held(o.id);
            return;
        };
        live.completion_tokens += o.new_tokens.len() as u32;
        if live.prefill {
            if let Some(reason) = o.finished {
                let Some(live) = self.reqs.remove(&o.id) else { return };
                if reason == FinishReason::Cancelled {
                    self.engine.drop_held(o.id);
                    let _ = live.sink.try_send(done(super::proto::Finish::Cancelled, live.prompt_tokens, 0, 0.0));
                    return;
                }
                let prefill_ms = ms(live.arrived.elapsed());
                let t = Instant::now();
                let msg = match (self.engine.export_held(o.id), o.new_tokens.first()) {
                    (Some(Ok(kv)), Some(&first_token)) => {
                        Out::Kv { first_token, kv, prefill_ms, export_ms: ms(t.elapsed()) }
                    }
                    (Some(Err(e)), _) => Out::Failed { message: format!("KV export failed: {e}"), retryable: true },
                    _ => Out::Failed { message: "prefill produced no token".into(), retryable: true },
                };
                let _ = live.sink.try_send(msg);
            }
            return;
        }
        if !o.text_delta.is_empty() || !o.new_tokens.is_empty() {
            let msg = Out::Tokens { text: o.text_delta, n: o.new_tokens.len() as u32 };
            if live.sink.try_send(msg).is_err() && o.finished.is_none() {
                // The client is gone: stop computing for it.
                self.engine.cancel(o.id);
                return;
            }
        }
        if let Some(reason) = o.finished {
            let Some(live) = self.reqs.remove(&o.id) else { return };
            let finish = match reason {
                FinishReason::Stop => super::proto::Finish::Stop,
                FinishReason::Length => super::proto::Finish::Length,
                FinishReason::Cancelled => super::proto::Finish::Cancelled,
            };
            let queue_ms = ms(live.admitted.duration_since(live.arrived));
            let _ = live.sink.try_send(done(finish, live.prompt_tokens, live.completion_tokens, queue_ms));
        }
    }

    fn publish(&self) {
        let s = self.engine.stats();
        *self.stats.lock() = ThreadStats {
            queued: (self.queue.len() + self.imports.len()) as u32,
            in_engine: self.reqs.len() as u32,
            running: s.running as u32,
            waiting: s.waiting as u32,
            kv_blocks_used: s.kv_blocks_used as u32,
            kv_blocks_total: s.kv_blocks_total as u32,
            prefix_queries: s.prefix_queries,
            prefix_hits: s.prefix_hits,
            tokens_generated: s.tokens_generated,
            prefill_tokens: s.prefill_tokens,
            preemptions: s.preemptions,
            steps: s.steps,
        };
    }

    fn fail_all(&mut self, why: &str) {
        let fail = || Out::Failed { message: why.to_string(), retryable: true };
        for (_, live) in self.reqs.drain() {
            let _ = live.sink.try_send(fail());
        }
        for (_, (q, _)) in self.queue.drain() {
            let (Queued::Generate { sink, .. } | Queued::Prefill { sink, .. }) = q;
            let _ = sink.try_send(fail());
        }
        for imp in self.imports.drain(..) {
            let _ = imp.sink.try_send(fail());
        }
        self.publish();
    }
}

fn done(finish: super::proto::Finish, prompt_tokens: u32, completion_tokens: u32, queue_ms: f64) -> Out {
    Out::Done { finish, prompt_tokens, completion_tokens, queue_ms }
}
