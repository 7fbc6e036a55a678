//! Several requests on one kept-alive connection: pipelined, mixed with the
//! gate's own routes and refusals, over TLS, ended by `Connection: close`,
//! and `HEAD`.

use std::time::Duration;

use super::conn::{Answer, Conn, assert_echo, forwarded_paths, request, signed_in, with};
use crate::cases::bearer::{tampered, token};
use crate::cases::hostile::{JSON, plain_world, session_cookie};
use crate::support::gate::World;
use crate::support::upstream::Upstream;

// ---------------------------------------------------------------------------
// Pipelining and mixed traffic
// ---------------------------------------------------------------------------

/// Three signed-in GETs in one write: three answers, in order, each from
/// the upstream for its own path and with its own request id; a sane
/// client id comes back and reaches the upstream unchanged, an unusable one
/// is replaced by the gate's on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pipelined_gets_get_three_answers_in_order_each_with_its_own_request_id() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    let mut bytes = request(
        "GET",
        "/pipe/1",
        port,
        &with(&auth, "X-Request-Id: client-trace-1"),
    );
    bytes.push_str(&request("GET", "/pipe/2?q=2", port, &auth));
    bytes.push_str(&request(
        "GET",
        "/pipe/3",
        port,
        &with(&auth, "X-Request-Id: not a usable id"),
    ));
    c.send(&bytes).await;

    let answers = [
        c.answer("pipelined 1").await,
        c.answer("pipelined 2").await,
        c.answer("pipelined 3").await,
    ];
    for (i, a) in answers.iter().enumerate() {
        assert_echo(
            a,
            &format!("/pipe/{}", i + 1),
            &format!("pipelined {}", i + 1),
        );
        assert_eq!(
            a.echoed_header("x-forwarded-user"),
            ["alice"],
            "pipelined {}",
            i + 1
        );
    }
    assert_eq!(answers[1].json()["query"], "q=2");
    let ids: Vec<String> = answers.iter().map(|a| a.one("x-request-id")).collect();
    assert_eq!(ids[0], "client-trace-1", "a sane client id is echoed");
    assert!(
        ids[1] != ids[0] && ids[2] != ids[0] && ids[1] != ids[2],
        "request ids are not distinct: {ids:?}"
    );
    assert!(
        !ids[2].contains(' ') && !ids[2].is_empty(),
        "an unusable client id came back: {:?}",
        ids[2]
    );
    // The upstream saw them in order, each with that id and nothing else.
    let seen = w.upstream.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/pipe/1", "/pipe/2", "/pipe/3"]);
    for (r, id) in seen.iter().zip(&ids) {
        assert_eq!(r.header_all("x-request-id"), [id.as_str()], "{}", r.path());
    }
    assert!(
        c.stray_bytes(Duration::from_millis(200)).await.is_empty(),
        "bytes after the third answer"
    );
    // The connection is still in step.
    let a = c
        .exchange(
            &request("GET", "/pipe/4", port, &auth),
            "after the pipeline",
        )
        .await;
    assert_echo(&a, "/pipe/4", "after the pipeline");
}

/// What one request of a mixed connection must get.
enum Expect {
    /// Forwarded: the echo of this method and path, with the body length
    /// the upstream read and the user it was told.
    Forwarded {
        method: &'static str,
        path: &'static str,
        body_len: u64,
        user: &'static str,
    },
    /// The gate's 401 (never forwarded).
    Refused,
    /// The gate's `/sso/healthz`.
    Health,
}

/// The requests of a mixed keep-alive connection, with what each must get:
/// a session cookie (alice), a bearer token (bob), a tampered one, none, a
/// body, and the gate's own route.
fn mixed_requests(port: u16, cookie: &str, bearer: &str, forged: &str) -> Vec<(String, Expect)> {
    let auth = signed_in(cookie);
    let mut post = with(&auth, "Content-Type: text/plain");
    post.push("Content-Length: 11".into());
    let mut post = request("POST", "/mix/post", port, &post);
    post.push_str("hello world");
    let bearer_lines =
        |token: &str| vec![JSON.to_owned(), format!("Authorization: Bearer {token}")];
    let fwd = |method, path, body_len, user| Expect::Forwarded {
        method,
        path,
        body_len,
        user,
    };
    vec![
        (
            request("GET", "/mix/first", port, &auth),
            fwd("GET", "/mix/first", 0, "alice"),
        ),
        (post, fwd("POST", "/mix/post", 11, "alice")),
        (
            request("GET", "/mix/third", port, &with(&auth, "Content-Length: 0")),
            fwd("GET", "/mix/third", 0, "alice"),
        ),
        (
            request("GET", "/mix/bearer", port, &bearer_lines(bearer)),
            fwd("GET", "/mix/bearer", 0, "bob"),
        ),
        (
            request("GET", "/mix/forged", port, &bearer_lines(forged)),
            Expect::Refused,
        ),
        (
            request("GET", "/mix/anon", port, &[JSON.into()]),
            Expect::Refused,
        ),
        (request("GET", "/sso/healthz", port, &[]), Expect::Health),
        (
            request("GET", "/mix/last", port, &auth),
            fwd("GET", "/mix/last", 0, "alice"),
        ),
    ]
}

