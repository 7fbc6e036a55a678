use super::*;
use crate::fields::Fields;
use crate::identity::Identity;
use crate::proxy::{h1, headers};
use http_body_util::BodyExt as _;

/// The head the HTTP/1.1 path would send for a client request with
/// `client` headers (written by the same functions).
fn head_for(method: &[u8], target: &[u8], client: &HeaderMap, length: Option<u64>) -> Vec<u8> {
    let peer = HeaderValue::from_static("192.0.2.7");
    let proto = HeaderValue::from_static("https");
    let host = HeaderValue::from_static("gate.example:8443");
    let identity = Identity {
        sub: "alice".into(),
        email: Some("alice@example.com".into()),
        ..Identity::default()
    };
    let out = headers::Outbound {
        peer: &peer,
        proto: &proto,
        host: &host,
        identity: Some(&identity),
        upgrade: false,
        trusted_peer: false,
        request_id: Some(b"req-1"),
    };
    let mut head = Vec::new();
    h1::encode_head(
        method,
        (b"/base", target),
        length,
        length.is_none(),
        &mut head,
        |h| headers::to_upstream(Fields::Map(client), &out, h),
    );
    head
}

#[test]
fn the_http1_head_becomes_the_same_request_over_http2() {
    let mut client = HeaderMap::new();
    client.insert("accept", HeaderValue::from_static("text/html"));
    client.append("x-custom", HeaderValue::from_static("one"));
    client.append("x-custom", HeaderValue::from_static("two"));
    client.insert("x-forwarded-user", HeaderValue::from_static("mallory"));
    client.insert("connection", HeaderValue::from_static("x-hop"));
    client.insert("x-hop", HeaderValue::from_static("secret"));
    let head = head_for(b"GET", b"/a/b?c=d%20e", &client, None);

    let req = request_of(&Scheme::HTTP, &head).unwrap();
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.version(), http::Version::HTTP_2);
    assert_eq!(
        req.uri().to_string(),
        "http://gate.example:8443/base/a/b?c=d%20e"
    );
    let h = req.headers();
    // `Host` is the authority, not a header; nothing connection-specific.
    for gone in [
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "x-hop",
    ] {
        assert!(!h.contains_key(gone), "{gone} must not be sent: {h:?}");
    }
    assert_eq!(h["accept"], "text/html");
    let custom: Vec<_> = h.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["one", "two"]);
    // What the gate sets, not what the client claimed.
    assert_eq!(h["x-forwarded-user"], "alice");
    assert_eq!(h["x-forwarded-email"], "alice@example.com");
    assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "gate.example:8443");
    assert_eq!(h["x-request-id"], "req-1");
}

#[test]
fn a_body_keeps_its_length_and_an_https_upstream_its_scheme() {
    let mut client = HeaderMap::new();
    client.insert("content-type", HeaderValue::from_static("application/json"));
    let head = head_for(b"POST", b"/upload", &client, Some(42));
    let req = request_of(&Scheme::HTTPS, &head).unwrap();
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.uri().scheme_str(), Some("https"));
    assert_eq!(req.headers()["content-length"], "42");
    assert_eq!(req.headers()["content-type"], "application/json");
}

#[test]
fn a_head_without_host_or_that_does_not_parse_is_refused() {
    let no_host = b"GET / HTTP/1.1\r\naccept: */*\r\n\r\n";
    assert!(matches!(
        request_of(&Scheme::HTTP, no_host),
        Err(H2Error::Request("no host"))
    ));
    let cut = b"GET / HTTP/1.1\r\nhost: a\r\n";
    assert!(matches!(
        request_of(&Scheme::HTTP, cut),
        Err(H2Error::Request(_))
    ));
    let two_hosts = b"GET / HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n";
    assert!(matches!(
        request_of(&Scheme::HTTP, two_hosts),
        Err(H2Error::Request("two hosts"))
    ));
    let bad_host = b"GET / HTTP/1.1\r\nhost: a b\r\n\r\n";
    assert!(matches!(
        request_of(&Scheme::HTTP, bad_host),
        Err(H2Error::Request("bad host"))
    ));
}

