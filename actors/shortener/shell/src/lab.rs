//! `troupe lab url-shortener`: runs the core's three experiments
//! (`troupe_shortener::lab::run_all`) and writes their plots, a summary and the raw
//! numbers (JSON) into `--out`.

use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;
use troupe_shortener::lab::{LabScale, run_all};

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the plots, summary.txt and report.json (created if missing).
    #[arg(long, default_value = "lab-results/url-shortener")]
    pub out: PathBuf,
    /// Seed of every simulation: the same seed gives the same numbers.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Small runs (seconds in a debug build) instead of the documented full scale.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let scale = if a.quick { LabScale::Quick } else { LabScale::Full };
    eprintln!("running the url-shortener lab ({scale:?} scale, seed {}) ...", a.seed);
    let started = Instant::now();
    let report = run_all(a.seed, scale).context("running the lab")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut written = Vec::new();
    for (name, png) in report.plots().context("plotting")? {
        let p = a.out.join(name);
        std::fs::write(&p, png).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    let summary = report.summary();
    let p = a.out.join("summary.txt");
    std::fs::write(&p, &summary).with_context(|| format!("writing {}", p.display()))?;
    written.push(p);
    let p = a.out.join("report.json");
    std::fs::write(&p, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", p.display()))?;
    written.push(p);
    print!("{summary}");
    println!("done in {:.1} s; wrote:", started.elapsed().as_secs_f64());
    for p in written {
        println!("  {}", p.display());
    }
    Ok(())
}
