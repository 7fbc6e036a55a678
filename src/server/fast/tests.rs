use tokio::io::AsyncReadExt as _;

use super::*;

/// `head` parsed and planned, as the connection loop does.
fn planned(head: &[u8]) -> Option<Plan> {
    planning(head).ok()
}

fn planning(head: &[u8]) -> Result<Plan, Handover> {
    let mut spans = Vec::new();
    let parsed = parse(head, &mut spans)
        .expect("a head httparse reads")
        .expect("a complete head");
    assert_eq!(parsed.len, head.len());
    plan(&Bytes::copy_from_slice(head), &parsed, &spans)
}

#[test]
fn simple_requests_are_served_here() {
    let p = planned(b"GET /app/x?y=1 HTTP/1.1\r\nHost: g\r\nCookie: a=1\r\n\r\n").unwrap();
    assert_eq!(p.target.as_str(), "/app/x?y=1");
    assert_eq!((p.length, p.close, p.direct), (None, false, true));
    for method in ["HEAD", "OPTIONS", "DELETE", "POST", "PUT", "PATCH"] {
        let head = format!("{method} / HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n");
        let p = planned(head.as_bytes()).unwrap_or_else(|| panic!("{method}"));
        assert_eq!(p.length, Some(0));
    }
    let p = planned(b"POST /up HTTP/1.1\r\nHost: g\r\nContent-Length: 12\r\n\r\n").unwrap();
    assert_eq!(
        p.length,
        Some(12),
        "a body framed by one Content-Length is served here"
    );
    let p = planned(b"GET / HTTP/1.1\r\nHost: g\r\nConnection: keep-alive, CLOSE\r\n\r\n").unwrap();
    assert!(p.close, "Connection: close is seen in any case, in a list");
    // Blank lines before a request are skipped, as hyper skips them.
    assert!(planned(b"\r\n\r\nGET / HTTP/1.1\r\nHost: g\r\n\r\n").is_some());
    // A fragment is cut off, as hyper's URI parser cuts it.
    let p = planned(b"GET /a?b=1#frag HTTP/1.1\r\nhost: g\r\n\r\n").unwrap();
    assert_eq!(p.target.as_str(), "/a?b=1");
}

