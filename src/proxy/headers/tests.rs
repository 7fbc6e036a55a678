use http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;

use super::*;
use crate::fields::Fields;

/// `10.1.2.3`, the peer of every test request.
static PEER: HeaderValue = HeaderValue::from_static("10.1.2.3");
/// The scheme and public host most tests forward with.
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static G: HeaderValue = HeaderValue::from_static("g");

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
        request_id: None,
    }
}

/// The header lines `to_upstream` writes for `h`, each checked to be one
/// well-formed `name: value` line, parsed back into a map.
/// Both forms of the fields are checked to give the same lines: the map,
/// and the same headers written as a head and parsed in place, as the
/// gate's own HTTP/1.1 path reads them.
fn sent(h: &HeaderMap, out: &Outbound<'_>) -> HeaderMap {
    let head = lines(h, out);
    let text = String::from_utf8(head).expect("the lines here are UTF-8");
    parse_lines(&text)
}

/// [`to_upstream`] over `h` as a map and as a parsed head; the two must agree.
fn lines(h: &HeaderMap, out: &Outbound<'_>) -> Vec<u8> {
    let mut head = Vec::new();
    to_upstream(Fields::Map(h), out, &mut head);
    let (wire, spans) = crate::fields::head_of(h).expect("a head that parses");
    let mut in_place = Vec::new();
    to_upstream(
        Fields::Spans {
            head: &wire,
            spans: &spans,
        },
        out,
        &mut in_place,
    );
    assert_eq!(
        String::from_utf8_lossy(&in_place),
        String::from_utf8_lossy(&head),
        "a parsed head forwards as its map does"
    );
    head
}

fn parse_lines(text: &str) -> HeaderMap {
    assert!(
        text.is_empty() || text.ends_with("\r\n"),
        "every line ends with CRLF: {text:?}"
    );
    let mut map = HeaderMap::new();
    for line in text.split_terminator("\r\n") {
        let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("{line:?}"));
        assert!(!value.contains(['\r', '\n']), "{line:?}");
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
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
    let h = sent(&h, &outbound(&proto, &host, Some(&id), false));
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
    let h = sent(&h, &outbound(&HTTPS, &G, None, false));
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
    let h = sent(&h, &outbound(&HTTPS, &G, None, true));
    assert_eq!(h[header::UPGRADE], "websocket");
    assert_eq!(h[header::CONNECTION], "upgrade");
}

#[test]
fn gate_cookies_are_removed_and_app_cookies_kept_in_one_header() {
    let cookies_sent = |values: &[&'static str]| {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_static(v));
        }
        let h = sent(&h, &outbound(&HTTPS, &G, None, false));
        h.get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cookies_sent(&[
            "app=1; __Host-ssogate=secret",
            "__Host-ssogate_1of2=a; theme=dark"
        ]),
        ["app=1; theme=dark"]
    );
    assert_eq!(
        cookies_sent(&["__Host-ssogate=x", "__Host-ssogate-login-abc=y"]),
        Vec::<String>::new(),
        "no Cookie line when nothing is left"
    );
    assert_eq!(
        cookies_sent(&["a=1;b=2"]),
        ["a=1;b=2"],
        "untouched when nothing to remove"
    );
    assert_eq!(
        cookies_sent(&["a=1", "b=2"]),
        ["a=1; b=2"],
        "HTTP/2's one header per cookie joined"
    );
}

#[test]
fn a_cookie_that_is_not_ascii_goes_on_and_the_gates_still_does_not() {
    let mut h = HeaderMap::new();
    h.append(
        header::COOKIE,
        HeaderValue::from_bytes(b"theme=gr\xfcn; __Host-ssogate=secret; b=2").unwrap(),
    );
    let head = lines(&h, &outbound(&HTTPS, &G, None, false));
    let cookie_lines: Vec<&[u8]> = head
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"cookie: "))
        .collect();
    assert_eq!(cookie_lines, [&b"cookie: theme=gr\xfcn; b=2\r"[..]]);
    assert!(!head.windows(6).any(|w| w == b"secret"));
}