/// `a` is what `expect` says.
fn assert_mixed(a: &Answer, expect: &Expect, what: &str) {
    match expect {
        Expect::Refused => {
            assert_eq!(a.status, 401, "{what}: {}", a.head);
            assert!(a.has("www-authenticate"), "{what}: {}", a.head);
        }
        Expect::Health => {
            assert_eq!(a.status, 200, "{what}: {}", a.head);
            assert_eq!(a.json()["status"], "ok", "{what}");
        }
        Expect::Forwarded {
            method,
            path,
            body_len,
            user,
        } => {
            assert_echo(a, path, what);
            assert_eq!(a.json()["method"], *method, "{what}");
            assert_eq!(a.json()["body_len"], *body_len, "{what}");
            assert_eq!(a.echoed_header("x-forwarded-user"), [*user], "{what}");
        }
    }
}

/// Sends all of `requests` in one write; each answer, in order, is what
/// its request must get.
async fn assert_pipelined(c: &mut Conn, requests: &[(String, Expect)], what: &str) {
    c.send(requests.iter().map(|(r, _)| r.as_str()).collect::<String>())
        .await;
    for (i, (_, expect)) in requests.iter().enumerate() {
        let a = c.answer(&format!("{what}, {i}")).await;
        assert_mixed(&a, expect, &format!("{what}, {i}"));
    }
}

/// The upstream got the forwarded ones of the mixed requests, `paths` in
/// order, the POST (the second) with its 11 body bytes.
fn assert_mixed_forwarded(upstream: &Upstream, paths: &[&str], what: &str) {
    let seen = upstream.requests();
    let got: Vec<&str> = seen.iter().map(|r| r.path()).collect();
    assert_eq!(got, paths, "{what}");
    assert_eq!(seen[1].body_len, 11, "{what}: the POST's body");
}

/// Signed-in GETs (one with `Content-Length: 0`), a POST with a body, a
/// bearer token, a forged one, no credentials, the gate's own route and a
/// GET again, on one connection: each answered in order and as itself,
/// whether sent one at a time or all in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_serves_forwarded_posted_refused_and_gate_requests_in_order() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let bearer = token(&w.idp, "bob");
    let requests = mixed_requests(port, &cookie, &bearer, &tampered(&bearer));
    let forwarded: Vec<&str> = requests
        .iter()
        .filter_map(|(_, e)| match e {
            Expect::Forwarded { path, .. } => Some(*path),
            _ => None,
        })
        .collect();

    // One at a time.
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    for (i, (req, expect)) in requests.iter().enumerate() {
        let a = c.exchange(req, &format!("one at a time, {i}")).await;
        assert_mixed(&a, expect, &format!("one at a time, {i}"));
    }
    assert_mixed_forwarded(&w.upstream, &forwarded, "one at a time");

    // All in one write.
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    assert_pipelined(&mut c, &requests, "pipelined").await;
    assert_mixed_forwarded(&w.upstream, &forwarded, "pipelined");
    assert!(
        c.stray_bytes(Duration::from_millis(200)).await.is_empty(),
        "bytes after the last answer"
    );
}

/// The same mixed requests, all in one write, over TLS (HTTP/1.1 by ALPN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_one_http_1_1_connection_serves_mixed_pipelined_requests_in_order() {
    let w = World::start().await;
    let port = w.gate.port;
    let cookie = session_cookie(true, "alice");
    let bearer = token(&w.idp, "bob");
    let requests = mixed_requests(port, &cookie, &bearer, &tampered(&bearer));
    w.upstream.clear();
    let mut c = Conn::tls(&w).await;
    assert_pipelined(&mut c, &requests, "over TLS").await;
    assert_mixed_forwarded(
        &w.upstream,
        &[
            "/mix/first",
            "/mix/post",
            "/mix/third",
            "/mix/bearer",
            "/mix/last",
        ],
        "over TLS",
    );
    let a = c
        .exchange(
            &request("GET", "/mix/tls-end", port, &signed_in(&cookie)),
            "over TLS, the end",
        )
        .await;
    assert_echo(&a, "/mix/tls-end", "over TLS, the end");
}