#[test]
fn the_gates_routes_and_paths_to_normalise_go_through_the_router_here() {
    for head in [
        &b"GET /sso/login?rd=/x HTTP/1.1\r\nHost: g\r\n\r\n"[..],
        b"GET /sso HTTP/1.1\r\nHost: g\r\n\r\n",
        b"POST /sso/logout HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n",
        b"GET /SSO/login HTTP/1.1\r\nHost: g\r\n\r\n",
        b"GET /a/../sso/login HTTP/1.1\r\nHost: g\r\n\r\n",
        b"GET /a/./b HTTP/1.1\r\nHost: g\r\n\r\n",
        b"GET /a//b HTTP/1.1\r\nHost: g\r\n\r\n",
        b"GET /%2e%2e/x HTTP/1.1\r\nHost: g\r\n\r\n",
    ] {
        let p = planned(head).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(head)));
        assert!(
            !p.direct,
            "{:?} is the router's, never admitted directly",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn everything_else_is_handed_to_hyper_with_its_reason() {
    use Handover as H;
    let declined: &[(&[u8], Handover)] = &[
        // No Host, or two (hyper's path answers 400).
        (b"GET / HTTP/1.1\r\n\r\n", H::Host),
        (b"GET / HTTP/1.1\r\nHost: g\r\nHost: h\r\n\r\n", H::Host),
        (b"GET / HTTP/1.0\r\n\r\n", H::Http10),
        (b"CONNECT g:443 HTTP/1.1\r\n\r\n", H::Method),
        (b"TRACE / HTTP/1.1\r\n\r\n", H::Method),
        (b"BREW / HTTP/1.1\r\n\r\n", H::Method),
        (b"get / HTTP/1.1\r\n\r\n", H::Method),
        (b"GET http://g/ HTTP/1.1\r\n\r\n", H::Target),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", H::Target),
        // Body framing other than one plain Content-Length, upgrades, expectations.
        (
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            H::ContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n",
            H::ContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            H::ContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            H::ContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            H::ContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 0, 0\r\n\r\n",
            H::ContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            H::TransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            H::TransferEncoding,
        ),
        (
            b"GET / HTTP/1.1\r\nTRANSFER-encoding: identity\r\n\r\n",
            H::TransferEncoding,
        ),
        (
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            H::Upgrade,
        ),
        (b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n", H::Upgrade),
        (b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", H::Upgrade),
        (
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            H::Expect,
        ),
    ];
    for (i, (head, why)) in declined.iter().enumerate() {
        // Each with one Host but the first two, so each shows its own reason.
        let head = if i < 2 {
            head.to_vec()
        } else {
            let line_end = head.iter().position(|&b| b == b'\n').unwrap() + 1;
            [&head[..line_end], b"Host: g\r\n", &head[line_end..]].concat()
        };
        assert_eq!(
            planning(&head).err(),
            Some(*why),
            "{:?} must go to hyper",
            String::from_utf8_lossy(&head)
        );
    }
    let names: std::collections::HashSet<_> = Handover::ALL.iter().map(|h| h.as_str()).collect();
    assert_eq!(names.len(), Handover::ALL.len(), "one label per reason");
}

#[test]
fn heads_hyper_refuses_or_that_are_not_http1_are_not_parsed_here() {
    let mut spans = Vec::new();
    assert!(parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut spans).is_err());
    assert!(parse(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", &mut spans).is_err());
    assert!(parse(b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", &mut spans).is_err());
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert!(
        parse(head.as_bytes(), &mut spans).is_err(),
        "more headers than hyper takes: hyper answers 431"
    );
    // Incomplete: wait for more.
    for partial in [&b""[..], b"GET / HT", b"GET / HTTP/1.1\r\nHost: g\r\n"] {
        assert!(matches!(parse(partial, &mut spans), Ok(None)));
    }
}

#[test]
fn parsed_fields_are_read_from_the_heads_bytes() {
    let head = b"GET /x HTTP/1.1\r\nHost: g\r\ncOOKIE: a=1\r\nCookie: b=2\r\n\r\n";
    let mut spans = Vec::new();
    let parsed = parse(head, &mut spans).unwrap().unwrap();
    assert_eq!(&head[parsed.method.0..parsed.method.1], b"GET");
    assert_eq!(&head[parsed.target.0..parsed.target.1], b"/x");
    let fields = Fields::Spans {
        head,
        spans: &spans,
    };
    let cookies: Vec<&[u8]> = fields.values("cookie").collect();
    assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
}

#[test]
fn chunk_sizes_are_written_as_http_wants_them() {
    for n in [0usize, 1, 15, 16, 16_384, 0xdead_beef] {
        assert_eq!(chunk_size(n, &mut [0; 18]), format!("{n:x}\r\n").as_bytes());
    }
}

#[test]
fn status_lines_and_dates_are_written_as_hyper_writes_them() {
    let mut out = Vec::new();
    status_line(&mut out, StatusCode::OK);
    status_line(&mut out, StatusCode::from_u16(599).unwrap());
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nHTTP/1.1 599 <none>\r\n");
    out.clear();
    date_line(&mut out);
    let text = String::from_utf8(out).unwrap();
    let value = text
        .strip_prefix("date: ")
        .and_then(|t| t.strip_suffix("\r\n"))
        .unwrap();
    assert!(httpdate::parse_http_date(value).is_ok(), "{text}");
}

#[tokio::test]
async fn hyper_is_handed_the_bytes_read_then_the_connections() {
    let (mut client, server) = tokio::io::duplex(64);
    let mut handed = Prefixed::new(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]), server);
    tokio::io::AsyncWriteExt::write_all(&mut client, b"Host: g\r\n\r\n")
        .await
        .unwrap();
    drop(client);
    let mut all = Vec::new();
    handed.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"GET / HTTP/1.1\r\nHost: g\r\n\r\n");
}

#[test]
fn the_fuzz_check_sees_served_heads_and_declined_ones() {
    let served = crate::server::fast_path_for_fuzzing(
        b"GET /a HTTP/1.1\r\nHost: g\r\nCookie: a=1\r\n\r\nGET /b HTTP/1.1\r\n",
    );
    assert_eq!(served, Ok(true));
    let with_body = crate::server::fast_path_for_fuzzing(
        b"PUT /a HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n",
    );
    assert_eq!(with_body, Ok(true));
    let smuggled = crate::server::fast_path_for_fuzzing(
        b"POST / HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(smuggled, Ok(false));
}

/// A body of `parts` whose length is not known ahead.
struct Unsized(Vec<&'static [u8]>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let part = self.0.remove(0);
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(part)))))
    }
}

