//! Credentials on the HTTP routes that change state or spend quota, on real processes
//! (docs/operations.md, "Credentials"). Each refusal is checked by the reason the
//! server gives, and each route is shown to work with the right token, so a test fails
//! both when a route is open and when the token does not get through.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Resp, request, wait_for};
use std::net::SocketAddr;
use std::time::Duration;

const LIMITER: &str = "rate-limiter";
const SHORTENER: &str = "url-shortener";

fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, extra: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    h.extend_from_slice(extra);
    request(addr, method, path, &h, body.as_bytes()).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// A 401 whose JSON error says `why`.
fn refused(r: &Resp, why: &str) {
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains(why), "the 401 should say `{why}`: {}", r.body);
}

#[test]
fn state_changing_routes_need_the_cluster_tokens() {
    let c = common::start_http_services();
    let (service, admin) = (c.service_auth(), c.admin_auth());
    let kv = c.port("n1", "kv");

    // kv: writes need the service token; reads do not.
    let put = |auth: Option<&str>| call(kv, "PUT", "/kv/guarded", auth, &[], r#"{"value":"v"}"#);
    refused(&put(None), "a service token is required");
    refused(&put(Some("Bearer 0000")), "the service token does not match this cluster's");
    let r = wait_for("a kv write with the service token", Duration::from_secs(20), || {
        Some(put(Some(&service))).filter(|r| r.status == 200)
    });
    assert!(r.body.contains("Written"), "{}", r.body);
    assert_eq!(put(Some(&admin)).status, 200, "the admin token passes where the service token is asked for");
    let r = call(kv, "GET", "/kv/guarded", None, &[], "");
    assert!(r.status == 200 && r.body.contains("\"v\""), "reads stay open: {} {}", r.status, r.body);
    let r = call(kv, "DELETE", "/kv/guarded", None, &[], "");
    refused(&r, "a service token is required");

    // The admin API's chaos route needs the admin token, not the service token.
    let chaos = |auth: Option<&str>| call(c.admin("n1"), "POST", "/v1/chaos", auth, &[], r#""Heal""#);
    refused(&chaos(None), "an admin token is required");
    refused(&chaos(Some(&service)), "the admin token does not match this cluster's");
    assert_eq!(chaos(Some(&admin)).status, 200);

    // Rate limiter rules: admin only.
    let lim = c.port("n2", LIMITER);
    let rules = call(lim, "GET", "/v1/rules", None, &[], "");
    assert_eq!(rules.status, 200, "reading the rules stays open: {}", rules.body);
    let put_rules = |auth: Option<&str>| {
        let doc = "version = 1000\n[[rule]]\nname = \"x\"\ndimension = \"user\"\nalgorithm = \"token_bucket\"\nlimit = 1\nwindow_ms = 1000\n";
        call(lim, "PUT", "/v1/rules", auth, &[], doc)
    };
    refused(&put_rules(None), "an admin token is required");
    refused(&put_rules(Some(&service)), "the admin token does not match this cluster's");
    let after = call(lim, "GET", "/v1/rules", None, &[], "");
    assert_eq!(after.json()["version"], rules.json()["version"], "a refused update changes nothing");
}

#[test]
fn a_users_quota_cannot_be_spent_without_the_service_token() {
    let c = common::start_http_services();
    let lim = c.port("n1", LIMITER);
    let service = c.service_auth();
    // The issue's attack: drain alice's LLM quota (60 requests a minute) in one check.
    let drain = r#"{"checks":[{"rule":"llm-requests","key":"alice","cost":60}]}"#;
    for auth in [None, Some("Bearer not-the-token")] {
        let r = call(lim, "POST", "/v1/check", auth, &[], drain);
        refused(&r, if auth.is_none() { "a service token is required" } else { "does not match" });
    }
    // Her quota is whole: a trusted service's check of cost 1 leaves 59.
    let r = wait_for("an authorized check", Duration::from_secs(20), || {
        let one = r#"{"rule":"llm-requests","key":"alice","cost":1}"#;
        Some(call(lim, "POST", "/v1/check", Some(&service), &[], one)).filter(|r| r.status == 200)
    });
    assert_eq!(r.header("x-ratelimit-remaining"), Some("59"), "{}", r.body);
}

#[test]
fn only_the_authenticating_proxy_may_name_a_user() {
    let c = common::start_http_services();
    let gw = c.port("n3", SHORTENER);
    let service = c.service_auth();
    let ann = [("X-User-Id", "ann")];
    let create = |auth: Option<&str>, alias: &str| {
        let body = format!(r#"{{"url":"https://example.com/{alias}","alias":"{alias}"}}"#);
        call(gw, "POST", "/api/links", auth, &ann, &body)
    };
    // Anyone can send X-User-Id: without the proxy's token it is refused, not trusted.
    refused(&create(None, "forged"), "X-User-Id is accepted only from the authenticating proxy");
    let r = call(gw, "GET", "/api/links/forged", None, &[], "");
    assert_eq!(r.status, 404, "the refused create stored nothing: {}", r.body);
    let r = wait_for("a create through the proxy", Duration::from_secs(20), || {
        Some(create(Some(&service), "annslink")).filter(|r| r.status == 201)
    });
    assert!(r.body.contains("\"owned\":true"), "{}", r.body);
    // An impostor cannot edit or delete ann's link by naming her.
    let patch = r#"{"url":"https://example.com/edited"}"#;
    refused(
        &call(gw, "PATCH", "/api/links/annslink", None, &ann, patch),
        "accepted only from the authenticating proxy",
    );
    refused(&call(gw, "DELETE", "/api/links/annslink", None, &ann, ""), "accepted only from the authenticating proxy");
    let r = call(gw, "GET", "/api/links/annslink", None, &[], "");
    assert!(r.body.contains("https://example.com/annslink"), "unchanged: {}", r.body);
    // Through the proxy, ann manages it.
    assert_eq!(call(gw, "PATCH", "/api/links/annslink", Some(&service), &ann, patch).status, 200);
    // Anonymous links need no credential at all.
    let r = call(gw, "POST", "/api/links", None, &[], r#"{"url":"https://example.com/anon"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
}

/// End users prove who they are with their own API key (the cluster's api-keys.toml):
/// the key names the owner of the links it creates; another user's key cannot change
/// them, a made-up key is refused with the reason, and the operator's admin token can
/// take any link down.
#[test]
fn a_users_api_key_names_the_owner_of_their_links() {
    let c = common::start_http_services();
    let gw = c.port("n2", SHORTENER);
    let alice = format!("Bearer {}", c.api_key("alice"));
    let bob = format!("Bearer {}", c.api_key("bob"));
    let r = wait_for("a create with alice's key", Duration::from_secs(20), || {
        Some(call(gw, "POST", "/api/links", Some(&alice), &[], r#"{"url":"https://example.com/a","alias":"alices"}"#))
            .filter(|r| r.status == 201)
    });
    assert!(r.body.contains("\"owned\":true"), "{}", r.body);
    let patch = r#"{"url":"https://example.com/edited"}"#;
    // Bob's valid key is not alice's: 403 with the reason, and nothing changes.
    let r = call(gw, "PATCH", "/api/links/alices", Some(&bob), &[], patch);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("belongs to another user"), "{}", r.body);
    // A made-up key: 401, and the reason says the key is not valid.
    let fake = "Bearer sk-troupe-000000000000000000000000000000000000000000000000";
    refused(
        &call(gw, "PATCH", "/api/links/alices", Some(fake), &[], patch),
        "the API key is not valid for this cluster",
    );
    refused(&call(gw, "POST", "/api/links", Some(fake), &[], r#"{"url":"https://example.com/f"}"#), "not valid");
    // Without a credential the link cannot be managed either.
    let r = call(gw, "DELETE", "/api/links/alices", None, &[], "");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("send the API key of the user who created this link"), "{}", r.body);
    let r = call(gw, "GET", "/api/links/alices", None, &[], "");
    assert!(r.body.contains("https://example.com/a\""), "unchanged: {}", r.body);
    // Alice manages her link.
    assert_eq!(call(gw, "PATCH", "/api/links/alices", Some(&alice), &[], patch).status, 200);
    assert_eq!(call(gw, "DELETE", "/api/links/alices", Some(&alice), &[], "").status, 204);
    // The operator takes an anonymous link down with the admin token.
    let r = call(gw, "POST", "/api/links", None, &[], r#"{"url":"https://example.com/spam","alias":"spam-link"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(call(gw, "DELETE", "/api/links/spam-link", Some(&alice), &[], "").status, 403);
    assert_eq!(call(gw, "DELETE", "/api/links/spam-link", Some(&c.admin_auth()), &[], "").status, 204);
}

/// Rule changes are the operator's, and even the operator cannot drop by accident a rule
/// that a running system names (`ip_rule = "shortener-create-ip"` in the URL shortener's
/// gateway): the update is refused with the dependents, unless it says `?force=true`.
#[test]
fn a_rule_a_system_uses_is_not_dropped_by_accident() {
    let c = common::start_http_services();
    let lim = c.port("n1", LIMITER);
    let admin = c.admin_auth();
    let before = call(lim, "GET", "/v1/rules", None, &[], "").json()["version"].clone();
    let only_x = "version = 1000\n[[rule]]\nname = \"x\"\ndimension = \"user\"\nalgorithm = \"token_bucket\"\nlimit = 1\nwindow_ms = 1000\n";
    let r = wait_for("the rules singleton's answer", Duration::from_secs(20), || {
        Some(call(lim, "PUT", "/v1/rules", Some(&admin), &[], only_x)).filter(|r| r.status != 503)
    });
    assert_eq!(r.status, 400, "{}", r.body);
    for why in [
        "rule `shortener-create-ip` is used by url-shortener.gateway (ip_rule)",
        "rule `shortener-create-user` is used by url-shortener.gateway (user_rule)",
        "force=true",
    ] {
        assert!(r.body.contains(why), "the refusal should say `{why}`: {}", r.body);
    }
    assert_eq!(call(lim, "GET", "/v1/rules", None, &[], "").json()["version"], before, "nothing changed");
    let r = call(lim, "PUT", "/v1/rules?force=true", Some(&admin), &[], only_x);
    assert_eq!(r.status, 200, "forced: {}", r.body);
    assert_eq!(r.json()["version"], 1000);
}
