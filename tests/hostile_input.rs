//! Hostile input on the HTTP APIs of real processes (kv, rate limiter, URL shortener),
//! one test per case: each request carries valid credentials, so what refuses it is
//! the parsing, and each answer is checked for its status and for a reason a caller
//! can act on. (The LLM gateway's cases: `openai::tests::hostile_bodies_get_a_clear_400`,
//! the 1 MiB prompts of tests/llm_serving.rs, and the fuzz targets of docs/fuzzing.md.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Resp, TestCluster, request};
use std::net::SocketAddr;

const LIMITER: &str = "rate-limiter";
const SHORTENER: &str = "url-shortener";

struct Apis {
    c: TestCluster,
    service: String,
}

impl Apis {
    fn start() -> Apis {
        let c = common::start_http_services();
        let service = c.service_auth();
        Apis { c, service }
    }

    fn send(&self, addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Resp {
        let h = [("Content-Type", "application/json"), ("Authorization", self.service.as_str())];
        request(addr, method, path, &h, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
    fn check(&self, body: &[u8]) -> Resp {
        self.send(self.c.port("n1", LIMITER), "POST", "/v1/check", body)
    }
    fn create(&self, body: &[u8]) -> Resp {
        self.send(self.c.port("n2", SHORTENER), "POST", "/api/links", body)
    }
    fn put(&self, body: &[u8]) -> Resp {
        self.send(self.c.port("n3", "kv"), "PUT", "/kv/hostile", body)
    }
    fn incr(&self, body: &[u8]) -> Resp {
        self.send(self.c.port("n3", "kv"), "POST", "/kv/hostile/incr", body)
    }
}

/// `r` has status `status` and its body says `why`.
fn says(r: &Resp, status: u16, why: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(r.body.contains(why), "the {status} should say `{why}`: {}", r.body);
}

#[test]
fn deeply_nested_json_is_refused_with_the_reason() {
    let a = Apis::start();
    let deep = "[".repeat(50_000);
    says(&a.check(deep.as_bytes()), 400, "not valid JSON: recursion limit exceeded");
    says(&a.put(deep.as_bytes()), 400, "not valid JSON: recursion limit exceeded");
    // The shortener's bodies are small: 50,000 bytes are over its limit; 1,000 are
    // not its shape.
    says(&a.create(deep.as_bytes()), 413, "over 8192 bytes");
    says(&a.create("[".repeat(1_000).as_bytes()), 400, "not what this endpoint takes");
}

#[test]
fn invalid_utf8_is_refused_with_the_reason() {
    let a = Apis::start();
    let bad = b"{\"rule\":\"api-per-ip\",\"key\":\"\xff\xfe\"}";
    says(&a.check(bad), 400, "invalid unicode code point");
    says(&a.create(b"{\"url\":\"https://example.com/\xff\xfe\"}"), 400, "invalid unicode code point");
    says(&a.put(b"{\"value\":\"\xff\xfe\"}"), 400, "invalid unicode code point");
}

#[test]
fn negative_and_huge_numbers_are_refused_naming_the_field() {
    let a = Apis::start();
    says(&a.check(br#"{"rule":"api-per-ip","key":"k","cost":-1}"#), 400, "`cost` must not be negative, got -1");
    says(
        &a.check(br#"{"rule":"api-per-ip","key":"k","cost":18446744073709551616}"#),
        400,
        "`cost` must be a whole number",
    );
    says(&a.check(br#"{"rule":"api-per-ip","key":"k","cost":1e300}"#), 400, "`cost`");
    says(&a.create(br#"{"url":"https://example.com/","expires":-5}"#), 400, "got -5");
    says(&a.create(br#"{"url":"https://example.com/","expires":1e300}"#), 400, "from now to ten years ahead");
    says(&a.incr(br#"{"by":99999999999999999999}"#), 400, "expected i64");
    // Nothing was written by any of them.
    let r = request(a.c.port("n1", "kv"), "GET", "/kv/hostile", &[], b"").unwrap();
    assert_eq!(r.json()["Value"]["version"], 0, "{}", r.body);
}

#[test]
fn an_oversized_body_is_refused_with_413_and_the_limit() {
    let a = Apis::start();
    let big = vec![b'a'; 3 << 20];
    says(&a.check(&big), 413, "larger than 65536 bytes (body_bytes_max)");
    says(&a.create(&big), 413, "over 8192 bytes");
    says(&a.put(&big), 413, "the request body is over 1048576 bytes");
}
