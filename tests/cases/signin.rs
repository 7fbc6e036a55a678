//! Signing in: who is sent to sign in and who gets 401, where a browser may
//! land afterwards, and every way a callback can go wrong.

use reqwest::header;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use url::Url;

use crate::support::browser::{Browser, Page, query_param};
use crate::support::gate::World;

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const CALLBACK: &str = "/sso/authorization-code/callback";

/// `/sso/login?rd=<rd, form-encoded>`.
pub fn login_path(rd: &str) -> String {
    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    format!("/sso/login?rd={rd}")
}

/// `scheme://host:port` of an absolute URL.
pub fn origin_of(url: &str) -> String {
    Url::parse(url)
        .unwrap_or_else(|e| panic!("{url:?} is not a URL: {e}"))
        .origin()
        .ascii_serialization()
}

/// Asserts a 302 to the gate's sign-in with `rd` = `original` (decoded).
pub fn assert_sign_in_redirect(status: u16, location: Option<&str>, original: &str, what: &str) {
    assert_eq!(status, 302, "{what}: expected 302 to sign in");
    let location = location.unwrap_or_else(|| panic!("{what}: 302 without Location"));
    let url = Url::parse("https://gate.invalid")
        .unwrap()
        .join(location)
        .unwrap();
    assert_eq!(
        url.origin().ascii_serialization(),
        "https://gate.invalid",
        "{what}: sign-in must stay on the gate, Location {location}"
    );
    assert_eq!(url.path(), "/sso/login", "{what}: Location {location}");
    let rd = url
        .query_pairs()
        .find(|(k, _)| k == "rd")
        .map(|(_, v)| v.into_owned());
    assert_eq!(
        rd.as_deref(),
        Some(original),
        "{what}: rd must carry the original path and query, Location {location}"
    );
}

/// Asserts a 401 for API clients: JSON body and a Bearer challenge.
pub async fn assert_unauthorized(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    let challenge = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: WWW-Authenticate is {challenge:?}"
    );
    let body: serde_json::Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: 401 body is not JSON: {e}"));
    assert!(body["error"].is_string(), "{what}: body {body}");
}

/// The browser holds no gate session: no cookie, and a navigation is sent to sign in.
pub async fn assert_no_session(w: &World, b: &Browser, what: &str) {
    assert_eq!(
        b.cookie(&w.url("/"), "__Host-ssogate"),
        None,
        "{what}: a session cookie was set"
    );
    let page = b.get(&w.url("/after")).await;
    assert_sign_in_redirect(page.status, page.header("location"), "/after", what);
}

