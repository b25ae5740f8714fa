//! Lab (a) as a picture: the admitted count in the trailing window over time for the fixed
//! window, the sliding counter and the exact log, with the limit and twice the limit marked.
//!
//! Returns PNG bytes; writing the file is the caller's business (the crate does no I/O). The
//! chart code and its embedded font are `troupe-chart`'s.

use troupe_chart::plotters::prelude::*;
use troupe_chart::{FONT, PlotError, canvas, draw_err};

use super::boundary::BoundaryReport;

/// Renders lab (a) to PNG bytes of `width × height` pixels.
pub fn render_boundary_png(report: &BoundaryReport, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    canvas(width, height, |root| {
        let limit = report.config.limit;
        let w_s = report.config.window_ns as f64 / 1e9;
        let x_max = report.samples_ns.last().copied().unwrap_or(1) as f64 / 1e9;
        let y_max = report.series.iter().flat_map(|s| s.trailing.iter().copied()).max().unwrap_or(limit).max(2 * limit)
            as f64
            * 1.4;
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Admitted in the trailing {w_s} s window (limit {limit})"), (FONT, 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(draw_err)?;
        chart.configure_mesh().x_desc("time (s)").y_desc("admitted in window").draw().map_err(draw_err)?;
        let colors = [RED, BLUE, GREEN];
        for (series, color) in report.series.iter().zip(colors) {
            let points = report.samples_ns.iter().zip(&series.trailing).map(|(t, c)| (*t as f64 / 1e9, *c as f64));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(draw_err)?
                .label(format!("{} (max {})", series.kind.as_str(), series.max_in_any_window))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        for (level, label) in [(limit, "limit"), (2 * limit, "2 x limit")] {
            chart
                .draw_series(LineSeries::new([(0.0, level as f64), (x_max, level as f64)], BLACK.mix(0.5)))
                .map_err(draw_err)?
                .label(label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    })
}
