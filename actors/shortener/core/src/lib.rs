//! troupe-shortener: the pure cores of troupe's URL shortener (system 07).
//!
//! Everything here is plain data and functions: no async, no clock (time is passed in as
//! Unix milliseconds), no randomness that is not seeded, no dependency on the troupe
//! runtime, and no I/O (the shell reads the geo table). The actor shells (sharded link actors,
//! gateway, click log, aggregators) and the HTTP API wrap these types.
//!
//! | module | job |
//! |---|---|
//! | [`ids`] | 7-character Base62 codes from a keyed Feistel permutation of a node-allocated counter |
//! | [`validate`] | target URL, custom alias and expiry rules, with errors a person can act on |
//! | [`abuse`] | domain blocklist and malicious-URL heuristics, each with a reason |
//! | [`cache`] | bounded O(1) LRU cache with hit/miss counters and invalidation by key |
//! | [`analytics`] | click events, User-Agent/Referer parsing, exactly-once mergeable aggregation |
//! | [`geo`] | IP -> country from a range file built by `tools/build_geo.py` |
//! | [`lab`] | seeded experiments for `troupe lab url-shortener`, with PNG plots |
//! | [`proto`] | the wire protocol (link, click-log, gateway messages) and the pure rules of a link's log |
//! | [`time`] | UTC calendar arithmetic on Unix milliseconds |
//!
//! # Creating a link and following it
//!
//! ```
//! use std::num::NonZeroUsize;
//! use troupe_shortener::abuse::AbusePolicy;
//! use troupe_shortener::analytics::{Aggregator, AggregatorConfig, ClickEvent, EventId};
//! use troupe_shortener::cache::LruCache;
//! use troupe_shortener::ids::{CodeGen, CounterBlock, IdKey};
//! use troupe_shortener::validate::{parse_expiry, validate_alias, validate_url};
//!
//! let now_ms = 1_767_225_600_000; // the caller's clock
//! // Once per node: the deployment key and a counter block from the range singleton.
//! let codes = CodeGen::new(&IdKey::from_bytes([7; 32]));
//! let mut block = CounterBlock::new(1_000, 2_000)?;
//!
//! // POST /api/links
//! let url = validate_url(" HTTPS://Example.com/launch?utm=mail ")?;
//! assert_eq!(url.as_str(), "https://example.com/launch?utm=mail");
//! if let Some(reason) = AbusePolicy::default().assess(&url).blocked_reason() {
//!     panic!("403: {reason}");
//! }
//! let expires_ms = parse_expiry("30d", now_ms)?;
//! let code = codes.code_for(block.take().expect("block has values"))?; // e.g. "q3ZtX0b"
//! assert_eq!(code.as_str().len(), 7);
//! let custom = validate_alias("summer-sale")?; // or a custom alias
//! assert!(validate_alias("admin").is_err());
//!
//! // GET /{code}: cache in front of the link actor, click event off the redirect path.
//! let mut cache = LruCache::new(NonZeroUsize::new(10_000).expect("non-zero"));
//! cache.insert(code.to_string(), (url.as_str().to_string(), expires_ms));
//! assert!(cache.get(code.as_str()).is_some());
//! let click = ClickEvent::from_request(
//!     EventId::from_parts(1, 1), code.as_str(), now_ms,
//!     Some("https://news.ycombinator.com/item?id=1"), Some("curl/8.5.0"), None,
//! );
//!
//! // Aggregator actor: applying a replayed copy changes nothing.
//! let mut stats = Aggregator::new(AggregatorConfig::default());
//! stats.apply(&click);
//! stats.apply(&click);
//! assert_eq!(stats.link(code.as_str()).map(|s| s.total), Some(1));
//! # let _ = custom;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod abuse;
pub mod analytics;
/// The LRU cache, from troupe-common (shared with other systems).
pub use troupe_common::cache;
pub mod geo;
pub mod ids;
pub mod lab;
pub mod proto;
pub mod time;
pub mod validate;