#[test]
fn claims_become_headers_and_hostile_values_are_dropped() {
    let id = Identity {
        sub: "alice".into(),
        email: Some("a@example.com\r\nX-Evil: 1".into()),
        name: Some("Alice".into()),
        preferred_username: Some("Ålice".into()),
    };
    let head = lines(&HeaderMap::new(), &outbound(&HTTPS, &G, Some(&id), false));
    assert!(
        !head.windows(6).any(|w| w == b"X-Evil"),
        "CR/LF must never reach a header"
    );
    let text = String::from_utf8(head).unwrap();
    assert!(text.contains("x-forwarded-user: alice\r\n"), "{text}");
    assert!(!text.contains("x-forwarded-email"), "{text}");
    assert!(
        text.contains("x-forwarded-preferred-username: Ålice\r\n"),
        "{text}"
    );
}

#[test]
fn a_request_id_the_gate_made_replaces_the_clients() {
    let mut h = HeaderMap::new();
    h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
    let made = Outbound {
        request_id: Some(b"0123abcd"),
        ..outbound(&HTTPS, &G, None, false)
    };
    let up = sent(&h, &made);
    assert_eq!(
        up.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(),
        ["0123abcd"]
    );
    h.insert(X_REQUEST_ID, HeaderValue::from_static("client-7"));
    let up = sent(&h, &outbound(&HTTPS, &G, None, false));
    assert_eq!(
        up.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(),
        ["client-7"],
        "the client's usable id goes on as it came"
    );
}

#[test]
fn framing_expect_and_host_are_left_to_the_client_and_the_gate() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("evil.example"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    let up = sent(&h, &outbound(&HTTPS, &G, None, false));
    for gone in ["content-length", "transfer-encoding", "expect"] {
        assert!(up.get(gone).is_none(), "{gone} written: {up:?}");
    }
    assert_eq!(up.get_all(header::HOST).iter().collect::<Vec<_>>(), ["g"]);
    assert_eq!(up[header::ACCEPT], "*/*");
}

#[test]
fn answer_hop_by_hop_headers_go_and_an_upgrade_keeps_its_own() {
    let answer = || {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Internal"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-internal", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h
    };
    let mut plain = answer();
    let all = answer();
    let fields = Fields::Map(&all);
    let listing = lists_headers(fields);
    assert!(listing);
    let kept: Vec<&str> = all
        .keys()
        .filter(|n| answer_keeps(n.as_str().as_bytes(), fields, listing))
        .map(HeaderName::as_str)
        .collect();
    assert_eq!(
        kept,
        ["content-type"],
        "the in-place path keeps what the map keeps"
    );
    from_upstream(&mut plain, false);
    assert_eq!(
        plain.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
        ["content-type"]
    );
    let mut switched = answer();
    from_upstream(&mut switched, true);
    assert_eq!(switched[header::CONNECTION], "upgrade");
    assert_eq!(switched[header::UPGRADE], "websocket");
    assert!(switched.get("x-internal").is_none() && switched.get("x-other").is_none());
    let mut bare = HeaderMap::new();
    bare.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
    from_upstream(&mut bare, false);
    assert_eq!(bare.len(), 1, "nothing to remove, nothing removed");
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
        let up = sent(&h, &outbound(&HTTPS, &G, None, false));
        prop_assert!(up.values().all(|v| v != "spoof"));
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
    let untrusted = sent(&untrusted, &outbound(&proto, &host, None, false));
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
    let trusted = sent(&trusted, &out);
    assert_eq!(
        trusted.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
        ["203.0.113.7, 198.51.100.1, 10.1.2.3"],
        "the underscore spelling is never believed"
    );
    assert_eq!(trusted.get(X_FORWARDED_HOST).unwrap(), "ct.example.com");
}
