//! Draws the LLM serving panel: one row per model (requests, KV cache, prefix hits,
//! tokens/s, TTFT and TPOT percentiles, errors) under a header, then one line per pool
//! (queue, breaker, workers).
//!
//! Invariants: a row fits 80 columns (the model name is cut first, with `…`; every value
//! is at most 6 columns, so columns never run together); a figure
//! that is not over the window is marked `*` and the title says what `*` means; a
//! missing figure is `-`, never 0; breaker states are words.

use super::{Breaker, ModelStats, PoolStats, Serving};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

/// Columns after the model's name: header and width (values are right-aligned).
const COLUMNS: [(&str, usize); 10] = [
    ("RUN", 4),
    ("WAIT", 5),
    ("KV%", 5),
    ("HIT%", 6),
    ("TOK/S", 6),
    ("TTFT p50", 9),
    ("p99", 7),
    ("TPOT p50", 9),
    ("p99", 7),
    ("ERR", 4),
];

/// Rows the panel wants, borders included.
pub fn height(s: &Serving) -> u16 {
    (s.models.len() + s.pools.len() + 1 + 2) as u16
}

/// Seconds as a latency in at most 5 columns: `850µs`, `4.2ms`, `125ms`, `1.25s`, `60.0s`.
/// Decided on the rounded figure, so 9.97 ms is `10ms`, not `10.0ms`.
pub fn secs(v: f64) -> String {
    let (us, ms) = (v * 1e6, v * 1e3);
    match v {
        _ if us < 999.5 => format!("{us:.0}µs"),
        _ if ms < 9.95 => format!("{ms:.1}ms"),
        _ if ms < 999.5 => format!("{ms:.0}ms"),
        v if v < 9.995 => format!("{v:.2}s"),
        v => format!("{v:.1}s"),
    }
}

/// A count in at most 4 columns: `7`, `950`, `12k`, `3.4M`.
fn count(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 999.5 => format!("{v:.0}"),
        Some(v) if v < 9_950.0 => format!("{:.1}k", v / 1e3),
        Some(v) if v < 999_500.0 => format!("{:.0}k", v / 1e3),
        Some(v) => format!("{:.1}M", v / 1e6),
    }
}

fn star(recent: bool) -> &'static str {
    if recent { "" } else { "*" }
}

fn model_cells(m: &ModelStats, live: bool) -> [String; 10] {
    let pct = |v: f64| format!("{:.0}%", v * 100.0);
    let tok = match m.tokens_per_s.filter(|_| live) {
        None => "-".into(),
        Some(t) if t < 100.0 => format!("{t:.1}"),
        Some(t) if t < 10_000.0 => format!("{t:.0}"),
        Some(t) => format!("{:.1}k", t / 1e3),
    };
    let lat = |w: Option<super::Windowed<super::Percentiles>>| match w {
        Some(w) => [secs(w.value.p50) + star(w.recent), secs(w.value.p99) + star(w.recent)],
        None => ["-".into(), "-".into()],
    };
    let [t50, t99] = lat(m.ttft);
    let [p50, p99] = lat(m.tpot);
    [
        count(m.running),
        count(m.waiting),
        m.kv_usage.map_or_else(|| "-".into(), pct),
        m.prefix_hit.map_or_else(|| "-".into(), |w| pct(w.value) + star(w.recent)),
        tok,
        t50,
        t99,
        p50,
        p99,
        count(m.errors),
    ]
}

fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        format!("{s:<w$}")
    } else {
        s.chars().take(w.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn breaker_span(b: Breaker) -> Span<'static> {
    let style = match b {
        Breaker::Closed => Style::new().fg(Color::Green),
        Breaker::Open => Style::new().fg(Color::Red).bold(),
        Breaker::HalfOpen | Breaker::Unknown => Style::new().fg(Color::Yellow),
    };
    Span::styled(b.word(), style)
}

/// The pool's model goes last and only when it fits whole: it is in the rows above too.
fn pool_line(p: &PoolStats, pool_w: usize, width: usize) -> Line<'static> {
    let mut spans = vec![Span::raw(" pool ").dim(), Span::raw(cut(&p.pool, pool_w)).bold()];
    let sep = |spans: &mut Vec<Span<'static>>| spans.push(Span::raw(" · ").dim());
    if let Some(q) = p.queue_depth {
        spans.push(Span::raw(format!(" queue {q:.0}")));
    }
    if let Some(b) = p.breaker {
        sep(&mut spans);
        spans.push(Span::raw("breaker "));
        spans.push(breaker_span(b));
    }
    if p.active.is_some() || p.warm.is_some() {
        sep(&mut spans);
        spans.push(Span::raw(format!("workers {} active, {} warm", count(p.active), count(p.warm))));
    }
    let used: usize = spans.iter().map(|s| s.width()).sum();
    if let Some(m) = p.model.as_ref().filter(|m| used + 3 + m.chars().count() <= width) {
        sep(&mut spans);
        spans.push(Span::raw(m.clone()).dim());
    }
    Line::from(spans)
}

/// `live`: the node answers now (else its rates would describe the past as if current).
pub fn draw(f: &mut Frame, area: Rect, node: &str, s: &Serving, live: bool) {
    let inner = area.width.saturating_sub(2) as usize;
    let fixed: usize = COLUMNS.iter().map(|(_, w)| w).sum();
    // As wide as the longest name (room to the right is left empty), cut to fit 80 columns.
    let longest = s.models.iter().map(|m| m.model.chars().count()).max().unwrap_or(0).max(5) + 1;
    let model_w = inner.saturating_sub(fixed).max(8).min(longest);
    let mut header = vec![Span::raw(format!("{:<model_w$}", "MODEL"))];
    header.extend(COLUMNS.iter().map(|(h, w)| Span::raw(format!("{h:>w$}"))));
    let mut lines = vec![Line::from(header).dim()];
    for m in &s.models {
        let mut spans = vec![Span::raw(cut(&m.model, model_w)).bold()];
        for ((_, w), v) in COLUMNS.iter().zip(model_cells(m, live)) {
            spans.push(Span::raw(format!("{v:>w$}")));
        }
        lines.push(Line::from(spans));
    }
    let pool_w = s.pools.iter().map(|p| p.pool.chars().count()).max().unwrap_or(0).min(20);
    lines.extend(s.pools.iter().map(|p| pool_line(p, pool_w, inner)));
    let mut title = format!(" LLM serving {node}");
    // The panel gets at most half the screen; say what did not fit rather than hide it.
    let hidden = lines.len().saturating_sub(area.height.saturating_sub(2) as usize);
    if hidden > 0 {
        title.push_str(&format!(" · {hidden} more rows below"));
    }
    match (live, s.window_s) {
        (false, _) => title.push_str(" (stale)"),
        (true, Some(w)) => title.push_str(&format!(" · last {w:.0}s")),
        (true, None) => {}
    }
    if s.any_since_start() || s.window_s.is_none() {
        title.push_str(" · * since start");
    }
    title.push(' ');
    f.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_and_counts_stay_short() {
        let cases = [
            (0.000_85, "850µs"),
            (0.000_999_9, "1.0ms"),
            (0.004_2, "4.2ms"),
            (0.009_97, "10ms"),
            (0.125, "125ms"),
            (0.999_7, "1.00s"),
            (1.25, "1.25s"),
            (60.0, "60.0s"),
        ];
        for (v, want) in cases {
            assert_eq!(secs(v), want, "{v}");
        }
        let counts =
            [(None, "-"), (Some(7.0), "7"), (Some(999.6), "1.0k"), (Some(12_345.0), "12k"), (Some(3.4e6), "3.4M")];
        for (v, want) in counts {
            assert_eq!(count(v), want, "{v:?}");
        }
    }
}
