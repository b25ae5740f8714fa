use super::*;
use proptest::prelude::*;

fn ok(raw: &str) -> ValidUrl {
    validate_url(raw).unwrap_or_else(|e| panic!("{raw:?} should be valid: {e}"))
}

fn err(raw: &str) -> UrlError {
    match validate_url(raw) {
        Ok(v) => panic!("{raw:?} should be rejected, got {v}"),
        Err(e) => e,
    }
}

#[test]
fn normalizes_scheme_host_and_default_port() {
    assert_eq!(ok("HTTPS://Example.COM:443").as_str(), "https://example.com/");
    assert_eq!(ok("http://example.com:80/a?b=1#c").as_str(), "http://example.com/a?b=1#c");
    assert_eq!(ok("  https://example.com./x  ").as_str(), "https://example.com/x");
    let url = ok("https://sub.example.org:8443/p/q?x=1&y=2#frag");
    assert_eq!(url.port(), Some(8443));
    assert_eq!(url.path(), "/p/q");
    assert_eq!(url.query(), Some("x=1&y=2"));
    assert_eq!(url.fragment(), Some("frag"));
    assert_eq!(url.host(), &Host::Domain("sub.example.org".into()));
}

#[test]
fn encodes_non_ascii_path_and_turns_backslashes_into_slashes() {
    assert_eq!(ok("https://example.com/caf\u{e9}?q=\u{e9}").as_str(), "https://example.com/caf%C3%A9?q=%C3%A9");
    assert_eq!(ok("https://example.com/a\\b").as_str(), "https://example.com/a/b");
}

#[test]
fn obfuscated_ip_hosts_become_dotted_quads() {
    assert_eq!(ok("http://2130706433/").host(), &Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)));
    assert_eq!(ok("http://0x7f.1/").host(), &Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)));
    assert_eq!(ok("http://0177.0.0.01/").host(), &Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)));
    assert_eq!(ok("http://[::1]:8080/").as_str(), "http://[::1]:8080/");
    assert!(matches!(err("http://256.1.1.1/"), UrlError::BadHost { .. }));
    assert!(matches!(err("http://1.2.3.4.5/"), UrlError::BadHost { .. }));
    assert!(matches!(err("http://[::g]/"), UrlError::BadHost { .. }));
    assert!(matches!(err("http://.1/"), UrlError::BadHost { .. }));
    assert!(matches!(err("http://1..2/"), UrlError::BadHost { .. }));
}

#[test]
fn scheme_rules() {
    assert!(matches!(err("ftp://example.com/"), UrlError::UnsupportedScheme { .. }));
    assert!(matches!(err("example.com/page"), UrlError::MissingScheme));
    assert!(matches!(err("https:example.com"), UrlError::MissingAuthority));
    for raw in [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " \tjavascript:alert(1)",
        "java\tscript:alert(1)",
        "java\nscript:alert(1)",
        "jav&#x09;ascript:alert(1)",
        "&#106;avascript:alert(1)",
        "&#x6A;avascript&colon;alert(1)",
        "%6A%61%76%61script:alert(1)",
        "%256A%2561vascript:alert(1)",
        "java\u{200B}script:alert(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "DATA:text/html,hi",
        "file:///etc/passwd",
        "vbscript:msgbox(1)",
        "VBScript:msgbox(1)",
    ] {
        assert!(matches!(err(raw), UrlError::ForbiddenScheme { .. }), "{raw:?}");
    }
    // The word inside a query is harmless.
    ok("https://example.com/?next=javascript:alert(1)");
}

#[test]
fn host_rules() {
    assert!(matches!(err("https://user:pass@example.com/"), UrlError::Credentials));
    assert!(matches!(err("https://example.com@evil.com/"), UrlError::Credentials));
    assert!(matches!(err("https:///path"), UrlError::MissingHost));
    assert!(matches!(err("https://localhost/"), UrlError::BadHost { .. }));
    assert!(matches!(err("https://exa mple.com/"), UrlError::ControlCharacter { .. }));
    assert!(matches!(err("https://ex%61mple.com/"), UrlError::BadHost { .. }));
    assert!(matches!(err("https://-bad.com/"), UrlError::BadHost { .. }));
    assert!(matches!(err("https://a..com/"), UrlError::BadHost { .. }));
    assert!(matches!(err("https://b\u{fc}cher.de/"), UrlError::NonAsciiHost { .. }));
    assert!(matches!(err("https://evil.com\\@good.com/"), UrlError::Backslash));
    assert_eq!(ok("https://xn--bcher-kva.de/").host(), &Host::Domain("xn--bcher-kva.de".into()));
    let long_label = "a".repeat(64);
    assert!(matches!(err(&format!("https://{long_label}.com/")), UrlError::BadHost { .. }));
}

