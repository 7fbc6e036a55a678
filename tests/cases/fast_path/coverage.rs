//! Which connections the gate serves on its own HTTP/1.1 path, as the
//! operator sees it in `ssogate_http1_handovers_total{reason}`: a
//! connection that meets a refusal, a gate route or a path to normalise
//! stays on it (an ingress's pooled connections carry all of these), and
//! only what needs hyper (here a chunked body, HTTP/1.0 and a WebSocket
//! upgrade) moves a connection there, counted by its reason and still
//! answered as before.

use std::time::Duration;

use super::conn::{Conn, assert_echo, request, signed_in, with};
use crate::cases::hostile::{JSON, plain_world, session_cookie};
use crate::support::gate::{Gate, base_vars, reserve};

/// The value of `ssogate_http1_handovers_total{reason="<reason>"}`.
fn handovers(scrape: &str, reason: &str) -> f64 {
    let series = format!("ssogate_http1_handovers_total{{reason=\"{reason}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in\n{scrape}"))
}

const REASONS: [&str; 11] = [
    "not_http1",
    "head_too_large",
    "http1_0",
    "method",
    "target",
    "host",
    "content_length",
    "transfer_encoding",
    "upgrade",
    "expect",
    "header",
];

pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Every reason's count, in `REASONS` order.
async fn counts(addr: std::net::SocketAddr) -> Vec<f64> {
    let s = scrape(addr).await;
    REASONS.iter().map(|r| handovers(&s, r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_gate_routes_and_paths_to_normalise_keep_a_connection_on_the_own_path() {
    let w = plain_world(&[]).await;
    let (listener, url) = reserve(false).await;
    let vars = base_vars(&url, &w.upstream.url, &w.idp.issuer, &w.pki, false);
    let (gate, metrics): (Gate, _) = Gate::start_with_metrics(listener, url, vars).await.unwrap();
    let port = gate.port;
    let cookie = session_cookie(false, "alice");
    let auth = signed_in(&cookie);
    let mut c = Conn::open(port).await;
    crate::assert_eventually!(
        c.exchange(&request("GET", "/sso/readyz", port, &[]), "readyz")
            .await
            .status
            == 200,
        Duration::from_secs(20),
        "the gate never became ready"
    );
    assert_eq!(counts(metrics).await, vec![0.0; REASONS.len()]);

    // Without a session: 401, then a signed-in request on the same connection.
    let a = c
        .exchange(&request("GET", "/app/1", port, &[JSON.into()]), "anonymous")
        .await;
    assert_eq!(a.status, 401, "{}", a.head);
    a.assert_keeps("a 401");
    let a = c
        .exchange(&request("GET", "/app/2", port, &auth), "after a 401")
        .await;
    assert_echo(&a, "/app/2", "after a 401");
    // A gate route and a path the gate normalises, each answered in full.
    let a = c
        .exchange(&request("GET", "/sso/userinfo", port, &auth), "userinfo")
        .await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.json()["sub"], "alice", "{}", a.text());
    a.assert_keeps("userinfo");
    let a = c
        .exchange(&request("GET", "/a/./b", port, &auth), "normalised")
        .await;
    assert_echo(&a, "/a/b", "a path normalised by the router");
    // A refused upload whose body is all there: skipped, the connection kept.
    let upload = format!(
        "{}0123456789",
        request(
            "POST",
            "/app/3",
            port,
            &[JSON.into(), "Content-Length: 10".into()]
        )
    );
    let a = c.exchange(&upload, "a refused upload").await;
    assert_eq!(a.status, 401, "{}", a.head);
    a.assert_keeps("a refused upload read whole");
    let a = c
        .exchange(&request("GET", "/app/4", port, &auth), "after the upload")
        .await;
    assert_echo(&a, "/app/4", "after a refused upload");
    c.send(request("HEAD", "/sso/userinfo", port, &auth)).await;
    let a = c.answer_to(true, "HEAD userinfo").await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(a.body.is_empty(), "HEAD has no body: {:?}", a.text());
    assert!(
        a.one("content-length").parse::<u64>().unwrap() > 0,
        "HEAD carries the length GET would have: {}",
        a.head
    );
    let a = c
        .exchange(&request("GET", "/app/5", port, &auth), "after HEAD")
        .await;
    assert_echo(&a, "/app/5", "after HEAD");
    assert_eq!(
        counts(metrics).await,
        vec![0.0; REASONS.len()],
        "no connection went to hyper"
    );

    // A chunked upload needs hyper: counted, and answered on the same connection.
    let chunked = format!(
        "{}5\r\nhello\r\n0\r\n\r\n",
        request(
            "POST",
            "/app/6",
            port,
            &with(&auth, "Transfer-Encoding: chunked")
        )
    );
    let a = c.exchange(&chunked, "chunked").await;
    assert_echo(&a, "/app/6", "a chunked upload, through hyper");
    let a = c
        .exchange(&request("GET", "/app/7", port, &auth), "after chunked")
        .await;
    assert_echo(&a, "/app/7", "the rest of the connection, through hyper");
    // HTTP/1.0 on a connection of its own.
    let mut old = Conn::open(port).await;
    old.send(format!(
        "GET /app/8 HTTP/1.0\r\nCookie: {cookie}\r\n{JSON}\r\n\r\n"
    ))
    .await;
    let a = old.answer("HTTP/1.0").await;
    assert_eq!(a.status, 200, "{}", a.head);
    let after = counts(metrics).await;
    for (reason, n) in REASONS.iter().zip(&after) {
        let want = match *reason {
            "transfer_encoding" | "http1_0" => 1.0,
            _ => 0.0,
        };
        assert_eq!(*n, want, "{reason}: {after:?}");
    }
}
