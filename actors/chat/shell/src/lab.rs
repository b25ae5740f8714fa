//! `troupe lab chat`: runs the core's experiments (`troupe_chat::lab::run_all`) and
//! writes their plots, a summary and the raw numbers (JSON) into `--out`.

use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the plots, summary.txt and report.json (created if missing).
    #[arg(long, default_value = "lab-results/chat")]
    pub out: PathBuf,
    /// Seed of every simulation: the same seed gives the same numbers.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Small runs instead of the documented full scale.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    eprintln!("running the chat lab (seed {}{}) ...", a.seed, if a.quick { ", quick" } else { "" });
    let started = Instant::now();
    let report = troupe_chat::lab::run_all(a.seed, a.quick).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut written = Vec::new();
    for (name, png) in report.plots().map_err(anyhow::Error::msg)? {
        let p = a.out.join(name);
        std::fs::write(&p, png).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    let summary = report.summary();
    for (name, bytes) in
        [("summary.txt", summary.clone().into_bytes()), ("report.json", serde_json::to_vec_pretty(&report)?)]
    {
        let p = a.out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    print!("{summary}");
    println!("done in {:.1} s; wrote:", started.elapsed().as_secs_f64());
    for p in written {
        println!("  {}", p.display());
    }
    Ok(())
}
