//! Wiring: configuration in, a bound listener and a running gate out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::live::Live;
use crate::provider::{ProviderError, Registry};
use crate::proxy::{Proxy, ProxyError};
use crate::router::State;
use crate::server::{self, tls};
use crate::session::refresh::SingleFlight;
use crate::session::{CookieNames, CookieStore, LoginStates, SealError, Sealer};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("CT_LISTEN_ADDR: cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("CT_SSO_AUTHORIZATION_ENDPT: {0}")]
    Provider(#[from] ProviderError),
    #[error("CT_UPSTREAM_URL: {0}")]
    Proxy(#[from] ProxyError),
    #[error("CT_COOKIE_SECRET: {0}")]
    Seal(#[from] SealError),
}

/// Installs the process-wide crypto providers (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// A gate ready to serve.
pub struct App {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
}

impl App {
    /// Binds `CT_LISTEN_ADDR` and builds the gate.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| AppError::Bind(config.listen_addr, e))?;
        Self::with_listener(config, listener)
    }

    /// Builds the gate on a listener the caller bound (tests use port 0).
    /// Starts loading the providers in the background; call inside a runtime.
    pub fn with_listener(config: Config, listener: TcpListener) -> Result<Self, AppError> {
        install_crypto();
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let sealer = Arc::new(Sealer::new(&config.cookie_keys.keys)?);
        let names = CookieNames::new(config.is_https());
        let callback = config.callback_url();
        let options = config
            .login_options
            .iter()
            .map(|o| o.build(&callback))
            .collect::<Result<Vec<_>, _>>()?;
        let proxy = Proxy::new(
            &config.upstream_url,
            &config.server_url,
            config.upstream_ca_pem.as_deref(),
            crate::proxy::ClientPolicy {
                body_idle_timeout: config.limits.body_idle_timeout,
                trusted_proxies: config.trusted_proxies.clone(),
            },
        )?;
        let state = State {
            registry: Registry::new(options),
            store: Arc::new(
                CookieStore::new(sealer.clone(), names.clone())
                    .with_max_revocations(config.limits.max_revocations),
            ),
            login_states: LoginStates::new(sealer, names)
                .with_max_per_browser(config.limits.max_login_states),
            proxy,
            origin: config.origin(),
            policy: config.session.into(),
            grace: config.session.refresh_grace.as_secs(),
            refreshes: SingleFlight::new(config.limits.max_refreshes),
            live: Arc::new(Live::default()),
            config,
        };
        Ok(Self {
            listener,
            tls,
            state: Arc::new(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for
    /// at most `CT_SHUTDOWN_GRACE`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let settings = server::Settings {
            header_read_timeout: self.state.config.header_read_timeout,
            shutdown_grace: self.state.config.shutdown_grace,
            max_header_bytes: self.state.config.limits.max_header_bytes,
            max_connections: self.state.config.limits.max_connections,
        };
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, tls = self.tls.is_some(), upstream = %self.state.config.upstream_url, "ssogate serving");
        }
        server::serve(self.listener, self.tls, self.state, settings, shutdown).await;
    }
}