#[test]
fn port_rules() {
    assert!(matches!(err("https://example.com:0/"), UrlError::BadPort { .. }));
    assert!(matches!(err("https://example.com:65536/"), UrlError::BadPort { .. }));
    assert!(matches!(err("https://example.com:8o/"), UrlError::BadPort { .. }));
    assert_eq!(ok("https://example.com:/").port(), None);
}

#[test]
fn character_and_length_rules() {
    assert!(matches!(err(""), UrlError::Empty));
    assert!(matches!(err("   "), UrlError::Empty));
    assert!(matches!(err("https://example.com/a\u{7}b"), UrlError::ControlCharacter { position: 21, codepoint: 7 }));
    assert!(matches!(err("https://example.com/\u{202E}fdp.exe"), UrlError::InvisibleCharacter { .. }));
    let at_limit = format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX - 20));
    assert_eq!(ok(&at_limit).as_str().len(), URL_BYTES_MAX);
    let over = format!("{at_limit}a");
    assert!(matches!(err(&over), UrlError::TooLong { len_bytes: 2049, max_bytes: 2048 }));
    // Percent-encoding can push a URL over the limit after normalization.
    let grows = format!("https://example.com/{}", "\u{e9}".repeat(700));
    assert!(matches!(err(&grows), UrlError::TooLong { .. }));
}

#[test]
fn every_error_message_says_what_to_do() {
    for raw in ["", "ftp://x.com", "javascript:1", "https://u:p@x.com", "https://x.com:99999", "https://b\u{fc}cher.de"]
    {
        let message = err(raw).to_string();
        assert!(message.len() > 30, "{raw:?}: terse message {message:?}");
    }
}

proptest! {
    #[test]
    fn never_panics_and_output_is_valid_again(raw in "\\PC{0,80}") {
        if let Ok(url) = validate_url(&raw) {
            prop_assert!(url.as_str().len() <= URL_BYTES_MAX);
            prop_assert!(url.as_str().is_ascii());
            let again = validate_url(url.as_str()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.as_str(), url.as_str());
        }
    }

    #[test]
    fn url_shaped_garbage_never_panics(
        scheme in "(https?|HTTP|javascript|data)(:|://)",
        rest in proptest::collection::vec(
            proptest::sample::select(&['a', 'Z', '0', '9', '.', ':', '@', '%', '[', ']', '/', '?', '#', '&', '=', '\\', ' ', '-', '\u{e9}', '\u{200B}', 'x'][..]),
            0..60,
        ),
    ) {
        let raw: String = scheme.chars().chain(rest).collect();
        if let Ok(url) = validate_url(&raw) {
            prop_assert!(url.as_str().starts_with("http"));
            prop_assert!(url.as_str().is_ascii());
            let again = validate_url(url.as_str()).map_err(|e| TestCaseError::fail(format!("{raw:?}: {e}")))?;
            prop_assert_eq!(again.as_str(), url.as_str());
        }
    }

    #[test]
    fn normalization_is_idempotent(
        host in "[a-zA-Z][a-zA-Z0-9]{0,10}\\.[a-zA-Z]{2,6}",
        path in "(/[a-zA-Z0-9._~\u{e9}-]{0,8}){0,4}",
        query in proptest::option::of("[a-z0-9=&%]{0,20}"),
    ) {
        let raw = match &query {
            Some(q) => format!("HTTPS://{host}{path}?{q}"),
            None => format!("HTTPS://{host}{path}"),
        };
        let first = validate_url(&raw).map_err(|e| TestCaseError::fail(format!("{raw}: {e}")))?;
        let second = validate_url(first.as_str()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(first.as_str(), second.as_str());
        prop_assert!(first.as_str().starts_with("https://"));
        let lower_host = host.to_ascii_lowercase();
        prop_assert_eq!(first.host(), &Host::Domain(lower_host));
    }
}
