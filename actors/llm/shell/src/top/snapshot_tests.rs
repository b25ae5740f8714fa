//! The panel drawn with ratatui's TestBackend as `troupe top` lays it out: the fixture's
//! two snapshots a second apart (see `fixture::llm_metrics`), at 80 and 120 columns, cut
//! short, and stale. `troupe top`'s own tests check where a panel goes on the screen.

use super::fixture;
use troupe_system::Panel;
use troupe_system::screen::{assert_has, has, render};

/// The panel of node n1 drawn in `w` columns and at most `h` rows (as `troupe top`
/// gives it: its height, or less on a short screen).
fn screen(w: u16, h: Option<u16>, live: bool) -> Vec<String> {
    let view = super::LlmPanel.summarize(&fixture::snapshot(1), Some(&fixture::snapshot(0))).expect("n1 serves models");
    render(w, h.unwrap_or(view.height()), |f| view.draw(f, f.area(), "n1", live))
}

fn row<'a>(s: &'a [String], start: &str) -> &'a str {
    s.iter().find(|l| l.trim_start_matches('│').starts_with(start)).map(|l| l.as_str()).unwrap_or_else(|| {
        panic!("no row starting with {start:?}:\n{}", s.join("\n"));
    })
}

/// The cells of a table row, split on blanks (values never hold one).
fn cells(line: &str) -> Vec<&str> {
    line.trim_matches('│').split_whitespace().collect()
}

#[test]
fn panel_at_80_columns() {
    let s = screen(80, None, true);
    assert!(s.iter().all(|l| l.chars().count() == 80));
    assert_has(
        &s,
        &[
            "LLM serving n1 · last 1s · * since start",
            "MODEL",
            "TTFT p50",
            "TPOT p50",
            "pool worker      queue 1 · breaker closed · workers 2 active, 1 warm",
            "pool worker_fast queue 0 · breaker half-open · workers 1 active, 0 warm",
        ],
    );
    // The header's columns line up with the values under them.
    let header = row(&s, "MODEL");
    let big = row(&s, "smollm2-135m ");
    let col = |l: &str, i: usize| l.chars().skip(i).collect::<String>();
    let ttft_at = header.find("TTFT p50").map(|b| header[..b].chars().count()).expect("TTFT column");
    assert!(col(big, ttft_at).trim_start().starts_with("125ms"), "TTFT p50 of smollm2-135m:\n{big}");
    assert_eq!(
        cells(big),
        ["smollm2-135m", "3", "1", "42%", "75%", "240", "125ms", "248ms", "16ms", "25ms", "2"],
        "running, waiting, KV, hit rate, tok/s, TTFT p50 p99, TPOT p50 p99, errors"
    );
    assert!(!row(&s, " pool worker ").contains("smoll"), "a model that does not fit whole is left out");
    // The fast model was idle in the window: its figures are since start, marked.
    let fast = row(&s, "smollm2-135m-f");
    assert_eq!(
        cells(fast),
        ["smollm2-135m-fa…", "0", "0", "5%", "25%*", "0.0", "33ms*", "50ms*", "10ms*", "25ms*", "0"]
    );
}

#[test]
fn wider_shows_full_names_and_models_of_pools() {
    let s = screen(120, None, true);
    assert!(s.iter().all(|l| l.chars().count() == 120));
    let fast = row(&s, "smollm2-135m-fast ");
    assert_eq!(cells(fast)[0], "smollm2-135m-fast");
    assert_has(&s, &["breaker half-open · workers 1 active, 0 warm · smollm2-135m-fast"]);
}

#[test]
fn a_node_that_stopped_answering_is_stale_without_rates() {
    let s = screen(80, None, false);
    assert_has(&s, &["LLM serving n1 (stale)"]);
    assert_eq!(cells(row(&s, "smollm2-135m "))[5], "-", "no tokens/s from the past");
}

#[test]
fn a_short_panel_says_what_it_cuts() {
    // `troupe top` on an 80×18 screen gives the panel 5 rows.
    let s = screen(80, Some(5), true);
    assert_has(&s, &["LLM serving n1 · 2 more rows below", "smollm2-135m-fa…"]);
    assert!(!has(&s, " pool worker"), "the pools are the rows cut");
}
