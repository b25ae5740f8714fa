//! Lab (a) as a picture: the admitted count in the trailing window over time for the fixed
//! window, the sliding counter and the exact log, with the limit and twice the limit marked.
//!
//! Returns PNG bytes; writing the file is the caller's business (the crate does no I/O). Text
//! uses DejaVu Sans embedded by the `dejavu` crate, so no system font is needed.

use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::boundary::BoundaryReport;

/// Why a plot could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters failed while drawing.
    #[error("drawing the plot failed: {0}")]
    Draw(String),
    /// PNG encoding failed.
    #[error("encoding the PNG failed: {0}")]
    Encode(String),
    /// Width or height was 0 or above 8192.
    #[error("plot size must be between 1x1 and 8192x8192 pixels")]
    Size,
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // A failure leaves text unrendered, which plotters reports per call; nothing to retry.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Renders lab (a) to PNG bytes of `width × height` pixels.
pub fn render_boundary_png(report: &BoundaryReport, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    if width == 0 || height == 0 || width > 8192 || height > 8192 {
        return Err(PlotError::Size);
    }
    register_font();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let limit = report.config.limit;
        let w_s = report.config.window_ns as f64 / 1e9;
        let x_max = report.samples_ns.last().copied().unwrap_or(1) as f64 / 1e9;
        let y_max = report.series.iter().flat_map(|s| s.trailing.iter().copied()).max().unwrap_or(limit).max(2 * limit)
            as f64
            * 1.4;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Admitted in the trailing {w_s} s window (limit {limit})"), ("sans-serif", 20))
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
        root.present().map_err(draw_err)?;
    }
    encode_png(&rgb, width, height)
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// A generic line chart: the lab's other plots (accuracy against load, fail modes over time,
/// the live cluster experiment).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Caption.
    pub title: String,
    /// X axis description.
    pub x_desc: String,
    /// Y axis description.
    pub y_desc: String,
    /// The lines, drawn in order with distinct colours.
    pub lines: Vec<Line>,
    /// Horizontal reference levels `(y, label)` (e.g. the limit).
    pub levels: Vec<(f64, String)>,
    /// An x range to shade `(from, to, label)` (e.g. an outage).
    pub shade: Option<(f64, f64, String)>,
}

/// Renders a [`LineChart`] to PNG bytes of `width × height` pixels.
pub fn render_lines_png(c: &LineChart, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    if width == 0 || height == 0 || width > 8192 || height > 8192 {
        return Err(PlotError::Size);
    }
    register_font();
    let all = || c.lines.iter().flat_map(|l| l.points.iter().copied());
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min { (x_min, x_max) } else { (0.0, 1.0) };
    let y_top = all().map(|p| p.1).chain(c.levels.iter().map(|l| l.0)).fold(0.0, f64::max);
    let y_max = if y_top > 0.0 { y_top * 1.35 } else { 1.0 };
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(x_min..x_max, 0f64..y_max)
            .map_err(draw_err)?;
        chart.configure_mesh().x_desc(&c.x_desc).y_desc(&c.y_desc).draw().map_err(draw_err)?;
        if let Some((from, to, label)) = &c.shade {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(*from, 0.0), (*to, y_max)],
                    RGBColor(255, 200, 120).mix(0.35).filled(),
                )))
                .map_err(draw_err)?
                .label(label.clone())
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], RGBColor(255, 200, 120).filled()));
        }
        let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, RGBColor(120, 80, 0)];
        for (line, color) in c.lines.iter().zip(colors.iter().cycle()) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(line.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        for (level, label) in &c.levels {
            chart
                .draw_series(LineSeries::new([(x_min, *level), (x_max, *level)], BLACK.mix(0.5)))
                .map_err(draw_err)?
                .label(label.clone())
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    encode_png(&rgb, width, height)
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let enc_err = |e: png::EncodingError| PlotError::Encode(e.to_string());
    let mut writer = enc.write_header().map_err(enc_err)?;
    writer.write_image_data(rgb).map_err(enc_err)?;
    writer.finish().map_err(enc_err)?;
    Ok(out)
}

/// A grouped bar chart: one group per category on the x axis, one bar per series in each.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Caption.
    pub title: String,
    /// Y axis description.
    pub y_desc: String,
    /// Category names, left to right.
    pub categories: Vec<String>,
    /// `(legend, one value per category)`, drawn side by side in each group.
    pub series: Vec<(String, Vec<f64>)>,
}

/// Renders a [`BarChart`] to PNG bytes of `width × height` pixels.
pub fn render_bars_png(c: &BarChart, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    if width == 0 || height == 0 || width > 8192 || height > 8192 {
        return Err(PlotError::Size);
    }
    register_font();
    let n_cat = c.categories.len().max(1);
    let n_ser = c.series.len().max(1);
    let y_top = c.series.iter().flat_map(|s| s.1.iter().copied()).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let y_max = if y_top > 0.0 { y_top * 1.35 } else { 1.0 };
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n_cat as f64, 0f64..y_max)
            .map_err(draw_err)?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc(&c.y_desc).draw().map_err(draw_err)?;
        // Category names under their groups, placed in pixels (the x axis is numeric).
        for (i, name) in c.categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let style = ("sans-serif", 15).into_font().into_text_style(&root).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(name.clone(), (px, py + 6), style)).map_err(draw_err)?;
        }
        let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, RGBColor(120, 80, 0)];
        let w = 0.8 / n_ser as f64;
        for (si, ((name, values), color)) in c.series.iter().zip(colors.iter().cycle()).enumerate() {
            let color = *color;
            let bars = values.iter().enumerate().map(move |(ci, v)| {
                let x0 = ci as f64 + 0.1 + si as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v.max(0.0))], color.mix(0.8).filled())
            });
            chart
                .draw_series(bars)
                .map_err(draw_err)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.filled()));
            let values = values.iter().enumerate().map(move |(ci, v)| {
                let x0 = ci as f64 + 0.1 + si as f64 * w;
                Text::new(short(*v), (x0, v.max(0.0) + y_max * 0.045), ("sans-serif", 12).into_font())
            });
            chart.draw_series(values).map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    encode_png(&rgb, width, height)
}

/// A bar's value label: three significant digits, no exponent.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
