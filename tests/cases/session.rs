//! Sessions: what reaches the upstream with one, and which cookies count as one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header;
use ssogate::config::Secret;
use ssogate::identity::Identity;
use ssogate::session::{CookieNames, CookieStore, Sealer, Session, Store as _};

use super::signin::{assert_sign_in_redirect, assert_unauthorized};
use crate::support::gate::{COOKIE_SECRET, OTHER_COOKIE_SECRET, Setup, World};

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const SESSION_COOKIE: &str = "__Host-ssogate";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A sealer over base64 keys, the first sealing.
fn sealer(keys: &[&str]) -> Arc<Sealer> {
    let keys: Vec<Secret<Vec<u8>>> = keys
        .iter()
        .map(|k| Secret::new(STANDARD.decode(k).unwrap()))
        .collect();
    Arc::new(Sealer::new(&keys).unwrap())
}

/// A session for `sub`, as the gate's "oidc" option would make it.
fn session_for(sub: &str, expires_at: u64, id_token: Option<String>) -> Session {
    Session {
        id: ssogate::session::random_id(),
        option: "oidc".into(),
        identity: Identity {
            sub: sub.into(),
            email: Some(format!("{sub}@example.com")),
            name: Some(format!("{sub} Forged")),
            preferred_username: Some(sub.into()),
        },
        sid: None,
        created_at: now(),
        issued_at: 0,
        expires_at,
        refresh_token: None,
        id_token: id_token.map(Secret::new),
    }
}

