//! Standalone build of the root binary's `troupe models` / `troupe generate`
//! commands (actors/llm/shell/src/cli.rs), so the CLI is compiled and usable from this crate:
//! `cargo run -p troupe-llm --release --features fetch --example llm_cli -- generate --prompt "Hi"`.

#[path = "../../shell/src/cli.rs"]
mod llm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Models(llm::ModelsArgs),
    Generate(llm::GenerateArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Models(a) => llm::run_models(a),
        Cmd::Generate(a) => llm::run_generate(a),
    }
}
