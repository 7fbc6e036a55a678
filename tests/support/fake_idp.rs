//! A deliberately configurable OpenID provider in Rust, for provider quirks
//! and hostile answers the real provider (`idp.rs`) will not produce.
//!
//! One hyper server on `127.0.0.1` port 0 (plain HTTP, or HTTPS with
//! [`FakeOptions::with_tls`]). The authorization endpoint approves at once
//! (no login page) as [`Behaviour::user`], so `browser.follow(gate + "/app")`
//! goes gate → provider → gate callback → upstream in one go.
//!
//! Endpoints (paths set by the options / [`Preset`]):
//! - `{issuer_path}/.well-known/openid-configuration`: [`Behaviour::discovery`],
//!   built at start from the options (`{base}` → `http://127.0.0.1:PORT`).
//! - jwks: [`Behaviour::keys`] as a JWKS.
//! - authorize: checks `client_id` and `redirect_uri`, keeps state, nonce and
//!   the S256 challenge per code, redirects with `code` and `state` (and
//!   `iss` when [`Behaviour::authorize_iss`]), or with `error=…`.
//! - token: client authentication per [`Behaviour::client_auth`], PKCE, single
//!   use codes (`invalid_grant` on reuse), `refresh_token` grant with optional
//!   rotation; the answer goes through [`Behaviour::token_hook`].
//! - userinfo: the claims of the bearer access token's user, through
//!   [`Behaviour::userinfo_hook`].
//! - end_session: recorded; redirects to a registered
//!   `post_logout_redirect_uri` with `state`.
//!
//! Change behaviour while running with [`FakeIdp::set`].
#![allow(
    clippy::expect_used,
    reason = "test support: a failure to set up is a broken test machine and should fail loudly"
)]

mod jwt;
mod model;
mod presets;
mod routes;
mod token;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

// The API for the provider-quirk cases (not every item is used yet).
#[allow(unused_imports)]
pub use self::jwt::{SigningKey, left_half_hash, sign_compact};
#[allow(unused_imports)]
pub use self::model::{
    AuthorizeDraft, AuthorizeHook, Behaviour, ClientAuth, FakeOptions, FakeUser, Grant,
    IdTokenDraft, PublishedKey, RawResponse, TokenHook, TokenRequest, UserinfoDraft, UserinfoHook,
};
#[allow(unused_imports)]
pub use self::presets::{ENTRA_TENANT_ID, Preset, groups_overage_claims};

#[derive(Default)]
struct Counters {
    discovery: AtomicUsize,
    jwks: AtomicUsize,
    authorize: AtomicUsize,
    token: AtomicUsize,
    userinfo: AtomicUsize,
    end_session: AtomicUsize,
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: Option<String>,
    scope: String,
    user: FakeUser,
    auth_time: u64,
    issued: std::time::Instant,
}

struct RefreshGrant {
    client_id: String,
    scope: String,
    user: FakeUser,
    auth_time: u64,
}

#[derive(Default)]
struct Grants {
    codes: HashMap<String, CodeGrant>,
    used_codes: HashSet<String>,
    refresh: HashMap<String, RefreshGrant>,
    spent_refresh: HashSet<String>,
    access: HashMap<String, FakeUser>,
}

#[derive(Default)]
struct Log {
    authorize: Vec<Vec<(String, String)>>,
    token: Vec<TokenRequest>,
    end_session: Vec<Vec<(String, String)>>,
}

/// Shared by the server's tasks.
struct State {
    base: String,
    opts: FakeOptions,
    behaviour: Arc<Mutex<Behaviour>>,
    counters: Counters,
    grants: Mutex<Grants>,
    log: Mutex<Log>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn behaviour(&self) -> Behaviour {
        lock(&self.behaviour).clone()
    }
}

/// A running fake provider; dropping it stops the server.
pub struct FakeIdp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (or `https://`), no trailing slash.
    pub base: String,
    /// The `issuer` of the discovery document as served at start.
    pub issuer: String,
    /// Where the discovery document is served from: the value for
    /// `CT_SSO_AUTHORIZATION_ENDPT` (equal to `issuer` except for Entra's
    /// multi-tenant template and Auth0's trailing slash).
    pub authority: String,
    state: Arc<State>,
    _shutdown: watch::Sender<()>,
}

