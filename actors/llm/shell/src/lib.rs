//! System 01, LLM inference serving, as actors on the troupe runtime
//! (topology `systems/llm-serving.toml`, docs/llm-serving.md).
//!
//! ```text
//! client ──HTTP/SSE──► gateway (per gateway node) ── auth, validate, tokenize
//!                        │  breaker per pool ─► 503 fail fast
//!                        │  rate-limiter system: requests/min AND tokens/min, user + org ─► 429
//!                        │  router (same node): session ▸ prefix ▸ least loaded
//!                        ▼
//!                      worker (per gpu node, one engine on its OS thread, priority queue)
//!                        └─ disaggregated: decode worker ◄─KV stream── prefill worker
//!                      scaler (singleton): active ↔ warm per pool, from queue depth
//! ```
//!
//! Pure cores, each with its guarantees in its module docs and tests: [`queue`] (paid >
//! free, short > long, linear aging: no starvation), [`breaker`] (closed / open /
//! half-open), [`route`] (affinity with a load guard), [`scale`] (queue-depth scaling
//! within declared capacity, warm pool), [`openai`] (the API's parsing and shapes). The
//! shells ([`gateway`], [`router`], [`worker`], [`scaler`], [`engine_thread`]) only move
//! messages. The engine is the `troupe-llm` crate.

pub mod cli;
/// The pure parts of LLM serving, from the core crate (`troupe_llm::serving`).
pub use troupe_llm::serving::{breaker, openai, proto, queue, route, scale};
pub mod config;
pub mod engine_thread;
pub mod fetch;
pub mod gateway;
#[cfg(feature = "lab")]
pub mod lab;
pub mod metrics;
pub mod router;
pub mod scaler;
pub mod top;
pub mod worker;

/// Registers the system's kinds under their factory names.
/// LLM serving as the `troupe` binary sees it (`src/systems.rs`): its kinds, the models
/// `troupe up` pulls, `troupe lab llm-serving`, `troupe models`/`troupe generate` and the
/// `troupe top` panel.
pub struct LlmServing;

impl troupe_system::System for LlmServing {
    fn name(&self) -> &'static str {
        "llm-serving"
    }
    fn register(&self, kinds: &mut troupe_runtime::KindRegistry) {
        register(kinds)
    }
    fn prepare(&self, cluster: &troupe_runtime::Loaded) -> anyhow::Result<()> {
        pull_models(cluster)
    }
    #[cfg(feature = "lab")]
    fn lab(&self) -> Option<troupe_system::Command> {
        Some(troupe_system::Command::args::<lab::driver::Args>(
            "llm-serving",
            "LLM serving, with the real engine: continuous vs static batching, prefix cache on/off, \
             unified vs disaggregated prefill/decode, routing policies on a calibrated simulation",
            lab::driver::run,
        ))
    }
    fn commands(&self) -> Vec<troupe_system::Command> {
        vec![
            troupe_system::Command::subcommands::<cli::ModelsCmd>(
                "models",
                "Download or list models (`troupe models pull smollm2-135m`)",
                |cmd| cli::run_models(cli::ModelsArgs { cmd }),
            ),
            troupe_system::Command::args::<cli::GenerateArgs>(
                "generate",
                "Generate text with a local model, streamed to stdout",
                cli::run_generate,
            ),
        ]
    }
    fn panel(&self) -> Option<&dyn troupe_system::Panel> {
        Some(&top::LlmPanel)
    }
}

/// Models the cluster's enabled topologies serve (`llm.worker` kinds naming a `troupe
/// models pull` model), sorted and without repeats.
pub fn needed_models(loaded: &troupe_runtime::Loaded) -> Vec<String> {
    let mut out: Vec<String> = loaded
        .topologies
        .iter()
        .flat_map(|t| &t.kinds)
        .filter(|k| k.factory == config::WORKER_FACTORY)
        .filter_map(|k| k.params.get("file").and_then(|v| v.as_str()))
        .filter(|f| troupe_llm::fetch::spec(f).is_ok())
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Downloads and checks the models the cluster needs before its nodes start, so that no
/// node pays for it.
fn pull_models(loaded: &troupe_runtime::Loaded) -> anyhow::Result<()> {
    use anyhow::Context;
    for m in needed_models(loaded) {
        if troupe_llm::fetch::locate(&m).is_some() {
            continue;
        }
        println!("troupe: first run: pulling model {m} (needed by the llm-serving workers)");
        let dir = troupe_llm::fetch::cache_dir();
        let path = crate::fetch::pull(&m, &dir, true).with_context(|| {
            format!("pulling model {m}; without network access run `troupe models pull {m}` where there is one")
        })?;
        println!("troupe: model {m} ready at {}", path.display());
    }
    Ok(())
}

/// Registers the system's kinds under their factory names.
pub fn register(kinds: &mut troupe_runtime::KindRegistry) {
    kinds.register::<worker::WorkerActor>(config::WORKER_FACTORY);
    kinds.register::<router::RouterActor>("llm.router");
    kinds.register::<scaler::ScalerActor>("llm.scaler");
    kinds.register::<gateway::GatewayActor>("llm.gateway");
}