#[test]
fn connection_specific_headers_are_known_in_any_case() {
    for name in [
        "Connection",
        "KEEP-ALIVE",
        "proxy-connection",
        "Transfer-Encoding",
        "upgrade",
        "TE",
    ] {
        assert!(is_connection_specific(name.as_bytes()), "{name}");
    }
    for name in ["trailer", "content-length", "tek", "connections"] {
        assert!(!is_connection_specific(name.as_bytes()), "{name}");
    }
}

#[test]
fn the_gates_own_header_names_are_found_in_any_case() {
    for own in OWN_NAMES {
        let upper = own.as_str().to_ascii_uppercase();
        assert_eq!(name_of(upper.as_bytes()).unwrap(), own);
    }
    assert_eq!(name_of(b"X-Other").unwrap(), "x-other");
    assert!(name_of(b"bad name").is_err());
}

#[test]
fn an_http2_answer_head_reads_as_its_map() {
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("text/plain"));
    map.append("set-cookie", HeaderValue::from_static("a=1"));
    map.append("set-cookie", HeaderValue::from_static("b=2"));
    map.insert("content-length", HeaderValue::from_static("12"));
    let head = h1::AnswerHead::of_map(http::StatusCode::CREATED, &map, false);
    assert_eq!(head.status, http::StatusCode::CREATED);
    assert_eq!(head.length, Some(12));
    assert!(!head.bodiless);
    let fields: Vec<(&[u8], &[u8])> = head.fields().iter().collect();
    let want: Vec<(&[u8], &[u8])> = map
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect();
    assert_eq!(fields, want);
    assert_eq!(
        head.fields().values("set-cookie").collect::<Vec<_>>(),
        [b"a=1".as_slice(), b"b=2"]
    );

    let chunked = h1::AnswerHead::of_map(http::StatusCode::OK, &HeaderMap::new(), true);
    assert_eq!(chunked.length, None);
    assert!(chunked.bodiless);
    assert_eq!(chunked.fields().iter().count(), 0);
}

#[tokio::test]
async fn a_failing_client_body_is_kept_for_the_caller() {
    #[derive(Debug, thiserror::Error)]
    #[error("client went away")]
    struct Gone;
    let failing = http_body_util::StreamBody::new(futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"part"))),
        Err(Gone),
    ]));
    let kept = Arc::new(Mutex::new(None));
    let mut sent = Sent::Body(Body::boxed(failing), kept.clone());
    assert!(!http_body::Body::is_end_stream(&sent));
    let first = sent.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "part");
    let second = sent.frame().await.unwrap().unwrap_err();
    assert!(second.downcast_ref::<ClientBodyFailed>().is_some());
    let original = kept.lock().unwrap().take().unwrap();
    assert!(original.downcast_ref::<Gone>().is_some());

    let empty = Sent::Empty;
    assert!(http_body::Body::is_end_stream(&empty));
    assert_eq!(http_body::Body::size_hint(&empty).exact(), Some(0));
}

/// An HTTP/2 upstream on loopback that allows `streams` streams per
/// connection, counts the connections it accepts, reports each request as
/// it arrives and answers only once `release` is notified (`hold`) or at
/// once.
struct Held {
    url: url::Url,
    accepted: Arc<AtomicUsize>,
    arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    release: Arc<tokio::sync::Semaphore>,
    /// The tasks serving its connections: aborting one closes it.
    served: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

async fn upstream_h2(streams: u32, hold: bool) -> Held {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(if hold { 0 } else { 1 << 20 }));
    let (count, gate) = (accepted.clone(), release.clone());
    let served = Arc::new(Mutex::new(Vec::new()));
    let tasks = served.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let (tx, gate) = (tx.clone(), gate.clone());
            let task = tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (tx, gate) = (tx.clone(), gate.clone());
                    async move {
                        assert_eq!(req.version(), http::Version::HTTP_2);
                        let _ = tx.send(());
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(streams)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
            tasks.lock().unwrap().push(task);
        }
    });
    Held {
        url: format!("http://{addr}/").parse().unwrap(),
        accepted,
        arrived,
        release,
        served,
    }
}

