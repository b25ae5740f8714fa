//! `troupe lab rate-limiter`: the core's seeded simulations of the rate limiter's design
//! decisions, and a live fail-open vs fail-closed experiment on a real 3-node cluster.
//!
//! (a) the fixed window's boundary burst vs the sliding counter and the exact log;
//! (b) each algorithm's accuracy against the exact log, at several offered loads;
//! (c) fail-open vs fail-closed while a shard owner is unreachable (simulated);
//! (d) a global limit leased to nodes: accuracy vs owner round trips, by slice size;
//! (e) live: SIGKILL of a shard owner while a fail-open and a fail-closed rule are under load
//!     (skipped with `--no-live`; see `live.rs`).
//!
//! Prints the numbers, writes PNG plots, `summary.txt` and `report.json` into `--out`.

mod live;

use anyhow::Context;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;
use troupe_chart::{Line, LineChart, render_lines_png};
use troupe_limiter::AlgorithmKind;
use troupe_limiter::lab::accuracy::{AccuracyConfig, run_accuracy};
use troupe_limiter::lab::boundary::{BoundaryConfig, run_boundary};
use troupe_limiter::lab::failmode::{FailModeConfig, run_failmode, run_failmode_series};
use troupe_limiter::lab::leasing::{LeasingConfig, run_leasing};
use troupe_limiter::lab::plot::render_boundary_png;
use troupe_limiter::rules::FailMode;

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the plots, summary.txt and report.json (created if missing).
    #[arg(long, default_value = "lab-results/rate-limiter")]
    pub out: PathBuf,
    /// Skip the live experiment on a real 3-node cluster (about 30 s).
    #[arg(long)]
    pub no_live: bool,
}

/// Per offered load: (load, misjudged %, most admitted in a rolling window).
type AccuracyPoints = Vec<(f64, f64, u64)>;

/// Offered loads of experiment (b), as fractions of the limit.
const LOADS: [f64; 4] = [0.5, 0.8, 0.95, 1.2];
const PLOT_W: u32 = 1000;
const PLOT_H: u32 = 520;

