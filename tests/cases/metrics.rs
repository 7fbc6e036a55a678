//! The metrics listener of the real binary (`CT_METRICS_ADDR`): a scrape
//! after sign-in, WebSocket, failures and sign-out shows each counter moved.

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::cases::binary::{Served, free_port, vars};
use crate::support::browser::Browser;
use crate::support::fake_idp::{FakeIdp, FakeOptions, Preset};
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET};
use crate::support::upstream::Upstream;

/// The value of the series `name{labels}` (exactly as rendered), or 0.
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_requests_sign_ins_websockets_failures_and_sign_outs() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let metrics_port = free_port();
    let gate_url = format!("http://localhost:{port}");
    let idp = FakeIdp::start(FakeOptions::preset(Preset::Generic, &gate_url)).await;
    let dir = tempfile::tempdir().unwrap();
    let env = vars(&[
        ("CT_UPSTREAM_URL", &upstream.url),
        ("CT_SSO_AUTHORIZATION_ENDPT", &idp.authority),
        ("CT_SSO_CLIENT_ID", CLIENT_ID),
        ("CT_SSO_CLIENT_SECRET", CLIENT_SECRET),
        ("CT_COOKIE_SECRET", COOKIE_SECRET),
        ("CT_METRICS_ADDR", &format!("127.0.0.1:{metrics_port}")),
    ]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let gate = Served::start_on(port, dir.path(), env, false, &client).await;
    let scrape_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let scrape = || async {
        let resp = client.get(&scrape_url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    crate::assert_eventually!(
        client
            .get(gate.url("/sso/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200),
        Duration::from_secs(20),
        "never ready"
    );
    let before = scrape().await;
    assert_eq!(value(&before, "ssogate_sign_ins_total"), 0.0, "{before}");
    assert!(before.contains("ssogate_build_info{version=\""), "{before}");
    assert!(
        value(&before, "ssogate_jwks_fetches_total") >= 1.0,
        "{before}"
    );

    // A sign-in: the first request is sent to sign in, the landing forwarded.
    let b = Browser::new(None);
    let (page, visited) = b.follow(&gate.url("/app")).await;
    assert_eq!(page.status, 200, "{visited:?}");
    // A refused sign-in (no state) and an anonymous API call.
    let bad = client
        .get(gate.url("/sso/authorization-code/callback?code=x&state=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let anon = client.get(gate.url("/api/x")).send().await.unwrap();
    assert_eq!(anon.status(), 401);

    // A WebSocket with the session.
    let cookie = b
        .cookies_for(&gate.url("/"))
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut req = format!("ws://localhost:{port}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    crate::assert_eventually!(
        value(&scrape().await, "ssogate_websockets_open") == 1.0,
        Duration::from_secs(10),
        "the open WebSocket is not counted"
    );

    let s = scrape().await;
    assert_eq!(value(&s, "ssogate_sign_ins_total"), 1.0, "{s}");
    assert!(
        value(&s, "ssogate_requests_total{outcome=\"forwarded\"}") >= 2.0,
        "{s}"
    );
    assert!(
        value(&s, "ssogate_requests_total{outcome=\"sign_in\"}") >= 1.0,
        "{s}"
    );
    assert!(
        value(&s, "ssogate_requests_total{outcome=\"rejected\"}") >= 1.0,
        "{s}"
    );
    assert!(
        value(&s, "ssogate_requests_total{outcome=\"sso\"}") >= 2.0,
        "{s}"
    );
    assert_eq!(
        value(&s, "ssogate_sign_in_failures_total{reason=\"state\"}"),
        1.0,
        "{s}"
    );
    assert!(
        value(&s, "ssogate_upstream_duration_seconds_count") >= 2.0,
        "{s}"
    );
    assert!(
        value(&s, "ssogate_gate_duration_seconds_count") >= 5.0,
        "{s}"
    );

    // Sign-out ends the session and, with it, the WebSocket.
    let out = b.get(&gate.url("/sso/logout")).await;
    assert!(out.status == 302 || out.status == 200);
    crate::assert_eventually!(
        value(&scrape().await, "ssogate_websockets_open") == 0.0,
        Duration::from_secs(10),
        "the closed WebSocket is still counted"
    );
    let s = scrape().await;
    assert_eq!(
        value(&s, "ssogate_sessions_ended_total{cause=\"sign_out\"}"),
        1.0,
        "{s}"
    );
    let _ = ws.close(None).await;
    let other = client
        .get(format!("http://127.0.0.1:{metrics_port}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "only /metrics is served");
}
