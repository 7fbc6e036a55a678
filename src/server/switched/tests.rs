//! Connections switched by hyper, served the way `ToHyper::serve` serves
//! them (`hyper_io`, `Builders::serve`), over loopback TCP and TLS.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::*;
use crate::server::fast::Handover;
use crate::server::framing::Verdicts;
use crate::server::{Settings, builders, hyper_io};

const HEAD: &[u8] =
    b"GET /ws HTTP/1.1\r\nhost: gate.test\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";

fn settings() -> Settings {
    Settings {
        threads: 1,
        header_read_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(1),
        max_header_bytes: 64 * 1024,
        max_connections: 16,
    }
}

/// Bytes no two positions of which are easily confused.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Serves `server` as the gate does after the own path read the upgrade
/// request's head and, behind it, `early` (more than hyper's first read
/// takes), handed over for `why`; answers `101` and returns the switched
/// connection as [`take_back`] gives it, once `client` has read the `101`
/// head and sent `later`.
async fn switch<I, C>(
    server: I,
    client: &mut C,
    why: Handover,
    early: &[u8],
    later: &[u8],
) -> SwitchedClient
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on.await
                    && let Some(tx) = tx.lock().unwrap().take()
                {
                    let _ = tx.send(take_back(upgraded));
                }
            });
            Ok::<_, Infallible>(
                Response::builder()
                    .status(101)
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
        }
    });
    let mut read = BytesMut::from(HEAD);
    read.extend_from_slice(early);
    let settings = settings();
    let io = hyper_io(
        Prefixed::new(read, server),
        settings.header_read_timeout,
        settings.max_header_bytes,
        Arc::new(Verdicts::default()),
    );
    tokio::spawn(builders(&settings).serve(io, why, service));

    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
    client.write_all(later).await.unwrap();
    client.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap()
}

/// The bytes the client sent after the head arrive in order, and what is
/// written reaches the client.
async fn relays_both_ways<S, C>(mut switched: S, client: &mut C, early: &[u8], later: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut got = vec![0; early.len() + later.len()];
    switched.read_exact(&mut got).await.unwrap();
    assert!(got[..early.len()] == *early, "the early bytes, in order");
    assert_eq!(&got[early.len()..], later);
    switched.write_all(b"pong").await.unwrap();
    switched.flush().await.unwrap();
    let mut pong = [0; 4];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"pong");
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

#[tokio::test]
async fn a_plain_connection_handed_over_for_its_upgrade_is_taken_back_out_of_hyper() {
    let (server, mut client) = tcp_pair().await;
    let early = pattern(20_000);
    let switched = switch(server, &mut client, Handover::Upgrade, &early, b"later").await;
    let SwitchedClient::Plain(io) = switched else {
        panic!("not taken back as plain TCP");
    };
    assert_eq!(io.held(), early.len(), "just the early bytes are held");
    relays_both_ways(io, &mut client, &early, b"later").await;
}

/// An idle WebSocket keeps no read buffer of hyper's or the own path's.
#[tokio::test]
async fn a_switched_connection_with_nothing_unread_holds_no_buffer() {
    let (server, mut client) = tcp_pair().await;
    let switched = switch(server, &mut client, Handover::Upgrade, b"", b"later").await;
    let SwitchedClient::Plain(io) = switched else {
        panic!("not taken back as plain TCP");
    };
    assert_eq!(io.held(), 0);
    relays_both_ways(io, &mut client, b"", b"later").await;
}

#[tokio::test]
async fn a_tls_connection_handed_over_for_its_upgrade_is_taken_back_out_of_hyper() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = crate::config::TlsFiles {
        cert_file: dir.path().join("tls.crt"),
        key_file: dir.path().join("tls.key"),
    };
    std::fs::write(&files.cert_file, cert.pem()).unwrap();
    std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
    let acceptor = crate::server::tls::acceptor(&files).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let (server, client) = tcp_pair().await;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let (server, client) = tokio::join!(acceptor.accept(server), connector.connect(name, client));
    let (server, mut client) = (server.unwrap(), client.unwrap());
    let early = pattern(20_000);
    let switched = switch(server, &mut client, Handover::Upgrade, &early, b"later").await;
    let SwitchedClient::Tls(io) = switched else {
        panic!("not taken back as TLS");
    };
    relays_both_ways(io, &mut client, &early, b"later").await;
}

/// hyper-util's protocol detection puts a layer of its own (not nameable)
/// in between: such a connection is relayed as hyper hands it over, with
/// the same bytes.
#[tokio::test]
async fn a_connection_served_with_protocol_detection_is_relayed_as_hyper_hands_it_over() {
    let (server, mut client) = tcp_pair().await;
    let early = pattern(20_000);
    let switched = switch(server, &mut client, Handover::NotHttp1, &early, b"later").await;
    let SwitchedClient::Hyper(io) = switched else {
        panic!("a layer of hyper-util's was expected");
    };
    relays_both_ways(io, &mut client, &early, b"later").await;
}

/// hyper's unread bytes come first, then those hyper never read.
#[tokio::test]
async fn unread_bytes_come_before_those_hyper_never_took() {
    let (server, mut client) = tcp_pair().await;
    let io = hyper_io(
        Prefixed::new(BytesMut::from(&b"-second-"[..]), server),
        Duration::from_secs(10),
        1024,
        Arc::new(Verdicts::default()),
    );
    let mut taken = out_of_layers(io, Bytes::from_static(b"first"), |io| io);
    assert_eq!(taken.held(), 13);
    client.write_all(b"-third").await.unwrap();
    let mut got = [0; 19];
    taken.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"first-second--third");
}
