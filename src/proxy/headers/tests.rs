use http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;

use super::*;

/// `10.1.2.3`, the peer of every test request.
static PEER: HeaderValue = HeaderValue::from_static("10.1.2.3");

fn outbound<'a>(
    proto: &'a HeaderValue,
    host: &'a HeaderValue,
    identity: Option<&'a Identity>,
    upgrade: bool,
) -> Outbound<'a> {
    Outbound {
        peer: &PEER,
        proto,
        host,
        identity,
        upgrade,
        trusted_peer: false,
    }
}

#[test]
fn spoofed_identity_and_forwarding_headers_are_replaced() {
    let mut h = HeaderMap::new();
    for name in [
        "x-forwarded-user",
        "X-Forwarded-Email",
        "x_forwarded_user",
        "X_FORWARDED_PREFERRED_USERNAME",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
    ] {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("evil"),
        );
    }
    let (proto, host) = (
        HeaderValue::from_static("https"),
        HeaderValue::from_static("gate.example"),
    );
    let id = Identity {
        sub: "alice".into(),
        ..Default::default()
    };
    to_upstream(&mut h, &outbound(&proto, &host, Some(&id), false));
    assert!(h.values().all(|v| v != "evil"), "{h:?}");
    assert_eq!(h["x-forwarded-user"], "alice");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "gate.example");
    assert_eq!(h[header::HOST], "gate.example");
    assert!(h.get("x-forwarded-email").is_none(), "no claim, no header");
}

#[test]
fn hop_by_hop_and_connection_listed_headers_go() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-secret"),
    );
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert("x-app", HeaderValue::from_static("kept"));
    let (proto, host) = (
        HeaderValue::from_static("https"),
        HeaderValue::from_static("g"),
    );
    to_upstream(&mut h, &outbound(&proto, &host, None, false));
    for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade"] {
        assert!(h.get(gone).is_none(), "{gone} survived");
    }
    assert_eq!(h["x-app"], "kept");
}

#[test]
fn upgrade_keeps_upgrade_and_connection() {
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let (proto, host) = (
        HeaderValue::from_static("https"),
        HeaderValue::from_static("g"),
    );
    to_upstream(&mut h, &outbound(&proto, &host, None, true));
    assert_eq!(h[header::UPGRADE], "websocket");
    assert_eq!(h[header::CONNECTION], "upgrade");
}

#[test]
fn gate_cookies_are_removed_and_app_cookies_kept_in_one_header() {
    let mut h = HeaderMap::new();
    h.append(
        header::COOKIE,
        HeaderValue::from_static("app=1; __Host-ssogate=secret"),
    );
    h.append(
        header::COOKIE,
        HeaderValue::from_static("__Host-ssogate_1of2=a; theme=dark"),
    );
    strip_gate_cookies(&mut h);
    assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
    assert_eq!(h[header::COOKIE], "app=1; theme=dark");

    let mut only_ours = HeaderMap::new();
    only_ours.insert(header::COOKIE, HeaderValue::from_static("__Host-ssogate=x"));
    strip_gate_cookies(&mut only_ours);
    assert!(only_ours.get(header::COOKIE).is_none());

    let mut none_of_ours = HeaderMap::new();
    none_of_ours.insert(header::COOKIE, HeaderValue::from_static("a=1;b=2"));
    strip_gate_cookies(&mut none_of_ours);
    assert_eq!(
        none_of_ours[header::COOKIE],
        "a=1;b=2",
        "untouched when nothing to remove"
    );
}

proptest! {
    #[test]
    fn no_spelling_of_an_owned_header_survives(
        base in prop::sample::select(vec!["x-forwarded-user", "x-forwarded-email", "x-forwarded-preferred-username", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]),
        mask in proptest::collection::vec(any::<(bool, bool)>(), 40),
    ) {
        let spelled: String = base.chars().zip(mask.iter()).map(|(c, (upper, underscore))| {
            if c == '-' && *underscore { '_' } else if *upper { c.to_ascii_uppercase() } else { c }
        }).collect();
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_bytes(spelled.as_bytes()).unwrap(), HeaderValue::from_static("spoof"));
        let (proto, host) = (HeaderValue::from_static("https"), HeaderValue::from_static("g"));
        to_upstream(&mut h, &outbound(&proto, &host, None, false));
        prop_assert!(h.values().all(|v| v != "spoof"));
    }
}

#[test]
fn a_trusted_proxys_forwarded_for_is_appended_to_and_an_untrusted_one_replaced() {
    let (proto, host) = (
        HeaderValue::from_static("https"),
        HeaderValue::from_static("ct.example.com"),
    );
    let client = |h: &mut HeaderMap| {
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.append(
            HeaderName::from_static("x_forwarded_for"),
            HeaderValue::from_static("6.6.6.6"),
        );
    };
    let mut untrusted = HeaderMap::new();
    client(&mut untrusted);
    to_upstream(&mut untrusted, &outbound(&proto, &host, None, false));
    assert_eq!(
        untrusted
            .get_all(X_FORWARDED_FOR)
            .iter()
            .collect::<Vec<_>>(),
        ["10.1.2.3"]
    );
    assert!(!untrusted.contains_key("x_forwarded_for"));

    let mut trusted = HeaderMap::new();
    client(&mut trusted);
    let out = Outbound {
        trusted_peer: true,
        ..outbound(&proto, &host, None, false)
    };
    to_upstream(&mut trusted, &out);
    assert_eq!(
        trusted.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
        ["203.0.113.7, 198.51.100.1, 10.1.2.3"],
        "the underscore spelling is never believed"
    );
    assert_eq!(trusted.get(X_FORWARDED_HOST).unwrap(), "ct.example.com");
}
