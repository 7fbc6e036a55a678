//! Slow, idle and vanishing clients.

use std::time::{Duration, Instant};

use super::conn::{Conn, assert_echo, request, signed_in};
use super::raw_upstream::RawUpstream;
use crate::assert_eventually;
use crate::cases::hostile::{extra_gate, plain_world, served_within, session_cookie};

/// A connection that was served once (a forwarded GET, or the gate's own
/// route), ready for the next request.
async fn served_once(port: u16, auth: &[String], forwarded: bool) -> (Conn, Instant) {
    let mut c = Conn::open(port).await;
    if forwarded {
        let a = c
            .exchange(&request("GET", "/slow-client/first", port, auth), "first")
            .await;
        assert_echo(&a, "/slow-client/first", "first");
    } else {
        let a = c
            .exchange(&request("GET", "/sso/healthz", port, &[]), "first")
            .await;
        assert_eq!(a.status, 200);
    }
    (c, Instant::now())
}

/// With `CT_HEADER_READ_TIMEOUT=1s`: a request head that stalls half-way is
/// closed after the timeout without an answer, on a fresh connection and on
/// one that was served a request before; an idle kept-alive connection is
/// closed after the timeout too; nothing of a stalled head reaches the
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_and_idle_kept_connections_are_closed_after_the_header_read_timeout() {
    let w = plain_world(&[("CT_HEADER_READ_TIMEOUT", "1s")]).await;
    let port = w.gate.port;
    let cookie = session_cookie(false, "alice");
    let auth = signed_in(&cookie);
    let limit = Duration::from_secs(5);
    // A forwarded GET's head, all but its final CRLF.
    let partial = {
        let full = request("GET", "/slow-client/partial", port, &auth);
        full[..full.len() - 2].to_owned()
    };

    let fresh = async {
        let since = Instant::now();
        let mut c = Conn::open(port).await;
        c.send(&partial).await;
        (c.closed_within(limit).await, since.elapsed())
    };
    let partial_after = async |forwarded: bool| {
        let (mut c, since) = served_once(port, &auth, forwarded).await;
        c.send(&partial).await;
        (c.closed_within(limit).await, since.elapsed())
    };
    let idle_after = async |forwarded: bool| {
        let (mut c, since) = served_once(port, &auth, forwarded).await;
        (c.closed_within(limit).await, since.elapsed())
    };
    w.upstream.clear();
    let (fresh, p_fwd, p_gate, i_fwd, i_gate) = tokio::join!(
        fresh,
        partial_after(true),
        partial_after(false),
        idle_after(true),
        idle_after(false),
    );
    for (what, (closed, after)) in [
        ("a stalled head on a fresh connection", fresh),
        ("a stalled head after a forwarded request", p_fwd),
        ("a stalled head after a gate route", p_gate),
        ("an idle connection after a forwarded request", i_fwd),
        ("an idle connection after a gate route", i_gate),
    ] {
        let rest = closed.unwrap_or_else(|| {
            panic!("{what}: still open after {limit:?} (CT_HEADER_READ_TIMEOUT=1s)")
        });
        assert!(
            rest.is_empty(),
            "{what}: answered before the close: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            after >= Duration::from_millis(900),
            "{what}: closed after only {after:?}"
        );
    }
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.path() != "/slow-client/partial"),
        "a stalled head reached the upstream"
    );
}

/// A connection on the gate's only slot, once it is free.
pub(super) async fn the_only_slot(port: u16) -> Conn {
    let c = served_within(port, Duration::from_secs(10))
        .await
        .expect("the only connection slot never freed up");
    Conn::on(c)
}

/// Hangs `c` up and asserts that the gate serves a new connection on `port`
/// within `soon`; `when` says what the client was doing.
async fn hanging_up_frees_the_slot(c: Conn, port: u16, soon: Duration, when: &str) {
    drop(c);
    let hung_up = Instant::now();
    let again = served_within(port, soon).await;
    assert!(
        again.is_some(),
        "no new connection served within {soon:?} after a client hung up {when}"
    );
    eprintln!(
        "slot free again {:?} after the hang-up {when}",
        hung_up.elapsed()
    );
}

/// With `CT_MAX_CONNECTIONS=1`: a client that hangs up while its answer is
/// awaited (the upstream has not answered yet, or streams slowly) frees its
/// slot at once, and the upstream side is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_while_its_answer_is_awaited_frees_its_connection_slot() {
    let w = plain_world(&[("CT_MAX_CONNECTIONS", "1")]).await;
    let up = RawUpstream::start().await;
    let stalling = extra_gate(
        &w,
        &[("CT_MAX_CONNECTIONS", "1"), ("CT_UPSTREAM_URL", &up.url)],
    )
    .await;
    let auth = signed_in(&session_cookie(false, "alice"));
    let soon = Duration::from_secs(3);

    // The upstream streams: the head and a first chunk, then a chunk a minute.
    let port = w.gate.port;
    let mut c = the_only_slot(port).await;
    c.send(request(
        "GET",
        "/slow?chunks=3&interval_ms=60000",
        port,
        &auth,
    ))
    .await;
    assert_eventually!(
        w.upstream.open_streams() == 1,
        Duration::from_secs(5),
        "the upstream never started streaming"
    );
    hanging_up_frees_the_slot(c, port, soon, "on a stream").await;
    assert_eventually!(
        w.upstream.open_streams() == 0,
        Duration::from_secs(5),
        "the upstream kept streaming to a client that was gone"
    );

    // The upstream has not answered at all.
    let port = stalling.port;
    let mut c = the_only_slot(port).await;
    c.send(request("GET", "/stall", port, &auth)).await;
    assert_eventually!(
        up.heads().iter().any(|h| h.starts_with("GET /stall ")),
        Duration::from_secs(5),
        "the stalling upstream never got the request"
    );
    hanging_up_frees_the_slot(c, port, soon, "awaiting an answer").await;
    assert_eventually!(
        up.stalls_dropped() == 1,
        Duration::from_secs(5),
        "the gate kept waiting upstream for a client that was gone"
    );
}
