use super::*;
use crate::validate::validate_url;

fn policy() -> AbusePolicy {
    let blocklist = DomainBlocklist::from_lines("evil.example\n.phish.test\n").expect("valid list");
    let config = AbuseConfig { own_domains: vec!["trp.example".into()], ..AbuseConfig::default() };
    AbusePolicy::new(blocklist, config)
}

fn findings(raw: &str) -> Vec<Finding> {
    policy().assess(&validate_url(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))).findings
}

fn has(raw: &str, pred: impl Fn(&Finding) -> bool) -> bool {
    findings(raw).iter().any(pred)
}

#[test]
fn honest_links_pass() {
    for raw in [
        "https://www.example.com/",
        "https://docs.rs/serde/latest/serde/",
        "https://medium.com/@alice/my-post-123",
        "https://en.wikipedia.org/wiki/Caf%C3%A9",
        "https://xn--bcher-kva.de/",
        "https://shop.example.co.uk/item?id=42&ref=mail",
    ] {
        let a = policy().assess(&validate_url(raw).expect("valid"));
        assert!(a.findings.is_empty(), "{raw}: {:?}", a.findings);
        assert!(!a.is_blocked());
    }
}

#[test]
fn blocklist_exact_and_domain() {
    assert!(has("https://evil.example/x", |f| matches!(f, Finding::Blocklisted(BlockMatch::Exact(_)))));
    assert!(has("https://a.b.PHISH.test/", |f| matches!(f, Finding::Blocklisted(BlockMatch::Domain(_)))));
    assert!(!has("https://notevil.example/", |f| matches!(f, Finding::Blocklisted(_))));
}

#[test]
fn ip_literals() {
    assert!(has("http://93.184.216.34/", |f| matches!(f, Finding::IpLiteral { .. })));
    assert!(has("http://2130706433/", |f| matches!(f, Finding::InternalAddress { .. })), "obfuscated 127.0.0.1");
    assert!(has("http://10.1.2.3/", |f| matches!(f, Finding::InternalAddress { .. })));
    assert!(has("http://[::1]/", |f| matches!(f, Finding::InternalAddress { .. })));
    assert!(has("http://[2606:4700::1111]/", |f| matches!(f, Finding::IpLiteral { .. })));
    assert!(has("http://[::ffff:192.168.0.1]/", |f| matches!(f, Finding::InternalAddress { .. })));
}

#[test]
fn deep_subdomains() {
    assert!(has("https://paypal.com.secure.login.verify.evil.example/", |f| matches!(
        f,
        Finding::DeepSubdomains { labels: 7, max_labels: 6 }
    )));
    assert!(!has("https://a.b.c.d.example.com/", |f| matches!(f, Finding::DeepSubdomains { .. })));
}

#[test]
fn shortener_chains_including_ourselves() {
    assert!(has("https://bit.ly/abc", |f| matches!(f, Finding::ShortenerChain { domain } if domain == "bit.ly")));
    assert!(has("https://www.tinyurl.com/abc", |f| matches!(f, Finding::ShortenerChain { .. })));
    assert!(has(
        "https://trp.example/Ab3dE9x",
        |f| matches!(f, Finding::ShortenerChain { domain } if domain == "trp.example")
    ));
    assert!(!has("https://notbit.ly/abc", |f| matches!(f, Finding::ShortenerChain { .. })));
}

#[test]
fn homographs() {
    // "аpple": Cyrillic а + Latin pple.
    let mixed = "https://xn--pple-43d.com/";
    assert!(has(mixed, |f| matches!(f, Finding::MixedScripts { .. })), "{:?}", findings(mixed));
    // All-Cyrillic lookalike "аррӏе".
    assert!(has("https://xn--80ak6aa92e.com/", |f| matches!(f, Finding::LatinLookalike { .. })));
    assert!(has("https://xn--a-9.com/", |f| matches!(f, Finding::BadPunycode { .. })));
    // Honest IDN (German) passes.
    assert!(!has("https://xn--mnchen-3ya.de/", |f| f.severity() == Severity::Block));
}

