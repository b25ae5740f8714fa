//! The engine: weights + backend + KV cache + scheduler + sampler, driven one
//! step at a time by its owner.
//!
//! `step()` plans a batch (scheduler), runs it (backend), samples the sequences
//! whose chunk reached the end of their tokens, and reports per request the new
//! token(s), the final text delta, and a finish reason. Preemption is invisible to
//! the caller: a preempted request is recomputed later and continues its stream.
//! No async, no threads beyond the backend's compute pool, no clock: an actor can
//! own an `Engine` on a dedicated OS thread and call `step()` in a loop.

use std::collections::HashMap;

use crate::backend::{BLOCK_SIZE, Backend, Batch, SeqBatch};
use crate::chat::{ChatTemplate, Message};
use crate::kv::transfer::KvBlocks;
use crate::sampler::{Rng, SamplingParams, sample};
use crate::scheduler::{Plan, ScheduleError, Scheduler, SchedulerConfig};
use crate::text::TextStream;
use crate::tokenizer::Tokenizer;
use crate::{EngineError, RequestId};

/// Engine limits. Every queue and buffer is bounded by one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most sequences in one batch (running at once).
    pub max_num_seqs: usize,
    /// Most tokens computed per step (prefill chunks + decodes).
    pub max_batched_tokens: usize,
    /// KV cache size in blocks of `BLOCK_SIZE` (16) tokens.
    pub num_kv_blocks: usize,
    /// Longest sequence, prompt + generated, in tokens (also capped by the model).
    pub max_model_len: usize,
    /// Most requests waiting for admission; `add_request` fails beyond it.
    pub max_waiting: usize,
    pub enable_prefix_caching: bool,
    /// Compute threads for the CPU backend (0 = all cores).
    pub threads: usize,
    /// Seed for requests that do not set one (mixed with the request id).
    pub seed: u64,
    /// CPU backend: f32 activations in matmuls instead of 8-bit (slower; exact
    /// greedy agreement with a float reference). Default false, like llama.cpp.
    pub f32_activations: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 64,
            max_batched_tokens: 512,
            num_kv_blocks: 1024,
            max_model_len: 4096,
            max_waiting: 4096,
            enable_prefix_caching: true,
            threads: 0,
            seed: 0,
            f32_activations: false,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (self.max_num_seqs >= 1 && self.max_num_seqs <= 4096, "max_num_seqs in 1..=4096"),
            (self.max_batched_tokens >= 1 && self.max_batched_tokens <= 65536, "max_batched_tokens in 1..=65536"),
            (self.num_kv_blocks >= 1 && self.num_kv_blocks <= 1 << 20, "num_kv_blocks in 1..=1048576"),
            (self.max_model_len >= 1, "max_model_len >= 1"),
            (self.max_waiting >= 1, "max_waiting >= 1"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(msg.to_string()),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id, or a stop string.
    Stop,
    /// `max_tokens` generated, or the model's length limit reached.
    Length,
    Cancelled,
}

/// What one step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    pub id: RequestId,
    /// Tokens sampled this step (0 or 1 today; a Vec so speculative decoding fits).
    pub new_tokens: Vec<u32>,
    /// Text that became final this step (UTF-8 complete, stop strings removed).
    pub text_delta: String,
    pub finished: Option<FinishReason>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub prefix_evictions: u64,
    pub tokens_generated: u64,
    pub prefill_tokens: u64,
    pub steps: u64,
    pub preemptions: u64,
}

#[derive(Debug)]
struct Request {
    params: SamplingParams,
    rng: Rng,
    prompt_len: usize,
    generated: usize,
    text: TextStream,
}

pub struct Engine {
    backend: Box<dyn Backend>,
    tokenizer: Tokenizer,
    sched: Scheduler,
    requests: HashMap<RequestId, Request>,
    /// Outputs decided outside `step` (cancellations), reported by the next step.
    pending: Vec<StepOutput>,
    cfg: EngineConfig,
    stats: EngineStats,
    logits: Vec<f32>,
    /// Device-side argmax results when every sampled row is greedy.
    greedy: Vec<u32>,
    scratch: Vec<(f32, u32)>,
    eos: Option<u32>,
    chat: ChatTemplate,
    /// Requests whose KV outlives them (disaggregated prefill): marked at add time,
    /// moved to `held` when they finish, until exported or dropped.
    hold_on_finish: std::collections::HashSet<RequestId>,
    held: HashMap<RequestId, HeldKv>,
}

/// A finished request's KV, kept for export: its computed tokens and block table.
#[derive(Debug)]
struct HeldKv {
    n_tokens: usize,
    table: Vec<u32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("backend", &self.backend.name()).field("stats", &self.stats).finish()
    }
}

