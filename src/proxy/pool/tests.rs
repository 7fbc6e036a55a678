use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;
use crate::respond;

/// How the test upstream treats a connection after an answer.
#[derive(Clone, Copy)]
enum After {
    /// Keeps it open for the next request.
    KeepAlive,
    /// Says `Connection: close` and closes it.
    SayClose,
    /// Closes it without a word, as an upstream's idle timeout does.
    Vanish,
}

/// A raw HTTP/1.1 upstream on loopback that counts its connections.
async fn upstream(after: After) -> (http::Uri, Arc<AtomicUsize>) {
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
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    // `/slow` (`/brief`): the body's second byte comes 100 ms
                    // (20 ms) after the first.
                    let pause = if buf.starts_with(b"GET /slow ") {
                        100
                    } else if buf.starts_with(b"GET /brief ") {
                        20
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
                    if !matches!(after, After::KeepAlive) {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/").parse().unwrap(), accepted)
}

fn pool(target: http::Uri) -> Pool {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Pool::new(connector, target)
}

/// One GET through `pool`; the answer's body, read to its end.
async fn get(pool: &Pool, affinity: &Affinity) -> Result<String, ProxyError> {
    let req = Request::builder()
        .uri("/x")
        .header(header::HOST, "upstream.test")
        .body(respond::empty())
        .unwrap();
    let resp = pool.send(affinity, req, true, false).await?;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_client_connections_requests_share_one_upstream_connection() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(target);
    let affinity = Affinity::default();
    for _ in 0..20 {
        assert_eq!(get(&pool, &affinity).await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_replaced_without_an_error() {
    for after in [After::SayClose, After::Vanish] {
        let (target, accepted) = upstream(after).await;
        let pool = pool(target);
        let affinity = Affinity::default();
        for i in 0..30 {
            let got = get(&pool, &affinity).await;
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
async fn a_closed_client_connection_hands_its_upstream_connection_to_the_next() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(target);
    for _ in 0..10 {
        let affinity = Affinity::default();
        get(&pool, &affinity).await.unwrap();
        drop(affinity);
        assert_eq!(pool.idle_here(), 1);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_thread_keeps_a_bounded_number_of_idle_connections() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(target);
    let many = MAX_IDLE_PER_THREAD + 8;
    // Clients that are busy at once each need their own connection...
    let clients: Vec<Affinity> = (0..many).map(|_| Affinity::default()).collect();
    let mut pending = Vec::new();
    for a in &clients {
        let req = Request::builder()
            .uri("/x")
            .header(header::HOST, "upstream.test")
            .body(respond::empty())
            .unwrap();
        // Hold every answer unread so no connection is free for the next.
        pending.push(pool.send(a, req, true, false).await.unwrap());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), many);
    for resp in pending {
        resp.into_body().collect().await.unwrap();
    }
    // ...and when they go, the thread keeps only so many.
    drop(clients);
    assert_eq!(pool.idle_here(), MAX_IDLE_PER_THREAD);
    // Those it kept still serve.
    let affinity = Affinity::default();
    get(&pool, &affinity).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), many);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = pool(format!("http://{addr}/").parse().unwrap());
    let err = get(&pool, &Affinity::default()).await.unwrap_err();
    assert!(matches!(err, ProxyError::Connect(_)), "{err}");
}

#[tokio::test]
async fn concurrent_streams_never_wait_for_a_busy_connection() {
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = pool(target);
    let affinity = Affinity::default();
    let req = |path: &str| {
        Request::builder()
            .uri(path)
            .header(header::HOST, "upstream.test")
            .body(respond::empty())
            .unwrap()
    };
    // A stream whose answer is still being read holds its connection...
    let first = pool
        .send(&affinity, req("/slow"), false, false)
        .await
        .unwrap();
    // ...so a second stream of the same client gets another at once.
    let started = Instant::now();
    let second = pool.send(&affinity, req("/x"), false, false).await.unwrap();
    assert!(
        started.elapsed() < FREE_WAIT / 2,
        "waited {:?} for a busy connection",
        started.elapsed()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    for resp in [first, second] {
        resp.into_body().collect().await.unwrap();
    }
    // A sequential client waits a moment for its own connection instead
    // (a pool of its own, so no other connection is idle): the answer's
    // end comes 20 ms later.
    let (target, accepted) = upstream(After::KeepAlive).await;
    let pool = self::pool(target);
    let busy = pool
        .send(&affinity, req("/brief"), true, false)
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        busy.into_body().collect().await.unwrap();
    });
    get(&pool, &affinity).await.unwrap();
    reader.await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no second connection");
}
