//! PNG plots of the lab results, drawn in memory (the caller writes the bytes).
//!
//! Canvas, PNG encoding and the embedded font are troupe-chart's, so plots render the
//! same on machines without system fonts or fontconfig.

use troupe_chart::plotters::coord::Shift;
use troupe_chart::plotters::prelude::*;
use troupe_chart::{FONT, PlotError, canvas};

use super::LabError;
use super::cache_zipf::CacheZipfResult;
use super::enumeration::{EnumerationResult, IdScheme, Strategy};
use super::redirects::RedirectLossResult;

const WIDTH_PX: u32 = 900;
const HEIGHT_PX: u32 = 560;

/// Axis numbers without decimals: 1500 -> "1.5k", 2000000 -> "2M".
fn human(x: &f64) -> String {
    let x = *x;
    if x.abs() >= 1e6 {
        format!("{}M", trim(x / 1e6))
    } else if x.abs() >= 1e3 {
        format!("{}k", trim(x / 1e3))
    } else {
        trim(x)
    }
}

fn trim(x: f64) -> String {
    let text = format!("{x:.1}");
    text.strip_suffix(".0").map(str::to_string).unwrap_or(text)
}

fn plot_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Draws with `draw` on the lab's canvas and returns it PNG-encoded (troupe-chart's
/// canvas and font).
fn render(
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<Vec<u8>, LabError> {
    canvas(WIDTH_PX, HEIGHT_PX, draw).map_err(|e| LabError::Plot(e.to_string()))
}

type PointValue = fn(&super::cache_zipf::CachePoint) -> f64;

const PALETTE: [RGBColor; 4] =
    [RGBColor(214, 39, 40), RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

/// Clicks lost vs the chance a browser caches a 301, one line per visits-per-client mean.
pub fn plot_redirect_loss(curves: &[Vec<RedirectLossResult>]) -> Result<Vec<u8>, LabError> {
    render(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("301 vs 302: clicks lost to browser caching", (FONT, 24))
            .margin(25)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("probability a browser caches a 301")
            .y_desc("fraction of clicks never seen")
            .label_style((FONT, 15))
            .draw()
            .map_err(plot_err)?;
        for (i, curve) in curves.iter().enumerate() {
            let Some(first) = curve.first() else { continue };
            let color = PALETTE[i % PALETTE.len()];
            let points = curve.iter().map(|r| (r.params.cache_probability, r.loss_fraction_301));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(format!("301, {:.0} visits per client on average", first.params.visits_per_client_mean))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 0.0)], BLACK.stroke_width(2)))
            .map_err(plot_err)?
            .label("302 (never cached): nothing lost")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)
    })
}

/// Fraction of links found vs guesses, for both schemes and both strategies.
pub fn plot_enumeration(result: &EnumerationResult) -> Result<Vec<u8>, LabError> {
    render(|root| {
        let caption = format!("Enumerating {} links: sequential vs permuted codes", result.params.links);
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 24))
            .margin(25)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..result.params.guesses as f64, 0f64..1.05f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("guesses")
            .x_label_formatter(&human)
            .y_desc("fraction of other links found")
            .label_style((FONT, 15))
            .draw()
            .map_err(plot_err)?;
        for (i, curve) in result.curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let name = format!(
                "{} codes, {} guesses: {} found",
                match curve.scheme {
                    IdScheme::Sequential => "sequential",
                    IdScheme::Permuted => "permuted",
                },
                match curve.strategy {
                    Strategy::Increment => "neighbour",
                    Strategy::Random => "random",
                },
                curve.links_found
            );
            let points = curve.points.iter().map(|&(g, f)| (g as f64, f));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)
    })
}

/// LRU and ideal hit rate vs cache size (log scale).
pub fn plot_cache_hit_rate(result: &CacheZipfResult) -> Result<Vec<u8>, LabError> {
    render(|root| {
        let caption = format!(
            "Cache hit rate, Zipf(s={}) over {} links, LRU vs ideal",
            result.params.zipf_s, result.params.links
        );
        let min = result.points.iter().map(|p| p.capacity_entries).min().unwrap_or(1).max(1) as f64;
        let max = result.points.iter().map(|p| p.capacity_entries).max().unwrap_or(10).max(2) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 24))
            .margin(25)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((min..max).log_scale(), 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("cache size (entries, log scale)")
            .x_label_formatter(&human)
            .y_desc("hit rate")
            .label_style((FONT, 15))
            .draw()
            .map_err(plot_err)?;
        let series: [(&str, RGBColor, PointValue); 2] = [
            ("LRU (measured)", PALETTE[0], |p| p.lru_hit_rate),
            ("ideal: most popular links pinned", PALETTE[1], |p| p.ideal_hit_rate),
        ];
        for (name, color, value) in series {
            let points = result.points.iter().map(|p| (p.capacity_entries as f64, value(p)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)
    })
}
