//! The session cookie codec and store on arbitrary input.
//!
//! Each input is used four ways:
//! 1. as a sealed value: `Sealer::open` never panics, and (under keys no
//!    input knows) never opens it;
//! 2. as a plaintext: `seal` then `open` gives it back; under another cookie
//!    name, or with one character of the sealed text changed, it does not open;
//! 3. as a `Cookie` header: `CookieStore::load` never panics;
//! 4. as the plaintext of a session cookie sealed with the store's key, whole
//!    and split in two parts: `load` never panics, and a session that loads
//!    saves again and loads back the same.
#![no_main]

use std::sync::{Arc, LazyLock};

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use ssogate::config::Secret;
use ssogate::fields::Fields;
use ssogate::proxy::headers::{Outbound, to_upstream};
use ssogate::session::{CookieNames, CookieStore, Sealer, Session, Store};

const NAME: &str = "__Host-ssogate";
/// Two keys, as during a rotation: the first seals, both open.
static SEALER: LazyLock<Arc<Sealer>> = LazyLock::new(|| {
    let keys = [Secret::new(vec![7u8; 32]), Secret::new(b"old key".to_vec())];
    Arc::new(Sealer::new(&keys).expect("two keys make a sealer"))
});
static STORE: LazyLock<CookieStore> =
    LazyLock::new(|| CookieStore::new(SEALER.clone(), CookieNames::new(true)));

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // 1. Arbitrary sealed values.
    assert!(
        SEALER.open(NAME, text.as_bytes()).is_none(),
        "an arbitrary value opened: {text:?}"
    );
    if let Some((name, sealed)) = text.split_once('\u{0}') {
        assert!(SEALER.open(name, sealed).is_none());
    }

    // 2. Round trip, name binding and tampering.
    let sealed = SEALER.seal(NAME, data).expect("sealing never fails");
    assert_eq!(SEALER.open(NAME, &sealed).as_deref(), Some(data));
    assert!(SEALER.open("__Host-ssogate_1of2", &sealed).is_none());
    let at = data.first().map_or(0, |&b| usize::from(b)) % sealed.len();
    let mut tampered = sealed.clone().into_bytes();
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("base64 is ASCII");
    assert!(
        SEALER.open(NAME, &tampered).is_none(),
        "changing character {at} still opened"
    );

    // 3. Arbitrary Cookie headers.
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, v);
        if let Some(s) = STORE.load(&h) {
            check_session(&s);
        }
        let mut out = Vec::new();
        STORE.clear(&h, &mut out);
    }

    // 4. Arbitrary session plaintexts, sealed for real.
    let whole = format!("other=1; {NAME}={sealed}");
    let mid = sealed.len() / 2;
    let split = format!(
        "{NAME}_2of2={}; {NAME}_1of2={}; x=y",
        &sealed[mid..],
        &sealed[..mid]
    );
    for cookie in [whole, split] {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&cookie).expect("base64 is a header value"),
        );
        if let Some(s) = STORE.load(&h) {
            check_session(&s);
        }
    }
});

/// A session that loads saves again and loads back the same.
fn check_session(s: &Session) {
    // The identity as the upstream would get it: whole header lines only,
    // whatever the claims hold.
    let v = HeaderValue::from_static("v");
    let mut head = Vec::new();
    to_upstream(
        Fields::Map(&HeaderMap::new()),
        &Outbound {
            peer: &v,
            proto: &v,
            host: &v,
            identity: Some(&s.identity),
            upgrade: false,
            trusted_peer: false,
            request_id: None,
        },
        &mut head,
    );
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.is_empty() || line.windows(2).any(|w| w == b": "),
            "a claim broke a header line: {:?}",
            String::from_utf8_lossy(&head)
        );
        assert!(!line.contains(&b'\r'), "CR inside a header line");
    }
    let _ = s.cookie_max_age(0);
    let mut out = Vec::new();
    if STORE.save(s, &HeaderMap::new(), 0, &mut out).is_err() {
        return;
    }
    let pairs: Vec<&str> = out
        .iter()
        .map(|v| v.to_str().expect("Set-Cookie is text"))
        .filter_map(|v| v.split(';').next())
        .filter(|p| !p.ends_with('='))
        .collect();
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::from_str(&pairs.join("; ")).expect("cookie pairs are a header value"),
    );
    let back = STORE.load(&h).expect("a saved session loads again");
    assert_eq!(back.id, s.id);
    assert_eq!(back.identity, s.identity);
    assert_eq!(back.sid, s.sid);
    assert_eq!(
        (back.created_at, back.issued_at, back.expires_at),
        (s.created_at, s.issued_at, s.expires_at)
    );
    assert_eq!(
        back.refresh_token.as_ref().map(|t| t.expose().clone()),
        s.refresh_token.as_ref().map(|t| t.expose().clone())
    );
}
