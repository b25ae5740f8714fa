//! `troupe lab url-shortener`: seeded experiments for the card's key decisions.
//!
//! (a) [`redirects`]: clicks lost with 301 (cached by browsers) vs 302;
//! (b) [`mod@enumeration`]: how fast an attacker finds links under sequential vs permuted codes;
//! (c) [`cache_zipf`]: LRU hit rate vs cache size on a Zipf workload.
//!
//! Invariants: every experiment is a pure function of its parameters (seeded SplitMix64,
//! no clock), so the same seed reproduces the same numbers; every parameter is bounded
//! (`CLIENTS_MAX`, `LINKS_MAX`, `GUESSES_MAX`, `REQUESTS_MAX`); plots come back as PNG
//! bytes for the caller to write.

pub mod cache_zipf;
pub mod enumeration;
#[cfg(feature = "plot")]
mod plot;
pub mod redirects;
mod rng;

pub use cache_zipf::{CachePoint, CacheZipfParams, CacheZipfResult, cache_hit_rates};
pub use enumeration::{EnumerationCurve, EnumerationParams, EnumerationResult, IdScheme, Strategy, enumeration};
#[cfg(feature = "plot")]
pub use plot::{plot_cache_hit_rate, plot_enumeration, plot_redirect_loss};
pub use redirects::{RedirectLossParams, RedirectLossResult, redirect_loss, redirect_loss_sweep};

use std::fmt::Write as _;

use crate::ids::{DOMAIN_SIZE, IdError};

/// Why an experiment did not run or plot.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("bad lab parameters: {0}")]
    BadParams(String),
    #[error("code generation failed: {0}")]
    Id(#[from] IdError),
    #[error("plotting failed: {0}")]
    Plot(String),
}

/// How big the runs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabScale {
    /// Seconds in a debug build: for tests and CI.
    Quick,
    /// The figures quoted in docs/url-shortener-core.md (use a release build).
    Full,
}

/// All three experiments' results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabReport {
    pub seed: u64,
    /// One sweep over cache probabilities per visits-per-client mean.
    pub redirect_loss: Vec<Vec<RedirectLossResult>>,
    pub enumeration: EnumerationResult,
    pub cache: CacheZipfResult,
}

const VISIT_MEANS: [f64; 3] = [2.0, 5.0, 10.0];

/// Runs the three experiments with the standard parameters.
pub fn run_all(seed: u64, scale: LabScale) -> Result<LabReport, LabError> {
    let (clients, links, guesses, cache_links, requests) = match scale {
        LabScale::Quick => (5_000, 2_000, 10_000, 5_000, 100_000),
        LabScale::Full => (100_000, 100_000, 1_000_000, 100_000, 2_000_000),
    };
    let probabilities: Vec<f64> = (0..=20).map(|i| f64::from(i) / 20.0).collect();
    let redirect_loss = VISIT_MEANS
        .iter()
        .map(|&mean| {
            let base = RedirectLossParams { clients, visits_per_client_mean: mean, cache_probability: 0.0, seed };
            redirect_loss_sweep(base, &probabilities)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let enumeration = enumeration(EnumerationParams { links, guesses, seed })?;
    let cache_sizes: Vec<usize> = [1usize, 3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000]
        .iter()
        .map(|&s| s * 10)
        .filter(|&s| s <= cache_links)
        .collect();
    let cache = cache_hit_rates(CacheZipfParams { links: cache_links, zipf_s: 1.0, requests, cache_sizes, seed })?;
    Ok(LabReport { seed, redirect_loss, enumeration, cache })
}

impl LabReport {
    /// `(file name, PNG bytes)` for each plot (feature `plot`).
    #[cfg(feature = "plot")]
    pub fn plots(&self) -> Result<Vec<(&'static str, Vec<u8>)>, LabError> {
        Ok(vec![
            ("url-shortener-301-vs-302.png", plot_redirect_loss(&self.redirect_loss)?),
            ("url-shortener-enumeration.png", plot_enumeration(&self.enumeration)?),
            ("url-shortener-cache-hit-rate.png", plot_cache_hit_rate(&self.cache)?),
        ])
    }

    /// The numbers a person reads first, as text.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "url-shortener lab (seed {})", self.seed);
        let _ = writeln!(out, "(a) 301 vs 302: clicks never seen with 301 (302 loses none)");
        for sweep in &self.redirect_loss {
            for r in
                sweep.iter().filter(|r| [0.5, 0.9, 1.0].iter().any(|p| (r.params.cache_probability - p).abs() < 1e-9))
            {
                let _ = writeln!(
                    out,
                    "    {:>4.1} visits/client, cache p={:.2}: lost {:>5.1}% (closed form {:>5.1}%)",
                    r.params.visits_per_client_mean,
                    r.params.cache_probability,
                    100.0 * r.loss_fraction_301,
                    100.0 * r.expected_loss_fraction
                );
            }
        }
        let e = &self.enumeration;
        let _ =
            writeln!(out, "(b) enumeration: {} links, {} guesses, one known code", e.params.links, e.params.guesses);
        for c in &e.curves {
            let _ = writeln!(
                out,
                "    {:?} codes, {:?} guesses: {} of {} other links found ({:.4}%)",
                c.scheme,
                c.strategy,
                c.links_found,
                e.params.links - 1,
                100.0 * c.links_found as f64 / (e.params.links - 1) as f64
            );
        }
        let others = (e.params.links - 1) as f64;
        let _ = writeln!(
            out,
            "    expected against permuted codes, any strategy: {:.3} links ({:.2e} of them); one hit per {:.2e} guesses",
            e.expected_permuted_fraction * others,
            e.expected_permuted_fraction,
            DOMAIN_SIZE as f64 / others
        );
        let c = &self.cache;
        let _ = writeln!(out, "(c) LRU hit rate, Zipf(s={}) over {} links:", c.params.zipf_s, c.params.links);
        for p in &c.points {
            let _ = writeln!(
                out,
                "    {:>7} entries ({:>6.2}% of links): LRU {:>5.1}%, ideal {:>5.1}%",
                p.capacity_entries,
                100.0 * p.capacity_entries as f64 / c.params.links as f64,
                100.0 * p.lru_hit_rate,
                100.0 * p.ideal_hit_rate
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_run_produces_numbers() {
        let report = run_all(1, LabScale::Quick).expect("lab runs");
        assert_eq!(report.redirect_loss.len(), 3);
        let summary = report.summary();
        assert!(summary.contains("(a)") && summary.contains("(b)") && summary.contains("(c)"), "{summary}");
        // Same seed, same numbers.
        let again = run_all(1, LabScale::Quick).expect("lab runs");
        assert_eq!(again.summary(), summary);
    }

    #[cfg(feature = "plot")]
    #[test]
    fn quick_run_produces_pngs() {
        let report = run_all(1, LabScale::Quick).expect("lab runs");
        let plots = report.plots().expect("plots render");
        assert_eq!(plots.len(), 3);
        for (name, png) in &plots {
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
            assert!(png.len() > 10_000, "{name} is suspiciously small ({} bytes)", png.len());
        }
    }

    #[cfg(feature = "plot")]
    #[test]
    fn plots_contain_text() {
        // Text pixels are antialiased greys: a plot without text would have almost none.
        let report = run_all(2, LabScale::Quick).expect("lab runs");
        let png = plot_cache_hit_rate(&report.cache).expect("renders");
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().expect("valid png");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        let greys = buf[..info.buffer_size()]
            .chunks_exact(3)
            .filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 40 && p[0] < 215)
            .count();
        assert!(greys > 500, "only {greys} grey pixels: did text render?");
    }
}
