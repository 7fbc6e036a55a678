//! `CT_UPSTREAM_HTTP2`: the gate forwards to the upstream over HTTP/2 (h2c
//! by prior knowledge to an `http://` upstream, ALPN `h2` to an `https://`
//! one), one multiplexed connection per serving thread, reopened when the
//! upstream closes it; WebSocket upgrades still go over HTTP/1.1.
//!
//! What clients and the upstream see must be what they see over HTTP/1.1:
//! the gate's identity and `X-Forwarded-*` headers only, the public host as
//! `:authority`, path and query as sent, bodies byte-exact and streamed
//! both ways, the upstream's status, headers and body back. An upstream
//! that does not speak HTTP/2 gives 502 at once, and a bad value of the
//! setting stops the binary.
//!
//! The recording upstream answers HTTP/1.1 and HTTP/2 (by prior knowledge
//! or ALPN) on one port and records the version of each request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::Version;
use reqwest::header::ACCEPT;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::binary::{Served, run};
use super::config::{Bad, assert_refused, changed, offline};
use super::fast_path::conn::Conn;
use super::proxy::cookie_header;
use super::websocket::connect;
use crate::assert_eventually;
use crate::support::browser::Browser;
use crate::support::certs::TestPki;
use crate::support::gate::{Gate, Setup, World, base_vars, override_vars, reserve};
use crate::support::upstream::{Recorded, Upstream, pattern_byte};

const ON: (&str, &str) = ("CT_UPSTREAM_HTTP2", "true");
/// How long a request may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(10);

fn owned(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A world whose gate forwards over HTTP/2, with `extra` variables.
async fn h2_world(extra: &[(&str, &str)]) -> World {
    let mut vars = vec![ON];
    vars.extend_from_slice(extra);
    World::with(Setup {
        vars: owned(&vars),
        ..Setup::default()
    })
    .await
}

/// A second TLS gate beside `w`'s (same provider, upstream, certificate and
/// cookie key, so a session of `w`'s gate is valid on it) with `vars`.
async fn gate_beside(w: &World, vars: &[(&str, &str)]) -> Gate {
    let (listener, url) = reserve(true).await;
    let mut all = base_vars(&url, &w.upstream.url, &w.idp.issuer, &w.pki, true);
    override_vars(&mut all, owned(vars));
    let gate = Gate::start_on(listener, url, all).await.unwrap();
    let api = w.api();
    let ready = gate.url("/sso/readyz");
    assert_eventually!(
        api.get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200),
        Duration::from_secs(20),
        "the gate beside never became ready"
    );
    gate
}

/// A client with the browser's cookies that speaks only HTTP/1.1 to the gate.
fn http1_client(w: &World, b: &Browser) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(w.pki.reqwest_certificate())
        .cookie_provider(b.jar().clone())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The latest request the upstream received for `path` (no query).
