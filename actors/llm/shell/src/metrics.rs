//! Metric names of the LLM serving system (Prometheus, on every node's `/metrics`).
//!
//! Names are vLLM's with `troupe_llm_` in place of `vllm:` (`vllm:time_to_first_token_seconds`
//! → `troupe_llm_time_to_first_token_seconds`), so dashboards carry over with a rename;
//! every series has `system="llm-serving"` (which is how `troupe top` groups them) and
//! `model_name` like vLLM's. docs/llm-serving.md lists them all.

use troupe_runtime::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS, Metrics};

pub const SYSTEM_LABEL: (&str, &str) = ("system", super::config::SYSTEM);

/// Token-count buckets (prompt and completion lengths).
pub const TOKEN_BUCKETS: &[f64] = &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

fn with_system<'a>(l: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![SYSTEM_LABEL];
    v.extend_from_slice(l);
    v
}

pub fn counter(m: &Metrics, name: &str, help: &str, l: &[(&str, &str)]) -> Counter {
    m.counter(name, help, &with_system(l))
}

pub fn gauge(m: &Metrics, name: &str, help: &str, l: &[(&str, &str)]) -> Gauge {
    m.gauge(name, help, &with_system(l))
}

pub fn latency(m: &Metrics, name: &str, help: &str, l: &[(&str, &str)]) -> Histogram {
    m.histogram(name, help, &with_system(l), LATENCY_BUCKETS)
}

pub fn tokens(m: &Metrics, name: &str, help: &str, l: &[(&str, &str)]) -> Histogram {
    m.histogram(name, help, &with_system(l), TOKEN_BUCKETS)
}

/// Per-model request metrics, recorded by the gateway (what a client sees).
#[derive(Clone)]
pub struct RequestMetrics {
    pub ttft: Histogram,
    pub tpot: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub prompt_len: Histogram,
    pub generation_len: Histogram,
    pub in_flight: Gauge,
    pub retries: Counter,
}

impl RequestMetrics {
    pub fn new(m: &Metrics, model: &str) -> Self {
        let l = [("model_name", model)];
        RequestMetrics {
            ttft: latency(
                m,
                "troupe_llm_time_to_first_token_seconds",
                "Time to first token, from request arrival at the gateway.",
                &l,
            ),
            tpot: latency(
                m,
                "troupe_llm_time_per_output_token_seconds",
                "Mean time per output token after the first, per request.",
                &l,
            ),
            itl: latency(
                m,
                "troupe_llm_inter_token_latency_seconds",
                "Time between two output tokens as the gateway forwards them.",
                &l,
            ),
            e2e: latency(m, "troupe_llm_e2e_request_latency_seconds", "Request latency, arrival to last token.", &l),
            prompt_tokens: counter(m, "troupe_llm_prompt_tokens_total", "Prompt tokens of finished requests.", &l),
            generation_tokens: counter(
                m,
                "troupe_llm_generation_tokens_total",
                "Generated tokens of finished requests.",
                &l,
            ),
            prompt_len: tokens(m, "troupe_llm_request_prompt_tokens", "Prompt length per request, tokens.", &l),
            generation_len: tokens(
                m,
                "troupe_llm_request_generation_tokens",
                "Completion length per request, tokens.",
                &l,
            ),
            in_flight: gauge(m, "troupe_llm_requests_in_flight", "Requests the gateway is serving now.", &l),
            retries: counter(
                m,
                "troupe_llm_request_retries_total",
                "Requests sent to another worker after a failure before their first token.",
                &l,
            ),
        }
    }

    /// Finished requests by reason (`stop`, `length`, `abort`).
    pub fn success(m: &Metrics, model: &str, reason: &str) -> Counter {
        counter(
            m,
            "troupe_llm_request_success_total",
            "Requests finished, by finish reason.",
            &[("model_name", model), ("finished_reason", reason)],
        )
    }

    /// Failed requests by error type and HTTP status.
    pub fn error(m: &Metrics, model: &str, kind: &str, status: u16) -> Counter {
        let status = status.to_string();
        counter(
            m,
            "troupe_llm_request_errors_total",
            "Requests that ended in an error, by type and HTTP status.",
            &[("model_name", model), ("type", kind), ("status", &status)],
        )
    }
}
