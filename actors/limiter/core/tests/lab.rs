//! Lab simulations: deterministic, and showing what each is meant to show.

use troupe_limiter::AlgorithmKind;
use troupe_limiter::lab::accuracy::{AccuracyConfig, run_accuracy};
use troupe_limiter::lab::boundary::{BoundaryConfig, run_boundary};
use troupe_limiter::lab::failmode::{FailModeConfig, run_failmode};
use troupe_limiter::rules::FailMode;

#[test]
fn boundary_lab_shows_the_fixed_window_burst() {
    let cfg = BoundaryConfig::default();
    let r = run_boundary(&cfg).expect("valid config");
    assert_eq!(r, run_boundary(&cfg).expect("valid config"), "same seed, same numbers");
    let max = |k| r.series.iter().find(|s| s.kind == k).expect("series").max_in_any_window;
    eprintln!(
        "boundary: fixed {} counter {} log {}",
        max(AlgorithmKind::FixedWindow),
        max(AlgorithmKind::SlidingCounter),
        max(AlgorithmKind::SlidingLog)
    );
    assert!(max(AlgorithmKind::FixedWindow) >= 2 * cfg.limit - 2, "fixed window should nearly double the limit");
    assert!(max(AlgorithmKind::SlidingCounter) < max(AlgorithmKind::FixedWindow));
    assert!(max(AlgorithmKind::SlidingCounter) < 2 * cfg.limit);
    assert_eq!(max(AlgorithmKind::SlidingLog), cfg.limit);
    assert!(r.series.iter().all(|s| s.trailing.len() == r.samples_ns.len()));
}

#[test]
fn accuracy_lab_against_the_log() {
    let cfg = AccuracyConfig::default();
    let r = run_accuracy(&cfg).expect("valid config");
    for row in &r.rows {
        eprintln!(
            "{:16} admitted {:6} misjudged {:5}+{:5} ({:.4}) false_admits {:5} ({:.4}) false_denies {:5} ({:.4}) max/window {}",
            row.kind.as_str(),
            row.admitted,
            row.misjudged_admits,
            row.misjudged_denies,
            row.misjudged_rate,
            row.false_admits,
            row.false_admit_rate,
            row.false_denies,
            row.false_deny_rate,
            row.max_in_any_window
        );
    }
    let row = |k| *r.rows.iter().find(|x| x.kind == k).expect("row");
    let log = row(AlgorithmKind::SlidingLog);
    assert_eq!((log.false_admits, log.false_denies, log.misjudged_admits, log.misjudged_denies), (0, 0, 0, 0));
    assert!(log.max_in_any_window <= cfg.limit);
    let tb = row(AlgorithmKind::TokenBucket);
    let gcra = row(AlgorithmKind::Gcra);
    assert_eq!((tb.admitted, tb.false_admits, tb.false_denies), (gcra.admitted, gcra.false_admits, gcra.false_denies));
    // The counter's estimate is close to exact on Poisson traffic; the fixed window is worse.
    let sc = row(AlgorithmKind::SlidingCounter);
    let fw = row(AlgorithmKind::FixedWindow);
    assert!(sc.misjudged_rate < fw.misjudged_rate);
    assert!(sc.misjudged_rate < tb.misjudged_rate);
    assert!(sc.max_in_any_window < fw.max_in_any_window);
    assert!(sc.misjudged_rate < 0.05, "counter misjudged {:.4}", sc.misjudged_rate);
}

#[test]
fn failmode_lab_contrasts_open_and_closed() {
    let cfg = FailModeConfig::default();
    let r = run_failmode(&cfg).expect("valid config");
    for row in &r.rows {
        eprintln!("{:?}: {:?}", row.mode, row);
    }
    let row = |m| *r.rows.iter().find(|x| x.mode == m).expect("row");
    let (ideal, open, closed) = (row(None), row(Some(FailMode::Open)), row(Some(FailMode::Closed)));
    assert_eq!(open.admitted_in_outage, r.offered_in_outage, "fail-open admits everything in the outage");
    assert_eq!(closed.admitted_in_outage, 0, "fail-closed admits nothing in the outage");
    assert!(open.admitted_in_outage > ideal.admitted_in_outage);
    assert!(closed.admitted_in_outage < ideal.admitted_in_outage);
    assert!(open.max_in_any_window > cfg.limit, "fail-open breaks the limit at 2x load");
    assert_eq!(ideal.admitted + ideal.denied, r.offered);
}

#[cfg(feature = "plot")]
#[test]
fn boundary_plot_is_a_png() {
    let r = run_boundary(&BoundaryConfig::default()).expect("valid config");
    let png = troupe_limiter::lab::plot::render_boundary_png(&r, 900, 500).expect("rendered");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 5_000);
    if let Ok(dir) = std::env::var("LIMITER_PLOT_DIR") {
        std::fs::write(format!("{dir}/boundary.png"), &png).expect("write plot");
    }
}

#[test]
fn leasing_lab_never_exceeds_the_limit_and_shows_the_trade_off() {
    use troupe_limiter::lab::leasing::{LeasingConfig, run_leasing};
    let cfg = LeasingConfig::default();
    let r = run_leasing(&cfg);
    assert_eq!(r, run_leasing(&cfg), "same seed, same numbers");
    for row in &r.rows {
        eprintln!(
            "slice_min {:3}%: utilization {:.3} requests/window {:7.1} max/window {}",
            row.slice_min_percent, row.utilization, row.requests_per_window, row.max_per_window
        );
        assert!(row.max_per_window <= cfg.limit, "leasing must never over-admit: {row:?}");
    }
    let (small, big) = (r.rows.first().expect("rows"), r.rows.last().expect("rows"));
    assert!(small.requests_per_window > 5.0 * big.requests_per_window, "small slices cost round trips");
    assert!(big.utilization < small.utilization, "big slices strand quota on light nodes");
}
