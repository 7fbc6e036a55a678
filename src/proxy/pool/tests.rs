use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;

/// How the test upstream treats a connection after an answer.
#[derive(Clone, Copy)]
enum After {
    /// Keeps it open for the next request.
    KeepAlive,
    /// Says `Connection: close` and closes it.
    SayClose,
    /// Closes it without a word, as an upstream's idle timeout does.
    Vanish,
    /// Answers the first request; reads the second and closes without an
    /// answer, as an idle timeout racing a request does.
    DropSecond,
}

/// A raw HTTP/1.1 upstream on loopback that counts its connections.
async fn upstream(after: After) -> (Url, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for served in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    if matches!(after, After::DropSecond) && served == 1 {
                        return;
                    }
                    // `/slow`: the body's second byte comes 100 ms after the first.
                    let pause = if buf.starts_with(b"GET /slow ") {
                        100
                    } else {
                        0
                    };
                    buf.drain(..end);
                    let close = if matches!(after, After::SayClose) {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\no");
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    if tcp.write_all(b"k").await.is_err() {
                        return;
                    }
                    if matches!(after, After::SayClose | After::Vanish) {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/").parse().unwrap(), accepted)
}

fn pool(target: &Url) -> Pool {
    pool_for(target, false)
}

/// A pool for `target` without extra roots; `h2`: it may open HTTP/2
/// connections (the `h2` module's tests).
pub(in crate::proxy) fn pool_for(target: &Url, h2: bool) -> Pool {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Pool::new(target, tls, h2, Opened::noop()).unwrap()
}

/// A request without a body, as it goes on the wire.
fn request<'a>(method: &'a Method, path: &str, head: &'a mut Vec<u8>) -> Encoded<'a> {
    let framing = h1::encode_head(
        method.as_str().as_bytes(),
        (b"", path.as_bytes()),
        None,
        true,
        head,
        |h| h.extend_from_slice(b"host: upstream.test\r\n"),
    );
    Encoded {
        method,
        head,
        framing,
        body: None,
    }
}

/// One request through `pool`; the answer's body, read to its end.
async fn call(pool: &Pool, method: Method) -> Result<String, ProxyError> {
    call_from(pool, method, &Arc::default()).await
}

/// One request from the client connection that owns `slot`.
async fn call_from(pool: &Pool, method: Method, slot: &Arc<Slot>) -> Result<String, ProxyError> {
    let mut head = Vec::new();
    let resp: http::Response<h1::Answer> = pool
        .send(request(&method, "/x", &mut head), false, slot)
        .await?;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(&target);
    for _ in 0..20 {
        assert_eq!(call(&pool, Method::GET).await.unwrap(), "ok");
        assert_eq!(
            pool.idle_here(),
            1,
            "back in the list once the body is read"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_connection_keeps_its_upstream_connection_and_hands_it_on_when_it_ends() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(&target);
    let (mine, other) = (Arc::default(), Arc::default());
    for _ in 0..5 {
        call_from(&pool, Method::GET, &mine).await.unwrap();
        assert_eq!(pool.idle_here(), 0, "kept in the client connection's slot");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Another client connection does not get it while the first lives...
    call_from(&pool, Method::GET, &other).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // ...and does once the first has ended.
    drop(other);
    drop(mine);
    assert_eq!(pool.idle_here(), 2);
    call(&pool, Method::GET).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_replaced_without_an_error() {
    for after in [After::SayClose, After::Vanish] {
        let (target, accepted) = upstream(after).await;
        let pool = pool(&target);
        for i in 0..30 {
            let got = call(&pool, Method::GET).await;
            assert_eq!(got.unwrap(), "ok", "request {i}");
            if i % 3 == 0 {
                // Give the close time to arrive, too: both orders must work.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            30,
            "one connection per answer"
        );
    }
}

#[tokio::test]
async fn a_close_racing_a_request_repeats_only_what_is_safe_to_repeat() {
    let (target, accepted) = upstream(After::DropSecond).await;
    let pool = pool(&target);
    call(&pool, Method::GET).await.unwrap();
    // The second GET on that connection gets no answer: sent again, on a new one.
    assert_eq!(call(&pool, Method::GET).await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // A POST may have been acted on: not repeated, a failure.
    let err = call(&pool, Method::POST).await.unwrap_err();
    assert!(
        matches!(err, ProxyError::Upstream(h1::H1Error::Closed)),
        "{err}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "no new connection for it"
    );
}

#[tokio::test]
async fn a_thread_keeps_a_bounded_number_of_idle_connections() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(&target);
    let many = MAX_IDLE_PER_THREAD + 8;
    // Requests in flight at once each need their own connection...
    let mut pending = Vec::new();
    for _ in 0..many {
        // Hold every answer unread so no connection is free for the next.
        let mut head = Vec::new();
        let resp: http::Response<h1::Answer> = pool
            .send(
                request(&Method::GET, "/slow", &mut head),
                false,
                &Arc::default(),
            )
            .await
            .unwrap();
        pending.push(resp);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), many);
    assert_eq!(pool.idle_here(), 0);
    for resp in pending {
        resp.into_body().collect().await.unwrap();
    }
    // ...and when they end, the thread keeps only so many.
    assert_eq!(pool.idle_here(), MAX_IDLE_PER_THREAD);
    // Those it kept still serve.
    call(&pool, Method::GET).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), many);
}

#[tokio::test]
async fn an_answer_dropped_before_its_end_closes_its_connection() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(&target);
    let mut head = Vec::new();
    let resp: http::Response<h1::Answer> = pool
        .send(
            request(&Method::GET, "/slow", &mut head),
            false,
            &Arc::default(),
        )
        .await
        .unwrap();
    drop(resp);
    assert_eq!(pool.idle_here(), 0);
    call(&pool, Method::GET).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_past_their_age_are_closed_not_used() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(&target);
    call(&pool, Method::GET).await.unwrap();
    call(&pool, Method::GET).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Taken when stale: closed, and a new connection is opened instead.
    let later = Instant::now() + MAX_IDLE_AGE;
    assert!(take_idle_at(pool.id, later).is_none());
    assert_eq!(pool.idle_here(), 0);
    call(&pool, Method::GET).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // Swept when stale, with no request to notice.
    assert_eq!(pool.idle_here(), 1);
    sweep(Instant::now() + MAX_IDLE_AGE / 2);
    assert_eq!(pool.idle_here(), 1, "not stale yet");
    sweep(later + Duration::from_secs(1));
    assert_eq!(pool.idle_here(), 0);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = pool(&format!("http://{addr}/").parse().unwrap());
    let err = call(&pool, Method::GET).await.unwrap_err();
    assert!(matches!(err, ProxyError::Connect(_)), "{err}");
}

#[test]
fn requests_in_flight_at_once_each_get_a_head_buffer_and_later_ones_reuse_them() {
    let mut first = HeadBuf::take();
    first.0.extend_from_slice(&[b'x'; 6000]);
    let grown = first.0.as_ptr();
    let second = HeadBuf::take();
    assert_ne!(second.0.as_ptr(), grown, "not the buffer still in use");
    drop(second);
    drop(first);
    let later = HeadBuf::take();
    assert_eq!(later.0.as_ptr(), grown, "the grown buffer, kept");
    assert!(later.0.is_empty() && later.0.capacity() >= 6000);
    let mut huge = HeadBuf::take();
    huge.0.reserve(HeadBuf::KEEP + 1);
    drop(huge);
    // Every buffer there is now, kept or new, while all are in use.
    let all: Vec<HeadBuf> = (0..HeadBuf::KEPT + 1).map(|_| HeadBuf::take()).collect();
    assert!(
        all.iter().all(|b| b.0.capacity() <= HeadBuf::KEEP),
        "an oversized one is not kept"
    );
}