fn pool_h2(target: &url::Url) -> Pool {
    crate::proxy::pool::tests::pool_for(target, true)
}

async fn get(pool: &Pool) -> (http::StatusCode, Bytes) {
    let head = head_for(b"GET", b"/x", &HeaderMap::new(), None);
    let resp = send(pool, &head, None).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// The stream limits this thread has seen on its connections to `pool`.
fn limits_here(pool: &Pool) -> Vec<usize> {
    CONNS.with(|conns| {
        conns
            .borrow()
            .iter()
            .find(|up| up.id == pool.id())
            .map(|up| {
                up.lanes
                    .iter()
                    .map(|l| l.limit.load(Ordering::Relaxed))
                    .collect()
            })
            .unwrap_or_default()
    })
}

#[tokio::test]
async fn a_burst_on_a_cold_thread_opens_one_connection() {
    let up = upstream_h2(100, false).await;
    let pool = pool_h2(&up.url);
    let answers = futures_util::future::join_all((0..40).map(|_| get(&pool))).await;
    for (status, body) in answers {
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(body, "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    // And later requests keep using it.
    assert_eq!(get(&pool).await.0, http::StatusCode::OK);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

/// Yields until this thread has seen every connection's stream limit as `want`.
async fn limits_become(pool: &Pool, want: &[usize]) {
    for _ in 0..10_000 {
        if limits_here(pool) == want {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("stream limits {:?}, not {want:?}", limits_here(pool));
}

#[tokio::test]
async fn a_full_connection_makes_the_thread_open_another() {
    let mut up = upstream_h2(2, true).await;
    let pool = Arc::new(pool_h2(&up.url));
    // One request answered: the upstream's SETTINGS (2 streams) have been
    // read, and the connection's driver notes them with the next request.
    up.release.add_permits(1);
    assert_eq!(get(&pool).await.0, http::StatusCode::OK);
    up.arrived.recv().await.unwrap();

    let mut held = Vec::new();
    for n in 1..=5_usize {
        // Time for the client to read what came in (a new connection's
        // SETTINGS): each yield lets the runtime poll its sockets.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let p = pool.clone();
        held.push(tokio::spawn(async move { get(&p).await }));
        up.arrived.recv().await.unwrap();
        // 2 streams a connection: requests 1-2, 3-4 and 5 on three.
        let want = n.div_ceil(2);
        assert_eq!(up.accepted.load(Ordering::SeqCst), want, "after {n} held");
        if n % 2 == 0 {
            // The second request on a connection has noted its limit.
            limits_become(&pool, &vec![2; want]).await;
        }
    }
    up.release.add_permits(5);
    for h in held {
        assert_eq!(
            h.await.unwrap(),
            (http::StatusCode::OK, Bytes::from_static(b"ok"))
        );
    }
    // All free again: the first connection takes the next request.
    up.release.add_permits(1);
    assert_eq!(get(&pool).await.0, http::StatusCode::OK);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
    let up = upstream_h2(100, false).await;
    let pool = pool_h2(&up.url);
    assert_eq!(get(&pool).await.0, http::StatusCode::OK);
    // The upstream drops the connection (a restart, an idle timeout).
    for task in up.served.lock().unwrap().drain(..) {
        task.abort();
    }
    for _ in 0..10_000 {
        let closed = CONNS.with(|conns| {
            conns
                .borrow()
                .iter()
                .all(|u| u.lanes.iter().all(|l| l.conn.is_closed()))
        });
        if closed {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        get(&pool).await,
        (http::StatusCode::OK, Bytes::from_static(b"ok"))
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_target_http2_cannot_carry_is_the_clients_to_mend() {
    for target in [b"/a`b".as_slice(), b"/caf\xe9"] {
        let head = head_for(b"GET", target, &HeaderMap::new(), None);
        let e = request_of(&Scheme::HTTP, &head).unwrap_err();
        assert!(matches!(e, H2Error::Request("bad target")), "{e}");
        assert_eq!(ProxyError::Http2(e).refused(), Some("bad target"));
    }
    // An upstream failure is not.
    let failed = ProxyError::Connect("refused".into());
    assert_eq!(failed.refused(), None);
}