// ---------------------------------------------------------------------------
// Connection: close and HEAD
// ---------------------------------------------------------------------------

/// A request with `Connection: close` is answered with `connection: close`
/// and then the gate hangs up, whether it is the connection's first request
/// or a later one, and whatever the client sent after it is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_with_connection_close_and_then_the_gate_hangs_up() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let closing = |path: &str| request("GET", path, port, &with(&auth, "Connection: close"));

    // The first request of its connection.
    let mut c = Conn::open(port).await;
    let a = c.exchange(&closing("/close/first"), "first").await;
    assert_echo(&a, "/close/first", "first");
    c.assert_ends_with(&a, "after Connection: close, first request")
        .await;

    // After a kept-alive one, with another request right behind it.
    w.upstream.clear();
    let mut c = Conn::open(port).await;
    let a = c
        .exchange(&request("GET", "/close/kept", port, &auth), "kept")
        .await;
    assert_echo(&a, "/close/kept", "kept");
    a.assert_keeps("kept");
    let mut bytes = closing("/close/second");
    bytes.push_str(&request("GET", "/close/never", port, &auth));
    c.send(&bytes).await;
    let a = c.answer("second").await;
    assert_echo(&a, "/close/second", "second");
    c.assert_ends_with(&a, "after Connection: close, second request")
        .await;
    assert_eq!(
        forwarded_paths(&w.upstream),
        ["/close/kept", "/close/second"]
    );

    // The gate's own routes close the same way.
    let mut c = Conn::open(port).await;
    let a = c
        .exchange(
            &request("GET", "/sso/healthz", port, &["Connection: close".into()]),
            "healthz",
        )
        .await;
    assert_eq!(a.status, 200);
    a.assert_closes("healthz");
    c.assert_closed_with_nothing_more("after Connection: close, healthz")
        .await;
}

/// `HEAD` gets the headers `GET` gets (the same `content-length`) and no
/// body: the next answer on the connection starts right after the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_headers_of_get_and_no_body_and_the_connection_stays_in_step() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;

    for path in ["/big?bytes=1000", "/status/200"] {
        let get = c
            .exchange(&request("GET", path, port, &auth), &format!("GET {path}"))
            .await;
        assert_eq!(get.status, 200, "GET {path}");
        let length = get.one("content-length");
        assert_eq!(length, get.body.len().to_string(), "GET {path}");

        c.send(request("HEAD", path, port, &auth)).await;
        let head = c.answer_to(true, &format!("HEAD {path}")).await;
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.head);
        assert_eq!(head.one("content-length"), length, "HEAD {path}");
        assert_eq!(
            head.headers("content-type"),
            get.headers("content-type"),
            "HEAD {path}"
        );
        assert!(head.has("x-request-id"), "HEAD {path}");
        let stray = c.stray_bytes(Duration::from_millis(300)).await;
        assert!(
            stray.is_empty(),
            "HEAD {path}: body bytes after the head: {:?}",
            String::from_utf8_lossy(&stray)
        );
        let seen = w.upstream.last_request().unwrap();
        assert_eq!(seen.method, http::Method::HEAD, "HEAD {path}");
        let a = c
            .exchange(
                &request("GET", "/after/head", port, &auth),
                &format!("after HEAD {path}"),
            )
            .await;
        assert_echo(&a, "/after/head", &format!("after HEAD {path}"));
    }

    // A streamed answer (no length) to HEAD: the head, no body either.
    c.send(request(
        "HEAD",
        "/slow?chunks=3&interval_ms=20",
        port,
        &auth,
    ))
    .await;
    let head = c.answer_to(true, "HEAD /slow").await;
    assert_eq!(head.status, 200, "HEAD /slow: {}", head.head);
    let stray = c.stray_bytes(Duration::from_millis(300)).await;
    assert!(
        stray.is_empty(),
        "HEAD /slow: body bytes after the head: {:?}",
        String::from_utf8_lossy(&stray)
    );
    let a = c
        .exchange(
            &request("GET", "/after/head-slow", port, &auth),
            "after HEAD /slow",
        )
        .await;
    assert_echo(&a, "/after/head-slow", "after HEAD /slow");
}
