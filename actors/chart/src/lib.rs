//! Charts for troupe's labs and benchmarks: line and bar charts drawn in memory and
//! returned as PNG bytes (the caller writes the file), and a [`canvas`] for charts of
//! one's own. Text uses DejaVu Sans embedded by the `dejavu` crate and registered
//! once per process, so plots render the same on machines without system fonts.
//!
//! One home for the chart code that the rate limiter's, the URL shortener's and the
//! LLM serving labs share; systems depend on it behind a `plot` feature so node
//! binaries need not link plotters.

use std::sync::Once;

pub use plotters;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The font family every chart's text uses.
pub const FONT: &str = "sans-serif";

/// The largest width or height a chart may have, in pixels.
pub const SIZE_MAX: u32 = 8192;

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

static REGISTERED: Once = Once::new();

/// Registers the embedded font under [`FONT`] (once per process).
pub fn register_font() {
    REGISTERED.call_once(|| {
        // A failure leaves text unrendered, which plotters reports per call; nothing to retry.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// A plotters error as a [`PlotError`].
pub fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Draws with `draw` on a white `width × height` canvas (font registered) and returns
/// it PNG-encoded.
pub fn canvas(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<Vec<u8>, PlotError> {
    if width == 0 || height == 0 || width > SIZE_MAX || height > SIZE_MAX {
        return Err(PlotError::Size);
    }
    register_font();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
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
    let all = || c.lines.iter().flat_map(|l| l.points.iter().copied());
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min { (x_min, x_max) } else { (0.0, 1.0) };
    let y_top = all().map(|p| p.1).chain(c.levels.iter().map(|l| l.0)).fold(0.0, f64::max);
    let y_max = if y_top > 0.0 { y_top * 1.35 } else { 1.0 };
    canvas(width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&c.title, (FONT, 20))
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
        Ok(())
    })
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
    let n_cat = c.categories.len().max(1);
    let n_ser = c.series.len().max(1);
    let y_top = c.series.iter().flat_map(|s| s.1.iter().copied()).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let y_max = if y_top > 0.0 { y_top * 1.35 } else { 1.0 };
    canvas(width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&c.title, (FONT, 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n_cat as f64, 0f64..y_max)
            .map_err(draw_err)?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc(&c.y_desc).draw().map_err(draw_err)?;
        // Category names under their groups, placed in pixels (the x axis is numeric).
        for (i, name) in c.categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let style = (FONT, 15).into_font().into_text_style(root).pos(Pos::new(HPos::Center, VPos::Top));
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
                Text::new(short(*v), (x0, v.max(0.0) + y_max * 0.045), (FONT, 12).into_font())
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
        Ok(())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_is_a_png_of_the_asked_size_and_bad_sizes_are_refused() {
        let c = LineChart {
            title: "t".into(),
            x_desc: "x".into(),
            y_desc: "y".into(),
            lines: vec![Line { label: "a".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] }],
            levels: vec![(1.5, "limit".into())],
            shade: Some((0.2, 0.4, "outage".into())),
        };
        let png = render_lines_png(&c, 320, 200).expect("renders");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        // The IHDR chunk holds width and height, big-endian, right after its tag.
        assert_eq!(&png[16..24], &[0, 0, 1, 64, 0, 0, 0, 200]);
        assert!(matches!(render_lines_png(&c, 0, 200), Err(PlotError::Size)));
        assert!(matches!(canvas(SIZE_MAX + 1, 10, |_| Ok(())), Err(PlotError::Size)));
        let bars = BarChart {
            title: "b".into(),
            y_desc: "v".into(),
            categories: vec!["one".into(), "two".into()],
            series: vec![("s".into(), vec![1.0, 2.0])],
        };
        assert!(render_bars_png(&bars, 320, 200).expect("renders").starts_with(b"\x89PNG"));
    }
}