/// A failed sign-in: a 4xx HTML page (never 5xx) offering to sign in again.
fn assert_sign_in_again_page(page: &Page, status: u16, what: &str) {
    assert_eq!(page.status, status, "{what}: {}", page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{what}: not an HTML page: {:?}",
        page.header("content-type")
    );
    assert!(
        page.body
            .contains(r#"<a href="/sso/login">Sign in again</a>"#),
        "{what}: no 'Sign in again' link: {}",
        page.body
    );
}

/// One HTTP/1.1 request written as is over TLS; the whole answer as text.
async fn raw_https(w: &World, request: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", w.gate.port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(w.pki.rustls_client_config(&["http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // A peer that closes without close_notify ends in an error after the data.
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigation_is_sent_to_sign_in_and_everything_else_gets_401() {
    let w = World::start().await;
    let api = w.api();
    let original = "/app/page?x=1&y=a%2Fb";

    let resp = api
        .get(w.url(original))
        .header(header::ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_sign_in_redirect(
        resp.status().as_u16(),
        location.as_deref(),
        original,
        "GET text/html",
    );

    let resp = api
        .head(w.url(original))
        .header(header::ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_sign_in_redirect(
        resp.status().as_u16(),
        location.as_deref(),
        original,
        "HEAD text/html",
    );

    let json = api
        .get(w.url(original))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_unauthorized(json, "GET application/json").await;

    let post = api
        .post(w.url("/app/save"))
        .header(header::ACCEPT, HTML)
        .form(&[("a", "1")])
        .send()
        .await
        .unwrap();
    assert_unauthorized(post, "POST from a page").await;

    let star = api.get(w.url(original)).send().await.unwrap();
    assert_unauthorized(star, "GET with Accept */* (reqwest's default, as curl)").await;

    // No Accept header at all, as IDE plugins send.
    let raw = raw_https(
        &w,
        &format!(
            "GET /app/page HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            w.gate.port
        ),
    )
    .await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "no Accept: expected 401: {head}"
    );
    assert!(
        head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("www-authenticate: bearer")
        }),
        "no Accept: no Bearer challenge: {head}"
    );
    assert!(
        body.contains("\"error\""),
        "no Accept: body is not the JSON error: {body}"
    );

    assert!(
        w.upstream.requests().is_empty(),
        "the upstream saw unauthenticated requests: {:?}",
        w.upstream.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_site_return_paths_land_on_the_gate_root() {
    let w = World::start().await;
    let gate_origin = origin_of(&w.url("/"));
    let bad = [
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example",
        "https:evil.example",
        "javascript:alert(1)",
        "evil.example",
        "%2F%2Fevil.example",
        "/%2F%2Fevil.example",
        "/%2Fevil.example",
        "/%5Cevil.example",
        "/%255Cevil.example",
        "/\r\nLocation: https://evil.example",
        "/%0d%0aLocation:%20https://evil.example",
        "/\t/evil.example",
        "/%09/evil.example",
        "/sso/logout",
    ];
    for rd in bad {
        // A full sign-in through the provider: rd travels in the sign-in state.
        let b = w.browser();
        let start = w.url(&login_path(rd));
        let callback = b
            .sign_in_until_callback(&start, "alice", "alice-pass")
            .await;
        let page = b.get(&callback).await;
        assert_eq!(page.status, 302, "rd {rd:?}: callback {}", page.body);
        let landing = page
            .location()
            .unwrap_or_else(|| panic!("rd {rd:?}: no Location"));
        assert_eq!(
            origin_of(&landing),
            gate_origin,
            "rd {rd:?} sent the browser off the gate to {landing}"
        );
        assert_eq!(
            Url::parse(&landing).unwrap().path(),
            "/",
            "rd {rd:?} landed on {landing}"
        );
        let page = b.get(&landing).await;
        assert_eq!(page.status, 200, "rd {rd:?}: landing page {}", page.body);
        assert_eq!(
            w.upstream.last_request().map(|r| r.path_and_query),
            Some("/".to_owned()),
            "rd {rd:?}"
        );

        // Already signed in: the same rule, without the provider.
        let page = b.get(&start).await;
        assert_eq!(page.status, 302, "rd {rd:?} (signed in)");
        let landing = page.location().unwrap();
        assert_eq!(
            origin_of(&landing),
            gate_origin,
            "rd {rd:?} (signed in) sent the browser to {landing}"
        );
        assert_eq!(
            Url::parse(&landing).unwrap().path(),
            "/",
            "rd {rd:?} (signed in)"
        );
    }

    for good in ["/app?x=1", "/files/a%2Fb?q=1%262"] {
        let b = w.browser();
        let page = b
            .sign_in(&w.url(&login_path(good)), "alice", "alice-pass")
            .await;
        assert_eq!(page.status, 200, "rd {good:?}: {}", page.body);
        assert_eq!(page.url, w.url(good), "rd {good:?}");
        assert_eq!(
            w.upstream.last_request().map(|r| r.path_and_query),
            Some(good.to_owned()),
            "rd {good:?} must reach the upstream unchanged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_returns_to_the_exact_original_url() {
    let w = World::start().await;
    // What users of a collaboration server open: file names with spaces,
    // non-ASCII names, encoded slashes and plus signs in queries.
    for original in [
        "/docs/My%20File.txt?q=a%20b",
        "/docs/%C3%A9t%C3%A9.md?x=%2F&y=a+b",
        "/p?next=%2Fa%3Fb%3D1",
    ] {
        let b = w.browser();
        let page = b.sign_in(&w.url(original), "alice", "alice-pass").await;
        assert_eq!(page.status, 200, "{original}: {}", page.body);
        assert_eq!(page.url, w.url(original), "{original}");
        assert_eq!(
            w.upstream.last_request().map(|r| r.path_and_query),
            Some(original.to_owned()),
            "{original}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_without_state_or_with_an_unknown_state_fails_cleanly() {
    let w = World::start().await;
    let b = w.browser();

    for query in ["", "?code=abc", "?code=abc&state=", "?error=access_denied"] {
        let page = b.get(&w.url(&format!("{CALLBACK}{query}"))).await;
        assert_sign_in_again_page(&page, 400, &format!("callback{query}"));
    }
    assert_no_session(&w, &b, "after callbacks without state").await;

    // A real sign-in under way, and callbacks naming states it never issued.
    let genuine = b
        .sign_in_until_callback(&w.url(&login_path("/genuine")), "alice", "alice-pass")
        .await;
    let code = query_param(&genuine, "code").unwrap();
    for state in [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "short",
        "../../etc/passwd",
        &"x".repeat(5000),
    ] {
        let url = w.url(&format!("{CALLBACK}?code={code}&state={state}"));
        let page = b.get(&url).await;
        assert_sign_in_again_page(&page, 400, &format!("unknown state {:.20}", state));
    }
    assert_no_session(&w, &b, "after unknown states").await;
    assert!(w.upstream.requests().is_empty());

    // The forged callbacks did not spoil the one really under way.
    let page = b.get(&genuine).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.header("location"), Some("/genuine"));

    // A state that names a real sign-in cookie but is not its state.
    let other = w.browser();
    let callback = other
        .sign_in_until_callback(&w.url(&login_path("/other")), "bob", "bob-pass")
        .await;
    let state = query_param(&callback, "state").unwrap();
    let mut altered = state.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    let mut url = Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                altered.clone()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let page = other.get(url.as_str()).await;
    assert_sign_in_again_page(&page, 400, "state altered in its last character");
    assert_no_session(&w, &other, "after an altered state").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_url_works_once() {
    let w = World::start().await;
    let b = w.browser();
    let callback = b
        .sign_in_until_callback(&w.url(&login_path("/first")), "alice", "alice-pass")
        .await;
    let first = b.get(&callback).await;
    assert_eq!(first.status, 302, "{}", first.body);
    assert_eq!(first.header("location"), Some("/first"));
    // The session cookie as the contract has it: __Host-, HttpOnly, Secure, SameSite=Lax.
    let set = first
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-ssogate="))
        .unwrap_or_else(|| panic!("no session cookie: {:?}", first.set_cookies()));
    let attrs: Vec<String> = set
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for want in ["httponly", "secure", "samesite=lax", "path=/"] {
        assert!(attrs.iter().any(|a| a == want), "{want} missing: {set}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain")),
        "a __Host- cookie has no Domain: {set}"
    );
    let replay = b.get(&callback).await;
    assert_sign_in_again_page(&replay, 400, "replayed callback");
    // The replay neither signed the browser out nor in as someone else.
    let page = b.get(&w.url("/first")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        w.upstream
            .last_request()
            .and_then(|r| r.header("x-forwarded-user").map(str::to_owned)),
        Some("alice".to_owned())
    );
}

/// The code itself is single use at the provider: replaying the callback
/// with the sign-in state cookie put back (as a copy of the browser would)
/// reaches the token endpoint with a spent code and ends on a 400 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_code_redeemed_twice_is_refused() {
    let w = World::start().await;
    let b = w.browser();
    let callback = b
        .sign_in_until_callback(&w.url(&login_path("/once")), "alice", "alice-pass")
        .await;
    let gate = w.url("/");
    let login_cookies: Vec<(String, String)> = b
        .cookies_for(&gate)
        .into_iter()
        .filter(|(n, _)| n.starts_with("__Host-ssogate-login-"))
        .collect();
    assert_eq!(login_cookies.len(), 1, "{login_cookies:?}");
    let first = b.get(&callback).await;
    assert_eq!(first.status, 302, "{}", first.body);

    let copy = w.browser();
    for (name, value) in &login_cookies {
        copy.set_cookie_header(&gate, &format!("{name}={value}; Path=/; Secure"));
    }
    let replay = copy.get(&callback).await;
    assert_sign_in_again_page(&replay, 400, "a spent code");
    assert!(
        replay.body.contains("already used") || replay.body.contains("expired"),
        "{}",
        replay.body
    );
    let me = copy.get(&w.url("/sso/userinfo")).await;
    assert_eq!(
        me.status, 401,
        "the copy must not be signed in: {}",
        me.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_code_signs_nobody_else_in() {
    let w = World::start().await;
    let victim = w.browser();
    let callback = victim
        .sign_in_until_callback(&w.url(&login_path("/mine")), "alice", "alice-pass")
        .await;

    // The attacker replays the victim's callback URL in a browser without
    // the victim's sign-in cookie.
    let attacker = w.browser();
    let page = attacker.get(&callback).await;
    assert_sign_in_again_page(&page, 400, "stolen callback, cookie-less browser");
    assert_no_session(&w, &attacker, "attacker").await;

    // That did not use up the code: the victim still signs in.
    let page = victim.get(&callback).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.header("location"), Some("/mine"));
    let page = victim.get(&w.url("/mine")).await;
    assert_eq!(page.status, 200);

    // And afterwards it is no more use to the attacker.
    let page = attacker.get(&callback).await;
    assert_sign_in_again_page(&page, 400, "stolen callback after use");
    assert_no_session(&w, &attacker, "attacker after use").await;
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.header("x-forwarded-user") == Some("alice") && r.path() == "/mine"),
        "{:?}",
        w.upstream.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_code_with_the_attackers_own_state_fails_pkce() {
    let w = World::start().await;
    let victim = w.browser();
    let callback = victim
        .sign_in_until_callback(&w.url(&login_path("/mine")), "alice", "alice-pass")
        .await;
    let code = query_param(&callback, "code").unwrap();
    let iss = query_param(&callback, "iss").unwrap_or_default();

    // The attacker starts a sign-in of their own (a real state cookie) and
    // swaps in the victim's code: the PKCE verifier does not match it.
    let attacker = w.browser();
    let start = attacker.get(&w.url(&login_path("/theirs"))).await;
    assert_eq!(start.status, 302);
    let state = query_param(&start.location().unwrap(), "state").unwrap();
    let mut forged = Url::parse(&w.url(CALLBACK)).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state)
        .append_pair("iss", &iss);
    let page = attacker.get(forged.as_str()).await;
    assert!(
        (400..500).contains(&page.status),
        "swapped code: {} {}",
        page.status,
        page.body
    );
    assert!(
        page.body
            .contains(r#"<a href="/sso/login">Sign in again</a>"#),
        "{}",
        page.body
    );
    assert_no_session(&w, &attacker, "attacker with a swapped code").await;
    assert!(w.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_the_provider_is_a_403_page() {
    let w = World::start().await;
    let b = w.browser();
    let start = b.get(&w.url(&login_path("/x"))).await;
    assert_eq!(start.status, 302);
    let state = query_param(&start.location().unwrap(), "state").unwrap();
    let mut url = Url::parse(&w.url(CALLBACK)).unwrap();
    url.query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", "<script>alert(1)</script> said no")
        .append_pair("state", &state);
    let page = b.get(url.as_str()).await;
    assert_sign_in_again_page(&page, 403, "access_denied");
    assert!(
        page.body.contains("access_denied"),
        "the page should say why: {}",
        page.body
    );
    assert!(
        !page.body.contains("<script>"),
        "the provider's text must be escaped: {}",
        page.body
    );
    assert!(
        page.set_cookies()
            .iter()
            .any(|c| c.starts_with("__Host-ssogate-login-") && c.contains("Max-Age=0")),
        "the sign-in state must be dropped: {:?}",
        page.set_cookies()
    );
    assert_no_session(&w, &b, "after access_denied").await;

    // The refused state cannot be used for a code afterwards.
    let mut again = Url::parse(&w.url(CALLBACK)).unwrap();
    again
        .query_pairs_mut()
        .append_pair("code", "whatever")
        .append_pair("state", &state);
    let page = b.get(again.as_str()).await;
    assert_sign_in_again_page(&page, 400, "state reused after a refusal");
    assert!(w.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_refusal_does_not_put_its_text_on_the_gates_page() {
    let w = World::start().await;
    let b = w.browser();
    // A link anyone can send: an "error" for a sign-in this browser never started.
    let mut url = Url::parse(&w.url(CALLBACK)).unwrap();
    url.query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair(
            "error_description",
            "Your account is locked. Call +1-555-0100 to unlock it",
        )
        .append_pair("state", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let page = b.get(url.as_str()).await;
    assert_sign_in_again_page(&page, 400, "forged refusal");
    assert!(
        !page.body.contains("555-0100"),
        "the gate showed a stranger's text as the provider's: {}",
        page.body
    );
    assert_no_session(&w, &b, "after a forged refusal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_signing_in_at_once_each_land_where_they_started() {
    let w = World::start().await;
    let b = w.browser();
    // Both tabs start before either finishes: two sign-in cookies at once.
    let one = b.get(&w.url(&login_path("/one"))).await;
    let two = b.get(&w.url(&login_path("/two"))).await;
    assert_eq!((one.status, two.status), (302, 302));
    let login_cookies = b
        .cookies_for(&w.url("/sso/authorization-code/callback"))
        .into_iter()
        .filter(|(n, _)| n.starts_with("__Host-ssogate-login-"))
        .count();
    assert_eq!(login_cookies, 2, "one sign-in cookie per tab");

    // At the provider, in the same order: the first asks for the password,
    // the second rides on the provider session.
    let cb_one = b
        .sign_in_until_callback(&one.location().unwrap(), "alice", "alice-pass")
        .await;
    let cb_two = b
        .sign_in_until_callback(&two.location().unwrap(), "alice", "alice-pass")
        .await;

    // Back at the gate, the second tab first.
    let page = b.get(&cb_two).await;
    assert_eq!(page.status, 302, "second tab: {}", page.body);
    assert_eq!(page.header("location"), Some("/two"));
    let page = b.get(&cb_one).await;
    assert_eq!(page.status, 302, "first tab: {}", page.body);
    assert_eq!(page.header("location"), Some("/one"));

    for path in ["/one", "/two"] {
        let page = b.get(&w.url(path)).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let seen = w.upstream.last_request().unwrap();
        assert_eq!(seen.path(), path);
        assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_when_already_signed_in_goes_straight_to_rd() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let logins = w.idp.stats().await["logins"].as_u64();
    let codes = w.idp.token_count("authorization_code").await;

    let page = b.get(&w.url(&login_path("/x?y=1"))).await;
    assert_eq!(page.status, 302);
    assert_eq!(page.header("location"), Some("/x?y=1"));
    let page = b.get(&w.url("/sso/login")).await;
    assert_eq!(page.status, 302);
    assert_eq!(page.header("location"), Some("/"));

    let (page, visited) = b.follow(&w.url(&login_path("/x?y=1"))).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        visited,
        vec![w.url(&login_path("/x?y=1")), w.url("/x?y=1")],
        "the provider must not be visited"
    );
    assert_eq!(w.idp.stats().await["logins"].as_u64(), logins);
    assert_eq!(w.idp.token_count("authorization_code").await, codes);
}
