//! Signing in through the real provider.

use crate::support::gate::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sign_in_lands_on_the_original_path_with_identity_headers() {
    let w = World::start().await;
    let b = w.browser();
    let page = b
        .sign_in(&w.url("/app/page?x=1"), "alice", "alice-pass")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.url.ends_with("/app/page?x=1"),
        "landed on {}",
        page.url
    );
    let seen = w
        .upstream
        .last_request()
        .expect("the upstream saw the request");
    assert_eq!(seen.path_and_query, "/app/page?x=1");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-forwarded-preferred-username"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    let cookie = seen.header("cookie").unwrap_or_default();
    assert!(
        !cookie.contains("ssogate"),
        "gate cookies leaked upstream: {cookie}"
    );
}
