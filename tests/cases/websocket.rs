//! WebSockets through the gate: echo with a session, the `Origin` guard,
//! and refusals that never reach the upstream.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderName, HeaderValue};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use super::proxy::{cookie_header, tls_connect};
use crate::assert_eventually;
use crate::support::gate::{Setup, World};

const IDE_ORIGIN: &str = "https://ide.example.test";

/// Opens `wss://localhost:PORT/ws` with these extra headers.
pub(crate) async fn connect(
    w: &World,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<TlsStream<TcpStream>>, tungstenite::Error> {
    let tls = tls_connect(w, &["http/1.1"]).await;
    let mut req = format!("wss://localhost:{}/ws", w.gate.port)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, _)| ws)
}

fn refused_status(result: Result<impl Sized, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
        Ok(_) => panic!("the WebSocket was accepted"),
    }
}

async fn next(ws: &mut WebSocketStream<TlsStream<TcpStream>>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no echo within 10 s")
        .expect("the WebSocket ended")
        .expect("WebSocket error")
}

/// Text and binary come back as sent.
async fn assert_echoes(ws: &mut WebSocketStream<TlsStream<TcpStream>>) {
    ws.send(Message::text("hello through the gate"))
        .await
        .unwrap();
    assert_eq!(next(ws).await, Message::text("hello through the gate"));
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(ws).await, Message::binary(binary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_with_a_session_echoes_and_the_upstream_sees_the_identity() {
    let w = World::start().await;
    let b = w.signed_in("alice").await;
    let cookies = cookie_header(&w, &b);
    assert!(
        cookies.contains("app=1"),
        "the upstream's cookie is in the jar: {cookies}"
    );
    let origin = w.url("");
    let mut ws = connect(&w, &[("cookie", &cookies), ("origin", &origin)])
        .await
        .expect("WebSocket through the gate");
    assert_echoes(&mut ws).await;
    assert_eq!(w.upstream.open_websockets(), 1);

    let seen = w.upstream.last_request().unwrap();
    assert_eq!(seen.path(), "/ws");
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    let cookie = seen.header("cookie").unwrap_or_default();
    assert!(!cookie.contains("ssogate"), "gate cookie leaked: {cookie}");
    assert!(
        cookie.contains("app=1"),
        "the application's cookie is kept: {cookie}"
    );

    ws.close(None).await.unwrap();
    assert_eventually!(
        w.upstream.open_websockets() == 0,
        Duration::from_secs(5),
        "the upstream WebSocket stayed open after the client closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_without_a_session_is_refused_before_the_upstream() {
    let w = World::start().await;
    let origin = w.url("");
    let status = refused_status(connect(&w, &[("origin", &origin)]).await);
    assert_eq!(status, 401);
    let status = refused_status(
        connect(
            &w,
            &[("origin", &origin), ("cookie", "__Host-ssogate=forged")],
        )
        .await,
    );
    assert_eq!(status, 401);
    assert!(
        w.upstream.requests().is_empty(),
        "the upstream was contacted"
    );
    assert_eq!(w.upstream.connections(), 0, "the upstream was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_origins_foreign_is_refused_none_and_allowed_ones_are_accepted() {
    let w = World::with(Setup {
        vars: vec![("CT_ALLOWED_ORIGINS".into(), IDE_ORIGIN.into())],
        ..Setup::default()
    })
    .await;
    let b = w.signed_in("alice").await;
    let cookies = cookie_header(&w, &b);
    w.upstream.clear();

    // A page of another site, riding on the user's cookies.
    for foreign in [
        "https://evil.example",
        "null",
        &format!("http://localhost:{}", w.gate.port),
        &format!("https://localhost:{}.evil.example", w.gate.port),
    ] {
        let status =
            refused_status(connect(&w, &[("cookie", &cookies), ("origin", foreign)]).await);
        assert_eq!(status, 403, "Origin: {foreign}");
    }
    assert!(
        w.upstream.requests().is_empty(),
        "a cross-site upgrade reached the upstream"
    );

    // An IDE plugin sends no Origin: judged by its credentials alone.
    let mut ws = connect(&w, &[("cookie", &cookies)])
        .await
        .expect("no Origin");
    assert_echoes(&mut ws).await;
    ws.close(None).await.unwrap();

    // An origin listed in CT_ALLOWED_ORIGINS.
    let mut ws = connect(&w, &[("cookie", &cookies), ("origin", IDE_ORIGIN)])
        .await
        .expect("allowed origin");
    assert_echoes(&mut ws).await;
    ws.close(None).await.unwrap();

    let upgrades = w.upstream.requests();
    assert_eq!(upgrades.len(), 2, "{upgrades:?}");
    assert!(
        upgrades
            .iter()
            .all(|r| r.header("x-forwarded-user") == Some("alice"))
    );
}

/// Over plain TCP both connections are read and written with the gate's
/// direct system calls (`src/tcp.rs`): small messages in a burst, one far
/// larger than a relay read (so reads fill the buffer and writes are
/// partial), and text after it all come back whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_plain_http_a_websocket_relays_bursts_and_large_messages_in_order() {
    let w = super::hostile::plain_world(&[]).await;
    let b = w.signed_in("alice").await;
    let port = w.gate.port;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        http::header::COOKIE,
        HeaderValue::from_str(&cookie_header(&w, &b)).unwrap(),
    );
    req.headers_mut().insert(
        http::header::ORIGIN,
        HeaderValue::from_str(&w.url("")).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("WebSocket through the plain gate");

    for i in 0..50u8 {
        ws.feed(Message::binary(vec![i; 64])).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..50u8 {
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no echo within 10 s")
            .expect("the WebSocket ended")
            .unwrap();
        assert_eq!(got, Message::binary(vec![i; 64]), "message {i}");
    }

    let large: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    tokio::time::timeout(Duration::from_secs(20), async {
        ws.send(Message::binary(large.clone())).await.unwrap();
        ws.send(Message::text("after the large one")).await.unwrap();
    })
    .await
    .expect("the gate did not take 4 MiB within 20 s");
    let got = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("no echo of 4 MiB within 20 s")
        .expect("the WebSocket ended")
        .unwrap();
    assert!(
        got == Message::binary(large),
        "the 4 MiB message came back changed"
    );
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no echo within 10 s")
        .expect("the WebSocket ended")
        .unwrap();
    assert_eq!(got, Message::text("after the large one"));

    ws.close(None).await.unwrap();
    assert_eventually!(
        w.upstream.open_websockets() == 0,
        Duration::from_secs(5),
        "the upstream WebSocket stayed open after the client closed"
    );
}
