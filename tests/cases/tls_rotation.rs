//! TLS certificate rotation: the gate re-reads `CT_TLS_CERT_FILE` and
//! `CT_TLS_KEY_FILE` when they change. New handshakes get the new
//! certificate, open connections keep theirs and go on serving, and a pair
//! that does not load leaves the current certificate in use.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use crate::assert_eventually;
use crate::support::certs::{TestPki, der_of_pem};
use crate::support::gate::{COOKIE_SECRET, init_logs, reserve};
use crate::support::upstream::Upstream;

/// How often the gate under test looks at its files.
const RELOAD: Duration = Duration::from_millis(200);
/// Room for a loaded test machine.
const SLACK: Duration = Duration::from_secs(10);

/// An HTTPS gate in unauthenticated mode, polling its files every `RELOAD`.
struct Running {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _upstream: Upstream,
}

impl Running {
    async fn start(pki: &TestPki) -> Running {
        init_logs();
        let upstream = Upstream::start().await;
        let (listener, url) = reserve(true).await;
        let port = listener.local_addr().unwrap().port();
        let vars: Vec<(String, String)> = [
            ("CT_SERVER_URL", url.as_str()),
            ("CT_UPSTREAM_URL", upstream.url.as_str()),
            ("CT_ALLOW_UNAUTHENTICATED", "true"),
            ("CT_COOKIE_SECRET", COOKIE_SECRET),
            ("CT_TLS_CERT_FILE", &pki.cert_file.display().to_string()),
            ("CT_TLS_KEY_FILE", &pki.key_file.display().to_string()),
            ("CT_SHUTDOWN_GRACE", "2s"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let config = ssogate::Config::from_pairs(vars).unwrap();
        let app = ssogate::App::with_listener(config, listener)
            .unwrap()
            .with_tls_reload_interval(RELOAD);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Running {
            port,
            stop: Some(tx),
            task,
            _upstream: upstream,
        }
    }

    /// A new TLS connection (a fresh client: no session to resume) that
    /// trusts only the test CA.
    async fn connect(&self, pki: &TestPki) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        tokio_rustls::TlsConnector::from(pki.rustls_client_config(&["http/1.1"]))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with the gate")
    }

    /// What a new handshake presents, after checking that connection serves.
    async fn presented_to_new_connection(&self, pki: &TestPki) -> CertificateDer<'static> {
        let mut tls = self.connect(pki).await;
        assert_eq!(get(&mut tls, "/sso/healthz").await, 200);
        presented(&tls)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The leaf certificate the gate presented on this connection.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificates")[0]
        .clone()
        .into_owned()
}

/// One keep-alive HTTP/1.1 GET on `tls`; the status. Reads exactly the
/// answer (by `content-length`) so the connection can carry the next one.
async fn get(tls: &mut TlsStream<TcpStream>, path: &str) -> u16 {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, status, body_len) = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status line: {head}"));
            let body_len: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no content-length: {head}"));
            assert!(
                !head.to_ascii_lowercase().contains("connection: close"),
                "the gate closes the connection: {head}"
            );
            break (end + 4, status, body_len);
        }
        let n = tls.read(&mut chunk).await.unwrap();
        assert_ne!(n, 0, "connection closed before the answer's head");
        buf.extend_from_slice(&chunk[..n]);
    };
    while buf.len() < head_len + body_len {
        let n = tls.read(&mut chunk).await.unwrap();
        assert_ne!(n, 0, "connection closed in the answer's body");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf.len(), head_len + body_len, "more than one answer");
    status
}

/// Writes to a sibling temp file and renames it over `path`, as a Secret
/// update or `mv` does.
fn replace(path: &Path, contents: &str) {
    let mut tmp = tempfile::NamedTempFile::new_in(path.parent().unwrap()).unwrap();
    tmp.write_all(contents.as_bytes()).unwrap();
    tmp.persist(path).unwrap();
}

/// For `window`, every new handshake presents `expected` and is served.
async fn keeps_presenting(
    gate: &Running,
    pki: &TestPki,
    expected: &CertificateDer<'static>,
    what: &str,
) {
    let until = Instant::now() + RELOAD * 5;
    while Instant::now() < until {
        assert!(
            gate.presented_to_new_connection(pki).await == *expected,
            "{what}: a new connection got another certificate"
        );
        tokio::time::sleep(RELOAD / 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_reaches_new_connections_while_open_ones_keep_theirs() {
    let pki = TestPki::new();
    let first = der_of_pem(&pki.cert_pem);
    let gate = Running::start(&pki).await;

    let mut open = gate.connect(&pki).await;
    assert_eq!(get(&mut open, "/sso/healthz").await, 200);
    assert_eq!(presented(&open), first);

    // A new leaf (new key, next serial) from the same CA, renamed over the files.
    let (cert_pem, _) = pki.reissue();
    let second = der_of_pem(&cert_pem);
    assert_ne!(first, second);
    assert_eventually!(
        gate.presented_to_new_connection(&pki).await == second,
        RELOAD + SLACK,
        "new connections never got the renewed certificate"
    );

    // The connection opened before the renewal is still up, on its session.
    assert_eq!(get(&mut open, "/sso/healthz").await, 200);
    assert_eq!(presented(&open), first);

    // And again: each renewal is picked up.
    let (cert_pem, _) = pki.reissue();
    let third = der_of_pem(&cert_pem);
    assert_eventually!(
        gate.presented_to_new_connection(&pki).await == third,
        RELOAD + SLACK,
        "new connections never got the second renewal"
    );
    assert_eq!(get(&mut open, "/sso/healthz").await, 200);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_that_does_not_load_leaves_the_current_certificate_in_use() {
    let pki = TestPki::new();
    let first = der_of_pem(&pki.cert_pem);
    let gate = Running::start(&pki).await;
    let mut open = gate.connect(&pki).await;
    assert_eq!(get(&mut open, "/sso/healthz").await, 200);

    // A valid key that is not the certificate's.
    let stranger = TestPki::new();
    replace(&pki.key_file, &stranger.key_pem);
    keeps_presenting(&gate, &pki, &first, "mismatched key").await;

    // A certificate file that is not PEM at all.
    replace(&pki.cert_file, "-----BEGIN CERTIFICATE-----\ngarbage\n");
    keeps_presenting(&gate, &pki, &first, "garbage certificate").await;

    // A key file that is gone.
    std::fs::remove_file(&pki.key_file).unwrap();
    keeps_presenting(&gate, &pki, &first, "missing key").await;
    assert_eq!(get(&mut open, "/sso/healthz").await, 200);

    // The watch is still alive: a good pair is taken up.
    let (cert_pem, _) = pki.reissue();
    let renewed = der_of_pem(&cert_pem);
    assert_eventually!(
        gate.presented_to_new_connection(&pki).await == renewed,
        RELOAD + SLACK,
        "a good pair after bad ones was never taken up"
    );
    assert_eq!(get(&mut open, "/sso/healthz").await, 200);
    gate.stop().await;
}
