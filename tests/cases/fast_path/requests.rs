//! Requests as clients write them: header names in odd case, HTTP/1.0,
//! lenient and malformed shapes.

use super::conn::{Answer, Conn, assert_echo, forwarded_paths, request, signed_in, with};
use crate::cases::hostile::{JSON, plain_world, session_cookie};
use crate::support::upstream::Recorded;

// ---------------------------------------------------------------------------
// Header hygiene with odd header-name case
// ---------------------------------------------------------------------------

/// None of the headers `names` reached the upstream in `seen`.
fn assert_not_forwarded(seen: &Recorded, names: &[&str]) {
    for gone in names {
        assert!(
            seen.header_all(gone).is_empty(),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }
}

/// On one kept-alive connection, headers in odd case: `cOOKIE` still signs
/// the request in (and the gate's cookie still goes), spoofed forwarding
/// headers are replaced or removed, a header `Connection` names never
/// reaches the upstream, and neither does the client's `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_case_headers_are_judged_and_cleaned_as_any_others_on_a_kept_connection() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let ours = format!("localhost:{port}");
    let cookie = session_cookie(false, "alice");
    let mut c = Conn::open(port).await;
    let get = |path: &str, lines: &[&str]| {
        let lines: Vec<String> = std::iter::once(JSON)
            .chain(lines.iter().copied())
            .map(str::to_owned)
            .collect();
        request("GET", path, port, &lines)
    };
    let last = |path: &str| {
        let seen = w.upstream.last_request().expect("forwarded");
        assert_eq!(seen.path(), path);
        seen
    };
    // GET `path` with `lines`: the echo's answer, and what the upstream got.
    let forward = async |c: &mut Conn, path: &str, lines: &[&str], what: &str| {
        let a = c.exchange(&get(path, lines), what).await;
        assert_echo(&a, path, what);
        last(path)
    };

    // `cOOKIE`: signed in, the gate's cookie taken out, the app's passed.
    let odd_cookie = format!("cOOKIE: app=1; {cookie}");
    let seen = forward(&mut c, "/hyg/cookie", &[&odd_cookie], "cOOKIE").await;
    assert_eq!(seen.header_all("x-forwarded-user"), ["alice"]);
    assert_eq!(seen.header_all("cookie"), ["app=1"], "{:?}", seen.headers);

    // Spoofed forwarding headers, in odd case and with `_`.
    let spoofed: [&str; 6] = [
        &format!("COOKIE: {cookie}"),
        "X-FORWARDED-FOR: 6.6.6.6",
        "x_real_ip: 6.6.6.6",
        "X-REAL-IP: 6.6.6.6",
        "x-FORWARDED-user: mallory",
        "X_FORWARDED_EMAIL: mallory@evil.example",
    ];
    let seen = forward(&mut c, "/hyg/spoof", &spoofed, "spoofed").await;
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-user"), ["alice"]);
    assert_eq!(seen.header_all("x-forwarded-email"), ["alice@example.com"]);
    assert_not_forwarded(&seen, &["x_real_ip", "x-real-ip", "x_forwarded_email"]);

    // Headers the client's `Connection` names (keep-alive all the same).
    let named: [&str; 5] = [
        &format!("Cookie: {cookie}"),
        "cONNECTION: x-secret, X-Other",
        "X-Secret: 1",
        "x-other: 2",
        "X-Kept: 3",
    ];
    let seen = forward(&mut c, "/hyg/connection", &named, "Connection-named").await;
    assert_eq!(seen.header_all("x-kept"), ["3"], "{:?}", seen.headers);
    assert_not_forwarded(&seen, &["x-secret", "x-other"]);
    assert!(
        seen.header_all("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-secret")),
        "{:?}",
        seen.headers
    );

    // A foreign `Host`.
    let a = c
        .exchange(
            &request(
                "GET",
                "/hyg/host",
                port,
                &[JSON.into(), format!("Cookie: {cookie}")],
            )
            .replace(&format!("Host: {ours}"), "hOST: evil.example"),
            "Host: evil.example",
        )
        .await;
    assert_echo(&a, "/hyg/host", "Host: evil.example");
    let seen = last("/hyg/host");
    assert_eq!(seen.header_all("host"), [ours.as_str()]);
    assert_eq!(seen.header_all("x-forwarded-host"), [ours.as_str()]);
    assert!(
        !format!("{:?}", seen.headers).contains("evil.example"),
        "evil.example reached the upstream: {:?}",
        seen.headers
    );

    // Still one connection, still in step.
    let a = c
        .exchange(&get("/hyg/end", &[&format!("Cookie: {cookie}")]), "end")
        .await;
    assert_echo(&a, "/hyg/end", "end");
    assert_eq!(w.upstream.requests().len(), 5);
}

// ---------------------------------------------------------------------------
// HTTP/1.0 clients and odd request shapes
// ---------------------------------------------------------------------------

