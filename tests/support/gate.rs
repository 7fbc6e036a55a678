//! Starts the real gate in-process (the library's `App`) on a port-0
//! listener, with a throwaway PKI, the pinned provider and a recording
//! upstream around it.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::browser::Browser;
use super::certs::TestPki;
use super::idp::{Idp, IdpOptions};
use super::upstream::Upstream;

pub const CLIENT_ID: &str = "ssogate-test";
pub const CLIENT_SECRET: &str = "test-client-secret-9f1c2b";
/// A 32-byte cookie key, base64.
pub const COOKIE_SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// Another 32-byte key, for foreign-key tests.
pub const OTHER_COOKIE_SECRET: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

/// Polls `cond` until it holds or `timeout` passes; instead of sleeps.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }};
}

/// Shows the gate's logs in failing tests (`RUST_LOG=debug cargo test` for more).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A running gate.
pub struct Gate {
    /// `https://localhost:PORT` (or `http://` without TLS).
    pub url: String,
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Gate {
    /// Starts the gate with exactly these variables on an already bound listener.
    pub async fn start_on(
        listener: TcpListener,
        url: String,
        vars: Vec<(String, String)>,
    ) -> Result<Gate, String> {
        let port = listener.local_addr().unwrap().port();
        let config = ssogate::Config::from_pairs(vars).map_err(|e| e.to_string())?;
        let app = ssogate::App::with_listener(config, listener).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Ok(Gate {
            url,
            port,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// As [`Gate::start_on`], with metrics served on a port of their own
    /// (returned).
    pub async fn start_with_metrics(
        listener: TcpListener,
        url: String,
        vars: Vec<(String, String)>,
    ) -> Result<(Gate, std::net::SocketAddr), String> {
        let port = listener.local_addr().unwrap().port();
        let config = ssogate::Config::from_pairs(vars).map_err(|e| e.to_string())?;
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = ssogate::App::with_listener(config, listener)
            .map_err(|e| e.to_string())?
            .with_metrics_listener(Some(metrics));
        let metrics_addr = app.metrics_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        let gate = Gate {
            url,
            port,
            stop: Some(tx),
            task: Some(task),
        };
        Ok((gate, metrics_addr))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Signals shutdown and waits until the gate has drained.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Reserves a loopback port and the gate URL that goes with it.
pub async fn reserve(tls: bool) -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let scheme = if tls { "https" } else { "http" };
    (listener, format!("{scheme}://localhost:{port}"))
}

/// How a test wants its world.
pub struct Setup {
    pub tls: bool,
    /// Set `CT_SSO_TOKEN_ENDPT` to the provider's token endpoint.
    pub refresh: bool,
    /// Register the gate's back-channel logout URI at the provider (which
    /// then trusts the test CA to call it, and puts `sid` in ID tokens).
    pub backchannel: bool,
    /// Adjusts the provider before it starts.
    pub idp: Box<dyn FnOnce(&mut IdpOptions) + Send>,
    /// Extra or overriding gate variables.
    pub vars: Vec<(String, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            tls: true,
            refresh: false,
            backchannel: false,
            idp: Box::new(|_| {}),
            vars: Vec::new(),
        }
    }
}

/// Provider, upstream and gate, wired together.
pub struct World {
    pub pki: TestPki,
    pub idp: Idp,
    pub upstream: Upstream,
    pub gate: Gate,
}

impl World {
    pub async fn start() -> World {
        Self::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> World {
        init_logs();
        let pki = TestPki::new();
        let upstream = Upstream::start().await;
        let (listener, url) = reserve(setup.tls).await;
        let mut opts = IdpOptions::new(CLIENT_ID, CLIENT_SECRET, &url);
        if setup.backchannel {
            opts = opts.with_backchannel(&url);
            opts.extra_ca_pem = Some(pki.ca_pem.clone());
        }
        (setup.idp)(&mut opts);
        let idp = Idp::start(&opts).await;
        let mut vars = base_vars(&url, &upstream.url, &idp.issuer, &pki, setup.tls);
        if setup.refresh {
            vars.push(("CT_SSO_TOKEN_ENDPT".into(), format!("{}/token", idp.issuer)));
        }
        override_vars(&mut vars, setup.vars);
        let gate = Gate::start_on(listener, url, vars).await.unwrap();
        let world = World {
            pki,
            idp,
            upstream,
            gate,
        };
        world.wait_ready().await;
        world
    }

    /// A fresh browser that trusts the test CA.
    pub fn browser(&self) -> Browser {
        Browser::new(Some(&self.pki.ca_pem))
    }

    /// A plain API client (no cookies, no redirects) that trusts the test CA.
    pub fn api(&self) -> reqwest::Client {
        api_client(&self.pki)
    }

    pub fn url(&self, path: &str) -> String {
        self.gate.url(path)
    }

    pub async fn wait_ready(&self) {
        let client = self.api();
        let url = self.url("/sso/readyz");
        crate::assert_eventually!(
            client
                .get(&url)
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false),
            Duration::from_secs(20),
            "the gate never became ready"
        );
    }

    /// A browser already signed in as `user` (password `<user>-pass`).
    pub async fn signed_in(&self, user: &str) -> Browser {
        let b = self.browser();
        let page = b
            .sign_in(&self.url("/"), user, &format!("{user}-pass"))
            .await;
        assert_eq!(
            page.status, 200,
            "sign-in as {user} did not land on the upstream: {} {}",
            page.url, page.body
        );
        b
    }
}

pub fn api_client(pki: &TestPki) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(pki.reqwest_certificate())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The variables of a working deployment.
pub fn base_vars(
    gate_url: &str,
    upstream: &str,
    issuer: &str,
    pki: &TestPki,
    tls: bool,
) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("CT_SERVER_URL", gate_url),
        ("CT_UPSTREAM_URL", upstream),
        ("CT_SSO_AUTHORIZATION_ENDPT", issuer),
        ("CT_SSO_CLIENT_ID", CLIENT_ID),
        ("CT_SSO_CLIENT_SECRET", CLIENT_SECRET),
        ("CT_COOKIE_SECRET", COOKIE_SECRET),
        ("CT_SSO_SCOPES", "openid profile email offline_access"),
        ("CT_SHUTDOWN_GRACE", "5s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if tls {
        v.push((
            "CT_TLS_CERT_FILE".into(),
            pki.cert_file.display().to_string(),
        ));
        v.push(("CT_TLS_KEY_FILE".into(), pki.key_file.display().to_string()));
    }
    v
}

/// Replaces or adds variables.
pub fn override_vars(vars: &mut Vec<(String, String)>, extra: Vec<(String, String)>) {
    for (k, val) in extra {
        vars.retain(|(n, _)| *n != k);
        vars.push((k, val));
    }
}
