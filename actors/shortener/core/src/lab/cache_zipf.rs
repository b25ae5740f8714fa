//! Lab (c): LRU hit rate vs cache size when redirects follow a Zipf(s) law over K links.
//!
//! Model: request i asks for the link of rank r with probability proportional to 1/r^s
//! (r = 1..K), independently. The production [`LruCache`] serves the stream; the first
//! tenth of the requests warms it and is not counted. Alongside, the ideal static hit rate
//! of a cache holding the C most popular links (Σ_{r<=C} p_r) shows how close LRU gets.

use std::num::NonZeroUsize;

use super::LabError;
use super::rng::SplitMix64;
use crate::cache::LruCache;

/// Most links in the workload (the CDF table is K floats).
pub const LINKS_MAX: usize = 10_000_000;
/// Most requests per cache size.
pub const REQUESTS_MAX: u64 = 100_000_000;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CacheZipfParams {
    pub links: usize,
    pub zipf_s: f64,
    pub requests: u64,
    pub cache_sizes: Vec<usize>,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CachePoint {
    pub capacity_entries: usize,
    /// Measured LRU hit rate after warm-up.
    pub lru_hit_rate: f64,
    /// Hit rate of a cache that always holds the most popular links.
    pub ideal_hit_rate: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CacheZipfResult {
    pub params: CacheZipfParams,
    pub points: Vec<CachePoint>,
}

/// Cumulative Zipf probabilities: `cdf[r-1] = P(rank <= r)`.
fn zipf_cdf(links: usize, s: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(links);
    let mut sum = 0.0;
    for rank in 1..=links {
        sum += (rank as f64).powf(-s);
        cdf.push(sum);
    }
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

/// Simulates every cache size on the same request stream (same seed).
pub fn cache_hit_rates(params: CacheZipfParams) -> Result<CacheZipfResult, LabError> {
    if params.links == 0 || params.links > LINKS_MAX {
        return Err(LabError::BadParams(format!("links must lie in [1, {LINKS_MAX}]")));
    }
    if !(0.0..=5.0).contains(&params.zipf_s) {
        return Err(LabError::BadParams("zipf_s must lie in [0, 5]".into()));
    }
    if params.requests < 10 || params.requests > REQUESTS_MAX {
        return Err(LabError::BadParams(format!("requests must lie in [10, {REQUESTS_MAX}]")));
    }
    let cdf = zipf_cdf(params.links, params.zipf_s);
    let warmup = params.requests / 10;
    let mut points = Vec::with_capacity(params.cache_sizes.len());
    for &size in &params.cache_sizes {
        let capacity = NonZeroUsize::new(size.min(params.links))
            .ok_or_else(|| LabError::BadParams("cache sizes must be at least 1".into()))?;
        let mut cache: LruCache<u32, ()> = LruCache::new(capacity);
        let mut rng = SplitMix64::new(params.seed);
        let mut counted_from = cache.stats();
        for i in 0..params.requests {
            if i == warmup {
                counted_from = cache.stats();
            }
            let u = rng.next_f64();
            let rank = cdf.partition_point(|&c| c < u).min(params.links - 1) as u32;
            if cache.get(&rank).is_none() {
                cache.insert(rank, ());
            }
        }
        let end = cache.stats();
        let (hits, misses) = (end.hits - counted_from.hits, end.misses - counted_from.misses);
        points.push(CachePoint {
            capacity_entries: capacity.get(),
            lru_hit_rate: hits as f64 / (hits + misses).max(1) as f64,
            ideal_hit_rate: cdf[capacity.get() - 1],
        });
    }
    Ok(CacheZipfResult { params, points })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sizes: Vec<usize>, s: f64) -> CacheZipfResult {
        cache_hit_rates(CacheZipfParams { links: 5_000, zipf_s: s, requests: 60_000, cache_sizes: sizes, seed: 11 })
            .expect("valid params")
    }

    #[test]
    fn hit_rate_grows_with_size_and_stays_under_ideal() {
        let r = run(vec![10, 100, 1_000, 5_000], 1.0);
        let rates: Vec<f64> = r.points.iter().map(|p| p.lru_hit_rate).collect();
        assert!(rates.windows(2).all(|w| w[0] < w[1]), "{rates:?}");
        for p in &r.points[..3] {
            // LRU cannot beat an oracle that pins the most popular links (small noise allowed).
            assert!(p.lru_hit_rate <= p.ideal_hit_rate + 0.01, "{p:?}");
        }
        // A cache as large as the catalogue misses only first touches after warm-up.
        assert!(rates[3] > 0.9, "{rates:?}");
    }

    #[test]
    fn uniform_workload_hit_rate_is_the_cached_share() {
        let r = run(vec![500], 0.0);
        let p = r.points[0];
        assert!((p.ideal_hit_rate - 0.1).abs() < 1e-9);
        assert!((p.lru_hit_rate - 0.1).abs() < 0.02, "{p:?}");
    }

    #[test]
    fn rejects_bad_params() {
        let bad = |links, s, requests, sizes| {
            cache_hit_rates(CacheZipfParams { links, zipf_s: s, requests, cache_sizes: sizes, seed: 0 }).is_err()
        };
        assert!(bad(0, 1.0, 100, vec![1]));
        assert!(bad(10, -1.0, 100, vec![1]));
        assert!(bad(10, 1.0, 5, vec![1]));
        assert!(bad(10, 1.0, 100, vec![0]));
    }
}
