//! Runs the url-shortener lab and writes its plots: what `troupe lab url-shortener` wraps.
//!
//! `cargo run --release -p troupe-shortener --example lab -- [OUT_DIR] [--quick] [--seed N]`

use std::path::PathBuf;

use troupe_shortener::lab::{LabScale, run_all};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut out_dir = PathBuf::from("target/lab");
    let (mut scale, mut seed) = (LabScale::Full, 2026u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => scale = LabScale::Quick,
            "--seed" => seed = args.next().ok_or("--seed needs a number")?.parse()?,
            dir => out_dir = PathBuf::from(dir),
        }
    }
    let started = std::time::Instant::now();
    let report = run_all(seed, scale)?;
    print!("{}", report.summary());
    std::fs::create_dir_all(&out_dir)?;
    for (name, png) in report.plots()? {
        let path = out_dir.join(name);
        std::fs::write(&path, png)?;
        println!("wrote {}", path.display());
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