fn policy(m: Option<FailMode>) -> &'static str {
    match m {
        None => "ideal (owner always up)",
        Some(FailMode::Open) => "fail-open",
        Some(FailMode::Closed) => "fail-closed",
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut s = String::new();
    let mut report = serde_json::Map::new();
    let mut plots: Vec<(&str, Vec<u8>)> = Vec::new();

    // (a)
    let b = run_boundary(&BoundaryConfig::default())?;
    let _ = writeln!(
        s,
        "(a) boundary burst: L = {} per {} s; a client sends L just before and L just after every other boundary",
        b.config.limit,
        b.config.window_ns / 1_000_000_000
    );
    for series in &b.series {
        let _ = writeln!(
            s,
            "    {:<16} most admitted in any rolling window: {}",
            series.kind.as_str(),
            series.max_in_any_window
        );
    }
    report.insert(
        "boundary".into(),
        serde_json::json!(b.series.iter().map(|x| (x.kind.as_str(), x.max_in_any_window)).collect::<Vec<_>>()),
    );
    plots.push(("boundary.png", render_boundary_png(&b, PLOT_W, PLOT_H)?));

    // (b)
    let _ = writeln!(s, "\n(b) accuracy against the exact log (misjudged = decisions the log would reverse)");
    let _ = writeln!(s, "    {:<16} {}", "offered load", LOADS.map(|l| format!("{:>8}", format!("{l} L"))).join(""));
    let mut by_kind: Vec<(AlgorithmKind, AccuracyPoints)> =
        AlgorithmKind::ALL.iter().map(|k| (*k, Vec::new())).collect();
    for load in LOADS {
        let r = run_accuracy(&AccuracyConfig { load, ..AccuracyConfig::default() })?;
        for row in &r.rows {
            if let Some((_, v)) = by_kind.iter_mut().find(|(k, _)| *k == row.kind) {
                v.push((load, row.misjudged_rate * 100.0, row.max_in_any_window));
            }
        }
    }
    for (k, v) in &by_kind {
        let cells: String = v.iter().map(|(_, pct, _)| format!("{:>7.1}%", pct)).collect();
        let max = v.last().map_or(0, |x| x.2);
        let _ = writeln!(s, "    {:<16} {cells}   (max in a window at 1.2 L: {max})", k.as_str());
    }
    report.insert(
        "accuracy".into(),
        serde_json::json!(by_kind.iter().map(|(k, v)| (k.as_str(), v.clone())).collect::<Vec<_>>()),
    );
    let chart = LineChart {
        title: "Misjudged decisions vs the exact sliding log".into(),
        x_desc: "offered load (x limit)".into(),
        y_desc: "misjudged (% of requests)".into(),
        lines: by_kind
            .iter()
            .map(|(k, v)| Line { label: k.as_str().into(), points: v.iter().map(|(l, p, _)| (*l, *p)).collect() })
            .collect(),
        levels: Vec::new(),
        shade: None,
    };
    plots.push(("accuracy.png", render_lines_png(&chart, PLOT_W, PLOT_H)?));

    // (c)
    let cfg = FailModeConfig::default();
    let f = run_failmode(&cfg)?;
    let _ = writeln!(
        s,
        "\n(c) fail modes (simulated): {} at {}x the limit {} per s, owner unreachable {}-{} s of {} s, state lost on re-homing",
        cfg.kind.as_str(),
        cfg.load,
        cfg.limit,
        cfg.outage_start_ns / 1_000_000_000,
        cfg.outage_end_ns / 1_000_000_000,
        cfg.windows
    );
    let _ = writeln!(s, "    offered {} ({} during the outage)", f.offered, f.offered_in_outage);
    for row in &f.rows {
        let _ = writeln!(
            s,
            "    {:<24} admitted {:>5} ({:>4} during the outage), most in a rolling window {}",
            policy(row.mode),
            row.admitted,
            row.admitted_in_outage,
            row.max_in_any_window
        );
    }
    report.insert(
        "failmode".into(),
        serde_json::json!(
            f.rows
                .iter()
                .map(|r| serde_json::json!({
            "policy": policy(r.mode), "admitted": r.admitted, "admitted_in_outage": r.admitted_in_outage,
            "max_in_any_window": r.max_in_any_window }))
                .collect::<Vec<_>>()
        ),
    );
    let series = run_failmode_series(&cfg, 20)?;
    let secs = |ns: u64| ns as f64 / 1e9;
    let chart = LineChart {
        title: format!(
            "Admitted in the trailing 1 s window; owner down {}-{} s",
            secs(cfg.outage_start_ns),
            secs(cfg.outage_end_ns)
        ),
        x_desc: "time (s)".into(),
        y_desc: "admitted in window".into(),
        lines: series
            .series
            .iter()
            .map(|(m, v)| Line {
                label: policy(*m).into(),
                points: series.samples_ns.iter().zip(v).map(|(t, c)| (secs(*t), *c as f64)).collect(),
            })
            .collect(),
        levels: vec![(cfg.limit as f64, "limit".into())],
        shade: Some((secs(cfg.outage_start_ns), secs(cfg.outage_end_ns), "owner unreachable".into())),
    };
    plots.push(("failmode.png", render_lines_png(&chart, PLOT_W, PLOT_H)?));

    // (d)
    let lc = LeasingConfig::default();
    let l = run_leasing(&lc);
    let _ = writeln!(
        s,
        "\n(d) global limit {} per s leased to {} nodes, demand moving between them every {} ms, one-way delay {} ms",
        lc.limit,
        lc.nodes,
        lc.phase_ns / 1_000_000,
        lc.one_way_ns / 1_000_000
    );
    for row in &l.rows {
        let _ = writeln!(
            s,
            "    slice_min {:>3}% of L: used {:>5.1}% of the limit, {:>6.1} owner round trips per window, most in a window {}",
            row.slice_min_percent,
            row.utilization * 100.0,
            row.requests_per_window,
            row.max_per_window
        );
    }
    report.insert(
        "leasing".into(),
        serde_json::json!(
            l.rows
                .iter()
                .map(|r| serde_json::json!({
            "slice_min_percent": r.slice_min_percent, "utilization": r.utilization,
            "requests_per_window": r.requests_per_window, "max_per_window": r.max_per_window }))
                .collect::<Vec<_>>()
        ),
    );
    let chart = LineChart {
        title: format!("Leasing a global limit of {} per s to {} nodes", lc.limit, lc.nodes),
        x_desc: "slice_min (% of the limit)".into(),
        y_desc: "% of the limit used  /  round trips per window".into(),
        lines: vec![
            Line {
                label: "limit used (%)".into(),
                points: l.rows.iter().map(|r| (r.slice_min_percent as f64, r.utilization * 100.0)).collect(),
            },
            Line {
                label: "owner round trips per window".into(),
                points: l.rows.iter().map(|r| (r.slice_min_percent as f64, r.requests_per_window)).collect(),
            },
        ],
        levels: vec![(100.0, "100%".into())],
        shade: None,
    };
    plots.push(("leasing.png", render_lines_png(&chart, PLOT_W, PLOT_H)?));

    // (e)
    print!("{s}");
    let printed = s.len();
    if a.no_live {
        let _ = writeln!(s, "\n(e) live experiment skipped (--no-live)");
    } else {
        eprintln!("\n(e) live: starting a 3-node cluster ...");
        let r = live::run().context("live fail-mode experiment")?;
        let _ = write!(s, "{}", r.summary());
        report.insert("live".into(), r.json());
        plots.push(("live-failmode.png", render_lines_png(&r.chart(), PLOT_W, PLOT_H)?));
    }

    print!("{}", &s[printed..]);
    let mut written = Vec::new();
    for (name, png) in plots {
        let p = a.out.join(name);
        std::fs::write(&p, png).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    let p = a.out.join("summary.txt");
    std::fs::write(&p, &s).with_context(|| format!("writing {}", p.display()))?;
    written.push(p);
    let p = a.out.join("report.json");
    std::fs::write(&p, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", p.display()))?;
    written.push(p);
    println!("done in {:.1} s; wrote:", started.elapsed().as_secs_f64());
    for p in written {
        println!("  {}", p.display());
    }
    Ok(())
}
