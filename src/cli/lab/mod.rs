//! `troupe lab <system>`: seeded simulations of a system's key design decisions, written
//! as PNG plots and a text summary into a folder. Each system adds one subcommand.

pub mod llm_serving;
pub mod rate_limiter;
mod rate_limiter_live;
pub mod url_shortener;

#[derive(clap::Subcommand)]
pub enum LabCmd {
    /// URL shortener: clicks lost with 301 vs 302, enumeration of sequential vs permuted
    /// codes, cache hit rate vs cache size on a Zipf workload.
    UrlShortener(url_shortener::Args),
    /// Rate limiter: fixed window's boundary burst, accuracy against the exact log, fail-open
    /// vs fail-closed (simulated and live on a 3-node cluster), leasing a global limit.
    RateLimiter(rate_limiter::Args),
    /// LLM serving, with the real engine: continuous vs static batching, prefix cache on/off,
    /// unified vs disaggregated prefill/decode, routing policies on a calibrated simulation.
    LlmServing(llm_serving::Args),
}

pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::UrlShortener(a) => url_shortener::run(a),
        LabCmd::RateLimiter(a) => rate_limiter::run(a),
        LabCmd::LlmServing(a) => llm_serving::run(a),
    }
}