/// HTTP/1.0 clients get HTTP/1.0 answers: the connection closes after one
/// answer unless the client asks for keep-alive, and an answer without a
/// length is ended by the close; what the client sent after that is never
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_clients_get_http_1_0_answers_and_are_kept_alive_only_when_they_ask() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let v10 = |path: &str, lines: &[String]| {
        request("GET", path, port, lines).replacen(" HTTP/1.1\r\n", " HTTP/1.0\r\n", 1)
    };
    let kept = with(&auth, "Connection: keep-alive");
    let never = v10("/v10/never", &auth);
    let assert_v10 = |a: &Answer, path: &str, what: &str| {
        assert_eq!(a.version, "HTTP/1.0", "{what}: {}", a.head);
        assert_eq!(a.status, 200, "{what}: {}", a.head);
        assert!(!a.chunked(), "{what}: chunked to HTTP/1.0: {}", a.head);
        assert_eq!(a.echoed_path(), path, "{what}");
        assert_eq!(a.echoed_header("x-forwarded-user"), ["alice"], "{what}");
    };

    // Without keep-alive: one answer, then the close.
    let mut c = Conn::open(port).await;
    c.send(format!("{}{never}", v10("/v10/plain", &auth))).await;
    let a = c.answer("HTTP/1.0").await;
    assert_v10(&a, "/v10/plain", "HTTP/1.0");
    assert!(a.has("content-length"), "{}", a.head);
    c.assert_closed_with_nothing_more("after an HTTP/1.0 answer")
        .await;

    // Keep-alive asked for: kept for the next request, which does not ask.
    let mut c = Conn::open(port).await;
    c.send(format!(
        "{}{}{never}",
        v10("/v10/kept", &kept),
        v10("/v10/second", &auth)
    ))
    .await;
    let a = c.answer("HTTP/1.0 keep-alive").await;
    assert_v10(&a, "/v10/kept", "HTTP/1.0 keep-alive");
    a.assert_connection("keep-alive", "HTTP/1.0 keep-alive");
    let a = c.answer("HTTP/1.0 after keep-alive").await;
    assert_v10(&a, "/v10/second", "HTTP/1.0 after keep-alive");
    c.assert_closed_with_nothing_more("after the second answer")
        .await;

    // A streamed answer, keep-alive asked for: ended by the close.
    let mut c = Conn::open(port).await;
    c.send(format!(
        "{}{never}",
        v10("/slow?chunks=3&interval_ms=20", &kept)
    ))
    .await;
    let a = c.answer("HTTP/1.0 streamed").await;
    assert_eq!(a.version, "HTTP/1.0", "{}", a.head);
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(!a.chunked(), "chunked to HTTP/1.0: {}", a.head);
    assert!(!a.has("content-length"), "{}", a.head);
    assert_eq!(a.text(), "chunk 0\nchunk 1\nchunk 2\n");

    assert_eq!(
        forwarded_paths(&w.upstream),
        ["/v10/plain", "/v10/kept", "/v10/second", "/slow"],
        "what came after the last answer of a connection was read"
    );
}

/// Request shapes the gate has always accepted keep working on a kept
/// connection: bare LF line ends, an empty line before the request line, a
/// tab after the colon, an absolute-form target, a method in lower case
/// (another method), `OPTIONS *` (the gate's 400, connection kept); a space
/// before a colon is a 400 and the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_request_shapes_are_served_and_a_malformed_head_is_a_400_and_the_close() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let auth = signed_in(&cookie);
    let mut c = Conn::open(port).await;
    w.upstream.clear();

    let bare_lf = request("GET", "/shape/lf", port, &auth).replace("\r\n", "\n");
    let a = c.exchange(&bare_lf, "bare LF").await;
    assert_echo(&a, "/shape/lf", "bare LF");

    let leading = format!("\r\n{}", request("GET", "/shape/lead", port, &auth));
    let a = c.exchange(&leading, "a leading empty line").await;
    assert_echo(&a, "/shape/lead", "a leading empty line");

    let tab = request(
        "GET",
        "/shape/tab",
        port,
        &[JSON.into(), format!("Cookie:\t{cookie}")],
    );
    let a = c.exchange(&tab, "a tab after the colon").await;
    assert_echo(&a, "/shape/tab", "a tab after the colon");
    assert_eq!(a.echoed_header("x-forwarded-user"), ["alice"]);

    let absolute = request(
        "GET",
        &format!("http://localhost:{port}/shape/abs?q=1"),
        port,
        &auth,
    );
    let a = c.exchange(&absolute, "absolute-form").await;
    assert_echo(&a, "/shape/abs", "absolute-form");
    assert_eq!(a.json()["query"], "q=1");

    let lower = request("get", "/shape/lower", port, &auth);
    let a = c.exchange(&lower, "get in lower case").await;
    assert_echo(&a, "/shape/lower", "get in lower case");
    assert_eq!(a.json()["method"], "get", "methods are case-sensitive");

    let asterisk = request("OPTIONS", "*", port, &auth);
    let a = c.exchange(&asterisk, "OPTIONS *").await;
    assert_eq!(a.status, 400, "OPTIONS *: {}", a.head);
    assert_eq!(a.json()["error"], "invalid_request");

    let a = c
        .exchange(&request("GET", "/shape/after", port, &auth), "after")
        .await;
    assert_echo(&a, "/shape/after", "after");

    let malformed = request("GET", "/shape/never", port, &with(&auth, "X-A : 1"));
    let a = c.exchange(&malformed, "a space before the colon").await;
    assert_eq!(a.status, 400, "{}", a.head);
    c.assert_ends_with(&a, "after the malformed head").await;

    assert_eq!(
        forwarded_paths(&w.upstream),
        [
            "/shape/lf",
            "/shape/lead",
            "/shape/tab",
            "/shape/abs",
            "/shape/lower",
            "/shape/after"
        ]
    );
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without
/// a `Host`, or with more than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_requests_without_a_host_or_with_two_get_400_and_are_not_forwarded() {
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let ours = format!("Host: localhost:{port}\r\n");
    for (what, req) in [
        (
            "no Host",
            request("GET", "/host/none", port, &auth).replace(&ours, ""),
        ),
        (
            "two Host lines",
            request("GET", "/host/two", port, &auth)
                .replace(&ours, &format!("{ours}Host: other.example\r\n")),
        ),
    ] {
        let mut c = Conn::open(port).await;
        let a = c.exchange(&req, what).await;
        assert_eq!(a.status, 400, "{what}: {}", a.head);
    }
    let forwarded = forwarded_paths(&w.upstream);
    assert!(forwarded.is_empty(), "forwarded: {forwarded:?}");
}