#[test]
fn suspicious_tlds() {
    assert!(has("https://free-prizes.tk/", |f| matches!(f, Finding::SuspiciousTld { tld } if tld == "tk")));
    assert!(!has("https://example.org/", |f| matches!(f, Finding::SuspiciousTld { .. })));
}

#[test]
fn encoded_payloads() {
    let escapes = "%3C%73%63%72%69%70%74%3E".repeat(30);
    assert!(has(&format!("https://example.com/?q={escapes}"), |f| matches!(f, Finding::EncodedPayload { .. })));
    let blob = "QUJD".repeat(80);
    assert!(has(&format!("https://example.com/?d={blob}&x={}", "y".repeat(200)), |f| matches!(
        f,
        Finding::EncodedPayload { .. }
    )));
    let honest = (0..60).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>().join("&");
    assert!(!has(&format!("https://example.com/?{honest}"), |f| matches!(f, Finding::EncodedPayload { .. })));
}

#[test]
fn at_sign_tricks() {
    assert!(has("https://evil.example/www.paypal.com@login", |f| matches!(
        f,
        Finding::AtSignTrick { shown_host } if shown_host == "www.paypal.com"
    )));
    assert!(has("https://x.example/?u=bank.com%40evil", |f| matches!(f, Finding::AtSignTrick { .. })));
    assert!(!has("https://medium.com/@alice", |f| matches!(f, Finding::AtSignTrick { .. })));
    assert!(!has("https://example.com/contact?to=alice@", |f| matches!(f, Finding::AtSignTrick { .. })));
}

#[test]
fn double_encoding() {
    assert!(has("https://example.com/a%252e%252e/b", |f| matches!(f, Finding::DoubleEncoding)));
    assert!(!has("https://example.com/a%2e/b", |f| matches!(f, Finding::DoubleEncoding)));
}

#[test]
fn verdict_rules() {
    let p = policy();
    // One warning alone passes.
    let one = p.assess(&validate_url("https://prizes.tk/").expect("valid"));
    assert_eq!(one.findings.len(), 1);
    assert!(one.blocked_reason().is_none());
    // Two warnings block, and the reason names both.
    let two = p.assess(&validate_url("http://93.184.216.34/a%252e").expect("valid"));
    let reason = two.blocked_reason().expect("blocked");
    assert!(reason.contains("raw IP") && reason.contains("double percent-encoding"), "{reason}");
    // One block finding blocks.
    let chain = p.assess(&validate_url("https://bit.ly/x").expect("valid"));
    assert!(chain.blocked_reason().is_some_and(|r| r.contains("bit.ly")));
}

#[test]
fn non_ascii_before_an_at_sign_is_handled() {
    assert!(!has("https://example.com/caf\u{e9}@x", |f| matches!(f, Finding::AtSignTrick { .. })));
    assert!(has("https://example.com/\u{e9}paypal.com@x", |f| matches!(f, Finding::AtSignTrick { .. })));
}

proptest::proptest! {
    /// Screening any URL that passed validation never panics, and a blocked verdict always
    /// comes with a reason.
    #[test]
    fn assess_never_panics(
        host in "[a-z]{1,8}(\\.[a-z0-9-]{1,8}){1,8}|xn--[a-z0-9-]{1,12}\\.com|[0-9]{1,3}(\\.[0-9]{1,3}){3}",
        path in proptest::collection::vec(proptest::sample::select(&['a', '.', '@', '%', '2', '5', '\u{e9}', '/', '-', 'F'][..]), 0..40),
        query in proptest::option::of("[a-zA-Z0-9%=&+/@.]{0,700}"),
    ) {
        let path: String = path.into_iter().collect();
        let raw = match query {
            Some(q) => format!("https://{host}/{path}?{q}"),
            None => format!("https://{host}/{path}"),
        };
        if let Ok(url) = validate_url(&raw) {
            let assessment = policy().assess(&url);
            if let Some(reason) = assessment.blocked_reason() {
                proptest::prop_assert!(!reason.is_empty());
            }
        }
    }
}