fn seen(up: &Upstream, path: &str) -> Recorded {
    up.requests()
        .into_iter()
        .rev()
        .find(|r| r.path() == path)
        .unwrap_or_else(|| panic!("the upstream never saw {path}: {:?}", up.requests()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first offset where `body` is not the upstream's `/big` pattern.
fn pattern_mismatch(body: &[u8]) -> Option<usize> {
    (0..body.len()).find(|&i| body[i] != pattern_byte(i as u64))
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client over TLS: what goes on the wire is what the test wrote
// ---------------------------------------------------------------------------

/// An HTTP/1.1 request to the gate on `port`: `lines` are extra header lines.
fn request(method: &str, port: u16, target: &str, lines: &[String], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: localhost:{port}\r\n");
    for l in lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn cookie_line(cookie: &str) -> String {
    format!("Cookie: {cookie}")
}

const JSON: &str = "Accept: application/json";

// ---------------------------------------------------------------------------
// The setting
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ct_upstream_http2_maybe_ends_the_binary_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Bad {
        what: "CT_UPSTREAM_HTTP2=maybe",
        env: changed(&[("CT_UPSTREAM_HTTP2", "maybe")], &[]),
        var: "CT_UPSTREAM_HTTP2",
        hidden: vec![],
    };
    for args in [&[][..], &["check-config"][..]] {
        let r = run(dir.path(), &bad.env, args).await;
        assert_refused(&bad, &r);
    }
}

/// `check-config` tells the operator which way requests will go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_boolean_spelling_of_ct_upstream_http2_is_taken_as_meant() {
    let dir = tempfile::tempdir().unwrap();
    let spellings = [
        ("true", true),
        ("1", true),
        ("yes", true),
        ("on", true),
        ("TRUE", true),
        ("false", false),
        ("0", false),
        ("no", false),
        ("off", false),
        ("Off", false),
    ];
    let envs: Vec<Vec<(String, String)>> = spellings
        .iter()
        .map(|(v, _)| {
            let mut env = offline("http://127.0.0.1:5555");
            env.push(("CT_UPSTREAM_HTTP2".into(), (*v).into()));
            env
        })
        .collect();
    let runs = futures_util::future::join_all(
        envs.iter()
            .map(|env| run(dir.path(), env, &["check-config"])),
    )
    .await;
    for ((value, on), r) in spellings.iter().zip(&runs) {
        assert_eq!(r.code, Some(0), "CT_UPSTREAM_HTTP2={value}: {r:?}");
        r.assert_no_crash();
        let out = r.output();
        let forwards = out
            .lines()
            .find(|l| l.contains("forwards to http://127.0.0.1:5555/"))
            .unwrap_or_else(|| {
                panic!("CT_UPSTREAM_HTTP2={value}: no line says where requests go:\n{out}")
            });
        assert_eq!(
            forwards.contains("over HTTP/2"),
            *on,
            "CT_UPSTREAM_HTTP2={value}: {forwards:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_and_false_forward_over_http1_and_true_over_http2() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    assert_eq!(
        seen(&w.upstream, "/").version,
        Version::HTTP_11,
        "the sign-in's landing page, CT_UPSTREAM_HTTP2 unset"
    );
    let cookie = cookie_header(&w, &b);
    let off = gate_beside(&w, &[("CT_UPSTREAM_HTTP2", "false")]).await;
    let on = gate_beside(&w, &[ON]).await;
    for (what, port, version) in [
        ("unset", w.gate.port, Version::HTTP_11),
        ("false", off.port, Version::HTTP_11),
        ("true", on.port, Version::HTTP_2),
    ] {
        let path = format!("/which/{what}");
        let mut c = Conn::tls_to(&w.pki, port).await;
        let a = c
            .exchange_bytes(
                &request(
                    "GET",
                    port,
                    &path,
                    &[JSON.into(), cookie_line(&cookie)],
                    b"",
                ),
                false,
            )
            .await;
        assert_eq!(a.status, 200, "{what}: {a:?}");
        let r = seen(&w.upstream, &path);
        assert_eq!(r.version, version, "CT_UPSTREAM_HTTP2 {what}");
        assert_eq!(r.header("x-forwarded-user"), Some("alice"), "{what}");
        assert_eq!(a.json()["version"], format!("{version:?}"), "{what}");
    }
}

// ---------------------------------------------------------------------------
// What reaches the upstream, and what comes back
// ---------------------------------------------------------------------------

/// Identity and forwarding headers a client makes up.
fn spoofed_lines() -> Vec<String> {
    [
        "X-Forwarded-User: mallory",
        "X_Forwarded_Email: mallory@evil.example",
        "X-Forwarded-Email: mallory@evil.example",
        "X-Forwarded-Preferred-Username: mallory",
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Proto: http",
        "Forwarded: for=6.6.6.6;host=evil.example",
        "X-Real-IP: 6.6.6.6",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The upstream got `r` over HTTP/2 from the gate on `port`: the gate's
/// identity and forwarding headers only, the public host as authority, no
/// cookie of the gate's (and, with `app_cookie`, the application's `app=1`).
fn assert_forwarded_over_h2(r: &Recorded, port: u16, app_cookie: bool, what: &str) {
    let public = format!("localhost:{port}");
    let all = |n: &str| r.header_all(n);
    assert_eq!(r.version, Version::HTTP_2, "{what}");
    assert_eq!(
        r.authority.as_deref(),
        Some(public.as_str()),
        "{what}: :authority"
    );
    assert!(
        all("host").iter().all(|h| *h == public),
        "{what}: a host header other than {public}: {:?}",
        all("host")
    );
    assert_eq!(all("x-forwarded-user"), ["alice"], "{what}");
    assert_eq!(all("x-forwarded-email"), ["alice@example.com"], "{what}");
    assert_eq!(all("x-forwarded-preferred-username"), ["alice"], "{what}");
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"], "{what}");
    assert_eq!(all("x-forwarded-proto"), ["https"], "{what}");
    assert_eq!(all("x-forwarded-host"), [public.as_str()], "{what}");
    for gone in ["x_forwarded_email", "forwarded", "x-real-ip"] {
        assert!(
            all(gone).is_empty(),
            "{what}: {gone} reached the upstream: {:?}",
            r.headers
        );
    }
    assert!(
        !format!("{:?}", r.headers).contains("evil.example")
            && !format!("{:?}", r.headers).contains("mallory"),
        "{what}: a spoofed value reached the upstream: {:?}",
        r.headers
    );
    let cookie = all("cookie").join("; ");
    assert_eq!(
        cookie.contains("app=1"),
        app_cookie,
        "{what}: the application's cookie: {cookie}"
    );
    assert!(
        !cookie.contains("ssogate"),
        "{what}: the gate's cookie leaked: {cookie}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_clients_request_reaches_the_upstream_over_http2_with_only_the_gates_headers() {
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    let port = w.gate.port;
    let cookie = cookie_header(&w, &b);
    let mut lines = vec![
        JSON.to_owned(),
        cookie_line(&cookie),
        "Connection: keep-alive, X-Foo".into(),
        "X-Foo: listed-in-connection".into(),
        "Keep-Alive: timeout=5".into(),
        "Proxy-Connection: keep-alive".into(),
        "X-Kept: 2".into(),
    ];
    lines.extend(spoofed_lines());
    let target = "/h2/a%2Fb/c?x=1&y=%2F&z";
    let mut c = Conn::tls_to(&w.pki, port).await;
    let a = c
        .exchange_bytes(&request("GET", port, target, &lines, b""), false)
        .await;

    let r = seen(&w.upstream, "/h2/a%2Fb/c");
    assert_eq!(r.method, "GET");
    assert_eq!(r.path_and_query, target);
    assert_forwarded_over_h2(&r, port, true, "HTTP/1.1 client");
    assert_eq!(r.header_all("x-kept"), ["2"]);
    for gone in ["x-foo", "keep-alive", "proxy-connection", "connection"] {
        assert!(
            r.header_all(gone).is_empty(),
            "{gone} reached the upstream: {:?}",
            r.headers
        );
    }

    // The client gets the upstream's answer.
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.headers("set-cookie"), ["app=1"], "{}", a.head);
    assert_eq!(
        a.headers("content-type"),
        ["application/json"],
        "{}",
        a.head
    );
    let echo = a.json();
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    assert_eq!(echo["path"], "/h2/a%2Fb/c", "{echo}");
    assert_eq!(echo["query"], "x=1&y=%2F&z", "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-user"][0], "alice", "{echo}");

    // The same client connection goes on: another status and body.
    let a = c
        .exchange_bytes(
            &request(
                "GET",
                port,
                "/status/418",
                &[JSON.into(), cookie_line(&cookie)],
                b"",
            ),
            false,
        )
        .await;
    assert_eq!(a.status, 418, "{a:?}");
    assert_eq!(a.json(), serde_json::json!({"status": 418}));
    assert_eq!(seen(&w.upstream, "/status/418").version, Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_request_reaches_the_upstream_over_http2_with_only_the_gates_headers() {
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    let mut req = b
        .client()
        .get(w.url("/h2c/x%20y/z?q=1&r=%2F&s"))
        .header(ACCEPT, "application/json")
        .header("x-kept", "2");
    for l in spoofed_lines() {
        let (n, v) = l.split_once(": ").unwrap();
        req = req.header(n.to_ascii_lowercase(), v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "the client spoke HTTP/2 to the gate"
    );
    assert_eq!(resp.status(), 200);
    let set_cookies: Vec<&str> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set_cookies, ["app=1"]);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    assert_eq!(echo["path"], "/h2c/x%20y/z", "{echo}");
    assert_eq!(echo["query"], "q=1&r=%2F&s", "{echo}");

    let r = seen(&w.upstream, "/h2c/x%20y/z");
    assert_eq!(r.path_and_query, "/h2c/x%20y/z?q=1&r=%2F&s");
    assert_forwarded_over_h2(&r, w.gate.port, true, "HTTP/2 client");
    assert_eq!(r.header_all("x-kept"), ["2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_http2_are_the_same_as_over_http1() {
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    let cookie = cookie_header(&w, &b);
    let h1_gate = gate_beside(&w, &[("CT_UPSTREAM_HTTP2", "false")]).await;
    let upload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    // (method, target, body, compare the body too). The echo's body (and
    // so its length) tells the version and headers the upstream got.
    let cases: [(&str, &str, &[u8], bool); 11] = [
        ("GET", "/", b"", false),
        ("GET", "/status/418", b"", true),
        ("GET", "/status/500", b"", true),
        ("GET", "/status/204", b"", true),
        ("GET", "/status/304", b"", true),
        ("GET", "/big?bytes=100000", b"", true),
        ("GET", "/slow?chunks=3&interval_ms=5", b"", true),
        ("GET", "/big-head?bytes=8192", b"", true),
        ("HEAD", "/big?bytes=1048576", b"", true),
        ("HEAD", "/status/202", b"", true),
        ("POST", "/upload", &upload, true),
    ];
    let mut over_h2 = Conn::tls_to(&w.pki, w.gate.port).await;
    let mut over_h1 = Conn::tls_to(&w.pki, h1_gate.port).await;
    for (method, target, body, compare_body) in cases {
        let lines = [JSON.to_owned(), cookie_line(&cookie)];
        let head = method == "HEAD";
        let a2 = over_h2
            .exchange_bytes(&request(method, w.gate.port, target, &lines, body), head)
            .await;
        let a1 = over_h1
            .exchange_bytes(&request(method, h1_gate.port, target, &lines, body), head)
            .await;
        let what = format!("{method} {target}");
        assert_eq!(
            a2.status, a1.status,
            "{what}:\n{}\n---\n{}",
            a2.head, a1.head
        );
        let masked: &[&str] = if compare_body {
            &[]
        } else {
            &["content-length"]
        };
        assert_eq!(
            a2.normalized_headers(masked),
            a1.normalized_headers(masked),
            "{what}: headers over HTTP/2 (left) and HTTP/1.1 (right)"
        );
        if compare_body {
            assert!(
                a2.body == a1.body,
                "{what}: bodies differ:\n{}\n---\n{}",
                a2.text(),
                a1.text()
            );
        }
    }
    let over: Vec<(String, Version)> = w
        .upstream
        .requests()
        .iter()
        .map(|r| (r.path_and_query.clone(), r.version))
        .collect();
    for (_, target, _, _) in cases {
        assert!(
            over.contains(&(target.to_owned(), Version::HTTP_2)),
            "{target}: {over:?}"
        );
        assert!(
            over.contains(&(target.to_owned(), Version::HTTP_11)),
            "{target}: {over:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

/// `total` bytes in 1 MiB chunks of a pseudo-random block, each stamped
/// with its index, as a stream (no length known up front).
fn streamed_body(total: usize) -> (reqwest::Body, String) {
    const CHUNK: usize = 1 << 20;
    let mut x: u32 = 0x2545_f491;
    let block: Vec<u8> = (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let chunks: Vec<Bytes> = (0..total.div_ceil(CHUNK))
        .map(|i| {
            let len = (total - i * CHUNK).min(CHUNK);
            let mut c = block[..len].to_vec();
            c[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Bytes::from(c)
        })
        .collect();
    let mut hasher = Sha256::new();
    for c in &chunks {
        hasher.update(c);
    }
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    (reqwest::Body::wrap_stream(stream), digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream_byte_exact_over_http2() {
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    let body: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let digest = sha256_hex(&body);
    let h1 = http1_client(&w, &b);
    for (what, tag, client, version) in [
        ("HTTP/1.1 client", "h1", &h1, reqwest::Version::HTTP_11),
        ("HTTP/2 client", "h2", b.client(), reqwest::Version::HTTP_2),
    ] {
        let resp = client
            .post(w.url(&format!("/upload?from={tag}")))
            .header(ACCEPT, "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version, "{what}");
        assert_eq!(resp.status(), 200, "{what}");
        let got: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(got["bytes"], 300_000, "{what}: {got}");
        assert_eq!(got["sha256"], digest.as_str(), "{what}: {got}");
    }
    // A body of unknown length, sent chunked by an HTTP/1.1 client.
    let (stream, digest) = streamed_body((8 << 20) + 12_345);
    let resp = h1
        .post(w.url("/upload?from=chunked"))
        .header(ACCEPT, "application/json")
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(got["bytes"], (8 << 20) + 12_345, "{got}");
    assert_eq!(got["sha256"], digest.as_str(), "{got}");

    let uploads: Vec<Recorded> = w
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/upload")
        .collect();
    assert_eq!(uploads.len(), 3, "each upload reached the upstream once");
    for r in &uploads {
        assert_eq!(r.version, Version::HTTP_2, "{}", r.path_and_query);
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("x-forwarded-user"), Some("alice"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_comes_back_byte_exact_over_http2() {
    const SIZE: u64 = (4 << 20) + 7;
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    let h1 = http1_client(&w, &b);
    for (what, client) in [("HTTP/1.1 client", &h1), ("HTTP/2 client", b.client())] {
        let resp = client
            .get(w.url(&format!("/big?bytes={SIZE}")))
            .header(ACCEPT, "*/*")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.content_length(), Some(SIZE), "{what}");
        let body = resp.bytes().await.expect("the answer was cut short");
        assert_eq!(body.len() as u64, SIZE, "{what}");
        assert_eq!(pattern_mismatch(&body), None, "{what}: a wrong byte");
    }
    let bigs: Vec<Recorded> = w
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/big")
        .collect();
    assert_eq!(bigs.len(), 2);
    assert!(
        bigs.iter().all(|r| r.version == Version::HTTP_2),
        "{bigs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_has_no_body_over_http2() {
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    let port = w.gate.port;
    let cookie = cookie_header(&w, &b);
    let lines = [JSON.to_owned(), cookie_line(&cookie)];

    // HTTP/1.1 client: the answer after each HEAD starts right after its head.
    let mut c = Conn::tls_to(&w.pki, port).await;
    for target in ["/big?bytes=1048576", "/head/echo"] {
        let head = c
            .exchange_bytes(&request("HEAD", port, target, &lines, b""), true)
            .await;
        assert_eq!(head.status, 200, "HEAD {target}: {head:?}");
        let next = c
            .exchange_bytes(&request("GET", port, "/status/201", &lines, b""), false)
            .await;
        assert_eq!(next.status, 201, "the answer after HEAD {target}: {next:?}");
        assert_eq!(next.json(), serde_json::json!({"status": 201}));
    }
    assert_eq!(
        c.stray_bytes(Duration::from_millis(300)).await,
        b"",
        "bytes after the last answer"
    );

    // HTTP/2 client: a HEAD answer with DATA would be a stream error.
    let resp = b
        .client()
        .head(w.url("/big?bytes=1048576"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.expect("a HEAD answer read to its end");
    assert!(body.is_empty(), "{} body bytes", body.len());

    let heads: Vec<Recorded> = w
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "HEAD")
        .collect();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads.iter().all(|r| r.version == Version::HTTP_2),
        "{heads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_streams_over_http2_and_a_client_that_leaves_ends_it_upstream() {
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    let h1 = http1_client(&w, &b);
    for (what, client) in [("HTTP/1.1 client", &h1), ("HTTP/2 client", b.client())] {
        let resp = client
            .get(w.url("/slow?chunks=1000&interval_ms=50"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        let mut stream = resp.bytes_stream();
        let first = tokio::time::timeout(HANG, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no first chunk: the answer is held back"))
            .unwrap()
            .unwrap();
        assert!(first.starts_with(b"chunk 0\n"), "{what}: {first:?}");
        // The upstream is 50 s from done: the client got the chunk as it came.
        assert_eq!(w.upstream.open_streams(), 1, "{what}");
        drop(stream);
        assert_eventually!(
            w.upstream.open_streams() == 0,
            Duration::from_secs(5),
            "{what}: the upstream kept streaming to a client that was gone"
        );
    }
    assert!(
        w.upstream
            .requests()
            .iter()
            .filter(|r| r.path() == "/slow")
            .all(|r| r.version == Version::HTTP_2)
    );
}

// ---------------------------------------------------------------------------
// The connection: multiplexed, reopened
// ---------------------------------------------------------------------------

// A current-thread runtime, as the binary runs: the gate then starts its
// second serving thread with a runtime of its own (see proxy.rs).
#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_share_one_upstream_connection_per_serving_thread() {
    const CLIENTS: usize = 48;
    let w = h2_world(&[("CT_WORKER_THREADS", "2")]).await;
    let b = w.signed_in("alice").await;
    let cookie = cookie_header(&w, &b);
    let port = w.gate.port;
    // Each on a client connection of its own; each answer takes 300 ms, so
    // all are in flight together.
    let one = |i: usize| {
        let lines = [
            JSON.to_owned(),
            cookie_line(&cookie),
            "Connection: close".into(),
        ];
        let req = request(
            "GET",
            port,
            &format!("/slow?chunks=2&interval_ms=300&n={i}"),
            &lines,
            b"",
        );
        let pki = &w.pki;
        async move {
            let mut c = Conn::tls_to(pki, port).await;
            c.exchange_bytes(&req, false).await
        }
    };
    let answers = futures_util::future::join_all((0..CLIENTS).map(one)).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200, "request {i}: {a:?}");
        assert_eq!(a.text(), "chunk 0\nchunk 1\n", "request {i}");
    }
    let slow: Vec<Recorded> = w
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/slow")
        .collect();
    assert_eq!(
        slow.len(),
        CLIENTS,
        "each request reached the upstream once"
    );
    assert!(slow.iter().all(|r| r.version == Version::HTTP_2));
    let connections = w.upstream.connections();
    assert!(
        (1..=2).contains(&connections),
        "{connections} upstream connections for the sign-in and {CLIENTS} concurrent requests on 2 serving threads"
    );
}

/// An HTTP/2 request through the browser's client, with a hang limit.
async fn get_via(b: &Browser, url: String) -> (u16, String) {
    let resp = tokio::time::timeout(
        HANG,
        b.client()
            .get(url)
            .header(ACCEPT, "application/json")
            .send(),
    )
    .await
    .expect("the request hung")
    .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restart_gives_502_while_down_and_the_next_request_after_succeeds() {
    let first = Upstream::start().await;
    let addr = first.addr;
    let w = h2_world(&[("CT_UPSTREAM_URL", first.url.as_str())]).await;
    let b = w.signed_in("alice").await;
    let (status, body) = get_via(&b, w.url("/before")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&first, "/before").version, Version::HTTP_2);

    drop(first);
    for i in 0..2 {
        let (status, body) = get_via(&b, w.url(&format!("/down/{i}"))).await;
        assert_eq!(
            status, 502,
            "request {i} while the upstream is down: {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "upstream_unavailable", "{json}");
    }

    let back = Upstream::start_at(addr).await;
    let (status, body) = get_via(&b, w.url("/back")).await;
    assert_eq!(status, 200, "the first request after the restart: {body}");
    let r = seen(&back, "/back");
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.header("x-forwarded-user"), Some("alice"));
}

#[tokio::test(flavor = "current_thread")]
async fn after_the_upstream_closes_its_connection_requests_go_on_a_new_one() {
    let w = h2_world(&[("CT_WORKER_THREADS", "1")]).await;
    let b = w.signed_in("alice").await;
    for i in 0..5 {
        let (status, body) = get_via(&b, w.url(&format!("/before/{i}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        w.upstream.connections(),
        1,
        "one connection carries the sign-in's request and five more"
    );
    // The upstream closes it without a word (idle timeout, crash).
    w.upstream.drop_connections();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5 {
        let (status, body) = get_via(&b, w.url(&format!("/after/{i}"))).await;
        assert_eq!(status, 200, "request {i} after the close: {body}");
    }
    assert_eq!(w.upstream.connections(), 2, "one new connection");
    let reqs = w.upstream.requests();
    for prefix in ["/before/", "/after/"] {
        for i in 0..5 {
            let path = format!("{prefix}{i}");
            let n = reqs.iter().filter(|r| r.path() == path).count();
            assert_eq!(n, 1, "{path} reached the upstream {n} times");
        }
    }
    assert!(reqs.iter().all(|r| r.version == Version::HTTP_2));
}

// One serving thread: the sign-in's connection is the one reused.
#[tokio::test(flavor = "current_thread")]
async fn a_get_cut_off_on_a_reused_connection_is_sent_again_and_a_post_gets_502() {
    let w = h2_world(&[("CT_WORKER_THREADS", "1")]).await;
    let b = w.signed_in("alice").await;
    assert_eq!(w.upstream.connections(), 1);
    let tries = |target: &str| {
        w.upstream
            .requests()
            .iter()
            .filter(|r| r.path_and_query == target)
            .count()
    };

    // The upstream goes down with the request on the wire, and is back at once.
    let (status, body) = get_via(&b, w.url("/drop-once?key=get")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        tries("/drop-once?key=get"),
        2,
        "sent, cut off, sent again on a new connection"
    );
    assert_eq!(w.upstream.connections(), 2);

    // A POST may have been acted on: not sent again.
    let resp = tokio::time::timeout(
        HANG,
        b.client()
            .post(w.url("/drop-once?key=post"))
            .header(ACCEPT, "application/json")
            .body("x=1")
            .send(),
    )
    .await
    .expect("the POST hung")
    .unwrap();
    assert_eq!(resp.status(), 502);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["error"], "upstream_unavailable", "{json}");
    assert_eq!(tries("/drop-once?key=post"), 1, "the POST was repeated");

    let (status, body) = get_via(&b, w.url("/after-drops")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.version == Version::HTTP_2),
        "{:?}",
        w.upstream.requests()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn after_a_goaway_the_stream_in_flight_finishes_and_new_requests_go_on_a_new_connection() {
    let w = h2_world(&[("CT_WORKER_THREADS", "1")]).await;
    let b = w.signed_in("alice").await;
    assert_eq!(w.upstream.connections(), 1);
    let resp = b
        .client()
        .get(w.url("/slow?chunks=6&interval_ms=250"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains('\n') {
        let piece = tokio::time::timeout(HANG, stream.next())
            .await
            .expect("no first chunk")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&piece).unwrap());
    }
    // The upstream is reloaded: GOAWAY on its connection.
    w.upstream.goaway();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.upstream.open_streams(),
        1,
        "the slow answer is still in flight"
    );
    let (status, body) = get_via(&b, w.url("/after-goaway")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        w.upstream.connections(),
        2,
        "the request after GOAWAY went on a new connection"
    );
    // The stream that was in flight ends whole.
    while let Some(piece) = tokio::time::timeout(HANG, stream.next())
        .await
        .expect("the slow answer stalled")
    {
        text.push_str(std::str::from_utf8(&piece.expect("the slow answer was cut")).unwrap());
    }
    assert_eq!(
        text,
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\nchunk 5\n"
    );
    let (status, body) = get_via(&b, w.url("/after-goaway-2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.upstream.connections(), 2, "the new connection is kept");
    assert_eq!(seen(&w.upstream, "/after-goaway").version, Version::HTTP_2);
}

// ---------------------------------------------------------------------------
// WebSockets stay on HTTP/1.1
// ---------------------------------------------------------------------------

/// Opens a WebSocket through the gate with `b`'s session and echoes a text
/// and a binary message.
async fn websocket_echoes(w: &World, b: &Browser) {
    let cookies = cookie_header(w, b);
    let origin = w.url("");
    let mut ws = connect(w, &[("cookie", &cookies), ("origin", &origin)])
        .await
        .expect("WebSocket through the gate");
    ws.send(Message::text("hello over h1")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello over h1"));
    let binary: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(binary));
    ws.close(None).await.unwrap();
}

async fn next(ws: &mut WebSocketStream<TlsStream<TcpStream>>) -> Message {
    tokio::time::timeout(HANG, ws.next())
        .await
        .expect("no echo")
        .expect("the WebSocket ended")
        .expect("WebSocket error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_goes_to_the_upstream_over_http1_and_echoes_with_upstream_http2_on() {
    let w = h2_world(&[]).await;
    let b = w.signed_in("alice").await;
    websocket_echoes(&w, &b).await;
    let r = seen(&w.upstream, "/ws");
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(r.header("x-forwarded-user"), Some("alice"));
    // Ordinary requests still go over HTTP/2.
    let (status, body) = get_via(&b, w.url("/after-ws")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&w.upstream, "/after-ws").version, Version::HTTP_2);
}

// ---------------------------------------------------------------------------
// An https upstream: ALPN h2
// ---------------------------------------------------------------------------

/// Gate variables for an https upstream trusted through its CA file.
fn https_upstream_vars(secure: &Upstream, pki: &TestPki) -> Vec<(String, String)> {
    vec![
        ("CT_UPSTREAM_URL".into(), secure.url.clone()),
        (
            "CT_UPSTREAM_CA_FILE".into(),
            pki.ca_file.display().to_string(),
        ),
        (ON.0.into(), ON.1.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_offering_h2_gets_requests_over_http2_and_websockets_over_http1() {
    let upstream_pki = TestPki::new();
    let secure = Upstream::start_tls_with_alpn(&upstream_pki, &["h2", "http/1.1"]).await;
    let w = World::with(Setup {
        vars: https_upstream_vars(&secure, &upstream_pki),
        ..Setup::default()
    })
    .await;
    let b = w.signed_in("alice").await;
    let r = seen(&secure, "/");
    assert_forwarded_over_h2(&r, w.gate.port, false, "sign-in landing page");

    let resp = b
        .client()
        .get(w.url("/big?bytes=1048576"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(pattern_mismatch(&body), None);
    assert_eq!(seen(&secure, "/big").version, Version::HTTP_2);

    websocket_echoes(&w, &b).await;
    assert_eq!(seen(&secure, "/ws").version, Version::HTTP_11);
    assert!(
        w.upstream.requests().is_empty(),
        "the default upstream was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_offering_only_http1_gives_502() {
    let upstream_pki = TestPki::new();
    let secure = Upstream::start_tls(&upstream_pki).await;
    let w = World::with(Setup {
        vars: https_upstream_vars(&secure, &upstream_pki),
        ..Setup::default()
    })
    .await;
    let b = w.browser();
    let page = b.sign_in(&w.url("/app"), "alice", "alice-pass").await;
    assert_eq!(page.status, 502, "{}", page.body);
    let (status, body) = get_via(&b, w.url("/api/items")).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        secure.connections() >= 1,
        "the gate never tried the upstream"
    );
    assert!(
        secure.requests().is_empty(),
        "a request went over HTTP/1.1: {:?}",
        secure.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_selects_no_alpn_gives_502_and_a_log_line_says_why() {
    // TLS completes without any protocol chosen; the upstream would even
    // take HTTP/2 by prior knowledge, but only ALPN `h2` is agreement.
    let upstream_pki = TestPki::new();
    let secure = Upstream::start_tls_with_alpn(&upstream_pki, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = offline(&secure.url);
    env.push((
        "CT_UPSTREAM_CA_FILE".into(),
        upstream_pki.ca_file.display().to_string(),
    ));
    env.push((ON.0.into(), ON.1.into()));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(HANG)
        .build()
        .unwrap();
    let gate = Served::start(dir.path(), env, false, &client).await;
    let before = gate.output().lines().count();
    let resp = client
        .get(gate.url("/refused"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
    assert!(
        secure.connections() >= 1,
        "the gate never tried the upstream"
    );
    assert!(secure.requests().is_empty(), "{:?}", secure.requests());
    let says_why = regex::Regex::new(r"(?i)(\balpn\b|\bh2\b|http/2)").unwrap();
    assert_eventually!(
        gate.output()
            .lines()
            .skip(before)
            .any(|l| says_why.is_match(l)),
        Duration::from_secs(5),
        "no log line says the upstream did not take h2:\n{}",
        gate.output()
    );
}

// ---------------------------------------------------------------------------
// An upstream that speaks only HTTP/1.1
// ---------------------------------------------------------------------------

/// An upstream that answers whatever it is sent with an HTTP/1.1 400 and
/// closes (as an HTTP/1.1-only server meets the HTTP/2 preface); returns
/// its `http://` URL and the count of connections it accepted.
async fn http1_only_upstream() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(n) = s.read(&mut buf).await
                    && n > 0
                {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (url, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_only_upstream_gives_502_without_a_hang() {
    let (url, accepted, task) = http1_only_upstream().await;
    let w = h2_world(&[("CT_UPSTREAM_URL", url.as_str())]).await;
    let b = w.browser();
    let page = tokio::time::timeout(HANG, b.sign_in(&w.url("/app"), "alice", "alice-pass"))
        .await
        .expect("signing in hung on the upstream");
    assert_eq!(page.status, 502, "{}", page.body);
    for i in 0..2 {
        let (status, body) = get_via(&b, w.url(&format!("/api/items/{i}"))).await;
        assert_eq!(status, 502, "request {i}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "upstream_unavailable", "{json}");
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the gate never tried the upstream"
    );
    task.abort();
}

/// `ssogate_upstream_connections_opened_total{protocol="<protocol>"}`.
fn opened(scrape: &str, protocol: &str) -> f64 {
    let series = format!("ssogate_upstream_connections_opened_total{{protocol=\"{protocol}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in\n{scrape}"))
}

/// The operator sees how many upstream connections the gate opened, by
/// protocol: over HTTP/1.1 the requests of one client connection reuse one
/// upstream connection; over HTTP/2 each thread that serves them keeps one
/// (here the test runtime's two workers, between which the request's task
/// may move), and none is HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_upstream_connections_opened_by_protocol() {
    let w = crate::cases::hostile::plain_world(&[]).await;
    let cookie = crate::cases::hostile::session_cookie(false, "alice");
    let auth = [format!("Cookie: {cookie}")];
    for (http2, want_http1, want_http2) in
        [(false, 1.0..=1.0, 0.0..=0.0), (true, 0.0..=0.0, 1.0..=2.0)]
    {
        let (listener, url) = reserve(false).await;
        let mut vars = base_vars(&url, &w.upstream.url, &w.idp.issuer, &w.pki, false);
        vars.push(("CT_UPSTREAM_HTTP2".into(), http2.to_string()));
        let (gate, metrics) = Gate::start_with_metrics(listener, url, vars).await.unwrap();
        let before = super::fast_path::coverage::scrape(metrics).await;
        assert_eq!(opened(&before, "http1"), 0.0, "{before}");
        assert_eq!(opened(&before, "http2"), 0.0, "{before}");
        let mut c = Conn::open(gate.port).await;
        for n in 0..10 {
            let a = c
                .exchange(
                    &super::fast_path::conn::request("GET", &format!("/n/{n}"), gate.port, &auth),
                    "signed in",
                )
                .await;
            assert_eq!(a.status, 200, "{}", a.head);
        }
        let after = super::fast_path::coverage::scrape(metrics).await;
        assert!(
            want_http1.contains(&opened(&after, "http1")),
            "http2={http2}: {after}"
        );
        assert!(
            want_http2.contains(&opened(&after, "http2")),
            "http2={http2}: {after}"
        );
    }
}
