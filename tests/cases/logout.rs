//! Signing out: the gate's session ends, then the provider's.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use url::Url;

use super::signin::assert_sign_in_redirect;
use crate::support::browser::{Browser, Page};
use crate::support::gate::{CLIENT_ID, World};

const SESSION_COOKIE: &str = "__Host-ssogate";

/// The provider's `end_session_endpoint`, from its discovery document.
async fn end_session_endpoint(w: &World) -> String {
    let doc: serde_json::Value = w
        .api()
        .get(w.idp.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["end_session_endpoint"]
        .as_str()
        .expect("the test provider has an end_session_endpoint")
        .to_owned()
}

/// The claims of a JWT, unverified.
fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The response deletes the session cookie, and the browser no longer has it.
fn assert_session_cleared(w: &World, b: &Browser, page: &Page, what: &str) {
    assert!(
        page.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{SESSION_COOKIE}=;")) && c.contains("Max-Age=0")),
        "{what}: the session cookie is not deleted: {:?}",
        page.set_cookies()
    );
    assert_eq!(
        b.cookie(&w.url("/"), SESSION_COOKIE),
        None,
        "{what}: the browser still holds a session cookie"
    );
}

/// A 302 to the provider's end_session_endpoint with the hint and the way back.
async fn assert_provider_logout_redirect(w: &World, page: &Page, user: &str, what: &str) {
    assert_eq!(page.status, 302, "{what}: {}", page.body);
    let location = page.location().unwrap();
    let url = Url::parse(&location).unwrap();
    let endpoint = Url::parse(&end_session_endpoint(w).await).unwrap();
    assert_eq!(
        (url.origin(), url.path()),
        (endpoint.origin(), endpoint.path()),
        "{what}: not the provider's end_session_endpoint: {location}"
    );
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("post_logout_redirect_uri"),
        Some(w.url("/sso/logout")),
        "{what}: {location}"
    );
    let hint = param("id_token_hint").unwrap_or_else(|| panic!("{what}: no id_token_hint"));
    let claims = jwt_claims(&hint);
    assert_eq!(claims["sub"], user, "{what}: hint claims {claims}");
    let aud = &claims["aud"];
    assert!(
        aud == CLIENT_ID
            || aud
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == CLIENT_ID)),
        "{what}: the hint is not our ID token: {claims}"
    );
}

fn assert_signed_out_page(page: &Page, what: &str) {
    assert_eq!(page.status, 200, "{what}: {} {}", page.url, page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{what}: {:?}",
        page.header("content-type")
    );
    assert!(
        page.body.to_lowercase().contains("signed out"),
        "{what}: not the signed-out page: {}",
        page.body
    );
    assert!(
        page.body.contains(r#"href="/sso/login""#),
        "{what}: no way to sign in again: {}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_and_sends_the_browser_to_the_provider() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let page = b.get(&w.url("/sso/logout")).await;
    assert_provider_logout_redirect(&w, &page, "alice", "GET /sso/logout").await;
    assert_session_cleared(&w, &b, &page, "GET /sso/logout");
    let page = b.get(&w.url("/app")).await;
    assert_sign_in_redirect(page.status, page.header("location"), "/app", "after logout");
    let info = b.get(&w.url("/sso/userinfo")).await;
    assert_eq!(info.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_logout_works_too() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let page = b.post_form(&w.url("/sso/logout"), &[]).await;
    assert_provider_logout_redirect(&w, &page, "alice", "POST /sso/logout").await;
    assert_session_cleared(&w, &b, &page, "POST /sso/logout");
    let page = b.get(&w.url("/app")).await;
    assert_sign_in_redirect(
        page.status,
        page.header("location"),
        "/app",
        "after POST logout",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sign_out_ends_the_provider_session_and_lands_on_the_signed_out_page() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let ended_before = w.idp.stats().await["end_session"].as_u64().unwrap_or(0);
    let logins_before = w.idp.stats().await["logins"].as_u64().unwrap_or(0);

    let (page, visited) = b.sign_out(&w.url("/sso/logout")).await;
    assert_signed_out_page(&page, "after the provider's confirmation");
    let (landed, state) = page
        .url
        .split_once("?state=")
        .expect("the provider echoes the logout state");
    assert_eq!(landed, w.url("/sso/logout"), "visited {visited:?}");
    let sent = visited
        .iter()
        .find(|u| u.contains("/session/end?"))
        .and_then(|u| crate::support::browser::query_param(u, "state"))
        .expect("the gate sent a state to end_session");
    assert_eq!(state, sent, "the state the gate sent comes back");
    assert!(
        visited
            .iter()
            .any(|u| u.starts_with(&w.idp.issuer) && u.ends_with("/session/end/confirm")),
        "the provider's sign-out was not confirmed: {visited:?}"
    );
    assert_eq!(
        w.idp.stats().await["end_session"].as_u64().unwrap_or(0),
        ended_before + 1,
        "the provider's session did not end"
    );

    // Signed out at the gate...
    assert_eq!(b.cookie(&w.url("/"), SESSION_COOKIE), None);
    let before = w.upstream.requests().len();
    let page = b.get(&w.url("/app?after=1")).await;
    assert_sign_in_redirect(
        page.status,
        page.header("location"),
        "/app?after=1",
        "after sign-out",
    );
    assert_eq!(w.upstream.requests().len(), before);

    // ...and at the provider: signing in again asks for the password.
    let (page, visited) = b
        .sign_in_visited(&w.url("/app?after=1"), "alice", "alice-pass")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        visited
            .iter()
            .any(|u| u.contains("/interaction/") && u.ends_with("/login")),
        "no login form after signing out: {visited:?}"
    );
    assert_eq!(
        w.idp.stats().await["logins"].as_u64().unwrap_or(0),
        logins_before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_a_session_shows_the_signed_out_page() {
    let w = World::start().await;
    let b = w.browser();
    let page = b.get(&w.url("/sso/logout")).await;
    assert_signed_out_page(&page, "GET without a session");
    let page = b.post_form(&w.url("/sso/logout"), &[]).await;
    assert_signed_out_page(&page, "POST without a session");

    // A session cookie that does not open is no session either: the page,
    // no trip to the provider, and the junk is deleted.
    b.set_cookie_header(
        &w.url("/"),
        &format!("{SESSION_COOKIE}=junk; Path=/; Secure; HttpOnly"),
    );
    let page = b.get(&w.url("/sso/logout")).await;
    assert_signed_out_page(&page, "GET with an unusable cookie");
    assert_session_cleared(&w, &b, &page, "GET with an unusable cookie");
    assert_eq!(w.idp.stats().await["end_session"].as_u64().unwrap_or(0), 0);
    assert!(w.upstream.requests().is_empty());
}