impl Engine {
    /// Build from a ready backend (its KV cache must have `cfg.num_kv_blocks`).
    pub fn new(backend: Box<dyn Backend>, tokenizer: Tokenizer, cfg: EngineConfig) -> Result<Engine, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        if backend.num_kv_blocks() != cfg.num_kv_blocks {
            return Err(EngineError::Config("backend KV cache size differs from num_kv_blocks".into()));
        }
        let model_len = backend.config().context_len.max(1);
        let sched = Scheduler::new(SchedulerConfig {
            max_num_seqs: cfg.max_num_seqs,
            max_batched_tokens: cfg.max_batched_tokens,
            max_model_len: cfg.max_model_len.min(model_len),
            max_waiting: cfg.max_waiting,
            num_kv_blocks: cfg.num_kv_blocks,
            enable_prefix_caching: cfg.enable_prefix_caching,
        });
        let eos = tokenizer.eos;
        Ok(Engine {
            backend,
            tokenizer,
            sched,
            requests: HashMap::new(),
            pending: Vec::new(),
            stats: EngineStats { kv_blocks_total: cfg.num_kv_blocks, ..Default::default() },
            cfg,
            logits: Vec::new(),
            greedy: Vec::new(),
            scratch: Vec::new(),
            eos,
            chat: ChatTemplate { default_system: None },
            hold_on_finish: Default::default(),
            held: HashMap::new(),
        })
    }

    /// Use the model's chat template (from its GGUF) for `render_chat`.
    pub fn with_chat(mut self, chat: ChatTemplate) -> Engine {
        self.chat = chat;
        self
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat
    }

    /// Render messages with the chat template (plus the assistant turn opener)
    /// and tokenize, special tokens parsed.
    pub fn render_chat(&self, messages: &[Message]) -> Result<Vec<u32>, crate::LlmError> {
        let (text, trusted) = self.chat.render_marked(messages, true)?;
        Ok(self.tokenizer.encode_trusted(&text, &trusted)?)
    }

    /// Stop ids a chat turn should end on: EOS and `<|im_end|>` when present.
    pub fn chat_stop_ids(&self) -> Vec<u32> {
        self.tokenizer.eos.into_iter().chain(self.tokenizer.special_id("<|im_end|>")).collect()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    /// Longest prompt + max_tokens accepted.
    pub fn max_sequence_len(&self) -> usize {
        self.sched.max_len()
    }

    /// Queue a request. `priority`: higher is scheduled first (and preempted last).
    pub fn add_request(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<(), EngineError> {
        params.validate().map_err(EngineError::BadParams)?;
        let vocab = self.backend.config().vocab;
        if let Some(t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadParams(format!("prompt token {t} out of vocabulary ({vocab})")));
        }
        if self.requests.contains_key(&id) {
            return Err(EngineError::Schedule(ScheduleError::Duplicate(id)));
        }
        let prompt_len = prompt.len();
        self.sched.add(id, prompt, params.max_tokens, priority)?;
        let seed = params.seed.unwrap_or(self.cfg.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let text = TextStream::new(params.stop.clone());
        self.requests.insert(id, Request { rng: Rng::new(seed), params, prompt_len, generated: 0, text });
        Ok(())
    }

    /// Queue a request whose KV is kept when it finishes (disaggregated prefill: run the
    /// prompt, sample the first token, then [`Engine::export_held`] hands the KV to a
    /// decode engine). Typically `params.max_tokens == 1`. At most `max_num_seqs` such
    /// requests may be queued or held at once.
    pub fn add_request_held(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<(), EngineError> {
        if self.hold_on_finish.len() + self.held.len() >= self.cfg.max_num_seqs {
            return Err(EngineError::Schedule(ScheduleError::Busy(self.cfg.max_num_seqs)));
        }
        self.add_request(id, prompt, params, priority)?;
        self.hold_on_finish.insert(id);
        Ok(())
    }

    /// The KV of a finished held request (positions `0..n` of its computed tokens: the
    /// prompt), copied out of the cache; its blocks are released. `None` when `id` is not
    /// held (never marked, cancelled, or already exported).
    pub fn export_held(&mut self, id: RequestId) -> Option<Result<KvBlocks, EngineError>> {
        let mut h = self.held.remove(&id)?;
        let cfg = self.backend.config();
        let (n_layer, kv_dim) = (cfg.n_layer, cfg.kv_dim());
        let n_blocks = h.n_tokens.div_ceil(BLOCK_SIZE);
        let mut data = Vec::with_capacity(n_blocks * crate::kv::transfer::block_len(n_layer, kv_dim));
        let r = self.backend.read_blocks(&h.table[..n_blocks.min(h.table.len())], &mut data);
        self.sched.blocks.release_table(&mut h.table);
        Some(r.map(|()| KvBlocks { n_tokens: h.n_tokens, n_layer, kv_dim, data }).map_err(EngineError::from))
    }

    /// Drop a held request's KV (the decode side went away). False if not held.
    pub fn drop_held(&mut self, id: RequestId) -> bool {
        self.hold_on_finish.remove(&id);
        match self.held.remove(&id) {
            Some(mut h) => {
                self.sched.blocks.release_table(&mut h.table);
                true
            }
            None => false,
        }
    }

    /// Requests holding KV for export.
    pub fn num_held(&self) -> usize {
        self.held.len()
    }

    /// Continue a request whose prompt was computed by another engine of the same model:
    /// `kv` holds the prompt's K/V, `first_token` was sampled from its last position. The
    /// request runs at once (decode); `first_token` is reported with the next `step()` as
    /// its first output, so the stream reads as if it had been generated here.
    /// `params.max_tokens` counts `first_token`. Refused without side effects when the
    /// blocks or a running slot are not free now (`ScheduleError::NoRoom` / `Busy`: retry
    /// after a step).
    pub fn import_request(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        first_token: u32,
        kv: &KvBlocks,
        params: SamplingParams,
        priority: i32,
    ) -> Result<(), EngineError> {
        params.validate().map_err(EngineError::BadParams)?;
        let cfg = self.backend.config();
        kv.check(cfg.n_layer, cfg.kv_dim()).map_err(|e| EngineError::BadParams(e.to_string()))?;
        let vocab = cfg.vocab;
        if let Some(t) = prompt.iter().chain([&first_token]).find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadParams(format!("token {t} out of vocabulary ({vocab})")));
        }
        if kv.n_tokens != prompt.len() {
            return Err(EngineError::BadParams(format!(
                "KV covers {} tokens, the prompt has {}",
                kv.n_tokens,
                prompt.len()
            )));
        }
        if self.requests.contains_key(&id) {
            return Err(EngineError::Schedule(ScheduleError::Duplicate(id)));
        }
        let n = prompt.len();
        let mut tokens = prompt;
        tokens.push(first_token);
        let table = self.sched.add_computed(id, tokens, n, params.max_tokens, priority)?;
        if let Err(e) = self.backend.write_blocks(&table, &kv.data) {
            self.sched.finish(id);
            return Err(e.into());
        }
        let seed = params.seed.unwrap_or(self.cfg.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut req = Request {
            rng: Rng::new(seed),
            text: TextStream::new(params.stop.clone()),
            params,
            prompt_len: n,
            generated: 1,
        };
        let mut out = StepOutput { id, new_tokens: vec![first_token], text_delta: String::new(), finished: None };
        let is_stop_tok = (!req.params.ignore_eos && Some(first_token) == self.eos)
            || req.params.stop_token_ids.contains(&first_token);
        if is_stop_tok {
            out.finished = Some(FinishReason::Stop);
        } else {
            let bytes = self.tokenizer.token_bytes(first_token).unwrap_or(&[]);
            let (delta, hit) = req.text.push(bytes);
            out.text_delta = delta;
            if hit {
                out.finished = Some(FinishReason::Stop);
            } else if req.generated >= req.params.max_tokens || n + 1 >= self.sched.max_len() {
                out.finished = Some(FinishReason::Length);
            }
        }
        self.stats.tokens_generated += 1;
        if out.finished.is_some() {
            out.text_delta.push_str(&req.text.finish());
            self.sched.finish(id);
        } else {
            self.requests.insert(id, req);
        }
        self.pending.push(out);
        Ok(())
    }

    /// Cancel a request; its final output (reason `Cancelled`) comes with the
    /// next `step()`. Returns false for an unknown or finished request.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.hold_on_finish.remove(&id);
        let Some(mut r) = self.requests.remove(&id) else { return false };
        self.sched.finish(id);
        self.pending.push(StepOutput {
            id,
            new_tokens: Vec::new(),
            text_delta: r.text.finish(),
            finished: Some(FinishReason::Cancelled),
        });
        true
    }

    /// Whether `step()` has anything to do.
    pub fn has_work(&self) -> bool {
        !self.sched.is_empty() || !self.pending.is_empty()
    }

    pub fn stats(&self) -> EngineStats {
        let b = &self.sched.blocks;
        EngineStats {
            running: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
            kv_blocks_used: b.num_used(),
            prefix_queries: b.stats.queries,
            prefix_hits: b.stats.hits,
            prefix_evictions: b.stats.evictions,
            preemptions: self.sched.total_preemptions,
            ..self.stats
        }
    }

    /// Run one iteration: schedule, compute, sample. Returns one output per
    /// request that produced a token, text, or finished.
    pub fn step(&mut self) -> Result<Vec<StepOutput>, EngineError> {
        let mut outputs = std::mem::take(&mut self.pending);
        let plan = self.sched.schedule();
        if plan.scheduled.is_empty() {
            return Ok(outputs);
        }
        let all_greedy = plan
            .scheduled
            .iter()
            .filter(|s| s.want_logits)
            .all(|s| self.requests.get(&s.id).is_some_and(|r| r.params.temperature <= 0.0));
        self.run_backend(&plan, all_greedy)?;
        self.sched.on_computed(&plan);
        self.stats.steps += 1;
        let vocab = self.backend.config().vocab;
        let mut row = 0;
        for sc in &plan.scheduled {
            let Some(req) = self.requests.get_mut(&sc.id) else { continue };
            let seq_len = self.sched.get(sc.id).map_or(0, |s| s.tokens.len());
            // A decode is one new token past the prompt; anything else (prompt
            // chunks, recompute after preemption) counts as prefill.
            if sc.n_tokens > 1 || sc.start < req.prompt_len {
                self.stats.prefill_tokens += sc.n_tokens as u64;
            }
            if !sc.want_logits {
                continue;
            }
            let tok = if all_greedy {
                self.greedy[row]
            } else {
                sample(&self.logits[row * vocab..(row + 1) * vocab], &req.params, &mut req.rng, &mut self.scratch)
            };
            row += 1;
            req.generated += 1;
            self.stats.tokens_generated += 1;
            let is_stop_tok =
                (!req.params.ignore_eos && Some(tok) == self.eos) || req.params.stop_token_ids.contains(&tok);
            let mut out = StepOutput { id: sc.id, new_tokens: vec![tok], text_delta: String::new(), finished: None };
            if is_stop_tok {
                out.finished = Some(FinishReason::Stop);
            } else {
                let bytes = self.tokenizer.token_bytes(tok).unwrap_or(&[]);
                let (delta, hit) = req.text.push(bytes);
                out.text_delta = delta;
                if hit {
                    out.finished = Some(FinishReason::Stop);
                } else if req.generated >= req.params.max_tokens || seq_len + 1 >= self.sched.max_len() {
                    out.finished = Some(FinishReason::Length);
                }
            }
            if out.finished.is_some() {
                out.text_delta.push_str(&req.text.finish());
                self.requests.remove(&sc.id);
                if self.hold_on_finish.remove(&sc.id) {
                    // Keep the KV (the prompt's positions) for export.
                    if let Some(s) = self.sched.detach(sc.id) {
                        self.held.insert(sc.id, HeldKv { n_tokens: s.num_computed, table: s.block_table });
                    }
                } else {
                    self.sched.finish(sc.id);
                }
            } else {
                self.sched.append_token(sc.id, tok);
            }
            outputs.push(out);
        }
        Ok(outputs)
    }

    fn run_backend(&mut self, plan: &Plan, all_greedy: bool) -> Result<(), EngineError> {
        let mut tokens = Vec::with_capacity(plan.n_tokens());
        let mut positions = Vec::with_capacity(plan.n_tokens());
        let mut slots = Vec::with_capacity(plan.n_tokens());
        let mut metas = Vec::with_capacity(plan.scheduled.len());
        for sc in &plan.scheduled {
            let s = self.sched.get(sc.id).ok_or(EngineError::Internal("scheduled sequence vanished"))?;
            let start = tokens.len();
            for p in sc.start..sc.start + sc.n_tokens {
                tokens.push(s.tokens[p]);
                positions.push(p as u32);
                slots.push(s.block_table[p / BLOCK_SIZE] * BLOCK_SIZE as u32 + (p % BLOCK_SIZE) as u32);
            }
            metas.push((start, sc));
        }
        let seqs: Vec<SeqBatch<'_>> = metas
            .iter()
            .map(|&(start, sc)| {
                let s = self.sched.get(sc.id).map_or(&[][..], |s| s.block_table.as_slice());
                SeqBatch {
                    token_start: start,
                    n_tokens: sc.n_tokens,
                    context_len: sc.start + sc.n_tokens,
                    block_table: s,
                    want_logits: sc.want_logits,
                }
            })
            .collect();
        if !plan.copies.is_empty() {
            self.backend.copy_blocks(&plan.copies)?;
        }
        let batch = Batch { tokens: &tokens, positions: &positions, slots: &slots, seqs: &seqs };
        if all_greedy {
            self.backend.forward_argmax(&batch, &mut self.greedy)?;
        } else {
            self.backend.forward(&batch, &mut self.logits)?;
        }
        Ok(())
    }
}
