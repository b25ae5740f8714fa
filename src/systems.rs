//! The systems this binary carries — the one place in the CLI that names them. Adding a
//! system is its folder under `actors/<system>/`, its dependency in Cargo.toml and one
//! line here (docs/writing-a-system.md).

use troupe_system::System;

/// Every system, in the order `troupe lab`, `troupe --help` and `troupe top` show them.
pub static SYSTEMS: &[&dyn System] = &[
    &troupe_diag_shell::Diag,
    &troupe_kv_shell::Kv,
    &troupe_llm_shell::LlmServing,
    &troupe_limiter_shell::RateLimiter,
    &troupe_shortener_shell::UrlShortener,
    &troupe_chat_shell::Chat,
];
