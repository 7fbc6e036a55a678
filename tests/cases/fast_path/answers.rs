//! Upstream answers of every framing reach the client whole and clean, and
//! an upstream that is down is a 502 on a connection that goes on.

use std::time::Duration;

use super::conn::{Answer, Conn, assert_echo, forwarded_paths, request, signed_in, with};
use super::raw_upstream::{RawUpstream, UPSTREAM_HOPS};
use crate::cases::hostile::{header_values, plain_world, session_cookie};
use crate::support::gate::World;
use crate::support::upstream::{Upstream, pattern_byte};

// ---------------------------------------------------------------------------
// Upstream answer framings
// ---------------------------------------------------------------------------

/// Streamed (chunked), large (`Content-Length`), 204 and 304 answers reach
/// the client whole and framed as they were, each followed by another
/// request on the same client connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_large_and_bodiless_answers_keep_one_client_connection_in_step() {
    const BIG: usize = 300_000;
    let w = plain_world(&[]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;
    let next = async |c: &mut Conn, after: &str| {
        let path = format!("/after/{after}");
        let a = c
            .exchange(
                &request("GET", &path, port, &auth),
                &format!("after {after}"),
            )
            .await;
        assert_echo(&a, &path, &format!("after {after}"));
    };

    // Streamed: chunked to the client, every chunk.
    let a = c
        .exchange(
            &request("GET", "/slow?chunks=4&interval_ms=50", port, &auth),
            "/slow",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert!(a.chunked(), "a streamed answer is chunked: {}", a.head);
    assert!(!a.has("content-length"), "{}", a.head);
    assert_eq!(a.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert!(a.trailers.is_empty(), "{:?}", a.trailers);
    next(&mut c, "slow").await;

    // Large: its length, every byte.
    let a = c
        .exchange(
            &request("GET", &format!("/big?bytes={BIG}"), port, &auth),
            "/big",
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.one("content-length"), BIG.to_string(), "{}", a.head);
    assert!(!a.chunked(), "{}", a.head);
    assert_eq!(a.body.len(), BIG);
    for offset in [0, 1, 25, 26, 65_535, 65_536, 131_073, BIG - 1] {
        assert_eq!(
            a.body[offset],
            pattern_byte(offset as u64),
            "byte {offset} of /big"
        );
    }
    let wrong = (0..BIG).find(|&i| a.body[i] != pattern_byte(i as u64));
    assert_eq!(wrong, None, "the first wrong byte of /big");
    next(&mut c, "big").await;

    // 204 and 304: no body, no framing headers for one.
    for code in [204u16, 304] {
        let a = c
            .exchange(
                &request("GET", &format!("/status/{code}"), port, &auth),
                &format!("/status/{code}"),
            )
            .await;
        assert_eq!(a.status, code, "{}", a.head);
        assert!(
            !a.chunked(),
            "{code} with Transfer-Encoding: chunked: {}",
            a.head
        );
        assert!(
            a.headers("content-length").iter().all(|v| v == "0"),
            "{code}: {}",
            a.head
        );
        assert!(a.has("x-request-id"), "{code}: {}", a.head);
        let stray = c.stray_bytes(Duration::from_millis(200)).await;
        assert!(stray.is_empty(), "{code}: bytes after the head: {stray:?}");
        next(&mut c, &code.to_string()).await;
    }
    assert_eq!(
        forwarded_paths(&w.upstream),
        [
            "/slow",
            "/after/slow",
            "/big",
            "/after/big",
            "/status/204",
            "/after/204",
            "/status/304",
            "/after/304"
        ]
    );
}

/// A signed-in client on one connection to a gate in front of a raw
/// upstream (its fields drop in order: the connection, the gate, the
/// upstream).
struct RawClient {
    c: Conn,
    port: u16,
    auth: Vec<String>,
    /// Keeps the gate running.
    _world: World,
    up: RawUpstream,
}

impl RawClient {
    /// A fresh raw upstream, a gate in front of it, and a connection to it.
    async fn start() -> RawClient {
        let up = RawUpstream::start().await;
        let world = plain_world(&[("CT_UPSTREAM_URL", &up.url)]).await;
        let port = world.gate.port;
        RawClient {
            c: Conn::open(port).await,
            port,
            auth: signed_in(&session_cookie(false, "alice")),
            _world: world,
            up,
        }
    }

    /// The answer to a signed-in GET of `path`, with one `more` header line.
    async fn get(&mut self, path: &str, more: Option<&str>) -> Answer {
        let lines = match more {
            Some(line) => with(&self.auth, line),
            None => self.auth.clone(),
        };
        self.c
            .exchange(&request("GET", path, self.port, &lines), path)
            .await
    }

    /// GET `path`: the raw upstream's close-delimited `body`, re-framed, and
    /// the connection goes on.
    async fn assert_reframed_get(&mut self, path: &str, body: &str) {
        let a = self.get(path, None).await;
        assert_reframed(&a, path, body);
        self.next(path.trim_start_matches('/')).await;
    }

    /// The next request after an answer of the raw upstream: its plain
    /// answer, in HTTP/1.1, with one `Date` (the raw upstream sends none).
    async fn next(&mut self, after: &str) {
        let path = format!("/after/{after}");
        let a = self
            .c
            .exchange(
                &request("GET", &path, self.port, &self.auth),
                &format!("after {after}"),
            )
            .await;
        assert_eq!(a.version, "HTTP/1.1", "after {after}: {}", a.head);
        assert_eq!(a.status, 200, "after {after}: {}", a.head);
        assert_eq!(a.text(), path, "after {after}");
        assert_eq!(a.headers("date").len(), 1, "after {after}: {}", a.head);
    }
}

/// An answer of the raw upstream ended by its close reached an HTTP/1.1
/// client whole, re-framed so that the client's connection stays open.
fn assert_reframed(a: &Answer, path: &str, body: &str) {
    assert_eq!(a.version, "HTTP/1.1", "{path}: {}", a.head);
    assert_eq!(a.status, 200, "{path}: {}", a.head);
    assert_eq!(a.text(), body, "{path}");
    assert!(
        a.chunked(),
        "{path}: an answer without a length goes to an HTTP/1.1 client chunked: {}",
        a.head
    );
    a.assert_keeps(&format!("{path}: the upstream's close is not the client's"));
}

/// From a raw upstream: an HTTP/1.1 answer ended by the close reaches the
/// client whole and re-framed, so the client's connection stays open; a
/// chunked answer's extension and trailer stay behind; hop-by-hop headers
/// (and the one its `Connection` names) never reach the client; the
/// upstream's `X-Request-Id` is replaced by the gate's; a `Date` is added
/// when the upstream sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_upstreams_close_delimited_chunked_and_hop_by_hop_answers_reach_the_client_clean() {
    let mut rc = RawClient::start().await;

    rc.assert_reframed_get("/close-11", "close-delimited, HTTP/1.1")
        .await;

    let a = rc.get("/trailers", None).await;
    assert_eq!(a.status, 200, "{}", a.head);
    assert_eq!(a.text(), "hello world");
    assert!(
        a.trailers.is_empty(),
        "trailers passed on: {:?}",
        a.trailers
    );
    assert!(!a.has("trailer"), "{}", a.head);
    rc.next("trailers").await;

    // Hop-by-hop answer headers, with and without a client request id.
    for client_id in [Some("client-hop-1"), None] {
        let id_line = client_id.map(|id| format!("X-Request-Id: {id}"));
        let a = rc.get("/hop", id_line.as_deref()).await;
        assert_eq!(a.status, 200, "{}", a.head);
        assert_eq!(a.text(), "ok");
        assert_eq!(a.one("x-kept"), "yes");
        for hop in UPSTREAM_HOPS {
            assert!(!a.has(hop), "{hop} reached the client:\n{}", a.head);
        }
        assert!(
            a.headers("connection")
                .iter()
                .all(|v| !v.to_ascii_lowercase().contains("x-up")),
            "{}",
            a.head
        );
        let id = a.one("x-request-id");
        assert_ne!(id, "upstream-id", "the upstream's request id came back");
        if let Some(sent) = client_id {
            assert_eq!(id, sent);
        }
        let up_head = rc.up.heads().pop().unwrap();
        assert_eq!(
            header_values(&up_head, "x-request-id"),
            [id.as_str()],
            "the request id the upstream got: {up_head}"
        );
        assert_eq!(a.headers("date").len(), 1, "{}", a.head);
        rc.next("hop").await;
    }
}

/// An HTTP/1.0 upstream answer without a length, to an HTTP/1.1 client:
/// the gate, an intermediary, answers in its own version (RFC 9110 §6.2),
/// re-frames the body, and keeps the client's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upstream_answer_reaches_an_http_1_1_client_as_http_1_1_on_a_kept_connection() {
    let mut rc = RawClient::start().await;
    rc.assert_reframed_get("/close-10", "close-delimited, HTTP/1.0")
        .await;
}

// ---------------------------------------------------------------------------
// Upstream down
// ---------------------------------------------------------------------------

/// With nothing listening upstream, a signed-in GET gets the gate's 502
/// (JSON, with a request id), and the same connection goes on: the gate's
/// own route, then another 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_502_and_the_same_connection_then_serves_the_gates_routes() {
    let down = Upstream::closed_port_url();
    let w: World = plain_world(&[("CT_UPSTREAM_URL", &down)]).await;
    let port = w.gate.port;
    let auth = signed_in(&session_cookie(false, "alice"));
    let mut c = Conn::open(port).await;
    for round in 0..2 {
        let a = c
            .exchange(
                &request("GET", "/down/app", port, &auth),
                &format!("502, round {round}"),
            )
            .await;
        assert_eq!(a.status, 502, "round {round}: {}", a.head);
        assert_eq!(a.json()["error"], "upstream_unavailable", "round {round}");
        assert!(a.has("x-request-id"), "round {round}: {}", a.head);
        let a = c
            .exchange(
                &request("GET", "/sso/healthz", port, &[]),
                &format!("healthz, round {round}"),
            )
            .await;
        assert_eq!(a.status, 200, "round {round}: {}", a.head);
        assert_eq!(a.json()["status"], "ok");
    }
}