impl FakeIdp {
    pub async fn start(opts: FakeOptions) -> FakeIdp {
        let listener = TcpListener::bind((opts.host.as_str(), 0))
            .await
            .expect("bind the fake provider");
        let addr = listener.local_addr().expect("fake provider address");
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{addr}");
        let mut behaviour = opts.behaviour.clone();
        behaviour.discovery = presets::document(&opts, &base);
        let issuer = behaviour.discovery["issuer"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let authority = format!("{base}{}", opts.issuer_path.trim_end_matches('/'));
        let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let state = Arc::new(State {
            base: base.clone(),
            opts,
            behaviour: Arc::new(Mutex::new(behaviour)),
            counters: Counters::default(),
            grants: Mutex::new(Grants::default()),
            log: Mutex::new(Log::default()),
        });
        let (shutdown, mut stop) = watch::channel(());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                    _ = stop.changed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let (st, stop, tls) = (st.clone(), stop.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, st, stop).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, st, stop).await;
                            }
                        }
                    }
                });
            }
        });
        FakeIdp {
            addr,
            base,
            issuer,
            authority,
            state,
            _shutdown: shutdown,
        }
    }

    /// `base` + `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The token endpoint's URL (for `CT_SSO_TOKEN_ENDPT`).
    pub fn token_endpoint(&self) -> String {
        self.url(&self.state.opts.token_path)
    }

    /// Changes the behaviour; takes effect with the next request.
    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut lock(&self.state.behaviour));
    }

    /// The behaviour itself, for tests that keep a handle.
    pub fn behaviour(&self) -> Arc<Mutex<Behaviour>> {
        self.state.behaviour.clone()
    }

    /// A snapshot of the current behaviour.
    pub fn current(&self) -> Behaviour {
        self.state.behaviour()
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.counters.discovery.load(Ordering::SeqCst)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.counters.jwks.load(Ordering::SeqCst)
    }

    pub fn authorize_requests(&self) -> usize {
        self.state.counters.authorize.load(Ordering::SeqCst)
    }

    pub fn token_requests(&self) -> usize {
        self.state.counters.token.load(Ordering::SeqCst)
    }

    pub fn userinfo_requests(&self) -> usize {
        self.state.counters.userinfo.load(Ordering::SeqCst)
    }

    pub fn end_session_requests(&self) -> usize {
        self.state.counters.end_session.load(Ordering::SeqCst)
    }

    /// Queries of the authorization requests, oldest first.
    pub fn authorize_log(&self) -> Vec<Vec<(String, String)>> {
        lock(&self.state.log).authorize.clone()
    }

    /// Token requests, oldest first.
    pub fn token_log(&self) -> Vec<TokenRequest> {
        lock(&self.state.log).token.clone()
    }

    /// Queries (or forms) of the end-session requests, oldest first.
    pub fn end_session_log(&self) -> Vec<Vec<(String, String)>> {
        lock(&self.state.log).end_session.clone()
    }

    /// Forgets every refresh token (as if the user's grant was revoked).
    pub fn revoke_refresh_tokens(&self) {
        let mut grants = lock(&self.state.grants);
        let tokens: Vec<String> = grants.refresh.keys().cloned().collect();
        grants.spent_refresh.extend(tokens);
        grants.refresh.clear();
    }

    /// Signs any header and claims as the provider would (the client secret
    /// stands in for [`SigningKey::Hs256Secret`]): bearer JWTs, logout tokens.
    pub fn sign_jwt(
        &self,
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
        key: &SigningKey,
    ) -> String {
        sign_compact(header, claims, key, &self.state.opts.client_secret, false)
    }

    /// The issuer tokens carry for `user` (Entra's template filled with its `tid`).
    pub fn token_issuer(&self, user: &FakeUser) -> String {
        routes::token_issuer(&self.state.behaviour(), user)
    }
}

/// Serves one connection until it ends or the provider is dropped.
async fn serve<I>(io: I, st: Arc<State>, mut stop: watch::Receiver<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(routes::handle(req, st).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = stop.changed() => {}
    }
}