/// What `write_routed` puts on the wire for `resp`, and whether it closes.
async fn routed_bytes(
    resp: http::Response<Body>,
    head_request: bool,
    close: bool,
) -> (String, bool) {
    let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let closes = write_routed(
        &mut ours,
        &mut BytesMut::new(),
        &mut Vec::new(),
        resp,
        head_request,
        close,
        8 * 1024,
    )
    .await
    .expect("written");
    drop(ours);
    let mut wire = Vec::new();
    theirs.read_to_end(&mut wire).await.unwrap();
    (String::from_utf8(wire).unwrap(), closes)
}

fn full(status: u16, headers: &[(&str, &str)], body: &'static str) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::boxed(http_body_util::Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    resp
}

/// The head's lines after the status line, lowercased names, `date` left out.
fn lines_of(wire: &str) -> (Vec<String>, &str) {
    let (head, body) = wire.split_once("\r\n\r\n").unwrap();
    let lines = head
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("date: "))
        .map(str::to_owned)
        .collect();
    (lines, body)
}

#[tokio::test]
async fn router_answers_are_framed_as_hyper_frames_them() {
    // A known length: Content-Length, the body, a Date, the framing and
    // Connection headers of the map replaced by the gate's own.
    let resp = full(
        200,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ],
        "{\"a\":1}",
    );
    let (wire, closes) = routed_bytes(resp, false, false).await;
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
    assert_eq!(wire.matches("\r\ndate: ").count(), 1, "{wire}");
    let (lines, body) = lines_of(&wire);
    assert_eq!(
        lines,
        [
            "content-type: application/json",
            "x-request-id: abc",
            "set-cookie: a=1",
            "set-cookie: b=2",
            "content-length: 7"
        ],
        "{wire}"
    );
    assert_eq!((body, closes), ("{\"a\":1}", false));

    // An unknown length: chunks, ended.
    let mut resp = http::Response::new(Body::boxed(Unsized(vec![b"hel", b"lo"])));
    resp.headers_mut().insert(
        "date",
        http::HeaderValue::from_static("Mon, 07 Dec 2026 13:00:00 GMT"),
    );
    let (wire, _) = routed_bytes(resp, false, false).await;
    assert_eq!(
        wire.matches("date: ").count(),
        1,
        "the answer's own Date is kept, not doubled: {wire}"
    );
    let (lines, body) = lines_of(&wire);
    assert_eq!(lines, ["transfer-encoding: chunked"], "{wire}");
    assert_eq!(body, "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");

    // HEAD: the length GET would have, no body.
    let (wire, _) = routed_bytes(full(200, &[], "hello"), true, false).await;
    let (lines, body) = lines_of(&wire);
    assert_eq!(
        (lines, body),
        (vec!["content-length: 5".to_owned()], ""),
        "{wire}"
    );

    // 204: neither length nor body; 304: only a length it declares.
    let (wire, _) = routed_bytes(full(204, &[("content-length", "0")], ""), false, false).await;
    assert_eq!(lines_of(&wire), (vec![], ""), "{wire}");
    let (wire, _) = routed_bytes(full(304, &[("etag", "\"x\"")], ""), false, false).await;
    assert_eq!(
        lines_of(&wire),
        (vec!["etag: \"x\"".to_owned()], ""),
        "{wire}"
    );
    let (wire, _) = routed_bytes(full(304, &[("content-length", "10")], ""), false, false).await;
    assert_eq!(
        lines_of(&wire),
        (vec!["content-length: 10".to_owned()], ""),
        "{wire}"
    );

    // Closing: asked by the caller, or by the answer's own Connection header.
    let (wire, closes) = routed_bytes(full(400, &[], "no"), false, true).await;
    assert!(
        closes && wire.contains("\r\nconnection: close\r\n"),
        "{wire}"
    );
    let (wire, closes) =
        routed_bytes(full(400, &[("connection", "Close")], "no"), false, false).await;
    assert!(closes, "{wire}");
    assert_eq!(wire.matches("onnection: ").count(), 1, "{wire}");
    assert!(wire.ends_with("connection: close\r\n\r\nno"), "{wire}");
}

#[test]
fn a_refused_bodys_rest_is_skipped_only_when_it_is_all_read() {
    let pipe = body::Pipe::new(10);
    let mut buf = BytesMut::from(&b"0123"[..]);
    let cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(pipe.put(&mut buf, &cx));
    let mut rest = BytesMut::from(&b"456789GET / HTTP/1.1\r\n"[..]);
    assert!(skip_rest(&pipe, &mut rest));
    assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n", "the next request stays");
    let pipe = body::Pipe::new(10);
    let mut short = BytesMut::from(&b"0123"[..]);
    assert!(!skip_rest(&pipe, &mut short), "six bytes still to come");
    assert_eq!(&short[..], b"0123");
}