/// The `Set-Cookie` values the gate's cookie store writes for `session`
/// under `keys` (the https cookie names).
fn seal(keys: &[&str], session: &Session) -> Vec<String> {
    let store = CookieStore::new(sealer(keys), CookieNames::new(true));
    let mut out = Vec::new();
    store
        .save(session, &http::HeaderMap::new(), now(), &mut out)
        .unwrap();
    out.iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// `name=value; name=value` from `Set-Cookie` values.
fn cookie_header(set_cookies: &[String]) -> String {
    set_cookies
        .iter()
        .map(|c| c.split(';').next().unwrap().trim())
        .collect::<Vec<_>>()
        .join("; ")
}

/// One request without a jar: `accept` and a raw `Cookie` header.
async fn get_with_cookie(w: &World, path: &str, accept: &str, cookie: &str) -> reqwest::Response {
    w.api()
        .get(w.url(path))
        .header(header::ACCEPT, accept)
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

/// The cookie counts as no session: navigation → sign in, API → 401,
/// userinfo → 401, and nothing reaches the upstream.
async fn assert_cookie_is_no_session(w: &World, cookie: &str, what: &str) {
    let before = w.upstream.requests().len();
    let nav = get_with_cookie(w, "/app?k=v", HTML, cookie).await;
    let location = nav
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_sign_in_redirect(nav.status().as_u16(), location.as_deref(), "/app?k=v", what);
    let api = get_with_cookie(w, "/api/x", "application/json", cookie).await;
    assert_unauthorized(api, what).await;
    let info = get_with_cookie(w, "/sso/userinfo", "application/json", cookie).await;
    assert_eq!(info.status(), 401, "{what}: userinfo");
    assert_eq!(
        w.upstream.requests().len(),
        before,
        "{what}: the upstream saw a request"
    );
}

/// The cookie is a session for `sub`: the upstream sees the request as `sub`.
async fn assert_cookie_is_session_of(w: &World, cookie: &str, sub: &str, what: &str) {
    let resp = get_with_cookie(w, "/app/ok", "application/json", cookie).await;
    assert_eq!(resp.status(), 200, "{what}");
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path(), "/app/ok", "{what}");
    assert_eq!(seen.header("x-forwarded-user"), Some(sub), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let w = World::start().await;

    // Without a session, spoofed headers authenticate nobody.
    let resp = w
        .api()
        .get(w.url("/app"))
        .header(header::ACCEPT, "application/json")
        .header("X-Forwarded-User", "alice")
        .header("X-Forwarded-Email", "alice@example.com")
        .send()
        .await
        .unwrap();
    assert_unauthorized(resp, "spoofed headers without a session").await;
    assert!(w.upstream.requests().is_empty());

    let b = w.signed_in("alice").await;
    let url = w.url("/app/spoof");
    let req = b
        .client()
        .get(&url)
        .header("X-Forwarded-User", "mallory")
        .header("x-forwarded-user", "mallory2")
        .header("x_forwarded_email", "x")
        .header("X_Forwarded_Preferred_Username", "mallory")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Forwarded-Proto", "http")
        .header("Forwarded", "for=6.6.6.6;host=evil.example")
        .header("X-Real-IP", "6.6.6.6");
    let page = b.send(req, &url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path(), "/app/spoof");
    let one = |name: &str| seen.header_all(name);
    assert_eq!(one("x-forwarded-user"), ["alice"]);
    assert_eq!(one("x-forwarded-email"), ["alice@example.com"]);
    assert_eq!(one("x-forwarded-preferred-username"), ["alice"]);
    assert_eq!(one("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(one("x-forwarded-proto"), ["https"]);
    assert_eq!(
        one("x-forwarded-host"),
        [format!("localhost:{}", w.gate.port)]
    );
    for gone in [
        "x_forwarded_email",
        "x_forwarded_preferred_username",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(
            one(gone).is_empty(),
            "{gone} reached the upstream: {:?}",
            one(gone)
        );
    }

    // A user without an email claim cannot give themselves one.
    let carol = w.signed_in("carol").await;
    let req = carol
        .client()
        .get(&url)
        .header("X-Forwarded-Email", "ceo@example.com");
    let page = carol.send(req, &url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.header_all("x-forwarded-user"), ["carol"]);
    assert!(
        seen.header_all("x-forwarded-email").is_empty(),
        "carol has no email claim, yet the upstream saw {:?}",
        seen.header_all("x-forwarded-email")
    );
}

/// Cookie names in a `Cookie` header value.
fn cookie_names(header: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = header
        .unwrap_or_default()
        .split(';')
        .filter_map(|p| p.split_once('=').map(|(n, _)| n.trim().to_owned()))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_cookies_pass_and_the_gates_never_do() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let gate = w.url("/");

    // The upstream's own Set-Cookie reaches the browser.
    let page = b.get(&w.url("/app")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.set_cookies().iter().any(|c| c.starts_with("app=1")),
        "the upstream's cookie did not reach the browser: {:?}",
        page.set_cookies()
    );
    assert_eq!(b.cookie(&gate, "app").as_deref(), Some("1"));

    // Gate-named cookies the jar happens to hold are stripped as well.
    b.set_cookie_header(&gate, "theme=dark; Path=/");
    b.set_cookie_header(&gate, "__Host-ssogate-login-abcdefgh=x; Path=/; Secure");
    b.set_cookie_header(&gate, "__Secure-ssogate-login-old=x; Path=/; Secure");
    b.set_cookie_header(&gate, "ssogate=stale; Path=/");
    let page = b.get(&w.url("/app/again")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(
        cookie_names(seen.header("cookie")),
        ["app", "theme"],
        "upstream Cookie: {:?}",
        seen.header("cookie")
    );

    // The same with the cookies spread over several Cookie headers (as HTTP/2 clients send them).
    let session = b.cookie(&gate, SESSION_COOKIE).unwrap();
    let resp = w
        .api()
        .get(w.url("/app/split"))
        .header(header::ACCEPT, "application/json")
        .header(header::COOKIE, "a=1")
        .header(header::COOKIE, format!("{SESSION_COOKIE}={session}; b=2"))
        .header(header::COOKIE, "__Host-ssogate_1of2=zz")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path(), "/app/split");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(
        cookie_names(seen.header("cookie")),
        ["a", "b"],
        "upstream Cookie headers: {:?}",
        seen.header_all("cookie")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_session_cookie_is_no_session() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let value = b.cookie(&w.url("/"), SESSION_COOKIE).unwrap();
    assert_cookie_is_session_of(
        &w,
        &format!("{SESSION_COOKIE}={value}"),
        "alice",
        "the untouched cookie",
    )
    .await;

    let flip = |i: usize| {
        let mut chars: Vec<char> = value.chars().collect();
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let len = value.len();
    let variants = [
        ("first char flipped", flip(0)),
        ("middle char flipped", flip(len / 2)),
        ("last char flipped", flip(len - 1)),
        ("truncated", value[..len - 4].to_owned()),
        ("extended", format!("{value}AAAA")),
        ("empty", String::new()),
        ("not base64", "!!not-a-cookie!!".to_owned()),
    ];
    for (what, tampered) in &variants {
        assert_cookie_is_no_session(&w, &format!("{SESSION_COOKIE}={tampered}"), what).await;
    }

    // In the browser too: the flipped cookie in the jar means signed out.
    b.set_cookie_header(
        &w.url("/"),
        &format!(
            "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly",
            flip(len / 2)
        ),
    );
    let page = b.get(&w.url("/app")).await;
    assert_sign_in_redirect(page.status, page.header("location"), "/app", "tampered jar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_sealed_with_a_foreign_key_is_no_session() {
    let w = World::start().await;
    let forged = session_for("mallory", now() + 3600, None);
    // Control: sealed with the gate's own key, the very same session opens.
    let own = cookie_header(&seal(&[COOKIE_SECRET], &forged));
    assert_cookie_is_session_of(&w, &own, "mallory", "sealed with the gate's key").await;

    let foreign = cookie_header(&seal(&[OTHER_COOKIE_SECRET], &forged));
    assert!(foreign.starts_with(&format!("{SESSION_COOKIE}=")));
    assert_cookie_is_no_session(&w, &foreign, "sealed with a foreign key").await;

    // Sealed with the gate's key but for another cookie name (a sign-in
    // state cookie): the name is bound into the seal, so it does not open.
    let plain = serde_json::to_vec(&forged).unwrap();
    let gate_key = sealer(&[COOKIE_SECRET]);
    let control = gate_key.seal(SESSION_COOKIE, &plain).unwrap();
    assert_cookie_is_session_of(
        &w,
        &format!("{SESSION_COOKIE}={control}"),
        "mallory",
        "sealed by hand for the session name",
    )
    .await;
    let moved = gate_key
        .seal("__Host-ssogate-login-abcdefghijklmnop", &plain)
        .unwrap();
    assert_cookie_is_no_session(
        &w,
        &format!("{SESSION_COOKIE}={moved}"),
        "sealed for another cookie name",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_no_session() {
    // Short-lived tokens and no CT_SSO_TOKEN_ENDPT: the session ends with them.
    let w = World::with(Setup {
        idp: Box::new(|o| {
            o.id_token_ttl = 2;
            o.access_token_ttl = 2;
        }),
        ..Setup::default()
    })
    .await;
    let b = w.signed_in("alice").await;
    let info = b.get(&w.url("/sso/userinfo")).await;
    assert_eq!(info.status, 200, "{}", info.body);
    let expires_at = info.json()["expires_at"].as_u64().unwrap();
    assert!(
        expires_at <= now() + 3,
        "the session outlives its 2 s tokens: expires_at {expires_at}, now {}",
        now()
    );
    let page = b.get(&w.url("/app")).await;
    assert_eq!(page.status, 200, "before expiry: {}", page.body);

    // Taken before the wait: the cookie's Max-Age ends with the tokens, so the
    // browser may drop it at about the moment we test; a copy replayed by
    // hand is what the gate must refuse.
    let cookie = b
        .cookie(&w.url("/"), SESSION_COOKIE)
        .expect("the browser holds the session cookie after sign-in");

    // Waiting for the expiry is the point of this test (at most ~3 s).
    let until = UNIX_EPOCH + Duration::from_secs(expires_at) + Duration::from_millis(200);
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }

    assert_cookie_is_no_session(&w, &format!("{SESSION_COOKIE}={cookie}"), "expired session").await;
    let page = b.get(&w.url("/app")).await;
    assert_sign_in_redirect(
        page.status,
        page.header("location"),
        "/app",
        "expired, in the browser",
    );

    // Signing in again works (the provider's session is still there: no form).
    let page = b.sign_in(&w.url("/app/back"), "alice", "alice-pass").await;
    assert_eq!(page.status, 200, "{} {}", page.url, page.body);
    assert_eq!(page.url, w.url("/app/back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_open_old_cookies_and_seal_with_the_new_one() {
    let w = World::with(Setup {
        vars: vec![(
            "CT_COOKIE_SECRET".into(),
            format!("{OTHER_COOKIE_SECRET},{COOKIE_SECRET}"),
        )],
        ..Setup::default()
    })
    .await;
    let later = now() + 3600;

    let old = cookie_header(&seal(
        &[COOKIE_SECRET],
        &session_for("olduser", later, None),
    ));
    assert_cookie_is_session_of(&w, &old, "olduser", "sealed under the old key").await;
    let new = cookie_header(&seal(
        &[OTHER_COOKIE_SECRET],
        &session_for("newuser", later, None),
    ));
    assert_cookie_is_session_of(&w, &new, "newuser", "sealed under the new key").await;
    let retired_key = STANDARD.encode(b"a retired key, 32 bytes long!!!!");
    let retired = cookie_header(&seal(&[&retired_key], &session_for("gone", later, None)));
    assert_cookie_is_no_session(&w, &retired, "sealed under a key no longer listed").await;

    // A fresh sign-in is sealed with the first key only.
    let b = w.signed_in("alice").await;
    let value = b.cookie(&w.url("/"), SESSION_COOKIE).unwrap();
    assert!(
        sealer(&[OTHER_COOKIE_SECRET])
            .open(SESSION_COOKIE, &value)
            .is_some(),
        "new cookies must be sealed with the first key"
    );
    assert!(
        sealer(&[COOKIE_SECRET])
            .open(SESSION_COOKIE, &value)
            .is_none(),
        "new cookies must not be sealed with the old key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_session_split_over_cookies_works_end_to_end() {
    let w = World::start().await;
    let big = session_for("bigsession", now() + 3600, Some("t".repeat(9 * 1024)));
    let set_cookies = seal(&[COOKIE_SECRET], &big);
    let names: Vec<&str> = set_cookies
        .iter()
        .map(|c| c.split('=').next().unwrap())
        .collect();
    assert!(
        set_cookies.len() >= 3,
        "a 9 KB id_token should need several cookies: {names:?}"
    );
    let gate = w.url("/");
    let b = w.browser();
    for c in &set_cookies {
        assert!(c.len() < 4096, "each part fits a browser's cookie limit");
        b.set_cookie_header(&gate, c);
    }
    b.set_cookie_header(&gate, "app=7; Path=/");

    let page = b.get(&w.url("/large?x=1")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path_and_query, "/large?x=1");
    assert_eq!(seen.header("x-forwarded-user"), Some("bigsession"));
    assert_eq!(
        seen.header("x-forwarded-email"),
        Some("bigsession@example.com")
    );
    assert_eq!(
        seen.header_all("cookie"),
        ["app=7"],
        "no ssogate part may reach the upstream"
    );
    let info = b.get(&w.url("/sso/userinfo")).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["sub"], "bigsession");

    // A part missing: no session.
    let partial = cookie_header(&set_cookies[1..]);
    assert_cookie_is_no_session(&w, &partial, "one part missing").await;

    // Signing out removes every part.
    let out = b.get(&w.url("/sso/logout")).await;
    assert!(
        matches!(out.status, 200 | 302),
        "{} {}",
        out.status,
        out.body
    );
    for name in &names {
        assert!(
            out.set_cookies()
                .iter()
                .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0")),
            "sign-out did not delete {name}: {:?}",
            out.set_cookies()
        );
        assert_eq!(b.cookie(&gate, name), None, "{name} is still in the jar");
    }
    let page = b.get(&w.url("/large")).await;
    assert_sign_in_redirect(
        page.status,
        page.header("location"),
        "/large",
        "after sign-out",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_describes_the_signed_in_user() {
    let w = World::start().await;

    let anonymous = w.browser();
    let page = anonymous.get(&w.url("/sso/userinfo")).await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(
        page.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{:?}",
        page.headers
    );
    assert!(page.json()["error"].is_string());
    let resp = w
        .api()
        .get(w.url("/sso/userinfo"))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_unauthorized(resp, "userinfo without a session").await;

    let b = w.signed_in("alice").await;
    let page = b.get(&w.url("/sso/userinfo")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        page.header("content-type")
    );
    assert_eq!(
        page.header("cache-control"),
        Some("no-store"),
        "personal data must not be cached"
    );
    let info = page.json();
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["name"], "Alice Example");
    assert_eq!(info["preferred_username"], "alice");
    let expires_at = info["expires_at"].as_u64().unwrap();
    let t = now();
    assert!(
        expires_at > t && expires_at <= t + 3600 + 5,
        "expires_at {expires_at}, now {t}"
    );

    let carol = w.signed_in("carol").await;
    let info = carol.get(&w.url("/sso/userinfo")).await.json();
    assert_eq!(info["sub"], "carol");
    assert!(info["email"].is_null(), "{info}");
    assert_eq!(info["preferred_username"], "carol");
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| !r.path().starts_with("/sso/")),
        "the gate's own routes never reach the upstream"
    );
}
